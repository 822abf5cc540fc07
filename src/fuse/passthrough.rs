//! Which I/O mode each open handle uses, under the kernel's rules for FUSE passthrough
//! (fs/fuse/iomode.c): all passthrough opens of one inode share one backing file, an inode
//! has either passthrough opens or cached (normal read/write) opens, never both at once, and
//! while an inode has a backing file every open of it must be a passthrough one (EIO
//! otherwise). Shaped like fuser's `examples/passthrough.rs` `BackingCache`, with the cached
//! opens counted too and each backing's source remembered. Generic over the backing type so it
//! is tested without a kernel.
//!
//! The source matters because a lower file's backing must never serve an open of the upper
//! copy: fuse-overlayfs 2.0 does that and its writes land in the image layer.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Where the file a handle opened lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A lower layer's file, read-only.
    Lower,
    /// The upper copy, or the only copy in a mount without an upper.
    Current,
}

/// What an open asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The daemon's read path (no passthrough for this open). If the inode already has a
    /// backing of its current data, that one is shared instead (the kernel requires it).
    Cached,
    /// Passthrough to the file just opened.
    Passthrough(Source),
}

/// A backing file registered with the kernel, and what it was opened from.
pub struct Backing<B> {
    pub id: B,
    source: Source,
}

/// The answer for one open.
pub enum Mode<B> {
    Passthrough(Arc<Backing<B>>),
    /// The daemon's read path; `keep_cache` unless the page cache may hold data older than a
    /// passthrough write.
    Cached {
        keep_cache: bool,
    },
    /// No mode is both allowed by the kernel and correct (a writer while a lower file's
    /// backing is held, which would share it and map the lower file): ETXTBSY.
    Refused,
}

/// What a handle holds until it is released.
enum Held<B> {
    Passthrough(Arc<Backing<B>>),
    /// A cached open of this inode.
    Cached(u64),
}

struct State<B> {
    /// One backing file per inode while any handle uses it.
    backing: HashMap<u64, Weak<Backing<B>>>,
    /// Cached opens per inode: passthrough is refused while any exists.
    cached: HashMap<u64, u32>,
    /// Writers announced with `begin_write` and not yet released, per inode: no new lower
    /// backing is made while one exists.
    writers: HashMap<u64, u32>,
    handles: HashMap<u64, (Held<B>, bool)>,
}

pub struct PassthroughCache<B> {
    // One lock: only opens and releases take it, never reads or writes.
    state: Mutex<State<B>>,
    /// Signalled by each release of a lower backing's handle, for writers waiting on it.
    released: Condvar,
}

/// How long a writer waits for the releases of a lower file's readers. The kernel frees its
/// side of a backing when the file is closed, but sends RELEASE in the background: without the
/// wait, `cat f; echo x >> f` could meet a reader already closed.
const RELEASE_WAIT: Duration = Duration::from_millis(500);

impl<B> Default for PassthroughCache<B> {
    fn default() -> Self {
        PassthroughCache {
            state: Mutex::new(State {
                backing: HashMap::new(),
                cached: HashMap::new(),
                writers: HashMap::new(),
                handles: HashMap::new(),
            }),
            released: Condvar::new(),
        }
    }
}

fn bump(map: &mut HashMap<u64, u32>, ino: u64, up: bool) {
    if up {
        *map.entry(ino).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(&ino) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&ino);
        }
    }
}

