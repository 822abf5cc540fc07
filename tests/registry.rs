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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// NAME.key and a self-signed NAME.crt in `dir`.
fn self_signed(dir: &Path, name: &str, subject: &str, extra: &[&str]) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt, "-days",
        "2", "-subj", subject,
    ];
    args.extend_from_slice(extra);
    openssl(&args, dir);
}

/// A certificate authority made for the test (openssl).
struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    fn new(dir: &Path) -> TestCa {
        let dir = dir.join("ca");
        fs::create_dir_all(&dir).unwrap();
        self_signed(
            &dir,
            "ca",
            "/CN=strata test CA",
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
        );
        TestCa { dir }
    }

    fn ca_crt(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A server certificate for 127.0.0.1 signed by the CA.
    fn server_cert(&self, out: &Path) -> (PathBuf, PathBuf) {
        let ext = out.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let (key, csr, crt) = (
            out.join("server.key"),
            out.join("server.csr"),
            out.join("server.crt"),
        );
        let p = |p: &Path| p.to_str().unwrap().to_owned();
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &p(&key),
                "-out",
                &p(&csr),
                "-subj",
                "/CN=127.0.0.1",
            ],
            out,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &p(&csr),
                "-CA",
                &p(&self.ca_crt()),
                "-CAkey",
                &p(&self.dir.join("ca.key")),
                "-CAcreateserial",
                "-out",
                &p(&crt),
                "-days",
                "2",
                "-extfile",
                &p(&ext),
            ],
            out,
        );
        (crt, key)
    }
}

const SERVICE: &str = "strata-test-registry";
const ISSUER: &str = "strata-test-issuer";

enum Mode {
    Open,
    Htpasswd,
    Tls(TestCa),
    /// distribution's `auth.token`: tokens from the issuer at `realm`, signed with `cert`'s key.
    Token {
        realm: String,
        cert: PathBuf,
    },
}

/// A running docker-registry; killed (and waited for) when dropped.
struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    host: String,
}

fn spawn_registry(dir: &Path) -> Child {
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(
            fs::File::options()
                .create(true)
                .append(true)
                .open(dir.join("registry.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

impl Registry {
    /// None (after printing SKIP) when docker-registry or htpasswd is missing.
    fn start(htpasswd: bool) -> Option<Registry> {
        Self::start_with(if htpasswd { Mode::Htpasswd } else { Mode::Open })
    }

    fn start_with(mode: Mode) -> Option<Registry> {
        for cmd in ["docker-registry", "htpasswd", "openssl"] {
            if !have(cmd) {
                skip(&format!(
                    "{cmd} is not installed (scripts/setup.sh installs it)"
                ));
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let extra = match &mode {
            Mode::Open => String::new(),
            Mode::Htpasswd => {
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
                format!(
                    "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                    pw.display()
                )
            }
            Mode::Tls(ca) => {
                let (cert, key) = ca.server_cert(dir.path());
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                )
            }
            Mode::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let (http_extra, auth) = match mode {
            Mode::Tls(_) => (extra, String::new()),
            _ => (String::new(), extra),
        };
        let conf = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{http_extra}{auth}",
            dir.path().join("data").display()
        );
        let conf_path = dir.path().join("config.yml");
        fs::write(&conf_path, conf).unwrap();
        let mut r = Registry {
            child: None,
            dir,
            host,
        };
        r.restart();
        Some(r)
    }

    /// Starts it (again, on the same port and storage).
    fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_registry(self.dir.path()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        Self::with_conf(&format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            reg.host
        ))
    }

    /// No insecure entry: https with verified certificates only.
    fn secure() -> Side {
        Self::with_conf("")
    }

    fn with_conf(conf: &str) -> Side {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("registries.conf"), conf).unwrap();
        Side { dir }
    }

    /// Trusts `ca` for `host` (certs.d/HOST/ca.crt, as /etc/containers/certs.d is laid out).
    fn trust(&self, host: &str, ca: &TestCa) {
        let d = self.dir.path().join("certs.d").join(host);
        fs::create_dir_all(&d).unwrap();
        fs::copy(ca.ca_crt(), d.join("ca.crt")).unwrap();
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
        .env("STRATA_CERTS_DIR", self.dir.path().join("certs.d"))
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

/// Writes a blob into the OCI layout at `dir`; its digest.
fn put_blob(dir: &Path, data: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let d = sha(data);
    fs::write(blobs.join(&d[7..]), data).unwrap();
    d
}

/// An image's blobs (layers, config for `arch`, manifest) in the layout; the manifest's
/// descriptor.
fn put_image(dir: &Path, layers: &[Vec<(&str, Vec<u8>, u32)>], arch: &str) -> serde_json::Value {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let (tar, gz) = layer(files);
        diff_ids.push(sha(&tar));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put_blob(dir, &gz), "size": gz.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/cat", "/etc/motd"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(dir, &config), "size": config.len()},
        "layers": descs}))
    .unwrap();
    serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put_blob(dir, &manifest), "size": manifest.len(),
        "platform": {"os": "linux", "architecture": arch}})
}

