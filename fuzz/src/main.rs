//! One libFuzzer binary for every parser that reads outside bytes; FUZZ_TARGET names which
//! (tests/src/fuzz_targets.rs has them all, shared with the property-based run of
//! `make test`). Built by scripts/fuzz.sh with sanitizer coverage, so libFuzzer is guided
//! by the edges each input reaches (the corpus grows as it finds new ones).
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<fn(&[u8])> = OnceLock::new();

fn target() -> fn(&[u8]) {
    *TARGET.get_or_init(|| {
        let name = std::env::var("FUZZ_TARGET").unwrap_or_default();
        match remus_tests::fuzz_targets::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
        {
            Some((_, f)) => *f,
            None => {
                let names: Vec<&str> = remus_tests::fuzz_targets::TARGETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                eprintln!("FUZZ_TARGET={name:?}: one of {}", names.join(", "));
                std::process::exit(2)
            }
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    target()(data);
});
