//! Directory fds, bounded: the `O_PATH` fds of the layer directories the union works in are a
//! cache, not one fd per directory the kernel holds.
//!
//! A [`Dir`] is one real directory of one layer. It knows how to find itself again: its parent
//! `Dir` and its name there, up to a layer root (or another fixed fd). Its fd is opened when
//! needed, may be closed again when more than `capacity` are open, and is then reopened from
//! the nearest ancestor still open, one component at a time with `O_NOFOLLOW|O_DIRECTORY`, so
//! no symlink a layer holds is ever followed. A reopened fd must be the same directory as
//! before (device and inode), or the reopen fails with ESTALE rather than use another one.
//!
//! - **Paths follow renames.** A directory renamed through the mount is told its new parent
//!   and name ([`Dir::moved`]); its descendants find themselves through it. One real directory
//!   is one `Dir` (they are shared by device and inode), so no stale second copy of a path
//!   can exist. A directory removed through the mount keeps its fd for good
//!   ([`Dir::detach`]): it cannot be found again, and the kernel may still ask about it.
//! - **Eviction** is the CLOCK approximation of LRU: a use only sets a bit (no shared list to
//!   reorder on every request); the queue of open fds is swept from its oldest end, giving a
//!   used fd one more round. An fd in use right now (a [`DirFd`] is alive) or pinned (an open
//!   directory: [`Dir::pin`]) is never closed. Fixed fds (layer roots, the workdir's
//!   directories, files kept after their last name went) are not counted and never closed.
//! - **EMFILE/ENFILE** from any call that makes an fd, run through [`DirCache::retry`], closes
//!   cached fds and tries again: running out of fds is never an error a lookup or readdir sees
//!   while the cache holds any it can give back.
//!
//! (virtiofsd's `--inode-file-handles` reopens by file handle instead: immune to renames, but
//! it needs CAP_DAC_READ_SEARCH, a handle per inode taken at lookup, and a filesystem that
//! gives handles; a path from a cached parent costs one `openat`, and works rootless.)

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use dashmap::DashMap;

use crate::sys::{self, Stat};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Environment variable that sets the cache size (a debug knob: a tiny cache makes every
/// path of eviction and reopening run constantly).
pub const SIZE_ENV: &str = "STRATA_DIR_FDS";

/// The cache size for a process allowed `limit` open fds: all but a quarter (at least 64),
/// left for open files, FUSE channels and the fds calls make and close again.
pub fn size_for_limit(limit: u64) -> usize {
    let limit = limit.min(1 << 30) as usize;
    limit.saturating_sub((limit / 4).max(64)).max(16)
}

/// The size to use: `STRATA_DIR_FDS` if set, else derived from the current `RLIMIT_NOFILE`.
pub fn configured_size() -> usize {
    std::env::var(SIZE_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.max(1))
        .unwrap_or_else(|| size_for_limit(sys::nofile_limit()))
}

/// Counters, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub capacity: usize,
    /// Cached fds open now (pinned and in-use ones included).
    pub open: usize,
    /// The most ever open at once.
    pub peak: usize,
    pub reopens: u64,
    pub evictions: u64,
}

struct Inner {
    capacity: usize,
    open: AtomicUsize,
    peak: AtomicUsize,
    /// Open, unpinned slots, oldest first (may also hold dead or evicted ones, dropped when
    /// met).
    queue: Mutex<VecDeque<Weak<Slot>>>,
    /// One slot per real directory (device, inode), while it lives.
    by_id: DashMap<(u64, u64), Weak<Slot>>,
    reopens: AtomicU64,
    evictions: AtomicU64,
}

/// The cache of directory fds of one union.
pub struct DirCache {
    inner: Arc<Inner>,
}

enum Origin {
    /// A fixed fd: never closed, nothing to reopen from.
    Fixed,
    Child {
        parent: Dir,
        name: OsString,
    },
    /// Removed through the mount: kept open for good.
    Gone,
}

