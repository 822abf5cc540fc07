//! Parsing of fuse-overlayfs style `-o` option strings.
//!
//! Option values are paths, so everything stays bytes: a lowerdir with a non-UTF-8 name must
//! reach the filesystem exactly. Commas and colons inside values are escaped with a backslash,
//! as libfuse and the kernel's overlayfs accept (`lowerdir=/a\:b:/c`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

/// One problem with a `-o` option string, named so a user can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown mount option '{0}'")]
    Unknown(String),
    #[error("mount option '{0}' is not supported by strata yet")]
    Unsupported(String),
    #[error("mount option '{0}' needs a value")]
    MissingValue(String),
    #[error("mount option '{0}' takes no value")]
    UnexpectedValue(String),
    #[error("mount option '{name}' has a bad value '{value}': {why}")]
    BadValue {
        name: String,
        value: String,
        why: &'static str,
    },
}

/// How deleted lower entries are recorded in the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// Char device 0/0 where mknod works, else `.wh.` files.
    #[default]
    Auto,
    CharDev,
    Oci,
}

/// Everything `-o` and the long options can set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub allow_other: bool,
    pub allow_root: bool,
    /// `ro` asked for: every write gets EROFS even with an upper.
    pub read_only: bool,
    pub dev: bool,
    pub suid: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub fsname: Option<OsString>,
    /// Attribute/entry cache timeout (fuse-overlayfs `timeout=`), seconds.
    pub timeout: Option<Duration>,
    pub whiteout: WhiteoutFormat,
    pub ids: IdMapping,
    /// `volatile`: fsync is a no-op, and an unclean stop leaves a marker that refuses the
    /// next mount (the kernel's `work/incompat/volatile`).
    pub volatile: bool,
    /// `fsync=0`: fsync is a no-op, without volatile's marker.
    pub no_fsync: bool,
    /// SELinux options (`context=` ...), unquoted: handed to the kernel where SELinux is on.
    pub selinux: Vec<(&'static str, OsString)>,
    /// `xattr_permissions=1|2`: owners and modes kept in an xattr, not on the files.
    pub xattr_permissions: XattrPermissions,
    /// `metacopy=off`: chmod/chown copy a lower file's data up too.
    pub no_metacopy: bool,
    /// `userxattr`: strata's own records in `user.overlay.*` even where `trusted.` works.
    pub userxattr: bool,
    /// `noacl`: no POSIX ACLs (the kernel neither checks nor stores them).
    pub noacl: bool,
    /// `static_nlink`: directories report one link.
    pub static_nlink: bool,
    /// `redirect_dir=off|follow`: no redirects made, so merged directories cannot move.
    pub no_redirect: bool,
    /// `noxattrs=1`: no xattrs through the mount.
    pub no_xattrs: bool,
    /// `passthrough=`: which files FUSE passthrough may serve (strata's own option).
    pub passthrough: Passthrough,
}

/// strata's `passthrough=` option. Passthrough needs real root; without it every mode is
/// `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Upper files, and lower files of a mount without an upper: kernel overlayfs's
    /// semantics exactly.
    #[default]
    Exact,
    /// Also lower files opened for reading under an upper. Opening such a file for writing,
    /// or truncating it, fails with ETXTBSY while those readers have it open.
    Lower,
    /// None: every read and write goes through the daemon.
    Off,
}

/// fuse-overlayfs's `xattr_permissions=`: where an upper keeps owners and modes it cannot
/// (or must not) set for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrPermissions {
    #[default]
    Off,
    /// `1`: `security.fuseoverlayfs.override_stat` (needs privilege).
    Privileged,
    /// `2`: `user.containers.override_stat`, what containers-storage writes with force_mask.
    User,
}

/// The SELinux mount options, all taking a (possibly quoted) context.
const SELINUX_OPTIONS: [&str; 4] = ["context", "fscontext", "defcontext", "rootcontext"];

