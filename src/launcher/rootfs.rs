//! The container's root: the union mount plus /proc, a small /dev, a read-only /sys, masked
//! paths and bind mounts, then pivot_root into it with the old root detached.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rustix::mount::{
    MountFlags, MountPropagationFlags, UnmountFlags, mount, mount_bind, mount_bind_recursive,
    mount_change, mount_remount, unmount,
};

use super::{Bind, RunError};

fn step(what: &'static str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> RunError {
    let path = path.to_owned();
    move |e| RunError::Setup {
        step: what,
        path,
        cause: e.into(),
    }
}

fn io_step(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_owned();
    move |cause| RunError::Setup {
        step: what,
        path,
        cause,
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

/// Inside `root` (the union, already mounted): everything a process expects to find.
pub fn prepare(root: &Path, binds: &[Bind], rootless: bool) -> Result<(), RunError> {
    // The union becomes a mount of its own (pivot_root needs one) and nothing propagates back.
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(step("making mounts private", Path::new("/")))?;
    mount_bind(root, root).map_err(step("binding the root", root))?;

    let proc = root.join("proc");
    fs::create_dir_all(&proc).map_err(io_step("creating", &proc))?;
    mount(
        "proc",
        &proc,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(step("mounting /proc", &proc))?;

    dev(root)?;

    let sys = root.join("sys");
    fs::create_dir_all(&sys).map_err(io_step("creating", &sys))?;
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    // A fresh sysfs needs the network namespace to be ours; in a user namespace the host's
    // is bound instead, read-only.
    if rootless || mount("sysfs", &sys, "sysfs", ro, None).is_err() {
        mount_bind_recursive("/sys", &sys).map_err(step("binding /sys", &sys))?;
        mount_remount(&sys, MountFlags::BIND | ro, "")
            .map_err(step("making /sys read-only", &sys))?;
    }

    for b in binds {
        let dst = root.join(b.dst.strip_prefix("/").unwrap_or(&b.dst));
        if b.src.is_dir() {
            fs::create_dir_all(&dst).map_err(io_step("creating bind target", &dst))?;
        } else {
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(io_step("creating bind target", p))?;
            }
            if !dst.exists() {
                fs::write(&dst, b"").map_err(io_step("creating bind target", &dst))?;
            }
        }
        mount_bind_recursive(&b.src, &dst).map_err(step("binding", &b.src))?;
        if b.read_only {
            mount_remount(&dst, MountFlags::BIND | MountFlags::RDONLY, "")
                .map_err(step("making bind read-only", &dst))?;
        }
    }

    for m in MASKED {
        let p = root.join(&m[1..]);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {
                let _ = mount("tmpfs", &p, "tmpfs", MountFlags::RDONLY, None);
            }
            Ok(_) => {
                let _ = mount_bind("/dev/null", &p);
            }
            Err(_) => {}
        }
    }
    for r in READ_ONLY {
        let p = root.join(&r[1..]);
        if p.exists() && mount_bind(&p, &p).is_ok() {
            let _ = mount_remount(&p, MountFlags::BIND | MountFlags::RDONLY, "");
        }
    }
    Ok(())
}

/// /dev: a tmpfs with the harmless host devices bound in, its own devpts and shm.
fn dev(root: &Path) -> Result<(), RunError> {
    let dev = root.join("dev");
    fs::create_dir_all(&dev).map_err(io_step("creating", &dev))?;
    mount(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"mode=755,size=65536k"),
    )
    .map_err(step("mounting /dev", &dev))?;
    for d in DEVICES {
        let p = dev.join(d);
        fs::write(&p, b"").map_err(io_step("creating", &p))?;
        mount_bind(Path::new("/dev").join(d), &p).map_err(step("binding device", &p))?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(io_step("creating", &pts))?;
    mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(step("mounting devpts", &pts))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(io_step("creating", &shm))?;
    mount(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=1777,size=65536k"),
    )
    .map_err(step("mounting /dev/shm", &shm))?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(name);
        symlink(target, &p).map_err(io_step("creating", &p))?;
    }
    Ok(())
}

/// Makes `root` the process's `/` and detaches the old root entirely.
pub fn pivot(root: &Path, read_only: bool) -> Result<(), RunError> {
    std::env::set_current_dir(root).map_err(io_step("entering", root))?;
    // pivot_root(".", "."): the old root ends up stacked under the new one, then detached.
    rustix::process::pivot_root(".", ".").map_err(step("pivot_root into", root))?;
    unmount(".", UnmountFlags::DETACH).map_err(step("detaching the old root", root))?;
    std::env::set_current_dir("/").map_err(io_step("entering", Path::new("/")))?;
    if read_only {
        mount_remount("/", MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(step("making the root read-only", Path::new("/")))?;
    }
    Ok(())
}

/// The working directory inside the container, created when missing (as docker does).
pub fn enter_workdir(dir: &Path) -> Result<(), RunError> {
    let dir: PathBuf = Path::new("/").join(dir);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(io_step("creating the working directory", &dir))?;
    }
    std::env::set_current_dir(&dir).map_err(io_step("entering the working directory", &dir))
}
