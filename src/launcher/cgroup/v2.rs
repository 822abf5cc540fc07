//! cgroup v2: one directory under the unified root, controllers enabled in the parents.

use std::fs;
use std::path::{Path, PathBuf};

use super::{CONTROLLERS, CPU_PERIOD, Hierarchy, cpu_quota, write};
use crate::launcher::{Limits, RunError};

pub struct V2 {
    root: PathBuf,
}

impl V2 {
    pub fn new(root: &Path) -> V2 {
        V2 {
            root: root.to_owned(),
        }
    }
}

impl Hierarchy for V2 {
    fn prepare(&self, name: &str) -> Vec<PathBuf> {
        let parent = self.root.join("strata");
        let _ = fs::create_dir(&parent);
        let enable: Vec<String> = CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
        let enable = enable.join(" ");
        // Controllers must be enabled in every parent for the child to get its files.
        let _ = fs::write(self.root.join("cgroup.subtree_control"), &enable);
        let _ = fs::write(parent.join("cgroup.subtree_control"), &enable);
        vec![parent.join(name)]
    }

    fn apply(&self, dirs: &[PathBuf], l: &Limits) -> Result<(), RunError> {
        let Some(dir) = dirs.first() else {
            return Ok(());
        };
        if let Some(m) = l.memory {
            write(&dir.join("memory.max"), &m.to_string())?;
            // Swap off, where the kernel accounts swap.
            let _ = fs::write(dir.join("memory.swap.max"), "0");
        }
        if let Some(c) = l.cpus {
            write(
                &dir.join("cpu.max"),
                &format!("{} {CPU_PERIOD}", cpu_quota(c)),
            )?;
        }
        if let Some(p) = l.pids {
            write(&dir.join("pids.max"), &p.to_string())?;
        }
        Ok(())
    }

    fn oom_file(&self, dirs: &[PathBuf]) -> PathBuf {
        dirs.first()
            .map_or_else(PathBuf::new, |d| d.join("memory.events"))
    }
}
