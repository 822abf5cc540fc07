//! COPY and ADD: sources read from the context (never out of it: `RESOLVE_BENEATH`, so `../x`
//! or a symlink pointing out is refused) or from another stage's root (`RESOLVE_IN_ROOT`),
//! their checksum for the cache (content, mode, owner, type, link target, xattrs; not mtime),
//! and the writes into the new layer, every destination resolved inside the stage's root.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha2::{Digest as _, Sha256};

use crate::sys;

use super::ignore::Ignore;

/// How a source path is resolved.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The build context: nothing may lead out (EXDEV).
    Beneath,
    /// Another stage's or image's root: absolute links and `..` stay inside.
    InRoot,
}

pub enum Src {
    Dir,
    File {
        dir: Rc<OwnedFd>,
        name: Vec<u8>,
    },
    Opened(Rc<File>),
    Link(Vec<u8>),
    Bytes(Vec<u8>),
    /// A file ADD downloaded (never extracted).
    Fetched(Rc<File>),
    /// A hard link to the entry at this path below the same source (copied before it).
    Hardlink(Vec<u8>),
}

#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

/// Extended attributes, name and value.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

pub struct Entry {
    /// Path below the source ("" for the source itself).
    pub rel: Vec<u8>,
    pub src: Src,
    pub meta: Meta,
    pub xattrs: Xattrs,
}

/// One source: a file (copied as one) or a directory (its contents are copied).
pub struct Source {
    pub name: Vec<u8>,
    pub is_dir: bool,
    pub entries: Vec<Entry>,
}

fn meta(st: &sys::Stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
    }
}

fn open(root: BorrowedFd<'_>, path: &[u8], how: Resolve, flags: OFlags) -> io::Result<OwnedFd> {
    let p = if path.is_empty() { b"." as &[u8] } else { path };
    let resolve = match how {
        Resolve::Beneath => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        Resolve::InRoot => ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    };
    let p = p.strip_prefix(b"/").unwrap_or(p);
    let p = if p.is_empty() { b"." as &[u8] } else { p };
    Ok(rustix::fs::openat2(
        root,
        OsStr::from_bytes(p),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )?)
}

/// User xattrs of `name` in `dir` (for the checksum and the copy); others are the system's.
fn xattrs(dir: BorrowedFd<'_>, name: &OsStr) -> Xattrs {
    let Ok(list) = sys::list_xattr_all(dir, name) else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = list
        .split(|&b| b == 0)
        .filter(|k| k.starts_with(b"user.") || k.starts_with(b"security.capability"))
        .filter_map(|k| {
            sys::get_xattr_value(dir, name, k)
                .ok()
                .flatten()
                .map(|v| (k.to_vec(), v))
        })
        .collect();
    out.sort();
    out
}

/// Reads a source. `ctx_rel` is its path in the context, for `.dockerignore`.
pub fn gather(
    root: BorrowedFd<'_>,
    path: &[u8],
    how: Resolve,
    ignore: Option<&Ignore>,
) -> io::Result<Source> {
    let fd = open(root, path, how, OFlags::PATH)?;
    let st = sys::stat_fd(fd.as_fd())?;
    let name = path
        .rsplit(|&b| b == b'/')
        .find(|c| !c.is_empty() && *c != b".")
        .unwrap_or(b"")
        .to_vec();
    let ctx_rel = clean(path);
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let mut entries = vec![Entry {
            rel: Vec::new(),
            src: Src::Dir,
            meta: meta(&st),
            xattrs: Vec::new(),
        }];
        let mut walker = Walk {
            ignore,
            links: HashMap::new(),
            out: &mut entries,
        };
        walker.walk(Rc::new(fd), b"", &ctx_rel)?;
        return Ok(Source {
            name,
            is_dir: true,
            entries,
        });
    }
    let f = File::from(open(root, path, how, OFlags::RDONLY | OFlags::NOCTTY)?);
    Ok(Source {
        name,
        is_dir: false,
        entries: vec![Entry {
            rel: Vec::new(),
            src: Src::Opened(Rc::new(f)),
            meta: meta(&st),
            // A file source keeps its xattrs (a directory source's own are not copied: the
            // destination directory is made, as docker and buildah do).
            xattrs: xattrs(fd.as_fd(), OsStr::new("")),
        }],
    })
}

/// `a/./b/` -> `a/b` (the context-relative path `.dockerignore` patterns see).
pub fn clean(p: &[u8]) -> Vec<u8> {
    crate::image::unpack::clean(p).join(&b'/')
}

