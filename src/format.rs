//! The layer format: how a layer directory says "deleted here", "hide what is below",
//! "renamed from" and "data elsewhere", in the kernel's forms and OCI's.
//!
//! Kernel compatibility lives in these names and rules, so they live in one place: the union
//! reads them (lookup, readdir) and writes them (copy-up, remove, rename), and the image store
//! translates them to and from OCI tar entries (commit, unpack). fuse-overlayfs keeps its
//! whiteout rule in one module the same way.
//!
//! - Whiteout: a char device 0/0 (the kernel's), a `.wh.<name>` file beside the name (OCI's,
//!   needs no mknod), or a zero-size file with an `overlay.whiteout` xattr in a directory whose
//!   `overlay.opaque` is "x" (the kernel's for layers that cannot hold devices).
//! - Opaque directory: `overlay.opaque` "y" (trusted., user., or fuse-overlayfs's own), a
//!   `.wh..wh..opq` entry inside it, or (OCI) a `.wh.<name>` beside it.
//! - Redirect: `overlay.redirect` on a renamed directory, the name or absolute path its lower
//!   copies live at.
//! - Metacopy: `overlay.metacopy` on an upper file holding metadata only; its data is the same
//!   name in the layers below.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::sys::{self, Stat};

/// Both namespaces of one overlay xattr: `trusted.overlay.X` (the kernel's default) and
/// `user.overlay.X` (its `userxattr` mode, and rootless strata's).
macro_rules! overlay_names {
    ($what:literal) => {
        [
            concat!("trusted.overlay.", $what).as_bytes(),
            concat!("user.overlay.", $what).as_bytes(),
        ]
    };
}

/// Prefix of OCI whiteout files; `.wh.<name>` hides `<name>` in lower layers.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker: a directory containing it hides everything below it.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The two namespaces of the overlay xattrs, as the kernel reads them.
pub const PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// fuse-overlayfs's own namespace (its opaque marker is honoured; none is ever shown).
const FUSE_OVERLAYFS_PREFIX: &[u8] = b"user.fuseoverlayfs.";

pub const OPAQUE_XATTRS: [&[u8]; 3] = [
    overlay_names!("opaque")[0],
    overlay_names!("opaque")[1],
    b"user.fuseoverlayfs.opaque",
];
pub const WHITEOUT_XATTRS: [&[u8]; 2] = overlay_names!("whiteout");
/// A renamed directory's redirect (the kernel's `redirect_dir` format: a name in the same
/// parent, or a path from the layer root).
pub const REDIRECT_XATTRS: [&[u8]; 2] = overlay_names!("redirect");
/// An upper file holding metadata only (an empty value or a version header, both accepted).
pub const METACOPY_XATTRS: [&[u8]; 2] = overlay_names!("metacopy");

/// `.wh.<name>`: the OCI whiteout of `name`.
pub fn whiteout_name(name: &OsStr) -> OsString {
    OsString::from_vec([WH_PREFIX, name.as_bytes()].concat())
}

/// Whether `name` is one of the format's own (`.wh.` prefixed): never a user's entry.
pub fn is_format_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// The name an OCI whiteout file hides (None for other names and the opaque marker).
pub fn whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OPAQUE_MARKER {
        return None;
    }
    name.strip_prefix(WH_PREFIX)
}

/// A char device 0/0: the kernel's whiteout.
pub fn is_chardev_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && sys::dev_is_zero(st.st_rdev)
}

/// Whether an entry with this stat can be a whiteout at all (its name aside): a char device
/// 0/0, or a zero-size file that may carry the whiteout xattr. Saves the classifier's reads.
pub fn may_be_whiteout(st: &Stat) -> bool {
    is_chardev_whiteout(st) || (st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0)
}

/// The union's own overlay xattr names, in the one namespace a mount writes (`trusted.` with
/// CAP_SYS_ADMIN, else `user.`, as the kernel's `userxattr`), built once.
#[derive(Clone, Debug)]
pub struct OverlayXattrs {
    prefix: &'static [u8],
    /// `opaque`: "y" on a directory hiding its lower copies.
    pub opaque: Vec<u8>,
    /// `redirect`: where a renamed directory's lower copies live.
    pub redirect: Vec<u8>,
    /// `metacopy`: an upper file whose data is still below.
    pub metacopy: Vec<u8>,
    /// `origin`: the lower file a copy came from (`struct ovl_fb`).
    pub origin: Vec<u8>,
    /// `impure`: an upper directory holding entries with recorded inode numbers.
    pub impure: Vec<u8>,
    /// `nlink`: the kernel's merged link count of an indexed file ("U+n").
    pub nlink: Vec<u8>,
    /// `strata.ino`: the stable inode number a copied-up object keeps (its origin's).
    pub ino: Vec<u8>,
    /// `strata.nlink`: an indexed file's lower names not (yet) in the upper.
    pub lower_rest: Vec<u8>,
    /// `strata.links`: how many of an indexed file's links are index entries.
    pub index_links: Vec<u8>,
}

