//! The deploy model (`options.deploy`, `--deploy-output`) on models built with
//! [`onnx_cle::builder`], run by tract. Proves that:
//! - the data-free `E[x]` at every layer input (from the folded BN statistics through the
//!   equalized graph: ReLU6 as `Relu → Min`, Relu, SiLU, residual `Add`, pooling, Flatten) is
//!   within 0.05 σ per channel (median over channels; measured 0.005–0.009) and 0.4 σ (worst
//!   channel; measured 0.32, a depthwise channel whose pre-activation is a 9-tap sum of clipped
//!   values, far from Gaussian) of the mean tract measures on 64 fresh random inputs, σ the
//!   channel's pre-activation standard deviation (before Relu / clamps); the BN statistics are
//!   calibrated on 64 other inputs first, as training would have set them;
//! - every layer weight of the deploy model quantizes back to itself, bit for bit, under the
//!   declared target grid (per tensor, per channel, 4 bits), lies within one grid step of the
//!   equalized weight, and the model names its target in `metadata_props`;
//! - bias correction removes most of the mean output shift the weight error causes, and a
//!   deploy model built from a model already on the grid (ε = 0) leaves every weight and bias
//!   as it was, bit for bit;
//! - the exact equalized model is byte-identical whether or not a deploy model is asked for;
//! - empirical correction refuses fewer than 100 samples, and works with 100;
//! - with per-tensor weights, a BN folded into a layer that cross-layer scaling left alone
//!   stays a float op in the int8 outputs when folding would cost the weight grid (its scales
//!   spread over two decades here): the deploy model then deviates less from the original than
//!   the folded model rounded on the same grid, the exact equalized model still has it folded,
//!   and the report says which; per-channel weights fold it.

mod common;

use onnx_cle::builder::{calibrate_batch_norms, BnSpec, ConvSpec, GemmSpec, ModelBuilder};
use onnx_cle::onnx::{self, ModelProto};
use onnx_cle::options::BiasCorrection;
use onnx_cle::options::Rounding;
use onnx_cle::options::{Granularity, Scaling, Target, TargetPreset};
use onnx_cle::quant::deploy::stats::{self, ChannelAxis, StatsOptions};
use onnx_cle::runtime::{self, InputTensor};
use onnx_cle::{Control, Options, SampleInputs};

/// `n` single-sample standard-normal inputs of `model`, seeded from `seed`.
fn random_samples(model: &ModelProto, n: usize, seed: u64) -> Vec<Vec<InputTensor>> {
    (0..n as u64)
        .map(|k| {
            let mut specs = runtime::input_specs(model, 1).unwrap();
            runtime::fill_random(&mut specs, seed.wrapping_mul(1000).wrapping_add(k));
            specs
        })
        .collect()
}

/// The samples as one batched `[N, …]` input.
fn batched(samples: &[Vec<InputTensor>]) -> SampleInputs {
    let first = &samples[0][0];
    let mut shape = first.shape.clone();
    shape[0] = samples.len();
    SampleInputs {
        tensors: vec![InputTensor {
            name: first.name.clone(),
            shape,
            elem_type: first.elem_type,
            data: samples.iter().flat_map(|s| s[0].data.clone()).collect(),
        }],
        source: format!("{} random samples", samples.len()),
    }
}

/// The model with BN statistics calibrated on `samples` ([`calibrate_batch_norms`]).
fn calibrated(model: ModelProto, samples: &[Vec<InputTensor>]) -> ModelProto {
    calibrate_batch_norms(model, samples).unwrap()
}

fn conv_bn(b: &mut ModelBuilder, name: &str, x: &str, spec: ConvSpec) -> String {
    let c = spec.out_channels;
    let y = b.conv(name, x, &spec);
    b.batch_norm(&format!("{name}_bn"), &y, c)
}

