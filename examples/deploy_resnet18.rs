//! The deploy model on a ResNet-18-shaped network ([`onnx_cle::builder::resnet18`]): does bias
//! correction and data-free rounding help, or at least not hurt, where CLE has little to do?
//!
//! Random weights, BN statistics calibrated on 32 standard-normal inputs (as training would
//! leave them for that input distribution); evaluated on 64 other standard-normal inputs
//! against the original FP32 model: per-tensor int8 weights (the deploy model as written; the
//! others quantized per-tensor symmetric) and W8A8 (uint8 activations, min/max calibrated two
//! folds, as the report's simulation). Prints a Markdown table: aggregate SQNR, median and 10th
//! percentile of the per-input SQNR, top-1 agreement.
//!
//! `cargo run --release --example deploy_resnet18 [-- WIDTH SIZE]` (default 1.0 and 112).

use onnx_cle::builder::{calibrate_batch_norms, resnet18};
use onnx_cle::onnx::{self, ModelProto};
use onnx_cle::options::BiasCorrection;
use onnx_cle::options::Rounding;
use onnx_cle::quant::{self, Scheme};
use onnx_cle::runtime::{self, InputTensor};
use onnx_cle::{Control, Options};

fn samples(model: &ModelProto, n: usize, seed: u64) -> Vec<Vec<InputTensor>> {
    (0..n as u64)
        .map(|k| {
            let mut s = runtime::input_specs(model, 1).expect("input shape");
            runtime::fill_random(&mut s, seed * 10_000 + k);
            s
        })
        .collect()
}

fn spread(reference: &[Vec<f32>], outs: &[Vec<f32>]) -> (f64, f64, f64, f64) {
    let (db, top1) = quant::score(reference, outs);
    let mut per: Vec<f64> = reference
        .iter()
        .zip(outs)
        .map(|(r, o)| quant::sqnr_db(r, o))
        .collect();
    per.sort_by(f64::total_cmp);
    (db, per[per.len() / 2], per[per.len() / 10], top1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let width: f32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let size: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(112);
    let raw = resnet18(width, size, 1);
    let model = calibrate_batch_norms(raw.clone(), &samples(&raw, 32, 1)).expect("calibration");
    let eval = samples(&model, 64, 2);
    let reference = quant::reference_outputs(&model, &eval).expect("reference run");
    let variants: [(&str, Option<f32>, BiasCorrection, Rounding, bool); 5] = [
        (
            "onnx-cle default",
            None,
            BiasCorrection::Off,
            Rounding::Nearest,
            false,
        ),
        (
            "+ bias correction",
            None,
            BiasCorrection::Analytic,
            Rounding::Nearest,
            true,
        ),
        (
            "+ rounding",
            None,
            BiasCorrection::Off,
            Rounding::Squant,
            true,
        ),
        (
            "+ rounding + bias correction",
            None,
            BiasCorrection::Analytic,
            Rounding::Squant,
            true,
        ),
        (
            "--balance 2 + rounding + bias correction",
            Some(2.0),
            BiasCorrection::Analytic,
            Rounding::Squant,
            true,
        ),
    ];
    println!(
        "ResNet-18-shaped (width {width}, {size}×{size}), BN calibrated on 32 N(0,1) inputs, \
         64 other inputs, against the original FP32 model\n"
    );
    println!(
        "| variant | int8 weights dB (median / p10) | top-1 | W8A8 dB (median / p10) | top-1 |"
    );
    println!("|---|---|---|---|---|");
    for (label, balance, bias, rounding, deploy) in variants {
        let mut o = Options {
            balance,
            ..Options::default()
        };
        o.verify.enabled = false;
        o.quant.layers = false;
        o.deploy.model = deploy;
        o.deploy.bias_correction = bias;
        o.deploy.rounding = rounding;
        let out = onnx_cle::run(model.clone(), None, &o, None, Control::default()).expect("run");
        let m = onnx::decode(out.deploy.unwrap_or(out.model).into()).expect("decode");
        let w = quant::quantized_weights(&m, Scheme::PerTensorSymmetric, None);
        let wo = quant::first_outputs(&onnx::encode(&w), &eval).expect("int8 weights");
        let ao = quant::w8a8_outputs(&m, Scheme::PerTensorSymmetric, &eval).expect("w8a8");
        let (a, am, ap, at) = spread(&reference, &wo);
        let (b, bm, bp, bt) = spread(&reference, &ao);
        println!(
            "| {label} | {a:.1} ({am:.1} / {ap:.1}) | {at:.2} | {b:.1} ({bm:.1} / {bp:.1}) | {bt:.2} |"
        );
    }
}
