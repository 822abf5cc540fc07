//! `passthrough=lower`: lower files read through FUSE passthrough under an upper, and the
//! rules that keep it safe. The lower layer's file must never change, readers must see the
//! file's data, and a writer or a truncation must wait (ETXTBSY) while a reader holds the
//! lower file's backing, since the kernel would make the writer share it. Passthrough needs
//! real root: without it these tests skip loudly.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::*;

const BUSYBOX: &str = "/bin/busybox";

/// 4 MiB + 5 bytes of a pattern no two offsets share at the page level.
fn pattern() -> Vec<u8> {
    (0..(4 << 20) + 5)
        .map(|i: u32| (i * 31 % 251) as u8)
        .collect()
}

/// A one-layer fixture with `img` in the lower, and its mount with `opts` (and the request
/// counts written to `counts` at unmount).
struct Setup {
    fx: Fixture,
    counts: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let fx = Fixture::new(1);
        write(&fx.layer(0).join("img"), &pattern());
        let counts = fx.path("stats").join("counts");
        Setup { fx, counts }
    }

    fn mount(&self, opts: &str) -> StrataMount {
        let counts = self.counts.to_str().expect("utf-8 path");
        StrataMount::with_upper_env(
            &self.fx.layers,
            &self.fx.path("u"),
            &self.fx.path("w"),
            &self.fx.path("m"),
            opts,
            &[("STRATA_OP_COUNTS", counts)],
        )
    }

    /// READ requests the daemon answered, from the table written at unmount.
    fn reads(&self) -> u64 {
        let t = fs::read_to_string(&self.counts).unwrap_or_default();
        assert!(t.contains("OPEN"), "no request table at unmount: {t:?}");
        t.lines()
            .filter_map(|l| l.split_whitespace().collect::<Vec<_>>().try_into().ok())
            .filter(|[name, _]: &[&str; 2]| *name == "READ")
            .map(|[_, n]| n.parse::<u64>().unwrap_or(0))
            .sum()
    }

    fn lower(&self) -> Vec<u8> {
        fs::read(self.fx.layer(0).join("img")).unwrap()
    }
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Reads through `passthrough=lower` come from the lower file without a READ request, and
/// the same reads under the default (exact) mode do go to the daemon: the mode is what
/// changes the path.
#[test]
fn lower_reads_skip_the_daemon_only_with_passthrough_lower() {
    if !require_mount_env() {
        return;
    }
    for (opts, passthrough) in [("passthrough=lower", true), ("", false)] {
        let s = Setup::new();
        forget_caches();
        let m = s.mount(opts);
        assert_eq!(fs::read(m.mnt.join("img")).unwrap(), pattern(), "{opts:?}");
        let f = fs::File::open(m.mnt.join("img")).unwrap();
        let mut at = [0u8; 7];
        f.read_exact_at(&mut at, 3 << 20).unwrap();
        assert_eq!(at[..], pattern()[3 << 20..(3 << 20) + 7], "{opts:?}: pread");
        drop((f, m));
        let reads = s.reads();
        if passthrough {
            assert_eq!(reads, 0, "passthrough=lower: READ requests");
        } else {
            assert!(
                reads > 0,
                "exact mode must read through the daemon; counts:\n{}",
                fs::read_to_string(&s.counts).unwrap_or_default()
            );
        }
        assert_eq!(s.lower(), pattern());
    }
}

/// fuse-overlayfs 2.0's corruption sequence under `passthrough=lower`: a reader holds the
/// lower file, then the file is opened `O_WRONLY|O_APPEND` and truncated by path. Both wait
/// (ETXTBSY) and change nothing; once the reader is gone they work on the upper copy, and the
/// lower file is as it was throughout.
#[test]
fn writers_wait_for_lower_readers_and_the_lower_never_changes() {
    if !require_mount_env() {
        return;
    }
    let s = Setup::new();
    let m = s.mount("passthrough=lower");
    let img = m.mnt.join("img");
    let mut reader = fs::File::open(&img).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    let append = || fs::OpenOptions::new().append(true).open(&img);
    assert_eq!(errno_of(append()), Some(libc::ETXTBSY), "writer while read");
    let truncated = fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(0));
    assert_eq!(errno_of(truncated), Some(libc::ETXTBSY), "open for writing");
    let t = std::process::Command::new("truncate")
        .args(["-s", "10"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        !t.status.success() && String::from_utf8_lossy(&t.stderr).contains("Text file busy"),
        "truncate by path: {t:?}"
    );
    // A second reader shares the lower backing and sees the same bytes.
    assert_eq!(fs::read(&img).unwrap(), pattern(), "second reader");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!([head, rest].concat(), pattern(), "first reader");
    drop(reader);
    assert_eq!(s.lower(), pattern(), "lower while read");

    let mut w = append().unwrap();
    w.write_all(b"APPENDED").unwrap();
    // A reader opened while the writer is open sees the write (the upper copy's backing).
    let want = [pattern(), b"APPENDED".to_vec()].concat();
    assert_eq!(fs::read(&img).unwrap(), want, "reader beside the writer");
    drop(w);
    assert_eq!(fs::read(&img).unwrap(), want, "reader after the writer");
    assert_eq!(fs::read(s.fx.path("u").join("img")).unwrap(), want, "upper");
    drop(m);
    assert_eq!(s.lower(), pattern(), "lower after");
}

/// The default mode keeps kernel overlayfs's answer for the same sequence: the writer opens
/// while the reader holds the file, and the old reader then sees the upper copy.
#[test]
fn exact_mode_lets_the_writer_in_and_the_reader_follows() {
    if !require_mount_env() {
        return;
    }
    let s = Setup::new();
    let m = s.mount("");
    let img = m.mnt.join("img");
    let mut reader = fs::File::open(&img).unwrap();
    let mut w = fs::OpenOptions::new().write(true).open(&img).unwrap();
    w.write_all(b"NEW").unwrap();
    drop(w);
    let mut first = [0u8; 3];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"NEW", "the old reader follows the copy-up");
    drop((reader, m));
    assert_eq!(s.lower(), pattern());
}

/// Executables of lower files (mapped from their lower backing) run under `passthrough=lower`.
#[test]
fn lower_files_map_and_run_under_passthrough_lower() {
    if !require_mount_env() || !require_busybox(BUSYBOX) {
        return;
    }
    let fx = Fixture::new(1);
    fs::copy(BUSYBOX, fx.layer(0).join("busybox")).unwrap();
    let m = StrataMount::with_upper_env(
        &fx.layers,
        &fx.path("u"),
        &fx.path("w"),
        &fx.path("m"),
        "passthrough=lower",
        &[],
    );
    let out = std::process::Command::new(m.mnt.join("busybox"))
        .args(["echo", "ran"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let map = fs::read(m.mnt.join("busybox")).unwrap();
    assert_eq!(map, fs::read(BUSYBOX).unwrap());
    drop(m);
    assert_eq!(fs::read(fx.layer(0).join("busybox")).unwrap(), map);
}