pub(super) fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => [a, b"/", b].concat(),
    }
}

/// A directory source's walk; hard links within it are kept as links (as docker does).
struct Walk<'i, 'o> {
    ignore: Option<&'i Ignore>,
    /// (device, inode) of files with several links -> the first one's path.
    links: HashMap<(u64, u64), Vec<u8>>,
    out: &'o mut Vec<Entry>,
}

impl Walk<'_, '_> {
    fn walk(&mut self, dir: Rc<OwnedFd>, rel: &[u8], ctx: &[u8]) -> io::Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        sys::read_dir(dir.as_fd(), |e| {
            names.push(e.name.to_vec());
            Ok(())
        })?;
        names.sort();
        let ignore = self.ignore;
        for name in names {
            let n = OsStr::from_bytes(&name);
            let st = sys::stat_at(dir.as_fd(), n)?;
            let (r, c) = (join(rel, &name), join(ctx, &name));
            let excluded = ignore.is_some_and(|i| i.excluded(&c));
            let fmt = st.st_mode & libc::S_IFMT;
            if excluded && (fmt != libc::S_IFDIR || !ignore.is_some_and(Ignore::has_exceptions)) {
                continue;
            }
            let src = match fmt {
                libc::S_IFDIR => Src::Dir,
                libc::S_IFREG if st.st_nlink > 1 => {
                    let id = (st.st_dev as u64, st.st_ino as u64);
                    match self.links.get(&id) {
                        Some(first) => Src::Hardlink(first.clone()),
                        None => {
                            self.links.insert(id, r.clone());
                            Src::File {
                                dir: dir.clone(),
                                name: name.clone(),
                            }
                        }
                    }
                }
                libc::S_IFREG => Src::File {
                    dir: dir.clone(),
                    name: name.clone(),
                },
                libc::S_IFLNK => Src::Link(sys::readlink_at(dir.as_fd(), n)?),
                // Sockets, fifos and devices have no place in a build context.
                _ => continue,
            };
            self.out.push(Entry {
                rel: r.clone(),
                src,
                meta: meta(&st),
                xattrs: xattrs(dir.as_fd(), n),
            });
            if fmt == libc::S_IFDIR {
                let before = self.out.len();
                let sub = Rc::new(sys::open_path_at(dir.as_fd(), n)?);
                self.walk(sub, &r, &c)?;
                // An excluded directory stays only for what an exception brought back in it.
                if excluded && self.out.len() == before {
                    self.out.pop();
                }
            }
        }
        Ok(())
    }
}

pub(super) fn reader(src: &Src) -> io::Result<Option<Box<dyn Read + '_>>> {
    Ok(match src {
        Src::File { dir, name } => Some(Box::new(sys::open_file_at(
            dir.as_fd(),
            OsStr::from_bytes(name),
            libc::O_RDONLY,
        )?)),
        Src::Opened(f) | Src::Fetched(f) => {
            let mut f = f.try_clone()?;
            io::Seek::rewind(&mut f)?;
            Some(Box::new(f))
        }
        Src::Bytes(b) => Some(Box::new(b.as_slice())),
        _ => None,
    })
}

/// The checksum of sources: what the copy depends on, mtimes left out (docker's rule).
pub fn checksum(sources: &[Source]) -> io::Result<Vec<u8>> {
    let mut h = Sha256::new();
    for s in sources {
        h.update((s.name.len() as u64).to_le_bytes());
        h.update(&s.name);
        for e in &s.entries {
            let kind: u8 = match e.src {
                Src::Dir => b'd',
                Src::Link(_) => b'l',
                Src::Hardlink(_) => b'h',
                _ => b'f',
            };
            h.update([kind]);
            h.update((e.rel.len() as u64).to_le_bytes());
            h.update(&e.rel);
            h.update(e.meta.mode.to_le_bytes());
            h.update(e.meta.uid.to_le_bytes());
            h.update(e.meta.gid.to_le_bytes());
            if let Src::Link(t) | Src::Hardlink(t) = &e.src {
                h.update((t.len() as u64).to_le_bytes());
                h.update(t);
            }
            for (k, v) in &e.xattrs {
                h.update((k.len() as u64).to_le_bytes());
                h.update(k);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
            if let Some(mut r) = reader(&e.src)? {
                let mut fh = Sha256::new();
                let mut n = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let k = r.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                    fh.update(&buf[..k]);
                }
                h.update(n.to_le_bytes());
                h.update(fh.finalize());
            }
        }
    }
    Ok(h.finalize().to_vec())
}

