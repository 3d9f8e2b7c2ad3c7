//! The deploy model: the equalized model made ready for one int8 target, in the order that
//! worked (int8-output.md §3): exact CLE → weights onto the target grid ([`super::rounding`],
//! nearest or data-free) → bias correction against the rounded weights
//! ([`super::bias_correction`], `ε = W̃ − W`).
//!
//! Invariants: it is built from a copy of the equalized model, which stays byte-identical to a
//! run without these options; only layer weights, biases (new ones named `<label>.bias`, a new
//! `Add` after a bias-less MatMul) and `metadata_props` change; every layer weight of the deploy
//! model quantizes back to itself under the target grid (under its [`Deploy::steps`] when
//! [`Deploy::bytes`] bounds its int16 pairs); `E[x]` is taken on the FP32
//! equalized model (after the correction, each layer's output mean is the FP32 one in
//! expectation, so downstream `E[x]` hold).

pub mod bias_correction;
pub mod rounding;
pub mod stats;

use std::collections::{HashMap, HashSet};

use crate::error::{CoreError, Result};
use crate::graph::work::{Edits, Work};
use crate::graph::{is_layer_op, layer_of, Layer};
use crate::onnx::proto::StringStringEntryProto;
use crate::onnx::ModelProto;
use crate::options::{BiasCorrection, DeployOptions, Rounding, Target, WeightGrid};
use crate::quant::sqnr_db;
use crate::report::{DeployLayer, DeployReport, MetadataEntry, PredictedDeviation, Skip};
use crate::runtime::InputTensor;
use stats::{ActivationStats, ChannelAxis, Origins, StatsOptions};

/// A built deploy model.
#[derive(Debug)]
pub struct Deploy {
    /// The model.
    pub model: ModelProto,
    /// Data-free statistics of the equalized model (the same means hold for the deploy model).
    pub stats: ActivationStats,
    /// What was done.
    pub report: DeployReport,
    /// The grid step of every weight put on the grid, per output channel (all equal per
    /// tensor): the int8 outputs quantize the deploy model with exactly these.
    pub steps: HashMap<String, Vec<f32>>,
    /// The largest raw u8 byte of each input channel that the int16 pair bound of a weight
    /// counted on, by weight name (grids with int16 pairs, where some channel stays below
    /// 255): the QDQ model's levels keep the same bound.
    pub bytes: HashMap<String, Vec<u8>>,
}

pub use stats::ChannelRanges;

/// What the int16 pair bound of a grid with int16 pairs may count on ([`build`]).
#[derive(Debug, Clone, Copy)]
pub enum PairBounds<'a> {
    /// Any input byte (255 on every channel): the deploy model will be quantized with ranges
    /// not known here.
    AnyInput,
    /// Per-channel ranges measured on the samples the int8 exports are calibrated on.
    Measured(&'a ChannelRanges),
}

/// How far past its range a channel's raw bytes are allowed for: the byte bound of a channel
/// is `1.25 ×` its measured or modelled largest byte (capped at 255), since inputs the ranges
/// were not taken on reach further.
pub const BYTE_MARGIN: f32 = 1.25;

/// `(node, reason code, detail)` of a layer op that is not quantizable.
type NotQuantized = (usize, String, String);

/// The quantizable layers of a model: `(node, layer)` for every node [`layer_of`] accepts, and
/// the layer ops it refuses.
fn layers(work: &mut Work) -> (Vec<(usize, Layer)>, Vec<NotQuantized>) {
    let mut ok = Vec::new();
    let mut not = Vec::new();
    for i in 0..work.node_count() {
        match layer_of(work, i) {
            Ok(l) => ok.push((i, l)),
            Err((code, detail)) if is_layer_op(work.node(i)) => {
                not.push((i, code.to_string(), detail));
            }
            Err(_) => {}
        }
    }
    (ok, not)
}

/// The `(name, channels, axis)` of every quantizable layer's input in `model`, once each.
fn layer_inputs(work: &mut Work) -> Vec<(String, usize, ChannelAxis)> {
    let (ls, _) = layers(work);
    let mut seen = HashSet::new();
    ls.iter()
        .map(|(i, l)| {
            (
                work.input(*i, 0).to_string(),
                l.layout.in_channels(),
                ChannelAxis::of(&l.layout.op),
            )
        })
        .filter(|t| seen.insert(t.0.clone()))
        .collect()
}

/// Per-channel ranges of every quantizable layer's input in `model`, measured on `samples`
/// (the byte bounds of the int16 pairs, [`build`]); the error says why the model could not run.
pub fn measured_input_ranges(
    model: &ModelProto,
    samples: &[Vec<InputTensor>],
) -> std::result::Result<ChannelRanges, String> {
    let mut work = Work::new(model.clone()).map_err(|e| e.to_string())?;
    let tensors = layer_inputs(&mut work);
    stats::measure_ranges(model, &tensors, samples)
}

