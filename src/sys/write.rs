//! Calls that change a layer: always the upper (or the workdir), always relative to a held fd.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};

/// Creates and opens a new regular file `name` in `dir` (fails if it exists).
pub fn create_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    flags: i32,
) -> io::Result<File> {
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC;
    let flags = OFlags::from_bits_retain((flags & keep) as u32)
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::from_raw_mode(mode),
    )?))
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let kind = rustix::fs::FileType::from_raw_mode(mode);
    Ok(rustix::fs::mknodat(
        dir,
        name,
        kind,
        Mode::from_raw_mode(mode),
        rdev,
    )?)
}

pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

pub fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        from_dir,
        from,
        to_dir,
        to,
        AtFlags::empty(),
    )?)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    Ok(rustix::fs::unlinkat(dir, name, flags)?)
}

/// How a rename treats the target.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
    /// Leave a whiteout (char 0/0) where the source was.
    Whiteout,
}

pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    mode: RenameMode,
) -> io::Result<()> {
    let flags = match mode {
        RenameMode::Replace => RenameFlags::empty(),
        RenameMode::NoReplace => RenameFlags::NOREPLACE,
        RenameMode::Exchange => RenameFlags::EXCHANGE,
        RenameMode::Whiteout => RenameFlags::WHITEOUT,
    };
    Ok(rustix::fs::renameat_with(
        from_dir, from, to_dir, to, flags,
    )?)
}

/// chmod of `name` in `dir` (symlinks have no mode of their own: callers skip them); of the
/// file `dir` refers to for an empty name.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    if name.is_empty() {
        let path = super::proc_fd_path(dir);
        return Ok(rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(mode))?);
    }
    Ok(rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )?)
}

/// lchown of `name` in `dir` (of `dir` itself for an empty name); `None` leaves that id
/// unchanged.
pub fn chown_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    // SAFETY-free: rustix builds Uid/Gid from raw values without checks beyond -1.
    let uid = uid.map(rustix::fs::Uid::from_raw);
    let gid = gid.map(rustix::fs::Gid::from_raw);
    Ok(rustix::fs::chownat(
        dir,
        name,
        uid,
        gid,
        AtFlags::SYMLINK_NOFOLLOW | super::fs::empty_path(name),
    )?)
}

/// A time to set: a value, "now", or "leave as is".
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Omit,
    Now,
    At(i64, i64),
}

fn ts(t: SetTime) -> Timespec {
    match t {
        SetTime::Omit => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        SetTime::Now => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        SetTime::At(s, n) => Timespec {
            tv_sec: s,
            tv_nsec: n as _,
        },
    }
}

/// Sets atime/mtime of `name` in `dir` (of `dir` itself for an empty name) without following
/// a symlink.
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: SetTime,
    mtime: SetTime,
) -> io::Result<()> {
    let times = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &times,
        AtFlags::SYMLINK_NOFOLLOW | super::fs::empty_path(name),
    )?)
}

pub fn truncate(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)
}

pub fn fsync(file: &File, data_only: bool) -> io::Result<()> {
    if data_only {
        file.sync_data()
    } else {
        file.sync_all()
    }
}

pub fn pwrite(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let mode = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
    Ok(rustix::fs::fallocate(file, mode, offset, len)?)
}

/// Copies all data of `from` into the empty file `to`: a reflink where the filesystem shares
/// extents, else `copy_file_range` over the data segments only (found with SEEK_DATA/SEEK_HOLE,
/// so holes stay holes), else read/write.
pub fn copy_data(from: &File, to: &File, len: u64) -> io::Result<()> {
    if len == 0 || rustix::fs::ioctl_ficlone(to, from).is_ok() {
        return Ok(());
    }
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(from, rustix::fs::SeekFrom::Data(pos)) {
            Ok(s) => s,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) if pos == 0 => return copy_by_hand(from, to),
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(from, rustix::fs::SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(_) => len,
        };
        let (mut off_in, mut off_out) = (start, start);
        while off_in < end {
            let want = (end - off_in).min(1 << 30) as usize;
            match rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)
            {
                Ok(0) => break,
                Ok(_) => {}
                Err(
                    rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL,
                ) if pos == 0 && off_in == start => {
                    return copy_by_hand(from, to);
                }
                Err(e) => return Err(e.into()),
            }
        }
        pos = end;
    }
    to.set_len(len)
}

fn copy_by_hand(from: &File, to: &File) -> io::Result<()> {
    let mut r = from.try_clone()?;
    let mut w = to.try_clone()?;
    io::copy(&mut r, &mut w).map(|_| ())
}

/// `copy_file_range` between two open files at explicit offsets; bytes copied.
pub fn copy_range(
    from: &File,
    off_in: u64,
    to: &File,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let (mut i, mut o) = (off_in, off_out);
    Ok(rustix::fs::copy_file_range(
        from,
        Some(&mut i),
        to,
        Some(&mut o),
        len,
    )?)
}

/// Opens `name` in `dir` read-only, for copying its data (an empty name: the file `dir` is).
pub fn open_for_copy(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    if name.is_empty() {
        return super::open_file_at(dir, name, libc::O_RDONLY);
    }
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// Opens an existing directory `name` in `dir` as an `O_PATH` handle after creating it.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether mknod of a 0/0 char device (a kernel-format whiteout) is allowed in `dir`.
pub fn can_mknod_whiteout(dir: impl AsFd) -> bool {
    let probe = OsStr::new(".strata-whiteout-probe");
    let dir = dir.as_fd();
    let _ = unlink_at(dir, probe, false);
    let ok = mknod_at(dir, probe, libc::S_IFCHR, 0).is_ok();
    let _ = unlink_at(dir, probe, false);
    ok
}

/// An unnamed regular file in directory `dir` (`O_TMPFILE`), to be given owner, mode and
/// xattrs before `link_tmpfile` makes it appear at once, complete. Its inode is allocated near
/// `dir`, as for any file created there.
pub fn open_tmpfile(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?)
}

/// Gives the `O_TMPFILE` file `fd` the name `name` in `dir` (fails if the name exists).
pub fn link_tmpfile(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH on older kernels; the magic link does not.
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
            use std::os::fd::AsRawFd;
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            Ok(rustix::fs::linkat(
                rustix::fs::CWD,
                path.as_str(),
                dir,
                name,
                AtFlags::SYMLINK_FOLLOW,
            )?)
        }
        r => Ok(r?),
    }
}

/// fchown: `None` leaves that id unchanged.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    Ok(rustix::fs::fchown(
        fd,
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
    )?)
}

pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

pub fn set_xattr_fd(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let key =
        std::ffi::CString::new(key).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::fs::fsetxattr(
        fd,
        key.as_c_str(),
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}
