//! The read path, mounted for real: each case of the union rules, compared with kernel
//! overlayfs over the same layers where the kernel reads the format, and with explicit
//! expectations where it does not (OCI `.wh.` files, `user.fuseoverlayfs.opaque`).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use rustix::fs::FileType;

macro_rules! need_mount {
    ($name:expr) => {
        if !require_mount_env($name) {
            return;
        }
    };
}

#[test]
fn chardev_whiteouts_match_kernel() {
    need_mount!("chardev_whiteouts_match_kernel");
    let fx = Fixture::new(3);
    write(&fx.layer(2).join("a"), b"a");
    write(&fx.layer(2).join("d/x"), b"x");
    write(&fx.layer(2).join("d/y"), b"y");
    write(&fx.layer(2).join("gone/deep"), b"z");
    whiteout_chardev(&fx.layer(1).join("a"));
    whiteout_chardev(&fx.layer(1).join("d/x"));
    whiteout_chardev(&fx.layer(1).join("gone"));
    write(&fx.layer(0).join("gone"), b"back as a file");
    let got = compare_with_kernel(&fx, "chardev whiteouts");
    assert_eq!(names(&got), ["d", "d/y", "gone"]);
}

#[test]
fn xattr_whiteouts_match_kernel() {
    need_mount!("xattr_whiteouts_match_kernel");
    let fx = Fixture::new(2);
    write(&fx.layer(1).join("d/x"), b"x");
    write(&fx.layer(1).join("d/y"), b"y");
    whiteout_xattr(&fx.layer(0).join("d/x"));
    let got = compare_with_kernel(&fx, "xattr whiteouts");
    assert_eq!(names(&got), ["d", "d/y"]);
}

#[test]
fn oci_whiteouts_hide_lower_names() {
    need_mount!("oci_whiteouts_hide_lower_names");
    let fx = Fixture::new(3);
    write(&fx.layer(2).join("a"), b"a");
    write(&fx.layer(2).join("d/x"), b"x");
    write(&fx.layer(2).join("d/y"), b"y");
    write(&fx.layer(1).join("a2"), b"a2");
    whiteout_oci(&fx.layer(1).join("a"));
    whiteout_oci(&fx.layer(1).join("d/x"));
    whiteout_oci(&fx.layer(0).join("a2"));
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let (tree, _) = snapshot(&m.mnt);
    assert_eq!(names(&tree), ["d", "d/y"]);
    assert!(
        fs::symlink_metadata(mnt.join(".wh.a")).is_err(),
        ".wh. files are never visible"
    );
    assert!(fs::symlink_metadata(mnt.join("a")).is_err());
}

#[test]
fn trusted_opaque_dirs_match_kernel() {
    need_mount!("trusted_opaque_dirs_match_kernel");
    let fx = Fixture::new(3);
    write(&fx.layer(2).join("d/old"), b"old");
    write(&fx.layer(2).join("d/sub/deep"), b"deep");
    write(&fx.layer(2).join("e/kept"), b"kept");
    opaque_xattr(&fx.layer(1).join("d"), "trusted.overlay.opaque");
    write(&fx.layer(1).join("d/new"), b"new");
    write(&fx.layer(0).join("d/top"), b"top");
    mkdir(&fx.layer(0).join("e"));
    let got = compare_with_kernel(&fx, "trusted opaque");
    assert_eq!(names(&got), ["d", "d/new", "d/top", "e", "e/kept"]);
}

#[test]
fn other_opaque_forms_hide_lower_content() {
    need_mount!("other_opaque_forms_hide_lower_content");
    let fx = Fixture::new(2);
    for d in ["u", "f", "o"] {
        write(&fx.layer(1).join(d).join("hidden"), b"h");
    }
    opaque_xattr(&fx.layer(0).join("u"), "user.overlay.opaque");
    opaque_xattr(&fx.layer(0).join("f"), "user.fuseoverlayfs.opaque");
    mkdir(&fx.layer(0).join("o"));
    opaque_oci(&fx.layer(0).join("o"));
    write(&fx.layer(0).join("o/mine"), b"m");
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let (tree, _) = snapshot(&m.mnt);
    assert_eq!(names(&tree), ["f", "o", "o/mine", "u"]);
    // The markers themselves are internal: no xattr shows.
    for d in ["u", "f", "o"] {
        assert!(
            tree[d.as_bytes()].xattrs.is_empty(),
            "{d}: internal xattrs leak"
        );
    }
}

