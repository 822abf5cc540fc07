//! Parity with `buildah bud --layers` (Debian's 1.28, vfs storage, chroot isolation): a corpus
//! of Dockerfiles built by both on the same busybox base; the merged filesystems (type, mode,
//! owner, size, content, link target, xattrs; mtimes and directory sizes ignored) and the run config
//! (Env, Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts, Volumes, StopSignal) must be
//! the same. Both images are listed by the same script in a `strata run` container, their
//! xattrs (busybox has no getfattr) on the host from their layer directories. Needs
//! root, /dev/fuse, /bin/busybox and buildah; skips loudly.

mod build_env;
mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use build_env::Env;
use strata::image::merged::Merged;

/// A case: name, Dockerfile, context files. `BASE` is the busybox base image.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const CORPUS: &[Case] = &[
    ("copy-file", "FROM BASE\nCOPY a /a\n", &[("a", "A\n")]),
    (
        "copy-dir",
        "FROM BASE\nCOPY d /d\n",
        &[("d/x", "x"), ("d/s/y", "y")],
    ),
    (
        "copy-dir-slash",
        "FROM BASE\nCOPY d /etc/\n",
        &[("d/x", "x")],
    ),
    (
        "copy-into-existing-dir",
        "FROM BASE\nCOPY a /etc\n",
        &[("a", "a")],
    ),
    (
        "copy-glob",
        "FROM BASE\nCOPY *.txt /g/\n",
        &[("1.txt", "1"), ("2.txt", "2"), ("n.md", "n")],
    ),
    (
        "copy-chown",
        "FROM BASE\nCOPY --chown=app:staff d /owned\n",
        &[("d/f", "f")],
    ),
    (
        "copy-chown-numeric",
        "FROM BASE\nCOPY --chown=7:8 a /a\n",
        &[("a", "a")],
    ),
    (
        "copy-chmod",
        "FROM BASE\nCOPY --chmod=640 a /a\n",
        &[("a", "a")],
    ),
    (
        "dockerignore",
        "FROM BASE\nCOPY . /ctx\n",
        &[
            ("keep", "k"),
            ("x.log", "l"),
            ("logs/a.log", "a"),
            ("logs/keep.log", "k"),
            (".dockerignore", "*.log\nlogs\n!logs/keep.log\nDockerfile\n"),
        ],
    ),
    ("whiteout-file", "FROM BASE\nRUN rm /etc/group\n", &[]),
    ("whiteout-dir", "FROM BASE\nRUN rm -r /root\n", &[]),
    (
        "rename-dir",
        "FROM BASE\nRUN mkdir -p /srv/a && echo 1 > /srv/a/f\nRUN mv /srv/a /srv/b\n",
        &[],
    ),
    (
        "chmod-lower",
        "FROM BASE\nRUN chmod 600 /etc/passwd && chmod 700 /bin\n",
        &[],
    ),
    (
        "chown-lower",
        "FROM BASE\nRUN chown 1000:50 /etc/group\n",
        &[],
    ),
    (
        "hard-links",
        "FROM BASE\nRUN echo x > /h1 && ln /h1 /h2 && ln /etc/passwd /p2\n",
        &[],
    ),
    (
        "symlinks",
        "FROM BASE\nRUN ln -s /etc/passwd /l1 && ln -s dangling /l2\n",
        &[],
    ),
    (
        "opaque-dir",
        "FROM BASE\nRUN rm -rf /tmp && mkdir /tmp && touch /tmp/new\n",
        &[],
    ),
    (
        "env-arg",
        "FROM BASE\nARG A=1\nENV B=$A C=${A:-x} D=${NOPE:-dflt} E=${A:+set}\nRUN echo \"$A $B $C $D $E\" > /f\n",
        &[],
    ),
    (
        "global-arg",
        "ARG V=x\nFROM BASE\nRUN echo \"[$V]\" > /v\n",
        &[],
    ),
    (
        "global-arg-redeclared",
        "ARG V=x\nFROM BASE\nARG V\nRUN echo \"[$V]\" > /v\n",
        &[],
    ),
    (
        "env-overrides-arg",
        "FROM BASE\nARG V=arg\nENV V=env\nRUN echo $V > /v\n",
        &[],
    ),
    (
        "workdir",
        "FROM BASE\nWORKDIR /w\nWORKDIR x/y\nRUN pwd > here\n",
        &[],
    ),
    (
        "user",
        "FROM BASE\nRUN mkdir /home && chmod 1777 /home\nUSER app\nRUN touch /home/mine\n",
        &[],
    ),
    (
        "multi-stage-copy",
        "FROM BASE AS b\nRUN echo built > /art\nFROM BASE\nCOPY --from=b /art /art\n",
        &[],
    ),
    (
        "multi-stage-from",
        "FROM BASE AS b\nRUN echo one > /one\nFROM b\nRUN echo two > /two\n",
        &[],
    ),
    (
        "entrypoint-cmd",
        "FROM BASE\nENTRYPOINT [\"/bin/echo\"]\nCMD [\"hi\"]\n",
        &[],
    ),
    (
        "entrypoint-shell",
        "FROM BASE\nCMD [\"x\"]\nENTRYPOINT echo hi\n",
        &[],
    ),
    (
        "config-fields",
        "FROM BASE\nLABEL a=b \"c d\"=e\nEXPOSE 80 53/udp\nVOLUME /data\nSTOPSIGNAL SIGQUIT\nCMD echo\n",
        &[],
    ),
    ("add-tar", "FROM BASE\nADD t.tar /unpacked/\n", &[]),
    // User xattrs set below on x, d/f, d/s and d itself: those of copied entries are kept;
    // the destination directory is made, not copied, so d's own are not (buildah alike).
    (
        "copy-xattrs",
        "FROM BASE\nCOPY x /x\nCOPY d /xd\nCOPY d/f /etc/\n",
        &[("x", "x"), ("d/f", "f"), ("d/s/g", "g")],
    ),
    // d/sub/b is made a hard link of d/a below: kept as one in the layer.
    (
        "copy-hard-links",
        "FROM BASE\nCOPY d /hl\nRUN stat -c '%i' /hl/a /hl/sub/b | uniq | wc -l > /hl/inodes\n",
        &[("d/a", "shared\n"), ("d/c", "alone\n")],
    ),
];

