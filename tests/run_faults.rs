//! `strata run` when the daemon serving its union dies. The union is served by threads of the
//! `strata run` process itself (the supervisor, in its private mount namespace), so there are
//! two honest ways to kill "the daemon", each 10 times at a random moment of a shell loop that
//! writes and reads files in the container:
//! - abort its FUSE connection (`/sys/fs/fuse/connections/N/abort`), which is what the kernel
//!   does when a daemon's last /dev/fuse fd closes: the processes inside get ENOTCONN (or
//!   ECONNABORTED for the request in flight at that moment, EIO for a file whose dirty pages
//!   could not be written back), `strata
//!   run` survives to exit 125 with one line saying the daemon died, and leaves nothing;
//! - SIGKILL the `strata run` process (the one that serves FUSE): nothing can report then, but
//!   the container dies with it (no hang), the mount goes with its namespace, and the next run
//!   sweeps the scratch directory and cgroup the killed one could not remove.

mod common;
mod oci_layout;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use oci_layout::Lcg;

const BUSYBOX: &str = "/bin/busybox";
const ROUNDS: usize = 10;
/// Generous: a run that takes this long after its daemon died has hung.
const HANG: Duration = Duration::from_secs(90);

/// Writes and reads files in the container's root until an access fails, then says so on
/// stderr (a pipe to the host, not on the dead mount) and exits 3. Shell builtins only, run by
/// a busybox bound from the host: code paged in from the dead union would die of SIGBUS
/// instead (a page fault cannot return ENOTCONN).
const WORKLOAD: &str = "i=0; while :; do i=$((i+1)); f=/tmp/f$((i % 8)); \
     echo $i > $f || break; read x < $f || break; [ $i = 20 ] && echo ready; done; \
     echo \"workload: an access failed at $i\" >&2; exit 3";

struct Box {
    fx: Fixture,
    scratch: PathBuf,
}

impl Box {
    fn new() -> Option<Box> {
        if !require_mount_env() || !require_busybox(BUSYBOX) {
            return None;
        }
        let fx = Fixture::new(1);
        let root = &fx.layers[0];
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            mkdir(&root.join(d));
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for app in ["sh", "cat", "true"] {
            symlink("busybox", &root.join("bin").join(app));
        }
        mkdir(&root.join("hostbin"));
        let hostbin = fx.path("hostbin");
        mkdir(&hostbin);
        fs::copy(BUSYBOX, hostbin.join("busybox")).unwrap();
        symlink("busybox", &hostbin.join("sh"));
        let scratch = fx.path("scratch");
        mkdir(&scratch);
        Some(Box { fx, scratch })
    }

    /// A run with limits, so that it has a cgroup to leave behind.
    fn cmd(&self, script: &str) -> Command {
        let mut c = Command::new(STRATA);
        c.env("STRATA_RUN_DIR", &self.scratch)
            .args(["run", "--memory", "256M", "--pids", "100", "--lower"])
            .arg(&self.fx.layers[0])
            .arg("--bind")
            .arg(format!("{}:/hostbin:ro", self.fx.path("hostbin").display()))
            .args(["--", "/hostbin/sh", "-c", script])
            .stdin(Stdio::null());
        c
    }

    /// Starts the workload and returns once it has run 20 rounds.
    fn start(&self) -> Child {
        let mut child = self
            .cmd(WORKLOAD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line != "ready\n" {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the workload did not start: {line:?} {err}");
        }
        child
    }

    /// The scratch directory is empty, no cgroup of run `pid` exists (v1 memory/cpu/pids and
    /// v2) and its FUSE connection is gone (the mount lived only in its namespace).
    fn assert_clean(&self, pid: u32, conn: &Path, ctx: &str) {
        let left: Vec<_> = fs::read_dir(&self.scratch).unwrap().flatten().collect();
        assert!(left.is_empty(), "{ctx}: left in the scratch dir: {left:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.scratch.to_str().unwrap()),
            "{ctx}: a run's mount is on the host"
        );
        assert!(
            wait_until(Duration::from_secs(10), || !conn.exists()),
            "{ctx}: FUSE connection {} still exists",
            conn.display()
        );
        let name = format!("strata/strata-{pid}");
        for h in ["memory", "cpu", "pids", "", "unified"] {
            let cg = Path::new("/sys/fs/cgroup").join(h).join(&name);
            assert!(!cg.exists(), "{ctx}: cgroup {} left", cg.display());
        }
    }
}

/// fusectl, mounted privately for the test (this VM does not mount it), unmounted on drop.
struct FuseCtl(tempfile::TempDir);

impl FuseCtl {
    fn mount() -> FuseCtl {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t fusectl");
        FuseCtl(dir)
    }

