//! Writes the builder-made fixture of `scripts/load_jobs.sh`: a small Conv → BN → ReLU6 →
//! depthwise Conv → ReLU6 → Conv → global pool → Gemm model (opset 13).
//!
//! `cargo run --example load_fixture -- out.onnx`

use onnx_cle::builder::{ConvSpec, GemmSpec, ModelBuilder};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: load_fixture OUT.onnx");
        std::process::exit(2);
    };
    let mut b = ModelBuilder::new(13).seed(32);
    let x = b.batched_input("x", "N", &[3, 16, 16]);
    let y = b.conv("conv1", &x, &ConvSpec::new(3, 16, &[3, 3]).same_pads());
    let y = b.batch_norm("bn1", &y, 16);
    let y = b.relu6("relu1", &y);
    let y = b.conv("dw", &y, &ConvSpec::depthwise(16, &[3, 3]).same_pads());
    let y = b.batch_norm("bn2", &y, 16);
    let y = b.relu6("relu2", &y);
    let y = b.conv("pw", &y, &ConvSpec::new(16, 24, &[1, 1]));
    let y = b.batch_norm("bn3", &y, 24);
    let y = b.relu("relu3", &y);
    let y = b.global_average_pool("gap", &y);
    let y = b.flatten("flat", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(24, 10));
    b.output(&y);
    if let Err(e) = std::fs::write(&path, b.build_bytes()) {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    }
}
