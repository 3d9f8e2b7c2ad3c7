//! Function-preserving equalization beyond AIMET (issue 6).
//!
//! On models built in Rust, tract proves that the new constructs keep the FP32 function within
//! 1e-5 relative L2 and that each has its report entry: exact ReLU6 (`Relu → Min` with a
//! per-channel bound), iterated CLS with its per-iteration figures, the exact high-bias fold,
//! activation-aware balancing, the `GlobalAveragePool → Flatten → Gemm` pair, a Pad crossed
//! between a ReLU6 and a depthwise conv, and a depthwise conv with multiplier 2.
//!
//! On the real models of `../shared/models` with the sample images of `../shared/data`
//! (default options), the acceptance of issue 6: EfficientNet-Lite0 keeps FP32 within 1e-5 and
//! reaches ≥ 12 dB logits SQNR / ≥ 0.75 top-1 with per-tensor symmetric int8 weights; MobileNetV2
//! keeps FP32 within 1e-5 and reaches ≥ 16 dB; with `balance = 2`, EfficientNet-Lite0's simulated
//! W8A8 beats both the BN-folded baseline and plain exact CLE (W8A8 calibrated on held-out
//! samples; figures printed, and in the README's fidelity table). Every figure is measured against
//! the original FP32 model by tract (the numbers were cross-checked with onnxruntime, see the
//! README).

mod common;

use onnx_cle::builder::{BnSpec, ConvSpec, GemmSpec, ModelBuilder};
use onnx_cle::onnx::ModelProto;
use onnx_cle::report::{QuantRow, Relu6Action};
use onnx_cle::{Control, Options, Report, SampleInputs};

const MAX_REL_L2: f64 = 1e-5;

/// conv → BN → ReLU6 → Pad → depthwise (no padding) → BN(high β) → ReLU6 → 1×1 conv → BN →
/// ReLU6 → GlobalAveragePool → Flatten → Gemm.
fn mobile_block() -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(61);
    let x = b.batched_input("x", "N", &[4, 10, 10]);
    let y = b.conv(
        "stem",
        &x,
        &ConvSpec::new(4, 8, &[3, 3]).same_pads().spread(3.0),
    );
    let y = b.batch_norm("stem_bn", &y, 8);
    let y = b.relu6("stem_act", &y);
    let y = b.pad("dw_pad", &y, &[0, 0, 1, 1, 0, 0, 1, 1]);
    let y = b.conv("dw", &y, &ConvSpec::depthwise(8, &[3, 3]));
    let mut bn = BnSpec::random(b.rng(), 8);
    bn.beta = vec![4.0, 3.5, 5.0, 2.5, 4.5, 3.0, 6.0, 3.8];
    bn.gamma = vec![0.3; 8];
    let y = b.batch_norm_with("dw_bn", &y, &bn);
    let y = b.relu6("dw_act", &y);
    let y = b.conv("pw", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.batch_norm("pw_bn", &y, 8);
    let y = b.relu6("pw_act", &y);
    let y = b.global_average_pool("gap", &y);
    let y = b.flatten("flat", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(8, 5));
    b.output(&y);
    b.build()
}

fn check(name: &str, r: &Report) {
    for o in &r.verification.outputs {
        assert!(
            o.rel_l2 <= MAX_REL_L2,
            "{name}: output `{}` rel L2 {:.3e}",
            o.name,
            o.rel_l2
        );
    }
    common::say(&format!(
        "fidelity {name:<24} rel L2 {:.1e}, {} sets, {} iterations, {} HBF pairs",
        r.verification.max_rel_l2.unwrap_or(0.0),
        r.cls_sets.len(),
        r.cls_iterations.len(),
        r.hbf.pairs.len()
    ));
}

