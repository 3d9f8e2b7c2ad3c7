//! Lossless ONNX I/O.
//!
//! Proves that (1) every fixture in `../shared/models` decodes and re-encodes to the very same
//! bytes; (2) a model built in Rust that uses every rarely-seen part of `ModelProto` (local
//! functions, model / graph / node `metadata_props`, doc strings, `value_info`, `training_info`,
//! `sparse_initializer`, an extra opset domain) round-trips byte-identically too, through the
//! memory-mapped reader and the streamed writer ([`onnx::write::stream`]) as well; and (3) an
//! equalization run changes only what it reports changing: every initializer, node and
//! value_info entry that no pass touched, and every non-graph field of the model (opsets, IR
//! version, producer, metadata, functions, training info), comes out exactly as it went in.

mod common;

use std::collections::{HashMap, HashSet};

use onnx_cle::builder::{tensor_f32, tensor_i64, value_info_f32, ConvSpec, Dim, ModelBuilder};
use onnx_cle::onnx::proto::{
    FunctionProto, NodeProto, SparseTensorProto, StringStringEntryProto, TrainingInfoProto,
};
use onnx_cle::onnx::{self, ModelProto};
use onnx_cle::{Options, Report};

#[test]
fn shared_models_round_trip_byte_identically() {
    let Some(dir) = common::shared_models("roundtrip") else {
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .onnx file in {}", dir.display());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let model = onnx::decode(bytes.clone().into()).unwrap();
        let again = onnx::encode(&model);
        assert!(
            again == bytes,
            "{}: re-encoded {} bytes differ from the {} original bytes",
            f.display(),
            again.len(),
            bytes.len()
        );
        // Memory-mapped and streamed: the same bytes, the large tensors written from the map.
        let mapped = onnx::mapped::map_file(f).unwrap();
        let model = onnx::decode(mapped.clone()).unwrap();
        let stream = onnx::write::stream(&model);
        let mut written = Vec::new();
        stream.write_to(&mut written).unwrap();
        assert!(written == bytes, "{}: streamed bytes differ", f.display());
        // Through the atomic file writer (vectored writes of at most WRITE_BATCH bytes, each
        // handed to the disk as it is written): the same bytes on disk.
        let path = std::env::temp_dir().join(format!(
            "onnx-cle-roundtrip-{}-{}",
            std::process::id(),
            f.file_name().unwrap().to_string_lossy()
        ));
        onnx::write::write_atomic(&path, |w| stream.write_to(w)).unwrap();
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{}: the written file differs",
            f.display()
        );
        std::fs::remove_file(&path).unwrap();
        let map = mapped.as_ptr_range();
        let borrowed: usize = stream
            .borrowed()
            .filter(|s| map.contains(&s.as_ptr()))
            .map(<[u8]>::len)
            .sum();
        let owned = bytes.len() - borrowed;
        if bytes.len() > 1 << 20 {
            assert!(
                owned * 20 < bytes.len(),
                "{}: {owned} of {} bytes copied into the writer's buffers",
                f.display(),
                bytes.len()
            );
        }
        // The equalized model streams to the bytes prost encodes (rewritten tensors included).
        let eq = onnx_cle::equalize(model, &Options::default()).unwrap();
        assert!(
            onnx::write::stream(&eq.model).to_vec() == onnx::encode(&eq.model),
            "{}: the equalized model streams differently",
            f.display()
        );
    }
    common::say(&format!(
        "roundtrip: {} shared models re-encode byte-identically",
        files.len()
    ));
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

