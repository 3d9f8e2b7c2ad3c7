//! The hostile inputs of `tests/hostile_cli.rs` and `tests/hostile_http.rs`: each builds the
//! bytes of one bad (or merely unusual) model. Small and deterministic.

#![allow(dead_code)]

use onnx_cle::builder::{attr_int, tensor_f32, value_info_f32, ConvSpec, Dim, ModelBuilder};
use onnx_cle::onnx::proto::tensor_proto::DataType;
use onnx_cle::onnx::proto::{OperatorSetIdProto, SparseTensorProto, StringStringEntryProto};
use onnx_cle::onnx::{self, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use prost::Message;

/// Conv → BN → Relu → Conv: the healthy model every case starts from.
pub fn base(opset: i64) -> ModelBuilder {
    let mut b = ModelBuilder::new(opset).seed(4);
    let x = b.batched_input("x", "N", &[3, 6, 6]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 4, &[3, 3]).same_pads());
    let y = b.batch_norm("bn1", &y, 4);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(4, 2, &[1, 1]));
    b.output(&y);
    b
}

/// The healthy model, encoded.
pub fn healthy() -> Vec<u8> {
    base(13).build_bytes()
}

fn with(f: impl FnOnce(&mut ModelProto)) -> Vec<u8> {
    let mut m = base(13).build();
    f(&mut m);
    m.encode_to_vec()
}

fn graph(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().expect("graph")
}

fn init<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    graph(m)
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no initializer {name}"))
}

/// 4 KiB of seeded noise.
pub fn random_bytes() -> Vec<u8> {
    let mut rng = onnx_cle::builder::SplitMix64::new(99);
    (0..4096).map(|_| rng.next_u64() as u8).collect()
}

/// The healthy model cut in the middle of its weights.
pub fn truncated() -> Vec<u8> {
    let mut b = healthy();
    b.truncate(b.len() / 2);
    b
}

/// Valid protobuf, but a `GraphProto`, not a `ModelProto`.
pub fn not_a_model() -> Vec<u8> {
    base(13).build().graph.expect("graph").encode_to_vec()
}

/// A `ModelProto` with an IR version and an opset but no graph.
pub fn no_graph() -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        producer_name: Some("hostile".into()),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Two Relu nodes feeding each other.
pub fn cycle() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        for (i, o) in [("loop_b", "loop_a"), ("loop_a", "loop_b")] {
            g.node.push(NodeProto {
                op_type: Some("Relu".into()),
                input: vec![i.into()],
                output: vec![o.into()],
                ..Default::default()
            });
        }
        g.output.push(value_info_f32("loop_a", None));
    })
}

/// The second Conv's weight is not provided by anything.
pub fn missing_initializer() -> Vec<u8> {
    with(|m| graph(m).initializer.retain(|t| t.name() != "c2.weight"))
}

/// A weight whose dimensions multiply past 2^64.
pub fn dims_overflow() -> Vec<u8> {
    with(|m| init(m, "c1.weight").dims = vec![1 << 40, 1 << 40, 1 << 40])
}

/// A weight declaring more elements than its data holds.
pub fn dims_vs_data() -> Vec<u8> {
    with(|m| init(m, "c1.weight").dims = vec![4, 3, 3, 5])
}

/// A weight declaring 2^40 elements with no data at all.
pub fn huge_declared_tensor() -> Vec<u8> {
    with(|m| {
        let t = init(m, "c1.weight");
        t.dims = vec![1 << 20, 1 << 20];
        t.raw_data = None;
    })
}

/// NaN and ±Inf in the first Conv's weight.
pub fn nan_inf_weights() -> Vec<u8> {
    with(|m| {
        let t = init(m, "c1.weight");
        let mut w = onnx::tensor::to_f32(t).expect("f32");
        w.data[0] = f32::NAN;
        w.data[5] = f32::INFINITY;
        w.data[9] = f32::NEG_INFINITY;
        onnx::tensor::write_f32(t, &w);
    })
}

/// BN with zero variance and epsilon 0 in one channel, negative variance in another.
pub fn bn_bad_variance() -> Vec<u8> {
    with(|m| {
        let t = init(m, "bn1.running_var");
        let mut v = onnx::tensor::to_f32(t).expect("f32");
        v.data[0] = 0.0;
        v.data[1] = -1.0;
        onnx::tensor::write_f32(t, &v);
        let bn = graph(m)
            .node
            .iter_mut()
            .find(|n| n.op_type() == "BatchNormalization")
            .expect("bn");
        bn.attribute.retain(|a| a.name() != "epsilon");
        bn.attribute
            .push(onnx_cle::builder::attr_float("epsilon", 0.0));
    })
}