#[test]
fn files_hide_dirs_and_dirs_hide_files_like_kernel() {
    need_mount!("files_hide_dirs_and_dirs_hide_files_like_kernel");
    let fx = Fixture::new(3);
    write(&fx.layer(2).join("a/inner"), b"i");
    write(&fx.layer(2).join("b"), b"file");
    write(&fx.layer(1).join("a"), b"a file now");
    write(&fx.layer(1).join("b/child"), b"c");
    write(&fx.layer(0).join("c/x"), b"x");
    write(&fx.layer(2).join("c"), b"hidden file");
    compare_with_kernel(&fx, "file/dir shadowing");
}

#[test]
fn deep_trees_match_kernel() {
    need_mount!("deep_trees_match_kernel");
    let fx = Fixture::new(2);
    let mut p = fx.layer(1).to_path_buf();
    let mut q = fx.layer(0).to_path_buf();
    for i in 0..40 {
        p.push(format!("d{i}"));
        q.push(format!("d{i}"));
        write(&p.join("low"), format!("{i}").as_bytes());
        if i % 5 == 0 {
            write(&q.join("high"), b"h");
        }
    }
    let got = compare_with_kernel(&fx, "deep tree");
    assert!(got.len() > 80);
}

#[test]
fn every_file_type_matches_kernel() {
    need_mount!("every_file_type_matches_kernel");
    let fx = Fixture::new(2);
    let l = fx.layer(1);
    write(&l.join("reg"), b"data");
    fs::set_permissions(
        l.join("reg"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
    symlink("reg", &l.join("link"));
    symlink("/nonexistent/target", &l.join("dangling"));
    mknod(&l.join("fifo"), FileType::Fifo, 0o640, 0);
    mknod(&l.join("sock"), FileType::Socket, 0o600, 0);
    mknod(
        &l.join("chr"),
        FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &l.join("blk"),
        FileType::BlockDevice,
        0o600,
        rustix::fs::makedev(7, 0),
    );
    write(&fx.layer(0).join("owned"), b"o");
    rustix::fs::chownat(
        rustix::fs::CWD,
        fx.layer(0).join("owned"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let got = compare_with_kernel(&fx, "file types");
    assert_eq!(got[b"chr".as_slice()].rdev, Some(rustix::fs::makedev(1, 3)));
    assert_eq!(got[b"owned".as_slice()].uid, 1234);
}

#[test]
fn xattrs_shown_internal_ones_hidden() {
    need_mount!("xattrs_shown_internal_ones_hidden");
    let fx = Fixture::new(2);
    write(&fx.layer(1).join("f"), b"f");
    set_xattr(&fx.layer(1).join("f"), "user.colour", b"blue");
    set_xattr(&fx.layer(1).join("f"), "trusted.other", b"t");
    set_xattr(&fx.layer(1).join("f"), "trusted.overlay.origin", b"\0\xfb");
    mkdir(&fx.layer(0).join("d"));
    mkdir(&fx.layer(1).join("d"));
    set_xattr(&fx.layer(0).join("d"), "trusted.overlay.opaque", b"n");
    set_xattr(&fx.layer(0).join("d"), "user.tag", b"top");
    compare_with_kernel(&fx, "xattrs");
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let f = m.mnt.join("f");
    assert_eq!(
        xattrs(&f),
        vec![
            (b"trusted.other".to_vec(), b"t".to_vec()),
            (b"user.colour".to_vec(), b"blue".to_vec())
        ]
    );
    let mut buf = [0u8; 64];
    let e = rustix::fs::lgetxattr(m.mnt.join("d"), "trusted.overlay.opaque", &mut buf).unwrap_err();
    assert_eq!(e, rustix::io::Errno::NODATA);
}

#[test]
fn statfs_and_readlink_work() {
    need_mount!("statfs_and_readlink_work");
    let fx = Fixture::new(1);
    symlink("some/where", &fx.layer(0).join("l"));
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let s = rustix::fs::statvfs(&m.mnt).unwrap();
    let host = rustix::fs::statvfs(fx.layer(0)).unwrap();
    assert_eq!(s.f_blocks, host.f_blocks);
    assert_eq!(s.f_namemax, host.f_namemax);
    assert_eq!(
        fs::read_link(m.mnt.join("l")).unwrap(),
        Path::new("some/where")
    );
}

#[test]
fn symlinks_in_layers_are_never_followed() {
    need_mount!("symlinks_in_layers_are_never_followed");
    let fx = Fixture::new(2);
    let host = fx.path("host");
    write(&host.join("secret"), b"host data");
    write(&host.join(".wh.kept"), b"");
    // A layer symlink to a host directory, and a lower directory of the same name below it.
    symlink(host.to_str().unwrap(), &fx.layer(0).join("d"));
    write(&fx.layer(1).join("d/kept"), b"lower");
    symlink("/etc", &fx.layer(0).join("etc"));
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let (tree, _) = snapshot(&m.mnt);
    // The symlink wins and is shown as a symlink: the union itself never read through it.
    assert_eq!(names(&tree), ["d", "etc"]);
    assert_eq!(tree[b"d".as_slice()].kind, libc::S_IFLNK);
    assert_eq!(
        tree[b"etc".as_slice()].target.as_deref(),
        Some(b"/etc".as_slice())
    );
    let md = fs::symlink_metadata(m.mnt.join("etc")).unwrap();
    assert!(md.file_type().is_symlink());
}

#[test]
fn non_utf8_names_survive() {
    need_mount!("non_utf8_names_survive");
    let fx = Fixture::new(2);
    let odd = OsStr::from_bytes(b"caf\xe9-\xff\xfe");
    write(&fx.layer(1).join(odd), b"bytes");
    mkdir(&fx.layer(0).join(odd));
    write(&fx.layer(1).join("plain"), b"p");
    whiteout_chardev(&fx.layer(0).join("plain"));
    let got = compare_with_kernel(&fx, "non-UTF-8 names");
    assert!(got.contains_key(b"caf\xe9-\xff\xfe".as_slice()));
}

#[test]
fn lower_hard_links_share_an_inode() {
    need_mount!("lower_hard_links_share_an_inode");
    let fx = Fixture::new(1);
    write(&fx.layer(0).join("a"), b"linked");
    fs::hard_link(fx.layer(0).join("a"), fx.layer(0).join("b")).unwrap();
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let a = fs::symlink_metadata(m.mnt.join("a")).unwrap();
    let b = fs::symlink_metadata(m.mnt.join("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
}

/// Reads a directory through small getdents buffers, and re-reads from a saved offset.
#[test]
fn big_directory_each_entry_once_and_seekable() {
    need_mount!("big_directory_each_entry_once_and_seekable");
    let fx = Fixture::new(3);
    for (i, l) in fx.layers.iter().enumerate() {
        for n in 0..2000 {
            // Overlapping ranges across layers: 0..2000, 1000..3000, 2000..4000.
            write(&l.join("big").join(format!("f{:05}", n + i * 1000)), b"");
        }
    }
    whiteout_chardev(&fx.layer(0).join("big/f03999"));
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let dir = rustix::fs::open(
        m.mnt.join("big"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let read_all = |dir: &std::os::fd::OwnedFd, stop_after: Option<usize>| {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        let mut names = Vec::new();
        let mut cookie = 0;
        let mut iter = rustix::fs::RawDir::new(dir, &mut buf);
        while let Some(e) = iter.next() {
            let e = e.unwrap();
            names.push(e.file_name().to_bytes().to_vec());
            cookie = e.next_entry_cookie();
            if Some(names.len()) == stop_after {
                break;
            }
        }
        (names, cookie)
    };
    let (all, _) = read_all(&dir, None);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "an entry came twice");
    assert_eq!(all.len(), 3999 + 2, "every entry once, plus . and ..");
    // telldir/seekdir: the rest read again from a saved offset is the same.
    rustix::fs::seek(&dir, rustix::fs::SeekFrom::Start(0)).unwrap();
    let (head, cookie) = read_all(&dir, Some(700));
    rustix::fs::seek(&dir, rustix::fs::SeekFrom::Start(cookie)).unwrap();
    let (tail, _) = read_all(&dir, None);
    assert_eq!([head, tail].concat(), all);
}

#[test]
fn both_command_line_forms_and_background_mode() {
    need_mount!("both_command_line_forms_and_background_mode");
    let fx = Fixture::new(2);
    write(&fx.layer(0).join("top"), b"t");
    write(&fx.layer(1).join("low"), b"l");
    let mnt = fx.path("m");
    let want = ["low", "top"];
    // --lower form, foreground.
    let m = StrataMount::start(
        &[
            OsStr::new("--lower"),
            fx.layer(0).as_os_str(),
            OsStr::new("--lower"),
            fx.layer(1).as_os_str(),
        ],
        &mnt,
    );
    assert_eq!(names(&snapshot(&m.mnt).0), want);
    assert!(m.stop().success());
    // Mount-helper form (SOURCE MOUNTPOINT -o OPTS), background: returns once live.
    let opt = lowerdir_opt(&fx.layers);
    let st = std::process::Command::new(STRATA)
        .arg("strata")
        .arg(&mnt)
        .arg("-o")
        .arg(OsStr::from_bytes(&opt))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(is_mounted(&mnt), "mount is live when the command returns");
    let guard = MountGuard(mnt.clone());
    assert_eq!(names(&snapshot(&mnt).0), want);
    let st = std::process::Command::new(STRATA)
        .arg("umount")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!is_mounted(&mnt));
    drop(guard);
}

struct MountGuard(std::path::PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

#[test]
fn sigterm_unmounts_cleanly() {
    need_mount!("sigterm_unmounts_cleanly");
    let fx = Fixture::new(1);
    let mnt = fx.path("m");
    let m = StrataMount::lowers(&fx.layers, &mnt);
    let pid = rustix::process::Pid::from_raw(m.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let start = std::time::Instant::now();
    while is_mounted(&mnt) {
        assert!(
            start.elapsed().as_secs() < 10,
            "still mounted after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(m.stop().success(), "exit status 0 after SIGTERM");
}

#[test]
fn bad_input_is_refused_with_one_line() {
    need_mount!("bad_input_is_refused_with_one_line");
    let fx = Fixture::new(2);
    let mnt = fx.path("m");
    let file = fx.dir.path().join("file");
    write(&file, b"x");
    let full = fx.path("full");
    write(&full.join("x"), b"x");
    let upper = fx.path("upper");
    let work = fx.path("work");
    let l0 = fx.layer(0).to_str().unwrap().to_owned();
    let l1 = fx.layer(1).to_str().unwrap().to_owned();
    let m = mnt.to_str().unwrap().to_owned();
    // An empty directory inside a layer: mounting there would serve the union from itself.
    mkdir(&fx.layer(1).join("sub"));
    let inside = format!("{l1}/sub");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-o".into(), "lowerdir=/nonexistent".into(), m.clone()],
            "/nonexistent",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={}", file.display()),
                m.clone(),
            ],
            "not a directory",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={l0}"),
                full.display().to_string(),
            ],
            "not empty",
        ),
        (
            vec!["-o".into(), format!("lowerdir={l0},bogus=1"), m.clone()],
            "bogus",
        ),
        (vec![m.clone()], "no lower layers"),
        (
            vec!["-o".into(), format!("lowerdir={l0}:{l0}"), m.clone()],
            "twice",
        ),
        (
            vec!["-o".into(), format!("lowerdir={l0}:{l1}"), inside.clone()],
            "overlap",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={l0},xattr_permissions=1"),
                m.clone(),
            ],
            "not supported",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={l0},upperdir={}", upper.display()),
                m.clone(),
            ],
            "workdir",
        ),
        (
            vec![
                "-o".into(),
                format!(
                    "lowerdir={l0}:{l1},upperdir={inside},workdir={}",
                    work.display()
                ),
                m.clone(),
            ],
            "overlap",
        ),
        (
            vec![
                "-o".into(),
                format!(
                    "lowerdir={l0},upperdir={},workdir=/dev/shm",
                    upper.display()
                ),
                m.clone(),
            ],
            "same filesystem",
        ),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(STRATA)
            .args(&args)
            .output()
            .unwrap();
        // A wrongly accepted case must not leave its mount behind.
        let _guard = MountGuard(mnt.clone());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} does not mention {needle:?}"
        );
        assert!(!is_mounted(&mnt), "{args:?} left a mount");
    }
    // Nothing was touched in the layers.
    assert_eq!(fs::read_dir(fx.layer(0)).unwrap().count(), 0);
}
