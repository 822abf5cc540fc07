//! Crash consistency: the daemon is killed with SIGKILL in the middle of copy-ups of a large
//! file and of directory renames; after remounting, no partially copied file is visible, the
//! staging directory is clean, and data that was fsynced before the kill is there.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

const BIG: usize = 128 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn sigkill_during_copy_up_leaves_old_or_complete_file() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    let low = pattern(BIG);
    write(&fx.layer(0).join("big"), &low);
    let (u, w, mnt) = (fx.path("u"), fx.path("w"), fx.path("m"));
    let mut caught_mid_copy = 0;
    for round in 0..4u64 {
        let m = StrataMount::with_upper(&fx.layers, &u, &w, &mnt);
        // Durable before the crash: written and fsynced through the mount.
        let mut f = fs::File::create(mnt.join(format!("durable{round}"))).unwrap();
        f.write_all(b"kept").unwrap();
        f.sync_all().unwrap();
        drop(f);
        let target = mnt.join("big");
        let writer = std::thread::spawn(move || {
            // Opening for append copies the whole file up first.
            if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&target) {
                let _ = f.write_all(b"TAIL");
            }
        });
        std::thread::sleep(Duration::from_millis(5 + round * 40));
        m.crash();
        let _ = writer.join();
        // A staged copy left behind means the kill landed inside a copy-up.
        if fs::read_dir(w.join("work")).unwrap().count() > 0 {
            caught_mid_copy += 1;
        }

        let m = StrataMount::with_upper(&fx.layers, &u, &w, &mnt);
        let got = fs::read(mnt.join("big")).unwrap();
        let complete = [low.as_slice(), b"TAIL"].concat();
        assert!(
            got == low || got == complete,
            "round {round}: partial file visible ({} bytes)",
            got.len()
        );
        for r in 0..=round {
            assert_eq!(fs::read(mnt.join(format!("durable{r}"))).unwrap(), b"kept");
        }
        assert_eq!(
            fs::read_dir(w.join("work")).unwrap().count(),
            0,
            "staging not cleaned"
        );
        drop(m);
        // Next round starts from the lower file again.
        let _ = fs::remove_file(u.join("big"));
    }
    assert!(
        caught_mid_copy > 0,
        "no kill landed inside a copy-up: the test proved nothing"
    );
}

fn tree_names(p: &Path) -> Vec<String> {
    names(&snapshot(p))
}

#[test]
fn sigkill_during_directory_renames_keeps_one_whole_tree() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    for i in 0..50 {
        write(&fx.layer(0).join(format!("a/sub{}/f{i}", i % 5)), b"data");
    }
    let (u, w, mnt) = (fx.path("u"), fx.path("w"), fx.path("m"));
    let want_under = |root: &str| -> Vec<String> {
        let mut v = vec![root.to_owned()];
        for s in 0..5 {
            v.push(format!("{root}/sub{s}"));
            for i in (s..50).step_by(5) {
                v.push(format!("{root}/sub{s}/f{i}"));
            }
        }
        v.sort();
        v
    };
    for round in 0..4u64 {
        let m = StrataMount::with_upper(&fx.layers, &u, &w, &mnt);
        let root = mnt.clone();
        let mover = std::thread::spawn(move || {
            for _ in 0..10_000 {
                let (from, to) = if root.join("a").exists() {
                    ("a", "b")
                } else {
                    ("b", "a")
                };
                if fs::rename(root.join(from), root.join(to)).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(20 + round * 30));
        m.crash();
        let _ = mover.join();
        let m = StrataMount::with_upper(&fx.layers, &u, &w, &mnt);
        let names = tree_names(&mnt);
        assert!(
            names == want_under("a") || names == want_under("b"),
            "round {round}: tree after crash: {names:?}"
        );
        assert_eq!(
            fs::read_dir(w.join("work")).unwrap().count(),
            0,
            "staging not cleaned"
        );
        drop(m);
    }
}
