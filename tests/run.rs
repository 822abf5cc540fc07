//! `strata run` for real: namespaces, cgroups, signals, exit codes and clean-up, on a root
//! layer built from busybox-static. Needs root, /dev/fuse and /bin/busybox; skips loudly
//! without them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BUSYBOX: &str = "/bin/busybox";

/// A busybox root layer and a private scratch dir for strata's temporary files.
struct Box {
    fx: Fixture,
    scratch: PathBuf,
}

impl Box {
    fn new() -> Option<Box> {
        if !require_mount_env() {
            return None;
        }
        if !require_busybox(BUSYBOX) {
            return None;
        }
        let fx = Fixture::new(1);
        let root = &fx.layers[0];
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            mkdir(&root.join(d));
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for app in [
            "sh", "true", "echo", "cat", "ls", "hostname", "sleep", "id", "kill", "grep", "wc",
        ] {
            symlink("busybox", &root.join("bin").join(app));
        }
        write(&root.join("etc/from-lower"), b"lower\n");
        let scratch = fx.path("scratch");
        Some(Box { fx, scratch })
    }

    fn cmd(&self, extra: &[&str], script: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.env("STRATA_RUN_DIR", &self.scratch)
            .arg("run")
            .arg("--lower")
            .arg(&self.fx.layers[0])
            .args(extra)
            .args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::null());
        c
    }

    fn run(&self, extra: &[&str], script: &str) -> Output {
        self.cmd(extra, script).output().unwrap()
    }

    /// Nothing left behind: no temporary layer, no mount, no cgroup of ours.
    fn assert_clean(&self) {
        assert_eq!(
            fs::read_dir(&self.scratch).unwrap().count(),
            0,
            "temporary container files left in {}",
            self.scratch.display()
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.scratch.to_str().unwrap()),
            "a container mount is visible on the host"
        );
        // A container's cgroup is named after its strata process, which removes it before it
        // exits: a cgroup whose process is gone is a leak (others belong to concurrent runs).
        for ctrl in ["memory", "cpu", "pids"] {
            let dir = Path::new("/sys/fs/cgroup").join(ctrl).join("strata");
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let leaked: Vec<PathBuf> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let pid = name.strip_prefix("strata-")?.parse::<u32>().ok()?;
                    (!Path::new(&format!("/proc/{pid}")).exists()).then(|| e.path())
                })
                .collect();
            assert!(leaked.is_empty(), "cgroups left behind: {leaked:?}");
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pid1_hostname_loopback_only() {
    let Some(b) = Box::new() else { return };
    let o = b.run(
        &["--hostname", "box1"],
        "echo pid=$$ ppid=$PPID; hostname; tail -n +3 /proc/net/dev | cut -d: -f1",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "pid=2 ppid=1", "command not under PID 1: {out}");
    assert_eq!(lines[1], "box1", "hostname: {out}");
    assert_eq!(
        &lines[2..],
        ["lo"],
        "network namespace has more than loopback: {out}"
    );
    let o = b.run(&[], "cat /sys/class/net/lo/flags");
    let flags = u32::from_str_radix(stdout(&o).trim().trim_start_matches("0x"), 16).unwrap_or(0);
    assert!(flags & 1 != 0, "lo is down: {}", stdout(&o));
    b.assert_clean();
}

#[test]
fn mounts_are_invisible_from_the_host_and_gone_after() {
    let Some(b) = Box::new() else { return };
    let mut child = b
        .cmd(&[], "echo ready; sleep 2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains("strata-run"),
        "container mounts leak to the host"
    );
    assert!(
        !host.contains("fuse.strata"),
        "the union mount is visible on the host"
    );
    assert!(child.wait().unwrap().success());
    b.assert_clean();
}

#[test]
fn memory_limit_oom_is_reported_with_137() {
    let Some(b) = Box::new() else { return };
    let o = b.run(
        &["--memory", "32M"],
        "a=xxxxxxxxxxxxxxxx; while true; do a=\"$a$a\"; done",
    );
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    assert!(stderr(&o).contains("OOM"), "not reported: {}", stderr(&o));
    b.assert_clean();
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let Some(b) = Box::new() else { return };
    let o = b.run(
        &["--pids", "12"],
        "n=0; while [ $n -lt 40 ]; do sleep 3 & n=$((n+1)); done 2>/dev/null; echo started; ls /proc | grep -c '^[0-9]'",
    );
    let out = stdout(&o);
    let procs: u32 = out
        .lines()
        .last()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(procs <= 12, "{procs} processes under --pids 12: {out}");
    b.assert_clean();
}

