//! Cross-layer scaling (Nagel et al. 2019, §4.1; cle-spec §3.3–3.5, §4).
//!
//! Chains: a maximal straight line of layers where every op but the last has exactly one use
//! (graph outputs count) and only scale-equivariant ops lie between layers: `Relu`, `PRelu`
//! (AIMET), and by default also `LeakyRelu`, `Identity`, inference `Dropout`, constant-0 `Pad`
//! that does not pad channels, max/average pooling, `Flatten`/`Reshape` right after a global
//! pool, exact Clip(0, 6) under the `exact` ReLU6 policy, and the `Add` of a MatMul's per-column
//! constant bias (scaled as that layer's bias).
//!
//! Sets: consecutive layers form pairs; Conv → depthwise (multiplier 1) → Conv forms a triple.
//! With `compat = aimet` the split follows aimet_onnx 2.42's state machine (§4.2) and only
//! `Conv`/`ConvTranspose` with an explicit `group` of 1 (or depthwise) take part.
//!
//! Math (f32, AIMET's order): pair `r1 = max|W1[c,…]|`, `r2 = max|W2[:,c,…]|`,
//! `s = r1 / √(r1·r2)`, guard(NaN, ∞, 0 → 1), `W1[c] *= 1/s`, `b1[c] *= 1/s`, `W2[:,c] *= s`
//! (paper eq. 11: both ranges become `√(r1·r2)`). Triple: `P = (r0·r1·r2)^(1/3)`,
//! `s12 = r0/P`, `s23 = P/r2`, `W1 *= s12` then `*= 1/s23`. Sets are applied in chain order;
//! consecutive sets share layers, so later sets see earlier results.
//!
//! Passes: `compat = aimet` runs one pass on the weights in AIMET's order ([`direct_passes`]).
//! The default mode iterates until the stop rule `max |1 − s| < threshold` holds ([`converged`],
//! the paper's "iterate until convergence"): sets that share a layer form a component iterated on
//! its own (an isolated set is exact after one pass), ranges are kept as `fo·fi·max_k|W|` from
//! the kernel maxima ([`crate::graph::layout::WeightLayout::block_maxima`]; a positive factor commutes
//! with the maximum), and every weight is scaled once, by its cumulative factors, at the end.
//!
//! `scaling = noise` (default mode only): once the equal-ranges passes have converged, each pair
//! moves once, in chain order, along the line toward equal activation ranges, as far as the
//! predicted int8 noise of its two weight grids and the activation grid between them says it
//! pays ([`super::noise`]; the activation's statistics are the folded BN's). Any positive
//! per-channel factor keeps the function, so the invariants above hold unchanged.
//!
//! Cost: each weight's ranges are scanned once; layers scaled on both sides also keep their
//! kernel maxima (one value per `(out, in)` block); a pass costs one sweep over those maxima;
//! the weights get one read-modify-write.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::graph::layout::{ChannelEnergy, ChannelKind, ChannelRanges, LayerOp, Side};
use crate::onnx::{attr, NodeProto};
use crate::report::{ClsIteration, ClsKind, ClsPair, ClsSet, PairRanges};

use super::noise::{best_step, bn_sigma, Activation, Grids, Pair};
use super::{guard, CrossedClip, Ctx, ScaledPair};
use crate::graph::{layer_of, Layer};

const PASS: &str = "cls";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Layer,
    Through,
    Stop,
}

#[derive(Debug, Clone)]
enum Class {
    Conv,
    Depthwise,
    Unsupported(&'static str, String),
}

struct Member {
    node: usize,
    through: Vec<usize>,
}

struct Set {
    layers: Vec<Layer>,
    throughs: Vec<Vec<usize>>,
}

/// Exact `(out, in)` ranges of every weight as it currently is. Each scaling recomputes both in
/// the same sweep ([`crate::graph::layout::WeightLayout::scale_out_ranged`]); ranges are maxima, so
/// they do not depend on the order of the sweep and equal a fresh scan bit for bit.
#[derive(Default)]
struct Ranges {
    of: HashMap<String, (Vec<f32>, Vec<f32>)>,
    /// Kernel maxima of deferred weights scaled on both sides, taken with their ranges.
    maxima: HashMap<String, Vec<f32>>,
}

impl Ranges {
    /// The ranges of `layer`'s weight, scanned on first use (empty when it cannot be read).
    /// Call before taking the weight out of the `Work` cache.
    fn of(&mut self, cx: &mut Ctx, layer: &Layer) -> &(Vec<f32>, Vec<f32>) {
        self.of.entry(layer.weight.clone()).or_insert_with(|| {
            if cx.work.defers(&layer.weight) {
                return cx
                    .work
                    .with_value(&layer.weight, |w| layer.layout.ranges(w))
                    .unwrap_or_default();
            }
            cx.work
                .read(&layer.weight)
                .map(|t| layer.layout.ranges(&t.data))
                .unwrap_or_default()
        })
    }

    /// [`Ranges::of`] for every layer of `layers` not scanned yet, in parallel (the first layer
    /// reading a weight gives its layout, as with `of` in the same order). A deferred weight
    /// named in `two_sided` also keeps its kernel maxima, from the same computed value.
    fn scan<'a>(
        &mut self,
        cx: &mut Ctx,
        layers: impl Iterator<Item = &'a Layer>,
        two_sided: &HashSet<String>,
    ) {
        let mut todo: Vec<&Layer> = Vec::new();
        let mut seen = HashSet::new();
        for l in layers {
            if !self.of.contains_key(&l.weight) && seen.insert(l.weight.as_str()) {
                todo.push(l);
            }
        }
        let names: Vec<String> = todo
            .iter()
            .filter(|l| !cx.work.defers(&l.weight))
            .map(|l| l.weight.clone())
            .collect();
        cx.work.prefetch(&names);
        let work = &*cx.work;
        let scanned: Vec<_> = todo
            .par_iter()
            .filter_map(|l| {
                let (r, m) = match work.cached(&l.weight) {
                    Some(t) => (l.layout.ranges(&t.data), None),
                    None if work.defers(&l.weight) => {
                        let two = two_sided.contains(&l.weight);
                        // Row by row where the layout has rows: the value is never whole.
                        if let (Some(mut rr), Some(len)) =
                            (l.layout.row_ranges(two), l.layout.row_len())
                        {
                            if work.with_rows(&l.weight, len, |row| rr.push(row)) {
                                let (r, m) = rr.finish();
                                return Some((l.weight.clone(), r, m));
                            }
                        }
                        work.with_value(&l.weight, |w| {
                            if two_sided.contains(&l.weight) {
                                // The ranges are the maxima's maxima: one sweep for both.
                                let m = l.layout.block_maxima(w);
                                (l.layout.ranges_after(&m, None, None), Some(m))
                            } else {
                                (l.layout.ranges(w), None)
                            }
                        })
                        .ok()?
                    }
                    None => return None,
                };
                Some((l.weight.clone(), r, m))
            })
            .collect();
        for (w, r, m) in scanned {
            if let Some(m) = m {
                self.maxima.insert(w.clone(), m);
            }
            self.of.insert(w, r);
        }
    }

    fn set(&mut self, layer: &Layer, ranges: (Vec<f32>, Vec<f32>)) {
        self.of.insert(layer.weight.clone(), ranges);
    }
}

fn role(cx: &Ctx, i: usize) -> Role {
    let aimet = cx.opts.is_aimet();
    let n = cx.work.node(i);
    if !cx.work.in_scope(i) || !n.domain().is_empty() {
        return Role::Stop;
    }
    match n.op_type() {
        "Conv" | "ConvTranspose" => Role::Layer,
        "Gemm" | "MatMul" if !aimet => Role::Layer,
        "Relu" | "PRelu" => Role::Through,
        "Clip" if cx.state.relu6_crossable.contains_key(cx.work.label(i)) => Role::Through,
        _ if aimet => Role::Stop,
        "LeakyRelu" | "Identity" => Role::Through,
        "Add" if matmul_bias(cx, i).is_some() => Role::Through,
        "Dropout"
            if n.output
                .iter()
                .skip(1)
                .all(|o| o.is_empty() || cx.work.index().use_count(o) == 0) =>
        {
            Role::Through
        }
        "MaxPool" if n.output.len() < 2 || n.output[1].is_empty() => Role::Through,
        "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => Role::Through,
        "Pad" if pad_is_channel_safe(cx, i) => Role::Through,
        "Flatten" | "Reshape" if after_global_pool(cx, i) => Role::Through,
        _ => Role::Stop,
    }
}

