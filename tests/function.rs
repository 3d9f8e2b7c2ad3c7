//! Function preservation on models built in Rust ([`onnx_cle::builder`]).
//!
//! For every construct below — Conv, ConvTranspose (group 1 and depthwise), Gemm with
//! `transB` 0 and 1, Conv1d, depthwise and grouped (1 < g < C) convs, a residual `Add`, fan-out,
//! a conv output that is also a graph output, PRelu, unnamed nodes, Clip bounds as initializers,
//! opset-10 Clip attributes, Conv3d, MatMul with a constant weight, BN → Conv forward folds,
//! BN → Flatten → Gemm, crossing `Pad(0)`, `LeakyRelu`, `Identity` and `Dropout`, a weight
//! shared by two differently scaled convs, BNs that cannot be folded, and weights behind
//! constant chains (`Transpose(W) → MatMul`, VGG's shared zero bias through `Identity`,
//! `Reshape`/`Cast`/`Squeeze`/`Unsqueeze`, a FLOAT16 weight cast to FLOAT) — this proves that:
//! - BN fold alone (`steps = [bn_fold]`), CLS alone (`steps = [cls]`) and the default full
//!   pipeline each change the outputs **tract** computes (original vs rewritten model, seeded
//!   random inputs) by at most 1e-5 relative L2, on every output. BN statistics are random
//!   (γ ∈ [0.2, 2], β ∈ [-1, 1], var ∈ [0.2, 2]), so every fold is non-trivial;
//! - CLS really scaled the layers it should (`report.cls_sets`, with a scale factor ≠ 1), and
//!   never used a layer whose output must not be rescaled as the first layer of a pair;
//! - every construct that must be left alone is in `report.skipped` with its reason code;
//! - with `compat = aimet` and AIMET's ReLU6 `replace`, the function does change, and the
//!   report says so (`function_changed`).

mod common;

use onnx_cle::builder::{BnSpec, ClipForm, ConvSpec, Dim, GemmSpec, ModelBuilder};
use onnx_cle::onnx::ModelProto;
use onnx_cle::report::{FoldDirection, Relu6Action};
use onnx_cle::{Options, Report, Step};

/// The largest relative L2 deviation a function-preserving run may cause.
const MAX_REL_L2: f64 = 1e-5;

/// What the full pipeline must have done on a case.
#[derive(Default)]
struct Expect {
    /// Each entry must be the `layers` of one CLS set of the full run.
    sets: Vec<Vec<&'static str>>,
    /// Layers that must never be `layer1` of a scaled pair (their outputs must not change).
    not_layer1: Vec<&'static str>,
    /// `(bn, layer, direction)` folds that must be reported.
    folds: Vec<(&'static str, &'static str, FoldDirection)>,
    /// `(pass, node, reason)` skips that must be reported.
    skips: Vec<(&'static str, &'static str, &'static str)>,
    /// Op types that must appear in some scaled pair's `through` list.
    through: Vec<&'static str>,
    /// The CLS-only run must scale something too (no BN between the layers).
    cls_alone_scales: bool,
}

fn run_case(name: &str, model: &ModelProto, expect: &Expect) -> Report {
    let runs = [
        ("bn_fold", common::steps(&[Step::BnFold])),
        ("cls", common::steps(&[Step::Cls])),
        ("full", Options::default()),
    ];
    let mut full = None;
    let mut line = format!("function {name:<26}");
    for (label, opts) in runs {
        let (_, report) = common::run_verified(model, &opts);
        for o in &report.verification.outputs {
            assert!(
                o.rel_l2 <= MAX_REL_L2,
                "{name} [{label}]: output `{}` rel L2 {:.3e} > {MAX_REL_L2:e} (max abs {:.3e})",
                o.name,
                o.rel_l2,
                o.max_abs_err
            );
        }
        let worst = report.verification.max_rel_l2.unwrap_or(0.0);
        line += &format!(" {label}: {worst:.1e} ({} sets)", report.cls_sets.len());
        if label == "cls" && expect.cls_alone_scales {
            assert!(
                scaled_something(&report),
                "{name} [cls]: CLS alone scaled nothing; skipped: {:#?}",
                report.skipped
            );
        }
        if label == "full" {
            full = Some(report);
        }
    }
    common::say(&line);
    let r = full.unwrap();
    check_expect(name, &r, expect);
    r
}

fn scaled_something(r: &Report) -> bool {
    r.cls_sets
        .iter()
        .flat_map(|s| &s.pairs)
        .any(|p| p.scale.iter().any(|&s| s != 1.0))
}

fn check_expect(name: &str, r: &Report, e: &Expect) {
    for want in &e.sets {
        assert!(
            r.cls_sets.iter().any(|s| s.layers == *want),
            "{name}: no CLS set {want:?}; sets: {:?}; skipped: {:#?}",
            r.cls_sets.iter().map(|s| &s.layers).collect::<Vec<_>>(),
            r.skipped
        );
    }
    if !e.sets.is_empty() {
        assert!(scaled_something(r), "{name}: every scale factor is 1");
    }
    for l in &e.not_layer1 {
        assert!(
            !r.cls_sets
                .iter()
                .flat_map(|s| &s.pairs)
                .any(|p| p.layer1 == *l),
            "{name}: `{l}`'s outputs were rescaled"
        );
    }
    for (bn, layer, dir) in &e.folds {
        assert!(
            r.bn_folds
                .iter()
                .any(|f| f.bn == *bn && f.layer == *layer && f.direction == *dir),
            "{name}: no fold {bn} → {layer} ({dir:?}); folds: {:?}; skipped: {:#?}",
            r.bn_folds
                .iter()
                .map(|f| (&f.bn, &f.layer, f.direction))
                .collect::<Vec<_>>(),
            r.skipped
        );
    }
    for (pass, node, reason) in &e.skips {
        assert!(
            r.skipped.iter().any(|s| s.pass == *pass
                && s.reason == *reason
                && s.nodes.iter().any(|n| n == node)),
            "{name}: no `{pass}` skip of `{node}` with reason `{reason}`; skipped: {:#?}",
            r.skipped
        );
    }
    for op in &e.through {
        assert!(
            r.cls_sets
                .iter()
                .flat_map(|s| &s.pairs)
                .flat_map(|p| &p.through)
                .any(|t| t.contains(op)),
            "{name}: no pair scaled across a {op}; sets: {:#?}",
            r.cls_sets
        );
    }
}

/// `conv → BN → Relu`.
fn cbr(b: &mut ModelBuilder, name: &str, x: &str, spec: &ConvSpec) -> String {
    let y = b.conv(name, x, spec);
    let y = b.batch_norm(&format!("{name}_bn"), &y, spec.out_channels);
    b.relu(&format!("{name}_relu"), &y)
}

fn input4(b: &mut ModelBuilder, c: usize) -> String {
    b.batched_input("x", "N", &[c, 8, 8])
}

#[test]
fn conv_chain() {
    let mut b = ModelBuilder::new(13).seed(1);
    let x = input4(&mut b, 3);
    let y = cbr(&mut b, "c1", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
    let y = cbr(&mut b, "c2", &y, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "conv_chain",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            folds: vec![
                ("c1_bn", "c1", FoldDirection::Backward),
                ("c2_bn", "c2", FoldDirection::Backward),
            ],
            through: vec!["c1_relu"],
            ..Default::default()
        },
    );
}

#[test]
fn conv_chain_cls_alone() {
    // No BN between the layers, so CLS alone has chains to scale.
    let mut b = ModelBuilder::new(13).seed(2);
    let x = input4(&mut b, 3);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let y = b.relu("r2", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "conv_chain_cls_alone",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            cls_alone_scales: true,
            ..Default::default()
        },
    );
}

