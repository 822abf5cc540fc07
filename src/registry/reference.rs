//! Image references with docker's normalisation: `busybox` is
//! `docker.io/library/busybox:latest`, `host:port/ns/name:tag` and `name@sha256:...` are
//! accepted. The grammar is distribution's reference package's
//! (`[domain[:port]/]component[/component...][:tag][@digest]`), checked by hand rather than with
//! `oci_spec::distribution::Reference`: its one large regex took ~1 s to compile in a debug
//! build and a noticeable part of a release build's start, for every command that names a
//! reference (see the README). Each refusal says what is wrong.

use std::fmt;

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

/// `label(.label)*(:port)?`, labels of letters, digits and inner `-`.
fn check_domain(d: &str) -> std::result::Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("registry {d:?}: the port must be digits"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!(
            "registry {d:?}: host names are letters, digits, inner '-' and '.' between labels"
        ));
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_component(c: &str) -> std::result::Result<(), String> {
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lowercase".into());
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let mut i = 0;
    let mut ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]);
    while ok && i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "path component {c:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
        ))
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(t: &str) -> std::result::Result<(), String> {
    if t.is_empty() {
        return Err("empty tag after ':'".into());
    }
    if t.len() > 128 {
        return Err("tag longer than 128 characters".into());
    }
    let ok = t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {t:?} may only hold letters, digits, _ . - (not first)"
        ))
    }
}

/// Splits and checks `s`; why it is refused otherwise.
fn parse_parts(s: &str) -> std::result::Result<ImageRef, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("contains {c:?} (only printable ASCII is allowed)"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let digest = digest
        .map(|d| {
            Digest::parse(d)
                .map_err(|_| format!("digest {d:?} is not sha256:<64 lowercase hex digits>"))
        })
        .transpose()?;
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    if name.is_empty() {
        return Err("no repository name".into());
    }
    if name.len() > 255 {
        return Err("name longer than 255 characters".into());
    }
    let comps: Vec<&str> = name.split('/').collect();
    if comps.iter().any(|c| c.is_empty()) {
        return Err("empty path component (a leading, trailing or double '/')".into());
    }
    let qualified = comps.len() > 1 && names_registry(comps[0]);
    let (mut registry, path) = match qualified {
        true => {
            check_domain(comps[0])?;
            (comps[0].to_owned(), &comps[1..])
        }
        false => (DOCKER_HUB.to_owned(), &comps[..]),
    };
    for c in path {
        check_component(c)?;
    }
    if registry == "index.docker.io" {
        registry = DOCKER_HUB.into();
    }
    let mut repository = path.join("/");
    if registry == DOCKER_HUB && path.len() == 1 {
        repository = format!("library/{repository}");
    }
    // docker measures the normalised name (`docker.io/library/x`), not the one typed: a name
    // that fits only before normalisation would not parse again once printed.
    if registry.len() + 1 + repository.len() > 255 {
        return Err(format!(
            "name longer than 255 characters once normalised ({registry}/...)"
        ));
    }
    // docker adds `latest` only when there is no digest either.
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_owned()),
        (None, Some(_)) => None,
        (None, None) => Some("latest".to_owned()),
    };
    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest,
        qualified,
    })
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        parse_parts(s).map_err(|why| bad(s, why))
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
    fn the_length_limit_applies_to_the_normalised_name() {
        // Found by the reference fuzz target: 247 characters typed, 257 once docker.io/ is
        // added, so its printed form did not parse again.
        let typed = format!("{}/{}", "a".repeat(120), "b".repeat(126));
        let e = ImageRef::parse(&typed).unwrap_err().to_string();
        assert!(e.contains("once normalised"), "{e}");
        let fits = format!("{}/{}", "a".repeat(120), "b".repeat(123));
        let r = ImageRef::parse(&fits).unwrap();
        assert_eq!(
            ImageRef::parse(&r.to_string()).unwrap().to_string(),
            r.to_string()
        );
        assert!(ImageRef::parse(&format!("h.io/{}", "c".repeat(250))).is_ok());
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
        for ok in [
            "a__b",
            "a--b/c-d.e_f",
            "Host.IO:443/x",
            "127.0.0.1/a",
            "a/b/c/d",
        ] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for no in [
            "a___b",
            "a_",
            "-a",
            "h:abc/x",
            "h-.io/x",
            "a/.b",
            "a/b@sha256:",
        ] {
            assert!(ImageRef::parse(no).is_err(), "{no}");
        }
        assert!(
            ImageRef::parse("h:abc/x")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
        assert!(ImageRef::parse(&"a".repeat(300)).is_err());
    }
}
