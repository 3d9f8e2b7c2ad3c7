//! Raising a model's default-domain opset to 13, exactly (the same function), so that a QDQ
//! model can carry per-channel `DequantizeLinear(axis)`.
//!
//! A node of opset `from` runs the newest version of its op at or below `from`; after the
//! upgrade it runs the newest at or below 13. [`SINCE`] lists the versions of every op that has
//! one between 8 and 13 (from `onnx.defs` of onnx 1.23.2). For each version a node crosses:
//! - most add types (bfloat16, integers), negative axes or optional attributes whose defaults
//!   keep the old meaning: the node stays as it is;
//! - some move attributes to inputs or change meaning: the node is rewritten to compute the same
//!   values (`Softmax`/`LogSoftmax`/`Hardmax` < 13 coerce to 2-D at `axis`: kept with an
//!   explicit axis when it is the last one, else `Flatten(axis) → op(axis = -1) → Reshape` to
//!   the input's shape; `Split`/`Squeeze`/`Unsqueeze`/`ReduceSum` < 13, `Slice`/`TopK` < 10,
//!   `Clip`/`Pad` < 11: attributes become constant inputs; `Dropout` < 12 loses `ratio` (an
//!   identity at inference); `BatchNormalization` < 9 loses `spatial = 1`; `Upsample` and
//!   `Resize` 10 become `Resize` 13 with `coordinate_transformation_mode = asymmetric` and
//!   `nearest_mode = floor` (nearest needs constant scales ≥ 1, where floor is their rule);
//!   `Scatter` becomes `ScatterElements`);
//! - the rest cannot be upgraded exactly (`Scan` 8, `Dropout` whose mask is read,
//!   `ConvTranspose` < 11 with `auto_pad = SAME_*`, whose odd padding moved ends in 11, …): the
//!   whole upgrade is refused, naming each such node.
//!
//! Invariants: only the rewritten nodes change (plus the new constant initializers they read,
//! the default-domain `opset_import` and an `ir_version` below 7 raised to 7); node order stays
//! topological; bodies of `If`/`Loop`/`Scan` are never edited (a body node that would need a
//! rewrite refuses the upgrade); models below opset 7 and models with local functions are
//! refused.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::tensor::{self, F32Tensor};
use crate::onnx::{attr, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// The opset the upgrade reaches.
pub const TARGET: i64 = 13;

/// The oldest opset the upgrade starts from.
pub const OLDEST: i64 = 7;

/// Default-domain ops with a version between 8 and 13, and all their versions up to 13.
pub const SINCE: &[(&str, &[i64])] = &[
    ("Abs", &[1, 6, 13]),
    ("Acosh", &[9]),
    ("Add", &[1, 6, 7, 13]),
    ("ArgMax", &[1, 11, 12, 13]),
    ("ArgMin", &[1, 11, 12, 13]),
    ("Asinh", &[9]),
    ("Atanh", &[9]),
    ("AveragePool", &[1, 7, 10, 11]),
    ("BatchNormalization", &[1, 6, 7, 9]),
    ("BitShift", &[11]),
    ("Cast", &[1, 6, 9, 13]),
    ("Ceil", &[1, 6, 13]),
    ("Celu", &[12]),
    ("Clip", &[1, 6, 11, 12, 13]),
    ("Compress", &[9, 11]),
    ("Concat", &[1, 4, 11, 13]),
    ("ConcatFromSequence", &[11]),
    ("Constant", &[1, 9, 11, 12, 13]),
    ("ConstantOfShape", &[9]),
    ("Conv", &[1, 11]),
    ("ConvInteger", &[10]),
    ("ConvTranspose", &[1, 11]),
    ("Cosh", &[9]),
    ("CumSum", &[11]),
    ("DepthToSpace", &[1, 11, 13]),
    ("DequantizeLinear", &[10, 13]),
    ("Det", &[11]),
    ("Div", &[1, 6, 7, 13]),
    ("Dropout", &[1, 6, 7, 10, 12, 13]),
    ("DynamicQuantizeLinear", &[11]),
    ("Einsum", &[12]),
    ("Equal", &[1, 7, 11, 13]),
    ("Erf", &[9, 13]),
    ("Exp", &[1, 6, 13]),
    ("Expand", &[8, 13]),
    ("EyeLike", &[9]),
    ("Flatten", &[1, 9, 11, 13]),
    ("Floor", &[1, 6, 13]),
    ("Gather", &[1, 11, 13]),
    ("GatherElements", &[11, 13]),
    ("GatherND", &[11, 12, 13]),
    ("Gemm", &[1, 6, 7, 9, 11, 13]),
    ("Greater", &[1, 7, 9, 13]),
    ("GreaterOrEqual", &[12]),
    ("Hardmax", &[1, 11, 13]),
    ("Identity", &[1, 13]),
    ("If", &[1, 11, 13]),
    ("IsInf", &[10]),
    ("IsNaN", &[9, 13]),
    ("LRN", &[1, 13]),
    ("Less", &[1, 7, 9, 13]),
    ("LessOrEqual", &[12]),
    ("Log", &[1, 6, 13]),
    ("LogSoftmax", &[1, 11, 13]),
    ("Loop", &[1, 11, 13]),
    ("LpPool", &[1, 2, 11]),
    ("MatMul", &[1, 9, 13]),
    ("MatMulInteger", &[10]),
    ("Max", &[1, 6, 8, 12, 13]),
    ("MaxPool", &[1, 8, 10, 11, 12]),
    ("MaxUnpool", &[9, 11]),
    ("Mean", &[1, 6, 8, 13]),
    ("MeanVarianceNormalization", &[9, 13]),
    ("Min", &[1, 6, 8, 12, 13]),
    ("Mod", &[10, 13]),
    ("Mul", &[1, 6, 7, 13]),
    ("Neg", &[1, 6, 13]),
    ("NegativeLogLikelihoodLoss", &[12, 13]),
    ("NonMaxSuppression", &[10, 11]),
    ("NonZero", &[9, 13]),
    ("OneHot", &[9, 11]),
    ("PRelu", &[1, 6, 7, 9]),
    ("Pad", &[1, 2, 11, 13]),
    ("Pow", &[1, 7, 12, 13]),
    ("QLinearConv", &[10]),
    ("QLinearMatMul", &[10]),
    ("QuantizeLinear", &[10, 13]),
    ("Range", &[11]),
    ("Reciprocal", &[1, 6, 13]),
    ("ReduceL1", &[1, 11, 13]),
    ("ReduceL2", &[1, 11, 13]),
    ("ReduceLogSum", &[1, 11, 13]),
    ("ReduceLogSumExp", &[1, 11, 13]),
    ("ReduceMax", &[1, 11, 12, 13]),
    ("ReduceMean", &[1, 11, 13]),
    ("ReduceMin", &[1, 11, 12, 13]),
    ("ReduceProd", &[1, 11, 13]),
    ("ReduceSum", &[1, 11, 13]),
    ("ReduceSumSquare", &[1, 11, 13]),
    ("Relu", &[1, 6, 13]),
    ("Reshape", &[1, 5, 13]),
    ("Resize", &[10, 11, 13]),
    ("ReverseSequence", &[10]),
    ("RoiAlign", &[10]),
    ("Round", &[11]),
    ("Scan", &[8, 9, 11]),
    ("Scatter", &[9, 11]),
    ("ScatterElements", &[11, 13]),
    ("ScatterND", &[11, 13]),
    ("SequenceAt", &[11]),
    ("SequenceConstruct", &[11]),
    ("SequenceEmpty", &[11]),
    ("SequenceErase", &[11]),
    ("SequenceInsert", &[11]),
    ("SequenceLength", &[11]),
    ("Shape", &[1, 13]),
    ("Shrink", &[9]),
    ("Sigmoid", &[1, 6, 13]),
    ("Sign", &[9, 13]),
    ("Sinh", &[9]),
    ("Size", &[1, 13]),
    ("Slice", &[1, 10, 11, 13]),
    ("Softmax", &[1, 11, 13]),
    ("SoftmaxCrossEntropyLoss", &[12, 13]),
    ("SpaceToDepth", &[1, 13]),
    ("Split", &[1, 2, 11, 13]),
    ("SplitToSequence", &[11]),
    ("Sqrt", &[1, 6, 13]),
    ("Squeeze", &[1, 11, 13]),
    ("StringNormalizer", &[10]),
    ("Sub", &[1, 6, 7, 13]),
    ("Sum", &[1, 6, 8, 13]),
    ("Tanh", &[1, 6, 13]),
    ("TfIdfVectorizer", &[9]),
    ("ThresholdedRelu", &[10]),
    ("Tile", &[1, 6, 13]),
    ("TopK", &[1, 10, 11]),
    ("Transpose", &[1, 13]),
    ("Unique", &[11]),
    ("Unsqueeze", &[1, 11, 13]),
    ("Upsample", &[1, 7, 9, 10]),
    ("Where", &[9]),
];

/// What the caller's shape and type inference knows of a tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TensorFact {
    /// Rank, when known.
    pub rank: Option<usize>,
    /// Element type (ONNX `DataType` code), when known.
    pub elem_type: Option<i32>,
}

