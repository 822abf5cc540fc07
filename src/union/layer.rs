//! Layers, and the copy of a merged directory that one layer holds, with the markers that
//! shape the union there: whiteouts (three formats) and opacity (four forms).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use super::dircache::Dir;

use crate::sys::{self, Stat};

/// Prefix of OCI whiteout files; `.wh.<name>` hides `<name>` in lower layers.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker: a directory containing it hides everything below it.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

const OPAQUE_XATTRS: [&[u8]; 3] = [
    b"trusted.overlay.opaque",
    b"user.overlay.opaque",
    b"user.fuseoverlayfs.opaque",
];
const WHITEOUT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.whiteout", b"user.overlay.whiteout"];

const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Xattrs that carry the union's own bookkeeping: never listed or returned to users. An
/// escaped one (`trusted.overlay.overlay.X`, the kernel's way of nesting overlays) is a user's.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    match OVERLAY_PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => !name[p.len()..].starts_with(b"overlay."),
        None => name.starts_with(b"user.fuseoverlayfs."),
    }
}

/// The name a user's xattr is stored under: an overlay name (`trusted.overlay.X`) is escaped
/// to `trusted.overlay.overlay.X`, as the kernel does, so it never acts as the union's own.
pub fn stored_xattr_name(name: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match OVERLAY_PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => [&name[..p.len()], b"overlay.", &name[p.len()..]]
            .concat()
            .into(),
        None => name.into(),
    }
}

/// The name a stored xattr is shown under (escaped overlay names lose one `overlay.`); None
/// for the union's own.
pub fn shown_xattr_name(name: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if is_internal_xattr(name) {
        return None;
    }
    match OVERLAY_PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => Some(
            [&name[..p.len()], &name[p.len() + b"overlay.".len()..]]
                .concat()
                .into(),
        ),
        None => Some(name.into()),
    }
}

/// One layer of the stack.
pub struct Layer {
    /// The layer's root (a fixed `O_PATH` fd); every path in the layer is resolved below it.
    pub root: Dir,
    /// The writable layer (there is at most one, and it is the topmost).
    pub upper: bool,
    /// Uuid of the layer's filesystem, part of the kernel's origin records.
    pub uuid: [u8; 16],
}

/// What a directory copy says about the names below it.
#[derive(Default)]
struct Markers {
    /// Hides every lower copy (xattr "y" or `.wh..wh..opq`).
    opaque: bool,
    /// Xattr "x": zero-size files carrying an overlay whiteout xattr are whiteouts here.
    xwhiteouts: bool,
    /// Names hidden by `.wh.<name>` files in this copy (lower layers only: cached, as lower
    /// layers do not change while mounted).
    oci: HashSet<Box<[u8]>>,
}

/// The copy of a merged directory held by one layer.
pub struct DirCopy {
    pub layer: usize,
    /// The directory in that layer (its fd may be closed and reopened: see `dircache`).
    pub dir: Dir,
    pub dev: u64,
    /// Lower copies cache their markers on first use; upper copies read them every time.
    markers: OnceLock<Markers>,
    upper: bool,
}

impl DirCopy {
    pub fn new(layer: usize, dir: Dir, st: &Stat, upper: bool) -> Self {
        DirCopy {
            layer,
            dir,
            dev: st.st_dev,
            markers: OnceLock::new(),
            upper,
        }
    }

    fn with_markers<R>(&self, f: impl FnOnce(&Markers) -> R) -> io::Result<R> {
        if self.upper {
            return Ok(f(&self.read_markers(false)?));
        }
        if let Some(m) = self.markers.get() {
            return Ok(f(m));
        }
        let m = self.read_markers(true)?;
        Ok(f(self.markers.get_or_init(|| m)))
    }

    fn read_markers(&self, scan: bool) -> io::Result<Markers> {
        let mut m = Markers::default();
        let fd = self.dir.fd()?;
        let fd = fd.as_fd();
        let names = sys::list_xattr_all(fd, OsStr::new(""))?;
        for key in names
            .split(|&b| b == 0)
            .filter(|k| OPAQUE_XATTRS.contains(k))
        {
            match sys::get_xattr_value(fd, OsStr::new(""), key)?.as_deref() {
                Some(b"y") => m.opaque = true,
                Some(b"x") => m.xwhiteouts = true,
                _ => {}
            }
        }
        if scan {
            self.dir.read_dir(|e| {
                if e.name == OPAQUE_MARKER {
                    m.opaque = true;
                } else if let Some(hidden) = e.name.strip_prefix(WH_PREFIX) {
                    m.oci.insert(hidden.into());
                }
                Ok(())
            })?;
        } else if sys::exists_at(fd, OsStr::from_bytes(OPAQUE_MARKER))? {
            m.opaque = true;
        }
        Ok(m)
    }

    /// Whether this copy is in the writable layer.
    pub fn upper(&self) -> bool {
        self.upper
    }

    /// Whether this copy hides all lower copies of the directory.
    pub fn is_opaque(&self) -> io::Result<bool> {
        self.with_markers(|m| m.opaque)
    }

    /// Whether a `.wh.<name>` file in this copy hides `name` in lower layers.
    pub fn oci_whiteout(&self, name: &OsStr) -> io::Result<bool> {
        if self.upper {
            let mut wh = WH_PREFIX.to_vec();
            wh.extend_from_slice(name.as_bytes());
            return sys::exists_at(self.dir.fd()?.as_fd(), OsStr::from_bytes(&wh));
        }
        self.with_markers(|m| m.oci.contains(name.as_bytes()))
    }

    /// Whether the entry `name` (with stat `st`) in this copy is a whiteout: a char device
    /// 0/0, or (in an "x" directory) a zero-size file with an overlay whiteout xattr.
    pub fn is_whiteout(&self, name: &OsStr, st: &Stat) -> io::Result<bool> {
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFCHR {
            return Ok(sys::dev_is_zero(st.st_rdev));
        }
        if fmt != libc::S_IFREG || st.st_size != 0 || !self.with_markers(|m| m.xwhiteouts)? {
            return Ok(false);
        }
        let fd = self.dir.fd()?;
        for key in WHITEOUT_XATTRS {
            if sys::get_xattr_value(fd.as_fd(), name, key)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Like `is_whiteout`, for a directory entry whose type is already known from getdents
    /// (saves a stat for every entry that cannot be a whiteout).
    pub fn entry_is_whiteout(&self, name: &OsStr, kind: rustix::fs::FileType) -> io::Result<bool> {
        use rustix::fs::FileType as T;
        let may_be = match kind {
            T::CharacterDevice | T::Unknown => true,
            T::RegularFile => self.with_markers(|m| m.xwhiteouts)?,
            _ => false,
        };
        if !may_be {
            return Ok(false);
        }
        match sys::stat_at(self.dir.fd()?.as_fd(), name) {
            Ok(st) => self.is_whiteout(name, &st),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(true),
            Err(e) => Err(e),
        }
    }
}
