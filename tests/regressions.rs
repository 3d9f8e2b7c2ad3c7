//! Regression tests for engine bugs found while writing the test suite (each failed before its
//! fix):
//!
//! 1. A `Gemm` with `transA = 1` contracts over its input's *rows*: a BN folded forward into it,
//!    or CLS scaling it as the second layer of a pair, scaled the wrong axis (relative error 0.68
//!    in onnxruntime). Such a Gemm is now not a layer (`gemm_trans_a`). tract cannot load these
//!    models, so the reference is a tiny f64 evaluator in this file.
//! 2. `Conv → Relu → MatMul` was scaled as a CLS pair whenever `C == W`: the conv scales axis 1,
//!    the MatMul contracts over the last axis (relative error 0.24). Now skipped
//!    (`channel_axis_mismatch`).
//! 3. The exact high-bias fold ignored `Gemm` `alpha`/`beta`: `b2 += W2·c` instead of
//!    `(alpha/beta)·W2·c`, and `b1 −= c` instead of `c/beta` (relative error 0.58).
//! 4. Duplicate node names: the engine works by node index (checked with tract after giving
//!    the nodes unique names, which tract needs).
//! 5. `BN → Reshape([-1, K]) → Gemm` was folded forward whenever `K` was a multiple of the BN's
//!    channels, but the fold's channel repetition assumes one sample per row (`K = C·H·W`);
//!    `Reshape([-1, 8])` of `[N, 4, 2, 2]` puts half a sample in each row (relative error
//!    ~0.5 in tract). AIMET folds any Reshape; `--compat aimet` now refuses it too, with a note.
//! 6. Cancellation (the service's job wall time) was checked only when a stage started: a run
//!    canceled during its last stage (verification, or a long quantization sensitivity)
//!    finished and succeeded. It now fails with `Canceled`, and the simulation stops between
//!    model runs.
//! 7. The quantization table and sensitivity named unnamed layers by their index in the
//!    *equalized* model (`Conv#2`) while every other part of the report used the input's
//!    (`Conv#3`, the BN before it being gone): rows could not be joined by layer.

mod common;

use std::collections::HashMap;

use onnx_cle::builder::{attr_int, tensor_f32, ClipForm, ConvSpec, Dim, GemmSpec, ModelBuilder};
use onnx_cle::onnx::{self, ModelProto};
use onnx_cle::Options;

/// Evaluates a 2-D model of `BatchNormalization`, `Gemm` and `Relu` nodes in f64.
fn eval_2d(m: &ModelProto, x: &[f64], rows: usize) -> Vec<f64> {
    let g = m.graph.as_ref().unwrap();
    let mut env: HashMap<String, (Vec<f64>, Vec<usize>)> = HashMap::new();
    for t in &g.initializer {
        let v = onnx::tensor::to_f32(t).unwrap();
        env.insert(
            t.name().to_string(),
            (v.data.iter().map(|&f| f as f64).collect(), v.dims),
        );
    }
    let cols = x.len() / rows;
    env.insert(
        g.input[0].name().to_string(),
        (x.to_vec(), vec![rows, cols]),
    );
    let attr_f = |n: &onnx::NodeProto, k: &str, d: f64| {
        n.attribute
            .iter()
            .find(|a| a.name() == k)
            .map_or(d, |a| a.f() as f64)
    };
    let attr_i = |n: &onnx::NodeProto, k: &str| {
        n.attribute
            .iter()
            .find(|a| a.name() == k)
            .map_or(0, |a| a.i())
    };
    for n in &g.node {
        let (a, ad) = env[&n.input[0]].clone();
        let out = match n.op_type() {
            "Relu" => (a.iter().map(|v| v.max(0.0)).collect(), ad),
            "BatchNormalization" => {
                let p = |k: usize| env[&n.input[k]].0.clone();
                let (gm, bt, mu, var) = (p(1), p(2), p(3), p(4));
                let eps = attr_f(n, "epsilon", 1e-5);
                let c = ad[1];
                let y = a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let k = i % c;
                        (v - mu[k]) / (var[k] + eps).sqrt() * gm[k] + bt[k]
                    })
                    .collect();
                (y, ad)
            }
            "Gemm" => {
                let (bw, bd) = env[&n.input[1]].clone();
                let (ta, tb) = (attr_i(n, "transA") != 0, attr_i(n, "transB") != 0);
                let (m_, k_) = if ta { (ad[1], ad[0]) } else { (ad[0], ad[1]) };
                let n_ = if tb { bd[0] } else { bd[1] };
                let av = |i: usize, k: usize| {
                    if ta {
                        a[k * ad[1] + i]
                    } else {
                        a[i * ad[1] + k]
                    }
                };
                let bv = |k: usize, j: usize| {
                    if tb {
                        bw[j * bd[1] + k]
                    } else {
                        bw[k * bd[1] + j]
                    }
                };
                let c = n
                    .input
                    .get(2)
                    .filter(|s| !s.is_empty())
                    .map(|s| env[s].0.clone());
                let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
                let mut y = vec![0f64; m_ * n_];
                for i in 0..m_ {
                    for j in 0..n_ {
                        let s: f64 = (0..k_).map(|k| av(i, k) * bv(k, j)).sum();
                        y[i * n_ + j] = alpha * s + c.as_ref().map_or(0.0, |c| beta * c[j]);
                    }
                }
                (y, vec![m_, n_])
            }
            other => panic!("eval_2d: unsupported op {other}"),
        };
        env.insert(n.output[0].clone(), out);
    }
    env[g.output[0].name()].0.clone()
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