/// Conv-BN-Relu-Conv plus a side branch no pass touches, and every exotic `ModelProto` field.
fn exotic_model() -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(11);
    b.import_opset("com.example", 1);
    let x = b.batched_input("x", "N", &[4, 6, 6]);
    let y = b.conv("c1", &x, &ConvSpec::new(4, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(8, 8, &[1, 1]));
    b.output(&y);
    // A side branch CLE leaves alone: x → Sigmoid → Conv (no BN, no chain) → output.
    let s = b.unary("Sigmoid", "side_sig", &x);
    let s = b.conv("side_conv", &s, &ConvSpec::new(4, 2, &[1, 1]));
    b.output_shaped(&s, &Dim::batched("N", &[2, 6, 6]));
    b.value_info(&s, &Dim::batched("N", &[2, 6, 6]));
    b.value_info("r1_out", &Dim::batched("N", &[8, 6, 6]));
    // An initializer nobody reads, in float_data form (must survive untouched).
    b.init("unused_float_data", &[2], &[1.5, -2.5]);
    b.metadata("author", "onnx-cle tests")
        .metadata("license", "Apache-2.0");
    let mut m = b.build();
    m.doc_string = Some("model doc".into());
    m.domain = Some("org.onnx-cle.test".into());
    m.model_version = Some(42);
    m.producer_version = Some("0.0.1".into());
    let g = m.graph.as_mut().unwrap();
    g.doc_string = Some("graph doc".into());
    g.metadata_props.push(kv("graph_key", "graph value"));
    if let Some(t) = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "unused_float_data")
    {
        t.float_data = vec![1.5, -2.5];
        t.raw_data = None;
        t.doc_string = Some("tensor doc".into());
    }
    for n in g.node.iter_mut() {
        n.doc_string = Some(format!("{} doc", n.op_type()));
        n.metadata_props.push(kv("origin", n.name()));
    }
    g.sparse_initializer.push(SparseTensorProto {
        values: Some(tensor_f32("sparse_w", &[2], &[3.0, 4.0])),
        indices: Some(tensor_i64("sparse_w_idx", &[2], &[1, 5])),
        dims: vec![2, 4],
    });
    m.functions.push(FunctionProto {
        name: Some("Double".into()),
        domain: Some("com.example".into()),
        input: vec!["a".into()],
        output: vec!["b".into()],
        node: vec![NodeProto {
            op_type: Some("Add".into()),
            input: vec!["a".into(), "a".into()],
            output: vec!["b".into()],
            ..Default::default()
        }],
        opset_import: m.opset_import[..1].to_vec(),
        doc_string: Some("function doc".into()),
        metadata_props: vec![kv("fk", "fv")],
        ..Default::default()
    });
    m.training_info.push(TrainingInfoProto {
        initialization: Some(onnx::GraphProto {
            name: Some("init".into()),
            output: vec![value_info_f32("seed_out", None)],
            ..Default::default()
        }),
        initialization_binding: vec![kv("c1.weight", "seed_out")],
        ..Default::default()
    });
    m
}

#[test]
fn rust_built_model_with_every_field_round_trips() {
    let m = exotic_model();
    let bytes = onnx::encode(&m);
    let back = onnx::decode(bytes.clone().into()).unwrap();
    assert_eq!(back, m, "decoded model differs field-wise");
    assert_eq!(onnx::encode(&back), bytes, "re-encoded bytes differ");
    assert_eq!(
        onnx::write::stream(&back).to_vec(),
        bytes,
        "streamed bytes differ"
    );
    assert_eq!(back.functions.len(), 1);
    assert_eq!(back.training_info.len(), 1);
    let g = back.graph.as_ref().unwrap();
    assert_eq!(g.sparse_initializer.len(), 1);
    assert!(g.node.iter().all(|n| n.metadata_props.len() == 1));
}

