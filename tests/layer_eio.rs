//! Read errors from a lower layer. Device-mapper is not usable on this kernel (no dm driver,
//! no modules: `dmsetup create` fails with "/dev/mapper/control: open failed"), so the failing
//! lower is a small FUSE filesystem served by this test (fuser, in-process): its file `bad`
//! answers every read with EIO, everything else reads fine. Through strata: reading or copying
//! up `bad` gets EIO and leaves nothing in the upper; everything else keeps working; the daemon
//! does not die.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use common::*;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};

const TTL: Duration = Duration::from_secs(1);
/// (inode, parent, name, kind, content); `bad` has content but every read of it fails.
const NODES: &[(u64, u64, &str, FileType, &[u8])] = &[
    (1, 1, "", FileType::Directory, b""),
    (2, 1, "good", FileType::RegularFile, b"good data\n"),
    (3, 1, "bad", FileType::RegularFile, &[b'x'; 8192]),
    (4, 1, "dir", FileType::Directory, b""),
    (5, 4, "inner", FileType::RegularFile, b"inner data\n"),
];
const BAD: u64 = 3;

struct Faulty;

fn attr(ino: u64) -> Option<FileAttr> {
    let &(_, _, _, kind, data) = NODES.iter().find(|n| n.0 == ino)?;
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Some(FileAttr {
        ino: INodeNo(ino),
        size: data.len() as u64,
        blocks: data.len().div_ceil(512) as u64,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: if kind == FileType::Directory {
            0o755
        } else {
            0o644
        },
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

impl Filesystem for Faulty {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match NODES
            .iter()
            .find(|n| n.0 != 1 && n.1 == parent.0 && OsStr::new(n.2) == name)
            .and_then(|n| attr(n.0))
        {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(&(_, _, _, _, data)) = NODES.iter().find(|n| n.0 == ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if ino.0 == BAD {
            return reply.error(Errno::EIO);
        }
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_owned()),
            (1, FileType::Directory, "..".to_owned()),
        ];
        for n in NODES.iter().filter(|n| n.0 != 1 && n.1 == ino.0) {
            entries.push((n.0, n.3, n.2.to_owned()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_lower_that_fails_reads_gives_eio_to_that_op_only() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    let lower = fx.path("faulty");
    fs::create_dir_all(&lower).unwrap();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("strata-test-faulty".into()),
        fuser::MountOption::RO,
    ];
    cfg.acl = fuser::SessionACL::All;
    // Unmounted when dropped (after strata's mount, declared below, is gone).
    let _faulty = fuser::spawn_mount(Faulty, &lower, &cfg).unwrap();
    assert!(wait_until(Duration::from_secs(10), || is_mounted(&lower)));
    assert_eq!(fs::read(lower.join("good")).unwrap(), b"good data\n");
    assert_eq!(errno(fs::read(lower.join("bad"))), Some(libc::EIO));

    let (upper, work, mnt) = (fx.path("upper"), fx.path("work"), fx.path("mnt"));
    for d in [&upper, &work, &mnt] {
        fs::create_dir_all(d).unwrap();
    }
    let m = StrataMount::with_upper(std::slice::from_ref(&lower), &upper, &work, &mnt);
    let pid = m.pid();
    let alive = || fs::metadata(format!("/proc/{pid}")).is_ok() && is_mounted(&mnt);

    for round in 0..20 {
        // The failing operations: a read, and a copy-up (which has to read the data).
        assert_eq!(
            errno(fs::read(mnt.join("bad"))),
            Some(libc::EIO),
            "read #{round}"
        );
        let append = fs::OpenOptions::new().append(true).open(mnt.join("bad"));
        let copied = append.and_then(|mut f| f.write_all(b"more"));
        assert_eq!(errno(copied), Some(libc::EIO), "copy-up #{round}");
        assert!(
            !upper.join("bad").exists(),
            "a failed copy-up left a file in the upper"
        );
        // Everything else keeps working.
        let good = fs::read(mnt.join("good")).unwrap();
        assert_eq!(good, format!("good data\n{}", "+".repeat(round)).as_bytes());
        assert_eq!(fs::read(mnt.join("dir/inner")).unwrap(), b"inner data\n");
        let mut names: Vec<_> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.retain(|n| !n.to_string_lossy().starts_with("new"));
        names.sort();
        assert_eq!(names, ["bad", "dir", "good"]);
        assert_eq!(fs::metadata(mnt.join("bad")).unwrap().len(), 8192);
        fs::write(mnt.join(format!("new{round}")), b"written").unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("good"))
            .unwrap();
        f.write_all(b"+").unwrap();
        assert!(alive(), "the daemon died in round {round}");
    }
    let mut s = String::new();
    fs::File::open(mnt.join("good"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, format!("good data\n{}", "+".repeat(20)));
    assert!(!upper.join("bad").exists());
    assert!(alive());
    let log = m.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(m);
    unmount(&mnt);
}
