//! The QDQ ONNX model of a [`QuantPlan`]: what onnxruntime's `quantize_static` (QDQ format)
//! writes, from onnx-cle's own plan instead of its calibration, so it runs in onnxruntime's int8
//! kernels (its optimizer fuses `DequantizeLinear → op → QuantizeLinear` into QLinearConv,
//! QLinearAdd, …) and in any QDQ consumer (TensorRT, QNN's ONNX path).
//!
//! Layout (the names follow onnxruntime's quantizer):
//! - weight `W`: int8 initializer `W_quantized` + `W_scale` (scalar, or one per output channel
//!   with `axis`) + `W_zero_point` (zeros) → `DequantizeLinear` → `W`; the float initializer is
//!   gone, every reader of `W` reads the dequantized weight; asymmetric (`uint8`) weights are a
//!   uint8 `W_quantized` with a scalar uint8 zero point;
//! - bias `B`: int32 `B_quantized` with `scale = input scale × weight scale`, zero point 0 →
//!   `DequantizeLinear` → `B` (a bias read by several layers gets one copy per layer);
//! - activation `t`: `t → QuantizeLinear → t_QuantizeLinear_Output → DequantizeLinear →
//!   t_DequantizeLinear_Output`, read by every consumer of `t`; a quantized graph output keeps
//!   its name (the producer's output is renamed);
//! - a folded Relu/Clip ([`crate::quant::plan::ActivationQuant::folded`]) is removed and its
//!   producer writes the activation's name directly;
//! - `metadata_props`: `onnx_cle.int8_target` ([`crate::quant::target::Target::describe`]),
//!   `onnx_cle.int8_ranges`, `onnx_cle.int8_format = qdq`.
//!
//! Invariants: the weights dequantize to exactly what [`crate::quant::sim::plan_model`] simulates (both
//! use [`crate::quant::plan::WeightQuant::dequantized`]'s levels and scales); everything the plan does
//! not name is left as it was. Per-channel `axis` needs opset ≥ 13 (the pipeline raises an older
//! model first, [`crate::graph::opset`]), QDQ itself opset ≥ 10; 16-bit activations below opset
//! 21 use onnxruntime's `com.microsoft` Q/DQ.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::error::{CoreError, Result};
use crate::graph::work::Work;
use crate::graph::GraphIndex;
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{OperatorSetIdProto, StringStringEntryProto};
use crate::onnx::tensor::{self, F32Tensor};
use crate::onnx::{AttributeProto, ModelProto, NodeProto, TensorProto};
use crate::options::ActivationType;
use crate::quant::plan::QuantPlan;

/// Metadata key naming the target.
pub const META_TARGET: &str = "onnx_cle.int8_target";
/// Metadata key naming the activation ranges' source.
pub const META_RANGES: &str = "onnx_cle.int8_ranges";
/// Metadata key naming the format.
pub const META_FORMAT: &str = "onnx_cle.int8_format";

struct Names(HashSet<String>);

impl Names {
    fn fresh(&mut self, base: &str) -> String {
        crate::graph::fresh_name(&mut self.0, base)
    }
}

fn int_tensor(name: &str, dims: &[usize], ty: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(ty as i32),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: Vec<usize>, data: Vec<f32>) -> TensorProto {
    tensor::new_f32(name, &F32Tensor { dims, data })
}

