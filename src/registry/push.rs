//! `strata push`: every blob of the image (layers, config) is checked with `HEAD` and skipped
//! when the registry has it, mounted from another repository of the same registry when an
//! image in the store came from there, else uploaded (one `PUT` up to the chunk size, `PATCH`
//! chunks beyond it), a few at a time. Then the manifest, byte for byte as stored: the
//! registry's `Docker-Content-Digest` must equal the digest `strata image inspect` shows.

use std::collections::HashMap;

use ureq::http::{Method, Response};

use crate::image::oci;
use crate::image::{Digest, Store};

use super::client::{self, Body, Client, header};
use super::config::RegistriesConf;
use super::error::{RegistryError, Result, protocol};
use super::pool::{self, Progress};
use super::pull::connect;
use super::reference::ImageRef;

#[derive(Clone, Debug)]
pub struct PushOptions {
    pub tls_verify: bool,
    pub quiet: bool,
    pub jobs: usize,
    /// Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size.
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            tls_verify: true,
            quiet: false,
            jobs: 3,
            chunk_size: 64 << 20,
        }
    }
}

#[derive(Debug)]
pub struct Pushed {
    pub reference: String,
    pub digest: Digest,
    pub uploaded: usize,
    pub skipped: usize,
    pub mounted: usize,
    pub bytes_uploaded: u64,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Outcome {
    Exists,
    Mounted,
    Uploaded(u64),
}

/// Repositories of the same registry that hold each blob, from the names of the images in
/// the store (pulled from or pushed to there).
fn mount_sources(store: &Store, dest: &ImageRef) -> HashMap<Digest, String> {
    let mut out = HashMap::new();
    let Ok(images) = store.images() else {
        return out;
    };
    for name in images.keys() {
        let Ok(r) = ImageRef::parse(name) else {
            continue;
        };
        if r.registry != dest.registry || r.repository == dest.repository {
            continue;
        }
        let Ok(img) = store.get(name) else { continue };
        for desc in img.manifest.layers.iter().chain([&img.manifest.config]) {
            if let Ok(d) = desc.digest() {
                out.entry(d).or_insert_with(|| r.repository.clone());
            }
        }
    }
    out
}

/// Pushes the stored image `image` to `dest` (by tag, or by digest: then it must be the
/// image's).
pub fn push(store: &Store, image: &str, dest: &ImageRef, opts: &PushOptions) -> Result<Pushed> {
    let img = store.get(image)?;
    let manifest_bytes = store.read_blob(&img.manifest_digest)?;
    if let Some(d) = dest.digest.as_ref().filter(|d| **d != img.manifest_digest) {
        return Err(protocol(
            "pushing",
            dest.to_string(),
            format!(
                "{image} has manifest digest {}, not {d}",
                img.manifest_digest
            ),
        ));
    }
    let conf = RegistriesConf::load()?;
    let ep = conf.push_endpoint(dest)?;
    let r = &ep.reference;
    let c = connect(
        r,
        ep.insecure || conf.insecure(&r.registry),
        opts.tls_verify,
    )?;
    let sources = mount_sources(store, r);
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for l in &img.manifest.layers {
        blobs.push((l.digest()?, l.size));
    }
    blobs.push((img.manifest.config.digest()?, img.manifest.config.size));
    blobs.dedup();
    let total = blobs.len();
    let progress = Progress::new(opts.quiet);
    let outcomes = pool::run(blobs, opts.jobs, |i, (d, size)| {
        let label = format!("blob {}/{total} {}", i + 1, d.short());
        let pb = progress.bar(size, &label);
        let from = sources.get(&d).map(String::as_str);
        let o = upload(&c, r, store, &d, size, from, opts.chunk_size, &pb)
            .inspect_err(|_| pb.abandon())?;
        let what = match o {
            Outcome::Exists => "exists",
            Outcome::Mounted => "mounted",
            Outcome::Uploaded(_) => "pushed",
        };
        progress.done(&pb, &label, what, size);
        Ok(o)
    })?;
    let mut pushed = Pushed {
        reference: r.to_string(),
        digest: img.manifest_digest.clone(),
        uploaded: 0,
        skipped: 0,
        mounted: 0,
        bytes_uploaded: 0,
    };
    for o in outcomes {
        match o {
            Outcome::Exists => pushed.skipped += 1,
            Outcome::Mounted => pushed.mounted += 1,
            Outcome::Uploaded(n) => {
                pushed.uploaded += 1;
                pushed.bytes_uploaded += n;
            }
        }
    }
    let media_type = img
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| oci::MT_MANIFEST.to_owned());
    put_manifest(&c, r, &manifest_bytes, &media_type, &img.manifest_digest)?;
    Ok(pushed)
}

fn scopes(r: &ImageRef, from: Option<&str>) -> Vec<String> {
    let mut s = vec![client::scope(&r.repository, "pull,push")];
    if let Some(f) = from {
        s.push(client::scope(f, "pull"));
    }
    s
}

