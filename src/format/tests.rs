//! The layer format's rules on a temp dir: each form of each marker, classified.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};

use super::*;

fn setx(dir: &OwnedFd, name: &str, key: &[u8], value: &[u8]) {
    sys::set_xattr(dir.as_fd(), OsStr::new(name), key, value, 0).unwrap();
}

fn class(dir: &OwnedFd, name: &str, parent: &Known) -> Class {
    let st = sys::stat_at(dir.as_fd(), OsStr::new(name)).unwrap();
    classify(dir.as_fd(), OsStr::new(name), &st, parent).unwrap()
}

const UPPER: Known = Known {
    xwhiteouts: false,
    upper: true,
};

#[test]
fn names() {
    assert_eq!(whiteout_name(OsStr::new("a b")), OsStr::new(".wh.a b"));
    assert_eq!(whiteout_target(b".wh.x"), Some(&b"x"[..]));
    assert_eq!(whiteout_target(OPAQUE_MARKER), None);
    assert_eq!(whiteout_target(b"x"), None);
    assert!(is_format_name(b".wh..wh..opq") && !is_format_name(b"wh.x"));
    assert_eq!(
        OverlayXattrs::new(true).name(b"opaque"),
        b"trusted.overlay.opaque"
    );
    assert_eq!(OverlayXattrs::new(false).impure, b"user.overlay.impure");
    assert_eq!(OverlayXattrs::new(true).ino, b"trusted.overlay.strata.ino");
    // What the classifier reads includes what the union writes, in either namespace.
    for trusted in [true, false] {
        let x = OverlayXattrs::new(trusted);
        assert!(OPAQUE_XATTRS.contains(&x.opaque.as_slice()));
        assert!(REDIRECT_XATTRS.contains(&x.redirect.as_slice()));
        assert!(METACOPY_XATTRS.contains(&x.metacopy.as_slice()));
        assert!(is_internal_xattr(&x.ino) && is_internal_xattr(&x.lower_rest));
    }
    assert_eq!(REDIRECT_XATTRS[1], b"user.overlay.redirect");
}

#[test]
fn xattr_names_escape_and_hide() {
    assert!(is_internal_xattr(b"trusted.overlay.opaque"));
    assert!(is_internal_xattr(b"user.fuseoverlayfs.opaque"));
    assert!(!is_internal_xattr(b"trusted.overlay.overlay.opaque"));
    assert!(!is_internal_xattr(b"user.mime"));
    let stored = stored_xattr_name(b"user.overlay.x");
    assert_eq!(&*stored, b"user.overlay.overlay.x");
    assert_eq!(
        shown_xattr_name(&stored).as_deref(),
        Some(&b"user.overlay.x"[..])
    );
    assert_eq!(shown_xattr_name(b"user.overlay.x"), None);
    assert_eq!(shown_xattr_name(b"user.a").as_deref(), Some(&b"user.a"[..]));
}

#[test]
fn whiteouts_in_each_form() {
    let t = tempfile::tempdir().unwrap();
    let dir = sys::open_root(t.path()).unwrap();
    fs::write(t.path().join(".wh.gone"), "").unwrap();
    fs::write(t.path().join(".wh..wh..opq"), "").unwrap();
    fs::write(t.path().join("xwh"), "").unwrap();
    setx(&dir, "xwh", WHITEOUT_XATTRS[1], b"");
    fs::write(t.path().join("empty"), "").unwrap();
    assert_eq!(
        class(&dir, ".wh.gone", &UPPER),
        Class::Whiteout(Whiteout::Oci)
    );
    assert_eq!(class(&dir, ".wh..wh..opq", &UPPER), Class::OpaqueMarker);
    // An xattr whiteout counts only in an "x" directory.
    assert_eq!(class(&dir, "xwh", &UPPER), Class::Plain);
    let x = Known {
        xwhiteouts: true,
        upper: false,
    };
    assert_eq!(class(&dir, "xwh", &x), Class::Whiteout(Whiteout::Xattr));
    assert_eq!(class(&dir, "empty", &x), Class::Plain);
    if sys::can_mknod_whiteout(dir.as_fd()) {
        sys::mknod_at(dir.as_fd(), OsStr::new("dev0"), libc::S_IFCHR | 0o600, 0).unwrap();
        assert_eq!(
            class(&dir, "dev0", &UPPER),
            Class::Whiteout(Whiteout::CharDev)
        );
        let st = sys::stat_at(dir.as_fd(), OsStr::new("dev0")).unwrap();
        assert!(is_chardev_whiteout(&st));
    } else {
        println!("SKIP char 0/0 whiteout: mknod not permitted here");
    }
}

#[test]
fn directories_opaque_and_redirected() {
    let t = tempfile::tempdir().unwrap();
    let dir = sys::open_root(t.path()).unwrap();
    for d in ["plain", "opq", "fopq", "xonly", "beside", "moved"] {
        fs::create_dir(t.path().join(d)).unwrap();
    }
    setx(&dir, "opq", OPAQUE_XATTRS[1], b"y");
    setx(&dir, "fopq", b"user.fuseoverlayfs.opaque", b"y");
    setx(&dir, "xonly", OPAQUE_XATTRS[1], b"x");
    fs::write(t.path().join(".wh.beside"), "").unwrap();
    setx(&dir, "moved", REDIRECT_XATTRS[1], b"/old/place");
    assert_eq!(class(&dir, "plain", &UPPER), Class::Plain);
    assert_eq!(class(&dir, "opq", &UPPER), Class::Opaque(Opaque::Xattr));
    assert_eq!(class(&dir, "fopq", &UPPER), Class::Opaque(Opaque::Xattr));
    assert_eq!(class(&dir, "xonly", &UPPER), Class::Plain);
    assert_eq!(class(&dir, "beside", &UPPER), Class::Opaque(Opaque::Beside));
    assert_eq!(
        class(&dir, "moved", &UPPER),
        Class::Redirect(b"/old/place".to_vec())
    );
    let xonly = sys::open_root(&t.path().join("xonly")).unwrap();
    let marks = dir_marks(xonly.as_fd(), true).unwrap();
    assert_eq!(
        marks,
        DirMarks {
            opaque: false,
            xwhiteouts: true
        }
    );
    // The marker inside a directory is its own form of opacity.
    fs::write(t.path().join("plain/.wh..wh..opq"), "").unwrap();
    let plain = sys::open_root(&t.path().join("plain")).unwrap();
    assert!(dir_marks(plain.as_fd(), true).unwrap().opaque);
    assert!(!dir_marks(plain.as_fd(), false).unwrap().opaque);
}

#[test]
fn metacopy_only_in_the_upper() {
    let t = tempfile::tempdir().unwrap();
    let dir = sys::open_root(t.path()).unwrap();
    // Full size, no data blocks: what a metacopy copy-up makes.
    fs::File::create(t.path().join("meta"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    setx(&dir, "meta", METACOPY_XATTRS[1], b"");
    fs::File::create(t.path().join("sparse"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    assert_eq!(class(&dir, "meta", &UPPER), Class::Metacopy);
    assert_eq!(class(&dir, "sparse", &UPPER), Class::Plain);
    let lower = Known {
        xwhiteouts: false,
        upper: false,
    };
    assert_eq!(class(&dir, "meta", &lower), Class::Plain);
}
