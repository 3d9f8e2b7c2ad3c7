//! A short, deterministic run of the fuzz harness (`fuzz/harness.rs`, shared with the
//! cargo-fuzz targets) on stable Rust: a few thousand inputs, seeded, in well under 30 s.
//!
//! - byte level: the seed models (`../shared/models/tiny.onnx` when present, the harness's
//!   builder models) with 1–8 random byte edits each (flip, overwrite, insert, delete, copy a
//!   range, truncate, splice another seed) through `check_bytes`;
//! - structured: random byte strings driving `check_structured` (semantic model mutations).
//!
//! `ONNX_CLE_FUZZ_SCALE=N` multiplies both counts (and `ONNX_CLE_FUZZ_SEED` changes the
//! seed), which turns this into a long stable-Rust fuzz run where cargo-fuzz is unavailable.
//!
//! A failing input is written to `$CARGO_TARGET_TMPDIR/fuzz-smoke-failure.bin` and its index
//! printed; replay it with `cargo +nightly fuzz run <target> <file>`.

#![allow(dead_code)]

include!("../fuzz/harness.rs");

use onnx_cle::builder::SplitMix64;
use std::panic::{catch_unwind, AssertUnwindSafe};

const BYTE_CASES: usize = 2500;
const STRUCTURED_CASES: usize = 600;

fn scale() -> usize {
    std::env::var("ONNX_CLE_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn seed(base: u64) -> u64 {
    std::env::var("ONNX_CLE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(base, |s| base ^ s.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = seed_models().iter().map(onnx::encode).collect();
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/tiny.onnx");
    if let Ok(b) = std::fs::read(tiny) {
        s.push(b);
    }
    s
}

fn mutate_bytes(rng: &mut SplitMix64, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[(rng.next_u64() as usize) % seeds.len()].clone();
    let edits = 1 + rng.next_u64() % 8;
    for _ in 0..edits {
        let n = d.len().max(1);
        let at = (rng.next_u64() as usize) % n;
        match rng.next_u64() % 7 {
            0 if !d.is_empty() => d[at] ^= 1 << (rng.next_u64() % 8),
            1 if !d.is_empty() => d[at] = rng.next_u64() as u8,
            2 => d.insert(at.min(d.len()), rng.next_u64() as u8),
            3 if !d.is_empty() => {
                let len = 1 + (rng.next_u64() as usize) % 16;
                d.drain(at..(at + len).min(d.len()));
            }
            4 if !d.is_empty() => {
                let len = 1 + (rng.next_u64() as usize) % 64;
                let chunk: Vec<u8> = d[at..(at + len).min(d.len())].to_vec();
                let to = (rng.next_u64() as usize) % d.len();
                d.splice(to..to, chunk);
            }
            5 => d.truncate(at),
            _ => {
                let other = &seeds[(rng.next_u64() as usize) % seeds.len()];
                if !other.is_empty() {
                    let from = (rng.next_u64() as usize) % other.len();
                    let len = (rng.next_u64() as usize) % 256;
                    let chunk = &other[from..(from + len).min(other.len())];
                    let to = at.min(d.len());
                    d.splice(to..to, chunk.iter().copied());
                }
            }
        }
    }
    d
}

fn guarded(kind: &str, i: usize, input: &[u8], f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke-failure.bin");
        let _ = std::fs::write(&path, input);
        panic!("{kind} input #{i} failed; saved to {}", path.display());
    }
}

#[test]
fn byte_mutations_of_the_seeds_never_panic() {
    let seeds = seeds();
    let mut rng = SplitMix64::new(seed(0xf022));
    for s in &seeds {
        guarded("seed", 0, s, || check_bytes(s));
    }
    for i in 0..BYTE_CASES * scale() {
        let input = mutate_bytes(&mut rng, &seeds);
        guarded("byte", i, &input, || check_bytes(&input));
    }
}

#[test]
fn structured_mutations_never_panic() {
    let models = seed_models();
    let mut rng = SplitMix64::new(seed(0x5eed_f022));
    for i in 0..STRUCTURED_CASES * scale() {
        let len = 4 + (rng.next_u64() as usize) % 120;
        let input: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        guarded("structured", i, &input, || {
            check_structured_with(&models, &input)
        });
    }
}

/// Writes the seed corpora of the cargo-fuzz targets (`fuzz/corpus/*/seed-*`); run by hand
/// with `cargo test --test fuzz_smoke -- --ignored write_corpus` after changing the seeds.
#[test]
#[ignore]
fn write_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let bytes_dir = root.join("decode_pipeline");
    let structured_dir = root.join("structured");
    std::fs::create_dir_all(&bytes_dir).unwrap();
    std::fs::create_dir_all(&structured_dir).unwrap();
    for (i, s) in seeds().iter().enumerate() {
        std::fs::write(bytes_dir.join(format!("seed-{i}.onnx")), s).unwrap();
    }
    let mut rng = SplitMix64::new(7);
    for i in 0..8 {
        let input: Vec<u8> = (0..64).map(|_| rng.next_u64() as u8).collect();
        std::fs::write(structured_dir.join(format!("seed-{i}.bin")), input).unwrap();
    }
}
