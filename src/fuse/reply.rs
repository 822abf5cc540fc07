//! Conversions between the union's types and fuser's, and the one place an error becomes a
//! FUSE reply (`errno`, `answer`).

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileType, INodeNo, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyStatfs,
};

use crate::sys::Stat;
use crate::union::{self, SetTime};

/// The one place an `io::Error` becomes a FUSE error code.
pub(super) fn errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) if code > 0 => Errno::from_i32(code),
        _ => Errno::EIO,
    }
}

/// A timespec (`tv_sec` may be negative, `tv_nsec` is always 0..1e9 forward from it) as a
/// SystemTime: -1.5 s is `{-2, 500_000_000}`.
pub(super) fn time(sec: i64, nsec: i64) -> SystemTime {
    let whole = Duration::from_secs(sec.unsigned_abs());
    let base = if sec >= 0 {
        UNIX_EPOCH + whole
    } else {
        UNIX_EPOCH - whole
    };
    base + Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64)
}

/// The timespec a SETATTR request carried. fuser 0.18 decodes a pre-1970 `{sec, nsec}` as
/// `epoch - (|sec| + nsec)` (a TODO in its time.rs), not `epoch + sec + nsec`: undo exactly
/// that, so -1.5 s (`{-2, 500_000_000}`) is stored as -1.5 s.
pub(super) fn request_timespec(t: SystemTime) -> (i64, i64) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
        Err(e) => {
            let d = e.duration();
            (-(d.as_secs() as i64), d.subsec_nanos() as i64)
        }
    }
}

pub(super) fn kind_of(k: union::FileType) -> FileType {
    use union::FileType as T;
    match k {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The attributes of a negative entry: node id 0 tells the kernel "no such name, and you may
/// remember that for the entry TTL".
pub(super) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

pub(super) fn attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: kind_of(union::FileType::from_raw_mode(st.st_mode)),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// A fuser reply that can answer an errno (every reply type can; fuser has no trait for it).
pub(super) trait ErrorReply {
    fn fail(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {
        $(impl ErrorReply for $t {
            fn fail(self, e: Errno) {
                self.error(e)
            }
        })*
    };
}

error_reply!(
    ReplyAttr,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyStatfs,
    fuser::ReplyWrite
);

/// Replies with `ok(reply, value)`, or with the error's errno: the error arm written once.
pub(super) fn answer<T, R: ErrorReply>(r: io::Result<T>, reply: R, ok: impl FnOnce(R, T)) {
    match r {
        Ok(v) => ok(reply, v),
        Err(e) => reply.fail(errno(e)),
    }
}

pub(super) fn empty(r: io::Result<()>, reply: ReplyEmpty) {
    answer(r, reply, |reply, ()| reply.ok())
}

pub(super) fn set_time(t: fuser::TimeOrNow) -> SetTime {
    match t {
        fuser::TimeOrNow::Now => SetTime::Now,
        fuser::TimeOrNow::SpecificTime(t) => {
            let (sec, nsec) = request_timespec(t);
            SetTime::At(sec, nsec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_keep_their_fraction() {
        let before = |d: f64| UNIX_EPOCH - Duration::from_secs_f64(d);
        // Replies: -1.5 s is one and a half seconds before the epoch, not 2.5 or 0.5.
        assert_eq!(time(-2, 500_000_000), before(1.5));
        assert_eq!(time(-1, 0), before(1.0));
        assert_eq!(
            time(1, 500_000_000),
            UNIX_EPOCH + Duration::from_millis(1500)
        );
        // Requests, as fuser 0.18 hands them over: {-2, 5e8} arrives as epoch - 2.5 s.
        assert_eq!(request_timespec(before(2.5)), (-2, 500_000_000));
        assert_eq!(request_timespec(before(1.0)), (-1, 0));
        assert_eq!(
            request_timespec(UNIX_EPOCH + Duration::from_millis(1500)),
            (1, 500_000_000)
        );
    }
}
