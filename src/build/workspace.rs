//! Where steps run: RUN as a `strata run` container over the stage's layers with its own
//! upper (the upper is the layer), and a read-only union of an earlier stage's layers,
//! mounted in the builder's private mount namespace, for `COPY --from` to read. COPY, ADD and
//! WORKDIR need no mount: they write through `layerfs`.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::image::Store;
use crate::image::store::Staging;
use crate::mount::MountRequest;
use crate::options::MountOptions;
use crate::sys;

use super::{Network, Result, io_err};

/// A mounted read-only union; unmounted (and its staging removed) when dropped.
pub struct Workspace {
    root: Option<OwnedFd>,
    session: Option<fuser::BackgroundSession>,
    _staging: Staging,
}

/// Rootless with only the caller's id mapped: layer files of other owners appear as root
/// (as `strata run` does), or the kernel would refuse every write to them.
static SQUASH: AtomicBool = AtomicBool::new(false);

/// The builder's mounts must not appear on the host, and must go when it dies. Rootless, it
/// first enters a user namespace as `strata run` does (subordinate ids through newuidmap, or
/// the caller's own id), where it is root: FUSE unions mount and owners are set inside it,
/// and RUN's `strata run` inherits it. Must be called while the process has one thread.
pub fn isolate() -> Result<()> {
    if !sys::is_root() {
        let ranges = crate::launcher::enter_user_namespace()
            .map_err(|e| super::at(0, format!("rootless build: {e}")))?;
        SQUASH.store(!ranges, Ordering::Relaxed);
    }
    sys::unshare(rustix::thread::UnshareFlags::NEWNS)
        .map_err(io_err("creating a mount namespace for", "/"))?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| io_err("making mounts private at", "/")(e.into()))
}

/// `lowers` top first, or an empty layer when there are none (FROM scratch).
pub fn lowers_or_empty(staging: &Staging, lowers: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !lowers.is_empty() {
        return Ok(lowers.to_vec());
    }
    let empty = staging.path.join("empty");
    std::fs::create_dir(&empty).map_err(io_err("creating", &empty))?;
    Ok(vec![empty])
}

impl Workspace {
    pub fn mount(store: &Store, lowers: &[PathBuf]) -> Result<Workspace> {
        let staging = store.staging()?;
        let mnt = staging.path.join("mnt");
        std::fs::create_dir(&mnt).map_err(io_err("creating", &mnt))?;
        let mut options = MountOptions {
            lowers: lowers_or_empty(&staging, lowers)?,
            suid: true,
            dev: true,
            ..MountOptions::default()
        };
        if SQUASH.load(Ordering::Relaxed) {
            options.ids.squash_uid = Some(0);
            options.ids.squash_gid = Some(0);
        }
        let session = crate::mount::spawn(&MountRequest {
            options,
            mountpoint: mnt.clone(),
            foreground: true,
            threads: 2,
        })?;
        let root = sys::open_root(&mnt).map_err(io_err("opening", &mnt))?;
        Ok(Workspace {
            root: Some(root),
            session: Some(session),
            _staging: staging,
        })
    }

    /// The union's root: every path inside is resolved from it.
    pub fn root(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.root.as_ref().map(|r| r.as_fd())
    }

    pub fn unmount(&mut self) {
        self.root = None;
        self.session = None;
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// One RUN: a container over the stage's layers.
pub struct Container<'a> {
    pub exe: &'a std::path::Path,
    pub lowers: &'a [PathBuf],
    pub argv: &'a [String],
    pub env: &'a [String],
    pub workdir: &'a str,
    pub user: Option<(u32, u32)>,
    pub network: Network,
    pub quiet: bool,
    /// On a terminal, each output line is prefixed with this (the step), as BuildKit does.
    pub prefix: Option<String>,
    /// Set by SIGINT/SIGTERM to the build: the container is stopped (see `wait_stopping`).
    pub interrupted: &'a AtomicBool,
}

/// Waits for `child`, passing SIGTERM on to it once `interrupted` is set, so a RUN container
/// stops with the build even when the signal reached only the builder (`kill -INT`, a
/// pipeline's SIGTERM); at a terminal Ctrl-C reaches both. A pidfd names the child, so the
/// signal cannot reach a reused pid.
fn wait_stopping(
    child: &mut std::process::Child,
    interrupted: &AtomicBool,
) -> std::io::Result<std::process::ExitStatus> {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let pidfd = pidfd_open(Pid::from_child(child), PidfdFlags::empty()).ok();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                if interrupted.load(Ordering::Relaxed) {
                    if let Some(fd) = &pidfd {
                        let _ = pidfd_send_signal(fd, Signal::TERM);
                    }
                    return;
                }
                std::thread::park_timeout(std::time::Duration::from_millis(20));
            }
        });
        let r = child.wait();
        done.store(true, Ordering::Release);
        watcher.thread().unpark();
        r
    })
}

/// Runs `cmd` with its stdout and stderr copied line by line to stderr, each line prefixed.
fn prefixed(
    cmd: &mut Command,
    prefix: &str,
    interrupted: &AtomicBool,
) -> std::io::Result<std::process::ExitStatus> {
    use std::io::{BufRead, Write};
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    std::thread::scope(|s| {
        for r in out {
            s.spawn(move || {
                for line in BufRead::split(std::io::BufReader::new(r), b'\n')
                    .map_while(std::result::Result::ok)
                {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(format!("{prefix} ").as_bytes());
                    let _ = err.write_all(&line);
                    let _ = err.write_all(b"\n");
                }
            });
        }
        wait_stopping(&mut child, interrupted)
    })
}

/// Runs the container with `strata run` (same namespaces, limits and root preparation as
/// any container); returns its exit code and its upper directory (in `staging`).
pub fn run_container(store: &Store, c: &Container<'_>) -> Result<(i32, PathBuf, Staging)> {
    let staging = store.staging()?;
    let dir = staging.path.join("c");
    let lowers = lowers_or_empty(&staging, c.lowers)?;
    let mut cmd = Command::new(c.exe);
    cmd.arg("--root").arg(store.root()).arg("run");
    for l in &lowers {
        cmd.arg("--lower").arg(l);
    }
    cmd.arg("--upper").arg(&dir);
    cmd.arg("--net").arg(match c.network {
        Network::None => "none",
        Network::Host => "host",
    });
    for e in c.env {
        cmd.arg("-e").arg(e);
    }
    cmd.arg("-w").arg(c.workdir);
    if let Some((u, g)) = c.user {
        cmd.arg("--user").arg(format!("{u}:{g}"));
    }
    cmd.arg("--").args(c.argv.iter().map(OsString::from));
    cmd.stdin(Stdio::null());
    let wait = |mut child: std::process::Child| wait_stopping(&mut child, c.interrupted);
    let status = match (&c.prefix, c.quiet) {
        (_, true) => cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(wait),
        (Some(p), false) => prefixed(&mut cmd, p, c.interrupted),
        (None, false) => {
            // The step's output goes to stderr: stdout carries only the image ID.
            let dup = std::os::fd::AsFd::as_fd(&std::io::stderr())
                .try_clone_to_owned()
                .map_err(io_err("duplicating", "stderr"))?;
            cmd.stdout(Stdio::from(dup)).spawn().and_then(wait)
        }
    }
    .map_err(io_err("running", c.exe))?;
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(125);
    Ok((code, dir.join("diff"), staging))
}
