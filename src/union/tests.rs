//! The union rules, checked without a mount: layers on temp dirs, driven through `Union`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::*;

fn union_of(dirs: &[&Path]) -> Union {
    let lowers = dirs.iter().map(|d| sys::open_root(d).unwrap()).collect();
    Union::new(
        Stack {
            upper: None,
            work: None,
            lowers,
        },
        crate::options::WhiteoutFormat::Auto,
    )
    .unwrap()
}

/// name -> (ino, kind) of a merged directory, via opendir/readdir.
fn list(u: &Union, id: u64) -> BTreeMap<Vec<u8>, (u64, FileType)> {
    let fh = u.opendir(id).unwrap();
    let mut out = BTreeMap::new();
    let mut off = 0;
    // Two entries per call, to exercise offsets across calls.
    loop {
        let mut got = 0;
        u.readdir(id, fh, off, |ino, next, kind, name| {
            out.insert(name.to_vec(), (ino, kind));
            off = next;
            got += 1;
            got == 2
        })
        .unwrap();
        if got < 2 {
            break;
        }
    }
    u.releasedir(id, fh).unwrap();
    out.remove(b".".as_slice());
    out.remove(b"..".as_slice());
    out
}

fn names(u: &Union, id: u64) -> Vec<String> {
    list(u, id)
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn lookup_errno(u: &Union, parent: u64, name: &str) -> Option<i32> {
    u.lookup(parent, OsStr::new(name))
        .err()
        .and_then(|e| e.raw_os_error())
}

#[test]
fn oci_whiteouts_and_opaque_marker() {
    let t = tempfile::tempdir().unwrap();
    let (top, low) = (t.path().join("top"), t.path().join("low"));
    fs::create_dir_all(low.join("d")).unwrap();
    fs::write(low.join("gone"), "x").unwrap();
    fs::write(low.join("kept"), "x").unwrap();
    fs::write(low.join("d/hidden"), "x").unwrap();
    fs::create_dir_all(top.join("d")).unwrap();
    fs::write(top.join(".wh.gone"), "").unwrap();
    fs::write(top.join("d/.wh..wh..opq"), "").unwrap();
    fs::write(top.join("d/new"), "x").unwrap();
    let u = union_of(&[&top, &low]);
    assert_eq!(names(&u, ROOT_ID), ["d", "kept"]);
    assert_eq!(lookup_errno(&u, ROOT_ID, "gone"), Some(libc::ENOENT));
    assert_eq!(lookup_errno(&u, ROOT_ID, ".wh.gone"), Some(libc::ENOENT));
    let (d, _) = u.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(names(&u, d.id), ["new"]);
    assert_eq!(lookup_errno(&u, d.id, "hidden"), Some(libc::ENOENT));
}

#[test]
fn file_hides_dir_and_dir_hides_file() {
    let t = tempfile::tempdir().unwrap();
    let (top, low) = (t.path().join("top"), t.path().join("low"));
    fs::create_dir_all(low.join("a")).unwrap();
    fs::write(low.join("a/inner"), "x").unwrap();
    fs::write(low.join("b"), "file").unwrap();
    fs::create_dir_all(top.join("b")).unwrap();
    fs::write(top.join("a"), "file").unwrap();
    let u = union_of(&[&top, &low]);
    let (a, st) = u.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    assert!(!a.is_dir);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
    let (b, _) = u.lookup(ROOT_ID, OsStr::new("b")).unwrap();
    assert!(b.is_dir);
    assert!(list(&u, b.id).is_empty());
}

#[test]
fn merged_dir_lists_each_name_once_with_lookup_inodes() {
    let t = tempfile::tempdir().unwrap();
    let layers: Vec<_> = (0..3).map(|i| t.path().join(format!("l{i}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        fs::create_dir_all(l.join("d")).unwrap();
        for n in 0..50 {
            fs::write(l.join(format!("d/f{}", n + i * 25)), "x").unwrap();
        }
    }
    let odd = b"odd\xff\xfe";
    fs::write(layers[0].join("d").join(OsStr::from_bytes(odd)), "x").unwrap();
    let refs: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    let u = union_of(&refs);
    let (d, st) = u.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(st.st_nlink, 1, "merged directories report nlink 1");
    let l = list(&u, d.id);
    assert_eq!(l.len(), 101);
    assert!(l.contains_key(odd.as_slice()));
    for (name, (ino, _)) in &l {
        let (n, st) = u.lookup(d.id, OsStr::from_bytes(name)).unwrap();
        assert_eq!(st.st_ino, *ino, "d_ino equals st_ino for {name:?}");
        assert_eq!(n.ino, *ino);
        assert_eq!(u.getattr(n.id).unwrap().st_ino, *ino);
    }
}

#[test]
fn forget_drops_nodes() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("f"), "x").unwrap();
    let u = union_of(&[t.path()]);
    let before = u.node_count();
    let (n, _) = u.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    u.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    assert_eq!(u.node_count(), before + 1);
    u.forget(n.id, 1);
    assert_eq!(u.node_count(), before + 1, "one lookup still held");
    u.forget(n.id, 1);
    assert_eq!(u.node_count(), before);
}

#[test]
fn internal_xattrs_are_hidden() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("d")).unwrap();
    let set = |k: &str| {
        rustix::fs::setxattr(t.path().join("d"), k, b"y", rustix::fs::XattrFlags::empty())
    };
    set("user.overlay.opaque").unwrap();
    set("user.visible").unwrap();
    let u = union_of(&[t.path()]);
    let (d, _) = u.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(u.listxattr(d.id).unwrap(), b"user.visible\0");
    let e = u
        .getxattr(d.id, b"user.overlay.opaque", &mut [])
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
    assert_eq!(u.getxattr(d.id, b"user.visible", &mut []).unwrap(), 1);
}

