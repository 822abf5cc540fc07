//! Credentials and authentication challenges.
//!
//! Credentials live in the containers auth file (`REGISTRY_AUTH_FILE`, else
//! `$XDG_RUNTIME_DIR/containers/auth.json`, else `/run/containers/UID/auth.json`, podman's
//! places) as `{"auths": {"HOST": {"auth": base64("user:password")}}}`, written 0600; they are
//! also read from `~/.docker/config.json` (same shape; credential helpers are not run). A key
//! may name a repository (`host/ns`): the most specific key wins, as in containers-auth.json(5).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::error::{RegistryError, Result, io_err};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

// Never print a password, not even in debug output.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

#[derive(Serialize, Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Everything else (docker's credsStore, HttpHeaders, ...) is kept as it was.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// The auth file strata writes (and reads first).
pub fn auth_file() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d).join("containers/auth.json"),
        None => PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            rustix::process::getuid().as_raw()
        )),
    }
}

fn docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json"))
}

fn read(path: &Path) -> Result<AuthFile> {
    match fs::read(path) {
        Ok(d) if d.iter().all(u8::is_ascii_whitespace) => Ok(AuthFile::default()),
        Ok(d) => serde_json::from_slice(&d).map_err(|e| RegistryError::Config {
            path: path.to_owned(),
            why: format!("not a credentials file: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(e) => Err(io_err("reading credentials", path)(e)),
    }
}

/// `https://index.docker.io/v1/` (docker's key for docker.io) -> `docker.io`.
fn normalise_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k
        .strip_suffix("/v1/")
        .or(k.strip_suffix("/v2/"))
        .unwrap_or(k);
    let k = k.trim_end_matches('/');
    match k.split_once('/') {
        Some(("index.docker.io" | "registry-1.docker.io", rest)) => format!("docker.io/{rest}"),
        None if matches!(k, "index.docker.io" | "registry-1.docker.io") => "docker.io".into(),
        _ => k.to_owned(),
    }
}

fn decode(path: &Path, key: &str, e: &AuthEntry) -> Result<Option<Credentials>> {
    if e.auth.is_empty() {
        return Ok(None);
    }
    let bad = || RegistryError::Config {
        path: path.to_owned(),
        why: format!("the entry for {key} is not base64 of user:password"),
    };
    let raw = STANDARD.decode(e.auth.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials {
        username: u.to_owned(),
        password: p.to_owned(),
    }))
}

/// Credentials for `registry/repository`: the most specific key of the auth file, then of
/// docker's config.
pub fn lookup(registry: &str, repository: &str) -> Result<Option<Credentials>> {
    let full = format!("{registry}/{repository}");
    for path in [Some(auth_file()), docker_config()].into_iter().flatten() {
        let file = read(&path)?;
        let mut best: Option<(usize, &String, &AuthEntry)> = None;
        for (k, e) in &file.auths {
            let nk = normalise_key(k);
            let hit = nk == registry
                || full == nk
                || full.strip_prefix(&nk).is_some_and(|r| r.starts_with('/'));
            if hit && best.is_none_or(|(l, _, _)| nk.len() > l) {
                best = Some((nk.len(), k, e));
            }
        }
        if let Some((_, k, e)) = best
            && let Some(c) = decode(&path, k, e)?
        {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn write(path: &Path, file: &AuthFile) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating", dir))?;
    }
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(file).unwrap_or_default();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    f.write_all(&data).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
}

/// Records credentials for `key` (a registry, or `registry/namespace`) in the auth file.
pub fn store(key: &str, c: &Credentials) -> Result<PathBuf> {
    let path = auth_file();
    let mut file = read(&path)?;
    let entry = file.auths.entry(key.to_owned()).or_default();
    entry.auth = STANDARD.encode(format!("{}:{}", c.username, c.password));
    write(&path, &file)?;
    Ok(path)
}

/// Removes `key`'s credentials from the auth file; false when there were none.
pub fn remove(key: &str) -> Result<bool> {
    let path = auth_file();
    let mut file = read(&path)?;
    let before = file.auths.len();
    file.auths.retain(|k, _| normalise_key(k) != key);
    if file.auths.len() == before {
        return Ok(false);
    }
    write(&path, &file)?;
    Ok(true)
}

/// A `WWW-Authenticate` challenge (RFC 7235: scheme, then `key="value"` pairs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses the first challenge of a header value; None when it is not one.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(' ') {
            Some((s, r)) => (s, r.trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return None;
        }
        let mut params = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = if let Some(q) = after.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => v.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                (v, &q[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            params.insert(key, value);
            rest = next.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let b = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
        let esc = Challenge::parse(r#"Bearer realm="a\"b", error=invalid_token"#).unwrap();
        assert_eq!(esc.params["realm"], "a\"b");
        assert_eq!(esc.params["error"], "invalid_token");
        assert!(Challenge::parse(r#"Bearer realm="unterminated"#).is_none());
        assert!(Challenge::parse("").is_none());
    }

    #[test]
    fn keys() {
        assert_eq!(normalise_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalise_key("quay.io/ns"), "quay.io/ns");
        assert_eq!(normalise_key("http://localhost:5000"), "localhost:5000");
    }

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.basic(), "Basic dTpzM2NyZXQ=");
    }
}
