//! The union rules, checked without a mount: layers on temp dirs, driven through `Union`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
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
        u.readdir(fh, off, |ino, next, kind, name| {
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
    u.releasedir(fh);
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

/// A file created where a just-deleted file's inode number is still held by a node the
/// kernel has not forgotten must not be taken for that old file (found by the long
/// differential run: under load, FORGET comes late and ext4 reuses inode numbers at once).
#[test]
fn new_file_reusing_a_held_inode_number_is_a_new_node() {
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
    let mut reused = 0;
    for i in 0..20 {
        let old = format!("old{i}");
        let new = format!("new{i}");
        let (a, _, fh, _) = u
            .create(ROOT_ID, OsStr::new(&old), 0o644, libc::O_WRONLY, who)
            .unwrap();
        u.release(fh);
        let real = fs::metadata(up.join(&old)).unwrap();
        u.unlink(ROOT_ID, OsStr::new(&old)).unwrap();
        // The kernel still holds `a` (no forget): a new file must not become it.
        let (b, st, fh, _) = u
            .create(ROOT_ID, OsStr::new(&new), 0o644, libc::O_WRONLY, who)
            .unwrap();
        u.write(fh, 0, b"new").unwrap();
        u.release(fh);
        if fs::metadata(up.join(&new)).unwrap().ino() == std::os::unix::fs::MetadataExt::ino(&real)
        {
            reused += 1;
        }
        assert_ne!(a.id, b.id, "round {i}: new file took the old node");
        assert_eq!(st.st_ino, b.ino);
        let (c, _) = u.lookup(ROOT_ID, OsStr::new(&new)).unwrap();
        assert_eq!(c.id, b.id, "lookup finds the new node again");
    }
    assert!(
        reused > 0,
        "the filesystem never reused an inode number: the test proved nothing"
    );
}