struct Slot {
    cache: Arc<Inner>,
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// Used since the sweep last passed (CLOCK's reference bit).
    referenced: AtomicBool,
    /// In `queue` (changed only with the queue locked).
    queued: AtomicBool,
    pins: AtomicU32,
    key: (u64, u64),
    origin: Mutex<Origin>,
}

/// One real directory of a layer (or a fixed fd); cheap to clone.
#[derive(Clone)]
pub struct Dir(Arc<Slot>);

/// An open fd of a [`Dir`]; it stays open while this lives.
pub struct DirFd(Arc<OwnedFd>);

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl DirCache {
    pub fn new(capacity: usize) -> Self {
        DirCache {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                open: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                queue: Mutex::new(VecDeque::new()),
                by_id: super::inode::table(),
                reopens: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
            }),
        }
    }

    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        Stats {
            capacity: i.capacity,
            open: i.open.load(Ordering::Relaxed),
            peak: i.peak.load(Ordering::Relaxed),
            reopens: i.reopens.load(Ordering::Relaxed),
            evictions: i.evictions.load(Ordering::Relaxed),
        }
    }

    /// A fixed fd (a layer root, a workdir directory, an unlinked file kept for the kernel):
    /// never closed while the `Dir` lives, not counted against the capacity.
    pub fn fixed(&self, fd: OwnedFd) -> Dir {
        Dir(Arc::new(Slot {
            cache: self.inner.clone(),
            fd: Mutex::new(Some(Arc::new(fd))),
            referenced: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            pins: AtomicU32::new(1),
            key: (0, 0),
            origin: Mutex::new(Origin::Fixed),
        }))
    }

    /// Runs `f`, a call that makes an fd; while it fails with EMFILE or ENFILE, closes cached
    /// fds and tries again (as long as there are any to close).
    #[cfg(test)]
    pub fn retry<T>(&self, f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        self.inner.retry(f)
    }

    /// Forgets queue entries of directories gone (after the kernel forgot many nodes).
    pub fn compact(&self) {
        let mut q = lock(&self.inner.queue);
        q.retain(|w| w.strong_count() > 0);
        q.shrink_to_fit();
        drop(q);
        self.inner.by_id.retain(|_, w| w.strong_count() > 0);
        self.inner.by_id.shrink_to_fit();
    }

    /// Closes every fd that may be closed (tests: everything must reopen).
    #[cfg(test)]
    pub fn evict_all(&self) -> usize {
        self.inner.evict(usize::MAX, true)
    }
}

impl Inner {
    /// A slot got an fd: count and queue it, and close older ones beyond the capacity.
    fn opened(&self, slot: &Arc<Slot>) {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        {
            let mut q = lock(&self.queue);
            if slot.pins.load(Ordering::Relaxed) == 0 && !slot.queued.swap(true, Ordering::Relaxed)
            {
                q.push_back(Arc::downgrade(slot));
            }
            // Entries of slots gone are dropped as the sweep meets them; without evictions
            // (a cache bigger than the tree) they are cleared here.
            if q.len() > 2 * n.max(512) {
                q.retain(|w| w.strong_count() > 0);
            }
        }
        if n > self.capacity {
            self.evict(n - self.capacity, false);
        }
    }

