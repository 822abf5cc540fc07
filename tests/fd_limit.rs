//! Trees with more directories than strata may have open fds: every entry is seen, and the
//! daemon's fd count stays within its directory fd cache (issue 19). A lower of 50,250
//! directories is walked as root with RLIMIT_NOFILE 256 for strata, and by an unprivileged
//! user (`unshare -Ur`, as tests/rootless.rs does it) with the usual default soft limit, 1024.
//! Needs root and /dev/fuse; the rootless one also setpriv.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const OUTER: usize = 250;
const INNER: usize = 200;
/// Directories in the tree below the layer root.
const DIRS: usize = OUTER + OUTER * INNER;

/// `d000/e000` .. `d249/e199`, with a file in the last directory of each `dNNN`.
fn big_tree(layer: &Path) {
    for i in 0..OUTER {
        let d = layer.join(format!("d{i:03}"));
        fs::create_dir(&d).unwrap();
        for j in 0..INNER {
            fs::create_dir(d.join(format!("e{j:03}"))).unwrap();
        }
        fs::write(d.join(format!("e{:03}/f", INNER - 1)), b"x").unwrap();
    }
}

/// Every entry below `root` (root excluded): directories and files, failing on any error. Each
/// listing is read whole before going deeper, so the walk itself holds one fd at a time.
fn walk(root: &Path) -> (usize, usize) {
    let (mut dirs, mut files) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let list: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())))
            .collect();
        for e in list {
            let md = fs::symlink_metadata(e.path())
                .unwrap_or_else(|err| panic!("lstat {}: {err}", e.path().display()));
            if md.is_dir() {
                dirs += 1;
                stack.push(e.path());
            } else {
                files += 1;
            }
        }
    }
    (dirs, files)
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples `pid`'s fd count every few ms while `f` runs; the most seen.
fn max_fds_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(Mutex::new(0));
    let sampler = {
        let (stop, max) = (stop.clone(), max.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = fd_count(pid);
                let mut m = max.lock().unwrap();
                *m = (*m).max(n);
                drop(m);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let r = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let m = *max.lock().unwrap();
    (r, m)
}

#[test]
fn walk_50k_directories_with_256_fds() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    big_tree(&fx.layers[0]);
    let (u, w, m) = (fx.path("u"), fx.path("w"), fx.path("m"));
    let mut opt = b"lowerdir=".to_vec();
    opt.extend_from_slice(fx.layers[0].as_os_str().as_bytes());
    for (k, p) in [(",upperdir=", &u), (",workdir=", &w)] {
        opt.extend_from_slice(k.as_bytes());
        opt.extend_from_slice(p.as_os_str().as_bytes());
    }
    let args: Vec<OsString> = vec![
        "-f".into(),
        "-o".into(),
        std::ffi::OsStr::from_bytes(&opt).into(),
        m.clone().into(),
    ];
    let s = StrataMount::spawn_under(&["prlimit", "--nofile=256:256", "--"], &args, &m);
    let pid = s.pid();
    let base = fd_count(pid);
    let ((dirs, files), max) = max_fds_during(pid, || walk(&s.mnt));
    assert_eq!((dirs, files), (DIRS, OUTER), "every entry seen");
    // The cache holds 192 of the 256 (a quarter left for files and FUSE); a few more are open
    // for moments (a listing being read, one being reopened).
    assert!(
        max <= base + 192 + 8,
        "fds: {base} after mount, {max} during the walk"
    );
    // Through the mount, changes still land right with most directory fds closed.
    fs::rename(s.mnt.join("d007"), s.mnt.join("d000/e005/moved")).unwrap();
    fs::write(s.mnt.join("d000/e005/moved/e199/g"), b"new").unwrap();
    assert_eq!(fs::read(u.join("d000/e005/moved/e199/g")).unwrap(), b"new");
    assert_eq!(walk(&s.mnt), (DIRS, OUTER + 1));
    assert!(s.stop().success());
}

#[test]
fn walk_50k_directories_rootless_default_soft_limit() {
    if !require_mount_env() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP {}: setpriv (util-linux) not installed", test_name());
        return;
    }
    let fx = Fixture::new(1);
    big_tree(&fx.layers[0]);
    // The upper, workdir and mount point sit on the upper side (maybe another filesystem).
    let [u, w, m] = ["u", "w", "m"].map(|d| fx.path(d));
    fs::copy(STRATA, fx.dir.path().join("strata")).unwrap();
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .args(fx.roots())
        .status()
        .unwrap();
    assert!(st.success());
    let old = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    eprintln!("rootless test: making /dev/fuse mode 0666 for its duration (was {old:o})");
    let _restore = DevFuseMode(old);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    // A distribution's default soft limit, whatever this test runner has; the hard one stays.
    let script = "ulimit -Sn 1024
        ./strata -f -o lowerdir=l0,upperdir=$U,workdir=$W $M 2> log &
        pid=$!
        i=0; until grep -q \" $M \" /proc/self/mountinfo; do
          i=$((i + 1)); [ $i -lt 500 ] || { cat log; exit 1; }; sleep 0.02; done
        find $M -type d | wc -l
        find $M -type f | wc -l
        ls /proc/$pid/fd | wc -l
        ./strata umount $M
        wait $pid";
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "unshare",
            "-Urm",
            "--propagation",
            "private",
            "sh",
            "-ec",
            script,
        ])
        .current_dir(fx.dir.path())
        .env("U", &u)
        .env("W", &w)
        .env("M", &m)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: Vec<usize> = stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(
        n[..2],
        [DIRS + 1, OUTER],
        "every entry seen (find counts m too)"
    );
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    // Raised to the hard limit, the cache is 3/4 of it: with a hard limit below the tree's
    // size, the walk needed eviction; either way the fds stay under the cache's bound.
    let bound = strata::union::size_for_limit(hard) + 64;
    assert!(
        n[2] <= bound,
        "{} fds open after the walk (bound {bound})",
        n[2]
    );
}

struct DevFuseMode(u32);
impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

/// With -d, strata says what fd limit it got and how large its directory fd cache is.
#[test]
fn debug_output_reports_the_fd_limit() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    let m = fx.path("m");
    let mut opt = b"lowerdir=".to_vec();
    opt.extend_from_slice(fx.layers[0].as_os_str().as_bytes());
    let args: Vec<OsString> = vec![
        "-d".into(),
        "-o".into(),
        std::ffi::OsStr::from_bytes(&opt).into(),
        m.clone().into(),
    ];
    let s = StrataMount::spawn_under(&["prlimit", "--nofile=300:4000", "--"], &args, &m);
    let log = s.log();
    assert!(s.stop().success());
    assert!(
        log.contains("RLIMIT_NOFILE: soft limit 4000 (was 300, hard limit 4000); directory fd cache: 3000 fds"),
        "{log}"
    );
}
