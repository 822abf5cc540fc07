//! Extended attributes of entries reached through directory fds, without following symlinks.
//!
//! Linux 6.13 added `getxattrat`/`listxattrat`, which take a dir fd + name and
//! `AT_SYMLINK_NOFOLLOW` (or an `O_PATH` fd + `AT_EMPTY_PATH`): exactly what a union over
//! fd-held layers needs, since `fgetxattr` refuses `O_PATH` fds. Older kernels fall back to
//! `/proc/self/fd/N/name` with the non-following `l*xattr` calls.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

// x86_64 and aarch64 share the generic syscall numbers for these (added in 6.13).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Maximum size of one xattr value or list (the VFS limit).
pub const XATTR_MAX: usize = 64 * 1024;

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The name to resolve below `dir`: an empty name means the directory itself, reached as
/// "." (the `AT_EMPTY_PATH` form refuses `O_PATH` fds).
fn at_name(name: &OsStr) -> io::Result<CString> {
    if name.is_empty() {
        Ok(c".".to_owned())
    } else {
        cstr(name.as_bytes())
    }
}

const AT_FLAGS: libc::c_uint = libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;

/// The `/proc/self/fd` path of `name` in `dir`, and whether the call must follow it: for the
/// fd itself (empty name) the magic link is followed, which lands on the file the fd refers
/// to (never on a symlink's target); `name` below it is never followed.
fn proc_target(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(CString, bool)> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    Ok((cstr(&p)?, name.is_empty()))
}

/// The `*xattrat` calls reach the fd itself as "." (their `AT_EMPTY_PATH` form refuses
/// `O_PATH` fds), which fails on a non-directory: such an fd (a file whose names are all gone)
/// goes through `/proc/self/fd` instead.
fn not_a_dir(e: &io::Error, name: &OsStr) -> bool {
    name.is_empty() && e.raw_os_error() == Some(libc::ENOTDIR)
}

fn ret(r: libc::c_long) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Reads xattr `key` of `name` in `dir` (or of the directory `dir` when `name` is empty) into `buf`;
/// with an empty `buf`, returns the size only. Errors carry the real errno (ENODATA, ERANGE...).
pub fn get_xattr(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &[u8],
    buf: &mut [u8],
) -> io::Result<usize> {
    let key = cstr(key)?;
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let path = at_name(name)?;
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: all pointers are valid for the call: `path` and `key` are NUL-terminated
        // CStrings alive until it returns, `args.value` points to `buf` of `args.size` bytes
        // which the kernel writes at most, and the struct size passed matches `XattrArgs`.
        let r = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                AT_FLAGS,
                key.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match ret(r) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_XATTRAT.store(true, Ordering::Relaxed)
            }
            Err(e) if not_a_dir(&e, name) => {}
            other => return other,
        }
    }
    let (path, follow) = proc_target(dir, name)?;
    let call = if follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    // SAFETY: `path` and `key` are NUL-terminated and alive; `buf` is valid for `buf.len()`
    // bytes, which is the size we pass.
    let r = unsafe {
        call(
            path.as_ptr(),
            key.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    ret(r as libc::c_long)
}

/// Lists xattr names (NUL-separated) of `name` in `dir` (or `dir` itself) into `buf`; with an
/// empty `buf`, returns the size only.
pub fn list_xattr(dir: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let path = at_name(name)?;
        // SAFETY: `path` is a NUL-terminated CString alive for the call; `buf` is valid for
        // `buf.len()` bytes, the size we pass.
        let r = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                AT_FLAGS,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        match ret(r) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_XATTRAT.store(true, Ordering::Relaxed)
            }
            Err(e) if not_a_dir(&e, name) => {}
            other => return other,
        }
    }
    let (path, follow) = proc_target(dir, name)?;
    let call = if follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    // SAFETY: `path` is NUL-terminated and alive; `buf` is valid for `buf.len()` bytes.
    let r = unsafe { call(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    ret(r as libc::c_long)
}

/// Reads a whole xattr value, or `None` when it does not exist (or xattrs are unsupported).
pub fn get_xattr_value(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &[u8],
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    match get_xattr(dir, name, key, &mut buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
            let mut big = vec![0u8; XATTR_MAX];
            let n = get_xattr(dir, name, key, &mut big)?;
            big.truncate(n);
            Ok(Some(big))
        }
        Err(e) => Err(e),
    }
}

/// All xattr names of an entry, as one NUL-separated buffer (empty when none/unsupported).
pub fn list_xattr_all(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match list_xattr(dir, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < XATTR_MAX => {
                buf.resize(XATTR_MAX, 0)
            }
            Err(e) => return Err(e),
        }
    }
}

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// Sets xattr `key` of `name` in `dir` (or of the directory `dir` when `name` is empty).
/// `flags` are XATTR_CREATE / XATTR_REPLACE as given by the caller.
pub fn set_xattr(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &[u8],
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let key = cstr(key)?;
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let path = at_name(name)?;
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        // SAFETY: `path` and `key` are NUL-terminated CStrings alive for the call; `args.value`
        // points to `value`, valid for reads of `args.size` bytes; the size passed matches.
        let r = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                AT_FLAGS,
                key.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match ret(r) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_XATTRAT.store(true, Ordering::Relaxed)
            }
            Err(e) if not_a_dir(&e, name) => {}
            other => return other.map(|_| ()),
        }
    }
    let (path, follow) = proc_target(dir, name)?;
    let call = if follow {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    // SAFETY: `path` and `key` are NUL-terminated and alive; `value` is valid for its length.
    let r = unsafe {
        call(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    ret(r as libc::c_long).map(|_| ())
}

/// Removes xattr `key` of `name` in `dir` (or of the directory `dir` when `name` is empty).
pub fn remove_xattr(dir: BorrowedFd<'_>, name: &OsStr, key: &[u8]) -> io::Result<()> {
    let key = cstr(key)?;
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let path = at_name(name)?;
        // SAFETY: `path` and `key` are NUL-terminated CStrings alive for the call.
        let r = unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                AT_FLAGS,
                key.as_ptr(),
            )
        };
        match ret(r) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_XATTRAT.store(true, Ordering::Relaxed)
            }
            Err(e) if not_a_dir(&e, name) => {}
            other => return other.map(|_| ()),
        }
    }
    let (path, follow) = proc_target(dir, name)?;
    let call = if follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    // SAFETY: `path` and `key` are NUL-terminated and alive.
    let r = unsafe { call(path.as_ptr(), key.as_ptr()) };
    ret(r as libc::c_long).map(|_| ())
}
