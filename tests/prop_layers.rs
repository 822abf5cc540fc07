//! Random layer stacks: strata's merged view must equal kernel overlayfs's (overlay formats:
//! char 0/0 whiteouts, `trusted.overlay.opaque`) and a small model of the union rules (OCI
//! formats, which the kernel does not read: `.wh.<name>`, `.wh..wh..opq`).
//!
//! `PROPTEST_CASES` sets the number of stacks (default 24; `scripts/test.sh --long` runs 2000).
//! Failures shrink to a minimal stack, printed with the differences.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use proptest::prelude::*;

/// One entry of a layer.
#[derive(Debug, Clone)]
enum N {
    File(Vec<u8>),
    Symlink(String),
    Whiteout,
    Dir {
        children: BTreeMap<String, N>,
        opaque: bool,
    },
}

type Layer = BTreeMap<String, N>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Overlay,
    Oci,
}

fn name() -> impl Strategy<Value = String> {
    // A small pool, so names collide across layers.
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned)
}

fn node() -> impl Strategy<Value = N> {
    let leaf = prop_oneof![
        3 => (0u8..4, 0usize..6).prop_map(|(b, n)| N::File(vec![b'0' + b; n])),
        1 => name().prop_map(N::Symlink),
        2 => Just(N::Whiteout),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        (
            prop::collection::btree_map(name(), inner, 0..4),
            prop::bool::weighted(0.25),
        )
            .prop_map(|(children, opaque)| N::Dir { children, opaque })
    })
}

fn stack() -> impl Strategy<Value = Vec<Layer>> {
    prop::collection::vec(prop::collection::btree_map(name(), node(), 0..5), 2..=4)
}

fn materialise(dir: &Path, layer: &Layer, format: Format) {
    mkdir(dir);
    for (name, n) in layer {
        let p = dir.join(name);
        match n {
            N::File(c) => write(&p, c),
            N::Symlink(t) => symlink(t, &p),
            N::Whiteout => match format {
                Format::Overlay => whiteout_chardev(&p),
                Format::Oci => whiteout_oci(&p),
            },
            N::Dir { children, opaque } => {
                mkdir(&p);
                if *opaque {
                    match format {
                        Format::Overlay => opaque_xattr(&p, "trusted.overlay.opaque"),
                        Format::Oci => opaque_oci(&p),
                    }
                }
                materialise(&p, children, format);
            }
        }
    }
}

/// What a merged entry looks like in the model.
#[derive(Debug, PartialEq)]
enum M {
    File(Vec<u8>),
    Symlink(String),
    Dir,
}

/// The union rules: top-down; first non-directory wins; directories merge until an opaque
/// one; a whiteout ends the search; a non-directory below a directory is hidden.
fn model(layers: &[&Layer], prefix: &str, out: &mut BTreeMap<String, M>) {
    let mut names: Vec<&String> = layers.iter().flat_map(|l| l.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let mut dirs: Vec<&Layer> = Vec::new();
        let mut found = None;
        for l in layers {
            match l.get(name) {
                None => continue,
                Some(N::Whiteout) => break,
                Some(N::File(c)) if dirs.is_empty() => {
                    found = Some(M::File(c.clone()));
                    break;
                }
                Some(N::Symlink(t)) if dirs.is_empty() => {
                    found = Some(M::Symlink(t.clone()));
                    break;
                }
                Some(N::File(_) | N::Symlink(_)) => break,
                Some(N::Dir { children, opaque }) => {
                    dirs.push(children);
                    if *opaque {
                        break;
                    }
                }
            }
        }
        if !dirs.is_empty() {
            out.insert(path.clone(), M::Dir);
            model(&dirs, &path, out);
        } else if let Some(m) = found {
            out.insert(path, m);
        }
    }
}

fn as_model(tree: &Tree) -> BTreeMap<String, M> {
    tree.iter()
        .map(|(k, e)| {
            let m = match e.kind {
                libc::S_IFDIR => M::Dir,
                libc::S_IFLNK => M::Symlink(
                    String::from_utf8_lossy(e.target.as_deref().unwrap_or_default()).into_owned(),
                ),
                _ => M::File(e.content.clone().unwrap_or_default()),
            };
            (show(k), m)
        })
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn overlay_format_stacks_match_kernel(layers in stack()) {
        if !require_mount_env("overlay_format_stacks_match_kernel") {
            return Ok(());
        }
        let fx = Fixture::new(layers.len());
        for (l, dir) in layers.iter().zip(&fx.layers) {
            materialise(dir, l, Format::Overlay);
        }
        compare_with_kernel(&fx, &format!("stack {layers:?}"));
    }

    #[test]
    fn oci_format_stacks_match_model(layers in stack()) {
        if !require_mount_env("oci_format_stacks_match_model") {
            return Ok(());
        }
        let fx = Fixture::new(layers.len());
        for (l, dir) in layers.iter().zip(&fx.layers) {
            materialise(dir, l, Format::Oci);
        }
        let refs: Vec<&Layer> = layers.iter().collect();
        let mut want = BTreeMap::new();
        model(&refs, "", &mut want);
        let mnt = fx.path("m");
        let m = StrataMount::lowers(&fx.layers, &mnt);
        let (got, _) = snapshot(&m.mnt);
        drop(m);
        prop_assert_eq!(as_model(&got), want, "stack {:?}", layers);
    }
}
