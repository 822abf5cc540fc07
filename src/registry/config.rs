//! containers-registries.conf(5), the parts strata follows: `[[registry]]` with `location`,
//! `prefix`, `insecure`, `blocked` and `[[registry.mirror]]`, and
//! `unqualified-search-registries`. Read from `CONTAINERS_REGISTRIES_CONF` if set, else
//! `~/.config/containers/registries.conf` if it exists, else `/etc/containers/registries.conf`
//! (podman's and skopeo's order). Per-registry CAs come from `/etc/containers/certs.d/HOST/`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{RegistryError, Result};
use super::reference::{DOCKER_HUB, ImageRef};

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct RegistriesConf {
    #[serde(default)]
    pub unqualified_search_registries: Vec<String>,
    #[serde(default)]
    pub registry: Vec<RegistryEntry>,
}

#[derive(Deserialize, Default, Debug, Clone)]
pub struct RegistryEntry {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub mirror: Vec<Mirror>,
}

#[derive(Deserialize, Default, Debug, Clone)]
pub struct Mirror {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
}

/// One place to try for a pull: a reference rewritten to a mirror or a location.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Where to fetch from.
    pub reference: ImageRef,
    pub insecure: bool,
    /// The name the image gets: the candidate before mirrors and prefixes rewrote it.
    pub name: ImageRef,
}

fn conf_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|c| c.join("containers/registries.conf"));
    user.filter(|p| p.exists())
        .or_else(|| Some(PathBuf::from("/etc/containers/registries.conf")))
}

impl RegistriesConf {
    /// The configuration in force (empty when no file exists).
    pub fn load() -> Result<RegistriesConf> {
        match conf_path() {
            Some(p) if p.exists() => Self::load_from(&p),
            _ => Ok(RegistriesConf::default()),
        }
    }

