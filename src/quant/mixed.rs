//! Automatic mixed precision for activations: which activation quantizers to keep on a 16-bit
//! grid, from a data-free prediction of each one's contribution to the output noise.
//!
//! Model (stated; its ranking is what is checked, on the tuning split: see the README's
//! mixed-precision section). Rounding on a grid of step `Δ` adds independent uniform noise of
//! power `Δ²/12` to every element (clipping ignored: the ranges cover the modelled
//! distribution). A quantizer's noise is judged at the output of a layer that reads it:
//! output channel `o` of a layer with weight `W` receives noise `(Δ²/12)·Σ_{i,k} W[o, i, k]²`
//! against its fluctuation `Var[y_o]` (from the data-free statistics of the layer's output,
//! BatchNorm folded). The fluctuation, not `E[y_o²]`: the next normalisation removes the mean,
//! and what the following layers tell apart is the variation. The layer's ratio is the mean over
//! its output channels of `min(1, noise_o / Var[y_o])`, averaged over the layers reading the
//! tensor. A value chain ([`chains`]) takes the largest ratio of its tensors a layer reads; a
//! chain no layer reads (or whose readers have no statistics) is judged against its tensors' own
//! per-channel variance. A layer whose channels each see one input channel (the depthwise conv
//! after a stem) cannot average the noise of a quiet channel away, and this ratio is where it
//! shows. Quantizers on one value chain ([`chains`]) re-apply one grid and are ranked and kept
//! together. The ratios add at the output, so the predicted gain of keeping a set wide is
//! `10 log10 (Σ nsr / (Σ nsr − kept + kept / g))` with `g = (65535 / 255)²`: a relative
//! figure, as the absolute level of the ratios is not calibrated.

use std::collections::{HashMap, HashSet};

use crate::graph::layer_of;
use crate::graph::layout::Side;
use crate::graph::work::Work;
use crate::onnx::ModelProto;
use crate::options::ActivationGrid;
use crate::quant::deploy::stats::ActivationStats;
use crate::report::{MixedPrecision, WideActivation};

/// `mean_o min(1, noise·e_o / v_o)` over the channels of `v` (`e`: per-channel noise gain,
/// length 1 = every channel); `None` when the lengths disagree.
fn mean_ratio(noise: f64, e: &[f64], v: &[f32]) -> Option<f64> {
    if e.len() != 1 && e.len() != v.len() || v.is_empty() {
        return None;
    }
    let sum: f64 = v
        .iter()
        .enumerate()
        .map(|(o, &v)| {
            let n = noise * if e.len() == 1 { e[0] } else { e[o] };
            if v > 0.0 {
                (n / f64::from(v)).min(1.0)
            } else if n > 0.0 {
                1.0
            } else {
                0.0
            }
        })
        .sum();
    Some(sum / v.len() as f64)
}

/// Predicted noise-to-signal ratio of each of `tensors` of `model` quantized on `grid` over
/// its range (the module's model), and whether a layer reading it judged it (`false`: against
/// its own variance); `None` for a tensor without range or statistics.
fn noise_to_signal(
    model: &ModelProto,
    tensors: &[String],
    ranges: &HashMap<String, (f32, f32)>,
    stats: Option<&ActivationStats>,
    grid: ActivationGrid,
) -> Vec<(String, Option<(f64, bool)>)> {
    let mut work = Work::new(model.clone()).ok();
    tensors
        .iter()
        .map(|t| {
            let (Some(&(lo, hi)), Some(stats), Some(own)) =
                (ranges.get(t), stats, stats.and_then(|s| s.get(t)))
            else {
                return (t.clone(), None);
            };
            let step = f64::from(grid.params(lo, hi).scale);
            let noise = step * step / 12.0;
            let mut seen = Vec::new();
            if let Some(work) = work.as_mut() {
                let consumers = work.index().consumers(t).to_vec();
                for i in consumers {
                    let Ok(l) = layer_of(work, i) else { continue };
                    if work.input(i, 0) != t {
                        continue;
                    }
                    let Some(out) = stats.get(work.out(i)) else {
                        continue;
                    };
                    let Ok(w) = work.read(&l.weight) else {
                        continue;
                    };
                    if !l.layout.matches(w) {
                        continue;
                    }
                    let ones_o = vec![1f32; l.layout.out_channels()];
                    let ones_i = vec![1f32; l.layout.in_channels()];
                    let gain = l
                        .layout
                        .scaled_sumsq(&w.data, &ones_o, &ones_i, Side::Out)
                        .energy;
                    seen.extend(mean_ratio(noise, &gain, &out.var()));
                }
            }
            let judged = if seen.is_empty() {
                (mean_ratio(noise, &[1.0], &own.var()).unwrap_or(0.0), false)
            } else {
                (seen.iter().sum::<f64>() / seen.len() as f64, true)
            };
            (t.clone(), Some(judged))
        })
        .collect()
}

