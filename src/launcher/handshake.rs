//! The messages strata's processes pass over a pipe while a container starts. The side that
//! waits blocks until it reads one: `Go` when what it waits for is ready, `Fail` with the
//! reason otherwise. A pipe closed without a message (the writer died) reads as a failure.

use std::fs::File;
use std::io::{self, Read, Write};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Go,
    Fail(String),
}

const GO: u8 = b'G';
const FAIL: u8 = b'F';

/// Writes one message: a tag byte, then for `Fail` a 4-byte length and the text.
pub fn send(w: &mut File, msg: &Msg) -> io::Result<()> {
    let mut frame = Vec::new();
    match msg {
        Msg::Go => frame.push(GO),
        Msg::Fail(why) => {
            frame.push(FAIL);
            let text = why.as_bytes();
            frame.extend_from_slice(&(text.len() as u32).to_le_bytes());
            frame.extend_from_slice(text);
        }
    }
    w.write_all(&frame)
}

/// Reads one message; a closed or garbled pipe is a `Fail` saying so.
pub fn recv(r: &mut File) -> Msg {
    let mut tag = [0u8; 1];
    if r.read_exact(&mut tag).is_err() {
        return Msg::Fail("the other process exited before it was ready".into());
    }
    match tag[0] {
        GO => Msg::Go,
        FAIL => {
            let mut len = [0u8; 4];
            let mut text = Vec::new();
            let read = r.read_exact(&mut len).and_then(|()| {
                let n = u32::from_le_bytes(len).min(1 << 16) as u64;
                r.take(n).read_to_end(&mut text).map(|_| ())
            });
            match read {
                Ok(()) => Msg::Fail(String::from_utf8_lossy(&text).into_owned()),
                Err(_) => Msg::Fail("a failure whose reason was cut off".into()),
            }
        }
        t => Msg::Fail(format!("an unknown message {t:#x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = crate::sys::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn messages_round_trip() {
        let (mut r, mut w) = pipe();
        send(&mut w, &Msg::Go).unwrap();
        send(&mut w, &Msg::Fail("mount: no such layer".into())).unwrap();
        assert_eq!(recv(&mut r), Msg::Go);
        assert_eq!(recv(&mut r), Msg::Fail("mount: no such layer".into()));
    }

    #[test]
    fn a_closed_pipe_is_a_failure() {
        let (mut r, w) = pipe();
        drop(w);
        assert!(matches!(recv(&mut r), Msg::Fail(_)));
    }

    #[test]
    fn garbage_is_a_failure() {
        let (mut r, mut w) = pipe();
        w.write_all(b"go").unwrap();
        assert!(matches!(recv(&mut r), Msg::Fail(m) if m.contains("unknown")));
    }
}
