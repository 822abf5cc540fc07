//! `strata image import`: OCI layouts and docker-save archives into the store.
//!
//! Steps: read the source's documents (every blob checked against its digest) -> for each
//! layer the store lacks, stream the blob once through `layer::stage` (digest, diff_id,
//! unpack into the staging directory) -> take the store lock -> rename staged layers and blobs
//! into place -> record the names. A failed check aborts before the lock is taken; the
//! staging directory goes away with everything in it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::digest::{Digest, chain_ids};
use super::error::{ImageError, Result, invalid};
use super::layer::{self, LayerJob, Staged};
use super::oci::{self, ConfigView, Descriptor, Index, Manifest};
use super::progress;
use super::source::Source;
use super::store::Store;
use super::unpack::UnpackOptions;

/// One image found in the source (or fetched from a registry).
pub(crate) struct Found {
    pub(crate) names: Vec<String>,
    /// Ref names as annotated (maybe only a tag), for `--name` selection.
    pub(crate) refs: Vec<String>,
    pub(crate) config_bytes: Vec<u8>,
    pub(crate) config_digest: Digest,
    /// The original OCI manifest, kept as is when it uses OCI media types only.
    pub(crate) manifest: Option<(Manifest, Vec<u8>)>,
    /// Where each layer blob is in the source, with its descriptor when there is one.
    pub(crate) layers: Vec<(String, Option<Descriptor>)>,
}

