//! Manifests as a registry serves them: OCI image manifests and indexes, docker schema 2
//! manifests and manifest lists (schema 1 is refused), told apart by media type (the
//! `Content-Type`, else the document's own `mediaType`, else its shape), and the platform
//! choice inside an index.

use crate::image::oci::{self, Descriptor, Index, Manifest};

use super::error::{RegistryError, Result, protocol};

/// What `Accept` says strata reads.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest document; `content_type` is the response's (may be empty).
pub fn parse(bytes: &[u8], content_type: &str, what: &str) -> Result<Parsed> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| protocol("parsing manifest", what, e.to_string()))?;
    let own = v["mediaType"].as_str().unwrap_or("");
    if v["schemaVersion"].as_u64() == Some(1) || ct.contains("distribution.manifest.v1") {
        return Err(protocol(
            "parsing manifest",
            what,
            "docker schema 1 manifests are not supported",
        ));
    }
    // The document's own media type wins when the server sent a generic one.
    let mt = match ct {
        "" | "application/json" | "text/plain" | "application/octet-stream" => own,
        ct => ct,
    };
    let is_index = match mt {
        oci::MT_INDEX | oci::MT_DOCKER_LIST => true,
        oci::MT_MANIFEST | oci::MT_DOCKER_MANIFEST => false,
        "" => v.get("manifests").is_some(),
        other => {
            return Err(protocol(
                "parsing manifest",
                what,
                format!("unsupported media type {other:?}"),
            ));
        }
    };
    if !own.is_empty() && own != mt {
        return Err(protocol(
            "parsing manifest",
            what,
            format!("served as {mt:?} but says it is {own:?}"),
        ));
    }
    let doc_err = |e: crate::image::ImageError| RegistryError::from(e);
    if is_index {
        Ok(Parsed::Index(oci::parse(bytes, what).map_err(doc_err)?))
    } else {
        let m: Manifest = oci::parse(bytes, what).map_err(doc_err)?;
        for l in &m.layers {
            oci::check_layer_media_type(l)?;
        }
        Ok(Parsed::Manifest(m))
    }
}

/// `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    pub fn parse(s: &str) -> Result<PlatformSpec> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || RegistryError::BadReference {
            reference: s.to_owned(),
            why: "a platform is OS/ARCH[/VARIANT], e.g. linux/amd64".into(),
        };
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(PlatformSpec {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }

    /// linux on this machine's architecture, as `image import` picks.
    pub fn host() -> PlatformSpec {
        PlatformSpec {
            os: "linux".into(),
            architecture: crate::image::import::host_arch().into(),
            variant: None,
        }
    }

    fn fits(&self, d: &Descriptor) -> bool {
        d.platform.as_ref().is_none_or(|p| {
            p.os == self.os
                && p.architecture == self.architecture
                && self
                    .variant
                    .as_ref()
                    .is_none_or(|v| p.variant.as_ref() == Some(v))
        })
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The index entry for `platform` (attestation manifests, which carry platform
/// unknown/unknown, never fit).
pub fn select<'a>(index: &'a Index, platform: &PlatformSpec, what: &str) -> Result<&'a Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| platform.fits(d))
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            protocol(
                "choosing a platform in",
                what,
                format!("no manifest for {platform} (it has {})", have.join(", ")),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
      "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},
      "layers":[]}"#;
    const I: &str = r#"{"schemaVersion":2,"manifests":[
      {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
      {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;

    #[test]
    fn kinds() {
        assert!(matches!(
            parse(M.as_bytes(), "", "m").unwrap(),
            Parsed::Manifest(_)
        ));
        assert!(matches!(
            parse(I.as_bytes(), "application/json", "i").unwrap(),
            Parsed::Index(_)
        ));
        let docker_list = I.replace("schemaVersion\":2,", "schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.list.v2+json\",");
        assert!(matches!(
            parse(docker_list.as_bytes(), oci::MT_DOCKER_LIST, "l").unwrap(),
            Parsed::Index(_)
        ));
        let e = parse(M.as_bytes(), oci::MT_INDEX, "m")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("says it is"), "{e}");
        assert!(parse(br#"{"schemaVersion":1}"#, "", "s1").is_err());
        assert!(parse(b"[", "", "x").is_err());
    }

    #[test]
    fn platforms() {
        let Parsed::Index(i) = parse(I.as_bytes(), "", "i").unwrap() else {
            panic!()
        };
        let amd = PlatformSpec::parse("linux/amd64").unwrap();
        assert!(select(&i, &amd, "i").unwrap().digest.contains("2222"));
        let arm = PlatformSpec::parse("linux/arm64/v8").unwrap();
        assert!(select(&i, &arm, "i").unwrap().digest.contains("1111"));
        let e = select(&i, &PlatformSpec::parse("linux/s390x").unwrap(), "i").unwrap_err();
        assert!(e.to_string().contains("linux/amd64"));
        assert!(PlatformSpec::parse("linux").is_err());
    }
}
