//! Where an import reads from: an OCI layout or docker-save archive, as a directory or as a
//! tar (optionally gzip/zstd compressed). Paths named by the archive's documents are cleaned
//! and resolved inside it: a directory through `openat2(RESOLVE_IN_ROOT)`, a tar through its
//! own member list, so neither can reach files outside the source.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::digest::Digest;
use super::error::{ImageError, Result, invalid, io_err};
use super::limits::Limited;
use super::oci::Compression;
use super::store::Staging;
use super::unpack::clean;

/// Largest JSON document read into memory (configs with long histories stay far below).
const MAX_DOC: u64 = 32 << 20;

pub enum Member {
    File { offset: u64, size: u64 },
    Link(Vec<u8>),
}

pub enum Source {
    Dir {
        root: OwnedFd,
        path: PathBuf,
    },
    Tar {
        file: File,
        members: HashMap<Vec<u8>, Member>,
        path: PathBuf,
        /// A decompressed copy of a compressed archive lives here.
        _staging: Option<Staging>,
    },
}

/// A reader over one member of a tar file, by position (no shared file offset).
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The one-line refusal of a file that is no image archive (nothing of its content quoted).
fn not_an_image(path: &Path) -> ImageError {
    invalid(
        path.display().to_string(),
        "not an image: expected an OCI image layout (a directory with index.json), an OCI \
         image tar or a docker-save archive (a tar, maybe gzip or zstd compressed)",
    )
}

impl Source {
    /// Opens PATH; `scratch` provides a staging directory for a compressed archive.
    pub fn open(path: &Path, scratch: impl FnOnce() -> Result<Staging>) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(io_err("opening image source", path))?;
        if meta.is_dir() {
            let root = rustix::fs::open(
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err("opening image source", path)(e.into()))?;
            return Ok(Source::Dir {
                root,
                path: path.to_owned(),
            });
        }
        let mut file = File::open(path).map_err(io_err("opening image source", path))?;
        let mut head = [0u8; 4];
        let n = file
            .read_at(&mut head, 0)
            .map_err(io_err("reading", path))?;
        let (file, staging) = match Compression::sniff(&head[..n]) {
            Compression::None => (file, None),
            c => {
                // Members are read by position, so a compressed archive is expanded first.
                let staging = scratch()?;
                let out_path = staging.path.join("archive.tar");
                let mut out = File::options()
                    .create_new(true)
                    .read(true)
                    .write(true)
                    .open(&out_path)
                    .map_err(io_err("creating", &out_path))?;
                let input = BufReader::new(&mut file);
                let what = "the decompressed archive";
                let res = match c {
                    Compression::Gzip => {
                        let gz = flate2::bufread::MultiGzDecoder::new(input);
                        io::copy(&mut Limited::new(gz, what), &mut out)
                    }
                    _ => zstd::Decoder::with_buffer(input)
                        .and_then(|d| io::copy(&mut Limited::new(d, what), &mut out)),
                };
                res.map_err(io_err("decompressing", path))?;
                io::Seek::rewind(&mut out).map_err(io_err("reading", &out_path))?;
                (out, Some(staging))
            }
        };
        let mut members = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            // The tar crate's header errors quote the header's bytes: never echo the input.
            let not_image = |_| not_an_image(path);
            let entries = archive.entries().map_err(not_image)?;
            for e in entries {
                let e = e.map_err(not_image)?;
                let name = clean(&e.path_bytes()).join(&b'/');
                let kind = e.header().entry_type();
                let m = if kind.is_file() {
                    Member::File {
                        offset: e.raw_file_position(),
                        size: e.size(),
                    }
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = e
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    // Symlinks are relative to their directory, hard links to the archive root.
                    let full = match (kind.is_symlink(), name.iter().rposition(|&b| b == b'/')) {
                        (true, Some(i)) if !target.starts_with(b"/") => {
                            [&name[..i], b"/", &target].concat()
                        }
                        _ => target,
                    };
                    Member::Link(clean(&full).join(&b'/'))
                } else {
                    continue;
                };
                members.insert(name, m);
            }
        }
        Ok(Source::Tar {
            file,
            members,
            path: path.to_owned(),
            _staging: staging,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Source::Dir { path, .. } | Source::Tar { path, .. } => path,
        }
    }

    /// A member's reader and size. `rel` is cleaned first (`..` cannot climb out).
    pub fn reader(&self, rel: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let clean_rel = clean(rel.as_bytes()).join(&b'/');
        let missing = || {
            invalid(
                format!("{}: {rel}", self.path().display()),
                "missing from the archive",
            )
        };
        match self {
            Source::Dir { root, path } => {
                let fd = rustix::fs::openat2(
                    root,
                    std::ffi::OsStr::from_bytes(&clean_rel),
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                );
                let fd = match fd {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => return Err(missing()),
                    Err(e) => return Err(io_err("opening", path.join(rel))(e.into())),
                };
                let f = File::from(fd);
                let size = f.metadata().map_err(io_err("stat", path.join(rel)))?.len();
                Ok((Box::new(f), size))
            }
            Source::Tar { file, members, .. } => {
                let mut name = clean_rel;
                for _ in 0..16 {
                    match members.get(&name) {
                        Some(Member::File { offset, size }) => {
                            let r = At {
                                file,
                                pos: *offset,
                                end: offset + size,
                            };
                            return Ok((Box::new(r), *size));
                        }
                        Some(Member::Link(t)) => name = t.clone(),
                        None => return Err(missing()),
                    }
                }
                Err(invalid(
                    format!("{}: {rel}", self.path().display()),
                    "too many links",
                ))
            }
        }
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.reader(rel).is_ok()
    }

    /// A whole (small) member.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let (r, size) = self.reader(rel)?;
        if size > MAX_DOC {
            return Err(invalid(
                format!("{}: {rel}", self.path().display()),
                "too large for a JSON document",
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        r.take(MAX_DOC)
            .read_to_end(&mut data)
            .map_err(io_err("reading", self.path().join(rel)))?;
        Ok(data)
    }

    pub fn blob_rel(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    /// A blob of an OCI layout, checked against its digest (and size, when known).
    pub fn read_blob(&self, d: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        let data = self.read(&Self::blob_rel(d))?;
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        if let Some(s) = size.filter(|&s| s != data.len() as u64) {
            return Err(invalid(
                format!("blob {d}"),
                format!("is {} bytes, its descriptor says {s}", data.len()),
            ));
        }
        Ok(data)
    }
}
