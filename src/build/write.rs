//! The writes of COPY and ADD into the new layer, every destination resolved inside the
//! stage's merged view (`LayerFs`). The sequence of operations is the one a write through
//! the stage's mount made (create, then owner, mode, xattrs and mtime), so the layer is the
//! same: only the FUSE round trips are gone.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use crate::union::SetAttr;

use super::copy::{Meta, Source, Src, Xattrs, clean, join, reader};
use super::layerfs::LayerFs;

/// What to write at a path.
pub enum What<'a> {
    Dir,
    File(&'a mut dyn Read),
    Link(&'a [u8]),
}

/// Writes into the stage's layers, every path resolved inside their root.
pub struct Writer<'a> {
    fs: &'a LayerFs,
    /// The last parent directory resolved (entries come grouped by directory).
    parent: Option<(Vec<u8>, u64)>,
    /// Owner for everything written (`--chown`), else the source's own.
    pub chown: Option<(u32, u32)>,
    /// Mode for everything written (`--chmod`).
    pub chmod: Option<u32>,
    pub clamp: Option<i64>,
    pub xattrs: HashMap<Vec<u8>, Xattrs>,
    /// Who new files belong to unless changed, and the mode bits the umask takes away.
    me: (u32, u32),
    umask: u32,
    /// During one source's copy: directories it created, so their entries (unique names)
    /// need no lookup for what is there already.
    fresh: Option<HashSet<Vec<u8>>>,
}

/// The process's umask, read without changing it (other threads create files meanwhile).
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        // Unknown: assume every bit may be masked, so modes are always set explicitly.
        .unwrap_or(0o777)
}

fn split_last(path: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let comps = crate::image::unpack::clean(path);
    match comps.split_last() {
        Some((last, rest)) => (rest.join(&b'/'), last.to_vec()),
        None => (Vec::new(), Vec::new()),
    }
}

fn owner(uid: u32, gid: u32) -> SetAttr {
    SetAttr {
        uid: Some(uid),
        gid: Some(gid),
        ..SetAttr::default()
    }
}