/// An exact upgrade.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The model at [`TARGET`].
    pub model: ModelProto,
    /// The opset it had.
    pub from: i64,
    /// One line per rewritten node: its label and what changed.
    pub changes: Vec<String>,
    /// New tensors that hold exactly the values of an original tensor (`(new, original)`): the
    /// 2-D views around a rewritten `Softmax`.
    pub aliases: Vec<(String, String)>,
}

/// Nodes whose op cannot be brought to opset 13 with the same function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot raise the opset from {from} to 13 exactly: {}", .nodes.join("; "))]
pub struct Refused {
    /// The opset the model declares.
    pub from: i64,
    /// `label (op version): reason`, one per node.
    pub nodes: Vec<String>,
}

fn versions(op: &str) -> Option<&'static [i64]> {
    SINCE.iter().find(|(o, _)| *o == op).map(|(_, v)| *v)
}

fn resolved(vs: &[i64], opset: i64) -> Option<i64> {
    vs.iter().copied().filter(|&v| v <= opset).max()
}

/// What crossing version `v` of `op` means for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bump {
    /// Same meaning for every node valid before.
    Same,
    /// The node is rewritten ([`rewrite`]).
    Rewrite,
    /// Cannot be done exactly.
    Refuse(&'static str),
}

fn bump(op: &str, v: i64) -> Bump {
    use Bump::*;
    match (op, v) {
        ("Softmax" | "LogSoftmax" | "Hardmax", 13) => Rewrite,
        ("Split" | "Squeeze" | "Unsqueeze" | "ReduceSum", 13) => Rewrite,
        ("Clip" | "Pad", 11) => Rewrite,
        ("Slice" | "TopK", 10) => Rewrite,
        ("Dropout", 10 | 12) => Rewrite,
        ("BatchNormalization", 9) => Rewrite,
        ("Upsample", 9 | 10) | ("Resize", 11) => Rewrite,
        ("Scatter", 11) => Rewrite,
        ("Scan", 9) => Refuse("Scan 9 dropped the batch axis of Scan 8"),
        ("NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss", _) => {
            Refuse("training loss, not checked")
        }
        _ => Same,
    }
}

