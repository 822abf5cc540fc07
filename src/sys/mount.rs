//! Mounts made on file descriptors (the new mount API). The target is a held fd, resolved
//! inside the container root beforehand, and the source a detached mount: no path is looked
//! up again between the check and the mount, so nothing swapped in between can redirect it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

/// A new, detached instance of `fstype` configured with `options` (a `None` value is a flag),
/// its mount carrying `attrs`.
pub fn new_mount(
    fstype: &str,
    options: &[(&str, Option<&str>)],
    attrs: MountAttrFlags,
) -> io::Result<OwnedFd> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (key, value) in options {
        match value {
            Some(v) => fsconfig_set_string(&fs, *key, *v)?,
            None => fsconfig_set_flag(&fs, *key)?,
        }
    }
    fsconfig_create(&fs)?;
    Ok(fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?)
}

/// A detached copy of the mount at `src` (an `O_PATH` fd), with the mounts below it when
/// `recursive`: a bind mount not yet attached anywhere.
pub fn clone_mount(src: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_EMPTY_PATH;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    Ok(open_tree(src, "", flags)?)
}

/// Attaches the detached mount `mnt` onto what `target` refers to. `mnt` then refers to the
/// root of the attached mount.
pub fn attach_mount(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    Ok(move_mount(
        mnt,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Adds `attrs` (read-only, nosuid, ...) to the mount `mnt` refers to, and with `recursive` to
/// every mount below it. rustix has no `mount_setattr`.
pub fn set_mount_attrs(
    mnt: BorrowedFd<'_>,
    attrs: MountAttrFlags,
    recursive: bool,
) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs.bits().into(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes from `attr`, a live
    // `struct mount_attr` (four u64s, the kernel's layout); the path is a static empty
    // C string and `mnt` a valid fd for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
