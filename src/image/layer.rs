//! Staging one layer blob: a single pass over the blob that hashes it (its digest), keeps a
//! copy (the store's blob), decompresses it (gzip, zstd or none, as the data says), hashes
//! the tar (the diff_id) and unpacks it. Nothing here touches the store itself: the caller
//! moves what was staged into place once every check passed.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::digest::{Digest, HashReader, TeeReader, copy_write_error};
use super::error::{ImageError, Result, io_err};
use super::fsutil::BlobFile;
use super::limits::{self, Limited};
use super::oci::Compression;
use super::pipe;
use super::unpack::{UnpackOptions, UnpackStats, unpack};
use crate::sys;

/// What to check and keep for one layer.
pub struct LayerJob<'a> {
    /// Names the layer in errors: its blob digest, or its path in a docker archive.
    pub label: String,
    /// The blob's digest and size, when the manifest gives them.
    pub expected: Option<(&'a Digest, Option<u64>)>,
    pub diff_id: &'a Digest,
    /// Keep a copy of the blob (`<dir>/blob-<n>`).
    pub keep_blob: bool,
    /// Unpack the tar (`<dir>/layer-<n>/root`).
    pub unpack: bool,
    pub opts: UnpackOptions,
}

pub struct Staged {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    pub blob: Option<PathBuf>,
    /// The directory holding `root/` (what the store renames into place).
    pub layer: Option<PathBuf>,
    pub stats: UnpackStats,
}

pub fn stage(
    dir: &Path,
    n: usize,
    reader: impl Read,
    job: &LayerJob<'_>,
    pb: &ProgressBar,
) -> Result<Staged> {
    let limit = limits::max_layer_bytes();
    if let Some((want, Some(size))) = job.expected.filter(|(_, s)| s.is_some_and(|s| s > limit)) {
        return Err(ImageError::Invalid {
            what: format!("layer {want}"),
            why: limits::too_large(&format!("its manifest size {size}"), limit),
        });
    }
    let blob_path = dir.join(format!("blob-{n}"));
    let layer_path = dir.join(format!("layer-{n}"));
    let out = match job.keep_blob {
        true => Some((
            BufWriter::new(BlobFile::at(
                File::create(&blob_path).map_err(io_err("creating", &blob_path))?,
                0,
            )),
            blob_path.clone(),
        )),
        false => None,
    };
    // A failed write of the kept blob (a full store) surfaces through the reads.
    let tar_err = |source| match copy_write_error(source) {
        Ok(c) => io_err("writing", c.path)(c.source),
        Err(source) => ImageError::Tar {
            layer: job.label.clone(),
            source,
        },
    };
    let mut compressed = HashReader::new(TeeReader {
        inner: Limited::new(pb.wrap_read(reader), "the layer blob"),
        out,
    });
    let (diff_id, compression, stats) = {
        let mut buf = BufReader::with_capacity(256 * 1024, &mut compressed);
        let head = buf.fill_buf().map_err(tar_err)?;
        let compression = Compression::sniff(head);
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(buf),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(buf).map_err(tar_err)?),
        };
        let mut tar = HashReader::new(Limited::new(decoded, "the uncompressed layer"));
        let mut stats = UnpackStats::default();
        if job.unpack {
            let root = layer_path.join("root");
            fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
            let fd = sys::open_root(&root).map_err(io_err("opening", &root))?;
            stats = unpack_beside(&mut tar, fd, job, tar_err)?;
        }
        // What follows the tar's end (padding) is hashed too.
        let (d, _, _) = tar.finish().map_err(tar_err)?;
        (d, compression, stats)
    };
    let (digest, size, tee) = compressed.finish().map_err(tar_err)?;
    if let Some((w, path)) = tee.out {
        finish_blob(w, &path)?;
    }
    verify(job, &digest, size, &diff_id)?;
    pb.finish_and_clear();
    Ok(Staged {
        digest,
        size,
        compression,
        blob: job.keep_blob.then_some(blob_path),
        layer: job.unpack.then_some(layer_path),
        stats,
    })
}

/// The kept blob copy, flushed and durable before the store renames it.
fn finish_blob(mut w: BufWriter<BlobFile>, path: &Path) -> Result<()> {
    w.flush().map_err(io_err("writing", path))?;
    let f = w
        .into_inner()
        .map_err(|e| io_err("writing", path)(e.into_error()))?;
    f.sync().map_err(io_err("syncing", path))
}

/// The blob's digest and size against its descriptor, the tar's digest against the diff_id.
fn verify(job: &LayerJob<'_>, digest: &Digest, size: u64, diff_id: &Digest) -> Result<()> {
    if let Some((want, want_size)) = job.expected {
        if *digest != *want {
            return Err(ImageError::DigestMismatch {
                expected: want.to_string(),
                actual: digest.to_string(),
            });
        }
        if let Some(s) = want_size.filter(|&s| s != size) {
            return Err(ImageError::Invalid {
                what: format!("blob {want}"),
                why: format!("is {size} bytes, its descriptor says {s}"),
            });
        }
    }
    if *diff_id != *job.diff_id {
        return Err(ImageError::DiffIdMismatch {
            blob: job.label.clone(),
            expected: job.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    Ok(())
}

/// Unpacks the tar read from `tar` on a thread of its own, fed through a pipe, while this
/// thread reads, decompresses and hashes: the two halves of a layer's pass use two cores.
/// Returns when the unpacker is done; the caller reads (and hashes) what is left.
fn unpack_beside(
    tar: &mut impl Read,
    root: OwnedFd,
    job: &LayerJob<'_>,
    read_err: impl FnOnce(io::Error) -> ImageError,
) -> Result<UnpackStats> {
    let (mut w, r) = pipe::pipe();
    let (label, opts) = (job.label.as_str(), job.opts);
    std::thread::scope(|s| {
        let unpacker = s.spawn(move || unpack(r, root.as_fd(), opts, label).map(|(st, _)| st));
        let fed = w.feed(tar);
        drop(w);
        let unpacked = unpacker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // A read error (network, decompression, size limit) is the cause of whatever the
        // unpacker saw when its input stopped short.
        fed.map_err(read_err)?;
        unpacked
    })
}