/// The node's fate: `None` unchanged, `Some(Ok(old))` to rewrite from version `old`,
/// `Some(Err(reason))` refused.
fn fate(n: &NodeProto, from: i64) -> Option<Result<i64, String>> {
    if !(n.domain().is_empty() || n.domain() == "ai.onnx") {
        return None;
    }
    let vs = versions(n.op_type())?;
    let new = resolved(vs, TARGET)?;
    let Some(old) = resolved(vs, from) else {
        return Some(Err(format!(
            "{} does not exist at opset {from}",
            n.op_type()
        )));
    };
    // Scatter is deprecated from 11 on: onnxruntime runs it only below 13.
    if old == new && !(n.op_type() == "Scatter" && old >= 11) {
        return None;
    }
    if n.op_type() == "ConvTranspose"
        && old < 11
        && attr::string(n, "auto_pad").is_some_and(|p| p.starts_with("SAME"))
    {
        return Some(Err(
            "ConvTranspose 11 swapped where SAME_UPPER/SAME_LOWER put the odd padding".into(),
        ));
    }
    let mut rewrite = n.op_type() == "Scatter";
    for &v in vs.iter().filter(|&&v| v > old && v <= new) {
        match bump(n.op_type(), v) {
            Bump::Same => {}
            Bump::Rewrite => rewrite = true,
            Bump::Refuse(why) => return Some(Err(why.to_string())),
        }
    }
    rewrite.then_some(Ok(old))
}

