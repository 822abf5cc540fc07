//! Micro-benchmarks of the union's hot paths, driven in-process through `strata::union::Union`
//! on layers in temp dirs (no FUSE, no root): lookup through N layers, the merged listing of
//! a 10k-entry directory spread over layers, a walk of 1,020 directories with the directory
//! fd cache at its normal size and tiny ones (the cost of reopening by path), and copy-up of
//! a small and a 64 MiB file.
//!
//!   cargo bench --bench union                 full measurement
//!   cargo bench --bench union -- --quick      a faster, rougher pass
//!   cargo bench --bench union -- lookup       only the benchmarks whose name contains "lookup"
//!
//! Whiteouts are OCI `.wh.` files, which any user can create (char 0/0 devices need mknod).

use std::ffi::OsStr;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata::options::WhiteoutFormat;
use strata::sys::open_root;
use strata::union::{ROOT_ID, Stack, Union, size_for_limit};
use tempfile::TempDir;

fn temp() -> TempDir {
    tempfile::Builder::new()
        .prefix("strata-bench.")
        .tempdir()
        .expect("a temp dir (TMPDIR)")
}

fn put(path: &Path, size: usize) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    fs::write(path, vec![b'x'; size]).expect("write a fixture file");
}

/// A union of the given lower layers (top first), with a fresh upper and workdir in `rw`.
fn union(lowers: &[PathBuf], rw: Option<&Path>) -> Union {
    union_with_dir_fds(lowers, rw, size_for_limit(strata::sys::nofile_limit()))
}

fn union_with_dir_fds(lowers: &[PathBuf], rw: Option<&Path>, dir_fds: usize) -> Union {
    let (upper, work) = match rw {
        Some(dir) => {
            let (u, w) = (dir.join("upper"), dir.join("work"));
            fs::create_dir_all(&u).expect("mkdir upper");
            fs::create_dir_all(&w).expect("mkdir work");
            (
                Some(open_root(&u).expect("open upper")),
                Some(open_root(&w).expect("open work")),
            )
        }
        None => (None, None),
    };
    let lowers = lowers
        .iter()
        .map(|l| open_root(l).expect("open a lower layer"))
        .collect();
    Union::with_dir_fds(
        Stack {
            upper,
            work,
            lowers,
        },
        WhiteoutFormat::Oci,
        dir_fds,
    )
    .expect("Union::new")
}

