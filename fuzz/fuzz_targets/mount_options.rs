//! Arbitrary `-o` strings: the parser must never panic, and what it accepts must be
//! consistent (every lower layer non-empty).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut opts = strata::options::MountOptions::default();
    if opts.apply(data).is_ok() {
        assert!(opts.lowers.iter().all(|l| !l.as_os_str().is_empty()));
    }
});
