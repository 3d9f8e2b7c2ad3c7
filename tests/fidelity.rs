//! Function-preserving equalization beyond AIMET (issue 6).
//!
//! On models built in Rust, tract proves that the new constructs keep the FP32 function within
//! 1e-5 relative L2 and that each has its report entry: exact ReLU6 (`Relu → Min` with a
//! per-channel bound), iterated CLS with its per-iteration figures, the exact high-bias fold,
//! activation-aware balancing, the `GlobalAveragePool → Flatten → Gemm` pair, a Pad crossed
//! between a ReLU6 and a depthwise conv, and a depthwise conv with multiplier 2.
//!
//! On the real models of `../shared/models` with the 16 sample images of `../shared/data` (a
//! quick fixture made of two photos, not an evaluation; its figures are printed, never reported),
//! equal-range scaling: EfficientNet-Lite0 keeps FP32 within 1e-5 and reaches ≥ 12 dB logits
//! SQNR / ≥ 0.75 top-1 with per-tensor symmetric int8 weights, and with `balance = 2` its
//! simulated W8A8 beats the BN-folded baseline; the default (`scaling = noise` for per-tensor
//! weights) keeps FP32 within 1e-5 and ≥ 12 dB with per-tensor int8 weights; MobileNetV2 keeps
//! FP32 within 1e-5 and reaches ≥ 16 dB. The README's figures come from the held-out evaluation
//! (`scripts/eval_heldout.sh`, 17 photos none of which is in `../shared/data`).
//!
//! Issue 19: `scaling = noise` moves the scales away from equal weight ranges and keeps the
//! FP32 function within 1e-5 (the block above and EfficientNet-Lite0).
//!
//! Issue 11: CLS iterates until its stop rule holds (and a shared chain needs more than the old
//! 2 passes), an isolated set is exact after one pass, and `select = auto` keeps the candidate
//! with the best score on the held-out half of the samples (checked against an independent
//! scoring of every candidate).

mod common;

use onnx_cle::builder::{BnSpec, ConvSpec, GemmSpec, ModelBuilder};
use onnx_cle::onnx::ModelProto;
use onnx_cle::options::{Granularity, Scaling};
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
    let g = m.graph.as_ref().unwrap();
    let mins: Vec<_> = g.node.iter().filter(|n| n.op_type() == "Min").collect();
    assert_eq!(mins.len(), 3);
    // Each Min reads a scalar Clip(0, M) with M the largest of its per-channel bounds.
    let value = |name: &str| -> Vec<f32> {
        let t = g.initializer.iter().find(|t| t.name() == name).expect(name);
        onnx_cle::onnx::tensor::to_f32(t).unwrap().data
    };
    for min in &mins {
        let clip = g
            .node
            .iter()
            .find(|n| n.output.first() == min.input.first())
            .expect("the Min's producer");
        assert_eq!(clip.op_type(), "Clip", "{}", min.name());
        assert_eq!(value(&clip.input[1]), vec![0.0]);
        let bound = value(&min.input[1]);
        let top = bound.iter().copied().fold(0.0f32, f32::max);
        assert_eq!(value(&clip.input[2]), vec![top]);
        assert!(bound.iter().any(|b| *b < top), "per-channel bounds");
    }
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

