//! strata as the mount program of Debian's podman and buildah (`overlay.mount_program`), as
//! root and as an unprivileged user with a subordinate id range: run, copy-up, delete and
//! rename lower entries, chown, commit, run the committed image, build with `buildah bud`.
//!
//! Each test has its own storage (graphroot, runroot) under a temporary directory, named by a
//! `CONTAINERS_STORAGE_CONF` file: the machine's podman storage is never touched. On these
//! machines (no systemd) podman needs `--cgroup-manager cgroupfs --events-backend none
//! --runtime runc`. Rootless, the test makes /dev/fuse usable by the user (0666, as
//! distributions ship it) and gives `nobody` a subuid/subgid range, restoring both after.
//! The tests skip loudly only where podman/buildah cannot run at all.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use common::*;

const BUSYBOX: &str = "/bin/busybox";
const NOBODY: u32 = 65534;
/// The range `nobody` gets for the rootless tests.
const SUBID_LINE: &str = "nobody:300000:65536\n";

/// The tests change machine-wide state (/dev/fuse's mode, /etc/subuid) and are heavy: one at
/// a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether root, /dev/fuse and the tools are here; says why not, loudly.
fn can_run(tools: &[&str]) -> bool {
    if !require_mount_env() {
        return false;
    }
    for tool in tools.iter().chain(&[BUSYBOX]) {
        let found = Path::new(tool).is_absolute() && Path::new(tool).exists()
            || Command::new(tool).arg("--version").output().is_ok();
        if !found {
            eprintln!(
                "SKIP {}: {tool} missing (scripts/setup.sh installs it)",
                test_name()
            );
            return false;
        }
    }
    true
}

/// Puts a file's content (or its absence) back when dropped.
struct RestoreFile(PathBuf, Option<Vec<u8>>);

impl RestoreFile {
    fn new(path: &str) -> Self {
        RestoreFile(path.into(), fs::read(path).ok())
    }
}

impl Drop for RestoreFile {
    fn drop(&mut self) {
        let _ = match &self.1 {
            Some(c) => fs::write(&self.0, c),
            None => fs::remove_file(&self.0),
        };
    }
}

/// Puts /dev/fuse's mode back when dropped.
struct RestoreMode(u32);

impl Drop for RestoreMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

/// What the rootless tests change on the machine, restored when dropped.
struct RootlessMachine {
    _fuse: RestoreMode,
    _subuid: RestoreFile,
    _subgid: RestoreFile,
}

impl RootlessMachine {
    fn set_up() -> Self {
        let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
        let m = RootlessMachine {
            _fuse: RestoreMode(mode),
            _subuid: RestoreFile::new("/etc/subuid"),
            _subgid: RestoreFile::new("/etc/subgid"),
        };
        eprintln!(
            "{}: /dev/fuse 0666 and a subuid range for nobody, until the test ends",
            test_name()
        );
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        for f in ["/etc/subuid", "/etc/subgid"] {
            let mut text = fs::read_to_string(f).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with("nobody:")) {
                text.push_str(SUBID_LINE);
                fs::write(f, text).unwrap();
            }
        }
        m
    }
}

/// One test's private container storage and environment; removes it all when dropped.
struct Engine {
    dir: tempfile::TempDir,
    rootless: bool,
}

impl Engine {
    fn new(rootless: bool) -> Engine {
        Engine::with_overlay_conf(rootless, STRATA, "")
    }