/// A Relu carrying `n` integer attributes (an enormous but legitimate attribute list).
pub fn many_attributes(n: usize) -> Vec<u8> {
    with(|m| {
        let relu = graph(m)
            .node
            .iter_mut()
            .find(|n| n.op_type() == "Relu")
            .expect("relu");
        for i in 0..n {
            relu.attribute.push(attr_int(&format!("a{i}"), i as i64));
        }
    })
}

/// A node with `n` empty attributes, written by hand: 2 bytes each on the wire, hundreds of
/// bytes each once decoded.
pub fn attribute_flood(n: usize) -> Vec<u8> {
    let mut node = vec![
        0x0a, 0x01, b'x', 0x12, 0x01, b'y', 0x22, 0x04, b'R', b'e', b'l', b'u',
    ];
    node.reserve(2 * n);
    for _ in 0..n {
        node.extend_from_slice(&[0x2a, 0x00]);
    }
    let mut g = Vec::with_capacity(node.len() + 16);
    g.push(0x0a);
    prost::encoding::encode_varint(node.len() as u64, &mut g);
    g.extend_from_slice(&node);
    let mut model = vec![0x08, 0x08, 0x42, 0x02, 0x10, 0x0d, 0x3a];
    prost::encoding::encode_varint(g.len() as u64, &mut model);
    model.extend_from_slice(&g);
    model
}

/// A chain of `n` Relu nodes.
pub fn relu_chain(n: usize) -> Vec<u8> {
    let mut g = GraphProto {
        name: Some("chain".into()),
        input: vec![value_info_f32("t0", Some(&[Dim::Fixed(1), Dim::Fixed(4)]))],
        output: vec![value_info_f32(&format!("t{n}"), None)],
        ..Default::default()
    };
    g.node.reserve(n);
    for i in 0..n {
        g.node.push(NodeProto {
            op_type: Some("Relu".into()),
            input: vec![format!("t{i}")],
            output: vec![format!("t{}", i + 1)],
            ..Default::default()
        });
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(g),
        ..Default::default()
    }
    .encode_to_vec()
}

fn graph_attr(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(5),
        g: Some(g),
        ..Default::default()
    }
}

/// An `If` whose then-branch reads the activation between the two Convs, and a `Loop` whose
/// body holds another `If`: subgraphs three levels deep.
pub fn nested_subgraphs() -> Vec<u8> {
    with(|m| {
        let relu_out = graph(m)
            .node
            .iter()
            .find(|n| n.op_type() == "Relu")
            .expect("relu")
            .output[0]
            .clone();
        let branch = |op: &str, input: &str, out: &str| GraphProto {
            name: Some(format!("{op}_branch")),
            node: vec![NodeProto {
                op_type: Some(op.into()),
                input: vec![input.into()],
                output: vec![out.into()],
                ..Default::default()
            }],
            output: vec![value_info_f32(out, None)],
            ..Default::default()
        };
        let g = graph(m);
        g.input.push(onnx_cle::onnx::ValueInfoProto {
            name: Some("cond".into()),
            r#type: value_info_f32("cond", Some(&[])).r#type.map(|mut t| {
                if let Some(onnx_cle::onnx::proto::type_proto::Value::TensorType(tt)) =
                    t.value.as_mut()
                {
                    tt.elem_type = Some(DataType::Bool as i32);
                }
                t
            }),
            ..Default::default()
        });
        g.node.push(NodeProto {
            name: Some("if_outer".into()),
            op_type: Some("If".into()),
            input: vec!["cond".into()],
            output: vec!["if_out".into()],
            attribute: vec![
                graph_attr("then_branch", branch("Identity", &relu_out, "then_out")),
                graph_attr("else_branch", branch("Relu", &relu_out, "else_out")),
            ],
            ..Default::default()
        });
        let inner_if = NodeProto {
            op_type: Some("If".into()),
            input: vec!["cond_in".into()],
            output: vec!["inner_out".into()],
            attribute: vec![
                graph_attr("then_branch", branch("Identity", "v_in", "t_out")),
                graph_attr("else_branch", branch("Neg", "v_in", "e_out")),
            ],
            ..Default::default()
        };
        let body = GraphProto {
            name: Some("loop_body".into()),
            input: vec![
                value_info_f32("iter", None),
                value_info_f32("cond_in", None),
                value_info_f32("v_in", None),
            ],
            node: vec![
                inner_if,
                NodeProto {
                    op_type: Some("Identity".into()),
                    input: vec!["cond_in".into()],
                    output: vec!["cond_out".into()],
                    ..Default::default()
                },
            ],
            output: vec![
                value_info_f32("cond_out", None),
                value_info_f32("inner_out", None),
            ],
            ..Default::default()
        };
        g.initializer
            .push(onnx_cle::builder::tensor_i64("trip", &[], &[2]));
        g.node.push(NodeProto {
            name: Some("loop".into()),
            op_type: Some("Loop".into()),
            input: vec!["trip".into(), "cond".into(), "if_out".into()],
            output: vec!["loop_out".into()],
            attribute: vec![graph_attr("body", body)],
            ..Default::default()
        });
        g.output.push(value_info_f32("loop_out", None));
    })
}