#[test]
fn cpu_quota_throttles() {
    let Some(b) = Box::new() else { return };
    let mut child = b
        .cmd(
            &["--cpus", "0.1"],
            "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done",
        )
        .spawn()
        .unwrap();
    let stat = [
        format!("/sys/fs/cgroup/cpu/strata/strata-{}/cpu.stat", child.id()),
        format!("/sys/fs/cgroup/strata/strata-{}/cpu.stat", child.id()),
    ];
    let mut throttled = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && throttled == 0 {
        std::thread::sleep(Duration::from_millis(100));
        for s in &stat {
            if let Ok(text) = fs::read_to_string(s) {
                throttled = text
                    .lines()
                    .find_map(|l| l.strip_prefix("nr_throttled "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    child.wait().unwrap();
    assert!(
        throttled > 0,
        "no throttling seen in cpu.stat under --cpus 0.1"
    );
    b.assert_clean();
}

#[test]
fn exit_codes_and_signals() {
    let Some(b) = Box::new() else { return };
    assert_eq!(b.run(&[], "exit 7").status.code(), Some(7));
    assert_eq!(b.run(&[], "kill -TERM $$").status.code(), Some(143));
    assert_eq!(b.run(&[], "kill -KILL $$").status.code(), Some(137));
    // A signal sent to strata reaches the command.
    for (sig, name) in [
        (rustix::process::Signal::TERM, "TERM"),
        (rustix::process::Signal::USR1, "USR1"),
        (rustix::process::Signal::HUP, "HUP"),
    ] {
        let mut child = b
            .cmd(
                &[],
                &format!("trap 'echo got {name}; exit 3' {name}; echo ready; while true; do sleep 0.05; done"),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            sig,
        )
        .unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{name} not forwarded");
        assert!(stdout(&o).contains(&format!("got {name}")));
    }
    b.assert_clean();
}

/// SIGTERM sent at once or a few milliseconds after `strata run` starts, while it is still
/// setting up: it reaches the command (kernel PID 1 would drop it before its handler exists)
/// or ends strata before it made anything, nothing is left, and the run does not wait out the
/// command's sleep.
#[test]
fn an_early_sigterm_reaches_the_command() {
    let Some(b) = Box::new() else { return };
    // Signals wait blocked during the setup; the command itself starts with none blocked.
    let o = b.run(&[], "grep SigBlk /proc/self/status");
    assert_eq!(stdout(&o), "SigBlk:\t0000000000000000\n", "{}", stderr(&o));
    for delay_ms in [0u64, 1, 3, 6, 10, 20, 40, 80] {
        let mut child = b.cmd(&[], "sleep 30").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let mut status = None;
        wait_until(std::time::Duration::from_secs(15), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SIGTERM {delay_ms} ms after the start was lost: still running after 15 s");
        };
        // 143: the command got it. Before strata's first instructions run, the default
        // action ends strata itself (nothing made yet): also prompt, also clean.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.code() == Some(143) || status.signal() == Some(libc::SIGTERM),
            "SIGTERM after {delay_ms} ms: {status:?}"
        );
    }
    b.assert_clean();
}

#[test]
fn orphans_are_reaped() {
    let Some(b) = Box::new() else { return };
    // Orphans get PID 1 as parent; once they exit PID 1 must collect them.
    let o = b.run(
        &[],
        "(sleep 0.1 &); (sleep 0.1 &); (sleep 0.1 &); sleep 0.6; \
         cat /proc/[0-9]*/stat 2>/dev/null | cut -d' ' -f3 | grep -c Z",
    );
    assert_eq!(stdout(&o).trim(), "0", "zombies left: {}", stdout(&o));
    b.assert_clean();
}

#[test]
fn ephemeral_and_persistent_container_layers() {
    let Some(b) = Box::new() else { return };
    assert!(
        b.run(&[], "echo one > /etc/new; rm /etc/from-lower")
            .status
            .success()
    );
    let o = b.run(&[], "cat /etc/new 2>&1; cat /etc/from-lower");
    assert!(
        stdout(&o).contains("lower"),
        "lower file lost: {}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("one"), "ephemeral layer kept");
    let keep = b.fx.path("keep");
    let k = keep.to_str().unwrap();
    assert!(
        b.run(&["--upper", k], "echo two > /etc/new; rm /etc/from-lower")
            .status
            .success()
    );
    let o = b.run(&["--upper", k], "cat /etc/new; cat /etc/from-lower 2>&1");
    assert!(
        stdout(&o).starts_with("two\n"),
        "persistent layer lost: {}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("lower\n"), "deletion lost");
    assert!(keep.join("diff/etc/new").exists());
    // The lower layer itself never changes.
    assert_eq!(
        fs::read(b.fx.layers[0].join("etc/from-lower")).unwrap(),
        b"lower\n"
    );
    b.assert_clean();
}

#[test]
fn concurrent_containers_share_lowers_without_interference() {
    let Some(b) = Box::new() else { return };
    let kids: Vec<_> = (0..2)
        .map(|i| {
            b.cmd(
                &[],
                &format!("echo c{i} > /etc/who; sleep 0.5; cat /etc/who"),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success());
        assert_eq!(stdout(&o), format!("c{i}\n"));
    }
    b.assert_clean();
}

#[test]
fn rootless_run_as_unprivileged_user() {
    let Some(b) = Box::new() else { return };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP {}: setpriv missing", test_name());
        return;
    }
    // /dev/fuse is 0600 on this machine; distributions ship 0666. Restored below.
    let mode = fs::metadata("/dev/fuse").unwrap().permissions();
    let _restore = Restore(mode.clone());
    fs::set_permissions(
        "/dev/fuse",
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    for p in [b.fx.dir.path(), b.fx.side.path(), &b.scratch] {
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    // Files the layer's (host) root owns are not ours inside: write where anyone may.
    fs::set_permissions(
        b.fx.layers[0].join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    // strata run as uid 65534, with extra options before `--`.
    let as_nobody = |opts: &[&str], script: &str| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_strata"))
            .env("STRATA_RUN_DIR", &b.scratch)
            .arg("run")
            .arg("--lower")
            .arg(&b.fx.layers[0])
            .args(opts)
            .args(["--", "/bin/sh", "-c", script])
            .output()
            .unwrap()
    };
    let o = as_nobody(
        &["--pids", "50"],
        "id -u; echo x > /tmp/w; cat /tmp/w; echo y > /etc/w; cat /etc/w; hostname",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\nx\ny\nstrata\n");
    assert!(
        stderr(&o).contains("WITHOUT"),
        "limits silently dropped: {}",
        stderr(&o)
    );

    // With subordinate ranges, newuidmap maps ids 1.. inside too: chown to another user works
    // and shows. (Appended for this test, restored after.)
    let _subuid = Restore::file("/etc/subuid");
    let _subgid = Restore::file("/etc/subgid");
    for f in ["/etc/subuid", "/etc/subgid"] {
        let mut text = fs::read_to_string(f).unwrap_or_default();
        text.push_str("nobody:300000:65536\n");
        fs::write(f, text).unwrap();
    }
    let o = as_nobody(
        &[],
        "wc -l < /proc/self/uid_map; echo x > /tmp/f; chown 100:100 /tmp/f; ls -ln /tmp/f",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("2\n"), "no subordinate range mapped: {out}");
    assert!(out.contains(" 100 "), "chown inside did not stick: {out}");
    b.assert_clean();
}

struct Restore(fs::Permissions);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", self.0.clone());
    }
}

/// Puts a system file's content back (or removes it if it did not exist).
struct RestoreFile(&'static str, Option<Vec<u8>>);

impl Restore {
    fn file(path: &'static str) -> RestoreFile {
        RestoreFile(path, fs::read(path).ok())
    }
}

impl Drop for RestoreFile {
    fn drop(&mut self) {
        let _ = match &self.1 {
            Some(c) => fs::write(self.0, c),
            None => fs::remove_file(self.0),
        };
    }
}

#[test]
fn bad_input_gets_one_line_and_docker_exit_codes() {
    let Some(b) = Box::new() else { return };
    let lower = b.fx.layers[0].to_str().unwrap().to_owned();
    let strata = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .env("STRATA_RUN_DIR", &b.scratch)
            .arg("run")
            .args(args)
            .output()
            .unwrap()
    };
    for (args, code, needle) in [
        (vec!["--lower", &lower], 125, "no command"),
        (
            vec!["--lower", &lower, "--memory", "12XB", "--", "/bin/true"],
            125,
            "12XB",
        ),
        (
            vec!["--lower", &lower, "--user", "bob", "--", "/bin/true"],
            125,
            "bob",
        ),
        (
            vec!["--lower", "/nonexistent/layer", "--", "/bin/true"],
            125,
            "/nonexistent/layer",
        ),
        (
            vec!["--lower", &lower, "--", "/bin/nothere"],
            127,
            "nothere",
        ),
        (vec!["--lower", &lower, "--", "nothere"], 127, "nothere"),
        (
            vec!["--lower", &lower, "--", "/etc/from-lower"],
            126,
            "from-lower",
        ),
    ] {
        let o = strata(&args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    b.assert_clean();
}

#[test]
fn hardening_read_only_root_and_binds() {
    let Some(b) = Box::new() else { return };
    let o = b.run(
        &[],
        "grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status; wc -c < /proc/kcore; \
         echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable; \
         grep ' / ' /proc/self/mountinfo | grep -c shared",
    );
    let out = stdout(&o);
    assert!(
        out.contains("NoNewPrivs:\t1"),
        "no_new_privs not set: {out}"
    );
    // docker's default set: bits 0-8 minus 2 (DAC_READ_SEARCH), 10, 13, 18, 27, 29, 31.
    assert!(
        out.contains("CapBnd:\t00000000a80425fb"),
        "capability bounding set: {out}"
    );
    assert!(out.contains("\n0\n"), "/proc/kcore not masked: {out}");
    assert!(
        !out.contains("sysrq-writable"),
        "/proc/sysrq-trigger writable: {out}"
    );
    assert!(
        out.trim_end().ends_with('0'),
        "root mount propagation is shared: {out}"
    );

    let o = b.run(
        &["--read-only"],
        "touch /etc/x 2>/dev/null || echo refused; echo ok > /dev/shm/x && cat /dev/shm/x",
    );
    assert_eq!(stdout(&o), "refused\nok\n", "--read-only");

    let src = b.fx.path("shared");
    write(&src.join("f"), b"from the host\n");
    let bind = format!("{}:/mnt/shared:ro", src.display());
    let o = b.run(
        &["--bind", &bind],
        "cat /mnt/shared/f; echo x > /mnt/shared/g 2>/dev/null || echo refused",
    );
    assert_eq!(stdout(&o), "from the host\nrefused\n");
    assert!(!src.join("g").exists());
    b.assert_clean();
}

/// With a terminal (a pty from script(1)), the command becomes its foreground job: an
/// interactive shell has job control, and the exit status still comes through.
#[test]
fn terminal_job_control_and_status() {
    let Some(b) = Box::new() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIP {}: script(1) missing (util-linux)", test_name());
        return;
    }
    let strata = format!(
        "{} run --lower {}",
        env!("CARGO_BIN_EXE_strata"),
        b.fx.layers[0].display()
    );
    let status = Command::new("script")
        .args([
            "-qec",
            &format!("{strata} -- /bin/sh -c 'exit 3'"),
            "/dev/null",
        ])
        .env("STRATA_RUN_DIR", &b.scratch)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(3), "exit status through a terminal");

    let mut child = Command::new("script")
        .args(["-qec", &format!("{strata} -- /bin/sh -i"), "/dev/null"])
        .env("STRATA_RUN_DIR", &b.scratch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        input
            .write_all(b"sleep 1 &\njobs\nfg\necho fg-status=$?\nexit 4\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(2500));
    }
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o).replace('\r', "");
    assert!(out.contains("Running"), "no job control: {out}");
    assert!(out.contains("fg-status=0"), "fg failed: {out}");
    assert_eq!(o.status.code(), Some(4), "{out}");
    b.assert_clean();
}

/// A run killed with SIGKILL cannot clean up; the next run removes its scratch directory. A
/// directory whose lock a live run holds stays, even when the pid in its name is gone (a run in
/// another pid namespace).
#[test]
fn next_run_sweeps_what_a_killed_run_left() {
    let Some(b) = Box::new() else { return };
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = b.scratch.join(format!("strata-run-{dead}-1"));
    let held = b.scratch.join(format!("strata-run-{dead}-2"));
    for d in [&stale, &held] {
        fs::create_dir_all(d.join("root")).unwrap();
        fs::create_dir_all(d.join("diff/etc")).unwrap();
        write(&d.join("diff/etc/x"), b"x");
    }
    let lock = fs::File::open(&held).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let o = b.run(&[], "true");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists(), "a killed run's scratch stayed");
    assert!(
        held.join("diff/etc/x").exists(),
        "a locked scratch was removed"
    );
    drop(lock);
    fs::remove_dir_all(&held).unwrap();
    b.assert_clean();
}
