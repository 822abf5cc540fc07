//! `strata mount`: check the layer stack, mount, serve; in the background by default (as
//! fuse-overlayfs does), returning only once the mount is live.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::fuse::StrataFs;
use crate::options::{MountOptions, OptionError};
use crate::sys::{self, Forked};
use crate::union::{Stack, Union, UnionOptions};

/// Everything that can stop a mount, each naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("no lower layers given (use --lower DIR or -o lowerdir=DIR[:DIR...])")]
    NoLayers,
    #[error("{role} {path}: {cause}")]
    Path {
        role: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("{role} {path}: not a directory")]
    NotADir { role: &'static str, path: PathBuf },
    #[error("mountpoint {0}: not empty")]
    MountpointNotEmpty(PathBuf),
    #[error("lower layer {0} is listed twice")]
    Duplicate(PathBuf),
    #[error("{a_role} {a} and {b_role} {b} overlap: one is inside the other")]
    Overlap {
        a_role: &'static str,
        a: PathBuf,
        b_role: &'static str,
        b: PathBuf,
    },
    #[error("upperdir and workdir go together: give both or neither")]
    UpperWorkPair,
    #[error("workdir {work} is not on the same filesystem as upperdir {upper}")]
    WorkOtherFs { work: PathBuf, upper: PathBuf },
    #[error(
        "workdir {0}: a volatile mount of this upper did not stop cleanly ({0}/work/incompat/volatile \
         is there), so its writes may be incomplete; remove that directory to mount anyway"
    )]
    VolatileLeftover(PathBuf),
    #[error("mounting on {path}: {cause}")]
    Mount { path: PathBuf, cause: io::Error },
    #[error("starting the background daemon: {0}")]
    Daemon(io::Error),
    #[error("{0}")]
    Child(String),
}

/// A mount as asked for on the command line.
pub struct MountRequest {
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub threads: usize,
}

/// The checked stack, with canonical paths.
struct Checked {
    lowers: Vec<PathBuf>,
    upper: Option<(PathBuf, PathBuf)>,
    mountpoint: PathBuf,
}

fn canonical_dir(role: &'static str, path: &Path) -> Result<PathBuf, MountError> {
    let p = std::fs::canonicalize(path).map_err(|cause| MountError::Path {
        role,
        path: path.to_owned(),
        cause,
    })?;
    if !p.is_dir() {
        return Err(MountError::NotADir {
            role,
            path: path.to_owned(),
        });
    }
    Ok(p)
}

fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn check(req: &MountRequest) -> Result<Checked, MountError> {
    let o = &req.options;
    if o.lowers.is_empty() {
        return Err(MountError::NoLayers);
    }
    let mut lowers = Vec::new();
    for l in &o.lowers {
        let p = canonical_dir("lower layer", l)?;
        if lowers.contains(&p) {
            return Err(MountError::Duplicate(l.clone()));
        }
        lowers.push(p);
    }
    let upper = match (&o.upper, &o.work) {
        (None, None) => None,
        (Some(u), Some(w)) => {
            let up = canonical_dir("upperdir", u)?;
            let wp = canonical_dir("workdir", w)?;
            let overlap = |a_role, a: &Path, b_role, b: &Path| MountError::Overlap {
                a_role,
                a: a.to_owned(),
                b_role,
                b: b.to_owned(),
            };
            if nested(&up, &wp) {
                return Err(overlap("upperdir", u, "workdir", w));
            }
            for (l, given) in lowers.iter().zip(&o.lowers) {
                if nested(&up, l) {
                    return Err(overlap("upperdir", u, "lower layer", given));
                }
                if nested(&wp, l) {
                    return Err(overlap("workdir", w, "lower layer", given));
                }
            }
            let dev = |p: &Path, role| {
                std::fs::metadata(p)
                    .map(|m| m.dev())
                    .map_err(|cause| MountError::Path {
                        role,
                        path: p.to_owned(),
                        cause,
                    })
            };
            if volatile_marker_exists(&wp) {
                return Err(MountError::VolatileLeftover(w.clone()));
            }
            if dev(&up, "upperdir")? != dev(&wp, "workdir")? {
                return Err(MountError::WorkOtherFs {
                    work: w.clone(),
                    upper: u.clone(),
                });
            }
            Some((up, wp))
        }
        _ => return Err(MountError::UpperWorkPair),
    };
    let mountpoint = canonical_dir("mountpoint", &req.mountpoint)?;
    let mut entries = std::fs::read_dir(&mountpoint).map_err(|cause| MountError::Path {
        role: "mountpoint",
        path: req.mountpoint.clone(),
        cause,
    })?;
    if entries.next().is_some() {
        return Err(MountError::MountpointNotEmpty(req.mountpoint.clone()));
    }
    // Serving a mount from inside one of its own layers would make lookups recurse into it.
    let upper_paths = upper.iter().flat_map(|(u, w)| [u, w]);
    for layer in lowers.iter().chain(upper_paths) {
        if mountpoint.starts_with(layer) {
            return Err(MountError::Overlap {
                a_role: "mountpoint",
                a: req.mountpoint.clone(),
                b_role: "layer",
                b: layer.clone(),
            });
        }
    }
    Ok(Checked {
        lowers,
        upper,
        mountpoint,
    })
}

