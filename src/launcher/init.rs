//! Process plumbing: the relay processes that pass signals down and exit statuses up, PID 1's
//! zombie reaping, and the final exec of the command.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus, kill_process, waitpid};
use signal_hook::consts::*;

use super::RunSpec;

/// Signals a container's command receives when strata gets them.
pub const FORWARDED: &[i32] = &[
    SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM, SIGCONT, SIGPIPE,
];

/// Exit code for a wait status, in the shell's convention (128+N for death by signal N).
pub fn exit_code(status: WaitStatus) -> i32 {
    if let Some(code) = status.exit_status() {
        code
    } else if let Some(sig) = status.terminating_signal() {
        128 + sig
    } else {
        125
    }
}

/// Relays signals to `child` and waits for it; with `reap_all` (PID 1) also collects every
/// orphan that the kernel hands over. Returns the child's exit code. The signal set must be
/// registered before `child` was forked so nothing is missed.
pub fn relay(mut signals: signal_hook::iterator::Signals, child: Pid, reap_all: bool) -> i32 {
    loop {
        // Collect whatever has exited (our child, or orphans reparented to PID 1).
        loop {
            // Any child for PID 1 (wait(2), pid -1: `waitpid(None)` would mean our own
            // process group only, and the command leads its own with a terminal).
            let reaped = if reap_all {
                rustix::process::wait(WaitOptions::NOHANG)
            } else {
                waitpid(Some(child), WaitOptions::NOHANG)
            };
            match reaped {
                Ok(Some((pid, status))) => {
                    if pid == child {
                        return exit_code(status);
                    }
                }
                Ok(None) => break,
                Err(_) => return 125,
            }
        }
        for sig in signals.wait() {
            if sig != SIGCHLD
                && let Some(s) = Signal::from_named_raw(sig)
            {
                let _ = kill_process(child, s);
            }
        }
    }
}

pub fn signal_set() -> std::io::Result<signal_hook::iterator::Signals> {
    let mut set = FORWARDED.to_vec();
    set.push(SIGCHLD);
    signal_hook::iterator::Signals::new(set)
}

/// Finds `cmd` as execvp would, in the container's PATH.
fn find(cmd: &OsString, env: &[OsString]) -> Option<PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(|&b| b == b':')
        .map(|d| Path::new(std::ffi::OsStr::from_bytes(d)).join(cmd))
        .find(|p| p.is_file())
}

/// Becomes the command (never returns): user, terminal, environment, exec. Exit codes follow
/// docker's convention when it cannot start: 127 not found, 126 not executable.
pub fn exec(spec: &RunSpec) -> ! {
    let cmd = &spec.argv[0];
    let Some(path) = find(cmd, &spec.env) else {
        eprintln!(
            "strata: {}: command not found in the container",
            cmd.to_string_lossy()
        );
        std::process::exit(127);
    };
    // With a terminal the command becomes its foreground job, so ^C and job control reach it
    // (and only it).
    if rustix::termios::isatty(std::io::stdin()) {
        let _ = crate::sys::take_terminal(None);
    }
    let mut c = std::process::Command::new(&path);
    c.arg0(cmd).args(&spec.argv[1..]).env_clear();
    for e in &spec.env {
        let b = e.as_bytes();
        let (k, v) = match b.iter().position(|&x| x == b'=') {
            Some(i) => (&b[..i], &b[i + 1..]),
            None => (b, &b""[..]),
        };
        c.env(
            std::ffi::OsStr::from_bytes(k),
            std::ffi::OsStr::from_bytes(v),
        );
    }
    if let Some((uid, gid)) = spec.user {
        c.uid(uid).gid(gid);
    }
    let err = c.exec();
    let code = match err.raw_os_error() {
        Some(libc::ENOENT) => 127,
        _ => 126,
    };
    eprintln!("strata: {}: {err}", path.display());
    std::process::exit(code);
}
