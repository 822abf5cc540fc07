//! Images: build OCI layouts, OCI tars and docker-save archives in the test, import them,
//! check digests, traversal safety, layer sharing and GC, commit an upper layer and export.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{STRATA, StrataMount, require_mount_env};
use sha2::{Digest as _, Sha256};
use strata::image::{self, Store};

// ---- building images ----

#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, Vec<u8>, u32),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    /// A raw name written as is (traversal attempts).
    RawFile(Vec<u8>, Vec<u8>),
    RawSymlink(Vec<u8>, Vec<u8>),
    RawHardlink(Vec<u8>, Vec<u8>),
}

fn raw_header(kind: tar::EntryType, name: &[u8], size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    let n = &mut h.as_old_mut().name;
    n[..name.len()].copy_from_slice(name);
    h
}

fn raw_link(h: &mut tar::Header, target: &[u8]) {
    let l = &mut h.as_old_mut().linkname;
    l[..target.len()].copy_from_slice(target);
}

fn build_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode) => {
                let mut h = raw_header(tar::EntryType::Directory, p.as_bytes(), 0, *mode);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            E::File(p, data, mode) => {
                let mut h = raw_header(
                    tar::EntryType::Regular,
                    p.as_bytes(),
                    data.len() as u64,
                    *mode,
                );
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
            E::RawFile(p, data) => {
                let mut h = raw_header(tar::EntryType::Regular, p, data.len() as u64, 0o644);
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
            E::Symlink(p, t) => {
                let mut h = raw_header(tar::EntryType::Symlink, p.as_bytes(), 0, 0o777);
                raw_link(&mut h, t.as_bytes());
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            E::RawSymlink(p, t) => {
                let mut h = raw_header(tar::EntryType::Symlink, p, 0, 0o777);
                raw_link(&mut h, t);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            E::Hardlink(p, t) => {
                let mut h = raw_header(tar::EntryType::Link, p.as_bytes(), 0, 0o644);
                raw_link(&mut h, t.as_bytes());
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            E::RawHardlink(p, t) => {
                let mut h = raw_header(tar::EntryType::Link, p, 0, 0o644);
                raw_link(&mut h, t);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Comp {
    None,
    Gzip,
    Zstd,
}

fn compress(data: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (data.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(data, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

fn sha(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A built image: layer blobs (compressed), config and manifest documents.
struct Img {
    blobs: BTreeMap<String, Vec<u8>>,
    manifest: Vec<u8>,
    config: Vec<u8>,
    /// (uncompressed tar, compressed blob digest)
    layers: Vec<(Vec<u8>, String)>,
}

fn image(layers: &[(Vec<E>, Comp)], config_extra: serde_json::Value) -> Img {
    let mut blobs = BTreeMap::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut out_layers = Vec::new();
    for (entries, c) in layers {
        let tar = build_tar(entries);
        let (blob, mt) = compress(&tar, *c);
        let d = sha(&blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        diff_ids.push(sha(&tar));
        blobs.insert(d.clone(), blob);
        out_layers.push((tar, d));
    }
    let mut config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    });
    if let (Some(c), Some(extra)) = (config.as_object_mut(), config_extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    blobs.insert(sha(&config), config.clone());
    blobs.insert(sha(&manifest), manifest.clone());
    Img {
        blobs,
        manifest,
        config,
        layers: out_layers,
    }
}

fn write_layout(dir: &Path, images: &[(&Img, &str)]) {
    let sha_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&sha_dir).unwrap();
    let mut manifests = Vec::new();
    for (img, tag) in images {
        for (d, data) in &img.blobs {
            fs::write(sha_dir.join(&d[7..]), data).unwrap();
        }
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&img.manifest), "size": img.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap(),
    )
    .unwrap();
}

/// A tar of a directory's files (for OCI tars).
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

fn write_docker_archive(out: &Path, img: &Img, tag: &str) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let config_name = format!("{}.json", &sha(&img.config)[7..]);
    add(&config_name, &img.config);
    let mut layers = Vec::new();
    for (i, (tar, _)) in img.layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, tar);
        layers.push(name);
    }
    let m = serde_json::json!([{"Config": config_name, "RepoTags": [tag], "Layers": layers}]);
    add("manifest.json", &serde_json::to_vec(&m).unwrap());
    b.into_inner().unwrap();
}

/// The base layer: busybox (when the host has a static one) and an /etc.
fn base_layer() -> Vec<E> {
    let mut e = vec![
        E::Dir("bin/", 0o755),
        E::Dir("etc/", 0o755),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".to_vec(),
            0o644,
        ),
        E::File(
            "etc/group",
            b"root:x:0:\napp:x:1001:\nstaff:x:50:app\n".to_vec(),
            0o644,
        ),
        E::File("etc/motd", b"base\n".to_vec(), 0o644),
        E::Dir("data/", 0o755),
        E::File("data/a", b"a\n".to_vec(), 0o644),
        E::File("data/b", b"b\n".to_vec(), 0o600),
        E::Hardlink("data/b-link", "data/b"),
        E::Dir("old/", 0o755),
        E::File("old/x", b"x\n".to_vec(), 0o644),
        E::Dir("tree/", 0o755),
        E::Dir("tree/sub/", 0o750),
        E::File("tree/sub/deep", b"deep\n".to_vec(), 0o644),
        E::Symlink("tree/link", "../etc/motd"),
    ];
    if let Ok(bb) = fs::read("/bin/busybox") {
        e.push(E::File("bin/busybox", bb, 0o755));
        e.push(E::Symlink("bin/sh", "busybox"));
        e.push(E::Symlink("bin/cat", "busybox"));
    } else {
        eprintln!(
            "note: no /bin/busybox: base layer without it (scripts/setup.sh installs busybox-static)"
        );
    }
    e
}

/// Layer 2 modifies /etc/motd and deletes /data/a (whiteout); layer 3 replaces /old (opaque
/// marker first, order must not matter: also one after).
fn layers(c2: Comp, c3: Comp) -> Vec<(Vec<E>, Comp)> {
    vec![
        (base_layer(), Comp::None),
        (
            vec![
                E::File("etc/motd", b"layer2\n".to_vec(), 0o644),
                E::File("data/.wh.a", Vec::new(), 0o644),
                E::Dir("data/new/", 0o755),
                E::File("data/new/n", b"n\n".to_vec(), 0o644),
            ],
            c2,
        ),
        (
            vec![
                E::Dir("old/", 0o700),
                E::File("old/.wh..wh..opq", Vec::new(), 0o644),
                E::File("old/y", b"y\n".to_vec(), 0o644),
                E::Dir("tree/", 0o755),
                E::File("tree/z", b"z\n".to_vec(), 0o644),
                E::File("tree/.wh..wh..opq", Vec::new(), 0o644),
            ],
            c3,
        ),
    ]
}

fn run_config() -> serde_json::Value {
    serde_json::json!({"config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["cat /etc/motd"],
        "Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/data", "User": "app:staff"}})
}

/// What the merged image must look like: path -> description.
fn expected_tree() -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    for (p, v) in [
        ("etc/motd", "file layer2\n"),
        ("data/b", "file b\n"),
        ("data/b-link", "file b\n"),
        ("data/new", "dir"),
        ("data/new/n", "file n\n"),
        ("old/y", "file y\n"),
        ("tree/z", "file z\n"),
        ("tree", "dir"),
        ("old", "dir"),
        ("data", "dir"),
    ] {
        t.insert(p.to_owned(), v.to_owned());
    }
    t
}

/// Checks the expected entries in a tree (a mounted dir) and the absence of hidden ones.
fn check_tree(root: &Path, context: &str) {
    for (p, want) in expected_tree() {
        let path = root.join(&p);
        let got = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => "dir".to_owned(),
            Ok(_) => format!(
                "file {}",
                String::from_utf8_lossy(&fs::read(&path).unwrap())
            ),
            Err(e) => format!("error {e}"),
        };
        assert_eq!(got, want, "{context}: {p}");
    }
    for gone in [
        "data/a",
        "old/x",
        "tree/sub",
        "tree/link",
        "data/.wh.a",
        "old/.wh..wh..opq",
    ] {
        assert!(
            fs::symlink_metadata(root.join(gone)).is_err(),
            "{context}: {gone} must be hidden"
        );
    }
    assert_eq!(
        fs::metadata(root.join("old")).unwrap().permissions().mode() & 0o777,
        0o700,
        "{context}: old's mode"
    );
    assert_eq!(
        fs::metadata(root.join("data/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "{context}: mode"
    );
}

/// The same check through strata's in-process union (no mount needed).
fn check_merged(store: &Store, name: &str, context: &str) {
    let run = image::image_run(store, name).unwrap();
    let m = image::merged::Merged::new(&run.lowers).unwrap();
    for (p, want) in expected_tree() {
        let (id, st) = m
            .lookup(p.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{context}: {p} missing"));
        let got = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            "dir".to_owned()
        } else {
            format!(
                "file {}",
                String::from_utf8_lossy(&m.read_file(id).unwrap())
            )
        };
        assert_eq!(got, want, "{context}: {p}");
    }
    for gone in ["data/a", "old/x", "tree/sub", "tree/link"] {
        assert!(
            m.lookup(gone.as_bytes()).unwrap().is_none(),
            "{context}: {gone} must be hidden"
        );
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn store(&self) -> Store {
        Store::open(&self.path("store")).unwrap()
    }
    fn strata(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(STRATA);
        c.arg("--root").arg(self.path("store")).args(args);
        c.output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.strata(args);
        assert!(
            o.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn count(&self, sub: &str) -> usize {
        fs::read_dir(self.path("store").join(sub)).map_or(0, |d| d.count())
    }
}

// ---- tests ----

#[test]
fn import_oci_layout_dir_gzip_zstd_merged_view() {
    let env = Env::new();
    let img = image(&layers(Comp::Gzip, Comp::Zstd), run_config());
    write_layout(&env.path("layout"), &[(&img, "v1")]);
    let out = env.ok(&[
        "image",
        "import",
        env.path("layout").to_str().unwrap(),
        "--name",
        "test/app:v1",
    ]);
    assert_eq!(out.trim(), "test/app:v1");
    let store = env.store();
    assert_eq!(env.count("layers"), 3);
    assert!(env.ok(&["image", "ls"]).contains("test/app:v1"));
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "test/app:v1"])).unwrap();
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 3);
    // Whiteouts stay `.wh.` files in the layer directories.
    let run = image::image_run(&store, "test/app:v1").unwrap();
    assert!(run.lowers[1].join("data/.wh.a").is_file());
    assert!(run.lowers[0].join("old/.wh..wh..opq").is_file());
    // Hard links stay hard links.
    let b = fs::metadata(run.lowers[2].join("data/b")).unwrap();
    assert_eq!(
        b.ino(),
        fs::metadata(run.lowers[2].join("data/b-link"))
            .unwrap()
            .ino()
    );
    assert!(
        fs::symlink_metadata(run.lowers[2].join("tree/link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(b.mtime(), 1_600_000_000);
    check_merged(&store, "test/app:v1", "in-process union");
    // Run defaults, the user resolved in the image's own /etc files.
    assert_eq!(run.user, Some((1000, 50)));
    assert_eq!(run.defaults.working_dir, "/data");
    assert_eq!(
        image::resolve_user(&run.lowers, "app").unwrap(),
        (1000, 1001)
    );
    assert_eq!(image::resolve_user(&run.lowers, "4242").unwrap(), (4242, 0));
    assert!(image::resolve_user(&run.lowers, "nobody").is_err());
    let plan = image::merge_run(&run, &image::RunOverrides::default()).unwrap();
    assert_eq!(plan.argv, ["/bin/sh", "-c", "cat /etc/motd"]);

    if !require_mount_env() {
        return;
    }
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = StrataMount::lowers(&run.lowers, &mnt);
    check_tree(&mnt, "strata mount of the imported layers");
    if Path::new("/bin/busybox").exists() {
        let o = Command::new(mnt.join("bin/busybox"))
            .arg("true")
            .status()
            .unwrap();
        assert!(o.success(), "busybox from the image runs");
    }
    drop(m);
}

#[test]
fn import_oci_tar_and_docker_archive_share_layers() {
    let env = Env::new();
    let img = image(&layers(Comp::Gzip, Comp::None), run_config());
    write_layout(&env.path("layout"), &[(&img, "v1")]);
    tar_dir(&env.path("layout"), &env.path("app.tar"));
    let out = env.ok(&["image", "import", env.path("app.tar").to_str().unwrap()]);
    assert_eq!(out.trim(), "app:v1", "named from the file and its ref name");
    check_merged(&env.store(), "app:v1", "OCI tar");
    // A gzip-compressed OCI tar.
    let gz = compress(&fs::read(env.path("app.tar")).unwrap(), Comp::Gzip).0;
    fs::write(env.path("app2.tar.gz"), gz).unwrap();
    env.ok(&[
        "image",
        "import",
        env.path("app2.tar.gz").to_str().unwrap(),
        "--name",
        "app2",
    ]);
    // A docker-save archive of the same image (uncompressed layers: other blobs, same
    // layers).
    write_docker_archive(&env.path("docker.tar"), &img, "docker/app:1");
    let out = env.ok(&["image", "import", env.path("docker.tar").to_str().unwrap()]);
    assert_eq!(out.trim(), "docker/app:1");
    check_merged(&env.store(), "docker/app:1", "docker archive");
    assert_eq!(env.count("layers"), 3, "every layer stored once");
    // Another image on the same base: one more layer only.
    let other = image(
        &[
            (base_layer(), Comp::None),
            (vec![E::File("other", b"o".to_vec(), 0o644)], Comp::Gzip),
        ],
        serde_json::json!({}),
    );
    write_layout(&env.path("other"), &[(&other, "latest")]);
    env.ok(&[
        "image",
        "import",
        env.path("other").to_str().unwrap(),
        "--name",
        "other",
    ]);
    assert_eq!(env.count("layers"), 4, "the shared base is stored once");
    // rm keeps what others use, then collects.
    for n in ["app:v1", "app2", "docker/app:1"] {
        env.ok(&["image", "rm", n]);
    }
    assert_eq!(env.count("layers"), 2, "only other's layers are left");
    let run = image::image_run(&env.store(), "other").unwrap();
    assert!(run.lowers.iter().all(|l| l.is_dir()));
    env.ok(&["image", "rm", "other:latest"]);
    assert_eq!(env.count("layers"), 0);
    assert_eq!(env.count("blobs/sha256"), 0);
    let o = env.strata(&["image", "rm", "other"]);
    assert!(!o.status.success());
}

/// Nothing of a failed import may stay in the store.
fn assert_store_empty(env: &Env, context: &str) {
    assert_eq!(env.count("layers"), 0, "{context}: layers");
    assert_eq!(env.count("blobs/sha256"), 0, "{context}: blobs");
    assert_eq!(env.count("tmp"), 0, "{context}: staging");
    assert!(env.store().images().unwrap().is_empty(), "{context}: names");
}

#[test]
fn tampered_blob_and_diff_id_are_refused() {
    let env = Env::new();
    let img = image(&layers(Comp::Gzip, Comp::Zstd), run_config());
    // A blob whose content was changed.
    let layout = env.path("bad-blob");
    write_layout(&layout, &[(&img, "v1")]);
    let victim = &img.layers[1].1;
    let p = layout.join("blobs/sha256").join(&victim[7..]);
    let mut data = fs::read(&p).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    fs::write(&p, data).unwrap();
    let o = env.strata(&["image", "import", layout.to_str().unwrap(), "--name", "bad"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(victim.as_str()), "names the blob: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_store_empty(&env, "tampered blob");

    // A config whose diff_id does not match the layer (documents re-signed around it).
    let mut config: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    config["rootfs"]["diff_ids"][2] = sha(b"something else").into();
    let config = serde_json::to_vec(&config).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    manifest["config"]["digest"] = sha(&config).into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut bad = Img {
        blobs: img.blobs.clone(),
        manifest: manifest.clone(),
        config: config.clone(),
        layers: img.layers.clone(),
    };
    bad.blobs.insert(sha(&config), config);
    bad.blobs.insert(sha(&manifest), manifest);
    let layout = env.path("bad-diff");
    write_layout(&layout, &[(&bad, "v1")]);
    let o = env.strata(&["image", "import", layout.to_str().unwrap(), "--name", "bad"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("diff_id") && err.contains(img.layers[2].1.as_str()),
        "{err}"
    );
    assert_store_empty(&env, "tampered diff_id");

    // A docker archive whose layer was changed: its diff_id no longer matches.
    let real = image(&layers(Comp::None, Comp::None), run_config());
    write_docker_archive(&env.path("d.tar"), &real, "d:1");
    let mut archive = fs::read(env.path("d.tar")).unwrap();
    let at = archive
        .windows(9)
        .position(|w| w == b"layer2\n\0\0")
        .expect("layer 2's file in the archive");
    archive[at] = b'L';
    fs::write(env.path("d.tar"), archive).unwrap();
    let o = env.strata(&["image", "import", env.path("d.tar").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("diff_id") && err.contains("layer1/layer.tar"),
        "{err}"
    );
    assert_store_empty(&env, "tampered docker layer");
}

/// Unpacks one tar into `root/a/layer` and checks nothing appeared outside it.
fn unpack_contained(entries: &[E]) -> (tempfile::TempDir, Result<(), String>) {
    let root = tempfile::tempdir().unwrap();
    let layer = root.path().join("a/layer");
    fs::create_dir_all(&layer).unwrap();
    fs::write(root.path().join("a/sentinel"), b"keep").unwrap();
    let fd = strata::sys::open_root(&layer).unwrap();
    let tar = build_tar(entries);
    let opts = image::unpack::UnpackOptions { privileged: false };
    let res = image::unpack::unpack(tar.as_slice(), std::os::fd::AsFd::as_fd(&fd), opts, "test")
        .map(|_| ())
        .map_err(|e| e.to_string());
    let outside: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, [OsString::from("a")], "nothing beside a/");
    let mut inside: Vec<_> = fs::read_dir(root.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    inside.sort();
    assert_eq!(
        inside,
        [OsString::from("layer"), OsString::from("sentinel")]
    );
    assert_eq!(fs::read(root.path().join("a/sentinel")).unwrap(), b"keep");
    (root, res)
}

#[test]
fn traversal_attempts_are_refused_or_neutralised() {
    // `..` and absolute paths: cleaned to stay inside.
    let (root, res) = unpack_contained(&[
        E::RawFile(b"../../x".to_vec(), b"1".to_vec()),
        E::RawFile(b"/abs/y".to_vec(), b"2".to_vec()),
        E::RawFile(b"./ok/../z".to_vec(), b"3".to_vec()),
    ]);
    res.unwrap();
    let layer = root.path().join("a/layer");
    assert_eq!(fs::read(layer.join("x")).unwrap(), b"1");
    assert_eq!(fs::read(layer.join("abs/y")).unwrap(), b"2");
    assert_eq!(fs::read(layer.join("z")).unwrap(), b"3");

    // A symlink, then a write through it: refused.
    for target in [&b"/"[..], b"..", b"../..", b"/tmp"] {
        let (_root, res) = unpack_contained(&[
            E::RawSymlink(b"link".to_vec(), target.to_vec()),
            E::RawFile(b"link/sentinel".to_vec(), b"overwritten".to_vec()),
        ]);
        let err = res.expect_err("writing through a symlink must fail");
        assert!(err.contains("symlink"), "{err}");
    }
    // A symlinked directory deeper down, then a file below it.
    let (_root, res) = unpack_contained(&[
        E::Dir("d/", 0o755),
        E::RawSymlink(b"d/e".to_vec(), b"../../..".to_vec()),
        E::RawFile(b"d/e/a/sentinel".to_vec(), b"overwritten".to_vec()),
    ]);
    assert!(res.is_err());
    // A hard link to something outside: its target is cleaned into the layer, where it
    // does not exist.
    let (_root, res) = unpack_contained(&[E::RawHardlink(b"hl".to_vec(), b"../sentinel".to_vec())]);
    assert!(res.is_err(), "hard link outside must fail");
    // A hard link through a symlink: refused as well.
    let (_root, res) = unpack_contained(&[
        E::RawSymlink(b"up".to_vec(), b"..".to_vec()),
        E::RawHardlink(b"hl".to_vec(), b"up/sentinel".to_vec()),
    ]);
    assert!(res.is_err());
    // A symlink replaced by a file is not followed (the file replaces the link).
    let (root, res) = unpack_contained(&[
        E::RawSymlink(b"s".to_vec(), b"../sentinel".to_vec()),
        E::RawFile(b"s".to_vec(), b"mine".to_vec()),
    ]);
    res.unwrap();
    assert_eq!(fs::read(root.path().join("a/layer/s")).unwrap(), b"mine");
    // Through the CLI: one line naming the entry, nothing left in the store.
    let env = Env::new();
    let img = image(
        &[(
            vec![
                E::RawSymlink(b"etc".to_vec(), b"/etc".to_vec()),
                E::RawFile(b"etc/evil".to_vec(), b"x".to_vec()),
            ],
            Comp::Gzip,
        )],
        serde_json::json!({}),
    );
    write_layout(&env.path("evil"), &[(&img, "v1")]);
    let o = env.strata(&["image", "import", env.path("evil").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("etc/evil"));
    assert!(!Path::new("/etc/evil").exists());
    assert_store_empty(&env, "evil layer");
}

#[test]
fn parallel_imports_of_the_same_layers() {
    let env = Env::new();
    let img = image(&layers(Comp::Gzip, Comp::Zstd), run_config());
    write_layout(&env.path("layout"), &[(&img, "v1")]);
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(STRATA)
                .arg("--root")
                .arg(env.path("store"))
                .args(["image", "import"])
                .arg(env.path("layout"))
                .args(["--name", &format!("p{i}")])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(env.count("layers"), 3);
    assert_eq!(env.count("tmp"), 0);
    for i in 0..4 {
        check_merged(&env.store(), &format!("p{i}"), "parallel import");
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let o = Command::new("setfattr")
        .arg("-n")
        .arg(name)
        .arg("-v")
        .arg(String::from_utf8_lossy(value).as_ref())
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "setfattr {name} {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn commit_upper_then_view_and_export() {
    let env = Env::new();
    // No zstd here: Debian's umoci (0.4) cannot read zstd layers.
    let img = image(&layers(Comp::Gzip, Comp::None), run_config());
    write_layout(&env.path("layout"), &[(&img, "v1")]);
    env.ok(&[
        "image",
        "import",
        env.path("layout").to_str().unwrap(),
        "--name",
        "app:v1",
    ]);
    let root = rustix::process::geteuid().is_root();
    let pre = if root { "trusted" } else { "user" };
    // An upper as kernel overlayfs (or strata) leaves it: a modified file, a deleted file
    // (char 0/0 as root, `.wh.` otherwise), an opaque directory, and a renamed directory
    // (`mv /tree /moved`: redirect xattr + whiteout at the old name).
    let up = env.path("upper");
    fs::create_dir_all(up.join("etc")).unwrap();
    fs::write(up.join("etc/motd"), b"committed\n").unwrap();
    fs::create_dir_all(up.join("data")).unwrap();
    if root {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            up.join("data/b"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    } else {
        fs::write(up.join("data/.wh.b"), b"").unwrap();
    }
    fs::create_dir_all(up.join("data/new")).unwrap();
    set_xattr(&up.join("data/new"), &format!("{pre}.overlay.opaque"), b"y");
    fs::write(up.join("data/new/fresh"), b"fresh\n").unwrap();
    fs::create_dir(up.join("moved")).unwrap();
    set_xattr(
        &up.join("moved"),
        &format!("{pre}.overlay.redirect"),
        b"/tree",
    );
    fs::write(up.join("moved/added"), b"added\n").unwrap();
    if root {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            up.join("tree"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    } else {
        fs::write(up.join(".wh.tree"), b"").unwrap();
    }
    let out = env.ok(&[
        "commit",
        "--upper",
        up.to_str().unwrap(),
        "--from",
        "app:v1",
        "--name",
        "app:v2",
    ]);
    assert!(out.starts_with("app:v2 sha256:"), "{out}");
    let store = env.store();
    let run = image::image_run(&store, "app:v2").unwrap();
    assert_eq!(run.lowers.len(), 4);
    assert_eq!(run.defaults.cmd, ["cat /etc/motd"], "config carried over");
    let top = &run.lowers[0];
    assert!(top.join("data/.wh.b").is_file());
    assert!(top.join("data/new/.wh..wh..opq").is_file());
    assert!(
        top.join("moved/.wh..wh..opq").is_file(),
        "renamed dir written as opaque"
    );
    assert_eq!(
        fs::read(top.join("moved/z")).unwrap(),
        b"z\n",
        "merged content of the renamed dir"
    );
    assert!(top.join(".wh.tree").is_file());
    let m = image::merged::Merged::new(&run.lowers).unwrap();
    let read = |p: &str| m.file_at(p).unwrap();
    assert_eq!(read("etc/motd").as_deref(), Some(&b"committed\n"[..]));
    assert_eq!(read("data/b"), None);
    assert_eq!(read("data/new/n"), None, "opaque dir hides the old content");
    assert_eq!(read("data/new/fresh").as_deref(), Some(&b"fresh\n"[..]));
    assert_eq!(read("moved/z").as_deref(), Some(&b"z\n"[..]));
    assert_eq!(read("moved/added").as_deref(), Some(&b"added\n"[..]));
    assert!(m.lookup(b"tree").unwrap().is_none());
    // Deterministic: the same upper commits to the same layer.
    env.ok(&[
        "commit",
        "--upper",
        up.to_str().unwrap(),
        "--from",
        "app:v1",
        "--name",
        "app:v2b",
    ]);
    let a = store.get("app:v2").unwrap();
    let b = store.get("app:v2b").unwrap();
    assert_eq!(a.manifest.layers[3].digest, b.manifest.layers[3].digest);
    assert_eq!(env.count("layers"), 4);
    let history = a.config.history.len();
    assert_eq!(history, 1);

    if require_mount_env() {
        let mnt = env.path("mnt");
        fs::create_dir(&mnt).unwrap();
        let g = StrataMount::lowers(&run.lowers, &mnt);
        assert_eq!(fs::read(mnt.join("etc/motd")).unwrap(), b"committed\n");
        assert!(!mnt.join("data/b").exists());
        assert!(!mnt.join("tree").exists());
        let mut names: Vec<_> = fs::read_dir(mnt.join("moved"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        // tree was made opaque by layer 3: z only, plus what the upper added.
        assert_eq!(names, ["added", "z"].map(OsString::from));
        drop(g);
    }

    // Export, read back by skopeo and umoci, and by strata itself.
    let layout = env.path("exported");
    env.ok(&["image", "export", "app:v2", layout.to_str().unwrap()]);
    env.ok(&[
        "image",
        "export",
        "app:v2",
        env.path("exported.tar").to_str().unwrap(),
    ]);
    let other = Env::new();
    for p in [&layout, &env.path("exported.tar")] {
        let out = other.ok(&["image", "import", p.to_str().unwrap(), "--name", "again"]);
        assert_eq!(out.trim(), "again:latest");
        assert_eq!(
            other.store().get("again").unwrap().manifest_digest,
            a.manifest_digest
        );
    }
    if Command::new("skopeo").arg("--version").output().is_ok() {
        let o = Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:v2", layout.display())])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 4);
    } else {
        eprintln!("SKIP skopeo check: skopeo not installed (scripts/setup.sh installs it)");
    }
    if Command::new("umoci").arg("--version").output().is_ok() {
        let bundle = env.path("bundle");
        let mut c = Command::new("umoci");
        c.args(["unpack", "--image", &format!("{}:v2", layout.display())]);
        if !root {
            c.arg("--rootless");
        }
        let o = c.arg(&bundle).output().unwrap();
        assert!(
            o.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let rootfs = bundle.join("rootfs");
        assert_eq!(fs::read(rootfs.join("etc/motd")).unwrap(), b"committed\n");
        assert!(!rootfs.join("data/b").exists());
        assert!(!rootfs.join("tree").exists());
        assert!(!rootfs.join("data/new/n").exists());
        assert_eq!(fs::read(rootfs.join("moved/z")).unwrap(), b"z\n");
        assert_eq!(fs::read(rootfs.join("old/y")).unwrap(), b"y\n");
        assert!(!rootfs.join("old/x").exists());
        assert!(!rootfs.join("data/a").exists());
    } else {
        eprintln!("SKIP umoci check: umoci not installed (scripts/setup.sh installs it)");
    }
}

/// `strata run IMAGE` uses the image's Entrypoint, Cmd, Env, WorkingDir and User (resolved in
/// its /etc/passwd and /etc/group); CLI arguments override them. A persistent container layer
/// committed as a new image runs with the changes.
#[test]
fn run_image_with_its_config_then_commit_and_run_again() {
    if !require_mount_env() {
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP run_image_with_its_config_then_commit_and_run_again: no /bin/busybox");
        return;
    }
    let env = Env::new();
    let mut cfg = run_config();
    cfg["config"]["Cmd"] = serde_json::json!(["cat /etc/motd; echo $GREETING; pwd; id -u; id -g"]);
    let mut l = layers(Comp::Gzip, Comp::None);
    l[0].0.push(E::Symlink("bin/id", "busybox"));
    l[0].0.push(E::Symlink("bin/pwd", "busybox"));
    l[0].0.push(E::Symlink("bin/echo", "busybox"));
    l[0].0.push(E::Dir("tmp/", 0o1777));
    let img = image(&l, cfg);
    write_layout(&env.path("layout"), &[(&img, "v1")]);
    env.ok(&[
        "image",
        "import",
        env.path("layout").to_str().unwrap(),
        "--name",
        "app:v1",
    ]);
    let scratch = env.path("scratch");
    fs::create_dir(&scratch).unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(STRATA)
            .env("STRATA_RUN_DIR", &scratch)
            .arg("--root")
            .arg(env.path("store"))
            .arg("run")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "run {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(run(&["app:v1"]), "layer2\nhi\n/data\n1000\n50\n");
    // Arguments replace Cmd (the Entrypoint stays); --user and -e override.
    assert_eq!(
        run(&[
            "--user",
            "root",
            "-e",
            "GREETING=yo",
            "app:v1",
            "--",
            "echo $GREETING; id -u"
        ]),
        "yo\n0\n"
    );
    // A persistent layer, committed, then run as its own image.
    let keep = env.path("keep");
    run(&[
        "--user",
        "root",
        "--upper",
        keep.to_str().unwrap(),
        "app:v1",
        "--",
        "echo changed > /etc/motd; rm /data/b; chmod 600 /data/new/n",
    ]);
    // chmod made a metacopy (no data in the upper): the commit must still carry the data.
    assert!(
        fs::metadata(keep.join("diff/data/new/n")).unwrap().blocks() <= 16,
        "expected a metacopy in the container layer"
    );
    env.ok(&[
        "commit",
        "--upper",
        keep.to_str().unwrap(),
        "--from",
        "app:v1",
        "--name",
        "app:v2",
    ]);
    assert_eq!(
        run(&[
            "--user",
            "root",
            "app:v2",
            "--",
            "cat /etc/motd; ls /data; cat /data/new/n"
        ]),
        "changed\nb-link\nnew\nn\n"
    );
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0, "run left files");
}
