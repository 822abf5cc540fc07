//! Registries: strata pull/push/login against Debian's real `docker-registry` (CNCF
//! distribution 2.8) started here on 127.0.0.1 at a free port with a config of the test's own
//! (filesystem storage in a temp dir, delete enabled, htpasswd bcrypt auth for some), and
//! interop with skopeo. Every server is a child process killed by a Drop guard.

mod common;

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::STRATA;
use sha2::{Digest as _, Sha256};

const USER: &str = "tester";
const PASS: &str = "s3cret-pw";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Says SKIP on stderr itself (libtest swallows `eprintln!` of passing tests).
fn skip(why: &str) {
    let line = format!("SKIP {}: {why}\n", common::test_name());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A running docker-registry; killed (and waited for) when dropped.
struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    host: String,
}

impl Registry {
    /// None (after printing SKIP) when docker-registry or htpasswd is missing.
    fn start(htpasswd: bool) -> Option<Registry> {
        for cmd in ["docker-registry", "htpasswd"] {
            if !have(cmd) {
                skip(&format!(
                    "{cmd} is not installed (scripts/setup.sh installs it)"
                ));
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        if htpasswd {
            let pw = dir.path().join("htpasswd");
            let mut c = Command::new("htpasswd")
                .args(["-B", "-i", "-c"])
                .arg(&pw)
                .arg(USER)
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(PASS.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success(), "htpasswd -B");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                pw.display()
            );
        }
        let conf = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{auth}",
            dir.path().join("data").display()
        );
        let conf_path = dir.path().join("config.yml");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let r = Registry {
            child: Some(child),
            dir,
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&r.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The file holding a blob in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client side: its own store, auth file, registries.conf (the registry is insecure:
/// plain HTTP), HOME.
struct Side {
    dir: tempfile::TempDir,
}

impl Side {
    fn new(reg: &Registry) -> Side {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("registries.conf"),
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                reg.host
            ),
        )
        .unwrap();
        Side { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(STRATA);
        c.arg("--root").arg(self.root());
        c.env(
            "CONTAINERS_REGISTRIES_CONF",
            self.dir.path().join("registries.conf"),
        )
        .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
        .env("HOME", self.dir.path())
        .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
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
            "strata {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// Fails, with a one-line error; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
        assert!(!o.status.success(), "strata {args:?} should fail");
        let last = err.lines().last().unwrap_or("").to_owned();
        assert!(last.starts_with("strata: "), "{err}");
        last
    }

    fn login(&self, reg: &Registry, password: &str) -> Output {
        let mut c = self
            .cmd()
            .args(["login", &reg.host, "-u", USER, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    }

    fn manifest_digest(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["image", "inspect", name])).unwrap();
        v["manifest"].as_str().unwrap().to_owned()
    }

    fn image_names(&self) -> String {
        self.ok(&["image", "ls"])
    }

    fn layer_count(&self) -> usize {
        fs::read_dir(self.root().join("layers")).map_or(0, |d| d.count())
    }
}

// ---- test images, made here ----

fn sha(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A gzip layer of files (path, data, mode); a path ending in `/` is a directory, `->` a symlink.
fn layer(files: &[(&str, Vec<u8>, u32)]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        if let Some((name, target)) = p.split_once(" -> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        } else if p.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, p, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, data.as_slice()).unwrap();
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (tar, gz.finish().unwrap())
}

fn base_layer() -> Vec<(&'static str, Vec<u8>, u32)> {
    let mut files = vec![
        ("bin/", vec![], 0o755),
        ("etc/", vec![], 0o755),
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        ),
        ("etc/group", b"root:x:0:\n".to_vec(), 0o644),
    ];
    if let Ok(bb) = fs::read("/bin/busybox") {
        files.push(("bin/busybox", bb, 0o755));
        files.push(("bin/sh -> busybox", vec![], 0o777));
        files.push(("bin/cat -> busybox", vec![], 0o777));
    }
    files
}

/// An OCI layout at `dir` with one image of these layers, tagged `tag`.
fn write_image(dir: &Path, layers: &[Vec<(&str, Vec<u8>, u32)>], tag: &str) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        fs::write(blobs.join(&d[7..]), data).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let (tar, gz) = layer(files);
        diff_ids.push(sha(&tar));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(&gz), "size": gz.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/cat", "/etc/motd"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(&config), "size": config.len()},
        "layers": descs}))
    .unwrap();
    let md = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn motd(text: &str) -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![("etc/motd", text.as_bytes().to_vec(), 0o644)]
}