/// `depth` `If` nodes nested inside each other's then-branch (deeper than protobuf decoders
/// allow once `depth` is above ~33).
pub fn deep_nesting(depth: usize) -> Vec<u8> {
    let mut inner = GraphProto {
        name: Some("leaf".into()),
        node: vec![NodeProto {
            op_type: Some("Identity".into()),
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    for k in 0..depth {
        inner = GraphProto {
            name: Some(format!("level{k}")),
            node: vec![NodeProto {
                op_type: Some("If".into()),
                input: vec!["cond".into()],
                output: vec!["y".into()],
                attribute: vec![graph_attr("then_branch", inner)],
                ..Default::default()
            }],
            ..Default::default()
        };
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(inner),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The first Conv's weight "stored" in an external file at `location`.
pub fn external_data(location: &str) -> Vec<u8> {
    with(|m| {
        let t = init(m, "c1.weight");
        let len = t.raw_data().len();
        t.raw_data = None;
        t.data_location = Some(1);
        for (k, v) in [
            ("location", location.to_string()),
            ("offset", "0".into()),
            ("length", len.to_string()),
        ] {
            t.external_data.push(StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            });
        }
    })
}

/// A string initializer passed to an output next to the Conv chain.
pub fn string_tensor() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        g.initializer.push(TensorProto {
            name: Some("labels".into()),
            dims: vec![2],
            data_type: Some(DataType::String as i32),
            string_data: vec!["cat".into(), "dog".into()],
            ..Default::default()
        });
        g.node.push(NodeProto {
            op_type: Some("Identity".into()),
            input: vec!["labels".into()],
            output: vec!["labels_out".into()],
            ..Default::default()
        });
        let mut out = value_info_f32("labels_out", None);
        if let Some(onnx_cle::onnx::proto::type_proto::Value::TensorType(tt)) =
            out.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            tt.elem_type = Some(DataType::String as i32);
        }
        g.output.push(out);
    })
}

/// The second Conv's weight as a sparse initializer.
pub fn sparse_initializer() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        let k = g
            .initializer
            .iter()
            .position(|t| t.name() == "c2.weight")
            .expect("c2.weight");
        let dense = g.initializer.remove(k);
        let w = onnx::tensor::to_f32(&dense).expect("f32");
        let nz: Vec<(usize, f32)> = w
            .data
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .collect();
        let values: Vec<f32> = nz.iter().map(|p| p.1).collect();
        let idx: Vec<i64> = nz.iter().map(|p| p.0 as i64).collect();
        g.sparse_initializer.push(SparseTensorProto {
            values: Some(tensor_f32("c2.weight", &[values.len()], &values)),
            indices: Some(onnx_cle::builder::tensor_i64(
                "c2.weight_idx",
                &[idx.len()],
                &idx,
            )),
            dims: dense.dims.clone(),
        });
    })
}

