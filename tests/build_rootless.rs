//! `strata build` as an unprivileged user (uid 65534 through setpriv), with a subordinate id
//! range (newuidmap) and with only its own id, then the results run as that user.
//!
//! Changes machine-wide state for its duration, restored even on failure: /dev/fuse is made
//! 0666 (it is 0600 here; distributions ship 0666) and /etc/subuid, /etc/subgid get a range
//! for nobody. The tests are in one function so that state changes once.

mod build_env;
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use build_env::Env;

const NOBODY: u32 = 65534;
const SUB_START: u32 = 300000;

/// Puts a file's content (or /dev/fuse's mode) back at the end.
enum Restore {
    File(&'static str, Option<Vec<u8>>),
    Mode(&'static str, u32),
}

impl Drop for Restore {
    fn drop(&mut self) {
        match self {
            Restore::File(p, Some(c)) => drop(fs::write(p, c)),
            Restore::File(p, None) => drop(fs::remove_file(p)),
            Restore::Mode(p, m) => drop(fs::set_permissions(p, fs::Permissions::from_mode(*m))),
        }
    }
}

/// Gives a tree to nobody (lchown, so symlinks themselves).
fn chown_tree(p: &Path) {
    common::chown(p, NOBODY, NOBODY);
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

fn quickstart(env: &Env, name: &str) {
    let ctx = env.context(
        name,
        &[
            (
                "quickstart.sh",
                "#!/bin/sh\necho \"Hello, world! The time is $(date).\"\n",
            ),
            (
                "Dockerfile",
                "FROM alpine\nCOPY quickstart.sh /\nCMD [\"/quickstart.sh\"]\n",
            ),
        ],
    );
    fs::set_permissions(ctx.join("quickstart.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&ctx);
    env.build_ok(&ctx, &["-t", name]);
    let out = env.run_ok(name, &[]);
    assert!(out.starts_with("Hello, world! The time is "), "{out:?}");
}

/// RUN, COPY --chown (names and numbers), USER: owners set inside the namespace.
fn owners(env: &Env) {
    let ctx = env.context(
        "owners",
        &[
            ("f", "for app\n"),
            ("d/x", "x\n"),
            (
                "Dockerfile",
                "FROM alpine\n\
                 RUN echo made > /made && chown 1000:1000 /made && mkdir /data && chown 33:33 /data\n\
                 COPY --chown=app:app f /home/app/f\n\
                 COPY --chown=33:50 d /srv/d\n\
                 USER app\n\
                 RUN id -u > /tmp/who\n\
                 CMD [\"stat\", \"-c\", \"%n %u:%g\", \"/made\", \"/data\", \"/home/app/f\", \"/srv/d/x\", \"/tmp/who\"]\n",
            ),
        ],
    );
    chown_tree(&ctx);
    let (id, _) = env.build_ok(&ctx, &["-t", "owners"]);
    let out = env.run_ok("owners", &[]);
    assert_eq!(
        out,
        "/made 1000:1000\n/data 33:33\n/home/app/f 1000:1000\n/srv/d/x 33:50\n/tmp/who 1000:1000\n"
    );
    assert_eq!(
        env.run_ok("owners", &["cat", "/tmp/who", "/home/app/f"]),
        "1000\nfor app\n"
    );
    // On the host the layer's files belong to the user's subordinate range.
    let doc = env.inspect("owners");
    assert_eq!(doc["id"], id);
    let layers = fs::read_dir(env.path("store/layers")).unwrap();
    let hosted: Vec<u32> = layers
        .flatten()
        .filter_map(|l| fs::metadata(l.path().join("root/srv/d/x")).ok())
        .map(|m| m.uid())
        .collect();
    assert_eq!(
        hosted,
        [SUB_START + 33 - 1],
        "the COPY --chown layer on the host"
    );
    // A rebuild is all cached and gives the same image.
    let (again, err) = env.build_ok(&ctx, &["-t", "owners"]);
    assert_eq!(again, id, "{err}");
}

#[test]
fn rootless_builds_run_as_an_unprivileged_user() {
    let Some(env) = Env::new() else { return };
    for tool in ["setpriv", "newuidmap"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!("SKIP {}: {tool} missing", common::test_name());
            return;
        }
    }
    let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    eprintln!("rootless build test: /dev/fuse 0666 and a subuid range for nobody, until the end");
    let _fuse = Restore::Mode("/dev/fuse", mode);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let _subuid = Restore::File("/etc/subuid", fs::read("/etc/subuid").ok());
    let _subgid = Restore::File("/etc/subgid", fs::read("/etc/subgid").ok());

    // Only the user's own id: the quickstart builds and runs.
    env.base("alpine");
    chown_tree(env.dir.path());
    env.user.store(NOBODY, std::sync::atomic::Ordering::Relaxed);
    quickstart(&env, "qs-single");

    // With a subordinate range, owners other than root are kept.
    for f in ["/etc/subuid", "/etc/subgid"] {
        let mut text = fs::read_to_string(f).unwrap_or_default();
        text.push_str(&format!("nobody:{SUB_START}:65536\n"));
        fs::write(f, text).unwrap();
    }
    quickstart(&env, "qs-range");
    owners(&env);
    env.assert_clean();
}
