//! fuse-overlayfs's stat overrides (and the other per-mount switches of its options): a layer whose root carries an `override_stat` xattr
//! keeps each file's shown owner and mode in that xattr (`UID:GID:MODE`, mode in octal)
//! instead of on the file. containers-storage writes `user.containers.override_stat` so
//! (its `force_mask`: shared additional image stores, rootless images with ids outside the
//! user's mapping), and `xattr_permissions=1|2` makes the upper layer work the same way, so
//! chown and chmod succeed where the real ones could not.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use super::inode::{Node, Place};
use super::layer::Layer;
use super::{SetAttr, Union};
use crate::options::XattrPermissions;
use crate::sys::{self, Stat};

/// `xattr_permissions=1` (privileged: only root may write it).
pub const PRIVILEGED: &[u8] = b"security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2`, and what containers-storage writes.
pub const CONTAINERS: &[u8] = b"user.containers.override_stat";
/// fuse-overlayfs up to 1.10's `xattr_permissions=2`: still read.
pub const USER: &[u8] = b"user.fuseoverlayfs.override_stat";

/// What an upper root gets when neither it nor any lower root has a record: fuse-overlayfs's.
const ROOT_DEFAULT: &[u8] = b"0:0:555";

/// Whether `key` is one of the override xattrs (never shown through the mount).
pub fn is_override_xattr(key: &[u8]) -> bool {
    [PRIVILEGED, CONTAINERS, USER].contains(&key)
}

/// Which xattr, if any, holds the shown attributes in each layer.
#[derive(Debug, Default)]
pub struct Overrides {
    by_layer: Vec<Option<&'static [u8]>>,
    /// The upper's, when chown/chmod write the xattr instead of the file.
    write: Option<&'static [u8]>,
}

fn has(root: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    Ok(sys::get_xattr_value(root, OsStr::new(""), key)?.is_some())
}

impl Overrides {
    /// Reads each layer root's mode (`roots` top first, the upper first if `upper`), and
    /// for `xattr_permissions=1|2` makes sure the upper root has its record.
    pub fn detect(
        roots: &[BorrowedFd<'_>],
        upper: bool,
        mode: XattrPermissions,
    ) -> io::Result<Self> {
        let mut by_layer = Vec::with_capacity(roots.len());
        for root in roots {
            let mut found = None;
            for key in [PRIVILEGED, CONTAINERS, USER] {
                if has(*root, key)? {
                    found = Some(key);
                    break;
                }
            }
            by_layer.push(found);
        }
        let mut o = Overrides {
            by_layer,
            write: None,
        };
        let (Some(&up), true) = (roots.first(), upper) else {
            return Ok(o);
        };
        let key = match (mode, o.by_layer[0]) {
            (XattrPermissions::Off, _) => return Ok(o),
            (XattrPermissions::Privileged, _) => PRIVILEGED,
            // An upper fuse-overlayfs 1.10 started keeps its name.
            (XattrPermissions::User, Some(USER)) => USER,
            (XattrPermissions::User, _) => CONTAINERS,
        };
        if !has(up, key)? {
            let wanted: &[&[u8]] = if key == PRIVILEGED {
                &[PRIVILEGED]
            } else {
                &[CONTAINERS, USER]
            };
            let mut value = None;
            'lowers: for root in &roots[1..] {
                for k in wanted {
                    if let Some(v) = sys::get_xattr_value(*root, OsStr::new(""), k)? {
                        value = Some(v);
                        break 'lowers;
                    }
                }
            }
            let value = value.unwrap_or_else(|| ROOT_DEFAULT.to_vec());
            sys::set_xattr(up, OsStr::new(""), key, &value, 0)?;
        }
        o.by_layer[0] = Some(key);
        o.write = Some(key);
        Ok(o)
    }

    /// `detect` over the union's layers; the upper counts only when writable (`work`).
    pub(super) fn for_layers(
        layers: &[Layer],
        work: bool,
        mode: XattrPermissions,
    ) -> io::Result<Self> {
        let fds = layers
            .iter()
            .map(|l| l.root.fd())
            .collect::<io::Result<Vec<_>>>()?;
        let roots: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let upper = layers.first().is_some_and(|l| l.upper) && work;
        Self::detect(&roots, upper, mode)
    }

    pub fn any(&self) -> bool {
        self.by_layer.iter().any(Option::is_some)
    }

