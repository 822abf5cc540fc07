//! Directory-fd helpers for the store and the unpacker: resolution that never follows a
//! symlink, and removal of whole trees (also ones an unprivileged user made read-only).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::sys;

/// `O_PATH` handle of the directory `path` (relative, already clean) below `root`. No symlink
/// is followed anywhere on the way (ELOOP), and nothing can leave `root` (EXDEV).
pub fn open_beneath(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    Ok(rustix::fs::openat2(
        root,
        OsStr::from_bytes(path),
        // No O_NOFOLLOW: RESOLVE_NO_SYMLINKS makes a final symlink ELOOP too (not ENOTDIR).
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Removes `name` in `dir`, a whole tree if it is a directory. Symlinks inside are removed,
/// never followed. A directory we may not read or write (mode 0555 as a user) is opened up
/// first.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match sys::stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::unlink_at(dir, name, false);
    }
    let open = |d: BorrowedFd<'_>| {
        rustix::fs::openat(
            d,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let sub = match open(dir) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::ACCESS) => {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
            open(dir)?
        }
        Err(e) => return Err(e.into()),
    };
    if st.st_mode & 0o300 != 0o300 {
        let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    sys::read_dir(sub.as_fd(), |e| {
        names.push(e.name.to_vec());
        Ok(())
    })?;
    for n in names {
        remove_tree(sub.as_fd(), OsStr::from_bytes(&n))?;
    }
    sys::unlink_at(dir, name, true)
}

/// Removes the tree at a path of the store.
pub fn remove_path(path: &std::path::Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let dir = sys::open_root(parent)?;
    remove_tree(dir.as_fd(), name)
}

/// Bytes between two writeback kicks of a blob being written.
const WRITEBACK_STEP: u64 = 8 << 20;

/// A blob file being written. Every few MB it starts the disk writes of what came so far, so
/// the fsync before the store renames it waits for the last few MB, not for the whole blob
/// (and the disk works while the layer is still being decompressed and unpacked).
pub struct BlobFile {
    file: std::fs::File,
    /// File offsets: up to where it is written, and up to where writeback was started.
    written: u64,
    kicked: u64,
}

impl BlobFile {
    /// `file` positioned at `offset` (what is before it is there already).
    pub fn at(file: std::fs::File, offset: u64) -> Self {
        BlobFile {
            file,
            written: offset,
            kicked: offset,
        }
    }

    /// Durable: the fsync the store's rename relies on.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl io::Write for BlobFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.kicked >= WRITEBACK_STEP {
            // Only a head start for the fsync: a filesystem without it loses nothing.
            let _ = sys::start_writeback(&self.file, self.kicked, self.written - self.kicked);
            self.kicked = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
