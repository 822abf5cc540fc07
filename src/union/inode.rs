//! The inode table: FUSE node ids, lookup counts and stable `st_ino`.
//!
//! A node's id is its stable `st_ino` (the root's is 1, as FUSE fixes it), so every name of
//! one file (hard links) is one node; a generation counter tells apart two files that had the
//! same number at different times. `st_ino` is derived from the real inode of the topmost copy
//! (like kernel overlayfs with all layers on one filesystem), or recorded at copy-up, so it is
//! the same after remount and equals what readdir reports; layers on other filesystems get
//! their device index in the high bits (the kernel's "xino" idea) so numbers cannot collide.

use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::dircache::Dir;
use super::layer::DirCopy;

/// A concurrent map sharded for this machine. (DashMap's own default asks std for the CPU
/// count, which reads cgroup files: milliseconds at every start on cgroup v1.)
pub fn table<K: Eq + std::hash::Hash, V>() -> DashMap<K, V> {
    DashMap::with_shard_amount((crate::sys::cpu_count() * 4).next_power_of_two().max(4))
}

/// FUSE's id for the root directory.
pub const ROOT_ID: u64 = 1;

/// Where a node's content lives.
pub enum Place {
    /// A directory: its copies, topmost first, down to the first opaque one.
    Dir(Vec<DirCopy>),
    /// Any other file: the layer, directory and name holding it (no fd per file is kept
    /// open). The name differs from the merged one for hidden links and index entries; it is
    /// empty for a file whose last name went while the kernel still held it: `dir` is then a
    /// fixed `O_PATH` fd of the file itself.
    Leaf {
        layer: usize,
        dir: Dir,
        name: OsString,
    },
}

/// Where a metacopy file's data lives: a regular file in a lower layer. The upper copy holds
/// only the metadata (owner, mode, times, xattrs) until the file is first opened for writing.
#[derive(Clone)]
pub struct LowerData {
    pub layer: usize,
    pub dir: Dir,
    pub name: OsString,
}

pub struct NodeState {
    /// Parent directory (None for the root).
    pub parent: Option<Arc<Node>>,
    /// Name in the parent (for a lower hard-link group: the first name we met).
    pub name: OsString,
    pub place: Place,
    /// For a directory renamed in the upper layer: its upper copy's redirect, from which the
    /// next rename builds its own.
    pub redirect: Option<Vec<u8>>,
    /// For a metacopy file (upper copy without data): where its data is.
    pub data: Option<LowerData>,
}

pub struct Node {
    /// FUSE node id: equal to `ino`, except for the root (always 1).
    pub id: u64,
    /// Stable `st_ino` reported to users.
    pub ino: u64,
    pub generation: u64,
    pub is_dir: bool,
    /// Set once the last name is gone: open handles keep working, stat shows nlink 0.
    pub unlinked: std::sync::atomic::AtomicBool,
    /// Open file handles on this node.
    pub opens: std::sync::atomic::AtomicU32,
    /// A link in the staging dir that keeps an unlinked upper file reachable while it is open
    /// or has other names (not counted in `st_nlink`); removed when no longer needed.
    pub hidden_link: std::sync::Mutex<Option<OsString>>,
    /// How many lookups the kernel holds on us (FUSE forget protocol).
    lookups: AtomicU64,
    /// Per-node lock: requests on different nodes never contend.
    pub state: RwLock<NodeState>,
}

impl Node {
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, NodeState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, NodeState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Maps (st_dev, st_ino) of real files to stable union inode numbers.
#[derive(Default)]
pub struct InoMap {
    devs: RwLock<Vec<u64>>,
}

impl InoMap {
    pub fn map(&self, dev: u64, ino: u64) -> u64 {
        let idx = {
            let devs = self.devs.read().unwrap_or_else(|p| p.into_inner());
            devs.iter().position(|&d| d == dev)
        };
        let idx = idx.unwrap_or_else(|| {
            let mut devs = self.devs.write().unwrap_or_else(|p| p.into_inner());
            match devs.iter().position(|&d| d == dev) {
                Some(i) => i,
                None => {
                    devs.push(dev);
                    devs.len() - 1
                }
            }
        });
        let mapped = if idx == 0 {
            ino
        } else {
            ino ^ ((idx as u64) << 56)
        };
        // 0 is not a valid node id and 1 is the root's: move such files out of the way.
        if mapped <= ROOT_ID {
            mapped | (0xff << 56)
        } else {
            mapped
        }
    }
}

/// Node ids are the stable inode numbers themselves: fuser reports a node's id as its
/// `st_ino`, and keying by inode makes every name of one file (hard links) one node.
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// Bumped for every node created, so an id reused for another file after the kernel
    /// forgot the first one is never confused with it (FUSE generation numbers).
    generation: AtomicU64,
}

impl NodeTable {
    pub fn new() -> Self {
        NodeTable {
            nodes: table(),
            generation: AtomicU64::new(1),
        }
    }

    /// The root is node 1 whatever its real inode number (FUSE fixes it); it reports `ino`.
    pub fn insert_root(&self, ino: u64, state: NodeState) -> Arc<Node> {
        let node = Arc::new(Node {
            id: ROOT_ID,
            ino,
            generation: 0,
            is_dir: true,
            // The root is never forgotten.
            unlinked: Default::default(),
            opens: Default::default(),
            hidden_link: Default::default(),
            lookups: AtomicU64::new(1 << 62),
            state: RwLock::new(state),
        });
        self.nodes.insert(ROOT_ID, node.clone());
        node
    }

    /// Whether a node with this id is still held (the kernel has not forgotten it).
    pub fn contains(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> io::Result<Arc<Node>> {
        self.nodes
            .get(&id)
            .map(|n| n.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Returns the node for `ino`, creating it with `make` if new, and counts one lookup.
    /// The shard lock is held across, so a concurrent forget cannot drop the node between our
    /// finding it and counting the lookup.
    pub fn intern(&self, ino: u64, is_dir: bool, make: impl FnOnce() -> NodeState) -> Arc<Node> {
        match self.nodes.entry(ino) {
            Entry::Occupied(e) => {
                let node = e.get();
                node.lookups.fetch_add(1, Ordering::Relaxed);
                node.clone()
            }
            Entry::Vacant(e) => {
                let node = Arc::new(Node {
                    id: ino,
                    ino,
                    generation: self.generation.fetch_add(1, Ordering::Relaxed),
                    is_dir,
                    unlinked: Default::default(),
                    opens: Default::default(),
                    hidden_link: Default::default(),
                    lookups: AtomicU64::new(1),
                    state: RwLock::new(make()),
                });
                e.insert(node.clone());
                node
            }
        }
    }

    /// Drops `n` lookups; the node leaves the table when none remain (and is returned).
    pub fn forget(&self, id: u64, n: u64) -> Option<Arc<Node>> {
        if id == ROOT_ID {
            return None;
        }
        if let Entry::Occupied(e) = self.nodes.entry(id) {
            let prev = e
                .get()
                .lookups
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some(c.saturating_sub(n))
                })
                .unwrap_or(0);
            if prev <= n {
                return Some(e.remove());
            }
        }
        None
    }

    pub fn count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node held now (a snapshot).
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.iter().map(|e| e.value().clone()).collect()
    }

    /// Gives back table capacity left over after many nodes were forgotten.
    pub fn shrink(&self) {
        self.nodes.shrink_to_fit();
    }
}