/// A file unlinked while the kernel still holds its node keeps its inode (as kernel overlayfs
/// keeps the upper inode): getattr answers, with no links, until the kernel forgets it, and
/// no new file can be given its inode number and be taken for it meanwhile (found by the long
/// differential run: under load, FORGET comes late and ext4 reuses inode numbers at once).
#[test]
fn unlinked_file_held_by_the_kernel_keeps_its_inode() {
    let t = tempfile::tempdir().unwrap();
    let (low, up, work) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
    for d in [&low, &up, &work] {
        fs::create_dir(d).unwrap();
    }
    let u = Union::new(
        Stack {
            upper: Some(sys::open_root(&up).unwrap()),
            work: Some(sys::open_root(&work).unwrap()),
            lowers: vec![sys::open_root(&low).unwrap()],
        },
        crate::options::WhiteoutFormat::Auto,
    )
    .unwrap();
    let who = Caller { uid: 0, gid: 0 };
    let mut held = Vec::new();
    for i in 0..20 {
        let old = format!("old{i}");
        let new = format!("new{i}");
        let (a, _, fh, _) = u
            .create(ROOT_ID, OsStr::new(&old), 0o644, libc::O_WRONLY, who)
            .unwrap();
        u.release(a.id, fh).unwrap();
        let real = fs::metadata(up.join(&old)).unwrap().ino();
        u.unlink(ROOT_ID, OsStr::new(&old)).unwrap();
        // The kernel still holds `a` (no forget): it answers, and a new file must not become it.
        let st = u.getattr(a.id).unwrap();
        assert_eq!((st.st_ino, st.st_nlink), (a.ino, 0), "round {i}");
        let (b, st, fh, _) = u
            .create(ROOT_ID, OsStr::new(&new), 0o644, libc::O_WRONLY, who)
            .unwrap();
        u.write(b.id, fh, 0, b"new").unwrap();
        u.release(b.id, fh).unwrap();
        assert_ne!(fs::metadata(up.join(&new)).unwrap().ino(), real);
        assert_ne!(a.id, b.id, "round {i}: new file took the old node");
        assert_eq!(st.st_ino, b.ino);
        let (c, _) = u.lookup(ROOT_ID, OsStr::new(&new)).unwrap();
        assert_eq!(c.id, b.id, "lookup finds the new node again");
        u.forget(c.id, 1);
        held.push(a);
    }
    // Once forgotten, the inode goes.
    for a in held {
        u.forget(a.id, 1);
        assert_eq!(
            u.getattr(a.id).err().and_then(|e| e.raw_os_error()),
            Some(libc::ESTALE)
        );
    }
}

/// A union over one lower with an upper and workdir, keeping at most `dir_fds` directory fds.
fn writable(t: &Path, dir_fds: usize) -> Union {
    let (low, up, work) = (t.join("l"), t.join("u"), t.join("w"));
    for d in [&low, &up, &work] {
        fs::create_dir_all(d).unwrap();
    }
    Union::with_dir_fds(
        Stack {
            upper: Some(sys::open_root(&up).unwrap()),
            work: Some(sys::open_root(&work).unwrap()),
            lowers: vec![sys::open_root(&low).unwrap()],
        },
        crate::options::WhiteoutFormat::Auto,
        dir_fds,
    )
    .unwrap()
}

