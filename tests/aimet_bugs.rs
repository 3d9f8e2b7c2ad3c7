//! The AIMET failures of cle-spec §6.2 #1–#8, one test each, proving that the **default** mode
//! does not repeat them. Numeric claims are checked against tract running the original model
//! (`onnx_cle::run` with verification), never against our own output.
//!
//! 1. A Conv without a `group` attribute is equalized (group defaults to 1).
//! 2. A depthwise ConvTranspose is scaled correctly and its weight keeps its size.
//! 3. Conv3d neither crashes BN folding nor CLS: it is folded and scaled.
//! 4. A forward-folded BN never drives the high-bias fold (even with `hbf = aimet`), including
//!    the in ≠ out case that crashes AIMET.
//! 5. A conv output that is also a graph output is never rescaled.
//! 6. A Clip with initializer min/max is recognised as ReLU6, and Clip(0, 10) is not ReLU6.
//! 7. `epsilon = 0` is used as 0.
//! 8. Gemm `alpha`/`beta` are respected, and `auto_pad = SAME_UPPER` blocks a forward fold.

mod common;

use onnx_cle::builder::{BnSpec, ClipForm, ConvSpec, GemmSpec, ModelBuilder};
use onnx_cle::onnx::ModelProto;
use onnx_cle::report::{FoldDirection, Relu6Action};
use onnx_cle::{HbfMode, Options, Relu6Policy, Report, Step};

const MAX_REL_L2: f64 = 1e-5;

/// Runs with tract verification and asserts every output moved by ≤ 1e-5 relative L2.
fn preserved(name: &str, model: &ModelProto, opts: &Options) -> (ModelProto, Report) {
    let (m, r) = common::run_verified(model, opts);
    let worst = r.verification.max_rel_l2.unwrap_or(f64::NAN);
    common::say(&format!("aimet_bugs {name:<44} rel L2 {worst:.1e}"));
    for o in &r.verification.outputs {
        assert!(
            o.rel_l2 <= MAX_REL_L2,
            "{name}: output `{}` moved by rel L2 {:.3e}",
            o.name,
            o.rel_l2
        );
    }
    (m, r)
}

fn has_set(r: &Report, layers: &[&str]) -> bool {
    r.cls_sets.iter().any(|s| s.layers == layers)
}

fn skipped(r: &Report, pass: &str, node: &str, reason: &str) -> bool {
    r.skipped
        .iter()
        .any(|s| s.pass == pass && s.reason == reason && s.nodes.iter().any(|n| n == node))
}

#[test]
fn bug1_conv_without_group_attribute_is_equalized() {
    let mut b = ModelBuilder::new(13).seed(101);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv(
        "c1",
        &x,
        &ConvSpec::new(4, 8, &[3, 3]).same_pads().no_group_attr(),
    );
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.conv(
        "c2",
        &y,
        &ConvSpec::new(8, 8, &[3, 3]).same_pads().no_group_attr(),
    );
    let y = b.relu("r2", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]).no_group_attr());
    b.output(&y);
    let m = b.build();
    let (_, r) = preserved("#1 no group attribute", &m, &Options::default());
    assert!(
        has_set(&r, &["c1", "c2"]) && has_set(&r, &["c2", "c3"]),
        "{:?}",
        r.cls_sets
    );
    // AIMET (and compat mode, which reproduces it on purpose) ignores these convs.
    let (_, a) = common::run_verified(&m, &Options::aimet());
    assert!(a.cls_sets.is_empty());
    assert!(skipped(&a, "cls", "c1", "aimet_no_group_attribute"));
}