/// MobileNetV2-shaped: Conv-BN-ReLU6 → depthwise-BN-ReLU6 → 1×1-BN (projection) + a
/// residual 1×1-BN branch → 1×1-BN-Relu → GlobalAveragePool → Flatten → Gemm.
fn mobilenet_like(seed: u64) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("x", "N", &[3, 12, 12]);
    let y = conv_bn(
        &mut b,
        "stem",
        &x,
        ConvSpec::new(3, 16, &[3, 3]).same_pads(),
    );
    let y = b.relu6("stem_relu6", &y);
    let y = conv_bn(
        &mut b,
        "dw",
        &y,
        ConvSpec::depthwise(16, &[3, 3]).same_pads(),
    );
    let y = b.relu6("dw_relu6", &y);
    let p = conv_bn(&mut b, "project", &y, ConvSpec::new(16, 8, &[1, 1]));
    let e = conv_bn(&mut b, "expand", &p, ConvSpec::new(8, 8, &[1, 1]));
    let y = b.add("residual", &p, &e);
    let y = conv_bn(&mut b, "head", &y, ConvSpec::new(8, 24, &[1, 1]));
    let y = b.relu("head_relu", &y);
    let y = b.global_average_pool("gap", &y);
    let y = b.flatten("flatten", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(24, 10));
    b.output(&y);
    b.build()
}

/// SiLU (`x · Sigmoid(x)`) between BN-folded convs, then pooling and a classifier.
fn silu_net(seed: u64) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("x", "N", &[3, 10, 10]);
    let mut y = x;
    for (k, (i, o)) in [(3, 12), (12, 12), (12, 16)].into_iter().enumerate() {
        let h = conv_bn(
            &mut b,
            &format!("c{k}"),
            &y,
            ConvSpec::new(i, o, &[3, 3]).same_pads(),
        );
        let s = b.unary("Sigmoid", &format!("sig{k}"), &h);
        y = b.node1("Mul", &format!("silu{k}"), &[&h, &s], vec![]);
    }
    let y = b.global_average_pool("gap", &y);
    let y = b.flatten("flatten", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(16, 6));
    b.output(&y);
    b.build()
}

/// ResNet-shaped: stem Conv-BN-Relu, two basic blocks (Conv-BN-Relu-Conv-BN + identity,
/// Relu after the Add), a 1×1 projection block, GlobalAveragePool → Flatten → Gemm.
fn resnet_like(seed: u64) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("x", "N", &[3, 12, 12]);
    let y = conv_bn(
        &mut b,
        "stem",
        &x,
        ConvSpec::new(3, 16, &[3, 3]).same_pads(),
    );
    let mut y = b.relu("stem_relu", &y);
    for k in 0..2 {
        let h = conv_bn(
            &mut b,
            &format!("b{k}c1"),
            &y,
            ConvSpec::new(16, 16, &[3, 3]).same_pads(),
        );
        let h = b.relu(&format!("b{k}r1"), &h);
        let h = conv_bn(
            &mut b,
            &format!("b{k}c2"),
            &h,
            ConvSpec::new(16, 16, &[3, 3]).same_pads(),
        );
        let s = b.add(&format!("b{k}add"), &h, &y);
        y = b.relu(&format!("b{k}r2"), &s);
    }
    let h = conv_bn(&mut b, "proj", &y, ConvSpec::new(16, 32, &[1, 1]));
    let y = b.relu("proj_relu", &h);
    let y = b.global_average_pool("gap", &y);
    let y = b.flatten("flatten", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(32, 10));
    b.output(&y);
    b.build()
}

/// Layers of `model` with a constant weight: `(node index, input tensor, in channels, axis)`.
fn layer_inputs(model: &ModelProto) -> Vec<(String, usize, ChannelAxis)> {
    let mut work = onnx_cle::graph::work::Work::new(model.clone()).unwrap();
    let mut out = Vec::new();
    for i in 0..work.node_count() {
        if let Ok(l) = onnx_cle::graph::layer_of(&mut work, i) {
            let t = work.input(i, 0).to_string();
            if !out
                .iter()
                .any(|(n, _, _): &(String, usize, ChannelAxis)| *n == t)
            {
                out.push((t, l.layout.in_channels(), ChannelAxis::of(&l.layout.op)));
            }
        }
    }
    out
}