#[test]
fn gemm_trans_a_is_not_folded_or_scaled_on_its_input_side() {
    let no_verify = |mut o: Options| {
        o.verify.enabled = false;
        o
    };
    let x: Vec<f64> = onnx_cle::builder::SplitMix64::new(9)
        .normal_vec(64, 1.0)
        .iter()
        .map(|&v| v as f64)
        .collect();
    // BN → Gemm(transA): the BN normalizes columns, the Gemm contracts over rows.
    let mut b = ModelBuilder::new(13).seed(31);
    let xi = b.input("x", &[Dim::from(8), Dim::from(8)]);
    let y = b.batch_norm("bn", &xi, 8);
    let y = b.gemm("g", &y, &GemmSpec::new(8, 4));
    b.last_node_mut().attribute.push(attr_int("transA", 1));
    b.output(&y);
    let m = b.build();
    let eq = onnx_cle::equalize(m.clone(), &no_verify(Options::default())).unwrap();
    let dev = rel_l2(&eval_2d(&m, &x, 8), &eval_2d(&eq.model, &x, 8));
    assert!(dev <= 1e-6, "BN → Gemm(transA): rel L2 {dev:e}");
    assert!(eq.report.bn_folds.is_empty());
    assert!(eq.report.skipped.iter().any(|s| s.reason == "gemm_trans_a"));

    // Gemm → Relu → Gemm(transA) with rows == channels.
    let mut b = ModelBuilder::new(13).seed(32);
    let xi = b.input("x", &[Dim::from(8), Dim::from(8)]);
    let y = b.gemm("g1", &xi, &GemmSpec::new(8, 8));
    let y = b.relu("r", &y);
    let y = b.gemm("g2", &y, &GemmSpec::new(8, 4));
    b.last_node_mut().attribute.push(attr_int("transA", 1));
    b.output(&y);
    let m = b.build();
    let eq = onnx_cle::equalize(m.clone(), &no_verify(Options::default())).unwrap();
    let dev = rel_l2(&eval_2d(&m, &x, 8), &eval_2d(&eq.model, &x, 8));
    assert!(dev <= 1e-6, "Gemm → Gemm(transA): rel L2 {dev:e}");
    assert!(eq.report.cls_sets.is_empty());
}