    pub fn load_from(path: &Path) -> Result<RegistriesConf> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError::Config {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        Self::parse(&text).map_err(|why| RegistryError::Config {
            path: path.to_owned(),
            why,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<RegistriesConf, String> {
        let conf: RegistriesConf = toml::from_str(text).map_err(|e| {
            // toml's messages span lines (a snippet of the file): keep the first.
            e.to_string()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned()
        })?;
        Ok(conf)
    }

    /// The entry whose prefix (default: its location) matches `name` (`host/repo`) best.
    fn entry_for(&self, name: &str) -> Option<&RegistryEntry> {
        self.registry
            .iter()
            .filter(|e| {
                let p = e.prefix.as_deref().unwrap_or(&e.location);
                !p.is_empty()
                    && (name == p || name.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
            })
            .max_by_key(|e| e.prefix.as_deref().unwrap_or(&e.location).len())
    }

    /// Whether plain HTTP / unverified TLS is allowed for `host`.
    pub fn insecure(&self, host: &str) -> bool {
        let host_of = |loc: &str| loc.split('/').next() == Some(host);
        self.registry.iter().any(|e| {
            e.insecure && host_of(&e.location)
                || e.mirror.iter().any(|m| m.insecure && host_of(&m.location))
        })
    }

    /// Where to pull `r` from, in order: unqualified names go through the search list (else
    /// docker.io), then each candidate's mirrors before its (rewritten) location.
    pub fn pull_endpoints(&self, r: &ImageRef) -> Result<Vec<Endpoint>> {
        let candidates: Vec<ImageRef> =
            if !r.qualified && !self.unqualified_search_registries.is_empty() {
                let short = r
                    .repository
                    .strip_prefix("library/")
                    .unwrap_or(&r.repository);
                self.unqualified_search_registries
                    .iter()
                    .map(|reg| {
                        let repo = if reg == DOCKER_HUB && !short.contains('/') {
                            format!("library/{short}")
                        } else {
                            short.to_owned()
                        };
                        r.with_registry(reg, &repo)
                    })
                    .collect()
            } else {
                vec![r.clone()]
            };
        let mut out = Vec::new();
        for c in candidates {
            out.extend(self.rewrite(&c)?);
        }
        Ok(out)
    }

    /// One candidate: its mirrors, then its location (prefix replaced by location).
    fn rewrite(&self, r: &ImageRef) -> Result<Vec<Endpoint>> {
        let name = r.name();
        let Some(e) = self.entry_for(&name) else {
            return Ok(vec![Endpoint {
                reference: r.clone(),
                insecure: false,
                name: r.clone(),
            }]);
        };
        if e.blocked {
            return Err(RegistryError::BadReference {
                reference: r.to_string(),
                why: "its registry is blocked in registries.conf".into(),
            });
        }
        let prefix = e.prefix.as_deref().unwrap_or(&e.location);
        let rest = name.strip_prefix(prefix).unwrap_or("");
        let mut out = Vec::new();
        let mirrors = e.mirror.iter().map(|m| (m.location.as_str(), m.insecure));
        for (loc, insecure) in mirrors.chain([(e.location.as_str(), e.insecure)]) {
            let reference = if loc.is_empty() {
                r.clone()
            } else {
                let full = format!("{loc}{rest}");
                let (reg, repo) = full.split_once('/').unwrap_or((&full, ""));
                r.with_registry(reg, repo)
            };
            out.push(Endpoint {
                reference,
                insecure,
                name: r.clone(),
            });
        }
        Ok(out)
    }

    /// Where a push goes: the location the prefix maps to (never a mirror).
    pub fn push_endpoint(&self, r: &ImageRef) -> Result<Endpoint> {
        let all = self.rewrite(r)?;
        Ok(all.into_iter().last().unwrap_or(Endpoint {
            reference: r.clone(),
            insecure: false,
            name: r.clone(),
        }))
    }
}

/// The CA certificates (PEM) for `host` (`host:port`) from `/etc/containers/certs.d/HOST/*.crt`
/// (`STRATA_CERTS_DIR` replaces the directory, for tests). Empty: the built-in roots.
pub fn ca_certs(host: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let base = std::env::var_os("STRATA_CERTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/containers/certs.d"));
    let dir = base.join(host);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .filter_map(|p| std::fs::read(&p).ok().map(|d| (p, d)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
unqualified-search-registries = ["quay.io", "docker.io"]

[[registry]]
location = "localhost:5000"
insecure = true

[[registry]]
prefix = "example.com/foo"
location = "internal.local/mirror/foo"
[[registry.mirror]]
location = "m1.local:5000/foo"
insecure = true

[[registry]]
location = "bad.io"
blocked = true
"#;

    fn eps(conf: &RegistriesConf, s: &str) -> Vec<String> {
        conf.pull_endpoints(&ImageRef::parse(s).unwrap())
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}{}",
                    e.reference,
                    if e.insecure { " insecure" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn search_prefix_mirror_insecure() {
        let c = RegistriesConf::parse(CONF).unwrap();
        assert_eq!(
            eps(&c, "busybox"),
            ["quay.io/busybox:latest", "docker.io/library/busybox:latest"]
        );
        assert_eq!(
            eps(&c, "localhost:5000/a:1"),
            ["localhost:5000/a:1 insecure"]
        );
        assert_eq!(
            eps(&c, "example.com/foo/bar:2"),
            [
                "m1.local:5000/foo/bar:2 insecure",
                "internal.local/mirror/foo/bar:2"
            ]
        );
        assert_eq!(eps(&c, "example.com/foobar:2"), ["example.com/foobar:2"]);
        assert!(c.insecure("localhost:5000"));
        assert!(c.insecure("m1.local:5000"));
        assert!(!c.insecure("quay.io"));
        let blocked = c.pull_endpoints(&ImageRef::parse("bad.io/x").unwrap());
        assert!(blocked.unwrap_err().to_string().contains("blocked"));
        let push = c
            .push_endpoint(&ImageRef::parse("example.com/foo/bar:2").unwrap())
            .unwrap();
        assert_eq!(
            push.reference.to_string(),
            "internal.local/mirror/foo/bar:2"
        );
    }

    #[test]
    fn no_search_list_means_docker_io() {
        let c = RegistriesConf::default();
        assert_eq!(eps(&c, "busybox"), ["docker.io/library/busybox:latest"]);
        assert!(RegistriesConf::parse("registry = 3").is_err());
    }
}
