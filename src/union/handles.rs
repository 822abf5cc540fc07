//! Open files and directories: the handles FUSE hands back with each request.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::dircache::Dir;
use super::err;
use super::inode::{self, Node};
use super::readdir::Entry;

/// One open file.
#[derive(Clone)]
pub struct OpenFile {
    pub node: Arc<Node>,
    pub file: Arc<File>,
    /// Opened on a lower copy (or a metacopy's data): such a handle follows a later copy-up.
    pub on_lower: bool,
}

/// What `Union::open` hands back: the handle, and the file behind it for FUSE passthrough.
pub struct Opened {
    pub fh: u64,
    pub file: Arc<File>,
    /// The file is a lower layer's (see `OpenFile::on_lower`).
    pub on_lower: bool,
}

/// A listing snapshot for one open directory.
pub struct DirHandle {
    pub node: Arc<Node>,
    /// The directory copies whose fds stay open while the directory is.
    pub pinned: Vec<Dir>,
    /// Built on the first read from offset 0, rebuilt when a reader rewinds to 0.
    pub entries: Option<Arc<Vec<Entry>>>,
}

pub struct Handles {
    files: DashMap<u64, OpenFile>,
    dirs: DashMap<u64, Arc<Mutex<DirHandle>>>,
    next: AtomicU64,
}

impl Handles {
    pub fn new() -> Self {
        Handles {
            files: inode::table(),
            dirs: inode::table(),
            next: AtomicU64::new(1),
        }
    }

    /// Registers an open file; its node counts one more open.
    pub fn add_file(&self, open: OpenFile) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        open.node.opens.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, open);
        fh
    }

    pub fn file(&self, fh: u64) -> io::Result<OpenFile> {
        self.files
            .get(&fh)
            .map(|h| h.value().clone())
            .ok_or_else(|| err(libc::EBADF))
    }

    /// The open file `fh`, which must belong to node `id` (a handle of another inode is
    /// EBADF, as virtiofsd's `find_handle` checks): a confused or hostile request cannot
    /// truncate or stat one file through another's handle.
    pub fn find(&self, id: u64, fh: u64) -> io::Result<OpenFile> {
        let open = self.file(fh)?;
        if open.node.id != id {
            return Err(err(libc::EBADF));
        }
        Ok(open)
    }

    /// Points a lower handle at the upper copy its node now has.
    pub fn switch_to_upper(&self, fh: u64, upper: Arc<File>) {
        if let Some(mut h) = self.files.get_mut(&fh) {
            h.file = upper;
            h.on_lower = false;
        }
    }

    /// Closes `fh` if it is node `id`'s: a release naming another inode is EBADF and closes
    /// nothing.
    pub fn remove_file(&self, id: u64, fh: u64) -> io::Result<()> {
        match self.files.remove_if(&fh, |_, open| open.node.id == id) {
            Some((_, open)) => {
                open.node.opens.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            None => Err(err(libc::EBADF)),
        }
    }

    pub fn add_dir(&self, h: DirHandle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.dirs.insert(fh, Arc::new(Mutex::new(h)));
        fh
    }

    /// The open directory `fh`, which must be node `id`'s (EBADF otherwise, as for files).
    pub fn dir(&self, id: u64, fh: u64) -> io::Result<Arc<Mutex<DirHandle>>> {
        self.dirs
            .get(&fh)
            .filter(|h| Self::dir_of(h, id))
            .map(|h| h.clone())
            .ok_or_else(|| err(libc::EBADF))
    }

    /// Closes node `id`'s open directory `fh`, unpinning its fds.
    pub fn remove_dir(&self, id: u64, fh: u64) -> io::Result<()> {
        let (_, h) = self
            .dirs
            .remove_if(&fh, |_, h| Self::dir_of(h, id))
            .ok_or_else(|| err(libc::EBADF))?;
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        h.pinned.iter().for_each(Dir::unpin);
        Ok(())
    }

    fn dir_of(h: &Mutex<DirHandle>, id: u64) -> bool {
        h.lock().unwrap_or_else(|p| p.into_inner()).node.id == id
    }
}
