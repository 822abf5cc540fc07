//! Hostile images: what is not an archive, manifests that lie about sizes, gzip bombs, a huge
//! config, and layer tars with duplicate entries, forward hard links, over-long names and deep
//! nesting. Each is refused with one clear line or handled as the tar says, and the store stays
//! sound (`strata image check` passes, no image half there).

mod common;
mod oci_layout;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::STRATA;
use oci_layout::{LayerSpec, gzip, tar_of, write_oci};

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn import(&self, src: &Path, env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(STRATA);
        c.arg("--root")
            .arg(self.path("store"))
            .args(["image", "import"])
            .arg(src)
            .args(["--name", "hostile:1"])
            .env_remove("STRATA_MAX_LAYER_BYTES")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    /// The import fails with exactly one line; that line.
    fn refused(&self, src: &Path, env: &[(&str, &str)]) -> String {
        let o = self.import(src, env);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "imported {}: {err}", src.display());
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        self.sound_and_empty();
        err
    }

    fn strata(&self, args: &[&str]) -> Output {
        Command::new(STRATA)
            .arg("--root")
            .arg(self.path("store"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `image check` passes and no image is listed (a refused import left nothing visible).
    fn sound_and_empty(&self) {
        let o = self.strata(&["image", "check"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("0 images: 0 damaged"), "{out}");
    }

    /// The unpacked root of the (one-layer) image imported.
    fn layer_root(&self) -> PathBuf {
        let o = self.strata(&["image", "inspect", "hostile:1"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        PathBuf::from(v["layers"][0]["dir"].as_str().unwrap())
    }

    fn layout(&self, name: &str, layers: &[LayerSpec], run: serde_json::Value) -> PathBuf {
        let dir = self.path(name);
        write_oci(&dir, layers, run, "1");
        dir
    }
}

#[test]
fn a_file_that_is_no_archive_gets_one_line_and_none_of_its_bytes() {
    let s = Store::new();
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(s.path("noise"), &noise).unwrap();
    fs::write(s.path("text.gz"), gzip(passwd.as_bytes())).unwrap();
    for src in [
        PathBuf::from("/etc/passwd"),
        s.path("noise"),
        s.path("text.gz"),
    ] {
        let err = s.refused(&src, &[]);
        for want in ["OCI image layout", "OCI image tar", "docker-save archive"] {
            assert!(err.contains(want), "{err}");
        }
        let shown = err.replace(&src.display().to_string(), "");
        for line in passwd.lines().filter(|l| l.len() > 4) {
            assert!(!shown.contains(line), "echoes the input: {err}");
        }
        assert!(!shown.contains("root:"), "echoes the input: {err}");
    }
}

#[test]
fn a_manifest_claiming_a_1tb_layer_is_refused_before_reading() {
    let s = Store::new();
    let mut l = LayerSpec::gz(&tar_of(&[("f", b"x")]));
    l.size = 1 << 40;
    let src = s.layout("tera", &[l], serde_json::json!({}));
    let err = s.refused(&src, &[]);
    assert!(
        err.contains("manifest size 1099511627776 exceeds the limit")
            && err.contains("STRATA_MAX_LAYER_BYTES"),
        "{err}"
    );
}

#[test]
fn gzip_bombs_stop_at_the_configured_limit() {
    let s = Store::new();
    // 64 MiB of zeros: 64 KiB of gzip.
    let zeros = vec![0u8; 64 << 20];
    let tar = tar_of(&[("zeros", &zeros)]);
    let l = LayerSpec::gz(&tar);
    assert!(l.blob.len() < 1 << 20);
    let src = s.layout("bomb", &[l], serde_json::json!({}));
    let limit = [("STRATA_MAX_LAYER_BYTES", "16777216")];
    let err = s.refused(&src, &limit);
    assert!(
        err.contains("the uncompressed layer exceeds the limit of 16777216 bytes"),
        "{err}"
    );
    // The same layout as a gzip-compressed OCI tar: bounded while the archive expands.
    let packed = s.path("packed");
    let small = s.layout(
        "packed",
        &[LayerSpec::gz(&tar_of(&[("f", b"x")]))],
        serde_json::json!({}),
    );
    fs::write(packed.join("padding"), &zeros).unwrap();
    let mut t = tar::Builder::new(Vec::new());
    t.append_dir_all(".", &small).unwrap();
    fs::write(s.path("bomb.tar.gz"), gzip(&t.into_inner().unwrap())).unwrap();
    let err = s.refused(&s.path("bomb.tar.gz"), &limit);
    assert!(
        err.contains("the decompressed archive exceeds the limit"),
        "{err}"
    );
    // Under the default limit the honest 64 MiB layer imports.
    let o = s.import(&src, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::metadata(s.layer_root().join("zeros")).unwrap().len(),
        64 << 20
    );
}

#[test]
fn a_huge_env_list_imports_and_a_config_past_32mb_is_refused() {
    let s = Store::new();
    let env: Vec<String> = (0..200_000).map(|i| format!("VAR_{i}=value-{i}")).collect();
    let l = || LayerSpec::gz(&tar_of(&[("f", b"x")]));
    let src = s.layout("env", &[l()], serde_json::json!({"Env": env}));
    let o = s.import(&src, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = s.strata(&["image", "inspect", "hostile:1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["config"]["config"]["Env"].as_array().unwrap().len(),
        200_000
    );

    let s = Store::new();
    let env: Vec<String> = (0..1_500_000)
        .map(|i| format!("VAR_{i}=value-{i}"))
        .collect();
    let src = s.layout("env", &[l()], serde_json::json!({"Env": env}));
    let err = s.refused(&src, &[]);
    assert!(err.contains("too large for a JSON document"), "{err}");
}

fn entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

#[test]
fn duplicate_entries_the_later_wins() {
    use tar::EntryType::{Directory, Regular};
    let s = Store::new();
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, Regular, "a", b"first");
    entry(&mut b, Regular, "a", b"second");
    entry(&mut b, Directory, "d/", b"");
    entry(&mut b, Regular, "d/child", b"gone with d");
    entry(&mut b, Regular, "d", b"d is a file now");
    entry(&mut b, Regular, "e", b"e was a file");
    entry(&mut b, Directory, "e/", b"");
    entry(&mut b, Regular, "e/child", b"kept");
    entry(&mut b, Directory, "k/", b"");
    entry(&mut b, Regular, "k/one", b"1");
    entry(&mut b, Directory, "k/", b"");
    let tar = b.into_inner().unwrap();
    let src = s.layout("dup", &[LayerSpec::gz(&tar)], serde_json::json!({}));
    let o = s.import(&src, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = s.layer_root();
    assert_eq!(fs::read(root.join("a")).unwrap(), b"second");
    assert_eq!(fs::read(root.join("d")).unwrap(), b"d is a file now");
    assert_eq!(fs::read(root.join("e/child")).unwrap(), b"kept");
    assert_eq!(
        fs::read(root.join("k/one")).unwrap(),
        b"1",
        "a repeated directory keeps its children"
    );
}

#[test]
fn a_hard_link_to_a_later_entry_is_refused() {
    let s = Store::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, "early", "later").unwrap();
    entry(&mut b, tar::EntryType::Regular, "later", b"target");
    let src = s.layout(
        "fwd",
        &[LayerSpec::gz(&b.into_inner().unwrap())],
        serde_json::json!({}),
    );
    let err = s.refused(&src, &[]);
    assert!(
        err.contains("\"early\"") && err.contains("target must be an earlier file"),
        "{err}"
    );
}

#[test]
fn names_past_255_bytes_are_refused_long_paths_of_short_names_are_not() {
    let s = Store::new();
    let long = "n".repeat(300);
    let src = s.layout(
        "long",
        &[LayerSpec::gz(&tar_of(&[(&format!("dir/{long}"), b"x")]))],
        serde_json::json!({}),
    );
    let err = s.refused(&src, &[]);
    assert!(
        err.contains("File name too long") && err.contains(&long[..200]),
        "{err}"
    );
    // 16 components of 250 bytes: a 4,000-byte path, each name legal.
    let deep: Vec<String> = (0..16)
        .map(|i| format!("{i:02}{}", "p".repeat(248)))
        .collect();
    let path = deep.join("/") + "/f";
    let src = s.layout(
        "longpath",
        &[LayerSpec::gz(&tar_of(&[(&path, b"deep")]))],
        serde_json::json!({}),
    );
    let o = s.import(&src, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Walk down one name at a time: the whole path is past what one syscall takes.
    use rustix::fs::{Mode, OFlags, openat};
    let mut dir = rustix::fs::open(s.layer_root(), OFlags::PATH, Mode::empty()).unwrap();
    for c in &deep {
        dir = openat(
            &dir,
            c.as_str(),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = openat(&dir, "f", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(f), &mut data).unwrap();
    assert_eq!(data, b"deep");
}

#[test]
fn nesting_4000_levels_is_refused_in_one_line_and_leaves_nothing() {
    let s = Store::new();
    let path = "a/".repeat(4000) + "f";
    let src = s.layout(
        "nest",
        &[LayerSpec::gz(&tar_of(&[(&path, b"bottom")]))],
        serde_json::json!({}),
    );
    let err = s.refused(&src, &[]);
    assert!(err.contains("File name too long"), "{err}");
    assert!(
        err.len() < 9000,
        "the error is bounded: {} bytes",
        err.len()
    );
}