/// The constant of `Add(x, b)` when it is the bias of the `MatMul` producing `x`: the MatMul's
/// only use, `b` constant, unshared and one value per output column (`[N]` or `[1, …, 1, N]`).
/// A BN folded into a bias-less MatMul becomes such an Add, and exporters write `Linear` this
/// way. CLS crosses it as part of the layer: the MatMul's output scaling also scales `b`
/// ([`classify`] makes it the layer's bias), which keeps `W·x + b` equivariant.
fn matmul_bias(cx: &Ctx, add: usize) -> Option<String> {
    let n = cx.work.node(add);
    if n.op_type() != "Add" || !n.domain().is_empty() || n.input.len() != 2 {
        return None;
    }
    let p = cx.work.index().producer(&n.input[0])?;
    let m = cx.work.node(p);
    if m.op_type() != "MatMul" || !m.domain().is_empty() || cx.work.sole_consumer(p) != Some(add) {
        return None;
    }
    let b = &n.input[1];
    if !cx.work.is_const(b) || cx.work.is_shared(b) {
        return None;
    }
    let w = cx.work.f32_dims(cx.work.input(p, 1)).ok()?;
    let dims = cx.work.f32_dims(b).ok()?;
    let (&cols, &last) = (w.last()?, dims.last()?);
    (w.len() == 2 && last == cols && dims.iter().rev().skip(1).all(|&d| d == 1)).then(|| b.clone())
}

fn pad_is_channel_safe(cx: &Ctx, i: usize) -> bool {
    let n = cx.work.node(i);
    let mode = attr::string(n, "mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return false;
    }
    let opset = crate::onnx::onnx_opset(cx.work.model()).unwrap_or(13);
    let (pads, value) = if opset < 11 {
        (
            attr::ints(n, "pads").map(<[i64]>::to_vec),
            attr::float(n, "value").unwrap_or(0.0),
        )
    } else {
        if n.input.len() > 3 && !n.input[3].is_empty() {
            return false;
        }
        let value = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(v) => match cx.work.const_scalar(v) {
                Some(v) => v,
                None => return false,
            },
            None => 0.0,
        };
        (
            crate::graph::consteval::ints(cx.work, cx.work.input(i, 1)),
            value,
        )
    };
    let Some(pads) = pads else { return false };
    if value != 0.0 || pads.len() % 2 != 0 || pads.len() < 4 {
        return false;
    }
    let rank = pads.len() / 2;
    pads[1] == 0 && pads[rank + 1] == 0 && pads.iter().all(|&p| p >= 0)
}

fn after_global_pool(cx: &Ctx, i: usize) -> bool {
    let n = cx.work.node(i);
    let Some(p) = cx.work.index().producer(cx.work.input(i, 0)) else {
        return false;
    };
    if !matches!(
        cx.work.node(p).op_type(),
        "GlobalAveragePool" | "GlobalMaxPool"
    ) {
        return false;
    }
    match n.op_type() {
        "Flatten" => attr::int(n, "axis").unwrap_or(1) == 1,
        _ => cx
            .work
            .const_ints(cx.work.input(i, 1))
            .is_some_and(|s| s.len() == 2 && s[0] != -1 || s.len() == 2 && s[1] != -1),
    }
}

/// Whether node `i` is a CLS layer (`Some(true)`), an op chains cross (`Some(false)`), or ends
/// chains (`None`), as the pass sees it now.
pub(crate) fn chain_role(cx: &Ctx, i: usize) -> Option<bool> {
    match role(cx, i) {
        Role::Layer => Some(true),
        Role::Through => Some(false),
        Role::Stop => None,
    }
}

fn next_in_chain(cx: &Ctx, i: usize, roles: &[Role]) -> Option<usize> {
    if roles[i] == Role::Stop {
        return None;
    }
    let c = cx.work.sole_consumer(i)?;
    (roles[c] != Role::Stop && cx.work.input(c, 0) == cx.work.out(i)).then_some(c)
}

/// Layer groups: maximal chains (cle-spec §4.1), layers with the ops between them.
fn find_groups(cx: &Ctx) -> Vec<Vec<Member>> {
    let n = cx.work.node_count();
    let roles: Vec<Role> = (0..n).map(|i| role(cx, i)).collect();
    let next: Vec<Option<usize>> = (0..n).map(|i| next_in_chain(cx, i, &roles)).collect();
    let mut has_pred = vec![false; n];
    for c in next.iter().flatten() {
        has_pred[*c] = true;
    }
    let mut groups = Vec::new();
    for &start in cx.work.index().topo() {
        if roles[start] == Role::Stop || has_pred[start] {
            continue;
        }
        let mut group: Vec<Member> = Vec::new();
        let mut pending = Vec::new();
        let mut cur = Some(start);
        let mut steps = 0;
        while let Some(i) = cur {
            steps += 1;
            if steps > n {
                break;
            }
            if roles[i] == Role::Layer {
                group.push(Member {
                    node: i,
                    through: std::mem::take(&mut pending),
                });
            } else {
                pending.push(i);
            }
            cur = next[i];
        }
        if group.len() > 1 {
            groups.push(group);
        }
    }
    groups
}

fn classify(cx: &mut Ctx, i: usize) -> (Class, Option<Layer>) {
    let aimet = cx.opts.is_aimet();
    let mut layer = match layer_of(cx.work, i) {
        Ok(l) => l,
        Err((code, detail)) => return (Class::Unsupported(code, detail), None),
    };
    if layer.layout.op == LayerOp::MatMul && !aimet {
        layer.bias = cx
            .work
            .sole_consumer(i)
            .and_then(|add| matmul_bias(cx, add));
    }
    let node = cx.work.node(i);
    let kind = layer.layout.kind();
    if aimet {
        let note = |cx: &mut Ctx, what: &str| {
            let note = format!("{}: {what}", cx.work.label(i));
            cx.report.compat_notes.push(note);
        };
        if attr::int(node, "group").is_none() {
            note(
                cx,
                "no explicit `group` attribute, so aimet_onnx 2.42 ignores it for CLS (bug 1, reproduced)",
            );
            let detail = "no explicit group attribute (aimet bug 1)";
            return unsupported("aimet_no_group_attribute", detail.into(), layer);
        }
        if layer.layout.spatial_rank() > 2 {
            return unsupported(
                "unsupported_rank",
                "aimet_onnx 2.42 crashes on Conv3d; skipped".into(),
                layer,
            );
        }
        if layer.layout.op == LayerOp::ConvTranspose && kind != ChannelKind::Dense {
            note(
                cx,
                "grouped/depthwise ConvTranspose left out of CLS (aimet_onnx 2.42 corrupts its weight, bug 2)",
            );
            let detail = "aimet corrupts grouped ConvTranspose weights (bug 2)";
            return unsupported("aimet_grouped_conv_transpose", detail.into(), layer);
        }
        return match kind {
            ChannelKind::Dense => (Class::Conv, Some(layer)),
            ChannelKind::Depthwise => (Class::Depthwise, Some(layer)),
            ChannelKind::Grouped => {
                let detail = format!(
                    "group {} (1 < g < C) is not supported by AIMET",
                    layer.layout.group
                );
                unsupported("grouped_conv", detail, layer)
            }
        };
    }
    match kind {
        ChannelKind::Depthwise => (Class::Depthwise, Some(layer)),
        _ => (Class::Conv, Some(layer)),
    }
}

/// A layer AIMET's CLS would not take, with why.
fn unsupported(code: &'static str, detail: String, layer: Layer) -> (Class, Option<Layer>) {
    (Class::Unsupported(code, detail), Some(layer))
}

