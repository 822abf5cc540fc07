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

/// Starts writing a range of `file` back to disk without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a later fsync then finds little left to do.
/// Durability still comes from that fsync; this only moves the disk writes earlier.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: sync_file_range takes no pointers; the fd is borrowed from a live File.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
/// so holes stay holes), else pread/pwrite. Every copy uses explicit offsets on both sides:
/// SEEK_DATA/SEEK_HOLE move `from`'s file offset, so nothing may read through that offset.
pub fn copy_data(from: &File, to: &File, len: u64) -> io::Result<()> {
    if len == 0 || rustix::fs::ioctl_ficlone(to, from).is_ok() {
        return Ok(());
    }
    copy_segments(from, to, len, false)
}

fn copy_segments(from: &File, to: &File, len: u64, mut by_hand: bool) -> io::Result<()> {
    let mut pos = 0u64;
    while let Some((start, end)) = next_data(from, pos, len)? {
        copy_segment(from, to, start, end, &mut by_hand)?;
        pos = end;
    }
    to.set_len(len)?;
    if cfg!(debug_assertions) {
        verify_copy(from, to, len)?;
    }
    Ok(())
}

/// The next data segment `[start, end)` of `from` at or after `pos`, clipped to `len`; `None`
/// when only a hole is left. Without SEEK_DATA support everything counts as data.
fn next_data(from: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    if pos >= len {
        return Ok(None);
    }
    let start = match rustix::fs::seek(from, SeekFrom::Data(pos)) {
        Ok(s) if s >= len => return Ok(None),
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
            return Ok(Some((pos, len)));
        }
        Err(e) => return Err(e.into()),
    };
    let end = match rustix::fs::seek(from, SeekFrom::Hole(start)) {
        Ok(e) => e.min(len),
        Err(_) => len,
    };
    Ok(Some((start, end)))
}

/// Copies `[start, end)` to the same offsets of `to`: in the kernel while it can, by hand
/// once it says the two files are on filesystems it cannot copy between.
fn copy_segment(
    from: &File,
    to: &File,
    start: u64,
    end: u64,
    by_hand: &mut bool,
) -> io::Result<()> {
    let mut off = start;
    while off < end {
        let want = (end - off).min(1 << 30) as usize;
        let n = if *by_hand {
            copy_by_hand(from, off, to, off, want)?
        } else {
            match copy_in_kernel(from, off, to, off, want) {
                Err(e) if falls_back(&e) => {
                    *by_hand = true;
                    continue;
                }
                r => r?,
            }
        };
        if n == 0 {
            // The source ended before the length it had when the copy began.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("copy-up: source ended at {off}, expected {end} bytes"),
            ));
        }
        off += n as u64;
    }
    Ok(())
}

/// Errors of `copy_file_range` that mean "not between these two files": copy by hand.
fn falls_back(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

fn copy_in_kernel(
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

/// pread/pwrite of up to `len` bytes (one buffer's worth) at explicit offsets; bytes copied,
/// 0 at the end of `from`.
fn copy_by_hand(
    from: &File,
    off_in: u64,
    to: &File,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(1 << 20)];
    let n = loop {
        match from.read_at(&mut buf, off_in) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    to.write_all_at(&buf[..n], off_out)?;
    Ok(n)
}

/// Debug builds check every copy-up byte for byte: a copy that silently comes out short or
/// wrong is data loss, and this is where it would be seen first.
fn verify_copy(from: &File, to: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0u64;
    while off < len {
        let want = ((len - off) as usize).min(a.len());
        from.read_exact_at(&mut a[..want], off)?;
        to.read_exact_at(&mut b[..want], off)?;
        if a[..want] != b[..want] {
            return Err(io::Error::other(format!(
                "copy-up verification: data differs in the {want} bytes at offset {off}"
            )));
        }
        off += want as u64;
    }
    Ok(())
}

/// `copy_file_range` between two open files at explicit offsets; bytes copied. Between files
/// the kernel cannot copy across (a lower and the upper on two filesystems) it copies by hand.
pub fn copy_range(
    from: &File,
    off_in: u64,
    to: &File,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    match copy_in_kernel(from, off_in, to, off_out, len) {
        Err(e) if falls_back(&e) => copy_by_hand(from, off_in, to, off_out, len),
        r => r,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A sparse source with its offset moved to the end (as SEEK_DATA leaves it), copied by
    /// hand as across filesystems: every data byte arrives and the length is kept.
    fn sparse_copy(by_hand: bool) {
        let dir = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("src"))
            .unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", 3 << 20).unwrap();
        let len = (3 << 20) + 4;
        rustix::fs::seek(&src, rustix::fs::SeekFrom::End(0)).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        copy_segments(&src, &dst, len, by_hand).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), len);
        let (mut a, mut b) = (vec![0u8; len as usize], vec![0u8; len as usize]);
        src.read_exact_at(&mut a, 0).unwrap();
        dst.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b, "copy differs (by_hand: {by_hand})");
        assert_eq!(&b[..4], b"head");
    }

    #[test]
    fn copy_by_hand_ignores_the_moved_offset() {
        sparse_copy(true);
    }

    #[test]
    fn copy_in_kernel_keeps_data() {
        sparse_copy(false);
    }

    #[test]
    fn copy_range_by_hand_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let from = File::open(&p).unwrap();
        let to = tempfile::tempfile_in(dir.path()).unwrap();
        assert_eq!(copy_by_hand(&from, 3, &to, 5, 4).unwrap(), 4);
        let mut got = vec![0u8; 9];
        to.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"\x00\x00\x00\x00\x003456");
    }
}