fn write_index(dir: &Path, mut desc: serde_json::Value, tag: &str) {
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// An OCI layout at `dir` with one image of these layers, tagged `tag`.
fn write_image(dir: &Path, layers: &[Vec<(&str, Vec<u8>, u32)>], tag: &str) {
    let mut desc = put_image(dir, layers, "amd64");
    desc.as_object_mut().unwrap().remove("platform");
    write_index(dir, desc, tag);
}

/// An OCI layout whose `tag` is a multi-platform index of these images.
/// The layers of one image: (path, data, mode) per file.
type Layers<'a> = Vec<Vec<(&'a str, Vec<u8>, u32)>>;

fn write_multi(dir: &Path, images: &[(&str, Layers<'_>)], tag: &str) {
    let manifests: Vec<_> = images
        .iter()
        .map(|(arch, l)| put_image(dir, l, arch))
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}))
    .unwrap();
    let desc = serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": put_blob(dir, &index), "size": index.len()});
    write_index(dir, desc, tag);
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

#[test]
fn tls_with_a_test_ca_from_certs_d() {
    let ca_dir = tempfile::tempdir().unwrap();
    if !have("openssl") {
        skip("openssl is not installed");
        return;
    }
    let ca = TestCa::new(ca_dir.path());
    let Some(reg) = Registry::start_with(Mode::Tls(ca)) else {
        return;
    };
    let ca = TestCa {
        dir: ca_dir.path().join("ca"),
    };
    let a = Side::secure();
    make_image(&a, "app:1", "tls\n");
    let dest = format!("{}/tls/app:1", reg.host);
    // Unknown CA: refused, naming the host.
    let e = a.fails(&["push", "app:1", &dest]);
    assert!(
        e.contains(&reg.host) && e.to_lowercase().contains("cert"),
        "{e}"
    );
    // --tls-verify=false: accepted without the CA.
    a.ok(&["push", "--tls-verify=false", "app:1", &dest]);
    // The CA in certs.d/HOST/ca.crt: verified.
    let b = Side::secure();
    b.trust(&reg.host, &ca);
    b.ok(&["pull", &dest]);
    assert_eq!(b.manifest_digest(&dest), a.manifest_digest("app:1"));
    // Plain HTTP is never tried for a registry that is not insecure.
    let plain = Registry::start(false).unwrap();
    let c = Side::secure();
    let e = c.fails(&["pull", &format!("{}/x:1", plain.host)]);
    assert!(e.contains(&plain.host), "{e}");
}

// ---- a token issuer for distribution's `auth.token` mode ----

