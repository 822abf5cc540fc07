//! The harness of the `strata build` tests: a temporary store with a busybox base image
//! imported into it, contexts, and helpers to build, run and inspect.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{STRATA, require_busybox, require_mount_env};
use sha2::Digest as _;

pub const BUSYBOX: &str = "/bin/busybox";

pub fn sha(data: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A temporary store, scratch directory and contexts; removed at the end even on failure
/// (nothing stays mounted: every mount lives in a process's private mount namespace).
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Run strata as this unprivileged uid (= gid) through setpriv; 0: as root.
    pub user: std::sync::atomic::AtomicU32,
}

impl Env {
    pub fn new() -> Option<Env> {
        if !require_mount_env() || !require_busybox(BUSYBOX) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-build-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::create_dir(dir.path().join("scratch")).unwrap();
        Some(Env {
            dir,
            user: std::sync::atomic::AtomicU32::new(0),
        })
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn strata(&self) -> Command {
        let mut c = match self.user.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Command::new(STRATA),
            u => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={u}"),
                    &format!("--regid={u}"),
                    "--clear-groups",
                ])
                .arg(STRATA);
                c
            }
        };
        c.env("STRATA_RUN_DIR", self.path("scratch"))
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("--root")
            .arg(self.path("store"))
            .stdin(Stdio::null());
        c
    }

    /// A busybox root imported as `name`, with a passwd naming `app` (1000) and `www` (33).
    pub fn base(&self, name: &str) {
        let root = self.path("base-root");
        if !root.exists() {
            for d in ["bin", "etc", "tmp", "root", "proc", "dev", "sys"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
            fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
            let apps = "sh echo cat ls true false id mkdir touch rm mv chmod ln date sed \
                        stat wc test grep pwd env tar sleep readlink find sort md5sum xargs head";
            for a in apps.split_whitespace() {
                symlink("busybox", root.join("bin").join(a)).unwrap();
            }
            fs::write(
                root.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n",
            )
            .unwrap();
            fs::write(
                root.join("etc/group"),
                "root:x:0:\napp:x:1000:\nwww:x:33:\nstaff:x:50:\n",
            )
            .unwrap();
        }
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", &root).unwrap();
        let layer = b.into_inner().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
            "history": [{"created_by": "busybox-static from the test"}],
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let layout = self.path("base-layout");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        for data in [&layer, &config, &manifest] {
            fs::write(blobs.join(&sha(data)[7..]), data).unwrap();
        }
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest), "size": manifest.len()}]});
        fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let o = self
            .strata()
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", name])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A context directory with these files (path, content).
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path(name);
        for (p, content) in files {
            let p = ctx.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
        }
        ctx
    }

    pub fn build(&self, ctx: &Path, args: &[&str]) -> Output {
        self.strata()
            .arg("build")
            .args(args)
            .arg(ctx)
            .output()
            .unwrap()
    }

    /// Builds and returns (image ID, stderr); fails the test if the build fails.
    pub fn build_ok(&self, ctx: &Path, args: &[&str]) -> (String, String) {
        let o = self.build(ctx, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "build failed: {err}");
        let out = String::from_utf8_lossy(&o.stdout);
        let id = out.lines().last().unwrap_or("").to_owned();
        assert!(
            id.starts_with("sha256:") && id.len() == 71,
            "no image ID last: {out:?}"
        );
        (id, err)
    }

    pub fn run(&self, image: &str, cmd: &[&str]) -> Output {
        let mut c = self.strata();
        c.arg("run").arg(image);
        if !cmd.is_empty() {
            c.arg("--").args(cmd);
        }
        c.output().unwrap()
    }

    pub fn run_ok(&self, image: &str, cmd: &[&str]) -> String {
        let o = self.run(image, cmd);
        assert!(
            o.status.success(),
            "run {image}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs strata with these arguments; fails the test unless it succeeds; its stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let o = self.strata().args(args).output().unwrap();
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(
            o.status.success(),
            "strata {shown:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn inspect(&self, image: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["image", "inspect", image])).unwrap()
    }

    pub fn has_image(&self, image: &str) -> bool {
        self.strata()
            .args(["image", "inspect", image])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Nothing of finished builds may stay behind: no staging, no container layer.
    pub fn assert_clean(&self) {
        let left: Vec<_> = fs::read_dir(self.path("scratch"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in the run directory: {left:?}");
        let tmp: Vec<_> = fs::read_dir(self.path("store/tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(tmp.is_empty(), "left in the store's tmp: {tmp:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.dir.path().to_str().unwrap()),
            "still mounted: {mounts}"
        );
    }
}

/// Lines of the progress output that say whether each step ran or came from the cache,
/// as (instruction, "CACHED" | "DONE").
pub fn outcomes(err: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    let mut last = String::new();
    for l in err.lines().filter(|l| l.starts_with('[')) {
        let rest = l.splitn(3, "] ").nth(2).unwrap_or("");
        if rest == "CACHED" {
            out.push((last.clone(), "CACHED"));
        } else if rest.starts_with("DONE ") {
            out.push((last.clone(), "DONE"));
        } else {
            last = rest.to_owned();
        }
    }
    out
}