    /// Closes up to `want` cached fds, least recently used first (`force`: ignoring recent
    /// use). Returns how many were closed.
    fn evict(&self, want: usize, force: bool) -> usize {
        let mut closed = Vec::new();
        {
            let mut q = lock(&self.queue);
            // Each entry is met at most twice: once to clear its bit, once to close it.
            let mut budget = 2 * q.len() + 1;
            while closed.len() < want && budget > 0 {
                budget -= 1;
                let Some(w) = q.pop_front() else { break };
                let Some(slot) = w.upgrade() else { continue };
                let Ok(mut fd) = slot.fd.try_lock() else {
                    // Being opened or used this instant: later.
                    q.push_back(w);
                    continue;
                };
                let busy = fd.as_ref().is_some_and(|f| Arc::strong_count(f) > 1);
                if fd.is_none() || slot.pins.load(Ordering::Relaxed) > 0 {
                    // Closed already, or pinned (requeued when unpinned).
                    slot.queued.store(false, Ordering::Relaxed);
                } else if busy || (!force && slot.referenced.swap(false, Ordering::Relaxed)) {
                    q.push_back(w);
                } else {
                    closed.extend(fd.take());
                    slot.queued.store(false, Ordering::Relaxed);
                }
                drop(fd);
                // The last reference may go here (a node forgotten meanwhile): its drop takes
                // no queue lock.
                drop(slot);
            }
        }
        let n = closed.len();
        self.open.fetch_sub(n, Ordering::Relaxed);
        self.evictions.fetch_add(n as u64, Ordering::Relaxed);
        // Closed after the queue is free again.
        drop(closed);
        n
    }

    fn retry<T>(&self, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        let mut tries = 0;
        loop {
            match f() {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    tries += 1;
                    let open = self.open.load(Ordering::Relaxed);
                    let freed = self.evict((open / 8).max(16), true);
                    if freed == 0 && (open == 0 || tries > 16) {
                        return Err(e);
                    }
                    if freed == 0 {
                        // Every cached fd is in use right now: give those requests a moment.
                        std::thread::sleep(std::time::Duration::from_millis(tries));
                    }
                }
                r => return r,
            }
        }
    }
}

impl Dir {
    /// Whether two `Dir`s are the same one.
    pub fn ptr_eq(a: &Dir, b: &Dir) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The directory `name` in this one (open as `pfd`), whose lstat is `st`, and an open fd
    /// of it. The same real directory always gives the same `Dir`.
    pub fn child(&self, pfd: &DirFd, name: &OsStr, st: &Stat) -> io::Result<(Dir, DirFd)> {
        let parent = self;
        let inner = &self.0.cache;
        let key = (st.st_dev, st.st_ino);
        if let Some(dir) = inner.by_id.get(&key).and_then(|w| w.upgrade()) {
            return Dir(dir).found_at(parent, name);
        }
        let fd = Arc::new(inner.retry(|| sys::open_dir_at(pfd.as_fd(), name))?);
        let slot = Arc::new(Slot {
            cache: inner.clone(),
            fd: Mutex::new(None),
            referenced: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            pins: AtomicU32::new(0),
            key,
            origin: Mutex::new(Origin::Child {
                parent: parent.clone(),
                name: name.to_owned(),
            }),
        });
        // Another request may have made one meanwhile: one real directory, one `Dir`.
        let other = match inner.by_id.entry(key) {
            dashmap::Entry::Occupied(mut e) => match e.get().upgrade() {
                Some(d) => Some(d),
                None => {
                    e.insert(Arc::downgrade(&slot));
                    None
                }
            },
            dashmap::Entry::Vacant(e) => {
                e.insert(Arc::downgrade(&slot));
                None
            }
        };
        if let Some(other) = other {
            return Dir(other).found_at(parent, name);
        }
        *lock(&slot.fd) = Some(fd.clone());
        inner.opened(&slot);
        Ok((Dir(slot), DirFd(fd)))
    }

    /// An existing `Dir`, just found as `name` in `parent`: that is where it is now.
    fn found_at(self, parent: &Dir, name: &OsStr) -> io::Result<(Dir, DirFd)> {
        {
            let mut o = lock(&self.0.origin);
            if let Origin::Child { parent: p, name: n } = &mut *o
                && !(Dir::ptr_eq(p, parent) && n == name)
            {
                *p = parent.clone();
                *n = name.to_owned();
            }
        }
        let fd = self.fd()?;
        Ok((self, fd))
    }

