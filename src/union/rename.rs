//! rename(2): planned (every refusal decided before anything changes), then applied in the
//! upper layer. A directory with lower copies moves with a redirect (the kernel's
//! `redirect_dir`), one without but hiding a lower name becomes opaque; the old name gets a
//! whiteout where a lower copy must stay hidden.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::dircache::Dir;
use super::inode::{Node, Place};
use super::ops::Hole;
use super::{Held, Union, err};
use crate::format;
use crate::sys::{self, RenameMode};

/// What a rename does, decided before anything changes.
enum RenamePlan<'a> {
    /// Source and target are the same file.
    Nothing,
    /// `RENAME_EXCHANGE` with this target.
    Exchange(Held<'a>),
    /// The source moves to the new name, replacing this target if there is one.
    Move(Option<Held<'a>>),
}

impl Union {
    /// rename(2) with flags. A directory with lower copies moves with a redirect (the
    /// kernel's `redirect_dir`), unless the mount says `redirect_dir=off` (EXDEV: callers such
    /// as mv fall back to copy and delete).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        mode: RenameMode,
    ) -> io::Result<()> {
        Self::check_name(newname)?;
        let p = self.node(parent)?;
        let np = self.node(newparent)?;
        let src = self.lookup_held(parent, name)?;
        match self.plan_rename(&src, &np, newname, mode)? {
            RenamePlan::Nothing => Ok(()),
            RenamePlan::Exchange(t) => self.exchange(&p, &src, name, &np, &t, newname),
            RenamePlan::Move(t) => self.apply_move(&p, &src, name, &np, newname, t.as_deref()),
        }
    }

    /// Decides what a rename does, before anything changes: every refusal is here.
    fn plan_rename(
        &self,
        src: &Arc<Node>,
        np: &Arc<Node>,
        newname: &OsStr,
        mode: RenameMode,
    ) -> io::Result<RenamePlan<'_>> {
        let target = match self.lookup_held(np.id, newname) {
            Ok(t) => Some(t),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        let exchanged = target.as_ref().filter(|_| mode == RenameMode::Exchange);
        if self.pinned_dir(src) || exchanged.is_some_and(|t| self.pinned_dir(t)) {
            return Err(err(libc::EXDEV));
        }
        let Some(t) = target else {
            return match mode {
                RenameMode::Exchange => Err(err(libc::ENOENT)),
                _ => Ok(RenamePlan::Move(None)),
            };
        };
        if Arc::ptr_eq(&t, src) {
            return Ok(RenamePlan::Nothing);
        }
        match mode {
            RenameMode::NoReplace => Err(err(libc::EEXIST)),
            RenameMode::Exchange => Ok(RenamePlan::Exchange(t)),
            _ if t.is_dir && !src.is_dir => Err(err(libc::EISDIR)),
            _ if !t.is_dir && src.is_dir => Err(err(libc::ENOTDIR)),
            _ => Ok(RenamePlan::Move(Some(t))),
        }
    }

    /// Moves `src` from `name` in `p` to `newname` in `np`, replacing `target`: the upper
    /// copies are made, the replaced entry dealt with, then one rename in the upper layer.
    fn apply_move(
        &self,
        p: &Arc<Node>,
        src: &Arc<Node>,
        name: &OsStr,
        np: &Arc<Node>,
        newname: &OsStr,
        target: Option<&Arc<Node>>,
    ) -> io::Result<()> {
        if let Some(t) = target.filter(|t| t.is_dir) {
            // Replacing a directory: it must be empty, and is removed first.
            self.remove_node(np, t, newname, true)?;
        }
        self.copy_up(src)?;
        let pdir = self.upper_dir(p)?;
        let npdir = self.upper_dir(np)?;
        let (pfd, npfd) = (pdir.fd()?, npdir.fd()?);
        let below = self.lower_has(p, name)?;
        if src.is_dir {
            self.prepare_dir_move(p, src, name, np, newname)?;
        } else if !self.name_in_upper(pfd.as_fd(), name)? {
            self.link_name_up(src, pfd.as_fd(), name)?;
        }
        let file_target = target.filter(|t| !t.is_dir);
        if let Some(t) = file_target {
            if self.name_in_upper(npfd.as_fd(), newname)? {
                // The replaced file may live on under other names or open handles.
                self.keep_reachable(t, &npdir, npfd.as_fd(), newname)?;
            } else {
                self.forget_lower_name(t)?;
            }
        }
        let target_hole = match file_target {
            Some(t) if Self::in_upper(&t.state().place) => Hole::Empty,
            _ => self.hole_at(npfd.as_fd(), newname).unwrap_or(Hole::Empty),
        };
        // A directory's fd stays open across the move: nothing needs its old path then.
        let _held = upper_fd(src)?;
        let (pd, npd) = (pfd.as_fd(), npfd.as_fd());
        self.rename_in_upper(pd, name, npd, newname, src.is_dir, below, target_hole)?;
        // The replaced file is gone only if that was its last name.
        if let Some(t) = file_target
            && Self::in_upper(&t.state().place)
            && self.getattr(t.id).map_or(true, |st| st.st_nlink == 0)
        {
            t.unlinked.store(true, Ordering::Relaxed);
        }
        moved(src, np, newname, &pdir, &npdir);
        Ok(())
    }

    /// The rename itself, in the upper layer, leaving a whiteout at the old name when a lower
    /// copy (`below`) must stay hidden, and clearing what stood at the new one.
    #[allow(clippy::too_many_arguments)]
    fn rename_in_upper(
        &self,
        pd: BorrowedFd<'_>,
        name: &OsStr,
        npd: BorrowedFd<'_>,
        newname: &OsStr,
        is_dir: bool,
        below: bool,
        target_hole: Hole,
    ) -> io::Result<()> {
        if is_dir && target_hole == Hole::Whiteout {
            // A directory cannot replace a device: swap them, which leaves the whiteout
            // at the old name, where it is needed if a lower copy stays behind.
            sys::rename_at(pd, name, npd, newname, RenameMode::Exchange)?;
            if !below {
                sys::unlink_at(pd, name, false)?;
            }
        } else {
            let how = if below && self.chardev_whiteouts {
                RenameMode::Whiteout
            } else {
                RenameMode::Replace
            };
            sys::rename_at(pd, name, npd, newname, how)?;
            if below && !self.chardev_whiteouts {
                self.whiteout(pd, name)?;
            }
        }
        self.mark_impure(npd);
        if target_hole == Hole::OciWhiteout {
            sys::unlink_at(npd, &format::whiteout_name(newname), false)?;
        }
        Ok(())
    }

    /// Before a directory moves in the upper layer: if it has lower copies, record where they
    /// are (the kernel's redirect: the old name when the parent stays, else the absolute
    /// path); if it has none but the target name hides a lower one, make it opaque.
    fn prepare_dir_move(
        &self,
        p: &Arc<Node>,
        src: &Arc<Node>,
        name: &OsStr,
        np: &Arc<Node>,
        newname: &OsStr,
    ) -> io::Result<()> {
        let (upper, has_lower) = match &src.state().place {
            Place::Dir(copies) => (copies[0].dir.fd()?, copies.iter().any(|c| !c.upper())),
            Place::Leaf { .. } => return Err(err(libc::ENOTDIR)),
        };
        let here = OsStr::new("");
        let key = &self.xattrs.redirect;
        if has_lower {
            // As the kernel: a redirect already on the upper copy stays if it still holds
            // (same parent, or absolute); else the old name, or the absolute path. Redirects
            // of lower layers chain below it at lookup.
            let existing = src.state().redirect.clone();
            let samedir = Arc::ptr_eq(p, np);
            let redirect = match existing {
                Some(r) if samedir || r.first() == Some(&b'/') => return Ok(()),
                _ if samedir => name.as_bytes().to_vec(),
                _ => self.absolute_redirect(src)?,
            };
            sys::set_xattr(upper.as_fd(), here, key, &redirect, 0)?;
            src.state_mut().redirect = Some(redirect);
            Ok(())
        } else if self.lower_has(np, newname)? {
            sys::set_xattr(upper.as_fd(), here, &self.xattrs.opaque, b"y", 0)
        } else {
            Ok(())
        }
    }

    /// The absolute path (from the layer roots) where `node`'s lower copies live: its path in
    /// the union, with each component replaced by that directory's own redirect, up to the
    /// first absolute one (as the kernel builds it).
    fn absolute_redirect(&self, node: &Arc<Node>) -> io::Result<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = node.clone();
        loop {
            let parent = cur.state().parent.clone();
            let Some(parent) = parent else { break };
            let redirect = cur.state().redirect.clone();
            match redirect {
                Some(r) if r.first() == Some(&b'/') => {
                    parts.push(r[1..].to_vec());
                    break;
                }
                Some(r) => parts.push(r),
                None => parts.push(cur.state().name.as_bytes().to_vec()),
            }
            cur = parent;
        }
        let mut out = Vec::new();
        for part in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    fn exchange(
        &self,
        p: &Arc<Node>,
        a: &Arc<Node>,
        an: &OsStr,
        np: &Arc<Node>,
        b: &Arc<Node>,
        bn: &OsStr,
    ) -> io::Result<()> {
        // Both names keep existing, so no whiteout is needed; each directory that moves gets
        // its redirect (or opacity) as in a plain rename.
        self.copy_up(a)?;
        self.copy_up(b)?;
        let pdir = self.upper_dir(p)?;
        let npdir = self.upper_dir(np)?;
        let (pfd, npfd) = (pdir.fd()?, npdir.fd()?);
        for (n, parent, dir, name, other_parent, other) in
            [(a, p, &pfd, an, np, bn), (b, np, &npfd, bn, p, an)]
        {
            if n.is_dir {
                self.prepare_dir_move(parent, n, name, other_parent, other)?;
            } else if !self.name_in_upper(dir.as_fd(), name)? {
                self.link_name_up(n, dir.as_fd(), name)?;
            }
        }
        let _held = (upper_fd(a)?, upper_fd(b)?);
        sys::rename_at(pfd.as_fd(), an, npfd.as_fd(), bn, RenameMode::Exchange)?;
        self.mark_impure(pfd.as_fd());
        self.mark_impure(npfd.as_fd());
        moved(a, np, bn, &pdir, &npdir);
        moved(b, p, an, &npdir, &pdir);
        Ok(())
    }
}

/// Records that `node` is now `name` in `parent`, whose upper copy is `to`. A file that lived
/// in `from` (its old upper directory) follows; one reached through the index or a hidden link
/// stays where it is.
fn moved(node: &Node, parent: &Arc<Node>, name: &OsStr, from: &Dir, to: &Dir) {
    let mut s = node.state_mut();
    s.parent = Some(parent.clone());
    s.name = name.to_owned();
    match &mut s.place {
        Place::Leaf {
            dir, name: real, ..
        } if Dir::ptr_eq(dir, from) => {
            *dir = to.clone();
            *real = name.to_owned();
        }
        // A directory's upper copy is found by its path from then on (its lower copies stay
        // where they are).
        Place::Dir(copies) => {
            if let Some(c) = copies.first().filter(|c| c.upper()) {
                c.dir.moved(to, name);
            }
        }
        Place::Leaf { .. } => {}
    }
}

/// An open fd of a directory node's upper copy (None for other nodes), to hold while it moves.
fn upper_fd(node: &Node) -> io::Result<Option<super::dircache::DirFd>> {
    match &node.state().place {
        Place::Dir(copies) if copies[0].upper() => copies[0].dir.fd().map(Some),
        _ => Ok(None),
    }
}
