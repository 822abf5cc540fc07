//! Resource limits: one cgroup per container, v2 where the unified hierarchy has the
//! controllers, v1 otherwise (hybrid hosts keep memory/cpu/pids on v1).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Limits, RunError};

const ROOT: &str = "/sys/fs/cgroup";

/// A created cgroup (one directory per v1 controller, or one v2 directory).
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    version: Version,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    V1,
    V2,
}

fn write(path: &Path, value: &str) -> Result<(), RunError> {
    fs::write(path, value).map_err(|cause| RunError::Cgroup {
        path: path.to_owned(),
        cause,
    })
}

/// Which hierarchy holds the controllers we need.
fn detect() -> Option<(Version, PathBuf)> {
    let unified = Path::new(ROOT).join("cgroup.controllers");
    if let Ok(c) = fs::read_to_string(&unified) {
        let have: Vec<&str> = c.split_whitespace().collect();
        if ["memory", "cpu", "pids"].iter().all(|k| have.contains(k)) {
            return Some((Version::V2, PathBuf::from(ROOT)));
        }
    }
    Path::new(ROOT)
        .join("memory")
        .is_dir()
        .then(|| (Version::V1, PathBuf::from(ROOT)))
}

impl Cgroup {
    /// Creates cgroup `name` with `limits`. Ok(None) when there is no cgroup we may create
    /// (rootless without delegation): the caller says so and runs without limits.
    pub fn create(name: &str, limits: &Limits) -> Result<Option<Cgroup>, RunError> {
        let Some((version, root)) = detect() else {
            return Ok(None);
        };
        let mut cg = Cgroup {
            dirs: Vec::new(),
            version,
        };
        let made = match version {
            Version::V2 => {
                let parent = root.join("strata");
                let _ = fs::create_dir(&parent);
                let _ = fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids");
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
                cg.mkdir(parent.join(name))
            }
            Version::V1 => ["memory", "cpu", "pids"].iter().try_for_each(|c| {
                let parent = root.join(c).join("strata");
                let _ = fs::create_dir(&parent);
                cg.mkdir(parent.join(name))
            }),
        };
        match made {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied) => {
                cg.remove();
                return Ok(None);
            }
            Err(cause) => {
                cg.remove();
                return Err(RunError::Cgroup {
                    path: root.join("strata").join(name),
                    cause,
                });
            }
        }
        if let Err(e) = cg.apply(limits) {
            cg.remove();
            return Err(e);
        }
        Ok(Some(cg))
    }

    fn mkdir(&mut self, dir: PathBuf) -> io::Result<()> {
        fs::create_dir(&dir)?;
        self.dirs.push(dir);
        Ok(())
    }

    fn file(&self, controller: &str, name: &str) -> PathBuf {
        match self.version {
            Version::V2 => self.dirs[0].join(name),
            Version::V1 => {
                let dir = self
                    .dirs
                    .iter()
                    .find(|d| {
                        d.parent()
                            .and_then(Path::parent)
                            .is_some_and(|p| p.ends_with(controller))
                    })
                    .unwrap_or(&self.dirs[0]);
                dir.join(name)
            }
        }
    }

    fn apply(&self, l: &Limits) -> Result<(), RunError> {
        const PERIOD: u64 = 100_000;
        match self.version {
            Version::V2 => {
                if let Some(m) = l.memory {
                    write(&self.file("memory", "memory.max"), &m.to_string())?;
                    let _ = fs::write(self.file("memory", "memory.swap.max"), "0");
                }
                if let Some(c) = l.cpus {
                    let quota = ((c * PERIOD as f64) as u64).max(1000);
                    write(&self.file("cpu", "cpu.max"), &format!("{quota} {PERIOD}"))?;
                }
                if let Some(p) = l.pids {
                    write(&self.file("pids", "pids.max"), &p.to_string())?;
                }
            }
            Version::V1 => {
                if let Some(m) = l.memory {
                    write(
                        &self.file("memory", "memory.limit_in_bytes"),
                        &m.to_string(),
                    )?;
                    // Swap off: memory+swap capped at the same value, where swap is accounted.
                    let _ = fs::write(
                        self.file("memory", "memory.memsw.limit_in_bytes"),
                        m.to_string(),
                    );
                    let _ = fs::write(self.file("memory", "memory.swappiness"), "0");
                }
                if let Some(c) = l.cpus {
                    let quota = ((c * PERIOD as f64) as u64).max(1000);
                    write(&self.file("cpu", "cpu.cfs_period_us"), &PERIOD.to_string())?;
                    write(&self.file("cpu", "cpu.cfs_quota_us"), &quota.to_string())?;
                }
                if let Some(p) = l.pids {
                    write(&self.file("pids", "pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(())
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
        let (file, key) = match self.version {
            Version::V2 => (self.file("memory", "memory.events"), "oom_kill"),
            Version::V1 => (self.file("memory", "memory.oom_control"), "oom_kill"),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
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
