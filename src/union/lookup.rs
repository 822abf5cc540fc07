//! Top-down resolution of one name in a merged directory.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;

use super::dircache::Dir;
use super::inode::{LowerData, Place};
use super::layer::{DirCopy, Layer};
use crate::format::{self, Class};
use crate::sys::{self, Stat};

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

/// Reads a directory copy's redirect, if it has one.
pub fn redirect_of(dir: &DirCopy) -> io::Result<Option<Vec<u8>>> {
    format::redirect(dir.dir.fd()?.as_fd(), OsStr::new(""))
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

/// One candidate for the name in one layer.
enum Step {
    /// The entry, the directory holding it and its name there; `meta`: an upper metacopy.
    Found {
        st: Stat,
        pdir: Dir,
        cand: OsString,
        meta: bool,
    },
    /// Nothing in this layer: try the next one.
    Next,
    /// A whiteout (or an end of the parent's copies): no lower layer may supply the name.
    Stop,
}

/// The state of one resolution, carried from layer to layer.
struct Search<'a> {
    layers: &'a [Layer],
    parent: &'a [DirCopy],
    /// The parent copy for the current layer (by name lookups).
    pi: usize,
    look: Look,
    dirs: Vec<DirCopy>,
    top: Option<Stat>,
    redirect: Option<Vec<u8>>,
}

/// Resolves `name` below the copies of its parent directory (topmost first).
///
/// The first non-directory wins; directories merge downwards until an opaque copy; a whiteout
/// (or a non-directory under a directory) ends the search. A directory carrying a redirect
/// (it was renamed) continues in the lower layers at the name or path it was renamed from;
/// redirects met in lower layers are followed too, as the kernel does.
pub fn resolve(layers: &[Layer], parent: &[DirCopy], name: &OsStr) -> io::Result<Resolved> {
    // Whiteout files are the union's own markers, never entries of the merged view.
    if format::is_format_name(name.as_bytes()) {
        return Err(enoent());
    }
    let mut s = Search {
        layers,
        parent,
        pi: 0,
        look: Look::Name(name.to_owned()),
        dirs: Vec::new(),
        top: None,
        redirect: None,
    };
    let first = parent.first().map_or(layers.len(), |c| c.layer);
    for layer in first..layers.len() {
        let (st, pdir, cand, meta) = match s.candidate(layer)? {
            Step::Found {
                st,
                pdir,
                cand,
                meta,
            } => (st, pdir, cand, meta),
            Step::Next => continue,
            Step::Stop => break,
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            if s.dirs.is_empty() {
                return s.leaf(layer, st, pdir, cand, meta);
            }
            // A file below a directory is hidden by it.
            break;
        }
        if !s.merge_dir(layer, st, &pdir, &cand)? {
            break;
        }
    }
    match s.top {
        Some(stat) => Ok(Resolved {
            place: Place::Dir(s.dirs),
            stat,
            redirect: s.redirect,
            data: None,
        }),
        None => Err(enoent()),
    }
}

impl Search<'_> {
    /// Looks for the candidate in `layer`: by name in the parent's copy there, or by path
    /// from the layer root after an absolute redirect.
    fn candidate(&mut self, layer: usize) -> io::Result<Step> {
        let n = match &self.look {
            Look::Name(n) => n,
            Look::Path(path) => {
                return Ok(match walk_abs(self.layers, layer, path)? {
                    Walk::Found(st, pdir) => {
                        let last = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
                        Step::Found {
                            st,
                            pdir,
                            cand: OsStr::from_bytes(last).to_owned(),
                            meta: false,
                        }
                    }
                    Walk::Missing => Step::Next,
                    Walk::Stop => Step::Stop,
                });
            }
        };
        let parent = self.parent;
        while self.pi < parent.len() && parent[self.pi].layer < layer {
            self.pi += 1;
        }
        let Some(copy) = parent.get(self.pi).filter(|c| c.layer == layer) else {
            return Ok(if self.pi >= parent.len() {
                Step::Stop
            } else {
                Step::Next
            });
        };
        let fd = copy.dir.fd()?;
        let st = match sys::stat_at(fd.as_fd(), n) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(if copy.oci_whiteout(n)? {
                    Step::Stop
                } else {
                    Step::Next
                });
            }
            Err(e) => return Err(e),
        };
        // Directories are classified through their own copy (`merge_dir`): its markers are
        // read from its fd once and kept for the lookups below it.
        let class = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Class::Plain,
            _ => format::classify(fd.as_fd(), n, &st, copy)?,
        };
        Ok(match class {
            Class::Whiteout(_) => Step::Stop,
            class => Step::Found {
                st,
                pdir: copy.dir.clone(),
                cand: n.clone(),
                meta: class == Class::Metacopy,
            },
        })
    }

    /// The topmost copy is a non-directory: it is the entry. A metacopy's data is the same
    /// name further down (only the upper copy of a file can be one, and a file never carries
    /// a redirect of its own).
    fn leaf(
        &self,
        layer: usize,
        mut stat: Stat,
        pdir: Dir,
        cand: OsString,
        meta: bool,
    ) -> io::Result<Resolved> {
        let mut data = None;
        if meta
            && let Ok(Resolved {
                place: Place::Leaf { layer, dir, name },
                stat: lst,
                ..
            }) = resolve(
                self.layers,
                self.parent.get(self.pi + 1..).unwrap_or_default(),
                &cand,
            )
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
        Ok(Resolved {
            place,
            stat,
            redirect: None,
            data,
        })
    }

    /// Adds the directory copy found in `layer` to the merge. Returns whether lower layers
    /// still take part (not after an opaque copy), following its redirect if it has one.
    fn merge_dir(&mut self, layer: usize, st: Stat, pdir: &Dir, cand: &OsStr) -> io::Result<bool> {
        let upper = self.layers[layer].upper;
        let (d, _) = pdir.child(&pdir.fd()?, cand, &st)?;
        let dir = DirCopy::new(layer, d, &st, upper);
        // A `.wh.<name>` beside the directory hides the lower copies, like an opaque marker.
        let beside = match &self.look {
            Look::Name(_) => self
                .parent
                .get(self.pi)
                .map_or(Ok(false), |c| c.oci_whiteout(cand))?,
            Look::Path(_) => false,
        };
        let opaque = dir.is_opaque()? || beside;
        let here = if opaque { None } else { redirect_of(&dir)? };
        self.dirs.push(dir);
        self.top.get_or_insert(st);
        if opaque {
            return Ok(false);
        }
        if let Some(r) = here {
            // Only the upper copy's redirect is the directory's own (it is what a rename
            // replaces); lower ones are followed but belong to those layers.
            if upper {
                self.redirect = Some(r.clone());
            }
            let look = std::mem::replace(&mut self.look, Look::Name(OsString::new()));
            self.look = match (r.first() == Some(&b'/'), look) {
                (true, _) => Look::Path(r),
                (false, Look::Name(_)) => Look::Name(OsString::from_vec(r)),
                // A relative redirect below an absolute one replaces its last component.
                (false, Look::Path(p)) => {
                    let cut = p.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    Look::Path([&p[..cut], b"/", &r].concat())
                }
            };
        }
        Ok(true)
    }
}
