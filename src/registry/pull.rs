//! `strata pull`: manifest (an index resolved to this platform), config, then every layer
//! the store lacks, a few at a time, each streamed straight from the response into
//! `image::layer::stage` (sha256 of the blob, sha256 of the tar against the diff_id, unpack,
//! in one pass). The store is changed by `image::import::commit` only after all passed, under
//! its lock, exactly as `image import` does.

use std::collections::HashMap;
use std::io::Read;

use indicatif::ProgressBar;
use ureq::http::Method;

use crate::image::digest::chain_ids;
use crate::image::import::{self, Found, LayerSource};
use crate::image::layer::{self, LayerJob, Staged};
use crate::image::oci::{self, ConfigView, Descriptor};
use crate::image::unpack::UnpackOptions;
use crate::image::{Digest, ImageError, Store};

use super::auth;
use super::client::{self, Body, Client, ClientOptions, header, read_doc};
use super::config::{Endpoint, RegistriesConf};
use super::error::{RegistryError, Result, protocol};
use super::manifest::{self, ACCEPT, Parsed, PlatformSpec};
use super::pool::{self, Progress};
use super::reference::ImageRef;
use super::resume::Partial;

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub platform: PlatformSpec,
    pub tls_verify: bool,
    pub quiet: bool,
    /// Concurrent blob downloads.
    pub jobs: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: PlatformSpec::host(),
            tls_verify: true,
            quiet: false,
            jobs: 3,
        }
    }
}

#[derive(Debug)]
pub struct Pulled {
    /// The name recorded in the store.
    pub name: String,
    /// The digest of the manifest stored (the registry's, for OCI manifests).
    pub manifest_digest: Digest,
    pub layers: usize,
    pub layers_fetched: usize,
    /// Layer bytes downloaded.
    pub bytes_fetched: u64,
}

/// Pulls `r` (through registries.conf's search list, mirrors and prefixes) into the store.
pub fn pull(store: &Store, r: &ImageRef, opts: &PullOptions) -> Result<Pulled> {
    let conf = RegistriesConf::load()?;
    let endpoints = conf.pull_endpoints(r)?;
    let mut last = None;
    let n = endpoints.len();
    for (i, ep) in endpoints.into_iter().enumerate() {
        let insecure = ep.insecure || conf.insecure(&ep.reference.registry);
        match pull_from(store, &ep, insecure, opts) {
            Ok(p) => return Ok(p),
            // The next mirror or search registry may have it.
            Err(e @ (RegistryError::ManifestNotFound { .. } | RegistryError::Connect { .. }))
                if i + 1 < n =>
            {
                if !opts.quiet {
                    eprintln!("strata: {e}; trying the next registry");
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| protocol("pulling", r.to_string(), "no registry to pull from")))
}

/// Connects with the stored credentials for `r`'s registry and repository.
pub fn connect(r: &ImageRef, insecure: bool, tls_verify: bool) -> Result<Client> {
    let credentials = auth::lookup(&r.registry, &r.repository)?;
    Client::connect(
        &r.registry,
        &ClientOptions {
            tls_verify,
            insecure,
            credentials,
        },
    )
}

/// Maps the statuses every registry GET shares; `Ok` for 2xx.
fn check(
    c: &Client,
    resp: &mut ureq::http::Response<ureq::Body>,
    step: &'static str,
    url: &str,
    scope: &str,
    not_found: impl FnOnce() -> RegistryError,
) -> Result<()> {
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(c.unauthorized(scope)),
        404 => Err(not_found()),
        s => Err(RegistryError::Status {
            step,
            url: url.to_owned(),
            status: s,
            message: client::error_message(resp),
        }),
    }
}

/// GET a manifest by tag or digest; checked against the digest asked for and the one the
/// registry announces. Returns the bytes, their media type and digest.
pub fn get_manifest(
    c: &Client,
    r: &ImageRef,
    reference: &str,
) -> Result<(Vec<u8>, String, Digest)> {
    let scope = client::scope(&r.repository, "pull");
    let path = format!("/v2/{}/manifests/{reference}", r.repository);
    let mut resp = c.request(
        Method::GET,
        &path,
        std::slice::from_ref(&scope),
        &[("accept", ACCEPT.to_owned())],
        Body::Empty,
    )?;
    check(c, &mut resp, "fetching manifest", &path, &scope, || {
        RegistryError::ManifestNotFound {
            reference: r.to_string(),
        }
    })?;
    let ct = header(&resp, "content-type").unwrap_or("").to_owned();
    let announced = header(&resp, "docker-content-digest").map(str::to_owned);
    let bytes = read_doc(&mut resp, &format!("manifest of {r}"))?;
    let digest = Digest::of(&bytes);
    let want = Digest::parse(reference).ok().or(announced
        .as_deref()
        .filter(|a| a.starts_with("sha256:"))
        .map(Digest::parse)
        .transpose()?);
    if let Some(w) = want.filter(|w| *w != digest) {
        return Err(ImageError::DigestMismatch {
            expected: format!("manifest {w} of {r}"),
            actual: digest.to_string(),
        }
        .into());
    }
    Ok((bytes, ct, digest))
}

/// GET a blob (from byte `from` on: a Range request): the response, ready to stream.
pub fn get_blob(
    c: &Client,
    r: &ImageRef,
    d: &Digest,
    from: u64,
) -> Result<ureq::http::Response<ureq::Body>> {
    let scope = client::scope(&r.repository, "pull");
    let path = format!("/v2/{}/blobs/{d}", r.repository);
    let range = [("range", format!("bytes={from}-"))];
    let headers: &[(&str, String)] = if from > 0 { &range } else { &[] };
    let mut resp = c.request(
        Method::GET,
        &path,
        std::slice::from_ref(&scope),
        headers,
        Body::Empty,
    )?;
    check(c, &mut resp, "fetching blob", &path, &scope, || {
        protocol(
            "fetching",
            format!("blob {d} of {r}"),
            "the registry does not have it",
        )
    })?;
    Ok(resp)
}

/// The image manifest for the platform, resolving (nested) indexes.
fn resolve(c: &Client, r: &ImageRef, platform: &PlatformSpec) -> Result<(oci::Manifest, Vec<u8>)> {
    let mut reference = r.reference();
    for _ in 0..4 {
        let (bytes, ct, digest) = get_manifest(c, r, &reference)?;
        match manifest::parse(&bytes, &ct, &format!("manifest {digest} of {r}"))? {
            Parsed::Manifest(m) => return Ok((m, bytes)),
            Parsed::Index(i) => {
                reference = manifest::select(&i, platform, &format!("index {digest} of {r}"))?
                    .digest
                    .clone();
                Digest::parse(&reference)?;
            }
        }
    }
    Err(protocol(
        "resolving",
        r.to_string(),
        "indexes nested too deeply",
    ))
}

/// Layers are all staged by `pull_from` before `stage_image` runs: it never reads.
struct Prestaged;

impl LayerSource for Prestaged {
    fn layer(&self, rel: &str) -> crate::image::Result<(Box<dyn Read + '_>, u64)> {
        Err(crate::image::error::invalid(
            format!("layer {rel}"),
            "was not fetched",
        ))
    }
}

struct Job<'a> {
    n: usize,
    key: String,
    desc: &'a Descriptor,
    digest: Digest,
    diff_id: &'a Digest,
    chain: &'a Digest,
}