/// Imports a three-layer image (base, app data, motd) as `name` into the side's store.
fn make_image(side: &Side, name: &str, motd_text: &str) {
    let dir = side
        .dir
        .path()
        .join(format!("layout-{}", sha(name.as_bytes())));
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    write_image(
        &dir,
        &[
            base_layer(),
            vec![("app/", vec![], 0o755), ("app/data", data, 0o644)],
            motd(motd_text),
        ],
        "1",
    );
    side.ok(&["image", "import", dir.to_str().unwrap(), "--name", name]);
}

// ---- tests ----

#[test]
fn push_pull_round_trip_keeps_the_digest() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "app:1", "hello from the registry\n");
    let local = a.manifest_digest("app:1");
    let dest = format!("{}/test/app:1", reg.host);
    let df = a.dir.path().join("digest");
    let out = a.ok(&["push", "app:1", &dest, "--digestfile", df.to_str().unwrap()]);
    assert_eq!(out, local, "push prints the manifest digest");
    assert_eq!(fs::read_to_string(&df).unwrap(), local, "--digestfile");

    let b = Side::new(&reg);
    let name = b.ok(&["pull", &dest]);
    assert_eq!(name, dest);
    assert_eq!(
        b.manifest_digest(&dest),
        local,
        "pulled manifest is byte-identical"
    );
    assert_eq!(b.layer_count(), 3);
    // By digest too: stored under NAME@DIGEST.
    let by_digest = format!("{}/test/app@{local}", reg.host);
    assert_eq!(b.ok(&["pull", "-q", &by_digest]), by_digest);
    assert_eq!(b.manifest_digest(&by_digest), local);

    // A re-push sends nothing but HEADs and the manifest.
    let o = a.run(&["push", "app:1", &dest]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("0 blobs uploaded (0 bytes), 4 already there"),
        "{err}"
    );

    // `strata run REF` with the image already there does not pull again; a missing one is pulled.
    if common::require_mount_env() && Path::new("/bin/busybox").exists() {
        let c = Side::new(&reg);
        let o = c.run(&["run", &dest]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "hello from the registry\n"
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("pulling"));
        let o = c.run(&["run", &dest]);
        assert!(!String::from_utf8_lossy(&o.stderr).contains("pulling"));
    } else {
        skip("strata run of a pulled image needs root, /dev/fuse and /bin/busybox");
    }
}

#[test]
fn chunked_upload_and_cross_repository_mount() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "app:1", "chunks\n");
    let local = a.manifest_digest("app:1");
    let dest = format!("{}/chunked/app:1", reg.host);
    // 100 kB chunks: the 800 kB layer goes in several PATCH requests.
    a.ok(&["push", "app:1", &dest, "--chunk-size", "100000"]);
    let b = Side::new(&reg);
    b.ok(&["pull", &dest]);
    assert_eq!(b.manifest_digest(&dest), local);
    // b's store knows the blobs came from chunked/app: pushing to another repo mounts them.
    let other = format!("{}/other/app:2", reg.host);
    let o = b.run(&["push", &dest, &other]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("0 blobs uploaded") && err.contains("4 mounted"),
        "{err}"
    );
    let c = Side::new(&reg);
    c.ok(&["pull", &other]);
    assert_eq!(c.manifest_digest(&other), local);
}

