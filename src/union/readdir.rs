//! Merged directory listings: union of names, duplicates removed, whiteouts and markers
//! hidden. One listing is built per open directory (and rebuilt on rewind), so offsets stay
//! valid across many small getdents calls and seekdir/telldir.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::FileType;

use super::inode::InoMap;
use super::layer::DirCopy;
use crate::format;
use crate::sys;

pub struct Entry {
    pub name: Box<[u8]>,
    /// Stable `st_ino`: the same number lookup + getattr report for this name.
    pub ino: u64,
    pub kind: FileType,
}

/// Lists the merged directory made of `copies` (topmost first). In a copy marked impure
/// (xattr `impure`), `recorded(copy, name)` gives an entry's recorded inode number.
pub fn merge(
    inos: &InoMap,
    copies: &[DirCopy],
    recorded: impl Fn(&DirCopy, &[u8]) -> io::Result<Option<u64>>,
    impure: &[u8],
) -> io::Result<Vec<Entry>> {
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let mut out = Vec::new();
    for copy in copies {
        // Whiteouts in this copy hide names in lower copies only.
        let mut hidden: Vec<Box<[u8]>> = Vec::new();
        let fd = copy.dir.fd()?;
        let impure =
            copy.upper() && sys::get_xattr_value(fd.as_fd(), OsStr::new(""), impure)?.is_some();
        copy.dir.read_dir(|e| {
            if e.name == format::OPAQUE_MARKER || seen.contains(e.name) {
                return Ok(());
            }
            if let Some(target) = format::whiteout_target(e.name) {
                hidden.push(target.into());
                return Ok(());
            }
            if copy.entry_is_whiteout(OsStr::from_bytes(e.name), e.kind)? {
                hidden.push(e.name.into());
                return Ok(());
            }
            let kind = match e.kind {
                FileType::Unknown => {
                    let st = sys::stat_at(fd.as_fd(), OsStr::from_bytes(e.name))?;
                    FileType::from_raw_mode(st.st_mode)
                }
                k => k,
            };
            let ino = match impure {
                true => recorded(copy, e.name)?,
                false => None,
            };
            seen.insert(e.name.into());
            out.push(Entry {
                name: e.name.into(),
                ino: ino.unwrap_or_else(|| inos.map(copy.dev, e.ino)),
                kind,
            });
            Ok(())
        })?;
        seen.extend(hidden);
    }
    Ok(out)
}
