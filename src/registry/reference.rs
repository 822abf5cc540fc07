//! Image references with docker's normalisation: `busybox` is
//! `docker.io/library/busybox:latest`, `host:port/ns/name:tag` and `name@sha256:...` are
//! accepted. The grammar is `oci_spec::distribution::Reference`'s (a port of distribution's
//! reference package); the checks before it only explain *why* a reference is refused.

use std::fmt;

use oci_spec::distribution::Reference;

use super::error::{RegistryError, Result};
use crate::image::Digest;

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, docker.io for unqualified names.
    pub registry: String,
    /// `ns/name` (docker.io's official images get `library/`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
    /// Whether the text named a registry (else registries.conf's search list may apply).
    pub qualified: bool,
}

fn bad(reference: &str, why: impl Into<String>) -> RegistryError {
    RegistryError::BadReference {
        reference: reference.to_owned(),
        why: why.into(),
    }
}

/// Whether the first path component names a registry (docker's rule: it has a `.` or a
/// `:`, or is `localhost`).
fn names_registry(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

/// Why `s` is not a reference, for the common mistakes (None: let the grammar decide).
fn explain(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("empty".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Some(format!("contains {c:?} (only printable ASCII is allowed)"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest
        && Digest::parse(d).is_err()
    {
        return Some(format!(
            "digest {d:?} is not sha256:<64 lowercase hex digits>"
        ));
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if t.is_empty() {
            return Some("empty tag after ':'".into());
        }
        if t.len() > 128 {
            return Some("tag longer than 128 characters".into());
        }
        let ok = t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Some(format!(
                "tag {t:?} may only hold letters, digits, _ . - (not first)"
            ));
        }
    }
    if name.is_empty() {
        return Some("no repository name".into());
    }
    let comps: Vec<&str> = name.split('/').collect();
    if comps.iter().any(|c| c.is_empty()) {
        return Some("empty path component (a leading, trailing or double '/')".into());
    }
    let path = if comps.len() > 1 && names_registry(comps[0]) {
        &comps[1..]
    } else {
        &comps[..]
    };
    if path
        .iter()
        .any(|c| c.chars().any(|c| c.is_ascii_uppercase()))
    {
        return Some("repository name must be lowercase".into());
    }
    if name.len() > 255 {
        return Some("name longer than 255 characters".into());
    }
    None
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        if let Some(why) = explain(s) {
            return Err(bad(s, why));
        }
        let r: Reference = s.parse().map_err(|e| bad(s, format!("{e}")))?;
        let digest = r
            .digest()
            .map(Digest::parse)
            .transpose()
            .map_err(|e| bad(s, e.to_string()))?;
        // oci-spec adds `latest` only when there is no digest either: the same as docker.
        let qualified = s
            .split_once('/')
            .is_some_and(|(first, _)| names_registry(first));
        Ok(ImageRef {
            registry: r.registry().to_owned(),
            repository: r.repository().to_owned(),
            tag: r.tag().map(str::to_owned),
            digest,
            qualified,
        })
    }

    /// What the manifest URL names: the digest when there is one, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The same repository at another registry (a mirror, a registries.conf location).
    pub fn with_registry(&self, registry: &str, repository: &str) -> ImageRef {
        ImageRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            qualified: true,
            ..self.clone()
        }
    }

    /// The name a pulled image gets in the store: `registry/repo:tag`, or `registry/repo@digest`.
    pub fn store_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, Some(d)) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_normalisation() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("index.docker.io/x"), "docker.io/library/x:latest");
        assert_eq!(full("localhost/a"), "localhost/a:latest");
        assert_eq!(
            full("localhost:5000/ns/name:v1"),
            "localhost:5000/ns/name:v1"
        );
        assert_eq!(full("127.0.0.1:5000/a/b/c:t"), "127.0.0.1:5000/a/b/c:t");
        assert_eq!(
            full(&format!("alpine@{D}")),
            format!("docker.io/library/alpine@{D}")
        );
        assert_eq!(
            full(&format!("q.io/a:t@{D}")),
            format!("q.io/a:t@{D}"),
            "tag and digest both kept; the digest is what is fetched"
        );
        let r = ImageRef::parse(&format!("q.io/a:t@{D}")).unwrap();
        assert_eq!(r.reference(), D);
        assert!(r.qualified);
        assert!(!ImageRef::parse("a/b").unwrap().qualified);
        // A port-like tag on an unqualified name is a tag (docker's rule).
        assert_eq!(full("test.com:5000"), "docker.io/library/test.com:5000");
    }

    #[test]
    fn store_names() {
        assert_eq!(
            ImageRef::parse("busybox").unwrap().store_name(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            ImageRef::parse(&format!("h:1/a@{D}")).unwrap().store_name(),
            format!("h:1/a@{D}")
        );
    }

    #[test]
    fn refusals_say_why() {
        for (s, why) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("host:5000/Name", "lowercase"),
            ("a:", "empty tag"),
            ("a:-x", "tag"),
            ("a//b", "empty path component"),
            ("/a", "empty path component"),
            ("a b", "printable ASCII"),
            ("a@sha256:00", "digest"),
            ("a@md5:00", "digest"),
            ("a:ta\u{e9}g", "printable ASCII"),
            ("@sha256:0", "digest"),
        ] {
            let e = ImageRef::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
            assert!(!e.contains('\n'));
        }
        assert!(ImageRef::parse("a..b").is_err());
        assert!(ImageRef::parse(&"a".repeat(300)).is_err());
    }
}
