//! A hostile image must not make `strata run` touch the host. Each layer below carries symlinks
//! (absolute, `..`-laden, in the middle of a path) where the launcher mounts or creates
//! something: a `--bind` target, /proc, /sys, /dev, /dev/shm, a `-w` directory. Every run, as
//! root and rootless, must leave a listing of the host paths those symlinks point at exactly as
//! it was, and the container must find the mount on the symlink's target inside its own root
//! (as runc does). Needs root, /dev/fuse and /bin/busybox; skips loudly without them.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const BUSYBOX: &str = "/bin/busybox";

/// A busybox root layer whose symlinks point into `host`, a host directory of the test's own.
struct Hostile {
    /// Holds the temporary directory everything below lives in.
    _fx: Fixture,
    root: PathBuf,
    /// What the image's symlinks point at on the host (outside the layer and strata's scratch).
    host: PathBuf,
    /// Bind sources: `file` ("secret") and `dir/inside` ("inside").
    src: PathBuf,
    scratch: PathBuf,
    /// A /dev/fuse node nobody may open, bound over /dev/fuse only in a rootless run's own
    /// mount namespace: the host's /dev/fuse keeps its mode (tests run concurrently).
    fuse: PathBuf,
    rootless: bool,
}

fn chmod_path(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

impl Hostile {
    fn new() -> Option<Hostile> {
        if !require_mount_env() {
            return None;
        }
        if !require_busybox(BUSYBOX) {
            return None;
        }
        let rootless = ["setpriv", "unshare"]
            .iter()
            .all(|c| Command::new(c).arg("--version").output().is_ok());
        if !rootless {
            eprintln!(
                "SKIP {} (rootless half): setpriv/unshare (util-linux) missing",
                test_name()
            );
        }
        let fx = Fixture::new(1);
        let root = fx.layers[0].clone();
        for d in ["bin", "proc", "dev", "sys", "etc"] {
            mkdir(&root.join(d));
        }
        mkdir(&root.join("tmp"));
        chmod_path(&root.join("tmp"), 0o1777);
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for app in ["sh", "cat", "ls", "pwd", "echo", "test", "[", "grep"] {
            symlink("busybox", &root.join("bin").join(app));
        }
        let host = fx.path("host");
        write(&host.join("etc/passwd"), b"host passwd\n");
        write(&host.join("keep"), b"keep\n");
        // Writable by anyone: a rootless run that escaped could write here too.
        for d in [&host, &host.join("etc")] {
            chmod_path(d, 0o777);
        }
        let src = fx.path("src");
        write(&src.join("file"), b"secret\n");
        write(&src.join("dir/inside"), b"inside\n");
        let scratch = fx.path("scratch");
        chmod_path(&scratch, 0o777);
        chmod_path(fx.dir.path(), 0o755);
        let fuse = fx.dir.path().join("fuse");
        let st = Command::new("mknod")
            .args(["-m", "0666"])
            .arg(&fuse)
            .args(["c", "10", "229"])
            .status()
            .unwrap();
        assert!(st.success(), "mknod of a private /dev/fuse node");
        Some(Hostile {
            _fx: fx,
            root,
            host,
            src,
            scratch,
            fuse,
            rootless,
        })
    }

    /// `host/rel` as an absolute path, what a hostile symlink points at.
    fn at_host(&self, rel: &str) -> String {
        self.host.join(rel).to_str().unwrap().to_owned()
    }

    /// A relative link target that climbs far above any root, to `host/rel` from the host's /.
    fn up_to_host(&self, rel: &str) -> String {
        let abs = self.at_host(rel);
        format!("{}{}", "../".repeat(24), abs.trim_start_matches('/'))
    }

    /// Replaces `name` in the layer (a directory or nothing) with a symlink to `target`.
    fn link(&self, name: &str, target: &str) {
        let p = self.root.join(name);
        if p.is_dir() {
            fs::remove_dir(&p).unwrap();
        }
        symlink(target, &p);
    }

    fn run(&self, rootless: bool, opts: &[String], script: &str) -> Output {
        let mut c = if rootless {
            // A private mount namespace where /dev/fuse is our 0666 node, then uid 65534.
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "--", "sh", "-c"])
                .arg(
                    "mount --bind \"$0\" /dev/fuse && exec setpriv --reuid=65534 \
                     --regid=65534 --clear-groups -- \"$@\"",
                )
                .arg(&self.fuse);
            c
        } else {
            Command::new("env")
        };
        c.arg(STRATA)
            .env("STRATA_RUN_DIR", &self.scratch)
            .arg("run")
            .arg("--lower")
            .arg(&self.root)
            .args(opts)
            .args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    /// Runs `script` with `opts` as root and rootless: the host listing must not change, the
    /// command must succeed and print `want`, and nothing may stay behind.
    fn check(&self, opts: &[String], script: &str, want: &str) {
        for rootless in [false, true] {
            if rootless && !self.rootless {
                continue;
            }
            let who = if rootless { "rootless" } else { "root" };
            let before = snapshot(&self.host);
            // The last line says whose uid strata ran as, so a rootless half cannot pass as root.
            let script = format!("{script}\nread a b c < /proc/self/uid_map; echo \"as $b\"");
            let want = format!("{want}as {}\n", if rootless { 65534 } else { 0 });
            let o = self.run(rootless, opts, &script);
            assert_same(
                &before,
                &snapshot(&self.host),
                &format!("{who}: the host paths the image's symlinks point at"),
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{who}: {:?}: {err}", o.status);
            assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{who}: {err}");
            assert_eq!(
                fs::read_dir(&self.scratch).unwrap().count(),
                0,
                "{who}: temporary container files left behind"
            );
        }
    }

    /// Runs with `opts`, which must be refused: exit 125, one line naming `what`, the host
    /// listing unchanged, the command never started.
    fn refused(&self, opts: &[String], what: &str) {
        for rootless in [false, true] {
            if rootless && !self.rootless {
                continue;
            }
            let before = snapshot(&self.host);
            let o = self.run(rootless, opts, "echo ran");
            assert_same(&before, &snapshot(&self.host), "the host");
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(125), "rootless {rootless}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.contains(what), "{err}");
            assert!(o.stdout.is_empty());
        }
    }

    fn bind(&self, src: &str, dst: &str) -> [String; 2] {
        let s = self.src.join(src);
        ["--bind".into(), format!("{}:{dst}", s.display())]
    }
}

#[test]
fn bind_target_file_through_absolute_symlink() {
    let Some(h) = Hostile::new() else { return };
    // The reproduction: data -> a host path that does not exist.
    h.link("data", &h.at_host("victim"));
    let script = "cat /data; cat \"$(ls -d /data)\"";
    h.check(&h.bind("file", "/data"), script, "secret\nsecret\n");
    // Inside, the bind sits on the symlink's target in the container root.
    let inside = format!("cat {}", h.at_host("victim"));
    h.check(&h.bind("file", "/data"), &inside, "secret\n");
}

#[test]
fn bind_target_dir_through_absolute_symlink() {
    let Some(h) = Hostile::new() else { return };
    h.link("data", &h.at_host("victim-dir/sub"));
    h.check(&h.bind("dir", "/data"), "cat /data/inside", "inside\n");
}

#[test]
fn bind_target_through_dotdot_symlink() {
    let Some(h) = Hostile::new() else { return };
    // data -> ../../../../(...)/tmp/strata-test.../host/x
    h.link("data", &h.up_to_host("x"));
    h.check(&h.bind("file", "/data"), "cat /data", "secret\n");
    h.link("dd", &h.up_to_host("d"));
    h.check(
        &h.bind("dir", "/dd/in/deep"),
        "cat /dd/in/deep/inside",
        "inside\n",
    );
}

#[test]
fn bind_target_below_a_symlinked_directory() {
    let Some(h) = Hostile::new() else { return };
    // /a -> host/etc, which exists on the host with a file in it; bind at /a/b.
    h.link("a", &h.at_host("etc"));
    h.check(
        &h.bind("dir", "/a/b"),
        "cat /a/b/inside; ls /a",
        "inside\nb\n",
    );
    let mut opts = h.bind("file", "/a/f:ro").to_vec();
    opts.push("--read-only".into());
    h.check(
        &opts,
        "cat /a/f; (echo y > /a/f) 2>/dev/null || echo ro",
        "secret\nro\n",
    );
}

/// Removes what a broken launcher would have created in the host's /etc.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn bind_target_below_a_symlink_to_the_hosts_etc() {
    let Some(h) = Hostile::new() else { return };
    h.link("a", "/etc");
    let name = format!("strata-escape-test-{}", std::process::id());
    let on_host = Path::new("/etc").join(&name);
    assert!(!on_host.exists(), "{} exists already", on_host.display());
    let _cleanup = RemoveOnDrop(on_host.clone());
    let script = format!("cat /a/{name}/inside; ls /etc");
    h.check(
        &h.bind("dir", &format!("/a/{name}")),
        &script,
        &format!("inside\n{name}\n"),
    );
    assert!(!on_host.exists(), "strata created {}", on_host.display());
}