/// Issues RS256 JWTs (signed by `openssl dgst`, the signing certificate in `x5c`) as
/// distribution's token spec says: the right password gets every action asked for, anonymous
/// requests get `pull` on `public/*` only. Serves until dropped; records each request's query.
struct TokenIssuer {
    realm: String,
    cert: PathBuf,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(x) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenIssuer {
    fn start() -> TokenIssuer {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        self_signed(dir.path(), "token", "/CN=strata test token issuer", &[]);
        openssl(
            &[
                "x509",
                "-in",
                "token.crt",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
            dir.path(),
        );
        let der = fs::read(dir.path().join("token.der")).unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let key = dir.path().join("token.key");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (req2, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = serve_token(&mut s, &key, &x5c, &req2);
                }
            }
        });
        TokenIssuer {
            realm,
            cert: dir.path().join("token.crt"),
            requests,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(
            self.realm
                .trim_start_matches("http://")
                .trim_end_matches("/token"),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next authenticated token the issuer makes is expired.
static EXPIRE_NEXT: AtomicBool = AtomicBool::new(false);

fn serve_token(
    s: &mut TcpStream,
    key: &Path,
    x5c: &str,
    log: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut r = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut auth = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_owned());
        }
    }
    let target = first.split(' ').nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    log.lock().unwrap().push(unescape(query));
    let good = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
        )
    };
    let user = match auth {
        Some(a) if a == good => USER,
        Some(_) => {
            return s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        None => "",
    };
    let mut access = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        let v = unescape(v);
        let parts: Vec<&str> = v.splitn(3, ':').collect();
        if k != "scope" || parts.len() != 3 || parts[0] != "repository" {
            continue;
        }
        let actions: Vec<&str> = parts[2]
            .split(',')
            .filter(|a| !user.is_empty() || (*a == "pull" && parts[1].starts_with("public/")))
            .collect();
        access
            .push(serde_json::json!({"type": "repository", "name": parts[1], "actions": actions}));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A token that has expired already, though `expires_in` promises 300 s: the registry
    // refuses it and the client must fetch another.
    // (distribution allows 60 s of clock skew.)
    let exp = match !user.is_empty() && EXPIRE_NEXT.swap(false, Ordering::Relaxed) {
        true => now - 120,
        false => now + 300,
    };
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user, "aud": SERVICE, "exp": exp, "nbf": now - 300,
        "iat": now - 300, "jti": format!("{now}-{}", log.lock().unwrap().len()), "access": access});
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut sign = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    sign.stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())?;
    let sig = sign.wait_with_output()?.stdout;
    let jwt = format!("{signing_input}.{}", b64url(&sig));
    let body = serde_json::json!({"token": jwt, "expires_in": 300}).to_string();
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn bearer_token_flow_with_a_test_issuer() {
    if !have("openssl") {
        skip("openssl is not installed");
        return;
    }
    let issuer = TokenIssuer::start();
    let Some(reg) = Registry::start_with(Mode::Token {
        realm: issuer.realm.clone(),
        cert: issuer.cert.clone(),
    }) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "app:1", "token\n");
    let private = format!("{}/private/app:1", reg.host);
    // Anonymous: a token without push access, so log in.
    let e = a.fails(&["push", "app:1", &private]);
    assert!(e.contains("strata login"), "{e}");
    let o = a.login(&reg, "nope\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong user name or password"));
    let o = a.login(&reg, &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = issuer.requests().len();
    a.ok(&["push", "app:1", &private]);
    let push_tokens: Vec<String> = issuer.requests()[before..].to_vec();
    // One token for the push scope, shared by every blob request (cached per scope).
    assert_eq!(
        push_tokens
            .iter()
            .filter(|q| q.contains("repository:private/app:pull,push"))
            .count(),
        1,
        "{push_tokens:?}"
    );
    assert!(
        push_tokens
            .iter()
            .all(|q| q.contains(&format!("service={SERVICE}")))
    );
    let public = format!("{}/public/app:1", reg.host);
    a.ok(&["push", "app:1", &public]);
    // Anonymous tokens: pull of public/* works without credentials, private/* says log in.
    let b = Side::new(&reg);
    b.ok(&["pull", &public]);
    assert_eq!(b.manifest_digest(&public), a.manifest_digest("app:1"));
    let e = b.fails(&["pull", &private]);
    assert!(e.contains("strata login"), "{e}");
    // A token the registry refuses is fetched again, once, and the pull goes on.
    let o = b.login(&reg, &format!("{PASS}\n"));
    assert!(o.status.success());
    EXPIRE_NEXT.store(true, Ordering::Relaxed);
    let before = issuer.requests().len();
    b.ok(&["pull", &private]);
    let pull_scope = "scope=repository:private/app:pull";
    let fetched = issuer.requests()[before..]
        .iter()
        .filter(|q| q.ends_with(pull_scope))
        .count();
    assert_eq!(fetched, 2, "{:?}", &issuer.requests()[before..]);
    assert!(
        !EXPIRE_NEXT.load(Ordering::Relaxed),
        "the expired token was issued"
    );
}

// ---- the registry stopped mid-pull ----

/// A TCP forwarder to the registry. While armed, the first connection whose responses pass
/// `limit` bytes is held there (`tripped` is set) until the test has stopped the registry
/// and `release`s it; then it is closed. So the pull is cut mid-blob, every time.
struct HoldingProxy {
    host: String,
    tripped: std::sync::Arc<AtomicBool>,
    release: std::sync::Arc<AtomicBool>,
}

use std::sync::atomic::{AtomicBool, Ordering};

impl HoldingProxy {
    fn start(upstream: &str, limit: u64) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let flags = || std::sync::Arc::new(AtomicBool::new(false));
        let (armed, tripped, release) = (flags(), flags(), flags());
        armed.store(true, Ordering::Relaxed);
        let (a, t, r, up) = (
            armed.clone(),
            tripped.clone(),
            release.clone(),
            upstream.to_owned(),
        );
        // Detached: it ends with the test process; each connection ends when either side closes.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let (a, t, r) = (a.clone(), t.clone(), r.clone());
                std::thread::spawn(move || forward(client, server, limit, &a, &t, &r));
            }
        });
        HoldingProxy {
            host,
            tripped,
            release,
        }
    }
}

