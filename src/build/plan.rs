//! Stages of a Dockerfile: global ARGs (before the first FROM, seen only by FROM lines), each
//! stage's base (an image, `scratch` or an earlier stage), and which stages the target needs.

use std::collections::BTreeMap;

use super::dockerfile::{Dockerfile, Instruction, Kind};
use super::{BuildError, BuildOptions, Result, at, expand};

/// For each stage, the stages it needs.
pub type Deps = BTreeMap<usize, Vec<usize>>;

/// What a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Stage(usize),
    Image(String),
}

#[derive(Clone, Debug)]
pub struct StagePlan {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    pub from_line: usize,
    pub from_text: String,
    /// The instructions after FROM.
    pub body: Vec<Instruction>,
}

impl StagePlan {
    /// `[name]` or `[stage-N]` in progress lines.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

#[derive(Debug)]
pub struct Plan {
    /// Global ARGs with their values after --build-arg.
    pub global_args: BTreeMap<String, String>,
    pub stages: Vec<StagePlan>,
    pub target: usize,
    /// The stages to build, in order (the target last).
    pub needed: Vec<usize>,
    /// For each needed stage, the stages it needs (FROM, COPY --from).
    pub deps: Deps,
}

/// The platform strata builds for, as OCI names it.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// BuildKit's automatic platform args, given a value when declared without one.
pub fn automatic_arg(name: &str) -> Option<String> {
    let platform = format!("linux/{}", arch());
    match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => Some(platform),
        "TARGETOS" | "BUILDOS" => Some("linux".into()),
        "TARGETARCH" | "BUILDARCH" => Some(arch().into()),
        _ => None,
    }
}

/// Resolves a stage reference (`FROM x`, `COPY --from=x`) among the stages before `before`.
pub fn stage_ref(stages: &[StagePlan], before: usize, r: &str) -> Option<usize> {
    if let Ok(n) = r.parse::<usize>() {
        return (n < before).then_some(n);
    }
    stages[..before]
        .iter()
        .rev()
        .find(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(r)))
        .map(|s| s.index)
}

fn check_platform(i: &Instruction, flags: &[super::dockerfile::Flag]) -> Result<()> {
    for f in flags {
        match (f.name.as_str(), f.value.as_deref()) {
            ("platform", Some(p)) => {
                let ours = format!("linux/{}", arch());
                let p = expand::word(p, '\\', &|n: &str| automatic_arg(n))
                    .map_err(|e| at(i.line, e.to_string()))?;
                if p != ours && p != "$BUILDPLATFORM" && p != "$TARGETPLATFORM" {
                    return Err(at(
                        i.line,
                        format!("--platform={p}: only {ours} can be built here"),
                    ));
                }
            }
            (name, _) => return Err(at(i.line, format!("FROM: unknown flag --{name}"))),
        }
    }
    Ok(())
}

impl Plan {
    pub fn new(df: &Dockerfile, opts: &BuildOptions) -> Result<Plan> {
        let esc = df.directives.escape;
        let mut global_args = BTreeMap::new();
        let mut stages: Vec<StagePlan> = Vec::new();
        for i in &df.instructions {
            match &i.kind {
                Kind::Arg(args) if stages.is_empty() => {
                    for (k, v) in args {
                        let vars = |n: &str| global_args.get(n).cloned();
                        let value = match (opts.build_args.get(k), v) {
                            (Some(b), _) => Some(b.clone()),
                            (None, Some(v)) => Some(
                                expand::word(v, esc, &vars)
                                    .map_err(|e| at(i.line, e.to_string()))?,
                            ),
                            (None, None) => automatic_arg(k),
                        };
                        if let Some(v) = value {
                            global_args.insert(k.clone(), v);
                        }
                    }
                }
                Kind::From {
                    image,
                    alias,
                    flags,
                } => {
                    check_platform(i, flags)?;
                    let vars = |n: &str| global_args.get(n).cloned();
                    let image =
                        expand::word(image, esc, &vars).map_err(|e| at(i.line, e.to_string()))?;
                    let index = stages.len();
                    let base = if image.eq_ignore_ascii_case("scratch") {
                        Base::Scratch
                    } else if let Some(s) = stages.iter().rev().find(|s| {
                        s.name
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(&image))
                    }) {
                        Base::Stage(s.index)
                    } else {
                        Base::Image(image)
                    };
                    if let Some(a) = alias
                        && stages.iter().any(|s| s.name.as_deref() == Some(a.as_str()))
                    {
                        return Err(at(i.line, format!("stage name {a:?} is used twice")));
                    }
                    stages.push(StagePlan {
                        index,
                        name: alias.clone(),
                        base,
                        from_line: i.line,
                        from_text: i.text.clone(),
                        body: Vec::new(),
                    });
                }
                _ => match stages.last_mut() {
                    Some(s) => s.body.push(i.clone()),
                    None => {
                        return Err(at(
                            i.line,
                            format!(
                                "{} before the first FROM (only ARG may come first)",
                                i.kind.keyword()
                            ),
                        ));
                    }
                },
            }
        }
        if stages.is_empty() {
            return Err(at(1, "no FROM instruction"));
        }
        let target = match &opts.target {
            None => stages.len() - 1,
            Some(t) => stage_ref(&stages, stages.len(), t)
                .filter(|_| t.parse::<usize>().is_err())
                .ok_or_else(|| BuildError::Target(t.clone()))?,
        };
        let (needed, deps) = needed(&stages, target, &global_args, esc)?;
        Ok(Plan {
            global_args,
            stages,
            target,
            needed,
            deps,
        })
    }
}

