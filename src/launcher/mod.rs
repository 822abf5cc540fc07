//! `strata run`: a process on a union root, in its own namespaces, under cgroup limits.
//!
//! Three processes besides the command, each with one job:
//! - strata itself (the supervisor) unshares a mount namespace (and, rootless, a user
//!   namespace), serves the union mount from its threads there (so the host never sees it),
//!   puts the container in its cgroup, relays signals and cleans up;
//! - a relay child unshares the PID, UTS, IPC, network, cgroup and mount namespaces;
//! - its child is PID 1 of the new PID namespace: it builds the root (/proc, /dev, /sys,
//!   masks, binds), pivots into it, forks the command, relays signals and reaps zombies.

mod cgroup;
mod handshake;
mod init;
mod rootfs;
mod userns;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::process::{Pid, WaitOptions, waitpid};
use rustix::thread::UnshareFlags;

use crate::mount::{MountError, MountRequest};
use crate::options::MountOptions;
use crate::sys::{self, Forked};
use handshake::Msg;

/// Resource limits; None means unlimited.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Net {
    /// A network namespace with only loopback, up.
    #[default]
    None,
    /// The host's network.
    Host,
}

#[derive(Clone, Debug)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

/// Everything a run needs, from the command line and (later) an image's defaults.
#[derive(Clone, Debug, Default)]
pub struct RunSpec {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Persistent container layer (`DIR/diff` and `DIR/work`); None: a fresh one, removed
    /// at exit.
    pub upper: Option<PathBuf>,
    pub argv: Vec<OsString>,
    /// `KEY=VALUE` entries.
    pub env: Vec<OsString>,
    pub workdir: Option<PathBuf>,
    pub user: Option<(u32, u32)>,
    pub hostname: Option<String>,
    pub limits: Limits,
    pub net: Net,
    pub read_only: bool,
    pub binds: Vec<Bind>,
}

/// What stopped a run, naming the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no command given (strata run [OPTIONS] -- CMD [ARGS...])")]
    NoCommand,
    #[error("no lower layers given (--lower DIR)")]
    NoLayers,
    #[error("bad {what} '{value}': {why}")]
    BadValue {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("preparing the container layer {path}: {cause}")]
    Upper {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("creating namespaces ({step}): {cause}")]
    Namespace {
        step: &'static str,
        cause: std::io::Error,
    },
    #[error("cgroup {path}: {cause}")]
    Cgroup {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{step} {path}: {cause}")]
    Setup {
        step: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A step that works on no path (the hostname, the loopback device, privileges).
    #[error("{step}: {cause}")]
    Step { step: String, cause: std::io::Error },
    #[error("starting the container: {0}")]
    Process(std::io::Error),
    #[error(
        "the filesystem daemon serving the container's root {0} died (its FUSE connection \
         ended): the container was stopped"
    )]
    DaemonDied(PathBuf),
}

/// Parses a size like `256M`, `1g`, `512k` or `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<u64, RunError> {
    let bad = |why| RunError::BadValue {
        what: "size",
        value: s.to_owned(),
        why,
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| bad("expected a number with an optional unit"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad("unknown unit (use k, M, G or T)")),
    };
    let v = n.checked_mul(mult).ok_or_else(|| bad("too large"))?;
    if v == 0 {
        return Err(bad("must be more than 0"));
    }
    Ok(v)
}

/// Parses `UID[:GID]` (numbers; names need an image's /etc/passwd).
pub fn parse_user(s: &str) -> Result<(u32, u32), RunError> {
    let bad = |why| RunError::BadValue {
        what: "user",
        value: s.to_owned(),
        why,
    };
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let uid = u
        .parse()
        .map_err(|_| bad("expected UID[:GID] as numbers"))?;
    let gid = g
        .parse()
        .map_err(|_| bad("expected UID[:GID] as numbers"))?;
    Ok((uid, gid))
}

