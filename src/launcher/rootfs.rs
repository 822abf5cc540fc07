//! The container's root: the union mount plus /proc, a small /dev, a read-only /sys, masked
//! paths and bind mounts, then pivot_root into it with the old root detached.
//!
//! An image's symlinks must never reach the host: every path inside the root is resolved
//! inside it, from a held fd on the root (`sys::open_in_root`, `sys::create_in_root`), and
//! every mount goes onto the fd so resolved (the new mount API), never onto a path joined to
//! the root's: `proc -> /etc` or `data -> ../../../tmp/x` lands on `/etc` or `/tmp/x` *in the
//! root*, as runc does. Bind sources and host devices are the host's: opened once, mounted from
//! the fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::mount::{MountAttrFlags as Attr, MountPropagationFlags, UnmountFlags};

use super::{Bind, RunError};
use crate::sys::{self, Make};

fn err<E: Into<std::io::Error>>(
    step: &'static str,
    path: impl AsRef<Path>,
) -> impl FnOnce(E) -> RunError {
    let path = path.as_ref().to_owned();
    move |e| RunError::Setup {
        step,
        path,
        cause: e.into(),
    }
}

/// Files that show host details or let a container poke the kernel, hidden as docker does.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn no_exec() -> Attr {
    Attr::MOUNT_ATTR_NOSUID | Attr::MOUNT_ATTR_NODEV | Attr::MOUNT_ATTR_NOEXEC
}

/// The prepared root, held open: all that follows reaches it through these fds.
pub struct Root {
    fd: OwnedFd,
    /// The working directory, resolved and created before the root may turn read-only.
    workdir: Option<OwnedFd>,
}

/// Inside `root` (the union, already mounted): everything a process expects to find.
pub fn prepare(
    root: &Path,
    binds: &[Bind],
    workdir: Option<&Path>,
    rootless: bool,
) -> Result<Root, RunError> {
    // Nothing propagates back; the union becomes a mount of its own (pivot_root needs one),
    // and the fd of that mount is the root from here on.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(err("making mounts private", "/"))?;
    let union = sys::open_root(root).map_err(err("opening", root))?;
    let fd = sys::clone_mount(union.as_fd(), false).map_err(err("binding the root", root))?;
    sys::attach_mount(fd.as_fd(), union.as_fd()).map_err(err("binding the root", root))?;
    let r = fd.as_fd();

    let proc = sys::new_mount("proc", &[], no_exec()).map_err(err("mounting", "/proc"))?;
    mount_at(r, "/proc", &proc)?;
    dev(r)?;
    sysfs(r, rootless)?;
    for b in binds {
        bind(r, b)?;
    }
    masks(r)?;
    let workdir = match workdir {
        Some(w) => Some(
            sys::create_in_root(r, w.as_os_str().as_bytes(), Make::Dir)
                .map_err(err("creating the working directory", w))?,
        ),
        None => None,
    };
    Ok(Root { fd, workdir })
}

/// Attaches the detached mount `mnt` at the directory `path` of the root, made if missing.
fn mount_at(root: BorrowedFd<'_>, path: &str, mnt: &OwnedFd) -> Result<(), RunError> {
    let target =
        sys::create_in_root(root, path.as_bytes(), Make::Dir).map_err(err("creating", path))?;
    sys::attach_mount(mnt.as_fd(), target.as_fd()).map_err(err("mounting", path))
}

/// A fresh sysfs needs the network namespace to be ours; in a user namespace the host's is
/// bound instead, read-only all the way down.
fn sysfs(root: BorrowedFd<'_>, rootless: bool) -> Result<(), RunError> {
    let ro = Attr::MOUNT_ATTR_RDONLY | no_exec();
    let fresh = match rootless {
        true => None,
        false => sys::new_mount("sysfs", &[], ro).ok(),
    };
    let mnt = match fresh {
        Some(m) => m,
        None => {
            let host = sys::open_host_path(Path::new("/sys")).map_err(err("opening", "/sys"))?;
            let m = sys::clone_mount(host.as_fd(), true).map_err(err("binding", "/sys"))?;
            sys::set_mount_attrs(m.as_fd(), ro, true).map_err(err("making read-only", "/sys"))?;
            m
        }
    };
    mount_at(root, "/sys", &mnt)
}

/// `--bind SRC:DST[:ro]`: SRC opened on the host, DST resolved (and made) inside the root.
fn bind(root: BorrowedFd<'_>, b: &Bind) -> Result<(), RunError> {
    let src = sys::open_host_path(&b.src).map_err(err("opening bind source", &b.src))?;
    let st = sys::stat_fd(src.as_fd()).map_err(err("opening bind source", &b.src))?;
    let make = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Make::Dir,
        _ => Make::File,
    };
    let mnt = sys::clone_mount(src.as_fd(), true).map_err(err("binding", &b.src))?;
    if b.read_only {
        sys::set_mount_attrs(mnt.as_fd(), Attr::MOUNT_ATTR_RDONLY, true)
            .map_err(err("making bind read-only", &b.dst))?;
    }
    let dst = sys::create_in_root(root, b.dst.as_os_str().as_bytes(), make)
        .map_err(err("creating bind target", &b.dst))?;
    sys::attach_mount(mnt.as_fd(), dst.as_fd()).map_err(err("binding onto", &b.dst))
}

