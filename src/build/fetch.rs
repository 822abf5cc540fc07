//! ADD of a URL: the file is fetched by the builder (RUN has no network unless asked; ADD
//! is the Dockerfile's way to download), once per build, so its content is part of the
//! step's cache key like any source. Written as docker does: mode 0600, owner root, the name
//! the URL's last path component, never extracted.

use std::fs::File;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::copy::{Entry, Meta, Source, Src};
use crate::image::Store;

/// Whether a COPY/ADD source names a URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The file name a URL's download gets in a destination directory.
fn url_name(url: &str) -> Vec<u8> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    after_host
        .rsplit('/')
        .find(|c| !c.is_empty())
        .unwrap_or("index.html")
        .as_bytes()
        .to_vec()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn why(e: ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused".to_owned()
        }
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        e => e.to_string(),
    }
}

/// Downloads `url` into the store's staging space (the file stays open, its name removed);
/// `checksum` (`sha256:HEX`) must match when given. Errors are one line for the step.
pub fn fetch(
    store: &Store,
    url: &str,
    checksum: Option<&str>,
    mtime: i64,
) -> Result<Source, String> {
    let want = match checksum {
        None => None,
        Some(c) => Some(
            c.strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("--checksum={c}: expected sha256:<64 hex digits>"))?
                .to_ascii_lowercase(),
        ),
    };
    let resp = agent().get(url).call().map_err(why)?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let staging = store.staging().map_err(|e| e.to_string())?;
    let path = staging.path.join("download");
    let io_why = |e: io::Error| format!("downloading into {}: {e}", path.display());
    let mut out = File::create(&path).map_err(io_why)?;
    let mut body = resp.into_body().into_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("reading the body: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_why)?;
    }
    drop(out);
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(w) = want
        && w != got
    {
        return Err(format!(
            "checksum mismatch: got sha256:{got}, expected sha256:{w}"
        ));
    }
    let f = File::open(&path).map_err(io_why)?;
    Ok(Source {
        name: url_name(url),
        is_dir: false,
        entries: vec![Entry {
            rel: Vec::new(),
            src: Src::Fetched(Rc::new(f)),
            meta: Meta {
                mode: 0o600,
                uid: 0,
                gid: 0,
                mtime,
            },
            xattrs: Vec::new(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        for (u, n) in [
            ("http://h/a/b.tar.gz", "b.tar.gz"),
            ("https://h:8080/x/?q=1", "x"),
            ("http://h", "index.html"),
            ("http://h/", "index.html"),
            ("http://h/f#frag", "f"),
        ] {
            assert_eq!(url_name(u), n.as_bytes(), "{u}");
        }
    }
}