#[test]
fn analytic_means_match_measured_means() {
    for (name, make) in [
        ("mobilenet_like", mobilenet_like as fn(u64) -> ModelProto),
        ("silu_net", silu_net),
        ("resnet_like", resnet_like),
    ] {
        let raw = make(3);
        let model = calibrated(raw.clone(), &random_samples(&raw, 64, 1));
        let (eq, st) =
            onnx_cle::equalize_with_stats(model, &Options::default(), &StatsOptions::default())
                .unwrap();
        let held_out = random_samples(&eq.model, 64, 2);
        let inputs = layer_inputs(&eq.model);
        let measured = stats::measure_means(&eq.model, &inputs, &held_out).unwrap();
        let mut errs = Vec::new();
        for (t, c, _) in &inputs {
            let a = st
                .input_mean(t, *c)
                .unwrap_or_else(|e| panic!("{name}: {t}: {e}"));
            let s = st.get(t).unwrap();
            let sd = stats::expand_channels(&s.sigma, *c).unwrap();
            let m = &measured[t];
            for k in 0..*c {
                errs.push(f64::from((a[k] - m[k]).abs()) / f64::from(sd[k]).max(1e-3));
            }
        }
        errs.sort_by(f64::total_cmp);
        let median = errs[errs.len() / 2];
        let worst = errs[errs.len() - 1];
        common::say(&format!(
            "E[x] {name:<15} {} layer inputs, {} channels: |analytic - measured| / sigma median {median:.3}, max {worst:.3}",
            inputs.len(),
            errs.len()
        ));
        assert!(median <= 0.05, "{name}: median {median}");
        assert!(worst <= 0.4, "{name}: worst {worst}");
    }
}

fn deploy_options(target: Target, bias: BiasCorrection, rounding: Rounding) -> Options {
    Options {
        target,
        deploy: onnx_cle::options::DeployOptions {
            model: true,
            bias_correction: bias,
            rounding,
            input_mean: None,
        },
        ..Options::default()
    }
}

fn run(model: &ModelProto, opts: &Options, samples: Option<&SampleInputs>) -> onnx_cle::Output {
    onnx_cle::run(model.clone(), None, opts, samples, Control::default()).unwrap()
}

/// Every `(weight name, layout)` of the model's quantizable layers.
fn weights(model: &ModelProto) -> Vec<(String, onnx_cle::graph::layout::WeightLayout)> {
    let mut work = onnx_cle::graph::work::Work::new(model.clone()).unwrap();
    (0..work.node_count())
        .filter_map(|i| onnx_cle::graph::layer_of(&mut work, i).ok())
        .map(|l| (l.weight, l.layout))
        .collect()
}

fn const_values(model: &ModelProto, name: &str) -> Vec<f32> {
    let work = onnx_cle::graph::work::Work::new(model.clone()).unwrap();
    work.decode(name).unwrap().data
}

#[test]
fn split_scaling_builds_the_int8_outputs_from_a_run_of_their_own() {
    let model = mobilenet_like(5);
    let mut opts = deploy_options(
        Target::default(),
        BiasCorrection::Analytic,
        Rounding::Squant,
    );
    opts.exports.qdq = true;
    assert_eq!(
        opts.clone().normalized().unwrap().scaling,
        Some(Scaling::Split)
    );
    let split = run(&model, &opts, None);
    let with = |s: Scaling| {
        let o = Options {
            scaling: Some(s),
            ..opts.clone()
        };
        run(&model, &o, None)
    };
    let (equal, noise) = (with(Scaling::EqualRanges), with(Scaling::Noise));
    assert_ne!(
        equal.model, noise.model,
        "the two rules scale this model alike"
    );
    assert_eq!(
        split.model, equal.model,
        "the equalized model: equal ranges"
    );
    assert_eq!(split.deploy, noise.deploy, "the deploy model: noise");
    let qdq = |o: &onnx_cle::Output| {
        o.artifacts
            .iter()
            .map(|a| a.data.clone())
            .collect::<Vec<_>>()
    };
    assert!(!qdq(&split).is_empty());
    assert_eq!(qdq(&split), qdq(&noise), "the QDQ model: noise");
    let rule = |o: &onnx_cle::Output| o.report.deploy.as_ref().and_then(|d| d.scaling);
    assert_eq!(rule(&split), Some(Scaling::Noise));
    assert_eq!(rule(&equal), Some(Scaling::EqualRanges));
    assert_eq!(
        split.report.verification.status,
        equal.report.verification.status
    );
    // The second run is one stage to the caller: every stage is announced once.
    let stages = std::sync::Mutex::new(Vec::<String>::new());
    let progress = |s: &str| stages.lock().unwrap().push(s.to_string());
    let ctl = Control {
        progress: Some(&progress),
        cancel: None,
    };
    onnx_cle::run(model.clone(), None, &opts, None, ctl).unwrap();
    let seen = stages.into_inner().unwrap();
    let expected: Vec<&str> = "verify_original prepare bn_fold relu6 cls hbf finish int8_model \
                                quantization deploy exports verify"
        .split_whitespace()
        .collect();
    assert_eq!(seen, expected, "{seen:?}");
}

