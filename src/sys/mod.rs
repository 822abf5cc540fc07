//! Every system call strata makes, wrapped once: `OwnedFd`/`BorrowedFd` in, `io::Result` out.
//!
//! Paths inside layers are always a single name relative to a held directory fd, opened with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so a symlink stored in a layer is never followed by us.
//! Paths inside a container root go through `resolve`: followed as the container will see them,
//! never out of that root; mounts onto them go through `mount`, on the fds.
//! This is the only module allowed to contain `unsafe`.

pub mod caps;
mod dir;
mod fs;
mod handle;
mod mount;
mod net;
mod process;
mod resolve;
mod write;
mod xattr;

pub use caps::limit_bounding_set;
pub use dir::{DirEntry, read_dir};
pub use fs::*;
pub use handle::*;
pub use mount::*;
pub use net::loopback_up;
pub use process::*;
pub use resolve::{Make, create_in_root, open_in_root};
pub use write::*;
pub use xattr::*;
