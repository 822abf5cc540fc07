//! Arbitrary image references: the parser must never panic, and what it accepts must
//! normalise to a reference that parses again to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::registry::ImageRef;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = ImageRef::parse(s) {
        assert!(!r.registry.is_empty() && !r.repository.is_empty());
        let again = ImageRef::parse(&r.to_string()).expect("a normalised reference parses");
        assert_eq!(again.to_string(), r.to_string());
        assert!(r.tag.is_some() || r.digest.is_some());
    } else if let Err(e) = ImageRef::parse(s) {
        assert!(!e.to_string().contains('\n'), "one-line error");
    }
});
