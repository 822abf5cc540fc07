//! A blocking OCI distribution client over ureq: `GET /v2/` first, then requests that
//! answer a 401 by following its challenge (Basic with the stored credentials, or the Bearer
//! token flow: realm, service and scope from `WWW-Authenticate`, tokens cached per scope and
//! refetched on expiry or when refused) and try once more.
//!
//! Why blocking: strata is a daemonless CLI with no async runtime; a pull is a handful of
//! long streams, and each one feeds a synchronous unpacker, so a thread per download (a few
//! at a time) is the simplest design and costs nothing measurable.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::http::{self, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body as RespBody};

use super::auth::{Challenge, Credentials};
use super::config;
use super::error::{RegistryError, Result, io_err, protocol};

/// Largest JSON document (manifest, index, token answer) read into memory.
pub const MAX_DOC: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Verify TLS certificates (`--tls-verify=false` turns this off and allows plain HTTP).
    pub tls_verify: bool,
    /// registries.conf says `insecure = true`: plain HTTP allowed, certificates not checked.
    pub insecure: bool,
    pub credentials: Option<Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_verify: true,
            insecure: false,
            credentials: None,
        }
    }
}

/// A request body that can be sent again (after a 401, say).
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        /// Counts the bytes sent (set back to `offset` when the body is sent again).
        progress: Option<&'a indicatif::ProgressBar>,
    },
}

struct Token {
    value: String,
    expires: Instant,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
}

pub struct Client {
    agent: Agent,
    /// `host[:port]` as named in references.
    pub registry: String,
    /// `https://host` or `http://host`.
    base: String,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    fetching: Mutex<()>,
}

/// docker.io's API lives elsewhere.
fn api_host(registry: &str) -> &str {
    if registry == super::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

fn agent(registry: &str, verify: bool) -> Result<Agent> {
    let mut tls = TlsConfig::builder().disable_verification(!verify);
    let certs = config::ca_certs(registry);
    if !certs.is_empty() {
        let mut roots = Vec::new();
        for (path, pem) in &certs {
            let c = Certificate::from_pem(pem).map_err(|e| RegistryError::Config {
                path: path.clone(),
                why: format!("not a PEM certificate: {e}"),
            })?;
            roots.push(c);
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    Ok(Agent::config_builder()
        .http_status_as_error(false)
        // Redirects are followed by `follow`, which refuses schemes other than http(s).
        .max_redirects(0)
        .tls_config(tls.build())
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .max_idle_connections_per_host(8)
        .build()
        .into())
}

/// A transport failure, naming the host.
fn transport(step: &'static str, host: &str, e: ureq::Error) -> RegistryError {
    let why = match &e {
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_owned()
        }
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        e => e.to_string(),
    };
    RegistryError::Connect {
        step,
        host: host.to_owned(),
        why,
    }
}

pub fn header<'a>(r: &'a Response<RespBody>, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The body of a (small) response.
pub fn read_doc(r: &mut Response<RespBody>, what: &str) -> Result<Vec<u8>> {
    r.body_mut()
        .with_config()
        .limit(MAX_DOC)
        .read_to_vec()
        .map_err(|e| protocol("reading", what, e.to_string()))
}

/// The registry's error message (`{"errors":[{"code","message"}]}`), for error texts.
pub fn error_message(r: &mut Response<RespBody>) -> String {
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let msgs: Vec<String> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let code = e["code"].as_str().unwrap_or("");
            let msg = e["message"].as_str().unwrap_or("");
            format!("{code}: {msg}").trim_matches([' ', ':']).to_owned()
        })
        .collect();
    msgs.join("; ")
}