/// fuse-overlayfs's id options: how owners stored in the layers appear in the mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMapping {
    /// `uidmapping=STORED:SHOWN:LEN[:STORED:SHOWN:LEN...]` (fuse-overlayfs's order; what
    /// containers-storage writes as ContainerID:HostID:Size): ids STORED.. in the layers
    /// appear as SHOWN.. in the mount. Kept here as (shown, stored, len).
    pub uids: Vec<(u32, u32, u32)>,
    pub gids: Vec<(u32, u32, u32)>,
    /// `squash_to_root` / `squash_to_uid=`/`squash_to_gid=`: every file appears owned by it.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

/// The id files appear with when no mapping covers theirs (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

impl IdMapping {
    pub fn is_identity(&self) -> bool {
        *self == IdMapping::default()
    }

    fn map(ranges: &[(u32, u32, u32)], id: u32, to_shown: bool) -> Option<u32> {
        if ranges.is_empty() {
            return Some(id);
        }
        ranges.iter().find_map(|&(shown, stored, len)| {
            let (from, to) = if to_shown {
                (stored, shown)
            } else {
                (shown, stored)
            };
            id.checked_sub(from).filter(|d| *d < len).map(|d| to + d)
        })
    }

    /// Owner as shown in the mount, for an owner stored in a layer.
    pub fn shown_uid(&self, stored: u32) -> u32 {
        self.squash_uid
            .or_else(|| Self::map(&self.uids, stored, true))
            .unwrap_or(OVERFLOW_ID)
    }

    pub fn shown_gid(&self, stored: u32) -> u32 {
        self.squash_gid
            .or_else(|| Self::map(&self.gids, stored, true))
            .unwrap_or(OVERFLOW_ID)
    }

    /// Owner to store for an id given in the mount (caller, chown); None if unmapped.
    pub fn stored_uid(&self, shown: u32) -> Option<u32> {
        Self::map(&self.uids, shown, false)
    }

    pub fn stored_gid(&self, shown: u32) -> Option<u32> {
        Self::map(&self.gids, shown, false)
    }
}

fn parse_ranges(name: &str, v: &[u8]) -> Result<Vec<(u32, u32, u32)>, OptionError> {
    let text = std::str::from_utf8(v).map_err(|_| bad(name, v, "expected numbers"))?;
    // Empty fields are skipped, as fuse-overlayfs's strtok does: containers-storage writes
    // `uidmapping=:0:100000:65536`.
    let nums: Vec<u32> = text
        .split(':')
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse()
                .map_err(|_| bad(name, v, "expected STORED:SHOWN:LEN triples"))
        })
        .collect::<Result<_, _>>()?;
    if nums.is_empty() || !nums.len().is_multiple_of(3) {
        return Err(bad(name, v, "expected STORED:SHOWN:LEN triples"));
    }
    let ranges: Vec<_> = nums.chunks(3).map(|c| (c[1], c[0], c[2])).collect();
    if ranges
        .iter()
        .any(|&(i, h, l)| l == 0 || i.checked_add(l).is_none() || h.checked_add(l).is_none())
    {
        return Err(bad(name, v, "ranges must be non-empty and fit in 32 bits"));
    }
    Ok(ranges)
}

/// fuse-overlayfs options strata does not implement yet: rejected by name, never ignored.
const NOT_YET: &[&str] = &["nfs_export", "max_read", "blksize", "auto_unmount"];

impl MountOptions {
    /// Applies one `-o` string (comma separated, backslash escapes) on top of `self`.
    pub fn apply(&mut self, opts: &[u8]) -> Result<(), OptionError> {
        for item in split_escaped(opts, b',', true) {
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.iter().position(|&b| b == b'=') {
                Some(i) => (&item[..i], Some(&item[i + 1..])),
                None => (&item[..], None),
            };
            self.apply_one(name, value)?;
        }
        Ok(())
    }