/// The archive's decompressed stream when `f` is a tar (plain, gzip, bzip2, xz or zstd),
/// else None (ADD copies it as a file).
pub fn archive(f: &File) -> io::Result<Option<Box<dyn Read>>> {
    let mut f = f.try_clone()?;
    io::Seek::rewind(&mut f)?;
    let mut buf = BufReader::new(f);
    let head = buf.fill_buf()?.to_vec();
    let decoded: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(buf))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(buf)?)
    } else {
        Box::new(buf)
    };
    // A tar has "ustar" at offset 257 of its first header.
    let mut first = BufReader::with_capacity(1024, decoded);
    let is_tar = first
        .fill_buf()
        .map(|b| b.len() >= 262 && &b[257..262] == b"ustar")
        .unwrap_or(false);
    Ok(is_tar.then(|| Box::new(first) as Box<dyn Read>))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sum(dir: &std::path::Path) -> Vec<u8> {
        let fd = sys::open_root(dir).unwrap();
        let src = gather(fd.as_fd(), b"src", Resolve::Beneath, None).unwrap();
        checksum(&[src]).unwrap()
    }

    #[test]
    fn checksum_covers_content_mode_type_and_links_not_mtime() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), b"one").unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("l")).unwrap();
        let first = sum(d.path());
        let f = std::fs::File::options()
            .append(true)
            .open(src.join("sub/f"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        assert_eq!(sum(d.path()), first, "mtime is not part of it");
        std::fs::write(src.join("sub/f"), b"two").unwrap();
        let content = sum(d.path());
        assert_ne!(content, first);
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let mode = sum(d.path());
        assert_ne!(mode, content);
        std::fs::remove_file(src.join("l")).unwrap();
        std::os::unix::fs::symlink("elsewhere", src.join("l")).unwrap();
        assert_ne!(sum(d.path()), mode);
    }

    #[test]
    fn a_file_source_keeps_its_xattrs_in_the_checksum() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let fd = sys::open_root(d.path()).unwrap();
        let plain = gather(fd.as_fd(), b"f", Resolve::Beneath, None).unwrap();
        assert!(plain.entries[0].xattrs.is_empty());
        let flags = rustix::fs::XattrFlags::empty();
        rustix::fs::setxattr(d.path().join("f"), "user.k", b"v", flags).unwrap();
        let tagged = gather(fd.as_fd(), b"f", Resolve::Beneath, None).unwrap();
        assert_eq!(
            tagged.entries[0].xattrs,
            vec![(b"user.k".to_vec(), b"v".to_vec())]
        );
        assert_ne!(checksum(&[plain]).unwrap(), checksum(&[tagged]).unwrap());
    }

    #[test]
    fn hard_links_in_a_source_stay_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("s")).unwrap();
        std::fs::write(src.join("a"), b"x").unwrap();
        std::fs::hard_link(src.join("a"), src.join("s/b")).unwrap();
        std::fs::write(src.join("c"), b"x").unwrap();
        let fd = sys::open_root(d.path()).unwrap();
        let g = gather(fd.as_fd(), b"src", Resolve::Beneath, None).unwrap();
        let kinds: Vec<(String, Option<Vec<u8>>)> = g
            .entries
            .iter()
            .map(|e| {
                let link = match &e.src {
                    Src::Hardlink(t) => Some(t.clone()),
                    _ => None,
                };
                (String::from_utf8_lossy(&e.rel).into_owned(), link)
            })
            .collect();
        let want = [
            ("", None),
            ("a", None),
            ("c", None),
            ("s", None),
            ("s/b", Some(b"a".to_vec())),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(r, l)| ((*r).to_owned(), l.clone()))
            .collect();
        assert_eq!(kinds, want);
        let linked = checksum(&[g]).unwrap();
        std::fs::remove_file(src.join("s/b")).unwrap();
        std::fs::write(src.join("s/b"), b"x").unwrap();
        let g = gather(fd.as_fd(), b"src", Resolve::Beneath, None).unwrap();
        assert_ne!(checksum(&[g]).unwrap(), linked, "a link and a copy differ");
    }

    #[test]
    fn sources_outside_the_context_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../secret", ctx.join("rel")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), ctx.join("abs")).unwrap();
        let fd = sys::open_root(&ctx).unwrap();
        for p in [&b"rel"[..], b"abs", b"../secret"] {
            let e = gather(fd.as_fd(), p, Resolve::Beneath, None).err();
            assert_eq!(e.and_then(|e| e.raw_os_error()), Some(libc::EXDEV), "{p:?}");
        }
    }
}