/// Where `stage_image` reads the layers it has to stage itself.
pub(crate) trait LayerSource {
    fn layer(&self, rel: &str) -> Result<(Box<dyn std::io::Read + '_>, u64)>;
}

impl LayerSource for Source {
    fn layer(&self, rel: &str) -> Result<(Box<dyn std::io::Read + '_>, u64)> {
        self.reader(rel)
    }
}

/// The key of a staged layer in `stage_image`'s map: a blob unpacks to one layer directory
/// per chain (per position in a stack).
pub(crate) fn layer_key(blob: &str, chain: &Digest) -> String {
    format!("{blob}@{chain}")
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// The name an image gets from the archive's file name when it carries none.
fn stem(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let base = [".tar.gz", ".tgz", ".tar.zst", ".tar", ".oci"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(&base)
        .to_owned();
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "image".into()
    } else {
        clean
    }
}

fn read_oci(src: &Source) -> Result<Vec<Found>> {
    let index: Index = oci::parse(&src.read("index.json")?, "index.json")?;
    let mut out = Vec::new();
    for desc in &index.manifests {
        let mut refs = Vec::new();
        for key in [oci::ANN_CONTAINERD_NAME, oci::ANN_REF_NAME] {
            if let Some(v) = desc.annotations.get(key) {
                refs.push(v.clone());
            }
        }
        let manifest_desc = pick_manifest(src, desc, 0)?;
        let d = manifest_desc.digest()?;
        let bytes = src.read_blob(&d, Some(manifest_desc.size))?;
        let manifest: Manifest = oci::parse(&bytes, &format!("manifest {d}"))?;
        let cd = manifest.config.digest()?;
        let config_bytes = src.read_blob(&cd, Some(manifest.config.size))?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            oci::check_layer_media_type(l)?;
            layers.push((Source::blob_rel(&l.digest()?), Some(l.clone())));
        }
        let names = refs
            .iter()
            .map(|r| match r.contains([':', '/']) {
                true => oci::normalize_name(r),
                false => oci::normalize_name(&format!("{}:{r}", stem(src.path()))),
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Found {
            names,
            refs,
            config_bytes,
            config_digest: cd,
            manifest: Some((manifest, bytes)),
            layers,
        });
    }
    Ok(out)
}

/// A manifest descriptor, choosing this machine's platform inside (nested) indexes.
fn pick_manifest(src: &Source, desc: &Descriptor, depth: usize) -> Result<Descriptor> {
    if !desc.is_index() {
        return Ok(desc.clone());
    }
    if depth > 4 {
        return Err(invalid(
            format!("index {}", desc.digest),
            "nested too deeply",
        ));
    }
    let d = desc.digest()?;
    let index: Index = oci::parse(&src.read_blob(&d, Some(desc.size))?, &format!("index {d}"))?;
    let fits = |m: &&Descriptor| {
        m.platform
            .as_ref()
            .is_none_or(|p| p.os == "linux" && p.architecture == host_arch())
    };
    let m = index.manifests.iter().find(fits).ok_or_else(|| {
        invalid(
            format!("index {d}"),
            format!("no manifest for linux/{}", host_arch()),
        )
    })?;
    pick_manifest(src, m, depth + 1)
}

#[derive(serde::Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn read_docker(src: &Source) -> Result<Vec<Found>> {
    let entries: Vec<DockerEntry> = oci::parse(&src.read("manifest.json")?, "manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        let config_bytes = src.read(&e.config)?;
        let cd = Digest::of(&config_bytes);
        // The config is named by its digest (`<hex>.json`, or `blobs/sha256/<hex>`): check it.
        let base = e.config.rsplit('/').next().unwrap_or(&e.config);
        let named = base.strip_suffix(".json").unwrap_or(base);
        if named.len() == 64 && named.bytes().all(|b| b.is_ascii_hexdigit()) && named != cd.hex() {
            return Err(ImageError::DigestMismatch {
                expected: format!("sha256:{named}"),
                actual: cd.to_string(),
            });
        }
        let names = e
            .repo_tags
            .iter()
            .flatten()
            .map(|t| oci::normalize_name(t))
            .collect::<Result<Vec<_>>>()?;
        out.push(Found {
            refs: names.clone(),
            names,
            config_bytes,
            config_digest: cd,
            manifest: None,
            layers: e.layers.into_iter().map(|l| (l, None)).collect(),
        });
    }
    Ok(out)
}

/// Imports every image of the OCI layout or docker archive at `path` (or, with `name`, the
/// one it selects, or the only one, under that name). Returns the names recorded.
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<Vec<String>> {
    let src = Source::open(path, || store.staging())?;
    let mut found = if src.exists("index.json") {
        read_oci(&src)?
    } else if src.exists("manifest.json") {
        read_docker(&src)?
    } else {
        return Err(invalid(
            path.display().to_string(),
            "neither an OCI image layout (index.json) nor a docker-save archive (manifest.json)",
        ));
    };
    if found.is_empty() {
        return Err(invalid(path.display().to_string(), "holds no image"));
    }
    if let Some(n) = name {
        let n = oci::normalize_name(n)?;
        if found.len() > 1 {
            let tag = oci::tag_of(&n).to_owned();
            found.retain(|f| f.names.contains(&n) || f.refs.iter().any(|r| *r == tag || *r == n));
            if found.len() != 1 {
                return Err(invalid(
                    path.display().to_string(),
                    format!(
                        "holds several images; --name {n} must match exactly one's ref name or tag"
                    ),
                ));
            }
        }
        found[0].names = vec![n];
    }
    let only_one = found.len() == 1;
    for f in &mut found {
        if f.names.is_empty() {
            if !only_one {
                return Err(invalid(
                    path.display().to_string(),
                    "holds an image without a name: give one with --name",
                ));
            }
            f.names.push(oci::normalize_name(&stem(path))?);
        }
    }
    let mut staged_all: HashMap<String, Staged> = HashMap::new();
    let staging = store.staging()?;
    // Checks and staging first, for every image: nothing is committed unless all pass.
    let mut plans = Vec::new();
    for f in &found {
        plans.push(stage_image(store, &src, f, &staging.path, &mut staged_all)?);
    }
    commit(store, &found, &plans, &staged_all)
}

/// Moves what was staged into the store and records the names; returns them.
pub(crate) fn commit(
    store: &Store,
    found: &[Found],
    plans: &[Plan],
    staged_all: &HashMap<String, Staged>,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    // Commit: under the lock, re-check what we counted on finding in the store (a
    // concurrent `rm` may have collected it since; then import again).
    let lock = store.lock()?;
    for (f, plan) in found.iter().zip(plans) {
        for (i, key) in plan.keys.iter().enumerate() {
            let chain = &plan.chains[i];
            if let Some(s) = staged_all.get(key) {
                if let Some(b) = &s.blob {
                    store.commit_blob(&lock, b, &s.digest)?;
                }
                if let Some(l) = &s.layer {
                    store.commit_layer(&lock, l, chain, &plan.diff_ids[i], &s.digest)?;
                }
            }
            if !store.has_layer(chain) || !store.has_blob(&plan.layer_descs[i].digest()?) {
                return Err(invalid(
                    format!("layer {chain}"),
                    "was removed from the store by a concurrent `image rm` during this import: import again",
                ));
            }
        }
        store.publish(
            &lock,
            &f.config_bytes,
            &f.config_digest,
            &plan.manifest_bytes,
            &f.names,
        )?;
        names.extend(f.names.iter().cloned());
    }
    Ok(names)
}

pub(crate) struct Plan {
    /// Per layer: the key of its staged copy in `staged_all` (blob label).
    keys: Vec<String>,
    chains: Vec<Digest>,
    diff_ids: Vec<Digest>,
    layer_descs: Vec<Descriptor>,
    pub(crate) manifest_bytes: Vec<u8>,
}

/// Whether the store holds this blob and the layer unpacked (and verified) from it at this
/// chain position: then the blob need not be read again.
pub(crate) fn in_store(store: &Store, blob: &Digest, chain: &Digest) -> bool {
    store.has_blob(blob) && store.layer_verified_with(chain, blob)
}

/// Checks an image's config against its layers, stages the layers `staged_all` does not hold
/// yet and the store lacks (read from `src`), and makes the manifest the store will keep.
pub(crate) fn stage_image(
    store: &Store,
    src: &dyn LayerSource,
    f: &Found,
    dir: &Path,
    staged_all: &mut HashMap<String, Staged>,
) -> Result<Plan> {
    let what = f.names.first().cloned().unwrap_or_default();
    let config: ConfigView = oci::parse(&f.config_bytes, &format!("config {}", f.config_digest))?;
    let diff_ids = config.diff_ids()?;
    if diff_ids.len() != f.layers.len() {
        return Err(invalid(
            format!("image {what}"),
            format!(
                "config lists {} diff_ids for {} layers",
                diff_ids.len(),
                f.layers.len()
            ),
        ));
    }
    let chains = chain_ids(&diff_ids);
    let mut keys = Vec::new();
    let mut layer_descs = Vec::new();
    let total = f.layers.len();
    for (i, (rel, desc)) in f.layers.iter().enumerate() {
        let at = LayerAt {
            i,
            total,
            rel,
            desc: desc.as_ref(),
            diff_id: &diff_ids[i],
            chain: &chains[i],
        };
        let (key, ld) = stage_layer(store, src, &at, dir, staged_all)?;
        layer_descs.push(ld);
        keys.push(key);
    }
    let manifest_bytes = manifest_for(f, &layer_descs);
    Ok(Plan {
        keys,
        chains,
        diff_ids,
        layer_descs,
        manifest_bytes,
    })
}

/// One layer of an image being staged: its place in the image and what the image says of it.
struct LayerAt<'a> {
    i: usize,
    total: usize,
    rel: &'a String,
    desc: Option<&'a Descriptor>,
    diff_id: &'a Digest,
    chain: &'a Digest,
}

