//! ReLU6 handling (cle-spec §3.8).
//!
//! ReLU6 is `Clip(x, 0, 6)` in ONNX: bounds as attributes before opset 11, as optional scalar
//! inputs (initializers or `Constant` nodes) from opset 11. Only an exact Clip(0, 6) counts.
//!
//! Policies:
//! - `exact` (default): CLS may cross the clip. Scaling channel c of its input by `1/s_c` turns
//!   `min(relu(y), 6)` into `min(relu(y/s_c), 6/s_c)`, so [`materialize`] rewrites every crossed
//!   clip as `Clip(x, 0, M) → Min(x, B)` with a `[1, C, 1, …]` bound `B_c = 6/S_c − offset_c`
//!   (S the cumulative divisor, offset what an exact high-bias fold absorbed) and the scalar
//!   `M = max(0, max_c B_c)`: `min(clip(y, 0, M), B_c) = min(relu(y), B_c)` bit for bit, as
//!   `B_c ≤ M`. Same function. The scalar clip is for per-tensor activation quantizers
//!   (onnxruntime's `quantize_static` folds a Clip into its producer's output quantizer and
//!   calibrates it on the Clip's output): the producer's range ends at `M` instead of at the
//!   unclipped maximum. Without a finite `M` the first node is a `Relu`.
//! - `replace`: AIMET's ReLU6 → ReLU (changes the function; reported).
//! - `keep`: the clip stays and ends every chain.
//!
//! With `compat = aimet`, `replace` follows aimet_onnx 2.42 exactly: any Clip whose `min` is 0 and
//! comes from a `Constant` node (or the opset < 11 attribute), between a Conv/ConvTranspose parent
//! and a Conv/ConvTranspose child, becomes `Relu_<name>` whatever its max (AIMET bug 6).

use crate::graph::work::Edits;
use crate::onnx::tensor::F32Tensor;
use crate::onnx::{attr, onnx_opset, NodeProto};
use crate::options::Relu6Policy;
use crate::report::{Relu6Action, Relu6Decision};

use super::Ctx;

/// Where a Clip bound comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// Absent: unbounded on that side.
    Absent,
    /// A known constant; `constant_node` when it is the output of a `Constant` node or the
    /// opset < 11 attribute (the forms AIMET recognises).
    Known {
        /// Value.
        value: f32,
        /// From a Constant node or an attribute.
        constant_node: bool,
    },
    /// Computed at run time.
    Dynamic,
}

