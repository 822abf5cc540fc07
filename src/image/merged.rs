//! A read-only, in-process view of a layer stack through strata's own union (no mount): how
//! an image's files look to a container, whiteouts, opaque directories and redirects applied.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::error::{Result, io_err};
use crate::options::WhiteoutFormat;
use crate::sys::{self, Stat};
use crate::union::{ROOT_ID, Stack, Union};

pub struct Merged {
    pub union: Union,
}

impl Merged {
    /// `layers` top first.
    pub fn new(layers: &[PathBuf]) -> Result<Merged> {
        Self::build(None, layers)
    }

    /// A container's upper layer (read as strata reads an upper: metacopies, redirects) over
    /// its image's `lowers`.
    pub fn with_upper(upper: &std::path::Path, lowers: &[PathBuf]) -> Result<Merged> {
        Self::build(Some(upper), lowers)
    }

    fn build(upper: Option<&std::path::Path>, layers: &[PathBuf]) -> Result<Merged> {
        let mut lowers = Vec::new();
        for l in layers {
            lowers.push(sys::open_root(l).map_err(io_err("opening layer", l))?);
        }
        let upper = match upper {
            Some(u) => Some(sys::open_root(u).map_err(io_err("opening layer", u))?),
            None => None,
        };
        let stack = Stack {
            upper,
            work: None,
            lowers,
        };
        let union = Union::new(stack, WhiteoutFormat::Oci).map_err(io_err(
            "opening layer stack at",
            layers.first().cloned().unwrap_or_default(),
        ))?;
        Ok(Merged { union })
    }

    /// The node id and stat at a path ("/etc/passwd"); None if it does not exist. No symlink
    /// in the image is followed.
    pub fn lookup(&self, path: &[u8]) -> io::Result<Option<(u64, Stat)>> {
        let mut id = ROOT_ID;
        let mut st = self.union.getattr(ROOT_ID)?;
        for c in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            match self.union.lookup(id, OsStr::from_bytes(c)) {
                Ok((node, s)) => {
                    id = node.id;
                    st = s;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some((id, st)))
    }

    /// A regular file's whole content.
    pub fn read_file(&self, id: u64) -> io::Result<Vec<u8>> {
        let fh = self.union.open(id, libc::O_RDONLY)?.fh;
        let mut out = Vec::new();
        let res = loop {
            match self.union.read(id, fh, out.len() as u64, 1 << 20) {
                Ok(chunk) if chunk.is_empty() => break Ok(()),
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => break Err(e),
            }
        };
        let _ = self.union.release(id, fh);
        res.map(|()| out)
    }

    /// Names in a merged directory, sorted.
    pub fn list(&self, id: u64) -> io::Result<Vec<Vec<u8>>> {
        list(&self.union, id)
    }

    /// The content of a regular file at `path`, or None where there is none.
    pub fn file_at(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.lookup(path.as_bytes())? {
            Some((id, st)) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                self.read_file(id).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Names in directory `id` of a union, sorted.
pub fn list(union: &Union, id: u64) -> io::Result<Vec<Vec<u8>>> {
    let fh = union.opendir(id)?;
    let mut names = Vec::new();
    let res = union.readdir(id, fh, 0, |_, _, _, name| {
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
        false
    });
    let _ = union.releasedir(id, fh);
    res?;
    names.sort();
    Ok(names)
}