fn open_stack(c: &Checked) -> Result<Stack, MountError> {
    let open = |role, p: &Path| {
        sys::open_root(p).map_err(|cause| MountError::Path {
            role,
            path: p.to_owned(),
            cause,
        })
    };
    let mut lowers = Vec::new();
    for l in &c.lowers {
        lowers.push(open("lower layer", l)?);
    }
    let (upper, work) = match &c.upper {
        Some((u, w)) => (Some(open("upperdir", u)?), Some(open("workdir", w)?)),
        None => (None, None),
    };
    Ok(Stack {
        upper,
        work,
        lowers,
    })
}

fn fuse_config(req: &MountRequest, has_upper: bool) -> Config {
    let o = &req.options;
    let fsname = o.fsname.clone().unwrap_or_else(|| OsString::from("strata"));
    let mut opts = vec![
        MountOption::FSName(fsname.to_string_lossy().into_owned()),
        MountOption::Subtype("strata".into()),
        // The kernel checks permissions against the merged attributes, as overlayfs does.
        MountOption::DefaultPermissions,
        if o.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if o.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
    ];
    if o.read_only || !has_upper {
        opts.push(MountOption::RO);
    }
    if o.noexec {
        opts.push(MountOption::NoExec);
    }
    if o.noatime {
        opts.push(MountOption::NoAtime);
    }
    // The kernel labels the mount itself where SELinux runs; elsewhere there is nothing to
    // label with and it would refuse the options, so they are accepted and left out.
    if Path::new("/sys/fs/selinux/enforce").exists() {
        for (key, label) in &o.selinux {
            let label = label.to_string_lossy();
            opts.push(MountOption::CUSTOM(format!("{key}=\"{label}\"")));
        }
    }
    let mut cfg = Config::default();
    cfg.mount_options = opts;
    // As root, everyone may use the mount, as with kernel overlayfs (a rootful container runs
    // processes as many users); the kernel still checks each access (default_permissions).
    cfg.acl = if o.allow_other || sys::is_root() {
        SessionACL::All
    } else if o.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(req.threads.max(1));
    cfg.clone_fd = true;
    cfg
}

/// Mounts and serves. In the background mode the calling process exits inside (0 once the
/// mount is live, 1 with the daemon's error) and this returns only in the daemon.
pub fn run(req: MountRequest) -> Result<(), MountError> {
    let checked = check(&req)?;
    let stack = open_stack(&checked)?;
    if req.foreground {
        return serve(&req, &checked, stack, &mut None);
    }
    let (rd, wr) = sys::pipe().map_err(MountError::Daemon)?;
    match sys::fork().map_err(MountError::Daemon)? {
        Forked::Parent(_) => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => std::process::exit(0),
                None if msg.is_empty() => {
                    Err(MountError::Child("the daemon died while mounting".into()))
                }
                None => Err(MountError::Child(msg)),
            }
        }
        Forked::Child => {
            drop(rd);
            let _ = sys::setsid();
            // serve() takes the pipe (closing it tells the caller the mount is live); if it
            // fails before that, the error goes back through the pipe.
            let mut report = Some(std::fs::File::from(wr));
            let r = serve(&req, &checked, stack, &mut report);
            if let (Err(e), Some(mut pipe)) = (&r, report) {
                let _ = write!(pipe, "{e}");
            }
            r
        }
    }
}

/// The options of `o` the union itself honours.
pub fn union_options(o: &MountOptions) -> UnionOptions {
    UnionOptions {
        whiteout: o.whiteout,
        no_metacopy: o.no_metacopy,
        userxattr: o.userxattr,
        static_nlink: o.static_nlink,
        no_redirect: o.no_redirect,
        xattr_permissions: o.xattr_permissions,
        dir_fds: None,
    }
}

/// The filesystem and FUSE configuration for a checked stack.
fn filesystem(
    req: &MountRequest,
    c: &Checked,
    stack: Stack,
) -> Result<(StrataFs, Config), MountError> {
    // Every directory the kernel holds may want an fd: take all the fds we may have, then
    // size the directory fd cache from that (see union::dircache).
    let (before, now, hard) = sys::raise_nofile();
    let o = &req.options;
    let opts = union_options(o);
    let union = Union::with_options(stack, &opts).map_err(|cause| MountError::Path {
        role: "layer stack",
        path: c.lowers[0].clone(),
        cause,
    })?;
    let show = |n: u64| {
        if n == u64::MAX {
            "unlimited".to_owned()
        } else {
            n.to_string()
        }
    };
    log::info!(
        "RLIMIT_NOFILE: soft limit {} (was {}, hard limit {}); directory fd cache: {} fds{}",
        show(now),
        show(before),
        show(hard),
        union.dir_fd_stats().capacity,
        if std::env::var_os(crate::union::DIR_FDS_ENV).is_some() {
            format!(" (set by {})", crate::union::DIR_FDS_ENV)
        } else {
            String::new()
        }
    );
    let has_upper = union.has_upper();
    // Every change to the merged view goes through this daemon (layers must not change under
    // a mount, as with kernel overlayfs), so the kernel may cache entries and attributes for
    // good, with or without an upper.
    let ttl = req.options.timeout.unwrap_or(Duration::from_secs(86400));
    let fs = StrataFs::new(union, ttl, sys::is_root(), o.ids.clone()).tune(o);
    Ok((fs, fuse_config(req, has_upper)))
}

