//! Quantization readiness: how much int8 quantization will cost, before and after equalization.
//!
//! - Per layer: SQNR of the int8 weight, `10·log10(Σw² / Σ(w − Q(w))²)`, per-tensor symmetric
//!   (`scale = max|w| / 127`) for the BN-folded and the equalized weight, and per-channel
//!   symmetric as the ceiling CLE cannot beat.
//! - End to end (tract, on sample or random inputs): weights quantize-dequantized (per-tensor
//!   symmetric, per-tensor asymmetric, per-channel) in the BN-folded original and in the
//!   equalized model; optionally W8A8 (activations per-tensor uint8, min/max calibrated on the
//!   same inputs, at every input of Conv/ConvTranspose/Gemm/MatMul/Add/Concat/GlobalAveragePool,
//!   every Add output and every graph output). Figures are the output SQNR and the top-1
//!   agreement against the **original FP32 model**.
//! - Sensitivity: one layer at a time quantized (per-tensor symmetric) in the equalized model.
//! - Activation cost: per scaled activation, the growth of its per-tensor range, from the BN
//!   statistics (data-free) and measured on the inputs.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::layout::WeightLayout;
use crate::onnx::tensor::{self, F32Tensor};
use crate::onnx::{ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::passes::layer_of;
use crate::report::{EndToEnd, LayerQuant, LayerSensitivity, QuantRow};
use crate::verify::{self, InputTensor, Runner};
use crate::work::Work;

/// What the quantization-readiness section computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QuantOptions {
    /// Per-layer int8 weight SQNR (cheap: no inference).
    pub layers: bool,
    /// End-to-end simulated int8 with tract (one model build per variant).
    pub end_to_end: bool,
    /// Include the W8A8 rows (activation fake-quant) in the end-to-end figures.
    pub w8a8: bool,
    /// Quantize one layer at a time (one model build per layer: slow on big models).
    pub sensitivity: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            layers: true,
            end_to_end: false,
            w8a8: true,
            sensitivity: false,
        }
    }
}

/// A weight quantization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// One scale per tensor, zero point 0, levels −127..127.
    PerTensorSymmetric,
    /// One scale and zero point per tensor, 256 levels over [min, max] ∪ {0}.
    PerTensorAsymmetric,
    /// One symmetric scale per output channel.
    PerChannel,
}

impl Scheme {
    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::PerTensorSymmetric => "per_tensor_symmetric",
            Scheme::PerTensorAsymmetric => "per_tensor_asymmetric",
            Scheme::PerChannel => "per_channel",
        }
    }
}

fn qdq_sym(v: f32, scale: f32) -> f32 {
    if scale > 0.0 {
        (v / scale).round().clamp(-127.0, 127.0) * scale
    } else {
        v
    }
}

/// Quantize-dequantizes a weight in place.
pub fn fake_quant(w: &mut [f32], layout: &WeightLayout, scheme: Scheme) {
    match scheme {
        Scheme::PerTensorSymmetric => {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            w.iter_mut().for_each(|v| *v = qdq_sym(*v, scale));
        }
        Scheme::PerTensorAsymmetric => {
            let lo = w.iter().fold(0f32, |m, &v| m.min(v));
            let hi = w.iter().fold(0f32, |m, &v| m.max(v));
            let scale = (hi - lo) / 255.0;
            if scale > 0.0 {
                let zp = (-lo / scale).round();
                w.iter_mut().for_each(|v| {
                    *v = (((*v / scale).round() + zp).clamp(0.0, 255.0) - zp) * scale
                });
            }
        }
        Scheme::PerChannel => {
            let steps: Vec<f32> = layout
                .out_ranges(w)
                .iter()
                .map(|r| if *r > 0.0 { r / 127.0 } else { 1.0 })
                .collect();
            let inv: Vec<f32> = steps.iter().map(|s| 1.0 / s).collect();
            layout.scale_out(w, &inv);
            w.iter_mut()
                .for_each(|v| *v = v.round().clamp(-127.0, 127.0));
            layout.scale_out(w, &steps);
        }
    }
}