impl OverlayXattrs {
    pub fn new(trusted: bool) -> Self {
        let prefix = PREFIXES[usize::from(!trusted)];
        let name = |what: &[u8]| [prefix, what].concat();
        OverlayXattrs {
            prefix,
            opaque: name(b"opaque"),
            redirect: name(b"redirect"),
            metacopy: name(b"metacopy"),
            origin: name(b"origin"),
            impure: name(b"impure"),
            nlink: name(b"nlink"),
            ino: name(b"strata.ino"),
            lower_rest: name(b"strata.nlink"),
            index_links: name(b"strata.links"),
        }
    }

    /// `<prefix><what>`, e.g. `trusted.overlay.` + `opaque`.
    pub fn name(&self, what: &[u8]) -> Vec<u8> {
        [self.prefix, what].concat()
    }

    pub fn prefix(&self) -> &'static [u8] {
        self.prefix
    }
}

/// Xattrs that carry the union's own bookkeeping: never listed or returned to users. An
/// escaped one (`trusted.overlay.overlay.X`, the kernel's way of nesting overlays) is a user's.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    match PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => !name[p.len()..].starts_with(b"overlay."),
        None => name.starts_with(FUSE_OVERLAYFS_PREFIX),
    }
}

/// The name a user's xattr is stored under: an overlay name (`trusted.overlay.X`) is escaped
/// to `trusted.overlay.overlay.X`, as the kernel does, so it never acts as the union's own.
pub fn stored_xattr_name(name: &[u8]) -> Cow<'_, [u8]> {
    match PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => [&name[..p.len()], b"overlay.", &name[p.len()..]]
            .concat()
            .into(),
        None => name.into(),
    }
}

/// The name a stored xattr is shown under (escaped overlay names lose one `overlay.`); None
/// for the union's own.
pub fn shown_xattr_name(name: &[u8]) -> Option<Cow<'_, [u8]>> {
    if is_internal_xattr(name) {
        return None;
    }
    match PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => Some(
            [&name[..p.len()], &name[p.len() + b"overlay.".len()..]]
                .concat()
                .into(),
        ),
        None => Some(name.into()),
    }
}

/// What a directory's own xattrs and entries say about the names below it.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirMarks {
    /// Hides every lower copy (xattr "y", or a `.wh..wh..opq` entry).
    pub opaque: bool,
    /// Xattr "x": zero-size files carrying an overlay whiteout xattr are whiteouts here.
    pub xwhiteouts: bool,
}

/// Reads the marks of directory `dir` (its own fd): the opaque xattrs, and with `marker` the
/// `.wh..wh..opq` entry too (callers that list the directory anyway find it there).
pub fn dir_marks(dir: BorrowedFd<'_>, marker: bool) -> io::Result<DirMarks> {
    let mut m = DirMarks::default();
    let here = OsStr::new("");
    let names = sys::list_xattr_all(dir, here)?;
    for key in names
        .split(|&b| b == 0)
        .filter(|k| OPAQUE_XATTRS.contains(k))
    {
        match sys::get_xattr_value(dir, here, key)?.as_deref() {
            Some(b"y") => m.opaque = true,
            Some(b"x") => m.xwhiteouts = true,
            _ => {}
        }
    }
    if marker && sys::exists_at(dir, OsStr::from_bytes(OPAQUE_MARKER))? {
        m.opaque = true;
    }
    Ok(m)
}

