//! Rootless: strata run by an unprivileged user inside `unshare -Ur` (no CAP_SYS_ADMIN in the
//! initial namespace, so no `trusted.*` xattrs and no FUSE passthrough). The union must still
//! work, keeping its bookkeeping in `user.overlay.*`, and read its upper back after remount.
//!
//! Needs root to set up (an unprivileged uid via setpriv) and `/dev/fuse` usable by that user:
//! the test makes it mode 0666 for its duration, says so, and restores the mode.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const NOBODY: u32 = 65534;

struct DevFuseMode(u32);
impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

fn chown_tree(p: &Path) {
    let st = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs `script` as uid 65534 in a new user + mount namespace; returns stdout.
fn as_unprivileged(dir: &Path, script: &str) -> String {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "unshare",
            "-Urm",
            "--propagation",
            "private",
            "sh",
            "-ec",
            script,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "unprivileged script failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn unprivileged_user_namespace() {
    if !require_mount_env() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP unprivileged_user_namespace: setpriv (util-linux) not installed");
        return;
    }
    let old = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    eprintln!("rootless test: making /dev/fuse mode 0666 for its duration (was {old:o})");
    let _restore = DevFuseMode(old);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();

    let fx = Fixture::new(2);
    write(&fx.layer(1).join("f"), b"low\n");
    write(&fx.layer(1).join("d/x"), b"x");
    write(&fx.layer(1).join("e/sub/s"), b"s");
    symlink("f", &fx.layer(1).join("lnk"));
    for d in ["u", "w", "m"] {
        fx.path(d);
    }
    fs::copy(STRATA, fx.side.path().join("strata")).unwrap();
    for root in fx.roots() {
        chown_tree(root);
    }
    // Run from the upper side's dir; the layers may be on another filesystem.
    let lowers = lower_views(&fx.layers);
    let mount = format!(
        "./strata -o lowerdir={}:{},upperdir=u,workdir=w m",
        lowers[0].display(),
        lowers[1].display()
    );
    let list = "find m | LC_ALL=C sort; cat m/g";
    let first = as_unprivileged(
        fx.side.path(),
        &format!(
            "{mount}
             echo appended >> m/f
             rm -r m/d; mkdir m/d; echo new > m/d/n
             mv m/f m/g; chmod 600 m/g; mv m/e m/e2
             {list}
             ./strata umount m"
        ),
    );
    let want = "m\nm/d\nm/d/n\nm/e2\nm/e2/sub\nm/e2/sub/s\nm/g\nm/lnk\nlow\nappended\n";
    assert_eq!(first, want, "view after the changes");
    let again = as_unprivileged(
        fx.side.path(),
        &format!("{mount}\n{list}\n./strata umount m"),
    );
    assert_eq!(again, want, "view after remount");
    assert!(!is_mounted(&fx.side.path().join("m")));
    // The union's own xattrs are in the user namespace, never trusted.*.
    let upper = fx.side.path().join("u");
    let mut names = Vec::new();
    for p in [upper.join("d"), upper.join("e2"), upper.join("g")] {
        names.extend(
            xattrs(&p)
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned()),
        );
    }
    assert!(
        names.iter().any(|n| n == "user.overlay.opaque"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "user.overlay.redirect"),
        "{names:?}"
    );
    assert!(names.iter().all(|n| n.starts_with("user.")), "{names:?}");
}
