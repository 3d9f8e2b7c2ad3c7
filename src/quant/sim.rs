//! End-to-end int8 simulation with tract: weights quantize-dequantized by a [`Scheme`], optional
//! per-tensor uint8 activations (min/max calibrated on other samples than the one evaluated),
//! scored against the original FP32 model's outputs (SQNR, top-1 agreement), and the one-layer-
//! at-a-time sensitivity.

use std::collections::{HashMap, HashSet};

use super::plan::QuantPlan;
use super::target::ActivationParams;
use super::{fake_quant, sqnr_db, Scheme};
use crate::graph::layer_of;
use crate::graph::layout::WeightLayout;
use crate::graph::work::Work;
use crate::onnx::tensor::{self, F32Tensor};
use crate::onnx::{ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::options::{ActivationGrid, ActivationType, QuantOptions};
use crate::report::{EndToEnd, LayerSensitivity, QuantRow};
use crate::runtime::{self, InputTensor, Runner};

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
    let values = layers
        .iter()
        .filter(|l| only.is_none_or(|o| o == l.weight))
        .map(|l| {
            let mut q = l.data.clone();
            fake_quant(&mut q, &l.layout, scheme);
            (
                l.weight.clone(),
                F32Tensor {
                    dims: l.layout.dims.clone(),
                    data: q,
                },
            )
        })
        .collect();
    replace_constants(&mut m, &values);
    m
}

