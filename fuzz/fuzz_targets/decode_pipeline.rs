//! Raw model bytes → structural scan, `onnx::decode`, the whole pipeline (verification off).
//! See `fuzz/harness.rs` for the properties.
#![no_main]

include!("../harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_bytes(data));
