//! The image store: a content-addressed blob store, layers unpacked once into directories
//! named by chain ID (shared by every image that uses them), and a small index of names.
//!
//! ```text
//! ROOT/lock                      flock: held exclusively while the store changes
//! ROOT/tmp/<id>/                 one import's or commit's staging (flocked while in use)
//! ROOT/blobs/sha256/<hex>        manifests, configs and layer blobs as imported
//! ROOT/layers/<chain hex>/root/  a layer's unpacked tree (OCI `.wh.` whiteouts kept)
//! ROOT/layers/<chain hex>/layer.json
//! ROOT/images.json               name -> manifest and config digests
//! ```
//! Everything enters the store by `rename` from `tmp/`, under the lock, after it was
//! verified, so the store never holds a half-written layer or blob and two imports of the
//! same layer cannot corrupt each other (the second finds it there and drops its copy).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::digest::{Digest, chain_ids};
use super::error::{ImageError, Result, invalid, io_err};
use super::fsutil::remove_path;
use super::oci::{self, ConfigView, Manifest};

/// `layers/<chain>/layer.json`.
#[derive(Serialize, Deserialize)]
pub(crate) struct LayerMeta {
    pub(crate) chain_id: String,
    pub(crate) diff_id: String,
    /// The blob this layer was unpacked from and checked against.
    pub(crate) blob: String,
}

/// One named image.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ImageRecord {
    pub manifest: String,
    pub config: String,
}

#[derive(Serialize, Deserialize, Default)]
struct ImagesFile {
    images: BTreeMap<String, ImageRecord>,
}

pub struct Store {
    root: PathBuf,
}

/// The store's lock, held exclusively while it lives.
pub struct StoreLock(#[allow(dead_code)] File);

/// A staging directory under `ROOT/tmp`, flocked so that a cleaner can tell it is in use;
/// removed when dropped (whatever was not renamed into the store goes with it).
pub struct Staging {
    pub path: PathBuf,
    _lock: OwnedFd,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_path(&self.path);
    }
}

/// An image resolved from the store: its documents and its layers.
pub struct StoredImage {
    pub name: String,
    pub record: ImageRecord,
    pub manifest: Manifest,
    pub manifest_digest: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ConfigView,
    pub diff_ids: Vec<Digest>,
    /// Chain IDs, bottom layer first.
    pub chain_ids: Vec<Digest>,
}

/// What `rm` removed.
#[derive(Default, Debug)]
pub struct GcReport {
    pub layers: usize,
    pub blobs: usize,
    /// Interrupted downloads removed from `partial/`.
    pub partial: usize,
}