/// Whether some pair's scale differs by more than 0.1 % between two runs of one model (same
/// sets and pairs).
fn scales_differ(a: &Report, b: &Report) -> bool {
    let scales = |r: &Report| -> Vec<f32> {
        r.cls_sets
            .iter()
            .flat_map(|s| s.pairs.iter().flat_map(|p| p.scale.clone()))
            .collect()
    };
    let (a, b) = (scales(a), scales(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).any(|(x, y)| (x / y - 1.0).abs() > 1e-3)
}

#[test]
fn noise_scaling_keeps_the_function_and_moves_the_scales() {
    let equal = Options {
        scaling: Some(Scaling::EqualRanges),
        ..Options::default()
    };
    let plain = common::run_verified(&mobile_block(), &equal).1;
    let opts = Options {
        scaling: Some(Scaling::Noise),
        ..Options::default()
    };
    let (_, r) = common::run_verified(&mobile_block(), &opts);
    check("scaling noise", &r);
    assert!(!r.function_changed);
    assert!(
        scales_differ(&plain, &r),
        "noise scaling chose the equal-range scales everywhere"
    );
}

#[test]
fn noise_scaling_keeps_efficientnet_lite0() {
    let Some(models) = common::shared_models("fidelity") else {
        return;
    };
    let model = common::load(&models.join("efficientnet_lite0.onnx"));
    let mut opts = Options {
        scaling: Some(Scaling::Noise),
        ..Options::default()
    };
    opts.quant.w8a8 = false;
    let (_, r) = common::run_verified(&model, &opts);
    check("efficientnet_lite0 noise", &r);
    assert!(!r.function_changed);
}

#[test]
fn mixed_precision_noise_step_keeps_efficientnet_lite0_and_moves_the_scales() {
    // Under mixed precision the noise step weights each output channel of W2 by its
    // fluctuation: other scales, the same FP32 function.
    let Some(models) = common::shared_models("fidelity") else {
        return;
    };
    let model = common::load(&models.join("efficientnet_lite0.onnx"));
    let run = |mixed: Option<f32>| {
        let mut opts = Options::default();
        opts.quant.w8a8 = false;
        opts.target.weight_granularity = Some(Granularity::PerTensor);
        // The equalized model's own scales (`split` would give it equal ranges).
        opts.scaling = Some(Scaling::Noise);
        opts.exports.qdq = true;
        opts.exports.input_range = Some([-1.0, 1.0]);
        opts.exports.mixed_precision = mixed;
        common::run_verified(&model, &opts).1
    };
    let (plain, mixed) = (run(None), run(Some(0.05)));
    check("efficientnet_lite0 noise, mixed precision", &mixed);
    assert!(!mixed.function_changed);
    assert!(
        scales_differ(&plain, &mixed),
        "the fluctuation weighting changed no scale"
    );
    let wide = mixed
        .exports
        .as_ref()
        .and_then(|e| e.mixed_precision.as_ref());
    assert!(wide.is_some_and(|m| !m.wide.is_empty() && m.wide.len() <= 5));
}

#[test]
fn per_channel_noise_step_keeps_efficientnet_lite0_and_moves_the_scales() {
    // With per-channel weights the noise step goes a fixed 0.35 of the way to equal
    // activation reaches: other scales than equal ranges, the same FP32 function.
    let Some(models) = common::shared_models("fidelity") else {
        return;
    };
    let model = common::load(&models.join("efficientnet_lite0.onnx"));
    let run = |scaling: Scaling| {
        let mut opts = Options::default();
        opts.target.weight_granularity = Some(Granularity::PerChannel);
        opts.scaling = Some(scaling);
        common::run_verified(&model, &opts).1
    };
    let (equal, noise) = (run(Scaling::EqualRanges), run(Scaling::Noise));
    check("efficientnet_lite0 noise, per-channel weights", &noise);
    assert!(!noise.function_changed);
    assert!(
        scales_differ(&equal, &noise),
        "the per-channel step changed no scale"
    );
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
fn efficientnet_lite0_survives_per_tensor_int8_and_balance_caps_growth() {
    let Some(plain) = run_real(
        "efficientnet_lite0",
        "efficientnet_inputs_f32_nchw.npy",
        Options {
            scaling: Some(Scaling::EqualRanges),
            ..Options::default()
        },
    ) else {
        return;
    };
    summary("efficientnet_lite0 equal ranges", &plain);
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
    // On 16 images of two photos the order of balanced and plain CLE is rounding luck (the
    // held-out evaluation, scripts/eval_heldout.sh, compares them); both must beat no CLE, and
    // balancing must cap what it promises: the data-free activation growth.
    assert!(
        bal > base && cle > base,
        "W8A8: balanced {bal:.2} dB, BN-folded {base:.2}, plain CLE {cle:.2}"
    );
    let growth = |r: &Report| {
        r.quantization
            .as_ref()
            .unwrap()
            .activations
            .iter()
            .map(|a| a.growth_data_free)
            .fold(0f64, f64::max)
    };
    assert!(growth(&balanced) <= 2.0 + 1e-4, "{}", growth(&balanced));
    assert!(growth(&plain) > growth(&balanced));

    // The default for per-tensor weights, `scaling = noise`, keeps the function and the int8
    // weights' floor. It was chosen for the data-free QDQ model on the tuning photos
    // (`scripts/eval/tune_split.sh scaling`); the quantization table's W8A8 here (symmetric
    // int8 weights, nearest rounding, min/max on these 16 images) is printed, not compared.
    let noise = run_real(
        "efficientnet_lite0",
        "efficientnet_inputs_f32_nchw.npy",
        Options::default(),
    )
    .unwrap();
    summary("efficientnet_lite0 default (noise)", &noise);
    assert!(noise.verification.max_rel_l2.unwrap() <= MAX_REL_L2);
    assert!(!noise.function_changed);
    for scheme in ["per_tensor_symmetric", "per_tensor_asymmetric"] {
        let r = row(&noise, "equalized", scheme);
        assert!(r.sqnr_db >= 12.0, "{r:?}");
    }
}

#[test]
fn mobilenet_v2_survives_per_tensor_int8() {
    let mut opts = Options::default();
    opts.quant.w8a8 = false;
    opts.target.weight_granularity = Some(Granularity::PerTensor);
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
        tensors: vec![onnx_cle::runtime::InputTensor {
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

// ----- issue 11: CLS iterated to its stop rule, and `select = auto` ------------------------

/// A chain whose sets share layers: conv → ReLU6 → conv → ReLU6 → depthwise → ReLU6 → conv →
/// ReLU → conv (a pair, a triple and a pair linked by shared layers), BN everywhere.
fn shared_chain() -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(71);
    let x = b.batched_input("x", "N", &[3, 9, 9]);
    let y = b.conv(
        "c0",
        &x,
        &ConvSpec::new(3, 6, &[3, 3]).same_pads().spread(4.0),
    );
    let y = b.batch_norm("c0_bn", &y, 6);
    let y = b.relu6("c0_act", &y);
    let y = b.conv("c1", &y, &ConvSpec::new(6, 8, &[1, 1]).spread(3.0));
    let y = b.batch_norm("c1_bn", &y, 8);
    let y = b.relu6("c1_act", &y);
    let y = b.conv(
        "dw",
        &y,
        &ConvSpec::depthwise(8, &[3, 3]).same_pads().spread(5.0),
    );
    let y = b.batch_norm("dw_bn", &y, 8);
    let y = b.relu6("dw_act", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 5, &[1, 1]).spread(2.0));
    let y = b.batch_norm("c2_bn", &y, 5);
    let y = b.relu("c2_act", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(5, 4, &[1, 1]));
    b.output(&y);
    b.build()
}

#[test]
fn default_cls_iterates_until_its_stop_rule_and_keeps_the_function() {
    // The equal-ranges passes (they run first under `scaling = noise` too).
    let equal = Options {
        scaling: Some(Scaling::EqualRanges),
        ..Options::default()
    };
    let (m, r) = common::run_verified(&shared_chain(), &equal);
    check("converged default", &r);
    let it = &r.cls_iterations;
    let threshold = Options::default().threshold;
    assert!(
        it.len() > 2,
        "a chain of shared sets needs several passes: {it:?}"
    );
    assert!(
        it.len() < onnx_cle::options::DEFAULT_MAX_PASSES as usize,
        "{it:?}"
    );
    assert!(it.last().unwrap().max_abs_one_minus_s < threshold, "{it:?}");
    assert!(it
        .iter()
        .skip(1)
        .all(|i| i.max_abs_one_minus_s < it[0].max_abs_one_minus_s));
    // Converged: every pair's two ranges (measured on the written weights) agree channel by
    // channel, to the stop rule's precision.
    for set in &r.cls_sets {
        for p in &set.pairs {
            for (a, b) in p
                .range_after
                .layer1_out
                .iter()
                .zip(&p.range_after.layer2_in)
            {
                if set.layers.len() == 2 {
                    assert!(
                        (a / b - 1.0).abs() < 10.0 * threshold,
                        "{:?}: {a} vs {b}",
                        set.layers
                    );
                }
            }
        }
    }
    // The result no longer depends on the pass budget once the rule holds.
    let more = Options {
        iterations: Some(400),
        ..equal.clone()
    };
    let (m2, r2) = common::run_verified(&shared_chain(), &more);
    assert_eq!(r2.cls_iterations.len(), it.len());
    for w in [
        "c0.weight",
        "c1.weight",
        "dw.weight",
        "c2.weight",
        "c3.weight",
    ] {
        if m.graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .any(|t| t.name() == w)
        {
            assert_eq!(common::values(&m, w), common::values(&m2, w), "{w}");
        }
    }
    // Two fixed passes (the old default) stop short of the rule on this chain.
    let two = Options {
        iterations: Some(2),
        ..equal
    };
    let (_, r3) = common::run_verified(&shared_chain(), &two);
    check("two passes", &r3);
    assert_eq!(r3.cls_iterations.len(), 2);
    assert!(r3.cls_iterations[1].max_abs_one_minus_s >= threshold);
}

#[test]
fn an_isolated_set_converges_in_one_pass() {
    let mut b = ModelBuilder::new(13).seed(72);
    let x = b.batched_input("x", "N", &[3, 6, 6]);
    let y = b.conv(
        "a",
        &x,
        &ConvSpec::new(3, 6, &[3, 3]).same_pads().spread(4.0),
    );
    let y = b.relu("a_relu", &y);
    let y = b.conv("b", &y, &ConvSpec::new(6, 4, &[1, 1]));
    b.output(&y);
    let (_, r) = common::run_verified(&b.build(), &Options::default());
    check("isolated pair", &r);
    assert_eq!(r.cls_iterations.len(), 1, "{:?}", r.cls_iterations);
    let p = &r.cls_sets[0].pairs[0];
    for (a, b) in p
        .range_after
        .layer1_out
        .iter()
        .zip(&p.range_after.layer2_in)
    {
        assert!((a / b - 1.0).abs() < 1e-5, "{a} vs {b}");
    }
}

fn samples(model: &ModelProto, n: usize, seed: u64) -> SampleInputs {
    let _ = model;
    let mut rng = onnx_cle::builder::SplitMix64::new(seed);
    SampleInputs {
        tensors: vec![onnx_cle::runtime::InputTensor {
            name: "x".into(),
            shape: vec![n, 3, 9, 9],
            elem_type: 1,
            data: rng.normal_vec(n * 3 * 9 * 9, 1.0),
        }],
        source: "synthetic".into(),
    }
}

#[test]
fn select_auto_keeps_the_best_candidate_on_the_held_out_samples() {
    let model = shared_chain();
    let given = samples(&model, 8, 9);
    let opts = Options {
        select: onnx_cle::Select::Auto,
        ..Options::default()
    };
    let out = onnx_cle::run(model.clone(), None, &opts, Some(&given), Control::default())
        .expect("select auto");
    let r = &out.report;
    check("select auto", r);
    let sel = r.selection.as_ref().expect("selection in the report");
    assert_eq!((sel.scored_samples, sel.other_samples), (4, 4));
    assert!(sel.candidates.len() >= 4, "{:?}", sel.candidates);
    assert!(
        r.verification.inputs.contains("even-indexed"),
        "{}",
        r.verification.inputs
    );
    // Independently: score each candidate's model on the odd-indexed samples only.
    let per = onnx_cle::quant::samples_of(&given.tensors);
    let odd: Vec<_> = per.iter().skip(1).step_by(2).cloned().collect();
    let reference = onnx_cle::quant::reference_outputs(&model, &odd).unwrap();
    let mut best = (f64::NEG_INFINITY, String::new());
    for (label, o) in onnx_cle::pipeline::candidates(&opts) {
        let mut o = o;
        o.verify.enabled = false;
        let eq = onnx_cle::equalize(model.clone(), &o).unwrap().model;
        let q = onnx_cle::quant::quantized_weights(
            &eq,
            onnx_cle::quant::Scheme::PerTensorSymmetric,
            None,
        );
        let outs = onnx_cle::quant::first_outputs(&onnx_cle::onnx::encode(&q), &odd).unwrap();
        let (sq, _) = onnx_cle::quant::score(&reference, &outs);
        let c = sel
            .candidates
            .iter()
            .find(|c| c.label == label)
            .expect("candidate reported");
        assert!(
            (c.sqnr_db - sq).abs() < 1e-9,
            "{label}: reported {} vs {sq}",
            c.sqnr_db
        );
        if sq > best.0 {
            best = (sq, label);
        }
    }
    assert_eq!(sel.chosen, best.1);
    assert_eq!(sel.candidates.iter().filter(|c| c.chosen).count(), 1);
    common::say(&format!(
        "fidelity select auto: kept `{}` ({:.2} dB) of {:?}",
        sel.chosen,
        best.0,
        sel.candidates
            .iter()
            .map(|c| (c.label.clone(), (c.sqnr_db * 100.0).round() / 100.0))
            .collect::<Vec<_>>()
    ));
    // Without samples it is a usage error, not a silent default.
    assert!(onnx_cle::run(model, None, &opts, None, Control::default()).is_err());
}
