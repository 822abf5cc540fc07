//! The run directory: the workspace every step sees at `/workspace` (a copy of the source,
//! less what `.gcloudignore` excludes), `HOME`, named volumes, per-step logs and scripts.
//!
//! Steps write into the workspace as root in their containers, and may leave symlinks there
//! anywhere; so everything strata creates inside it later (a step's `dir`) is resolved from a
//! held fd on the workspace, never by a host path.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::PipelineError;
use crate::image::fsutil::remove_path;
use crate::sys;

/// What `gcloud builds submit` ignores when the source has no `.gcloudignore`.
const DEFAULT_IGNORE: &str = ".gcloudignore\n.git\n.gitignore\n";

pub struct RunDir {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub home: PathBuf,
    pub logs: PathBuf,
    ws_fd: OwnedFd,
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PipelineError + 'a {
    move |source| PipelineError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

impl RunDir {
    /// Creates the run directory (it must not exist yet) and copies the source in.
    pub fn create(root: &Path, source: &Path) -> Result<RunDir, PipelineError> {
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::create_dir(root).map_err(io_err("creating the run directory", root))?;
        let sub = |n: &str| root.join(n);
        for d in ["workspace", "home", "logs", "volumes", "scripts", "digests"] {
            fs::create_dir(sub(d)).map_err(io_err("creating", &sub(d)))?;
        }
        let workspace = sub("workspace");
        let ws_fd = sys::open_root(&workspace).map_err(io_err("opening", &workspace))?;
        let ignore = ignore_rules(source)?;
        copy_tree(source, Path::new(""), &ws_fd, &ignore)?;
        Ok(RunDir {
            root: root.to_owned(),
            workspace,
            home: sub("home"),
            logs: sub("logs"),
            ws_fd,
        })
    }

    /// A named volume's directory, created on first use.
    pub fn volume(&self, name: &str) -> Result<PathBuf, PipelineError> {
        let p = self.root.join("volumes").join(name);
        match fs::create_dir(&p) {
            Ok(()) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(p),
            Err(e) => Err(io_err("creating volume", &p)(e)),
        }
    }

    /// Makes `dir` (relative to `/workspace`) exist inside the workspace, resolved from its fd.
    pub fn make_dir(&self, dir: &str) -> Result<(), PipelineError> {
        sys::create_in_root(self.ws_fd.as_fd(), dir.as_bytes(), sys::Make::Dir)
            .map(drop)
            .map_err(io_err("creating", &self.workspace.join(dir)))
    }

    /// The host path of `path` (relative to `/workspace/`), resolved inside the workspace:
    /// a symlink a step left there cannot lead out of it.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, PipelineError> {
        let what = self.workspace.join(path);
        let fd = sys::open_in_root(self.ws_fd.as_fd(), path.as_bytes())
            .map_err(io_err("resolving", &what))?;
        let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let real = fs::read_link(&fd_path).map_err(io_err("resolving", &what))?;
        Ok(real)
    }

    pub fn script(&self, i: usize, text: &str) -> Result<PathBuf, PipelineError> {
        let p = self.root.join("scripts").join(format!("step-{i}"));
        fs::write(&p, text).map_err(io_err("writing the script", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod of the script", &p))?;
        Ok(p)
    }

    pub fn digest_file(&self, i: usize) -> PathBuf {
        self.root.join("digests").join(format!("image-{i}"))
    }

    pub fn log_file(&self, i: usize) -> Result<File, PipelineError> {
        let p = self.logs.join(format!("step-{i}.log"));
        File::create(&p).map_err(io_err("creating the log", &p))
    }

    /// Removes everything but the logs.
    pub fn clean(&self) -> Result<(), PipelineError> {
        for d in ["workspace", "home", "volumes", "scripts", "digests"] {
            let p = self.root.join(d);
            remove_path(&p).map_err(io_err("removing", &p))?;
        }
        Ok(())
    }
}

/// `.gcloudignore` (gitignore syntax, `#!include:FILE` pulling in another file's rules), or
/// gcloud's default when there is none: `.git`, `.gitignore`, and `.gitignore`'s rules.
fn ignore_rules(source: &Path) -> Result<Gitignore, PipelineError> {
    let own = source.join(".gcloudignore");
    let text = match fs::read_to_string(&own) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut t = DEFAULT_IGNORE.to_owned();
            if source.join(".gitignore").is_file() {
                t.push_str("#!include:.gitignore\n");
            }
            t
        }
        Err(e) => return Err(io_err("reading", &own)(e)),
    };
    let mut b = GitignoreBuilder::new(source);
    add_rules(&mut b, source, &own, &text, 0)?;
    b.build()
        .map_err(|e| PipelineError::Invalid(format!("{}: {e}", own.display())))
}

