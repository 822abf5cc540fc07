//! Resumable blob downloads. A blob the store will keep is written, as it streams into the
//! unpacker, to `ROOT/partial/<hex>` (flocked while in use). When the connection dies the
//! file stays; the next pull reads it back through the same verifying pipeline and asks the
//! registry only for the rest (`Range: bytes=N-`). A failure that is not the network's (a
//! digest or diff_id mismatch, a bad tar) removes it: a bad prefix must not be resumed.
//! On success it is the staged blob that the store renames into place.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::FlockOperation;

use super::error::{Result, io_err};
use crate::image::digest::write_copy;
use crate::image::fsutil::BlobFile;
use crate::image::{Digest, Store};

pub struct Partial {
    pub path: PathBuf,
    file: File,
    /// Bytes already there.
    pub len: u64,
}

impl Partial {
    /// The partial file for `d`, locked; None when another pull is writing it.
    pub fn open(store: &Store, d: &Digest) -> Result<Option<Partial>> {
        let dir = store.root().join("partial");
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let path = dir.join(d.hex());
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(None);
        }
        let meta = file.metadata().map_err(io_err("stat", &path))?;
        // `image rm` removed it between our open and flock: do without a partial file.
        if fs::metadata(&path).map_or(true, |m| m.ino() != meta.ino() || m.dev() != meta.dev()) {
            return Ok(None);
        }
        let len = meta.len();
        Ok(Some(Partial { path, file, len }))
    }

    /// Starts over (the registry ignored the Range request).
    pub fn reset(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(io_err("truncating", &self.path))?;
        self.len = 0;
        Ok(())
    }

    /// What was kept, then `net` (the rest, from the registry), appending `net`'s bytes to
    /// the file. The flag says whether reading `net` failed (the network's fault).
    pub fn reader<R: Read>(&mut self, net: R) -> Result<(impl Read + use<R>, Arc<AtomicBool>)> {
        let kept = File::open(&self.path)
            .map_err(io_err("opening", &self.path))?
            .take(self.len);
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(io_err("seeking", &self.path))?;
        let failed = Arc::new(AtomicBool::new(false));
        let out = self
            .file
            .try_clone()
            .map_err(io_err("opening", &self.path))?;
        let tee = Tee {
            net,
            out: BlobFile::at(out, self.len),
            path: self.path.clone(),
            failed: failed.clone(),
        };
        Ok((kept.chain(tee), failed))
    }

    /// The blob is complete and verified: durable before the store renames it. The file
    /// returned holds the lock: keep it until then (`image rm` spares locked files).
    pub fn finish(self) -> Result<(PathBuf, File)> {
        self.file
            .sync_all()
            .map_err(io_err("syncing", &self.path))?;
        Ok((self.path, self.file))
    }

    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

struct Tee<R> {
    net: R,
    out: BlobFile,
    path: PathBuf,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.net.read(buf).inspect_err(|_| {
            self.failed.store(true, Ordering::Relaxed);
        })?;
        write_copy(&mut self.out, &buf[..n], &self.path)?;
        Ok(n)
    }
}