    /// The generic mount options (ro, nodev, allow_other, ...); false if `name` is not one.
    fn apply_mount_flag(&mut self, name: &[u8], value: Option<&[u8]>) -> Result<bool, OptionError> {
        match name {
            // fuse-overlayfs's tuning knob: strata always serves from several threads.
            b"threaded" => {
                needs_value(name, value)?;
            }
            b"allow_other" => {
                no_value(name, value)?;
                self.allow_other = true;
            }
            b"allow_root" => {
                no_value(name, value)?;
                self.allow_root = true;
            }
            // strata always lets the kernel check permissions against the merged attributes.
            b"default_permissions" => no_value(name, value)?,
            b"ro" => {
                no_value(name, value)?;
                self.read_only = true;
            }
            b"rw" => {
                no_value(name, value)?;
                self.read_only = false;
            }
            b"dev" | b"nodev" => {
                no_value(name, value)?;
                self.dev = name == b"dev";
            }
            b"suid" | b"nosuid" => {
                no_value(name, value)?;
                self.suid = name == b"suid";
            }
            b"exec" | b"noexec" => {
                no_value(name, value)?;
                self.noexec = name == b"noexec";
            }
            b"noatime" => {
                no_value(name, value)?;
                self.noatime = true;
            }
            // Kernel defaults, or VFS flags FUSE handles itself: nothing to do.
            b"atime" | b"relatime" | b"strictatime" | b"nodiratime" | b"async" | b"sync"
            | b"dirsync" | b"_netdev" | b"nofail" | b"auto" | b"noauto" | b"user" | b"nouser"
            | b"users" | b"defaults" | b"nonempty" => no_value(name, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn apply_one(&mut self, name: &[u8], value: Option<&[u8]>) -> Result<(), OptionError> {
        let shown = String::from_utf8_lossy(name).into_owned();
        match name {
            b"lowerdir" => {
                let v = needs_value(name, value)?;
                let layers: Vec<PathBuf> = split_escaped(v, b':', false)
                    .into_iter()
                    .map(|p| PathBuf::from(OsString::from_vec(unescape(&p))))
                    .collect();
                if layers.iter().any(|p| p.as_os_str().is_empty()) {
                    return Err(bad(&shown, v, "empty layer path"));
                }
                self.lowers = layers;
            }
            b"uidmapping" => self.ids.uids = parse_ranges(&shown, needs_value(name, value)?)?,
            b"gidmapping" => self.ids.gids = parse_ranges(&shown, needs_value(name, value)?)?,
            b"squash_to_root" => {
                no_value(name, value)?;
                self.ids.squash_uid = Some(0);
                self.ids.squash_gid = Some(0);
            }
            b"squash_to_uid" | b"squash_to_gid" => {
                let v = needs_value(name, value)?;
                let id = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&shown, v, "expected a numeric id"))?;
                if name == b"squash_to_uid" {
                    self.ids.squash_uid = Some(id);
                } else {
                    self.ids.squash_gid = Some(id);
                }
            }
            b"upperdir" => self.upper = Some(path_value(&shown, needs_value(name, value)?)?),
            b"workdir" => self.work = Some(path_value(&shown, needs_value(name, value)?)?),
            b"fsname" => {
                self.fsname = Some(OsString::from_vec(unescape(needs_value(name, value)?)))
            }
            b"timeout" => {
                let v = needs_value(name, value)?;
                let secs: f64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .ok_or_else(|| bad(&shown, v, "expected seconds"))?;
                self.timeout = Some(Duration::from_secs_f64(secs));
            }
            b"whiteout" => {
                let v = needs_value(name, value)?;
                self.whiteout = match v {
                    b"auto" => WhiteoutFormat::Auto,
                    b"chardev" => WhiteoutFormat::CharDev,
                    b"oci" => WhiteoutFormat::Oci,
                    _ => return Err(bad(&shown, v, "expected auto, chardev or oci")),
                };
            }
            _ if self.apply_overlay(name, value)? => {}
            _ if self.apply_mount_flag(name, value)? => {}
            _ if NOT_YET.iter().any(|n| n.as_bytes() == name) => {
                return Err(OptionError::Unsupported(shown));
            }
            _ => return Err(OptionError::Unknown(shown)),
        }
        Ok(())
    }
}

impl MountOptions {
    /// The kernel overlayfs and fuse-overlayfs options beyond the layers; false if `name` is
    /// none of them.
    fn apply_overlay(&mut self, name: &[u8], value: Option<&[u8]>) -> Result<bool, OptionError> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let flag = |set: &mut bool| match value {
            None => {
                *set = true;
                Ok(())
            }
            Some(_) => Err(OptionError::UnexpectedValue(shown.clone())),
        };
        let choice = |allowed: &[&[u8]], why| match value {
            Some(v) if allowed.contains(&v) => Ok(v),
            Some(v) => Err(bad(&shown, v, why)),
            None => Err(OptionError::MissingValue(shown.clone())),
        };
        match name {
            b"volatile" => flag(&mut self.volatile)?,
            // fuse-overlayfs's `fsync=0`: fsync is a no-op (what `volatile` implies).
            b"fsync" => self.no_fsync = choice(&[b"0", b"1"], "expected 0 or 1")? == b"0",
            b"noxattrs" => self.no_xattrs = choice(&[b"0", b"1"], "expected 0 or 1")? == b"1",
            // fuse-overlayfs's speed knobs (an inode check skipped, the kernel's writeback
            // cache): what the mount shows does not depend on them.
            b"fast_ino" | b"writeback" => {
                choice(&[b"0", b"1"], "expected 0 or 1")?;
            }
            b"userxattr" => flag(&mut self.userxattr)?,
            b"passthrough" => {
                let v = choice(
                    &[b"exact", b"lower", b"off"],
                    "expected exact, lower or off",
                )?;
                self.passthrough = match v {
                    b"lower" => Passthrough::Lower,
                    b"off" => Passthrough::Off,
                    _ => Passthrough::Exact,
                };
            }
            b"noacl" => flag(&mut self.noacl)?,
            b"static_nlink" => flag(&mut self.static_nlink)?,
            // The kernel's meanings: `on` makes and follows redirects; `follow` and `off` make
            // none (a merged directory cannot move: EXDEV) but follow existing ones, as the
            // kernel does by default. `nofollow` would need lookups to ignore them: refused.
            b"redirect_dir" if value.is_none() => {}
            b"redirect_dir" => {
                let v = choice(&[b"on", b"follow", b"off"], "expected on, follow or off")?;
                self.no_redirect = v != b"on";
            }
            // strata keeps lower hard links together on copy-up whatever is asked: `off`
            // would only break them, which nothing relies on.
            b"index" => {
                choice(&[b"on", b"off"], "expected on or off")?;
            }
            // strata's inode numbers are always unique and stable (its own mapping).
            b"xino" => {
                choice(&[b"on", b"off", b"auto"], "expected on, off or auto")?;
            }
            b"metacopy" => {
                self.no_metacopy = choice(&[b"on", b"off"], "expected on or off")? == b"off";
            }
            b"xattr_permissions" => {
                self.xattr_permissions = match choice(&[b"0", b"1", b"2"], "expected 0, 1 or 2")? {
                    b"1" => XattrPermissions::Privileged,
                    b"2" => XattrPermissions::User,
                    _ => XattrPermissions::Off,
                };
            }
            // fuse-overlayfs's data-source plugins: strata has none.
            b"plugins" => match value {
                None | Some(b"") => {}
                Some(v) => return Err(bad(&shown, v, "strata has no data-source plugins")),
            },
            _ => return self.apply_selinux(name, value),
        }
        Ok(true)
    }