    /// The xattr chown/chmod write in the upper instead of changing the file.
    pub fn write_key(&self) -> Option<&'static [u8]> {
        self.write
    }

    /// Replaces owner and permission bits of `st` (of `name` in `dir`, in `layer`) by the
    /// layer's record, if it has one for this file. Symlinks have none (no user xattrs).
    pub fn apply(&self, layer: usize, dir: BorrowedFd<'_>, name: &OsStr, st: &mut Stat) {
        let Some(key) = self.by_layer.get(layer).copied().flatten() else {
            return;
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return;
        }
        let mut buf = [0u8; 64];
        let Ok(n) = sys::get_xattr(dir, name, key, &mut buf) else {
            return;
        };
        // A malformed record is ignored rather than failing every stat of the file.
        if let Some((uid, gid, mode)) = parse(&buf[..n]) {
            st.st_uid = uid;
            st.st_gid = gid;
            st.st_mode = (st.st_mode & libc::S_IFMT) | (mode & 0o7777);
        }
    }
}

impl Union {
    /// The shown owner and mode from the node's layer's record, and one link per directory
    /// under `static_nlink`.
    pub(super) fn override_stat(&self, node: &Node, st: &mut Stat) {
        if self.static_nlink && node.is_dir {
            st.st_nlink = 1;
        }
        if !self.overrides.any() {
            return;
        }
        let s = node.state();
        match &s.place {
            Place::Dir(copies) => {
                let top = &copies[0];
                if let Ok(fd) = top.dir.fd() {
                    self.overrides
                        .apply(top.layer, fd.as_fd(), OsStr::new(""), st)
                }
            }
            Place::Leaf { layer, dir, name } => {
                if let Ok(fd) = dir.fd() {
                    self.overrides.apply(*layer, fd.as_fd(), name, st)
                }
            }
        }
    }

    /// Under `redirect_dir=off|follow` a directory with lower copies cannot move (no
    /// redirect may be made): the kernel's EXDEV, after which `mv` copies it.
    pub(super) fn pinned_dir(&self, node: &Node) -> bool {
        self.no_redirect
            && node.is_dir
            && matches!(&node.state().place, Place::Dir(c) if c.iter().any(|c| !c.upper()))
    }

    /// The override records are the union's, never the user's.
    pub(super) fn hides_xattr(&self, key: &[u8]) -> bool {
        self.overrides.any() && is_override_xattr(key)
    }

    /// chown/chmod under `xattr_permissions=`: the change goes to the upper copy's record
    /// (`name` in `dir`), the file itself keeps its real owner and mode. False when this
    /// mount does not keep records (the caller changes the file).
    pub(super) fn record_owner_mode(
        &self,
        id: u64,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        a: &SetAttr,
    ) -> io::Result<bool> {
        let Some(key) = self.overrides.write_key() else {
            return Ok(false);
        };
        if a.uid.is_none() && a.gid.is_none() && a.mode.is_none() {
            return Ok(true);
        }
        let shown = self.getattr(id)?;
        let uid = a.uid.unwrap_or(shown.st_uid);
        let gid = a.gid.unwrap_or(shown.st_gid);
        let mode = a.mode.unwrap_or(shown.st_mode) & 0o7777;
        let value = format!("{uid}:{gid}:{mode:o}");
        sys::set_xattr(dir, name, key, value.as_bytes(), 0)?;
        Ok(true)
    }
}

/// `UID:GID:MODE` (mode octal), optionally followed by `:TYPE` (newer containers-storage),
/// which is ignored: the file keeps its own type.
fn parse(v: &[u8]) -> Option<(u32, u32, u32)> {
    let text = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
    let mut it = text.split(':');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    Some((uid, gid, mode))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn records() {
        assert_eq!(parse(b"0:0:755"), Some((0, 0, 0o755)));
        assert_eq!(parse(b"1000:100:0644"), Some((1000, 100, 0o644)));
        assert_eq!(parse(b"5:6:4755:file"), Some((5, 6, 0o4755)));
        assert_eq!(parse(b"0:0:755\0"), Some((0, 0, 0o755)));
        assert_eq!(parse(b"0:0"), None);
        assert_eq!(parse(b"a:0:755"), None);
        assert_eq!(parse(b"0:0:9"), None);
    }
}
