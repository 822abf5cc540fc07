//! Paths inside a container root, resolved as if that root were `/`.
//!
//! The kernel resolves a symlink stored in an image (`data -> /etc/x`, `a -> ../../..`) from
//! the process's own root, the host's, unless told otherwise: `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` relative to a held fd on the container root keeps every absolute
//! target and every `..` inside it. What is missing is created one component at a time,
//! relative to the fd of its parent; a dangling symlink on the way is followed by hand, inside
//! the root, as runc does (the bind lands on the link's target in the root, never the host's).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// What to create at the end of a path that is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Make {
    Dir,
    File,
}

/// The kernel's own limit on symlinks in one resolution.
const MAX_LINKS: usize = 40;

/// Splits a container path into its names (`.` and empty ones dropped, `..` kept: it is the
/// kernel's to resolve, against what the links really are).
fn names(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

fn joined(names: &[&[u8]]) -> Vec<u8> {
    if names.is_empty() {
        b".".to_vec()
    } else {
        names.join(&b'/')
    }
}

/// An `O_PATH` fd on `path` inside `root` (absolute or not, it starts at `root`): symlinks,
/// the final one too, are followed but never out of `root`; magic links (`/proc/self/root`)
/// are refused.
pub fn open_in_root(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let path = joined(&names(path));
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            OsStr::from_bytes(&path),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // EAGAIN: a rename raced with a `..`; the kernel asks to try again.
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            r => return Ok(r?),
        }
    }
}