fn pull_from(store: &Store, ep: &Endpoint, insecure: bool, opts: &PullOptions) -> Result<Pulled> {
    let r = &ep.reference;
    let c = connect(r, insecure, opts.tls_verify)?;
    let (m, manifest_bytes) = resolve(&c, r, &opts.platform)?;
    let cd = m.config.digest()?;
    let mut resp = get_blob(&c, r, &cd, 0)?;
    let config_bytes = read_doc(&mut resp, &format!("config {cd}"))?;
    if Digest::of(&config_bytes) != cd {
        return Err(ImageError::DigestMismatch {
            expected: cd.to_string(),
            actual: Digest::of(&config_bytes).to_string(),
        }
        .into());
    }
    let config: ConfigView = oci::parse(&config_bytes, &format!("config {cd}"))?;
    let diff_ids = config.diff_ids()?;
    if diff_ids.len() != m.layers.len() {
        return Err(protocol(
            "checking",
            format!("image {r}"),
            format!(
                "config lists {} diff_ids for {} layers",
                diff_ids.len(),
                m.layers.len()
            ),
        ));
    }
    let chains = chain_ids(&diff_ids);
    let mut jobs = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        let d = l.digest()?;
        let key = import::layer_key(d.as_str(), &chains[i]);
        if import::in_store(store, &d, &chains[i]) || jobs.iter().any(|j: &Job| j.key == key) {
            continue;
        }
        jobs.push(Job {
            n: i,
            key,
            desc: l,
            digest: d,
            diff_id: &diff_ids[i],
            chain: &chains[i],
        });
    }
    let staging = store.staging()?;
    let fetched = jobs.len();
    // `_locks` keeps the verified partial files locked until the commit has moved them.
    let (mut staged, bytes, _locks) = fetch_layers(store, &c, r, jobs, &staging.path, opts)?;
    let name = ep.name.store_name();
    let found = Found {
        names: vec![name.clone()],
        refs: Vec::new(),
        config_bytes,
        config_digest: cd,
        layers: m
            .layers
            .iter()
            .map(|l| (l.digest.clone(), Some(l.clone())))
            .collect(),
        manifest: Some((m, manifest_bytes)),
    };
    let plan = import::stage_image(store, &Prestaged, &found, &staging.path, &mut staged)?;
    let manifest_digest = Digest::of(&plan.manifest_bytes);
    import::commit(
        store,
        std::slice::from_ref(&found),
        std::slice::from_ref(&plan),
        &staged,
    )?;
    Ok(Pulled {
        name,
        manifest_digest,
        layers: found.layers.len(),
        layers_fetched: fetched,
        bytes_fetched: bytes,
    })
}

