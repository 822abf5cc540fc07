//! Random layer stacks, mounted for real. strata's merged view must equal
//! - kernel overlayfs's, for stacks in the formats the kernel reads (char 0/0 and xattr
//!   whiteouts, `trusted.overlay.opaque = "y"`), entry by entry. The model below is checked
//!   against the kernel on the same stacks, which is what lets it stand in for the kernel;
//! - the model of the union rules, for OCI stacks (`.wh.<name>`, `.wh..wh..opq`), which the
//!   kernel does not read, and for stacks mixing every format strata reads.
//!
//! `PROPTEST_CASES` sets the number of stacks per test (default 24; `scripts/test.sh --long`
//! runs more). A failure shrinks to a minimal stack and prints it with the differences.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use common::*;
use proptest::prelude::*;

/// One entry of a layer. The `u8`s pick how a marker is written (see [`whiteout_form`]).
#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    Symlink(String),
    Whiteout(u8),
    Dir { children: Layer, opaque: Option<u8> },
}

type Layer = BTreeMap<String, Node>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    /// What the kernel reads: char 0/0 and xattr whiteouts, trusted.overlay.opaque.
    Overlay,
    /// What OCI image layers hold: `.wh.<name>`, `.wh..wh..opq`.
    Oci,
    /// Any format strata reads, chosen per marker.
    Mixed,
}

fn name() -> impl Strategy<Value = String> {
    // A small pool, so names collide across layers.
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned)
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..6).prop_map(Node::File),
        1 => name().prop_map(Node::Symlink),
        2 => (0u8..3).prop_map(Node::Whiteout),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        let opaque = prop_oneof![3 => Just(None), 1 => (0u8..4).prop_map(Some)];
        (prop::collection::btree_map(name(), inner, 0..4), opaque)
            .prop_map(|(children, opaque)| Node::Dir { children, opaque })
    })
}

/// 2 to 4 lower layers, top first.
fn stack() -> impl Strategy<Value = Vec<Layer>> {
    prop::collection::vec(prop::collection::btree_map(name(), node(), 0..5), 2..=4)
}

/// How a whiteout is written. `trusted_opaque`: its directory is opaque by
/// trusted.overlay.opaque, which an xattr whiteout would need to set to "x" instead.
fn whiteout_form(format: Format, f: u8, trusted_opaque: bool) -> &'static str {
    match (format, f) {
        (Format::Oci, _) | (Format::Mixed, 1) => ".wh.",
        (_, 2) if !trusted_opaque => "xattr",
        _ => "char 0/0",
    }
}

/// How a directory is made opaque.
fn opaque_form(format: Format, f: u8) -> &'static str {
    match (format, f) {
        (Format::Overlay, _) | (Format::Mixed, 0) => "trusted.overlay.opaque",
        (Format::Oci, _) | (Format::Mixed, 1) => ".wh..wh..opq",
        (_, 2) => "user.overlay.opaque",
        _ => "user.fuseoverlayfs.opaque",
    }
}

/// Writes `layer` into `dir` (`trusted_opaque`: see [`whiteout_form`]).
fn materialise(dir: &Path, layer: &Layer, format: Format, trusted_opaque: bool) {
    mkdir(dir);
    for (name, node) in layer {
        let p = dir.join(name);
        match node {
            Node::File(c) => write(&p, c),
            Node::Symlink(t) => symlink(t, &p),
            Node::Whiteout(f) => match whiteout_form(format, *f, trusted_opaque) {
                "char 0/0" => whiteout_chardev(&p),
                ".wh." => whiteout_oci(&p),
                _ => whiteout_xattr(&p),
            },
            Node::Dir { children, opaque } => {
                mkdir(&p);
                let form = opaque.map(|f| opaque_form(format, f));
                match form {
                    Some(".wh..wh..opq") => opaque_oci(&p),
                    Some(xattr) => opaque_xattr(&p, xattr),
                    None => {}
                }
                let trusted = form == Some("trusted.overlay.opaque");
                materialise(&p, children, format, trusted);
            }
        }
    }
}

/// A merged entry as the model sees it.
#[derive(Debug, PartialEq)]
enum M {
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Dir,
}

type View = BTreeMap<Vec<u8>, M>;

/// The union rules: top-down; the first non-directory wins; directories merge until an opaque
/// one, a non-directory or a whiteout; a whiteout ends the search.
fn model(layers: &[&Layer], prefix: &[u8], out: &mut View) {
    let mut names: Vec<&String> = layers.iter().flat_map(|l| l.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        let mut dirs: Vec<&Layer> = Vec::new();
        for l in layers {
            match l.get(name) {
                None => continue,
                Some(Node::Dir { children, opaque }) => {
                    dirs.push(children);
                    if opaque.is_some() {
                        break;
                    }
                }
                Some(Node::File(c)) if dirs.is_empty() => {
                    out.insert(path.clone(), M::File(c.clone()));
                    break;
                }
                Some(Node::Symlink(t)) if dirs.is_empty() => {
                    out.insert(path.clone(), M::Symlink(t.clone().into_bytes()));
                    break;
                }
                // A whiteout, or a non-directory below a directory.
                Some(_) => break,
            }
        }
        if !dirs.is_empty() {
            out.insert(path.clone(), M::Dir);
            model(&dirs, &path, out);
        }
    }
}