/// Maps a refusal of a push request.
fn refused(
    c: &Client,
    resp: &mut Response<ureq::Body>,
    step: &'static str,
    url: &str,
    scope: &str,
) -> RegistryError {
    match resp.status().as_u16() {
        401 | 403 => c.unauthorized(scope),
        s => RegistryError::Status {
            step,
            url: url.to_owned(),
            status: s,
            message: client::error_message(resp),
        },
    }
}

fn location(resp: &Response<ureq::Body>, step: &str, what: &str) -> Result<String> {
    header(resp, "location").map(str::to_owned).ok_or_else(|| {
        protocol(
            "uploading",
            what,
            format!("no Location in the answer to {step}"),
        )
    })
}

fn with_query(url: &str, q: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{q}")
}

#[allow(clippy::too_many_arguments)]
fn upload(
    c: &Client,
    r: &ImageRef,
    store: &Store,
    d: &Digest,
    size: u64,
    from: Option<&str>,
    chunk: u64,
    pb: &indicatif::ProgressBar,
) -> Result<Outcome> {
    let sc = scopes(r, from);
    let blob_path = format!("/v2/{}/blobs/{d}", r.repository);
    let mut head = c.request(Method::HEAD, &blob_path, &sc, &[], Body::Empty)?;
    match head.status().as_u16() {
        200 => return Ok(Outcome::Exists),
        404 => {}
        _ => return Err(refused(c, &mut head, "checking blob", &blob_path, &sc[0])),
    }
    let start = match from {
        Some(f) => format!(
            "/v2/{}/blobs/uploads/?mount={d}&from={}",
            r.repository,
            client::encode(f)
        ),
        None => format!("/v2/{}/blobs/uploads/", r.repository),
    };
    let mut resp = c.request(Method::POST, &start, &sc, &[], Body::Bytes(b""))?;
    match resp.status().as_u16() {
        201 if from.is_some() => return Ok(Outcome::Mounted),
        202 => {}
        _ => return Err(refused(c, &mut resp, "starting upload", &start, &sc[0])),
    }
    let what = format!("blob {d} to {r}");
    let mut loc = location(&resp, "POST", &what)?;
    let path = store.blob_path(d);
    let octet = ("content-type", "application/octet-stream".to_owned());
    let mut offset = 0;
    // Chunks while more than one chunk remains; the last part goes with the closing PUT.
    while size - offset > chunk {
        let end = offset + chunk;
        let body = Body::File {
            path: &path,
            offset,
            len: chunk,
            progress: Some(pb),
        };
        let range = ("content-range", format!("{offset}-{}", end - 1));
        let mut resp = c.request(Method::PATCH, &loc, &sc, &[octet.clone(), range], body)?;
        if resp.status().as_u16() != 202 {
            return Err(refused(c, &mut resp, "uploading chunk of", &what, &sc[0]));
        }
        loc = location(&resp, "PATCH", &what)?;
        offset = end;
    }
    let body = Body::File {
        path: &path,
        offset,
        len: size - offset,
        progress: Some(pb),
    };
    let put = with_query(&loc, &format!("digest={}", client::encode(d.as_str())));
    let mut resp = c.request(Method::PUT, &put, &sc, &[octet], body)?;
    if resp.status().as_u16() != 201 {
        return Err(refused(c, &mut resp, "finishing upload of", &what, &sc[0]));
    }
    if let Some(got) = header(&resp, "docker-content-digest").filter(|g| *g != d.as_str()) {
        return Err(protocol(
            "uploading",
            what,
            format!("the registry stored it as {got}"),
        ));
    }
    Ok(Outcome::Uploaded(size))
}

/// PUT the manifest under the reference's tag (or digest); the registry's digest must be ours.
fn put_manifest(
    c: &Client,
    r: &ImageRef,
    bytes: &[u8],
    media_type: &str,
    d: &Digest,
) -> Result<()> {
    let path = format!(
        "/v2/{}/manifests/{}",
        r.repository,
        r.tag.clone().unwrap_or_else(|| r.reference())
    );
    let sc = scopes(r, None);
    let ct = ("content-type", media_type.to_owned());
    let mut resp = c.request(Method::PUT, &path, &sc, &[ct], Body::Bytes(bytes))?;
    if resp.status().as_u16() != 201 {
        return Err(refused(c, &mut resp, "pushing manifest", &path, &sc[0]));
    }
    match header(&resp, "docker-content-digest") {
        Some(got) if got == d.as_str() => Ok(()),
        Some(got) => Err(protocol(
            "pushing manifest",
            r.to_string(),
            format!("the registry says its digest is {got}, strata's is {d}"),
        )),
        None => Err(protocol(
            "pushing manifest",
            r.to_string(),
            "the registry returned no Docker-Content-Digest to check",
        )),
    }
}