fn mode_attr(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

impl<'a> Writer<'a> {
    pub fn new(fs: &'a LayerFs, umask: u32) -> Self {
        Writer {
            fs,
            parent: None,
            chown: None,
            chmod: None,
            clamp: None,
            xattrs: HashMap::new(),
            me: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            umask,
            fresh: None,
        }
    }

    fn parent(&mut self, path: &[u8]) -> io::Result<u64> {
        match &self.parent {
            Some((p, id)) if p == path => Ok(*id),
            _ => {
                let id = self.fs.make_dirs(path)?;
                self.parent = Some((path.to_vec(), id));
                Ok(id)
            }
        }
    }

    /// Whether `path` (inside the root, links followed inside it) is a directory.
    pub fn is_dir(&self, path: &[u8]) -> bool {
        self.fs
            .resolve(path, true, false)
            .is_ok_and(|(_, st)| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// Clears `name` in `dir` for a new entry; true if a directory stays (for `What::Dir`).
    fn clear(&self, dir: u64, n: &OsStr, keep_dir: bool) -> io::Result<Option<u64>> {
        let Some((id, st)) = self.fs.lookup(dir, n)? else {
            return Ok(None);
        };
        if keep_dir && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(Some(id));
        }
        self.fs.remove_tree(dir, n, id, &st)?;
        Ok(None)
    }

    /// Writes one entry at `path`; what is there already (not a directory) is replaced.
    pub fn put(&mut self, path: &[u8], what: What<'_>, m: &Meta) -> io::Result<()> {
        let (parent, name) = split_last(path);
        let (chown, chmod, clamp) = (self.chown, self.chmod, self.clamp);
        let (uid, gid) = chown.unwrap_or((m.uid, m.gid));
        let mode = chmod.unwrap_or(m.mode);
        let mtime = clamp.map_or(m.mtime, |c| m.mtime.min(c));
        if name.is_empty() {
            return Ok(());
        }
        let xs = self.xattrs.remove(path);
        let (me, umask) = (self.me, self.umask);
        let new_dir = matches!(what, What::Dir).then(|| join(&parent, &name));
        let known_empty = self.fresh.as_ref().is_some_and(|f| f.contains(&parent));
        let dir = self.parent(&parent)?;
        let n = OsStr::from_bytes(&name);
        let fs = self.fs;
        if !known_empty && let Some(id) = self.clear(dir, n, matches!(what, What::Dir))? {
            // An existing directory keeps its metadata unless the flags say otherwise.
            if chown.is_some() {
                fs.set_attr(id, &owner(uid, gid))?;
            }
            if chmod.is_some() {
                fs.set_attr(id, &mode_attr(mode))?;
            }
            return Ok(());
        }
        // Owner and mode are fixed up only where creation did not give them (as through the
        // mount, where chown also clears set-id bits: the mode comes after it).
        let fix_mode = mode & 0o7000 != 0 || mode & umask != 0;
        let (is_file, is_dir) = (matches!(what, What::File(_)), matches!(what, What::Dir));
        let id = match what {
            What::Dir => fs.mkdir(dir, n, mode)?.0,
            What::File(r) => {
                let (id, fh, file) = fs.create(dir, n, mode)?;
                let done = io::copy(r, &mut &*file).map(drop).and_then(|()| {
                    let mut a = owner(uid, gid);
                    a.fh = Some(fh);
                    if (uid, gid) != me {
                        fs.set_attr(id, &a)?;
                    }
                    if fix_mode {
                        fs.set_attr(id, &mode_attr(mode))?;
                    }
                    Ok(())
                });
                let released = fs.release(id, fh);
                done?;
                released?;
                id
            }
            What::Link(t) => fs.symlink(dir, n, OsStr::from_bytes(t))?,
        };
        if !is_file {
            if (uid, gid) != me {
                fs.set_attr(id, &owner(uid, gid))?;
            }
            if fix_mode && is_dir {
                fs.set_attr(id, &mode_attr(mode))?;
            }
        }
        for (k, v) in xs.iter().flatten() {
            let _ = fs.set_xattr(id, k, v);
        }
        fs.set_mtime(id, mtime)?;
        if let (Some(f), Some(d)) = (self.fresh.as_mut(), new_dir) {
            f.insert(d);
        }
        Ok(())
    }

    /// A hard link at `path` to `existing` (written before it by this copy).
    fn link(&mut self, existing: &[u8], path: &[u8]) -> io::Result<()> {
        let (from_parent, from) = split_last(existing);
        let (parent, name) = split_last(path);
        let (from_dir, _) = self.fs.resolve(&from_parent, true, false)?;
        let (from_id, _) = self
            .fs
            .lookup(from_dir, OsStr::from_bytes(&from))?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let dir = self.parent(&parent)?;
        let n = OsStr::from_bytes(&name);
        self.clear(dir, n, false)?;
        self.fs.link(from_id, dir, n)
    }

    /// Copies a source to `dest` (a directory when `into_dir`); a directory's contents go
    /// into `dest`.
    pub fn copy(&mut self, s: &Source, dest: &[u8], into_dir: bool) -> io::Result<()> {
        self.fresh = Some(Default::default());
        let r = self.copy_source(s, dest, into_dir);
        self.fresh = None;
        r
    }

    fn copy_source(&mut self, s: &Source, dest: &[u8], into_dir: bool) -> io::Result<()> {
        let base = if s.is_dir || !into_dir {
            dest.to_vec()
        } else {
            join(dest, &s.name)
        };
        if s.is_dir {
            // The destination directory itself: created if missing, as 0755 root.
            let m = Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: s.entries.first().map_or(0, |e| e.meta.mtime),
            };
            let (own, mode) = (self.chown, self.chmod);
            self.chown = own.or(Some((0, 0)));
            let r = self.put(&base, What::Dir, &m);
            self.chown = own;
            self.chmod = mode;
            r?;
        }
        for e in &s.entries {
            if s.is_dir && e.rel.is_empty() {
                continue;
            }
            let target = join(&base, &e.rel);
            if !e.xattrs.is_empty() {
                self.xattrs.insert(target.clone(), e.xattrs.clone());
            }
            match &e.src {
                Src::Dir => self.put(&target, What::Dir, &e.meta)?,
                Src::Link(t) => self.put(&target, What::Link(t), &e.meta)?,
                Src::Hardlink(first) => self.link(&join(&base, first), &target)?,
                src => {
                    let mut r =
                        reader(src)?.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                    self.put(&target, What::File(&mut r), &e.meta)?;
                }
            }
        }
        Ok(())
    }

    /// ADD of a local archive: its entries extracted below `dest`, owners kept (unless
    /// --chown), paths cleaned so nothing lands outside `dest`. Hard links become copies.
    pub fn extract(&mut self, data: Box<dyn Read + '_>, dest: &[u8]) -> io::Result<()> {
        let mut ar = tar::Archive::new(data);
        let mut seen: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for entry in ar.entries()? {
            let mut entry = entry?;
            let h = entry.header().clone();
            let path = clean(&entry.path_bytes());
            let target = join(dest, &path);
            let m = Meta {
                mode: h.mode()? & 0o7777,
                uid: h.uid()? as u32,
                gid: h.gid()? as u32,
                mtime: h.mtime()? as i64,
            };
            match h.entry_type() {
                tar::EntryType::Directory => self.put(&target, What::Dir, &m)?,
                tar::EntryType::Symlink => {
                    let t = entry
                        .link_name_bytes()
                        .map(|c| c.to_vec())
                        .unwrap_or_default();
                    self.put(&target, What::Link(&t), &m)?;
                }
                tar::EntryType::Link => {
                    let from = clean(&entry.link_name_bytes().unwrap_or_default());
                    if let Some(data) = seen.get(&from).cloned() {
                        self.put(&target, What::File(&mut data.as_slice()), &m)?;
                    }
                }
                t if t.is_file() => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data)?;
                    self.put(&target, What::File(&mut data.as_slice()), &m)?;
                    seen.insert(path, data);
                }
                _ => {}
            }
        }
        Ok(())
    }
}
