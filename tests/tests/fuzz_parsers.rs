//! Property-based fuzzing of every parser that reads outside bytes (the bounded run of
//! `make test`): for FUZZ_SECS seconds per parser (default 2), arbitrary bytes and mutations
//! of valid inputs (bit flips, byte changes, insertions, deletions, truncations, splices) go
//! through tests/src/fuzz_targets.rs. The coverage-guided run is `make fuzz` (fuzz/).
//! A failure prints the input (hex) and the seed to replay it with (FUZZ_SEED).

use remus_tests::fuzz_seeds::seeds;
use remus_tests::fuzz_targets::TARGETS;
use remus_tests::rng::Rng;
use std::time::{Duration, Instant};

/// An index below `n` (0 when `n` is 0).
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + below(rng, 4) {
        match below(rng, 7) {
            0 if !v.is_empty() => {
                let i = below(rng, v.len());
                v[i] ^= 1 << below(rng, 8);
            }
            1 if !v.is_empty() => {
                let i = below(rng, v.len());
                v[i] = [0, 0xff, 0x7f, 0x80, rng.next_u64() as u8][below(rng, 5)];
            }
            2 => {
                let i = below(rng, v.len() + 1);
                v.insert(i, rng.next_u64() as u8);
            }
            3 if !v.is_empty() => {
                let i = below(rng, v.len());
                v.remove(i);
            }
            4 => v.truncate(below(rng, v.len() + 1)),
            5 => {
                let cut = below(rng, other.len() + 1);
                v.extend_from_slice(&other[cut..]);
            }
            _ if v.len() >= 4 => {
                // A length or count field set to something extreme.
                let i = below(rng, v.len() - 3);
                v[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, rng.next_u64() as u8]);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn every_parser_survives_arbitrary_and_mutated_input() {
    let secs: f64 = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    println!("fuzz seed {seed} (FUZZ_SEED={seed} replays this run)");
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let corpus = seeds(name);
        assert!(!corpus.is_empty(), "{name} has no seeds");
        let mut rng = Rng(seed ^ (name.len() as u64 * 0x9E37_79B9));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut cases = 0u64;
        while Instant::now() < deadline {
            for _ in 0..64 {
                let input = if below(&mut rng, 4) == 0 {
                    (0..below(&mut rng, 600))
                        .map(|_| rng.next_u64() as u8)
                        .collect()
                } else {
                    let a = &corpus[below(&mut rng, corpus.len())];
                    let b = &corpus[below(&mut rng, corpus.len())];
                    mutate(&mut rng, a, b)
                };
                let r = std::panic::catch_unwind(|| target(&input));
                assert!(
                    r.is_ok(),
                    "{name} panicked on input {:02x?} (FUZZ_SEED={seed})",
                    input
                );
                cases += 1;
            }
        }
        report.push(format!("{name}: {cases} cases"));
    }
    println!("{}", report.join(", "));
}
