//! Copy-up: giving a lower entry (and its parents) a copy in the upper layer before it is
//! changed. Everything is built in the workdir and renamed into place, so a crash at any
//! moment leaves either no upper copy or a complete one.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::dircache::{Dir, DirFd};
use super::inode::{LowerData, Node, NodeState, Place};
use super::layer::DirCopy;
use super::link_index::LinkIndex;
use super::{Union, err};
use crate::format::{self, is_internal_xattr};
use crate::sys::{self, RenameMode, SetTime, Stat};

impl Union {
    /// The staging directory (`workdir/work`), or EROFS on a union without an upper.
    pub(super) fn work(&self) -> io::Result<&Dir> {
        self.work.as_ref().ok_or_else(|| err(libc::EROFS))
    }

    /// An open fd of the staging directory (a fixed one: never closed).
    pub(super) fn work_fd(&self) -> io::Result<DirFd> {
        self.work()?.fd()
    }

    /// A fresh name in the staging directory.
    pub(super) fn stage_name(&self) -> OsString {
        let n = self.stage_seq.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#strata.{}.{n}", std::process::id()))
    }

    pub(super) fn in_upper(place: &Place) -> bool {
        match place {
            Place::Dir(copies) => copies.first().is_some_and(|c| c.layer == 0 && c.upper()),
            Place::Leaf { layer, .. } => *layer == 0,
        }
    }

    /// Whether a node's content, data included, is in the upper layer (not a metacopy).
    pub(super) fn data_in_upper(s: &NodeState) -> bool {
        Self::in_upper(&s.place) && s.data.is_none()
    }

    /// The upper copy of directory `node`, copying it (and its parents) up first.
    pub(super) fn upper_dir(&self, node: &Arc<Node>) -> io::Result<Dir> {
        self.copy_up(node)?;
        match &node.state().place {
            Place::Dir(copies) => Ok(copies[0].dir.clone()),
            Place::Leaf { .. } => Err(err(libc::ENOTDIR)),
        }
    }

    /// Makes sure `node` has an upper copy. Parents go first, each under its own lock, so
    /// locks are only ever taken child-after-parent-released (no lock order to get wrong).
    pub(super) fn copy_up(&self, node: &Arc<Node>) -> io::Result<()> {
        self.copy_up_as(node, false)
    }

    /// Copy-up for a change of metadata only (chmod, chown, utimes): a regular file gets an
    /// upper copy without its data (a metacopy, in the kernel's format), so `chmod -R` over
    /// large files costs no data copy. The data follows when the file is opened for writing.
    pub(super) fn copy_up_meta(&self, node: &Arc<Node>) -> io::Result<()> {
        self.copy_up_as(node, !self.no_metacopy)
    }

