//! Both hierarchies on temp dirs laid out like the kernel's (as youki tests its managers):
//! which files get which values, and where the OOM count is read.

use std::fs;
use std::path::Path;

use super::*;

fn limits() -> Limits {
    Limits {
        memory: Some(256 << 20),
        cpus: Some(0.5),
        pids: Some(64),
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn v2_writes_the_unified_files() {
    let root = tempfile::tempdir().unwrap();
    fs::write(
        root.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids",
    )
    .unwrap();
    let cg = Cgroup::create_in(root.path(), "c1", &limits())
        .unwrap()
        .unwrap();
    let dir = root.path().join("strata/c1");
    assert_eq!(read(&dir.join("memory.max")), (256u64 << 20).to_string());
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("pids.max")), "64");
    assert_eq!(
        read(&root.path().join("strata/cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    cg.add(4242).unwrap();
    assert_eq!(read(&dir.join("cgroup.procs")), "4242");
    assert_eq!(cg.oom_kills(), 0);
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\noom 1\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(cg.oom_kills(), 2);
}

#[test]
fn v1_writes_one_directory_per_controller() {
    let root = tempfile::tempdir().unwrap();
    for c in ["memory", "cpu", "pids"] {
        fs::create_dir(root.path().join(c)).unwrap();
    }
    // A hybrid host: the unified hierarchy exists but lacks the controllers.
    fs::write(root.path().join("cgroup.controllers"), "hugetlb").unwrap();
    let cg = Cgroup::create_in(root.path(), "c1", &limits())
        .unwrap()
        .unwrap();
    let at = |c: &str, f: &str| root.path().join(c).join("strata/c1").join(f);
    assert_eq!(
        read(&at("memory", "memory.limit_in_bytes")),
        (256u64 << 20).to_string()
    );
    assert_eq!(read(&at("memory", "memory.swappiness")), "0");
    assert_eq!(read(&at("cpu", "cpu.cfs_period_us")), "100000");
    assert_eq!(read(&at("cpu", "cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&at("pids", "pids.max")), "64");
    cg.add(7).unwrap();
    for c in ["memory", "cpu", "pids"] {
        assert_eq!(read(&at(c, "cgroup.procs")), "7", "{c}");
    }
    fs::write(
        at("memory", "memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    assert_eq!(cg.oom_kills(), 3);
}

#[test]
fn a_tiny_cpu_share_keeps_the_kernels_minimum_quota() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("cgroup.controllers"), "memory cpu pids").unwrap();
    let l = Limits {
        cpus: Some(0.001),
        ..Limits::default()
    };
    let _cg = Cgroup::create_in(root.path(), "c", &l).unwrap().unwrap();
    assert_eq!(read(&root.path().join("strata/c/cpu.max")), "1000 100000");
}

#[test]
fn no_hierarchy_means_no_cgroup() {
    let root = tempfile::tempdir().unwrap();
    assert!(detect(root.path()).is_none());
    assert!(
        Cgroup::create_in(root.path(), "c", &limits())
            .unwrap()
            .is_none()
    );
}

#[test]
fn an_existing_cgroup_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("cgroup.controllers"), "memory cpu pids").unwrap();
    fs::create_dir_all(root.path().join("strata/taken")).unwrap();
    match Cgroup::create_in(root.path(), "taken", &limits()) {
        Err(RunError::Cgroup { path, .. }) => assert!(path.ends_with("strata/taken")),
        other => panic!("{:?}", other.map(|c| c.is_some())),
    }
}