fn db(nsr: f64) -> f64 {
    if nsr > 0.0 {
        -10.0 * nsr.log10()
    } else {
        f64::INFINITY
    }
}

/// Ops that pass a value on without mixing channels: a quantizer on their output re-applies
/// (nearly) the grid of the quantizer on their input.
const VALUE_OPS: &[&str] = &[
    "Relu",
    "Clip",
    "Min",
    "Max",
    "Pad",
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
];

/// `tensors` grouped into value chains, in graph order: a tensor whose producer is one of
/// [`VALUE_OPS`] reading another of `tensors` joins that tensor's chain (a ReLU's output, its
/// `Min`, the `Pad` after it). Keeping one quantizer of a chain wider gains next to nothing
/// while the others re-apply the 8-bit grid, so a chain is kept wide as a whole.
pub fn chains(model: &ModelProto, tensors: &[String]) -> Vec<Vec<String>> {
    let at: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..tensors.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let graph = model.graph.as_ref();
    for node in graph.iter().flat_map(|g| &g.node) {
        if !VALUE_OPS.contains(&node.op_type()) {
            continue;
        }
        let Some(&from) = node.input.first().and_then(|i| at.get(i.as_str())) else {
            continue;
        };
        for o in &node.output {
            if let Some(&to) = at.get(o.as_str()) {
                let (a, b) = (root(&mut parent, from), root(&mut parent, to));
                parent[b.max(a)] = a.min(b);
            }
        }
    }
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut slot: HashMap<usize, usize> = HashMap::new();
    for (i, t) in tensors.iter().enumerate() {
        let r = root(&mut parent, i);
        let g = *slot.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(t.clone());
    }
    groups
}

/// The nodes a 16-bit activation takes out of 8-bit kernels: every node other than the
/// [`VALUE_OPS`] that reads one of `wide`, or whose output reaches one through [`VALUE_OPS`]
/// alone (the quantizer placed after it then has the wide grid). onnxruntime's CPU int8 kernels
/// (`QLinearConv`, `QGemm`, `QLinearMatMul`, `QLinearAdd`, …) take 8-bit inputs and outputs, so
/// it runs these as float ops on dequantized values. Labels: node name, else first output.
pub fn outside_int8(model: &ModelProto, wide: &HashSet<String>) -> Vec<String> {
    let nodes: Vec<&crate::onnx::NodeProto> = model.graph.iter().flat_map(|g| &g.node).collect();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for t in &n.input {
            readers.entry(t.as_str()).or_default().push(i);
        }
    }
    // Whether `t` is wide or flows into a wide tensor through value ops alone.
    fn reaches(
        t: &str,
        wide: &HashSet<String>,
        nodes: &[&crate::onnx::NodeProto],
        readers: &HashMap<&str, Vec<usize>>,
        depth: usize,
    ) -> bool {
        if wide.contains(t) {
            return true;
        }
        depth < 16
            && readers.get(t).into_iter().flatten().any(|&r| {
                VALUE_OPS.contains(&nodes[r].op_type())
                    && nodes[r].input.first().is_some_and(|i| i == t)
                    && nodes[r]
                        .output
                        .iter()
                        .any(|o| reaches(o, wide, nodes, readers, depth + 1))
            })
    }
    nodes
        .iter()
        .filter(|n| !VALUE_OPS.contains(&n.op_type()))
        .filter(|n| {
            n.input.iter().any(|t| wide.contains(t))
                || n.output
                    .iter()
                    .any(|o| reaches(o, wide, &nodes, &readers, 0))
        })
        .map(|n| {
            if n.name().is_empty() {
                n.output.first().cloned().unwrap_or_default()
            } else {
                n.name().to_string()
            }
        })
        .collect()
}