/// Names of nodes (and of their inputs) that a pass reports having touched.
fn touched(report: &Report, original: &ModelProto) -> (HashSet<String>, HashSet<String>) {
    let mut nodes: HashSet<String> = HashSet::new();
    for f in &report.bn_folds {
        nodes.insert(f.bn.clone());
        nodes.insert(f.layer.clone());
        nodes.extend(f.through.clone());
    }
    for s in &report.cls_sets {
        nodes.extend(s.layers.iter().cloned());
        for p in &s.pairs {
            nodes.extend(p.through.iter().cloned());
        }
    }
    for p in &report.hbf.pairs {
        nodes.insert(p.layer1.clone());
        nodes.insert(p.layer2.clone());
    }
    for d in &report.relu6 {
        if d.action != onnx_cle::report::Relu6Action::Kept {
            nodes.insert(d.node.clone());
        }
    }
    nodes.extend(report.bn_rewrites.iter().cloned());
    for f in &report.const_folds {
        nodes.extend(f.removed.iter().cloned());
        nodes.extend(f.consumers.iter().cloned());
    }
    nodes.extend(report.tensor_copies.iter().map(|c| c.node.clone()));
    let g = original.graph.as_ref().unwrap();
    // Constant nodes feeding a touched node (a rewritten Clip's bounds) go with it.
    let producers: HashMap<&str, &NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let constants: Vec<String> = g
        .node
        .iter()
        .filter(|n| nodes.contains(n.name()))
        .flat_map(|n| n.input.iter())
        .filter_map(|i| producers.get(i.as_str()))
        .filter(|p| p.op_type() == "Constant")
        .map(|p| p.name().to_string())
        .collect();
    nodes.extend(constants);
    let tensors: HashSet<String> = g
        .node
        .iter()
        .filter(|n| nodes.contains(n.name()))
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    (nodes, tensors)
}

/// Asserts that everything `report` does not claim to have touched is unchanged; returns the
/// number of untouched initializers checked.
fn assert_untouched_unchanged(original: &ModelProto, out: &ModelProto, report: &Report) -> usize {
    // Everything outside the graph.
    let strip = |m: &ModelProto| {
        let mut m = m.clone();
        m.graph = None;
        m
    };
    assert_eq!(
        strip(out),
        strip(original),
        "non-graph model fields changed"
    );
    let (go, gn) = (
        original.graph.as_ref().unwrap(),
        out.graph.as_ref().unwrap(),
    );
    assert_eq!(gn.name, go.name);
    assert_eq!(gn.doc_string, go.doc_string);
    assert_eq!(gn.input, go.input, "graph inputs changed");
    assert_eq!(gn.output, go.output, "graph outputs changed");
    assert_eq!(gn.sparse_initializer, go.sparse_initializer);
    assert_eq!(gn.metadata_props, go.metadata_props);
    assert_eq!(gn.quantization_annotation, go.quantization_annotation);
    let (nodes, tensors) = touched(report, original);
    // Untouched initializers: present and identical.
    let new_inits: HashMap<&str, _> = gn.initializer.iter().map(|t| (t.name(), t)).collect();
    let mut kept = 0;
    for t in &go.initializer {
        if tensors.contains(t.name()) {
            continue;
        }
        let n = new_inits
            .get(t.name())
            .unwrap_or_else(|| panic!("untouched initializer `{}` disappeared", t.name()));
        assert_eq!(*n, t, "untouched initializer `{}` changed", t.name());
        kept += 1;
    }
    // Untouched nodes: present and identical (ignoring the output tensor a backward fold moved
    // onto its layer, which is reported via the layer).
    let new_nodes: HashMap<&str, _> = gn
        .node
        .iter()
        .filter(|n| !n.name().is_empty())
        .map(|n| (n.name(), n))
        .collect();
    for n in &go.node {
        if n.name().is_empty() || nodes.contains(n.name()) {
            continue;
        }
        let m = new_nodes
            .get(n.name())
            .unwrap_or_else(|| panic!("untouched node `{}` disappeared", n.name()));
        assert_eq!(*m, n, "untouched node `{}` changed", n.name());
    }
    // value_info: entries kept are identical; an entry may only go when its tensor went.
    let produced: HashSet<&str> = gn
        .node
        .iter()
        .flat_map(|n| &n.output)
        .map(|s| s.as_str())
        .collect();
    for v in &go.value_info {
        match gn.value_info.iter().find(|w| w.name() == v.name()) {
            Some(w) => assert_eq!(w, v, "value_info `{}` changed", v.name()),
            None => assert!(
                !produced.contains(v.name()),
                "value_info `{}` dropped although the tensor still exists",
                v.name()
            ),
        }
    }
    kept
}

