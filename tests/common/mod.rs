//! Shared harness for tests that mount strata and kernel overlayfs for real: building layer
//! trees in every whiteout/opaque format, mount guards that always unmount, and snapshots of a
//! mounted tree that can be compared entry by entry.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// Runs a podman or buildah command, again (up to twice) when it failed before doing anything:
/// both copy themselves into a sealed memfd when they re-exec, and under load the kernel can
/// refuse the seal with EBUSY while a page of the copy is still pinned ("sealing memfd copy",
/// seen once in CI). Any other failure is returned as it is.
pub fn output_past_memfd_seal(mut make: impl FnMut() -> Command) -> std::process::Output {
    let mut out = make().output().expect("spawn podman/buildah");
    for attempt in 2..=3 {
        let transient = String::from_utf8_lossy(&out.stderr).contains("sealing memfd copy");
        if out.status.success() || !transient {
            break;
        }
        eprintln!(
            "{:?}: memfd seal refused (EBUSY), attempt {attempt}",
            make()
        );
        out = make().output().expect("spawn podman/buildah");
    }
    out
}

/// How long a mount may take to appear before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

// ---- environment ----

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// Whether this machine can run mount tests. When it cannot, says so loudly: a skipped test
/// must never look like a pass. The line goes straight to stderr, because libtest swallows
/// `eprintln!` output of passing tests.
pub fn require_mount_env() -> bool {
    let root = rustix::process::geteuid().is_root();
    let fuse = Path::new("/dev/fuse").exists();
    // Once per test: a property test asks for every case.
    static REPORTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = REPORTED.lock().is_ok_and(|mut r| r.insert(test_name()));
    if !(root && fuse) && first {
        let line = format!(
            "SKIP {}: not root / no /dev/fuse (root: {root}, /dev/fuse: {fuse})\n",
            test_name()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    root && fuse
}

/// Whether the static busybox that test container roots are made of is there; says SKIP when
/// it is not.
pub fn require_busybox(path: &str) -> bool {
    let there = Path::new(path).exists();
    if !there {
        eprintln!(
            "SKIP {}: {path} missing (scripts/setup.sh installs busybox-static)",
            test_name()
        );
    }
    there
}

/// Evicts unused dentries and inodes system-wide, so FUSE sends FORGETs and the next lookup
/// reaches strata afresh: inode numbers must survive that.
pub fn forget_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches (needs root)");
}

// ---- mounts ----

/// Whether `path` is a mountpoint right now, per /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = path.as_os_str().as_bytes();
    info.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .any(|field| unescape_mountinfo(field) == want)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(u8::is_ascii_digit));
        match (field[i], oct) {
            (b'\\', Some(o)) => {
                out.push(o.iter().fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Polls every 5 ms until `cond` holds; false if it still does not after `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// umount2(path, 0), falling back to a lazy unmount if that fails (busy). Never panics: it
/// runs in Drop, possibly while a test is unwinding.
pub fn unmount(path: &Path) {
    use rustix::mount::UnmountFlags;
    match rustix::mount::unmount(path, UnmountFlags::empty()) {
        // EINVAL: not a mountpoint (any more).
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(_) => {
            let _ = rustix::mount::unmount(path, UnmountFlags::DETACH);
        }
    }
}

/// Unmounts, when dropped, a mount this test made some other way (a background strata,
/// `mount -t fuse.strata`).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// Kills our own foreground strata if it stays mounted longer than the limit: a hung request
/// would otherwise hang the test run forever, and killing the server fails the requests.
struct Watchdog {
    cancel: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Watchdog {
    fn start(pid: u32, mnt: &Path) -> Watchdog {
        let limit = std::env::var("STRATA_TEST_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120);
        let (cancel, rx) = mpsc::channel::<()>();
        let mnt = mnt.to_owned();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(limit)) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!(
                    "TIMEOUT: strata on {} still mounted after {limit} s; killing it (our child, pid {pid})",
                    mnt.display()
                );
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        });
        Watchdog { cancel, thread }
    }

    fn stop(self) {
        let _ = self.cancel.send(());
        let _ = self.thread.join();
    }
}

/// A strata mount served by a foreground child process. Dropping it unmounts and reaps the
/// child (killing it only if it has not exited a few seconds after the unmount), also when
/// the test panics.
pub struct StrataMount {
    pub mnt: PathBuf,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    log: PathBuf,
}

impl StrataMount {
    /// Runs `strata ARGS...` (ARGS keep it in the foreground and name `mnt`), and waits until
    /// the mount is live. The server's stderr goes to a log beside `mnt`, quoted if it fails
    /// to mount.
    pub fn spawn(args: &[OsString], mnt: &Path) -> StrataMount {
        StrataMount::spawn_env(args, mnt, &[])
    }

    /// [`StrataMount::spawn`] with variables added to strata's environment.
    pub fn spawn_env(args: &[OsString], mnt: &Path, env: &[(&str, &str)]) -> StrataMount {
        let mut cmd = Command::new(STRATA);
        cmd.envs(env.iter().copied());
        StrataMount::spawn_cmd(cmd, args, mnt)
    }

    /// [`StrataMount::spawn`] run by `wrapper` (a program and its arguments that execs the
    /// rest of its command line, such as `prlimit --nofile=256:256`).
    pub fn spawn_under(wrapper: &[&str], args: &[OsString], mnt: &Path) -> StrataMount {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(STRATA);
        StrataMount::spawn_cmd(cmd, args, mnt)
    }

    fn spawn_cmd(mut cmd: Command, args: &[OsString], mnt: &Path) -> StrataMount {
        let log = mnt.with_extension("strata.log");
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create strata log"))
            .spawn()
            .expect("spawn strata");
        let mut exited = None;
        wait_until(PATIENCE, || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || is_mounted(mnt)
        });
        // A foreground server must still be running once its mount is live.
        if exited.is_some() || !is_mounted(mnt) {
            unmount(mnt);
            if exited.is_none() {
                let _ = child.kill();
                exited = child.wait().ok();
            }
            let err = fs::read_to_string(&log).unwrap_or_default();
            panic!("strata {args:?} did not mount and stay (exit: {exited:?}); stderr:\n{err}");
        }
        let watchdog = Some(Watchdog::start(child.id(), mnt));
        StrataMount {
            mnt: mnt.to_owned(),
            child: Some(child),
            watchdog,
            log,
        }
    }

    /// `strata -f ARGS... MNT`.
    pub fn start(args: &[&OsStr], mnt: &Path) -> StrataMount {
        let mut argv: Vec<OsString> = vec!["-f".into()];
        argv.extend(args.iter().map(|a| a.to_os_string()));
        argv.push(mnt.into());
        StrataMount::spawn(&argv, mnt)
    }

    /// fuse-overlayfs form: `strata -f -o lowerdir=L0:L1... MNT` (top first).
    pub fn lowers(layers: &[PathBuf], mnt: &Path) -> StrataMount {
        let opt = lowerdir_opt(&lower_views(layers));
        StrataMount::start(&[OsStr::new("-o"), OsStr::from_bytes(&opt)], mnt)
    }

    /// Subcommand form: `strata mount -f --lower L0 --lower L1... MNT`.
    pub fn lower_flags(layers: &[PathBuf], mnt: &Path) -> StrataMount {
        let mut argv: Vec<OsString> = vec!["mount".into(), "-f".into()];
        for l in &lower_views(layers) {
            argv.push("--lower".into());
            argv.push(l.into());
        }
        argv.push(mnt.into());
        StrataMount::spawn(&argv, mnt)
    }

    /// With a writable upper: `-o lowerdir=...,upperdir=U,workdir=W`.
    pub fn with_upper(layers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> StrataMount {
        let opt = upper_opt(&lower_views(layers), upper, work);
        StrataMount::start(&[OsStr::new("-o"), OsStr::from_bytes(&opt)], mnt)
    }

    /// [`StrataMount::with_upper`] with more mount options (`extra`, comma-separated; may be
    /// empty) and variables added to strata's environment.
    pub fn with_upper_env(
        layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &str,
        env: &[(&str, &str)],
    ) -> StrataMount {
        let mut opt = upper_opt(layers, upper, work);
        if !extra.is_empty() {
            opt.push(b',');
            opt.extend_from_slice(extra.as_bytes());
        }
        let argv: Vec<OsString> = vec![
            "-f".into(),
            "-o".into(),
            OsStr::from_bytes(&opt).into(),
            mnt.into(),
        ];
        StrataMount::spawn_env(&argv, mnt, env)
    }

    /// Kills the server (our child) with SIGKILL, an unclean stop, and detaches its dead
    /// mount.
    pub fn crash(self) {
        self.kill();
        let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
    }

    /// SIGKILL to the server (our child), leaving its dead mount in place; drop unmounts it.
    pub fn kill(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Where the server's stderr goes.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the server; its exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.shutdown().expect("strata child")
    }

    /// Waits, without unmounting, for the server to exit by itself (after a signal); its exit
    /// status, or None if it is still running after `limit`.
    pub fn wait_exit(mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(limit, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    fn shutdown(&mut self) -> Option<ExitStatus> {
        // The watchdog goes first: from then on only this function reaps the child, so its pid
        // cannot be reused while something might still signal it.
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        // From mountinfo, not stat: a stat would wait on a daemon that does not answer.
        let dev = mount_device(&self.mnt);
        unmount(&self.mnt);
        let mut child = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        let mut status = None;
        // Generous: a loaded CI machine can take seconds to tear a daemon down.
        let mut exited = |limit| {
            wait_until(Duration::from_secs(limit), || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            })
        };
        // A mount namespace made while this mount existed (another test's container, unshare)
        // holds a copy of it: the superblock lives on, the kernel never ends the daemon's
        // session, and it cannot know it was unmounted here. Not a hang: stop it with SIGTERM.
        if !exited(20)
            && let Some(holder) = dev.as_deref().and_then(mounted_elsewhere)
        {
            eprintln!(
                "strata on {}: still mounted in pid {holder}'s mount namespace after the unmount here; stopping it with SIGTERM",
                self.mnt.display()
            );
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            exited(20);
        }
        if status.is_none() {
            eprintln!(
                "strata on {} did not exit within 20 s of unmount; killing our child. Its threads:\n{}",
                self.mnt.display(),
                thread_states(child.id())
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }
}

/// The `major:minor` of what is mounted at `mnt` in this mount namespace.
fn mount_device(mnt: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = mnt.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mnt)).then(|| f.get(2).map(|d| d.to_string()))?
    })
}

/// A process whose mount namespace still has a mount of device `dev` (`major:minor`, a FUSE
/// mount's anonymous device), if any.
fn mounted_elsewhere(dev: &str) -> Option<u32> {
    let want = format!(" {dev} ");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let info = fs::read_to_string(e.path().join("mountinfo")).ok()?;
        info.lines().any(|l| l.contains(&want)).then_some(pid)
    })
}

/// Each thread of `pid`: name, state and the kernel function it waits in (to tell a hang
/// from a slow exit).
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_owned();
        out.push_str(&format!(
            "  {} {} {} wchan={}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan"),
            read("stack")
        ));
    }
    out
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `lowerdir=A:B...`, escaping `:`, `,` and `\` in paths as mount options require.
pub fn lowerdir_opt(layers: &[PathBuf]) -> Vec<u8> {
    let mut opt = b"lowerdir=".to_vec();
    for (i, l) in layers.iter().enumerate() {
        if i > 0 {
            opt.push(b':');
        }
        for &b in l.as_os_str().as_bytes() {
            if matches!(b, b':' | b',' | b'\\') {
                opt.push(b'\\');
            }
            opt.push(b);
        }
    }
    opt
}

fn upper_opt(layers: &[PathBuf], upper: &Path, work: &Path) -> Vec<u8> {
    let mut opt = lowerdir_opt(layers);
    opt.extend_from_slice(b",upperdir=");
    opt.extend_from_slice(upper.as_os_str().as_bytes());
    opt.extend_from_slice(b",workdir=");
    opt.extend_from_slice(work.as_os_str().as_bytes());
    opt
}

/// Kernel overlayfs over the same layers: the oracle. Unmounted on drop.
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    /// Lower layers only (read-only). The kernel refuses an upper-less mount with one lower
    /// ("at least 2 lowerdir are needed"), so a single layer gets an empty one below it.
    pub fn lowers(layers: &[PathBuf], mnt: &Path) -> KernelOverlay {
        let mut layers = lower_views(layers);
        if layers.len() == 1 {
            let empty = mnt.with_extension("empty-lower");
            mkdir(&empty);
            layers.push(empty);
        }
        Self::mount(&lowerdir_opt(&layers), mnt)
    }

    /// With an upper, in the configuration strata matches (`redirect_dir=on,index=on`).
    pub fn with_upper(layers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> KernelOverlay {
        let mut opt = upper_opt(&lower_views(layers), upper, work);
        opt.extend_from_slice(b",redirect_dir=on,index=on");
        Self::mount(&opt, mnt)
    }

    /// Over an upper strata wrote: as `with_upper`, plus `metacopy=on` so the kernel follows
    /// strata's metadata-only copies (chmod/chown of lower files) to their lower data.
    pub fn over_strata_upper(
        layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> KernelOverlay {
        let mut opt = upper_opt(&lower_views(layers), upper, work);
        opt.extend_from_slice(b",redirect_dir=on,index=on,metacopy=on");
        Self::mount(&opt, mnt)
    }

    fn mount(opt: &[u8], mnt: &Path) -> KernelOverlay {
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(OsStr::from_bytes(opt))
            .arg(mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "kernel overlay mount -o {} failed: {}",
            opt.escape_ascii(),
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = KernelOverlay {
            mnt: mnt.to_owned(),
        };
        assert!(is_mounted(mnt), "kernel overlay not in mountinfo");
        guard
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// Pids of processes whose command line mentions `needle` (a unique temp path): finds a
/// background strata that should have exited. Only looks; never signals.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_bytes();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).any(|arg| arg == needle))
        })
        .collect()
}

// ---- building layers ----

/// A regular file with `content`, creating parent directories.
pub fn write(path: &Path, content: &[u8]) {
    parent_of(path);
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn parent_of(path: &Path) -> &Path {
    let p = path.parent().expect("path has a parent");
    mkdir(p);
    p
}

pub fn chmod(path: &Path, mode: u32) {
    rustix::fs::chmod(path, Mode::from_raw_mode(mode)).unwrap();
}

/// lchown: a symlink itself, not its target.
pub fn chown(path: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn mknod(path: &Path, kind: FileType, mode: u32, dev: u64) {
    parent_of(path);
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, Mode::from_raw_mode(mode), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

pub fn fifo(path: &Path) {
    mknod(path, FileType::Fifo, 0o640, 0);
}

/// A socket inode as a server leaves it behind: bound, then closed.
pub fn socket(path: &Path) {
    parent_of(path);
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
}

pub fn symlink(target: impl AsRef<OsStr>, path: &Path) {
    parent_of(path);
    std::os::unix::fs::symlink(target.as_ref(), path)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
}

pub fn hard_link(existing: &Path, new: &Path) {
    parent_of(new);
    fs::hard_link(existing, new).unwrap();
}

pub fn set_xattr(path: &Path, name: impl AsRef<OsStr>, value: &[u8]) {
    let name = name.as_ref();
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name:?} on {}: {e}", path.display()));
}

/// Kernel-format whiteout: a char device 0/0.
pub fn whiteout_chardev(path: &Path) {
    mknod(path, FileType::CharacterDevice, 0o600, 0);
}

/// OCI-format whiteout: an empty `.wh.<name>` beside the name.
pub fn whiteout_oci(path: &Path) {
    let mut name = b".wh.".to_vec();
    name.extend_from_slice(path.file_name().unwrap().as_bytes());
    write(&parent_of(path).join(OsStr::from_bytes(&name)), b"");
}

/// Kernel "xattr whiteout" (6.7+): a zero-size file with `trusted.overlay.whiteout`; its
/// parent says it holds such whiteouts with `trusted.overlay.opaque = "x"`.
pub fn whiteout_xattr(path: &Path) {
    write(path, b"");
    set_xattr(path, "trusted.overlay.whiteout", b"");
    set_xattr(parent_of(path), "trusted.overlay.opaque", b"x");
}

/// A directory made opaque by xattr `name` = "y" (`trusted.overlay.opaque`,
/// `user.overlay.opaque`, `user.fuseoverlayfs.opaque`).
pub fn opaque_xattr(dir: &Path, name: &str) {
    mkdir(dir);
    set_xattr(dir, name, b"y");
}

/// A directory made opaque the OCI way: a `.wh..wh..opq` file inside it.
pub fn opaque_oci(dir: &Path) {
    write(&dir.join(".wh..wh..opq"), b"");
}

// ---- snapshots ----

/// What a user can observe of one entry.
///
/// Compared with the kernel: every field but `ino` (strata need not pick the kernel's numbers;
/// which paths share an inode is checked instead, see [`ino_groups`]) and, unless asked for,
/// `mtime` (tests that modify a mount do so at different instants on the two sides). For
/// directories `size` and `nlink` are not recorded: the kernel reports nlink 1 for a merged
/// directory and the real values for an unmerged one, and a merged directory's size says
/// nothing about its entries. atime and ctime are not recorded (reads move atime).
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: u32,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<u64>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub mtime: (i64, i64),
    pub ino: u64,
}

/// Relative path bytes (the root is the empty path) to entry.
pub type Tree = BTreeMap<Vec<u8>, Entry>;

fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "chardev",
        libc::S_IFBLK => "blockdev",
        _ => "?",
    }
}

/// Bytes for messages: escaped, never lossy; long values abbreviated with a hash.
pub fn show(p: &[u8]) -> String {
    if p.len() <= 64 {
        return p.escape_ascii().to_string();
    }
    format!(
        "{}... ({} bytes, hash {:016x})",
        p[..48].escape_ascii(),
        p.len(),
        hash(p)
    )
}

fn hash(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, p, u, g) = (kind_name(self.kind), self.perm, self.uid, self.gid);
        write!(f, "{k} {p:04o} {u}:{g}")?;
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(c) = &self.content {
            write!(f, " data=\"{}\"", show(c))?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> \"{}\"", show(t))?;
        }
        if let Some(r) = self.rdev {
            write!(f, " rdev={}:{}", rustix::fs::major(r), rustix::fs::minor(r))?;
        }
        for (n, v) in &self.xattrs {
            write!(f, " {}=\"{}\"", show(n), show(v))?;
        }
        write!(f, " ino={}", self.ino)
    }
}

/// Sorted xattrs of `path` (not following symlinks), names as bytes. `security.*` is left
/// out: its labels come from the host's policy, not from the layers.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let size = rustix::fs::llistxattr_query(path)
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"security.") {
            continue;
        }
        let name_os = OsStr::from_bytes(name);
        let size = rustix::fs::lgetxattr_query(path, name_os).unwrap_or_else(|e| {
            panic!(
                "{}: listed xattr {} unreadable: {e}",
                path.display(),
                show(name)
            )
        });
        let mut value = vec![0u8; size];
        let v = rustix::fs::lgetxattr(path, name_os, &mut value[..]).unwrap();
        value.truncate(v);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

/// Records one entry, not following a symlink at `path`.
pub fn entry(path: &Path) -> std::io::Result<Entry> {
    let md = fs::symlink_metadata(path)?;
    let kind = md.mode() & libc::S_IFMT;
    let is_dir = kind == libc::S_IFDIR;
    let fail = |what: &str, e: std::io::Error| -> ! { panic!("{what} {}: {e}", path.display()) };
    Ok(Entry {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (!is_dir).then(|| md.size()),
        nlink: (!is_dir).then(|| md.nlink()),
        content: (kind == libc::S_IFREG)
            .then(|| fs::read(path).unwrap_or_else(|e| fail("read", e))),
        target: (kind == libc::S_IFLNK).then(|| {
            let t = fs::read_link(path).unwrap_or_else(|e| fail("readlink", e));
            t.into_os_string().into_vec()
        }),
        rdev: matches!(kind, libc::S_IFCHR | libc::S_IFBLK).then(|| md.rdev()),
        xattrs: xattrs(path),
        mtime: (md.mtime(), md.mtime_nsec()),
        ino: md.ino(),
    })
}

/// Walks `root` (included, as the empty path) without following symlinks. Checks as it goes
/// what must hold of any directory listing: each name once, `d_ino` equal to `st_ino`, and
/// `d_type` equal to the type lstat reports.
pub fn snapshot(root: &Path) -> Tree {
    walk(root, false)
}

/// The kernel's view. One kernel quirk is skipped: for a directory that is not merged, the
/// kernel passes readdir straight to the layer, so whiteouts in it (char 0/0, or xattr
/// whiteouts whose parent lacks the "x" marker) are listed although lookup says ENOENT.
/// strata never lists whiteouts, so an entry listed but not found is not part of the view.
pub fn kernel_snapshot(root: &Path) -> Tree {
    walk(root, true)
}

/// Whether `root` is kernel overlayfs over layers on more than one filesystem.
fn kernel_xdev(root: &Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let overlay = rustix::fs::statfs(root).is_ok_and(|s| s.f_type == OVERLAYFS_SUPER_MAGIC);
    overlay && {
        let devs: BTreeSet<u64> = overlay_dirs(root)
            .iter()
            .filter_map(|d| fs::metadata(d).ok().map(|m| m.dev()))
            .collect();
        devs.len() > 1
    }
}

/// The lower and upper directories of the overlay mounted at `mnt`, from its mount options.
fn overlay_dirs(mnt: &Path) -> Vec<PathBuf> {
    let info = fs::read("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.as_os_str().as_bytes();
    let Some(line) = info.split(|&b| b == b'\n').rev().find(|l| {
        l.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|f| unescape_mountinfo(f) == want)
    }) else {
        return Vec::new();
    };
    let opts = line.split(|&b| b == b' ').next_back().unwrap_or_default();
    let mut dirs = Vec::new();
    for opt in opts.split(|&b| b == b',') {
        let opt = unescape_mountinfo(opt);
        if let Some(l) = opt.strip_prefix(b"lowerdir=") {
            dirs.extend(
                l.split(|&b| b == b':')
                    .map(|d| PathBuf::from(OsStr::from_bytes(d))),
            );
        } else if let Some(u) = opt.strip_prefix(b"upperdir=") {
            dirs.push(PathBuf::from(OsStr::from_bytes(u)));
        }
    }
    dirs
}

fn walk(root: &Path, skip_unfindable: bool) -> Tree {
    let kernel_xdev = kernel_xdev(root);
    let mut tree = Tree::new();
    tree.insert(Vec::new(), entry(root).unwrap());
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut seen = BTreeSet::new();
        let list = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for e in list {
            let e = e.unwrap_or_else(|err| panic!("readdir {}: {err}", dir.display()));
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            assert!(seen.insert(e.file_name()), "{} listed twice", show(&r));
            let path = e.path();
            let ent = match entry(&path) {
                Err(err) if skip_unfindable && err.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(err) => panic!("{} is listed, but lstat fails: {err}", show(&r)),
                Ok(ent) => ent,
            };
            // The kernel keeps d_ino equal to st_ino only with all layers on one
            // filesystem (or xino): overlayfs.rst, "Inode properties".
            assert!(
                kernel_xdev || e.ino() == ent.ino,
                "d_ino {} != st_ino {} for {} in {}",
                e.ino(),
                ent.ino,
                show(&r),
                root.display()
            );
            let d_type = mode_kind(e.file_type().unwrap());
            assert_eq!(
                d_type,
                ent.kind,
                "d_type is not the lstat type: {}",
                show(&r)
            );
            if ent.kind == libc::S_IFDIR {
                stack.push((path, r.clone()));
            }
            tree.insert(r, ent);
        }
    }
    tree
}

fn mode_kind(t: fs::FileType) -> u32 {
    if t.is_dir() {
        libc::S_IFDIR
    } else if t.is_symlink() {
        libc::S_IFLNK
    } else if t.is_fifo() {
        libc::S_IFIFO
    } else if t.is_socket() {
        libc::S_IFSOCK
    } else if t.is_char_device() {
        libc::S_IFCHR
    } else if t.is_block_device() {
        libc::S_IFBLK
    } else {
        libc::S_IFREG
    }
}

/// Differences between two entries, field by field (never `ino`; `mtime` if `times`).
fn entry_diffs(want: &Entry, got: &Entry, times: bool) -> Vec<String> {
    let mut d = Vec::new();
    let mut field = |name: &str, w: String, g: String| {
        if w != g {
            d.push(format!("{name}: want {w}, got {g}"));
        }
    };
    let owner = |e: &Entry| format!("{}:{}", e.uid, e.gid);
    let bytes = |b: &Option<Vec<u8>>| b.as_deref().map_or("-".into(), show);
    let xs = |e: &Entry| {
        let v: Vec<String> = e
            .xattrs
            .iter()
            .map(|(n, v)| format!("{}={}", show(n), show(v)))
            .collect();
        format!("[{}]", v.join(", "))
    };
    field(
        "type",
        kind_name(want.kind).into(),
        kind_name(got.kind).into(),
    );
    field(
        "mode",
        format!("{:04o}", want.perm),
        format!("{:04o}", got.perm),
    );
    field("owner", owner(want), owner(got));
    field(
        "nlink",
        format!("{:?}", want.nlink),
        format!("{:?}", got.nlink),
    );
    field(
        "size",
        format!("{:?}", want.size),
        format!("{:?}", got.size),
    );
    if want.content != got.content {
        field("data", bytes(&want.content), bytes(&got.content));
    }
    field("target", bytes(&want.target), bytes(&got.target));
    field(
        "rdev",
        format!("{:?}", want.rdev),
        format!("{:?}", got.rdev),
    );
    field("xattrs", xs(want), xs(got));
    if times {
        field(
            "mtime",
            format!("{:?}", want.mtime),
            format!("{:?}", got.mtime),
        );
    }
    d
}

/// Every difference between two trees, entry by entry, with escaped paths.
pub fn diff(want: &Tree, got: &Tree, times: bool) -> Vec<String> {
    let path = |k: &[u8]| {
        if k.is_empty() {
            "/".to_owned()
        } else {
            show(k)
        }
    };
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("missing {}: {w:?}", path(k))),
            Some(g) => out.extend(
                entry_diffs(w, g, times)
                    .into_iter()
                    .map(|d| format!("differs {}: {d}", path(k))),
            ),
        }
    }
    for (k, g) in got.iter().filter(|(k, _)| !want.contains_key(*k)) {
        out.push(format!("unexpected {}: {g:?}", path(k)));
    }
    out
}

/// [`diff`] without times: for trees that were modified at different instants.
pub fn compare(want: &Tree, got: &Tree) -> Vec<String> {
    diff(want, got, false)
}

/// Panics listing the first differences, if there are any.
pub fn assert_no_diff(diffs: &[String], context: &str) {
    if !diffs.is_empty() {
        let shown: Vec<&str> = diffs.iter().take(40).map(String::as_str).collect();
        panic!(
            "{context}: {} difference(s) (want = reference, got = strata):\n  {}",
            diffs.len(),
            shown.join("\n  ")
        );
    }
}

pub fn assert_same(want: &Tree, got: &Tree, context: &str) {
    assert_no_diff(&compare(want, got), context);
}

/// Paths of a tree (root excluded, bytes escaped), for compact expectations.
/// Every regular file strata copied up or wrote holds the data the merged view shows at its
/// path: read straight from the upper directory, not through any mount. (Metacopies, which
/// hold no data by design, and whiteouts are skipped.) Copy-up that loses data, as across
/// filesystems it once did, fails here even where the mount's own view looks right.
pub fn assert_upper_data(upper: &Path, view: &Tree, context: &str) {
    let mut stack = vec![(upper.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
            let e = e.unwrap();
            let name = e.file_name();
            let mut r: Vec<u8> = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push((e.path(), r));
                continue;
            }
            let meta = xattrs(&e.path())
                .iter()
                .any(|(k, _)| k.ends_with(b"overlay.metacopy"));
            if !ft.is_file() || meta || name.as_bytes().starts_with(b".wh.") {
                continue;
            }
            let Some(want) = view.get(&r).and_then(|v| v.content.as_ref()) else {
                continue;
            };
            let got = fs::read(e.path()).unwrap();
            assert!(
                &got == want,
                "{context}: upper file {} holds {} bytes, the view shows {}",
                show(&r),
                got.len(),
                want.len()
            );
        }
    }
}

pub fn names(tree: &Tree) -> Vec<String> {
    tree.keys()
        .filter(|k| !k.is_empty())
        .map(|k| k.escape_ascii().to_string())
        .collect()
}

/// Which paths share an inode number: the groups of two or more. Must be the same for strata
/// and the kernel (hard links), though the numbers themselves may differ.
pub fn ino_groups(tree: &Tree) -> BTreeSet<Vec<Vec<u8>>> {
    let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (k, e) in tree {
        by_ino.entry(e.ino).or_default().push(k.clone());
    }
    by_ino.into_values().filter(|g| g.len() > 1).collect()
}

pub fn inos(tree: &Tree) -> BTreeMap<Vec<u8>, u64> {
    tree.iter().map(|(k, e)| (k.clone(), e.ino)).collect()
}

/// Inode numbers stay put within one mount: walked again, and again after the kernel forgot
/// every unused inode, each path has the st_ino (and d_ino) it had in `first`, and the view
/// is unchanged.
pub fn assert_inos_stable(mnt: &Path, first: &Tree, context: &str) {
    let again = snapshot(mnt);
    assert_eq!(
        inos(first),
        inos(&again),
        "{context}: st_ino changed on a second walk"
    );
    forget_caches();
    let after = snapshot(mnt);
    assert_eq!(
        inos(first),
        inos(&after),
        "{context}: st_ino changed after the kernel forgot the inodes"
    );
    assert_no_diff(
        &diff(first, &after, true),
        &format!("{context}: view changed after forget"),
    );
}

// ---- filesystem layouts ----

/// Where fixtures put their layers and their upper side (upper, work, mountpoints, scratch).
/// `scripts/test.sh` runs the mount tests once per layout (`scripts/layouts.sh`): layers and
/// upper on one filesystem, on two (ext4 and tmpfs either way, two tmpfs instances), on a
/// reflinking xfs or btrfs, and layers on a read-only mount. Without the variables, both sides
/// are /tmp (ext4 here).
pub struct Layout {
    pub name: String,
    pub lower: PathBuf,
    pub upper: PathBuf,
    /// Unions get read-only bind mounts of the layers ([`lower_views`]).
    pub lower_ro: bool,
}

pub fn layout() -> &'static Layout {
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let lower =
            var("STRATA_TEST_LOWER_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let upper = var("STRATA_TEST_UPPER_DIR").map_or_else(|| lower.clone(), PathBuf::from);
        let name = var("STRATA_TEST_LAYOUT")
            .map_or_else(|| "same".to_owned(), |v| v.to_string_lossy().into_owned());
        Layout {
            name,
            lower,
            upper,
            lower_ro: var("STRATA_TEST_LOWER_RO").is_some_and(|v| v == "1"),
        }
    })
}

/// Read-only views of layers made so far (layer -> view), unmounted by the fixture that owns
/// them.
static VIEWS: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());

/// The paths to give a union as `layers`. In the read-only-lower layout each is a read-only
/// bind mount of the layer beside it (`l0.ro`), as image layers on a squashfs or a read-only
/// disk are; the test keeps writing to the layer itself. Otherwise the layers as they are.
pub fn lower_views(layers: &[PathBuf]) -> Vec<PathBuf> {
    use rustix::mount::{MountFlags, mount_bind, mount_remount};
    if !layout().lower_ro {
        return layers.to_vec();
    }
    let mut views = VIEWS.lock().unwrap_or_else(|e| e.into_inner());
    layers
        .iter()
        .map(|l| {
            if !l.starts_with(&layout().lower) {
                return l.clone();
            }
            if let Some(v) = views.get(l) {
                return v.clone();
            }
            let mut name = l.file_name().unwrap_or_default().to_os_string();
            name.push(".ro");
            let v = l.with_file_name(name);
            mkdir(&v);
            mount_bind(l, &v).unwrap_or_else(|e| panic!("bind {}: {e}", l.display()));
            mount_remount(&v, MountFlags::BIND | MountFlags::RDONLY, "")
                .unwrap_or_else(|e| panic!("remount {} read-only: {e}", v.display()));
            views.insert(l.clone(), v.clone());
            v
        })
        .collect()
}

fn drop_views_under(dir: &Path) {
    let mut views = VIEWS.lock().unwrap_or_else(|e| e.into_inner());
    let mine: Vec<PathBuf> = views
        .keys()
        .filter(|l| l.starts_with(dir))
        .cloned()
        .collect();
    for l in mine {
        if let Some(v) = views.remove(&l) {
            unmount(&v);
        }
    }
}

// ---- fixtures ----

/// `n` layer directories l0 (top) .. l{n-1} in a temp dir on the layout's lower side, and a
/// temp dir on its upper side for everything else ([`Fixture::path`]).
pub struct Fixture {
    /// Holds the layers.
    pub dir: tempfile::TempDir,
    /// Holds upper, work, mountpoints and scratch space.
    pub side: tempfile::TempDir,
    pub layers: Vec<PathBuf>,
}

fn temp_in(base: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-test")
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("temp dir in {}: {e}", base.display()))
}

impl Fixture {
    pub fn new(n: usize) -> Fixture {
        let dir = temp_in(&layout().lower);
        let side = temp_in(&layout().upper);
        let layers: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect();
        for l in &layers {
            mkdir(l);
        }
        Fixture { dir, side, layers }
    }

    /// `name` on the upper side, created as an (empty) directory.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.side.path().join(name);
        mkdir(&p);
        p
    }

    pub fn layer(&self, i: usize) -> &Path {
        &self.layers[i]
    }

    /// Both temp dirs (for tests that open them up to another user).
    pub fn roots(&self) -> [&Path; 2] {
        [self.dir.path(), self.side.path()]
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop_views_under(self.dir.path());
    }
}

/// Mounts kernel overlayfs and strata over the fixture's lowers and requires the same view:
/// every entry and field (times included: both read the same layer inodes), the same paths
/// sharing an inode, and st_ino stable within strata's mount. Returns strata's view.
pub fn compare_with_kernel(fx: &Fixture, context: &str) -> Tree {
    let k = KernelOverlay::lowers(&fx.layers, &fx.path("kernel"));
    let s = StrataMount::lowers(&fx.layers, &fx.path("strata"));
    let want = kernel_snapshot(&k.mnt);
    let got = snapshot(&s.mnt);
    assert_no_diff(&diff(&want, &got, true), context);
    assert_eq!(
        ino_groups(&want),
        ino_groups(&got),
        "{context}: paths sharing an inode differ from the kernel's"
    );
    assert_inos_stable(&s.mnt, &got, context);
    got
}

/// strata's view of the fixture's lowers (for formats the kernel does not read), with the
/// stability checks of [`compare_with_kernel`].
pub fn strata_view(fx: &Fixture, context: &str) -> Tree {
    let s = StrataMount::lowers(&fx.layers, &fx.path("strata"));
    let got = snapshot(&s.mnt);
    assert_inos_stable(&s.mnt, &got, context);
    got
}

// ---- small filesystems ----

/// A tmpfs of `size` at `dir`, unmounted on drop.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    pub fn mount(dir: &Path, size: &str) -> SmallFs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "strata-small"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        SmallFs(dir.to_owned())
    }

    pub fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {}", self.0.display());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}