fn model_view(layers: &[Layer]) -> View {
    let refs: Vec<&Layer> = layers.iter().collect();
    let mut out = View::new();
    model(&refs, b"", &mut out);
    out
}

/// A mounted tree reduced to what the model predicts (root left out).
fn as_view(tree: &Tree) -> View {
    let reduce = |e: &Entry| match e.kind {
        libc::S_IFDIR => M::Dir,
        libc::S_IFLNK => M::Symlink(e.target.clone().unwrap()),
        libc::S_IFREG => M::File(e.content.clone().unwrap()),
        k => panic!("the model has no file type {k:o}"),
    };
    tree.iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, e)| (k.clone(), reduce(e)))
        .collect()
}

/// Differences between two views, path by path.
fn view_diff(want: &View, got: &View) -> Vec<String> {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("missing {}: {w:?}", show(k))),
            Some(g) if g != w => out.push(format!("differs {}: want {w:?}, got {g:?}", show(k))),
            _ => {}
        }
    }
    for (k, g) in got.iter().filter(|(k, _)| !want.contains_key(*k)) {
        out.push(format!("unexpected {}: {g:?}", show(k)));
    }
    out
}

/// The stack as an indented listing, markers as written, for failure messages.
fn render(layers: &[Layer], format: Format) -> String {
    fn walk(out: &mut String, layer: &Layer, format: Format, depth: usize, trusted: bool) {
        let pad = "  ".repeat(depth + 2);
        for (name, node) in layer {
            match node {
                Node::File(c) => writeln!(out, "{pad}{name} = \"{}\"", show(c)).unwrap(),
                Node::Symlink(t) => writeln!(out, "{pad}{name} -> {t}").unwrap(),
                Node::Whiteout(f) => {
                    let form = whiteout_form(format, *f, trusted);
                    writeln!(out, "{pad}{name} (whiteout: {form})").unwrap();
                }
                Node::Dir { children, opaque } => {
                    let form = opaque.map(|f| opaque_form(format, f));
                    let note = form.map_or(String::new(), |f| format!(" (opaque: {f})"));
                    writeln!(out, "{pad}{name}/{note}").unwrap();
                    let trusted = form == Some("trusted.overlay.opaque");
                    walk(out, children, format, depth + 1, trusted);
                }
            }
        }
    }
    let mut out = format!("{format:?} stack, top first:\n");
    for (i, l) in layers.iter().enumerate() {
        writeln!(out, "  layer {i}:").unwrap();
        walk(&mut out, l, format, 0, false);
    }
    out
}

fn fixture(layers: &[Layer], format: Format) -> Fixture {
    let fx = Fixture::new(layers.len());
    for (l, dir) in layers.iter().zip(&fx.layers) {
        materialise(dir, l, format, false);
    }
    fx
}

fn report(layers: &[Layer], format: Format, what: &str, diffs: &[String]) -> String {
    format!(
        "{what}:\n  {}\n{}",
        diffs.join("\n  "),
        render(layers, format)
    )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

/// strata over a stack in a format the kernel does not read, against the model.
fn check_against_model(layers: &[Layer], format: Format) -> Result<(), TestCaseError> {
    let fx = fixture(layers, format);
    let got = strata_view(&fx, &render(layers, format));
    let diffs = view_diff(&model_view(layers), &as_view(&got));
    prop_assert!(
        diffs.is_empty(),
        "{}",
        report(layers, format, "strata differs from the model", &diffs)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn overlay_format_stacks_match_kernel(layers in stack()) {
        if !require_mount_env() {
            return Ok(());
        }
        let fx = fixture(&layers, Format::Overlay);
        let k = KernelOverlay::lowers(&fx.layers, &fx.path("kernel"));
        let s = StrataMount::lowers(&fx.layers, &fx.path("strata"));
        let want = kernel_snapshot(&k.mnt);
        let got = snapshot(&s.mnt);
        let model_diffs = view_diff(&as_view(&want), &model_view(&layers));
        prop_assert!(
            model_diffs.is_empty(),
            "{}",
            report(&layers, Format::Overlay, "THE MODEL (not strata) vs kernel", &model_diffs)
        );
        let diffs = diff(&want, &got, true);
        prop_assert!(
            diffs.is_empty(),
            "{}",
            report(&layers, Format::Overlay, "strata differs from kernel overlayfs", &diffs)
        );
        prop_assert_eq!(ino_groups(&want), ino_groups(&got), "paths sharing an inode");
        assert_inos_stable(&s.mnt, &got, &render(&layers, Format::Overlay));
    }

    #[test]
    fn oci_format_stacks_match_model(layers in stack()) {
        if !require_mount_env() {
            return Ok(());
        }
        check_against_model(&layers, Format::Oci)?;
    }

    #[test]
    fn mixed_format_stacks_match_model(layers in stack()) {
        if !require_mount_env() {
            return Ok(());
        }
        check_against_model(&layers, Format::Mixed)?;
    }
}