#[test]
fn exact_relu6_pad_gemm_pair_and_exact_hbf() {
    let (m, r) = common::run_verified(&mobile_block(), &Options::default());
    check("default", &r);
    for clip in ["stem_act", "dw_act", "pw_act"] {
        let d = r.relu6.iter().find(|d| d.node == clip).expect("decision");
        assert_eq!(d.action, Relu6Action::RewrittenExact, "{clip}: {d:?}");
    }
    let ops: Vec<&str> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "Min").count(), 3);
    assert!(!ops.contains(&"Clip"));
    let sets: Vec<Vec<String>> = r.cls_sets.iter().map(|s| s.layers.clone()).collect();
    assert!(
        sets.contains(&vec!["stem".into(), "dw".into(), "pw".into()]),
        "{sets:?}"
    );
    assert!(sets.contains(&vec!["pw".into(), "fc".into()]), "{sets:?}");
    let pad_pair = r.cls_sets[0]
        .pairs
        .iter()
        .find(|p| p.layer2 == "dw")
        .unwrap();
    assert_eq!(pad_pair.through, vec!["stem_act", "dw_pad"]);
    assert!(r.hbf.applied, "exact HBF absorbed nothing: {:?}", r.hbf);
    let dw = r
        .hbf
        .pairs
        .iter()
        .find(|p| p.layer1 == "dw")
        .expect("dw → pw absorbs");
    assert!(dw.absorbed.iter().all(|&c| c >= 0.0) && dw.absorbed.iter().any(|&c| c > 0.0));
    assert!(!r.function_changed);
    let q = r.quantization.as_ref().expect("quantization figures");
    assert_eq!(q.layers.len(), 4);
    assert!(q.activations.iter().any(|a| a.layer == "stem"));
}

#[test]
fn iterations_converge_and_keep_the_function() {
    let opts = Options {
        iterations: Some(50),
        threshold: 1e-4,
        ..Options::default()
    };
    let (_, r) = common::run_verified(&mobile_block(), &opts);
    check("iterations", &r);
    let it = &r.cls_iterations;
    assert!(it.len() > 1, "{it:?}");
    assert!(it.last().unwrap().max_abs_one_minus_s < it[0].max_abs_one_minus_s);
    assert!(it.len() == 50 || it.last().unwrap().max_abs_one_minus_s < 1e-4);
}

#[test]
fn balancing_keeps_the_function_and_limits_growth() {
    let plain = common::run_verified(&mobile_block(), &Options::default()).1;
    let opts = Options {
        balance: Some(1.0),
        ..Options::default()
    };
    let (_, r) = common::run_verified(&mobile_block(), &opts);
    check("balance 1", &r);
    let growth = |r: &Report| {
        r.quantization
            .as_ref()
            .unwrap()
            .activations
            .iter()
            .map(|a| a.growth_data_free)
            .fold(0f64, f64::max)
    };
    assert!(growth(&r) <= 1.0 + 1e-5, "balanced growth {}", growth(&r));
    assert!(growth(&plain) > 1.0, "plain CLE widened nothing");
}

#[test]
fn depthwise_multiplier_two_is_paired() {
    let mut b = ModelBuilder::new(13).seed(62);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("a", &x, &ConvSpec::new(4, 4, &[1, 1]).spread(4.0));
    let y = b.relu("a_relu", &y);
    let y = b.conv("dm", &y, &ConvSpec::new(4, 8, &[3, 3]).group(4).same_pads());
    let y = b.relu("dm_relu", &y);
    let y = b.conv("c", &y, &ConvSpec::new(8, 6, &[1, 1]));
    b.output(&y);
    let (_, r) = common::run_verified(&b.build(), &Options::default());
    check("depth multiplier 2", &r);
    let sets: Vec<Vec<String>> = r.cls_sets.iter().map(|s| s.layers.clone()).collect();
    assert!(sets.contains(&vec!["a".into(), "dm".into()]), "{sets:?}");
    assert!(sets.contains(&vec!["dm".into(), "c".into()]), "{sets:?}");
}

// ----- real models -----------------------------------------------------------------------

fn row<'a>(r: &'a Report, model: &str, scheme: &str) -> &'a QuantRow {
    r.quantization
        .as_ref()
        .and_then(|q| q.end_to_end.as_ref())
        .and_then(|e| {
            e.rows
                .iter()
                .find(|x| x.model == model && x.scheme == scheme)
        })
        .unwrap_or_else(|| panic!("no {model}/{scheme} row: {:?}", r.skipped))
}

fn run_real(stem: &str, data: &str, opts: Options) -> Option<Report> {
    let models = common::shared_models("fidelity")?;
    let data_path = models.join("../data").join(data);
    let model = common::load(&models.join(format!("{stem}.onnx")));
    let npy = std::fs::read(&data_path).expect("sample inputs");
    let samples = SampleInputs::from_npy(&model, &npy, data).expect("samples");
    let mut opts = opts;
    opts.quant.end_to_end = true;
    let out = onnx_cle::run(model, None, &opts, Some(&samples), Control::default()).expect("run");
    Some(out.report)
}

