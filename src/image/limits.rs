//! Bounds on what an untrusted image may make us read or write: a manifest claiming a 1 TB
//! layer is refused before a byte is read, and a gzip bomb stops where it passes the limit.

use std::io::{self, Read};

/// Default for `STRATA_MAX_LAYER_BYTES`: far above real layers, far below a full disk.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 32 << 30;

/// The largest layer (compressed or not) or expanded archive accepted, in bytes:
/// `STRATA_MAX_LAYER_BYTES` if set to a number, else the default.
pub fn max_layer_bytes() -> u64 {
    std::env::var("STRATA_MAX_LAYER_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_LAYER_BYTES)
}

/// The refusal, naming the limit and how to raise it.
pub fn too_large(what: &str, limit: u64) -> String {
    format!("{what} exceeds the limit of {limit} bytes (STRATA_MAX_LAYER_BYTES)")
}

/// A reader that fails (EFBIG) once more than `limit` bytes came through it.
pub struct Limited<R> {
    pub inner: R,
    pub left: u64,
    pub limit: u64,
    pub what: &'static str,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, what: &'static str) -> Self {
        let limit = max_layer_bytes();
        Limited {
            inner,
            left: limit,
            limit,
            what,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                too_large(self.what, self.limit),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