#[test]
fn bug2_depthwise_conv_transpose_is_scaled_correctly() {
    // AIMET's t4 shape: Conv → Relu → ConvTranspose(group = C) → Relu → Conv.
    let mut b = ModelBuilder::new(13).seed(102);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.relu("r1", &y);
    let y = b.conv(
        "dwt",
        &y,
        &ConvSpec::transposed(8, 8, &[3, 3]).group(8).same_pads(),
    );
    let y = b.relu("r2", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let m = b.build();
    let (out, r) = preserved("#2 depthwise ConvTranspose", &m, &Options::default());
    assert!(has_set(&r, &["c1", "dwt", "c3"]), "{:?}", r.cls_sets);
    let w = common::init(&out, "dwt.weight");
    assert_eq!(w.dims, vec![8, 1, 3, 3]);
    assert_eq!(w.raw_data().len(), 8 * 9 * 4, "AIMET wrote 2304 bytes here");
    assert_ne!(
        common::values(&out, "dwt.weight"),
        common::values(&m, "dwt.weight"),
        "the depthwise ConvTranspose was not scaled"
    );
}

#[test]
fn bug3_conv3d_is_folded_and_scaled() {
    let mut b = ModelBuilder::new(13).seed(103);
    let x = b.batched_input("x", "N", &[3, 4, 6, 6]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 8, &[3, 3, 3]).same_pads());
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1, 1]));
    b.output(&y);
    let (_, r) = preserved("#3 Conv3d + BN", &b.build(), &Options::default());
    assert!(r
        .bn_folds
        .iter()
        .any(|f| f.bn == "bn1" && f.layer == "c1" && f.direction == FoldDirection::Backward));
    assert!(has_set(&r, &["c1", "c2"]));
    // Conv3d without BN (AIMET: ValueError in CLS).
    let mut b = ModelBuilder::new(13).seed(104);
    let x = b.batched_input("x", "N", &[3, 4, 6, 6]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 8, &[3, 3, 3]).same_pads());
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1, 1]));
    b.output(&y);
    let (_, r) = preserved("#3 Conv3d without BN", &b.build(), &Options::default());
    assert!(has_set(&r, &["c1", "c2"]));
}

/// `x → BN0 → c1 (1×1, in → out, pads 0) → Relu → c2 → BN2 → Relu → c3`.
fn forward_bn_model(seed: u64, c_in: usize, c_out: usize) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("x", "N", &[c_in, 8, 8]);
    // β large and γ small so that the 3σ rule would absorb something from these stats.
    let stats = BnSpec {
        gamma: vec![0.3; c_in],
        beta: vec![2.0; c_in],
        mean: (0..c_in).map(|i| i as f32 * 0.1).collect(),
        var: vec![0.5; c_in],
        epsilon: Some(1e-5),
    };
    let y = b.batch_norm_with("bn0", &x, &stats);
    let y = b.conv("c1", &y, &ConvSpec::new(c_in, c_out, &[1, 1]));
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(c_out, c_out, &[3, 3]).same_pads());
    let y = b.batch_norm("bn2", &y, c_out);
    let y = b.relu("r2", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(c_out, 4, &[1, 1]));
    b.output(&y);
    b.build()
}

#[test]
fn bug4_forward_folded_bn_never_drives_hbf() {
    let aimet_hbf = Options {
        hbf: HbfMode::Aimet,
        ..Options::default()
    };
    let no_hbf = Options {
        hbf: HbfMode::Off,
        ..Options::default()
    };
    for (c_in, c_out) in [(8, 16), (8, 8)] {
        let m = forward_bn_model(104 + c_out as u64, c_in, c_out);
        let eq = onnx_cle::equalize(m.clone(), &aimet_hbf)
            .unwrap_or_else(|e| panic!("{c_in}→{c_out}: {e}"));
        let r = &eq.report;
        assert!(r
            .bn_folds
            .iter()
            .any(|f| f.bn == "bn0" && f.layer == "c1" && f.direction == FoldDirection::Forward));
        assert!(r
            .bn_folds
            .iter()
            .any(|f| f.bn == "bn2" && f.layer == "c2" && f.direction == FoldDirection::Backward));
        assert!(has_set(r, &["c1", "c2"]) && has_set(r, &["c2", "c3"]));
        assert!(
            !r.hbf.pairs.iter().any(|p| p.layer1 == "c1"),
            "{c_in}→{c_out}: bn0's statistics drove HBF on c1"
        );
        assert!(skipped(r, "hbf", "c1", "no_bn_stats"), "{:#?}", r.skipped);
        assert!(r.hbf.pairs.iter().any(|p| p.layer1 == "c2"));
        // c1's bias is exactly what it is without any HBF.
        let off = onnx_cle::equalize(m.clone(), &no_hbf).unwrap();
        let bias = common::node(&eq.model, "c1").input[2].clone();
        assert_eq!(
            common::values(&eq.model, &bias),
            common::values(&off.model, &bias)
        );
        // AIMET crashes on in ≠ out; compat mode must not.
        onnx_cle::equalize(m, &Options::aimet())
            .unwrap_or_else(|e| panic!("compat aimet {c_in}→{c_out}: {e}"));
    }
    // Only a forward fold: no statistics at all, so the 3σ rule does not run.
    let mut b = ModelBuilder::new(13).seed(106);
    let x = b.batched_input("x", "N", &[8, 8, 8]);
    let y = b.batch_norm("bn0", &x, 8);
    let y = b.conv("c1", &y, &ConvSpec::new(8, 16, &[1, 1]));
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(16, 4, &[1, 1]));
    b.output(&y);
    let (_, r) = preserved("#4 forward fold only, hbf=aimet", &b.build(), &aimet_hbf);
    assert!(!r.hbf.applied);
    assert!(r.hbf.reason.is_some());
}