/// `10·log10(Σ ref² / Σ (ref − x)²)` in dB (∞ when identical).
pub fn sqnr_db(reference: &[f32], x: &[f32]) -> f64 {
    let mut s = 0f64;
    let mut n = 0f64;
    for (&a, &b) in reference.iter().zip(x) {
        s += (a as f64) * (a as f64);
        n += (a as f64 - b as f64).powi(2);
    }
    if n == 0.0 {
        f64::INFINITY
    } else if s == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (s / n).log10()
    }
}

/// A layer's weight as found in a model.
struct LayerWeight {
    label: String,
    weight: String,
    layout: WeightLayout,
    data: Vec<f32>,
}

/// Every layer weight of `model`, labelled by `labels` (the report's names of its nodes) when
/// given.
fn layer_weights(model: &ModelProto, labels: Option<&[String]>) -> Vec<LayerWeight> {
    let Ok(mut work) = Work::new(model.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..work.node_count() {
        let Ok(l) = layer_of(&mut work, i) else {
            continue;
        };
        if !seen.insert(l.weight.clone()) {
            continue;
        }
        let Ok(data) = work.read(&l.weight).map(|t| t.data.clone()) else {
            continue;
        };
        out.push(LayerWeight {
            label: labels
                .and_then(|l| l.get(i))
                .map_or_else(|| work.label(i).to_string(), Clone::clone),
            weight: l.weight.clone(),
            data,
            layout: l.layout,
        });
    }
    out
}

fn sqnr_of(data: &[f32], layout: &WeightLayout, scheme: Scheme) -> f64 {
    let mut q = data.to_vec();
    fake_quant(&mut q, layout, scheme);
    sqnr_db(data, &q)
}

/// The int8 figures of one BN-folded layer weight: the "before" side of [`layer_table`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldedFigures {
    /// SQNR (dB) per-tensor symmetric.
    pub per_tensor_db: f64,
    /// SQNR (dB) per-channel symmetric.
    pub per_channel_db: f64,
}

/// [`FoldedFigures`] of every layer weight of `work`, by weight name (the first layer reading
/// a weight gives its layout). With `keep` the decoded weights stay in `work`'s cache for the
/// passes still to run; otherwise each is decoded and dropped in turn, so memory stays at one
/// layer.
pub fn folded_figures(work: &mut Work, keep: bool) -> HashMap<String, FoldedFigures> {
    let mut layers: Vec<(String, WeightLayout)> = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..work.node_count() {
        if let Ok(l) = layer_of(work, i) {
            if seen.insert(l.weight.clone()) {
                layers.push((l.weight, l.layout));
            }
        }
    }
    if keep {
        let names: Vec<String> = layers.iter().map(|(w, _)| w.clone()).collect();
        work.prefetch(&names);
    }
    let work = &*work;
    layers
        .par_iter()
        .filter_map(|(weight, layout)| {
            let figures = |data: &[f32]| FoldedFigures {
                per_tensor_db: sqnr_of(data, layout, Scheme::PerTensorSymmetric),
                per_channel_db: sqnr_of(data, layout, Scheme::PerChannel),
            };
            let f = match work.cached(weight) {
                Some(t) => figures(&t.data),
                None => figures(&work.decode(weight).ok()?.data),
            };
            Some((weight.clone(), f))
        })
        .collect()
}

/// Per-layer weight SQNR, BN-folded vs equalized (layers matched by weight name). `labels` names
/// the nodes of `equalized` ([`crate::Equalized::labels`]), so rows use the report's labels.
pub fn layer_table(
    folded: &ModelProto,
    equalized: &ModelProto,
    labels: &[String],
) -> Vec<LayerQuant> {
    let before = Work::new(folded.clone())
        .map(|mut w| folded_figures(&mut w, false))
        .unwrap_or_default();
    let Ok(mut work) = Work::new(equalized.clone()) else {
        return Vec::new();
    };
    table_rows(&before, &mut work, |work, i| {
        labels
            .get(i)
            .map_or_else(|| work.label(i).to_string(), Clone::clone)
    })
}