fn split_aimet(classes: &[(Class, Option<Layer>)]) -> Vec<Vec<usize>> {
    let mut sets = Vec::new();
    let n = classes.len();
    let is = |k: usize, f: fn(&Class) -> bool| f(&classes[k].0);
    let conv = |c: &Class| matches!(c, Class::Conv);
    let dw = |c: &Class| matches!(c, Class::Depthwise);
    let mut idx = 0;
    let mut first: Option<usize> = None;
    let unsupported =
        |f: Option<usize>| f.is_none_or(|k| matches!(classes[k].0, Class::Unsupported(..)));
    while idx < n {
        while idx < n && unsupported(first) {
            first = Some(idx);
            idx += 1;
        }
        let second = if idx < n {
            idx += 1;
            Some(idx - 1)
        } else {
            None
        };
        let Some(f) = first else { break };
        if unsupported(Some(f)) {
            break;
        }
        if is(f, conv) {
            match second {
                Some(s) if is(s, conv) => {
                    sets.push(vec![f, s]);
                    first = Some(s);
                }
                Some(s) if is(s, dw) => {
                    if idx < n && is(idx, conv) {
                        sets.push(vec![f, s, idx]);
                        first = Some(idx);
                        idx += 1;
                    } else {
                        first = Some(s);
                    }
                }
                _ => first = None,
            }
        } else if is(f, dw) {
            if let Some(s) = second {
                if is(s, conv) {
                    sets.push(vec![f, s]);
                }
            }
            first = second;
        } else {
            first = second;
        }
    }
    sets
}

fn split_default(classes: &[(Class, Option<Layer>)]) -> Vec<Vec<usize>> {
    let mut sets = Vec::new();
    let mut segment: Vec<usize> = Vec::new();
    let flush = |seg: &mut Vec<usize>, sets: &mut Vec<Vec<usize>>| {
        let dw = |k: usize| matches!(classes[k].0, Class::Depthwise);
        let mut i = 0;
        while i + 1 < seg.len() {
            if dw(seg[i + 1]) && i + 2 < seg.len() && !dw(seg[i]) && !dw(seg[i + 2]) {
                sets.push(vec![seg[i], seg[i + 1], seg[i + 2]]);
                i += 2;
            } else {
                sets.push(vec![seg[i], seg[i + 1]]);
                i += 1;
            }
        }
        seg.clear();
    };
    for (k, (c, _)) in classes.iter().enumerate() {
        if matches!(c, Class::Unsupported(..)) {
            flush(&mut segment, &mut sets);
        } else {
            segment.push(k);
        }
    }
    flush(&mut segment, &mut sets);
    sets
}

/// Runs cross-layer scaling over every chain in scope.
pub fn run(cx: &mut Ctx) -> crate::error::Result<()> {
    let groups = find_groups(cx);
    let mut sets: Vec<Set> = Vec::new();
    for group in groups {
        let classes: Vec<(Class, Option<Layer>)> =
            group.iter().map(|m| classify(cx, m.node)).collect();
        for (m, (c, _)) in group.iter().zip(&classes) {
            if let Class::Unsupported(code, detail) = c {
                let label = cx.work.label(m.node).to_string();
                cx.skip(PASS, vec![label], code, detail.clone());
            }
        }
        let split = if cx.opts.is_aimet() {
            split_aimet(&classes)
        } else {
            split_default(&classes)
        };
        for idxs in split {
            let layers: Vec<Layer> = idxs.iter().filter_map(|&k| classes[k].1.clone()).collect();
            if layers.len() != idxs.len() {
                continue;
            }
            let throughs: Vec<Vec<usize>> = idxs
                .iter()
                .skip(1)
                .map(|&k| group[k].through.clone())
                .collect();
            let labels: Vec<String> = layers
                .iter()
                .map(|l| cx.work.label(l.node).to_string())
                .collect();
            if let Some(reason) =
                set_problem(cx, &layers).or_else(|| axis_problem(cx, &layers, &throughs))
            {
                cx.skip(PASS, labels, reason.0, reason.1);
                continue;
            }
            sets.push(Set { layers, throughs });
        }
    }
    report_unpaired(cx, &sets);
    own_members(cx, &mut sets)?;
    let mut ranges = Ranges::default();
    let (mut out_side, mut in_side) = (HashSet::new(), HashSet::new());
    for set in &sets {
        let n = set.layers.len();
        for (p, l) in set.layers.iter().enumerate() {
            if p + 1 < n {
                out_side.insert(l.weight.clone());
            }
            if p > 0 {
                in_side.insert(l.weight.clone());
            }
        }
    }
    let two_sided: HashSet<String> = if cx.opts.is_aimet() {
        HashSet::new()
    } else {
        out_side.intersection(&in_side).cloned().collect()
    };
    ranges.scan(cx, sets.iter().flat_map(|s| s.layers.iter()), &two_sided);
    let before: Vec<Vec<PairRanges>> = sets
        .iter()
        .map(|s| pair_ranges(cx, &mut ranges, s))
        .collect();
    let mut cumulative: Vec<Vec<Vec<f32>>> = sets
        .iter()
        .map(|s| {
            s.layers
                .windows(2)
                .map(|w| vec![1.0f32; w[0].layout.out_channels()])
                .collect()
        })
        .collect();
    for set in &sets {
        register_clips(cx, set);
    }
    let act_ranges: Vec<Vec<Option<Vec<f32>>>> =
        sets.iter().map(|s| activation_ranges(cx, s)).collect();
    let held: Vec<Vec<Vec<bool>>> = before.iter().map(|b| negligible_channels(b)).collect();
    report_held(cx, &sets, &held);
    let noise_acts: Vec<Vec<Option<Activation>>> =
        if cx.opts.scaling().of_model() == crate::options::Scaling::Noise {
            sets.iter().map(|s| activations(cx, s)).collect()
        } else {
            Vec::new()
        };
    let scaling = Scaling(
        &sets,
        &mut ranges,
        &mut cumulative,
        &act_ranges,
        &held,
        &noise_acts,
    );
    if cx.opts.is_aimet() {
        direct_passes(cx, scaling)?;
    } else {
        converged(cx, scaling)?;
    }
    let iterations = cx.report.cls_iterations.len() as u32;
    for (k, set) in sets.iter().enumerate() {
        let after = pair_ranges(cx, &mut ranges, set);
        let labels: Vec<String> = set
            .layers
            .iter()
            .map(|l| cx.work.label(l.node).to_string())
            .collect();
        let mut pairs = Vec::new();
        for p in 0..set.layers.len() - 1 {
            let through_labels: Vec<String> = set.throughs[p]
                .iter()
                .map(|&t| cx.work.label(t).to_string())
                .collect();
            let through_ops: Vec<String> = set.throughs[p]
                .iter()
                .map(|&t| cx.work.node(t).op_type().to_string())
                .collect();
            let relu_between = through_ops
                .iter()
                .find(|o| o.as_str() != "Add")
                .is_some_and(|o| matches!(o.as_str(), "Relu" | "PRelu" | "Clip" | "LeakyRelu"));
            pairs.push(ClsPair {
                layer1: labels[p].clone(),
                layer2: labels[p + 1].clone(),
                through: through_labels.clone(),
                relu_between,
                scale: cumulative[k][p].clone(),
                range_before: before[k][p].clone(),
                range_after: after[p].clone(),
            });
            let activation = match set.throughs[p].last() {
                Some(&t) => cx.work.out(t).to_string(),
                None => cx.work.out(set.layers[p].node).to_string(),
            };
            cx.state.pairs.push(ScaledPair {
                layer1: labels[p].clone(),
                layer2: labels[p + 1].clone(),
                through: through_labels,
                through_ops,
                scale: cumulative[k][p].clone(),
                activation,
                activation_range: act_ranges[k][p].clone(),
            });
        }
        cx.report.cls_sets.push(ClsSet {
            iteration: iterations,
            kind: if set.layers.len() == 3 {
                ClsKind::Triple
            } else {
                ClsKind::Pair
            },
            layers: labels,
            pairs,
        });
    }
    Ok(())
}