fn label(n: &NodeProto, i: usize) -> String {
    if n.name().is_empty() {
        format!("{} #{i}", n.op_type())
    } else {
        n.name().to_string()
    }
}

/// Body nodes (of `If`/`Loop`/`Scan`) that would need a rewrite or cannot be upgraded.
fn body_problems(g: &GraphProto, from: i64, out: &mut Vec<String>) {
    for (i, n) in g.node.iter().enumerate() {
        if let Some(f) = fate(n, from) {
            let why = match f {
                Ok(_) => "needs a rewrite inside a subgraph (not done)".to_string(),
                Err(e) => e,
            };
            out.push(format!(
                "{} ({}, in a subgraph): {why}",
                label(n, i),
                n.op_type()
            ));
        }
        for a in &n.attribute {
            for b in a.g.iter().chain(&a.graphs) {
                body_problems(b, from, out);
            }
        }
    }
}

fn all_names(g: &GraphProto, names: &mut HashSet<String>) {
    for n in &g.node {
        names.insert(n.name().to_string());
        names.extend(n.input.iter().cloned());
        names.extend(n.output.iter().cloned());
        for a in &n.attribute {
            for b in a.g.iter().chain(&a.graphs) {
                all_names(b, names);
            }
        }
    }
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        names.insert(v.name().to_string());
    }
    names.extend(g.initializer.iter().map(|t| t.name().to_string()));
}

struct Ctx<'a> {
    names: HashSet<String>,
    facts: &'a HashMap<String, TensorFact>,
    consts: HashMap<String, TensorProto>,
    inits: Vec<TensorProto>,
    aliases: Vec<(String, String)>,
}

impl Ctx<'_> {
    fn fresh(&mut self, base: &str) -> String {
        super::fresh_name(&mut self.names, base)
    }

    fn ints(&mut self, base: &str, values: &[i64]) -> String {
        let name = self.fresh(base);
        self.inits.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(Bytes::from(
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )),
            ..Default::default()
        });
        name
    }

    fn floats(&mut self, base: &str, dims: Vec<usize>, data: Vec<f32>) -> String {
        let name = self.fresh(base);
        self.inits
            .push(tensor::new_f32(&name, &F32Tensor { dims, data }));
        name
    }

    fn is_f32(&self, tensor: &str) -> bool {
        self.facts.get(tensor).and_then(|f| f.elem_type) == Some(DataType::Float as i32)
    }

    fn rank(&self, tensor: &str) -> Option<usize> {
        self.facts.get(tensor).and_then(|f| f.rank)
    }

    fn const_f32(&self, tensor: &str) -> Option<Vec<f32>> {
        tensor::to_f32(self.consts.get(tensor)?)
            .ok()
            .map(|t| t.data)
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(Bytes::from(v.as_bytes().to_vec())),
        r#type: Some(AttributeType::String as i32),
        ..Default::default()
    }
}

