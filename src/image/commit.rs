//! `strata commit`: an upper layer (strata's or kernel overlayfs's) becomes an OCI layer.
//!
//! The upper is walked with names sorted (a deterministic tar): deletions (char 0/0 devices,
//! xattr whiteouts, `.wh.` files) become `.wh.<name>` entries, opaque directories get a
//! `.wh..wh..opq` entry, and a renamed directory (an `overlay.redirect` xattr: its content
//! still lives in the lower layers under its old name) is written whole as an opaque
//! directory, its merged content read through an in-process union of the upper over the
//! image's layers. The union's own xattrs are left out; escaped user ones are unescaped.
//! The tar is gzip-compressed, hashed both ways, then staged and checked like an imported
//! layer before it enters the store.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::digest::{Digest, HashWriter, chain_ids};
use super::error::{Result, invalid, io_err};
use super::layer::{self, LayerJob};
use super::merged::Merged;
use super::oci::{self, Descriptor};
use super::progress;
use super::store::{Staging, Store, StoreLock, StoredImage};
use super::unpack::UnpackOptions;
use crate::format::{self, Class, Opaque, Whiteout, shown_xattr_name};
use crate::sys::{self, Stat};

type Sink = HashWriter<flate2::write::GzEncoder<HashWriter<BufWriter<File>>>>;

struct Writer<'a> {
    tar: tar::Builder<Sink>,
    upper: &'a Path,
    /// The image's layers under the upper, for redirected directories (built on first use).
    lowers: &'a [PathBuf],
    merged: Option<Merged>,
    /// (dev, ino) of files with several links -> the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    clamp: u64,
}

fn err_at(
    step: &'static str,
    upper: &Path,
    rel: &[u8],
) -> impl FnOnce(io::Error) -> super::error::ImageError {
    io_err(step, upper.join(OsStr::from_bytes(rel)))
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// `clamp`: no mtime later than this (SOURCE_DATE_EPOCH), for reproducible layers.
fn header(kind: EntryType, st: &Stat, clamp: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid.into());
    h.set_gid(st.st_gid.into());
    h.set_mtime((st.st_mtime.max(0) as u64).min(clamp));
    h.set_size(0);
    h
}

/// A user's xattrs of an entry in the upper (the union's own left out, escaped ones shown).
fn user_xattrs(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for key in sys::list_xattr_all(dir, name)?
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
    {
        let Some(shown) = shown_xattr_name(key) else {
            continue;
        };
        let (Ok(shown), Some(v)) = (
            std::str::from_utf8(&shown),
            sys::get_xattr_value(dir, name, key)?,
        ) else {
            continue;
        };
        out.push((shown.to_owned(), v));
    }
    out.sort();
    Ok(out)
}