fn forward(
    client: TcpStream,
    server: TcpStream,
    limit: u64,
    armed: &AtomicBool,
    tripped: &AtomicBool,
    release: &AtomicBool,
) {
    use std::io::Read;
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
    let (mut s_in, mut c_out) = (server, client);
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while let Ok(n) = s_in.read(&mut buf) {
        if n == 0 || c_out.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if sent > limit && armed.swap(false, Ordering::Relaxed) {
            tripped.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !release.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            break;
        }
    }
    let _ = c_out.shutdown(std::net::Shutdown::Both);
    let _ = s_in.shutdown(std::net::Shutdown::Both);
}

#[test]
fn registry_stopped_mid_pull_then_the_rerun_resumes() {
    let Some(mut reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    // One 12 MB layer of incompressible data (xorshift), so the cut lands inside it.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..12 << 17)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let layout = a.dir.path().join("big");
    write_image(&layout, &[vec![("big", data, 0o644)]], "1");
    a.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "big:1",
    ]);
    a.ok(&["push", "big:1", &format!("{}/big/app:1", reg.host)]);
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", "big:1"])).unwrap();
    let blob = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = v["layers"][0]["size"].as_u64().unwrap();

    let proxy = HoldingProxy::start(&reg.host, 4 << 20);
    let b = Side::with_conf(&format!(
        "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
        proxy.host
    ));
    let via = format!("{}/big/app:1", proxy.host);
    let child = b
        .cmd()
        .args(["pull", &via])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !proxy.tripped.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the pull never got 4 MB into the blob"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.stop();
    proxy.release.store(true, Ordering::Relaxed);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the pull must fail when the registry stops: {err}"
    );
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("strata: pulling") && last.contains(&blob[..19]),
        "{err}"
    );
    assert!(!b.image_names().contains("big/app"), "no image recorded");
    assert_eq!(b.layer_count(), 0, "no layer reached the store");
    let partial = b.root().join("partial").join(&blob[7..]);
    let kept = fs::metadata(&partial).map_or(0, |m| m.len());
    assert!(
        kept > 0 && kept < size,
        "the partial blob is kept ({kept} of {size} bytes)"
    );

    reg.restart();
    let o = b.run(&["pull", &via]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("resuming at byte {kept}")), "{err}");
    assert!(
        err.contains(&format!("1 of 1 layers fetched ({} bytes)", size - kept)),
        "only the rest moved: {err}"
    );
    assert_eq!(b.manifest_digest(&via), a.manifest_digest("big:1"));
    assert!(!partial.exists(), "the partial blob became the store's");
}

#[test]
fn podman_pulls_and_runs_what_strata_pushed() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    if !have("podman") {
        skip("podman is not installed");
        return;
    }
    if !Path::new("/bin/busybox").exists() || !rustix::process::geteuid().is_root() {
        skip("needs root and /bin/busybox for the image podman runs");
        return;
    }
    let a = Side::new(&reg);
    make_image(&a, "app:1", "run by podman\n");
    let dest = format!("{}/strata/podman:1", reg.host);
    a.ok(&["push", "app:1", &dest]);
    // podman with a storage of its own (vfs), so the machine's containers are not touched.
    let pm = a.dir.path().join("podman");
    let podman = |args: &[&str]| {
        let o = Command::new("podman")
            .arg("--root")
            .arg(pm.join("storage"))
            .arg("--runroot")
            .arg(pm.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .args(args)
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                a.dir.path().join("registries.conf"),
            )
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    podman(&["pull", "-q", "--tls-verify=false", &dest]);
    let digest = podman(&["image", "inspect", "--format", "{{.Digest}}", &dest]);
    assert_eq!(digest.trim(), a.manifest_digest("app:1"));
    // Limits this sandbox's hard rlimits allow (podman's defaults are above them).
    let limits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let out = podman(&[&["run", "--rm", "--network", "none"], &limits[..], &[&dest]].concat());
    assert_eq!(out, "run by podman\n");
}

