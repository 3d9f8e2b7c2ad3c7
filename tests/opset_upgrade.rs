//! Per-channel QDQ models for opset < 13 exports: the model is raised to opset 13 exactly
//! (`onnx_cle::graph::opset`), checked against the original in tract here and in onnxruntime by
//! `scripts/check_opset_upgrade.sh` (skipped, loudly, without python3).
//!
//! - an opset-11 model (Softmax on a middle axis and on the last axis, Squeeze/Unsqueeze/Split/
//!   ReduceSum with attribute axes) and an opset-9 one (Clip, Pad, Slice attributes, Dropout with
//!   `ratio`, Upsample, Softmax with its default axis): the upgraded float model computes the
//!   original's outputs (tract: without the Upsample, which tract lacks; onnxruntime: with it),
//!   only the touched nodes change, and the per-channel QDQ model is written (the report names
//!   the upgrade and its check on a sample in tract) and runs in onnxruntime, while the AIMET encodings written with it name only
//!   tensors of the model the user keeps;
//! - below opset 10 a per-tensor QDQ model is upgraded too (QuantizeLinear is opset 10);
//! - a model whose Dropout mask is read cannot be upgraded: the QDQ model is skipped with a
//!   reason naming the node, and a per-tensor QDQ model is still written.

mod common;

use std::path::PathBuf;
use std::process::Command;

use onnx_cle::builder::{attr_float, attr_int, attr_ints, attr_string, ConvSpec, ModelBuilder};
use onnx_cle::graph::opset;
use onnx_cle::onnx::ModelProto;
use onnx_cle::options::{Calibration, Granularity, Target, WeightType};
use onnx_cle::runtime;
use onnx_cle::{ArtifactKind, SampleInputs};
use onnx_cle::{Control, Options};

/// Conv-BN-Relu, then Softmax(axis 1) on the 4-D tensor (2-D coercion before 13), Unsqueeze/
/// Squeeze, Split with sizes, ReduceSum, Softmax on the last axis, a second conv. Opset 11.
fn opset11() -> ModelProto {
    let mut b = ModelBuilder::new(11).seed(3);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let s1 = b.node1("Softmax", "sm_mid", &[&y], vec![attr_int("axis", 1)]);
    let u = b.unsqueeze("unsq", &y, &[0]);
    let q = b.squeeze("sq", &u, &[0]);
    let parts = b.node(
        "Split",
        "split",
        &[&q],
        2,
        vec![attr_int("axis", 1), attr_ints("split", &[3, 5])],
    );
    let r = b.node1(
        "ReduceSum",
        "rsum",
        &[&parts[1]],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let s2 = b.node1(
        "Softmax",
        "sm_last",
        &[&parts[0]],
        vec![attr_int("axis", 3)],
    );
    let c2 = b.conv("c2", &q, &ConvSpec::new(8, 4, &[1, 1]));
    for (t, rank) in [(&s1, 4), (&r, 4), (&s2, 4)] {
        b.set_rank(t, rank);
    }
    for t in [&s1, &r, &s2, &c2] {
        b.output(t);
    }
    b.build()
}

/// Conv, Clip(0, 6) attributes, Pad attributes with value 0.5, Slice attributes, Dropout with
/// `ratio`, Upsample ×2 nearest (when `upsample`: tract has no Upsample), Softmax with its
/// default axis (1, of a 4-D tensor). Opset 9.
fn opset9(upsample: bool) -> ModelProto {
    let mut b = ModelBuilder::new(9).seed(4);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 4, &[3, 3]));
    let y = b.node1(
        "Clip",
        "clip",
        &[&y],
        vec![attr_float("min", 0.0), attr_float("max", 6.0)],
    );
    let y = b.node1(
        "Pad",
        "pad",
        &[&y],
        vec![
            attr_ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
            attr_float("value", 0.5),
        ],
    );
    let y = b.node1(
        "Slice",
        "slice",
        &[&y],
        vec![
            attr_ints("starts", &[1]),
            attr_ints("ends", &[7]),
            attr_ints("axes", &[2]),
        ],
    );
    let y = b.node1("Dropout", "drop", &[&y], vec![attr_float("ratio", 0.3)]);
    let y = if upsample {
        let scales = b.init("up_scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        b.node1(
            "Upsample",
            "up",
            &[&y, &scales],
            vec![attr_string("mode", "nearest")],
        )
    } else {
        y
    };
    let c2 = b.conv("c2", &y, &ConvSpec::new(4, 4, &[1, 1]));
    let s = b.node1("Softmax", "sm", &[&c2], vec![]);
    b.set_rank(&s, 4);
    b.output(&s);
    b.build()
}

/// Opset 11, a Dropout whose mask is a graph output.
fn read_mask() -> ModelProto {
    let mut b = ModelBuilder::new(11).seed(5);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 4, &[3, 3]));
    let outs = b.node("Dropout", "drop", &[&y], 2, vec![attr_float("ratio", 0.1)]);
    b.set_rank(&outs[0], 4);
    b.output(&outs[0]);
    let g = b.graph_mut();
    g.output.push(onnx_cle::onnx::ValueInfoProto {
        name: Some(outs[1].clone()),
        ..Default::default()
    });
    b.build()
}

