//! Arbitrary bytes as a layer tar: the unpacker may refuse them, but must never panic and
//! never create, change or remove anything outside the layer directory.
#![no_main]

use std::fs;
use std::os::fd::AsFd;

use libfuzzer_sys::fuzz_target;
use strata::image::unpack::{UnpackOptions, unpack};

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("tempdir");
    let layer = root.path().join("a/layer");
    fs::create_dir_all(&layer).expect("layer dir");
    fs::write(root.path().join("a/sentinel"), b"keep").expect("sentinel");
    let fd = strata::sys::open_root(&layer).expect("open layer");
    let opts = UnpackOptions { privileged: false };
    let _ = unpack(data, fd.as_fd(), opts, "fuzz");
    let names = |p: &std::path::Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(root.path()), ["a"], "something escaped next to a/");
    assert_eq!(names(&root.path().join("a")), ["layer", "sentinel"], "something escaped into a/");
    assert_eq!(fs::read(root.path().join("a/sentinel")).expect("sentinel"), b"keep");
    // The layer dir may hold read-only directories: open them up so the tempdir can go.
    let _ = std::process::Command::new("chmod").args(["-R", "u+rwx"]).arg(&layer).status();
});