#[test]
fn proc_symlinked_with_its_masked_and_read_only_paths() {
    let Some(h) = Hostile::new() else { return };
    h.link("proc", &h.at_host("proc"));
    h.check(
        &[],
        // Not every kernel has /proc/kcore; where it is, it is masked like the others.
        "[ -c /proc/keys ] && [ -c /proc/timer_list ] && { [ ! -e /proc/kcore ] || \
         [ -c /proc/kcore ]; } && echo masked; [ -d /proc/1 ] && echo proc; \
         (echo x > /proc/sys/kernel/domainname) 2>&1 | grep -q Read-only && echo ro",
        "masked\nproc\nro\n",
    );
}

#[test]
fn sys_symlinked() {
    let Some(h) = Hostile::new() else { return };
    h.link("sys", &h.at_host("sys"));
    h.check(
        &[],
        "[ -d /sys/class/net/lo ] && echo sys; \
         grep -q \" $(cd /sys && pwd -P) ro,\" /proc/self/mountinfo && echo ro",
        "sys\nro\n",
    );
}

#[test]
fn dev_symlinked() {
    let Some(h) = Hostile::new() else { return };
    h.link("dev", &h.at_host("dev"));
    h.check(
        &[],
        "[ -c /dev/null ] && echo x > /dev/null && echo null; \
         [ -d /dev/pts ] && [ -d /dev/shm ] && [ -L /dev/stdout ] && echo dev",
        "null\ndev\n",
    );
}