/// The second Conv's weight as int8 + DequantizeLinear, the activation through
/// QuantizeLinear/DequantizeLinear (a QDQ model).
pub fn qdq_int8() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        let k = g
            .initializer
            .iter()
            .position(|t| t.name() == "c2.weight")
            .expect("c2.weight");
        let dense = onnx::tensor::to_f32(&g.initializer[k]).expect("f32");
        let scale = dense.data.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        let q: Vec<i32> = dense
            .data
            .iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i32)
            .collect();
        g.initializer[k] = TensorProto {
            name: Some("c2.weight_q".into()),
            dims: g.initializer[k].dims.clone(),
            data_type: Some(DataType::Int8 as i32),
            int32_data: q,
            ..Default::default()
        };
        g.initializer.push(tensor_f32("w_scale", &[], &[scale]));
        g.initializer.push(TensorProto {
            name: Some("w_zp".into()),
            data_type: Some(DataType::Int8 as i32),
            int32_data: vec![0],
            ..Default::default()
        });
        g.initializer.push(tensor_f32("a_scale", &[], &[0.05]));
        g.initializer.push(TensorProto {
            name: Some("a_zp".into()),
            data_type: Some(DataType::Uint8 as i32),
            int32_data: vec![0],
            ..Default::default()
        });
        let c2 = g.node.iter().position(|n| n.name() == "c2").expect("c2");
        let act = g.node[c2].input[0].clone();
        let dq_w = NodeProto {
            name: Some("dq_w".into()),
            op_type: Some("DequantizeLinear".into()),
            input: vec!["c2.weight_q".into(), "w_scale".into(), "w_zp".into()],
            output: vec!["c2.weight".into()],
            ..Default::default()
        };
        let q_a = NodeProto {
            name: Some("q_a".into()),
            op_type: Some("QuantizeLinear".into()),
            input: vec![act.clone(), "a_scale".into(), "a_zp".into()],
            output: vec!["act_q".into()],
            ..Default::default()
        };
        let dq_a = NodeProto {
            name: Some("dq_a".into()),
            op_type: Some("DequantizeLinear".into()),
            input: vec!["act_q".into(), "a_scale".into(), "a_zp".into()],
            output: vec!["act_dq".into()],
            ..Default::default()
        };
        g.node[c2].input[0] = "act_dq".into();
        g.node.insert(c2, dq_a);
        g.node.insert(c2, q_a);
        g.node.insert(c2, dq_w);
    })
}

/// Every float tensor (weights, BN parameters, input, output) as float16.
pub fn fp16_weights() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        for t in g.initializer.iter_mut() {
            if let Ok(f) = onnx::tensor::to_f32(t) {
                let raw: Vec<u8> = f
                    .data
                    .iter()
                    .flat_map(|v| f32_to_f16(*v).to_le_bytes())
                    .collect();
                t.raw_data = Some(raw.into());
                t.data_type = Some(DataType::Float16 as i32);
            }
        }
        for v in g.input.iter_mut().chain(g.output.iter_mut()) {
            if let Some(onnx_cle::onnx::proto::type_proto::Value::TensorType(tt)) =
                v.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                tt.elem_type = Some(DataType::Float16 as i32);
            }
        }
    })
}

fn f32_to_f16(v: f32) -> u16 {
    // Round-toward-zero conversion, enough for weights of magnitude ~1.
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

/// The healthy model claiming `opset` (and an IR version to go with it).
pub fn opset(opset: i64, ir_version: i64) -> Vec<u8> {
    let mut m = base(if opset < 11 { 9 } else { 13 }).build();
    m.opset_import[0].version = Some(opset);
    m.ir_version = Some(ir_version);
    if ir_version < 4 {
        // Before IR 4 every initializer must also be a graph input.
        let g = graph(&mut m);
        let inits: Vec<_> = g
            .initializer
            .iter()
            .map(|t| {
                let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Fixed(d)).collect();
                value_info_f32(t.name(), Some(&dims))
            })
            .collect();
        g.input.extend(inits);
    }
    m.encode_to_vec()
}

/// Both Convs named `conv`.
pub fn duplicate_node_names() -> Vec<u8> {
    with(|m| {
        for n in graph(m).node.iter_mut().filter(|n| n.op_type() == "Conv") {
            n.name = Some("conv".into());
        }
    })
}

/// Two nodes writing the same tensor.
pub fn duplicate_outputs() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        let out = g.node[0].output[0].clone();
        g.node.push(NodeProto {
            op_type: Some("Relu".into()),
            input: vec!["x".into()],
            output: vec![out],
            ..Default::default()
        });
    })
}

/// Two different initializers with the same name.
pub fn duplicate_initializers() -> Vec<u8> {
    with(|m| {
        let g = graph(m);
        let mut twin = tensor_f32("c1.weight", &[2], &[1.0, 2.0]);
        twin.doc_string = Some("an impostor".into());
        g.initializer.push(twin);
    })
}

/// The first Conv with an impossible `group` (0, negative, or not dividing its channels).
pub fn bad_group(group: i64) -> Vec<u8> {
    with(|m| {
        let c1 = graph(m)
            .node
            .iter_mut()
            .find(|n| n.name() == "c1")
            .expect("c1");
        c1.attribute.retain(|a| a.name() != "group");
        c1.attribute.push(attr_int("group", group));
    })
}
