//! The FUSE adapter: decode a request, call the union, encode the reply. Errors become FUSE
//! replies in exactly one place (`errno`).

mod counts;
mod passthrough;
mod reply;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::options::{IdMapping, OVERFLOW_ID};
use crate::sys::Stat;
use crate::union::{self, Caller, Opened, RenameMode, SetAttr, Union};
pub use counts::OP_COUNTS_ENV;
use counts::{Op, OpCounts};
use passthrough::{Mode, PassthroughCache, Source, Want};
use reply::{answer, attr, empty, errno, kind_of, negative_attr, set_time};

pub struct StrataFs {
    union: Union,
    /// fuse-overlayfs's uid/gid mapping and squashing: owners as shown in the mount.
    ids: IdMapping,
    /// How long the kernel may cache entries and attributes.
    ttl: Duration,
    /// Whether to try FUSE passthrough for file I/O (real root only; decided at init).
    passthrough: bool,
    /// `passthrough=lower`: lower files opened for reading use passthrough even with an
    /// upper (writing or truncating one then waits for its readers: ETXTBSY).
    lower_passthrough: bool,
    /// The I/O mode of each open handle (passthrough or cached), by the kernel's rules.
    passthrough_cache: PassthroughCache<BackingId>,
    /// `volatile` or `fsync=0`: fsync is a no-op (fuse-overlayfs's meaning, and the kernel's).
    no_fsync: bool,
    /// `noacl`: POSIX ACLs are neither enforced nor stored.
    noacl: bool,
    /// fuse-overlayfs's `noxattrs=1`: no xattrs at all through the mount.
    no_xattrs: bool,
    /// FUSE_NO_OPENDIR_SUPPORT granted: opendir answers ENOSYS once and the kernel then opens
    /// directories itself (no OPENDIR/RELEASEDIR round trips, listings cached as before).
    no_opendir: bool,
    /// Without opendir, the listings being read: (directory, offset the next READDIR will
    /// ask for) -> the union's directory handle, kept between the calls of one listing.
    implicit_dirs: dashmap::DashMap<(u64, u64), u64>,
    /// Requests per type, when `STRATA_OP_COUNTS` asks for them.
    counts: Option<OpCounts>,
}

/// Listings read part way without opendir that keep their handle (each pins the directory's
/// fds); past this many they are all let go, and a listing continued after that starts a
/// new snapshot.
const IMPLICIT_DIRS_MAX: usize = 256;

/// The xattrs that hold POSIX ACLs.
const ACL_XATTRS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

impl StrataFs {
    pub fn new(union: Union, ttl: Duration, try_passthrough: bool, ids: IdMapping) -> Self {
        StrataFs {
            ids,
            union,
            ttl,
            passthrough: try_passthrough,
            lower_passthrough: false,
            passthrough_cache: PassthroughCache::default(),
            no_fsync: false,
            noacl: false,
            no_xattrs: false,
            no_opendir: false,
            implicit_dirs: dashmap::DashMap::new(),
            counts: OpCounts::from_env(),
        }
    }

    /// Applies the options served here: `volatile`/`fsync=0`, `noacl`, `noxattrs=1`.
    pub fn tune(mut self, o: &crate::options::MountOptions) -> Self {
        self.no_fsync = o.volatile || o.no_fsync;
        self.noacl = o.noacl;
        self.no_xattrs = o.no_xattrs;
        self.passthrough &= o.passthrough != crate::options::Passthrough::Off;
        self.lower_passthrough = o.passthrough == crate::options::Passthrough::Lower;
        self
    }

    /// Under `noxattrs=1` every xattr, under `noacl` an ACL's, is refused as on a filesystem
    /// without them.
    fn xattr_refused(&self, name: &OsStr) -> bool {
        self.no_xattrs || (self.noacl && ACL_XATTRS.contains(&name.as_bytes()))
    }