#[test]
fn conv_transpose_group1() {
    let mut b = ModelBuilder::new(13).seed(3);
    let x = input4(&mut b, 4);
    let y = cbr(&mut b, "c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = cbr(
        &mut b,
        "ct",
        &y,
        &ConvSpec::transposed(8, 6, &[2, 2]).strides(&[2, 2]),
    );
    let y = b.conv("c3", &y, &ConvSpec::new(6, 4, &[3, 3]).same_pads());
    b.output(&y);
    run_case(
        "conv_transpose_group1",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "ct"], vec!["ct", "c3"]],
            folds: vec![("ct_bn", "ct", FoldDirection::Backward)],
            ..Default::default()
        },
    );
}

#[test]
fn conv_transpose_depthwise() {
    let mut b = ModelBuilder::new(13).seed(4);
    let x = input4(&mut b, 4);
    let y = cbr(&mut b, "c1", &x, &ConvSpec::new(4, 8, &[1, 1]));
    let y = cbr(
        &mut b,
        "dwt",
        &y,
        &ConvSpec::transposed(8, 8, &[3, 3]).group(8).same_pads(),
    );
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "conv_transpose_depthwise",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "dwt", "c3"]],
            folds: vec![("dwt_bn", "dwt", FoldDirection::Backward)],
            ..Default::default()
        },
    );
}

fn gemm_case(name: &str, seed: u64, trans_b: bool) {
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.gemm("g1", &x, &GemmSpec::new(16, 8).trans_b(trans_b));
    let y = b.batch_norm("g1_bn", &y, 8);
    let y = b.relu("g1_relu", &y);
    let y = b.gemm("g2", &y, &GemmSpec::new(8, 8).trans_b(!trans_b));
    let y = b.relu("g2_relu", &y);
    let y = b.gemm("g3", &y, &GemmSpec::new(8, 4).trans_b(trans_b));
    b.output(&y);
    run_case(
        name,
        &b.build(),
        &Expect {
            sets: vec![vec!["g1", "g2"], vec!["g2", "g3"]],
            folds: vec![("g1_bn", "g1", FoldDirection::Backward)],
            ..Default::default()
        },
    );
}

#[test]
fn gemm_trans_b_1() {
    gemm_case("gemm_trans_b_1", 5, true);
}

#[test]
fn gemm_trans_b_0() {
    gemm_case("gemm_trans_b_0", 6, false);
}

#[test]
fn conv1d() {
    let mut b = ModelBuilder::new(13).seed(7);
    let x = b.batched_input("x", "N", &[4, 16]);
    let y = cbr(&mut b, "c1", &x, &ConvSpec::new(4, 8, &[3]).same_pads());
    let y = cbr(&mut b, "c2", &y, &ConvSpec::new(8, 8, &[3]).same_pads());
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1]));
    b.output(&y);
    run_case(
        "conv1d",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            folds: vec![("c1_bn", "c1", FoldDirection::Backward)],
            ..Default::default()
        },
    );
}