const LIST: &str = "find / -xdev ! -path /proc ! -path /dev ! -path /sys | sort | while read f; do \
    if [ -L \"$f\" ]; then echo \"$f link $(stat -c '%u:%g' \"$f\") -> $(readlink \"$f\")\"; \
    elif [ -d \"$f\" ]; then echo \"$f dir $(stat -c '%a %u:%g' \"$f\")\"; \
    else echo \"$f $(stat -c '%F %a %u:%g %s %h' \"$f\") $(md5sum < \"$f\")\"; fi; done";

const BUILDAH_MOUNTPOINTS: &[&str] = &["/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run"];

const FIELDS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
];

struct Buildah<'a> {
    env: &'a Env,
}

impl Buildah<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.env.path("buildah/root"))
            .arg("--runroot")
            .arg(self.env.path("buildah/run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = common::output_past_memfd_seal(|| {
            let mut c = self.cmd();
            c.args(args);
            c
        });
        assert!(
            o.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Buildah<'_> {
    fn drop(&mut self) {
        // vfs storage holds no mounts once builds end; this clears what buildah keeps.
        let _ = self.cmd().args(["rm", "--all"]).output();
    }
}

/// A config's fields that must agree (buildah's own version label left out).
fn fields(doc: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let rc = &doc["config"]["config"];
    FIELDS
        .iter()
        .map(|f| {
            let mut v = rc[*f].clone();
            if *f == "Labels"
                && let Some(m) = v.as_object_mut()
            {
                m.remove("io.buildah.version");
                if m.is_empty() {
                    v = serde_json::Value::Null;
                }
            }
            if v.as_array().is_some_and(Vec::is_empty) || v.as_str() == Some("") {
                v = serde_json::Value::Null;
            }
            ((*f).to_owned(), v)
        })
        .collect()
}

fn listing(env: &Env, image: &str) -> String {
    env.ok(&[
        "run",
        "--user",
        "0:0",
        "--entrypoint",
        "/bin/sh",
        image,
        "--",
        "-c",
        LIST,
    ])
}

/// Every xattr in an image's merged tree (`path name=value` lines), read on the host from its
/// layer directories through strata's in-process union (no mount).
fn xattrs(env: &Env, image: &str) -> Vec<String> {
    let doc = env.inspect(image);
    let lowers: Vec<PathBuf> = doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| PathBuf::from(l["dir"].as_str().unwrap()))
        .collect();
    let m = Merged::new(&lowers).unwrap();
    let mut out = Vec::new();
    xattrs_below(&m, strata::union::ROOT_ID, "", &mut out);
    out
}