/// Overwrites the initializers and `Constant` values named in `values`.
fn replace_constants(m: &mut ModelProto, values: &HashMap<String, F32Tensor>) {
    let Some(g) = m.graph.as_mut() else { return };
    let write = |t: &mut TensorProto| {
        if let Some(v) = values.get(t.name()) {
            tensor::write_f32(t, v);
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
}

/// The int8 deployment `plan` describes, in float: every quantized weight and bias replaced by
/// what `DequantizeLinear` makes of its levels, every activation point fake-quantized
/// ([`with_fake_quant`]) — the simulation of the QDQ model ([`super::export::qdq`]) and of the
/// encodings.
pub fn plan_model(model: &ModelProto, plan: &QuantPlan) -> Result<ModelProto, String> {
    let mut work = Work::new(model.clone()).map_err(|e| e.to_string())?;
    let mut values = HashMap::new();
    for w in &plan.weights {
        let t = work.read(&w.weight)?;
        let data = w.dequantized(&t.data);
        let dims = t.dims.clone();
        values.insert(w.weight.clone(), F32Tensor { dims, data });
    }
    // A bias read by several layers gets one copy per layer (their input scales differ).
    let mut extra = Vec::new();
    let mut rewire = Vec::new();
    for b in &plan.biases {
        let t = work.read(&b.bias)?;
        let q = F32Tensor {
            dims: t.dims.clone(),
            data: b.dequantized(&t.data),
        };
        if work.index().use_count(&b.bias) > 1 {
            let name = format!("{}__q{}", b.bias, b.node);
            extra.push(tensor::new_f32(&name, &q));
            rewire.push((b.node, name));
        } else {
            values.insert(b.bias.clone(), q);
        }
    }
    let mut m = model.clone();
    replace_constants(&mut m, &values);
    if let Some(g) = m.graph.as_mut() {
        g.initializer.extend(extra);
        for (node, name) in rewire {
            if let Some(slot) = g.node.get_mut(node).and_then(|n| n.input.get_mut(2)) {
                *slot = name;
            }
        }
    }
    let points = plan
        .activations
        .iter()
        .map(|a| (a.tensor.clone(), FakeQuant::on(a.grid, a.params)))
        .collect();
    Ok(with_fake_quant(&m, &points))
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
    let grid = ActivationGrid {
        ty: ActivationType::Uint8,
        symmetric: false,
    };
    let points = ranges
        .iter()
        .map(|(t, &(lo, hi))| (t.clone(), FakeQuant::on(grid, grid.params(lo, hi))))
        .collect();
    with_fake_quant(model, &points)
}

/// A copy of `model` with per-tensor fake quantization on `ranges`' tensors, on the activation
/// grid `grid` (scale and zero point from [`ActivationGrid::params`]).
pub fn with_activation_qdq_on(
    model: &ModelProto,
    ranges: &HashMap<String, (f32, f32)>,
    grid: &ActivationGrid,
) -> ModelProto {
    let points = ranges
        .iter()
        .map(|(t, &(lo, hi))| (t.clone(), FakeQuant::on(*grid, grid.params(lo, hi))))
        .collect();
    with_fake_quant(model, &points)
}

/// Per-tensor fake quantization of one activation: `(clip(round(x / s) + zp, qmin, qmax) − zp)·s`,
/// what `QuantizeLinear` → `DequantizeLinear` computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeQuant {
    /// Scale and zero point.
    pub params: ActivationParams,
    /// Lowest level.
    pub qmin: i32,
    /// Highest level.
    pub qmax: i32,
}

impl FakeQuant {
    /// `params` on `grid`'s levels.
    pub fn on(grid: ActivationGrid, params: ActivationParams) -> Self {
        let (qmin, qmax) = grid.levels();
        FakeQuant { params, qmin, qmax }
    }
}

/// A copy of `model` with the tensors of `points` fake-quantized (graph inputs included).
pub fn with_fake_quant(model: &ModelProto, points: &HashMap<String, FakeQuant>) -> ModelProto {
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else { return m };
    let inputs: HashSet<String> = g.input.iter().map(|v| v.name().to_string()).collect();
    let mut params = Vec::new();
    // Explicit arithmetic rather than QuantizeLinear/DequantizeLinear, so every runtime
    // computes the same thing: y = (clip(round(x / s) + zp, qmin, qmax) − zp) · s.
    let qdq = |t: &str, src: &str, dst: &str, params: &mut Vec<TensorProto>| -> Vec<NodeProto> {
        let q = points[t];
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
        let s = scalar(format!("{t}__act_scale"), q.params.scale, params);
        let z = scalar(format!("{t}__act_zp"), q.params.zero_point as f32, params);
        let lo_q = scalar(format!("{t}__act_qmin"), q.qmin as f32, params);
        let hi_q = scalar(format!("{t}__act_qmax"), q.qmax as f32, params);
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
    for t in points.keys().filter(|t| inputs.contains(*t)) {
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
            if points.contains_key(o.as_str()) && !inputs.contains(o.as_str()) {
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

/// `(median, 10th percentile)` over samples of each sample's output SQNR (dB, capped at 300).
pub fn spread(reference: &[Vec<f32>], outs: &[Vec<f32>]) -> (f64, f64) {
    let mut per: Vec<f64> = reference
        .iter()
        .zip(outs)
        .map(|(r, o)| sqnr_db(r, o).min(300.0))
        .collect();
    per.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if per.is_empty() {
            return f64::NAN;
        }
        let x = q * (per.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        per[lo] + (per[hi] - per[lo]) * (x - lo as f64)
    };
    (at(0.5), at(0.1))
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
    let mut push =
        |scheme: &str, outs: Vec<Vec<f32>>| rows.push(quant_row(reference, label, scheme, &outs));
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
    let q = quantized_weights(model, scheme, None);
    cross_calibrated(&q, samples, &|m, ranges| with_activation_qdq(m, ranges))
}

/// W8A8 outputs of `model` on `eval` with activation ranges calibrated (min/max) on `calib`:
/// weights quantized by `scheme`, every activation point per-tensor uint8.
pub fn w8a8_calibrated_outputs(
    model: &ModelProto,
    scheme: Scheme,
    calib: &[Vec<InputTensor>],
    eval: &[Vec<InputTensor>],
) -> Result<Vec<Vec<f32>>, String> {
    calibrated_outputs(
        &quantized_weights(model, scheme, None),
        calib,
        eval,
        &|m, ranges| with_activation_qdq(m, ranges),
    )
}

/// Builds a model with activation fake quantization on the given per-tensor ranges.
type QdqBuilder<'a> = &'a dyn Fn(&ModelProto, &HashMap<String, (f32, f32)>) -> ModelProto;

/// Outputs on `eval` of `q` (weights already quantized) with every activation point
/// fake-quantized by `qdq(q, ranges)`, ranges min/max-calibrated on `calib`.
fn calibrated_outputs(
    q: &ModelProto,
    calib: &[Vec<InputTensor>],
    eval: &[Vec<InputTensor>],
    qdq: QdqBuilder,
) -> Result<Vec<Vec<f32>>, String> {
    let points: Vec<String> = activation_points(q)
        .into_iter()
        .filter(|p| tensor_exists(q, p))
        .collect();
    let ranges: HashMap<String, (f32, f32)> = calibrate(q, &points, calib)?
        .into_iter()
        .filter(|(k, _)| points.contains(k))
        .collect();
    first_outputs(&crate::onnx::encode(&qdq(q, &ranges)), eval)
}

/// [`calibrated_outputs`] with ranges calibrated on other samples than the one evaluated: two
/// folds with 4 or more samples (even samples calibrate the odd ones and vice versa), all
/// samples otherwise.
fn cross_calibrated(
    q: &ModelProto,
    samples: &[Vec<InputTensor>],
    qdq: QdqBuilder,
) -> Result<Vec<Vec<f32>>, String> {
    if samples.len() < 4 {
        return calibrated_outputs(q, samples, samples, qdq);
    }
    let even: Vec<Vec<InputTensor>> = samples.iter().step_by(2).cloned().collect();
    let odd: Vec<Vec<InputTensor>> = samples.iter().skip(1).step_by(2).cloned().collect();
    let on_odd = calibrated_outputs(q, &even, &odd, qdq)?;
    let on_even = calibrated_outputs(q, &odd, &even, qdq)?;
    let mut out = Vec::with_capacity(samples.len());
    let (mut e, mut o) = (on_even.into_iter(), on_odd.into_iter());
    for k in 0..samples.len() {
        out.extend(if k % 2 == 0 { e.next() } else { o.next() });
    }
    Ok(out)
}

/// Rows of the deploy model (its weights are on the target grid already), against
/// `reference`: `target_weights` (as written: int8 weights, FP32 activations), `target_w8a8`
/// (activations on the target grid, min/max calibrated as [`w8a8_outputs`]) and, with
/// `data_free` ranges, `target_w8a8_data_free` (those ranges where known, calibrated elsewhere:
/// graph inputs and tensors the statistics do not model).
pub fn evaluate_deploy(
    reference: &[Vec<f32>],
    deploy: &ModelProto,
    samples: &[Vec<InputTensor>],
    grid: &ActivationGrid,
    w8a8: bool,
    data_free: Option<&HashMap<String, (f32, f32)>>,
) -> Result<Vec<QuantRow>, String> {
    let mut rows = Vec::new();
    let mut push = |scheme: &str, outs: Vec<Vec<f32>>| {
        rows.push(quant_row(reference, "deploy", scheme, &outs))
    };
    push(
        "target_weights",
        first_outputs(&crate::onnx::encode(deploy), samples)?,
    );
    if !w8a8 {
        return Ok(rows);
    }
    push(
        "target_w8a8",
        cross_calibrated(deploy, samples, &|m, r| with_activation_qdq_on(m, r, grid))?,
    );
    if let Some(df) = data_free {
        let outs = cross_calibrated(deploy, samples, &|m, calibrated| {
            let mut r = calibrated.clone();
            for (k, v) in r.iter_mut() {
                if let Some(d) = df.get(k) {
                    *v = *d;
                }
            }
            with_activation_qdq_on(m, &r, grid)
        })?;
        push("target_w8a8_data_free", outs);
    }
    Ok(rows)
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
    /// The report's labels of `equalized`'s nodes ([`crate::pipeline::Equalized::labels`]).
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
    runtime::split_batch(inputs)
}

/// One end-to-end row: `outs` scored against `reference` (aggregate SQNR, top-1 agreement and,
/// with several samples, the per-sample median and 10th percentile).
fn quant_row(reference: &[Vec<f32>], model: &str, scheme: &str, outs: &[Vec<f32>]) -> QuantRow {
    let (sqnr_db, top1_agreement) = score(reference, outs);
    let (median, p10) = spread(reference, outs);
    let several = reference.len() > 1;
    QuantRow {
        model: model.into(),
        scheme: scheme.into(),
        sqnr_db,
        top1_agreement,
        per_sample_median_db: several.then_some(median),
        per_sample_p10_db: several.then_some(p10),
    }
}