/// [`layer_table`] on the equalized model still under edit (before [`Work::finish`]), with the
/// BN-folded side already computed ([`folded_figures`]): the modified weights are read from its
/// cache instead of being encoded and decoded again.
pub fn layer_table_in(before: &HashMap<String, FoldedFigures>, work: &mut Work) -> Vec<LayerQuant> {
    table_rows(before, work, |work, i| work.label(i).to_string())
}

fn table_rows(
    before: &HashMap<String, FoldedFigures>,
    work: &mut Work,
    label: impl Fn(&Work, usize) -> String + Sync,
) -> Vec<LayerQuant> {
    let mut layers = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..work.node_count() {
        let Ok(l) = layer_of(work, i) else {
            continue;
        };
        if seen.insert(l.weight.clone()) {
            layers.push((i, l));
        }
    }
    let work = &*work;
    layers
        .par_iter()
        .filter_map(|(i, l)| {
            let decoded;
            let after = match work.cached(&l.weight) {
                Some(t) => &t.data,
                None => {
                    decoded = work.decode(&l.weight).ok()?;
                    &decoded.data
                }
            };
            let b = before.get(&l.weight);
            Some(LayerQuant {
                layer: label(work, *i),
                op: work.node(*i).op_type().to_string(),
                channels: l.layout.out_channels(),
                sqnr_before_db: b.map_or(f64::NAN, |b| b.per_tensor_db),
                sqnr_after_db: sqnr_of(after, &l.layout, Scheme::PerTensorSymmetric),
                sqnr_per_channel_db: b.map_or_else(
                    || sqnr_of(after, &l.layout, Scheme::PerChannel),
                    |b| b.per_channel_db,
                ),
            })
        })
        .collect()
}

/// A copy of `model` with layer weights quantize-dequantized (`only`: just that weight).
pub fn quantized_weights(model: &ModelProto, scheme: Scheme, only: Option<&str>) -> ModelProto {
    quantize_layers(model, &layer_weights(model, None), scheme, only)
}

/// [`quantized_weights`] with the layer weights of `model` already decoded.
fn quantize_layers(
    model: &ModelProto,
    layers: &[LayerWeight],
    scheme: Scheme,
    only: Option<&str>,
) -> ModelProto {
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else { return m };
    let by_name: HashMap<&str, &LayerWeight> =
        layers.iter().map(|l| (l.weight.as_str(), l)).collect();
    let write = |t: &mut TensorProto| {
        if let Some(l) = by_name.get(t.name()) {
            if only.is_some_and(|o| o != l.weight) {
                return;
            }
            let mut q = l.data.clone();
            fake_quant(&mut q, &l.layout, scheme);
            tensor::write_f32(
                t,
                &F32Tensor {
                    dims: l.layout.dims.clone(),
                    data: q,
                },
            );
        }
    };
    for t in g.initializer.iter_mut() {
        write(t);
    }
    for n in g.node.iter_mut().filter(|n| n.op_type() == "Constant") {
        let out = n.output.first().cloned().unwrap_or_default();
        for a in n.attribute.iter_mut().filter(|a| a.name() == "value") {
            if let Some(t) = a.t.as_mut() {
                let saved = t.name.clone();
                t.name = Some(out.clone());
                write(t);
                t.name = saved;
            }
        }
    }
    m
}

/// The activations a W8A8 deployment quantizes: inputs of Conv/ConvTranspose/Gemm/MatMul/Add/
/// Concat/GlobalAveragePool (not constants), Add outputs and graph outputs.
pub fn activation_points(model: &ModelProto) -> Vec<String> {
    let Some(g) = &model.graph else {
        return Vec::new();
    };
    let consts: HashSet<&str> = g
        .initializer
        .iter()
        .map(|t| t.name())
        .chain(
            g.node
                .iter()
                .filter(|n| n.op_type() == "Constant")
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    let mut seen = HashSet::new();
    let mut points = Vec::new();
    let mut push = |t: &str, points: &mut Vec<String>| {
        if !t.is_empty() && !consts.contains(t) && seen.insert(t.to_string()) {
            points.push(t.to_string());
        }
    };
    for n in &g.node {
        match n.op_type() {
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul" | "GlobalAveragePool" => push(
                n.input.first().map(String::as_str).unwrap_or(""),
                &mut points,
            ),
            "Add" | "Concat" => {
                for i in &n.input {
                    push(i, &mut points);
                }
                if n.op_type() == "Add" {
                    push(
                        n.output.first().map(String::as_str).unwrap_or(""),
                        &mut points,
                    );
                }
            }
            _ => {}
        }
    }
    for o in &g.output {
        push(o.name(), &mut points);
    }
    points
}

