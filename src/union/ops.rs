//! Operations that change the union, in union terms: every change lands in the upper layer,
//! staged in the workdir where a half-done state could otherwise become visible.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::dircache::Dir;
use super::inode::{Node, Place};
use super::{Union, err, lookup};
use crate::format::{self, stored_xattr_name};
use crate::sys::{self, RenameMode, SetTime, Stat};

/// Who is asking: new entries belong to the caller.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes of one setattr request.
#[derive(Default, Debug)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub fh: Option<u64>,
}

/// What the upper layer holds at a name that is absent from the merged view.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub(super) enum Hole {
    Empty,
    /// A char 0/0 (or xattr) whiteout: replaced atomically by renaming over it.
    Whiteout,
    /// A `.wh.<name>` file beside it, removed once the new entry is in place.
    OciWhiteout,
}

impl Union {
    pub(super) fn check_name(name: &OsStr) -> io::Result<()> {
        // `.wh.` names are whiteouts in the layer format: a user file by that name would
        // silently hide another.
        if format::is_format_name(name.as_bytes()) {
            return Err(err(libc::EINVAL));
        }
        Ok(())
    }

    pub(super) fn hole_at(&self, pdir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Hole> {
        match sys::stat_at(pdir, name) {
            Ok(st) if format::is_chardev_whiteout(&st) => Ok(Hole::Whiteout),
            Ok(_) => Err(err(libc::EEXIST)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if sys::exists_at(pdir, &format::whiteout_name(name))? {
                    Ok(Hole::OciWhiteout)
                } else {
                    Ok(Hole::Empty)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `name` is visible in the lower copies of directory `parent` (so removing or
    /// renaming its upper copy needs a whiteout).
    pub(super) fn lower_has(&self, parent: &Node, name: &OsStr) -> io::Result<bool> {
        let s = parent.state();
        let Place::Dir(copies) = &s.place else {
            return Err(err(libc::ENOTDIR));
        };
        // The upper copy, when there is one, is always the first.
        let lowers = match copies.first() {
            Some(c) if c.upper() => &copies[1..],
            _ => &copies[..],
        };
        if lowers.is_empty() {
            return Ok(false);
        }
        match lookup::resolve(&self.layers, lowers, name) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a new entry through the workdir: `make` builds it at the staged name, we give
    /// it owner and mode, then rename it into place (over a whiteout if there is one).
    fn new_entry(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        mode: u32,
        who: Caller,
        make: impl FnOnce(BorrowedFd<'_>, &OsStr) -> io::Result<()>,
    ) -> io::Result<(Arc<Node>, Stat)> {
        Self::check_name(name)?;
        let pdir = self.upper_dir(parent)?.fd()?;
        let pdir = pdir.as_fd();
        let hole = self.hole_at(pdir, name)?;
        if mode & libc::S_IFMT == libc::S_IFREG && hole == Hole::Empty {
            match self.new_file_in_place(pdir, name, mode, who) {
                Ok(()) => return self.lookup(parent.id, name),
                // No O_TMPFILE on the upper's filesystem: stage through the workdir.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {}
                Err(e) => return Err(e),
            }
        }
        let work = self.work_fd()?;
        let work = work.as_fd();
        let tmp = self.stage_name();
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        let staged = (|| {
            make(work, &tmp)?;
            let pst = sys::stat_fd(pdir)?;
            // A set-group-id directory hands its group (and, to directories, the bit) down.
            let sgid = pst.st_mode & libc::S_ISGID != 0;
            let gid = if sgid { pst.st_gid } else { who.gid };
            sys::chown_at(work, &tmp, Some(who.uid), Some(gid))?;
            if mode & libc::S_IFMT != libc::S_IFLNK {
                let extra = if sgid && is_dir { libc::S_ISGID } else { 0 };
                sys::chmod_at(work, &tmp, (mode & 0o7777) | extra)?;
            }
            // A directory that replaces a deleted one must not show what the old one held.
            if is_dir && hole != Hole::Empty {
                sys::set_xattr(work, &tmp, &self.xattrs.opaque, b"y", 0)?;
            }
            self.avoid_reused_ino(work, &tmp)
        })();
        let r = staged.and_then(|renumbered| {
            if renumbered {
                self.mark_impure(pdir);
            }
            match hole {
                // A directory cannot be renamed over a device: swap, then drop the whiteout.
                Hole::Whiteout if is_dir => {
                    sys::rename_at(work, &tmp, pdir, name, RenameMode::Exchange)?;
                    let _ = sys::unlink_at(work, &tmp, false);
                    Ok(())
                }
                Hole::Whiteout => sys::rename_at(work, &tmp, pdir, name, RenameMode::Replace),
                _ => sys::rename_at(work, &tmp, pdir, name, RenameMode::NoReplace),
            }
        });
        if let Err(e) = r {
            let _ = sys::unlink_at(work, &tmp, is_dir);
            return Err(e);
        }
        if hole == Hole::OciWhiteout {
            sys::unlink_at(pdir, &format::whiteout_name(name), false)?;
        }
        self.lookup(parent.id, name)
    }

    /// A new regular file where nothing (not even a whiteout) stands: made unnamed in the
    /// parent itself (`O_TMPFILE`), given owner and mode, then linked in, so it appears
    /// complete as a staged one would. Unlike staging in the workdir, the filesystem allocates
    /// its inode near the parent: ext4 slows down badly when every new inode comes from the
    /// workdir's block group (untar of 20k files: 3.8x the kernel's time with staging).
    fn new_file_in_place(
        &self,
        pdir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
        who: Caller,
    ) -> io::Result<()> {
        let fd = sys::open_tmpfile(pdir)?;
        let pst = sys::stat_fd(pdir)?;
        // A set-group-id directory hands its group down.
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            who.gid
        };
        sys::chown_fd(fd.as_fd(), Some(who.uid), Some(gid))?;
        sys::chmod_fd(fd.as_fd(), mode & 0o7777)?;
        if let Some(fresh) = self.fresh_ino(&sys::stat_fd(fd.as_fd())?) {
            sys::set_xattr_fd(fd.as_fd(), &self.xattrs.ino, &fresh.to_le_bytes())?;
            self.mark_impure(pdir);
        }
        sys::link_tmpfile(fd.as_fd(), pdir, name)
    }

    /// The filesystem may give a new file the inode number of one just deleted, whose node the
    /// kernel may not have forgotten yet: the new file would be taken for the old one. Such a
    /// file gets a number of its own, recorded like a copied-up file's.
    fn fresh_ino(&self, st: &Stat) -> Option<u64> {
        if !self.nodes.contains(self.inos.map(st.st_dev, st.st_ino)) {
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Some((1 << 63) | ((st.st_ino & 0xffff_ffff) << 31) | (nanos & 0x7fff_ffff))
    }

    /// `fresh_ino` for a staged entry (the parent is marked impure when it is placed).
    fn avoid_reused_ino(&self, work: BorrowedFd<'_>, tmp: &OsStr) -> io::Result<bool> {
        let Some(fresh) = self.fresh_ino(&sys::stat_at(work, tmp)?) else {
            return Ok(false);
        };
        match sys::set_xattr(work, tmp, &self.xattrs.ino, &fresh.to_le_bytes(), 0) {
            // user.* xattrs are refused on symlinks (rootless): nothing better to do.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            r => r.map(|()| true),
        }
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        who: Caller,
    ) -> io::Result<(Arc<Node>, Stat)> {
        let p = self.node(parent)?;
        self.new_entry(&p, name, libc::S_IFDIR | mode, who, |d, n| {
            sys::mkdir_at(d, n, 0o700)
        })
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> io::Result<(Arc<Node>, Stat)> {
        let p = self.node(parent)?;
        if mode & libc::S_IFMT == libc::S_IFREG {
            return self.new_entry(&p, name, mode, who, |d, n| {
                sys::create_file_at(d, n, 0o600, libc::O_WRONLY).map(drop)
            });
        }
        self.new_entry(&p, name, mode, who, |d, n| {
            sys::mknod_at(d, n, (mode & libc::S_IFMT) | 0o600, rdev)
        })
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        who: Caller,
    ) -> io::Result<(Arc<Node>, Stat)> {
        let p = self.node(parent)?;
        self.new_entry(&p, name, libc::S_IFLNK | 0o777, who, |d, n| {
            sys::symlink_at(target, d, n)
        })
    }

    /// create(2): a new regular file, opened. Returns node, stat, handle and file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> io::Result<(Arc<Node>, Stat, u64, Arc<File>)> {
        let p = self.node(parent)?;
        let (node, st) =
            self.new_entry(&p, name, libc::S_IFREG | (mode & 0o7777), who, |d, n| {
                sys::create_file_at(d, n, 0o600, libc::O_WRONLY).map(drop)
            })?;
        let o = self.open(
            node.id,
            flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
        )?;
        Ok((node, st, o.fh, o.file))
    }

    pub fn link(&self, id: u64, newparent: u64, newname: &OsStr) -> io::Result<(Arc<Node>, Stat)> {
        let node = self.node(id)?;
        if node.is_dir {
            return Err(err(libc::EPERM));
        }
        let np = self.node(newparent)?;
        self.copy_up(&node)?;
        let (src_dir, src_name) = {
            let s = node.state();
            match &s.place {
                Place::Leaf { dir, name, .. } => (dir.fd()?, name.clone()),
                Place::Dir(_) => return Err(err(libc::EPERM)),
            }
        };
        Self::check_name(newname)?;
        let pdir = self.upper_dir(&np)?.fd()?;
        self.mark_impure(pdir.as_fd());
        match self.hole_at(pdir.as_fd(), newname)? {
            Hole::Empty => sys::link_at(src_dir.as_fd(), &src_name, pdir.as_fd(), newname)?,
            hole => {
                let work = self.work_fd()?;
                let work = work.as_fd();
                let tmp = self.stage_name();
                sys::link_at(src_dir.as_fd(), &src_name, work, &tmp)?;
                let how = if hole == Hole::Whiteout {
                    RenameMode::Replace
                } else {
                    RenameMode::NoReplace
                };
                if let Err(e) = sys::rename_at(work, &tmp, pdir.as_fd(), newname, how) {
                    let _ = sys::unlink_at(work, &tmp, false);
                    return Err(e);
                }
                if hole == Hole::OciWhiteout {
                    sys::unlink_at(pdir.as_fd(), &format::whiteout_name(newname), false)?;
                }
            }
        }
        self.lookup(newparent, newname)
    }

    /// Leaves a whiteout at `name` in the upper directory `pdir`, whose entry (if any) has
    /// already been moved or removed.
    pub(super) fn whiteout(&self, pdir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if self.chardev_whiteouts {
            match sys::mknod_at(pdir, name, libc::S_IFCHR, 0) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                r => return r,
            }
        }
        sys::create_file_at(pdir, &format::whiteout_name(name), 0o600, libc::O_WRONLY).map(drop)
    }

    /// Removes `name` (a file, or with `dir` an empty directory) from the merged view.
    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> io::Result<()> {
        let p = self.node(parent)?;
        let node = self.lookup_held(parent, name)?;
        self.remove_node(&p, &node, name, dir)
    }

    pub(super) fn remove_node(
        &self,
        p: &Arc<Node>,
        node: &Arc<Node>,
        name: &OsStr,
        dir: bool,
    ) -> io::Result<()> {
        if node.is_dir != dir {
            return Err(err(if dir { libc::ENOTDIR } else { libc::EISDIR }));
        }
        if dir {
            let s = node.state();
            if let Place::Dir(copies) = &s.place
                && !self.merge(copies)?.is_empty()
            {
                return Err(err(libc::ENOTEMPTY));
            }
        }
        let pdir_dir = self.upper_dir(p)?;
        let pfd = pdir_dir.fd()?;
        let pdir = pfd.as_fd();
        let below = self.lower_has(p, name)?;
        let in_upper = if dir {
            Self::in_upper(&node.state().place)
        } else {
            self.name_in_upper(pdir, name)?
        };
        let work = self.work_fd()?;
        let work = work.as_fd();
        if !dir && !in_upper {
            // Only a lower name goes: its hard-link group (if any) loses a member.
            self.forget_lower_name(node)?;
        }
        match (in_upper, dir) {
            (true, true) => self.remove_upper_dir(node, pdir, name, below, work)?,
            (true, false) => {
                self.keep_reachable(node, &pdir_dir, pdir, name)?;
                if below && self.chardev_whiteouts {
                    let tmp = self.stage_name();
                    sys::rename_at(pdir, name, work, &tmp, RenameMode::Whiteout)?;
                    sys::unlink_at(work, &tmp, false)?;
                } else {
                    sys::unlink_at(pdir, name, false)?;
                    if below {
                        self.whiteout(pdir, name)?;
                    }
                }
            }
            (false, _) => self.whiteout(pdir, name)?,
        }
        // The last name gone: open handles keep the data, stat says nlink 0. (A lower file
        // is only hidden: like the kernel, fstat through an open fd still sees its real links.)
        let last = node.is_dir
            || (Self::in_upper(&node.state().place)
                && self.getattr(node.id).map_or(true, |st| st.st_nlink == 0));
        // (A hidden link stays until the kernel forgets the node: it may still ask about it.)
        if last {
            node.unlinked.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes the upper copy of an empty directory: moves it out (leaving a whiteout if a
    /// lower copy must stay hidden), then empties it of its whiteouts and removes it.
    fn remove_upper_dir(
        &self,
        node: &Node,
        pdir: BorrowedFd<'_>,
        name: &OsStr,
        below: bool,
        work: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let tmp = self.stage_name();
        let how = if below && self.chardev_whiteouts {
            RenameMode::Whiteout
        } else {
            RenameMode::NoReplace
        };
        // Its fd stays open (held across the move, kept for good after): the kernel may still
        // ask about the directory, which no path reaches any more.
        let upper = match &node.state().place {
            Place::Dir(copies) => copies[0].dir.clone(),
            Place::Leaf { .. } => return Err(err(libc::ENOTDIR)),
        };
        let held = upper.fd()?;
        sys::rename_at(pdir, name, work, &tmp, how)?;
        upper.detach()?;
        drop(held);
        if below && !self.chardev_whiteouts {
            self.whiteout(pdir, name)?;
        }
        let staged = sys::open_dir_at(work, &tmp)?;
        clear_dir(staged.as_fd())?;
        sys::unlink_at(work, &tmp, true)
    }

    /// Before the upper name `name` of a file goes from `pdir` (open as `pfd`), keeps the file
    /// reachable for the requests that need no name, until the kernel forgets the node: one
    /// that is open or has other names gets a hidden link in the staging dir; otherwise (its
    /// last name, unopened: a fifo, a device or an `O_PATH` fd) an `O_PATH` fd of it is kept,
    /// as kernel overlayfs keeps the upper inode. The node then points there.
    pub(super) fn keep_reachable(
        &self,
        node: &Arc<Node>,
        pdir: &Dir,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<()> {
        // Only a node reached through this very name needs a new way in.
        let here = matches!(&node.state().place,
            Place::Leaf { dir, name: real, .. }
                if real.as_os_str() == name && Dir::ptr_eq(dir, pdir));
        if !here {
            return Ok(());
        }
        let st = sys::stat_at(pfd, name)?;
        if node.opens.load(Ordering::Relaxed) == 0 && st.st_nlink <= 1 {
            // Without an fd to spare, the file goes at once (getattr then fails, and
            // `fresh_ino` keeps a new file from being taken for it).
            if let Ok(fd) = pdir.retry(|| sys::open_path_at(pfd, name)) {
                node.state_mut().place = Place::Leaf {
                    layer: 0,
                    dir: self.dir_fds.fixed(fd),
                    name: OsString::new(),
                };
            }
            return Ok(());
        }
        // An indexed file is always reachable through its index entry.
        if let Some(index) = self.index.dir() {
            let entry = super::link_index::LinkIndex::entry_name(node.ino);
            if sys::exists_at(index.fd()?.as_fd(), &entry)? {
                node.state_mut().place = Place::Leaf {
                    layer: 0,
                    dir: index.clone(),
                    name: entry,
                };
                return Ok(());
            }
        }
        let mut hidden = node.hidden_link.lock().unwrap_or_else(|p| p.into_inner());
        if hidden.is_none() {
            let work = self.work()?;
            let tmp = self.stage_name();
            sys::link_at(pfd, name, work.fd()?.as_fd(), &tmp)?;
            let mut s = node.state_mut();
            s.place = Place::Leaf {
                layer: 0,
                dir: work.clone(),
                name: tmp.clone(),
            };
            *hidden = Some(tmp);
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    pub fn setattr(&self, id: u64, a: &SetAttr) -> io::Result<Stat> {
        let node = self.node(id)?;
        if a.size.is_some() {
            self.copy_up(&node)?;
        } else {
            self.copy_up_meta(&node)?;
        }
        let (dir, name) = {
            let s = node.state();
            match &s.place {
                Place::Leaf { dir, name, .. } => (dir.fd()?, name.clone()),
                Place::Dir(copies) => (copies[0].dir.fd()?, OsString::from(".")),
            }
        };
        let dir = dir.as_fd();
        if !self.record_owner_mode(id, dir, &name, a)? {
            if a.uid.is_some() || a.gid.is_some() {
                sys::chown_at(dir, &name, a.uid, a.gid)?;
            }
            if let Some(mode) = a.mode {
                sys::chmod_at(dir, &name, mode & 0o7777)?;
            }
        }
        if let Some(size) = a.size {
            match a.fh.map(|fh| self.handles.find(id, fh)).transpose() {
                Ok(Some(f)) => sys::truncate(&f.file, size)?,
                Ok(None) => sys::truncate(&sys::open_file_at(dir, &name, libc::O_WRONLY)?, size)?,
                Err(e) => return Err(e),
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimens_at(
                dir,
                &name,
                a.atime.unwrap_or(SetTime::Omit),
                a.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        self.getattr(id)
    }

    pub fn write(&self, id: u64, fh: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        let file = self.file(id, fh)?;
        sys::pwrite(&file, data, offset)
    }

    pub fn fsync(&self, id: u64, fh: u64, data_only: bool) -> io::Result<()> {
        sys::fsync(&*self.file(id, fh)?, data_only)
    }

    /// copy_file_range(2) between two open handles, done by the filesystem below (a reflink
    /// or an in-kernel copy, no data through us). Each side is (node id, handle).
    pub fn copy_file_range(
        &self,
        (id_in, fh_in): (u64, u64),
        off_in: u64,
        (id_out, fh_out): (u64, u64),
        off_out: u64,
        len: u64,
    ) -> io::Result<usize> {
        let from = self.file_current(id_in, fh_in)?;
        let to = self.file(id_out, fh_out)?;
        sys::copy_range(&from, off_in, &to, off_out, len.min(1 << 30) as usize)
    }

    pub fn fallocate(&self, id: u64, fh: u64, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        sys::fallocate(&*self.file(id, fh)?, mode, offset, len)
    }

    pub fn setxattr(&self, id: u64, key: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        if key.starts_with(b"user.fuseoverlayfs.") {
            return Err(err(libc::EPERM));
        }
        let key = stored_xattr_name(key);
        let node = self.node(id)?;
        self.copy_up(&node)?;
        self.xattr_target(id, |dir, name| {
            sys::set_xattr(dir, name, &key, value, flags)
        })
    }

    pub fn removexattr(&self, id: u64, key: &[u8]) -> io::Result<()> {
        if key.starts_with(b"user.fuseoverlayfs.") {
            return Err(err(libc::ENODATA));
        }
        let key = stored_xattr_name(key);
        let node = self.node(id)?;
        // As the kernel does: removing an xattr a lower file lacks is ENODATA, not a copy-up.
        if !Self::in_upper(&node.state().place) {
            self.xattr_target(id, |dir, name| sys::get_xattr(dir, name, &key, &mut []))?;
        }
        self.copy_up(&node)?;
        self.xattr_target(id, |dir, name| sys::remove_xattr(dir, name, &key))
    }

    /// Node `id`'s open file `fh` (EBADF for another inode's handle).
    pub(super) fn file(&self, id: u64, fh: u64) -> io::Result<Arc<File>> {
        self.handles.find(id, fh).map(|f| f.file)
    }
}

/// Empties a directory we own: a removed directory's upper copy (whiteouts only) or the
/// staging directory after a crash.
pub(super) fn clear_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut names = Vec::new();
    sys::read_dir(dir, |e| {
        names.push((e.name.to_vec(), e.kind == rustix::fs::FileType::Directory));
        Ok(())
    })?;
    for (n, is_dir) in names {
        let n = OsStr::from_bytes(&n);
        if is_dir {
            let sub = sys::open_dir_at(dir, n)?;
            clear_dir(sub.as_fd())?;
        }
        sys::unlink_at(dir, n, is_dir)?;
    }
    Ok(())
}
