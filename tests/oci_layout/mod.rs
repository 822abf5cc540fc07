//! OCI layouts written by the tests themselves (sound ones, and ones that lie): layer tars,
//! blobs, configs, manifests and the index.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::Digest as _;

pub fn sha(data: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A tar of files (a path ending in `/` is a directory).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        if p.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, p, std::io::empty()).unwrap();
        } else {
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// One layer as the manifest describes it: the blob, the size claimed, the config's diff_id.
pub struct LayerSpec {
    pub blob: Vec<u8>,
    pub size: u64,
    pub diff_id: String,
}

impl LayerSpec {
    /// An honest gzip layer of this tar.
    pub fn gz(tar: &[u8]) -> LayerSpec {
        let blob = gzip(tar);
        LayerSpec {
            size: blob.len() as u64,
            diff_id: sha(tar),
            blob,
        }
    }
}

pub fn put_blob(dir: &Path, data: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let d = sha(data);
    fs::write(blobs.join(&d[7..]), data).unwrap();
    d
}

/// An OCI layout at `dir` with one image tagged `tag`: these layers, and `run` as the
/// config's `config` object.
pub fn write_oci(dir: &Path, layers: &[LayerSpec], run: serde_json::Value, tag: &str) {
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put_blob(dir, &l.blob), "size": l.size})
        })
        .collect();
    let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(dir, &config), "size": config.len()},
        "layers": descs}))
    .unwrap();
    let desc = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put_blob(dir, &manifest), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}});
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A pseudo-random generator for the tests' random moments (seed printed by the caller).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn from_time() -> Lcg {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Lcg(t | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