/// The node at a '/'-separated path.
fn walk_to(u: &Union, path: &str) -> Arc<Node> {
    let mut id = ROOT_ID;
    let mut node = None;
    for c in path.split('/') {
        let (n, _) = u
            .lookup(id, OsStr::new(c))
            .unwrap_or_else(|e| panic!("{path}: {c}: {e}"));
        id = n.id;
        node = Some(n);
    }
    node.unwrap()
}

fn read_all(u: &Union, id: u64) -> Vec<u8> {
    let fh = u.open(id, libc::O_RDONLY).unwrap().fh;
    let data = u.read(id, fh, 0, 1 << 16).unwrap();
    u.release(id, fh).unwrap();
    data
}

/// Directories whose fds were closed are found again by their path from the layer root, also
/// after renames, exchanges and removals through the union moved them (or their ancestors).
#[test]
fn renames_of_evicted_directories() {
    let t = tempfile::tempdir().unwrap();
    let low = t.path().join("l");
    fs::create_dir_all(low.join("a/b/c")).unwrap();
    fs::write(low.join("a/b/c/f"), "lower f").unwrap();
    fs::create_dir_all(low.join("x/y")).unwrap();
    let u = writable(t.path(), 2);
    let who = Caller { uid: 0, gid: 0 };
    let c = walk_to(&u, "a/b/c");
    let f = walk_to(&u, "a/b/c/f");
    let x = walk_to(&u, "x");
    // Upper-only directories too.
    let (m, _) = u.mkdir(ROOT_ID, OsStr::new("m"), 0o755, who).unwrap();
    let (n, _) = u.mkdir(m.id, OsStr::new("n"), 0o755, who).unwrap();
    let (o, _) = u.mkdir(n.id, OsStr::new("o"), 0o755, who).unwrap();
    let stats = u.dir_fd_stats();
    assert!(stats.open <= 3, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");

    // A merged directory moves (copy-up, redirect), and an upper-only one, into another.
    u.rename(
        ROOT_ID,
        OsStr::new("a"),
        x.id,
        OsStr::new("a2"),
        RenameMode::Replace,
    )
    .unwrap();
    u.dir_fds.evict_all();
    u.rename(
        ROOT_ID,
        OsStr::new("m"),
        x.id,
        OsStr::new("m2"),
        RenameMode::Replace,
    )
    .unwrap();
    u.dir_fds.evict_all();
    // The old nodes work through reopened fds...
    assert_eq!(names(&u, c.id), ["f"]);
    assert_eq!(read_all(&u, f.id), b"lower f");
    let (g, _, fh, _) = u
        .create(o.id, OsStr::new("g"), 0o644, libc::O_WRONLY, who)
        .unwrap();
    u.release(g.id, fh).unwrap();
    assert!(
        t.path().join("u/x/m2/n/o/g").exists(),
        "created where o is now"
    );
    u.dir_fds.evict_all();
    // ...and the new paths find the same nodes.
    assert_eq!(walk_to(&u, "x/a2/b/c").id, c.id);
    assert_eq!(walk_to(&u, "x/m2/n/o/g").id, g.id);
    assert_eq!(names(&u, x.id), ["a2", "m2", "y"]);
    assert_eq!(names(&u, ROOT_ID), ["x"]);

    // Copy-up below a moved, evicted directory lands in its new place.
    let fh = u.open(f.id, libc::O_WRONLY | libc::O_TRUNC).unwrap().fh;
    u.write(f.id, fh, 0, b"upper f").unwrap();
    u.release(f.id, fh).unwrap();
    assert_eq!(fs::read(t.path().join("u/x/a2/b/c/f")).unwrap(), b"upper f");

    // Exchange, then move back under the root, evicting between each step.
    let b = walk_to(&u, "x/a2/b");
    u.dir_fds.evict_all();
    u.rename(
        x.id,
        OsStr::new("a2"),
        x.id,
        OsStr::new("m2"),
        RenameMode::Exchange,
    )
    .unwrap();
    u.dir_fds.evict_all();
    assert_eq!(names(&u, b.id), ["c"]);
    assert_eq!(names(&u, n.id), ["o"]);
    assert_eq!(walk_to(&u, "x/m2/b/c/f").id, f.id);
    u.rename(
        x.id,
        OsStr::new("a2"),
        ROOT_ID,
        OsStr::new("top"),
        RenameMode::Replace,
    )
    .unwrap();
    u.dir_fds.evict_all();
    assert_eq!(walk_to(&u, "top/n/o/g").id, g.id);
    assert_eq!(read_all(&u, g.id), b"");
    assert_eq!(read_all(&u, f.id), b"upper f");

    // A removed directory still answers (its fd was kept).
    let fh = u.open(g.id, libc::O_RDONLY).unwrap().fh;
    u.release(g.id, fh).unwrap();
    u.unlink(o.id, OsStr::new("g")).unwrap();
    u.rmdir(n.id, OsStr::new("o")).unwrap();
    u.dir_fds.evict_all();
    assert_eq!(u.getattr(o.id).unwrap().st_nlink, 0);
    assert_eq!(lookup_errno(&u, n.id, "o"), Some(libc::ENOENT));
    let stats = u.dir_fd_stats();
    assert!(stats.reopens > 10, "{stats:?}");
}

/// An open directory keeps its fds whatever the cache's size.
#[test]
fn open_directories_keep_their_fds() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..20 {
        fs::create_dir_all(t.path().join(format!("l/d{i}"))).unwrap();
    }
    let u = writable(t.path(), 1);
    let fhs: Vec<(u64, u64)> = (0..20)
        .map(|i| {
            let n = walk_to(&u, &format!("d{i}"));
            (n.id, u.opendir(n.id).unwrap())
        })
        .collect();
    let s = u.dir_fd_stats();
    assert!(s.open >= 20, "pinned ones are never closed: {s:?}");
    let before = s.reopens;
    for &(id, fh) in &fhs {
        u.readdir(id, fh, 0, |_, _, _, _| false).unwrap();
    }
    assert_eq!(
        u.dir_fd_stats().reopens,
        before,
        "listing open ones reopens nothing"
    );
    for (id, fh) in fhs {
        u.releasedir(id, fh).unwrap();
    }
    walk_to(&u, "d0");
    assert!(u.dir_fd_stats().open <= 2);
}