    fn copy_up_as(&self, node: &Arc<Node>, meta_only: bool) -> io::Result<()> {
        self.work()?;
        {
            let s = node.state();
            if Self::data_in_upper(&s) || (meta_only && Self::in_upper(&s.place)) {
                return Ok(());
            }
        }
        if Self::in_upper(&node.state().place) {
            return self.complete_data(node);
        }
        let parent = node.state().parent.clone().ok_or_else(|| err(libc::EIO))?;
        let pdir = self.upper_dir(&parent)?;
        let mut s = node.state_mut();
        if Self::in_upper(&s.place) {
            return Ok(());
        }
        let name = s.name.clone();
        let pfd = pdir.fd()?;
        let pstat = sys::stat_fd(pfd.as_fd())?;
        let work = self.work_fd()?;
        let work = work.as_fd();
        match &mut s.place {
            Place::Dir(copies) => {
                let src = copies[0].dir.fd()?;
                let st = sys::stat_fd(src.as_fd())?;
                let tmp = self.stage_name();
                sys::mkdir_at(work, &tmp, 0o700)?;
                let staged = self
                    .finish_copy(src.as_fd(), OsStr::new(""), &st, work, &tmp)
                    .and_then(|()| self.record_ino(work, &tmp, node.ino));
                self.place_staged(staged, work, &tmp, pfd.as_fd(), &name, true)?;
                let ust = sys::stat_at(pfd.as_fd(), &name)?;
                let (dir, _) = pdir.child(&pfd, &name, &ust)?;
                copies.insert(0, DirCopy::new(0, dir, &ust, true));
            }
            Place::Leaf {
                dir,
                name: real,
                layer,
            } => {
                let (dir, real, layer) = (dir.clone(), real.clone(), *layer);
                let dfd = dir.fd()?;
                let tmp = self.stage_name();
                let st = sys::stat_at(dfd.as_fd(), &real)?;
                // Hard-link groups go through the index with their data (one upper inode
                // for all names); empty files have no data to defer.
                let meta = meta_only
                    && st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && st.st_nlink == 1
                    && st.st_size > 0;
                let staged = if meta {
                    self.stage_meta(node, layer, dfd.as_fd(), &real, &st, work, &tmp)
                } else {
                    self.stage_leaf(node, layer, dfd.as_fd(), &real, work, &tmp)
                };
                self.place_staged(staged, work, &tmp, pfd.as_fd(), &name, false)?;
                if meta {
                    s.data = Some(LowerData {
                        layer,
                        dir: dir.clone(),
                        name: real.clone(),
                    });
                }
                s.place = Place::Leaf {
                    layer: 0,
                    dir: pdir.clone(),
                    name: name.clone(),
                };
            }
        }
        self.mark_impure(pfd.as_fd());
        // Linking into the parent changed its times; the copy must keep the original ones.
        restore_times(pfd.as_fd(), OsStr::new("."), &pstat);
        Ok(())
    }

    /// Stages a metacopy of regular file `real`: full size but no data blocks, all metadata,
    /// and the kernel's `metacopy` and `origin` records.
    #[allow(clippy::too_many_arguments)]
    fn stage_meta(
        &self,
        node: &Node,
        layer: usize,
        dir: BorrowedFd<'_>,
        real: &OsStr,
        st: &Stat,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
    ) -> io::Result<()> {
        let origin = self.origin_of(layer, dir, real);
        sys::create_file_at(work, tmp, 0o600, libc::O_WRONLY)?.set_len(st.st_size as u64)?;
        self.finish_copy(dir, real, st, work, tmp)?;
        self.record_origin(origin.as_deref(), work, tmp, false);
        self.record_ino(work, tmp, node.ino)?;
        sys::set_xattr(work, tmp, &self.xattrs.metacopy, b"", 0)
    }

    /// Fills a metacopy's upper file with its data, in place: until the marker is removed
    /// (after the data is on disk) a crash leaves a metacopy that still reads the lower data.
    fn complete_data(&self, node: &Arc<Node>) -> io::Result<()> {
        let mut s = node.state_mut();
        let (Some(data), Place::Leaf { dir, name, .. }) = (s.data.clone(), &s.place) else {
            return Ok(());
        };
        let from = sys::open_for_copy(data.dir.fd()?.as_fd(), &data.name)?;
        let dfd = dir.fd()?;
        let to = sys::open_file_at(dfd.as_fd(), name, libc::O_RDWR)?;
        let st = sys::stat_fd(to.as_fd())?;
        sys::copy_data(&from, &to, st.st_size as u64)?;
        sys::fsync(&to, true)?;
        // Filling in the data is not a change the user made: the times stay.
        restore_times(dfd.as_fd(), name, &st);
        sys::remove_xattr(dfd.as_fd(), name, &self.xattrs.metacopy)?;
        s.data = None;
        Ok(())
    }

