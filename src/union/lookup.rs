//! Top-down resolution of one name in a merged directory.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::inode::Place;
use super::layer::{DirCopy, Layer, WH_PREFIX};
use crate::sys::{self, Stat};

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

/// Resolves `name` below the copies of its parent directory (topmost first).
///
/// The first non-directory wins; directories merge downwards until an opaque copy; a whiteout
/// (or a non-directory under a directory) ends the search. Returns where the entry lives and
/// the stat of its topmost copy.
pub fn resolve(layers: &[Layer], parent: &[DirCopy], name: &OsStr) -> io::Result<(Place, Stat)> {
    // Whiteout files are the union's own markers, never entries of the merged view.
    if name.as_bytes().starts_with(WH_PREFIX) {
        return Err(enoent());
    }
    let mut dirs: Vec<DirCopy> = Vec::new();
    let mut top: Option<Stat> = None;
    for copy in parent {
        let st = match sys::stat_at(copy.fd.as_fd(), name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if copy.oci_whiteout(name)? {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if copy.is_whiteout(name, &st)? {
            break;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            if dirs.is_empty() {
                let place = Place::Leaf {
                    layer: copy.layer,
                    dir: copy.fd.clone(),
                };
                return Ok((place, st));
            }
            // A file below a directory is hidden by it.
            break;
        }
        let fd = Arc::new(sys::open_path_at(copy.fd.as_fd(), name)?);
        let dir = DirCopy::new(copy.layer, fd, &st, layers[copy.layer].upper);
        // A `.wh.<name>` beside the directory hides the lower copies, like an opaque marker.
        let opaque = dir.is_opaque()? || copy.oci_whiteout(name)?;
        dirs.push(dir);
        top.get_or_insert(st);
        if opaque {
            break;
        }
    }
    match top {
        Some(st) => Ok((Place::Dir(dirs), st)),
        None => Err(enoent()),
    }
}
