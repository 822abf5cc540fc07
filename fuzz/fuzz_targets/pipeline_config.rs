//! Arbitrary bytes as a `cloudbuild.yaml`: parsing, validation and substitution must never
//! panic, errors must be one line, and what is accepted must be consistent (dependencies
//! point at earlier steps only, so the graph has no cycle).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strata::pipeline::{config, subst};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = match config::load(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
            return;
        }
    };
    for (i, deps) in checked.deps.iter().enumerate() {
        assert!(deps.iter().all(|&d| d < i), "step {i} waits for a later step");
    }
    let mut values: BTreeMap<String, String> = [("PROJECT_ID", "p"), ("BUILD_ID", "b")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    values.extend(checked.config.substitutions.clone());
    let mut cfg = checked.config;
    let mut s = subst::Substituter::new(values, false);
    if let Err(e) = s.apply(&mut cfg) {
        assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
    }
});