#[test]
fn dev_shm_pts_and_nodes_symlinked() {
    let Some(h) = Hostile::new() else { return };
    for n in ["shm", "pts", "null", "ptmx"] {
        symlink(h.at_host(n), &h.root.join("dev").join(n));
    }
    h.check(
        &[],
        "[ -d /dev/shm ] && [ ! -L /dev/shm ] && [ -d /dev/pts ] && echo dirs; \
         [ -c /dev/null ] && echo null",
        "dirs\nnull\n",
    );
}

#[test]
fn working_directory_through_symlinks() {
    let Some(h) = Hostile::new() else { return };
    h.link("work", &h.at_host("work"));
    let opts = ["-w".to_owned(), "/work/sub".to_owned()];
    h.check(&opts, "pwd", &format!("{}\n", h.at_host("work/sub")));
    h.link("w2", &h.up_to_host("w2"));
    let opts = ["-w".to_owned(), "/w2".to_owned(), "--read-only".to_owned()];
    h.check(&opts, "pwd", &format!("{}\n", h.at_host("w2")));
}

#[test]
fn symlink_loop_is_refused_with_one_line() {
    let Some(h) = Hostile::new() else { return };
    h.link("data", "/data2");
    h.link("data2", "data");
    h.refused(&h.bind("file", "/data"), "bind target /data");
}

#[test]
fn magic_links_are_refused() {
    let Some(h) = Hostile::new() else { return };
    // While strata prepares the root, /proc/self/root is the host's /.
    let via_proc = format!("/proc/self/root{}", h.at_host("victim"));
    h.link("data", &via_proc);
    h.refused(&h.bind("file", "/data"), "bind target /data");
    h.link("work", &format!("/proc/self/root{}", h.at_host("work")));
    let opts = ["-w".to_owned(), "/work".to_owned()];
    h.refused(&opts, "working directory /work");
}
