//! Cloud Build's docker builder (`gcr.io/cloud-builders/docker`) without a docker daemon: its
//! `build`, `push`, `tag` and `run` become strata's own `build`, `push`, `image tag` and `run`
//! on the host. Anything else is refused by name: half-translating a command would make a
//! build that means something else.

/// Whether a step's image is the standard docker builder (any tag).
pub fn is_docker_builder(name: &str) -> bool {
    let repo = match name.split_once('@') {
        Some((r, _)) => r,
        None => name,
    };
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    repo == "gcr.io/cloud-builders/docker"
}

/// A docker command, understood. Paths are as the step wrote them (relative to its dir).
#[derive(Debug, PartialEq, Eq)]
pub enum DockerCmd {
    Build(Build),
    Push {
        image: String,
    },
    Tag {
        src: String,
        dst: String,
    },
    Run {
        /// `strata run` options, already in its spelling.
        options: Vec<String>,
        /// `-v` binds: (source as written, destination, read-only).
        volumes: Vec<(String, String, bool)>,
        image: String,
        args: Vec<String>,
    },
}

/// `docker build`'s options that `strata build` takes too.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Build {
    pub tags: Vec<String>,
    pub file: Option<String>,
    pub build_args: Vec<String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub network: Option<String>,
    pub context: String,
}

/// Takes the value of `--flag=V`, `--flag V` or `-fV`/`-f V` style options.
struct Args<'a> {
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Args<'a> {
    fn value(&mut self, flag: &str, inline: Option<&str>) -> Result<String, String> {
        match inline {
            Some(v) => Ok(v.to_owned()),
            None => self
                .rest
                .next()
                .cloned()
                .ok_or_else(|| format!("docker option {flag} needs a value")),
        }
    }
}

/// Splits `--name=value` into its parts.
fn split_flag(a: &str) -> (&str, Option<&str>) {
    match a.split_once('=') {
        Some((f, v)) if a.starts_with("--") => (f, Some(v)),
        _ => (a, None),
    }
}

pub fn parse(args: &[String]) -> Result<DockerCmd, String> {
    let Some((sub, rest)) = args.split_first() else {
        return Err("the docker builder needs a subcommand (build, push, tag or run)".into());
    };
    let mut it = Args { rest: rest.iter() };
    match sub.as_str() {
        "build" => parse_build(&mut it),
        "push" => {
            let image = positional(&mut it, "push")?;
            only_one(&mut it, "push")?;
            Ok(DockerCmd::Push { image })
        }
        "tag" => {
            let src = positional(&mut it, "tag")?;
            let dst = positional(&mut it, "tag")?;
            only_one(&mut it, "tag")?;
            Ok(DockerCmd::Tag { src, dst })
        }
        "run" => parse_run(&mut it),
        other => Err(format!(
            "docker {other} is not supported: strata's docker builder runs build, push, tag and run"
        )),
    }
}

fn positional(it: &mut Args, sub: &str) -> Result<String, String> {
    match it.rest.next() {
        Some(a) if a.starts_with('-') => Err(format!("docker {sub}: option {a} is not supported")),
        Some(a) => Ok(a.clone()),
        None => Err(format!("docker {sub}: missing argument")),
    }
}

fn only_one(it: &mut Args, sub: &str) -> Result<(), String> {
    match it.rest.next() {
        Some(a) => Err(format!("docker {sub}: unexpected argument {a:?}")),
        None => Ok(()),
    }
}

fn parse_build(it: &mut Args) -> Result<DockerCmd, String> {
    let mut b = Build::default();
    let mut context = None;
    while let Some(a) = it.rest.next() {
        let (flag, inline) = split_flag(a);
        match flag {
            "-t" | "--tag" => b.tags.push(it.value(flag, inline)?),
            "-f" | "--file" => b.file = Some(it.value(flag, inline)?),
            "--build-arg" => b.build_args.push(it.value(flag, inline)?),
            "--target" => b.target = Some(it.value(flag, inline)?),
            "--network" => b.network = Some(it.value(flag, inline)?),
            "--no-cache" => b.no_cache = true,
            // Output detail only.
            "-q" | "--quiet" | "--pull" | "--rm" | "--force-rm" => {}
            f if f.starts_with('-') && f != "-" => {
                return Err(format!("docker build: option {f} is not supported"));
            }
            _ if context.is_some() => {
                return Err(format!("docker build: a second build context {a:?}"));
            }
            _ => context = Some(a.clone()),
        }
    }
    b.context = context.ok_or("docker build: no build context (say '.')")?;
    if b.context == "-" || b.file.as_deref() == Some("-") {
        return Err("docker build: a Dockerfile or context on stdin is not supported".into());
    }
    Ok(DockerCmd::Build(b))
}

