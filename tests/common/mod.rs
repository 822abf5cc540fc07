//! Shared harness for tests that mount strata and kernel overlayfs for real.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// Whether this machine can run mount tests; prints why not (a loud skip, never a silent pass).
pub fn require_mount_env(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    let fuse = Path::new("/dev/fuse").exists();
    if !root || !fuse {
        eprintln!("SKIP {test}: needs root and /dev/fuse (root: {root}, /dev/fuse: {fuse})");
        return false;
    }
    true
}

/// Whether `path` is a mountpoint right now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.split(|&b| b == b'\n')
        .any(|line| line.split(|&b| b == b' ').nth(4) == Some(want))
}

fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Unmounts, lazily if the mount is busy; never panics (runs in Drop).
pub fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    if rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()).is_err() {
        let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A strata mount served by a foreground child process; unmounted (and the child reaped)
/// on drop, even when the test panics.
pub struct StrataMount {
    pub mnt: PathBuf,
    child: Option<Child>,
}

impl StrataMount {
    /// `strata -f ARGS... MNT`, waiting until the mount is live.
    pub fn start(args: &[&OsStr], mnt: &Path) -> StrataMount {
        let mut cmd = Command::new(STRATA);
        cmd.arg("-f").args(args).arg(mnt).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn strata");
        let start = Instant::now();
        while !is_mounted(mnt) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("strata exited before mounting: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "strata did not mount"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        StrataMount {
            mnt: mnt.to_owned(),
            child: Some(child),
        }
    }

    /// Lower layers only, top first.
    pub fn lowers(layers: &[PathBuf], mnt: &Path) -> StrataMount {
        let opt = lowerdir_opt(layers);
        StrataMount::start(&[OsStr::new("-o"), OsStr::from_bytes(&opt)], mnt)
    }

    /// With a writable upper.
    pub fn with_upper(layers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> StrataMount {
        let mut opt = lowerdir_opt(layers);
        opt.extend_from_slice(b",upperdir=");
        opt.extend_from_slice(upper.as_os_str().as_bytes());
        opt.extend_from_slice(b",workdir=");
        opt.extend_from_slice(work.as_os_str().as_bytes());
        StrataMount::start(&[OsStr::new("-o"), OsStr::from_bytes(&opt)], mnt)
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unmount(&self.mnt);
        self.reap().expect("strata child")
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > Duration::from_secs(5) {
                // Our own child, which did not exit after its mount went away.
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
        self.reap();
    }
}

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

/// Kernel overlayfs over the same layers: the oracle. Unmounted on drop.
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    /// Lower layers only. The kernel needs two lowers for an upper-less mount, so a single
    /// layer gets an empty second one beside `mnt`.
    pub fn lowers(layers: &[PathBuf], mnt: &Path) -> KernelOverlay {
        let mut layers = layers.to_vec();
        if layers.len() == 1 {
            let empty = mnt.with_extension("empty-lower");
            fs::create_dir_all(&empty).unwrap();
            layers.push(empty);
        }
        let opt = lowerdir_opt(&layers);
        Self::mount(&opt, mnt)
    }

    pub fn with_upper(layers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> KernelOverlay {
        let mut opt = lowerdir_opt(layers);
        opt.extend_from_slice(b",upperdir=");
        opt.extend_from_slice(upper.as_os_str().as_bytes());
        opt.extend_from_slice(b",workdir=");
        opt.extend_from_slice(work.as_os_str().as_bytes());
        opt.extend_from_slice(b",redirect_dir=on,index=on");
        Self::mount(&opt, mnt)
    }

    fn mount(opt: &[u8], mnt: &Path) -> KernelOverlay {
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(OsStr::from_bytes(opt))
            .arg(mnt)
            .status()
            .expect("run mount");
        assert!(status.success(), "kernel overlay mount failed");
        wait_for(|| is_mounted(mnt), "kernel overlay mount");
        KernelOverlay {
            mnt: mnt.to_owned(),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

// ---- building layers ----

pub fn write(path: &Path, content: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap();
}

fn parent_of(path: &Path) -> &Path {
    let p = path.parent().unwrap();
    fs::create_dir_all(p).unwrap();
    p
}

pub fn mknod(path: &Path, kind: rustix::fs::FileType, mode: u32, dev: u64) {
    parent_of(path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        dev,
    )
    .unwrap();
}

/// Kernel-format whiteout: a char device 0/0.
pub fn whiteout_chardev(path: &Path) {
    mknod(path, rustix::fs::FileType::CharacterDevice, 0o600, 0);
}

/// OCI-format whiteout: an empty `.wh.<name>` beside it.
pub fn whiteout_oci(path: &Path) {
    let mut name = b".wh.".to_vec();
    name.extend_from_slice(path.file_name().unwrap().as_bytes());
    write(&parent_of(path).join(OsStr::from_bytes(&name)), b"");
}

/// Kernel "xattr whiteout": zero-size file with the whiteout xattr, parent marked "x".
pub fn whiteout_xattr(path: &Path) {
    write(path, b"");
    set_xattr(path, "trusted.overlay.whiteout", b"");
    set_xattr(path.parent().unwrap(), "trusted.overlay.opaque", b"x");
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

pub fn opaque_xattr(dir: &Path, name: &str) {
    mkdir(dir);
    set_xattr(dir, name, b"y");
}

pub fn opaque_oci(dir: &Path) {
    write(&dir.join(".wh..wh..opq"), b"");
}

pub fn symlink(target: &str, path: &Path) {
    parent_of(path);
    std::os::unix::fs::symlink(target, path).unwrap();
}

// ---- snapshots ----

/// Everything a user can observe of one entry, except its inode number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: u32,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size and link count of non-directories (a merged directory's are not comparable).
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<u64>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub type Tree = BTreeMap<Vec<u8>, Entry>;

pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        // security.* (selinux labels) differ by host policy, not by union semantics.
        if name.starts_with(b"security.") {
            continue;
        }
        let mut value = vec![0u8; 4096];
        let v = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value).unwrap_or(0);
        out.push((name.to_vec(), value[..v].to_vec()));
    }
    out.sort();
    out
}

/// Walks `root` without following symlinks. Also checks, as it goes, that every entry's
/// `d_ino` equals its `st_ino` (returned as the second map for stability checks).
pub fn snapshot(root: &Path) -> (Tree, BTreeMap<Vec<u8>, u64>) {
    walk(root, false)
}

/// The kernel's view. One deliberate difference is skipped: kernel overlayfs lists the
/// whiteouts of a directory that is not merged (it passes such a readdir straight through),
/// though lstat of them fails with ENOENT. strata never shows whiteouts.
pub fn kernel_snapshot(root: &Path) -> (Tree, BTreeMap<Vec<u8>, u64>) {
    walk(root, true)
}

fn walk(root: &Path, skip_listed_whiteouts: bool) -> (Tree, BTreeMap<Vec<u8>, u64>) {
    let mut tree = Tree::new();
    let mut inos = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            let md = match fs::symlink_metadata(&path) {
                Err(err) if skip_listed_whiteouts && err.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                other => other.unwrap_or_else(|err| panic!("lstat {}: {err}", path.display())),
            };
            assert_eq!(e.ino(), md.ino(), "d_ino != st_ino for {}", show(&r));
            let kind = md.mode() & libc::S_IFMT;
            let is_dir = kind == libc::S_IFDIR;
            let entry = Entry {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: (!is_dir).then(|| md.size()),
                nlink: (!is_dir).then(|| md.nlink()),
                content: (kind == libc::S_IFREG).then(|| fs::read(&path).unwrap()),
                target: (kind == libc::S_IFLNK).then(|| {
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                rdev: (kind == libc::S_IFCHR || kind == libc::S_IFBLK).then(|| md.rdev()),
                xattrs: xattrs(&path),
            };
            if is_dir {
                stack.push((path, r.clone()));
            }
            inos.insert(r.clone(), md.ino());
            tree.insert(r, entry);
        }
    }
    (tree, inos)
}

/// A path for messages: bytes escaped, never lossy.
pub fn show(p: &[u8]) -> String {
    p.escape_ascii().to_string()
}

/// Panics with every difference between two trees, entry by entry.
pub fn assert_same(expected: &Tree, actual: &Tree, context: &str) {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing: {}", show(k))),
            Some(a) if a != v => {
                diffs.push(format!("differs: {}\n  want {v:?}\n  got  {a:?}", show(k)))
            }
            _ => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        diffs.push(format!("unexpected: {}", show(k)));
    }
    assert!(
        diffs.is_empty(),
        "{context}: trees differ:\n{}",
        diffs.join("\n")
    );
}

/// Names (paths) of a tree, for compact expectations.
pub fn names(tree: &Tree) -> Vec<String> {
    tree.keys().map(|k| show(k)).collect()
}

/// A temp dir with `n` layer directories l0 (top) .. l{n-1}, and mountpoints.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub layers: Vec<PathBuf>,
}

impl Fixture {
    pub fn new(n: usize) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("strata-test")
            .tempdir_in("/tmp")
            .unwrap();
        let layers: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect();
        for l in &layers {
            mkdir(l);
        }
        Fixture { dir, layers }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        mkdir(&p);
        p
    }

    pub fn layer(&self, i: usize) -> &Path {
        &self.layers[i]
    }
}

/// Mounts strata and the kernel over the fixture's lowers and compares the views.
pub fn compare_with_kernel(fx: &Fixture, context: &str) -> Tree {
    let kmnt = fx.path("kernel");
    let smnt = fx.path("strata");
    let k = KernelOverlay::lowers(&fx.layers, &kmnt);
    let s = StrataMount::lowers(&fx.layers, &smnt);
    let (want, _) = kernel_snapshot(&k.mnt);
    let (got, inos1) = snapshot(&s.mnt);
    assert_same(&want, &got, context);
    // Inode numbers are stable within a mount.
    let (_, inos2) = snapshot(&s.mnt);
    assert_eq!(inos1, inos2, "{context}: st_ino changed between two walks");
    drop(s);
    drop(k);
    got
}