fn node(name: String, op: &str, domain: &str, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        name: Some(name),
        op_type: Some(op.into()),
        domain: (!domain.is_empty()).then(|| domain.to_string()),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

fn axis_attr(axis: usize) -> AttributeProto {
    AttributeProto {
        name: Some("axis".into()),
        i: Some(axis as i64),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

/// Sets `key = value` in the model's `metadata_props` (replacing an earlier value).
pub fn set_metadata(model: &mut ModelProto, key: &str, value: &str) {
    model.metadata_props.retain(|e| e.key() != key);
    model.metadata_props.push(StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    });
}

/// Writes the QDQ model of `plan` for `model` (the FP32 model the plan was made for).
pub fn write(model: &ModelProto, plan: &QuantPlan) -> Result<ModelProto> {
    let opset = crate::onnx::onnx_opset(model).unwrap_or(0);
    if opset < 10 {
        return Err(CoreError::InvalidOptions(format!(
            "the QDQ model needs opset >= 10 (QuantizeLinear); the model declares opset {opset}"
        )));
    }
    let per_channel = plan.weights.iter().any(|w| w.axis.is_some())
        || plan.biases.iter().any(|b| b.scales.len() > 1);
    if per_channel && opset < 13 {
        return Err(CoreError::InvalidOptions(format!(
            "per-channel weights in a QDQ model need opset >= 13 (DequantizeLinear axis); the \
             model declares opset {opset}: use a per-tensor target or re-export the model"
        )));
    }
    // Per activation (mixed precision): the zero point's type and the Q/DQ ops' domain.
    let act_type = |ty: ActivationType| match ty {
        ActivationType::Uint8 => (DataType::Uint8, ""),
        ActivationType::Int8 => (DataType::Int8, ""),
        ActivationType::Uint16 if opset >= 21 => (DataType::Uint16, ""),
        ActivationType::Uint16 => (DataType::Uint16, "com.microsoft"),
    };
    let mut domains: Vec<&str> = Vec::new();
    let mut work = Work::new(model.clone())?;
    let mut m = model.clone();
    let g = m.graph.as_mut().expect("Work::new checked the graph");
    let index = GraphIndex::build(g)?;
    let mut names = Names(HashSet::new());
    for n in &g.node {
        names.0.insert(n.name().to_string());
        names.0.extend(n.input.iter().cloned());
        names.0.extend(n.output.iter().cloned());
    }
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        names.0.insert(v.name().to_string());
    }
    names
        .0
        .extend(g.initializer.iter().map(|t| t.name().to_string()));

    let mut removed: HashSet<usize> = HashSet::new();
    let mut dropped_tensors: HashSet<String> = HashSet::new();
    // Folded Relu/Clip: the producer of its input writes its output.
    let mut attach: HashMap<String, usize> = HashMap::new();
    for a in &plan.activations {
        if let Some(r) = a.folded {
            let x = g.node[r].input.first().cloned().unwrap_or_default();
            if let Some(p) = index.producer(&x) {
                for o in g.node[p].output.iter_mut().filter(|o| **o == x) {
                    *o = a.tensor.clone();
                }
                removed.insert(r);
                dropped_tensors.insert(x);
                attach.insert(a.tensor.clone(), p);
            }
        }
    }

    let mut prelude: Vec<NodeProto> = Vec::new();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut drop_inits: HashSet<String> = HashSet::new();
    for w in &plan.weights {
        let t = work.read(&w.weight).map_err(CoreError::InvalidModel)?;
        let levels = w.levels(&t.data);
        let dims = t.dims.clone();
        let z = w.zero_point();
        let (ty, raw): (_, Vec<u8>) = match w.low {
            Some(_) => (
                DataType::Uint8,
                levels.iter().map(|&l| (l as i32 + z) as u8).collect(),
            ),
            None => (
                DataType::Int8,
                levels.iter().map(|&l| (l as i8) as u8).collect(),
            ),
        };
        prelude.push(dequantized_constant(
            &mut names,
            &mut new_inits,
            &w.weight,
            (&dims, ty, raw, z as u8),
            (&w.scales, w.axis),
            w.weight.clone(),
        ));
        remove_constant(g, &index, &w.weight, &mut drop_inits, &mut removed);
    }
    let mut bias_uses: HashMap<&str, usize> = HashMap::new();
    for b in &plan.biases {
        *bias_uses.entry(b.bias.as_str()).or_default() += 1;
    }
    for b in &plan.biases {
        let t = work.read(&b.bias).map_err(CoreError::InvalidModel)?;
        let dims = t.dims.clone();
        let levels = b.levels(&t.data);
        let raw: Vec<u8> = levels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let axis = (b.scales.len() > 1)
            .then(|| dims.iter().rposition(|&d| d == b.scales.len()).unwrap_or(0));
        let alone = bias_uses[b.bias.as_str()] == 1 && index.use_count(&b.bias) == 1;
        let out = if alone {
            remove_constant(g, &index, &b.bias, &mut drop_inits, &mut removed);
            b.bias.clone()
        } else {
            let out = names.fresh(&format!("{}_dequantized", b.bias));
            if let Some(slot) = g.node[b.node].input.get_mut(2) {
                *slot = out.clone();
            }
            out
        };
        prelude.push(dequantized_constant(
            &mut names,
            &mut new_inits,
            &b.bias,
            (&dims, DataType::Int32, raw, 0),
            (&b.scales, axis),
            out,
        ));
    }
    g.initializer.retain(|t| !drop_inits.contains(t.name()));
    g.input.retain(|v| !drop_inits.contains(v.name()));
    g.initializer.extend(new_inits);

    // Activations.
    let graph_inputs: HashSet<String> = g.input.iter().map(|v| v.name().to_string()).collect();
    let graph_outputs: HashSet<String> = g.output.iter().map(|v| v.name().to_string()).collect();
    let mut after: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut at_start: Vec<NodeProto> = Vec::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    for a in &plan.activations {
        let t = &a.tensor;
        let (zp_type, act_domain) = act_type(a.grid.ty);
        if !act_domain.is_empty() && !domains.contains(&act_domain) {
            domains.push(act_domain);
        }
        let producer = attach.get(t).copied().or_else(|| index.producer(t));
        let s = names.fresh(&format!("{t}_scale"));
        let z = names.fresh(&format!("{t}_zero_point"));
        g.initializer
            .push(f32_tensor(&s, vec![], vec![a.params.scale]));
        let zp = match zp_type {
            DataType::Uint8 => vec![a.params.zero_point as u8],
            DataType::Int8 => vec![(a.params.zero_point as i8) as u8],
            _ => (a.params.zero_point as u16).to_le_bytes().to_vec(),
        };
        g.initializer.push(int_tensor(&z, &[], zp_type, zp));
        let qout = names.fresh(&format!("{t}_QuantizeLinear_Output"));
        let (qin, dqout) = if graph_outputs.contains(t) {
            let inner = names.fresh(&format!("{t}_float"));
            if let Some(p) = producer {
                for o in g.node[p].output.iter_mut().filter(|o| *o == t) {
                    *o = inner.clone();
                }
            }
            (inner, t.clone())
        } else {
            let dq = names.fresh(&format!("{t}_DequantizeLinear_Output"));
            rename.insert(t.clone(), dq.clone());
            (t.clone(), dq)
        };
        let pair = vec![
            node(
                names.fresh(&format!("{t}_QuantizeLinear")),
                "QuantizeLinear",
                act_domain,
                vec![qin, s.clone(), z.clone()],
                qout.clone(),
            ),
            node(
                names.fresh(&format!("{t}_DequantizeLinear")),
                "DequantizeLinear",
                act_domain,
                vec![qout, s, z],
                dqout,
            ),
        ];
        match producer {
            Some(p) => after.entry(p).or_default().extend(pair),
            None if graph_inputs.contains(t) => at_start.extend(pair),
            None => {}
        }
    }
    let rewire = |n: &mut NodeProto| {
        for i in n.input.iter_mut() {
            if let Some(r) = rename.get(i) {
                *i = r.clone();
            }
        }
    };
    let old = std::mem::take(&mut g.node);
    let mut nodes = Vec::with_capacity(old.len() + prelude.len() + 2 * plan.activations.len());
    nodes.extend(prelude);
    nodes.extend(at_start);
    let mut old: Vec<Option<NodeProto>> = old.into_iter().map(Some).collect();
    for &i in index.topo() {
        let Some(mut n) = old[i].take() else { continue };
        if removed.contains(&i) {
            continue;
        }
        rewire(&mut n);
        nodes.push(n);
        nodes.extend(after.remove(&i).unwrap_or_default());
    }
    g.node = nodes;
    g.value_info.retain(|v| !dropped_tensors.contains(v.name()));
    for act_domain in domains {
        if !m.opset_import.iter().any(|o| o.domain() == act_domain) {
            m.opset_import.push(OperatorSetIdProto {
                domain: Some(act_domain.to_string()),
                version: Some(1),
            });
        }
    }
    set_metadata(&mut m, META_TARGET, &plan.target.describe());
    set_metadata(&mut m, META_RANGES, &plan.ranges);
    set_metadata(&mut m, META_FORMAT, "qdq");
    Ok(m)
}

/// The `DequantizeLinear` that computes `out` from a new integer initializer (`raw` bytes of
/// type `ty`, shape `dims`), its scales (one per tensor, or one per channel along `axis`) and
/// zero points 0, named after `base`.
fn dequantized_constant(
    names: &mut Names,
    inits: &mut Vec<TensorProto>,
    base: &str,
    (dims, ty, raw, zero): (&[usize], DataType, Vec<u8>, u8),
    (scales, axis): (&[f32], Option<usize>),
    out: String,
) -> NodeProto {
    let q = names.fresh(&format!("{base}_quantized"));
    let s = names.fresh(&format!("{base}_scale"));
    let z = names.fresh(&format!("{base}_zero_point"));
    let width = match ty {
        DataType::Int32 => 4,
        _ => 1,
    };
    inits.push(int_tensor(&q, dims, ty, raw));
    let sdims = if axis.is_some() {
        vec![scales.len()]
    } else {
        vec![]
    };
    inits.push(f32_tensor(&s, sdims.clone(), scales.to_vec()));
    let mut zeros = vec![0u8; width * scales.len()];
    if let Some(first) = zeros.first_mut() {
        *first = zero;
    }
    inits.push(int_tensor(&z, &sdims, ty, zeros));
    let name = names.fresh(&format!("{base}_DequantizeLinear"));
    let mut dq = node(name, "DequantizeLinear", "", vec![q, s, z], out);
    dq.attribute.extend(axis.map(axis_attr));
    dq
}

/// Removes the float constant `name` (its initializer, graph-input entry or `Constant` node): a
/// `DequantizeLinear` now produces it.
fn remove_constant(
    g: &crate::onnx::GraphProto,
    index: &GraphIndex,
    name: &str,
    drop_inits: &mut HashSet<String>,
    removed: &mut HashSet<usize>,
) {
    if index.initializer(name).is_some() {
        drop_inits.insert(name.to_string());
    } else if let Some(p) = index.producer(name) {
        if g.node[p].op_type() == "Constant" && g.node[p].output.len() == 1 {
            removed.insert(p);
        }
    }
}

/// `model` (a QDQ model) with every activation `QuantizeLinear` / `DequantizeLinear` — input not
/// an initializer, scalar zero point — written out as the float ops of its definition:
/// `q = Max(Min(Round(x / s) + zp, hi), lo)` (`Round` rounds half to even, as `QuantizeLinear`
/// does) and `x̂ = (q − zp) · s`, with `q` a float holding an integer of the quantized type's
/// range. Weights and biases keep their `DequantizeLinear` of an initializer.
///
/// What runs this model runs the QDQ model's exact semantics in float — the figure of
/// onnxruntime with graph optimizations disabled — rather than a runtime's own lowering of the
/// pairs to integer ops (tract's lowering of PP-OCRv4's QDQ model agrees with those semantics
/// only to 17 dB). Below opset 11 (no `Round`) the model is returned as it is.
pub fn as_float_ops(mut m: ModelProto) -> ModelProto {
    if crate::onnx::onnx_opset(&m).is_none_or(|v| v < 11) {
        return m;
    }
    let Some(g) = m.graph.as_mut() else {
        return m;
    };
    let inits: HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    let scalars: HashMap<String, TensorProto> = g
        .initializer
        .iter()
        .filter(|t| t.dims.iter().product::<i64>() == 1)
        .map(|t| (t.name().to_string(), t.clone()))
        .collect();
    let mut names = Names(
        g.node
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .chain(inits.iter().cloned())
            .chain(g.input.iter().map(|v| v.name().to_string()))
            .collect(),
    );
    // The scalar zero point of a Q/DQ node and the range of its integer type.
    let zero_point = |n: &NodeProto| -> Option<(f32, f32, f32)> {
        let Some(z) = n.input.get(2).filter(|z| !z.is_empty()) else {
            return Some((0.0, 0.0, 255.0));
        };
        let t = scalars.get(z)?;
        let (lo, hi) = match DataType::try_from(t.data_type?).ok()? {
            DataType::Uint8 => (0.0, 255.0),
            DataType::Int8 => (-128.0, 127.0),
            DataType::Uint16 => (0.0, 65535.0),
            DataType::Int16 => (-32768.0, 32767.0),
            _ => return None,
        };
        match tensor::int_values(t)?.as_slice() {
            [v] => Some((*v as f32, lo, hi)),
            _ => None,
        }
    };
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut consts = Vec::new();
    let mut floated: HashSet<String> = HashSet::new();
    for n in std::mem::take(&mut g.node) {
        let op = n.op_type();
        let activation = n.input.first().is_some_and(|x| !inits.contains(x));
        let fields = (op == "QuantizeLinear" || op == "DequantizeLinear")
            .then(|| zero_point(&n))
            .flatten();
        let (Some((zp, lo, hi)), true, Some(s)) = (fields, activation, n.input.get(1).cloned())
        else {
            nodes.push(n);
            continue;
        };
        let base = n.name().to_string();
        let mut konst = |tag: &str, v: f32| {
            let name = names.fresh(&format!("{base}_float_{tag}"));
            consts.push(f32_tensor(&name, vec![], vec![v]));
            name
        };
        let z = konst("zero_point", zp);
        let bounds = (op == "QuantizeLinear").then(|| (konst("lo", lo), konst("hi", hi)));
        let out = n.output[0].clone();
        let mut step = |op: &str, inputs: Vec<String>, output: Option<String>| {
            let output = output.unwrap_or_else(|| names.fresh(&format!("{base}_float_{op}")));
            nodes.push(node(
                names.fresh(&format!("{base}_{op}")),
                op,
                "",
                inputs,
                output.clone(),
            ));
            output
        };
        if let Some((l, h)) = bounds {
            let t = step("Div", vec![n.input[0].clone(), s], None);
            let r = step("Round", vec![t], None);
            let a = step("Add", vec![r, z], None);
            let c = step("Min", vec![a, h], None);
            step("Max", vec![c, l], Some(out.clone()));
            floated.insert(out);
        } else {
            let d = step("Sub", vec![n.input[0].clone(), z], None);
            step("Mul", vec![d, s], Some(out));
        }
    }
    g.node = nodes;
    g.initializer.extend(consts);
    g.value_info.retain(|v| !floated.contains(v.name()));
    m
}
