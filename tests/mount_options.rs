//! The overlay and fuse-overlayfs options container tools pass to a mount program, each
//! mounted for real: `volatile` (and what a mount after an unclean stop sees),
//! `xattr_permissions=` with `override_stat` records, `static_nlink`, `noacl`,
//! `metacopy=off`, `userxattr`, `noxattrs=1`, `redirect_dir=off`, SELinux contexts where
//! SELinux is off, and the refusals.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `-o lowerdir=...[,upperdir=U,workdir=W],EXTRA` for the fixture.
fn opts(fx: &Fixture, upper: Option<(&Path, &Path)>, extra: &str) -> OsString {
    let mut o = lowerdir_opt(&fx.layers);
    if let Some((u, w)) = upper {
        o.extend_from_slice(b",upperdir=");
        o.extend_from_slice(u.as_os_str().as_bytes());
        o.extend_from_slice(b",workdir=");
        o.extend_from_slice(w.as_os_str().as_bytes());
    }
    if !extra.is_empty() {
        o.push(b',');
        o.extend_from_slice(extra.as_bytes());
    }
    OsStr::from_bytes(&o).to_owned()
}

fn mount(fx: &Fixture, upper: Option<(&Path, &Path)>, extra: &str, mnt: &Path) -> StrataMount {
    StrataMount::start(&[OsStr::new("-o"), &opts(fx, upper, extra)], mnt)
}

/// `strata -o OPTS MNT` expected to fail: its stderr.
fn refused(o: &OsStr, mnt: &Path) -> String {
    let out = Command::new(STRATA)
        .arg("-o")
        .arg(o)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{o:?} was accepted");
    assert!(!is_mounted(mnt));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs(path)
        .into_iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v)
}

#[test]
fn volatile_marker_until_clean_stop() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    write(&fx.layer(0).join("f"), b"low");
    let (u, w, mnt) = (fx.path("u"), fx.path("w"), fx.path("m"));
    let marker = w.join("work/incompat/volatile");
    let m = mount(&fx, Some((&u, &w)), "volatile", &mnt);
    assert!(marker.is_dir(), "no volatile marker while mounted");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"+up").unwrap();
    // fsync is a no-op, and succeeds.
    f.sync_all().unwrap();
    drop(f);
    assert!(m.stop().success());
    // A clean stop synced the upper: the marker is gone and the next mount goes on.
    assert!(!marker.exists(), "marker left after a clean stop");
    let m = mount(&fx, Some((&u, &w)), "volatile", &mnt);
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"low+up");
    m.crash();
    // After an unclean stop the upper may lack acknowledged writes: refused, as the kernel
    // refuses, until the marker is removed (containers-storage removes it before mounting).
    assert!(marker.is_dir());
    let err = refused(&opts(&fx, Some((&u, &w)), ""), &mnt);
    assert!(err.contains("incompat/volatile"), "{err}");
    fs::remove_dir(&marker).unwrap();
    let m = mount(&fx, Some((&u, &w)), "", &mnt);
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"low+up");
    drop(m);
}

const CONTAINERS: &str = "user.containers.override_stat";
const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";

