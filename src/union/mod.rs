//! The union filesystem, independent of FUSE so it can be driven and tested directly.
//!
//! A request goes: `fuse.rs` decodes it -> a method here finds the node in the inode table
//! (per-node lock, no global one) -> `lookup`/`readdir` walk the layer copies through `sys`.

mod copy_up;
mod dircache;
mod handles;
mod inode;
mod layer;
mod link_index;
mod lookup;
mod ops;
mod override_stat;
mod readdir;
mod rename;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use dircache::{SIZE_ENV as DIR_FDS_ENV, Stats as DirFdStats, size_for_limit};
pub use inode::{Node, ROOT_ID, table};
pub use ops::{Caller, SetAttr};
pub use readdir::Entry;
pub use rustix::fs::FileType;
pub use sys::{RenameMode, SetTime};

use dircache::{Dir, DirCache};
pub use handles::Opened;

/// Whether an open with `flags` may change the file's data (it copies the file up).
pub fn opens_for_writing(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}
use handles::{DirHandle, Handles, OpenFile};
use inode::{InoMap, NodeState, NodeTable, Place};
use layer::{DirCopy, Layer};
use link_index::LinkIndex;

use crate::format::{OverlayXattrs, shown_xattr_name, stored_xattr_name};
use crate::sys::{self, Stat, StatVfs};

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The layer stack as opened by the caller: fds of the layer roots, top first.
pub struct Stack {
    pub upper: Option<OwnedFd>,
    /// The workdir (required with an upper, on the upper's filesystem).
    pub work: Option<OwnedFd>,
    pub lowers: Vec<OwnedFd>,
}

/// The mount options the union itself honours (the others are FUSE's or the mount's).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnionOptions {
    pub whiteout: crate::options::WhiteoutFormat,
    /// chmod/chown copy a lower file's data up too (`metacopy=off`).
    pub no_metacopy: bool,
    /// The union's own xattrs in `user.overlay.*` even where `trusted.` works.
    pub userxattr: bool,
    /// Directories report one link (`static_nlink`).
    pub static_nlink: bool,
    /// Directories with lower copies do not move (`redirect_dir=off|follow`): EXDEV.
    pub no_redirect: bool,
    pub xattr_permissions: crate::options::XattrPermissions,
    /// Directory fds kept open at most (None: `STRATA_DIR_FDS`, else from `RLIMIT_NOFILE`).
    pub dir_fds: Option<usize>,
}

/// Where copy-ups and new entries are staged, inside the workdir (the kernel's name for it,
/// so a workdir stays usable by kernel overlayfs).
const STAGING: &str = "work";
/// strata's hard-link index, beside the staging directory.
const INDEX: &str = "strata-index";
/// The kernel's hard-link index directory.
const KERNEL_INDEX: &str = "index";

pub struct Union {
    layers: Vec<Layer>,
    nodes: NodeTable,
    inos: InoMap,
    /// Open files and directories.
    handles: Handles,
    /// Nodes forgotten so far: every thousand, memory goes back to the system.
    forgotten: AtomicU64,
    /// The fds of layer directories, bounded.
    dir_fds: DirCache,
    /// `workdir/work`, where objects are built before being renamed into the upper.
    work: Option<Dir>,
    stage_seq: AtomicU64,
    /// The union's own xattr names: `trusted.overlay.` with CAP_SYS_ADMIN, else
    /// `user.overlay.` (the kernel's userxattr).
    xattrs: OverlayXattrs,
    /// Whether deletions are recorded as char 0/0 devices (else `.wh.` files).
    chardev_whiteouts: bool,
    /// The hard-link index (strata's and the kernel's, in the workdir).
    index: LinkIndex,
    no_metacopy: bool,
    static_nlink: bool,
    no_redirect: bool,
    /// fuse-overlayfs's `override_stat` records, per layer.
    overrides: override_stat::Overrides,
}