#[test]
fn conv_then_matmul_on_the_last_axis_is_not_a_pair() {
    let mut b = ModelBuilder::new(13).seed(33);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.relu("r", &y);
    let y = b.matmul("mm", &y, 8, 4);
    b.output(&y);
    let (_, r) = common::run_verified(&b.build(), &Options::default());
    let dev = r.verification.max_rel_l2.unwrap();
    assert!(dev <= 1e-5, "rel L2 {dev:e}");
    assert!(r.cls_sets.is_empty());
    assert!(r
        .skipped
        .iter()
        .any(|s| s.reason == "channel_axis_mismatch"));
}

#[test]
fn exact_hbf_respects_gemm_alpha_beta() {
    for (alpha, beta) in [(1.0, 1.0), (0.5, 2.0), (3.0, 0.25)] {
        let mut b = ModelBuilder::new(13).seed(34);
        let x = b.batched_input("x", "N", &[8]);
        let y = b.gemm("g0", &x, &GemmSpec::new(8, 8));
        let y = b.clip("clip", &y, Some(0.0), Some(6.0), ClipForm::ConstantNodes);
        let y = b.gemm("g1", &y, &GemmSpec::new(8, 8).alpha_beta(alpha, beta));
        let y = b.relu("r", &y);
        let y = b.gemm("g2", &y, &GemmSpec::new(8, 4).alpha_beta(alpha, beta));
        b.output(&y);
        let mut m = b.build();
        // A large bias on g1 gives the exact fold a provable lower bound to absorb.
        for t in m.graph.as_mut().unwrap().initializer.iter_mut() {
            if t.name() == "g1.bias" {
                *t = tensor_f32("g1.bias", &[8], &[20.0; 8]);
            }
        }
        let (_, r) = common::run_verified(&m, &Options::default());
        assert!(
            r.hbf.pairs.iter().any(|p| p.layer1 == "g1"),
            "alpha {alpha} beta {beta}: the exact HBF did not absorb anything"
        );
        let dev = r.verification.max_rel_l2.unwrap();
        assert!(dev <= 1e-5, "alpha {alpha} beta {beta}: rel L2 {dev:e}");
    }
}

/// Gives every node a unique name (tract refuses duplicates; names do not affect the math).
fn uniquely_named(m: &ModelProto) -> Vec<u8> {
    let mut m = m.clone();
    for (i, n) in m.graph.as_mut().unwrap().node.iter_mut().enumerate() {
        n.name = Some(format!("{}__{i}", n.name()));
    }
    onnx::encode(&m)
}

#[test]
fn duplicate_node_names() {
    let mut b = ModelBuilder::new(13).seed(35);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let mut y = x.clone();
    for (cin, cout, k) in [(4, 8, 3), (8, 8, 3)] {
        y = b.conv("conv", &y, &ConvSpec::new(cin, cout, &[k, k]).same_pads());
        y = b.batch_norm("bn", &y, cout);
        y = b.relu("relu", &y);
    }
    let y = b.conv("conv", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let m = b.build();
    let mut opts = Options::default();
    opts.verify.enabled = false;
    let eq = onnx_cle::equalize(m.clone(), &opts).unwrap();
    let r = &eq.report;
    assert_eq!(r.bn_folds.len(), 2);
    assert_eq!(r.cls_sets.len(), 2);
    let mut specs = onnx_cle::runtime::input_specs(&m, 1).unwrap();
    onnx_cle::runtime::fill_random(&mut specs, 3);
    let v = onnx_cle::verify::compare(
        &uniquely_named(&m),
        &uniquely_named(&eq.model),
        &specs,
        "random".into(),
    );
    let dev = v
        .max_rel_l2
        .unwrap_or_else(|| panic!("not verified: {:?}", v.reason));
    assert!(dev <= 1e-5, "rel L2 {dev:e}");
}

/// `x[N, 4, 2, 2] → BN → Reshape(shape) → Gemm(K → 3)`.
fn bn_reshape_gemm(shape: &[i64], k: usize) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(515);
    let x = b.batched_input("x", "N", &[4, 2, 2]);
    let y = b.batch_norm("bn", &x, 4);
    let y = b.reshape("flat", &y, shape);
    let y = b.gemm("fc", &y, &GemmSpec::new(k, 3));
    b.output(&y);
    b.build()
}

