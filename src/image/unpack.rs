//! Unpacks one untrusted layer tar into a directory, without ever writing outside it.
//!
//! Every entry's path is cleaned lexically first (`/`, `./` and empty components dropped, `..`
//! clamped at the layer root, as containerd does), then its parent is resolved below the layer
//! root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: an entry that would go through a
//! symlink (one unpacked earlier, say) is refused, and nothing reaches outside. The entry itself
//! is created with `*at` calls relative to that parent fd that do not follow a final symlink.
//! OCI whiteouts stay what they are, `.wh.<name>` files (strata's union reads them, so no root
//! and no mknod are needed), which also makes the order of `.wh..wh..opq` in the tar
//! irrelevant: the marker hides lower layers only, never this layer's own entries.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Mode, OFlags};
use tar::EntryType;

use super::error::{ImageError, Result};
use super::fsutil::{open_beneath, remove_tree};
use crate::format::{self, stored_xattr_name};
use crate::sys::{self, SetTime};

/// What the unpacker may do beyond plain files.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Set owners from the tar and create device nodes (needs root).
    pub privileged: bool,
}

impl UnpackOptions {
    pub fn for_current_user() -> Self {
        UnpackOptions {
            privileged: rustix::process::geteuid().is_root(),
        }
    }
}

#[derive(Default, Debug)]
pub struct UnpackStats {
    pub entries: u64,
    /// Device nodes left out (unprivileged unpack).
    pub skipped_devices: u64,
    /// Xattrs the filesystem or our privileges refused.
    pub skipped_xattrs: u64,
}

/// Splits a tar path into clean components: no empty, `.` or `..` ones (`..` removes the one
/// before it, and nothing at the root, so `../x` is `x` and `/a/../../b` is `b`).
pub fn clean(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Metadata applied once all entries are written (a directory's mtime changes as children
/// are added; a read-only mode would stop an unprivileged unpack from adding them).
struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    mtime: i64,
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    opts: UnpackOptions,
    layer: &'a str,
    stats: UnpackStats,
    /// The last parent directory resolved: entries come grouped by directory.
    cached: Option<(Vec<u8>, OwnedFd)>,
    dirs: Vec<DirMeta>,
    /// File data goes through this, in chunks far larger than io::copy's 8 KiB: fewer writes.
    buf: Vec<u8>,
}

/// Unpacks the tar read from `reader` into the directory `root` (which should be empty).
/// `layer` names the layer in errors. Returns the reader (to hash what follows the tar).
pub fn unpack<R: Read>(
    reader: R,
    root: BorrowedFd<'_>,
    opts: UnpackOptions,
    layer: &str,
) -> Result<(UnpackStats, R)> {
    let mut u = Unpacker {
        root,
        opts,
        layer,
        stats: UnpackStats::default(),
        cached: None,
        dirs: Vec::new(),
        buf: vec![0; 256 * 1024],
    };
    let mut archive = tar::Archive::new(reader);
    let tar_err = |source| ImageError::Tar {
        layer: layer.to_owned(),
        source,
    };
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        u.entry(&mut entry)?;
        u.stats.entries += 1;
    }
    u.finish_dirs();
    Ok((u.stats, archive.into_inner()))
}