#[test]
fn registries_conf_search_prefix_and_mirror() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let a = Side::new(&reg);
    make_image(&a, "app:1", "conf\n");
    let local = a.manifest_digest("app:1");
    for dest in ["app:1", "real/team/app:1", "mirrored/app:1"] {
        a.ok(&["push", "app:1", &format!("{}/{dest}", reg.host)]);
    }
    let h = &reg.host;
    let b = Side::with_conf(&format!(
        r#"unqualified-search-registries = ["{h}"]

[[registry]]
location = "{h}"
insecure = true

[[registry]]
prefix = "example.invalid/team"
location = "{h}/real/team"
insecure = true

[[registry]]
location = "unreachable.invalid:1"
[[registry.mirror]]
location = "{h}/mirrored"
insecure = true
"#
    ));
    // A short name goes through the search list and is named after the registry found.
    assert_eq!(b.ok(&["pull", "app:1"]), format!("{h}/app:1"));
    assert_eq!(
        b.ok(&["pull", "example.invalid/team/app:1"]),
        "example.invalid/team/app:1"
    );
    assert_eq!(
        b.ok(&["pull", "unreachable.invalid:1/app:1"]),
        "unreachable.invalid:1/app:1"
    );
    for name in [
        format!("{h}/app:1"),
        "example.invalid/team/app:1".into(),
        "unreachable.invalid:1/app:1".into(),
    ] {
        assert_eq!(b.manifest_digest(&name), local, "{name}");
    }
    // `strata image tag` names an image for a push.
    b.ok(&[
        "image",
        "tag",
        "example.invalid/team/app:1",
        &format!("{h}/tagged/app:7"),
    ]);
    b.ok(&["push", &format!("{h}/tagged/app:7")]);
    let c = Side::new(&reg);
    c.ok(&["pull", &format!("{h}/tagged/app:7")]);
    assert_eq!(c.manifest_digest(&format!("{h}/tagged/app:7")), local);
}

// ---- the distribution spec's endpoints a client uses, by their numbers ----

/// A registry holding `conf/app:1` pushed by strata, and a library client for it.
fn pushed_image() -> Option<(Registry, Side, strata::registry::Client, String)> {
    let reg = Registry::start(false)?;
    let a = Side::new(&reg);
    make_image(&a, "app:1", "endpoints\n");
    a.ok(&[
        "push",
        "--chunk-size",
        "300000",
        "app:1",
        &format!("{}/conf/app:1", reg.host),
    ]);
    let opts = strata::registry::ClientOptions {
        insecure: true,
        ..Default::default()
    };
    let c = strata::registry::Client::connect(&reg.host, &opts).unwrap();
    let digest = a.manifest_digest("app:1");
    Some((reg, a, c, digest))
}

fn get(c: &strata::registry::Client, method: &str, path: &str) -> (u16, Vec<u8>) {
    use strata::registry::client::Body;
    let m = ureq::http::Method::from_bytes(method.as_bytes()).unwrap();
    let accept = [("accept", strata::registry::manifest::ACCEPT.to_owned())];
    let mut r = c.request(m, path, &[], &accept, Body::Empty).unwrap();
    let body = r.body_mut().read_to_vec().unwrap_or_default();
    (r.status().as_u16(), body)
}

#[test]
fn end_1_ping_and_end_3_manifest_get_by_tag_and_digest() {
    let Some((_reg, _a, c, digest)) = pushed_image() else {
        return;
    };
    assert_eq!(get(&c, "GET", "/v2/").0, 200);
    let (status, by_tag) = get(&c, "GET", "/v2/conf/app/manifests/1");
    assert_eq!(status, 200);
    assert_eq!(
        sha(&by_tag),
        digest,
        "end-7 stored strata's bytes unchanged"
    );
    let (status, by_digest) = get(&c, "GET", &format!("/v2/conf/app/manifests/{digest}"));
    assert_eq!((status, by_digest), (200, by_tag));
    assert_eq!(get(&c, "GET", "/v2/conf/app/manifests/nope").0, 404);
}

#[test]
fn end_2_blob_get_and_head_after_end_4a_5_6_chunked_upload() {
    let Some((_reg, a, c, _)) = pushed_image() else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", "app:1"])).unwrap();
    for l in v["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let (status, body) = get(&c, "GET", &format!("/v2/conf/app/blobs/{d}"));
        assert_eq!(status, 200);
        assert_eq!(sha(&body), d, "the blob uploaded in PATCH chunks is intact");
        assert_eq!(body.len() as u64, l["size"].as_u64().unwrap());
        assert_eq!(get(&c, "HEAD", &format!("/v2/conf/app/blobs/{d}")).0, 200);
    }
    let missing = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        get(&c, "HEAD", &format!("/v2/conf/app/blobs/{missing}")).0,
        404
    );
}

