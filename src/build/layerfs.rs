//! The stage's layers under a fresh upper (the new layer), driven in-process: COPY, ADD and
//! WORKDIR write through strata's own union code, without a FUSE mount in between. The union
//! does what it does behind a mount (copy-up of parents with their lower metadata, whiteouts
//! and opaque markers in the upper), so the layer is the one a mount would have left; what
//! the kernel does for a mount (resolving symlinks inside the root, the umask) is done here.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::image::Store;
use crate::image::store::Staging;
use crate::options::MountOptions;
use crate::sys::{self, SetTime, Stat};
use crate::union::{Caller, ROOT_ID, SetAttr, Stack, Union};

use super::{Result, io_err};

/// The kernel's own limit on symlinks in one resolution.
const MAX_LINKS: usize = 40;

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// A path's names, `.` and empty ones dropped (`..` kept: resolved against the real tree).
fn names(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

pub struct LayerFs {
    union: Union,
    /// Who asks: new entries are created as the builder, as through its mount.
    me: Caller,
    /// The mode bits the kernel would take from a create or mkdir.
    umask: u32,
    /// Lookups counted on each node, given back when it is removed (as the kernel forgets
    /// an unlinked entry), so a reused inode number is not taken for the removed file.
    looked_up: std::cell::RefCell<HashMap<u64, u64>>,
    /// The upper directory (the new layer).
    pub upper: PathBuf,
    _staging: Staging,
}

impl LayerFs {
    /// `lowers` top first; none for FROM scratch.
    pub fn open(store: &Store, lowers: &[PathBuf], umask: u32) -> Result<LayerFs> {
        let staging = store.staging()?;
        let upper = staging.path.join("diff");
        let work = staging.path.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d).map_err(io_err("creating", d))?;
        }
        let lowers = super::workspace::lowers_or_empty(&staging, lowers)?;
        let mut fds = Vec::new();
        for l in &lowers {
            fds.push(sys::open_root(l).map_err(io_err("opening layer", l))?);
        }
        let stack = Stack {
            upper: Some(sys::open_root(&upper).map_err(io_err("opening", &upper))?),
            work: Some(sys::open_root(&work).map_err(io_err("opening", &work))?),
            lowers: fds,
        };
        // The options a build's mount would get (the defaults).
        let opts = crate::mount::union_options(&MountOptions::default());
        let union =
            Union::with_options(stack, &opts).map_err(io_err("opening layers over", &upper))?;
        Ok(LayerFs {
            union,
            me: Caller {
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            },
            umask,
            looked_up: Default::default(),
            upper,
            _staging: staging,
        })
    }

    /// `name` in directory `parent` (a symlink is not followed); None if absent.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Option<(u64, Stat)>> {
        match self.union.lookup(parent, name) {
            Ok((node, st)) => {
                *self.looked_up.borrow_mut().entry(node.id).or_default() += 1;
                Ok(Some((node.id, st)))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Resolves `path` from the root as `RESOLVE_IN_ROOT` does: symlinks (the last one too
    /// when `follow`) are followed, absolute ones and `..` never leading out of the root.
    /// With `create`, missing directories are made (0755 less the umask), a dangling link's
    /// target too, as `sys::create_in_root` does through a mount.
    pub fn resolve(&self, path: &[u8], follow: bool, create: bool) -> io::Result<(u64, Stat)> {
        let mut todo: VecDeque<Vec<u8>> = names(path).map(<[u8]>::to_vec).collect();
        let mut stack = vec![(ROOT_ID, self.union.getattr(ROOT_ID)?)];
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let (cur, cst) = stack[stack.len() - 1];
            if !is_dir(&cst) {
                return Err(err(libc::ENOTDIR));
            }
            let n = OsStr::from_bytes(&c);
            match self.lookup(cur, n)? {
                Some((id, st))
                    if st.st_mode & libc::S_IFMT == libc::S_IFLNK
                        && (follow || !todo.is_empty()) =>
                {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(err(libc::ELOOP));
                    }
                    let target = self.union.readlink(id)?;
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for t in names(&target).rev() {
                        todo.push_front(t.to_vec());
                    }
                }
                Some(found) => stack.push(found),
                None if create => {
                    let made = self.mkdir(cur, n, 0o755)?;
                    stack.push(made);
                }
                None => return Err(err(libc::ENOENT)),
            }
        }
        Ok(stack[stack.len() - 1])
    }

    /// A directory at `path`, made with its missing parents (ENOTDIR if something else is
    /// there).
    pub fn make_dirs(&self, path: &[u8]) -> io::Result<u64> {
        let (id, st) = self.resolve(path, true, true)?;
        if !is_dir(&st) {
            return Err(err(libc::ENOTDIR));
        }
        Ok(id)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> io::Result<(u64, Stat)> {
        let (node, st) = self
            .union
            .mkdir(parent, name, mode & 0o777 & !self.umask, self.me)?;
        Ok((node.id, st))
    }

    /// A new regular file, open for writing: (node, handle, file). Release the handle.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<(u64, u64, Arc<File>)> {
        let (node, _, fh, file) = self.union.create(
            parent,
            name,
            mode & 0o777 & !self.umask,
            libc::O_WRONLY,
            self.me,
        )?;
        Ok((node.id, fh, file))
    }

    pub fn release(&self, id: u64, fh: u64) -> io::Result<()> {
        self.union.release(id, fh)
    }

    pub fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr) -> io::Result<u64> {
        Ok(self.union.symlink(parent, name, target, self.me)?.0.id)
    }

    pub fn link(&self, id: u64, parent: u64, name: &OsStr) -> io::Result<()> {
        self.union.link(id, parent, name).map(drop)
    }

    pub fn set_attr(&self, id: u64, a: &SetAttr) -> io::Result<()> {
        self.union.setattr(id, a).map(drop)
    }

    pub fn set_mtime(&self, id: u64, mtime: i64) -> io::Result<()> {
        let a = SetAttr {
            mtime: Some(SetTime::At(mtime, 0)),
            ..SetAttr::default()
        };
        self.set_attr(id, &a)
    }

    pub fn set_xattr(&self, id: u64, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.union.setxattr(id, key, value, 0)
    }

    /// Removes `name` from `parent`, a directory with all it holds (whiteouts recorded by the
    /// union wherever lower layers have the name).
    pub fn remove_tree(&self, parent: u64, name: &OsStr, id: u64, st: &Stat) -> io::Result<()> {
        if is_dir(st) {
            for child in crate::image::merged::list(&self.union, id)? {
                let c = OsStr::from_bytes(&child);
                if let Some((cid, cst)) = self.lookup(id, c)? {
                    self.remove_tree(id, c, cid, &cst)?;
                }
            }
            self.union.rmdir(parent, name)?;
        } else {
            self.union.unlink(parent, name)?;
        }
        if let Some(n) = self.looked_up.borrow_mut().remove(&id) {
            self.union.forget(id, n);
        }
        Ok(())
    }
}