/// Fifos, devices and symlinks the kernel still holds after their last name went (an open
/// fifo, an `O_PATH` fd) answer GETATTR with no links, and the requests that need no name,
/// until FORGET; as kernel overlayfs answers from the upper inode it keeps.
#[test]
fn unlinked_special_files_answer_until_forgotten() {
    let t = tempfile::tempdir().unwrap();
    let u = writable(t.path(), 2);
    let who = Caller { uid: 0, gid: 0 };
    let root = rustix::process::geteuid().is_root();
    let mut nodes = vec![
        u.mknod(ROOT_ID, OsStr::new("fifo"), libc::S_IFIFO | 0o644, 0, who)
            .unwrap()
            .0,
        u.symlink(ROOT_ID, OsStr::new("sl"), OsStr::new("target"), who)
            .unwrap()
            .0,
        u.create(ROOT_ID, OsStr::new("reg"), 0o644, libc::O_WRONLY, who)
            .map(|(n, _, fh, _)| {
                u.release(n.id, fh).unwrap();
                n
            })
            .unwrap(),
    ];
    if root {
        let dev = rustix::fs::makedev(1, 3);
        nodes.push(
            u.mknod(ROOT_ID, OsStr::new("dev"), libc::S_IFCHR | 0o600, dev, who)
                .unwrap()
                .0,
        );
    }
    for n in &nodes {
        let name = n.state().name.clone();
        let before = u.getattr(n.id).unwrap();
        u.unlink(ROOT_ID, &name).unwrap();
        u.dir_fds.evict_all();
        let st = u.getattr(n.id).unwrap();
        assert_eq!(st.st_nlink, 0, "{name:?}");
        assert_eq!(
            (st.st_ino, st.st_mode, st.st_rdev),
            (n.ino, before.st_mode, before.st_rdev)
        );
        assert_eq!(
            lookup_errno(&u, ROOT_ID, name.to_str().unwrap()),
            Some(libc::ENOENT)
        );
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            assert_eq!(u.readlink(n.id).unwrap(), b"target");
            continue;
        }
        let set = SetAttr {
            mode: Some(0o640),
            mtime: Some(SetTime::At(1000, 0)),
            ..Default::default()
        };
        let st = u.setattr(n.id, &set).unwrap();
        assert_eq!(
            (st.st_mode & 0o7777, st.st_mtime),
            (0o640, 1000),
            "{name:?}"
        );
        assert_eq!(u.listxattr(n.id).unwrap(), b"", "{name:?}");
    }
    // Reopened by the kernel (an O_PATH fd through /proc): the regular file's data is there.
    let reg = &nodes[2];
    let fh = u.open(reg.id, libc::O_RDWR).unwrap().fh;
    u.write(reg.id, fh, 0, b"still here").unwrap();
    assert_eq!(u.read(reg.id, fh, 0, 100).unwrap(), b"still here");
    assert_eq!(u.getattr_fh(reg.id, fh).unwrap().st_nlink, 0);
    u.setxattr(reg.id, b"user.k", b"v", 0).unwrap();
    assert_eq!(u.listxattr(reg.id).unwrap(), b"user.k\0");
    u.release(reg.id, fh).unwrap();
    assert_eq!(
        u.getattr(reg.id).unwrap().st_size,
        10,
        "after the last close too"
    );
    for n in &nodes {
        u.forget(n.id, 1);
        assert!(u.getattr(n.id).is_err());
    }
    // Nothing was left behind in the staging dir.
    assert_eq!(fs::read_dir(t.path().join("w/work")).unwrap().count(), 0);
}