/// The largest raw u8 byte of each of `channels` input channels of `tensor` in the int8
/// kernels, from its per-channel ranges measured on samples, on the activation grid of
/// `target` fitted to their hull, times [`BYTE_MARGIN`]. `None` when the tensor was not
/// measured or every channel may reach 255.
fn input_bytes(
    target: &Target,
    tensor: &str,
    channels: usize,
    measured: &ChannelRanges,
) -> Option<Vec<u8>> {
    let (lo, hi) = measured.get(tensor)?;
    let lo = stats::expand_channels(lo, channels)?;
    let hi = stats::expand_channels(hi, channels)?;
    let grid = target.activations();
    let (qmin, qmax) = grid.levels();
    if qmax - qmin != 255 {
        return None;
    }
    let t_lo = lo.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let t_hi = hi.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !(t_lo.is_finite() && t_hi.is_finite() && t_lo < t_hi) {
        return None;
    }
    let p = grid.params(t_lo, t_hi);
    let zero = (p.zero_point - qmin) as f32;
    let bytes: Vec<u8> = hi
        .iter()
        .map(|&h| {
            let b = (h.max(0.0) / p.scale * BYTE_MARGIN).ceil() + zero;
            if b.is_finite() {
                b.clamp(0.0, 255.0) as u8
            } else {
                255
            }
        })
        .collect();
    bytes.iter().any(|&b| b < 255).then_some(bytes)
}

/// Per-channel means of every quantizable layer's input in `equalized`, measured on
/// `samples` (empirical bias correction).
pub fn measured_input_means(
    equalized: &ModelProto,
    samples: &[Vec<InputTensor>],
) -> Result<HashMap<String, Vec<f32>>> {
    let mut work = Work::new(equalized.clone())?;
    let tensors = layer_inputs(&mut work);
    stats::measure_means(equalized, &tensors, samples).map_err(|e| {
        CoreError::InvalidOptions(format!(
            "empirical bias correction: cannot run the model: {e}"
        ))
    })
}

