//! `strata image check [--repair]`: re-verifies the whole store under its lock.
//!
//! - every blob under `blobs/sha256` is re-hashed (streamed) and must match its file name;
//! - every layer's diff_id is re-verified by decompressing the store's copy of the blob it
//!   was unpacked from and hashing the tar (the unpacked tree itself cannot be re-hashed: a
//!   tar is not reproducible from a directory; its `root/` and `layer.json` are checked);
//! - every image's manifest, config, layer blobs and chain of layers must be present, sound
//!   and agree with each other (config diff_ids = the layers' recorded diff_ids);
//! - blobs and layers no image and no build-cache entry references are orphans (what a killed
//!   import or commit leaves), and staging directories no live process holds are debris.
//!
//! Damage is reported and never "repaired" by deleting what an image needs; `--repair`
//! removes orphans and debris only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;

use rustix::fs::{FlockOperation, Mode, OFlags};

use super::digest::{Digest, HashReader, chain_ids};
use super::error::{Result, io_err};
use super::fsutil::remove_path;
use super::oci::{self, Compression, ConfigView, Manifest};
use super::store::{LayerMeta, Store};

/// What `check` found.
#[derive(Default, Debug)]
pub struct CheckReport {
    pub blobs: usize,
    pub layers: usize,
    pub images: usize,
    /// One line per damaged or inconsistent item (the check fails when non-empty).
    pub problems: Vec<String>,
    /// Unreferenced blobs and layers and stale staging directories, with what they are.
    pub orphans: Vec<(PathBuf, String)>,
    /// How many orphans `--repair` removed.
    pub removed: usize,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Streams a file through sha256.
fn hash_file(path: &std::path::Path) -> io::Result<Digest> {
    let f = File::open(path)?;
    let (d, _, _) = HashReader::new(f).finish()?;
    Ok(d)
}

/// The diff_id of a layer blob: the digest of its decompressed tar.
fn diff_id_of(path: &std::path::Path) -> io::Result<Digest> {
    let mut buf = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let decoded: Box<dyn Read> = match Compression::sniff(buf.fill_buf()?) {
        Compression::None => Box::new(buf),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(buf)?),
    };
    let (d, _, _) = HashReader::new(decoded).finish()?;
    Ok(d)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

struct Checker<'a> {
    store: &'a Store,
    report: CheckReport,
    /// Blobs whose content matches their name.
    sound_blobs: BTreeSet<String>,
    /// Layers (chain hex) that are complete, with their recorded diff_id.
    sound_layers: BTreeMap<String, String>,
    /// Blob hex -> diff_id computed from it (a blob can back several chains).
    diff_ids: BTreeMap<String, io::Result<Digest>>,
}

/// Checks the store at `store`; with `repair`, removes what it reports as orphans.
pub fn check(store: &Store, repair: bool) -> Result<CheckReport> {
    let _lock = store.lock()?;
    let mut c = Checker {
        store,
        report: CheckReport::default(),
        sound_blobs: BTreeSet::new(),
        sound_layers: BTreeMap::new(),
        diff_ids: BTreeMap::new(),
    };
    c.blobs()?;
    c.layers()?;
    let (blobs, layers) = c.images();
    c.orphans(&blobs, &layers)?;
    c.staging();
    if repair {
        for (p, _) in &c.report.orphans {
            remove_path(p).map_err(io_err("removing orphan", p))?;
            c.report.removed += 1;
        }
    }
    Ok(c.report)
}