#[test]
fn deploy_weights_are_on_the_target_grid() {
    let model = mobilenet_like(5);
    let per_tensor = Target {
        weight_granularity: Some(Granularity::PerTensor),
        ..Target::default()
    };
    let targets = [
        Target::default(),
        per_tensor,
        Target {
            preset: TargetPreset::Trt,
            ..Target::default()
        },
        Target {
            weight_bits: Some(4),
            ..per_tensor
        },
        Target {
            preset: TargetPreset::Qnn,
            weight_granularity: Some(Granularity::PerChannel),
            ..Target::default()
        },
    ];
    for target in targets {
        for rounding in [Rounding::Nearest, Rounding::Squant] {
            let mut opts = deploy_options(target, BiasCorrection::Analytic, rounding);
            // The model the deploy model is built from (`split`: a run of its own).
            opts.scaling = Some(opts.scaling().of_int8());
            let out = run(&model, &opts, None);
            let exact = onnx::decode(out.model.clone().into()).unwrap();
            let deploy = onnx::decode(out.deploy.clone().unwrap().into()).unwrap();
            let grid = target.weights();
            let case = format!("{} {rounding:?}", target.describe());
            for (w, layout) in weights(&deploy) {
                let d = const_values(&deploy, &w);
                let e = const_values(&exact, &w);
                let mut again = d.clone();
                grid.fake_quant(&mut again, &layout);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&again), bits(&d), "{case}: `{w}` is not on the grid");
                let steps = grid.steps(&d, &layout);
                let mut o_of = vec![0usize; d.len()];
                layout.for_each_kernel(|st, o, _| {
                    o_of[st..st + layout.kernel_len()].fill(o);
                });
                for (j, (&dv, &ev)) in d.iter().zip(&e).enumerate() {
                    let s = steps[o_of[j]];
                    assert!(
                        (dv - ev).abs() < s,
                        "{case}: `{w}`[{j}] moved {} steps",
                        (dv - ev) / s
                    );
                }
            }
            let meta: Vec<(String, String)> = deploy
                .metadata_props
                .iter()
                .map(|e| (e.key().to_string(), e.value().to_string()))
                .collect();
            assert!(
                meta.contains(&("onnx_cle.target".into(), target.describe())),
                "{case}: {meta:?}"
            );
            let r = out.report.deploy.as_ref().unwrap();
            assert!(r.function_changed);
            assert_eq!(
                r.summary.corrected, r.summary.layers,
                "{case}: {:#?}",
                r.skipped
            );
            assert_eq!(r.target, target.describe());
        }
    }
}

/// Mean over samples of `deploy − original` per logit, and the output SQNR.
fn shift_and_sqnr(
    original: &ModelProto,
    deploy: &[u8],
    samples: &[Vec<InputTensor>],
) -> (f64, f64) {
    let reference = onnx_cle::quant::reference_outputs(original, samples).unwrap();
    let outs = onnx_cle::quant::first_outputs(deploy, samples).unwrap();
    let n = reference[0].len();
    let mut mean = vec![0f64; n];
    for (r, o) in reference.iter().zip(&outs) {
        for k in 0..n {
            mean[k] += f64::from(o[k] - r[k]) / samples.len() as f64;
        }
    }
    let rms = (mean.iter().map(|m| m * m).sum::<f64>() / n as f64).sqrt();
    (rms, onnx_cle::quant::score(&reference, &outs).0)
}

