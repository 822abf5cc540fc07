//! cgroup v1: one directory per controller (memory, cpu, pids), each in its own hierarchy.

use std::fs;
use std::path::{Path, PathBuf};

use super::{CONTROLLERS, CPU_PERIOD, Hierarchy, cpu_quota, write};
use crate::launcher::{Limits, RunError};

pub struct V1 {
    root: PathBuf,
}

impl V1 {
    pub fn new(root: &Path) -> V1 {
        V1 {
            root: root.to_owned(),
        }
    }

    /// The container's directory in `controller`'s hierarchy (`ROOT/controller/strata/NAME`).
    fn dir<'a>(&self, dirs: &'a [PathBuf], controller: &str) -> Option<&'a Path> {
        let parent = self.root.join(controller).join("strata");
        dirs.iter()
            .find(|d| d.parent() == Some(parent.as_path()))
            .map(PathBuf::as_path)
    }

    fn file(&self, dirs: &[PathBuf], controller: &str, name: &str) -> PathBuf {
        self.dir(dirs, controller)
            .map_or_else(PathBuf::new, |d| d.join(name))
    }
}

impl Hierarchy for V1 {
    fn prepare(&self, name: &str) -> Vec<PathBuf> {
        CONTROLLERS
            .iter()
            .map(|c| {
                let parent = self.root.join(c).join("strata");
                let _ = fs::create_dir(&parent);
                parent.join(name)
            })
            .collect()
    }

    fn apply(&self, dirs: &[PathBuf], l: &Limits) -> Result<(), RunError> {
        if let Some(m) = l.memory {
            let m = m.to_string();
            write(&self.file(dirs, "memory", "memory.limit_in_bytes"), &m)?;
            // Swap off: memory+swap capped at the same value, where swap is accounted.
            let _ = fs::write(self.file(dirs, "memory", "memory.memsw.limit_in_bytes"), &m);
            let _ = fs::write(self.file(dirs, "memory", "memory.swappiness"), "0");
        }
        if let Some(c) = l.cpus {
            let period = CPU_PERIOD.to_string();
            write(&self.file(dirs, "cpu", "cpu.cfs_period_us"), &period)?;
            write(
                &self.file(dirs, "cpu", "cpu.cfs_quota_us"),
                &cpu_quota(c).to_string(),
            )?;
        }
        if let Some(p) = l.pids {
            write(&self.file(dirs, "pids", "pids.max"), &p.to_string())?;
        }
        Ok(())
    }

    fn oom_file(&self, dirs: &[PathBuf]) -> PathBuf {
        self.file(dirs, "memory", "memory.oom_control")
    }
}
