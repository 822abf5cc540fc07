//! The OCI documents strata reads and writes (image-spec v1.1): descriptors, indexes,
//! manifests, and the parts of an image config it uses. Unknown fields of a config are kept
//! (it is handled as JSON), so a commit changes only what it must.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{ImageError, Result, invalid};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
            urls: Vec::new(),
        }
    }

    pub fn digest(&self) -> Result<Digest> {
        Digest::parse(&self.digest)
    }

    pub fn is_index(&self) -> bool {
        self.media_type == MT_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Whether it uses only OCI media types (else strata stores a converted copy).
    pub fn is_oci(&self) -> bool {
        self.media_type.as_deref().is_none_or(|m| m == MT_MANIFEST)
            && self.config.media_type == MT_CONFIG
            && self.layers.iter().all(|l| {
                l.media_type
                    .starts_with("application/vnd.oci.image.layer.v1.tar")
            })
    }
}

/// The run defaults of an image config (`config` in image-spec config.md).
#[derive(Deserialize, Default, Clone, Debug)]
pub struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Deserialize, Default, Clone, Debug)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The fields of an image config strata uses.
#[derive(Deserialize, Default, Clone, Debug)]
pub struct ConfigView {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
}

impl ConfigView {
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect()
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })
}

pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these types cannot fail (string keys, no foreign Serialize impls).
    serde_json::to_vec(v).unwrap_or_default()
}

/// The layer media type for a layer blob compressed as found.
pub fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => MT_LAYER,
        Compression::Gzip => MT_LAYER_GZIP,
        Compression::Zstd => MT_LAYER_ZSTD,
    }
}

/// Accepted layer media types: OCI and docker, plain, gzip and zstd (the actual compression
/// is read from the data). Encrypted layers and foreign (URL-only) ones are refused.
pub fn check_layer_media_type(d: &Descriptor) -> Result<()> {
    let mt = d.media_type.as_str();
    let known = mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.diff.tar");
    if !known || mt.contains("encrypted") || mt.contains("foreign") && d.urls.iter().any(|_| true) {
        return Err(invalid(
            format!("layer {}", d.digest),
            format!("unsupported media type {mt:?}"),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// `NAME` -> `NAME:latest`; refuses names that cannot be image references. `NAME@sha256:..`
/// (an image pulled by digest) stays as it is.
pub fn normalize_name(name: &str) -> Result<String> {
    if let Some((n, d)) = name.split_once('@')
        && Digest::parse(d).is_ok()
        && !n.rsplit('/').next().unwrap_or(n).contains(':')
        && normalize_name(n).is_ok()
    {
        return Ok(name.to_owned());
    }
    let bad = name.is_empty()
        || name.len() > 255
        || name.contains('@')
        || name.starts_with([':', '/', '-'])
        || name.ends_with(':')
        || name.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(invalid(format!("image name {name:?}"), "not NAME[:TAG]"));
    }
    let after_slash = name.rsplit('/').next().unwrap_or(name);
    if after_slash.contains(':') {
        Ok(name.to_owned())
    } else {
        Ok(format!("{name}:latest"))
    }
}

/// The tag of a normalised name.
pub fn tag_of(name: &str) -> &str {
    let after_slash = name.rsplit('/').next().unwrap_or(name);
    after_slash.rsplit(':').next().unwrap_or("latest")
}

/// RFC 3339 UTC time for configs and history ("2024-01-02T03:04:05Z").
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc3339(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize_name("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        assert_eq!(normalize_name("a/b:v1").unwrap(), "a/b:v1");
        assert!(normalize_name("a b").is_err());
        assert!(normalize_name("a@sha256:00").is_err());
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_name(&format!("h:1/a@{d}")).unwrap(),
            format!("h:1/a@{d}")
        );
        assert!(normalize_name(&format!("a:t@{d}")).is_err());
        assert_eq!(tag_of("localhost:5000/a/b:v1"), "v1");
    }

    #[test]
    fn time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
