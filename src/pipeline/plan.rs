//! What each step runs: strata's own command lines. A container step is `strata run` of its
//! image with the workspace, HOME and its volumes bound in; a docker-builder step is the
//! strata command its docker command means. Planned before anything runs, so a config asking
//! for what this strata cannot do fails before the first step.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use super::PipelineError;
use super::config::{Step, Volume};
use super::docker::{self, DockerCmd, RegistryMap};
use super::workspace::RunDir;

/// One thing a step does, in order.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// `strata ARGS` (the runner adds `--root`).
    Strata(Vec<OsString>),
    /// The image must be in the store when the step starts (an earlier step may build it):
    /// pulled through the registry map if it is not and strata can pull.
    EnsureImage(String),
    /// Nothing to run, said in the log (`docker push` under `--no-push`).
    Skip(String),
}

/// What the steps share.
pub struct Ctx<'a> {
    pub rd: &'a RunDir,
    pub global_env: &'a [String],
    pub global_volumes: &'a [Volume],
    pub values: &'a BTreeMap<String, String>,
    pub automap: bool,
    pub map: &'a RegistryMap,
    pub no_push: bool,
    /// Whether this strata has a subcommand (`build`, `push`, `image tag`, `pull`).
    pub has: &'a dyn Fn(&str) -> bool,
}

pub const WORKSPACE: &str = "/workspace";
pub const HOME: &str = "/builder/home";
const SCRIPT: &str = "/builder/step-script";

fn os(v: impl IntoIterator<Item = impl Into<OsString>>) -> Vec<OsString> {
    v.into_iter().map(Into::into).collect()
}

fn bind(src: &Path, dst: &str, ro: bool) -> [OsString; 2] {
    let mut b = src.as_os_str().to_owned();
    b.push(format!(":{dst}{}", if ro { ":ro" } else { "" }));
    ["--bind".into(), b]
}

/// The step's working directory in the container, and the same path relative to the
/// workspace when it is inside it.
fn workdir(dir: &str) -> (String, Option<String>) {
    if dir.starts_with('/') {
        let rel = dir
            .strip_prefix(WORKSPACE)
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .map(|r| r.trim_start_matches('/').to_owned());
        (dir.to_owned(), rel)
    } else if dir.is_empty() {
        (WORKSPACE.to_owned(), Some(String::new()))
    } else {
        (format!("{WORKSPACE}/{dir}"), Some(dir.to_owned()))
    }
}