    /// How an open of `ino` is served: passthrough where the kernel's rules and exactness
    /// allow it, the daemon's read path otherwise (the rules are in `fuse::passthrough`).
    fn open_mode(
        &self,
        ino: u64,
        o: &Opened,
        writer: bool,
        open_backing: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> Mode<BackingId> {
        let want = if !self.passthrough {
            Want::Cached
        } else if !o.on_lower || !self.union.has_upper() {
            // The upper copy, or a lower file nothing can copy up: its data stays put.
            Want::Passthrough(Source::Current)
        } else if self.lower_passthrough {
            Want::Passthrough(Source::Lower)
        } else {
            Want::Cached
        };
        self.passthrough_cache
            .open(ino, o.fh, want, writer, || open_backing(&o.file))
    }

    fn count(&self, op: Op) {
        if let Some(c) = &self.counts {
            c.add(op);
        }
    }

    /// Runs one READDIR(PLUS) `read(handle, &mut last_next_offset)` on the directory's handle:
    /// the kernel's own (`fh`), or without opendir the one this listing started with (a new
    /// one at offset 0 or when none continues at `offset`). Such a handle lives until its
    /// listing is read to the end, so a listing read in many calls stays one snapshot.
    fn listing(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        read: impl FnOnce(u64, &mut u64) -> io::Result<()>,
    ) -> io::Result<()> {
        if fh != 0 || !self.no_opendir {
            return read(fh, &mut 0);
        }
        // The implicit handles below are all `ino`'s own, so their releases cannot fail.
        let h = match self.implicit_dirs.remove(&(ino, offset)) {
            Some((_, h)) if offset != 0 => h,
            old => {
                if let Some((_, h)) = old {
                    let _ = self.union.releasedir(ino, h);
                }
                self.union.opendir(ino)?
            }
        };
        let mut last = offset;
        let r = read(h, &mut last);
        // Continued only when the reply was full (it stopped before the end) and moved on.
        if r.is_ok() && last != offset {
            if self.implicit_dirs.len() >= IMPLICIT_DIRS_MAX {
                // Listings abandoned part way (closedir, seekdir): let them go.
                let stale: Vec<(u64, u64)> = self.implicit_dirs.iter().map(|e| *e.key()).collect();
                for (dir, off) in stale {
                    if let Some((_, old)) = self.implicit_dirs.remove(&(dir, off)) {
                        let _ = self.union.releasedir(dir, old);
                    }
                }
            }
            if let Some(old) = self.implicit_dirs.insert((ino, last), h) {
                let _ = self.union.releasedir(ino, old);
            }
        } else {
            let _ = self.union.releasedir(ino, h);
        }
        r
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each capability is optional: an old kernel lacking one still mounts.
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_DO_READDIRPLUS,
            // The kernel uses readdirplus only where stat follows listing (ls -l, find).
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // The kernel checks and caches POSIX ACLs itself, as it does for kernel overlayfs
            // (which passes the layers' ACLs through): no getxattr round trip per `ls -l`.
            InitFlags::FUSE_POSIX_ACL,
        ] {
            if cap == InitFlags::FUSE_POSIX_ACL && (self.noacl || self.no_xattrs) {
                continue;
            }
            let _ = config.add_capabilities(cap);
        }
        // STRATA_OPENDIR=1 keeps the OPENDIR round trips (to compare).
        self.no_opendir = std::env::var_os("STRATA_OPENDIR").is_none_or(|v| v != "1")
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
                .is_ok();
        if self.passthrough {
            self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        self.union.end_session();
        let s = self.union.dir_fd_stats();
        log::info!(
            "directory fd cache: {} of {} open at unmount, at most {}; {} reopened, {} closed early",
            s.open,
            s.capacity,
            s.peak,
            s.reopens,
            s.evictions
        );
        if let Some(c) = &self.counts {
            c.report();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count(Op::Lookup);
        match self.union.lookup(parent.0, name) {
            Ok((node, st)) => {
                // fuser takes the node id from `attr.ino`; they are equal by construction.
                reply.entry(&self.ttl, &self.attr(&st), Generation(node.generation));
            }
            // A negative entry the kernel may cache for the TTL (node id 0): every change
            // to the union goes through this mount, so the kernel sees creations itself.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                reply.entry(&self.ttl, &negative_attr(), Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.count(Op::Forget);
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count(Op::Getattr);
        let r = match fh {
            Some(fh) => self.union.getattr_fh(ino.0, fh.0),
            None => self.union.getattr(ino.0),
        };
        answer(r, reply, |reply, st| reply.attr(&self.ttl, &self.attr(&st)))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.count(Op::Readlink);
        answer(self.union.readlink(ino.0), reply, |reply, t| reply.data(&t))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.count(Op::Open);
        // Writers are tracked only where lower backings exist (`passthrough=lower`): in the
        // exact mode no writer can meet one, and each open for writing saves the bookkeeping.
        let writer = self.lower_passthrough && crate::union::opens_for_writing(flags.0);
        if writer && let Err(e) = self.passthrough_cache.begin_write(ino.0) {
            return reply.error(errno(e));
        }
        let o = match self.union.open(ino.0, flags.0) {
            Ok(v) => v,
            Err(e) => {
                if writer {
                    self.passthrough_cache.end_write(ino.0);
                }
                return reply.error(errno(e));
            }
        };
        match self.open_mode(ino.0, &o, writer, |f| reply.open_backing(f)) {
            // The kernel refuses any other open flag with passthrough (EIO).
            Mode::Passthrough(b) => {
                reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &b.id)
            }
            // Lower files never change while mounted, and every write goes through this page
            // cache: it may outlive an open.
            Mode::Cached { keep_cache: true } => {
                reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Mode::Cached { keep_cache: false } => {
                reply.opened(FileHandle(o.fh), FopenFlags::empty())
            }
            Mode::Refused => {
                let _ = self.union.release(ino.0, o.fh);
                reply.error(Errno::ETXTBSY)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.count(Op::Read);
        answer(
            self.union.read(ino.0, fh.0, offset, size),
            reply,
            |reply, data| reply.data(&data),
        )
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Flush);
        // Nothing to do on close (locks are the kernel's, data goes straight to the layer):
        // ENOSYS tells the kernel to stop sending FLUSH, one round trip less per close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Release);
        // Only the inode's own handle is closed, its passthrough backing with it.
        if let Err(e) = self.union.release(ino.0, fh.0) {
            return reply.error(errno(e));
        }
        self.passthrough_cache.release(ino.0, fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count(Op::Opendir);
        if self.no_opendir {
            // The kernel then opens every directory without asking, with FOPEN_KEEP_CACHE |
            // FOPEN_CACHE_DIR (fs/fuse/file.c), and sends READDIR with handle 0.
            return reply.error(Errno::ENOSYS);
        }
        match self.union.opendir(ino.0) {
            // Listings may live in the page cache across opens: the kernel drops them itself
            // when an entry changes through this mount, and nothing else changes a layer.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.count(Op::Readdir);
        let r = self.listing(ino.0, fh.0, offset, |fh, last| {
            self.union
                .readdir(ino.0, fh, offset, |ino, next, kind, name| {
                    let full =
                        reply.add(INodeNo(ino), next, kind_of(kind), OsStr::from_bytes(name));
                    if !full {
                        *last = next;
                    }
                    full
                })
        });
        answer(r, reply, |reply, ()| reply.ok())
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.count(Op::Readdirplus);
        let r = self.listing(ino.0, fh.0, offset, |fh, last| {
            self.union
                .readdirplus(ino.0, fh, offset, |next, name, node, st| {
                    let a = self.attr(st);
                    let full = reply.add(
                        INodeNo(node.id),
                        next,
                        OsStr::from_bytes(name),
                        &self.ttl,
                        &a,
                        Generation(node.generation),
                    );
                    if !full {
                        *last = next;
                    }
                    full
                })
        });
        answer(r, reply, |reply, ()| reply.ok())
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Releasedir);
        empty(self.union.releasedir(ino.0, fh.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count(Op::Statfs);
        answer(self.union.statfs(), reply, |reply, s| {
            reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            )
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.count(Op::Getxattr);
        if self.xattr_refused(name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut buf = vec![0u8; size as usize];
        match self.union.getxattr(ino.0, name.as_bytes(), &mut buf) {
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.count(Op::Listxattr);
        if self.no_xattrs {
            return reply.error(Errno::EOPNOTSUPP);
        }
        match self.union.listxattr(ino.0) {
            Ok(list) if size == 0 => reply.size(list.len() as u32),
            Ok(list) if list.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(list) => reply.data(&list),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.count(Op::Setattr);
        // chown to an id the mapping does not cover is refused, as in a user namespace.
        let (Some(uid), Some(gid)) = (
            uid.map_or(Some(None), |u| self.ids.stored_uid(u).map(Some)),
            gid.map_or(Some(None), |g| self.ids.stored_gid(g).map(Some)),
        ) else {
            return reply.error(Errno::EINVAL);
        };
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
        };
        // A size change is a write: refused while readers hold a lower backing of the file.
        let truncates = self.lower_passthrough && size.is_some();
        if truncates && let Err(e) = self.passthrough_cache.begin_write(ino.0) {
            return reply.error(errno(e));
        }
        let r = self.union.setattr(ino.0, &a);
        if truncates {
            self.passthrough_cache.end_write(ino.0);
        }
        answer(r, reply, |reply, st| reply.attr(&self.ttl, &self.attr(&st)))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.count(Op::Mknod);
        let who = self.caller(req);
        let r = self.union.mknod(parent.0, name, mode, rdev as u64, who);
        self.entry(r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.count(Op::Mkdir);
        let who = self.caller(req);
        self.entry(self.union.mkdir(parent.0, name, mode, who), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count(Op::Unlink);
        empty(self.union.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count(Op::Rmdir);
        empty(self.union.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.count(Op::Symlink);
        let who = self.caller(req);
        let r = self.union.symlink(parent.0, name, target.as_os_str(), who);
        self.entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Rename);
        use fuser::RenameFlags as F;
        // As kernel overlayfs: NOREPLACE and EXCHANGE, nothing else.
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == F::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == F::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::EINVAL);
        };
        empty(
            self.union
                .rename(parent.0, name, newparent.0, newname, mode),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.count(Op::Link);
        self.entry(self.union.link(ino.0, newparent.0, newname), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        self.count(Op::Create);
        let who = self.caller(req);
        let (node, st, fh, file) = match self.union.create(parent.0, name, mode, flags, who) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let generation = Generation(node.generation);
        let o = Opened {
            fh,
            file,
            on_lower: false,
        };
        // A new inode: no lower backing can be held for it.
        match self.open_mode(node.id, &o, false, |f| reply.open_backing(f)) {
            Mode::Passthrough(b) => reply.created_passthrough(
                &self.ttl,
                &self.attr(&st),
                generation,
                FileHandle(fh),
                FopenFlags::empty(),
                &b.id,
            ),
            _ => reply.created(
                &self.ttl,
                &self.attr(&st),
                generation,
                FileHandle(fh),
                FopenFlags::empty(),
            ),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        self.count(Op::Write);
        answer(
            self.union.write(ino.0, fh.0, offset, data),
            reply,
            |reply, n| reply.written(n as u32),
        )
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        self.count(Op::CopyFileRange);
        answer(
            self.union.copy_file_range(
                (ino_in.0, fh_in.0),
                offset_in,
                (ino_out.0, fh_out.0),
                offset_out,
                len,
            ),
            reply,
            |reply, n| reply.written(n as u32),
        )
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Fallocate);
        empty(
            self.union.fallocate(ino.0, fh.0, mode, offset, length),
            reply,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Setxattr);
        if self.xattr_refused(name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        empty(
            self.union.setxattr(ino.0, name.as_bytes(), value, flags),
            reply,
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count(Op::Removexattr);
        if self.xattr_refused(name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        empty(self.union.removexattr(ino.0, name.as_bytes()), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Fsyncdir);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Fsync);
        if self.no_fsync {
            return reply.ok();
        }
        empty(self.union.fsync(ino.0, fh.0, datasync), reply);
    }
}

impl StrataFs {
    /// Attributes as the mount shows them (owners through the id mapping).
    fn attr(&self, st: &Stat) -> FileAttr {
        let mut a = attr(st);
        if !self.ids.is_identity() {
            a.uid = self.ids.shown_uid(a.uid);
            a.gid = self.ids.shown_gid(a.gid);
        }
        a
    }

    /// The caller, as owner to store. One the mapping does not cover is stored as the
    /// overflow id, as fuse-overlayfs does: podman creates a `--uidmap` container's `/etc`
    /// as host root, outside the range, and chowns it afterwards.
    fn caller(&self, req: &Request) -> Caller {
        Caller {
            uid: self.ids.stored_uid(req.uid()).unwrap_or(OVERFLOW_ID),
            gid: self.ids.stored_gid(req.gid()).unwrap_or(OVERFLOW_ID),
        }
    }

    fn entry(&self, r: io::Result<(Arc<union::Node>, Stat)>, reply: ReplyEntry) {
        answer(r, reply, |reply, (node, st)| {
            reply.entry(&self.ttl, &self.attr(&st), Generation(node.generation))
        })
    }
}