#[test]
fn equalize_leaves_untouched_parts_unchanged_on_rust_model() {
    let original = exotic_model();
    let eq = onnx_cle::equalize(original.clone(), &Options::default()).unwrap();
    assert!(
        !eq.report.bn_folds.is_empty() && !eq.report.cls_sets.is_empty(),
        "the pipeline should have folded and scaled something: {:?}",
        eq.report.skipped
    );
    let kept = assert_untouched_unchanged(&original, &eq.model, &eq.report);
    assert!(kept >= 3, "only {kept} untouched initializers checked");
    // The side branch is bit for bit the same.
    for name in ["side_conv.weight", "side_conv.bias", "unused_float_data"] {
        assert_eq!(common::init(&eq.model, name), common::init(&original, name));
    }
    // And the whole result still round-trips losslessly.
    let bytes = onnx::encode(&eq.model);
    assert_eq!(onnx::decode(bytes.into()).unwrap(), eq.model);
}

#[test]
fn equalize_leaves_untouched_parts_unchanged_on_tiny() {
    let Some(dir) = common::shared_models("roundtrip/equalize") else {
        return;
    };
    let original = common::load(&dir.join("tiny.onnx"));
    for opts in [Options::default(), Options::aimet()] {
        let eq = onnx_cle::equalize(original.clone(), &opts).unwrap();
        assert_untouched_unchanged(&original, &eq.model, &eq.report);
        // fc is never a CLS layer in AIMET mode and is untouched in tiny: identical.
        if opts.is_aimet() {
            assert_eq!(
                common::init(&eq.model, "fc.weight"),
                common::init(&original, "fc.weight")
            );
        }
    }
}

/// A weight chain is folded only when a pass rewrote its value: with BN fold alone, fc1's
/// `Transpose` goes (its weight is transposed in place, reported) while fc2's chain, which no
/// pass touched, stays byte for byte, together with everything else not reported.
#[test]
fn only_written_weight_chains_are_folded() {
    let original = common::transposed_linear_bn(12);
    let opts = Options {
        steps: vec![onnx_cle::Step::BnFold],
        ..Options::default()
    };
    let eq = onnx_cle::equalize(original.clone(), &opts).unwrap();
    assert_eq!(
        eq.report.const_folds.len(),
        1,
        "{:?}",
        eq.report.const_folds
    );
    assert_eq!(eq.report.const_folds[0].removed, ["fc1_t"]);
    assert_untouched_unchanged(&original, &eq.model, &eq.report);
    assert_eq!(
        common::node(&eq.model, "fc2_t"),
        common::node(&original, "fc2_t")
    );
    assert_eq!(
        common::init(&eq.model, "fc2.weight"),
        common::init(&original, "fc2.weight")
    );
    // The full pipeline scales fc2 too, so its chain is folded as well.
    let eq = onnx_cle::equalize(original.clone(), &Options::default()).unwrap();
    assert_eq!(eq.report.const_folds.len(), 2);
    assert_untouched_unchanged(&original, &eq.model, &eq.report);
}