/// [`open_in_root`], creating what is missing: directories on the way and `last` at the end
/// (mode 0755 / 0644 before the umask). Fails with ENOTDIR or EISDIR when what exists at the
/// end is not the kind asked for.
pub fn create_in_root(root: BorrowedFd<'_>, path: &[u8], last: Make) -> io::Result<OwnedFd> {
    let mut want: Vec<Vec<u8>> = names(path).into_iter().map(<[u8]>::to_vec).collect();
    let mut links = 0;
    // Every round creates a component, follows a link or ends; a concurrent rename can only
    // make it go round again, not forever.
    for _ in 0..4096 {
        let refs: Vec<&[u8]> = want.iter().map(Vec::as_slice).collect();
        let (found, parent) = longest_prefix(root, &refs)?;
        if found == want.len() {
            return check_kind(parent, last);
        }
        let name = OsStr::from_bytes(&want[found]);
        match rustix::fs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            // A link to something missing: splice its target in, resolved from the root
            // (absolute) or from its directory (relative), and go round again.
            Ok(fd)
                if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
                    == FileType::Symlink =>
            {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())?.into_bytes();
                let base = if target.starts_with(b"/") { 0 } else { found };
                let mut next: Vec<Vec<u8>> = want[..base].to_vec();
                next.extend(names(&target).into_iter().map(<[u8]>::to_vec));
                next.extend(want[found + 1..].iter().cloned());
                want = next;
            }
            // Appeared meanwhile: resolve again.
            Ok(_) => {}
            Err(rustix::io::Errno::NOENT) => {
                let made = if found + 1 == want.len() && last == Make::File {
                    super::create_file_at(parent.as_fd(), name, 0o644, libc::O_WRONLY).map(drop)
                } else {
                    super::mkdir_at(parent.as_fd(), name, 0o755)
                };
                match made {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    _ => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// How many leading names of `want` resolve inside `root`, and the fd of the last of them.
fn longest_prefix(root: BorrowedFd<'_>, want: &[&[u8]]) -> io::Result<(usize, OwnedFd)> {
    let mut n = want.len();
    loop {
        match open_in_root(root, &joined(&want[..n])) {
            Ok(fd) => return Ok((n, fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && n > 0 => n -= 1,
            Err(e) => return Err(e),
        }
    }
}

fn check_kind(fd: OwnedFd, want: Make) -> io::Result<OwnedFd> {
    let is_dir = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Directory;
    match (want, is_dir) {
        (Make::Dir, false) => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        (Make::File, true) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
        _ => Ok(fd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let fd = crate::sys::open_root(&root).unwrap();
        (dir, root, fd)
    }

    #[test]
    fn dangling_links_are_followed_inside_the_root() {
        let (dir, root, fd) = setup();
        let outside = dir.path().join("victim");
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../../../../../../../victim2", root.join("rel")).unwrap();
        create_in_root(fd.as_fd(), b"/abs", Make::File).unwrap();
        create_in_root(fd.as_fd(), b"rel/x/y", Make::Dir).unwrap();
        assert!(!outside.exists());
        assert!(root.join(outside.strip_prefix("/").unwrap()).is_file());
        assert!(root.join("victim2/x/y").is_dir());
        assert!(!dir.path().join("victim2").exists());
    }

    #[test]
    fn middle_links_and_dotdot_stay_inside() {
        let (dir, root, fd) = setup();
        symlink("/etc", root.join("a")).unwrap();
        create_in_root(fd.as_fd(), b"/a/b/../c", Make::Dir).unwrap();
        assert!(root.join("etc/c").is_dir() && root.join("etc/b").is_dir());
        // `..` above the root is the root.
        create_in_root(fd.as_fd(), b"../../../d", Make::Dir).unwrap();
        assert!(root.join("d").is_dir());
        assert!(!dir.path().join("d").exists());
        let got = open_in_root(fd.as_fd(), b"/a/c").unwrap();
        let want = rustix::fs::stat(root.join("etc/c")).unwrap();
        assert_eq!(rustix::fs::fstat(&got).unwrap().st_ino, want.st_ino);
    }

    #[test]
    fn loops_and_wrong_kinds_are_errors() {
        let (_dir, root, fd) = setup();
        symlink("l2", root.join("l1")).unwrap();
        symlink("/l1", root.join("l2")).unwrap();
        std::fs::write(root.join("f"), b"").unwrap();
        let errno = |r: io::Result<OwnedFd>| r.err().and_then(|e| e.raw_os_error());
        assert_eq!(
            errno(create_in_root(fd.as_fd(), b"/l1", Make::File)),
            Some(libc::ELOOP)
        );
        assert_eq!(
            errno(create_in_root(fd.as_fd(), b"/f", Make::Dir)),
            Some(libc::ENOTDIR)
        );
        assert_eq!(
            errno(create_in_root(fd.as_fd(), b"/f/x", Make::Dir)),
            Some(libc::ENOTDIR)
        );
        assert_eq!(
            errno(create_in_root(fd.as_fd(), b"/etc", Make::File)),
            Some(libc::EISDIR)
        );
        // A magic link is refused: /proc/self/root would lead out of any root.
        let host = crate::sys::open_root(std::path::Path::new("/")).unwrap();
        assert_eq!(
            errno(open_in_root(host.as_fd(), b"/proc/self/root/etc")),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn a_component_swapped_meanwhile_never_leads_out() {
        let (dir, root, fd) = setup();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::create_dir(root.join("x")).unwrap();
        symlink(&outside, root.join("s")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, root) = (stop.clone(), root.clone());
            // x and s trade places (a directory, a link out of the root) as fast as they can.
            std::thread::spawn(move || {
                let dirfd = crate::sys::open_root(&root).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let flags = rustix::fs::RenameFlags::EXCHANGE;
                    rustix::fs::renameat_with(&dirfd, "x", &dirfd, "s", flags).unwrap();
                }
            })
        };
        for i in 0..2000 {
            let _ = create_in_root(fd.as_fd(), format!("x/d{i}/e").as_bytes(), Make::Dir);
            let _ = create_in_root(fd.as_fd(), format!("x/f{i}").as_bytes(), Make::File);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        let leaked: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(leaked.is_empty(), "created outside the root: {leaked:?}");
    }
}