fn summary(name: &str, r: &Report) {
    let e = r
        .quantization
        .as_ref()
        .unwrap()
        .end_to_end
        .as_ref()
        .unwrap();
    let rows: Vec<String> = e
        .rows
        .iter()
        .map(|x| {
            format!(
                "{}/{} {:.2} dB {:.2}",
                x.model, x.scheme, x.sqnr_db, x.top1_agreement
            )
        })
        .collect();
    common::say(&format!(
        "fidelity {name}: FP32 rel L2 {:.2e}; {}",
        r.verification.max_rel_l2.unwrap_or(f64::NAN),
        rows.join("; ")
    ));
}

#[test]
fn efficientnet_lite0_survives_per_tensor_int8_and_balance_beats_both() {
    let Some(plain) = run_real(
        "efficientnet_lite0",
        "efficientnet_inputs_f32_nchw.npy",
        Options::default(),
    ) else {
        return;
    };
    summary("efficientnet_lite0 default", &plain);
    assert!(plain.verification.max_rel_l2.unwrap() <= MAX_REL_L2);
    assert!(!plain.function_changed);
    let sym = row(&plain, "equalized", "per_tensor_symmetric");
    assert!(sym.sqnr_db >= 12.0, "{sym:?}");
    assert!(sym.top1_agreement >= 0.75, "{sym:?}");
    let base = row(&plain, "bn_folded", "w8a8").sqnr_db;
    let cle = row(&plain, "equalized", "w8a8").sqnr_db;

    let balanced = run_real(
        "efficientnet_lite0",
        "efficientnet_inputs_f32_nchw.npy",
        Options {
            balance: Some(2.0),
            ..Options::default()
        },
    )
    .unwrap();
    summary("efficientnet_lite0 balance 2", &balanced);
    assert!(balanced.verification.max_rel_l2.unwrap() <= MAX_REL_L2);
    let bal = row(&balanced, "equalized", "w8a8").sqnr_db;
    common::say(&format!(
        "fidelity efficientnet_lite0 W8A8: balanced {bal:.2} dB, plain CLE {cle:.2}, BN-folded {base:.2}"
    ));
    assert!(
        bal > base && bal > cle,
        "W8A8: balanced {bal:.2} dB, BN-folded {base:.2}, plain CLE {cle:.2}"
    );
}

#[test]
fn mobilenet_v2_survives_per_tensor_int8() {
    let mut opts = Options::default();
    opts.quant.w8a8 = false;
    let Some(r) = run_real("mobilenet_v2", "imagenet_norm_inputs_f32_nchw.npy", opts) else {
        return;
    };
    summary("mobilenet_v2 default", &r);
    assert!(r.verification.max_rel_l2.unwrap() <= MAX_REL_L2);
    let sym = row(&r, "equalized", "per_tensor_symmetric");
    assert!(sym.sqnr_db >= 16.0, "{sym:?}");
}

#[test]
fn sample_inputs_drive_sensitivity_and_measured_activation_growth() {
    let model = mobile_block();
    let mut rng = onnx_cle::builder::SplitMix64::new(5);
    let data = rng.normal_vec(4 * 4 * 10 * 10, 1.0);
    let samples = SampleInputs {
        tensors: vec![onnx_cle::verify::InputTensor {
            name: "x".into(),
            shape: vec![4, 4, 10, 10],
            elem_type: 1,
            data,
        }],
        source: "synthetic".into(),
    };
    let mut opts = Options::default();
    opts.quant.end_to_end = true;
    opts.quant.sensitivity = true;
    let out = onnx_cle::run(model, None, &opts, Some(&samples), Control::default()).expect("run");
    let r = out.report;
    check("samples", &r);
    assert_eq!(r.verification.inputs, "synthetic");
    let q = r.quantization.as_ref().unwrap();
    let e = q.end_to_end.as_ref().expect("end-to-end figures");
    assert_eq!(e.samples, 4);
    assert_eq!(e.sensitivity.len(), 4, "{:?}", e.sensitivity);
    assert!(e.rows.iter().any(|x| x.scheme == "w8a8"));
    assert!(
        q.activations.iter().any(|a| a.growth_measured.is_some()),
        "{:?}",
        q.activations
    );
}