/// A copy of `model` whose graph also outputs `tensors` (to measure them).
pub fn with_extra_outputs(model: &ModelProto, tensors: &[String]) -> ModelProto {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let existing: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
        for t in tensors.iter().filter(|t| !existing.contains(*t)) {
            g.output.push(ValueInfoProto {
                name: Some(t.clone()),
                ..Default::default()
            });
        }
    }
    m
}

/// Per-tensor `(min, max)` over all samples of the listed tensors (graph outputs included).
pub fn calibrate(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Vec<InputTensor>],
) -> Result<HashMap<String, (f32, f32)>, String> {
    let probe = with_extra_outputs(model, tensors);
    let bytes = crate::onnx::encode(&probe);
    let runner = Runner::new(&bytes, samples.first().ok_or("no samples")?)?;
    let mut ranges: HashMap<String, (f32, f32)> = HashMap::new();
    for s in samples {
        for (name, values, is_float) in runner.run_typed(s)? {
            if !is_float {
                continue;
            }
            let e = ranges
                .entry(name)
                .or_insert((f32::INFINITY, f32::NEG_INFINITY));
            for v in values {
                if v.is_finite() {
                    e.0 = e.0.min(v);
                    e.1 = e.1.max(v);
                }
            }
        }
    }
    Ok(ranges)
}