/// A large initializer (written from its own buffer) with every other `TensorProto` field set
/// streams to prost's bytes: the fields before and after `raw_data` keep their order.
#[test]
fn a_borrowed_tensor_with_every_field_streams_like_prost() {
    use onnx_cle::onnx::proto::tensor_proto::Segment;
    let mut m = exotic_model();
    let raw: Vec<u8> = (0..3 * onnx::write::BORROW_MIN as u32)
        .map(|i| i as u8)
        .collect();
    let t = onnx::TensorProto {
        dims: vec![raw.len() as i64 / 4],
        data_type: Some(1),
        segment: Some(Segment {
            begin: Some(0),
            end: Some(3),
        }),
        float_data: vec![1.0, 2.0],
        int32_data: vec![-3, 4],
        string_data: vec![bytes::Bytes::from_static(b"s")],
        int64_data: vec![5, -6],
        name: Some("big".into()),
        doc_string: Some("doc".into()),
        raw_data: Some(raw.into()),
        external_data: vec![kv("location", "nowhere")],
        data_location: Some(0),
        double_data: vec![7.5],
        uint64_data: vec![u64::MAX],
        metadata_props: vec![kv("k", "v")],
    };
    let g = m.graph.as_mut().unwrap();
    g.initializer.insert(0, t.clone());
    g.initializer.push(t.clone());
    // And as a `Constant` value, with attribute fields on both sides of `t`.
    let mut node = g.node[0].clone();
    node.attribute.insert(
        0,
        onnx::AttributeProto {
            name: Some("value".into()),
            i: Some(3),
            t: Some(t),
            doc_string: Some("attr doc".into()),
            r#type: Some(4),
            ints: vec![1, 2],
            ..Default::default()
        },
    );
    node.doc_string = Some("node doc".into());
    node.domain = Some("d".into());
    g.node.push(node);
    let stream = onnx::write::stream(&m);
    assert!(stream.borrowed().count() > 0, "nothing was borrowed");
    assert_eq!(stream.to_vec(), onnx::encode(&m));
    assert_eq!(stream.len(), onnx::encode(&m).len() as u64);
}

/// `run_streamed` hands its writer [`run`]'s bytes, with and without verification: without
/// it, the large weights' per-channel products are deferred and computed while they are
/// written or returned (MobileNetV2 has weights of 64 KiB and more), and the per-layer int8
/// table and the CLS ranges computed from the deferred values are those of a run that holds
/// every weight (a verified one).
#[test]
fn run_streamed_writes_the_bytes_run_returns() {
    let Some(dir) = common::shared_models("roundtrip/streamed") else {
        return;
    };
    for (file, verify) in [
        ("tiny.onnx", false),
        ("tiny.onnx", true),
        ("mobilenet_v2.onnx", false),
    ] {
        let original = common::load(&dir.join(file));
        let mut opts = Options::default();
        opts.verify.enabled = verify;
        // The reference is eager: a verified run holds every weight it wrote (and verification
        // does not change the model).
        let mut eager = opts.clone();
        eager.verify.enabled = true;
        let run = onnx_cle::run(original.clone(), None, &eager, None, Default::default()).unwrap();
        let expected = run.model;
        if !verify {
            let returned = onnx_cle::run(original.clone(), None, &opts, None, Default::default())
                .unwrap()
                .model;
            assert!(returned == expected, "{file}: returned bytes differ");
        }
        let mut written = Vec::new();
        let mut writer = |s: &onnx::write::Stream<'_>| {
            s.write_to(&mut written).unwrap();
            Ok(())
        };
        let out = onnx_cle::run_streamed(
            original.clone(),
            None,
            &opts,
            None,
            Default::default(),
            Some(&mut writer),
        )
        .unwrap();
        assert!(
            matches!(out.model, onnx_cle::ModelOutput::Written(n) if n == expected.len() as u64)
        );
        assert!(
            written == expected,
            "{file}, verify {verify}: streamed bytes differ"
        );
        let table = |r: &Report| {
            serde_json::to_string(&r.quantization.as_ref().map(|q| &q.layers)).unwrap()
        };
        assert_eq!(table(&out.report), table(&run.report), "{file}: int8 table");
        assert_eq!(
            serde_json::to_string(&out.report.cls_sets).unwrap(),
            serde_json::to_string(&run.report.cls_sets).unwrap(),
            "{file}: CLS ranges"
        );
    }
}