/// Makes every tensor the sets will rewrite the layer's own ([`Ctx::own`]): each weight, and
/// the bias of each layer whose outputs are scaled (all but the last of a set; a MatMul's bias
/// `Add` is never shared, see [`matmul_bias`]). Other users of a shared tensor keep reading the
/// original.
fn own_members(cx: &mut Ctx, sets: &mut [Set]) -> crate::error::Result<()> {
    let scaled_out: HashSet<usize> = sets
        .iter()
        .flat_map(|s| s.layers[..s.layers.len() - 1].iter().map(|l| l.node))
        .collect();
    let mut names: HashMap<usize, (String, Option<String>)> = HashMap::new();
    for set in sets.iter() {
        for l in &set.layers {
            if names.contains_key(&l.node) {
                continue;
            }
            let weight = cx.own(PASS, l.node, 1, "weight")?;
            let bias = match &l.bias {
                Some(_) if l.layout.op != LayerOp::MatMul && scaled_out.contains(&l.node) => {
                    Some(cx.own(PASS, l.node, 2, "bias")?)
                }
                b => b.clone(),
            };
            names.insert(l.node, (weight, bias));
        }
    }
    for l in sets.iter_mut().flat_map(|s| s.layers.iter_mut()) {
        if let Some((w, b)) = names.get(&l.node) {
            l.weight = w.clone();
            l.bias = b.clone();
        }
    }
    cx.work.apply(crate::graph::work::Edits::default())
}

/// What the scaling strategies work on: the sets, their weight ranges, the cumulative factor of
/// every pair (per set, per pair, per channel) and the data-free activation range of every
/// pair when known, the channels held unscaled ([`negligible_channels`]), and with
/// `scaling = noise` the activation statistics of every pair ([`activations`]; else empty) — in
/// that order.
struct Scaling<'a>(
    &'a [Set],
    &'a mut Ranges,
    &'a mut [Vec<Vec<f32>>],
    &'a [Vec<Option<Vec<f32>>>],
    &'a [Vec<Vec<bool>>],
    &'a [Vec<Option<Activation>>],
);

/// AIMET's order (`compat = aimet`): every pass scales the weights set by set, each set seeing
/// the weights as the sets before it left them (cle-spec §4.2).
fn direct_passes(cx: &mut Ctx, scaling: Scaling) -> crate::error::Result<()> {
    let Scaling(sets, ranges, cumulative, act_ranges, _, _) = scaling;
    for it in 1..=cx.opts.passes() {
        let mut worst = 0f32;
        for (k, set) in sets.iter().enumerate() {
            let scales = scale_set(
                cx,
                ranges,
                set,
                cx.opts
                    .balance
                    .map(|g| (g, act_ranges[k].as_slice(), cumulative[k].as_slice())),
            )?;
            for (p, s) in scales.iter().enumerate() {
                for (c, &v) in s.iter().enumerate() {
                    cumulative[k][p][c] *= v;
                    worst = worst.max((1.0 - v).abs());
                }
                for &t in &set.throughs[p] {
                    let label = cx.work.label(t).to_string();
                    if let Some(clip) = cx.state.crossed_clips.get_mut(&label) {
                        for (c, &v) in s.iter().enumerate() {
                            clip.scale[c] *= v;
                        }
                    }
                }
            }
        }
        cx.report.cls_iterations.push(ClsIteration {
            iteration: it,
            sets: sets.len(),
            max_abs_one_minus_s: worst,
        });
        if worst < cx.opts.threshold {
            break;
        }
    }
    Ok(())
}

/// A layer's cumulative scaling in the default mode: `W' = fo[o]·fi[i]·W`.
struct Track {
    layer: Layer,
    fo: Vec<f32>,
    fi: Vec<f32>,
    /// Ranges of the unscaled weight.
    base: (Vec<f32>, Vec<f32>),
    /// Kernel maxima, for layers scaled on both sides (their ranges depend on both factors).
    maxima: Option<Vec<f32>>,
}

impl Track {
    fn out_ranges(&self) -> Vec<f32> {
        match &self.maxima {
            Some(m) => self.layer.layout.scaled_out_ranges(m, &self.fo, &self.fi),
            None => scaled(&self.base.0, &self.fo),
        }
    }

    /// Squared norms and weight counts per channel of `side` now (`scaling = noise`), from the
    /// unscaled weight `w`.
    fn energy(&self, w: &[f32], side: Side) -> ChannelEnergy {
        self.layer.layout.scaled_sumsq(w, &self.fo, &self.fi, side)
    }

    /// [`Track::energy`] of the input channels with each output channel `o` weighted by
    /// `1 / σ_o²`, the spread of the layer's output from its folded BN (`out`): the noise each
    /// output channel receives relative to its own fluctuation ([`Grids::per_fluctuation`]).
    /// `σ_o·fo_o` is the current output's spread, so the weight of the scaled weight `fo_o·W[o]`
    /// is `1/σ_o` whatever `fo`. Unweighted when `out` does not match the layer's output
    /// channels.
    fn in_energy_per_fluctuation(&self, w: &[f32], out: &Activation) -> ChannelEnergy {
        let mut e = self.energy(w, Side::In);
        if out.sigma.len() != self.fo.len()
            || out.sigma.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return e;
        }
        let fo: Vec<f32> = out.sigma.iter().map(|&s| 1.0 / s).collect();
        let weighted = self
            .layer
            .layout
            .scaled_sumsq(w, &fo, &self.fi, Side::In)
            .energy;
        for (i, count) in e.count.iter_mut().enumerate() {
            if e.energy[i] > 0.0 {
                *count *= weighted[i] / e.energy[i];
            }
        }
        e.energy = weighted;
        e
    }

    fn in_ranges(&self) -> Vec<f32> {
        match &self.maxima {
            Some(m) => self.layer.layout.scaled_in_ranges(m, &self.fo, &self.fi),
            None => scaled(&self.base.1, &self.fi),
        }
    }
}

/// `r[c]·f[c]`.
fn scaled(r: &[f32], f: &[f32]) -> Vec<f32> {
    r.iter().zip(f).map(|(r, f)| r * f).collect()
}