    fn cached(&self) -> Option<DirFd> {
        let fd = lock(&self.0.fd);
        let fd = fd.as_ref()?;
        self.0.referenced.store(true, Ordering::Relaxed);
        Some(DirFd(fd.clone()))
    }

    /// An open fd of the directory: the cached one, or reopened from its nearest open
    /// ancestor.
    pub fn fd(&self) -> io::Result<DirFd> {
        if let Some(fd) = self.cached() {
            return Ok(fd);
        }
        // A rename through the mount may move an ancestor while we walk: its new place is
        // known once the rename is done, so a path that vanished is tried again.
        let mut tries = 0;
        loop {
            match self.reopen() {
                Err(e)
                    if tries < 3
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ENOTDIR | libc::ESTALE)
                        ) =>
                {
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn reopen(&self) -> io::Result<DirFd> {
        // Up to the nearest ancestor with an fd; then down again, one name at a time.
        let mut chain: Vec<(Dir, OsString)> = Vec::new();
        let mut cur = self.clone();
        let mut base = loop {
            let (parent, name) = match &*lock(&cur.0.origin) {
                Origin::Child { parent, name } => (parent.clone(), name.clone()),
                // A fixed or removed directory is never closed; one that is has no way back.
                Origin::Fixed | Origin::Gone => return Err(errno(libc::ESTALE)),
            };
            chain.push((cur, name));
            if let Some(fd) = parent.cached() {
                break fd;
            }
            cur = parent;
        };
        while let Some((dir, name)) = chain.pop() {
            base = dir.open_below(&base, &name)?;
        }
        Ok(base)
    }

    /// Opens this directory as `name` in the open directory `pfd`, if no one else has
    /// meanwhile.
    fn open_below(&self, pfd: &DirFd, name: &OsStr) -> io::Result<DirFd> {
        let slot = &self.0;
        let fd = {
            let mut g = lock(&slot.fd);
            if let Some(fd) = &*g {
                return Ok(DirFd(fd.clone()));
            }
            let fd = slot.cache.retry(|| sys::open_dir_at(pfd.as_fd(), name))?;
            let st = sys::stat_fd(fd.as_fd())?;
            if (st.st_dev, st.st_ino) != slot.key {
                return Err(errno(libc::ESTALE));
            }
            let fd = Arc::new(fd);
            *g = Some(fd.clone());
            fd
        };
        slot.cache.reopens.fetch_add(1, Ordering::Relaxed);
        slot.cache.opened(slot);
        Ok(DirFd(fd))
    }

    /// The directory was renamed through the mount to `name` in `parent`. Call with a
    /// [`DirFd`] of it held across the rename and this call, so that nothing needs its old
    /// path meanwhile.
    pub fn moved(&self, parent: &Dir, name: &OsStr) {
        let mut o = lock(&self.0.origin);
        if let Origin::Child { .. } = &*o {
            *o = Origin::Child {
                parent: parent.clone(),
                name: name.to_owned(),
            };
        }
    }

    /// Keeps the fd open until [`Dir::unpin`] (an open directory).
    pub fn pin(&self) -> io::Result<()> {
        let _fd = self.fd()?;
        self.0.pins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn unpin(&self) {
        if self.0.pins.fetch_sub(1, Ordering::Relaxed) == 1 {
            let slot = &self.0;
            // (Never an fd lock under the queue lock: a reopen may evict while holding one.)
            if lock(&slot.fd).is_some() {
                let mut q = lock(&slot.cache.queue);
                if slot.pins.load(Ordering::Relaxed) == 0
                    && !slot.queued.swap(true, Ordering::Relaxed)
                {
                    q.push_back(Arc::downgrade(slot));
                }
            }
            // Many open directories closed: back under the bound.
            let open = slot.cache.open.load(Ordering::Relaxed);
            if open > slot.cache.capacity {
                slot.cache.evict(open - slot.cache.capacity, false);
            }
        }
    }

    /// The directory is about to be removed (or moved out of reach) through the mount: its fd
    /// stays open while the `Dir` lives, as the kernel may still ask about it.
    pub fn detach(&self) -> io::Result<DirFd> {
        let fd = self.fd()?;
        self.0.pins.fetch_add(1, Ordering::Relaxed);
        *lock(&self.0.origin) = Origin::Gone;
        self.0.cache.by_id.remove_if(&self.0.key, |_, w| {
            std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.0))
        });
        Ok(fd)
    }

    /// Lists the directory (see [`sys::read_dir`]); running out of fds evicts others.
    pub fn read_dir(&self, f: impl FnMut(sys::DirEntry<'_>) -> io::Result<()>) -> io::Result<()> {
        let fd = self.fd()?;
        let readable = self.0.cache.retry(|| sys::open_dir_for_read(fd.as_fd()))?;
        drop(fd);
        sys::read_dir_open(readable, f)
    }

    /// Runs `f` (a call making an fd) with this cache's EMFILE handling.
    pub fn retry<T>(&self, f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        self.0.cache.retry(f)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let had = self
            .fd
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        if matches!(
            self.origin.get_mut().unwrap_or_else(|p| p.into_inner()),
            Origin::Fixed
        ) {
            return;
        }
        if had {
            self.cache.open.fetch_sub(1, Ordering::Relaxed);
        }
        let me: *const Slot = self;
        self.cache
            .by_id
            .remove_if(&self.key, |_, w| std::ptr::eq(w.as_ptr(), me));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn root(cache: &DirCache, p: &Path) -> Dir {
        cache.fixed(sys::open_root(p).unwrap())
    }

    /// The `Dir` of `path` (relative, '/'-separated) below `root`.
    fn dir_at(root: &Dir, path: &str) -> Dir {
        let mut cur = root.clone();
        for c in path.split('/') {
            let pfd = cur.fd().unwrap();
            let st = sys::stat_at(pfd.as_fd(), OsStr::new(c)).unwrap();
            let (d, _) = cur.child(&pfd, OsStr::new(c), &st).unwrap();
            cur = d;
        }
        cur
    }

    fn names(d: &Dir) -> Vec<String> {
        let mut v = Vec::new();
        d.read_dir(|e| {
            v.push(String::from_utf8_lossy(e.name).into_owned());
            Ok(())
        })
        .unwrap();
        v.sort();
        v
    }

    fn ino(d: &Dir) -> u64 {
        sys::stat_fd(d.fd().unwrap().as_fd()).unwrap().st_ino
    }

    #[test]
    fn bounded_and_reopened() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            fs::create_dir_all(t.path().join(format!("d{i}/sub"))).unwrap();
            fs::write(t.path().join(format!("d{i}/sub/f{i}")), "x").unwrap();
        }
        let cache = DirCache::new(4);
        let r = root(&cache, t.path());
        let dirs: Vec<Dir> = (0..50).map(|i| dir_at(&r, &format!("d{i}/sub"))).collect();
        let s = cache.stats();
        assert!(s.open <= 4, "{s:?}");
        assert!(
            s.peak <= 5,
            "at most one over while a new one is opened: {s:?}"
        );
        assert!(s.evictions >= 96, "{s:?}");
        // Every one still finds its own directory, reopened through evicted parents.
        for (i, d) in dirs.iter().enumerate() {
            assert_eq!(names(d), [format!("f{i}")]);
        }
        assert!(cache.stats().reopens >= 50);
        assert!(cache.stats().open <= 4);
        drop(dirs);
        assert_eq!(cache.stats().open, 0, "fds of dropped dirs are closed");
    }

    #[test]
    fn same_directory_same_dir() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a/b")).unwrap();
        let cache = DirCache::new(8);
        let r = root(&cache, t.path());
        let one = dir_at(&r, "a/b");
        let two = dir_at(&r, "a/b");
        assert!(Dir::ptr_eq(&one, &two));
        assert_eq!(cache.stats().open, 2);
    }