/// The stages `target` depends on (FROM a stage, COPY --from a stage), and itself, in order.
fn needed(
    stages: &[StagePlan],
    target: usize,
    global: &BTreeMap<String, String>,
    esc: char,
) -> Result<(Vec<usize>, Deps)> {
    let mut want = vec![false; stages.len()];
    let mut deps = Deps::new();
    let mut todo = vec![target];
    while let Some(s) = todo.pop() {
        if want[s] {
            continue;
        }
        want[s] = true;
        let mine = deps.entry(s).or_default();
        if let Base::Stage(b) = stages[s].base {
            todo.push(b);
            mine.push(b);
        }
        for i in &stages[s].body {
            let (Kind::Copy(c) | Kind::Add(c)) = &i.kind else {
                continue;
            };
            for f in c.flags.iter().filter(|f| f.name == "from") {
                let raw = f.value.as_deref().unwrap_or("");
                let vars = |n: &str| global.get(n).cloned();
                let r = expand::word(raw, esc, &vars).map_err(|e| at(i.line, e.to_string()))?;
                if let Some(d) = stage_ref(stages, s, &r) {
                    todo.push(d);
                    deps.entry(s).or_default().push(d);
                } else if stages[s..]
                    .iter()
                    .any(|x| x.name.as_deref() == Some(r.as_str()))
                {
                    return Err(at(
                        i.line,
                        format!("COPY --from={r}: that stage comes later"),
                    ));
                }
            }
        }
    }
    Ok(((0..stages.len()).filter(|&s| want[s]).collect(), deps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::dockerfile::parse;

    fn plan(src: &str, target: Option<&str>, args: &[(&str, &str)]) -> Result<Plan> {
        let opts = BuildOptions {
            target: target.map(str::to_owned),
            build_args: args
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..BuildOptions::default()
        };
        Plan::new(&parse(src).unwrap(), &opts)
    }

    #[test]
    fn global_args_feed_from_lines_and_build_args_override() {
        let src = "ARG TAG=1\nARG IMG=base:$TAG\nFROM $IMG AS a\nFROM a\nFROM scratch\n";
        let p = plan(src, None, &[]).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("base:1".into()));
        assert_eq!(p.stages[1].base, Base::Stage(0));
        assert_eq!(p.stages[2].base, Base::Scratch);
        assert_eq!(p.global_args["IMG"], "base:1");
        let p = plan(src, None, &[("TAG", "2")]).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("base:2".into()));
    }

    #[test]
    fn only_needed_stages_and_their_dependencies() {
        let src = "FROM x AS a\nFROM x AS b\nRUN y\nFROM x AS c\nCOPY --from=a /f /f\nFROM c\n";
        let p = plan(src, None, &[]).unwrap();
        assert_eq!(p.needed, [0, 2, 3], "b is not needed");
        assert_eq!(p.deps[&3], [2]);
        assert_eq!(p.deps[&2], [0]);
        let p = plan(src, Some("b"), &[]).unwrap();
        assert_eq!((p.target, p.needed.clone()), (1, vec![1]));
        assert!(matches!(
            plan(src, Some("zz"), &[]),
            Err(BuildError::Target(_))
        ));
    }

    #[test]
    fn structural_errors_name_the_line() {
        let msg = |src: &str| plan(src, None, &[]).unwrap_err().to_string();
        assert_eq!(
            msg("RUN x\nFROM a\n"),
            "Dockerfile:1: RUN before the first FROM (only ARG may come first)"
        );
        assert_eq!(
            msg("FROM a AS s\nFROM b AS s\n"),
            "Dockerfile:2: stage name \"s\" is used twice"
        );
        assert!(
            msg("FROM a AS first\nCOPY --from=later /x /y\nFROM b AS later\nFROM first\n")
                .contains("that stage comes later")
        );
        assert!(msg("FROM --platform=linux/s390x-nope a\n").contains("only linux/"));
        assert_eq!(msg("ARG A\n"), "Dockerfile:1: no FROM instruction");
    }
}
