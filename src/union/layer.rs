//! Layers, and the copy of a merged directory that one layer holds, with the markers that
//! shape the union there (read by the rules of `crate::format`, cached for lower copies).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use super::dircache::Dir;

use crate::format::{self, Class, DirMarks};
use crate::sys::{self, Stat};

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
    marks: DirMarks,
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
        let fd = self.dir.fd()?;
        // A lower copy is listed once anyway (for its `.wh.` names): the marker is found there.
        let mut m = Markers {
            marks: format::dir_marks(fd.as_fd(), !scan)?,
            oci: HashSet::new(),
        };
        if scan {
            self.dir.read_dir(|e| {
                if e.name == format::OPAQUE_MARKER {
                    m.marks.opaque = true;
                } else if let Some(hidden) = format::whiteout_target(e.name) {
                    m.oci.insert(hidden.into());
                }
                Ok(())
            })?;
        }
        Ok(m)
    }

    /// Whether this copy is in the writable layer.
    pub fn upper(&self) -> bool {
        self.upper
    }

    /// Whether this copy hides all lower copies of the directory.
    pub fn is_opaque(&self) -> io::Result<bool> {
        self.with_markers(|m| m.marks.opaque)
    }

    /// Whether a `.wh.<name>` file in this copy hides `name` in lower layers.
    pub fn oci_whiteout(&self, name: &OsStr) -> io::Result<bool> {
        if self.upper {
            return sys::exists_at(self.dir.fd()?.as_fd(), &format::whiteout_name(name));
        }
        self.with_markers(|m| m.oci.contains(name.as_bytes()))
    }

    /// Whether the entry `name` (with stat `st`) in this copy is a whiteout: a char device
    /// 0/0, or (in an "x" directory) a zero-size file with an overlay whiteout xattr. (`.wh.`
    /// names never reach here: they are not entries of the merged view.)
    pub fn is_whiteout(&self, name: &OsStr, st: &Stat) -> io::Result<bool> {
        if !format::may_be_whiteout(st) {
            return Ok(false);
        }
        let class = format::classify(self.dir.fd()?.as_fd(), name, st, self)?;
        Ok(matches!(class, Class::Whiteout(_)))
    }

    /// Like `is_whiteout`, for a directory entry whose type is already known from getdents
    /// (saves a stat for every entry that cannot be a whiteout).
    pub fn entry_is_whiteout(&self, name: &OsStr, kind: rustix::fs::FileType) -> io::Result<bool> {
        use rustix::fs::FileType as T;
        let may_be = match kind {
            T::CharacterDevice | T::Unknown => true,
            T::RegularFile => self.with_markers(|m| m.marks.xwhiteouts)?,
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

impl format::Parent for DirCopy {
    fn xattr_whiteouts(&self) -> io::Result<bool> {
        self.with_markers(|m| m.marks.xwhiteouts)
    }

    fn holds_metacopies(&self) -> bool {
        self.upper
    }
}