fn add_rules(
    b: &mut GitignoreBuilder,
    source: &Path,
    file: &Path,
    text: &str,
    depth: u8,
) -> Result<(), PipelineError> {
    for line in text.lines() {
        if let Some(inc) = line.strip_prefix("#!include:") {
            let p = source.join(inc.trim());
            let t = fs::read_to_string(&p).map_err(io_err("reading the included", &p))?;
            if depth > 8 {
                return Err(PipelineError::Invalid(format!(
                    "{}: #!include nested too deep",
                    file.display()
                )));
            }
            add_rules(b, source, &p, &t, depth + 1)?;
            continue;
        }
        b.add_line(Some(file.to_owned()), line)
            .map_err(|e| PipelineError::Invalid(format!("{}: {e}", file.display())))?;
    }
    Ok(())
}

/// Copies `src/rel` into `dst` (an fd on the matching workspace directory): files, dirs and
/// symlinks (never followed), with their modes; other kinds are skipped.
fn copy_tree(
    src: &Path,
    rel: &Path,
    dst: &OwnedFd,
    ignore: &Gitignore,
) -> Result<(), PipelineError> {
    let dir = src.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("reading", &dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err("reading", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat of", &path))?;
        let ft = meta.file_type();
        if ignore.matched(rel.join(&name), ft.is_dir()).is_ignore() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_dir() {
            sys::mkdir_at(dst.as_fd(), &name, 0o700).map_err(io_err("creating", &path))?;
            let sub = sys::open_dir_at(dst.as_fd(), &name).map_err(io_err("opening", &path))?;
            copy_tree(src, &rel.join(&name), &sub, ignore)?;
            sys::chmod_at(dst.as_fd(), &name, mode).map_err(io_err("chmod", &path))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("readlink", &path))?;
            sys::symlink_at(target.as_os_str(), dst.as_fd(), &name)
                .map_err(io_err("symlink", &path))?;
        } else if ft.is_file() {
            copy_file(&path, dst, &name, mode, meta.len())?;
        }
    }
    Ok(())
}

fn copy_file(
    path: &Path,
    dst: &OwnedFd,
    name: &OsStr,
    mode: u32,
    len: u64,
) -> Result<(), PipelineError> {
    let from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("opening", path))?;
    let to = sys::create_file_at(dst.as_fd(), name, mode, libc::O_RDWR)
        .map_err(io_err("creating the copy of", path))?;
    sys::copy_data(&from, &to, len).map_err(io_err("copying", path))?;
    // The umask may have cut bits the source has.
    sys::chmod_fd(to.as_fd(), mode).map_err(io_err("chmod", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcloudignore_and_default_rules() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join(".git/objects")).unwrap();
        fs::create_dir_all(src.join("sub/build")).unwrap();
        fs::write(src.join(".gitignore"), "*.o\n").unwrap();
        fs::write(src.join("a.c"), "int x;").unwrap();
        fs::write(src.join("a.o"), "obj").unwrap();
        fs::write(src.join("sub/build/out"), "o").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        // No .gcloudignore: .git and .gitignore go, and what .gitignore says.
        let rd = RunDir::create(&t.path().join("run1"), &src).unwrap();
        let ws = &rd.workspace;
        assert!(ws.join("a.c").is_file());
        assert!(!ws.join("a.o").exists() && !ws.join(".git").exists());
        assert!(!ws.join(".gitignore").exists());
        assert_eq!(
            fs::read_link(ws.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        // A .gcloudignore replaces the default.
        fs::write(src.join(".gcloudignore"), "build/\n.git\n").unwrap();
        let rd = RunDir::create(&t.path().join("run2"), &src).unwrap();
        let ws = &rd.workspace;
        assert!(ws.join("a.o").is_file() && ws.join(".gitignore").is_file());
        assert!(ws.join(".gcloudignore").is_file());
        assert!(!ws.join("sub/build").exists() && ws.join("sub").is_dir());
        // A symlink in the workspace cannot send `dir` out of it.
        std::os::unix::fs::symlink("/", ws.join("escape")).unwrap();
        rd.make_dir("escape/made-by-step").unwrap();
        assert!(ws.join("made-by-step").is_dir());
        assert_eq!(rd.resolve("escape").unwrap(), ws.canonicalize().unwrap());
        rd.clean().unwrap();
        assert!(!ws.exists() && rd.logs.exists());
    }
}