fn take_attr(n: &mut NodeProto, name: &str) -> Option<AttributeProto> {
    let k = n.attribute.iter().position(|a| a.name() == name)?;
    Some(n.attribute.remove(k))
}

fn set_attr(n: &mut NodeProto, a: AttributeProto) {
    n.attribute.retain(|x| x.name() != a.name());
    n.attribute.push(a);
}

/// Sets input `k`, padding with empty (absent) inputs.
fn set_input(n: &mut NodeProto, k: usize, name: String) {
    while n.input.len() <= k {
        n.input.push(String::new());
    }
    n.input[k] = name;
}

/// The nodes that replace `n` (which runs version `old`), and the line for the report (empty when
/// the node needs no change).
fn rewrite(
    cx: &mut Ctx,
    mut n: NodeProto,
    old: i64,
    uses: &dyn Fn(&str) -> bool,
) -> Result<(Vec<NodeProto>, String), String> {
    let op = n.op_type().to_string();
    let base = if n.name().is_empty() {
        n.output.first().cloned().unwrap_or_else(|| op.clone())
    } else {
        n.name().to_string()
    };
    let x = n.input.first().cloned().unwrap_or_default();
    match op.as_str() {
        "Softmax" | "LogSoftmax" | "Hardmax" => {
            let axis = attr::int(&n, "axis").unwrap_or(1);
            if let Some(r) = cx.rank(&x) {
                let a = if axis < 0 { axis + r as i64 } else { axis };
                if a == r as i64 - 1 {
                    set_attr(&mut n, int_attr("axis", axis));
                    return Ok((
                        vec![n],
                        format!("axis {axis} is the last of rank {r}: made explicit"),
                    ));
                }
            }
            let y = n.output.first().cloned().unwrap_or_default();
            let xf = cx.fresh(&format!("{x}_2d"));
            let yf = cx.fresh(&format!("{y}_2d"));
            let shape = cx.fresh(&format!("{x}_shape"));
            let flatten = NodeProto {
                name: Some(cx.fresh(&format!("{base}_flatten"))),
                op_type: Some("Flatten".into()),
                input: vec![x.clone()],
                output: vec![xf.clone()],
                attribute: vec![int_attr("axis", axis)],
                ..Default::default()
            };
            let shape_node = NodeProto {
                name: Some(cx.fresh(&format!("{base}_shape"))),
                op_type: Some("Shape".into()),
                input: vec![x.clone()],
                output: vec![shape.clone()],
                ..Default::default()
            };
            let reshape = NodeProto {
                name: Some(cx.fresh(&format!("{base}_reshape"))),
                op_type: Some("Reshape".into()),
                input: vec![yf.clone(), shape],
                output: vec![y.clone()],
                ..Default::default()
            };
            n.input[0] = xf.clone();
            n.output[0] = yf.clone();
            set_attr(&mut n, int_attr("axis", -1));
            cx.aliases.push((xf, x));
            cx.aliases.push((yf, y));
            Ok((
                vec![flatten, shape_node, n, reshape],
                format!("axis {axis} (2-D coercion): Flatten → {op}(axis -1) → Reshape"),
            ))
        }
        "Split" => match take_attr(&mut n, "split") {
            Some(a) => {
                let s = cx.ints(&format!("{base}_split"), &a.ints);
                set_input(&mut n, 1, s);
                Ok((vec![n], "`split` attribute → input".into()))
            }
            None => Ok((vec![n], String::new())),
        },
        "Squeeze" | "Unsqueeze" | "ReduceSum" => match take_attr(&mut n, "axes") {
            Some(a) => {
                let s = cx.ints(&format!("{base}_axes"), &a.ints);
                set_input(&mut n, 1, s);
                Ok((vec![n], "`axes` attribute → input".into()))
            }
            None if op == "Unsqueeze" => Err("Unsqueeze without axes".into()),
            None => Ok((vec![n], String::new())),
        },
        "Slice" => {
            let starts = take_attr(&mut n, "starts").ok_or("Slice without starts")?;
            let ends = take_attr(&mut n, "ends").ok_or("Slice without ends")?;
            let s = cx.ints(&format!("{base}_starts"), &starts.ints);
            let e = cx.ints(&format!("{base}_ends"), &ends.ints);
            set_input(&mut n, 1, s);
            set_input(&mut n, 2, e);
            if let Some(axes) = take_attr(&mut n, "axes") {
                let a = cx.ints(&format!("{base}_axes"), &axes.ints);
                set_input(&mut n, 3, a);
            }
            Ok((vec![n], "`starts`/`ends`/`axes` attributes → inputs".into()))
        }
        "TopK" => {
            let k = take_attr(&mut n, "k").ok_or("TopK without k")?;
            let s = cx.ints(&format!("{base}_k"), &[k.i()]);
            set_input(&mut n, 1, s);
            Ok((vec![n], "`k` attribute → input".into()))
        }
        "Clip" => {
            if !cx.is_f32(&x) {
                return Err("the input's type is not known to be float32".into());
            }
            let lo = take_attr(&mut n, "min").map_or(f32::MIN, |a| a.f());
            let hi = take_attr(&mut n, "max").map_or(f32::MAX, |a| a.f());
            let a = cx.floats(&format!("{base}_min"), vec![], vec![lo]);
            let b = cx.floats(&format!("{base}_max"), vec![], vec![hi]);
            n.input.truncate(1);
            set_input(&mut n, 1, a);
            set_input(&mut n, 2, b);
            Ok((
                vec![n],
                format!("`min`/`max` attributes → inputs ({lo}, {hi})"),
            ))
        }
        "Pad" => {
            let pads = take_attr(&mut n, "pads").ok_or("Pad without pads")?;
            let value = take_attr(&mut n, "value").map_or(0.0, |a| a.f());
            let mode = attr::string(&n, "mode").unwrap_or_else(|| "constant".into());
            let p = cx.ints(&format!("{base}_pads"), &pads.ints);
            set_input(&mut n, 1, p);
            if mode == "constant" && value != 0.0 {
                if !cx.is_f32(&x) {
                    return Err("the input's type is not known to be float32".into());
                }
                let v = cx.floats(&format!("{base}_value"), vec![], vec![value]);
                set_input(&mut n, 2, v);
            }
            Ok((vec![n], "`pads`/`value` attributes → inputs".into()))
        }
        "Dropout" => {
            if let Some(mask) = n.output.get(1).filter(|m| !m.is_empty()) {
                if uses(mask) {
                    return Err("its mask output is read".into());
                }
            }
            n.output.truncate(1);
            take_attr(&mut n, "ratio");
            take_attr(&mut n, "is_test");
            Ok((
                vec![n],
                "`ratio` attribute and unread mask dropped (inference identity)".into(),
            ))
        }
        "BatchNormalization" => match take_attr(&mut n, "spatial") {
            Some(a) if a.i() != 1 => Err("spatial = 0 (per-element statistics)".into()),
            _ => Ok((
                vec![n],
                "`spatial` attribute dropped (1 is the only meaning left)".into(),
            )),
        },
        "Upsample" | "Resize" => {
            let mode = attr::string(&n, "mode").unwrap_or_else(|| "nearest".into());
            let scales = match take_attr(&mut n, "scales") {
                Some(a) if n.input.len() < 2 => {
                    let s = a.floats.clone();
                    let name = cx.floats(&format!("{base}_scales"), vec![s.len()], s);
                    n.input.push(name);
                    n.input[1].clone()
                }
                _ => n.input.get(1).cloned().ok_or("no scales")?,
            };
            match mode.as_str() {
                "nearest" => {
                    let s = cx
                        .const_f32(&scales)
                        .ok_or("nearest with computed scales")?;
                    if s.iter().any(|&v| v.is_nan() || v < 1.0) {
                        return Err("nearest with a scale below 1".into());
                    }
                    set_attr(&mut n, string_attr("nearest_mode", "floor"));
                }
                "linear" => {}
                _ => return Err(format!("mode {mode}")),
            }
            set_attr(
                &mut n,
                string_attr("coordinate_transformation_mode", "asymmetric"),
            );
            n.input = vec![x, String::new(), scales];
            n.op_type = Some("Resize".into());
            Ok((
                vec![n],
                format!("{op} {old} → Resize 13 ({mode}, asymmetric coordinates)"),
            ))
        }
        "Scatter" => {
            n.op_type = Some("ScatterElements".into());
            Ok((
                vec![n],
                "Scatter → ScatterElements (same op, renamed)".into(),
            ))
        }
        _ => Err("no rewrite known".into()),
    }
}

