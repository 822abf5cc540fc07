//! Faults: a full upper filesystem, and the daemon killed under a writable mount. What must
//! survive: the lower layers untouched, no partial file or staging debris visible, errors
//! (ENOSPC, ENOTCONN) instead of hangs, and after a new mount a tree that kernel overlayfs
//! over the same upper agrees with.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn staging_is_empty(work: &Path) -> bool {
    fs::read_dir(work.join("work")).map_or(true, |mut d| d.next().is_none())
}

/// The tree strata shows over `upper` after a fresh mount, checked against kernel overlayfs
/// over the same upper.
fn remount_agrees_with_kernel(fx: &Fixture, upper: &Path, work: &Path, context: &str) -> Tree {
    let s = StrataMount::with_upper(&fx.layers, upper, work, &fx.path("again"));
    let got = snapshot(&s.mnt);
    drop(s);
    let k = KernelOverlay::over_strata_upper(&fx.layers, upper, work, &fx.path("kernel"));
    assert_same(&kernel_snapshot(&k.mnt), &got, context);
    got
}

#[test]
fn a_full_upper_gives_enospc_and_recovers_when_space_returns() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
    write(&fx.layer(0).join("big"), &big);
    write(&fx.layer(0).join("small"), b"small");
    let small = fx.path("small");
    let fs_ = SmallFs::mount(&small, "4m");
    let (u, w) = (small.join("u"), small.join("w"));
    mkdir(&u);
    mkdir(&w);
    let s = StrataMount::with_upper(&fx.layers, &u, &w, &fx.path("m"));
    // Copy-up of 8 MiB into 4 MiB: ENOSPC, nothing half-copied anywhere.
    let append = |m: &Path| fs::OpenOptions::new().append(true).open(m.join("big"));
    assert_eq!(errno(append(&s.mnt)), Some(libc::ENOSPC));
    assert!(
        !u.join("big").exists(),
        "a partial copy is visible in the upper"
    );
    assert!(
        staging_is_empty(&w),
        "staging debris after a failed copy-up"
    );
    assert_eq!(
        fs::read(s.mnt.join("big")).unwrap(),
        big,
        "view after the failure"
    );
    // New files fill what is left, then fail the same way.
    let chunk = vec![b'x'; 256 << 10];
    let mut filled = 0;
    let full = (0..64).find_map(|i| {
        let r =
            fs::File::create(s.mnt.join(format!("fill{i}"))).and_then(|mut f| f.write_all(&chunk));
        filled += 1;
        r.err()
    });
    assert_eq!(
        full.and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC),
        "after {filled} files"
    );
    // Space returns: the same copy-up succeeds, with all the data.
    fs_.resize("64m");
    let mut f = append(&s.mnt).expect("copy-up once there is room");
    f.write_all(b"tail").unwrap();
    drop(f);
    let mut want = big.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(s.mnt.join("big")).unwrap(), want);
    assert!(s.stop().success());
    assert_eq!(
        fs::read(fx.layer(0).join("big")).unwrap(),
        big,
        "the lower changed"
    );
    let got = remount_agrees_with_kernel(&fx, &u, &w, "after ENOSPC and recovery");
    assert_eq!(
        got[b"big".as_slice()].content.as_deref(),
        Some(want.as_slice())
    );
    assert!(staging_is_empty(&w));
}

#[test]
fn a_killed_daemon_gives_errors_not_hangs_and_a_consistent_upper() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    write(&fx.layer(0).join("f"), b"lower f");
    write(&fx.layer(0).join("d/x"), b"x");
    let (u, w) = (fx.path("u"), fx.path("w"));
    let s = StrataMount::with_upper(&fx.layers, &u, &w, &fx.path("m"));
    let mut open = fs::File::open(s.mnt.join("f")).unwrap();
    fs::write(s.mnt.join("new"), b"new").unwrap();
    s.kill();
    // Whoever still uses the mount gets an error at once (ENOTCONN), never a hang.
    let (tx, rx) = std::sync::mpsc::channel();
    let mnt = s.mnt.clone();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = open.read_to_end(&mut buf).map_err(|e| e.raw_os_error());
        let stat = fs::metadata(mnt.join("d")).map_err(|e| e.raw_os_error());
        let _ = tx.send((read.err(), stat.err()));
    });
    let (read, stat) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a process on the dead mount hung");
    assert_eq!(read, Some(Some(libc::ENOTCONN)), "read of an open file");
    assert_eq!(stat, Some(Some(libc::ENOTCONN)), "stat on the dead mount");
    drop(s);
    let got = remount_agrees_with_kernel(&fx, &u, &w, "after SIGKILL");
    assert_eq!(
        got[b"new".as_slice()].content.as_deref(),
        Some(b"new".as_slice())
    );
    assert!(staging_is_empty(&w));
}

/// SIGKILL at a random moment of a workload that copies up, renames directories, links and
/// deletes, 50 times over one upper: every new mount is consistent with the kernel's view of
/// the same upper, the staging directory is clear, and hard-link groups keep their counts.
#[test]
fn killed_at_random_moments_the_upper_stays_consistent() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    let low = fx.layer(0);
    for i in 0..20 {
        write(
            &low.join(format!("d{i}/f")),
            &vec![b'a' + (i % 26) as u8; 64 << 10],
        );
    }
    write(&low.join("h/a"), b"linked");
    fs::hard_link(low.join("h/a"), low.join("h/b")).unwrap();
    let (u, w) = (fx.path("u"), fx.path("w"));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..50u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let s = StrataMount::with_upper(&fx.layers, &u, &w, &fx.path(&format!("m{round}")));
        // A mount clears what the killed one left in staging before it goes live.
        assert!(
            staging_is_empty(&w),
            "round {round}: staging debris after a mount"
        );
        let m = s.mnt.clone();
        let worker = std::thread::spawn(move || workload(&m, round));
        std::thread::sleep(Duration::from_micros(seed % 30_000));
        s.kill();
        let _ = worker.join();
        drop(s);
    }
    let got = remount_agrees_with_kernel(&fx, &u, &w, "after 50 kills");
    // The lower hard-link group stays one file, whatever copy-ups happened.
    let (a, b) = (&got[b"h/a".as_slice()], &got[b"h/b".as_slice()]);
    assert_eq!((a.ino, a.nlink), (b.ino, b.nlink), "h/a and h/b split");
    assert_eq!(
        fs::metadata(low.join("h/a")).unwrap().nlink(),
        2,
        "the lower changed"
    );
    assert!(staging_is_empty(&w));
}

/// Copy-ups, directory renames back and forth, links and deletes; errors are expected once
/// the daemon is gone.
fn workload(m: &Path, round: u32) {
    for i in 0..20 {
        let d = m.join(format!("d{i}"));
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(d.join("f"))
            .and_then(|mut f| f.write_all(format!("round {round}\n").as_bytes()));
        let (from, to) = (m.join(format!("d{i}")), m.join(format!("d{i}-moved")));
        if fs::rename(&from, &to).is_ok() {
            let _ = fs::rename(&to, &from);
        }
        let _ = fs::hard_link(m.join("h/a"), m.join(format!("h/l{round}-{i}")));
        let _ = fs::remove_file(m.join(format!("h/l{round}-{i}")));
        // The daemon is gone: stop.
        if fs::metadata(m).is_err_and(|e| e.kind() != ErrorKind::NotFound) {
            return;
        }
    }
}
