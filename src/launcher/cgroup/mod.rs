//! Resource limits: one cgroup per container, v2 where the unified hierarchy has the
//! controllers, v1 otherwise (hybrid hosts keep memory/cpu/pids on v1). The two hierarchies
//! are two small implementations of [`Hierarchy`], chosen once by [`detect`], with the cgroup
//! root passed in so both are tested on temp dirs.

mod v1;
mod v2;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Limits, RunError};

pub use v1::V1;
pub use v2::V2;

/// The host's cgroup root.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The controllers a container's limits need.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// CFS period for `--cpus`: quota = cpus x period.
const CPU_PERIOD: u64 = 100_000;

/// What differs between cgroup v1 and v2.
pub trait Hierarchy: Send + Sync {
    /// Makes the parents of a container's cgroup ready (best effort) and returns the
    /// directories to create for cgroup `name`.
    fn prepare(&self, name: &str) -> Vec<PathBuf>;
    /// Writes `limits` into the created directories.
    fn apply(&self, dirs: &[PathBuf], limits: &Limits) -> Result<(), RunError>;
    /// The file holding the `oom_kill` count, and the directory it is in.
    fn oom_file(&self, dirs: &[PathBuf]) -> PathBuf;
}

/// Which hierarchy under `root` holds the controllers we need.
pub fn detect(root: &Path) -> Option<Box<dyn Hierarchy>> {
    if let Ok(c) = fs::read_to_string(root.join("cgroup.controllers")) {
        let have: Vec<&str> = c.split_whitespace().collect();
        if CONTROLLERS.iter().all(|k| have.contains(k)) {
            return Some(Box::new(V2::new(root)));
        }
    }
    root.join("memory")
        .is_dir()
        .then(|| Box::new(V1::new(root)) as Box<dyn Hierarchy>)
}

/// Removes the cgroups (`strata-PID`) of runs killed with SIGKILL, which could not remove
/// their own: the pid is gone and the cgroup empty (rmdir refuses one with processes).
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let pid = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("strata-"))
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        let Some(pid) = pid else { continue };
        if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
            let _ = fs::remove_dir(e.path());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), RunError> {
    fs::write(path, value).map_err(|cause| RunError::Cgroup {
        path: path.to_owned(),
        cause,
    })
}

fn cpu_quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD as f64) as u64).max(1000)
}

/// A created cgroup (one directory per v1 controller, or one v2 directory), removed on drop.
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    hierarchy: Box<dyn Hierarchy>,
}

impl Cgroup {
    /// Creates cgroup `name` with `limits` on the host. Ok(None) when there is no cgroup we
    /// may create (rootless without delegation): the caller says so and runs without limits.
    pub fn create(name: &str, limits: &Limits) -> Result<Option<Cgroup>, RunError> {
        Self::create_in(Path::new(ROOT), name, limits)
    }

    /// [`Cgroup::create`] under another cgroup root.
    pub fn create_in(root: &Path, name: &str, limits: &Limits) -> Result<Option<Cgroup>, RunError> {
        let Some(hierarchy) = detect(root) else {
            return Ok(None);
        };
        let wanted = hierarchy.prepare(name);
        for parent in wanted.iter().filter_map(|d| d.parent()) {
            sweep(parent);
        }
        let mut cg = Cgroup {
            dirs: Vec::new(),
            hierarchy,
        };
        for dir in wanted {
            match fs::create_dir(&dir) {
                Ok(()) => cg.dirs.push(dir),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
                Err(cause) => return Err(RunError::Cgroup { path: dir, cause }),
            }
        }
        cg.hierarchy.apply(&cg.dirs, limits)?;
        Ok(Some(cg))
    }

    /// Moves process `pid` (and so its future children) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), RunError> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer struck inside the cgroup.
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.hierarchy.oom_file(&self.dirs))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Removes the cgroup directories; processes of the container may take a moment to leave.
    pub fn remove(&mut self) {
        for d in self.dirs.drain(..).rev() {
            for _ in 0..200 {
                match fs::remove_dir(&d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests;