    /// Stages the upper copy of a non-directory at `work/tmp`. A member of a lower hard-link
    /// group goes through the index: the first copy is linked there too (with the count of
    /// lower names left), later members just link the indexed copy.
    fn stage_leaf(
        &self,
        node: &Node,
        layer: usize,
        dir: BorrowedFd<'_>,
        real: &OsStr,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
    ) -> io::Result<()> {
        let st = &sys::stat_at(dir, real)?;
        let origin = self.origin_of(layer, dir, real);
        let index = self.index.dir().filter(|_| st.st_nlink > 1);
        let Some(index) = index else {
            stage_object(dir, real, st, work, tmp)?;
            self.finish_copy(dir, real, st, work, tmp)?;
            self.record_origin(origin.as_deref(), work, tmp, false);
            return self.record_ino(work, tmp, node.ino);
        };
        let entry = LinkIndex::entry_name(node.ino);
        let index = index.fd()?;
        if sys::exists_at(index.as_fd(), &entry)? {
            sys::link_at(index.as_fd(), &entry, work, tmp)?;
            let rest = self.index.lower_rest(work, tmp)?.unwrap_or(1);
            return self.index.set_lower_rest(work, tmp, rest.saturating_sub(1));
        }
        stage_object(dir, real, st, work, tmp)?;
        self.finish_copy(dir, real, st, work, tmp)?;
        self.record_ino(work, tmp, node.ino)?;
        self.record_origin(origin.as_deref(), work, tmp, true);
        self.index.set_lower_rest(work, tmp, st.st_nlink - 1)?;
        sys::link_at(work, tmp, index.as_fd(), &entry)
    }

    /// A lower name of a hard-link group is going away: the group's count of lower names
    /// drops. A group without an upper copy gets one, in the index only, so the other names
    /// report the right link count (as the kernel's index does).
    pub(super) fn forget_lower_name(&self, node: &Node) -> io::Result<()> {
        let Some(index) = self.index.dir().cloned() else {
            return Ok(());
        };
        let mut s = node.state_mut();
        match &s.place {
            Place::Leaf {
                layer: 0,
                dir,
                name,
            } => self.index.lower_name_gone(dir.fd()?.as_fd(), name),
            Place::Leaf { dir, name, layer } => {
                let dir = dir.fd()?;
                let st = sys::stat_at(dir.as_fd(), name)?;
                if st.st_nlink <= 1 {
                    return Ok(());
                }
                let origin = self.origin_of(*layer, dir.as_fd(), name);
                let work = self.work_fd()?;
                let work = work.as_fd();
                let tmp = self.stage_name();
                let entry = LinkIndex::entry_name(node.ino);
                let staged = stage_object(dir.as_fd(), name, &st, work, &tmp)
                    .and_then(|()| self.finish_copy(dir.as_fd(), name, &st, work, &tmp))
                    .and_then(|()| self.record_ino(work, &tmp, node.ino))
                    .map(|()| self.record_origin(origin.as_deref(), work, &tmp, true))
                    .and_then(|()| self.index.set_lower_rest(work, &tmp, st.st_nlink - 1));
                self.place_staged(staged, work, &tmp, index.fd()?.as_fd(), &entry, false)?;
                s.place = Place::Leaf {
                    layer: 0,
                    dir: index,
                    name: entry,
                };
                Ok(())
            }
            Place::Dir(_) => Ok(()),
        }
    }