/// The first non-empty value of `keys` on `name` in `dir`.
fn first_value(dir: BorrowedFd<'_>, name: &OsStr, keys: &[&[u8]]) -> io::Result<Option<Vec<u8>>> {
    for key in keys {
        if let Some(v) = sys::get_xattr_value(dir, name, key)?
            && !v.is_empty()
        {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The redirect of directory `name` in `dir` (of `dir` itself for an empty name).
pub fn redirect(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    first_value(dir, name, &REDIRECT_XATTRS)
}

/// Which form a whiteout takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteout {
    /// A char device 0/0 at the name.
    CharDev,
    /// `.wh.<target>`: this entry hides `target`, not itself.
    Oci,
    /// A zero-size file with an overlay whiteout xattr, in an "x" directory.
    Xattr,
}

/// Which form makes a directory opaque, as seen from its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opaque {
    /// `overlay.opaque` "y" on the directory.
    Xattr,
    /// A `.wh.<name>` beside it (OCI: a deleted name made again).
    Beside,
}

/// What one entry of a layer directory is, in the layer format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    Whiteout(Whiteout),
    /// `.wh..wh..opq`: the directory holding it is opaque.
    OpaqueMarker,
    /// A directory hiding its lower copies (the `.wh..wh..opq` inside it is found by
    /// `dir_marks` on its own fd).
    Opaque(Opaque),
    /// A renamed directory: where its lower copies live.
    Redirect(Vec<u8>),
    /// An upper file whose data is the same name below.
    Metacopy,
    Plain,
}

/// What the classifier needs to know about the directory holding an entry. Each costs reads,
/// so they are asked only when an entry's stat leaves the question open.
pub trait Parent {
    /// The directory's `overlay.opaque` is "x" (xattr whiteouts may be present).
    fn xattr_whiteouts(&self) -> io::Result<bool>;
    /// Files here may be metacopies (the upper layer: lower metacopies are not supported).
    fn holds_metacopies(&self) -> bool;
}

/// A parent whose marks are already known.
pub struct Known {
    pub xwhiteouts: bool,
    pub upper: bool,
}

impl Parent for Known {
    fn xattr_whiteouts(&self) -> io::Result<bool> {
        Ok(self.xwhiteouts)
    }
    fn holds_metacopies(&self) -> bool {
        self.upper
    }
}

/// Classifies entry `name` (with stat `st`) of directory `dir`. Reads xattrs only where the
/// stat leaves the answer open: a whiteout xattr only on a zero-size file in an "x"
/// directory, a metacopy xattr only on a small-blocked upper file, directory xattrs only on
/// directories.
pub fn classify(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    parent: &impl Parent,
) -> io::Result<Class> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER {
        return Ok(Class::OpaqueMarker);
    }
    if is_format_name(bytes) {
        return Ok(Class::Whiteout(Whiteout::Oci));
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFCHR if sys::dev_is_zero(st.st_rdev) => Ok(Class::Whiteout(Whiteout::CharDev)),
        libc::S_IFREG if st.st_size == 0 => {
            if parent.xattr_whiteouts()? && any_value(dir, name, &WHITEOUT_XATTRS, None)? {
                return Ok(Class::Whiteout(Whiteout::Xattr));
            }
            Ok(Class::Plain)
        }
        libc::S_IFREG if parent.holds_metacopies() && is_metacopy(dir, name, st)? => {
            Ok(Class::Metacopy)
        }
        libc::S_IFDIR => {
            if any_value(dir, name, &OPAQUE_XATTRS, Some(b"y"))? {
                return Ok(Class::Opaque(Opaque::Xattr));
            }
            if sys::exists_at(dir, &whiteout_name(name))? {
                return Ok(Class::Opaque(Opaque::Beside));
            }
            Ok(redirect(dir, name)?.map_or(Class::Plain, Class::Redirect))
        }
        _ => Ok(Class::Plain),
    }
}

/// Whether any of `keys` is set on `name` (to `want`, or to anything, an empty value too).
fn any_value(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    keys: &[&[u8]],
    want: Option<&[u8]>,
) -> io::Result<bool> {
    for key in keys {
        if let Some(v) = sys::get_xattr_value(dir, name, key)?
            && want.is_none_or(|w| v == w)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether regular file `name` in `dir` is a metacopy. A metacopy has no data blocks (at most
/// one block of xattrs), so large files with data cost no xattr read.
fn is_metacopy(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> io::Result<bool> {
    const XATTR_BLOCK_SECTORS: u64 = 16;
    let (blocks, size) = (st.st_blocks as u64, st.st_size as u64);
    if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || size == 0
        || (blocks > XATTR_BLOCK_SECTORS && blocks * 512 >= size)
    {
        return Ok(false);
    }
    let names = sys::list_xattr_all(dir, name)?;
    Ok(names
        .split(|&b| b == 0)
        .any(|k| METACOPY_XATTRS.contains(&k)))
}

#[cfg(test)]
mod tests;