#[test]
fn bias_correction_removes_the_mean_shift() {
    for (name, make) in [
        ("mobilenet_like", mobilenet_like as fn(u64) -> ModelProto),
        ("resnet_like", resnet_like),
    ] {
        let raw = make(9);
        let model = calibrated(raw.clone(), &random_samples(&raw, 64, 3));
        let samples = random_samples(&model, 64, 4);
        let target = Target {
            weight_bits: Some(4),
            ..Target::default()
        };
        let plain = run(
            &model,
            &deploy_options(target, BiasCorrection::Off, Rounding::Nearest),
            None,
        );
        let fixed = run(
            &model,
            &deploy_options(target, BiasCorrection::Analytic, Rounding::Nearest),
            None,
        );
        let (shift0, db0) = shift_and_sqnr(&model, plain.deploy.as_ref().unwrap(), &samples);
        let (shift1, db1) = shift_and_sqnr(&model, fixed.deploy.as_ref().unwrap(), &samples);
        common::say(&format!(
            "bias correction {name:<15} 4-bit per-tensor: mean logit shift {shift0:.4} -> {shift1:.4}, SQNR {db0:.2} -> {db1:.2} dB"
        ));
        assert!(shift1 < 0.5 * shift0, "{name}: {shift0} -> {shift1}");
        assert!(db1 > db0, "{name}: {db0} -> {db1}");
        let m = fixed
            .report
            .deploy
            .as_ref()
            .unwrap()
            .measured
            .as_ref()
            .unwrap();
        assert_eq!(m.status, onnx_cle::report::VerifyStatus::Verified);
    }
}

#[test]
fn zero_error_correction_is_a_no_op_and_the_exact_model_is_untouched() {
    let model = resnet_like(4);
    let default = run(&model, &Options::default(), None);
    assert!(default.deploy.is_none() && default.report.deploy.is_none());
    let full = run(
        &model,
        &deploy_options(
            Target::default(),
            BiasCorrection::Analytic,
            Rounding::Squant,
        ),
        None,
    );
    assert_eq!(default.model, full.model, "the exact model changed");
    let html = onnx_cle::report::html::render(&full.report);
    assert!(html.contains("<section id=\"deploy\">") && html.contains("href=\"#deploy\""));
    assert!(!onnx_cle::report::html::render(&default.report).contains("id=\"deploy\""));
    // A model already on the grid: ε = 0, so rounding and correction change nothing.
    let on_grid = onnx::decode(full.deploy.unwrap().into()).unwrap();
    let mut opts = deploy_options(
        Target::default(),
        BiasCorrection::Analytic,
        Rounding::Nearest,
    );
    opts.steps = vec![];
    let again = run(&on_grid, &opts, None);
    let again = onnx::decode(again.deploy.unwrap().into()).unwrap();
    let (g0, g1) = (
        on_grid.graph.as_ref().unwrap(),
        again.graph.as_ref().unwrap(),
    );
    assert_eq!(g0.node, g1.node);
    assert_eq!(g0.initializer, g1.initializer);
}

#[test]
fn empirical_correction_needs_100_samples() {
    let raw = mobilenet_like(2);
    let model = calibrated(raw.clone(), &random_samples(&raw, 32, 5));
    let opts = deploy_options(
        Target::default(),
        BiasCorrection::Empirical,
        Rounding::Nearest,
    );
    let few = batched(&random_samples(&model, 16, 6));
    let err =
        onnx_cle::run(model.clone(), None, &opts, Some(&few), Control::default()).unwrap_err();
    assert!(err.to_string().contains("at least 100"), "{err}");
    let enough = batched(&random_samples(&model, 100, 7));
    let mut opts = opts;
    opts.quant.end_to_end = false;
    opts.verify.enabled = false;
    let out = run(&model, &opts, Some(&enough));
    let r = out.report.deploy.unwrap();
    assert_eq!(r.bias_correction, "empirical");
    assert_eq!(r.summary.corrected, r.summary.layers, "{:#?}", r.skipped);
}

/// Conv-BN-HardSwish blocks (cross-layer scaling does not cross HardSwish) whose BN scales γ
/// spread over two decades across channels; the output is the last block's.
fn hardswish_net(seed: u64) -> ModelProto {
    let mut b = ModelBuilder::new(14).seed(seed);
    let x = b.batched_input("x", "N", &[3, 10, 10]);
    let mut y = x;
    for (k, (i, o)) in [(3, 12), (12, 16)].into_iter().enumerate() {
        let h = b.conv(
            &format!("c{k}"),
            &y,
            &ConvSpec::new(i, o, &[3, 3]).same_pads(),
        );
        let spec = BnSpec {
            gamma: (0..o)
                .map(|c| 0.05 * 100f32.powf(c as f32 / (o - 1) as f32))
                .collect(),
            beta: vec![0.1; o],
            mean: vec![0.0; o],
            var: vec![1.0; o],
            epsilon: None,
        };
        let h = b.batch_norm_with(&format!("c{k}_bn"), &h, &spec);
        y = b.unary("HardSwish", &format!("hs{k}"), &h);
    }
    b.output(&y);
    b.build()
}