    /// `context=` and friends: SELinux labels, the value possibly in double quotes (as
    /// containers-storage writes it, since a label may hold commas).
    fn apply_selinux(&mut self, name: &[u8], value: Option<&[u8]>) -> Result<bool, OptionError> {
        let Some(&key) = SELINUX_OPTIONS.iter().find(|k| k.as_bytes() == name) else {
            return Ok(false);
        };
        let v = value.ok_or_else(|| OptionError::MissingValue(key.to_owned()))?;
        let unquoted = match v {
            [b'"', inner @ .., b'"'] => inner,
            _ => v,
        };
        if unquoted.is_empty() || unquoted.contains(&b'"') {
            return Err(bad(key, v, "expected a security context"));
        }
        self.selinux.retain(|(k, _)| *k != key);
        self.selinux
            .push((key, OsString::from_vec(unquoted.to_vec())));
        Ok(true)
    }
}

/// A flag option: it takes no value.
fn no_value(name: &[u8], value: Option<&[u8]>) -> Result<(), OptionError> {
    match value {
        None => Ok(()),
        Some(_) => Err(OptionError::UnexpectedValue(
            String::from_utf8_lossy(name).into_owned(),
        )),
    }
}

/// An option that needs a value.
fn needs_value<'a>(name: &[u8], value: Option<&'a [u8]>) -> Result<&'a [u8], OptionError> {
    value.ok_or_else(|| OptionError::MissingValue(String::from_utf8_lossy(name).into_owned()))
}