/// Owner and mtime of an entry, PAX records overriding the header's (large ids, sub-second
/// or pre-1970 times), and its `SCHILY.xattr.*` records.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Meta {
    let h = entry.header();
    let mut m = Meta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().map_or(0, |t| t.min(i64::MAX as u64) as i64),
        xattrs: Vec::new(),
    };
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax.flatten() {
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let num = || std::str::from_utf8(value).ok();
            match key {
                b"uid" => m.uid = num().and_then(|v| v.parse().ok()).unwrap_or(m.uid),
                b"gid" => m.gid = num().and_then(|v| v.parse().ok()).unwrap_or(m.gid),
                b"mtime" => {
                    let secs = num().and_then(|v| v.split('.').next()?.parse().ok());
                    m.mtime = secs.unwrap_or(m.mtime);
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        m.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    m
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, path: &[u8], why: &'static str) -> ImageError {
        ImageError::Unsafe {
            layer: self.layer.to_owned(),
            entry: show(path),
            why,
        }
    }

    fn entry_err(&self, step: &'static str, path: &[u8]) -> impl FnOnce(io::Error) -> ImageError {
        let layer = self.layer.to_owned();
        let entry = show(path);
        move |source| ImageError::Entry {
            step,
            layer,
            entry,
            source,
        }
    }

    /// The parent directory of an entry, created (0755) where missing; refuses symlinks and
    /// non-directories on the way.
    fn parent(&mut self, comps: &[&[u8]], entry: &[u8]) -> Result<BorrowedFd<'_>> {
        let path = join(comps);
        if self.cached.as_ref().is_none_or(|(p, _)| *p != path) {
            let fd = match open_beneath(self.root, &path) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.make_dirs(comps, entry)?,
                Err(e) => return Err(self.resolve_err(e, entry)),
            };
            self.cached = Some((path, fd));
        }
        match &self.cached {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => unreachable!("cached just above"),
        }
    }

    fn resolve_err(&self, e: io::Error, entry: &[u8]) -> ImageError {
        match e.raw_os_error() {
            Some(libc::ELOOP) => self.unsafe_entry(entry, "its path goes through a symlink"),
            Some(libc::EXDEV) => self.unsafe_entry(entry, "its path leaves the layer"),
            Some(libc::ENOTDIR) => {
                self.unsafe_entry(entry, "its path goes through a non-directory")
            }
            _ => (self.entry_err("resolving parent of", entry))(e),
        }
    }

    fn make_dirs(&self, comps: &[&[u8]], entry: &[u8]) -> Result<OwnedFd> {
        let mut dir = open_beneath(self.root, b".")
            .map_err(self.entry_err("opening layer root for", entry))?;
        for c in comps {
            let name = OsStr::from_bytes(c);
            match sys::mkdir_at(dir.as_fd(), name, 0o755) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err((self.entry_err("creating parent of", entry))(e)),
            }
            dir = open_beneath(dir.as_fd(), c).map_err(|e| self.resolve_err(e, entry))?;
        }
        Ok(dir)
    }

    /// Makes room for a new entry `name`: removes what is there (later entries win), except
    /// a directory that is to stay one.
    fn clear(&mut self, parent: BorrowedFd<'_>, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
        match sys::stat_at(parent, name) {
            Ok(st) if keep_dir && st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(true),
            Ok(_) => {
                // A cached parent could be below what goes away.
                self.cached = None;
                remove_tree(parent, name)?;
                Ok(false)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let comps = clean(&raw);
        let Some((&name, parents)) = comps.split_last() else {
            // The layer root itself: its metadata belongs to the image's root, not ours.
            return Ok(());
        };
        let kind = entry.header().entry_type();
        let m = meta(entry);
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let rdev = rustix::fs::makedev(
            entry.header().device_major().ok().flatten().unwrap_or(0),
            entry.header().device_minor().ok().flatten().unwrap_or(0),
        );
        let parent_fd = self.parent(parents, &raw)?;
        // Reborrow through an owned clone: `self` is needed mutably below.
        let parent_owned = parent_fd
            .try_clone_to_owned()
            .map_err(self.entry_err("duplicating fd for", &raw))?;
        let parent = parent_owned.as_fd();
        let fname = OsStr::from_bytes(name);
        let is_dir = kind == EntryType::Directory;
        let replaced = !is_dir || format::is_format_name(name);
        let existed_dir = self
            .clear(parent, fname, !replaced)
            .map_err(self.entry_err("replacing", &raw))?;
        if format::is_format_name(name) {
            // An OCI whiteout or opaque marker: kept as an empty file, whatever its type.
            create_file(parent, fname, 0o644).map_err(self.entry_err("creating whiteout", &raw))?;
            return Ok(());
        }
        let made = match kind {
            EntryType::Directory => {
                return self.directory(parent, fname, existed_dir, &join(&comps), &m, &raw);
            }
            // A hard link shares its target's metadata: nothing more to set.
            EntryType::Link => return self.hard_link(parent, fname, &comps, link, &raw),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = create_file(parent, fname, 0o600)
                    .map_err(self.entry_err("creating file", &raw))?;
                let copied = copy_data(entry, &mut f, &mut self.buf);
                copied.map_err(self.entry_err("writing file", &raw))?;
                true
            }
            EntryType::Symlink => {
                let target =
                    link.ok_or_else(|| self.unsafe_entry(&raw, "symlink without target"))?;
                // The target is stored as is: we never follow it, the container resolves it
                // inside its own root.
                sys::symlink_at(OsStr::from_bytes(&target), parent, fname)
                    .map_err(self.entry_err("creating symlink", &raw))?;
                true
            }
            EntryType::Char | EntryType::Block => {
                self.device(parent, fname, kind, rdev, &m, &raw)?
            }
            EntryType::Fifo => {
                sys::mknod_at(parent, fname, libc::S_IFIFO | 0o600, 0)
                    .map_err(self.entry_err("creating fifo", &raw))?;
                true
            }
            _ => {
                log::warn!(
                    "layer {}: entry {} of type {kind:?} skipped",
                    self.layer,
                    show(&raw)
                );
                false
            }
        };
        if made {
            self.finish_entry(parent, fname, kind, &m, &raw)?;
        }
        Ok(())
    }

    /// A directory entry: made unless one stands there; its mode and mtime are set at the
    /// end (`finish_dirs`), once nothing more is created in it.
    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &OsStr,
        existed: bool,
        path: &[u8],
        m: &Meta,
        raw: &[u8],
    ) -> Result<()> {
        if !existed {
            sys::mkdir_at(parent, fname, 0o700)
                .map_err(self.entry_err("creating directory", raw))?;
        }
        self.dirs.push(DirMeta {
            path: path.to_vec(),
            mode: m.mode,
            mtime: m.mtime,
        });
        self.set_owner_xattrs(parent, fname, m, raw)
    }

    /// A hard link to an earlier file of this layer, resolved beneath the layer root.
    fn hard_link(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &OsStr,
        comps: &[&[u8]],
        link: Option<Vec<u8>>,
        raw: &[u8],
    ) -> Result<()> {
        let target = link.ok_or_else(|| self.unsafe_entry(raw, "hard link without target"))?;
        let tcomps = clean(&target);
        let Some((&tname, tparents)) = tcomps.split_last() else {
            return Err(self.unsafe_entry(raw, "hard link to the layer root"));
        };
        if tcomps == comps {
            return Ok(());
        }
        let tdir =
            open_beneath(self.root, &join(tparents)).map_err(|e| self.resolve_err(e, raw))?;
        sys::link_at(tdir.as_fd(), OsStr::from_bytes(tname), parent, fname).map_err(
            self.entry_err(
                "hard-linking (target must be an earlier file of this layer)",
                raw,
            ),
        )?;
        Ok(())
    }

    /// A device node; unprivileged, a char 0/0 (the kernel's whiteout) becomes the OCI form
    /// and other devices are skipped. Returns whether a node was made.
    fn device(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &OsStr,
        kind: EntryType,
        rdev: u64,
        m: &Meta,
        raw: &[u8],
    ) -> Result<bool> {
        let privileged = self.opts.privileged;
        if kind == EntryType::Char && rdev == 0 && !privileged {
            // A kernel-format whiteout: the OCI form needs no mknod.
            let wh = format::whiteout_name(fname);
            let whn = wh.as_os_str();
            self.clear(parent, whn, false)
                .map_err(self.entry_err("replacing", raw))?;
            create_file(parent, whn, 0o644).map_err(self.entry_err("creating whiteout", raw))?;
            return Ok(false);
        }
        if !privileged {
            self.stats.skipped_devices += 1;
            log::warn!(
                "layer {}: device {} skipped (not root)",
                self.layer,
                show(raw)
            );
            return Ok(false);
        }
        let fmt = if kind == EntryType::Char {
            libc::S_IFCHR
        } else {
            libc::S_IFBLK
        };
        sys::mknod_at(parent, fname, fmt | (m.mode & 0o777), rdev)
            .map_err(self.entry_err("creating device", raw))?;
        Ok(true)
    }

    /// Owner, xattrs, mode (not of symlinks) and mtime of a new non-directory.
    fn finish_entry(
        &mut self,
        parent: BorrowedFd<'_>,
        fname: &OsStr,
        kind: EntryType,
        m: &Meta,
        raw: &[u8],
    ) -> Result<()> {
        self.set_owner_xattrs(parent, fname, m, raw)?;
        if kind != EntryType::Symlink {
            sys::chmod_at(parent, fname, m.mode).map_err(self.entry_err("setting mode of", raw))?;
        }
        sys::utimens_at(
            parent,
            fname,
            SetTime::At(m.mtime, 0),
            SetTime::At(m.mtime, 0),
        )
        .map_err(self.entry_err("setting mtime of", raw))?;
        Ok(())
    }

    fn set_owner_xattrs(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        m: &Meta,
        raw: &[u8],
    ) -> Result<()> {
        for (key, value) in &m.xattrs {
            // An overlay xattr in a layer is the image's data, not a marker for our union:
            // stored escaped, as the kernel does.
            let key = stored_xattr_name(key);
            if let Err(e) = sys::set_xattr(parent, name, &key, value, 0) {
                self.stats.skipped_xattrs += 1;
                log::warn!(
                    "layer {}: xattr {} on {} not set: {e}",
                    self.layer,
                    show(&key),
                    show(raw)
                );
            }
        }
        if self.opts.privileged {
            let (uid, gid) = (u32::try_from(m.uid).ok(), u32::try_from(m.gid).ok());
            sys::chown_at(parent, name, uid, gid)
                .map_err(self.entry_err("setting owner of", raw))?;
        }
        Ok(())
    }

    /// Directory modes and mtimes, deepest (latest) first. A directory that was replaced
    /// since is skipped.
    fn finish_dirs(&mut self) {
        self.cached = None;
        let mut done: HashMap<Vec<u8>, ()> = HashMap::new();
        for d in self.dirs.iter().rev() {
            if done.insert(d.path.clone(), ()).is_some() {
                continue;
            }
            let comps = clean(&d.path);
            let Some((&name, parents)) = comps.split_last() else {
                continue;
            };
            let Ok(parent) = open_beneath(self.root, &join(parents)) else {
                continue;
            };
            let name = OsStr::from_bytes(name);
            match sys::stat_at(parent.as_fd(), name) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                _ => continue,
            }
            let _ = rustix::fs::chmodat(
                parent.as_fd(),
                name,
                Mode::from_raw_mode(d.mode),
                AtFlags::empty(),
            );
            let _ = sys::utimens_at(
                parent.as_fd(),
                name,
                SetTime::At(d.mtime, 0),
                SetTime::At(d.mtime, 0),
            );
        }
    }
}

fn copy_data(from: &mut impl Read, to: &mut File, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn create_file(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?))
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleaning() {
        let c = |p: &[u8]| clean(p).join(&b'/');
        assert_eq!(c(b"./a/b/"), b"a/b");
        assert_eq!(c(b"/etc/passwd"), b"etc/passwd");
        assert_eq!(c(b"../../x"), b"x");
        assert_eq!(c(b"a/../../b/./c"), b"b/c");
        assert!(clean(b"./").is_empty());
    }
}