fn parse_run(it: &mut Args) -> Result<DockerCmd, String> {
    let (mut options, mut volumes) = (Vec::new(), Vec::new());
    let image = loop {
        let Some(a) = it.rest.next() else {
            return Err("docker run: no image".into());
        };
        let (flag, inline) = split_flag(a);
        match flag {
            "--rm" | "-i" | "-t" | "-it" | "-ti" | "--interactive" | "--tty" | "--init" => {}
            "--name" => drop(it.value(flag, inline)?),
            "-e" | "--env" => {
                options.extend(["-e".into(), it.value(flag, inline)?]);
            }
            "-w" | "--workdir" => options.extend(["-w".into(), it.value(flag, inline)?]),
            "-u" | "--user" => options.extend(["--user".into(), it.value(flag, inline)?]),
            "--entrypoint" => options.extend(["--entrypoint".into(), it.value(flag, inline)?]),
            "--network" | "--net" => options.extend(["--net".into(), it.value(flag, inline)?]),
            "-v" | "--volume" => volumes.push(parse_volume(&it.value(flag, inline)?)?),
            f if f.starts_with('-') => {
                return Err(format!("docker run: option {f} is not supported"));
            }
            _ => break a.clone(),
        }
    };
    Ok(DockerCmd::Run {
        options,
        volumes,
        image,
        args: it.rest.by_ref().cloned().collect(),
    })
}

fn parse_volume(v: &str) -> Result<(String, String, bool), String> {
    let parts: Vec<&str> = v.split(':').collect();
    match parts.as_slice() {
        [s, d] => Ok((s.to_string(), d.to_string(), false)),
        [s, d, "ro"] => Ok((s.to_string(), d.to_string(), true)),
        [s, d, "rw"] => Ok((s.to_string(), d.to_string(), false)),
        _ => Err(format!(
            "docker run: volume {v:?}: use SRC:DST[:ro] with SRC under /workspace"
        )),
    }
}

/// Registry host rewrites (`gcr.io=127.0.0.1:5000`, `*.pkg.dev=...`), for pulls and pushes.
#[derive(Debug, Clone, Default)]
pub struct RegistryMap(pub Vec<(String, String)>);

impl RegistryMap {
    pub fn parse(list: &[String]) -> Result<RegistryMap, String> {
        let mut m = Vec::new();
        for item in list.iter().flat_map(|s| s.split(',')) {
            match item.split_once('=') {
                Some((from, to)) if !from.is_empty() && !to.is_empty() && !to.contains('/') => {
                    m.push((from.to_owned(), to.to_owned()))
                }
                _ => return Err(format!("{item:?}: use FROM=TO, e.g. gcr.io=127.0.0.1:5000")),
            }
        }
        Ok(RegistryMap(m))
    }

    /// The reference with its registry host rewritten, or None when no rule applies.
    pub fn map(&self, reference: &str) -> Option<String> {
        let (host, rest) = reference.split_once('/')?;
        // A first component is a registry host only if it looks like one (docker's rule).
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return None;
        }
        self.0.iter().find_map(|(from, to)| {
            let hit = match from.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == from,
            };
            hit.then(|| format!("{to}/{rest}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<DockerCmd, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn builder_names() {
        assert!(is_docker_builder("gcr.io/cloud-builders/docker"));
        assert!(is_docker_builder("gcr.io/cloud-builders/docker:24"));
        assert!(!is_docker_builder("gcr.io/cloud-builders/gcloud"));
        assert!(!is_docker_builder("docker"));
    }

    #[test]
    fn course_build_and_others() {
        let b = p(&["build", "-t", "gcr.io/p/q", "."]).unwrap();
        assert_eq!(
            b,
            DockerCmd::Build(Build {
                tags: vec!["gcr.io/p/q".into()],
                context: ".".into(),
                ..Build::default()
            })
        );
        let b = p(&["build", "--tag=a", "-f", "D", "--build-arg", "K=V", "ctx"]).unwrap();
        assert!(
            matches!(b, DockerCmd::Build(Build { file: Some(f), build_args, .. }) if f == "D" && build_args == ["K=V"])
        );
        assert_eq!(
            p(&["push", "x"]).unwrap(),
            DockerCmd::Push { image: "x".into() }
        );
        assert_eq!(
            p(&["tag", "a", "b"]).unwrap(),
            DockerCmd::Tag {
                src: "a".into(),
                dst: "b".into()
            }
        );
        let r = p(&["run", "--rm", "-e", "A=1", "img", "--flag", "x"]).unwrap();
        assert_eq!(
            r,
            DockerCmd::Run {
                options: vec!["-e".into(), "A=1".into()],
                volumes: vec![],
                image: "img".into(),
                args: vec!["--flag".into(), "x".into()]
            }
        );
    }

    #[test]
    fn refused_by_name() {
        assert!(
            p(&["compose", "up"])
                .unwrap_err()
                .contains("docker compose")
        );
        assert!(
            p(&["build", "--squash", "."])
                .unwrap_err()
                .contains("--squash")
        );
        assert!(p(&["build"]).unwrap_err().contains("context"));
        assert!(
            p(&["run", "--privileged", "x"])
                .unwrap_err()
                .contains("--privileged")
        );
        assert!(p(&[]).unwrap_err().contains("subcommand"));
    }

    #[test]
    fn registry_map() {
        let m =
            RegistryMap::parse(&["gcr.io=127.0.0.1:5000,*.pkg.dev=localhost:5001".into()]).unwrap();
        assert_eq!(
            m.map("gcr.io/local/q").as_deref(),
            Some("127.0.0.1:5000/local/q")
        );
        assert_eq!(
            m.map("europe-docker.pkg.dev/p/r/i:1").as_deref(),
            Some("localhost:5001/p/r/i:1")
        );
        assert_eq!(m.map("busybox"), None);
        assert_eq!(m.map("library/busybox"), None);
        assert_eq!(m.map("eu.gcr.io/x/y"), None);
        assert!(RegistryMap::parse(&["nope".into()]).is_err());
    }
}