#[test]
fn depthwise_triple() {
    let mut b = ModelBuilder::new(13).seed(8);
    let x = input4(&mut b, 4);
    let y = cbr(&mut b, "pw1", &x, &ConvSpec::new(4, 8, &[1, 1]));
    let y = cbr(
        &mut b,
        "dw",
        &y,
        &ConvSpec::depthwise(8, &[3, 3]).same_pads(),
    );
    let y = b.conv("pw2", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.batch_norm("pw2_bn", &y, 8);
    b.output(&y);
    run_case(
        "depthwise_triple",
        &b.build(),
        &Expect {
            sets: vec![vec!["pw1", "dw", "pw2"]],
            folds: vec![
                ("dw_bn", "dw", FoldDirection::Backward),
                ("pw2_bn", "pw2", FoldDirection::Backward),
            ],
            ..Default::default()
        },
    );
}

#[test]
fn grouped_conv() {
    let mut b = ModelBuilder::new(13).seed(9);
    let x = input4(&mut b, 4);
    let y = cbr(&mut b, "c1", &x, &ConvSpec::new(4, 8, &[1, 1]));
    let y = cbr(
        &mut b,
        "g2",
        &y,
        &ConvSpec::new(8, 8, &[3, 3]).group(2).same_pads(),
    );
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let model = b.build();
    run_case(
        "grouped_conv",
        &model,
        &Expect {
            sets: vec![vec!["c1", "g2"], vec!["g2", "c3"]],
            folds: vec![("g2_bn", "g2", FoldDirection::Backward)],
            ..Default::default()
        },
    );
    // AIMET's rule (and compat mode): a grouped conv is unsupported for CLS.
    let (_, r) = common::run_verified(
        &model,
        &Options {
            steps: vec![Step::BnFold, Step::Cls],
            ..Options::aimet()
        },
    );
    assert!(r.cls_sets.is_empty());
    assert!(r
        .skipped
        .iter()
        .any(|s| s.pass == "cls" && s.reason == "grouped_conv" && s.nodes == ["g2"]));
}

#[test]
fn residual_add() {
    let mut b = ModelBuilder::new(13).seed(10);
    let x = input4(&mut b, 4);
    let a = cbr(&mut b, "c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = cbr(&mut b, "c2", &a, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let y = b.conv("c3", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.batch_norm("c3_bn", &y, 8);
    let y = b.add("add", &a, &y);
    let y = b.relu("add_relu", &y);
    let y = b.conv("c4", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "residual_add",
        &b.build(),
        &Expect {
            sets: vec![vec!["c2", "c3"]],
            not_layer1: vec!["c1", "c3"],
            folds: vec![("c3_bn", "c3", FoldDirection::Backward)],
            ..Default::default()
        },
    );
}

#[test]
fn fan_out() {
    // c1 feeds both a BN and a Relu: the BN cannot fold into c1 (its output has two uses) nor
    // forward into c2 (c2 pads), and c1 must never be rescaled.
    let mut b = ModelBuilder::new(13).seed(11);
    let x = input4(&mut b, 4);
    let a = b.conv("c1", &x, &ConvSpec::new(4, 8, &[1, 1]));
    let p = b.batch_norm("bn_fan", &a, 8);
    let p = b.conv("c2", &p, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let q = b.relu("r", &a);
    let q = b.conv("c3", &q, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.add("add", &p, &q);
    b.output(&y);
    run_case(
        "fan_out",
        &b.build(),
        &Expect {
            not_layer1: vec!["c1"],
            skips: vec![("bn_fold", "bn_fan", "fan_out")],
            ..Default::default()
        },
    );
}

#[test]
fn conv_output_is_graph_output() {
    let mut b = ModelBuilder::new(13).seed(12);
    let x = input4(&mut b, 4);
    let y = b.conv("c0", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.relu("r0", &y);
    let a = b.conv("c1", &y, &ConvSpec::new(8, 8, &[1, 1]));
    b.output(&a);
    let y = b.batch_norm("c1_bn", &a, 8);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let r = run_case(
        "conv_output_is_graph_output",
        &b.build(),
        &Expect {
            sets: vec![vec!["c0", "c1"]],
            not_layer1: vec!["c1"],
            skips: vec![("bn_fold", "c1_bn", "fan_out")],
            cls_alone_scales: true,
            ..Default::default()
        },
    );
    assert_eq!(r.verification.outputs.len(), 2);
}

#[test]
fn prelu() {
    let mut b = ModelBuilder::new(13).seed(13);
    let x = input4(&mut b, 4);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("c1_bn", &y, 8);
    let y = b.prelu("p1", &y, 8, 4);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let y = b.prelu("p2", &y, 8, 4);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "prelu",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            through: vec!["p1", "p2"],
            cls_alone_scales: true,
            ..Default::default()
        },
    );
}

#[test]
fn unnamed_nodes() {
    let mut b = ModelBuilder::new(13).seed(14);
    let x = input4(&mut b, 4);
    let y = b.conv("", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("", &y, 8);
    let y = b.relu("", &y);
    let y = b.conv("", &y, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("", &y, 8);
    let y = b.relu("", &y);
    let y = b.conv("", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let m = b.build();
    assert!(m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .all(|n| n.name.is_none()));
    let r = run_case("unnamed_nodes", &m, &Expect::default());
    assert_eq!(r.bn_folds.len(), 2, "both unnamed BNs fold");
    assert_eq!(r.cls_sets.len(), 2, "both unnamed pairs are scaled");
    assert!(scaled_something(&r));
}

#[test]
fn clip_bounds_as_initializers() {
    let mut b = ModelBuilder::new(13).seed(15);
    let x = input4(&mut b, 4);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("c1_bn", &y, 8);
    let y = b.clip("clip1", &y, Some(0.0), Some(6.0), ClipForm::Initializers);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("c2_bn", &y, 8);
    let y = b.clip("clip2", &y, Some(0.0), Some(6.0), ClipForm::Initializers);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let r = run_case(
        "clip_bounds_as_initializers",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            through: vec!["clip1", "clip2"],
            ..Default::default()
        },
    );
    for clip in ["clip1", "clip2"] {
        assert!(
            r.relu6
                .iter()
                .any(|d| d.node == clip && d.action == Relu6Action::RewrittenExact),
            "{clip}: {:?}",
            r.relu6
        );
    }
}

#[test]
fn clip_opset10_attributes() {
    let mut b = ModelBuilder::new(10).seed(16);
    let x = input4(&mut b, 4);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("c1_bn", &y, 8);
    let y = b.clip("clip1", &y, Some(0.0), Some(6.0), ClipForm::Attributes);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let r = run_case(
        "clip_opset10_attributes",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"]],
            through: vec!["clip1"],
            ..Default::default()
        },
    );
    assert!(r
        .relu6
        .iter()
        .any(|d| d.node == "clip1" && d.action == Relu6Action::RewrittenExact));
}

#[test]
fn conv3d() {
    let mut b = ModelBuilder::new(13).seed(17);
    let x = b.batched_input("x", "N", &[3, 4, 6, 6]);
    let y = cbr(
        &mut b,
        "c1",
        &x,
        &ConvSpec::new(3, 8, &[3, 3, 3]).same_pads(),
    );
    let y = cbr(
        &mut b,
        "c2",
        &y,
        &ConvSpec::new(8, 8, &[1, 3, 3]).same_pads(),
    );
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1, 1]));
    b.output(&y);
    run_case(
        "conv3d",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            folds: vec![
                ("c1_bn", "c1", FoldDirection::Backward),
                ("c2_bn", "c2", FoldDirection::Backward),
            ],
            ..Default::default()
        },
    );
}

