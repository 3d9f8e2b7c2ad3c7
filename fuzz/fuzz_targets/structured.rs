//! Fuzz input → semantic mutations of small builder models → the whole pipeline (verification
//! off). See `fuzz/harness.rs` for the properties.
#![no_main]

include!("../harness.rs");

std::thread_local! {
    static SEEDS: Vec<ModelProto> = seed_models();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| SEEDS.with(|s| check_structured_with(s, data)));
