//! Directory listing with `getdents64`, names as raw bytes.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{FileType, RawDir};

/// One raw directory entry. `d_type` may be `Unknown` on filesystems that do not fill it.
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub ino: u64,
    pub kind: FileType,
}

/// Calls `f` for every entry of the directory `dir` refers to (an `O_PATH` fd is fine), `.`
/// and `..` excluded. A fresh fd is opened, so concurrent listings do not share an offset.
pub fn read_dir(
    dir: BorrowedFd<'_>,
    f: impl FnMut(DirEntry<'_>) -> io::Result<()>,
) -> io::Result<()> {
    read_dir_open(super::open_dir_for_read(dir)?, f)
}

/// `read_dir` of a directory fd already open for reading (consumed).
pub fn read_dir_open(
    fd: OwnedFd,
    mut f: impl FnMut(DirEntry<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut iter = RawDir::new(&fd, &mut buf);
    while let Some(entry) = iter.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        f(DirEntry {
            name,
            ino: entry.ino(),
            kind: entry.file_type(),
        })?;
    }
    Ok(())
}
