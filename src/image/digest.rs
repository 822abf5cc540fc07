//! sha256 digests (`sha256:<64 hex>`), hashing readers, and layer chain IDs.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::{Result, invalid};

/// A validated `sha256:<hex>` digest. Other algorithms are refused: a digest is also a file
/// name in the store, so only this exact shape may become one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| invalid(format!("digest {s:?}"), "only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid(
                format!("digest {s:?}"),
                "not 64 lowercase hex digits",
            ));
        }
        Ok(Digest(s.to_owned()))
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    fn from_hasher(h: Sha256) -> Digest {
        let bytes = h.finalize();
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes.iter() {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    /// The 64 hex digits (a file name in the store).
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for messages and listings.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The chain IDs of a layer stack, bottom first: the first is its diff_id, each next one is
/// `sha256("<previous chain id> <diff_id>")` (image-spec config.md).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Counts and hashes every byte read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left (trailing padding after a tar's end, say): the digest covers all.
    pub fn finish(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.bytes, self.inner))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Counts and hashes every byte written through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    pub bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn finish(self) -> (Digest, u64, W) {
        (Digest::from_hasher(self.hasher), self.bytes, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies every byte read into a writer as well (the staged copy of a blob).
pub struct TeeReader<R, W> {
    pub inner: R,
    /// The copy, and its path for the message when writing it fails.
    pub out: Option<(W, PathBuf)>,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some((w, path)) = &mut self.out {
            write_copy(w, &buf[..n], path)?;
        }
        Ok(n)
    }
}

/// Writes a tee's copy. Its failure reaches the caller as a read error, marked so that the
/// message names the copy (a full disk), not the input: see `copy_write_error`.
pub fn write_copy(w: &mut impl Write, buf: &[u8], path: &Path) -> io::Result<()> {
    w.write_all(buf).map_err(|source| {
        let kind = source.kind();
        let path = path.to_owned();
        io::Error::new(kind, CopyWriteError { path, source })
    })
}

#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", path.display())]
pub struct CopyWriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// The copy's failed write if that is what `e` is, else `e` back.
pub fn copy_write_error(e: io::Error) -> std::result::Result<CopyWriteError, io::Error> {
    if !e.get_ref().is_some_and(|i| i.is::<CopyWriteError>()) {
        return Err(e);
    }
    match e.into_inner().map(|i| i.downcast::<CopyWriteError>()) {
        Some(Ok(c)) => Ok(*c),
        _ => Err(io::Error::other("writing a copy failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_tee_write_is_told_apart_from_a_read_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut t = TeeReader {
            inner: &b"data"[..],
            out: Some((Full, PathBuf::from("/store/blob"))),
        };
        let e = t.read(&mut [0u8; 8]).unwrap_err();
        let copy = copy_write_error(e).expect("a copy write error");
        assert_eq!(copy.source.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(copy.path, Path::new("/store/blob"));
        let read = io::Error::from_raw_os_error(libc::EIO);
        let back = copy_write_error(read).err().map(|e| e.raw_os_error());
        assert_eq!(back, Some(Some(libc::EIO)));
    }

    #[test]
    fn chain_id_of_two_layers() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn refuses_odd_digests() {
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