#[test]
fn end_7_manifest_put_by_digest_and_end_11_mount() {
    let Some((reg, a, c, digest)) = pushed_image() else {
        return;
    };
    // Push by digest (no tag): the manifest is there under its digest only.
    let by_digest = format!("{}/bydigest/app@{digest}", reg.host);
    assert_eq!(a.ok(&["push", "app:1", &by_digest]), digest);
    assert_eq!(
        get(&c, "GET", &format!("/v2/bydigest/app/manifests/{digest}")).0,
        200
    );
    // A digest that is not the image's is refused before anything is sent.
    let wrong = format!("{}/bydigest/app@sha256:{}", reg.host, "1".repeat(64));
    let e = a.fails(&["push", "app:1", &wrong]);
    assert!(e.contains(&digest), "{e}");
    // end-11: a store that pulled conf/app mounts its blobs into another repository.
    let b = Side::new(&reg);
    b.ok(&["pull", &format!("{}/conf/app:1", reg.host)]);
    let o = b.run(&[
        "push",
        &format!("{}/conf/app:1", reg.host),
        &format!("{}/mounted/app:1", reg.host),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 mounted"));
    assert_eq!(get(&c, "GET", "/v2/mounted/app/manifests/1").0, 200);
}

#[test]
fn multi_platform_index_pull_picks_the_platform() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    if !have("skopeo") {
        skip("skopeo is not installed (it pushes the index)");
        return;
    }
    let a = Side::new(&reg);
    let layout = a.dir.path().join("multi");
    let arm_only = vec![
        ("etc/", vec![], 0o755),
        ("etc/arch", b"arm64\n".to_vec(), 0o644),
    ];
    let amd_only = vec![
        ("etc/", vec![], 0o755),
        ("etc/arch", b"amd64\n".to_vec(), 0o644),
    ];
    write_multi(
        &layout,
        &[("arm64", vec![arm_only]), ("amd64", vec![amd_only])],
        "m",
    );
    let dest = format!("{}/multi/app:m", reg.host);
    let o = Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:m", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arch_file = |side: &Side, name: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&side.ok(&["image", "inspect", name])).unwrap();
        let dir = v["layers"][0]["dir"].as_str().unwrap().to_owned();
        (
            fs::read_to_string(Path::new(&dir).join("etc/arch")).unwrap(),
            v["config"]["architecture"].clone(),
        )
    };
    let b = Side::new(&reg);
    b.ok(&["pull", &dest]);
    assert_eq!(
        arch_file(&b, &dest).0,
        "amd64\n",
        "this machine's platform by default"
    );
    let c = Side::new(&reg);
    c.ok(&["pull", "--platform", "linux/arm64", &dest]);
    let (f, arch) = arch_file(&c, &dest);
    assert_eq!((f.as_str(), arch.as_str()), ("arm64\n", Some("arm64")));
    let e = c.fails(&["pull", "--platform", "linux/s390x", &dest]);
    assert!(
        e.contains("no manifest for linux/s390x") && e.contains("linux/amd64"),
        "{e}"
    );
}

// ---- hostile registries (issue 18): a small misbehaving HTTP server of the test's own ----

/// What the hostile server answers for one path.
enum Reply {
    Ok {
        ctype: &'static str,
        body: Vec<u8>,
    },
    /// A chunked body that never ends: `prefix`, then `fill` bytes until the client hangs up.
    Endless {
        ctype: &'static str,
        prefix: Vec<u8>,
        fill: u8,
    },
    Redirect(String),
    NotFound,
}

type Handler = dyn Fn(&str) -> Reply + Send + Sync;