/// Default mode: iterate until the stop rule holds, on per-channel range bookkeeping instead of
/// the weights (cle-spec §3.3–3.4 math, paper §4.1 "iterated until convergence").
///
/// Sets that share a layer form a component; components are independent and each iterates until
/// `max |1 − s| < threshold` over its sets (or `iterations` passes). A component of one set is
/// equalized exactly by its first pass (pair: both ranges `√(r1·r2)`; triple: all three `P`),
/// so it runs once. Ranges come from the cumulative factors: `fo·fi·max_k |W|` ([`Track`]);
/// the weights are scaled once at the end.
fn converged(cx: &mut Ctx, scaling: Scaling) -> crate::error::Result<()> {
    let Scaling(sets, ranges, cumulative, act_ranges, held, noise_acts) = scaling;
    let grids = target_grids(cx);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut tracks: Vec<Track> = Vec::new();
    let mut out_scaled: Vec<bool> = Vec::new();
    let mut in_scaled: Vec<bool> = Vec::new();
    let members: Vec<Vec<usize>> = sets
        .iter()
        .map(|set| {
            let n = set.layers.len();
            set.layers
                .iter()
                .enumerate()
                .map(|(p, l)| {
                    let t = *index.entry(l.weight.clone()).or_insert_with(|| {
                        let base = ranges.of(cx, l).clone();
                        tracks.push(Track {
                            layer: l.clone(),
                            fo: vec![1.0; l.layout.out_channels()],
                            fi: vec![1.0; l.layout.in_channels()],
                            base,
                            maxima: None,
                        });
                        out_scaled.push(false);
                        in_scaled.push(false);
                        tracks.len() - 1
                    });
                    out_scaled[t] |= p + 1 < n;
                    in_scaled[t] |= p > 0;
                    t
                })
                .collect()
        })
        .collect();
    // Without `scaling = noise`, a deferred weight ([`crate::graph::Work::scale`]) is ranged
    // from its computed value and never cached.
    let read: Vec<String> = tracks
        .iter()
        .enumerate()
        .filter(|&(t, _)| (out_scaled[t] && in_scaled[t]) || !noise_acts.is_empty())
        .map(|(_, track)| track.layer.weight.clone())
        .filter(|w| !noise_acts.is_empty() || !cx.work.defers(w))
        .collect();
    cx.work.prefetch(&read);
    for name in &read {
        cx.work
            .read(name)
            .map_err(crate::error::CoreError::InvalidModel)?;
    }
    for (t, track) in tracks.iter_mut().enumerate() {
        if out_scaled[t] && in_scaled[t] {
            track.maxima = ranges.maxima.remove(&track.layer.weight);
        }
    }
    {
        let work = &*cx.work;
        tracks
            .par_iter_mut()
            .enumerate()
            .filter(|(t, track)| out_scaled[*t] && in_scaled[*t] && track.maxima.is_none())
            .for_each(|(_, track)| {
                let layout = &track.layer.layout;
                if let Some(w) = work.cached(&track.layer.weight) {
                    track.maxima = Some(layout.block_maxima(&w.data));
                } else if work.defers(&track.layer.weight) {
                    track.maxima = work
                        .with_value(&track.layer.weight, |w| layout.block_maxima(w))
                        .ok();
                }
            });
    }
    // `scaling = noise` reads each layer's energies from its weight, cached above (and taken
    // from the cache only when the scales are written).
    let weights: Vec<&[f32]> = if noise_acts.is_empty() {
        Vec::new()
    } else {
        tracks
            .iter()
            .map(|t| {
                cx.work
                    .cached(&t.layer.weight)
                    .map_or(&[][..], |w| w.data.as_slice())
            })
            .collect()
    };
    // Components: sets linked by a shared layer (union-find over the layers).
    let mut parent: Vec<usize> = (0..tracks.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for m in &members {
        for w in m.windows(2) {
            let (a, b) = (root(&mut parent, w[0]), root(&mut parent, w[1]));
            parent[a] = b;
        }
    }
    let mut components: Vec<Vec<usize>> = Vec::new();
    let mut by_root: HashMap<usize, usize> = HashMap::new();
    for (k, m) in members.iter().enumerate() {
        let r = root(&mut parent, m[0]);
        let c = *by_root.entry(r).or_insert_with(|| {
            components.push(Vec::new());
            components.len() - 1
        });
        components[c].push(k);
    }
    // Components share nothing (tracks, sets, crossed clips), so they iterate in parallel; each
    // one's arithmetic is the sequential one, so the result does not depend on the scheduling.
    let mut slots: Vec<Option<Track>> = tracks.into_iter().map(Some).collect();
    let mut jobs: Vec<Component> = components
        .iter()
        .map(|comp| {
            let mut local: HashMap<usize, usize> = HashMap::new();
            let mut owned = Vec::new();
            let mut global = Vec::new();
            let mut clip_at: HashMap<String, usize> = HashMap::new();
            let mut clips: Vec<(String, Vec<f32>)> = Vec::new();
            let sets_local = comp
                .iter()
                .map(|&k| {
                    let m = members[k]
                        .iter()
                        .map(|&t| {
                            *local.entry(t).or_insert_with(|| {
                                owned.push(slots[t].take().expect("a track is in one component"));
                                global.push(t);
                                owned.len() - 1
                            })
                        })
                        .collect();
                    let pair_clips = sets[k]
                        .throughs
                        .iter()
                        .map(|ts| {
                            ts.iter()
                                .filter_map(|&t| {
                                    let label = cx.work.label(t).to_string();
                                    let scale = &cx.state.crossed_clips.get(&label)?.scale;
                                    Some(*clip_at.entry(label.clone()).or_insert_with(|| {
                                        clips.push((label, scale.clone()));
                                        clips.len() - 1
                                    }))
                                })
                                .collect()
                        })
                        .collect();
                    LocalSet {
                        set: k,
                        members: m,
                        cumulative: std::mem::take(&mut cumulative[k]),
                        clips: pair_clips,
                    }
                })
                .collect();
            Component {
                tracks: owned,
                global,
                sets: sets_local,
                clips,
                worst: Vec::new(),
            }
        })
        .collect();
    let passes = cx.opts.passes() as usize;
    let threshold = cx.opts.threshold;
    let gain = cx.opts.balance;
    jobs.par_iter_mut().for_each(|c| {
        for _ in 0..passes {
            let mut worst = 0f32;
            for ls in c.sets.iter_mut() {
                let balance =
                    gain.map(|g| (g, act_ranges[ls.set].as_slice(), ls.cumulative.as_slice()));
                let scales = equalize_set(&mut c.tracks, &ls.members, balance, &held[ls.set]);
                worst = worst.max(ls.apply(&mut c.clips, &scales));
            }
            c.worst.push(worst);
            if c.sets.len() == 1 || worst < threshold {
                break;
            }
        }
        if noise_acts.is_empty() {
            return;
        }
        let w: Vec<&[f32]> = c.global.iter().map(|&g| weights[g]).collect();
        for ls in c.sets.iter_mut() {
            let noise = (
                &grids,
                noise_acts[ls.set].as_slice(),
                ls.cumulative.as_slice(),
            );
            let scales = noise_step(&mut c.tracks, &w, &ls.members, noise, &held[ls.set]);
            ls.apply(&mut c.clips, &scales);
        }
    });
    let mut per_iteration: Vec<(usize, f32)> = Vec::new();
    for c in jobs {
        for (it, &worst) in c.worst.iter().enumerate() {
            if per_iteration.len() <= it {
                per_iteration.push((0, 0.0));
            }
            per_iteration[it].0 += c.sets.len();
            per_iteration[it].1 = per_iteration[it].1.max(worst);
        }
        for ls in c.sets {
            cumulative[ls.set] = ls.cumulative;
        }
        for (label, scale) in c.clips {
            if let Some(clip) = cx.state.crossed_clips.get_mut(&label) {
                clip.scale = scale;
            }
        }
        for (t, track) in c.global.into_iter().zip(c.tracks) {
            slots[t] = Some(track);
        }
    }
    let tracks: Vec<Track> = slots.into_iter().flatten().collect();
    for (it, (n, worst)) in per_iteration.into_iter().enumerate() {
        cx.report.cls_iterations.push(ClsIteration {
            iteration: it as u32 + 1,
            sets: n,
            max_abs_one_minus_s: worst,
        });
    }
    let ident = |f: &[f32]| f.iter().all(|&v| v == 1.0);
    let mut scaled = Vec::new();
    let mut recorded = Vec::new();
    for (t, track) in tracks.iter().enumerate() {
        if ident(&track.fo) && ident(&track.fi) {
            continue;
        }
        let l = &track.layer;
        if cx.work.defers(&l.weight) {
            if !ident(&track.fo) {
                cx.work
                    .scale(&l.weight, &l.layout, Side::Out, &track.fo)
                    .map_err(crate::error::CoreError::InvalidModel)?;
            }
            if !ident(&track.fi) {
                cx.work
                    .scale(&l.weight, &l.layout, Side::In, &track.fi)
                    .map_err(crate::error::CoreError::InvalidModel)?;
            }
            recorded.push(t);
        } else {
            scaled.push((t, take(cx, &l.weight)?));
        }
    }
    // The ranges of the recorded weights, as `scale_in_ranged` gives them to the others: from
    // the kernel maxima of a weight scaled on both sides, else from the ranges of its one
    // scaled side (a positive per-channel factor commutes with that side's maximum; the other
    // side, stale, is never read again: only a pair's scaled sides are reported), else from its
    // computed value.
    let work = &*cx.work;
    let recorded: Vec<(usize, ChannelRanges)> = recorded
        .into_par_iter()
        .filter_map(|t| {
            let track = &tracks[t];
            let l = &track.layer;
            let positive = |f: &[f32]| f.iter().all(|v| v.is_finite() && *v > 0.0);
            let fo = (!ident(&track.fo)).then_some(track.fo.as_slice());
            let fi = (!ident(&track.fi)).then_some(track.fi.as_slice());
            let exact = fo.is_none_or(positive) && fi.is_none_or(positive);
            let r = match (&track.maxima, fo, fi) {
                (Some(m), _, _) if exact => l.layout.ranges_after(m, fo, fi),
                (None, Some(f), None) if exact && !in_scaled[t] => {
                    (self::scaled(&track.base.0, f), track.base.1.clone())
                }
                (None, None, Some(f)) if exact && !out_scaled[t] => {
                    (track.base.0.clone(), self::scaled(&track.base.1, f))
                }
                _ => work.with_value(&l.weight, |w| l.layout.ranges(w)).ok()?,
            };
            Some((t, r))
        })
        .collect();
    for (t, r) in recorded {
        let l = &tracks[t].layer;
        ranges.set(l, r);
        scale_bias(cx, l, &tracks[t].fo)?;
    }
    let scaled: Vec<_> = scaled
        .into_par_iter()
        .map(|(t, mut w)| {
            let track = &tracks[t];
            let layout = &track.layer.layout;
            if !ident(&track.fo) {
                layout.scale_out(&mut w.data, &track.fo);
            }
            let r = layout.scale_in_ranged(&mut w.data, &track.fi);
            (t, w, r)
        })
        .collect();
    for (t, w, r) in scaled {
        let l = &tracks[t].layer;
        ranges.set(l, r);
        cx.work.put(&l.weight, w);
        scale_bias(cx, l, &tracks[t].fo)?;
    }
    Ok(())
}

/// One component of [`converged`]: its tracks (moved out of the global list; `global` maps
/// them back), its sets with their cumulative factors and crossed-clip scales, and the worst
/// `|1 − s|` of each of its passes.
struct Component {
    tracks: Vec<Track>,
    global: Vec<usize>,
    sets: Vec<LocalSet>,
    /// The crossed clips between the component's layers: label and cumulative scale.
    clips: Vec<(String, Vec<f32>)>,
    worst: Vec<f32>,
}

/// A set inside a [`Component`]: its index, its layers as component-local track indices, its
/// cumulative factors per pair and, per pair, the crossed clips between them (indices into the
/// component's `clips`).
struct LocalSet {
    set: usize,
    members: Vec<usize>,
    cumulative: Vec<Vec<f32>>,
    clips: Vec<Vec<usize>>,
}

impl LocalSet {
    /// Multiplies the per-pair `steps` into the cumulative factors and the crossed clips'
    /// scales; returns the worst `|1 − s|`.
    fn apply(&mut self, clips: &mut [(String, Vec<f32>)], steps: &[Vec<f32>]) -> f32 {
        let mut worst = 0f32;
        for (p, s) in steps.iter().enumerate() {
            for (ch, &v) in s.iter().enumerate() {
                self.cumulative[p][ch] *= v;
                worst = worst.max((1.0 - v).abs());
            }
            for &at in &self.clips[p] {
                for (ch, &v) in s.iter().enumerate() {
                    clips[at].1[ch] *= v;
                }
            }
        }
        worst
    }
}

/// `scaling = noise`, once after the equal-ranges passes have converged: each pair of a set, in
/// chain order, moves by the step of least predicted noise ([`best_step`]) from where it is (a
/// later pair sees an earlier one's choice through their shared layer); returns the per-pair
/// steps. `prev` holds the set's cumulative factors (each pair is visited once, so they are
/// current). A second sweep measured worse on EfficientNet-Lite0's tuning images.
fn noise_step(
    tracks: &mut [Track],
    weights: &[&[f32]],
    m: &[usize],
    (grids, acts, prev): NoiseSet,
    held: &[Vec<bool>],
) -> Vec<Vec<f32>> {
    let mut steps: Vec<Vec<f32>> = (0..m.len() - 1)
        .map(|p| vec![1.0; tracks[m[p]].fo.len()])
        .collect();
    for p in 0..m.len() - 1 {
        let Some(act) = &acts[p] else { continue };
        let (w1, w2) = (weights[m[p]], weights[m[p + 1]]);
        if w1.is_empty() || w2.is_empty() {
            continue;
        }
        let e1 = tracks[m[p]].energy(w1, Side::Out);
        let out = acts.get(p + 1).and_then(|a| a.as_ref());
        let e2 = match out.filter(|_| grids.per_fluctuation) {
            Some(out) => tracks[m[p + 1]].in_energy_per_fluctuation(w2, out),
            None => tracks[m[p + 1]].energy(w2, Side::In),
        };
        let r1 = tracks[m[p]].out_ranges();
        let r2 = tracks[m[p + 1]].in_ranges();
        let pair = Pair {
            r1: &r1,
            q1: &e1.energy,
            n1: &e1.count,
            r2: &r2,
            q2: &e2.energy,
            n2: &e2.count,
            prev: &prev[p],
            act,
        };
        // Channels the equal-ranges rule left alone for a non-finite weight range (cle-spec
        // §3.6) stay alone here too.
        let keep: Vec<bool> = held[p]
            .iter()
            .zip(r1.iter().zip(&r2))
            .map(|(&h, (a, b))| h || !(a.is_finite() && b.is_finite()))
            .collect();
        let t = best_step(&pair, grids, &keep);
        let inv: Vec<f32> = t.iter().map(|&v| 1.0f32 / v).collect();
        mul(&mut tracks[m[p]].fo, &inv);
        mul(&mut tracks[m[p + 1]].fi, &t);
        steps[p] = t;
    }
    steps
}

/// `scaling = noise` for one set: the target's grids, the output of every layer (when it has
/// statistics: pair `p`'s activation is layer `p`'s output) and the set's cumulative factors.
type NoiseSet<'a> = (&'a Grids, &'a [Option<Activation>], &'a [Vec<f32>]);