/// Downloads and stages the layers, `opts.jobs` at a time.
fn fetch_layers(
    store: &Store,
    c: &Client,
    r: &ImageRef,
    jobs: Vec<Job<'_>>,
    dir: &std::path::Path,
    opts: &PullOptions,
) -> Result<(HashMap<String, Staged>, u64, Vec<std::fs::File>)> {
    let total = jobs.len();
    let progress = Progress::new(opts.quiet);
    let done = pool::run(jobs, opts.jobs, |i, job| {
        let label = format!("layer {}/{total} {}", i + 1, job.digest.short());
        let pb = progress.bar(job.desc.size, &label);
        let (s, net, lock) =
            fetch_one(store, c, r, &job, dir, (&progress, &pb)).inspect_err(|_| pb.abandon())?;
        progress.done(&pb, &label, "fetched", net);
        Ok((job.key, s, net, lock))
    })?;
    let bytes = done.iter().map(|(_, _, n, _)| n).sum();
    let mut locks = Vec::new();
    let mut staged = HashMap::new();
    for (k, s, _, lock) in done {
        locks.extend(lock);
        staged.insert(k, s);
    }
    Ok((staged, bytes, locks))
}

/// Fetches and stages one layer; returns it with the bytes that came over the network and
/// the lock of its partial file.
fn fetch_one(
    store: &Store,
    c: &Client,
    r: &ImageRef,
    job: &Job<'_>,
    dir: &std::path::Path,
    (progress, pb): (&Progress, &ProgressBar),
) -> Result<(Staged, u64, Option<std::fs::File>)> {
    let keep = !store.has_blob(&job.digest);
    // Blobs the store will keep go through a resumable partial file.
    let partial = match keep {
        true => Partial::open(store, &job.digest)?,
        false => None,
    };
    let lj = LayerJob {
        label: job.digest.to_string(),
        expected: Some((&job.digest, Some(job.desc.size))),
        diff_id: job.diff_id,
        keep_blob: keep && partial.is_none(),
        unpack: !store.has_layer(job.chain),
        opts: UnpackOptions::for_current_user(),
    };
    let Some(mut p) = partial else {
        let net = get_blob(c, r, &job.digest, 0)?.into_body().into_reader();
        let s = layer::stage(dir, job.n, Capped::new(net, job.desc.size), &lj, pb)?;
        let n = s.size;
        return Ok((s, n, None));
    };
    if p.len > job.desc.size {
        p.reset()?;
    }
    // Complete already (an earlier pull failed on another layer): nothing to ask for.
    let net: Box<dyn Read + Send> = if p.len == job.desc.size {
        Box::new(std::io::empty())
    } else {
        let resp = get_blob(c, r, &job.digest, p.len)?;
        let resumed = resp.status().as_u16() == 206
            && header(&resp, "content-range")
                .is_some_and(|v| v.starts_with(&format!("bytes {}-", p.len)));
        if !resumed {
            p.reset()?;
        }
        Box::new(resp.into_body().into_reader())
    };
    if p.len > 0 {
        progress.note(pb, &format!("{}: resuming at byte {}", job.digest, p.len));
    }
    let kept = p.len;
    let (reader, net_failed) = p.reader(net)?;
    // The cap is outside the partial file's tee: a blob too long is not the network's fault.
    let res = layer::stage(dir, job.n, Capped::new(reader, job.desc.size), &lj, pb);
    match res {
        Ok(mut s) => {
            let (path, lock) = p.finish()?;
            s.blob = Some(path);
            let n = s.size - kept;
            Ok((s, n, Some(lock)))
        }
        // The connection died: keep what came for the next run.
        Err(e) if net_failed.load(std::sync::atomic::Ordering::Relaxed) => Err(e.into()),
        Err(e) => {
            p.discard();
            Err(e.into())
        }
    }
}

/// A blob stream cut at its descriptor's size: a byte more is an error, so a registry
/// cannot keep the unpacker reading forever.
struct Capped<R> {
    inner: R,
    left: u64,
    size: u64,
}

impl<R: Read> Capped<R> {
    fn new(inner: R, size: u64) -> Self {
        Capped {
            inner,
            left: size,
            size,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the registry sent more than the descriptor's {} bytes",
                        self.size
                    ),
                )),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}
