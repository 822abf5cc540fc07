//! `strata image export NAME PATH`: an OCI image layout (a directory, or a tar when PATH
//! ends in `.tar`) that skopeo, umoci and podman read. The index names the image by its tag
//! (`org.opencontainers.image.ref.name`, what `oci:DIR:TAG` selects) and by its full name
//! (`io.containerd.image.name`). Adding to an existing layout replaces an entry of that tag.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::digest::Digest;
use super::error::{Result, invalid, io_err};
use super::oci::{self, Descriptor, Index};
use super::progress;
use super::store::Store;

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Blobs of an image, manifest first.
fn blobs(store: &Store, name: &str) -> Result<(Vec<(Digest, u64)>, Descriptor)> {
    let img = store.get(name)?;
    let mbytes = store.read_blob(&img.manifest_digest)?;
    let mut out = vec![(img.manifest_digest.clone(), mbytes.len() as u64)];
    out.push((img.manifest.config.digest()?, img.manifest.config.size));
    for l in &img.manifest.layers {
        out.push((l.digest()?, l.size));
    }
    let mut desc = Descriptor::new(oci::MT_MANIFEST, &img.manifest_digest, mbytes.len() as u64);
    desc.annotations
        .insert(oci::ANN_REF_NAME.into(), oci::tag_of(&img.name).to_owned());
    desc.annotations
        .insert(oci::ANN_CONTAINERD_NAME.into(), img.name.clone());
    Ok((out, desc))
}

fn merged_index(existing: Option<Index>, desc: Descriptor) -> Index {
    let mut index = existing.unwrap_or(Index {
        schema_version: 2,
        media_type: Some(oci::MT_INDEX.into()),
        manifests: Vec::new(),
        annotations: Default::default(),
    });
    let tag = desc.annotations.get(oci::ANN_REF_NAME).cloned();
    index
        .manifests
        .retain(|m| m.annotations.get(oci::ANN_REF_NAME) != tag.as_ref());
    index.manifests.push(desc);
    index
}

pub fn export(store: &Store, name: &str, path: &Path) -> Result<()> {
    let (blobs, desc) = blobs(store, name)?;
    if path.extension().is_some_and(|e| e == "tar") {
        return export_tar(store, &blobs, desc, path);
    }
    let sha = path.join("blobs/sha256");
    fs::create_dir_all(&sha).map_err(io_err("creating", &sha))?;
    let total = blobs.len();
    for (i, (d, size)) in blobs.iter().enumerate() {
        let dest = sha.join(d.hex());
        if dest.exists() {
            continue;
        }
        let src = store.blob_path(d);
        // Same filesystem: share the store's blob; else copy it.
        if fs::hard_link(&src, &dest).is_err() {
            let pb = progress::bytes(*size, format!("blob {}/{total} {}", i + 1, d.short()));
            let tmp = sha.join(format!(".{}.partial", d.hex()));
            let mut r = pb.wrap_read(File::open(&src).map_err(io_err("opening", &src))?);
            let mut w = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            io::copy(&mut r, &mut w).map_err(io_err("copying to", &tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err("renaming", &dest))?;
            pb.finish_and_clear();
        }
    }
    let ip = path.join("index.json");
    let existing = match fs::read(&ip) {
        Ok(d) => Some(oci::parse::<Index>(&d, &ip.display().to_string())?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading", &ip)(e)),
    };
    let index = merged_index(existing, desc);
    let lp = path.join("oci-layout");
    fs::write(&lp, LAYOUT).map_err(io_err("writing", &lp))?;
    let tmp = path.join(".index.json.partial");
    fs::write(&tmp, oci::to_json(&index)).map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &ip).map_err(io_err("renaming", &ip))
}

fn export_tar(store: &Store, blobs: &[(Digest, u64)], desc: Descriptor, path: &Path) -> Result<()> {
    if path.exists() {
        return Err(invalid(path.display().to_string(), "exists already"));
    }
    let tmp = path.with_extension("tar.partial");
    let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let werr = || io_err("writing", &tmp);
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let add = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, data)
    };
    add(&mut tar, "oci-layout", LAYOUT).map_err(werr())?;
    let total = blobs.len();
    for (i, (d, size)) in blobs.iter().enumerate() {
        let src = store.blob_path(d);
        let f = File::open(&src).map_err(io_err("opening", &src))?;
        let pb = progress::bytes(*size, format!("blob {}/{total} {}", i + 1, d.short()));
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(f.metadata().map_err(io_err("stat", &src))?.len());
        tar.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), pb.wrap_read(f))
            .map_err(werr())?;
        pb.finish_and_clear();
    }
    let index = merged_index(None, desc);
    add(&mut tar, "index.json", &oci::to_json(&index)).map_err(werr())?;
    let mut w = tar.into_inner().map_err(werr())?;
    w.flush().map_err(werr())?;
    fs::rename(&tmp, path).map_err(io_err("renaming", path))
}