#[test]
fn matmul_constant_weight() {
    let mut b = ModelBuilder::new(13).seed(18);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.matmul("m1", &x, 16, 8);
    let y = b.batch_norm("m1_bn", &y, 8);
    let y = b.relu("m1_relu", &y);
    let y = b.matmul("m2", &y, 8, 4);
    b.output(&y);
    run_case(
        "matmul_constant_weight",
        &b.build(),
        &Expect {
            folds: vec![("m1_bn", "m1", FoldDirection::Backward)],
            ..Default::default()
        },
    );
    // Without a BN in between, MatMul → Relu → MatMul is a CLS pair (default mode).
    let mut b = ModelBuilder::new(13).seed(26);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.matmul("m1", &x, 16, 8);
    let y = b.relu("m1_relu", &y);
    let y = b.matmul("m2", &y, 8, 4);
    b.output(&y);
    run_case(
        "matmul_chain",
        &b.build(),
        &Expect {
            sets: vec![vec!["m1", "m2"]],
            cls_alone_scales: true,
            ..Default::default()
        },
    );
}

/// In default mode a BN folded backward into a bias-less `MatMul` becomes `MatMul → Add(bias)`
/// (AIMET turns the MatMul into a Gemm instead); CLS crosses that Add as the MatMul's bias.
#[test]
fn matmul_with_folded_bn_is_still_scaled() {
    let mut b = ModelBuilder::new(13).seed(18);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.matmul("m1", &x, 16, 8);
    let y = b.batch_norm("m1_bn", &y, 8);
    let y = b.relu("m1_relu", &y);
    let y = b.matmul("m2", &y, 8, 4);
    b.output(&y);
    run_case(
        "matmul_with_folded_bn",
        &b.build(),
        &Expect {
            sets: vec![vec!["m1", "m2"]],
            folds: vec![("m1_bn", "m1", FoldDirection::Backward)],
            ..Default::default()
        },
    );
}