/// A handle answers only for the inode it was opened on (virtiofsd's `find_handle`), and an
/// internal lookup (a rename, an unlink) leaves no reference behind, error or not.
#[test]
fn handles_belong_to_their_inode_and_internal_lookups_balance() {
    let t = tempfile::tempdir().unwrap();
    let low = t.path().join("l");
    fs::create_dir_all(&low).unwrap();
    fs::write(low.join("a"), "aaaa").unwrap();
    fs::write(low.join("b"), "bb").unwrap();
    let u = writable(t.path(), 2);
    let a = walk_to(&u, "a");
    let b = walk_to(&u, "b");
    let fh = u.open(a.id, libc::O_RDWR).unwrap().fh;
    assert_eq!(u.getattr_fh(a.id, fh).unwrap().st_size, 4);
    let e = u.getattr_fh(b.id, fh).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    let trunc = SetAttr {
        size: Some(0),
        fh: Some(fh),
        ..SetAttr::default()
    };
    assert_eq!(
        u.setattr(b.id, &trunc).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    assert_eq!(u.getattr(a.id).unwrap().st_size, 4, "a not truncated");
    // The requests that carry only a handle are checked against their inode too.
    let ebadf = |r: io::Result<()>, what: &str| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF), "{what}");
    };
    ebadf(u.read(b.id, fh, 0, 10).map(drop), "read");
    ebadf(u.write(b.id, fh, 0, b"x").map(drop), "write");
    ebadf(u.fsync(b.id, fh, false), "fsync");
    ebadf(u.fallocate(b.id, fh, 0, 0, 100), "fallocate");
    let fb = u.open(b.id, libc::O_RDWR).unwrap().fh;
    let cfr = u.copy_file_range((b.id, fh), 0, (b.id, fb), 0, 4).map(drop);
    ebadf(cfr, "copy_file_range from another's handle");
    let cfr = u.copy_file_range((b.id, fb), 0, (a.id, fb), 0, 2).map(drop);
    ebadf(cfr, "copy_file_range into another's handle");
    ebadf(u.release(b.id, fh), "release");
    assert_eq!(u.read(a.id, fh, 0, 10).unwrap(), b"aaaa", "still open");
    u.release(b.id, fb).unwrap();
    let dh = u.opendir(ROOT_ID).unwrap();
    ebadf(u.readdir(a.id, dh, 0, |_, _, _, _| false), "readdir");
    ebadf(
        u.readdirplus(a.id, dh, 0, |_, _, _, _| false),
        "readdirplus",
    );
    ebadf(u.releasedir(a.id, dh), "releasedir");
    u.readdir(ROOT_ID, dh, 0, |_, _, _, _| false).unwrap();
    u.releasedir(ROOT_ID, dh).unwrap();
    assert_eq!(fs::read(low.join("a")).unwrap(), b"aaaa", "lower untouched");
    assert_eq!(fs::read(low.join("b")).unwrap(), b"bb", "lower untouched");
    u.release(a.id, fh).unwrap();
    let before = u.node_count();
    // Refused renames and removals hold nothing afterwards.
    let mode = RenameMode::NoReplace;
    let e = u.rename(ROOT_ID, OsStr::new("a"), ROOT_ID, OsStr::new("b"), mode);
    assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EEXIST));
    let e = u.rmdir(ROOT_ID, OsStr::new("a"));
    assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
    assert_eq!(u.node_count(), before);
    // The kernel's own references are the only ones left: forgetting them empties the table.
    u.forget(a.id, 1);
    u.forget(b.id, 1);
    assert_eq!(u.node_count(), before - 2);
}