#[test]
fn bn_reshape_that_splits_samples_is_not_folded() {
    for compat in [false, true] {
        let mut opts = Options::default();
        if compat {
            opts.compat = onnx_cle::Compat::Aimet;
        }
        // Half a sample per row: refused (verification proves the model unchanged).
        let (_, r) = common::run_verified(&bn_reshape_gemm(&[-1, 8], 8), &opts);
        let worst = r.verification.max_rel_l2.unwrap_or(f64::NAN);
        common::say(&format!(
            "regression BN → Reshape[-1, 8] compat={compat}: rel L2 {worst:.1e}"
        ));
        assert!(worst <= 1e-5, "compat={compat}: rel L2 {worst:e}");
        assert!(r.bn_folds.is_empty(), "compat={compat}: {:?}", r.bn_folds);
        assert!(
            r.skipped
                .iter()
                .any(|s| s.reason == "reshape_layout" && s.nodes.iter().any(|n| n == "bn")),
            "compat={compat}: {:#?}",
            r.skipped
        );
        assert_eq!(
            r.compat_notes.iter().any(|n| n.contains("Reshape")),
            compat,
            "{:?}",
            r.compat_notes
        );
        // One sample per row, proven by `0` (copy the batch) or by the input's declared shape.
        for shape in [[0, -1], [-1, 16], [0, 16]] {
            let (_, r) = common::run_verified(&bn_reshape_gemm(&shape, 16), &opts);
            let worst = r.verification.max_rel_l2.unwrap_or(f64::NAN);
            assert!(worst <= 1e-5, "{shape:?} compat={compat}: rel L2 {worst:e}");
            assert_eq!(
                r.bn_folds.len(),
                1,
                "{shape:?} compat={compat}: {:#?}",
                r.skipped
            );
        }
    }
}

#[test]
fn a_run_canceled_during_its_last_stage_fails() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut b = ModelBuilder::new(13).seed(616);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]));
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let model = b.build();
    let mut quant_last = Options::default();
    quant_last.verify.enabled = false;
    quant_last.quant.end_to_end = true;
    quant_last.quant.sensitivity = true;
    for (opts, last) in [(Options::default(), "verify"), (quant_last, "quantization")] {
        let cancel = AtomicBool::new(false);
        let progress = |stage: &str| {
            if stage == last {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let ctl = onnx_cle::Control {
            progress: Some(&progress),
            cancel: Some(&cancel),
        };
        let r = onnx_cle::run(model.clone(), None, &opts, None, ctl);
        assert!(
            matches!(r, Err(onnx_cle::CoreError::Canceled)),
            "canceled during `{last}`: {:?}",
            r.map(|o| o.report.verification.status)
        );
        // Not canceled: the same run succeeds.
        let ok = onnx_cle::run(
            model.clone(),
            None,
            &opts,
            None,
            onnx_cle::Control::default(),
        );
        assert!(ok.is_ok(), "{last}: {:?}", ok.err());
    }
}

#[test]
fn quantization_rows_use_the_report_labels_of_unnamed_layers() {
    let mut b = ModelBuilder::new(13).seed(717);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]));
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let mut model = b.build();
    for n in &mut model.graph.as_mut().unwrap().node {
        n.name = None;
    }
    let mut e2e = Options::default();
    e2e.quant.end_to_end = true;
    e2e.quant.sensitivity = true;
    for opts in [Options::default(), e2e] {
        let (_, r) = common::run_verified(&model, &opts);
        let set = &r.cls_sets[0].layers;
        assert_eq!(set, &["Conv#0", "Conv#3"], "{:?}", r.cls_sets);
        let q = r.quantization.as_ref().unwrap();
        let rows: Vec<&str> = q.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows.iter().all(|l| set.iter().any(|s| s == l)),
            "{rows:?} vs {set:?}"
        );
        if let Some(e) = &q.end_to_end {
            let sens: Vec<&str> = e.sensitivity.iter().map(|l| l.layer.as_str()).collect();
            assert_eq!(sens, ["Conv#0", "Conv#3"]);
        }
    }
}