/// `Linear` exported as `MatMul → Add(b)`: the Add is the MatMul's bias, scaled with its output
/// channels, so the pair across it is equalized with the function unchanged (a large bias makes
/// a forgotten bias scaling visible). An Add whose constant is not one value per column, or is
/// shared, ends the chain.
#[test]
fn matmul_add_bias_pairs() {
    let linear = |b: &mut ModelBuilder, name: &str, x: &str, k: usize, n: usize, bias: &[usize]| {
        let y = b.matmul(name, x, k, n);
        let count: usize = bias.iter().product();
        let values: Vec<f32> = (0..count).map(|j| 3.0 - j as f32 * 0.7).collect();
        let c = b.init(&format!("{name}_b"), bias, &values);
        b.add(&format!("{name}_add"), &y, &c)
    };
    for (case, bias, paired) in [
        ("matmul_add_bias", vec![8], true),
        ("matmul_add_bias_1n", vec![1, 8], true),
        ("matmul_add_bias_column", vec![8, 1], false),
    ] {
        let mut b = ModelBuilder::new(13).seed(41);
        let x = b.batched_input("x", "N", &[16]);
        let y = linear(&mut b, "m1", &x, 16, 8, &bias);
        let y = b.relu("r1", &y);
        let y = linear(&mut b, "m2", &y, 8, 4, &[4]);
        b.output(&y);
        let r = run_case(
            case,
            &b.build(),
            &Expect {
                sets: if paired {
                    vec![vec!["m1", "m2"]]
                } else {
                    vec![]
                },
                cls_alone_scales: paired,
                ..Default::default()
            },
        );
        if !paired {
            assert!(
                r.cls_sets.iter().all(|s| s.layers != ["m1", "m2"]),
                "{case}"
            );
        } else {
            let pair = &r.cls_sets[0].pairs[0];
            assert_eq!(pair.through, ["m1_add", "r1"], "{case}");
            assert!(pair.relu_between, "{case}");
        }
    }
    // A bias shared with another node is not rescaled.
    let mut b = ModelBuilder::new(13).seed(42);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.matmul("m1", &x, 16, 8);
    let c = b.init("shared_b", &[8], &[2.0; 8]);
    let y = b.add("m1_add", &y, &c);
    let z = b.add("other", &y, &c);
    let y = b.relu("r1", &z);
    let y = b.matmul("m2", &y, 8, 4);
    b.output(&y);
    let r = run_case("matmul_add_shared_bias", &b.build(), &Expect::default());
    assert!(r.cls_sets.is_empty(), "{:?}", r.cls_sets);
}

#[test]
fn bn_forward_fold_into_conv() {
    let mut b = ModelBuilder::new(13).seed(19);
    let x = input4(&mut b, 4);
    let y = b.batch_norm("bn_in", &x, 4);
    let y = b.conv("c1", &y, &ConvSpec::new(4, 8, &[3, 3]));
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "bn_forward_fold_into_conv",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"]],
            folds: vec![("bn_in", "c1", FoldDirection::Forward)],
            cls_alone_scales: true,
            ..Default::default()
        },
    );
}