/// Brings `model`'s default-domain opset to [`TARGET`], rewriting the nodes whose op changed
/// meaning or signature on the way; `facts` (by tensor name, possibly empty) tells ranks and
/// element types where the caller knows them. A model already at or above 13 is returned as
/// it is (no changes).
pub fn upgrade(
    model: &ModelProto,
    facts: &HashMap<String, TensorFact>,
) -> Result<Upgrade, Refused> {
    let from = crate::onnx::onnx_opset(model).unwrap_or(0);
    let refuse = |nodes: Vec<String>| Refused { from, nodes };
    let mut m = model.clone();
    if from >= TARGET {
        return Ok(Upgrade {
            model: m,
            from,
            changes: vec![],
            aliases: vec![],
        });
    }
    if from < OLDEST {
        return Err(refuse(vec![format!("opset {from} is below {OLDEST}")]));
    }
    if !m.functions.is_empty() {
        return Err(refuse(vec![
            "model-local functions declare their own opsets (not upgraded)".into(),
        ]));
    }
    let Some(g) = m.graph.as_mut() else {
        return Err(refuse(vec!["no graph".into()]));
    };
    let mut problems = Vec::new();
    let mut plan: Vec<Option<i64>> = Vec::with_capacity(g.node.len());
    for (i, n) in g.node.iter().enumerate() {
        match fate(n, from) {
            Some(Ok(old)) => plan.push(Some(old)),
            Some(Err(why)) => {
                problems.push(format!("{} ({}): {why}", label(n, i), n.op_type()));
                plan.push(None);
            }
            None => plan.push(None),
        }
        for a in &n.attribute {
            for b in a.g.iter().chain(&a.graphs) {
                body_problems(b, from, &mut problems);
            }
        }
    }
    if !problems.is_empty() {
        return Err(refuse(problems));
    }
    let mut names = HashSet::new();
    all_names(g, &mut names);
    let mut consts: HashMap<String, TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.clone()))
        .collect();
    for n in &g.node {
        if n.op_type() == "Constant" && n.output.len() == 1 {
            if let Some(t) = attr::get(n, "value").and_then(|a| a.t.clone()) {
                consts.insert(n.output[0].clone(), t);
            }
        }
    }
    let mut read: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    read.extend(g.output.iter().map(|v| v.name().to_string()));
    let mut cx = Ctx {
        names,
        facts,
        consts,
        inits: Vec::new(),
        aliases: Vec::new(),
    };
    let mut changes = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    let old_nodes = std::mem::take(&mut g.node);
    let mut nodes = Vec::with_capacity(old_nodes.len());
    for (i, (n, p)) in old_nodes.into_iter().zip(plan).enumerate() {
        let Some(old) = p else {
            nodes.push(n);
            continue;
        };
        let l = label(&n, i);
        let op = n.op_type().to_string();
        let before: Vec<String> = n.output.clone();
        match rewrite(&mut cx, n, old, &|t| read.contains(t)) {
            Ok((new, what)) => {
                let after: HashSet<&String> = new.iter().flat_map(|x| &x.output).collect();
                dropped.extend(
                    before
                        .into_iter()
                        .filter(|o| !o.is_empty() && !after.contains(o)),
                );
                if !what.is_empty() {
                    changes.push(format!("{l} ({op} {old}): {what}"));
                }
                nodes.extend(new);
            }
            Err(why) => problems.push(format!("{l} ({op} {old}): {why}")),
        }
    }
    if !problems.is_empty() {
        return Err(refuse(problems));
    }
    g.node = nodes;
    g.initializer.extend(cx.inits);
    g.value_info
        .retain(|v| !dropped.contains(&v.name().to_string()));
    for o in m.opset_import.iter_mut() {
        if o.domain().is_empty() || o.domain() == "ai.onnx" {
            o.version = Some(TARGET);
        }
    }
    if m.ir_version() < 7 {
        m.ir_version = Some(7);
    }
    Ok(Upgrade {
        model: m,
        from,
        changes,
        aliases: cx.aliases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::OperatorSetIdProto;

    fn model(opset: i64, nodes: Vec<NodeProto>) -> ModelProto {
        ModelProto {
            ir_version: Some(6),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                node: nodes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, name: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            name: Some(name.into()),
            input: vec!["x".into()],
            output: vec![format!("{name}_y")],
            attribute: attrs,
            ..Default::default()
        }
    }

    #[test]
    fn the_version_each_node_runs_decides() {
        let relu = node("Relu", "r", vec![]);
        let sm = node("Softmax", "s", vec![int_attr("axis", 1)]);
        assert_eq!(fate(&relu, 11), None, "Relu 6 → 13 only adds types");
        assert_eq!(fate(&sm, 11), Some(Ok(11)));
        assert_eq!(fate(&sm, 13), None);
        let ct = node(
            "ConvTranspose",
            "ct",
            vec![string_attr("auto_pad", "SAME_UPPER")],
        );
        assert!(matches!(fate(&ct, 10), Some(Err(_))));
        assert_eq!(fate(&ct, 11), None);
        assert_eq!(fate(&node("ConvTranspose", "ct", vec![]), 10), None);
        let scan = node("Scan", "scan", vec![]);
        assert!(matches!(fate(&scan, 8), Some(Err(_))));
        assert_eq!(
            fate(&scan, 9),
            None,
            "Scan 9 → 11 only allows negative axes"
        );
    }

    #[test]
    fn softmax_on_a_known_last_axis_keeps_its_node() {
        let m = model(11, vec![node("Softmax", "s", vec![])]);
        let facts = HashMap::from([(
            "x".to_string(),
            TensorFact {
                rank: Some(2),
                elem_type: Some(DataType::Float as i32),
            },
        )]);
        let u = upgrade(&m, &facts).unwrap();
        let g = u.model.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 1);
        assert_eq!(attr::int(&g.node[0], "axis"), Some(1));
        assert_eq!(
            (u.model.ir_version(), crate::onnx::onnx_opset(&u.model)),
            (7, Some(13))
        );
        // Unknown rank: the 2-D view, exact for any rank.
        let u = upgrade(&m, &HashMap::new()).unwrap();
        let ops: Vec<&str> = u
            .model
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type())
            .collect();
        assert_eq!(ops, ["Flatten", "Shape", "Softmax", "Reshape"]);
    }

    #[test]
    fn refusals_name_the_node() {
        let e = upgrade(&model(6, vec![]), &HashMap::new()).unwrap_err();
        assert!(e.nodes[0].contains("below 7"));
        let clip = node("Clip", "c", vec![]);
        let e = upgrade(&model(9, vec![clip]), &HashMap::new()).unwrap_err();
        assert!(e.nodes[0].starts_with("c (Clip 6)"), "{e}");
        let m = model(13, vec![node("Softmax", "s", vec![])]);
        assert!(upgrade(&m, &HashMap::new()).unwrap().changes.is_empty());
    }
}