fn mul(f: &mut [f32], by: &[f32]) {
    f.iter_mut().zip(by).for_each(|(v, b)| *v *= b);
}

/// One equalization step of a set on its [`Track`]s (pair: eq. 11; triple: cube root), capped
/// by `balance`; returns the per-pair factors (`s`, or `(s12, s23)` for a triple), as
/// [`scale_set`] does on the weights.
fn equalize_set(
    tracks: &mut [Track],
    m: &[usize],
    balance: Option<Balance>,
    held: &[Vec<bool>],
) -> Vec<Vec<f32>> {
    let limit = |p: usize, s: &mut Vec<f32>| {
        balanced(balance, p, s);
        for (v, &h) in s.iter_mut().zip(&held[p]) {
            if h {
                *v = 1.0;
            }
        }
    };
    let inv = |s: &[f32]| s.iter().map(|&v| 1.0f32 / v).collect::<Vec<f32>>();
    if m.len() == 2 {
        let r1 = tracks[m[0]].out_ranges();
        let r2 = tracks[m[1]].in_ranges();
        let mut s = pair_factors(&r1, &r2);
        limit(0, &mut s);
        mul(&mut tracks[m[0]].fo, &inv(&s));
        mul(&mut tracks[m[1]].fi, &s);
        return vec![s];
    }
    let r0 = tracks[m[0]].out_ranges();
    let r1 = tracks[m[1]].out_ranges();
    let r2 = tracks[m[2]].in_ranges();
    let (mut s12, mut s23) = triple_factors(&r0, &r1, &r2);
    limit(0, &mut s12);
    limit(1, &mut s23);
    mul(&mut tracks[m[0]].fo, &inv(&s12));
    mul(&mut tracks[m[1]].fi, &s12);
    mul(&mut tracks[m[1]].fo, &inv(&s23));
    mul(&mut tracks[m[2]].fi, &s23);
    vec![s12, s23]
}

/// `MatMul` scales its last axis, `Conv`/`ConvTranspose` axis 1 (a 2-D `Gemm` both): a pair
/// mixing them is only valid once the activation is 2-D (Flatten/Reshape after a global pool).
fn axis_problem(
    cx: &Ctx,
    layers: &[Layer],
    throughs: &[Vec<usize>],
) -> Option<(&'static str, String)> {
    let conv = |l: &Layer| matches!(l.layout.op, LayerOp::Conv | LayerOp::ConvTranspose);
    let mm = |l: &Layer| l.layout.op == LayerOp::MatMul;
    for (w, through) in layers.windows(2).zip(throughs) {
        let has = |ops: &[&str]| {
            through
                .iter()
                .any(|&t| ops.contains(&cx.work.node(t).op_type()))
        };
        let flat = has(&["Flatten", "Reshape"]);
        let pooled = has(&[
            "MaxPool",
            "AveragePool",
            "GlobalAveragePool",
            "GlobalMaxPool",
        ]);
        if (mm(&w[0]) && (conv(&w[1]) || pooled || flat)) || (conv(&w[0]) && mm(&w[1]) && !flat) {
            return Some((
                "channel_axis_mismatch",
                format!(
                    "{} and {} scale different axes (MatMul: last, Conv: 1)",
                    cx.work.label(w[0].node),
                    cx.work.label(w[1].node)
                ),
            ));
        }
    }
    None
}