fn serve(
    req: &MountRequest,
    c: &Checked,
    stack: Stack,
    report: &mut Option<std::fs::File>,
) -> Result<(), MountError> {
    let (fs, cfg) = filesystem(req, c, stack)?;
    let mount_err = |cause| MountError::Mount {
        path: req.mountpoint.clone(),
        cause,
    };
    // Marked before the mount is visible (after the union cleared the workdir's staging
    // area), unmarked again if it never comes up: that mount lost nothing.
    let volatile = match (&c.upper, req.options.volatile) {
        (Some((upper, work)), true) => {
            mark_volatile(work).map_err(|cause| MountError::Path {
                role: "workdir",
                path: work.clone(),
                cause,
            })?;
            Some((upper.clone(), work.clone()))
        }
        _ => None,
    };
    let mut session = match fuser::Session::new(fs, &c.mountpoint, &cfg) {
        Ok(s) => s,
        Err(e) => {
            if let Some((_, work)) = &volatile {
                let _ = std::fs::remove_dir(volatile_marker(work));
            }
            return Err(mount_err(e));
        }
    };
    stop_on_signal(&mut session, &c.mountpoint, volatile.clone())?;
    if let Some(mut report) = report.take() {
        let _ = report.write_all(b"ok");
        drop(report);
        let _ = sys::stdio_to_devnull();
    }
    let r = session.run().map_err(mount_err);
    if r.is_ok() {
        clean_stop(volatile.as_ref());
    }
    r
}

/// A clean stop: once the upper is on disk nothing was lost, so the next mount may go on.
fn clean_stop(volatile: Option<&(PathBuf, PathBuf)>) {
    if let Some((upper, work)) = volatile
        && sync_dir(upper).is_ok()
    {
        let _ = std::fs::remove_dir(volatile_marker(work));
    }
}

/// How long a stop request waits for the kernel to end the session after the unmount.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// SIGINT/SIGTERM/SIGHUP unmount; the session then ends by itself once the kernel drops the
/// mount. A copy of the mount in another mount namespace (one made while it was mounted)
/// keeps it alive for as long as that namespace lives, so a stop request that has not ended
/// the session after `STOP_GRACE`, or a second signal, ends the daemon: those copies then
/// answer ENOTCONN, as fuse-overlayfs's do. Every write is already in the upper by then.
fn stop_on_signal(
    session: &mut fuser::Session<StrataFs>,
    mountpoint: &Path,
    volatile: Option<(PathBuf, PathBuf)>,
) -> Result<(), MountError> {
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(MountError::Daemon)?;
    let mountpoint = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if signals.forever().next().is_none() {
            return;
        }
        if unmounter.unmount().is_err() {
            let _ = sys::unmount(&mountpoint, true);
        }
        let until = Instant::now() + STOP_GRACE;
        while Instant::now() < until && signals.pending().next().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        clean_stop(volatile.as_ref());
        std::process::exit(0);
    });
    Ok(())
}

/// The kernel's marker of a volatile mount, `WORKDIR/work/incompat/volatile`: while it is
/// there the upper may miss writes the mount acknowledged.
fn volatile_marker(work: &Path) -> PathBuf {
    work.join("work/incompat/volatile")
}

fn volatile_marker_exists(work: &Path) -> bool {
    std::fs::symlink_metadata(volatile_marker(work)).is_ok()
}

fn mark_volatile(work: &Path) -> io::Result<()> {
    std::fs::create_dir_all(volatile_marker(work))
}

/// syncfs(2) of the filesystem holding `dir`.
fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(io::Error::from)
}

/// Mounts and serves from threads of the calling process (for `strata run`, whose mount lives
/// in the container's mount namespace). Unmounted when the returned session is dropped.
pub fn spawn(req: &MountRequest) -> Result<fuser::BackgroundSession, MountError> {
    let checked = check(req)?;
    let stack = open_stack(&checked)?;
    let (fs, cfg) = filesystem(req, &checked, stack)?;
    let mount_err = |cause| MountError::Mount {
        path: req.mountpoint.clone(),
        cause,
    };
    fuser::Session::new(fs, &checked.mountpoint, &cfg)
        .and_then(|s| s.spawn())
        .map_err(mount_err)
}

/// `strata umount`: unmount as root directly, otherwise through fusermount3.
pub fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    match sys::unmount(path, lazy) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let status = cmd.arg(path).status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u failed ({status})"
                )))
            }
        }
        Err(e) => Err(e),
    }
}
