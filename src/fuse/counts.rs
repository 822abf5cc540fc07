//! A counter per FUSE request type, for seeing what a workload costs in round trips.
//! Off unless `STRATA_OP_COUNTS` is set: `1` prints the table to stderr at unmount (with
//! `-f`), a path appends it to that file (the background daemon has no stderr).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that turns counting on.
pub const OP_COUNTS_ENV: &str = "STRATA_OP_COUNTS";

macro_rules! ops {
    ($($op:ident => $name:literal),* $(,)?) => {
        /// The requests strata answers (the rest get fuser's ENOSYS, and the kernel stops
        /// sending them).
        #[derive(Clone, Copy, Debug)]
        pub enum Op { $($op),* }
        const NAMES: &[&str] = &[$($name),*];
    };
}

ops!(
    Lookup => "LOOKUP", Forget => "FORGET", Getattr => "GETATTR", Setattr => "SETATTR",
    Readlink => "READLINK", Mknod => "MKNOD", Mkdir => "MKDIR", Unlink => "UNLINK",
    Rmdir => "RMDIR", Symlink => "SYMLINK", Rename => "RENAME", Link => "LINK",
    Open => "OPEN", Read => "READ", Write => "WRITE", Flush => "FLUSH", Release => "RELEASE",
    Fsync => "FSYNC", Opendir => "OPENDIR", Readdir => "READDIR", Readdirplus => "READDIRPLUS",
    Releasedir => "RELEASEDIR", Fsyncdir => "FSYNCDIR", Statfs => "STATFS",
    Getxattr => "GETXATTR", Listxattr => "LISTXATTR", Setxattr => "SETXATTR",
    Removexattr => "REMOVEXATTR", Create => "CREATE", Fallocate => "FALLOCATE",
    CopyFileRange => "COPY_FILE_RANGE",
);

pub struct OpCounts {
    counts: Vec<AtomicU64>,
    /// Where the table goes: None for stderr.
    file: Option<std::path::PathBuf>,
}

impl OpCounts {
    /// Counting as `STRATA_OP_COUNTS` asks, or None (the default: nothing counted).
    pub fn from_env() -> Option<Self> {
        let v = std::env::var_os(OP_COUNTS_ENV)?;
        let file = match v.as_encoded_bytes() {
            b"" | b"0" => return None,
            b"1" => None,
            _ => Some(std::path::PathBuf::from(v)),
        };
        Some(OpCounts {
            counts: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            file,
        })
    }

    pub fn add(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One line per request type seen, most frequent first, and the total.
    pub fn table(&self) -> String {
        let mut rows: Vec<(u64, &str)> = NAMES
            .iter()
            .zip(&self.counts)
            .map(|(n, c)| (c.load(Ordering::Relaxed), *n))
            .filter(|(c, _)| *c > 0)
            .collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let total: u64 = rows.iter().map(|r| r.0).sum();
        let mut s = String::from("strata: FUSE requests served\n");
        for (c, n) in rows {
            s.push_str(&format!("{n:>16} {c}\n"));
        }
        s.push_str(&format!("{:>16} {total}\n", "total"));
        s
    }

    /// Writes the table where `STRATA_OP_COUNTS` said (at unmount).
    pub fn report(&self) {
        let t = self.table();
        let r = match &self.file {
            None => std::io::stderr().write_all(t.as_bytes()),
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .and_then(|mut f| f.write_all(t.as_bytes())),
        };
        if let Err(e) = r {
            log::warn!("{OP_COUNTS_ENV}: writing the request counts: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_counted_requests_most_frequent_first() {
        let c = OpCounts {
            counts: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            file: None,
        };
        c.add(Op::Getattr);
        c.add(Op::Lookup);
        c.add(Op::Lookup);
        let t = c.table();
        let lines: Vec<&str> = t.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "strata: FUSE requests served",
                "LOOKUP 2",
                "GETATTR 1",
                "total 3"
            ]
        );
        assert_eq!(NAMES.len(), Op::CopyFileRange as usize + 1);
    }
}