impl Bound {
    /// The value when known.
    pub fn value(self) -> Option<f32> {
        match self {
            Bound::Known { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// Reads the min and max of Clip node `i`.
pub fn clip_bounds(cx: &Ctx, i: usize) -> (Bound, Bound) {
    let node = cx.work.node(i);
    let opset = onnx_opset(cx.work.model()).unwrap_or(13);
    if opset < 11 {
        let lo = attr::float(node, "min").map_or(Bound::Absent, |v| Bound::Known {
            value: v,
            constant_node: true,
        });
        let hi = attr::float(node, "max").map_or(Bound::Absent, |v| Bound::Known {
            value: v,
            constant_node: true,
        });
        return (lo, hi);
    }
    let read = |k: usize| -> Bound {
        let name = cx.work.input(i, k);
        if name.is_empty() {
            return Bound::Absent;
        }
        let constant_node = cx
            .work
            .index()
            .producer(name)
            .is_some_and(|p| cx.work.node(p).op_type() == "Constant");
        match cx.work.const_scalar(name) {
            Some(value) => Bound::Known {
                value,
                constant_node,
            },
            None => Bound::Dynamic,
        }
    };
    (read(1), read(2))
}

/// Whether Clip node `i` is exactly Clip(0, 6).
pub fn is_relu6(cx: &Ctx, i: usize) -> bool {
    let n = cx.work.node(i);
    if n.op_type() != "Clip" || !n.domain().is_empty() {
        return false;
    }
    let (lo, hi) = clip_bounds(cx, i);
    lo.value() == Some(0.0) && hi.value() == Some(6.0)
}

fn is_conv(n: &NodeProto) -> bool {
    n.domain().is_empty() && matches!(n.op_type(), "Conv" | "ConvTranspose")
}

/// Applies the ReLU6 policy to every Clip in scope.
pub fn run(cx: &mut Ctx) -> crate::error::Result<()> {
    let policy = cx.opts.relu6;
    let aimet = cx.opts.is_aimet();
    let opset = onnx_opset(cx.work.model()).unwrap_or(13);
    let mut edits = Edits::default();
    let clips: Vec<usize> = cx
        .work
        .index()
        .topo()
        .iter()
        .copied()
        .filter(|&i| {
            let n = cx.work.node(i);
            n.op_type() == "Clip" && n.domain().is_empty() && cx.work.in_scope(i)
        })
        .collect();
    for i in clips {
        let (lo, hi) = clip_bounds(cx, i);
        let exact = lo.value() == Some(0.0) && hi.value() == Some(6.0);
        let label = cx.work.label(i).to_string();
        let decision = |action, reason: String| Relu6Decision {
            node: label.clone(),
            min: lo.value(),
            max: hi.value(),
            action,
            reason,
        };
        let parent = cx
            .work
            .index()
            .producer(cx.work.input(i, 0))
            .map(|p| cx.work.node(p).clone());
        let out = cx.work.out(i).to_string();
        let child = cx
            .work
            .index()
            .consumers(&out)
            .last()
            .map(|&c| cx.work.node(c).clone());
        match policy {
            Relu6Policy::Keep => {
                let reason = if exact {
                    "policy keep: ends any chain".into()
                } else {
                    bounds_text(lo, hi)
                };
                cx.report.relu6.push(decision(Relu6Action::Kept, reason));
            }
            Relu6Policy::Exact => {
                if !exact {
                    cx.report
                        .relu6
                        .push(decision(Relu6Action::Kept, bounds_text(lo, hi)));
                } else if opset < 8 {
                    cx.report.relu6.push(decision(
                        Relu6Action::Kept,
                        "opset < 8 has no broadcasting Min for the exact rewrite".into(),
                    ));
                } else {
                    cx.state.relu6_crossable.insert(label.clone(), ());
                }
            }
            Relu6Policy::Replace => {
                let (eligible, reason) = if aimet {
                    let min_ok =
                        matches!(lo, Bound::Known { value, constant_node: true } if value == 0.0);
                    let around =
                        parent.as_ref().is_some_and(is_conv) && child.as_ref().is_some_and(is_conv);
                    if !min_ok {
                        let why = match lo {
                            Bound::Known { value: 0.0, .. } => {
                                "aimet_onnx 2.42 only recognises min from a Constant node (bug 6): kept".to_string()
                            }
                            _ => bounds_text(lo, hi),
                        };
                        (false, why)
                    } else if !around {
                        (
                            false,
                            "not between two Conv/ConvTranspose (AIMET's rule): kept".into(),
                        )
                    } else if !exact {
                        (true, format!("aimet replaces any Clip with min 0 (max {:?}); changes the function", hi.value()))
                    } else {
                        (
                            true,
                            "ReLU6 replaced by Relu (AIMET); changes the function".into(),
                        )
                    }
                } else {
                    let around = parent.as_ref().is_some_and(crate::graph::is_layer_op)
                        && child
                            .as_ref()
                            .is_some_and(|c| crate::graph::is_layer_op(c) || c.op_type() == "Pad");
                    if !exact {
                        (false, bounds_text(lo, hi))
                    } else if !around {
                        (false, "not between two layers: kept".into())
                    } else {
                        (
                            true,
                            "ReLU6 replaced by Relu (policy replace); changes the function".into(),
                        )
                    }
                };
                if eligible {
                    replace_with_relu(cx, i, aimet, &mut edits);
                    cx.report.function_changed = true;
                    cx.report.function_changes.push(format!(
                        "{label}: Clip({:?}, {:?}) replaced by Relu",
                        lo.value(),
                        hi.value()
                    ));
                    cx.report
                        .relu6
                        .push(decision(Relu6Action::Replaced, reason));
                } else {
                    cx.report.relu6.push(decision(Relu6Action::Kept, reason));
                }
            }
        }
    }
    cx.work.apply(edits)
}

fn bounds_text(lo: Bound, hi: Bound) -> String {
    let show = |b: Bound| match b {
        Bound::Absent => "none".to_string(),
        Bound::Known { value, .. } => format!("{value}"),
        Bound::Dynamic => "computed at run time".to_string(),
    };
    format!(
        "bounds ({}, {}) are not exactly (0, 6): kept",
        show(lo),
        show(hi)
    )
}

/// Removes the `Constant` nodes that fed only node `i`'s inputs `from..`.
fn drop_dead_constants(cx: &mut Ctx, i: usize, from: usize, edits: &mut Edits) {
    let inputs: Vec<String> = cx.work.node(i).input.iter().skip(from).cloned().collect();
    for t in inputs.iter().filter(|t| !t.is_empty()) {
        if let Some(p) = cx.work.index().producer(t) {
            if cx.work.node(p).op_type() == "Constant" && cx.work.index().use_count(t) == 1 {
                edits.remove(p);
            }
        }
    }
}

/// `max(0, max_c B_c)` when every bound is finite (else `None`): the tightest scalar upper clip
/// that leaves `Min(x, B)` exact.
fn outer_bound(bound: &[f32]) -> Option<f32> {
    if bound.iter().any(|b| !b.is_finite()) {
        return None;
    }
    Some(bound.iter().copied().fold(0.0f32, f32::max))
}

fn replace_with_relu(cx: &mut Ctx, i: usize, aimet: bool, edits: &mut Edits) {
    if !aimet {
        drop_dead_constants(cx, i, 1, edits);
    }
    let n = cx.work.node_mut(i);
    n.op_type = Some("Relu".into());
    n.input.truncate(1);
    n.attribute.clear();
    if !n.name().is_empty() {
        n.name = Some(format!("Relu_{}", n.name()));
    }
}

/// Rewrites every crossed Clip(0, 6) whose channels were rescaled as `Clip(x, 0, max B) →
/// Min(x, B)`, and records the decision for every crossable clip. Runs after CLS and HBF.
pub fn materialize(cx: &mut Ctx) -> crate::error::Result<()> {
    if cx.state.relu6_crossable.is_empty() {
        return Ok(());
    }
    let labels = cx.label_map();
    let mut crossable: Vec<(usize, String)> = cx
        .state
        .relu6_crossable
        .keys()
        .filter_map(|l| labels.get(l).map(|&i| (i, l.clone())))
        .collect();
    crossable.sort();
    let mut edits = Edits::default();
    for (i, label) in crossable {
        let crossed = cx.state.crossed_clips.get(&label).cloned();
        let d = |action, reason: String| Relu6Decision {
            node: label.clone(),
            min: Some(0.0),
            max: Some(6.0),
            action,
            reason,
        };
        match crossed {
            None => cx.report.relu6.push(d(
                Relu6Action::Kept,
                "not between two scaled layers: left as it was".into(),
            )),
            Some(c) if c.is_identity() => cx.report.relu6.push(d(
                Relu6Action::Unchanged,
                "crossed by CLS with all scale factors 1: left as it was".into(),
            )),
            Some(c) => {
                let bound = c.bound();
                let channels = bound.len();
                let upper = outer_bound(&bound);
                let mut dims = vec![1usize; c.rank.max(2)];
                dims[1] = channels;
                let base = format!("{label}.bound");
                let bound_name = cx.work.fresh_name(&base);
                cx.work
                    .add_initializer(&bound_name, F32Tensor { dims, data: bound });
                drop_dead_constants(cx, i, 1, &mut edits);
                let out = cx.work.out(i).to_string();
                let mid = cx.work.fresh_name(&format!("{out}_relu"));
                let min_name = cx.work.fresh_name(&format!("{label}_min"));
                let opset = onnx_opset(cx.work.model()).unwrap_or(13);
                let clip_inputs = match upper {
                    Some(hi) if opset >= 11 => {
                        let lo_name = cx.work.fresh_name(&format!("{label}.lo"));
                        let hi_name = cx.work.fresh_name(&format!("{label}.hi"));
                        cx.work.add_initializer(
                            &lo_name,
                            F32Tensor {
                                dims: vec![],
                                data: vec![0.0],
                            },
                        );
                        cx.work.add_initializer(
                            &hi_name,
                            F32Tensor {
                                dims: vec![],
                                data: vec![hi],
                            },
                        );
                        Some(vec![lo_name, hi_name])
                    }
                    _ => None,
                };
                let n = cx.work.node_mut(i);
                n.input.truncate(1);
                n.attribute.clear();
                match (upper, clip_inputs) {
                    (Some(_), Some(bounds)) => {
                        n.op_type = Some("Clip".into());
                        n.input.extend(bounds);
                    }
                    (Some(hi), None) => {
                        n.op_type = Some("Clip".into());
                        attr::set_float(n, "min", 0.0);
                        attr::set_float(n, "max", hi);
                    }
                    (None, _) => n.op_type = Some("Relu".into()),
                }
                n.output = vec![mid.clone()];
                edits.insert_after(
                    i,
                    NodeProto {
                        name: Some(min_name),
                        op_type: Some("Min".into()),
                        input: vec![mid, bound_name],
                        output: vec![out],
                        ..Default::default()
                    },
                );
                cx.report.relu6.push(d(
                    Relu6Action::RewrittenExact,
                    format!(
                        "crossed by CLS: Clip(0, max bound) + per-channel Min over {channels} \
                         channels (exact)"
                    ),
                ));
            }
        }
    }
    cx.work.apply(edits)
}