    /// With `conf` added to storage.conf's `[storage.options.overlay]` table.
    /// Mounting with `program`.
    fn with_overlay_conf(rootless: bool, program: &str, conf: &str) -> Engine {
        let dir = tempfile::Builder::new()
            .prefix("strata-podman.")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        for sub in ["home", "xdg", "config", "ctx"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n\
                 rootless_storage_path = \"{0}/root\"\n\
                 [storage.options.overlay]\nmount_program = \"{1}\"\n{conf}\n",
                d.display(),
                program
            ),
        )
        .unwrap();
        if rootless {
            chown_tree(d, NOBODY);
            fs::set_permissions(d.join("xdg"), fs::Permissions::from_mode(0o700)).unwrap();
        }
        Engine { dir, rootless }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tool ARGS` as root or as nobody, in this engine's storage; the output.
    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        output_past_memfd_seal(|| self.tool_cmd(tool, args))
    }

    fn tool_cmd(&self, tool: &str, args: &[&str]) -> Command {
        let d = self.path();
        let mut cmd = if self.rootless {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                tool,
            ]);
            c
        } else {
            Command::new(tool)
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .current_dir(d);
        if tool == "podman" {
            cmd.args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
                "--runtime",
                "runc",
            ]);
        }
        cmd.args(args);
        cmd
    }

    /// Like `tool`, failing the test (with podman's stderr) unless it succeeds; stdout.
    fn ok(&self, tool: &str, args: &[&str]) -> String {
        let o = self.tool(tool, args);
        assert!(
            o.status.success(),
            "{tool} {args:?} failed ({}):\n{}{}",
            o.status,
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        stdout(&o)
    }

    /// `podman run --rm IMAGE sh -c SCRIPT` (plus `extra` options); stdout.
    fn run(&self, extra: &[&str], image: &str, script: &str) -> String {
        let mut args = vec!["run", "--network", "none"];
        // Root's podman asks for more open files and processes (2^20) than runc may set
        // here; rootless it keeps the user's own.
        if !self.rootless {
            args.extend([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ]);
        }
        args.extend(extra);
        args.extend([image, "/bin/sh", "-c", script]);
        self.ok("podman", &args)
    }

    /// Imports the base image `localhost/base:1`: busybox and a few files to change.
    fn import_base(&self) {
        let root = self.path().join("base");
        write(&root.join("data/file"), b"orig\n");
        write(&root.join("data/gone"), b"to delete\n");
        write(&root.join("data/dir/f"), b"inner\n");
        write(&root.join("data/owned"), b"owned data\n");
        // No /etc: podman makes it (as host root, also with `--uidmap`).
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        symlink("busybox", &root.join("bin/sh"));
        let tar = self.path().join("base.tar");
        let st = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .args(["-cf"])
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        if self.rootless {
            chown_tree(self.path(), NOBODY);
        }
        self.ok(
            "podman",
            &["import", tar.to_str().unwrap(), "localhost/base:1"],
        );
    }

    /// No strata daemon of this engine still runs, and nothing under it is mounted.
    fn assert_nothing_left(&self) {
        // conmon runs podman's exit command (`container cleanup`) after `podman run` has
        // returned: what it unmounts is only gone once it is done.
        let busy = self.wait_for_helpers();
        assert!(busy.is_empty(), "still running after 60 s: {busy:?}");
        let mounted: Vec<_> = mounts_under(self.path());
        assert!(mounted.is_empty(), "left mounted: {mounted:?}");
    }

    /// Waits for every live process whose arguments mention this engine (conmon, podman's
    /// cleanup, strata daemons) to end; those still running after a minute.
    fn wait_for_helpers(&self) -> Vec<String> {
        let mut busy = Vec::new();
        wait_until(Duration::from_secs(60), || {
            busy = processes_mentioning_dir(self.path());
            busy.is_empty()
        });
        busy
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.wait_for_helpers();
        // Rootless podman keeps a pause process holding its user namespace: ours, stop it.
        let pause = self.path().join("xdg/libpod/tmp/pause.pid");
        if let Some(pid) = fs::read_to_string(&pause)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        for m in mounts_under(self.path()).into_iter().rev() {
            unmount(&m);
        }
    }
}

fn chown_tree(p: &Path, id: u32) {
    let st = Command::new("chown")
        .args(["-R", &format!("{id}:{id}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Mountpoints under `dir`, per /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Live processes (not zombies) whose arguments mention `dir`: their command lines.
fn processes_mentioning_dir(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

/// The podman checks, root or rootless: run, copy-up, delete, rename, chown, commit, run the
/// committed image, base image unchanged, nothing left mounted.
fn podman_round_trip(e: &Engine) {
    e.import_base();
    // The container's root is a strata mount (so strata, not some fallback, served it).
    let mounts = e.run(&["--rm"], "localhost/base:1", "cat /proc/self/mounts");
    // fsname `strata`; type `fuse.strata`, or plain `fuse` when fusermount3 mounted it.
    let root_line = mounts.lines().find(|l| l.split(' ').nth(1) == Some("/"));
    assert!(
        root_line.is_some_and(|l| l.starts_with("strata / fuse")),
        "container root is not strata's: {mounts}"
    );
    // `--rm` containers get `volatile`.
    assert_eq!(
        e.run(&["--rm"], "localhost/base:1", "cat /data/file"),
        "orig\n"
    );

    let changes = "echo new >> /data/file && rm /data/gone && mv /data/dir /data/moved \
                   && chown 123:45 /data/owned && cat /data/file /data/moved/f \
                   && stat -c %u:%g /data/owned && ls /data";
    let out = e.run(&["--name", "work"], "localhost/base:1", changes);
    assert_eq!(out, "orig\nnew\ninner\n123:45\nfile\nmoved\nowned\n");
    e.ok("podman", &["commit", "work", "localhost/committed:1"]);
    e.ok("podman", &["rm", "work"]);

    let check = "cat /data/file /data/moved/f /data/owned && stat -c %u:%g /data/owned && ls /data";
    let committed = e.run(&["--rm"], "localhost/committed:1", check);
    assert_eq!(
        committed,
        "orig\nnew\ninner\nowned data\n123:45\nfile\nmoved\nowned\n"
    );
    let check_base =
        "cat /data/file /data/dir/f /data/gone && stat -c %u:%g /data/owned && ls /data";
    let base = e.run(&["--rm"], "localhost/base:1", check_base);
    assert_eq!(
        base,
        "orig\ninner\nto delete\n0:0\ndir\nfile\ngone\nowned\n"
    );
    e.assert_nothing_left();
}

/// `buildah bud` of a Dockerfile whose RUN steps modify, delete and rename lower files; the
/// built image checked by running it.
fn buildah_build(e: &Engine) {
    e.import_base();
    let ctx = e.path().join("ctx");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM localhost/base:1\n\
         RUN echo more >> /data/file && rm /data/gone\n\
         RUN mv /data/dir /data/moved && chown 7:8 /data/owned\n\
         RUN cat /data/file /data/moved/f /data/owned > /data/seen\n",
    )
    .unwrap();
    if e.rootless {
        chown_tree(&ctx, NOBODY);
    }
    let ctx = ctx.to_str().unwrap();
    e.ok(
        "buildah",
        &[
            "bud",
            "--runtime",
            "runc",
            "--network",
            "none",
            "-t",
            "localhost/built:1",
            ctx,
        ],
    );
    let out = e.run(
        &["--rm"],
        "localhost/built:1",
        "cat /data/seen && stat -c %u:%g /data/owned && ls /data",
    );
    assert_eq!(
        out,
        "orig\nmore\ninner\nowned data\n7:8\nfile\nmoved\nowned\nseen\n"
    );
    let base = e.run(&["--rm"], "localhost/base:1", "cat /data/file && ls /data");
    assert_eq!(base, "orig\ndir\nfile\ngone\nowned\n");
    e.assert_nothing_left();
}

/// `force_mask`: layers keep real modes forced and the shown ones in
/// `user.containers.override_stat`; containers-storage then mounts with `xattr_permissions=2`
/// and a chmod/chown inside goes to the container layer's record.
fn force_mask_round_trip(rootless: bool) {
    let e = Engine::with_overlay_conf(rootless, STRATA, "force_mask = \"shared\"");
    e.import_base();
    let stat = "stat -c '%a %u:%g %n' /data/file /data/owned";
    let base = e.run(&["--rm"], "localhost/base:1", stat);
    assert_eq!(base, "644 0:0 /data/file\n644 0:0 /data/owned\n");
    let change = "chmod 600 /data/file && chown 12:34 /data/owned && echo x >> /data/owned";
    e.run(&["--name", "work"], "localhost/base:1", change);
    // The container layer's copy keeps the forced mode; the shown one is in its record.
    let diffs = e.path().join("root/overlay");
    let records: Vec<Vec<u8>> = fs::read_dir(&diffs)
        .unwrap()
        .filter_map(|l| {
            let f = l.ok()?.path().join("diff/data/file");
            let mut buf = [0u8; 64];
            let n = rustix::fs::lgetxattr(&f, "user.containers.override_stat", &mut buf).ok()?;
            Some(buf[..n].to_vec())
        })
        .collect();
    assert!(
        records.contains(&b"0:0:600".to_vec()),
        "records: {records:?}"
    );
    e.ok("podman", &["commit", "work", "localhost/committed:1"]);
    e.ok("podman", &["rm", "work"]);
    let committed = e.run(
        &["--rm"],
        "localhost/committed:1",
        &format!("{stat} && cat /data/owned"),
    );
    assert_eq!(
        committed,
        "600 0:0 /data/file\n644 12:34 /data/owned\nowned data\nx\n"
    );
    assert_eq!(e.run(&["--rm"], "localhost/base:1", stat), base);
    e.assert_nothing_left();
}

#[test]
fn podman_force_mask() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&["podman", "runc", "conmon"]) {
        return;
    }
    force_mask_round_trip(false);
}

/// Rootless with `force_mask` (the case of images with ids outside the user's mapping): the
/// same, with strata in podman's user namespace.
#[test]
fn podman_rootless_force_mask() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&["podman", "runc", "conmon", "newuidmap", "setpriv"]) {
        return;
    }
    let _machine = RootlessMachine::set_up();
    force_mask_round_trip(true);
}

/// `--uidmap`: containers-storage adds `uidmapping=:0:H:N,gidmapping=...` (fuse-overlayfs's
/// order, with a leading colon) and creates the container's `/etc` as host root, outside the
/// range. The container must see exactly what it sees with fuse-overlayfs.
#[test]
fn podman_uidmap_same_as_fuse_overlayfs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&["podman", "runc", "conmon", "fuse-overlayfs"]) {
        return;
    }
    let script = "stat -c '%u:%g %a %n' /bin /data /data/file /etc /run; \
                  (echo x > /data/new) 2>/dev/null && echo wrote || echo refused";
    let map = ["--uidmap", "0:200000:65536", "--gidmap", "0:200000:65536"];
    let seen = |program: &str| {
        let e = Engine::with_overlay_conf(false, program, "");
        e.import_base();
        let out = e.run(&[&["--rm"][..], &map].concat(), "localhost/base:1", script);
        e.assert_nothing_left();
        out
    };
    let strata = seen(STRATA);
    assert!(strata.contains(" /etc\n"), "{strata}");
    assert_eq!(strata, seen("/usr/bin/fuse-overlayfs"));
}

#[test]
fn podman_as_root() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&["podman", "runc", "conmon"]) {
        return;
    }
    let e = Engine::new(false);
    podman_round_trip(&e);
    // `podman image mount`: the image's layers alone, read-only (no upper).
    let merged = e.ok("podman", &["image", "mount", "localhost/committed:1"]);
    let merged = Path::new(merged.trim());
    assert_eq!(fs::read(merged.join("data/file")).unwrap(), b"orig\nnew\n");
    let write = fs::write(merged.join("data/x"), b"x").map_err(|e| e.raw_os_error());
    assert_eq!(write, Err(Some(libc::EROFS)));
    e.ok("podman", &["image", "unmount", "localhost/committed:1"]);
    e.assert_nothing_left();
}

#[test]
fn podman_rootless() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&["podman", "runc", "conmon", "newuidmap", "setpriv"]) {
        return;
    }
    let _machine = RootlessMachine::set_up();
    podman_round_trip(&Engine::new(true));
}

#[test]
fn buildah_as_root() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&["podman", "buildah", "runc", "conmon"]) {
        return;
    }
    buildah_build(&Engine::new(false));
}

#[test]
fn buildah_rootless() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !can_run(&[
        "podman",
        "buildah",
        "runc",
        "conmon",
        "newuidmap",
        "setpriv",
    ]) {
        return;
    }
    let _machine = RootlessMachine::set_up();
    buildah_build(&Engine::new(true));
}