#[test]
fn shared_base_pull_fetches_only_the_new_layer() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "v1:1", "one\n");
    make_image(&a, "v2:1", "two\n");
    a.ok(&["push", "v1:1", &format!("{}/s/app:1", reg.host)]);
    a.ok(&["push", "v2:1", &format!("{}/s/app:2", reg.host)]);
    let b = Side::new(&reg);
    b.ok(&["pull", &format!("{}/s/app:1", reg.host)]);
    let o = b.run(&["pull", &format!("{}/s/app:2", reg.host)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let motd_size = layer(&motd("two\n")).1.len();
    assert!(
        err.contains(&format!("1 of 3 layers fetched ({motd_size} bytes)")),
        "only the motd layer moves: {err}"
    );
    assert_eq!(b.layer_count(), 4);
}

#[test]
fn htpasswd_login_logout_and_their_errors() {
    let Some(reg) = Registry::start(true) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "app:1", "auth\n");
    let dest = format!("{}/private/app:1", reg.host);
    let e = a.fails(&["push", "app:1", &dest]);
    assert!(e.contains(&format!("strata login {}", reg.host)), "{e}");
    let o = a.login(&reg, "wrong-password\n");
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("wrong user name or password"), "{e}");
    assert!(
        !a.dir.path().join("auth.json").exists(),
        "nothing stored for a failed login"
    );
    let o = a.login(&reg, &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let auth = fs::read_to_string(a.dir.path().join("auth.json")).unwrap();
    assert!(
        auth.contains(&reg.host) && !auth.contains(PASS),
        "base64, as podman writes it"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(a.dir.path().join("auth.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "auth.json is private");
    a.ok(&["push", "app:1", &dest]);
    // Also read from docker's config.json.
    let b = Side::new(&reg);
    fs::create_dir_all(b.dir.path().join(".docker")).unwrap();
    fs::copy(
        a.dir.path().join("auth.json"),
        b.dir.path().join(".docker/config.json"),
    )
    .unwrap();
    b.ok(&["pull", &dest]);
    a.ok(&["logout", &reg.host]);
    let e = a.fails(&["pull", &dest]);
    assert!(e.contains("strata login"), "{e}");
    let e = a.fails(&["logout", &reg.host]);
    assert!(e.contains("not logged in"), "{e}");
}

#[test]
fn fault_messages_name_what_failed() {
    let Some(mut reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    let missing = format!("{}/nothing/here:1", reg.host);
    let e = a.fails(&["pull", &missing]);
    assert!(e.contains(&missing) && e.contains("not found"), "{e}");
    let e = a.fails(&["pull", "Bad/Name"]);
    assert!(e.contains("lowercase"), "{e}");
    let e = a.fails(&["pull", "a:"]);
    assert!(e.contains("empty tag"), "{e}");
    let host = reg.host.clone();
    reg.stop();
    let e = a.fails(&["pull", &format!("{host}/x:1")]);
    assert!(e.contains(&host) && e.contains("connection refused"), "{e}");
}

#[test]
fn corrupted_blob_is_refused_and_nothing_is_stored() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "app:1", "corrupt me\n");
    let dest = format!("{}/c/app:1", reg.host);
    a.ok(&["push", "app:1", &dest]);
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", "app:1"])).unwrap();
    let blob = v["layers"][1]["digest"].as_str().unwrap().to_owned();
    let f = reg.blob_file(&blob);
    let mut data = fs::read(&f).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&f, data).unwrap();
    let b = Side::new(&reg);
    let e = b.fails(&["pull", &dest]);
    assert!(e.contains(&blob), "the error names the blob: {e}");
    assert!(!b.image_names().contains(&dest));
    assert_eq!(b.layer_count(), 0, "no layer reached the store");
    let blobs = fs::read_dir(b.root().join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "no blob reached the store");
}

#[test]
fn skopeo_interop_both_ways() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    if !have("skopeo") {
        skip("skopeo is not installed");
        return;
    }
    let a = Side::new(&reg);
    make_image(&a, "app:1", "from skopeo\n");
    let local = a.manifest_digest("app:1");
    let pushed = format!("{}/strata/app:1", reg.host);
    a.ok(&["push", "app:1", &pushed]);
    let copied = format!("{}/skopeo/copy:1", reg.host);
    let skopeo = |args: &[&str]| {
        let o = Command::new("skopeo").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{pushed}"),
        &format!("docker://{copied}"),
    ]);
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{copied}"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        v["Digest"].as_str().unwrap(),
        local,
        "skopeo's copy has strata's digest"
    );

    // An image skopeo pushed (from an OCI layout it reads) is pulled by strata.
    let layout = a.dir.path().join("sk-layout");
    write_image(&layout, &[base_layer(), motd("pushed by skopeo\n")], "v1");
    let sk = format!("{}/skopeo/pushed:v1", reg.host);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{sk}"),
    ]);
    let b = Side::new(&reg);
    b.ok(&["pull", &sk]);
    let sk_digest = serde_json::from_str::<serde_json::Value>(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{sk}"),
    ]))
    .unwrap()["Digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.manifest_digest(&sk), sk_digest);
    if common::require_mount_env() && Path::new("/bin/busybox").exists() {
        let o = b.run(&["run", &sk]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "pushed by skopeo\n");
    } else {
        skip("running the skopeo-pushed image needs root, /dev/fuse and /bin/busybox");
    }
}