/// A BN on each side of a bias-less conv: the backward fold creates the conv's bias, and the
/// forward fold must add to that bias rather than start from zero again.
#[test]
fn bn_on_both_sides_of_a_conv() {
    let mut b = ModelBuilder::new(13).seed(48);
    let x = input4(&mut b, 4);
    let y = b.batch_norm("bn_in", &x, 4);
    let y = b.conv("c1", &y, &ConvSpec::new(4, 8, &[1, 1]).no_bias());
    let y = b.batch_norm("bn_out", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let model = b.build();
    run_case(
        "bn_on_both_sides_of_a_conv",
        &model,
        &Expect {
            sets: vec![vec!["c1", "c2"]],
            folds: vec![
                ("bn_out", "c1", FoldDirection::Backward),
                ("bn_in", "c1", FoldDirection::Forward),
            ],
            ..Default::default()
        },
    );
}

#[test]
fn bn_flatten_gemm_forward_fold() {
    let mut b = ModelBuilder::new(13).seed(20);
    let x = b.batched_input("x", "N", &[4, 4, 4]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.relu("r1", &y);
    let y = b.batch_norm("bn_mid", &y, 8);
    let y = b.flatten("flat", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(8 * 4 * 4, 10));
    b.output(&y);
    run_case(
        "bn_flatten_gemm_forward_fold",
        &b.build(),
        &Expect {
            folds: vec![("bn_mid", "fc", FoldDirection::Forward)],
            ..Default::default()
        },
    );
}

#[test]
fn pad_zero_crossing() {
    let mut b = ModelBuilder::new(13).seed(21);
    let x = input4(&mut b, 4);
    let y = cbr(&mut b, "c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.pad("pad", &y, &[0, 0, 1, 1, 0, 0, 1, 1]);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[3, 3]));
    b.output(&y);
    run_case(
        "pad_zero_crossing",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"]],
            through: vec!["pad"],
            ..Default::default()
        },
    );
}

#[test]
fn leaky_relu_identity_dropout_crossing() {
    let mut b = ModelBuilder::new(13).seed(22);
    let x = input4(&mut b, 4);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.leaky_relu("leaky", &y, 0.1);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.identity("ident", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.dropout("drop", &y);
    let y = b.conv("c4", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    run_case(
        "leaky_identity_dropout",
        &b.build(),
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"], vec!["c3", "c4"]],
            through: vec!["leaky", "ident", "drop"],
            cls_alone_scales: true,
            ..Default::default()
        },
    );
}

/// A weight read by two convs that are BN-folded and scaled differently: each rewritten conv
/// gets its own copy (reported), so neither sees the other's rewrite. With `compat = aimet`
/// both are left alone, as aimet_onnx does.
#[test]
fn shared_weight_scaled_differently() {
    let mut b = ModelBuilder::new(13).seed(23);
    let x = input4(&mut b, 8);
    let y = b.conv("c1", &x, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[1, 1]).no_bias());
    let y = b.batch_norm("c2_bn", &y, 8);
    let y = b.relu("r2", &y);
    // c3 reuses c2's weight.
    let y = b.node1("Conv", "c3", &[&y, "c2.weight"], vec![]);
    let y = b.relu("r3", &y);
    let y = b.conv("c4", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let model = b.build();
    let r = run_case(
        "shared_weight_scaled_differently",
        &model,
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"], vec!["c3", "c4"]],
            folds: vec![("c2_bn", "c2", FoldDirection::Backward)],
            ..Default::default()
        },
    );
    let copy = r
        .tensor_copies
        .iter()
        .find(|c| c.tensor == "c2.weight" && c.node == "c2")
        .unwrap_or_else(|| panic!("no copy of c2.weight for c2: {:?}", r.tensor_copies));
    assert_eq!((copy.pass.as_str(), copy.users), ("bn_fold", 2));
    let (eq, _) = common::run_verified(&model, &Options::default());
    let (w2, w3) = (
        common::node(&eq, "c2").input[1].clone(),
        common::node(&eq, "c3").input[1].clone(),
    );
    assert_eq!(
        (w2.as_str(), w3.as_str()),
        (copy.copy.as_str(), "c2.weight")
    );
    assert_ne!(common::values(&eq, &w2), common::values(&eq, &w3));
    // aimet_onnx skips layers with shared parameters; compat mode too.
    let aimet = onnx_cle::equalize(model, &Options::aimet()).unwrap().report;
    for (pass, node) in [("bn_fold", "c2_bn"), ("cls", "c2")] {
        assert!(
            aimet.skipped.iter().any(|s| s.pass == pass
                && s.reason == "shared_weight"
                && s.nodes.iter().any(|n| n == node)),
            "aimet: no {pass} shared_weight skip of {node}: {:#?}",
            aimet.skipped
        );
    }
    assert!(aimet.bn_folds.is_empty() && aimet.tensor_copies.is_empty());
}

/// torchvision VGG-11-BN's legacy export: the identical all-zero conv biases are one
/// initializer, read by one conv directly and by the others through `Identity` nodes (and here
/// also by an unrelated `Add` feeding a second output). Every BN folds, every pair is scaled,
/// and the `Add` still reads the zeros.
#[test]
fn vgg_shared_zero_bias_through_identity() {
    let mut b = ModelBuilder::new(13).seed(43);
    let x = input4(&mut b, 4);
    let zero = b.init("zero_bias", &[8], &[0.0; 8]);
    let conv = |b: &mut ModelBuilder, name: &str, x: &str, cin: usize, bias: &str| {
        let y = b.conv(
            name,
            x,
            &ConvSpec::new(cin, 8, &[3, 3]).same_pads().no_bias(),
        );
        b.last_node_mut().input.push(bias.to_string());
        y
    };
    let y = conv(&mut b, "c1", &x, 4, &zero);
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let b2 = b.identity("id2", &zero);
    let y = conv(&mut b, "c2", &y, 8, &b2);
    let y = b.batch_norm("bn2", &y, 8);
    let y = b.relu("r2", &y);
    let b3 = b.identity("id3", &zero);
    let y = conv(&mut b, "c3", &y, 8, &b3);
    let y = b.batch_norm("bn3", &y, 8);
    let y = b.relu("r3", &y);
    let y = b.conv("c4", &y, &ConvSpec::new(8, 8, &[1, 1]));
    b.output(&y);
    let side = b.add("side", &x, &zero);
    b.output(&side);
    let model = b.build();
    let r = run_case(
        "vgg_shared_zero_bias",
        &model,
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"], vec!["c3", "c4"]],
            folds: vec![
                ("bn1", "c1", FoldDirection::Backward),
                ("bn2", "c2", FoldDirection::Backward),
                ("bn3", "c3", FoldDirection::Backward),
            ],
            ..Default::default()
        },
    );
    assert!(r.skipped.iter().all(|s| s.reason != "bias_not_constant"));
    let folds: Vec<(&str, &str, bool)> = r
        .const_folds
        .iter()
        .map(|f| (f.source.as_str(), f.removed[0].as_str(), f.copied))
        .collect();
    assert_eq!(
        folds,
        [("zero_bias", "id2", true), ("zero_bias", "id3", true)]
    );
    assert_eq!(r.tensor_copies.len(), 1, "{:?}", r.tensor_copies);
    assert_eq!(
        (
            r.tensor_copies[0].node.as_str(),
            r.tensor_copies[0].tensor.as_str()
        ),
        ("c1", "zero_bias")
    );
    let (eq, _) = common::run_verified(&model, &Options::default());
    assert_eq!(common::values(&eq, "zero_bias"), [0.0; 8]);
    assert_eq!(common::node(&eq, "side").input[1], "zero_bias");
    let g = eq.graph.as_ref().unwrap();
    assert!(g.node.iter().all(|n| n.op_type() != "Identity"));
    let biases: std::collections::HashSet<&str> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| common::node(&eq, c).input[2].as_str())
        .collect();
    assert_eq!(biases.len(), 3, "each conv has its own bias: {biases:?}");
}

