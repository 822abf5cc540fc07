//! Process-level calls for daemonising.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Which side of a fork we are on.
pub enum Forked {
    /// With the child's pid.
    Parent(rustix::process::Pid),
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
        pid => rustix::process::Pid::from_raw(pid)
            .map(Forked::Parent)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ECHILD)),
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

/// Makes process group `pgid` (the caller's own new group when None) the foreground job of
/// the terminal on stdin. A background caller would be stopped by SIGTTOU: it is blocked
/// for the call, as shells do.
pub fn take_terminal(pgid: Option<rustix::process::Pid>) -> io::Result<()> {
    let pgid = match pgid {
        Some(p) => p,
        None => {
            rustix::process::setpgid(None, None)?;
            rustix::process::getpgrp()
        }
    };
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use and
    // sigprocmask only reads/writes the two sets we own, on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = rustix::termios::tcsetpgrp(std::io::stdin(), pgid);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r?;
    }
    Ok(())
}

/// `unshare(2)` for namespaces. `CLONE_FILES` is refused: it would split the fd table under
/// other threads' feet.
pub fn unshare(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    if flags.contains(rustix::thread::UnshareFlags::FILES) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: without CLONE_FILES no fd table is split, which is the only hazard rustix names.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

/// Gives memory the allocator holds but no longer uses back to the system (glibc keeps freed
/// small blocks otherwise, so the daemon's RSS would stay at its peak after the kernel forgets
/// inodes).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CPUs this process may run on. (std's available_parallelism also reads the cgroup CPU quota
/// files, which costs milliseconds on cgroup v1: too slow for every `strata run`.)
pub fn cpu_count() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |s| s.count().max(1) as usize)
}

/// Blocks (`block: true`) or unblocks `signals` for the calling thread (`pthread_sigmask`).
/// A blocked signal stays pending until unblocked. That matters for PID 1 of a new namespace:
/// the kernel drops a signal sent to it while it has no handler, but queues a blocked one.
pub fn mask_signals(signals: &[i32], block: bool) -> io::Result<()> {
    // SAFETY: an all-zero sigset_t is a valid value for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; an invalid signal number only makes sigaddset fail.
        if unsafe { libc::sigaddset(&mut set, s) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Sets `signals` back to their default action (`SIG_DFL`), in a child about to exec.
pub fn default_signals(signals: &[i32]) -> io::Result<()> {
    for &s in signals {
        // SAFETY: SIG_DFL installs no handler code; an invalid number only fails the call.
        if unsafe { libc::signal(s, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `signals` blocked (see [`mask_signals`]) until dropped.
pub struct BlockedSignals(&'static [i32]);

impl BlockedSignals {
    pub fn new(signals: &'static [i32]) -> io::Result<Self> {
        mask_signals(signals, true)?;
        Ok(BlockedSignals(signals))
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        let _ = mask_signals(self.0, false);
    }
}
