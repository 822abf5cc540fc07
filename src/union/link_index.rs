//! The hard-link index: one link per lower hard-link group that has an upper copy, so every
//! name of the group finds the same upper file, also after remount.
//!
//! strata's index is `workdir/strata-index` (entries named by the group's stable inode
//! number); the kernel's (`index=on`, entries named by the origin's file handle) is kept
//! beside it in `workdir/index` so kernel overlayfs mounted over this upper sees the groups
//! as one file too. An indexed file counts its lower names not yet in the upper
//! (`overlay.strata.nlink`) and how many of its links are index entries (`strata.links`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use super::dircache::Dir;
use crate::format::OverlayXattrs;
use crate::sys::{self, Stat};

pub struct LinkIndex {
    /// `workdir/strata-index` (None without an upper: nothing is ever indexed).
    dir: Option<Dir>,
    /// `workdir/index`, the kernel's.
    kernel: Option<Dir>,
    xattrs: OverlayXattrs,
}

impl LinkIndex {
    pub fn new(dir: Option<Dir>, kernel: Option<Dir>, xattrs: OverlayXattrs) -> Self {
        LinkIndex {
            dir,
            kernel,
            xattrs,
        }
    }

    /// The index directory, if this union keeps one.
    pub fn dir(&self) -> Option<&Dir> {
        self.dir.as_ref()
    }

    /// Name of a hard-link group's entry: its stable inode number.
    pub fn entry_name(ino: u64) -> OsString {
        OsString::from(format!("{ino:016x}"))
    }

    /// The group `ino`'s upper copy: (index directory, entry name, its stat); None if the
    /// group has none yet.
    pub fn find(&self, ino: u64) -> io::Result<Option<(Dir, OsString, Stat)>> {
        let Some(index) = &self.dir else {
            return Ok(None);
        };
        let name = Self::entry_name(ino);
        match sys::stat_at(index.fd()?.as_fd(), &name) {
            Ok(st) => Ok(Some((index.clone(), name, st))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lower names of an indexed file not yet in the upper layer (None: not indexed).
    pub fn lower_rest(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<u64>> {
        let v = sys::get_xattr_value(dir, name, &self.xattrs.lower_rest)?;
        Ok(v.and_then(|v| v.try_into().ok().map(u64::from_le_bytes)))
    }

    /// Records `n` lower names left, and the kernel's own record of the same: merged link
    /// count relative to the upper inode's ("U+n"), which counts the index links too.
    pub fn set_lower_rest(&self, dir: BorrowedFd<'_>, name: &OsStr, n: u64) -> io::Result<()> {
        sys::set_xattr(dir, name, &self.xattrs.lower_rest, &n.to_le_bytes(), 0)?;
        let kernel = format!("U{:+}", n as i64 - self.index_links(dir, name) as i64);
        sys::set_xattr(dir, name, &self.xattrs.nlink, kernel.as_bytes(), 0)
    }

    /// One lower name of the group went up (or away): one fewer left below.
    pub fn lower_name_gone(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        match self.lower_rest(dir, name)? {
            Some(rest) => self.set_lower_rest(dir, name, rest.saturating_sub(1)),
            None => Ok(()),
        }
    }

    /// How many of an indexed file's links are index entries (strata's, and the kernel's
    /// where it could be made), not names.
    pub fn index_links(&self, dir: BorrowedFd<'_>, name: &OsStr) -> u64 {
        match sys::get_xattr_value(dir, name, &self.xattrs.index_links) {
            Ok(Some(v)) => v.try_into().map_or(1, u64::from_le_bytes),
            _ => 1,
        }
    }

    /// The link count a user sees for indexed file `name` in `dir` with real count `nlink`:
    /// upper links other than the index entries, plus the lower names still standing. None
    /// for a file that is not indexed.
    pub fn merged_nlink(&self, dir: BorrowedFd<'_>, name: &OsStr, nlink: u64) -> Option<u64> {
        let rest = self.lower_rest(dir, name).ok()??;
        Some(nlink.saturating_sub(self.index_links(dir, name)) + rest)
    }

    /// Links staged copy `tmp` (with origin record `fb`) into the kernel's index, and records
    /// how many index links it has. Best effort: interop only.
    pub fn link_kernel(&self, work: BorrowedFd<'_>, tmp: &OsStr, fb: &[u8]) {
        let Some(kindex) = self.kernel.as_ref().and_then(|k| k.fd().ok()) else {
            return;
        };
        let hex: String = fb.iter().map(|b| format!("{b:02x}")).collect();
        let linked = sys::link_at(work, tmp, kindex.as_fd(), OsStr::new(&hex)).is_ok();
        let links: u64 = if linked { 2 } else { 1 };
        let _ = sys::set_xattr(work, tmp, &self.xattrs.index_links, &links.to_le_bytes(), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::dircache::DirCache;
    use super::*;

    fn index_in(t: &std::path::Path) -> LinkIndex {
        let cache = DirCache::new(16);
        for d in ["strata-index", "index"] {
            fs::create_dir(t.join(d)).unwrap();
        }
        let open = |d: &str| Some(cache.fixed(sys::open_root(&t.join(d)).unwrap()));
        LinkIndex::new(
            open("strata-index"),
            open("index"),
            OverlayXattrs::new(false),
        )
    }

    #[test]
    fn counts_lower_names_and_index_links() {
        let t = tempfile::tempdir().unwrap();
        let idx = index_in(t.path());
        let dir = sys::open_root(t.path()).unwrap();
        let (d, f) = (dir.as_fd(), OsStr::new("f"));
        fs::write(t.path().join("f"), "x").unwrap();
        assert_eq!(idx.lower_rest(d, f).unwrap(), None);
        assert_eq!(idx.merged_nlink(d, f, 2), None);
        // Three names below, one index link (no kernel index entry yet).
        idx.set_lower_rest(d, f, 3).unwrap();
        assert_eq!(idx.lower_rest(d, f).unwrap(), Some(3));
        assert_eq!(
            sys::get_xattr_value(d, f, b"user.overlay.nlink").unwrap(),
            Some(b"U+2".to_vec())
        );
        idx.lower_name_gone(d, f).unwrap();
        assert_eq!(idx.lower_rest(d, f).unwrap(), Some(2));
        // Linked into the kernel's index too: two index links.
        idx.link_kernel(d, f, &[0xfb, 1, 2]);
        assert!(t.path().join("index/fb0102").exists());
        assert_eq!(idx.index_links(d, f), 2);
        // Upper name + both index entries = 3 real links; 2 lower names left: 3 - 2 + 2.
        assert_eq!(idx.merged_nlink(d, f, 3), Some(3));
        idx.lower_name_gone(d, f).unwrap();
        idx.lower_name_gone(d, f).unwrap();
        idx.lower_name_gone(d, f).unwrap();
        assert_eq!(idx.lower_rest(d, f).unwrap(), Some(0), "never below zero");
    }

    #[test]
    fn finds_a_groups_entry_by_inode_number() {
        let t = tempfile::tempdir().unwrap();
        let idx = index_in(t.path());
        assert!(idx.find(42).unwrap().is_none());
        let name = LinkIndex::entry_name(42);
        assert_eq!(name, OsStr::new("000000000000002a"));
        fs::write(t.path().join("strata-index").join(&name), "data").unwrap();
        let (dir, found, st) = idx.find(42).unwrap().unwrap();
        assert!(Dir::ptr_eq(&dir, idx.dir().unwrap()));
        assert_eq!((found, st.st_size), (name, 4));
        let none = LinkIndex::new(None, None, OverlayXattrs::new(false));
        assert!(none.find(42).unwrap().is_none());
    }
}
