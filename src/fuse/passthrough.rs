//! Which I/O mode each open handle uses, under the kernel's rules for FUSE passthrough
//! (fs/fuse/iomode.c): all passthrough opens of one inode share one backing file, and an inode
//! has either passthrough opens or cached (normal read/write) opens, never both at once.
//! Shaped like fuser's `examples/passthrough.rs` `BackingCache`, with the cached opens counted
//! too. Generic over the backing type so it is tested without a kernel.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

/// What a handle holds until it is released.
enum Held<B> {
    Passthrough(Arc<B>),
    /// A cached open of this inode.
    Cached(u64),
}

struct State<B> {
    /// One backing file per inode while any handle uses it.
    backing: HashMap<u64, Weak<B>>,
    /// Cached opens per inode: passthrough is refused while any exists.
    cached: HashMap<u64, u32>,
    handles: HashMap<u64, Held<B>>,
}

pub struct PassthroughCache<B> {
    // One lock: only opens and releases take it, never reads or writes.
    state: Mutex<State<B>>,
}

impl<B> Default for PassthroughCache<B> {
    fn default() -> Self {
        PassthroughCache {
            state: Mutex::new(State {
                backing: HashMap::new(),
                cached: HashMap::new(),
                handles: HashMap::new(),
            }),
        }
    }
}

impl<B> PassthroughCache<B> {
    /// Records the open `fh` of inode `ino` and chooses its mode: the backing shared with the
    /// inode's other passthrough opens, a new one from `make`, or None for a cached open
    /// (when passthrough is not `allowed`, the inode has cached opens, or `make` fails).
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        allowed: bool,
        make: impl FnOnce() -> io::Result<B>,
    ) -> Option<Arc<B>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = if !allowed || s.cached.get(&ino).is_some_and(|n| *n > 0) {
            None
        } else if let Some(id) = s.backing.get(&ino).and_then(Weak::upgrade) {
            Some(id)
        } else {
            make().ok().map(Arc::new)
        };
        let held = match &id {
            Some(id) => {
                s.backing.insert(ino, Arc::downgrade(id));
                Held::Passthrough(id.clone())
            }
            None => {
                *s.cached.entry(ino).or_insert(0) += 1;
                Held::Cached(ino)
            }
        };
        s.handles.insert(fh, held);
        id
    }

    /// Forgets handle `fh`; the last passthrough handle of an inode frees its backing.
    pub fn release(&self, fh: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.handles.remove(&fh) {
            Some(Held::Cached(ino)) => {
                if let Some(n) = s.cached.get_mut(&ino) {
                    *n -= 1;
                    if *n == 0 {
                        s.cached.remove(&ino);
                    }
                }
            }
            Some(Held::Passthrough(id)) => {
                drop(id);
                s.backing.retain(|_, w| w.strong_count() > 0);
            }
            None => {}
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

    #[test]
    fn passthrough_opens_of_an_inode_share_one_backing() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        let a = c.open(7, 1, true, maker(&made)).unwrap();
        let b = c.open(7, 2, true, maker(&made)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made.get(), 1);
        drop((a, b));
        c.release(1);
        c.release(2);
        // All released: the next open makes a new backing.
        assert_eq!(*c.open(7, 3, true, maker(&made)).unwrap(), 2);
    }

    #[test]
    fn a_cached_open_keeps_passthrough_away_until_released() {
        let c = PassthroughCache::default();
        let made = Cell::new(0);
        assert!(c.open(7, 1, false, maker(&made)).is_none());
        assert!(
            c.open(7, 2, true, maker(&made)).is_none(),
            "mixed modes on one inode"
        );
        assert!(
            c.open(8, 3, true, maker(&made)).is_some(),
            "another inode is free"
        );
        c.release(1);
        c.release(2);
        assert!(c.open(7, 4, true, maker(&made)).is_some());
    }

    #[test]
    fn a_failed_backing_makes_a_cached_open() {
        let c = PassthroughCache::<u32>::default();
        assert!(
            c.open(7, 1, true, || Err(io::Error::other("EPERM")))
                .is_none()
        );
        // Counted as cached: the inode stays in one mode.
        assert!(c.open(7, 2, true, || Ok(1)).is_none());
        c.release(1);
        c.release(2);
        c.release(99);
        assert!(c.open(7, 3, true, || Ok(1)).is_some());
    }
}