/// `n` lower layers: every layer has the directory `usr/` with a file of its own; the bottom
/// one alone has the file `bottom`.
fn layered(n: usize) -> (TempDir, Vec<PathBuf>) {
    let dir = temp();
    let layers: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        put(&l.join(format!("usr/own{i}")), 10);
    }
    put(&layers[n - 1].join("bottom"), 100);
    (dir, layers)
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [1, 5, 20] {
        let (_dir, layers) = layered(n);
        let u = union(&layers, None);
        // Each lookup is forgotten again, so every iteration resolves and interns afresh,
        // as the kernel does after it forgot the inode.
        g.bench_with_input(
            BenchmarkId::new("file in the bottom layer", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let (node, st) = u.lookup(ROOT_ID, OsStr::new("bottom")).expect("lookup");
                    u.forget(node.id, 1);
                    black_box(st.st_size)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("directory in every layer", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let (node, st) = u.lookup(ROOT_ID, OsStr::new("usr")).expect("lookup");
                    u.forget(node.id, 1);
                    black_box(st.st_ino)
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("missing name", n), &n, |b, _| {
            b.iter(|| black_box(u.lookup(ROOT_ID, OsStr::new("absent")).is_err()))
        });
    }
    g.finish();
}

/// Three layers sharing `big/`: base 5,000 entries, middle 3,000 and 200 whiteouts of base
/// ones, top 2,200 new and 200 replacing base ones: 10,000 entries merged.
fn wide() -> (TempDir, Vec<PathBuf>) {
    let dir = temp();
    let [top, mid, base] = ["top", "mid", "base"].map(|l| dir.path().join(l).join("big"));
    for i in 0..5000 {
        put(&base.join(format!("e{i}")), 0);
    }
    for i in 0..3000 {
        put(&mid.join(format!("m{i}")), 0);
    }
    for i in 0..200 {
        put(&mid.join(format!(".wh.e{i}")), 0);
    }
    for i in 0..2200 {
        put(&top.join(format!("t{i}")), 0);
    }
    for i in 200..400 {
        put(&top.join(format!("e{i}")), 0);
    }
    let layers = ["top", "mid", "base"].map(|l| dir.path().join(l)).to_vec();
    (dir, layers)
}

fn readdir(c: &mut Criterion) {
    let (_dir, layers) = wide();
    let u = union(&layers, None);
    let (big, _) = u.lookup(ROOT_ID, OsStr::new("big")).expect("lookup big");
    let mut g = c.benchmark_group("readdir 10k entries over 3 layers");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    g.bench_function("readdir (merge + list)", |b| {
        b.iter(|| {
            let fh = u.opendir(big.id).expect("opendir");
            let mut n = 0u32;
            u.readdir(big.id, fh, 0, |_, _, _, _| {
                n += 1;
                false
            })
            .expect("readdir");
            u.releasedir(big.id, fh).expect("releasedir");
            assert_eq!(n, 10_002, "10,000 entries and . and ..");
            n
        })
    });
    g.bench_function("readdirplus (merge + lookup of each)", |b| {
        b.iter(|| {
            let fh = u.opendir(big.id).expect("opendir");
            let mut ids = Vec::with_capacity(10_002);
            u.readdirplus(big.id, fh, 0, |_, _, node, _| {
                ids.push(node.id);
                false
            })
            .expect("readdirplus");
            u.releasedir(big.id, fh).expect("releasedir");
            // "." and ".." count no lookup; every entry counts one, given back as the kernel
            // would once it forgets them.
            for id in &ids[2..] {
                u.forget(*id, 1);
            }
            ids.len()
        })
    });
    g.finish();
}

fn copy_up(c: &mut Criterion) {
    let lower = temp();
    let small = 4096;
    let big = 64 << 20;
    put(&lower.path().join("etc/small.conf"), small);
    put(&lower.path().join("opt/big.bin"), big);
    let layers = vec![lower.path().to_owned()];
    let mut g = c.benchmark_group("copy-up on first open for writing");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (label, path, size) in [
        ("4 KiB file", ["etc", "small.conf"], small),
        ("64 MiB file", ["opt", "big.bin"], big),
    ] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(label, |b| {
            b.iter_batched(
                || {
                    // A fresh, empty upper each time, with the file looked up (not timed).
                    let rw = temp();
                    let u = union(&layers, Some(rw.path()));
                    let (dir, _) = u.lookup(ROOT_ID, OsStr::new(path[0])).expect("lookup dir");
                    let (file, _) = u.lookup(dir.id, OsStr::new(path[1])).expect("lookup file");
                    (rw, u, file.id)
                },
                |(rw, u, id)| {
                    let fh = u.open(id, libc::O_WRONLY).expect("open for writing").fh;
                    u.release(id, fh).expect("release");
                    // Dropped after the measurement: the upper's removal is not timed.
                    (rw, u)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Two layers merging `d0..d19`, each with `e0..e49` (1,020 directories, a file in each).
fn tree() -> (TempDir, Vec<PathBuf>) {
    let dir = temp();
    let layers: Vec<PathBuf> = ["top", "base"].map(|l| dir.path().join(l)).to_vec();
    for i in 0..20 {
        put(&layers[0].join(format!("d{i}/top")), 10);
        for j in 0..50 {
            put(&layers[1].join(format!("d{i}/e{j}/f")), 10);
        }
    }
    (dir, layers)
}

/// Lists every directory with readdirplus, keeping the nodes (as the kernel holds what it
/// walked), then forgets them all. Returns the entries seen.
fn walk_all(u: &Union) -> usize {
    let mut held = Vec::new();
    let mut stack = vec![ROOT_ID];
    while let Some(id) = stack.pop() {
        let fh = u.opendir(id).expect("opendir");
        u.readdirplus(id, fh, 0, |_, name, node, _| {
            if name != b"." && name != b".." {
                held.push(node.id);
                if node.is_dir {
                    stack.push(node.id);
                }
            }
            false
        })
        .expect("readdirplus");
        u.releasedir(id, fh).expect("releasedir");
    }
    for id in &held {
        u.forget(*id, 1);
    }
    held.len()
}

fn walk(c: &mut Criterion) {
    let (_dir, layers) = tree();
    let mut g = c.benchmark_group("walk 1,020 directories over 2 layers");
    g.sample_size(10);
    let normal = size_for_limit(strata::sys::nofile_limit());
    for (label, size) in [
        (format!("dir fd cache {normal} (normal)"), normal),
        ("dir fd cache 64".to_owned(), 64),
        ("dir fd cache 2".to_owned(), 2),
    ] {
        let u = union_with_dir_fds(&layers, None, size);
        g.bench_function(label, |b| {
            b.iter(|| {
                assert_eq!(walk_all(&u), 2_040, "1,020 directories and 1,020 files");
            })
        });
        let s = u.dir_fd_stats();
        eprintln!(
            "  dir fd cache {size}: {} reopens, {} closed early",
            s.reopens, s.evictions
        );
    }
    g.finish();
}

criterion_group!(benches, lookup, readdir, walk, copy_up);
criterion_main!(benches);