    /// The connection of the FUSE mount at `SCRATCH/*/root` in run `pid`'s mount namespace.
    fn connection_of(&self, pid: u32, scratch: &Path) -> PathBuf {
        let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let minor = info
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| {
                f.len() > 4
                    && f[4].starts_with(scratch.to_str().unwrap())
                    && f[4].ends_with("/root")
                    && f.iter().any(|x| x.starts_with("fuse"))
            })
            .and_then(|f| f[2].strip_prefix("0:").map(str::to_owned))
            .unwrap_or_else(|| panic!("no union mount of run {pid} in:\n{info}"));
        self.0.path().join(minor)
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        unmount(self.0.path());
    }
}

/// Waits for `child` (killing it and failing if it takes [`HANG`]); its status and stderr.
fn finish(mut child: Child, ctx: &str) -> (std::process::ExitStatus, String) {
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{ctx}: strata run still running {HANG:?} after its daemon died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

/// [`ROUNDS`] times: starts the workload, waits a random moment of up to 0.3 s, and hands the
/// run and its FUSE connection to `fault`.
fn each_round(b: &Box, mut fault: impl FnMut(usize, Child, PathBuf, Duration)) {
    let ctl = FuseCtl::mount();
    let mut rng = Lcg::from_time();
    eprintln!("seed {}", rng.0);
    for round in 0..ROUNDS {
        let child = b.start();
        let conn = ctl.connection_of(child.id(), &b.scratch);
        let delay = Duration::from_micros(rng.below(300_000));
        std::thread::sleep(delay);
        fault(round, child, conn, delay);
    }
}

#[test]
fn an_aborted_union_gives_enotconn_inside_and_exit_125() {
    let Some(b) = Box::new() else { return };
    each_round(&b, |round, child, conn, delay| {
        fs::write(conn.join("abort"), "1").unwrap();
        let pid = child.id();
        let ctx = format!("round {round}, aborted after {delay:?}");
        let (status, err) = finish(child, &ctx);
        assert_eq!(status.code(), Some(125), "{ctx}: {err}");
        // ENOTCONN; ECONNABORTED for the request in flight at the abort (the kernel's
        // fuse_abort_conn, which also runs when a daemon's last /dev/fuse fd closes); EIO where
        // the kernel reports the failed writeback of a file's dirty pages.
        let errnos = [
            "Transport endpoint is not connected",
            "Software caused connection abort",
            "Input/output error",
        ];
        assert!(
            errnos.iter().any(|e| err.contains(e)) && err.contains("workload: an access failed"),
            "{ctx}: the workload saw no ENOTCONN: {err}"
        );
        let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("strata:")).collect();
        assert_eq!(ours.len(), 1, "{ctx}: {err}");
        assert!(
            ours[0].contains("filesystem daemon") && ours[0].contains("died"),
            "{ctx}: {err}"
        );
        b.assert_clean(pid, &conn, &ctx);
    });
}

/// The pids under `pid` (its children's children...), read from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

#[test]
fn a_killed_strata_run_takes_its_container_and_the_next_run_sweeps() {
    let Some(b) = Box::new() else { return };
    each_round(&b, |round, child, conn, delay| {
        let pid = child.id();
        let inside = descendants(pid);
        assert!(inside.len() >= 3, "relay, pid 1, sh: {inside:?}");
        let ctx = format!("round {round}, killed after {delay:?}");
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(p, rustix::process::Signal::KILL).unwrap();
        let (status, _) = finish(child, &ctx);
        assert_eq!(status.code(), None, "{ctx}: it was not killed");
        // The container's processes die with it (parent-death signal, then the pid
        // namespace), never left running on a dead root.
        let alive = |q: &u32| {
            fs::read_to_string(format!("/proc/{q}/status"))
                .is_ok_and(|s| !s.contains("State:\tZ") && !s.contains("State:\tX"))
        };
        assert!(
            wait_until(HANG, || !inside.iter().any(alive)),
            "{ctx}: container processes outlived strata run: {inside:?}"
        );
        // What it could not clean up, the next run does.
        let o = b.cmd("true").output().unwrap();
        assert!(
            o.status.success(),
            "{ctx}: the next run: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        b.assert_clean(pid, &conn, &ctx);
    });
}