/// A plain-HTTP registry on 127.0.0.1 that answers `GET /v2/` with 200 and every other path
/// through `handler`; one thread per connection, `Connection: close`. Stopped (accept loop
/// and every connection, endless bodies included) on Drop.
struct Hostile {
    host: String,
    stop: std::sync::Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Hostile {
    fn start(handler: Box<Handler>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let handler: std::sync::Arc<Handler> = handler.into();
        let st = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for s in listener.incoming().flatten() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let (h, st) = (handler.clone(), st.clone());
                conns.push(std::thread::spawn(move || serve_hostile(s, &*h, &st)));
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Hostile {
            host,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve_hostile(mut s: TcpStream, handler: &Handler, stop: &AtomicBool) {
    use std::io::Read;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
            _ => return,
        }
        // Not HTTP (the client trying TLS first): hang up so it falls back to plain HTTP.
        if !req[0].is_ascii_uppercase() {
            return;
        }
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let reply = match path.as_str() {
        "/v2/" => Reply::Ok {
            ctype: "application/json",
            body: b"{}".to_vec(),
        },
        p => handler(p),
    };
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let _ = match reply {
        Reply::Ok { ctype, body } => {
            let h = format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                body.len()
            );
            s.write_all(&[head("200 OK", &h), body].concat())
        }
        Reply::Redirect(to) => s.write_all(&head(
            "307 Temporary Redirect",
            &format!("Location: {to}\r\nContent-Length: 0\r\n"),
        )),
        Reply::NotFound => s.write_all(&head("404 Not Found", "Content-Length: 0\r\n")),
        Reply::Endless {
            ctype,
            prefix,
            fill,
        } => endless(
            &mut s,
            &head(
                "200 OK",
                &format!("Content-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"),
            ),
            &prefix,
            fill,
            stop,
        ),
    };
}

/// Writes the head, then chunks forever: until the client hangs up or the server stops.
fn endless(
    s: &mut TcpStream,
    head: &[u8],
    prefix: &[u8],
    fill: u8,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let chunk = |data: &[u8]| [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    s.write_all(head)?;
    if !prefix.is_empty() {
        s.write_all(&chunk(prefix))?;
    }
    let filler = chunk(&vec![fill; 64 << 10]);
    while !stop.load(Ordering::Relaxed) {
        s.write_all(&filler)?;
    }
    Ok(())
}

/// A two-layer image in an OCI layout; (layout dir, manifest bytes, manifest digest,
/// config digest, layer digests).
struct Served {
    dir: tempfile::TempDir,
    manifest: Vec<u8>,
    digest: String,
    config: String,
    layers: Vec<String>,
}

impl Served {
    fn new() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let desc = put_image(
            dir.path(),
            &[base_layer(), motd("served by a hostile registry\n")],
            "amd64",
        );
        let digest = desc["digest"].as_str().unwrap().to_owned();
        let manifest = fs::read(dir.path().join("blobs/sha256").join(&digest[7..])).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let layers = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        Served {
            config: m["config"]["digest"].as_str().unwrap().to_owned(),
            dir,
            manifest,
            digest,
            layers,
        }
    }

    /// The honest answer for `path` (`/v2/h/app/manifests/REF` or `/v2/h/app/blobs/D`).
    fn answer(&self, path: &str) -> Reply {
        if path.starts_with("/v2/h/app/manifests/") {
            return Reply::Ok {
                ctype: "application/vnd.oci.image.manifest.v1+json",
                body: self.manifest.clone(),
            };
        }
        let Some(d) = path.strip_prefix("/v2/h/app/blobs/sha256:") else {
            return Reply::NotFound;
        };
        match fs::read(self.dir.path().join("blobs/sha256").join(d)) {
            Ok(body) => Reply::Ok {
                ctype: "application/octet-stream",
                body,
            },
            Err(_) => Reply::NotFound,
        }
    }
}

/// Serves `served`, except for paths `tamper` answers (Some).
fn hostile(
    served: Served,
    tamper: impl Fn(&Served, &str) -> Option<Reply> + Send + Sync + 'static,
) -> Hostile {
    Hostile::start(Box::new(move |p| {
        tamper(&served, p).unwrap_or_else(|| served.answer(p))
    }))
}

/// The pull fails with one line naming each of `needles`, and nothing is left in the store:
/// no image, no layer, no blob, no unverified partial download.
fn refused_and_nothing_stored(side: &Side, reference: &str, needles: &[&str]) -> String {
    let o = side.run(&["pull", "-q", reference]);
    assert!(!o.status.success(), "pull {reference} should fail");
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "a one-line error: {err}");
    assert!(err.starts_with("strata: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "the error names {n}: {err}");
    }
    let count = |d: &str| fs::read_dir(side.root().join(d)).map_or(0, |d| d.count());
    assert_eq!(count("layers"), 0, "no layer reached the store: {err}");
    assert_eq!(count("blobs/sha256"), 0, "no blob reached the store: {err}");
    // partial/ may keep a layer that came whole and verified (a rerun needs it), nothing else.
    for f in fs::read_dir(side.root().join("partial"))
        .into_iter()
        .flatten()
    {
        let f = f.unwrap();
        let name = f.file_name().to_string_lossy().into_owned();
        let data = fs::read(f.path()).unwrap();
        assert_eq!(
            sha(&data),
            format!("sha256:{name}"),
            "partial/{name} kept: {err}"
        );
    }
    assert!(!side.image_names().contains("h/app"), "{err}");
    err
}

fn hostile_side(h: &Hostile) -> Side {
    Side::with_conf(&format!(
        "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
        h.host
    ))
}

#[test]
fn hostile_registry_serving_another_digest_is_refused() {
    // The manifest asked for by digest, answered with another (valid) manifest.
    let other = Served::new();
    let other_manifest = [other.manifest.clone(), b"\n".to_vec()].concat();
    let served = Served::new();
    let want = served.digest.clone();
    let h = hostile(served, move |_, p| {
        p.contains("/manifests/").then(|| Reply::Ok {
            ctype: "application/vnd.oci.image.manifest.v1+json",
            body: other_manifest.clone(),
        })
    });
    let side = hostile_side(&h);
    let reference = format!("{}/h/app@{want}", h.host);
    refused_and_nothing_stored(&side, &reference, &[&want]);
    drop(h);

    // A layer blob and the config blob answered with other bytes.
    for which in ["layer", "config"] {
        let served = Served::new();
        let bad = if which == "layer" {
            served.layers[1].clone()
        } else {
            served.config.clone()
        };
        let (_, gz) = layer(&motd("not what was asked for\n"));
        let b = bad.clone();
        let h = hostile(served, move |_, p| {
            p.ends_with(&b).then(|| Reply::Ok {
                ctype: "application/octet-stream",
                body: gz.clone(),
            })
        });
        let side = hostile_side(&h);
        let reference = format!("{}/h/app:1", h.host);
        refused_and_nothing_stored(&side, &reference, &[&bad]);
    }
}

#[test]
fn hostile_registry_endless_bodies_are_cut() {
    // A manifest that never ends: cut at strata's manifest size cap.
    let h = hostile(Served::new(), |_, p| {
        p.contains("/manifests/").then(|| Reply::Endless {
            ctype: "application/vnd.oci.image.manifest.v1+json",
            prefix: br#"{"schemaVersion":2,"annotations":{"a":""#.to_vec(),
            fill: b'a',
        })
    });
    let side = hostile_side(&h);
    let e = refused_and_nothing_stored(&side, &format!("{}/h/app:1", h.host), &["manifest"]);
    assert!(e.contains("limit") || e.contains("too large"), "{e}");
    drop(h);

    // A layer blob whose honest bytes go on forever: cut at the descriptor's size.
    let served = Served::new();
    let big = served.layers[0].clone();
    let honest = fs::read(served.dir.path().join("blobs/sha256").join(&big[7..])).unwrap();
    let b = big.clone();
    let h = hostile(served, move |_, p| {
        p.ends_with(&b).then(|| Reply::Endless {
            ctype: "application/octet-stream",
            prefix: honest.clone(),
            fill: 0,
        })
    });
    let side = hostile_side(&h);
    refused_and_nothing_stored(&side, &format!("{}/h/app:1", h.host), &[&big]);
}

#[test]
fn hostile_registry_redirect_to_a_file_url_is_refused() {
    for what in ["/manifests/", "/blobs/"] {
        let h = hostile(Served::new(), move |_, p| {
            p.contains(what)
                .then(|| Reply::Redirect("file:///etc/passwd".to_owned()))
        });
        let side = hostile_side(&h);
        let e = refused_and_nothing_stored(&side, &format!("{}/h/app:1", h.host), &["file:"]);
        assert!(
            !e.contains("root:x:0:0"),
            "nothing of the file is read: {e}"
        );
    }
}

#[test]
fn image_rm_and_prune_clean_partial_downloads_not_locked_ones() {
    let side = Side::with_conf("");
    make_image(&side, "app:1", "partial\n");
    make_image(&side, "app:2", "partial 2\n");
    let dir = side.root().join("partial");
    fs::create_dir_all(&dir).unwrap();
    // An interrupted download's leftovers, and one a running pull holds (its flock).
    let (stale, held) = (dir.join("a".repeat(64)), dir.join("b".repeat(64)));
    fs::write(&stale, b"half a blob").unwrap();
    fs::write(&held, b"being written").unwrap();
    let lock = fs::File::options().write(true).open(&held).unwrap();
    lock.lock().unwrap();
    let out = side.ok(&["image", "rm", "app:1"]);
    assert!(out.contains("1 partial downloads"), "{out}");
    assert!(!stale.exists(), "the stale partial download is removed");
    assert!(held.exists(), "a locked one is left to its pull");
    drop(lock);
    let out = side.ok(&["image", "rm", "app:2"]);
    assert!(out.contains("1 partial downloads"), "{out}");
    assert!(!held.exists(), "removed once its pull let go");
    fs::write(&stale, b"again").unwrap();
    let out = side.ok(&["image", "prune"]);
    assert!(
        out.contains("1 partial downloads") && !stale.exists(),
        "{out}"
    );
}