    /// Whether `name` in the upper directory `pdir` is a real entry (not absent, not a
    /// whiteout).
    pub(super) fn name_in_upper(&self, pdir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
        match sys::stat_at(pdir, name) {
            Ok(st) => Ok(!format::is_chardev_whiteout(&st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives a file whose inode is already in the upper layer (through the index or a hidden
    /// link) the upper name `name` in `pdir`, where it so far exists only in a lower layer.
    pub(super) fn link_name_up(
        &self,
        node: &Node,
        pdir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<()> {
        let (dir, real) = match &node.state().place {
            Place::Leaf {
                layer: 0,
                dir,
                name,
            } => (dir.clone(), name.clone()),
            _ => return Err(err(libc::EIO)),
        };
        let work = self.work_fd()?;
        let work = work.as_fd();
        let tmp = self.stage_name();
        sys::link_at(dir.fd()?.as_fd(), &real, work, &tmp)?;
        let r = self
            .index
            .lower_name_gone(work, &tmp)
            .and_then(|()| sys::rename_at(work, &tmp, pdir, name, RenameMode::NoReplace));
        if r.is_err() {
            let _ = sys::unlink_at(work, &tmp, false);
        }
        r
    }

    /// Records the stable inode number on a staged copy, so the file keeps its `st_ino`
    /// after copy-up and remount (the kernel records its origin for the same reason).
    fn record_ino(&self, work: BorrowedFd<'_>, tmp: &OsStr, ino: u64) -> io::Result<()> {
        match sys::set_xattr(work, tmp, &self.xattrs.ino, &ino.to_le_bytes(), 0) {
            // user.* xattrs are refused on symlinks (rootless): such a link gets a new number.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            r => r,
        }
    }

    /// Marks an upper directory as holding entries with recorded inode numbers.
    pub(super) fn mark_impure(&self, dir: BorrowedFd<'_>) {
        if matches!(
            sys::get_xattr_value(dir, OsStr::new(""), &self.xattrs.impure),
            Ok(None)
        ) {
            let _ = sys::set_xattr(dir, OsStr::new(""), &self.xattrs.impure, b"y", 0);
        }
    }

    /// Owner, mode, xattrs and times of `name` in `src` onto the staged `tmp`.
    fn finish_copy(
        &self,
        src: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
    ) -> io::Result<()> {
        // chown first: it clears set-id bits, which chmod then restores.
        match sys::chown_at(work, tmp, Some(st.st_uid), Some(st.st_gid)) {
            // In a user namespace with one id mapped (rootless `strata run`), an owner from
            // outside it cannot be given: the copy is ours, as with fuse-overlayfs.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            r => r?,
        }
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if !is_link {
            sys::chmod_at(work, tmp, st.st_mode & 0o7777)?;
        }
        let names = sys::list_xattr_all(src, name)?;
        for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
            if is_internal_xattr(key) {
                continue;
            }
            if let Some(v) = sys::get_xattr_value(src, name, key)? {
                match sys::set_xattr(work, tmp, key, &v, 0) {
                    // Xattrs the upper cannot hold (e.g. security.* without privilege) are
                    // dropped, as the kernel does.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {}
                    r => r?,
                }
            }
        }
        sys::utimens_at(
            work,
            tmp,
            SetTime::At(st.st_atime, st.st_atime_nsec as i64),
            SetTime::At(st.st_mtime, st.st_mtime_nsec as i64),
        )
    }

    /// Renames a staged object into place, or removes it if staging failed.
    pub(super) fn place_staged(
        &self,
        staged: io::Result<()>,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
    ) -> io::Result<()> {
        let r = staged.and_then(|()| sys::rename_at(work, tmp, dir, name, RenameMode::NoReplace));
        if r.is_err() {
            let _ = sys::unlink_at(work, tmp, is_dir);
        }
        r
    }
}

/// Creates the staged copy of a non-directory: data for regular files, target for symlinks,
/// the node itself for devices, fifos and sockets.
fn stage_object(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    work: BorrowedFd<'_>,
    tmp: &OsStr,
) -> io::Result<()> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            let from = sys::open_for_copy(dir, name)?;
            let to = sys::create_file_at(work, tmp, 0o600, libc::O_RDWR)?;
            sys::copy_data(&from, &to, st.st_size as u64)
        }
        libc::S_IFLNK => {
            let target = sys::readlink_at(dir, name)?;
            sys::symlink_at(std::os::unix::ffi::OsStrExt::from_bytes(&target), work, tmp)
        }
        _ => sys::mknod_at(work, tmp, st.st_mode, st.st_rdev),
    }
}

/// Puts times back after we changed something the user did not (`name` "." for `dir` itself).
pub(super) fn restore_times(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) {
    let _ = sys::utimens_at(
        dir,
        name,
        SetTime::At(st.st_atime, st.st_atime_nsec as i64),
        SetTime::At(st.st_mtime, st.st_mtime_nsec as i64),
    );
}