/// A `cls` skip for every layer in scope that ended up in no set, saying where its chain broke.
fn report_unpaired(cx: &mut Ctx, sets: &[Set]) {
    let n = cx.work.node_count();
    let roles: Vec<Role> = (0..n).map(|i| role(cx, i)).collect();
    let mut paired = vec![false; n];
    for s in sets {
        for l in &s.layers {
            paired[l.node] = true;
        }
    }
    let already: std::collections::HashSet<String> = cx
        .report
        .skipped
        .iter()
        .filter(|s| s.pass == PASS)
        .flat_map(|s| s.nodes.iter().cloned())
        .collect();
    let mut skips = Vec::new();
    for &i in cx.work.index().topo() {
        if roles[i] != Role::Layer || paired[i] || already.contains(cx.work.label(i)) {
            continue;
        }
        let (reason, detail) = downstream_break(cx, i, &roles);
        skips.push((cx.work.label(i).to_string(), reason, detail));
    }
    for (label, reason, detail) in skips {
        cx.skip(PASS, vec![label], reason, detail);
    }
}

/// Why the chain after layer `i` does not reach a partner layer.
fn downstream_break(cx: &Ctx, i: usize, roles: &[Role]) -> (&'static str, String) {
    let mut cur = i;
    for _ in 0..64 {
        let out = cx.work.out(cur);
        let label = cx.work.label(cur);
        let uses = cx.work.index().use_count(out);
        if cx.work.index().is_graph_output(out) {
            return (
                "graph_output",
                format!("`{out}` after {label} is a graph output, so it must not be rescaled"),
            );
        }
        let Some(c) = cx.work.sole_consumer(cur) else {
            return if uses == 0 {
                ("no_consumer", format!("nothing reads `{out}`"))
            } else {
                (
                    "fan_out",
                    format!("`{out}` after {label} feeds {uses} consumers"),
                )
            };
        };
        let next = cx.work.node(c);
        if cx.work.input(c, 0) != out {
            return (
                "chain_break",
                format!(
                    "{} reads `{out}` as a parameter, not as data",
                    cx.work.label(c)
                ),
            );
        }
        match roles[c] {
            Role::Stop => {
                return (
                    "chain_break",
                    format!(
                        "the next op {} ({}) is not scale-equivariant or is out of scope",
                        cx.work.label(c),
                        next.op_type()
                    ),
                )
            }
            Role::Layer => {
                return (
                    "partner_unsupported",
                    format!(
                        "the next layer {} cannot be scaled with it (see its own entry)",
                        cx.work.label(c)
                    ),
                )
            }
            Role::Through => cur = c,
        }
    }
    ("chain_break", "chain too long".into())
}

/// Why a set cannot be scaled. A shared weight or bias stops it only with `compat = aimet`
/// (aimet_onnx drops such sets); default mode gives the layer its own copy ([`own_members`]).
fn set_problem(cx: &Ctx, layers: &[Layer]) -> Option<(&'static str, String)> {
    for l in layers.iter().filter(|_| cx.opts.is_aimet()) {
        if cx.work.is_shared(&l.weight) || l.bias.as_ref().is_some_and(|b| cx.work.is_shared(b)) {
            return Some((
                "shared_weight",
                format!(
                    "{} shares its weight or bias with another node",
                    cx.work.label(l.node)
                ),
            ));
        }
    }
    for w in layers.windows(2) {
        let (a, b) = (&w[0].layout, &w[1].layout);
        if a.out_channels() != b.in_channels() {
            return Some((
                "channel_mismatch",
                format!(
                    "{} outputs {} channels, {} reads {}",
                    cx.work.label(w[0].node),
                    a.out_channels(),
                    cx.work.label(w[1].node),
                    b.in_channels()
                ),
            ));
        }
    }
    None
}

fn register_clips(cx: &mut Ctx, set: &Set) {
    for (p, through) in set.throughs.iter().enumerate() {
        let mut rank = set.layers[p].layout.dims.len().max(2);
        if matches!(
            set.layers[p].layout.op,
            LayerOp::Gemm { .. } | LayerOp::MatMul
        ) {
            rank = 2;
        }
        for &t in through {
            let node: &NodeProto = cx.work.node(t);
            if matches!(node.op_type(), "Flatten" | "Reshape") {
                rank = 2;
            }
            if node.op_type() == "Clip" {
                let label = cx.work.label(t).to_string();
                let c = set.layers[p].layout.out_channels();
                cx.state
                    .crossed_clips
                    .entry(label)
                    .or_insert_with(|| CrossedClip {
                        scale: vec![1.0; c],
                        offset: vec![0.0; c],
                        rank,
                    });
            }
        }
    }
}

fn pair_ranges(cx: &mut Ctx, ranges: &mut Ranges, set: &Set) -> Vec<PairRanges> {
    set.layers
        .windows(2)
        .map(|w| PairRanges {
            layer1_out: ranges.of(cx, &w[0]).0.clone(),
            layer2_in: ranges.of(cx, &w[1]).1.clone(),
        })
        .collect()
}

fn take(cx: &mut Ctx, name: &str) -> crate::error::Result<crate::onnx::tensor::F32Tensor> {
    cx.work
        .take(name)
        .map_err(crate::error::CoreError::InvalidModel)
}

fn scale_bias(cx: &mut Ctx, layer: &Layer, inv: &[f32]) -> crate::error::Result<()> {
    if let Some(b) = &layer.bias {
        let mut t = take(cx, b)?;
        for (v, m) in t.data.iter_mut().zip(inv) {
            *v *= m;
        }
        cx.work.put(b, t);
    }
    Ok(())
}

/// Data-free upper range of each activation of a set, per channel: `max(0, β + 3|γ|)` of the
/// BN folded backward into layer 1, capped at 6 across a ReLU6; 6 for a ReLU6 without BN.
fn activation_ranges(cx: &Ctx, set: &Set) -> Vec<Option<Vec<f32>>> {
    (0..set.layers.len() - 1)
        .map(|p| {
            let label = cx.work.label(set.layers[p].node);
            let clip = set.throughs[p]
                .iter()
                .any(|&t| cx.work.node(t).op_type() == "Clip");
            let c = set.layers[p].layout.out_channels();
            match cx.state.bn_stats.get(label) {
                Some(bn) if bn.beta.len() == c => Some(
                    bn.beta
                        .iter()
                        .zip(&bn.gamma)
                        .map(|(b, g)| {
                            let hi = (b + 3.0 * g.abs()).max(0.0);
                            if clip {
                                hi.min(6.0)
                            } else {
                                hi
                            }
                        })
                        .collect(),
                ),
                _ if clip => Some(vec![6.0; c]),
                _ => None,
            }
        })
        .collect()
}

/// `scaling = noise`: the output of every layer of a set as `clamp(N(β, σ²), lo, hi)` from
/// the BN folded backward into it (`σ` from its running variance), clamped by a `Relu`
/// (`[0, ∞)`) or a crossed ReLU6 (`[0, 6]`) before the next layer (the last layer's output is
/// not clamped here: only its `σ` is read). `None` without BN statistics or across an op the
/// clamp form does not describe (`LeakyRelu`, `PRelu`).
fn activations(cx: &Ctx, set: &Set) -> Vec<Option<Activation>> {
    (0..set.layers.len())
        .map(|p| {
            let label = cx.work.label(set.layers[p].node);
            let bn = cx.state.bn_stats.get(label)?;
            let c = set.layers[p].layout.out_channels();
            if bn.beta.len() != c || bn.gamma.len() != c || bn.var.len() != c {
                return None;
            }
            let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
            for &t in set.throughs.get(p).map_or(&[][..], |v| v.as_slice()) {
                match cx.work.node(t).op_type() {
                    "Relu" => lo = lo.max(0.0),
                    "Clip" => (lo, hi) = (lo.max(0.0), hi.min(6.0)),
                    "LeakyRelu" | "PRelu" => return None,
                    _ => {}
                }
            }
            let sigma = (0..c)
                .map(|i| bn_sigma(bn.gamma[i], bn.var[i], bn.eps))
                .collect();
            Some(Activation {
                mu: bn.beta.clone(),
                sigma,
                lo,
                hi,
            })
        })
        .collect()
}