/// `nn.Linear(bias=False) → BatchNorm1d` as the legacy exporter writes it without constant
/// folding (`Transpose(W) → MatMul`): the BN folds and the pair is scaled (default mode), the
/// weights are transposed in place under their own names and the Transposes go. With
/// `compat = aimet` the MatMul becomes a Gemm (aimet_onnx's form), still the same function.
#[test]
fn transpose_matmul_bn() {
    let model = common::transposed_linear_bn(44);
    let r = run_case(
        "transpose_matmul_bn",
        &model,
        &Expect {
            sets: vec![vec!["fc1", "fc2"]],
            folds: vec![("bn1", "fc1", FoldDirection::Backward)],
            ..Default::default()
        },
    );
    let folds: Vec<(&str, &str, bool)> = r
        .const_folds
        .iter()
        .map(|f| (f.initializer.as_str(), f.removed[0].as_str(), f.copied))
        .collect();
    assert_eq!(
        folds,
        [
            ("fc1.weight", "fc1_t", false),
            ("fc2.weight", "fc2_t", false)
        ]
    );
    let opts = Options {
        steps: vec![Step::BnFold],
        ..Options::aimet()
    };
    let (eq, r) = common::run_verified(&model, &opts);
    let dev = r.verification.max_rel_l2.unwrap_or(f64::INFINITY);
    assert!(dev <= MAX_REL_L2, "aimet bn_fold: rel L2 {dev:e}");
    let fc1 = common::node(&eq, "fc1");
    assert_eq!(fc1.op_type(), "Gemm");
    assert_eq!(fc1.input[1..], ["fc1.weight", "fc1.bias"]);
    assert_eq!(common::init(&eq, "fc1.weight").dims, [16, 8]);
    // fc2's chain was not written (no BN, no CLS in this run): left exactly as it was.
    assert_eq!(common::node(&eq, "fc2_t"), common::node(&model, "fc2_t"));
    assert_eq!(
        common::init(&eq, "fc2.weight"),
        common::init(&model, "fc2.weight")
    );
}

/// Weights and biases computed by chains of `Reshape`, `Cast` (FLOAT → FLOAT and
/// FLOAT16 → FLOAT), `Squeeze`, `Unsqueeze` and `Identity`: read as constants, BN folded, scaled,
/// and folded in place into their source initializers (an `Identity` alias renames its source).
#[test]
fn weight_chains_reshape_cast_unsqueeze() {
    use onnx_cle::onnx::proto::tensor_proto::DataType;
    let mut b = ModelBuilder::new(13).seed(45);
    let x = input4(&mut b, 4);
    let w1 = b.init_uniform("w1_flat", &[8 * 4 * 9], -0.3, 0.3);
    let w1 = b.reshape("w1_reshape", &w1, &[8, 4, 3, 3]);
    let w1 = b.cast("w1_cast", &w1, DataType::Float);
    let b1 = b.init_uniform("b1_row", &[1, 8], -0.5, 0.5);
    let b1 = b.squeeze("b1_squeeze", &b1, &[0]);
    let y = b.node1(
        "Conv",
        "c1",
        &[&x, &w1, &b1],
        vec![onnx_cle::builder::attr_ints("pads", &[1, 1, 1, 1])],
    );
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let per_in: Vec<f32> = (0..64).map(|k| 0.05 + (k % 8) as f32 * 0.1).collect();
    let w2 = b.init("w2_2d", &[8, 8], &per_in);
    let w2 = b.unsqueeze("w2_unsqueeze", &w2, &[2, 3]);
    let w2 = b.identity("w2_id", &w2);
    let b2 = b.init_uniform("b2_src", &[8], -0.5, 0.5);
    let b2 = b.identity("b2_alias", &b2);
    let y = b.node1("Conv", "c2", &[&y, &w2, &b2], vec![]);
    let y = b.batch_norm("bn2", &y, 8);
    let y = b.relu("r2", &y);
    let values: Vec<f32> = (0..32).map(|k| (k as f32 - 15.5) / 20.0).collect();
    let w3 = b.init_f16("w3_half", &[4, 8], &values);
    let w3 = b.cast("w3_cast", &w3, DataType::Float);
    let w3 = b.unsqueeze("w3_unsqueeze", &w3, &[2, 3]);
    let y = b.node1("Conv", "c3", &[&y, &w3], vec![]);
    b.set_rank(&y, 4);
    b.output(&y);
    let model = b.build();
    let r = run_case(
        "weight_chains",
        &model,
        &Expect {
            sets: vec![vec!["c1", "c2"], vec!["c2", "c3"]],
            folds: vec![
                ("bn1", "c1", FoldDirection::Backward),
                ("bn2", "c2", FoldDirection::Backward),
            ],
            ..Default::default()
        },
    );
    let mut folds: Vec<(String, Vec<String>, bool)> = r
        .const_folds
        .iter()
        .map(|f| (f.initializer.clone(), f.ops.clone(), f.copied))
        .collect();
    folds.sort();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        folds,
        [
            ("b1_row".to_string(), s(&["Squeeze"]), false),
            ("b2_alias_out".to_string(), s(&["Identity"]), false),
            ("w1_flat".to_string(), s(&["Reshape", "Cast"]), false),
            ("w2_2d".to_string(), s(&["Unsqueeze", "Identity"]), false),
            ("w3_half".to_string(), s(&["Cast", "Unsqueeze"]), false),
        ]
    );
    let (eq, _) = common::run_verified(&model, &Options::default());
    let g = eq.graph.as_ref().unwrap();
    assert_eq!(
        common::op_multiset(&eq),
        ["Conv", "Conv", "Conv", "Relu", "Relu"],
        "every chain node (and the shape/axes constants) is gone"
    );
    assert_eq!(common::init(&eq, "w3_half").dims, [4, 8, 1, 1]);
    // An Identity-only alias: the source takes the name the conv reads.
    assert_eq!(common::node(&eq, "c2").input[2], "b2_alias_out");
    assert!(g.initializer.iter().all(|t| t.name() != "b2_src"));
    assert!(g
        .initializer
        .iter()
        .all(|t| !t.name().ends_with(".axes") && !t.name().ends_with(".shape")));
}