    #[test]
    fn renamed_directories_are_found_after_eviction() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        fs::create_dir_all(t.path().join("x")).unwrap();
        let cache = DirCache::new(64);
        let r = root(&cache, t.path());
        let b = dir_at(&r, "a/b");
        let c = dir_at(&r, "a/b/c");
        let x = dir_at(&r, "x");
        let c_ino = ino(&c);
        // a/b -> x/moved, as a rename through the mount does it.
        {
            let _held = b.fd().unwrap();
            fs::rename(t.path().join("a/b"), t.path().join("x/moved")).unwrap();
            b.moved(&x, OsStr::new("moved"));
        }
        // b, c and x (a went with its last user, b's old origin).
        assert_eq!(cache.evict_all(), 3);
        assert_eq!(ino(&c), c_ino);
        assert_eq!(names(&b), ["c"]);
        // A new directory where the old one was is not taken for it.
        fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        cache.evict_all();
        assert_eq!(ino(&c), c_ino);
    }

    #[test]
    fn a_path_that_leads_elsewhere_is_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a")).unwrap();
        let cache = DirCache::new(64);
        let r = root(&cache, t.path());
        let a = dir_at(&r, "a");
        cache.evict_all();
        // Replaced behind the union's back: another directory, then a symlink, by that name.
        fs::rename(t.path().join("a"), t.path().join("old")).unwrap();
        fs::create_dir(t.path().join("a")).unwrap();
        assert_eq!(
            a.fd().err().and_then(|e| e.raw_os_error()),
            Some(libc::ESTALE)
        );
        fs::remove_dir(t.path().join("a")).unwrap();
        std::os::unix::fs::symlink("old", t.path().join("a")).unwrap();
        assert!(a.fd().is_err(), "a symlink is never followed");
    }

    #[test]
    fn pinned_in_use_and_detached_fds_stay_open() {
        let t = tempfile::tempdir().unwrap();
        for n in ["p", "u", "g", "o"] {
            fs::create_dir(t.path().join(n)).unwrap();
        }
        let cache = DirCache::new(64);
        let r = root(&cache, t.path());
        let p = dir_at(&r, "p");
        let u = dir_at(&r, "u");
        let g = dir_at(&r, "g");
        let o = dir_at(&r, "o");
        p.pin().unwrap();
        let held = u.fd().unwrap();
        let _kept = g.detach().unwrap();
        fs::remove_dir(t.path().join("g")).unwrap();
        assert_eq!(cache.evict_all(), 1, "only the unused, unpinned one");
        assert!(lock(&o.0.fd).is_none());
        for d in [&p, &u, &g] {
            assert!(lock(&d.0.fd).is_some());
        }
        // The removed one still answers, with no link left.
        assert_eq!(sys::stat_fd(g.fd().unwrap().as_fd()).unwrap().st_nlink, 0);
        drop(held);
        p.unpin();
        assert_eq!(cache.evict_all(), 2);
        assert_eq!(cache.stats().open, 1, "the removed one");
    }

    #[test]
    fn emfile_evicts_and_retries() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        let cache = DirCache::new(64);
        let r = root(&cache, t.path());
        let d = dir_at(&r, "d");
        let mut calls = 0;
        let got = cache.retry(|| {
            calls += 1;
            if lock(&d.0.fd).is_some() {
                Err(errno(libc::EMFILE))
            } else {
                Ok(7)
            }
        });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(calls, 2);
        // Nothing left to give back: the error is returned, not retried forever.
        let e = cache.retry(|| -> io::Result<()> { Err(errno(libc::ENFILE)) });
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::ENFILE));
    }

    #[test]
    fn size_from_limit() {
        assert_eq!(size_for_limit(256), 192);
        assert_eq!(size_for_limit(1024), 768);
        assert_eq!(size_for_limit(20), 16);
        assert!(size_for_limit(u64::MAX) > 1 << 28);
    }
}