#[test]
fn per_tensor_int8_outputs_keep_a_bn_whose_fold_would_cost_the_grid() {
    let raw = hardswish_net(3);
    let model = calibrated(raw.clone(), &random_samples(&raw, 64, 5));
    let samples = random_samples(&model, 32, 6);
    let count = |m: &ModelProto, op: &str| {
        m.graph
            .as_ref()
            .map_or(0, |g| g.node.iter().filter(|n| n.op_type() == op).count())
    };
    let per_tensor = Target {
        weight_granularity: Some(Granularity::PerTensor),
        ..Target::default()
    };
    let opts = deploy_options(per_tensor, BiasCorrection::Off, Rounding::Nearest);
    let out = run(&model, &opts, None);
    let exact = onnx::decode(out.model.clone().into()).unwrap();
    let deploy_bytes = out.deploy.clone().unwrap();
    let deploy = onnx::decode(deploy_bytes.clone().into()).unwrap();
    assert_eq!(
        count(&exact, "BatchNormalization"),
        0,
        "the main output folds"
    );
    assert_eq!(
        count(&deploy, "BatchNormalization"),
        2,
        "the deploy model keeps both"
    );
    let kept: Vec<_> = out
        .report
        .skipped
        .iter()
        .filter(|s| s.reason == "kept_for_per_tensor_int8")
        .collect();
    assert_eq!(kept.len(), 2, "{:?}", out.report.skipped);
    assert!(kept.iter().all(|s| s.pass == "int8"));
    let d = out.report.deploy.as_ref().unwrap();
    assert!(d
        .metadata
        .iter()
        .any(|m| m.key == "onnx_cle.deploy_edits" && m.value.contains("2 BatchNormalization")));

    // The folded model rounded to nearest on the same grid, for comparison.
    let grid = per_tensor.weights();
    let mut folded = exact.clone();
    for (w, layout) in weights(&exact) {
        let g = folded.graph.as_mut().unwrap();
        let t = g.initializer.iter_mut().find(|t| t.name() == w).unwrap();
        let mut v = const_values(&exact, &w);
        grid.fake_quant(&mut v, &layout);
        t.float_data.clear();
        t.raw_data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    // Each channel's SQNR, averaged: a trained network's next layer makes up for the scale BN
    // gives a channel, so every channel carries the output alike.
    let channel_db = |bytes: &[u8]| {
        let reference = onnx_cle::quant::reference_outputs(&model, &samples).unwrap();
        let outs = onnx_cle::quant::first_outputs(bytes, &samples).unwrap();
        let (c, hw) = (16, 100);
        let mut db = 0.0;
        for ch in 0..c {
            let (mut sig, mut err) = (0f64, 0f64);
            for (r, o) in reference.iter().zip(&outs) {
                for j in ch * hw..(ch + 1) * hw {
                    sig += f64::from(r[j]).powi(2);
                    err += f64::from(o[j] - r[j]).powi(2);
                }
            }
            db += 10.0 * (sig / err).log10() / c as f64;
        }
        db
    };
    let (kept_db, folded_db) = (
        channel_db(&deploy_bytes),
        channel_db(&onnx::encode(&folded)),
    );
    assert!(
        kept_db > folded_db + 3.0,
        "mean channel SQNR: BN kept {kept_db:.2} dB, folded {folded_db:.2} dB"
    );

    let per_channel = Target {
        weight_granularity: Some(Granularity::PerChannel),
        ..Target::default()
    };
    let opts = deploy_options(per_channel, BiasCorrection::Off, Rounding::Nearest);
    let out = run(&model, &opts, None);
    let deploy = onnx::decode(out.deploy.unwrap().into()).unwrap();
    assert_eq!(count(&deploy, "BatchNormalization"), 0);
    assert!(out
        .report
        .skipped
        .iter()
        .all(|s| s.reason != "kept_for_per_tensor_int8"));
}