fn rms(v: &[f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    (v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

/// Builds the deploy model from the equalized model (`labels`: its nodes' report labels).
/// `measured`: per-tensor input means for empirical correction ([`measured_input_means`]);
/// `bounds`: what the int16 pair bound counts on ([`PairBounds`]); `input_range`: the declared
/// range of the graph inputs (the input model of the data-free statistics,
/// [`StatsOptions::input_range`]).
#[allow(clippy::too_many_arguments)]
pub fn build(
    equalized: &ModelProto,
    labels: &[String],
    origins: &Origins,
    target: &Target,
    opts: &DeployOptions,
    measured: Option<&HashMap<String, Vec<f32>>>,
    bounds: PairBounds,
    input_range: Option<[f32; 2]>,
) -> Result<Deploy> {
    let mut work = Work::new(equalized.clone())?;
    let stats = stats::propagate(
        &mut work,
        labels,
        origins,
        &StatsOptions {
            input_mean: opts.input_mean.clone(),
            input_range,
            ..StatsOptions::default()
        },
    );
    let grid: WeightGrid = target.weights();
    let label = |work: &Work, i: usize| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| work.label(i).to_string())
    };
    let mut report = DeployReport {
        target: target.describe(),
        rounding: opts.rounding.name().into(),
        bias_correction: opts.bias_correction.name().into(),
        expectation: match opts.bias_correction {
            BiasCorrection::Off => None,
            BiasCorrection::Analytic => Some(format!(
                "data-free: folded BN statistics through the equalized graph ({} of {} tensors \
                 with statistics, {} with a modelled mean; graph input mean {}{}); only layers \
                 whose input mean is modelled are corrected",
                stats.known(),
                work.index().topo().len() + work.graph().input.len(),
                stats.mean_modelled(),
                match (&opts.input_mean, input_range) {
                    (Some(m), _) => format!("{m:?}"),
                    (None, Some([lo, hi])) => format!("{}", (lo + hi) / 2.0),
                    (None, None) => "0".into(),
                },
                match input_range {
                    Some([lo, hi]) => format!(", uniform on [{lo}, {hi}]"),
                    None => String::new(),
                }
            )),
            BiasCorrection::Empirical => Some("measured on the sample inputs".into()),
        },
        function_changed: true,
        ..Default::default()
    };
    let (ls, not) = layers(&mut work);
    for (i, code, detail) in not {
        report.skipped.push(Skip {
            pass: "deploy".into(),
            nodes: vec![label(&work, i)],
            reason: code,
            detail: format!("not quantized: {detail}"),
        });
    }
    let mut by_weight: Vec<(String, Vec<(usize, Layer)>)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    for (i, l) in ls {
        let k = *slot.entry(l.weight.clone()).or_insert_with(|| {
            by_weight.push((l.weight.clone(), Vec::new()));
            by_weight.len() - 1
        });
        by_weight[k].1.push((i, l));
    }
    let mut edits = Edits::default();
    let mut nsr = 0f64;
    let mut steps: HashMap<String, Vec<f32>> = HashMap::new();
    let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
    for (weight, nodes) in &by_weight {
        let layout = nodes[0].1.layout.clone();
        let w = match work.read(weight) {
            Ok(t) if layout.matches(t) => t.data.clone(),
            Ok(_) | Err(_) => continue,
        };
        let risk = plain_risk(&w, &layout, grid);
        let layer_bytes = match (grid.int16_pairs, bounds) {
            (false, _) | (true, PairBounds::AnyInput) => None,
            (true, PairBounds::Measured(m)) => {
                let input = work.input(nodes[0].0, 0).to_string();
                input_bytes(target, &input, layout.in_channels(), m)
            }
        };
        let mut q = w.clone();
        let mut r = rounding::round_to_grid_for(
            &mut q,
            &layout,
            &grid,
            opts.rounding,
            layer_bytes.as_deref(),
        );
        steps.insert(weight.clone(), r.steps.clone());
        if let Some(b) = &layer_bytes {
            bytes.insert(weight.clone(), b.clone());
        }
        let nearest_db = if opts.rounding == Rounding::Nearest {
            sqnr_db(&w, &q)
        } else {
            let mut n = w.clone();
            rounding::round_to_grid_for(
                &mut n,
                &layout,
                &grid,
                Rounding::Nearest,
                layer_bytes.as_deref(),
            );
            let input = work.input(nodes[0].0, 0).to_string();
            let channels = layout.in_channels();
            let known = stats.get(&input);
            let var = known
                .and_then(|s| stats::expand_channels(&s.var(), channels))
                .unwrap_or_else(|| vec![1.0; channels]);
            let mean = match stats.input_mean(&input, channels) {
                Ok(_) if opts.bias_correction != BiasCorrection::Off => vec![0.0; channels],
                Ok(m) => m,
                Err(_) => vec![0.0; channels],
            };
            r.reverted = rounding::keep_where_better(
                &w,
                &mut q,
                &n,
                &layout,
                rounding::InputModel {
                    var: &var,
                    mean: &mean,
                    rho: rounding::TAP_CORRELATION,
                },
            );
            let flips = q.iter().zip(&n).filter(|(a, b)| a != b).count();
            r.kernel_flips = r.kernel_flips.min(flips);
            r.channel_flips = flips - r.kernel_flips;
            sqnr_db(&w, &n)
        };
        let weight_db = sqnr_db(&w, &q);
        if weight_db.is_finite() {
            nsr += 10f64.powf(-weight_db / 10.0);
        }
        let eps: Vec<f32> = q.iter().zip(&w).map(|(a, b)| a - b).collect();
        work.put(
            weight,
            crate::onnx::tensor::F32Tensor {
                dims: layout.dims.clone(),
                data: q,
            },
        );
        report.summary.elements += eps.len();
        report.summary.flips += r.kernel_flips + r.channel_flips;
        report.summary.pair_moves += r.pair_moves;
        report.summary.pairs_at_risk += risk;
        report.summary.widened += usize::from(r.step_widening > 1.0);
        for (i, l) in nodes {
            let mut row = DeployLayer {
                layer: label(&work, *i),
                op: work.node(*i).op_type().to_string(),
                weight: weight.clone(),
                channels: layout.out_channels(),
                weight_sqnr_db: weight_db,
                nearest_sqnr_db: nearest_db,
                flips: r.kernel_flips + r.channel_flips,
                max_channel_error_lsb: r.max_channel_error_after,
                step_widening: r.step_widening,
                pair_moves: r.pair_moves,
                pairs_at_risk: risk,
                corrected: false,
                correction_rms: 0.0,
                correction_max_abs: 0.0,
                correction_relative: 0.0,
            };
            if opts.bias_correction != BiasCorrection::Off {
                let input = work.input(*i, 0).to_string();
                let mean = match opts.bias_correction {
                    BiasCorrection::Empirical => measured
                        .and_then(|m| m.get(&input))
                        .and_then(|m| stats::expand_channels(m, layout.in_channels()))
                        .ok_or_else(|| format!("`{input}` was not measured")),
                    _ => stats.input_mean(&input, layout.in_channels()),
                };
                match mean {
                    Ok(mean) => {
                        let share = stats::taps_per_output(&work, *i, &layout.op);
                        let shift = bias_correction::expected_shift(&eps, &layout, &mean, share);
                        let had_bias = l.bias.is_some()
                            || (layout.op == crate::graph::layout::LayerOp::MatMul
                                && stats::matmul_bias_after(&mut work, *i).is_some());
                        let old = match &l.bias {
                            Some(b) => work.read(b).map(|t| rms(&t.data)).unwrap_or(0.0),
                            None => 0.0,
                        };
                        match bias_correction::correct(&mut work, l, &shift, &mut edits) {
                            Ok(delta) => {
                                row.corrected = true;
                                row.correction_rms = rms(&delta);
                                row.correction_max_abs =
                                    delta.iter().fold(0f64, |m, &d| m.max(f64::from(d).abs()));
                                row.correction_relative = if old > 0.0 {
                                    row.correction_rms / old
                                } else {
                                    0.0
                                };
                                report.summary.corrected += 1;
                                if !had_bias {
                                    report.summary.biases_created += 1;
                                }
                            }
                            Err((code, detail)) => report.skipped.push(Skip {
                                pass: "bias_correction".into(),
                                nodes: vec![row.layer.clone()],
                                reason: code.into(),
                                detail,
                            }),
                        }
                    }
                    Err(why) => report.skipped.push(Skip {
                        pass: "bias_correction".into(),
                        nodes: vec![row.layer.clone()],
                        reason: if stats.basis(&input).is_some() {
                            "unmodelled_expectation".into()
                        } else {
                            "no_input_mean".into()
                        },
                        detail: format!(
                            "bias left uncorrected: E[x] of its input `{input}` is not \
                             known: {why}"
                        ),
                    }),
                }
            }
            report.layers.push(row);
        }
    }
    report.summary.layers = report.layers.len();
    report.predicted = PredictedDeviation {
        method: "additive noise: the per-layer weight noise-to-signal ratios summed \
                 (independent errors, unit gain)"
            .into(),
        sqnr_db: if nsr > 0.0 {
            -10.0 * nsr.log10()
        } else {
            f64::INFINITY
        },
        rel_l2: nsr.sqrt(),
    };
    work.apply(edits)?;
    let mut model = work.finish();
    let mut edits_text = vec![format!(
        "weights on the target grid ({})",
        opts.rounding.name()
    )];
    if opts.bias_correction != BiasCorrection::Off {
        edits_text.push(format!("bias correction ({})", opts.bias_correction.name()));
    }
    let metadata = [
        ("onnx_cle.target", target.describe()),
        ("onnx_cle.deploy_edits", edits_text.join("; ")),
        (
            "onnx_cle.function_changed",
            "true: tied to the target grid; the exact equalized model is the main output".into(),
        ),
    ];
    for (k, v) in metadata {
        model.metadata_props.retain(|e| e.key() != k);
        model.metadata_props.push(StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.clone()),
        });
        report.metadata.push(MetadataEntry {
            key: k.into(),
            value: v,
        });
    }
    Ok(Deploy {
        model,
        stats,
        report,
        steps,
        bytes,
    })
}