/// The coverage figures name what keeps CLS away: a SiLU (`x · Sigmoid(x)`) after c1.
#[test]
fn coverage_names_the_blocking_activation() {
    let mut b = ModelBuilder::new(13).seed(46);
    let x = input4(&mut b, 4);
    let y = cbr(&mut b, "c0", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.conv("c1", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.batch_norm("bn1", &y, 8);
    let s = b.unary("Sigmoid", "silu_sigmoid", &y);
    let y = b.node1("Mul", "silu_mul", &[&y, &s], vec![]);
    b.set_rank(&y, 4);
    let y = cbr(&mut b, "c2", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let r = run_case(
        "coverage_silu",
        &b.build(),
        &Expect {
            sets: vec![vec!["c0", "c1"], vec!["c2", "c3"]],
            ..Default::default()
        },
    );
    let c = &r.coverage;
    assert_eq!(
        (c.total.layers, c.scaled.layers, c.bn_folded.layers),
        (4, 4, 3)
    );
    assert_eq!((c.batch_norms, c.batch_norms_folded), (3, 3));
    // c1 is scaled on its input side only; nothing is left outside a set.
    assert!(c.not_scaled.is_empty(), "{:?}", c.not_scaled);
    assert!((c.scaled_share - 1.0).abs() < 1e-12);
    // CLS alone on the same model, no BN fold: c1 → BN stops the chain.
    let (_, r) = common::run_verified(&silu_model(), &common::steps(&[Step::Cls]));
    let c = &r.coverage;
    let silu = c
        .not_scaled
        .iter()
        .find(|g| g.blocker.as_deref() == Some("SiLU"))
        .unwrap_or_else(|| panic!("no SiLU group: {:#?}", c.not_scaled));
    assert_eq!((silu.reason.as_str(), silu.count.layers), ("fan_out", 1));
    assert_eq!(silu.examples, ["c1"]);
    assert!(c.summary.contains("1 fan_out (SiLU)"), "{}", c.summary);
    assert_eq!(c.total.layers, 3);
}

/// conv → BN → SiLU → conv → Relu → conv, no BN after the middle conv.
fn silu_model() -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(47);
    let x = input4(&mut b, 4);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let s = b.unary("Sigmoid", "silu_sigmoid", &y);
    let y = b.node1("Mul", "silu_mul", &[&y, &s], vec![]);
    b.set_rank(&y, 4);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[1, 1]));
    let y = b.relu("r2", &y);
    let y = b.conv("c3", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    b.build()
}

#[test]
fn unfoldable_bns_are_skipped() {
    // BN → padded Conv (not exact), BN → ConvTranspose: both stay, with their reasons.
    let mut b = ModelBuilder::new(13).seed(24);
    let x = input4(&mut b, 4);
    let y = b.batch_norm("bn_pad", &x, 4);
    let y = b.conv("c1", &y, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.relu("r1", &y);
    let y = b.batch_norm_with(
        "bn_ct",
        &y,
        &BnSpec::random(&mut onnx_cle::builder::SplitMix64::new(5), 8),
    );
    let y = b.conv(
        "ct",
        &y,
        &ConvSpec::transposed(8, 4, &[2, 2]).strides(&[2, 2]),
    );
    b.output_shaped(&y, &Dim::batched("N", &[4, 16, 16]));
    let r = run_case(
        "unfoldable_bns_are_skipped",
        &b.build(),
        &Expect {
            skips: vec![
                ("bn_fold", "bn_pad", "forward_padding"),
                ("bn_fold", "bn_ct", "forward_conv_transpose"),
            ],
            ..Default::default()
        },
    );
    assert!(r.bn_folds.is_empty());
}

#[test]
fn aimet_relu6_replace_changes_the_function() {
    let mut b = ModelBuilder::new(13).seed(25);
    let x = input4(&mut b, 4);
    // Large weights so that many pre-activations exceed 6.
    let y = b.conv(
        "c1",
        &x,
        &ConvSpec::new(4, 8, &[3, 3]).same_pads().spread(0.0),
    );
    let y = b.batch_norm_with(
        "c1_bn",
        &y,
        &BnSpec {
            gamma: vec![8.0; 8],
            beta: vec![4.0; 8],
            mean: vec![0.0; 8],
            var: vec![1.0; 8],
            epsilon: Some(1e-5),
        },
    );
    let y = b.relu6("clip", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let model = b.build();
    let out = onnx_cle::run(model, None, &Options::aimet(), None, Default::default()).unwrap();
    let r = &out.report;
    assert!(r.function_changed, "function_changed must be set");
    assert!(r
        .relu6
        .iter()
        .any(|d| d.node == "clip" && d.action == Relu6Action::Replaced));
    let dev = r.verification.max_rel_l2.expect("verified");
    common::say(&format!(
        "function aimet_relu6_replace           full: {dev:.1e} (expected to change)"
    ));
    assert!(
        dev > 1e-2,
        "replacing ReLU6 should change the outputs: {dev:e}"
    );
}