impl Union {
    /// A union whose directory fd cache has the configured size (`STRATA_DIR_FDS`, else
    /// derived from `RLIMIT_NOFILE`).
    pub fn new(stack: Stack, whiteout: crate::options::WhiteoutFormat) -> io::Result<Self> {
        let opts = UnionOptions {
            whiteout,
            ..UnionOptions::default()
        };
        Self::with_options(stack, &opts)
    }

    /// A union keeping at most about `dir_fds` directory fds open.
    pub fn with_dir_fds(
        stack: Stack,
        whiteout: crate::options::WhiteoutFormat,
        dir_fds: usize,
    ) -> io::Result<Self> {
        let opts = UnionOptions {
            whiteout,
            dir_fds: Some(dir_fds),
            ..UnionOptions::default()
        };
        Self::with_options(stack, &opts)
    }

    pub fn with_options(stack: Stack, opts: &UnionOptions) -> io::Result<Self> {
        let cache = DirCache::new(opts.dir_fds.unwrap_or_else(dircache::configured_size));
        let (work, index, kernel_index) = match (&stack.upper, &stack.work) {
            (Some(_), Some(w)) => (
                Some(cache.fixed(prepare_work(w.as_fd())?)),
                Some(cache.fixed(open_or_make_dir(w.as_fd(), INDEX)?)),
                Some(cache.fixed(open_or_make_dir(w.as_fd(), KERNEL_INDEX)?)),
            ),
            // No upper, or an upper without a workdir: a read-only view (commit reads uppers
            // so).
            _ => (None, None, None),
        };
        let privileged = !opts.userxattr
            && work
                .as_ref()
                .and_then(|w| w.fd().ok())
                .is_some_and(|w| can_set_trusted(w.as_fd()));
        let xattrs = OverlayXattrs::new(privileged);
        let chardev_whiteouts = match (opts.whiteout, &work) {
            (crate::options::WhiteoutFormat::Oci, _) | (_, None) => false,
            (crate::options::WhiteoutFormat::CharDev, _) => true,
            (crate::options::WhiteoutFormat::Auto, Some(w)) => {
                w.fd().is_ok_and(|w| sys::can_mknod_whiteout(w.as_fd()))
            }
        };
        let layers = open_layers(&cache, stack.upper, stack.lowers);
        if layers.is_empty() {
            return Err(err(libc::EINVAL));
        }
        let overrides =
            override_stat::Overrides::for_layers(&layers, work.is_some(), opts.xattr_permissions)?;
        let u = Union {
            layers,
            nodes: NodeTable::new(),
            inos: InoMap::default(),
            handles: Handles::new(),
            forgotten: AtomicU64::new(0),
            dir_fds: cache,
            work,
            stage_seq: AtomicU64::new(0),
            xattrs: xattrs.clone(),
            chardev_whiteouts,
            index: LinkIndex::new(index, kernel_index, xattrs),
            no_metacopy: opts.no_metacopy,
            static_nlink: opts.static_nlink,
            no_redirect: opts.no_redirect,
            overrides,
        };
        u.insert_root()?;
        Ok(u)
    }

    /// The root node: it merges every layer (opacity of a layer root is ignored, as in the
    /// kernel).
    fn insert_root(&self) -> io::Result<()> {
        let mut copies = Vec::new();
        let mut top = None;
        for (i, l) in self.layers.iter().enumerate() {
            let st = sys::stat_fd(l.root.fd()?.as_fd())?;
            top.get_or_insert(st);
            copies.push(DirCopy::new(i, l.root.clone(), &st, l.upper));
        }
        let top = top.ok_or_else(|| err(libc::EINVAL))?;
        // The first device seen gets index 0 (unchanged inode numbers).
        let ino = self.inos.map(top.st_dev, top.st_ino);
        self.nodes.insert_root(
            ino,
            NodeState {
                parent: None,
                name: OsString::new(),
                place: Place::Dir(copies),
                redirect: None,
                data: None,
            },
        );
        Ok(())
    }

    pub fn has_upper(&self) -> bool {
        self.layers.first().is_some_and(|l| l.upper)
    }