/// Records on `d` (its `deploy_edits` metadata and report) that `n` BatchNormalizations stay
/// float ops: the model it was built from keeps them where folding would have cost the
/// per-tensor weight grid ([`crate::passes::bn_fold::UNFOLD_GAIN`]).
pub fn note_kept_bn(d: &mut Deploy, n: usize) {
    let note = format!("{n} BatchNormalization kept as float ops (per-tensor weights)");
    let key = "onnx_cle.deploy_edits";
    for e in d.model.metadata_props.iter_mut().filter(|e| e.key() == key) {
        e.value = Some(format!("{}; {note}", e.value()));
    }
    for e in d.report.metadata.iter_mut().filter(|e| e.key == key) {
        e.value = format!("{}; {note}", e.value);
    }
}

/// The pairs of `w` that saturate for some input on x86-64 without VNNI when rounded to nearest
/// on the plain (max-abs) version of `grid` ([`crate::quant::kernels::pairs_at_risk`]).
fn plain_risk(w: &[f32], layout: &crate::graph::layout::WeightLayout, grid: WeightGrid) -> usize {
    if grid.asymmetric {
        // u8 weights run in u8×u8 kernels, which have no int16 pairs.
        return 0;
    }
    let plain = WeightGrid {
        int16_pairs: false,
        ..grid
    };
    let steps = plain.steps(w, layout);
    let mut levels = w.to_vec();
    plain.apply_levels(&mut levels, layout, &steps, |v, s| plain.level(v, s));
    crate::quant::kernels::pairs_at_risk(&levels, layout)
}