fn bad(name: &str, value: &[u8], why: &'static str) -> OptionError {
    OptionError::BadValue {
        name: name.to_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
        why,
    }
}

fn path_value(name: &str, v: &[u8]) -> Result<PathBuf, OptionError> {
    if v.is_empty() {
        return Err(bad(name, v, "empty path"));
    }
    Ok(PathBuf::from(OsStr::from_bytes(&unescape(v))))
}

/// Splits on `sep` not preceded by a backslash; escapes are kept for `unescape`. With
/// `quotes`, `sep` inside double quotes does not split either (an SELinux label
/// `context="...:c1,c2"` holds commas).
fn split_escaped(s: &[u8], sep: u8, quotes: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            cur.push(b);
            if let Some(&n) = it.next() {
                cur.push(n);
            }
        } else if b == sep && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            quoted ^= quotes && b == b'"';
            cur.push(b);
        }
    }
    out.push(cur);
    out
}

/// Removes one level of backslash escaping.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        o.apply(s).map(|_| o)
    }

    #[test]
    fn lowerdir_order_and_escapes() {
        let o = parse(b"lowerdir=/a\\:b:/c\\,d,upperdir=/u,workdir=/w").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")]);
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.work, Some(PathBuf::from("/w")));
    }

    #[test]
    fn non_utf8_paths_survive() {
        let o = parse(b"lowerdir=/l\xff\xfe").unwrap();
        assert_eq!(o.lowers[0].as_os_str().as_bytes(), b"/l\xff\xfe");
    }

    #[test]
    fn unknown_and_unsupported_are_errors() {
        assert_eq!(
            parse(b"lowerdir=/a,bogus=1"),
            Err(OptionError::Unknown("bogus".into()))
        );
        assert_eq!(
            parse(b"nfs_export=on"),
            Err(OptionError::Unsupported("nfs_export".into()))
        );
        assert!(matches!(
            parse(b"uidmapping=0:1000"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse(b"uidmapping=0:1000:0"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse(b"lowerdir"),
            Err(OptionError::MissingValue(_))
        ));
        assert!(matches!(
            parse(b"lowerdir=/a::/b"),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            parse(b"ro=1"),
            Err(OptionError::UnexpectedValue(_))
        ));
        assert!(matches!(
            parse(b"redirect_dir=nofollow"),
            Err(OptionError::BadValue { .. })
        ));
    }

    /// fuse-overlayfs's order, checked against fuse-overlayfs 1.10: with `uidmapping=0:1000:10`
    /// a file stored as 0 shows as 1000, one stored as 1000 as the overflow id.
    #[test]
    fn id_mappings() {
        let o = parse(b"uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1").unwrap();
        let ids = &o.ids;
        assert_eq!(ids.shown_uid(0), 1000);
        assert_eq!(ids.shown_uid(5), 100_004);
        assert_eq!(ids.shown_uid(1000), 1000 + 100_000 - 1);
        assert_eq!(ids.shown_uid(70_000), OVERFLOW_ID);
        assert_eq!(ids.stored_uid(100_004), Some(5));
        assert_eq!(ids.stored_uid(7), None);
        assert_eq!(ids.shown_gid(0), 1000);
        assert_eq!(ids.shown_gid(1000), OVERFLOW_ID);
        // containers-storage's form, with a leading colon.
        let o = parse(b"uidmapping=:0:1000:1:1:100000:65536,gidmapping=:0:1000:1").unwrap();
        assert_eq!((o.ids.shown_uid(5), o.ids.shown_gid(0)), (100_004, 1000));
        assert!(matches!(
            parse(b"uidmapping=::"),
            Err(OptionError::BadValue { .. })
        ));
        let o = parse(b"squash_to_root").unwrap();
        assert_eq!((o.ids.shown_uid(1234), o.ids.shown_gid(99)), (0, 0));
        let o = parse(b"squash_to_uid=42,squash_to_gid=43").unwrap();
        assert_eq!((o.ids.shown_uid(1), o.ids.shown_gid(1)), (42, 43));
    }

    #[test]
    fn fuse_flags() {
        let o = parse(b"rw,nosuid,nodev,relatime,allow_other,default_permissions,ro").unwrap();
        assert!(o.allow_other && o.read_only && !o.dev && !o.suid);
        let o = parse(b"timeout=2.5,dev,suid").unwrap();
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert!(o.dev && o.suid);
    }

    /// What containers-storage's overlay driver hands a mount program, byte for byte in form.
    #[test]
    fn containers_storage_line() {
        let o = parse(
            b"lowerdir=/s/l/AA:/s/l/BB,upperdir=/s/x/diff,workdir=/s/x/work,,volatile,\
              context=\"system_u:object_r:container_file_t:s0:c1,c2\",\
              uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,xattr_permissions=2",
        )
        .unwrap();
        assert_eq!(o.lowers.len(), 2);
        assert!(o.volatile);
        assert_eq!(
            o.selinux,
            vec![(
                "context",
                OsString::from("system_u:object_r:container_file_t:s0:c1,c2")
            )]
        );
        assert_eq!(o.ids.shown_uid(1), 100_000);
        assert_eq!(o.xattr_permissions, XattrPermissions::User);
    }

    #[test]
    fn empty_options_are_skipped() {
        let o = parse(b",,lowerdir=/a,,,").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a")]);
        assert_eq!(parse(b""), Ok(MountOptions::default()));
    }

    #[test]
    fn flags_of_overlay_and_fuse_overlayfs() {
        assert!(parse(b"noxattrs=1").unwrap().no_xattrs);
        assert!(!parse(b"noxattrs=0").unwrap().no_xattrs);
        assert!(parse(b"fast_ino=1,writeback=0").is_ok());
        assert!(parse(b"fsync=0").unwrap().no_fsync);
        assert!(!parse(b"fsync=0,fsync=1").unwrap().no_fsync);
        assert!(matches!(
            parse(b"fsync=2"),
            Err(OptionError::BadValue { .. })
        ));
        let o = parse(b"volatile,userxattr,noacl,static_nlink").unwrap();
        assert!(o.volatile && o.userxattr && o.noacl && o.static_nlink);
        for name in ["volatile", "userxattr", "noacl", "static_nlink"] {
            assert_eq!(
                parse(format!("{name}=1").as_bytes()),
                Err(OptionError::UnexpectedValue(name.into()))
            );
        }
    }

    #[test]
    fn passthrough_modes() {
        assert_eq!(parse(b"").unwrap().passthrough, Passthrough::Exact);
        assert_eq!(
            parse(b"passthrough=lower").unwrap().passthrough,
            Passthrough::Lower
        );
        assert_eq!(
            parse(b"passthrough=off").unwrap().passthrough,
            Passthrough::Off
        );
        assert!(matches!(
            parse(b"passthrough=all"),
            Err(OptionError::BadValue { .. })
        ));
        assert_eq!(
            parse(b"passthrough"),
            Err(OptionError::MissingValue("passthrough".into()))
        );
    }

    #[test]
    fn selinux_contexts() {
        let o = parse(b"fscontext=a_u:b_r:c_t:s0,defcontext=\"x:y:z:s0\",rootcontext=r:r:r:s0")
            .unwrap();
        let keys: Vec<_> = o.selinux.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["fscontext", "defcontext", "rootcontext"]);
        assert_eq!(o.selinux[1].1, OsString::from("x:y:z:s0"));
        // The last of a repeated option wins, as for every other value.
        let o = parse(b"context=a:b:c:s0,context=\"d:e:f:s0\"").unwrap();
        assert_eq!(o.selinux, vec![("context", OsString::from("d:e:f:s0"))]);
        assert_eq!(
            parse(b"context"),
            Err(OptionError::MissingValue("context".into()))
        );
        for bad_value in [&b"context=\"\""[..], b"context=", b"context=\"a:b\"c\""] {
            assert!(
                matches!(parse(bad_value), Err(OptionError::BadValue { .. })),
                "{}",
                String::from_utf8_lossy(bad_value)
            );
        }
        // A quote left open swallows the rest of the line into the label: refused.
        assert!(parse(b"context=\"a:b,lowerdir=/x").is_err());
    }

    #[test]
    fn valued_overlay_options() {
        let ok = "metacopy=on redirect_dir=on redirect_dir=follow redirect_dir=off redirect_dir \
                  index=on index=off \
                  xino=on xino=off xino=auto xattr_permissions=0 plugins=";
        for o in ok.split_whitespace() {
            assert!(parse(o.as_bytes()).is_ok(), "{o}");
        }
        assert!(parse(b"metacopy=off").unwrap().no_metacopy);
        assert!(parse(b"redirect_dir=off").unwrap().no_redirect);
        assert!(parse(b"redirect_dir=follow").unwrap().no_redirect);
        assert!(
            !parse(b"redirect_dir=off,redirect_dir=on")
                .unwrap()
                .no_redirect
        );
        assert!(!parse(b"metacopy=off,metacopy=on").unwrap().no_metacopy);
        assert_eq!(
            parse(b"xattr_permissions=1").unwrap().xattr_permissions,
            XattrPermissions::Privileged
        );
        let refused = "metacopy=yes redirect_dir=nofollow index=nfs xino=maybe \
                       xattr_permissions=3 plugins=/usr/lib/x.so noxattrs=2 writeback=yes";
        for o in refused.split_whitespace() {
            assert!(
                matches!(parse(o.as_bytes()), Err(OptionError::BadValue { .. })),
                "{o}"
            );
        }
        for name in ["metacopy", "index", "xino", "xattr_permissions"] {
            assert_eq!(
                parse(name.as_bytes()),
                Err(OptionError::MissingValue(name.into()))
            );
        }
    }

    /// `-o` given several times: applied in order, later values win.
    #[test]
    fn repeated_options() {
        let mut o = MountOptions::default();
        o.apply(b"lowerdir=/a,upperdir=/u,workdir=/w").unwrap();
        o.apply(b"volatile").unwrap();
        o.apply(b"lowerdir=/b:/c").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/b"), PathBuf::from("/c")]);
        assert!(o.volatile && o.upper.is_some());
    }
}
