//! The fidelity table of the README: for EfficientNet-Lite0 and MobileNetV2 (../shared/models)
//! with their 16 sample images (../shared/data), logits SQNR and top-1 agreement against the
//! **original FP32 model** of: the BN-folded baseline, AIMET's `equalize_model` output, onnx-cle
//! default, onnx-cle balanced, onnx-cle iterated, and the per-channel ceiling — weights-only (per-tensor symmetric
//! int8) and W8A8 (plus per-tensor uint8 activations calibrated on the same images).
//!
//! ```sh
//! cargo run --release --example fidelity            # balance factor 2
//! cargo run --release --example fidelity -- 4       # another balance factor
//! ```

use std::path::PathBuf;

use onnx_cle::quant::{self, Scheme};
use onnx_cle::{equalize, onnx, Options, SampleInputs, Step};

fn quiet(mut o: Options) -> Options {
    o.verify.enabled = false;
    o.quant.layers = false;
    o.quant.end_to_end = false;
    o
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let balance: f32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2.0);
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let cases = [
        (
            "EfficientNet-Lite0",
            "efficientnet_lite0",
            "efficientnet_inputs_f32_nchw.npy",
        ),
        (
            "MobileNetV2",
            "mobilenet_v2",
            "imagenet_norm_inputs_f32_nchw.npy",
        ),
    ];
    for (title, stem, data) in cases {
        let original = onnx::load_file(&shared.join(format!("models/{stem}.onnx")))?;
        let npy = std::fs::read(shared.join(format!("data/{data}")))?;
        let samples = SampleInputs::from_npy(&original, &npy, data)?;
        let per_sample = quant::samples_of(&samples.tensors);
        let reference = quant::reference_outputs(&original, &per_sample)?;
        let folded = equalize(
            original.clone(),
            &quiet(Options {
                steps: vec![Step::BnFold],
                ..Options::default()
            }),
        )?
        .model;
        let default = equalize(original.clone(), &quiet(Options::default()))?.model;
        let balanced = equalize(
            original.clone(),
            &quiet(Options {
                balance: Some(balance),
                ..Options::default()
            }),
        )?
        .model;
        let iterated = equalize(
            original.clone(),
            &quiet(Options {
                iterations: Some(5),
                ..Options::default()
            }),
        )?
        .model;
        let aimet = onnx::load_file(&shared.join(format!("models/{stem}.aimet_cle.onnx")))?;
        println!(
            "\n### {title} ({} images, against the original FP32 model)\n",
            per_sample.len()
        );
        println!("| variant | FP32 SQNR dB | weights int8 (per-tensor sym) dB / top-1 | W8A8 dB / top-1 |");
        println!("|---|---|---|---|");
        let fmt = |(s, t): (f64, f64)| format!("{s:.1} / {t:.2}");
        let variants = [
            ("BN-folded baseline", &folded),
            ("AIMET `equalize_model`", &aimet),
            ("onnx-cle default", &default),
            (&*format!("onnx-cle `--balance {balance}`"), &balanced),
            ("onnx-cle `--iterations 5`", &iterated),
        ];
        for (label, model) in variants {
            let fp32 = quant::score(
                &reference,
                &quant::first_outputs(&onnx::encode(model), &per_sample)?,
            );
            let q = quant::quantized_weights(model, Scheme::PerTensorSymmetric, None);
            let weights = quant::score(
                &reference,
                &quant::first_outputs(&onnx::encode(&q), &per_sample)?,
            );
            let w8a8 = quant::score(
                &reference,
                &quant::w8a8_outputs(model, Scheme::PerTensorSymmetric, &per_sample)?,
            );
            let fp = if fp32.0.is_infinite() {
                "exact".to_string()
            } else {
                format!("{:.1}", fp32.0)
            };
            println!("| {label} | {fp} | {} | {} |", fmt(weights), fmt(w8a8));
        }
        let q = quant::quantized_weights(&folded, Scheme::PerChannel, None);
        let weights = quant::score(
            &reference,
            &quant::first_outputs(&onnx::encode(&q), &per_sample)?,
        );
        let w8a8 = quant::score(
            &reference,
            &quant::w8a8_outputs(&folded, Scheme::PerChannel, &per_sample)?,
        );
        println!(
            "| per-channel ceiling (BN-folded, per-channel weights) | exact | {} | {} |",
            fmt(weights),
            fmt(w8a8)
        );
    }
    Ok(())
}
