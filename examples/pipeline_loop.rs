//! Runs decode → equalize (no verification, no quantization figures) → encode in a loop, for
//! profilers: `perf record -g target/release/examples/pipeline_loop 20 [model.onnx]` (default:
//! the ResNet-50-shaped benchmark model).

use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let bytes = bytes::Bytes::from(match std::env::args().nth(2) {
        Some(path) => std::fs::read(&path).expect("read the model"),
        None => onnx_cle::onnx::encode(&onnx_cle::builder::resnet50(1.0, 50)),
    });
    let mut opts = onnx_cle::Options::default();
    opts.verify.enabled = false;
    opts.quant.layers = false;
    for _ in 0..n {
        let t = Instant::now();
        let model = onnx_cle::onnx::decode(bytes.clone()).expect("decode");
        let eq = onnx_cle::equalize(model, &opts).expect("equalize");
        let out = onnx_cle::onnx::encode(&eq.model);
        eprintln!(
            "{:.1} ms ({} bytes) timings {:?}",
            t.elapsed().as_secs_f64() * 1e3,
            out.len(),
            eq.report.timings_ms
        );
    }
}
