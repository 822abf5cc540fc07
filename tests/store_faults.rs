//! The image store under faults: `strata image check` finds damage and orphans (and
//! `--repair` removes the orphans only), and `kill -9` at random moments during `image
//! import`, `commit`, `build` and `pull` (20 times each) never leaves a damaged store or a
//! half-written image: afterwards `image check` passes, every listed image is complete, and
//! the next run of the same command succeeds.

mod build_env;
mod common;
mod oci_layout;

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::STRATA;
use oci_layout::{LayerSpec, Lcg, tar_of, write_oci};

const KILLS: usize = 20;

/// A store in a temp dir and the strata commands that use it.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::Builder::new()
                .prefix("strata-store-faults-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(STRATA);
        c.arg("--root")
            .arg(self.path("store"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env("HOME", self.dir.path())
            .env("STRATA_RUN_DIR", self.path("scratch"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `image check` must pass; its summary line.
    fn check_passes(&self, context: &str) -> String {
        let o = self.run(&["image", "check"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() && out.contains(" 0 damaged"),
            "{context}: image check failed:\n{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.lines().last().unwrap_or("").to_owned()
    }

    fn names(&self) -> Vec<String> {
        self.ok(&["image", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }
}

/// An image whose one layer holds `files` small files and `big` bytes of incompressible data
/// (so that an import takes long enough to be killed in the middle).
fn layout(dir: &Path, files: usize, big: usize, tag: &str) {
    let mut rng = Lcg(0x5eed);
    let data: Vec<u8> = (0..big).map(|_| rng.next() as u8).collect();
    let small: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| {
            (
                format!("d{}/f{i}", i % 16),
                format!("file {i}\n").into_bytes(),
            )
        })
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("big", &data)];
    entries.extend(small.iter().map(|(p, d)| (p.as_str(), d.as_slice())));
    let tar = tar_of(&entries);
    write_oci(
        dir,
        &[LayerSpec::gz(&tar)],
        serde_json::json!({"Cmd": ["/big"]}),
        tag,
    );
}

#[test]
fn check_reports_damage_and_repair_removes_only_orphans() {
    let s = Store::new();
    let src = s.path("layout");
    layout(&src, 50, 10_000, "1");
    s.ok(&["image", "import", src.to_str().unwrap(), "--name", "app:1"]);
    let line = s.check_passes("fresh store");
    assert!(line.contains("1 images: 0 damaged, 0 orphans"), "{line}");

    // Orphans: an unreferenced (sound) blob, an incomplete layer, staging debris.
    let blob = oci_layout::put_blob(&s.path("store"), b"nobody uses me");
    fs::create_dir_all(s.path("store/layers").join("ab".repeat(32)).join("root")).unwrap();
    let line = s.check_passes("with orphans");
    assert!(line.contains("0 damaged, 2 orphans"), "{line}");
    let out = s.ok(&["image", "check", "--repair"]);
    assert!(out.contains("2 orphans, 2 removed"), "{out}");
    assert!(!s.path("store/blobs/sha256").join(&blob[7..]).exists());
    let line = s.check_passes("after repair");
    assert!(line.contains("0 damaged, 0 orphans"), "{line}");
    assert_eq!(s.names(), ["app:1"]);

    // Damage: a flipped byte in the layer blob is found, named, and never "repaired" away.
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["image", "inspect", "app:1"])).unwrap();
    let layer_blob = inspect["layers"][0]["digest"].as_str().unwrap().to_owned();
    let p = s.path("store/blobs/sha256").join(&layer_blob[7..]);
    let mut data = fs::read(&p).unwrap();
    let keep = data.clone();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&p, &data).unwrap();
    for args in [&["image", "check"][..], &["image", "check", "--repair"]] {
        let o = s.run(args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !o.status.success(),
            "{args:?} passed a damaged store: {out}"
        );
        assert!(
            out.contains(&format!("damaged: blob {layer_blob}")),
            "{out}"
        );
        assert!(out.contains("diff_id not re-verified"), "{out}");
        assert!(out.contains("damaged: image app:1"), "{out}");
        assert!(p.exists(), "--repair removed a blob an image uses");
    }
    fs::write(&p, &keep).unwrap();

    // A layer whose recorded diff_id is not what its blob decompresses to.
    let chain = inspect["layers"][0]["chain_id"].as_str().unwrap();
    let meta_path = s.path("store/layers").join(&chain[7..]).join("layer.json");
    let meta = fs::read_to_string(&meta_path).unwrap();
    let diff_id = inspect["layers"][0]["diff_id"].as_str().unwrap();
    let bad = format!("sha256:{}", "0".repeat(64));
    let mut doc: serde_json::Value = serde_json::from_str(&meta).unwrap();
    doc["diff_id"] = bad.clone().into();
    fs::write(&meta_path, doc.to_string()).unwrap();
    let o = s.run(&["image", "check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(
        out.contains(&format!(
            "decompresses to {diff_id}, layer.json says diff_id {bad}"
        )),
        "{out}"
    );
    fs::write(&meta_path, meta).unwrap();

    // A layer an image needs, gone.
    let layer_dir = s.path("store/layers").join(&chain[7..]);
    fs::rename(&layer_dir, s.path("aside")).unwrap();
    let o = s.run(&["image", "check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(
        out.contains(&format!("damaged: image app:1: layer {chain} is missing")),
        "{out}"
    );
    fs::rename(s.path("aside"), &layer_dir).unwrap();
    s.check_passes("restored");
}

/// Runs `make()` once to completion (how long it takes), then `KILLS` times killed with
/// SIGKILL (its whole process group) at a random moment in 0..1.2x that; after each, the store
/// must pass `image check` and list only `allowed` names; `reset` undoes a completed run.
/// Returns (killed before the end, completed) counts.
fn kill_at_random(
    s: &Store,
    what: &str,
    mut make: impl FnMut() -> Command,
    allowed: &[&str],
    mut reset: impl FnMut(&Store),
) -> (usize, usize) {
    let t0 = Instant::now();
    let o = make().output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let full = t0.elapsed();
    s.check_passes(&format!("{what}: after a full run"));
    reset(s);
    let mut rng = Lcg::from_time();
    eprintln!("{what}: a full run takes {full:?}; seed {}", rng.0);
    let (mut killed, mut completed) = (0, 0);
    for i in 0..KILLS {
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5));
        let mut child: Child = make()
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let pgid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        } else {
            assert!(status.success(), "{what} #{i}: {status}");
            completed += 1;
        }
        let ctx = format!("{what} #{i} killed after {delay:?}");
        s.check_passes(&ctx);
        for n in s.names() {
            assert!(allowed.contains(&n.as_str()), "{ctx}: unexpected image {n}");
            s.ok(&["image", "inspect", &n]);
        }
        reset(s);
    }
    // The killed runs left at most orphans, which --repair removes; the command works again.
    s.ok(&["image", "check", "--repair"]);
    let line = s.check_passes(&format!("{what}: after repair"));
    assert!(line.contains("0 orphans"), "{what}: {line}");
    let o = make().output().unwrap();
    assert!(o.status.success(), "{what} after the kills");
    s.check_passes(&format!("{what}: the last run"));
    eprintln!("{what}: {killed} killed mid-way, {completed} completed before the kill");
    (killed, completed)
}

/// Removes a name if the store has it, and what only it used.
fn drop_image(s: &Store, name: &str) {
    if s.names().iter().any(|n| n == name) {
        s.ok(&["image", "rm", name]);
    }
    s.ok(&["image", "check", "--repair"]);
}

#[test]
fn kill_during_import() {
    let s = Store::new();
    let src = s.path("layout");
    layout(&src, 300, 1 << 20, "1");
    let src = src.to_str().unwrap().to_owned();
    let (killed, _) = kill_at_random(
        &s,
        "image import",
        || {
            let mut c = s.cmd();
            c.args(["image", "import", &src, "--name", "app:1"]);
            c
        },
        &["app:1"],
        |s| drop_image(s, "app:1"),
    );
    assert!(killed > 0, "no kill landed before the import ended");
}

#[test]
fn kill_during_commit() {
    let s = Store::new();
    let src = s.path("layout");
    layout(&src, 10, 1000, "1");
    s.ok(&["image", "import", src.to_str().unwrap(), "--name", "base:1"]);
    let upper = s.path("upper");
    for i in 0..300 {
        let d = upper.join(format!("d{}", i % 16));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    let mut rng = Lcg(7);
    let big: Vec<u8> = (0..1 << 20).map(|_| rng.next() as u8).collect();
    fs::write(upper.join("big"), big).unwrap();
    let upper = upper.to_str().unwrap().to_owned();
    let (killed, _) = kill_at_random(
        &s,
        "commit",
        || {
            let mut c = s.cmd();
            c.args([
                "commit", "--upper", &upper, "--from", "base:1", "--name", "c:1",
            ]);
            c
        },
        &["base:1", "c:1"],
        |s| drop_image(s, "c:1"),
    );
    assert!(killed > 0, "no kill landed before the commit ended");
}

/// A build context in the store's temp dir: `big` (`size` random bytes) and `dockerfile`.
fn context(s: &Store, size: usize, dockerfile: &str) -> String {
    let mut rng = Lcg(11);
    let big: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
    let ctx = s.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("big"), big).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx.to_str().unwrap().to_owned()
}

#[test]
fn kill_during_build() {
    let Some(env) = build_env::Env::new() else {
        return;
    };
    env.base("base");
    // The Env's store, seen through this file's helpers.
    let s = Store {
        dir: tempfile::tempdir_in(env.dir.path()).unwrap(),
    };
    fs::rename(env.path("store"), s.path("store")).unwrap();
    fs::create_dir_all(s.path("scratch")).unwrap();
    let ctx = context(
        &s,
        1 << 20,
        "FROM base\nCOPY big /big\nRUN cat /big /big > /twice && echo done > /done\n",
    );
    let (killed, _) = kill_at_random(
        &s,
        "build",
        || {
            let mut c = s.cmd();
            c.args(["build", "-t", "built:1", &ctx]);
            c
        },
        &["base:latest", "built:1"],
        |s| {
            drop_image(s, "built:1");
            s.ok(&["image", "prune"]);
        },
    );
    assert!(killed > 0, "no kill landed before the build ended");
    let left: Vec<_> = fs::read_dir(s.path("scratch")).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the run directory: {left:?}");
}

/// A docker-registry on a free loopback port, killed when dropped.
struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Option<Registry> {
        if Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("SKIP kill during pull: docker-registry is not installed (scripts/setup.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let conf = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        fs::write(dir.path().join("config.yml"), conf).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&r.host).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kill_during_pull() {
    let Some(reg) = Registry::start() else {
        return;
    };
    let conf = format!(
        "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
        reg.host
    );
    let (a, b) = (Store::new(), Store::new());
    for side in [&a, &b] {
        fs::File::create(side.path("registries.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
    }
    let src = a.path("layout");
    layout(&src, 300, 1 << 20, "1");
    a.ok(&["image", "import", src.to_str().unwrap(), "--name", "app:1"]);
    let dest = format!("{}/test/app:1", reg.host);
    a.ok(&["push", "app:1", &dest]);
    let (killed, _) = kill_at_random(
        &b,
        "pull",
        || {
            let mut c = b.cmd();
            c.args(["pull", "-q", &dest]);
            c
        },
        &[dest.as_str()],
        |s| drop_image(s, &dest),
    );
    assert!(killed > 0, "no kill landed before the pull ended");
}

// ---- a full store ----

/// Every file under the store (path, size), but staging (`tmp/`), the lock, the filler and
/// what `keep` names (a pull's resumable `partial/` downloads): what must not change when a
/// command fails for want of space.
fn contents(root: &Path, keep: &[&str]) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let top = rel.iter().next().and_then(|t| t.to_str()).unwrap_or("");
            if ["tmp", "lock", FILLER].contains(&top) || keep.contains(&top) {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            }
            out.push((rel, m.len()));
        }
    }
    out.sort();
    out
}

const FILLER: &str = "filler";

/// A layer's unpacking and the write of its kept blob (a pull's: its partial download) run
/// side by side: either may be the one the disk runs out under.
const FULL_LAYER: &[&str] = &[
    "writing file \"big\" in layer sha256:",
    "/blob-",
    "/partial/",
];

/// Fills the filesystem of the store with a file until at most `room` bytes are free.
fn fill(store: &Path, room: u64) {
    let st = rustix::fs::statvfs(store).unwrap();
    let free = st.f_bavail * st.f_frsize;
    let mut f = fs::File::create(store.join(FILLER)).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut left = free.saturating_sub(room);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
}

/// `cmd` into the store `s` (on its own small tmpfs), filled to `room` bytes free, must fail
/// in one line naming ENOSPC once and the step (one of `names`), leave the store as it was (and `image check` passing, no
/// staging left), then succeed once the filler is gone. `keep`: store subdirectories a
/// failure may leave by design.
fn full_then_freed(
    s: &Store,
    what: &str,
    names: &[&str],
    mut cmd: impl FnMut() -> Command,
    keep: &[&str],
) {
    let root = s.path("store");
    let before = (s.names(), contents(&root, keep));
    fill(&root, 256 << 10);
    let o = cmd().output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{what} succeeded into a full store");
    // Progress lines may precede it (a build's steps); strata's error is one line.
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("strata:")).collect();
    assert_eq!(ours.len(), 1, "{what}: not one error line: {err}");
    assert_eq!(
        ours[0].matches("No space left on device").count(),
        1,
        "{what}: ENOSPC named not once: {err}"
    );
    assert!(
        names.iter().any(|n| ours[0].contains(n)),
        "{what}: the step is not named: {err}"
    );
    s.check_passes(&format!("{what}: after ENOSPC"));
    assert_eq!(
        (s.names(), contents(&root, keep)),
        before,
        "{what}: the failure changed the store"
    );
    let staging: Vec<_> = fs::read_dir(root.join("tmp")).unwrap().flatten().collect();
    assert!(staging.is_empty(), "{what}: staging left: {staging:?}");
    eprintln!("{what} into a full store: {}", ours[0]);
    fs::remove_file(root.join(FILLER)).unwrap();
    let o = cmd().output().unwrap();
    assert!(
        o.status.success(),
        "{what} once space is free: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    s.check_passes(&format!("{what}: after space returned"));
}

/// A store whose root is a 64 MiB tmpfs, unmounted before the temp dir goes.
fn small_store(dir: tempfile::TempDir) -> (common::SmallFs, Store) {
    let s = Store { dir };
    fs::create_dir_all(s.path("store")).unwrap();
    fs::create_dir_all(s.path("scratch")).unwrap();
    (common::SmallFs::mount(&s.path("store"), "64m"), s)
}

/// A small image already in the store (`small:1`): what a failed command must leave alone.
fn import_small(s: &Store) {
    let small = s.path("small");
    layout(&small, 20, 1000, "1");
    s.ok(&[
        "image",
        "import",
        small.to_str().unwrap(),
        "--name",
        "small:1",
    ]);
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-store-faults-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

#[test]
fn import_into_a_full_store() {
    if !common::require_mount_env() {
        return;
    }
    let (_fs, s) = small_store(tempdir());
    import_small(&s);
    let big = s.path("big");
    layout(&big, 100, 4 << 20, "1");
    let big = big.to_str().unwrap().to_owned();
    full_then_freed(
        &s,
        "image import",
        FULL_LAYER,
        || {
            let mut c = s.cmd();
            c.args(["image", "import", &big, "--name", "big:1"]);
            c
        },
        &[],
    );
    assert_eq!(s.names().len(), 2);
}

#[test]
fn pull_into_a_full_store() {
    if !common::require_mount_env() {
        return;
    }
    let Some(reg) = Registry::start() else {
        return;
    };
    let conf = format!(
        "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
        reg.host
    );
    let a = Store::new();
    let (_fs, b) = small_store(tempdir());
    for side in [&a, &b] {
        fs::write(side.path("registries.conf"), &conf).unwrap();
    }
    let src = a.path("layout");
    layout(&src, 100, 4 << 20, "1");
    a.ok(&["image", "import", src.to_str().unwrap(), "--name", "app:1"]);
    let dest = format!("{}/test/app:1", reg.host);
    a.ok(&["push", "app:1", &dest]);
    import_small(&b);
    // An interrupted download stays in partial/ to be resumed (registry::resume).
    full_then_freed(
        &b,
        "pull",
        FULL_LAYER,
        || {
            let mut c = b.cmd();
            c.args(["pull", "-q", &dest]);
            c
        },
        &["partial"],
    );
    assert!(b.names().contains(&dest));
}

#[test]
fn build_into_a_full_store() {
    let Some(env) = build_env::Env::new() else {
        return;
    };
    let (_fs, s) = small_store(tempfile::tempdir_in(env.dir.path()).unwrap());
    // The Env's base image goes into the small store.
    fs::remove_dir_all(env.path("store")).ok();
    std::os::unix::fs::symlink(s.path("store"), env.path("store")).unwrap();
    env.base("base");
    let ctx = context(
        &s,
        2 << 20,
        "FROM base\nCOPY big /big\nRUN cat /big > /copy\n",
    );
    full_then_freed(
        &s,
        "build",
        &["Dockerfile:2: writing /big"],
        || {
            let mut c = s.cmd();
            c.args(["build", "-t", "built:1", &ctx]);
            c
        },
        &[],
    );
    assert!(s.names().contains(&"built:1".to_owned()));
    let left: Vec<_> = fs::read_dir(s.path("scratch")).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the run directory: {left:?}");
}