/// Later entries replace earlier ones with the same key, keeping the first position.
fn merge_env(lists: &[&[String]]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in lists.iter().flat_map(|l| l.iter()) {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match out
            .iter_mut()
            .find(|o| o.split_once('=').map(|(k, _)| k) == Some(key))
        {
            Some(o) => *o = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

pub fn plan(step: &Step, i: usize, cx: &Ctx) -> Result<Vec<Cmd>, PipelineError> {
    if docker::is_docker_builder(&step.name) {
        return plan_docker(step, i, cx);
    }
    let (wd, rel) = workdir(&step.dir);
    if let Some(rel) = &rel {
        cx.rd.make_dir(rel)?;
    }
    let mut a = os(["run", "--net", "host"]);
    a.extend(bind(&cx.rd.workspace, WORKSPACE, false));
    a.extend(bind(&cx.rd.home, HOME, false));
    for v in cx.global_volumes.iter().chain(&step.volumes) {
        a.extend(bind(&cx.rd.volume(&v.name)?, &v.path, false));
    }
    let mapped: Vec<String> = if cx.automap || step.automap_substitutions == Some(true) {
        cx.values.iter().map(|(k, v)| format!("{k}={v}")).collect()
    } else {
        Vec::new()
    };
    let home = [format!("HOME={HOME}")];
    for e in merge_env(&[&mapped, cx.global_env, &step.env, &home]) {
        a.extend(os(["-e", e.as_str()]));
    }
    a.extend(os(["-w", wd.as_str()]));
    let mut args = step.args.clone();
    if let Some(script) = &step.script {
        let file = cx.rd.script(i, script)?;
        a.extend(bind(&file, SCRIPT, true));
        // A script runs with its #! interpreter, else with the image's /bin/sh.
        if script.starts_with("#!") {
            a.extend(os(["--entrypoint", SCRIPT]));
        } else {
            a.extend(os(["--entrypoint", "/bin/sh"]));
            args = vec![SCRIPT.to_owned()];
        }
    } else if let Some(e) = &step.entrypoint {
        a.extend(os(["--entrypoint", e.as_str()]));
    }
    a.push(step.name.clone().into());
    a.push("--".into());
    a.extend(os(args));
    Ok(vec![Cmd::EnsureImage(step.name.clone()), Cmd::Strata(a)])
}

fn need(has: &dyn Fn(&str) -> bool, step: &Step, i: usize, sub: &str) -> Result<(), PipelineError> {
    if has(sub) {
        Ok(())
    } else {
        Err(PipelineError::Missing {
            step: step.label(i),
            sub: sub.to_owned(),
        })
    }
}

/// A path a docker command names, relative to the step's dir, as a host path inside the
/// workspace.
fn host_path(cx: &Ctx, step: &Step, i: usize, p: &str) -> Result<OsString, PipelineError> {
    let (wd, _) = workdir(&step.dir);
    let full = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("{wd}/{p}")
    };
    let Some(inside) = full
        .strip_prefix(WORKSPACE)
        .filter(|r| r.is_empty() || r.starts_with('/'))
    else {
        return Err(PipelineError::Docker {
            step: step.label(i),
            why: format!("path {p:?} (in {wd}) is outside /workspace"),
        });
    };
    Ok(cx
        .rd
        .resolve(inside.trim_start_matches('/'))?
        .into_os_string())
}

/// Refuses, before anything runs, a docker command strata cannot translate or a strata
/// subcommand this binary lacks.
pub fn precheck(
    step: &Step,
    i: usize,
    no_push: bool,
    has: &dyn Fn(&str) -> bool,
) -> Result<(), PipelineError> {
    if !docker::is_docker_builder(&step.name) {
        return Ok(());
    }
    let cmd = docker::parse(&step.args).map_err(|why| PipelineError::Docker {
        step: step.label(i),
        why,
    })?;
    match cmd {
        DockerCmd::Build(_) => need(has, step, i, "build"),
        DockerCmd::Push { .. } if !no_push => need(has, step, i, "push"),
        DockerCmd::Tag { .. } => need(has, step, i, "image tag"),
        _ => Ok(()),
    }
}

fn plan_docker(step: &Step, i: usize, cx: &Ctx) -> Result<Vec<Cmd>, PipelineError> {
    let cmd = docker::parse(&step.args).map_err(|why| PipelineError::Docker {
        step: step.label(i),
        why,
    })?;
    let strata = |v: Vec<OsString>| Ok(vec![Cmd::Strata(v)]);
    match cmd {
        DockerCmd::Build(b) => {
            need(cx.has, step, i, "build")?;
            let mut a = os(["build"]);
            for t in &b.tags {
                a.extend(os(["-t", t.as_str()]));
            }
            if let Some(f) = &b.file {
                a.push("-f".into());
                a.push(host_path(cx, step, i, f)?);
            }
            for arg in &b.build_args {
                a.extend(os(["--build-arg", arg.as_str()]));
            }
            if let Some(t) = &b.target {
                a.extend(os(["--target", t.as_str()]));
            }
            if let Some(n) = &b.network {
                a.extend(os(["--network", n.as_str()]));
            }
            if b.no_cache {
                a.push("--no-cache".into());
            }
            a.push(host_path(cx, step, i, &b.context)?);
            strata(a)
        }
        DockerCmd::Push { image } if cx.no_push => {
            Ok(vec![Cmd::Skip(format!("--no-push: not pushing {image}"))])
        }
        DockerCmd::Push { image } => {
            need(cx.has, step, i, "push")?;
            strata(push_args(cx.map, &image, None))
        }
        DockerCmd::Tag { src, dst } => {
            need(cx.has, step, i, "image tag")?;
            strata(os(["image", "tag", src.as_str(), dst.as_str()]))
        }
        DockerCmd::Run {
            options,
            volumes,
            image,
            args,
        } => {
            // Host networking as for every step, unless the command asks otherwise.
            let mut a = os(["run"]);
            if !options.iter().any(|o| o == "--net") {
                a.extend(os(["--net", "host"]));
            }
            for (src, dst, ro) in &volumes {
                let host = host_path(cx, step, i, src)?;
                a.extend(bind(Path::new(&host), dst, *ro));
            }
            a.extend(os(options));
            a.push(image.clone().into());
            a.push("--".into());
            a.extend(os(args));
            Ok(vec![Cmd::EnsureImage(image), Cmd::Strata(a)])
        }
    }
}

/// `strata push NAME [MAPPED] [--digestfile F]`.
pub fn push_args(map: &RegistryMap, image: &str, digest: Option<&Path>) -> Vec<OsString> {
    let mut a = os(["push", image]);
    if let Some(m) = map.map(image) {
        a.push(m.into());
    }
    if let Some(d) = digest {
        a.push("--digestfile".into());
        a.push(d.as_os_str().to_owned());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdirs() {
        assert_eq!(workdir(""), ("/workspace".into(), Some("".into())));
        assert_eq!(
            workdir("a/b"),
            ("/workspace/a/b".into(), Some("a/b".into()))
        );
        assert_eq!(
            workdir("/workspace/x"),
            ("/workspace/x".into(), Some("x".into()))
        );
        assert_eq!(workdir("/srv"), ("/srv".into(), None));
        assert_eq!(workdir("/workspacex"), ("/workspacex".into(), None));
    }

    fn strs(c: &Cmd) -> Vec<String> {
        match c {
            Cmd::Strata(a) => a.iter().map(|s| s.to_string_lossy().into_owned()).collect(),
            other => panic!("not a strata command: {other:?}"),
        }
    }

    /// The command lines a docker-builder step becomes, with paths resolved in the workspace.
    #[test]
    fn docker_steps_become_strata_commands() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("src")).unwrap();
        std::fs::create_dir(t.path().join("src/app")).unwrap();
        std::fs::write(t.path().join("src/app/D"), "FROM alpine\n").unwrap();
        let rd = RunDir::create(&t.path().join("run"), &t.path().join("src")).unwrap();
        let map = RegistryMap::parse(&["gcr.io=127.0.0.1:5000".into()]).unwrap();
        let values = BTreeMap::new();
        let has = |_: &str| true;
        let cx = Ctx {
            rd: &rd,
            global_env: &[],
            global_volumes: &[],
            values: &values,
            automap: false,
            map: &map,
            no_push: false,
            has: &has,
        };
        let step = |args: &[&str], dir: &str| Step {
            name: "gcr.io/cloud-builders/docker".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            dir: dir.into(),
            ..Step::default()
        };
        let ws = rd.workspace.canonicalize().unwrap();
        let build = plan(
            &step(&["build", "-t", "gcr.io/p/q", "-f", "app/D", "."], ""),
            0,
            &cx,
        )
        .unwrap();
        let want: Vec<String> = ["build", "-t", "gcr.io/p/q", "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                ws.join("app/D").display().to_string(),
                ws.display().to_string(),
            ])
            .collect();
        assert_eq!(strs(&build[0]), want);
        // The context is relative to the step's dir.
        let b = plan(&step(&["build", "."], "app"), 0, &cx).unwrap();
        assert_eq!(
            strs(&b[0]).last().unwrap(),
            &ws.join("app").display().to_string()
        );
        let push = plan(&step(&["push", "gcr.io/p/q"], ""), 0, &cx).unwrap();
        assert_eq!(strs(&push[0]), ["push", "gcr.io/p/q", "127.0.0.1:5000/p/q"]);
        let tag = plan(&step(&["tag", "a", "b"], ""), 0, &cx).unwrap();
        assert_eq!(strs(&tag[0]), ["image", "tag", "a", "b"]);
        // `..` stays inside the workspace, as it would inside a container root.
        let up = plan(&step(&["build", "../.."], "app"), 0, &cx).unwrap();
        assert_eq!(strs(&up[0]).last().unwrap(), &ws.display().to_string());
        let e = plan(&step(&["build", "/etc"], ""), 0, &cx).unwrap_err();
        assert!(e.to_string().contains("outside /workspace"), "{e}");
        let no_push = Ctx {
            no_push: true,
            ..cx
        };
        let skipped = plan(&step(&["push", "x"], ""), 0, &no_push).unwrap();
        assert!(matches!(&skipped[0], Cmd::Skip(n) if n.contains("--no-push")));
        let missing = |s: &str| s != "build";
        assert!(
            precheck(&step(&["build", "."], ""), 0, false, &missing)
                .unwrap_err()
                .to_string()
                .contains("needs `strata build`")
        );
    }

    #[test]
    fn env_merge_by_key() {
        let g = vec!["A=1".to_string(), "B=2".to_string()];
        let s = vec!["B=3".to_string(), "C=4".to_string()];
        assert_eq!(merge_env(&[&g, &s]), ["A=1", "B=3", "C=4"]);
    }
}