static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// `$XDG_DATA_HOME/strata` (or `~/.local/share/strata`), `/var/lib/strata` for root.
    pub fn default_root() -> PathBuf {
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/strata");
        }
        match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d).join("strata"),
            None => {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
                PathBuf::from(home).join(".local/share/strata")
            }
        }
    }

    /// Opens (creating if needed) the store at `root`, and clears staging directories that
    /// a crashed import left behind.
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["tmp", "blobs/sha256", "layers"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating store directory", &p))?;
        }
        let store = Store {
            root: root.to_owned(),
        };
        store.clear_stale_staging();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub(crate) fn layer_entry(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// The unpacked tree of the layer with this chain ID (a lower directory for a mount).
    pub fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.layer_entry(chain).join("root")
    }

    pub fn has_layer(&self, chain: &Digest) -> bool {
        self.layer_entry(chain).join("layer.json").exists()
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let data = fs::read(&p).map_err(io_err("reading blob", &p))?;
        let actual = Digest::of(&data);
        if actual != *d {
            // The store itself was damaged: say so rather than trust it.
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Takes the store lock (blocking while another strata changes the store).
    pub fn lock(&self) -> Result<StoreLock> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("opening lock", &p))?;
        rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .map_err(|e| io_err("locking", &p)(e.into()))?;
        Ok(StoreLock(f))
    }

    /// A fresh staging directory.
    pub fn staging(&self) -> Result<Staging> {
        loop {
            let id = format!(
                "{}-{}-{}",
                std::process::id(),
                STAGE_SEQ.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            );
            let path = self.root.join("tmp").join(id);
            fs::create_dir(&path).map_err(io_err("creating staging directory", &path))?;
            let fd = match rustix::fs::open(
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                // A cleaner took it for stale between mkdir and open: start over.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io_err("opening staging directory", &path)(e.into())),
            };
            rustix::fs::flock(&fd, FlockOperation::LockExclusive)
                .map_err(|e| io_err("locking staging directory", &path)(e.into()))?;
            // A cleaner may have taken it for stale between mkdir and flock: then start over.
            let ours = fs::symlink_metadata(&path)
                .is_ok_and(|m| rustix::fs::fstat(&fd).is_ok_and(|st| st.st_ino == m.ino()));
            if ours {
                return Ok(Staging { path, _lock: fd });
            }
        }
    }

    fn clear_stale_staging(&self) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(fd) = rustix::fs::open(
                &p,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                let _ = remove_path(&p);
                continue;
            };
            if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
                let _ = remove_path(&p);
            }
        }
    }

    /// All named images.
    pub fn images(&self) -> Result<BTreeMap<String, ImageRecord>> {
        let p = self.root.join("images.json");
        match fs::read(&p) {
            Ok(data) => Ok(oci::parse::<ImagesFile>(&data, &p.display().to_string())?.images),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("reading", &p)(e)),
        }
    }

    /// Replaces the index of names (call with the lock held).
    pub fn write_images(
        &self,
        _lock: &StoreLock,
        images: &BTreeMap<String, ImageRecord>,
    ) -> Result<()> {
        let doc = ImagesFile {
            images: images.clone(),
        };
        let data = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        self.write_atomic(&self.root.join("images.json"), &data)
    }

    /// Writes a file through a temporary name and a rename.
    pub fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let staging = self.staging()?;
        let tmp = staging.path.join("file");
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(data).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
    }

    /// Publishes an image whose layers are in the store: its config and manifest become
    /// blobs and each of `names` points at it (call with the lock held). A name taken from
    /// another image may leave that one's layers unused: they are collected. Returns the
    /// manifest's digest.
    pub fn publish(
        &self,
        lock: &StoreLock,
        config_bytes: &[u8],
        config_digest: &Digest,
        manifest_bytes: &[u8],
        names: &[String],
    ) -> Result<Digest> {
        self.put_blob(config_bytes)?;
        let manifest_digest = self.put_blob(manifest_bytes)?;
        let mut images = self.images()?;
        let mut replaced = false;
        for n in names {
            let rec = ImageRecord {
                manifest: manifest_digest.to_string(),
                config: config_digest.to_string(),
            };
            replaced |= images.insert(n.clone(), rec).is_some();
        }
        self.write_images(lock, &images)?;
        if replaced {
            self.gc(lock)?;
        }
        Ok(manifest_digest)
    }

    /// Adds a small blob (manifest, config) if it is not there yet.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if !self.has_blob(&d) {
            self.write_atomic(&self.blob_path(&d), data)?;
        }
        Ok(d)
    }

    /// Moves a verified blob file into the store (kept if an equal one is already there).
    pub fn commit_blob(&self, _lock: &StoreLock, staged: &Path, d: &Digest) -> Result<()> {
        let dest = self.blob_path(d);
        if dest.exists() {
            return Ok(());
        }
        fs::rename(staged, &dest).map_err(io_err("renaming blob into the store", &dest))
    }

    /// Moves a verified, unpacked layer (a directory with `root/` inside) into the store,
    /// unless another import put the same layer there first.
    pub fn commit_layer(
        &self,
        _lock: &StoreLock,
        staged: &Path,
        chain: &Digest,
        diff_id: &Digest,
        blob: &Digest,
    ) -> Result<()> {
        if self.has_layer(chain) {
            return Ok(());
        }
        let meta = LayerMeta {
            chain_id: chain.to_string(),
            diff_id: diff_id.to_string(),
            blob: blob.to_string(),
        };
        let mp = staged.join("layer.json");
        fs::write(&mp, serde_json::to_vec_pretty(&meta).unwrap_or_default())
            .map_err(io_err("writing", &mp))?;
        let dest = self.layer_entry(chain);
        // A leftover without layer.json (never complete) makes way.
        if dest.exists() {
            remove_path(&dest).map_err(io_err("removing incomplete layer", &dest))?;
        }
        fs::rename(staged, &dest).map_err(io_err("renaming layer into the store", &dest))
    }

    /// Whether the layer in the store was verified (at its import) as what `blob`
    /// decompresses to: then a later import of the same blob need not read it again.
    pub fn layer_verified_with(&self, chain: &Digest, blob: &Digest) -> bool {
        let p = self.layer_entry(chain).join("layer.json");
        fs::read(p)
            .ok()
            .and_then(|d| serde_json::from_slice::<LayerMeta>(&d).ok())
            .is_some_and(|m| m.blob == blob.as_str())
    }

    /// Resolves a name (`NAME` means `NAME:latest`) or an image ID prefix.
    pub fn get(&self, name: &str) -> Result<StoredImage> {
        let images = self.images()?;
        let (name, record) = match oci::normalize_name(name)
            .ok()
            .and_then(|n| images.get(&n).map(|r| (n, r)))
        {
            Some((n, r)) => (n, r.clone()),
            None => {
                let id = name.strip_prefix("sha256:").unwrap_or(name);
                let hits: Vec<_> = images
                    .iter()
                    .filter(|(_, r)| {
                        id.len() >= 6 && r.config.trim_start_matches("sha256:").starts_with(id)
                    })
                    .collect();
                match hits.as_slice() {
                    [(n, r)] => ((*n).clone(), (*r).clone()),
                    _ => return Err(ImageError::NotFound(name.to_owned())),
                }
            }
        };
        let manifest_digest = Digest::parse(&record.manifest)?;
        let manifest: Manifest = oci::parse(
            &self.read_blob(&manifest_digest)?,
            &format!("manifest {manifest_digest}"),
        )?;
        let config_digest = manifest.config.digest()?;
        let config_bytes = self.read_blob(&config_digest)?;
        let config: ConfigView = oci::parse(&config_bytes, &format!("config {config_digest}"))?;
        let diff_ids = config.diff_ids()?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(
                format!("image {name}"),
                "config diff_ids and manifest layers differ in number",
            ));
        }
        let chain_ids = chain_ids(&diff_ids);
        Ok(StoredImage {
            name,
            record,
            manifest,
            manifest_digest,
            config_bytes,
            config,
            diff_ids,
            chain_ids,
        })
    }

    /// The layer directories of an image, top layer first (the order of `--lower`).
    pub fn lower_dirs(&self, img: &StoredImage) -> Result<Vec<PathBuf>> {
        img.chain_ids
            .iter()
            .rev()
            .map(|c| {
                if self.has_layer(c) {
                    Ok(self.layer_dir(c))
                } else {
                    Err(invalid(
                        format!("image {}", img.name),
                        format!("layer {c} is missing from the store"),
                    ))
                }
            })
            .collect()
    }

    /// Gives the image `src` the name `dst` too (`strata image tag`); returns the name.
    pub fn tag(&self, src: &str, dst: &str) -> Result<String> {
        let dst = oci::normalize_name(dst)?;
        let img = self.get(src)?;
        let lock = self.lock()?;
        let mut images = self.images()?;
        if !images.contains_key(&img.name) {
            return Err(ImageError::NotFound(src.to_owned()));
        }
        let old = images.insert(dst.clone(), img.record);
        self.write_images(&lock, &images)?;
        if old.is_some() {
            // The name moved: what only the old image used may now be unused.
            self.gc(&lock)?;
        }
        Ok(dst)
    }

    /// Removes a name, then every layer and blob no remaining image uses.
    pub fn remove(&self, name: &str) -> Result<GcReport> {
        let img = self.get(name)?;
        let lock = self.lock()?;
        let mut images = self.images()?;
        images.remove(&img.name);
        self.write_images(&lock, &images)?;
        self.gc(&lock)
    }

    /// Deletes layers and blobs no named image references (call with the lock held).
    pub fn gc(&self, _lock: &StoreLock) -> Result<GcReport> {
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut layers: BTreeSet<String> = BTreeSet::new();
        for (name, r) in self.images()? {
            let img = self.get(&name)?;
            blobs.insert(Digest::parse(&r.manifest)?.hex().to_owned());
            blobs.insert(img.manifest.config.digest()?.hex().to_owned());
            for l in &img.manifest.layers {
                blobs.insert(l.digest()?.hex().to_owned());
            }
            layers.extend(img.chain_ids.iter().map(|c| c.hex().to_owned()));
        }
        self.build_cache_refs(&mut blobs, &mut layers);
        let mut report = GcReport::default();
        for (dir, keep, count) in [
            ("blobs/sha256", &blobs, &mut report.blobs),
            ("layers", &layers, &mut report.layers),
        ] {
            let d = self.root.join(dir);
            for e in fs::read_dir(&d).map_err(io_err("listing", &d))?.flatten() {
                if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    let p = e.path();
                    remove_path(&p).map_err(io_err("removing unused", &p))?;
                    *count += 1;
                }
            }
        }
        report.partial = self.clean_partial()?;
        Ok(report)
    }

    /// Removes the interrupted downloads in `partial/` (`registry::resume`), except those a
    /// running pull holds (flocked): a later pull of them starts from byte 0.
    fn clean_partial(&self) -> Result<usize> {
        let d = self.root.join("partial");
        let Ok(rd) = fs::read_dir(&d) else {
            return Ok(0);
        };
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path();
            let Ok(f) = File::options().read(true).write(true).open(&p) else {
                continue;
            };
            // Held by the lock while unlinked: a pull that opened it before cannot lock it
            // and checks, once locked, that its path still names the file.
            if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                fs::remove_file(&p).map_err(io_err("removing partial download", &p))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Where `strata build` keeps its cache: one `<key>.json` per step.
    pub fn build_cache_dir(&self) -> PathBuf {
        self.root.join("build-cache")
    }

    /// The layers and blobs build-cache entries name (`layer.chain`, `layer.digest`): the
    /// cache outlives the images built with it until it is pruned.
    pub(crate) fn build_cache_refs(
        &self,
        blobs: &mut BTreeSet<String>,
        layers: &mut BTreeSet<String>,
    ) {
        let Ok(rd) = fs::read_dir(self.build_cache_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(v) = fs::read(e.path()).map(|d| serde_json::from_slice::<serde_json::Value>(&d))
            else {
                continue;
            };
            let Ok(v) = v else { continue };
            let hex = |k: &str| {
                v["layer"][k]
                    .as_str()
                    .map(|d| d.trim_start_matches("sha256:").to_owned())
            };
            blobs.extend(hex("digest"));
            layers.extend(hex("chain"));
        }
    }

    /// Drops the whole build cache, then what only it kept (`strata image prune`).
    pub fn prune_build_cache(&self) -> Result<GcReport> {
        let lock = self.lock()?;
        let d = self.build_cache_dir();
        if d.exists() {
            remove_path(&d).map_err(io_err("removing", &d))?;
        }
        self.gc(&lock)
    }

    /// Bytes used by the files below `path` (du-like, hard links counted once per walk).
    pub fn disk_usage(path: &Path) -> u64 {
        fn walk(p: &Path, seen: &mut BTreeSet<(u64, u64)>) -> u64 {
            let Ok(m) = fs::symlink_metadata(p) else {
                return 0;
            };
            if !seen.insert((m.dev(), m.ino())) {
                return 0;
            }
            let mut n = m.blocks() * 512;
            if m.is_dir()
                && let Ok(rd) = fs::read_dir(p)
            {
                for e in rd.flatten() {
                    n += walk(&e.path(), seen);
                }
            }
            n
        }
        walk(path, &mut BTreeSet::new())
    }
}

impl AsFd for Staging {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self._lock.as_fd()
    }
}