impl Client {
    /// Connects to `registry` (`GET /v2/`), choosing https, or plain http when it is
    /// insecure and https does not answer.
    pub fn connect(registry: &str, opts: &ClientOptions) -> Result<Client> {
        let verify = opts.tls_verify && !opts.insecure;
        let host = api_host(registry);
        let mut schemes = vec!["https"];
        if !verify {
            schemes.push("http");
        }
        let mut last = None;
        for scheme in schemes {
            let client = Client {
                agent: agent(registry, verify)?,
                registry: registry.to_owned(),
                base: format!("{scheme}://{host}"),
                creds: opts.credentials.clone(),
                auth: Mutex::new(AuthState::default()),
                fetching: Mutex::new(()),
            };
            match client.ping() {
                Ok(()) => return Ok(client),
                Err(e @ RegistryError::Connect { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| protocol("connecting to", registry, "no scheme to try")))
    }

    fn ping(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let req = http::Request::get(&url)
            .body(())
            .map_err(|e| protocol("building request", &url, e.to_string()))?;
        let mut r = self
            .agent
            .run(req)
            .map_err(|e| transport("connecting to", &self.registry, e))?;
        match r.status().as_u16() {
            200..=299 => Ok(()),
            401 => {
                let ch = header(&r, "www-authenticate").and_then(Challenge::parse);
                self.lock().challenge = ch;
                Ok(())
            }
            s => Err(RegistryError::Status {
                step: "pinging",
                url,
                status: s,
                message: error_message(&mut r),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A panic elsewhere cannot leave the token map inconsistent: recover it.
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether requests go with credentials (for error messages).
    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// Checks the credentials (login): the registry must accept them for `scope` (or for
    /// `/v2/` when it has no Bearer flow).
    pub fn check_login(&self) -> Result<()> {
        let mut r = self.request(http::Method::GET, "/v2/", &[], &[], Body::Empty)?;
        match r.status().as_u16() {
            200..=299 => Ok(()),
            401 => Err(self.unauthorized("")),
            s => Err(RegistryError::Status {
                step: "logging in to",
                url: format!("{}/v2/", self.base),
                status: s,
                message: error_message(&mut r),
            }),
        }
    }

    /// The error for a request the registry refused with 401 or 403.
    pub fn unauthorized(&self, scope: &str) -> RegistryError {
        let bearer = self
            .lock()
            .challenge
            .as_ref()
            .is_some_and(|c| c.scheme == "bearer");
        match (&self.creds, bearer) {
            (None, _) => RegistryError::LoginRequired {
                registry: self.registry.clone(),
            },
            (Some(_), true) if !scope.is_empty() => RegistryError::Denied {
                registry: self.registry.clone(),
                scope: scope.to_owned(),
            },
            (Some(_), _) => RegistryError::BadCredentials {
                registry: self.registry.clone(),
            },
        }
    }

    /// An absolute URL for a path (`/v2/...`) or a `Location` header (maybe relative).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base)
        } else {
            format!("{}/{path_or_url}", self.base)
        }
    }

    /// Sends a request with authentication; a 401 is answered once by following its
    /// challenge. `scopes` are the token scopes the request needs
    /// (`repository:NAME:pull[,push]`). The response may be any status.
    pub fn request(
        &self,
        method: http::Method,
        path_or_url: &str,
        scopes: &[String],
        headers: &[(&str, String)],
        body: Body<'_>,
    ) -> Result<Response<RespBody>> {
        let url = self.url(path_or_url);
        let mut wanted: BTreeSet<String> = scopes.iter().cloned().collect();
        for attempt in 0..2 {
            let auth = self.authorization(&wanted)?;
            let mut b = http::Request::builder().method(method.clone()).uri(&url);
            for (k, v) in headers {
                b = b.header(*k, v);
            }
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            let r = self.send(b, &url, &body)?;
            if r.status().as_u16() != 401 || attempt > 0 {
                return self.follow(r, &method, &url, headers);
            }
            let Some(ch) = header(&r, "www-authenticate").and_then(Challenge::parse) else {
                return Ok(r);
            };
            if let Some(s) = ch.params.get("scope") {
                wanted.extend(s.split(' ').map(str::to_owned));
            }
            let mut st = self.lock();
            st.tokens.remove(&scope_key(&wanted));
            st.challenge = Some(ch);
        }
        Err(protocol("requesting", url, "authentication loop"))
    }

    /// Follows a GET or HEAD's redirects (blob GETs go to storage), at most 10, without the
    /// Authorization header (ureq's rule too); a `Location` that is not http(s), or that
    /// goes from https to plain http, is refused.
    fn follow(
        &self,
        mut r: Response<RespBody>,
        method: &http::Method,
        from: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<RespBody>> {
        let mut url = from.to_owned();
        for _ in 0..10 {
            let status = r.status().as_u16();
            let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
            if !redirect || !(method == http::Method::GET || method == http::Method::HEAD) {
                return Ok(r);
            }
            let loc = header(&r, "location").unwrap_or("");
            let next = redirect_target(&url, loc)
                .map_err(|why| protocol("following a redirect from", url.as_str(), why))?;
            let mut b = http::Request::builder().method(method.clone()).uri(&next);
            for (k, v) in headers {
                b = b.header(*k, v);
            }
            r = self.send(b, &next, &Body::Empty)?;
            url = next;
        }
        Err(protocol("following redirects from", from, "more than 10"))
    }

    fn send(
        &self,
        b: http::request::Builder,
        url: &str,
        body: &Body<'_>,
    ) -> Result<Response<RespBody>> {
        let build_err = |e: http::Error| protocol("building request", url, e.to_string());
        let res = match body {
            Body::Empty => self.agent.run(b.body(()).map_err(build_err)?),
            Body::Bytes(d) => self.agent.run(
                b.header("content-length", d.len().to_string())
                    .body(*d)
                    .map_err(build_err)?,
            ),
            Body::File {
                path,
                offset,
                len,
                progress,
            } => {
                let mut f = File::open(path).map_err(io_err("opening", *path))?;
                f.seek(SeekFrom::Start(*offset))
                    .map_err(io_err("seeking", *path))?;
                let reader = match progress {
                    Some(pb) => {
                        pb.set_position(*offset);
                        ureq::SendBody::from_owned_reader(pb.wrap_read(f.take(*len)))
                    }
                    None => ureq::SendBody::from_owned_reader(f.take(*len)),
                };
                self.agent.run(
                    b.header("content-length", len.to_string())
                        .body(reader)
                        .map_err(build_err)?,
                )
            }
        };
        res.map_err(|e| transport("sending to", &self.registry, e))
    }

    /// The Authorization header for these scopes, per the last challenge.
    fn authorization(&self, scopes: &BTreeSet<String>) -> Result<Option<String>> {
        let ch = self.lock().challenge.clone();
        let Some(ch) = ch else {
            return Ok(None);
        };
        match ch.scheme.as_str() {
            "basic" => Ok(self.creds.as_ref().map(Credentials::basic)),
            "bearer" => {
                let key = scope_key(scopes);
                let cached = |st: &AuthState| {
                    st.tokens
                        .get(&key)
                        .filter(|t| t.expires > Instant::now())
                        .map(|t| format!("Bearer {}", t.value))
                };
                if let Some(v) = cached(&self.lock()) {
                    return Ok(Some(v));
                }
                // One fetch at a time: parallel blob requests of the same scope share it.
                let _one = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(v) = cached(&self.lock()) {
                    return Ok(Some(v));
                }
                let t = self.fetch_token(&ch, scopes)?;
                let value = format!("Bearer {}", t.value);
                self.lock().tokens.insert(key, t);
                Ok(Some(value))
            }
            _ => Ok(None),
        }
    }

    /// The token flow (distribution's token spec): GET realm?service=..&scope=.., with Basic
    /// credentials when there are some (anonymous otherwise).
    fn fetch_token(&self, ch: &Challenge, scopes: &BTreeSet<String>) -> Result<Token> {
        let realm = ch.params.get("realm").ok_or_else(|| {
            protocol(
                "authenticating to",
                &self.registry,
                "Bearer challenge without realm",
            )
        })?;
        let mut url = realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        let mut add = |k: &str, v: &str| {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&encode(v));
            sep = '&';
        };
        if let Some(s) = ch.params.get("service") {
            add("service", s);
        }
        for s in scopes {
            add("scope", s);
        }
        let mut b = http::Request::get(&url);
        if let Some(c) = &self.creds {
            b = b.header("authorization", c.basic());
        }
        let req = b
            .body(())
            .map_err(|e| protocol("building request", realm, e.to_string()))?;
        let realm_host = host_of_url(realm);
        let mut r = self
            .agent
            .run(req)
            .map_err(|e| transport("fetching a token from", realm_host, e))?;
        match r.status().as_u16() {
            200 => {}
            401 | 403 => return Err(self.unauthorized("")),
            s => {
                return Err(RegistryError::Status {
                    step: "fetching a token from",
                    url: realm.clone(),
                    status: s,
                    message: error_message(&mut r),
                });
            }
        }
        let doc = read_doc(&mut r, "token answer")?;
        let v: serde_json::Value = serde_json::from_slice(&doc)
            .map_err(|e| protocol("reading token from", realm.as_str(), e.to_string()))?;
        let value = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                protocol(
                    "reading token from",
                    realm.as_str(),
                    "no token in the answer",
                )
            })?;
        // The spec's default lifetime is 60 s; renew a little early.
        let secs = v["expires_in"].as_u64().unwrap_or(60).max(10);
        Ok(Token {
            value: value.to_owned(),
            expires: Instant::now() + Duration::from_secs(secs - 5),
        })
    }
}

/// The absolute URL a `Location` names, relative to `base`; only http(s) targets.
fn redirect_target(base: &str, loc: &str) -> std::result::Result<String, String> {
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let origin = format!("{scheme}://{}", host_of_url(base));
    let target = if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_owned()
    } else if let Some(r) = loc.strip_prefix("//") {
        format!("{scheme}://{r}")
    } else if loc.starts_with('/') {
        format!("{origin}{loc}")
    } else if loc.is_empty()
        || loc
            .split('/')
            .next()
            .is_some_and(|first| first.contains(':'))
    {
        return Err(format!(
            "redirect to {loc:?} refused: only http and https are followed"
        ));
    } else {
        let dir = rest.rsplit_once('/').map_or(rest, |(d, _)| d);
        format!("{scheme}://{dir}/{loc}")
    };
    if scheme == "https" && target.starts_with("http://") {
        return Err(format!(
            "redirect to {loc:?} refused: from https to plain http"
        ));
    }
    Ok(target)
}

fn scope_key(scopes: &BTreeSet<String>) -> String {
    scopes.iter().cloned().collect::<Vec<_>>().join(" ")
}

fn host_of_url(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `repository:NAME:ACTIONS`.
pub fn scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(host_of_url("https://auth.io:5001/token?x"), "auth.io:5001");
        let base = "https://r.io/v2/a/blobs/sha256:1";
        assert_eq!(redirect_target(base, "/s/x").unwrap(), "https://r.io/s/x");
        assert_eq!(
            redirect_target(base, "https://s3.io/b?s=1").unwrap(),
            "https://s3.io/b?s=1"
        );
        assert_eq!(
            redirect_target(base, "//s3.io/b").unwrap(),
            "https://s3.io/b"
        );
        assert_eq!(
            redirect_target(base, "x").unwrap(),
            "https://r.io/v2/a/blobs/x"
        );
        assert!(redirect_target(base, "file:///etc/passwd").is_err());
        assert!(redirect_target(base, "http://r.io/x").is_err());
        assert!(redirect_target("http://r.io/v2/", "https://r.io/x").is_ok());
    }
}
