//! Top-down resolution of one name in a merged directory.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use super::inode::Place;
use super::layer::{DirCopy, Layer, WH_PREFIX};
use crate::sys::{self, Stat};

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

/// The xattrs that redirect a renamed directory to where its lower copies live (the kernel's
/// `redirect_dir` format: a name in the same parent, or a path from the layer root).
pub const REDIRECT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.redirect", b"user.overlay.redirect"];

/// Reads a directory copy's redirect, if it has one.
pub fn redirect_of(dir: &DirCopy) -> io::Result<Option<Vec<u8>>> {
    for key in REDIRECT_XATTRS {
        if let Some(v) = sys::get_xattr_value(dir.fd.as_fd(), OsStr::new(""), key)?
            && !v.is_empty()
        {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Outcome of following an absolute redirect in one lower layer.
enum Walk {
    Found(DirCopy),
    Missing,
    /// A whiteout or a non-directory on the way: no lower layer may supply the directory.
    Stop,
}

/// Follows an absolute redirect (`/a/b`) from the root of lower layer `layer`, one component
/// at a time, never following symlinks.
fn walk_abs(layers: &[Layer], layer: usize, path: &[u8]) -> io::Result<Walk> {
    let mut cur = layers[layer].root.clone();
    let mut st = sys::stat_fd(cur.as_fd())?;
    for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let comp = OsStr::from_bytes(comp);
        st = match sys::stat_at(cur.as_fd(), comp) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Walk::Missing),
            Err(e) => return Err(e),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(Walk::Stop);
        }
        cur = Arc::new(sys::open_path_at(cur.as_fd(), comp)?);
    }
    Ok(Walk::Found(DirCopy::new(layer, cur, &st, false)))
}

/// Resolves `name` below the copies of its parent directory (topmost first).
///
/// The first non-directory wins; directories merge downwards until an opaque copy; a whiteout
/// (or a non-directory under a directory) ends the search. A directory carrying a redirect
/// (it was renamed) continues in the lower layers at the name or path it was renamed from.
/// Returns where the entry lives and the stat of its topmost copy.
pub fn resolve(layers: &[Layer], parent: &[DirCopy], name: &OsStr) -> io::Result<(Place, Stat)> {
    // Whiteout files are the union's own markers, never entries of the merged view.
    if name.as_bytes().starts_with(WH_PREFIX) {
        return Err(enoent());
    }
    let mut dirs: Vec<DirCopy> = Vec::new();
    let mut top: Option<Stat> = None;
    // The name looked up in the next copies: changed by a relative redirect.
    let mut look: OsString = name.to_owned();
    let mut absolute: Option<(usize, Vec<u8>)> = None;
    for copy in parent {
        let st = match sys::stat_at(copy.fd.as_fd(), &look) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if copy.oci_whiteout(&look)? {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if copy.is_whiteout(&look, &st)? {
            break;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            if dirs.is_empty() {
                let place = Place::Leaf {
                    layer: copy.layer,
                    dir: copy.fd.clone(),
                    name: look.clone(),
                };
                return Ok((place, st));
            }
            // A file below a directory is hidden by it.
            break;
        }
        let fd = Arc::new(sys::open_path_at(copy.fd.as_fd(), &look)?);
        let dir = DirCopy::new(copy.layer, fd, &st, layers[copy.layer].upper);
        // A `.wh.<name>` beside the directory hides the lower copies, like an opaque marker.
        let opaque = dir.is_opaque()? || copy.oci_whiteout(&look)?;
        let redirect = if opaque { None } else { redirect_of(&dir)? };
        let layer = dir.layer;
        dirs.push(dir);
        top.get_or_insert(st);
        match redirect {
            _ if opaque => break,
            Some(r) if r.first() == Some(&b'/') => {
                absolute = Some((layer, r));
                break;
            }
            Some(r) => look = OsString::from_vec(r),
            None => {}
        }
    }
    if let Some((from, path)) = absolute {
        for layer in from + 1..layers.len() {
            match walk_abs(layers, layer, &path)? {
                Walk::Found(dir) => {
                    let opaque = dir.is_opaque()?;
                    dirs.push(dir);
                    if opaque {
                        break;
                    }
                }
                Walk::Missing => continue,
                Walk::Stop => break,
            }
        }
    }
    match top {
        Some(st) => Ok((Place::Dir(dirs), st)),
        None => Err(enoent()),
    }
}