impl Checker<'_> {
    fn problem(&mut self, s: String) {
        self.report.problems.push(s);
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, PathBuf)>> {
        let d = self.store.root().join(dir);
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(io_err("listing", &d))? {
            let e = e.map_err(io_err("listing", &d))?;
            out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
        out.sort();
        Ok(out)
    }

    fn blobs(&mut self) -> Result<()> {
        for (name, path) in self.list("blobs/sha256")? {
            self.report.blobs += 1;
            if !is_hex64(&name) || !path.is_file() {
                self.report
                    .orphans
                    .push((path, "not a blob (bad name or not a file)".into()));
                continue;
            }
            match hash_file(&path) {
                Ok(d) if d.hex() == name => {
                    self.sound_blobs.insert(name);
                }
                Ok(d) => self.problem(format!("blob sha256:{name}: content has digest {d}")),
                Err(e) => self.problem(format!("blob sha256:{name}: reading: {e}")),
            }
        }
        Ok(())
    }

    fn layers(&mut self) -> Result<()> {
        for (name, path) in self.list("layers")? {
            self.report.layers += 1;
            let meta = fs::read(path.join("layer.json"))
                .ok()
                .and_then(|d| serde_json::from_slice::<LayerMeta>(&d).ok());
            let Some(meta) = meta else {
                // A layer is renamed in whole, layer.json inside: without it, never complete.
                self.report
                    .orphans
                    .push((path, "incomplete layer (no layer.json)".into()));
                continue;
            };
            let what = format!("layer sha256:{name}");
            if meta.chain_id.strip_prefix("sha256:") != Some(name.as_str()) {
                self.problem(format!("{what}: layer.json says chain {}", meta.chain_id));
                continue;
            }
            if !path.join("root").is_dir() {
                self.problem(format!("{what}: its unpacked tree root/ is missing"));
                continue;
            }
            let Some(blob) = meta.blob.strip_prefix("sha256:").filter(|h| is_hex64(h)) else {
                self.problem(format!("{what}: layer.json names blob {:?}", meta.blob));
                continue;
            };
            if !self.sound_blobs.contains(blob) {
                self.problem(format!(
                    "{what}: blob {} it was unpacked from is missing or damaged; diff_id not re-verified",
                    meta.blob
                ));
                continue;
            }
            let p = self.store.root().join("blobs/sha256").join(blob);
            let got = self
                .diff_ids
                .entry(blob.to_owned())
                .or_insert_with(|| diff_id_of(&p));
            match got {
                Ok(d) if d.as_str() == meta.diff_id => {
                    self.sound_layers.insert(name, meta.diff_id);
                }
                Ok(d) => {
                    let d = d.to_string();
                    self.problem(format!(
                        "{what}: blob {} decompresses to {d}, layer.json says diff_id {}",
                        meta.blob, meta.diff_id
                    ))
                }
                Err(e) => {
                    let e = e.to_string();
                    self.problem(format!("{what}: decompressing blob {}: {e}", meta.blob))
                }
            }
        }
        Ok(())
    }

    /// Checks each named image; returns the blobs and layers they (and the build cache) use.
    fn images(&mut self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        let images = match self.store.images() {
            Ok(i) => i,
            Err(e) => {
                self.problem(format!("images.json: {e}"));
                BTreeMap::new()
            }
        };
        for (name, rec) in images {
            self.report.images += 1;
            if let Err(why) = self.image(&rec.manifest, &mut blobs, &mut layers) {
                self.problem(format!("image {name}: {why}"));
            }
        }
        self.store.build_cache_refs(&mut blobs, &mut layers);
        (blobs, layers)
    }

    fn doc<T: serde::de::DeserializeOwned>(
        &self,
        d: &Digest,
        what: &str,
    ) -> std::result::Result<T, String> {
        if !self.sound_blobs.contains(d.hex()) {
            return Err(format!("{what} {d} is missing or damaged"));
        }
        let bytes = self.store.read_blob(d).map_err(|e| e.to_string())?;
        oci::parse(&bytes, &format!("{what} {d}")).map_err(|e| e.to_string())
    }

    fn image(
        &self,
        manifest: &str,
        blobs: &mut BTreeSet<String>,
        layers: &mut BTreeSet<String>,
    ) -> std::result::Result<(), String> {
        let md = Digest::parse(manifest).map_err(|e| e.to_string())?;
        blobs.insert(md.hex().to_owned());
        let m: Manifest = self.doc(&md, "manifest")?;
        let cd = m.config.digest().map_err(|e| e.to_string())?;
        blobs.insert(cd.hex().to_owned());
        let config: ConfigView = self.doc(&cd, "config")?;
        let diff_ids = config.diff_ids().map_err(|e| e.to_string())?;
        if diff_ids.len() != m.layers.len() {
            return Err(format!(
                "config lists {} diff_ids for {} layers",
                diff_ids.len(),
                m.layers.len()
            ));
        }
        let chains = chain_ids(&diff_ids);
        layers.extend(chains.iter().map(|c| c.hex().to_owned()));
        let mut errs = Vec::new();
        for ((l, diff), chain) in m.layers.iter().zip(&diff_ids).zip(&chains) {
            let ld = l.digest().map_err(|e| e.to_string())?;
            blobs.insert(ld.hex().to_owned());
            if !self.sound_blobs.contains(ld.hex()) {
                errs.push(format!("layer blob {ld} is missing or damaged"));
            }
            match self.sound_layers.get(chain.hex()) {
                None => errs.push(format!("layer {chain} is missing or damaged")),
                Some(rec) if rec != diff.as_str() => errs.push(format!(
                    "layer {chain} records diff_id {rec}, the config says {diff}"
                )),
                Some(_) => {}
            }
        }
        match errs.is_empty() {
            true => Ok(()),
            false => Err(errs.join("; ")),
        }
    }

    fn orphans(&mut self, blobs: &BTreeSet<String>, layers: &BTreeSet<String>) -> Result<()> {
        for (dir, keep, what) in [("blobs/sha256", blobs, "blob"), ("layers", layers, "layer")] {
            for (name, path) in self.list(dir)? {
                let listed = self.report.orphans.iter().any(|(p, _)| *p == path);
                if !keep.contains(&name) && !listed {
                    let why = format!("{what} no image or build-cache entry uses");
                    self.report.orphans.push((path, why));
                }
            }
        }
        Ok(())
    }

    /// Staging directories no process holds locked (a killed import's), as `Store::open` clears.
    fn staging(&mut self) {
        let Ok(list) = self.list("tmp") else { return };
        for (_, path) in list {
            let held = rustix::fs::open(
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .is_ok_and(|fd| {
                rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err()
            });
            if !held {
                self.report
                    .orphans
                    .push((path, "staging debris of an interrupted write".into()));
            }
        }
    }
}
