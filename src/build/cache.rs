//! The build cache: `ROOT/build-cache/<key>.json` per finished step, where the key hashes the
//! parent's key with what the step depends on. An entry names the layer it made (kept by the
//! store's gc until `strata image prune`) and the time it was made (so a rebuild from the
//! cache gives the same config, hence the same image ID).

use serde::{Deserialize, Serialize};

use crate::image::store::StoreLock;
use crate::image::{Digest, Store};

use super::Result;

/// A layer in the store, as a manifest and config name it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    pub diff_id: String,
    /// The gzip blob.
    pub digest: String,
    pub size: u64,
    /// Its chain ID (the directory in the store).
    pub chain: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Entry {
    pub created: String,
    pub layer: Option<LayerRef>,
}

/// The key of a step: the parent's key and each part, length-prefixed (so parts cannot run
/// into each other).
pub fn key(parent: &Digest, parts: &[&[u8]]) -> Digest {
    let mut buf = parent.as_str().as_bytes().to_vec();
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
        buf.extend_from_slice(p);
    }
    Digest::of(&buf)
}

/// The entry for `key`, if it is there and its layer still is.
pub fn lookup(store: &Store, key: &Digest) -> Option<Entry> {
    let p = store.build_cache_dir().join(format!("{}.json", key.hex()));
    let e: Entry = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    if let Some(l) = &e.layer {
        let chain = Digest::parse(&l.chain).ok()?;
        let blob = Digest::parse(&l.digest).ok()?;
        if !store.has_layer(&chain) || !store.has_blob(&blob) {
            return None;
        }
    }
    Some(e)
}

/// Records a finished step (with the store lock held, so gc sees the layer referenced as
/// soon as it is in the store).
pub fn record(store: &Store, _lock: &StoreLock, key: &Digest, e: &Entry) -> Result<()> {
    let dir = store.build_cache_dir();
    std::fs::create_dir_all(&dir).map_err(super::io_err("creating", &dir))?;
    let data = serde_json::to_vec_pretty(e).unwrap_or_default();
    store.write_atomic(&dir.join(format!("{}.json", key.hex())), &data)?;
    Ok(())
}
