//! Arbitrary Dockerfiles: the parser and the expander must never panic, and what the
//! parser accepts must be consistent (each instruction's line inside the file).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let lines = src.lines().count();
    let vars = |n: &str| (n.len() % 2 == 0).then(|| format!("v {n}"));
    match strata::build::dockerfile::parse(src) {
        Ok(df) => {
            for i in &df.instructions {
                assert!(i.line >= 1 && i.line <= lines);
                for w in strata::build::dockerfile::words(&i.text, df.directives.escape) {
                    let _ = strata::build::expand::word(&w, df.directives.escape, &vars);
                }
            }
        }
        Err(e) => assert!(e.line >= 1 && e.line <= lines.max(1)),
    }
    let _ = strata::build::expand::words(src, '\\', &vars);
    let _ = strata::build::expand::words(src, '`', &vars);
});