fn xattrs_below(m: &Merged, id: u64, path: &str, out: &mut Vec<String>) {
    for name in m.list(id).unwrap() {
        let (node, st) = m.union.lookup(id, OsStr::from_bytes(&name)).unwrap();
        let p = format!("{path}/{}", String::from_utf8_lossy(&name));
        let list = m.union.listxattr(node.id).unwrap();
        for k in list.split(|&b| b == 0).filter(|k| !k.is_empty()) {
            let mut buf = vec![0u8; 64 * 1024];
            let n = m.union.getxattr(node.id, k, &mut buf).unwrap();
            let (k, v) = (
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(&buf[..n]),
            );
            out.push(format!("{p} {k}={v}"));
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            xattrs_below(m, node.id, &p, out);
        }
    }
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    rustix::fs::setxattr(
        path,
        name,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// `ln` in RUN of a file from a lower layer: strata, like docker on overlayfs, commits the
/// copied-up file and the new name as one hard link (link count 2); buildah with vfs diffs
/// trees and stores the new name as a separate file (count 1). Only that count is left out.
const LOWER_LINKS: &[(&str, &str)] = &[("hard-links", "/etc/passwd"), ("hard-links", "/p2")];

fn lower_links(case: &str, listing: &str) -> String {
    listing
        .lines()
        .map(|l| {
            let path = l.split(' ').next().unwrap_or("");
            let mut t: Vec<&str> = l.split(' ').collect();
            if LOWER_LINKS.contains(&(case, path)) && t.len() > 3 {
                t.remove(t.len() - 4);
            }
            format!("{}\n", t.join(" "))
        })
        .collect()
}

fn write_tar(path: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o751);
    h.set_uid(5);
    h.set_gid(6);
    b.append_data(&mut h, "t/f", &b"abc"[..]).unwrap();
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[test]
fn strata_and_buildah_build_the_same_images() {
    let Some(env) = Env::new() else { return };
    if Command::new("buildah").arg("--version").output().is_err() {
        eprintln!(
            "SKIP strata_and_buildah_build_the_same_images: no buildah (scripts/setup.sh installs it)"
        );
        return;
    }
    let bh = Buildah { env: &env };
    env.base("parity/base");
    // buildah names a pulled layout after its path, which must be lowercase.
    let layout = tempfile::Builder::new()
        .prefix("strata-parity-")
        .rand_bytes(0)
        .suffix(&format!("{}", std::process::id()))
        .tempdir_in("/var/tmp")
        .unwrap();
    let l = layout.path().join("l");
    env.ok(&[
        "image".as_ref(),
        "export".as_ref(),
        "parity/base".as_ref(),
        l.as_os_str(),
    ]);
    bh.ok(&["pull", &format!("oci:{}", l.display())]);
    let id = bh.ok(&["images", "-q"]).trim().to_owned();
    bh.ok(&["tag", &id, "parity/base"]);
    assert!(CORPUS.len() >= 25);
    let mut diffs = Vec::new();
    for (name, dockerfile, files) in CORPUS {
        let df = dockerfile.replace("BASE", "parity/base");
        let mut all: Vec<(&str, &str)> = files.to_vec();
        all.push(("Dockerfile", &df));
        let ctx = env.context(&format!("ctx-{name}"), &all);
        if *name == "add-tar" {
            write_tar(&ctx.join("t.tar"));
        }
        if *name == "copy-xattrs" {
            set_xattr(&ctx.join("x"), "user.test", "hello");
            set_xattr(&ctx.join("d"), "user.dir", "not copied");
            set_xattr(&ctx.join("d/f"), "user.f", "fv");
            set_xattr(&ctx.join("d/s"), "user.sub", "sv");
        }
        if *name == "copy-hard-links" {
            std::fs::create_dir_all(ctx.join("d/sub")).unwrap();
            std::fs::hard_link(ctx.join("d/a"), ctx.join("d/sub/b")).unwrap();
        }
        let ours = format!("strata/{name}");
        env.build_ok(&ctx, &["-t", &ours]);
        bh.ok(&[
            "bud",
            "--layers",
            "--pull-never",
            "--isolation",
            "chroot",
            "-t",
            name,
            ctx.to_str().unwrap(),
        ]);
        let out = env.path(&format!("bh-{name}"));
        bh.ok(&["push", name, &format!("oci:{}", out.display())]);
        let theirs = format!("buildah/{name}");
        let out = out.to_string_lossy();
        env.ok(&["image", "import", &out, "--name", &theirs]);
        let (a, b) = (listing(&env, &ours), listing(&env, &theirs));
        let (a, b) = (lower_links(name, &a), lower_links(name, &b));
        // buildah's RUN leaves its mountpoints in the layer (empty /etc/hosts, /etc/hostname,
        // /etc/resolv.conf, /run); docker does not, nor does strata. Only those may differ.
        let b: String = b
            .lines()
            .filter(|l| {
                let path = l.split(' ').next().unwrap_or("");
                let empty = l.contains(" regular empty file ") || l.ends_with(" dir 755 0:0");
                !(BUILDAH_MOUNTPOINTS.contains(&path)
                    && empty
                    && !a.lines().any(|m| m.starts_with(&format!("{path} "))))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if a != b {
            let only_a: Vec<&str> = a.lines().filter(|l| !b.lines().any(|m| m == *l)).collect();
            let only_b: Vec<&str> = b.lines().filter(|l| !a.lines().any(|m| m == *l)).collect();
            diffs.push(format!(
                "{name}: files differ\n  strata only: {only_a:?}\n  buildah only: {only_b:?}"
            ));
        }
        let (xa, xb) = (xattrs(&env, &ours), xattrs(&env, &theirs));
        if xa != xb {
            diffs.push(format!(
                "{name}: xattrs differ\n  strata: {xa:?}\n  buildah: {xb:?}"
            ));
        }
        if *name == "copy-xattrs" {
            let want = [
                "/etc/f user.f=fv",
                "/x user.test=hello",
                "/xd/f user.f=fv",
                "/xd/s user.sub=sv",
            ];
            assert_eq!(xa, want, "{name}: the copied entries' xattrs");
        }
        let (fa, fb) = (fields(&env.inspect(&ours)), fields(&env.inspect(&theirs)));
        for ((f, va), (_, vb)) in fa.iter().zip(&fb) {
            if va != vb {
                diffs.push(format!("{name}: config {f}: strata {va} buildah {vb}"));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    env.assert_clean();
}