impl Writer<'_> {
    fn pax(&mut self, xattrs: &[(String, Vec<u8>)]) -> io::Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let recs: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        self.tar
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    fn empty(&mut self, kind: EntryType, st: &Stat, path: &[u8]) -> io::Result<()> {
        let mut h = header(kind, st, self.clamp);
        self.tar
            .append_data(&mut h, OsStr::from_bytes(path), io::empty())
    }

    fn whiteout(&mut self, parent: &[u8], name: &[u8], st: &Stat) -> io::Result<()> {
        let wh = format::whiteout_name(OsStr::from_bytes(name));
        let mut st = *st;
        st.st_mode = 0o644;
        self.empty(EntryType::Regular, &st, &join(parent, wh.as_bytes()))
    }

    /// The OCI opaque marker of directory `path`.
    fn opaque_marker(&mut self, st: &Stat, path: &[u8]) -> io::Result<()> {
        let mut m = *st;
        m.st_mode = 0o644;
        self.empty(EntryType::Regular, &m, &join(path, format::OPAQUE_MARKER))
    }

    /// Writes the entries of the upper directory `dir` (at `rel` in the tree).
    fn walk(&mut self, dir: BorrowedFd<'_>, rel: &[u8]) -> Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        sys::read_dir(dir, |e| {
            names.push(e.name.to_vec());
            Ok(())
        })
        .map_err(err_at("listing", self.upper, rel))?;
        names.sort();
        let marks =
            format::dir_marks(dir, false).map_err(err_at("reading xattrs of", self.upper, rel))?;
        let parent = format::Known {
            xwhiteouts: marks.xwhiteouts,
            upper: true,
        };
        for name in names {
            self.walk_entry(dir, rel, &name, &parent)?;
        }
        Ok(())
    }

    /// Writes one entry of an upper directory, translated by the layer format's classifier.
    fn walk_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &[u8],
        name: &[u8],
        parent: &format::Known,
    ) -> Result<()> {
        let path = join(rel, name);
        let err = |step| err_at(step, self.upper, &path);
        let n = OsStr::from_bytes(name);
        let st = sys::stat_at(dir, n).map_err(err("stat"))?;
        let class = format::classify(dir, n, &st, parent).map_err(err("reading xattrs of"))?;
        match class {
            // Already OCI form (strata's rootless whiteouts, opaque markers).
            Class::Whiteout(Whiteout::Oci) | Class::OpaqueMarker => self
                .empty(EntryType::Regular, &st, &path)
                .map_err(err("writing")),
            Class::Whiteout(Whiteout::CharDev | Whiteout::Xattr) => {
                self.whiteout(rel, name, &st).map_err(err("writing"))
            }
            Class::Redirect(_) => self.merged_dir(&path),
            // A `.wh.<name>` beside it is written as it stands, and says the same in OCI.
            Class::Opaque(form) => self.upper_dir(dir, n, &st, &path, form == Opaque::Xattr),
            Class::Plain if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                self.upper_dir(dir, n, &st, &path, false)
            }
            Class::Metacopy | Class::Plain => {
                self.upper_file(dir, n, &st, &path, class == Class::Metacopy)
            }
        }
    }

    /// A directory of the upper, its marker (for the xattr form of opacity) and its content.
    fn upper_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        st: &Stat,
        path: &[u8],
        opaque: bool,
    ) -> Result<()> {
        let err = |step| err_at(step, self.upper, path);
        let xattrs = user_xattrs(dir, n).map_err(err("reading xattrs of"))?;
        self.pax(&xattrs).map_err(err("writing"))?;
        self.empty(EntryType::Directory, st, path)
            .map_err(err("writing"))?;
        if opaque {
            self.opaque_marker(st, path).map_err(err("writing"))?;
        }
        let sub = sys::open_path_at(dir, n).map_err(err("opening"))?;
        self.walk(sub.as_fd(), path)
    }

    /// A non-directory of the upper: a hard link to a file already written, or the file.
    fn upper_file(
        &mut self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        st: &Stat,
        path: &[u8],
        metacopy: bool,
    ) -> Result<()> {
        let err = |step| err_at(step, self.upper, path);
        let xattrs = user_xattrs(dir, n).map_err(err("reading xattrs of"))?;
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)).cloned() {
                let mut h = header(EntryType::Link, st, self.clamp);
                return self
                    .tar
                    .append_link(&mut h, OsStr::from_bytes(path), OsStr::from_bytes(&first))
                    .map_err(err("writing"));
            }
            self.links.insert((st.st_dev, st.st_ino), path.to_vec());
        }
        self.pax(&xattrs).map_err(err("writing"))?;
        if metacopy {
            return self.metacopy_file(st, path);
        }
        let p = OsStr::from_bytes(path);
        let fmt = st.st_mode & libc::S_IFMT;
        let w = match fmt {
            libc::S_IFREG => {
                let f = sys::open_for_copy(dir, n).map_err(err("opening"))?;
                let mut h = header(EntryType::Regular, st, self.clamp);
                h.set_size(st.st_size as u64);
                self.tar.append_data(&mut h, p, f)
            }
            libc::S_IFLNK => {
                let target = sys::readlink_at(dir, n).map_err(err("reading link"))?;
                let mut h = header(EntryType::Symlink, st, self.clamp);
                self.tar.append_link(&mut h, p, OsStr::from_bytes(&target))
            }
            libc::S_IFCHR | libc::S_IFBLK => self.device(st, path),
            libc::S_IFIFO => self.empty(EntryType::Fifo, st, path),
            // Sockets do not go into layers.
            _ => Ok(()),
        };
        w.map_err(err("writing"))
    }

    /// A device node entry.
    fn device(&mut self, st: &Stat, path: &[u8]) -> io::Result<()> {
        let kind = if st.st_mode & libc::S_IFMT == libc::S_IFCHR {
            EntryType::Char
        } else {
            EntryType::Block
        };
        let mut h = header(kind, st, self.clamp);
        h.set_device_major(rustix::fs::major(st.st_rdev))?;
        h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
        self.tar
            .append_data(&mut h, OsStr::from_bytes(path), io::empty())
    }

    /// A metacopy (chmod/chown of a lower file) holds no data: read it where the container
    /// read it, through the union.
    fn metacopy_file(&mut self, st: &Stat, path: &[u8]) -> Result<()> {
        let err = |step| err_at(step, self.upper, path);
        self.open_merged()?;
        let data = match self.merged.as_ref().map(|m| m.lookup(path)) {
            Some(Ok(Some((id, _)))) => self
                .merged
                .as_ref()
                .map(|m| m.read_file(id))
                .transpose()
                .map_err(err("reading (merged)"))?
                .unwrap_or_default(),
            Some(Err(e)) => return Err(err("looking up (merged)")(e)),
            _ => Vec::new(),
        };
        let mut h = header(EntryType::Regular, st, self.clamp);
        h.set_size(data.len() as u64);
        self.tar
            .append_data(&mut h, OsStr::from_bytes(path), data.as_slice())
            .map_err(err("writing"))
    }

    /// The upper over the image's layers, as the container saw them (built on first use).
    fn open_merged(&mut self) -> Result<()> {
        if self.merged.is_none() {
            self.merged = Some(Merged::with_upper(self.upper, self.lowers)?);
        }
        Ok(())
    }

    /// A renamed directory: written whole, as an opaque directory, from the merged view.
    fn merged_dir(&mut self, path: &[u8]) -> Result<()> {
        self.open_merged()?;
        let err = |step| err_at(step, self.upper, path);
        let found = self
            .merged
            .as_ref()
            .map(|m| m.lookup(path))
            .transpose()
            .map_err(err("looking up"))?;
        let Some(Some((id, st))) = found else {
            return Err(invalid(
                self.upper
                    .join(OsStr::from_bytes(path))
                    .display()
                    .to_string(),
                "renamed directory not found in the merged view",
            ));
        };
        self.merged_entry(id, &st, path)?;
        self.opaque_marker(&st, path).map_err(err("writing"))?;
        self.merged_children(id, path)
    }

    fn merged_children(&mut self, id: u64, path: &[u8]) -> Result<()> {
        let err = |step| err_at(step, self.upper, path);
        let Some(m) = self.merged.as_ref() else {
            return Ok(());
        };
        let names = m.list(id).map_err(err("listing (merged)"))?;
        for name in names {
            let child = join(path, &name);
            let Some(m) = self.merged.as_ref() else {
                return Ok(());
            };
            let (node, st) = m
                .union
                .lookup(id, OsStr::from_bytes(&name))
                .map_err(err_at("looking up (merged)", self.upper, &child))?;
            self.merged_entry(node.id, &st, &child)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                self.merged_children(node.id, &child)?;
            }
        }
        Ok(())
    }

    fn merged_entry(&mut self, id: u64, st: &Stat, path: &[u8]) -> Result<()> {
        let err = |step| err_at(step, self.upper, path);
        let Some(m) = self.merged.as_ref() else {
            return Ok(());
        };
        let mut xattrs = Vec::new();
        let list = m
            .union
            .listxattr(id)
            .map_err(err("listing xattrs (merged)"))?;
        for key in list.split(|&b| b == 0).filter(|k| !k.is_empty()) {
            let mut buf = vec![0u8; sys::XATTR_MAX];
            if let (Ok(k), Ok(len)) = (
                std::str::from_utf8(key),
                m.union.getxattr(id, key, &mut buf),
            ) {
                buf.truncate(len);
                xattrs.push((k.to_owned(), buf));
            }
        }
        let fmt = st.st_mode & libc::S_IFMT;
        let data = match fmt {
            libc::S_IFREG => Some(m.read_file(id).map_err(err("reading (merged)"))?),
            _ => None,
        };
        let target = match fmt {
            libc::S_IFLNK => Some(m.union.readlink(id).map_err(err("reading link (merged)"))?),
            _ => None,
        };
        self.pax(&xattrs).map_err(err("writing"))?;
        let p = OsStr::from_bytes(path);
        let w = match fmt {
            libc::S_IFDIR => self.empty(EntryType::Directory, st, path),
            libc::S_IFREG => {
                let data = data.unwrap_or_default();
                let mut h = header(EntryType::Regular, st, self.clamp);
                h.set_size(data.len() as u64);
                self.tar.append_data(&mut h, p, data.as_slice())
            }
            libc::S_IFLNK => {
                let mut h = header(EntryType::Symlink, st, self.clamp);
                self.tar
                    .append_link(&mut h, p, OsStr::from_bytes(&target.unwrap_or_default()))
            }
            libc::S_IFIFO => self.empty(EntryType::Fifo, st, path),
            libc::S_IFCHR | libc::S_IFBLK => self.device(st, path),
            _ => Ok(()),
        };
        w.map_err(err("writing"))
    }
}