    /// Number of nodes the kernel currently holds (for memory accounting and tests).
    pub fn node_count(&self) -> usize {
        self.nodes.count()
    }

    fn node(&self, id: u64) -> io::Result<Arc<Node>> {
        self.nodes.get(id)
    }

    /// Looks up `name` in directory `parent`; counts one kernel lookup on the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(Arc<Node>, Stat)> {
        let pnode = self.node(parent)?;
        let found = {
            let ps = pnode.state();
            let Place::Dir(copies) = &ps.place else {
                return Err(err(libc::ENOTDIR));
            };
            lookup::resolve(&self.layers, copies, name)?
        };
        let ino = self.stable_ino(&found.place, &found.stat)?;
        let (place, st) = self.indexed_place(found.place, found.stat, ino)?;
        let is_dir = matches!(place, Place::Dir(_));
        let node = self.nodes.intern(ino, is_dir, || NodeState {
            parent: Some(pnode.clone()),
            name: name.to_owned(),
            place,
            redirect: found.redirect,
            data: found.data,
        });
        let st = self.fix_stat(&node, st);
        Ok((node, st))
    }

    /// Looks up `name` for the union's own use: the lookup reference goes when the guard is
    /// dropped, on every path.
    pub(super) fn lookup_held(&self, parent: u64, name: &OsStr) -> io::Result<Held<'_>> {
        let (node, _) = self.lookup(parent, name)?;
        Ok(Held { union: self, node })
    }

    /// `st_ino` of an entry: its origin's number if it was copied up, else its real one.
    fn stable_ino(&self, place: &Place, st: &Stat) -> io::Result<u64> {
        let recorded = match place {
            Place::Leaf {
                layer: 0,
                dir,
                name,
            } if self.has_upper() => {
                sys::get_xattr_value(dir.fd()?.as_fd(), name, &self.xattrs.ino)?
            }
            Place::Dir(copies) if copies[0].upper() => sys::get_xattr_value(
                copies[0].dir.fd()?.as_fd(),
                OsStr::new(""),
                &self.xattrs.ino,
            )?,
            _ => None,
        };
        Ok(recorded
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or_else(|| self.inos.map(st.st_dev, st.st_ino)))
    }

    pub fn forget(&self, id: u64, n: u64) {
        if let Some(node) = self.nodes.forget(id, n) {
            self.drop_hidden_link(&node);
            drop(node);
            // After a large eviction (the kernel forgetting a tree walk), hand the memory back.
            if self.forgotten.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
                self.nodes.shrink();
                self.dir_fds.compact();
                sys::release_free_memory();
            }
        }
    }

    /// The session is over (unmounted): the kernel will send no FORGET for what it still
    /// held, so the staging links kept for those nodes go now. Left behind, they would count
    /// as links of the upper files (kernel overlayfs over this upper would show one more).
    pub fn end_session(&self) {
        for node in self.nodes.all() {
            self.drop_hidden_link(&node);
        }
    }

    /// Removes the staging link that kept an unlinked file reachable.
    pub(super) fn drop_hidden_link(&self, node: &Node) {
        let mut hidden = node.hidden_link.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(name), Some(work)) = (hidden.take(), &self.work)
            && let Ok(work) = work.fd()
        {
            let _ = sys::unlink_at(work.as_fd(), &name, false);
        }
    }

    /// A lower file with several links whose group already has an upper copy is that copy.
    fn indexed_place(&self, place: Place, st: Stat, ino: u64) -> io::Result<(Place, Stat)> {
        if let Place::Leaf { layer, .. } = &place
            && *layer != 0
            && st.st_nlink > 1
            && let Some((dir, name, ist)) = self.index.find(ino)?
        {
            let place = Place::Leaf {
                layer: 0,
                dir,
                name,
            };
            return Ok((place, ist));
        }
        Ok((place, st))
    }

    /// The kernel's origin record (`struct ovl_fb`) of `name` in `dir` on lower `layer`: a file
    /// handle with the filesystem's uuid. None where the filesystem gives no handles.
    pub(super) fn origin_of(
        &self,
        layer: usize,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
    ) -> Option<Vec<u8>> {
        let (kind, fid) = sys::file_handle_at(dir, name).ok()?;
        let mut fb = vec![0u8, 0xfb, (21 + fid.len()) as u8, 0, kind as u8];
        fb.extend_from_slice(&self.layers.get(layer)?.uuid);
        fb.extend_from_slice(&fid);
        Some(fb)
    }

    /// Records a staged copy's origin and, for a hard-link group, links it into the kernel's
    /// index. Best effort: interop with kernel overlayfs, never a reason to fail a copy-up.
    pub(super) fn record_origin(
        &self,
        origin: Option<&[u8]>,
        work: std::os::fd::BorrowedFd<'_>,
        tmp: &OsStr,
        group: bool,
    ) {
        let Some(fb) = origin else { return };
        if sys::set_xattr(work, tmp, &self.xattrs.origin, fb, 0).is_err() || !group {
            return;
        }
        self.index.link_kernel(work, tmp, fb);
    }

    /// Presents a real stat as the union's: stable inode number, and nlink 1 for merged
    /// directories (their real link count cannot be known, the kernel does the same).
    fn fix_stat(&self, node: &Node, mut st: Stat) -> Stat {
        st.st_ino = node.ino;
        self.override_stat(node, &mut st);
        if node.unlinked.load(Ordering::Relaxed) {
            st.st_nlink = 0;
        } else if node.hidden_link.lock().is_ok_and(|h| h.is_some()) {
            st.st_nlink = st.st_nlink.saturating_sub(1);
        } else if let Some(index) = self.index.dir()
            && !node.is_dir
            && let Place::Leaf {
                layer: 0,
                dir,
                name,
            } = &node.state().place
            // An indexed file has a link in the index: more than one link, or (its last upper
            // name gone) it is reached through the index itself. Other files skip the xattr.
            && (st.st_nlink > 1 || Dir::ptr_eq(dir, index))
            && let Ok(dfd) = dir.fd()
            && let Some(n) = self.index.merged_nlink(dfd.as_fd(), name, st.st_nlink)
        {
            st.st_nlink = n;
        }
        if let Place::Dir(copies) = &node.state().place
            && copies.len() > 1
        {
            st.st_nlink = 1;
        }
        st
    }

    /// Attributes through an open handle: still right after the last name is gone.
    pub fn getattr_fh(&self, id: u64, fh: u64) -> io::Result<Stat> {
        let node = self.node(id)?;
        // A handle on a lower copy (or a metacopy's data) does not carry the file's own
        // metadata, which may have been copied up since.
        let file = match self.handles.find(id, fh) {
            Ok(h) if !h.on_lower => h.file,
            Ok(_) => return self.getattr(id),
            // A handle that is gone: the node's own attributes (a release may have raced).
            Err(_) if self.handles.file(fh).is_err() => return self.getattr(id),
            Err(e) => return Err(e),
        };
        let st = Self::data_blocks(&node.state(), sys::stat_fd(file.as_fd())?);
        Ok(self.fix_stat(&node, st))
    }

    /// A metacopy shows its data's blocks (as the kernel does), not its empty copy's.
    fn data_blocks(s: &inode::NodeState, mut st: Stat) -> Stat {
        if let Some(d) = &s.data
            && let Ok(dfd) = d.dir.fd()
            && let Ok(dst) = sys::stat_at(dfd.as_fd(), &d.name)
        {
            st.st_blocks = dst.st_blocks;
        }
        st
    }

    pub fn getattr(&self, id: u64) -> io::Result<Stat> {
        let node = self.node(id)?;
        let st = {
            let s = node.state();
            match &s.place {
                Place::Dir(copies) => sys::stat_fd(copies[0].dir.fd()?.as_fd())?,
                Place::Leaf { dir, name, .. } => {
                    Self::data_blocks(&s, sys::stat_at(dir.fd()?.as_fd(), name)?)
                }
            }
        };
        Ok(self.fix_stat(&node, st))
    }

    pub fn readlink(&self, id: u64) -> io::Result<Vec<u8>> {
        let node = self.node(id)?;
        let s = node.state();
        match &s.place {
            Place::Leaf { dir, name, .. } => sys::readlink_at(dir.fd()?.as_fd(), name),
            Place::Dir(_) => Err(err(libc::EINVAL)),
        }
    }

    /// Opens a file (copying it up first for writing). Returns the handle and the file, for
    /// FUSE passthrough.
    pub fn open(&self, id: u64, flags: i32) -> io::Result<Opened> {
        let node = self.node(id)?;
        if opens_for_writing(flags) {
            self.copy_up(&node)?;
        }
        let (file, on_lower) = {
            let s = node.state();
            match (&s.place, &s.data) {
                // A metacopy read from where its data is (writes have completed the copy).
                (Place::Leaf { .. }, Some(d)) => {
                    let dfd = d.dir.fd()?;
                    let f = d
                        .dir
                        .retry(|| sys::open_file_at(dfd.as_fd(), &d.name, flags))?;
                    (f, true)
                }
                (Place::Leaf { dir, name, .. }, None) => {
                    let dfd = dir.fd()?;
                    let f = dir.retry(|| sys::open_file_at(dfd.as_fd(), name, flags))?;
                    (f, !Self::in_upper(&s.place))
                }
                (Place::Dir(_), _) => return Err(err(libc::EISDIR)),
            }
        };
        if flags & libc::O_TRUNC != 0 {
            file.set_len(0)?;
        }
        let file = Arc::new(file);
        let fh = self.handles.add_file(OpenFile {
            node,
            file: file.clone(),
            on_lower,
        });
        Ok(Opened { fh, file, on_lower })
    }

    pub fn read(&self, id: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = self.file_current(id, fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        // Short reads only at EOF: the kernel would fill the rest with zeroes otherwise.
        while done < buf.len() {
            match sys::pread(&file, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// The file behind a handle for reading. A handle opened on a lower file whose node has
    /// been copied up since reads the upper copy from then on, as kernel overlayfs (4.19+)
    /// switches such a file to the upper one.
    pub(super) fn file_current(&self, id: u64, fh: u64) -> io::Result<Arc<File>> {
        let OpenFile {
            node,
            file,
            on_lower,
        } = self.handles.find(id, fh)?;
        if !on_lower || !Self::data_in_upper(&node.state()) {
            return Ok(file);
        }
        let upper = {
            let s = node.state();
            match &s.place {
                Place::Leaf { dir, name, .. } => {
                    let dfd = dir.fd()?;
                    Arc::new(dir.retry(|| sys::open_file_at(dfd.as_fd(), name, libc::O_RDONLY))?)
                }
                Place::Dir(_) => return Err(err(libc::EISDIR)),
            }
        };
        self.handles.switch_to_upper(fh, upper.clone());
        Ok(upper)
    }

    /// Closes a file handle. An unlinked file's hidden link stays until the kernel forgets
    /// the node: it may still ask about it (an `O_PATH` fd, a second open file).
    pub fn release(&self, id: u64, fh: u64) -> io::Result<()> {
        self.handles.remove_file(id, fh)
    }

    pub fn opendir(&self, id: u64) -> io::Result<u64> {
        let node = self.node(id)?;
        if !node.is_dir {
            return Err(err(libc::ENOTDIR));
        }
        // An open directory keeps its fds (and a removed one is still listed, empty).
        let copies: Vec<Dir> = match &node.state().place {
            Place::Dir(copies) => copies.iter().map(|c| c.dir.clone()).collect(),
            Place::Leaf { .. } => Vec::new(),
        };
        let mut pinned = Vec::with_capacity(copies.len());
        for d in copies {
            if let Err(e) = d.pin() {
                pinned.iter().for_each(Dir::unpin);
                return Err(e);
            }
            pinned.push(d);
        }
        Ok(self.handles.add_dir(DirHandle {
            node,
            pinned,
            entries: None,
        }))
    }

    /// The listing snapshot of an open directory, built on the first read and rebuilt when a
    /// reader rewinds to offset 0.
    fn snapshot(&self, id: u64, fh: u64, offset: u64) -> io::Result<(Arc<Node>, Arc<Vec<Entry>>)> {
        let h = self.handles.dir(id, fh)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        let entries = match &h.entries {
            Some(e) if offset != 0 => e.clone(),
            _ => {
                let list = {
                    let s = h.node.state();
                    let Place::Dir(copies) = &s.place else {
                        return Err(err(libc::ENOTDIR));
                    };
                    Arc::new(self.merge(copies)?)
                };
                h.entries = Some(list.clone());
                list
            }
        };
        Ok((h.node.clone(), entries))
    }

    /// Feeds entries from `offset` to `add(ino, next_offset, kind, name)` until it returns
    /// true (buffer full). Offsets: 1 is after ".", 2 after "..", n+3 after entry n.
    pub fn readdir(
        &self,
        id: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &[u8]) -> bool,
    ) -> io::Result<()> {
        let (node, entries) = self.snapshot(id, fh, offset)?;
        let parent_ino = node.state().parent.as_ref().map_or(node.ino, |p| p.ino);
        let mut off = offset;
        loop {
            let (ino, kind, name): (u64, FileType, &[u8]) = match off {
                0 => (node.ino, FileType::Directory, b"."),
                1 => (parent_ino, FileType::Directory, b".."),
                n => match entries.get((n - 2) as usize) {
                    Some(e) => (e.ino, e.kind, &e.name),
                    None => return Ok(()),
                },
            };
            if add(ino, off + 1, kind, name) {
                return Ok(());
            }
            off += 1;
        }
    }

    /// readdir with attributes: each entry is looked up (so the kernel needs no LOOKUP of its
    /// own) and `add(next_offset, name, node, stat)` counts as one kernel lookup unless it
    /// returns true (buffer full: that entry was not sent, so its lookup is dropped again).
    /// The kernel never links "." and "..", so they count no lookup.
    pub fn readdirplus(
        &self,
        id: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &Node, &Stat) -> bool,
    ) -> io::Result<()> {
        let (dir, entries) = self.snapshot(id, fh, offset)?;
        let parent = dir.state().parent.clone().unwrap_or_else(|| dir.clone());
        for (off, name, node) in [(0, b".".as_slice(), &dir), (1, b"..".as_slice(), &parent)] {
            if offset <= off && add(off + 1, name, node, &self.getattr(node.id)?) {
                return Ok(());
            }
        }
        for (i, e) in entries
            .iter()
            .enumerate()
            .skip(offset.saturating_sub(2) as usize)
        {
            let next = i as u64 + 3;
            // An entry that vanished since the snapshot is skipped, as a concurrent unlink
            // would make it.
            let Ok((node, st)) = self.lookup(dir.id, OsStr::from_bytes(&e.name)) else {
                continue;
            };
            if add(next, &e.name, &node, &st) {
                self.forget(node.id, 1);
                return Ok(());
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, id: u64, fh: u64) -> io::Result<()> {
        self.handles.remove_dir(id, fh)
    }

    /// Counters of the directory fd cache.
    pub fn dir_fd_stats(&self) -> DirFdStats {
        self.dir_fds.stats()
    }

    /// The merged listing of a directory, with the stable inode numbers lookup reports.
    fn merge(&self, copies: &[DirCopy]) -> io::Result<Vec<Entry>> {
        readdir::merge(
            &self.inos,
            copies,
            |copy, name| {
                if !copy.upper() {
                    return Ok(None);
                }
                let v = sys::get_xattr_value(
                    copy.dir.fd()?.as_fd(),
                    OsStr::from_bytes(name),
                    &self.xattrs.ino,
                )?;
                Ok(v.and_then(|v| v.try_into().ok().map(u64::from_le_bytes)))
            },
            &self.xattrs.impure,
        )
    }

    /// Space of the upper layer (where writes go), else of the top lower layer.
    pub fn statfs(&self) -> io::Result<StatVfs> {
        sys::statvfs(self.layers[0].root.fd()?.as_fd())
    }

    /// Where a node's xattrs are read: (directory fd, name in it; empty for the fd itself).
    fn xattr_target<R>(
        &self,
        id: u64,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, &OsStr) -> io::Result<R>,
    ) -> io::Result<R> {
        let node = self.node(id)?;
        let s = node.state();
        match &s.place {
            Place::Dir(copies) => f(copies[0].dir.fd()?.as_fd(), OsStr::new("")),
            Place::Leaf { dir, name, .. } => f(dir.fd()?.as_fd(), name),
        }
    }

    /// Reads xattr `key` into `buf` (size query when `buf` is empty). The union's own xattrs
    /// do not exist as far as users can tell; overlay-named ones are the user's, escaped.
    pub fn getxattr(&self, id: u64, key: &[u8], buf: &mut [u8]) -> io::Result<usize> {
        if key.starts_with(b"user.fuseoverlayfs.") || self.hides_xattr(key) {
            return Err(err(libc::ENODATA));
        }
        let key = stored_xattr_name(key);
        self.xattr_target(id, |dir, name| sys::get_xattr(dir, name, &key, buf))
    }

    /// All user-visible xattr names, NUL-separated.
    pub fn listxattr(&self, id: u64) -> io::Result<Vec<u8>> {
        let all = self.xattr_target(id, sys::list_xattr_all)?;
        let mut out = Vec::with_capacity(all.len());
        for name in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(shown) = shown_xattr_name(name).filter(|_| !self.hides_xattr(name)) {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        Ok(out)
    }
}

/// A lookup reference the union holds for itself while it works on a node (virtiofsd's
/// `StrongInodeReference`): released when dropped, so no error path can leak or double it.
pub(super) struct Held<'a> {
    union: &'a Union,
    node: Arc<Node>,
}

impl std::ops::Deref for Held<'_> {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.union.forget(self.node.id, 1);
    }
}

