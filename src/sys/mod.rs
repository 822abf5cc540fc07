//! Every system call strata makes, wrapped once: `OwnedFd`/`BorrowedFd` in, `io::Result` out.
//!
//! Paths inside layers are always a single name relative to a held directory fd, opened with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so a symlink stored in a layer is never followed by us.
//! This is the only module allowed to contain `unsafe`.

mod caps;
mod dir;
mod fs;
mod handle;
mod net;
mod process;
mod write;
mod xattr;

pub use caps::limit_bounding_set;
pub use dir::{DirEntry, read_dir, read_dir_open};
pub use fs::*;
pub use handle::*;
pub use net::loopback_up;
pub use process::*;
pub use write::*;
pub use xattr::*;
