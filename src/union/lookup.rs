//! Top-down resolution of one name in a merged directory.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;

use super::dircache::Dir;
use super::inode::{LowerData, Place};
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
    let fd = dir.dir.fd()?;
    for key in REDIRECT_XATTRS {
        if let Some(v) = sys::get_xattr_value(fd.as_fd(), OsStr::new(""), key)?
            && !v.is_empty()
        {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Outcome of following an absolute redirect in one layer.
enum Walk {
    /// The entry's stat and the directory holding it.
    Found(Stat, Dir),
    Missing,
    /// A whiteout or a non-directory on the way: no lower layer may supply the directory.
    Stop,
}

/// Follows an absolute redirect (`/a/b`) from the root of `layer`, one component at a time,
/// never following symlinks.
fn walk_abs(layers: &[Layer], layer: usize, path: &[u8]) -> io::Result<Walk> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, through)) = comps.split_last() else {
        return Ok(Walk::Missing);
    };
    let mut dir = layers[layer].root.clone();
    let mut fd = dir.fd()?;
    for comp in through {
        let comp = OsStr::from_bytes(comp);
        let st = match sys::stat_at(fd.as_fd(), comp) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => st,
            Ok(_) => return Ok(Walk::Stop),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Walk::Missing),
            Err(e) => return Err(e),
        };
        (dir, fd) = dir.child(&fd, comp, &st)?;
    }
    match sys::stat_at(fd.as_fd(), OsStr::from_bytes(last)) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(Walk::Found(st, dir)),
        Ok(_) => Ok(Walk::Stop),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Walk::Missing),
        Err(e) => Err(e),
    }
}

/// How the next layers are searched: by name in the parent's copies, or (after an absolute
/// redirect) by path from each layer's root.
enum Look {
    Name(OsString),
    Path(Vec<u8>),
}

/// A resolved entry: where it lives, the stat of its topmost copy, and for a directory the
/// redirect on its upper copy (the kernel keeps the same, to build the next one from).
pub struct Resolved {
    pub place: Place,
    pub stat: Stat,
    pub redirect: Option<Vec<u8>>,
    /// For a metacopy upper file: the lower file holding its data.
    pub data: Option<LowerData>,
}

/// The xattrs marking an upper file as a metacopy (metadata only; the kernel's format, an
/// empty value or a version header, both accepted).
pub const METACOPY_XATTRS: [&[u8]; 2] = [b"trusted.overlay.metacopy", b"user.overlay.metacopy"];

/// Whether upper file `name` in `dir` is a metacopy. A metacopy has no data blocks (at most
/// one block of xattrs), so large files with data cost no xattr read.
fn is_metacopy(dir: &Dir, name: &OsStr, st: &Stat) -> io::Result<bool> {
    const XATTR_BLOCK_SECTORS: u64 = 16;
    let (blocks, size) = (st.st_blocks as u64, st.st_size as u64);
    if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || size == 0
        || (blocks > XATTR_BLOCK_SECTORS && blocks * 512 >= size)
    {
        return Ok(false);
    }
    let names = sys::list_xattr_all(dir.fd()?.as_fd(), name)?;
    Ok(names
        .split(|&b| b == 0)
        .any(|k| METACOPY_XATTRS.contains(&k)))
}