/// Parses `SRC:DST[:ro]`.
pub fn parse_bind(s: &str) -> Result<Bind, RunError> {
    let bad = |why| RunError::BadValue {
        what: "bind",
        value: s.to_owned(),
        why,
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [src, dst] => (src, dst, false),
        [src, dst, "ro"] => (src, dst, true),
        [src, dst, "rw"] => (src, dst, false),
        _ => return Err(bad("expected SRC:DST[:ro]")),
    };
    if !Path::new(src).exists() {
        return Err(bad("source does not exist"));
    }
    if !dst.starts_with('/') {
        return Err(bad("destination must be an absolute path"));
    }
    Ok(Bind {
        src: PathBuf::from(src),
        dst: PathBuf::from(dst),
        read_only: ro,
    })
}

/// Where the container layer and the mountpoint live; temporary parts go at drop.
struct Scratch {
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    root: PathBuf,
    ephemeral: bool,
    /// An flock on the directory, held by the run's processes while they live: how a sweep
    /// tells a live run (in any pid namespace) from a killed one.
    _lock: std::fs::File,
}

/// Where runs make their scratch directories (`STRATA_RUN_DIR`, else /var/tmp).
fn scratch_base() -> PathBuf {
    std::env::var_os("STRATA_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Removes the scratch directories of runs whose process is gone: a SIGKILL gives a run no
/// chance to clean up, so the next run (or build) does. A directory whose lock is held, whose
/// pid is alive (maybe reused) or whose root is still a mount point is left alone.
pub fn sweep_scratch() {
    let Ok(entries) = std::fs::read_dir(scratch_base()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("strata-run-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(Pid::from_raw);
        let Some(pid) = pid else { continue };
        if rustix::process::test_kill_process(pid) != Err(rustix::io::Errno::SRCH) {
            continue;
        }
        let dir = e.path();
        let Ok(lock) = std::fs::File::open(&dir) else {
            continue;
        };
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        let dev = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.dev());
        if matches!((dev(&dir), dev(&dir.join("root"))), (Ok(a), Ok(b)) if a != b) {
            continue;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Scratch {
    fn new(spec: &RunSpec) -> Result<Scratch, RunError> {
        sweep_scratch();
        let base = scratch_base();
        let dir = base.join(format!(
            "strata-run-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let err = |path: &Path| {
            let path = path.to_owned();
            move |cause| RunError::Upper { path, cause }
        };
        std::fs::create_dir(&dir).map_err(err(&dir))?;
        let lock = std::fs::File::open(&dir).map_err(err(&dir))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| err(&dir)(e.into()))?;
        let root = dir.join("root");
        std::fs::create_dir(&root).map_err(err(&root))?;
        let (upper, work, ephemeral) = match &spec.upper {
            Some(u) => (u.join("diff"), u.join("work"), false),
            None => (dir.join("diff"), dir.join("work"), true),
        };
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(err(d))?;
        }
        Ok(Scratch {
            dir,
            upper,
            work,
            root,
            ephemeral,
            _lock: lock,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.ephemeral {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            let _ = std::fs::remove_dir(&self.root);
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn ns_err<E: Into<std::io::Error>>(step: &'static str) -> impl FnOnce(E) -> RunError {
    move |e| RunError::Namespace {
        step,
        cause: e.into(),
    }
}

/// For rootless callers other than `run` (the builder): enters a user namespace where the
/// caller is root, as `run` does; false when only the caller's own id could be mapped.
pub fn enter_user_namespace() -> Result<bool, RunError> {
    userns::enter()
}

/// Runs the container; returns the exit code strata should exit with (the command's, 128+N
/// when a signal killed it, 137 when the OOM killer did).
pub fn run(spec: &RunSpec) -> Result<i32, RunError> {
    if spec.argv.is_empty() {
        return Err(RunError::NoCommand);
    }
    if spec.lowers.is_empty() {
        return Err(RunError::NoLayers);
    }
    for l in &spec.lowers {
        if !l.is_dir() {
            return Err(RunError::Setup {
                step: "lower layer",
                path: l.clone(),
                cause: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
    }
    let rootless = !sys::is_root();
    // Signals for the container wait (blocked) until each process on the way has its relay:
    // one sent during the setup reaches the command instead of killing us half-way (leaving
    // the scratch layer) or vanishing at PID 1, which drops signals it has no handler for.
    let blocked = sys::BlockedSignals::new(init::FORWARDED).map_err(RunError::Process)?;
    let scratch = Scratch::new(spec)?;

    // 1. Our own mount namespace: the union is mounted and served only there.
    // With one id mapped, files of other owners are squashed to root (see mount_request).
    let mut squash = false;
    if rootless {
        squash = !userns::enter()?;
    } else {
        sys::unshare(UnshareFlags::NEWNS).map_err(ns_err("mount"))?;
    }
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )
    .map_err(ns_err("making mounts private"))?;

    // 2. The relay child, forked while we have one thread; it waits for the mount.
    let (go_rd, go_wr) = sys::pipe().map_err(RunError::Process)?;
    let relay = match sys::fork().map_err(RunError::Process)? {
        Forked::Child => {
            drop(go_wr);
            child(spec, &scratch.root, go_rd, rootless)
        }
        Forked::Parent(pid) => pid,
    };
    drop(go_rd);
    // Until `Go` is sent, the relay waits; on any error here it is told why and exits.
    let mut go = std::fs::File::from(go_wr);
    let started = supervise(spec, &scratch, relay, &mut go, squash);
    // The forwarding thread is there (or we failed): what is pending goes to the relay now.
    drop(blocked);
    if let Err(e) = &started {
        let _ = handshake::send(&mut go, &Msg::Fail(e.to_string()));
    }
    drop(go);
    let (session, cgroup) = match started {
        Ok(v) => v,
        Err(e) => {
            wait(relay);
            return Err(e);
        }
    };

    // 3. The container runs; we relay signals until it ends, or its root's daemon dies.
    let (code, died) = wait_serving(relay, &session.guard);
    // The command may have exited (or died of SIGBUS) because its root had just gone.
    let died = died || !serving(&scratch.root, &session.guard);
    if rustix::termios::isatty(std::io::stdin()) {
        let _ = sys::take_terminal(Some(rustix::process::getpgrp()));
    }

    // 4. Teardown: unmount, cgroup, temporary layer.
    drop(session);
    let oom = cgroup.as_ref().map_or(0, cgroup::Cgroup::oom_kills);
    drop(cgroup);
    let root = scratch.root.clone();
    drop(scratch);
    if died {
        return Err(RunError::DaemonDied(root));
    }
    if oom > 0 {
        eprintln!(
            "strata: the command was killed by the kernel's OOM killer (memory limit {} bytes)",
            spec.limits.memory.unwrap_or(0)
        );
        return Ok(137);
    }
    Ok(code)
}

/// The supervisor's part once the relay exists: cgroup, mount, signal relay, then `Go`.
fn supervise(
    spec: &RunSpec,
    scratch: &Scratch,
    relay: Pid,
    go: &mut std::fs::File,
    squash: bool,
) -> Result<(fuser::BackgroundSession, Option<cgroup::Cgroup>), RunError> {
    let l = &spec.limits;
    let cgroup = if l.memory.is_some() || l.cpus.is_some() || l.pids.is_some() {
        let name = format!("strata-{}", std::process::id());
        match cgroup::Cgroup::create(&name, l)? {
            Some(cg) => {
                cg.add(relay.as_raw_nonzero().get() as u32)?;
                Some(cg)
            }
            None => {
                eprintln!(
                    "strata: warning: no cgroup can be created here (rootless without a \
                     delegated cgroup): running WITHOUT the --memory/--cpus/--pids limits"
                );
                None
            }
        }
    } else {
        None
    };
    let session = crate::mount::spawn(&mount_request(scratch, spec, squash))?;
    let mut signals =
        signal_hook::iterator::Signals::new(init::FORWARDED).map_err(RunError::Process)?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if let Some(s) = rustix::process::Signal::from_named_raw(sig) {
                let _ = rustix::process::kill_process(relay, s);
            }
        }
    });
    handshake::send(go, &Msg::Go).map_err(RunError::Process)?;
    Ok((session, cgroup))
}

/// The relay child and, below it, PID 1. Never returns.
fn child(spec: &RunSpec, root: &Path, go: std::os::fd::OwnedFd, rootless: bool) -> ! {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // The supervisor reports its own failure; the relay only stops.
    if handshake::recv(&mut std::fs::File::from(go)) != Msg::Go {
        std::process::exit(125);
    }
    let mut flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWCGROUP;
    if spec.net == Net::None {
        flags |= UnshareFlags::NEWNET;
    }
    if let Err(e) = sys::unshare(flags) {
        fail(&ns_err::<std::io::Error>("pid, uts, ipc, net, cgroup")(e));
    }
    let signals = match init::signal_set() {
        Ok(s) => s,
        Err(e) => fail(&RunError::Process(e)),
    };
    // Until PID 1 has its handlers, the kernel would drop what the relay passes on (a SIGTERM
    // right after the start): blocked, it waits for them.
    if let Err(e) = sys::mask_signals(init::FORWARDED, true) {
        fail(&RunError::Process(e));
    }
    match sys::fork() {
        Err(e) => fail(&RunError::Process(e)),
        Ok(Forked::Parent(pid1)) => {
            // The relay: signals down, the exit status up.
            if let Err(e) = sys::mask_signals(init::FORWARDED, false) {
                fail(&RunError::Process(e));
            }
            std::process::exit(init::relay(signals, pid1, false));
        }
        Ok(Forked::Child) => {}
    }
    // PID 1 of the new namespace.
    drop(signals);
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Err(e) = pid1_setup(spec, root, rootless) {
        fail(&e);
    }
    let signals = match init::signal_set() {
        Ok(s) => s,
        Err(e) => fail(&RunError::Process(e)),
    };
    match sys::fork() {
        Err(e) => fail(&RunError::Process(e)),
        Ok(Forked::Parent(cmd)) => {
            // Handlers in place: what came meanwhile is delivered now, relayed to the command.
            if let Err(e) = sys::mask_signals(init::FORWARDED, false) {
                fail(&RunError::Process(e));
            }
            std::process::exit(init::relay(signals, cmd, true))
        }
        Ok(Forked::Child) => {
            drop(signals);
            // The command starts with default actions and nothing blocked (exec keeps the
            // mask); a signal relayed before this point acts now, as on the command.
            if let Err(e) = sys::default_signals(init::FORWARDED)
                .and_then(|()| sys::mask_signals(init::FORWARDED, false))
            {
                fail(&RunError::Process(e));
            }
            init::exec(spec)
        }
    }
}

/// Inside the new namespaces, before the command: name, network, root, privileges.
fn pid1_setup(spec: &RunSpec, root: &Path, rootless: bool) -> Result<(), RunError> {
    let host = spec.hostname.as_deref().unwrap_or("strata");
    rustix::system::sethostname(host.as_bytes()).map_err(|e| RunError::Step {
        step: format!("setting the hostname {host:?}"),
        cause: e.into(),
    })?;
    if spec.net == Net::None {
        sys::loopback_up().map_err(|cause| RunError::Step {
            step: "bringing up the loopback device".into(),
            cause,
        })?;
    }
    let root = rootfs::prepare(root, &spec.binds, spec.workdir.as_deref(), rootless)?;
    rootfs::pivot(&root, spec.read_only)?;
    drop(root);
    sys::limit_bounding_set(sys::caps::DOCKER_DEFAULT).map_err(|cause| RunError::Step {
        step: "dropping capabilities".into(),
        cause,
    })?;
    rustix::thread::set_no_new_privs(true).map_err(|e| RunError::Step {
        step: "setting no_new_privs".into(),
        cause: e.into(),
    })?;
    Ok(())
}

fn fail(e: &RunError) -> ! {
    let _ = writeln!(std::io::stderr(), "strata: {e}");
    std::process::exit(125);
}

/// How long a container whose root's daemon died may take to exit on its own (its processes
/// get ENOTCONN from every access to the root) before it is killed.
const DEAD_ROOT_GRACE: Duration = Duration::from_secs(2);

/// Waits for the relay's exit code, watching the union's session: when every serving thread
/// has ended (the FUSE connection aborted, as the kernel does when a daemon dies, or a thread
/// panicked), the container has lost its root and is killed after [`DEAD_ROOT_GRACE`]. Returns
/// the code and whether the daemon died.
fn wait_serving(relay: Pid, threads: &JoinHandle<std::io::Result<()>>) -> (i32, bool) {
    let (done, exited) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let watcher = s.spawn(move || {
            loop {
                match exited.recv_timeout(Duration::from_millis(50)) {
                    Err(RecvTimeoutError::Timeout) if threads.is_finished() => break,
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return false,
                }
            }
            if exited.recv_timeout(DEAD_ROOT_GRACE).is_err() {
                let _ = rustix::process::kill_process(relay, rustix::process::Signal::KILL);
            }
            true
        });
        let code = wait(relay);
        let _ = done.send(());
        (code, watcher.join().unwrap_or(false))
    })
}

/// Whether the union is still served: its threads run and a statfs (never answered from the
/// kernel's caches) does not get ENOTCONN or ECONNABORTED, the errnos of a dead connection.
fn serving(root: &Path, threads: &JoinHandle<std::io::Result<()>>) -> bool {
    use rustix::io::Errno;
    !threads.is_finished()
        && !matches!(
            rustix::fs::statfs(root),
            Err(Errno::NOTCONN | Errno::CONNABORTED)
        )
}

fn wait(pid: Pid) -> i32 {
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, st))) => return init::exit_code(st),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn mount_request(scratch: &Scratch, spec: &RunSpec, squash: bool) -> MountRequest {
    let mut options = MountOptions {
        lowers: spec.lowers.clone(),
        upper: Some(scratch.upper.clone()),
        work: Some(scratch.work.clone()),
        suid: true,
        ..MountOptions::default()
    };
    // Rootless with one id mapped, layer files owned by anyone else would have no owner
    // inside, and the kernel refuses every write to such a file or directory: they appear
    // owned by the container's root instead (fuse-overlayfs's squash_to_root).
    if squash {
        options.ids.squash_uid = Some(0);
        options.ids.squash_gid = Some(0);
    }
    MountRequest {
        options,
        mountpoint: scratch.root.clone(),
        foreground: true,
        // A container start is latency-bound; the kernel queues requests for the ones there are.
        threads: sys::cpu_count().clamp(2, 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size(" 2T ").unwrap(), 2 << 40);
        for bad in ["", "M", "12XB", "-1", "0", "1.5G", "99999999999999T"] {
            assert!(
                matches!(
                    parse_size(bad),
                    Err(RunError::BadValue { what: "size", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("0:100").unwrap(), (0, 100));
        for bad in ["", "root", "1000:", ":5", "1:2:3", "-1"] {
            assert!(parse_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binds() {
        let src = std::env::temp_dir();
        let s = src.display();
        let b = parse_bind(&format!("{s}:/data")).unwrap();
        assert_eq!((b.dst.as_path(), b.read_only), (Path::new("/data"), false));
        assert!(parse_bind(&format!("{s}:/data:ro")).unwrap().read_only);
        assert!(!parse_bind(&format!("{s}:/data:rw")).unwrap().read_only);
        for bad in [
            format!("{s}"),
            format!("{s}:data"),
            format!("{s}:/data:rx"),
            "/no/such/source/here:/data".to_owned(),
        ] {
            assert!(
                matches!(
                    parse_bind(&bad),
                    Err(RunError::BadValue { what: "bind", .. })
                ),
                "{bad:?}"
            );
        }
    }
}