/// A layer written from an upper directory, staged: not in the store until [`NewLayer::store`].
pub struct NewLayer {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    /// Chain ID over the base's diff_ids.
    pub chain: Digest,
    staging: Staging,
    blob_path: PathBuf,
    layer: Option<PathBuf>,
}

impl NewLayer {
    /// Moves the blob and the unpacked layer into the store (call with its lock held).
    pub fn store(&self, store: &Store, lock: &StoreLock) -> Result<()> {
        store.commit_blob(lock, &self.blob_path, &self.digest)?;
        if let Some(l) = &self.layer {
            store.commit_layer(lock, l, &self.chain, &self.diff_id, &self.digest)?;
        }
        let _ = &self.staging;
        Ok(())
    }
}

/// Writes `upper` (changes made over `lowers`, top first, whose diff_ids are `base`) as a
/// gzip layer blob and stages its unpacked tree. Walks only the upper: the cost grows with
/// what changed, not with the size of the layers below. `clamp`: SOURCE_DATE_EPOCH.
pub fn write_layer(
    store: &Store,
    upper: &Path,
    lowers: &[PathBuf],
    base: &[Digest],
    clamp: Option<i64>,
) -> Result<NewLayer> {
    let upper_fd = sys::open_root(upper).map_err(io_err("opening upper layer", upper))?;
    let staging = store.staging()?;
    let blob_path = staging.path.join("commit.tar.gz");
    let file = File::create(&blob_path).map_err(io_err("creating", &blob_path))?;
    // tar -> (diff_id) -> gzip -> (digest) -> file.
    let gz = flate2::write::GzEncoder::new(
        HashWriter::new(BufWriter::new(file)),
        flate2::Compression::default(),
    );
    let mut w = Writer {
        tar: tar::Builder::new(HashWriter::new(gz)),
        upper,
        lowers,
        merged: None,
        links: HashMap::new(),
        clamp: clamp.map_or(u64::MAX, |c| c.max(0) as u64),
    };
    w.walk(upper_fd.as_fd(), b"")?;
    let werr = io_err("writing", &blob_path);
    let tar_out = w.tar.into_inner().map_err(io_err("writing", &blob_path))?;
    let (diff_id, _, gz) = tar_out.finish();
    let (digest, size, buf) = gz.finish().map_err(werr)?.finish();
    let file = buf
        .into_inner()
        .map_err(|e| io_err("writing", &blob_path)(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing", &blob_path))?;
    drop(file);

    let mut diff_ids = base.to_vec();
    diff_ids.push(diff_id.clone());
    let chain = chain_ids(&diff_ids)
        .pop()
        .unwrap_or_else(|| diff_id.clone());
    let reader = File::open(&blob_path).map_err(io_err("opening", &blob_path))?;
    let pb = progress::bytes(size, format!("layer {}", digest.short()));
    let job = LayerJob {
        label: digest.to_string(),
        expected: Some((&digest, Some(size))),
        diff_id: &diff_id,
        keep_blob: false,
        unpack: !store.has_layer(&chain),
        opts: UnpackOptions::for_current_user(),
    };
    let staged = layer::stage(&staging.path, 0, reader, &job, &pb)?;
    Ok(NewLayer {
        diff_id,
        digest,
        size,
        chain,
        blob_path,
        layer: staged.layer,
        staging,
    })
}

/// Commits `upper` (changes made over image `from`) as a new image `name`. Returns the new
/// image's manifest digest.
pub fn commit(
    store: &Store,
    upper: &Path,
    from: &str,
    name: &str,
    comment: Option<&str>,
) -> Result<Digest> {
    let name = oci::normalize_name(name)?;
    let img = store.get(from)?;
    let lowers = store.lower_dirs(&img)?;
    let new = write_layer(store, upper, &lowers, &img.diff_ids, None)?;
    let (diff_id, digest, size) = (new.diff_id.clone(), new.digest.clone(), new.size);

    let config_bytes = next_config(&img, &diff_id, comment)?;
    let mut manifest = img.manifest.clone();
    manifest.media_type = Some(oci::MT_MANIFEST.to_owned());
    manifest.config = Descriptor::new(
        oci::MT_CONFIG,
        &Digest::of(&config_bytes),
        config_bytes.len() as u64,
    );
    manifest
        .layers
        .push(Descriptor::new(oci::MT_LAYER_GZIP, &digest, size));
    let manifest_bytes = oci::to_json(&manifest);

    let lock = store.lock()?;
    for c in &img.chain_ids {
        if !store.has_layer(c) {
            return Err(invalid(
                format!("image {}", img.name),
                "was removed while committing",
            ));
        }
    }
    new.store(store, &lock)?;
    let config_digest = Digest::of(&config_bytes);
    store.publish(
        &lock,
        &config_bytes,
        &config_digest,
        &manifest_bytes,
        &[name],
    )
}

/// The committed image's config: the base's, with one more diff_id and history entry.
fn next_config(img: &StoredImage, diff_id: &Digest, comment: Option<&str>) -> Result<Vec<u8>> {
    let mut config: serde_json::Value = oci::parse(&img.config_bytes, "base image config")?;
    let now = oci::now_rfc3339();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| invalid("base image config", "not a JSON object"))?;
    obj.insert("created".into(), now.clone().into());
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    if let Some(ids) = rootfs.get_mut("diff_ids").and_then(|v| v.as_array_mut()) {
        ids.push(diff_id.to_string().into());
    }
    let mut hist = serde_json::json!({ "created": now, "created_by": format!("strata commit --from {}", img.name) });
    if let Some(c) = comment {
        hist["comment"] = c.into();
    }
    match obj.get_mut("history").and_then(|h| h.as_array_mut()) {
        Some(h) => h.push(hist),
        None => {
            obj.insert("history".into(), serde_json::Value::Array(vec![hist]));
        }
    }
    Ok(oci::to_json(&config))
}