/// Resolves `name` below the copies of its parent directory (topmost first).
///
/// The first non-directory wins; directories merge downwards until an opaque copy; a whiteout
/// (or a non-directory under a directory) ends the search. A directory carrying a redirect
/// (it was renamed) continues in the lower layers at the name or path it was renamed from;
/// redirects met in lower layers are followed too, as the kernel does.
pub fn resolve(layers: &[Layer], parent: &[DirCopy], name: &OsStr) -> io::Result<Resolved> {
    // Whiteout files are the union's own markers, never entries of the merged view.
    if name.as_bytes().starts_with(WH_PREFIX) {
        return Err(enoent());
    }
    let mut dirs: Vec<DirCopy> = Vec::new();
    let mut top: Option<Stat> = None;
    let mut look = Look::Name(name.to_owned());
    let mut redirect: Option<Vec<u8>> = None;
    let first = parent.first().map_or(layers.len(), |c| c.layer);
    let mut pi = 0;
    for layer in first..layers.len() {
        // The directory holding the candidate in this layer, and its name there.
        let (pdir, cand, found): (Dir, OsString, Option<Stat>) = match &look {
            Look::Name(n) => {
                while pi < parent.len() && parent[pi].layer < layer {
                    pi += 1;
                }
                let Some(copy) = parent.get(pi).filter(|c| c.layer == layer) else {
                    if pi >= parent.len() {
                        break;
                    }
                    continue;
                };
                let st = match sys::stat_at(copy.dir.fd()?.as_fd(), n) {
                    Ok(st) => st,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        if copy.oci_whiteout(n)? {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if copy.is_whiteout(n, &st)? {
                    break;
                }
                (copy.dir.clone(), n.clone(), Some(st))
            }
            Look::Path(path) => match walk_abs(layers, layer, path)? {
                Walk::Found(st, pdir) => {
                    let last = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
                    (pdir, OsStr::from_bytes(last).to_owned(), Some(st))
                }
                Walk::Missing => continue,
                Walk::Stop => break,
            },
        };
        let Some(st) = found else { continue };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            if dirs.is_empty() {
                let mut stat = st;
                let mut data = None;
                // A metacopy's data is the same name further down (only the upper copy of a
                // file can be one, and a file never carries a redirect of its own).
                if layers[layer].upper
                    && matches!(look, Look::Name(_))
                    && is_metacopy(&pdir, &cand, &st)?
                    && let Ok(Resolved {
                        place: Place::Leaf { layer, dir, name },
                        stat: lst,
                        ..
                    }) = resolve(layers, parent.get(pi + 1..).unwrap_or_default(), &cand)
                    && lst.st_mode & libc::S_IFMT == libc::S_IFREG
                {
                    // The kernel reports the data's blocks, not the empty copy's.
                    stat.st_blocks = lst.st_blocks;
                    data = Some(LowerData { layer, dir, name });
                }
                let place = Place::Leaf {
                    layer,
                    dir: pdir,
                    name: cand,
                };
                return Ok(Resolved {
                    place,
                    stat,
                    redirect: None,
                    data,
                });
            }
            // A file below a directory is hidden by it.
            break;
        }
        let (d, _) = pdir.child(&pdir.fd()?, &cand, &st)?;
        let dir = DirCopy::new(layer, d, &st, layers[layer].upper);
        // A `.wh.<name>` beside the directory hides the lower copies, like an opaque marker.
        let beside = match &look {
            Look::Name(_) => parent
                .get(pi)
                .map_or(Ok(false), |c| c.oci_whiteout(&cand))?,
            Look::Path(_) => false,
        };
        let opaque = dir.is_opaque()? || beside;
        let here = if opaque { None } else { redirect_of(&dir)? };
        dirs.push(dir);
        top.get_or_insert(st);
        if opaque {
            break;
        }
        if let Some(r) = here {
            // Only the upper copy's redirect is the directory's own (it is what a rename
            // replaces); lower ones are followed but belong to those layers.
            if layers[layer].upper {
                redirect = Some(r.clone());
            }
            look = match (r.first() == Some(&b'/'), look) {
                (true, _) => Look::Path(r.clone()),
                (false, Look::Name(_)) => Look::Name(OsString::from_vec(r.clone())),
                // A relative redirect below an absolute one replaces its last component.
                (false, Look::Path(p)) => {
                    let cut = p.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    Look::Path([&p[..cut], b"/", &r].concat())
                }
            };
        }
    }
    match top {
        Some(stat) => Ok(Resolved {
            place: Place::Dir(dirs),
            stat,
            redirect,
            data: None,
        }),
        None => Err(enoent()),
    }
}