/// The declared target's grids as [`best_step`] reads them.
fn target_grids(cx: &Ctx) -> Grids {
    let w = cx.opts.target.weights();
    let levels = match cx.opts.target.activations().ty {
        crate::options::ActivationType::Uint16 => 65536.0,
        _ => 256.0,
    };
    Grids {
        weight_levels: w.half_span(),
        per_channel: w.granularity == crate::options::Granularity::PerChannel,
        activation_levels: levels,
        per_fluctuation: cx.opts.exports.mixed_precision.is_some(),
    }
}

/// Activation-aware balancing: raises `s_c` so that no channel of the activation after layer 1
/// exceeds `growth ×` the activation's original per-tensor range (`hi_c / (S_c·s_c) ≤ g·max hi`).
fn limit_activation_growth(s: &mut [f32], hi: &[f32], prev: &[f32], growth: f32) {
    let top = hi.iter().fold(0f32, |m, &v| m.max(v));
    if top <= 0.0 {
        return;
    }
    for c in 0..s.len() {
        let floor = hi[c] / (prev[c] * growth * top);
        if floor.is_finite() && s[c] < floor {
            s[c] = floor;
        }
    }
}

type Balance<'a> = (f32, &'a [Option<Vec<f32>>], &'a [Vec<f32>]);

/// A channel whose weight range is at most this share of its layer's largest is held unscaled.
const NEGLIGIBLE: f32 = 1.0 / (1u32 << 20) as f32;

/// Per pair of a set, the channels left unscaled: a weight range on either side at most
/// [`NEGLIGIBLE`] of that layer's largest (a near-dead channel: pruned, or a BatchNorm `γ ≈ 0`
/// folded in). CLS would divide such a channel by `s = √(r1/r2)`, as small as `1e-15`, and its
/// activation (its bias, even a small one) would grow by `1/s`: no activation grid could carry
/// that tensor, every other channel would quantize to zero. In a triple a channel is held on both
/// sides when any of the three layers has it negligible.
fn negligible_channels(before: &[PairRanges]) -> Vec<Vec<bool>> {
    // Non-finite ranges are the guard's (cle-spec §3.6), not a measure of the others.
    let small = |r: &[f32]| {
        let top = r
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, &v| m.max(v));
        r.iter()
            .map(|&v| top > 0.0 && v.is_finite() && v <= NEGLIGIBLE * top)
            .collect::<Vec<bool>>()
    };
    let mut held: Vec<Vec<bool>> = before
        .iter()
        .map(|p| {
            let (a, b) = (small(&p.layer1_out), small(&p.layer2_in));
            a.iter().zip(&b).map(|(x, y)| *x || *y).collect()
        })
        .collect();
    if held.len() == 2 && held[0].len() == held[1].len() {
        let both: Vec<bool> = held[0]
            .iter()
            .zip(&held[1])
            .map(|(a, b)| *a || *b)
            .collect();
        held = vec![both.clone(), both];
    }
    held
}

/// Reports the held channels: a skip per pair (default), or a compat note of the scales AIMET
/// applies there (`compat = aimet` keeps AIMET's numbers).
fn report_held(cx: &mut Ctx, sets: &[Set], held: &[Vec<Vec<bool>>]) {
    for (set, held) in sets.iter().zip(held) {
        for (p, h) in held.iter().enumerate() {
            let channels: Vec<usize> = (0..h.len()).filter(|&c| h[c]).collect();
            if channels.is_empty() {
                continue;
            }
            let l1 = cx.work.label(set.layers[p].node).to_string();
            let l2 = cx.work.label(set.layers[p + 1].node).to_string();
            if cx.opts.is_aimet() {
                cx.report.compat_notes.push(format!(
                    "{l1} → {l2}: channels {channels:?} have a negligible weight range;                      aimet_onnx 2.42 scales them anyway (onnx-cle's default leaves them                      unscaled so their activation range does not explode)"
                ));
            } else {
                cx.skip(
                    PASS,
                    vec![l1, l2],
                    "negligible_channel",
                    format!(
                        "channels {channels:?} left unscaled: a weight range at most 2^-20 of                          its layer's largest; scaling would grow their activation by up to 1/s"
                    ),
                );
            }
        }
    }
}

/// The pair's factors `s = r1 / √(r1·r2)` (paper eq. 11), each [`guard`]ed.
fn pair_factors(r1: &[f32], r2: &[f32]) -> Vec<f32> {
    r1.iter()
        .zip(r2)
        .map(|(&a, &b)| guard(a / (a * b).sqrt()))
        .collect()
}

/// A triple's factors by AIMET's cube root: `p = ∛(r0·r1·r2)`, `s12 = r0 / p`, `s23 = p / r2`.
fn triple_factors(r0: &[f32], r1: &[f32], r2: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let third = 1.0f32 / 3.0;
    let p: Vec<f32> = (0..r0.len())
        .map(|c| (r0[c] * r1[c] * r2[c]).powf(third))
        .collect();
    let s12 = (0..r0.len()).map(|c| guard(r0[c] / p[c])).collect();
    let s23 = (0..r0.len()).map(|c| guard(p[c] / r2[c])).collect();
    (s12, s23)
}

/// Caps the factors of pair `p` of a set by `balance` (when set and the activation's range is
/// known).
fn balanced(balance: Option<Balance>, p: usize, s: &mut [f32]) {
    if let Some((g, ranges, prev)) = balance {
        if let Some(hi) = &ranges[p] {
            limit_activation_growth(s, hi, &prev[p], g);
        }
    }
}

/// Scales one set; returns the per-pair factors (`s`, or `(s12, s23)` for a triple).
fn scale_set(
    cx: &mut Ctx,
    ranges: &mut Ranges,
    set: &Set,
    balance: Option<Balance>,
) -> crate::error::Result<Vec<Vec<f32>>> {
    let limit = |p: usize, s: &mut Vec<f32>| balanced(balance, p, s);
    if set.layers.len() == 2 {
        let (l1, l2) = (&set.layers[0], &set.layers[1]);
        let r1 = ranges.of(cx, l1).0.clone();
        let r2 = ranges.of(cx, l2).1.clone();
        let mut w1 = take(cx, &l1.weight)?;
        let mut w2 = take(cx, &l2.weight)?;
        let mut s = pair_factors(&r1, &r2);
        limit(0, &mut s);
        let inv: Vec<f32> = s.iter().map(|&v| 1.0f32 / v).collect();
        ranges.set(l1, l1.layout.scale_out_ranged(&mut w1.data, &inv));
        ranges.set(l2, l2.layout.scale_in_ranged(&mut w2.data, &s));
        cx.work.put(&l1.weight, w1);
        cx.work.put(&l2.weight, w2);
        scale_bias(cx, l1, &inv)?;
        return Ok(vec![s]);
    }
    let (l0, l1, l2) = (&set.layers[0], &set.layers[1], &set.layers[2]);
    let r0 = ranges.of(cx, l0).0.clone();
    let r1 = ranges.of(cx, l1).0.clone();
    let r2 = ranges.of(cx, l2).1.clone();
    let mut w0 = take(cx, &l0.weight)?;
    let mut w1 = take(cx, &l1.weight)?;
    let mut w2 = take(cx, &l2.weight)?;
    let (mut s12, mut s23) = triple_factors(&r0, &r1, &r2);
    limit(0, &mut s12);
    limit(1, &mut s23);
    let inv12: Vec<f32> = s12.iter().map(|&v| 1.0f32 / v).collect();
    let inv23: Vec<f32> = s23.iter().map(|&v| 1.0f32 / v).collect();
    ranges.set(l0, l0.layout.scale_out_ranged(&mut w0.data, &inv12));
    l1.layout.scale_out(&mut w1.data, &s12);
    ranges.set(l1, l1.layout.scale_out_ranged(&mut w1.data, &inv23));
    ranges.set(l2, l2.layout.scale_in_ranged(&mut w2.data, &s23));
    cx.work.put(&l0.weight, w0);
    cx.work.put(&l1.weight, w1);
    cx.work.put(&l2.weight, w2);
    scale_bias(cx, l0, &inv12)?;
    scale_bias(cx, l1, &inv23)?;
    Ok(vec![s12, s23])
}

/// Labels of layers scaled by CLS (used by reports and tests).
pub fn scaled_layers(report: &crate::report::Report) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in &report.cls_sets {
        for l in &s.layers {
            *m.entry(l.clone()).or_insert(0) += 1;
        }
    }
    m
}
