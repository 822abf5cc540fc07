//! A bounded in-memory pipe between two threads of one layer's pass: the writer hands over
//! filled buffers, the reader hands them back empty. It lets a layer's decompression and
//! hashing run on one core while its unpacking runs on another, with no copy through the
//! kernel and no allocation per chunk.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes per buffer: large enough that the unpacker writes file data in big chunks.
const CHUNK: usize = 256 * 1024;
/// Buffers in flight: how far the writer may run ahead of the reader.
const DEPTH: usize = 8;

pub struct PipeWriter {
    full: SyncSender<(Vec<u8>, usize)>,
    empty: Receiver<Vec<u8>>,
}

pub struct PipeReader {
    full: Receiver<(Vec<u8>, usize)>,
    empty: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
}

pub fn pipe() -> (PipeWriter, PipeReader) {
    let (full_tx, full_rx) = sync_channel(DEPTH);
    let (empty_tx, empty_rx) = sync_channel(DEPTH);
    for _ in 0..DEPTH {
        // Cannot fail or block: the receiver is alive and the channel has room for all.
        let _ = empty_tx.try_send(vec![0u8; CHUNK]);
    }
    let w = PipeWriter {
        full: full_tx,
        empty: empty_rx,
    };
    let r = PipeReader {
        full: full_rx,
        empty: empty_tx,
        cur: Vec::new(),
        len: 0,
        pos: 0,
    };
    (w, r)
}

impl PipeWriter {
    /// Copies all of `src` into the pipe. Stops early, with Ok, when the reader is gone (it
    /// finished or failed: the caller finds out which from the reader's side).
    pub fn feed(&mut self, src: &mut impl Read) -> io::Result<()> {
        loop {
            // The reader is gone when its side of `empty` is: then nobody listens.
            let Ok(mut buf) = self.empty.recv() else {
                return Ok(());
            };
            let n = read_full(src, &mut buf)?;
            if n == 0 || self.full.send((buf, n)).is_err() {
                return Ok(());
            }
        }
    }
}

/// Reads until `buf` is full or `src` ends; the byte count.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            let done = std::mem::take(&mut self.cur);
            if done.capacity() > 0 {
                // The writer may have finished: then the buffer is not needed.
                let _ = self.empty.try_send(done);
            }
            match self.full.recv() {
                Ok((buf, len)) => (self.cur, self.len, self.pos) = (buf, len, 0),
                // The writer is done (or failed: it reports that itself).
                Err(_) => {
                    self.len = 0;
                    self.pos = 0;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_every_byte_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 1234).map(|i| (i * 7 % 251) as u8).collect();
        let (mut w, mut r) = pipe();
        let got = std::thread::scope(|s| {
            let h = s.spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).map(|_| got)
            });
            w.feed(&mut &data[..]).expect("feed");
            drop(w);
            h.join().expect("reader thread").expect("read")
        });
        assert_eq!(got, data);
    }

    #[test]
    fn writer_stops_when_the_reader_goes() {
        let data = vec![1u8; 20 * CHUNK];
        let (mut w, r) = pipe();
        drop(r);
        let mut src = &data[..];
        w.feed(&mut src).expect("feed");
        // It read at most one buffer before noticing.
        assert!(src.len() >= data.len() - CHUNK);
    }
}
