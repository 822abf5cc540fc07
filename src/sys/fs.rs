//! Opening, stat and friends, relative to directory fds.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};

pub use rustix::fs::{Stat, StatVfs};

/// Opens a layer root given by the user. The user's own path may go through symlinks; what
/// lies inside the layer never does.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// An `O_PATH` handle on a host path given by the user (a bind source, a host device): their
/// own path, so its symlinks are followed, once; what is done with it then goes by the fd.
pub fn open_host_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// An `O_PATH` handle on `name` inside `dir`, never following a symlink.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A readable directory fd for `getdents` on the directory `dir` refers to (an `O_PATH` fd
/// cannot be read).
pub fn open_dir_for_read(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the file `name` in `dir` for I/O with the caller's access flags; `O_NOFOLLOW` always.
/// An empty `name` reopens the file `dir` itself refers to (an `O_PATH` fd of a file whose
/// last name is gone), through its `/proc/self/fd` link.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<File> {
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC;
    let flags = OFlags::from_bits_retain((flags & keep) as u32) | OFlags::CLOEXEC | OFlags::NOCTTY;
    if name.is_empty() {
        return Ok(File::from(rustix::fs::open(
            proc_fd_path(dir).as_str(),
            flags,
            Mode::empty(),
        )?));
    }
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW,
        Mode::empty(),
    )?))
}

/// `/proc/self/fd/N` for `fd`: the file itself, whatever its names (following this magic link
/// lands on the file `fd` refers to, never on a symlink's target).
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `AT_EMPTY_PATH` for an empty name: the calls taking a name below a directory fd also take
/// an fd of the entry itself with an empty name (how an unlinked file is still reached).
pub(super) fn empty_path(name: &OsStr) -> AtFlags {
    if name.is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::empty()
    }
}

/// `lstat` of `name` in `dir` (of `dir` itself for an empty name).
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW | empty_path(name),
    )?)
}

/// `fstat`, which works on `O_PATH` fds too.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// Whether `name` exists in `dir` (without following it). A name too long to exist (such as
/// `.wh.` + a 255-byte name) does not.
pub fn exists_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NAMETOOLONG) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Target of the symlink `name` in `dir` (of `dir` itself for an empty name), as bytes.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// `statfs` of the filesystem holding `fd`.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<StatVfs> {
    Ok(rustix::fs::fstatvfs(fd)?)
}

/// Positional read; `io::Result` of the byte count.
pub fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// Unmounts `path` (root: `umount2`; otherwise the caller falls back to fusermount3).
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    Ok(rustix::mount::unmount(path, flags)?)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as systemd, podman and virtiofsd do):
/// every directory the kernel holds may cost an fd. Returns (soft before, soft now, hard).
pub fn raise_nofile() -> (u64, u64, u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let soft = before.current.unwrap_or(u64::MAX);
    let hard = before.maximum.unwrap_or(u64::MAX);
    if soft < hard {
        let mut want = before;
        want.current = before.maximum;
        if setrlimit(Resource::Nofile, want).is_ok() {
            return (soft, hard, hard);
        }
    }
    (soft, soft, hard)
}

/// The current soft `RLIMIT_NOFILE` (u64::MAX for unlimited).
pub fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Major/minor of a device number (for whiteout detection: 0/0).
pub fn dev_is_zero(rdev: u64) -> bool {
    rdev == 0
}
