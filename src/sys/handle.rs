//! File handles and filesystem uuids, for the kernel's record of a copied-up file's origin.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// The kernel's file handle (type, bytes) of `name` in `dir`, not following a symlink.
pub fn file_handle_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(i32, Vec<u8>)> {
    const MAX: usize = 128;
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        data: [u8; MAX],
    }
    let path =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut h = Handle {
        bytes: MAX as libc::c_uint,
        kind: 0,
        data: [0; MAX],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a `struct file_handle` header followed by MAX bytes, as `bytes` tells the
    // kernel; `path` is NUL-terminated and alive; `mount_id` is a valid out pointer.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            path.as_ptr(),
            (&mut h as *mut Handle).cast(),
            &mut mount_id,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (h.bytes as usize).min(MAX);
    Ok((h.kind, h.data[..n].to_vec()))
}

/// The uuid of the filesystem holding `fd` (zeros when the filesystem has none to tell).
pub fn fs_uuid(fd: BorrowedFd<'_>) -> [u8; 16] {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    // FS_IOC_GETFSUUID = _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut u = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: the ioctl writes at most size_of::<FsUuid2>() bytes into `u`, a valid, owned
    // buffer of that type; an fd of any kind is acceptable (errors are reported, not UB).
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFSUUID as _,
            &mut u as *mut FsUuid2,
        )
    };
    if r == 0 && u.len as usize == 16 {
        u.uuid
    } else {
        btrfs_fsid(fd).unwrap_or([0; 16])
    }
}

/// btrfs sets its superblock's uuid (the one kernel overlayfs puts in origin records) to the
/// filesystem's fsid but does not answer FS_IOC_GETFSUUID: ask BTRFS_IOC_FS_INFO instead.
fn btrfs_fsid(fd: BorrowedFd<'_>) -> Option<[u8; 16]> {
    const BTRFS_SUPER_MAGIC: u32 = 0x9123_683e;
    if rustix::fs::fstatfs(fd).ok()?.f_type as u32 != BTRFS_SUPER_MAGIC {
        return None;
    }
    // struct btrfs_ioctl_fs_info_args: max_id, num_devices, fsid[16], then fields we do not
    // read, 1024 bytes in all.
    #[repr(C)]
    struct FsInfo {
        max_id: u64,
        num_devices: u64,
        fsid: [u8; 16],
        rest: [u8; 992],
    }
    // BTRFS_IOC_FS_INFO = _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)
    const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
    let mut info = FsInfo {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 992],
    };
    // SAFETY: the ioctl writes at most 1024 bytes, size_of::<FsInfo>(), into `info`, a valid,
    // owned buffer; with flags zero the kernel reads nothing from it but the flags field.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            BTRFS_IOC_FS_INFO as _,
            &mut info as *mut FsInfo,
        )
    };
    (r == 0).then_some(info.fsid)
}