fn samples(model: &ModelProto, n: usize, seed: u64) -> Vec<runtime::InputTensor> {
    let mut specs = runtime::input_specs(model, n).unwrap();
    for s in specs.iter_mut() {
        s.shape = vec![n, 3, 8, 8];
        s.data = vec![0.0; n * 3 * 64];
    }
    runtime::fill_random(&mut specs, seed);
    specs
}

fn per_channel_qdq(model: &ModelProto, granularity: Granularity) -> onnx_cle::Output {
    qdq_with(
        model,
        Target {
            weight_granularity: Some(granularity),
            ..Target::default()
        },
    )
}

fn qdq_with(model: &ModelProto, target: Target) -> onnx_cle::Output {
    let mut opts = Options::default();
    opts.verify.enabled = false;
    opts.quant.end_to_end = false;
    opts.exports.qdq = true;
    opts.exports.encodings = Some(onnx_cle::options::EncodingsVersion::V1_0_0);
    opts.exports.calibration = Calibration::Minmax;
    opts.target = target;
    let samples = SampleInputs {
        tensors: samples(model, 4, 7),
        source: "random".into(),
    };
    onnx_cle::run(
        model.clone(),
        None,
        &opts,
        Some(&samples),
        Control::default(),
    )
    .unwrap()
}

fn opset_of(m: &ModelProto) -> i64 {
    onnx_cle::onnx::onnx_opset(m).unwrap()
}

/// Max |a − b| over every output of the two models on the same inputs, in tract.
fn tract_max_diff(a: &ModelProto, b: &ModelProto, inputs: &[runtime::InputTensor]) -> f32 {
    let ra = runtime::run_model(&onnx_cle::onnx::encode(a), inputs).unwrap();
    let rb = runtime::run_model(&onnx_cle::onnx::encode(b), inputs).unwrap();
    assert_eq!(ra.len(), rb.len());
    ra.iter()
        .zip(&rb)
        .flat_map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            assert_eq!(va.len(), vb.len());
            va.iter().zip(vb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn upgraded_models_compute_the_same_in_tract() {
    for (name, m, must) in [
        (
            "opset11",
            opset11(),
            &["sm_mid", "unsq", "sq", "split", "rsum", "sm_last"][..],
        ),
        (
            "opset9",
            opset9(false),
            &["clip", "pad", "slice", "drop", "sm"][..],
        ),
    ] {
        let from = opset_of(&m);
        let u = opset::upgrade(&m, &runtime::tensor_facts(&m, None)).expect(name);
        assert_eq!((u.from, opset_of(&u.model)), (from, 13), "{name}");
        for n in must {
            assert!(
                u.changes.iter().any(|c| c.starts_with(&format!("{n} ("))),
                "{name}: `{n}` not rewritten: {:#?}",
                u.changes
            );
        }
        assert_eq!(u.changes.len(), must.len(), "{name}: {:#?}", u.changes);
        // Untouched nodes are byte-identical.
        let g0 = m.graph.as_ref().unwrap();
        let g1 = u.model.graph.as_ref().unwrap();
        for n in &g0.node {
            if !must.contains(&n.name()) {
                assert!(g1.node.contains(n), "{name}: `{}` changed", n.name());
            }
        }
        let inputs = samples(&m, 2, 11);
        let diff = tract_max_diff(&m, &u.model, &inputs);
        common::say(&format!(
            "opset_upgrade {name}: {from} → 13, {} nodes rewritten, tract max |Δ| {diff:e}",
            u.changes.len()
        ));
        assert!(diff <= 1e-6, "{name}: tract max |Δ| {diff}");
    }
    // The middle-axis Softmax of opset 11 needs the 2-D view; the last-axis one keeps its node.
    let u = opset::upgrade(&opset11(), &runtime::tensor_facts(&opset11(), None)).unwrap();
    let ops: Vec<&str> = u
        .model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type())
        .collect();
    assert_eq!(
        ops.iter().filter(|o| **o == "Flatten").count(),
        1,
        "{ops:?}"
    );
    assert_eq!(u.aliases.len(), 2);
}

#[test]
fn per_channel_qdq_of_old_opsets_is_written_with_the_upgrade_in_the_report() {
    for (m, diff) in [(opset11(), Some(0.0)), (opset9(true), None)] {
        let out = per_channel_qdq(&m, Granularity::PerChannel);
        let ex = out.report.exports.as_ref().unwrap();
        let up = ex.opset_upgrade.as_ref().expect("upgrade reported");
        assert_eq!((up.from, up.to), (opset_of(&m), 13));
        // Checked on a sample in tract (which has no Upsample: the opset-9 model is not run).
        assert_eq!(up.max_rel_diff, diff);
        let qdq = out
            .artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::Qdq)
            .expect("QDQ model written");
        let q = onnx_cle::onnx::decode(qdq.data.clone().into()).unwrap();
        assert_eq!(opset_of(&q), 13);
        let per_channel = q
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type() == "DequantizeLinear")
            .filter(|n| n.attribute.iter().any(|a| a.name() == "axis"))
            .count();
        assert!(per_channel >= 2, "{per_channel} per-channel weights");
        assert!(ex.activations > 0);
        // The encodings name the tensors of the model the user keeps, not the upgrade's views.
        let enc = out
            .artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::Encodings)
            .unwrap();
        let text = String::from_utf8_lossy(&enc.data);
        let g = m.graph.as_ref().unwrap();
        let known: std::collections::HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().chain(&n.output))
            .map(String::as_str)
            .chain(g.input.iter().map(|v| v.name()))
            .collect();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for e in json["activation_encodings"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                known.contains(name),
                "encodings name `{name}`, not in the model"
            );
        }
    }
}

