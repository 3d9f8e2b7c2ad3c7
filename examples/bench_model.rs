//! Writes the ResNet-50-shaped benchmark model ([`onnx_cle::builder::resnet50`]) to a file.
//!
//! `cargo run --release --example bench_model -- OUT.onnx [WIDTH] [SEED]` (width 1.0 ≈ 102 MB;
//! seed 50 is what the benches use).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: bench_model OUT.onnx [WIDTH] [SEED]")?;
    let width: f32 = args.next().map_or(Ok(1.0), |s| s.parse())?;
    let seed: u64 = args.next().map_or(Ok(50), |s| s.parse())?;
    let bytes = onnx_cle::onnx::encode(&onnx_cle::builder::resnet50(width, seed));
    std::fs::write(&out, &bytes)?;
    eprintln!("{out}: {} bytes", bytes.len());
    Ok(())
}