/// The fd of `path` in the root; None when it is not there (nothing to hide or protect).
fn existing(root: BorrowedFd<'_>, path: &str) -> Result<Option<OwnedFd>, RunError> {
    match sys::open_in_root(root, path.as_bytes()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(err("resolving", path)(e)),
    }
}

/// Masked paths get an empty read-only tmpfs (directories) or /dev/null (files) on top;
/// read-only ones a read-only bind of themselves.
fn masks(root: BorrowedFd<'_>) -> Result<(), RunError> {
    let null = sys::open_host_path(Path::new("/dev/null")).map_err(err("opening", "/dev/null"))?;
    for m in MASKED {
        let Some(target) = existing(root, m)? else {
            continue;
        };
        let st = sys::stat_fd(target.as_fd()).map_err(err("masking", m))?;
        let mnt = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => sys::new_mount("tmpfs", &[], Attr::MOUNT_ATTR_RDONLY),
            _ => sys::clone_mount(null.as_fd(), false),
        }
        .map_err(err("masking", m))?;
        sys::attach_mount(mnt.as_fd(), target.as_fd()).map_err(err("masking", m))?;
    }
    for p in READ_ONLY {
        let Some(target) = existing(root, p)? else {
            continue;
        };
        let mnt = sys::clone_mount(target.as_fd(), true).map_err(err("protecting", p))?;
        sys::set_mount_attrs(mnt.as_fd(), Attr::MOUNT_ATTR_RDONLY, true)
            .map_err(err("protecting", p))?;
        sys::attach_mount(mnt.as_fd(), target.as_fd()).map_err(err("protecting", p))?;
    }
    Ok(())
}

/// /dev: a tmpfs with the harmless host devices bound in, its own devpts and shm. Once the
/// tmpfs is attached, its fd is the only way in: the image's own /dev entries are under it.
fn dev(root: BorrowedFd<'_>) -> Result<(), RunError> {
    let dev = sys::new_mount(
        "tmpfs",
        &[("mode", Some("755")), ("size", Some("65536k"))],
        Attr::MOUNT_ATTR_NOSUID | Attr::MOUNT_ATTR_NOEXEC,
    )
    .map_err(err("mounting", "/dev"))?;
    mount_at(root, "/dev", &dev)?;
    let d = dev.as_fd();
    for name in DEVICES {
        let path = Path::new("/dev").join(name);
        let host = sys::open_host_path(&path).map_err(err("opening", &path))?;
        let mnt = sys::clone_mount(host.as_fd(), false).map_err(err("binding", &path))?;
        let name = OsStr::new(name);
        sys::create_file_at(d, name, 0o644, libc::O_WRONLY).map_err(err("creating", &path))?;
        let target = sys::open_path_at(d, name).map_err(err("opening", &path))?;
        sys::attach_mount(mnt.as_fd(), target.as_fd()).map_err(err("binding device", &path))?;
    }
    let pts: &[(&str, Option<&str>)] = &[
        ("newinstance", None),
        ("ptmxmode", Some("0666")),
        ("mode", Some("0620")),
    ];
    let shm: &[(&str, Option<&str>)] = &[("mode", Some("1777")), ("size", Some("65536k"))];
    for (name, fstype, opts, attrs) in [
        (
            "pts",
            "devpts",
            pts,
            Attr::MOUNT_ATTR_NOSUID | Attr::MOUNT_ATTR_NOEXEC,
        ),
        ("shm", "tmpfs", shm, no_exec()),
    ] {
        let path = Path::new("/dev").join(name);
        let name = OsStr::new(name);
        sys::mkdir_at(d, name, 0o755).map_err(err("creating", &path))?;
        let target = sys::open_dir_at(d, name).map_err(err("opening", &path))?;
        let mnt = sys::new_mount(fstype, opts, attrs).map_err(err("mounting", &path))?;
        sys::attach_mount(mnt.as_fd(), target.as_fd()).map_err(err("mounting", &path))?;
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        sys::symlink_at(OsStr::new(target), d, OsStr::new(name))
            .map_err(err("creating", Path::new("/dev").join(name)))?;
    }
    Ok(())
}

/// Makes the prepared root the process's `/`, detaches the old root entirely, and enters the
/// working directory.
pub fn pivot(root: &Root, read_only: bool) -> Result<(), RunError> {
    rustix::process::fchdir(&root.fd).map_err(err("entering", "/"))?;
    // pivot_root(".", "."): the old root ends up stacked under the new one, then detached.
    rustix::process::pivot_root(".", ".").map_err(err("pivot_root into", "/"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(err("detaching the old root", "/"))?;
    let cwd = root.workdir.as_ref().unwrap_or(&root.fd);
    rustix::process::fchdir(cwd).map_err(err("entering the working directory", "/"))?;
    if read_only {
        sys::set_mount_attrs(root.fd.as_fd(), Attr::MOUNT_ATTR_RDONLY, false)
            .map_err(err("making the root read-only", "/"))?;
    }
    Ok(())
}
