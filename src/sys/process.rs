//! Process-level calls for daemonising.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Which side of a fork we are on.
pub enum Forked {
    Parent,
    Child,
}

/// `fork()`. Must be called while the process has a single thread (before any worker or
/// signal thread starts), which is how `main` uses it.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other threads exist, so the child cannot inherit a lock
    // held by a vanished thread; the child continues with ordinary Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// Starts a new session so the daemon does not die with the caller's terminal.
pub fn setsid() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// A pipe whose ends close on exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Points stdin, stdout and stderr at /dev/null (a daemon must not hold the caller's tty, and
/// must keep fds 0-2 occupied so later opens never land there).
pub fn stdio_to_devnull() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..3 {
        // SAFETY: fds 0, 1 and 2 always exist in a Unix process (possibly closed, in which case
        // dup2 opens them); we replace them and never create a second owner of them in Rust.
        let mut t = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(target) };
        let r = rustix::io::dup2(null.as_fd(), &mut t);
        std::mem::forget(t);
        r?;
    }
    Ok(())
}

/// Whether we run with real root privileges (FUSE passthrough needs CAP_SYS_ADMIN in the
/// initial user namespace).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
