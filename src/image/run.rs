//! What `strata run IMAGE` needs from an image: its layer directories and its run defaults
//! (user resolved in the image's own /etc/passwd and /etc/group), and the docker rules for
//! merging those with the command line.

use std::path::PathBuf;

use super::error::{Result, invalid, io_err};
use super::merged::Merged;
use super::store::Store;
use crate::passwd;

/// docker's PATH for images whose config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The run defaults of an image config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Empty: "/".
    pub working_dir: String,
    /// As written in the config ("", "1000", "app:staff", ...).
    pub user: String,
}

/// An image ready to run.
#[derive(Clone, Debug)]
pub struct ImageRun {
    /// The name it was found under (normalised).
    pub name: String,
    /// Layer directories, top first (`RunSpec::lowers`).
    pub lowers: Vec<PathBuf>,
    pub defaults: RunDefaults,
    /// `defaults.user` as numeric ids; None when the config names no user (root).
    pub user: Option<(u32, u32)>,
}

/// What the command line overrides (docker semantics).
#[derive(Clone, Debug, Default)]
pub struct RunOverrides {
    /// `--entrypoint X`: replaces the Entrypoint (`""` clears it) and drops the image's Cmd.
    pub entrypoint: Option<String>,
    /// Arguments after the image name: replace Cmd when not empty.
    pub args: Vec<String>,
    /// `-e KEY=VALUE`: appended, replacing the image's value of the same KEY.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `--user`, already resolved with `resolve_user`.
    pub user: Option<(u32, u32)>,
}

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPlan {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: Option<(u32, u32)>,
}

/// Looks an image up in the store: its layers (top first), run defaults and user.
pub fn image_run(store: &Store, name: &str) -> Result<ImageRun> {
    let img = store.get(name)?;
    let lowers = store.lower_dirs(&img)?;
    let c = img.config.config.clone().unwrap_or_default();
    let defaults = RunDefaults {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    };
    let user = match defaults.user.is_empty() {
        true => None,
        false => Some(resolve_user(&lowers, &defaults.user)?),
    };
    Ok(ImageRun {
        name: img.name,
        lowers,
        defaults,
        user,
    })
}

/// Resolves `user[:group]` (names or numbers) to uid/gid in the image's /etc/passwd and
/// /etc/group, read through the layers (top first) as the container will see them. As
/// docker: a numeric uid missing from passwd gets gid 0; a name that is missing is an error.
pub fn resolve_user(lowers: &[PathBuf], spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let what = || format!("user {spec:?}");
    let merged = Merged::new(lowers)?;
    let read = |p: &str| {
        merged
            .file_at(p)
            .map_err(io_err("reading the image's", p))
            .map(|d| String::from_utf8_lossy(&d.unwrap_or_default()).into_owned())
    };
    let passwd = read("/etc/passwd")?;
    let entry = passwd::find_user(&passwd, user);
    let uid = match (user.parse::<u32>(), &entry) {
        (Ok(u), _) => u,
        (Err(_), Some(u)) => u
            .uid
            .ok_or_else(|| invalid(what(), "its /etc/passwd entry has no numeric uid"))?,
        (Err(_), None) => return Err(invalid(what(), "no such user in the image's /etc/passwd")),
    };
    let gid = match group {
        Some(g) if g.parse::<u32>().is_ok() => g.parse().unwrap_or(0),
        Some(g) => {
            let groups = read("/etc/group")?;
            passwd::find_group(&groups, g)
                .ok_or_else(|| invalid(what(), "no such group in the image's /etc/group"))?
                .gid
                .ok_or_else(|| invalid(what(), "its /etc/group entry has no numeric gid"))?
        }
        // As docker: the user's primary group, or 0 for a uid passwd does not list.
        None => entry.and_then(|u| u.gid).unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Merges an image's defaults with the command line, as `docker run` does. Pure.
pub fn merge_run(image: &ImageRun, o: &RunOverrides) -> Result<RunPlan> {
    let d = &image.defaults;
    let (entrypoint, image_cmd) = match &o.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (d.entrypoint.clone(), d.cmd.clone()),
    };
    let cmd = if o.args.is_empty() {
        image_cmd
    } else {
        o.args.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(invalid(
            format!("image {}", image.name),
            "has no Entrypoint or Cmd: give a command after --",
        ));
    }
    let mut env: Vec<String> = Vec::new();
    for kv in d.env.iter().chain(&o.env) {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let workdir = match o.workdir.as_deref().unwrap_or(&d.working_dir) {
        "" => "/".to_owned(),
        w => w.to_owned(),
    };
    Ok(RunPlan {
        argv,
        env,
        workdir,
        user: o.user.or(image.user),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRun {
        ImageRun {
            name: "t:latest".into(),
            lowers: Vec::new(),
            defaults: RunDefaults {
                entrypoint: vec!["/bin/sh".into(), "-c".into()],
                cmd: vec!["echo hi".into()],
                env: vec!["PATH=/bin".into(), "A=1".into()],
                working_dir: "/srv".into(),
                user: "app".into(),
            },
            user: Some((1000, 1000)),
        }
    }

    #[test]
    fn defaults() {
        let p = merge_run(&image(), &RunOverrides::default()).unwrap();
        assert_eq!(p.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(p.env, ["PATH=/bin", "A=1"]);
        assert_eq!(p.workdir, "/srv");
        assert_eq!(p.user, Some((1000, 1000)));
    }

    #[test]
    fn overrides() {
        let o = RunOverrides {
            args: vec!["echo bye".into()],
            env: vec!["A=2".into(), "B=3".into()],
            workdir: Some("/tmp".into()),
            user: Some((0, 0)),
            ..Default::default()
        };
        let p = merge_run(&image(), &o).unwrap();
        assert_eq!(p.argv, ["/bin/sh", "-c", "echo bye"]);
        assert_eq!(p.env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(p.workdir, "/tmp");
        assert_eq!(p.user, Some((0, 0)));
        let o = RunOverrides {
            entrypoint: Some("/bin/true".into()),
            ..Default::default()
        };
        // --entrypoint drops the image's Cmd.
        assert_eq!(merge_run(&image(), &o).unwrap().argv, ["/bin/true"]);
        let o = RunOverrides {
            entrypoint: Some(String::new()),
            ..Default::default()
        };
        assert!(merge_run(&image(), &o).is_err());
        let mut bare = image();
        bare.defaults.env.clear();
        let p = merge_run(&bare, &RunOverrides::default()).unwrap();
        assert_eq!(p.env, [DEFAULT_PATH]);
    }
}
