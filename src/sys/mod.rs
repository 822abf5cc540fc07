//! System-call wrappers: `OwnedFd`/`BorrowedFd` in, `io::Result` out. Every call that needs
//! `unsafe` is here (this is the only module allowed to contain it), and so is every call the
//! union makes on a layer. Safe calls elsewhere (the image store's and the launcher's rustix
//! calls on their own files) use rustix directly.
//!
//! Paths inside layers are always a single name relative to a held directory fd, opened with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so a symlink stored in a layer is never followed by us.
//! Paths inside a container root go through `resolve`: followed as the container will see them,
//! never out of that root; mounts onto them go through `mount`, on the fds.

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
pub use dir::{DirEntry, read_dir, read_dir_open};
pub use fs::*;
pub use handle::*;
pub use mount::*;
pub use net::loopback_up;
pub use process::*;
pub use resolve::{Make, create_in_root, open_in_root};
pub use write::*;
pub use xattr::*;