#[test]
fn a_read_dropout_mask_stops_the_upgrade_and_only_the_per_channel_qdq_model() {
    let m = read_mask();
    let e = opset::upgrade(&m, &runtime::tensor_facts(&m, None)).unwrap_err();
    assert!(e.nodes.iter().any(|n| n.contains("drop (Dropout")), "{e}");
    let out = per_channel_qdq(&m, Granularity::PerChannel);
    assert!(out.artifacts.iter().all(|a| a.kind != ArtifactKind::Qdq));
    let skip = out
        .report
        .skipped
        .iter()
        .find(|s| s.reason == "opset_upgrade_refused")
        .expect("skip reported");
    assert!(skip.detail.contains("Dropout"), "{}", skip.detail);
    let out = per_channel_qdq(&m, Granularity::PerTensor);
    assert!(out.artifacts.iter().any(|a| a.kind == ArtifactKind::Qdq));
    assert!(out.report.exports.unwrap().opset_upgrade.is_none());
}

/// Below opset 10 even a per-tensor QDQ model needs the upgrade (QuantizeLinear is opset 10).
#[test]
fn per_tensor_qdq_of_opset9_is_upgraded_too() {
    let out = per_channel_qdq(&opset9(true), Granularity::PerTensor);
    let ex = out.report.exports.as_ref().unwrap();
    assert_eq!(ex.opset_upgrade.as_ref().map(|u| u.from), Some(9));
    let qdq = out
        .artifacts
        .iter()
        .find(|a| a.kind == ArtifactKind::Qdq)
        .expect("QDQ model written");
    let q = onnx_cle::onnx::decode(qdq.data.clone().into()).unwrap();
    assert_eq!(opset_of(&q), 13);
    // uint8 weights (the `ort` per-tensor default) have no int16 pairs to bound.
    let pair_skip = |out: &onnx_cle::Output| {
        out.report
            .skipped
            .iter()
            .any(|s| s.reason == "pair_bounds_not_measured" && s.detail.contains("Upsample"))
    };
    assert!(!pair_skip(&out));
    // int8 weights: tract cannot run opset 9's Upsample, so the int16 pairs stay safe for any
    // input byte, and the report says why.
    let int8 = qdq_with(
        &opset9(true),
        Target {
            weight_type: Some(WeightType::Int8),
            ..Target::default()
        },
    );
    assert!(int8.artifacts.iter().any(|a| a.kind == ArtifactKind::Qdq));
    assert!(pair_skip(&int8));
}

/// onnxruntime: each original, its upgraded float model and its per-channel QDQ model load and
/// run; the upgraded model gives the original's outputs.
#[test]
fn onnxruntime_runs_the_upgraded_and_qdq_models() {
    if Command::new("python3").arg("--version").output().is_err() {
        common::say("\n*** SKIPPED: opset_upgrade onnxruntime check: python3 not found ***\n");
        return;
    }
    let dir = std::env::temp_dir().join(format!("onnx-cle-opset-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, m) in [("opset11", opset11()), ("opset9", opset9(true))] {
        let u = opset::upgrade(&m, &runtime::tensor_facts(&m, None)).unwrap();
        let out = per_channel_qdq(&m, Granularity::PerChannel);
        let qdq = out
            .artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::Qdq)
            .unwrap();
        std::fs::write(
            dir.as_path().join(format!("{name}.onnx")),
            onnx_cle::onnx::encode(&m),
        )
        .unwrap();
        std::fs::write(
            dir.as_path().join(format!("{name}.upgraded.onnx")),
            onnx_cle::onnx::encode(&u.model),
        )
        .unwrap();
        std::fs::write(dir.as_path().join(format!("{name}.qdq.onnx")), &qdq.data).unwrap();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/check_opset_upgrade.sh"))
        .arg(dir.as_path())
        .arg("opset11")
        .arg("opset9")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_opset_upgrade.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    for line in stdout.lines() {
        common::say(&format!("opset_upgrade onnxruntime: {line}"));
    }
}