#[test]
fn xattr_permissions_override_stat() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    let low = fx.layer(0);
    // A layer as containers-storage writes it with force_mask: real files 0700 root, shown
    // owners and modes in the xattr, the layer root marked too.
    write(&low.join("f"), b"data");
    mkdir(&low.join("d"));
    write(&low.join("plain"), b"no record");
    chmod(&low.join("f"), 0o700);
    set_xattr(low, CONTAINERS, b"0:0:755");
    set_xattr(&low.join("f"), CONTAINERS, b"1234:567:0640");
    set_xattr(&low.join("d"), CONTAINERS, b"7:8:0711:dir");

    let ro = mount(&fx, None, "", &fx.path("ro"));
    let st = fs::metadata(ro.mnt.join("f")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o7777), (1234, 567, 0o640));
    let st = fs::metadata(ro.mnt.join("d")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o7777), (7, 8, 0o711));
    assert!(st.is_dir());
    let st = fs::metadata(ro.mnt.join("plain")).unwrap();
    assert_eq!(
        (st.uid(), st.mode() & 0o7777),
        (0, 0o644),
        "a file without record"
    );
    // The records are the union's, not the user's.
    assert_eq!(xattr(&ro.mnt.join("f"), CONTAINERS), None);
    drop(ro);

    let (u, w) = (fx.path("u"), fx.path("w"));
    let m = mount(&fx, Some((&u, &w)), "xattr_permissions=2", &fx.path("m"));
    // The upper root took the lower root's record.
    assert_eq!(xattr(&u, CONTAINERS).as_deref(), Some(&b"0:0:755"[..]));
    std::os::unix::fs::chown(m.mnt.join("f"), Some(42), Some(43)).unwrap();
    fs::set_permissions(m.mnt.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    let st = fs::metadata(m.mnt.join("f")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o7777), (42, 43, 0o600));
    assert_eq!(fs::read(m.mnt.join("f")).unwrap(), b"data");
    // The upper file keeps its real owner and mode; the change is in its record.
    let real = fs::symlink_metadata(u.join("f")).unwrap();
    assert_eq!((real.uid(), real.mode() & 0o7777), (0, 0o700));
    assert_eq!(
        xattr(&u.join("f"), CONTAINERS).as_deref(),
        Some(&b"42:43:600"[..])
    );
    drop(m);

    // xattr_permissions=1: the privileged name; no lower root has one, so the upper root
    // gets fuse-overlayfs's default record.
    let fx1 = Fixture::new(1);
    write(&fx1.layer(0).join("f"), b"x");
    let (u, w) = (fx1.path("u"), fx1.path("w"));
    let m = mount(&fx1, Some((&u, &w)), "xattr_permissions=1", &fx1.path("m"));
    let root = fs::metadata(&m.mnt).unwrap();
    assert_eq!((root.uid(), root.mode() & 0o7777), (0, 0o555));
    std::os::unix::fs::chown(m.mnt.join("f"), Some(42), Some(43)).unwrap();
    let st = fs::metadata(m.mnt.join("f")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o7777), (42, 43, 0o644));
    assert_eq!(fs::symlink_metadata(u.join("f")).unwrap().uid(), 0);
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(u.join("f"), PRIVILEGED, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"42:43:644");
    drop(m);

    // Without xattr_permissions, a record in a layer whose root has none is just an xattr.
    let fx2 = Fixture::new(1);
    write(&fx2.layer(0).join("f"), b"x");
    set_xattr(&fx2.layer(0).join("f"), CONTAINERS, b"9:9:0600");
    let m = mount(&fx2, None, "", &fx2.path("m"));
    assert_eq!(fs::metadata(m.mnt.join("f")).unwrap().uid(), 0);
}

#[test]
fn static_nlink_noacl_metacopy_userxattr() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    mkdir(&fx.layer(0).join("d/a"));
    mkdir(&fx.layer(0).join("d/b"));
    write(&fx.layer(0).join("f"), b"lower data");
    mkdir(&fx.layer(0).join("moved"));
    let nlink = |extra: &str| {
        let m = mount(&fx, None, extra, &fx.path("n"));
        fs::metadata(m.mnt.join("d")).unwrap().nlink()
    };
    // The layer's own count (4 on ext4; btrfs counts every directory as 1).
    let real = fs::metadata(fx.layer(0).join("d")).unwrap().nlink();
    assert_eq!(nlink(""), real);
    assert_eq!(nlink("static_nlink"), 1);

    // A minimal access ACL (user::rw-, group::r--, other::r--).
    let header = 2u32.to_le_bytes().to_vec();
    let acl = [header, acl_entry(1, 6), acl_entry(4, 4), acl_entry(0x20, 4)].concat();
    let set_acl = |extra: &str, dir: &str| {
        let (u, w) = (fx.path(&format!("{dir}u")), fx.path(&format!("{dir}w")));
        let m = mount(&fx, Some((&u, &w)), extra, &fx.path(dir));
        let r = rustix::fs::setxattr(
            m.mnt.join("f"),
            "system.posix_acl_access",
            &acl,
            rustix::fs::XattrFlags::empty(),
        );
        r.map_err(|e| e.raw_os_error())
    };
    assert_eq!(set_acl("", "acl"), Ok(()));
    assert_eq!(set_acl("noacl", "noacl"), Err(libc::EOPNOTSUPP));
    // noxattrs=1: none at all (fuse-overlayfs's option).
    let (u, w) = (fx.path("nxu"), fx.path("nxw"));
    let m = mount(&fx, Some((&u, &w)), "noxattrs=1", &fx.path("nx"));
    let f = m.mnt.join("f");
    let set = rustix::fs::setxattr(&f, "user.k", b"v", rustix::fs::XattrFlags::empty());
    assert_eq!(set.map_err(|e| e.raw_os_error()), Err(libc::EOPNOTSUPP));
    let list = rustix::fs::listxattr(&f, &mut [0u8; 64][..]).map_err(|e| e.raw_os_error());
    assert_eq!(list, Err(libc::EOPNOTSUPP));
    drop(m);

    // chmod of a lower file: a metacopy by default, the data copied with metacopy=off.
    let chmod_upper = |extra: &str, dir: &str| {
        let (u, w) = (fx.path(&format!("{dir}u")), fx.path(&format!("{dir}w")));
        let m = mount(&fx, Some((&u, &w)), extra, &fx.path(dir));
        fs::set_permissions(m.mnt.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(m.mnt.join("moved"), m.mnt.join("renamed")).unwrap();
        drop(m);
        u
    };
    let u = chmod_upper("", "meta");
    assert!(xattr(&u.join("f"), "trusted.overlay.metacopy").is_some());
    assert!(xattr(&u.join("renamed"), "trusted.overlay.redirect").is_some());
    let u = chmod_upper("metacopy=off,userxattr", "full");
    assert_eq!(xattr(&u.join("f"), "trusted.overlay.metacopy"), None);
    assert_eq!(xattr(&u.join("f"), "user.overlay.metacopy"), None);
    assert_eq!(fs::read(u.join("f")).unwrap(), b"lower data");
    // userxattr: the union's records in user.overlay.* although trusted.* works (root).
    assert_eq!(xattr(&u.join("renamed"), "trusted.overlay.redirect"), None);
    assert!(xattr(&u.join("renamed"), "user.overlay.redirect").is_some());
}