#[test]
fn bug5_conv_output_that_is_a_graph_output_is_not_rescaled() {
    // AIMET's t8: the exposed output `a` moved by 110.
    let mut b = ModelBuilder::new(13).seed(107);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("c0", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("bn0", &y, 8);
    let y = b.relu("r0", &y);
    let a = b.conv(
        "c1",
        &y,
        &ConvSpec::new(8, 8, &[3, 3]).same_pads().spread(3.0),
    );
    b.output(&a);
    let y = b.relu("r1", &a);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let (_, r) = preserved(
        "#5 conv output is a graph output",
        &b.build(),
        &Options::default(),
    );
    assert!(!r
        .cls_sets
        .iter()
        .flat_map(|s| &s.pairs)
        .any(|p| p.layer1 == "c1"));
    let exposed = r
        .verification
        .outputs
        .iter()
        .find(|o| o.name == a)
        .expect("the exposed conv output is verified");
    assert!(exposed.rel_l2 <= MAX_REL_L2, "{exposed:?}");
}

#[test]
fn bug6_clip_bounds_from_initializers_and_clip_0_10() {
    // (a) Clip(0, 6) with initializer bounds is a ReLU6: crossed exactly by default, replaced
    // under policy `replace`.
    let clip_model = |min: f32, max: f32, form: ClipForm, seed: u64| {
        let mut b = ModelBuilder::new(13).seed(seed);
        let x = b.batched_input("x", "N", &[4, 8, 8]);
        let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
        let y = b.batch_norm("bn1", &y, 8);
        let y = b.clip("clip", &y, Some(min), Some(max), form);
        let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
        b.output(&y);
        b.build()
    };
    let m = clip_model(0.0, 6.0, ClipForm::Initializers, 108);
    let (_, r) = preserved("#6 Clip(0,6) initializer bounds", &m, &Options::default());
    assert!(has_set(&r, &["c1", "c2"]));
    assert!(r
        .relu6
        .iter()
        .any(|d| d.node == "clip" && d.action == Relu6Action::RewrittenExact));
    let replace = Options {
        relu6: Relu6Policy::Replace,
        ..Options::default()
    };
    let eq = onnx_cle::equalize(m, &replace).unwrap();
    assert!(eq
        .report
        .relu6
        .iter()
        .any(|d| d.node == "clip" && d.action == Relu6Action::Replaced));
    assert!(eq.report.function_changed);

    // (b) Clip(0, 10) is not a ReLU6: not crossed, not replaced, function kept.
    let m = clip_model(0.0, 10.0, ClipForm::ConstantNodes, 109);
    for opts in [Options::default(), replace] {
        let (_, r) = preserved("#6 Clip(0,10) is not ReLU6", &m, &opts);
        assert!(r.cls_sets.is_empty(), "{:?}", r.cls_sets);
        assert!(!r.function_changed);
        assert!(r
            .relu6
            .iter()
            .any(|d| d.node == "clip" && d.action == Relu6Action::Kept && d.max == Some(10.0)));
    }
    // AIMET replaces any Clip(0, m): compat mode reproduces it and says so.
    let eq = onnx_cle::equalize(
        m,
        &Options {
            steps: vec![Step::BnFold, Step::Relu6],
            ..Options::aimet()
        },
    )
    .unwrap();
    assert!(eq
        .report
        .relu6
        .iter()
        .any(|d| d.node == "clip" && d.action == Relu6Action::Replaced));
    assert!(eq.report.function_changed);
}

#[test]
fn bug7_epsilon_zero_is_used_as_zero() {
    let mut b = ModelBuilder::new(13).seed(110);
    let x = b.batched_input("x", "N", &[4, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    // Tiny variances: with ε = 1e-5 instead of 0, σ would move by up to 5 %.
    let var: Vec<f32> = (0..8).map(|i| 1e-4 + 1e-4 * i as f32).collect();
    let spec = BnSpec {
        var,
        ..BnSpec::random(&mut onnx_cle::builder::SplitMix64::new(7), 8)
    }
    .epsilon(Some(0.0));
    let y = b.batch_norm_with("bn1", &y, &spec);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let m = b.build();
    let fold_only = common::steps(&[Step::BnFold]);
    let (_, r) = preserved("#7 epsilon 0", &m, &fold_only);
    let fold = r.bn_folds.iter().find(|f| f.bn == "bn1").expect("folded");
    assert_eq!(fold.epsilon, 0.0);
    // The check is sensitive: AIMET's ε = 1e-5 (compat) visibly changes the outputs.
    let (_, a) = common::run_verified(
        &m,
        &Options {
            steps: vec![Step::BnFold],
            ..Options::aimet()
        },
    );
    let dev = a.verification.max_rel_l2.unwrap();
    assert!(
        dev > 1e-3,
        "compat ε=1e-5 should change the outputs: {dev:e}"
    );
    assert!(!a.compat_notes.is_empty());
}

#[test]
fn bug8_gemm_alpha_beta_and_auto_pad() {
    // (a) Gemm(alpha, beta) → BN folds backward with alpha/beta respected.
    let mut b = ModelBuilder::new(13).seed(111);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.gemm("g1", &x, &GemmSpec::new(16, 8).alpha_beta(0.5, 2.0));
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.gemm("g2", &y, &GemmSpec::new(8, 4).alpha_beta(1.5, 0.25));
    b.output(&y);
    let (_, r) = preserved(
        "#8 Gemm alpha/beta backward fold",
        &b.build(),
        &Options::default(),
    );
    assert!(r.bn_folds.iter().any(|f| f.bn == "bn1" && f.layer == "g1"));
    // A forward fold into a Gemm with alpha ≠ 1 is refused, and the model is unchanged.
    let mut b = ModelBuilder::new(13).seed(112);
    let x = b.batched_input("x", "N", &[4, 2, 2]);
    let y = b.batch_norm("bn1", &x, 4);
    let y = b.flatten("flat", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(16, 4).alpha_beta(0.5, 1.0));
    b.output(&y);
    let (_, r) = preserved(
        "#8 BN → Flatten → Gemm(alpha 0.5)",
        &b.build(),
        &Options::default(),
    );
    assert!(r.bn_folds.is_empty());
    assert!(
        skipped(&r, "bn_fold", "bn1", "gemm_alpha_beta"),
        "{:#?}",
        r.skipped
    );

    // (b) BN → Conv(auto_pad = SAME_UPPER) is not folded forward (the padding would see the
    // BN's shift); VALID is.
    for (mode, folds) in [("SAME_UPPER", false), ("VALID", true)] {
        let mut b = ModelBuilder::new(13).seed(113);
        let x = b.batched_input("x", "N", &[4, 8, 8]);
        let y = b.batch_norm("bn1", &x, 4);
        let y = b.conv("c1", &y, &ConvSpec::new(4, 8, &[3, 3]).auto_pad(mode));
        b.output(&y);
        let (_, r) = preserved(
            &format!("#8 BN → Conv(auto_pad {mode})"),
            &b.build(),
            &Options::default(),
        );
        assert_eq!(!r.bn_folds.is_empty(), folds, "{mode}: {:?}", r.bn_folds);
        if !folds {
            assert!(
                skipped(&r, "bn_fold", "bn1", "forward_padding"),
                "{:#?}",
                r.skipped
            );
        }
    }
}