/// The quantizers of `tensors` (the plan's, in graph order) to keep wide under a budget of
/// `share` of them, and the report of the choice. Chains ([`chains`]) are ranked by their
/// predicted noise-to-signal ratio (the largest of their quantizers': they re-apply one grid)
/// and taken whole, the noisiest first, while they fit the budget.
pub fn choose(
    model: &ModelProto,
    tensors: &[String],
    ranges: &HashMap<String, (f32, f32)>,
    stats: Option<&ActivationStats>,
    grid: ActivationGrid,
    share: f32,
) -> (HashSet<String>, MixedPrecision) {
    let nsr: HashMap<String, Option<(f64, bool)>> =
        noise_to_signal(model, tensors, ranges, stats, grid)
            .into_iter()
            .collect();
    let unranked = nsr.values().filter(|n| n.is_none()).count();
    // A chain is judged where a layer reads it; against its own variance only when no layer
    // reads any of its tensors.
    let mut ranked: Vec<(Vec<String>, f64)> = chains(model, tensors)
        .into_iter()
        .filter_map(|c| {
            let judged: Vec<(f64, bool)> = c
                .iter()
                .filter_map(|t| nsr.get(t).copied().flatten())
                .collect();
            let at_layer = judged.iter().any(|j| j.1);
            let worst = judged
                .iter()
                .filter(|j| j.1 == at_layer)
                .map(|j| j.0)
                .max_by(f64::total_cmp)?;
            Some((c, worst))
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let budget = (f64::from(share) * tensors.len() as f64 + 1e-9).floor() as usize;
    let total: f64 = ranked.iter().map(|r| r.1).sum();
    let gain = {
        let (w, n) = (grid.wide().levels(), grid.levels());
        let ratio = f64::from(w.1 - w.0) / f64::from(n.1 - n.0);
        ratio * ratio
    };
    let (mut taken, mut kept) = (0, 0.0);
    let mut wide = Vec::new();
    for (chain, n) in &ranked {
        if taken + chain.len() > budget {
            continue;
        }
        taken += chain.len();
        kept += n;
        wide.extend(chain.iter().map(|t| WideActivation {
            tensor: t.clone(),
            noise_share: if total > 0.0 { n / total } else { 0.0 },
        }));
    }
    let kept_wide: HashSet<String> = wide.iter().map(|w| w.tensor.clone()).collect();
    let report = MixedPrecision {
        share,
        quantizers: tensors.len(),
        unranked,
        predicted_gain_db: db(total - kept + kept / gain) - db(total),
        outside_int8: outside_int8(model, &kept_wide),
        wide,
    };
    (kept_wide, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ActivationType;

    #[test]
    fn the_predicted_ratio_of_a_layer_matches_a_monte_carlo_measurement() {
        // One channel N(0.5, 0.2²) and one N(0, 1), quantized per tensor on uint8 over [-4, 4]
        // (step 0.031: the uniform-noise model holds within 5 %).
        let grid = ActivationGrid {
            ty: ActivationType::Uint8,
            symmetric: false,
        };
        let p = grid.params(-4.0, 4.0);
        let mut state = 7u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut normal = || {
            let (u1, u2) = (uniform(), uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        // A depthwise 1×1 layer y_c = w_c·x_c reads the two channels: the ratio of the output
        // error's power to the output's variance, per channel, averaged.
        let (chans, w) = ([(0.5f64, 0.2f64), (0.0, 1.0)], [3.0f64, 0.5]);
        let (mut measured, n) = (0.0, 200_000);
        for ((mu, sigma), w) in chans.iter().zip(w) {
            let (mut err, mut sum, mut sumsq) = (0.0, 0.0, 0.0);
            for _ in 0..n {
                let x = (mu + sigma * normal()) as f32;
                let q = grid.fake_quant(x, p);
                let y = w * f64::from(x);
                sum += y;
                sumsq += y * y;
                err += (w * f64::from(q - x)).powi(2);
            }
            let var = sumsq / f64::from(n) - (sum / f64::from(n)).powi(2);
            measured += err / f64::from(n) / var / 2.0;
        }
        let step = f64::from(p.scale);
        let gain: Vec<f64> = w.iter().map(|w| w * w).collect();
        let var: Vec<f32> = chans
            .iter()
            .zip(w)
            .map(|((_, s), w)| (w * s).powi(2) as f32)
            .collect();
        let predicted = mean_ratio(step * step / 12.0, &gain, &var).unwrap();
        let rel = (predicted - measured).abs() / measured;
        assert!(
            rel < 0.05,
            "predicted {predicted:.3e}, measured {measured:.3e}"
        );
    }

    #[test]
    fn a_relu_its_min_and_the_pad_after_them_form_one_chain() {
        use crate::onnx::{GraphProto, NodeProto};
        let node = |op: &str, i: &str, o: &str| NodeProto {
            op_type: Some(op.into()),
            input: vec![i.into()],
            output: vec![o.into()],
            ..Default::default()
        };
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![
                    node("Conv", "x", "c"),
                    node("Relu", "c", "r"),
                    node("Min", "r", "m"),
                    node("Pad", "m", "p"),
                    node("Conv", "p", "d"),
                    node("Add", "d", "a"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            chains(&model, &t(&["x", "r", "m", "p", "d", "a"])),
            vec![t(&["x"]), t(&["r", "m", "p"]), t(&["d"]), t(&["a"])]
        );
        // The chain `r, m, p` on 16 bits: the conv writing into it (through the ReLU) and the
        // conv reading it leave the 8-bit kernels; the Add after the second conv does not.
        let wide: HashSet<String> = t(&["r", "m", "p"]).into_iter().collect();
        let mut named = model.clone();
        named.graph.as_mut().unwrap().node[0].name = Some("stem".into());
        assert_eq!(outside_int8(&named, &wide), t(&["stem", "d"]));
        // Only `p` wide: the first conv reaches it through value ops alone, so it leaves too.
        let wide: HashSet<String> = t(&["p"]).into_iter().collect();
        assert_eq!(outside_int8(&named, &wide), t(&["stem", "d"]));
        assert!(outside_int8(&named, &HashSet::new()).is_empty());
    }
}