/// The layers, top first: the upper (if any), then the lowers, each root a fixed fd.
fn open_layers(cache: &DirCache, upper: Option<OwnedFd>, lowers: Vec<OwnedFd>) -> Vec<Layer> {
    let uuid = |fd: &OwnedFd| {
        sys::open_dir_for_read(fd.as_fd()).map_or([0; 16], |d| sys::fs_uuid(d.as_fd()))
    };
    let roots = upper.map(|u| (u, true)).into_iter();
    roots
        .chain(lowers.into_iter().map(|l| (l, false)))
        .map(|(fd, upper)| Layer {
            uuid: uuid(&fd),
            root: cache.fixed(fd),
            upper,
        })
        .collect()
}

/// Opens (creating if needed) `workdir/work` and clears what a crash left in it.
fn prepare_work(workdir: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let work = open_or_make_dir(workdir, STAGING)?;
    ops::clear_dir(work.as_fd())?;
    Ok(work)
}

/// Whether `trusted.*` xattrs can be written here: they need CAP_SYS_ADMIN in the initial
/// user namespace, which root inside `unshare -Ur` does not have. Without them the union's
/// own xattrs go to `user.overlay.*`, as the kernel's `userxattr` mode does.
fn can_set_trusted(dir: std::os::fd::BorrowedFd<'_>) -> bool {
    let key = b"trusted.overlay.strata-probe";
    let here = OsStr::new("");
    let ok = sys::set_xattr(dir, here, key, b"", 0).is_ok();
    if ok {
        let _ = sys::remove_xattr(dir, here, key);
    }
    ok
}

fn open_or_make_dir(parent: std::os::fd::BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let name = OsStr::new(name);
    match sys::mkdir_at(parent, name, 0o700) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
        _ => {}
    }
    sys::open_dir_at(parent, name)
}

#[cfg(test)]
mod tests;