/// A copy of `model` with per-tensor uint8 fake quantization on `ranges`' tensors.
pub fn with_activation_qdq(model: &ModelProto, ranges: &HashMap<String, (f32, f32)>) -> ModelProto {
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else { return m };
    let inputs: HashSet<String> = g.input.iter().map(|v| v.name().to_string()).collect();
    let mut params = Vec::new();
    // Explicit arithmetic rather than QuantizeLinear/DequantizeLinear, so every runtime
    // computes the same thing: y = (clip(round(x / s) + zp, 0, 255) − zp) · s.
    let qdq = |t: &str, src: &str, dst: &str, params: &mut Vec<TensorProto>| -> Vec<NodeProto> {
        let (lo, hi) = ranges.get(t).copied().unwrap_or((0.0, 0.0));
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zp = (-lo / scale).round().clamp(0.0, 255.0);
        let scalar = |name: String, v: f32, params: &mut Vec<TensorProto>| {
            params.push(tensor::new_f32(
                &name,
                &F32Tensor {
                    dims: vec![],
                    data: vec![v],
                },
            ));
            name
        };
        let s = scalar(format!("{t}__act_scale"), scale, params);
        let z = scalar(format!("{t}__act_zp"), zp, params);
        let lo_q = scalar(format!("{t}__act_qmin"), 0.0, params);
        let hi_q = scalar(format!("{t}__act_qmax"), 255.0, params);
        let step = |op: &str, inputs: Vec<String>, out: String| NodeProto {
            op_type: Some(op.into()),
            input: inputs,
            output: vec![out],
            ..Default::default()
        };
        let n = |k: &str| format!("{t}__act_{k}");
        vec![
            step("Div", vec![src.to_string(), s.clone()], n("div")),
            step("Round", vec![n("div")], n("round")),
            step("Add", vec![n("round"), z.clone()], n("shift")),
            step("Clip", vec![n("shift"), lo_q, hi_q], n("clip")),
            step("Sub", vec![n("clip"), z], n("unshift")),
            step("Mul", vec![n("unshift"), s], dst.to_string()),
        ]
    };
    let mut nodes = Vec::with_capacity(g.node.len() * 2);
    let mut renamed_inputs = HashMap::new();
    for t in ranges.keys().filter(|t| inputs.contains(*t)) {
        let dst = format!("{t}__act_dq");
        nodes.extend(qdq(t, t, &dst, &mut params));
        renamed_inputs.insert(t.clone(), dst);
    }
    for mut n in std::mem::take(&mut g.node) {
        for i in n.input.iter_mut() {
            if let Some(r) = renamed_inputs.get(i) {
                *i = r.clone();
            }
        }
        let mut extra = Vec::new();
        for o in n.output.iter_mut() {
            if ranges.contains_key(o.as_str()) && !inputs.contains(o.as_str()) {
                let t = o.clone();
                let pre = format!("{t}__act_fp");
                *o = pre.clone();
                extra.extend(qdq(&t, &pre, &t, &mut params));
            }
        }
        nodes.push(n);
        nodes.extend(extra);
    }
    g.node = nodes;
    g.initializer.extend(params);
    m
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Runs `model` on every sample; returns the first output per sample.
pub fn first_outputs(
    model_bytes: &[u8],
    samples: &[Vec<InputTensor>],
) -> Result<Vec<Vec<f32>>, String> {
    let runner = Runner::new(model_bytes, samples.first().ok_or("no samples")?)?;
    samples
        .iter()
        .map(|s| {
            runner
                .run(s)
                .map(|o| o.into_iter().next().map(|x| x.1).unwrap_or_default())
        })
        .collect()
}

/// `(SQNR dB, top-1 agreement)` of `outs` against `reference` (one vector per sample).
pub fn score(reference: &[Vec<f32>], outs: &[Vec<f32>]) -> (f64, f64) {
    let r: Vec<f32> = reference.iter().flatten().copied().collect();
    let o: Vec<f32> = outs.iter().flatten().copied().collect();
    let agree = reference
        .iter()
        .zip(outs)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    (
        sqnr_db(&r, &o),
        agree as f64 / reference.len().max(1) as f64,
    )
}

/// The original model's first output per sample: the reference of every figure.
pub fn reference_outputs(
    original: &ModelProto,
    samples: &[Vec<InputTensor>],
) -> Result<Vec<Vec<f32>>, String> {
    first_outputs(&crate::onnx::encode(original), samples)
}

/// Rows for one model (labelled `label`): FP32, the three weight-only int8 schemes and,
/// with `w8a8`, weights and activations together — each against `reference`.
pub fn evaluate_model(
    reference: &[Vec<f32>],
    model: &ModelProto,
    label: &str,
    samples: &[Vec<InputTensor>],
    w8a8: bool,
) -> Result<Vec<QuantRow>, String> {
    let mut rows = Vec::new();
    let mut push = |scheme: &str, outs: Vec<Vec<f32>>| {
        let (sqnr_db, top1_agreement) = score(reference, &outs);
        rows.push(QuantRow {
            model: label.into(),
            scheme: scheme.into(),
            sqnr_db,
            top1_agreement,
        });
    };
    push("fp32", first_outputs(&crate::onnx::encode(model), samples)?);
    for s in [
        Scheme::PerTensorSymmetric,
        Scheme::PerTensorAsymmetric,
        Scheme::PerChannel,
    ] {
        let q = quantized_weights(model, s, None);
        push(s.name(), first_outputs(&crate::onnx::encode(&q), samples)?);
    }
    if w8a8 {
        push(
            "w8a8",
            w8a8_outputs(model, Scheme::PerTensorSymmetric, samples)?,
        );
    }
    Ok(rows)
}

/// Outputs of `model` with weights quantized by `scheme` and every activation point
/// ([`activation_points`]) fake-quantized per tensor to uint8.
///
/// Ranges are calibrated (min/max) on samples other than the one evaluated, as in a deployment:
/// with 4 or more samples, two folds (even samples calibrate the odd ones and vice versa);
/// with fewer, on all samples.
pub fn w8a8_outputs(
    model: &ModelProto,
    scheme: Scheme,
    samples: &[Vec<InputTensor>],
) -> Result<Vec<Vec<f32>>, String> {
    let points: Vec<String> = activation_points(model)
        .into_iter()
        .filter(|p| tensor_exists(model, p))
        .collect();
    let q = quantized_weights(model, scheme, None);
    let run_with =
        |calib: &[Vec<InputTensor>], eval: &[Vec<InputTensor>]| -> Result<Vec<Vec<f32>>, String> {
            let ranges: HashMap<String, (f32, f32)> = calibrate(&q, &points, calib)?
                .into_iter()
                .filter(|(k, _)| points.contains(k))
                .collect();
            first_outputs(
                &crate::onnx::encode(&with_activation_qdq(&q, &ranges)),
                eval,
            )
        };
    if samples.len() < 4 {
        return run_with(samples, samples);
    }
    let even: Vec<Vec<InputTensor>> = samples.iter().step_by(2).cloned().collect();
    let odd: Vec<Vec<InputTensor>> = samples.iter().skip(1).step_by(2).cloned().collect();
    let on_odd = run_with(&even, &odd)?;
    let on_even = run_with(&odd, &even)?;
    let mut out = Vec::with_capacity(samples.len());
    let (mut e, mut o) = (on_even.into_iter(), on_odd.into_iter());
    for k in 0..samples.len() {
        out.extend(if k % 2 == 0 { e.next() } else { o.next() });
    }
    Ok(out)
}

/// Why [`end_to_end`] stopped when `canceled()` turned true.
const CANCELED: &str = "canceled";

/// The models [`end_to_end`] compares.
pub struct Compared<'a> {
    /// The FP32 original: the reference.
    pub original: &'a ModelProto,
    /// The BN-folded model.
    pub folded: &'a ModelProto,
    /// The equalized model.
    pub equalized: &'a ModelProto,
    /// The report's labels of `equalized`'s nodes ([`crate::Equalized::labels`]).
    pub labels: &'a [String],
}