fn acl_entry(tag: u16, perm: u16) -> Vec<u8> {
    [
        &tag.to_le_bytes()[..],
        &perm.to_le_bytes(),
        &u32::MAX.to_le_bytes(),
    ]
    .concat()
}

/// `redirect_dir=off` (fuse-overlayfs's only value) and `follow`: no redirects are made, so
/// a directory with lower content cannot be renamed: EXDEV, as kernel overlayfs answers.
#[test]
fn redirect_dir_off_refuses_merged_dir_moves() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    write(&fx.layer(0).join("d/f"), b"x");
    write(&fx.layer(0).join("file"), b"y");
    let rename = |mnt: &Path| {
        let dir = fs::rename(mnt.join("d"), mnt.join("d2")).map_err(|e| e.raw_os_error());
        mkdir(&mnt.join("new"));
        fs::rename(mnt.join("new"), mnt.join("new2")).unwrap();
        fs::rename(mnt.join("file"), mnt.join("file2")).unwrap();
        dir
    };
    for value in ["off", "follow"] {
        let (u, w) = (fx.path(&format!("u{value}")), fx.path(&format!("w{value}")));
        let m = mount(
            &fx,
            Some((&u, &w)),
            &format!("redirect_dir={value}"),
            &fx.path(value),
        );
        assert_eq!(
            rename(&m.mnt),
            Err(Some(libc::EXDEV)),
            "redirect_dir={value}"
        );
    }
    let (u, w) = (fx.path("kernel_u"), fx.path("kernel_w"));
    let kernel = fx.path("kernel");
    let o = opts(&fx, Some((&u, &w)), "redirect_dir=off");
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(&o)
        .arg(&kernel)
        .status()
        .unwrap();
    assert!(st.success());
    let _k = MountGuard(kernel.clone());
    assert_eq!(rename(&kernel), Err(Some(libc::EXDEV)), "kernel overlayfs");
    // The default makes a redirect.
    let (u, w) = (fx.path("on_u"), fx.path("on_w"));
    let m = mount(&fx, Some((&u, &w)), "", &fx.path("on"));
    assert_eq!(rename(&m.mnt), Ok(()));
}

/// What containers-storage may add beyond the layers, all at once, with empty options;
/// SELinux labels are accepted where SELinux is off (nothing to label with).
#[test]
fn compatible_options_mount() {
    if !require_mount_env() {
        return;
    }
    let fx = Fixture::new(1);
    write(&fx.layer(0).join("f"), b"x");
    let (u, w) = (fx.path("u"), fx.path("w"));
    let mut extra = String::from(",,volatile,xino=auto,index=off,redirect_dir=on,metacopy=on,");
    extra.push_str("plugins=,nodev,threaded=1,fsync=0,fast_ino=1,writeback=1,");
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        extra.push_str("context=\"system_u:object_r:container_file_t:s0:c1,c2\",");
        extra.push_str("rootcontext=system_u:object_r:container_file_t:s0");
    }
    let m = mount(&fx, Some((&u, &w)), &extra, &fx.path("m"));
    assert_eq!(fs::read(m.mnt.join("f")).unwrap(), b"x");
}

#[test]
fn refused_by_name() {
    let fx = Fixture::new(1);
    let mnt: PathBuf = fx.path("m");
    for (extra, name) in [
        ("redirect_dir=nofollow", "redirect_dir"),
        ("xattr_permissions=3", "xattr_permissions"),
        ("plugins=/usr/lib/x.so", "plugins"),
        ("nfs_export=on", "nfs_export"),
        ("noxattrs=2", "noxattrs"),
        ("writeback=yes", "writeback"),
        ("fsync=2", "fsync"),
        ("metacopy", "metacopy"),
        ("volatile=1", "volatile"),
        ("context=", "context"),
    ] {
        let err = refused(&opts(&fx, None, extra), &mnt);
        assert!(err.contains(&format!("'{name}'")), "{extra}: {err}");
    }
}
