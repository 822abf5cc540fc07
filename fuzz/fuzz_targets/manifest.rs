//! Arbitrary manifest documents as a registry might serve them, under each media type: the
//! parser must never panic, and an accepted image manifest has only supported layers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::registry::manifest::{self, Parsed, PlatformSpec};

const TYPES: [&str; 6] = [
    "",
    "application/json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, doc)) = data.split_first() else {
        return;
    };
    let ct = TYPES[first as usize % TYPES.len()];
    match manifest::parse(doc, ct, "fuzz") {
        Ok(Parsed::Index(i)) => {
            let _ = manifest::select(&i, &PlatformSpec::host(), "fuzz");
        }
        Ok(Parsed::Manifest(m)) => {
            for l in &m.layers {
                assert!(strata::image::oci::check_layer_media_type(l).is_ok());
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "one-line error"),
    }
});