impl<B> PassthroughCache<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Announces an open for writing of `ino`, before it copies up or truncates anything.
    /// Err(ETXTBSY) while a lower file's backing is held for it (after waiting `RELEASE_WAIT`
    /// for its readers' releases): the kernel would make the writer share that backing (and
    /// map the lower file for its mmaps). Otherwise the writer
    /// is counted until `open` records it (`writer: true`) and `release` lets it go, or
    /// `end_write` if its open fails.
    pub fn begin_write(&self, ino: u64) -> io::Result<()> {
        let deadline = Instant::now() + RELEASE_WAIT;
        let mut s = self.lock();
        while Self::holds_lower(&s, ino) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from_raw_os_error(libc::ETXTBSY));
            }
            s = match self.released.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        bump(&mut s.writers, ino, true);
        Ok(())
    }

    /// Whether a lower file's backing is held for `ino`.
    #[cfg(test)]
    pub fn lower_held(&self, ino: u64) -> bool {
        Self::holds_lower(&self.lock(), ino)
    }

    fn holds_lower(s: &State<B>, ino: u64) -> bool {
        s.backing
            .get(&ino)
            .and_then(Weak::upgrade)
            .is_some_and(|b| b.source == Source::Lower)
    }

    /// Withdraws a `begin_write` whose open failed.
    pub fn end_write(&self, ino: u64) {
        bump(&mut self.lock().writers, ino, false);
    }

    /// Records the open `fh` of inode `ino` and chooses its mode. `make` opens a new backing
    /// for the file just opened; when it fails the open is a cached one. `writer` says the
    /// open was announced with `begin_write`.
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        want: Want,
        writer: bool,
        make: impl FnOnce() -> io::Result<B>,
    ) -> Mode<B> {
        let mut s = self.lock();
        let live = s.backing.get(&ino).and_then(Weak::upgrade);
        let cached = s.cached.get(&ino).is_some_and(|n| *n > 0);
        let chosen = match (want, live) {
            _ if cached => None,
            // A live backing serves every open of its inode (the kernel's rule). A lower one
            // is shared with readers only: while it is held, the data cannot change (writers
            // and truncation are refused), so the upper copy, if any, holds the same bytes.
            (_, Some(b)) if !writer || b.source == Source::Current => Some(b),
            // A writer that raced `begin_write`'s check.
            (_, Some(_)) => {
                bump(&mut s.writers, ino, false);
                return Mode::Refused;
            }
            (Want::Cached, None) => None,
            (Want::Passthrough(Source::Lower), None) if s.writers.contains_key(&ino) => None,
            (Want::Passthrough(src), None) => match make() {
                Ok(id) => Some(Arc::new(Backing { id, source: src })),
                Err(_) => {
                    // The page cache may predate passthrough writes to the upper copy.
                    bump(&mut s.cached, ino, true);
                    s.handles.insert(fh, (Held::Cached(ino), writer));
                    return Mode::Cached { keep_cache: false };
                }
            },
        };
        match chosen {
            Some(b) => {
                s.backing.insert(ino, Arc::downgrade(&b));
                s.handles.insert(fh, (Held::Passthrough(b.clone()), writer));
                Mode::Passthrough(b)
            }
            None => {
                bump(&mut s.cached, ino, true);
                s.handles.insert(fh, (Held::Cached(ino), writer));
                Mode::Cached { keep_cache: true }
            }
        }
    }

    /// Forgets handle `fh` of inode `ino`; the last passthrough handle of an inode frees its
    /// backing.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut s = self.lock();
        let Some((held, writer)) = s.handles.remove(&fh) else {
            return;
        };
        if writer {
            bump(&mut s.writers, ino, false);
        }
        match held {
            Held::Cached(ino) => bump(&mut s.cached, ino, false),
            Held::Passthrough(b) => {
                let lower = b.source == Source::Lower;
                drop(b);
                if s.backing.get(&ino).is_some_and(|w| w.strong_count() == 0) {
                    s.backing.remove(&ino);
                }
                // Also when an open still holds a clone for a moment: the waiter checks again.
                if lower {
                    self.released.notify_all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A backing file stand-in that counts how many were made.
    fn maker(made: &Cell<u32>) -> impl FnOnce() -> io::Result<u32> + '_ {
        move || {
            made.set(made.get() + 1);
            Ok(made.get())
        }
    }

    fn backing(m: Mode<u32>) -> Option<u32> {
        match m {
            Mode::Passthrough(b) => Some(b.id),
            _ => None,
        }
    }

    const UPPER: Want = Want::Passthrough(Source::Current);
    const LOWER: Want = Want::Passthrough(Source::Lower);

    #[test]
    fn passthrough_opens_of_an_inode_share_one_backing() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        assert_eq!(backing(c.open(7, 1, UPPER, false, maker(&made))), Some(1));
        assert_eq!(backing(c.open(7, 2, UPPER, false, maker(&made))), Some(1));
        assert_eq!(made.get(), 1);
        c.release(7, 1);
        c.release(7, 2);
        // All released: the next open makes a new backing.
        assert_eq!(backing(c.open(7, 3, UPPER, false, maker(&made))), Some(2));
    }

    #[test]
    fn a_cached_open_keeps_passthrough_away_until_released() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        assert!(matches!(
            c.open(7, 1, Want::Cached, false, maker(&made)),
            Mode::Cached { keep_cache: true }
        ));
        assert_eq!(backing(c.open(7, 2, UPPER, false, maker(&made))), None);
        assert_eq!(backing(c.open(8, 3, UPPER, false, maker(&made))), Some(1));
        c.release(7, 1);
        c.release(7, 2);
        assert_eq!(backing(c.open(7, 4, UPPER, false, maker(&made))), Some(2));
    }

    #[test]
    fn a_failed_backing_makes_a_cached_open_without_the_old_cache() {
        let c = PassthroughCache::<u32>::default();
        let m = c.open(7, 1, UPPER, false, || Err(io::Error::other("EPERM")));
        assert!(matches!(m, Mode::Cached { keep_cache: false }));
        // Counted as cached: the inode stays in one mode.
        assert_eq!(backing(c.open(7, 2, UPPER, false, || Ok(1))), None);
        c.release(7, 1);
        c.release(7, 2);
        c.release(7, 99);
        assert_eq!(backing(c.open(7, 3, UPPER, false, || Ok(1))), Some(1));
    }

    /// fuse-overlayfs 2.0's corruption: a writer must never get the lower file's backing.
    #[test]
    fn a_writer_is_refused_while_a_lower_backing_is_held() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        assert_eq!(backing(c.open(7, 1, LOWER, false, maker(&made))), Some(1));
        assert_eq!(backing(c.open(7, 2, LOWER, false, maker(&made))), Some(1));
        assert_eq!(
            c.begin_write(7).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ETXTBSY))
        );
        assert!(c.lower_held(7));
        // A writer that raced the check is refused too, never given backing 1.
        assert!(matches!(
            c.open(7, 3, UPPER, true, maker(&made)),
            Mode::Refused
        ));
        // A reader of the upper copy (same bytes while the lower is held) shares it.
        assert_eq!(backing(c.open(7, 5, UPPER, false, maker(&made))), Some(1));
        c.release(7, 5);
        c.release(7, 1);
        c.release(7, 2);
        assert!(!c.lower_held(7));
        c.begin_write(7).unwrap();
        assert_eq!(backing(c.open(7, 4, UPPER, true, maker(&made))), Some(2));
    }

    /// The kernel sends RELEASE after close returns: a writer right behind a closed reader
    /// waits for it instead of failing.
    #[test]
    fn a_writer_waits_for_a_release_on_its_way() {
        let c = Arc::new(PassthroughCache::default());
        assert_eq!(backing(c.open(7, 1, LOWER, false, || Ok(1))), Some(1));
        let late = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late.release(7, 1);
        });
        let start = Instant::now();
        c.begin_write(7).unwrap();
        assert!(start.elapsed() < RELEASE_WAIT, "woken by the release");
        t.join().unwrap();
    }

    #[test]
    fn readers_of_a_copied_up_file_share_the_upper_backing() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        c.begin_write(7).unwrap();
        assert_eq!(backing(c.open(7, 1, UPPER, true, maker(&made))), Some(1));
        // A reader that opened the lower file just before the copy-up, in either mode.
        assert_eq!(backing(c.open(7, 2, LOWER, false, maker(&made))), Some(1));
        assert_eq!(
            backing(c.open(7, 3, Want::Cached, false, maker(&made))),
            Some(1)
        );
        assert_eq!(made.get(), 1);
    }

    #[test]
    fn no_lower_backing_is_made_while_a_writer_is_announced() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        c.begin_write(7).unwrap();
        assert!(matches!(
            c.open(7, 1, LOWER, false, maker(&made)),
            Mode::Cached { keep_cache: true }
        ));
        assert_eq!(made.get(), 0);
        c.release(7, 1);
        c.end_write(7);
        assert_eq!(backing(c.open(7, 2, LOWER, false, maker(&made))), Some(1));
    }
}