/// End-to-end figures: original FP32 reference vs quantized BN-folded and equalized models.
/// `canceled` is polled between model runs (one per layer for the sensitivity); when it is true
/// the simulation stops with [`CANCELED`].
pub fn end_to_end(
    models: &Compared,
    samples: &[Vec<InputTensor>],
    source: String,
    opts: &QuantOptions,
    canceled: &dyn Fn() -> bool,
) -> Result<EndToEnd, String> {
    let Compared {
        original,
        folded,
        equalized,
        labels,
    } = *models;
    let check = || {
        if canceled() {
            Err(CANCELED.to_string())
        } else {
            Ok(())
        }
    };
    let reference = reference_outputs(original, samples)?;
    let mut e = EndToEnd {
        inputs: source,
        samples: samples.len(),
        ..Default::default()
    };
    for (label, model) in [("bn_folded", folded), ("equalized", equalized)] {
        check()?;
        e.rows.extend(evaluate_model(
            &reference, model, label, samples, opts.w8a8,
        )?);
    }
    if opts.sensitivity {
        let layers = layer_weights(equalized, Some(labels));
        for l in &layers {
            check()?;
            let q = quantize_layers(
                equalized,
                &layers,
                Scheme::PerTensorSymmetric,
                Some(&l.weight),
            );
            let (sq, _) = score(
                &reference,
                &first_outputs(&crate::onnx::encode(&q), samples)?,
            );
            e.sensitivity.push(LayerSensitivity {
                layer: l.label.clone(),
                sqnr_db: sq,
            });
        }
    }
    Ok(e)
}

fn tensor_exists(model: &ModelProto, t: &str) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.input.iter().any(|v| v.name() == t)
            || g.node.iter().any(|n| n.output.iter().any(|o| o == t))
    })
}

/// Per-tensor max |x| of `tensors` over the samples.
pub fn measured_abs_max(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Vec<InputTensor>],
) -> Result<HashMap<String, f32>, String> {
    Ok(calibrate(model, tensors, samples)?
        .into_iter()
        .map(|(k, (lo, hi))| (k, lo.abs().max(hi.abs())))
        .collect())
}

/// Splits sample inputs into single samples.
pub fn samples_of(inputs: &[InputTensor]) -> Vec<Vec<InputTensor>> {
    verify::split_batch(inputs)
}