/// Stages one layer (unless an earlier image of this import staged it, or the store has it
/// verified): returns its key in `staged_all` and its manifest descriptor.
fn stage_layer(
    store: &Store,
    src: &dyn LayerSource,
    at: &LayerAt<'_>,
    dir: &Path,
    staged_all: &mut HashMap<String, Staged>,
) -> Result<(String, Descriptor)> {
    let (desc, chain) = (at.desc, at.chain);
    let expected = desc.map(|d| d.digest()).transpose()?;
    let key = match &expected {
        Some(d) => layer_key(d.as_str(), chain),
        None => layer_key(at.rel, chain),
    };
    let known = staged_all
        .get(&key)
        .map(|s| (s.digest.clone(), s.size, s.compression));
    let in_store = expected.as_ref().is_some_and(|d| in_store(store, d, chain));
    let (digest, size, compression) = match known {
        Some(k) => k,
        None if in_store => {
            let d = expected.clone().unwrap_or_else(|| at.diff_id.clone());
            let size = desc.map_or(0, |d| d.size);
            let c = desc.map_or(oci::Compression::None, |d| compression_of(&d.media_type));
            (d, size, c)
        }
        None => {
            let (reader, len) = src.layer(at.rel)?;
            let label = expected
                .as_ref()
                .map_or_else(|| at.rel.clone(), |d| d.to_string());
            let pb = progress::bytes(
                len,
                format!("layer {}/{} {}", at.i + 1, at.total, short(&label)),
            );
            let job = LayerJob {
                label,
                expected: expected.as_ref().map(|d| (d, desc.map(|x| x.size))),
                diff_id: at.diff_id,
                keep_blob: expected.as_ref().is_none_or(|d| !store.has_blob(d)),
                unpack: !store.has_layer(chain),
                opts: UnpackOptions::for_current_user(),
            };
            let s = layer::stage(dir, staged_all.len(), reader, &job, &pb)?;
            let k = (s.digest.clone(), s.size, s.compression);
            staged_all.insert(key.clone(), s);
            k
        }
    };
    let media_type = match desc {
        Some(d)
            if d.media_type
                .starts_with("application/vnd.oci.image.layer.v1.tar") =>
        {
            d.media_type.clone()
        }
        _ => oci::layer_media_type(compression).to_owned(),
    };
    let mut ld = Descriptor::new(&media_type, &digest, size);
    if let Some(d) = desc {
        ld.annotations = d.annotations.clone();
    }
    Ok((key, ld))
}

/// The manifest stored for an imported image: its own if it is OCI, else (Docker media
/// types, a docker archive) an OCI manifest of our own over the staged layers.
fn manifest_for(f: &Found, layer_descs: &[Descriptor]) -> Vec<u8> {
    match &f.manifest {
        Some((m, bytes)) if m.is_oci() => bytes.clone(),
        other => {
            let mut m = Manifest {
                schema_version: 2,
                media_type: Some(oci::MT_MANIFEST.to_owned()),
                config: Descriptor::new(
                    oci::MT_CONFIG,
                    &f.config_digest,
                    f.config_bytes.len() as u64,
                ),
                layers: layer_descs.to_vec(),
                annotations: BTreeMap::new(),
            };
            if let Some((orig, _)) = other {
                m.annotations = orig.annotations.clone();
            }
            oci::to_json(&m)
        }
    }
}

fn compression_of(media_type: &str) -> oci::Compression {
    if media_type.ends_with("gzip") {
        oci::Compression::Gzip
    } else if media_type.ends_with("zstd") {
        oci::Compression::Zstd
    } else {
        oci::Compression::None
    }
}

fn short(label: &str) -> String {
    match label.strip_prefix("sha256:") {
        Some(h) => format!("sha256:{}", &h[..h.len().min(12)]),
        None => label.chars().take(28).collect(),
    }
}
