//! The quantization plan: one description of an int8 deployment of an FP32 model, shared by every
//! writer ([`super::export::qdq`], [`super::export::encodings`]) and by the simulation ([`super::sim`]), so what
//! is simulated is what is written.
//!
//! What is quantized follows onnxruntime's QDQ quantizer (`quantize_static`, QDQ format), the
//! placement every QDQ runtime expects (int8-output.md §4–5):
//! - weights of Conv / ConvTranspose / Gemm / MatMul on the [`Target`]'s weight grid (symmetric,
//!   per tensor or per output channel, [`WeightLayout::out_axis`]), biases as int32 with
//!   `scale = input scale × weight scale` (zero point 0);
//! - activations: the data input and the output of those layers; every float input and output of
//!   Add, Mul, Concat, GlobalAveragePool, Sigmoid, Softmax, LeakyRelu, Where, Split; the output of
//!   the data-movement ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Gather,
//!   MaxPool, AveragePool, Resize, and Pad with a zero pad) with their input's parameters;
//! - Relu and Clip: with an asymmetric activation grid whose saturation already computes them,
//!   the quantizer of their output takes their place (the node is dropped from the QDQ model and
//!   its input carries the quantizer); otherwise both sides are quantized. The fold is exact:
//!   it is taken only when the output's lowest level is at or below the clip's lower bound and the
//!   highest at or above its upper bound, so `Q(clip(x)) = Q(x)` for every `x`;
//! - **the tie**: a Relu or Clip(0, ·) output whose only consumer is onnx-cle's exact ReLU6
//!   `Min(x, B)` takes the range of the `Min`'s output (else `max B`): values above it are clipped
//!   by the `Min` anyway, so the coarse range of the clip's output is never used (+0.9 to +4.3 dB,
//!   int8-output.md §5);
//! - graph outputs (logits) stay float unless asked: quantizing logits saturates the top ones
//!   into ties (top-1 collapses while SQNR holds).
//!
//! Constants (initializers, `Constant` outputs) and non-float tensors are never activation
//! points. A tensor without a range stays float and is listed with the reason.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::target::ActivationParams;
use crate::error::Result;
use crate::graph::layer_of;
use crate::graph::layout::WeightLayout;
use crate::graph::work::Work;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::{attr, GraphProto, ModelProto};
use crate::options::{ActivationGrid, Granularity, Target, WeightGrid};
pub use crate::report::LeftFloat;

/// How a quantized activation got its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RangeOrigin {
    /// Data-free, from the model's statistics.
    DataFree,
    /// Calibrated on sample inputs.
    Calibrated,
    /// A Relu or Clip output feeding an exact ReLU6 `Min`: the `Min`'s range (the tie).
    Tied,
    /// A data-movement op's output: its input's parameters.
    Shared,
}

/// One quantized activation tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationQuant {
    /// The tensor, named as in the FP32 model.
    pub tensor: String,
    /// The range its parameters cover.
    pub lo: f32,
    /// Upper end of the range.
    pub hi: f32,
    /// Scale and zero point on `grid`.
    pub params: ActivationParams,
    /// Its grid: the target's activation grid, or its 16-bit version under mixed precision.
    pub grid: ActivationGrid,
    /// Where the range came from.
    pub origin: RangeOrigin,
    /// For `tied`: the `Min` output; for `shared`: the input tensor.
    pub from: Option<String>,
    /// Node index (in the FP32 model) of a Relu / Clip whose function this quantizer takes over:
    /// the QDQ model drops the node and quantizes its input under this tensor's name.
    pub folded: Option<usize>,
}

/// One quantized weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightQuant {
    /// Node index of the (first) layer reading it.
    pub node: usize,
    /// The weight tensor.
    pub weight: String,
    /// Its layout.
    pub layout: WeightLayout,
    /// `DequantizeLinear` axis when per channel.
    pub axis: Option<usize>,
    /// One scale (per tensor) or one per output channel; never 0 (an all-zero range uses 1, as
    /// onnxruntime does: the levels are then all 0).
    pub scales: Vec<f32>,
    /// Symmetric: the largest level (`2^(bits−1) − 1`); levels run over `−qmax..=qmax`.
    /// Asymmetric ([`WeightQuant::low`]): the largest raw level (`2^bits − 1`).
    pub qmax: f32,
    /// Asymmetric (`uint8`) weights: the tensor's `min(w, 0)`, from which the zero point
    /// follows ([`WeightQuant::zero_point`]); `None` for symmetric weights.
    pub low: Option<f32>,
    /// The target's kernels add neighbouring products in a saturating int16: levels keep every
    /// same-sign MLAS pair within 128 ([`crate::quant::target::keep_pairs`]).
    pub int16_pairs: bool,
    /// The largest raw u8 byte of each input channel the pair bound counts on (`None`: 255,
    /// any input; [`crate::quant::target::keep_pairs`]).
    pub bytes: Option<Vec<u8>>,
    /// `(channel, bias)` whose scale was raised so that the layer's int32 bias fits
    /// (`|b| / (input scale × weight scale) ≤ 2³¹ − 1`).
    pub raised_for_bias: Vec<(usize, String)>,
}

impl WeightQuant {
    /// The scale of output channel `o`.
    pub fn scale(&self, o: usize) -> f32 {
        if self.axis.is_some() {
            self.scales[o]
        } else {
            self.scales[0]
        }
    }

    /// The zero point: `clamp(round(−low / scale), 0, qmax)` for asymmetric weights, else 0.
    pub fn zero_point(&self) -> i32 {
        match self.low {
            Some(low) => {
                crate::quant::target::asym_zero_point(low, self.scales[0], self.qmax) as i32
            }
            None => 0,
        }
    }

    /// The signed level bounds: `(−qmax, qmax)`, or `(−z, qmax − z)` with the zero point `z`.
    pub fn bounds(&self) -> (f32, f32) {
        match self.low {
            Some(_) => {
                let z = self.zero_point() as f32;
                (-z, self.qmax - z)
            }
            None => (-self.qmax, self.qmax),
        }
    }

    /// The signed integer level of every element of `data` (this weight's values):
    /// `clamp(round(w / scale), lo, hi)` within [`WeightQuant::bounds`]; the raw level written
    /// is `level + zero_point`.
    pub fn levels(&self, data: &[f32]) -> Vec<f32> {
        let (lo, hi) = self.bounds();
        let level = |v: f32, s: f32| (v / s).round().clamp(lo, hi);
        let mut w = data.to_vec();
        match self.axis {
            None => {
                let s = self.scales[0];
                w.iter_mut().for_each(|v| *v = level(*v, s));
            }
            Some(_) => self.layout.map_out(&mut w, |v, o| level(v, self.scales[o])),
        }
        if self.int16_pairs {
            let mut scaled = data.to_vec();
            self.layout.map_out(&mut scaled, |v, o| v / self.scale(o));
            let mut err: Vec<f32> = w.iter().zip(&scaled).map(|(l, x)| l - x).collect();
            crate::quant::target::keep_pairs(&self.layout, &mut w, &mut err, self.bytes.as_deref());
        }
        w
    }

    /// What `DequantizeLinear` makes of the levels: `level × scale` in f32.
    pub fn dequantized(&self, data: &[f32]) -> Vec<f32> {
        let mut w = self.levels(data);
        match self.axis {
            None => {
                let s = self.scales[0];
                w.iter_mut().for_each(|v| *v *= s);
            }
            Some(_) => self.layout.map_out(&mut w, |v, o| v * self.scales[o]),
        }
        w
    }
}

impl BiasQuant {
    /// The scale of output channel `o`.
    pub fn scale(&self, o: usize) -> f32 {
        if self.scales.len() == 1 {
            self.scales[0]
        } else {
            self.scales[o]
        }
    }

    /// The int32 level of every element of `data`: `round(b / scale)`, saturated to int32 (a
    /// zero or non-finite scale gives 0).
    pub fn levels(&self, data: &[f32]) -> Vec<i32> {
        data.iter()
            .enumerate()
            .map(|(o, &b)| {
                let q = f64::from(b) / f64::from(self.scale(o));
                if q.is_finite() {
                    q.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
                } else {
                    0
                }
            })
            .collect()
    }

    /// What `DequantizeLinear` makes of the levels: `level × scale` in f32.
    pub fn dequantized(&self, data: &[f32]) -> Vec<f32> {
        self.levels(data)
            .into_iter()
            .enumerate()
            .map(|(o, q)| q as f32 * self.scale(o))
            .collect()
    }
}

/// One int32 bias.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasQuant {
    /// Node index of the layer.
    pub node: usize,
    /// The bias tensor.
    pub bias: String,
    /// The layer's weight.
    pub weight: String,
    /// The layer's (quantized) data input.
    pub input: String,
    /// `input scale × weight scale`: one (per-tensor weight) or one per output channel.
    pub scales: Vec<f32>,
}

/// The plan.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    /// The declared target.
    pub target: Target,
    /// How the activation ranges were chosen (`data_free`, `minmax`, …).
    pub ranges: String,
    /// Quantized activations, in graph order.
    pub activations: Vec<ActivationQuant>,
    /// Quantized weights.
    pub weights: Vec<WeightQuant>,
    /// int32 biases.
    pub biases: Vec<BiasQuant>,
    /// Tensors that would be quantized but stay float.
    pub left_float: Vec<LeftFloat>,
    /// Activation quantizers placed against the quantizable activations.
    pub coverage: Coverage,
}

/// How many of the activations onnxruntime's `quantize_static` (QDQ) would quantize in this
/// model the plan quantizes: every activation point of the module doc, graph outputs included,
/// a Relu/Clip input folded into its output's quantizer not counted (that tensor disappears).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    /// Quantizable activation tensors.
    pub quantizable: usize,
    /// Activation quantizers placed.
    pub placed: usize,
    /// The activations left float: `(reason, count, first tensors)`, most frequent first.
    pub float: Vec<(String, usize, Vec<String>)>,
    /// Of those, graph outputs kept float by choice (`quantize_outputs` off, the default).
    pub outputs_kept: usize,
}

impl QuantPlan {
    /// The activation entry of `tensor`.
    pub fn activation(&self, tensor: &str) -> Option<&ActivationQuant> {
        self.activations.iter().find(|a| a.tensor == tensor)
    }

    /// Number of Relu/Clip nodes folded into quantizers.
    pub fn folded(&self) -> usize {
        self.activations
            .iter()
            .filter(|a| a.folded.is_some())
            .count()
    }

    /// Number of tied activations.
    pub fn tied(&self) -> usize {
        self.activations
            .iter()
            .filter(|a| a.origin == RangeOrigin::Tied)
            .count()
    }
}

#[derive(Debug, Clone)]
enum SiteKind {
    Own,
    Shared(String),
}

/// A Relu/Clip the output quantizer may take over: node, its input, its bounds.
#[derive(Debug, Clone)]
struct Removable {
    node: usize,
    input: String,
    lo: f32,
    hi: f32,
}

/// The exact-ReLU6 `Min` a Relu output feeds: its output and the largest bound.
#[derive(Debug, Clone)]
struct Tie {
    output: String,
    bound_max: f32,
}

#[derive(Debug, Clone)]
struct Site {
    tensor: String,
    kind: SiteKind,
    removable: Option<Removable>,
    tie: Option<Tie>,
}

/// What a plan quantizes, before ranges are known: the first half of [`QuantPlan`].
#[derive(Debug, Clone)]
pub struct Sites {
    target: Target,
    sites: Vec<Site>,
    weights: Vec<WeightQuant>,
    /// `(layer node, bias, weight, layer input, max |b| per output channel)`.
    biases: Vec<(usize, String, String, String, Vec<f32>)>,
    left_float: Vec<LeftFloat>,
    graph_inputs: HashSet<String>,
    /// Graph outputs that would be activation points, kept float (`quantize_outputs` off).
    outputs_kept: Vec<String>,
    /// Why a tensor has no range, by tensor ([`Sites::explain`]).
    why_unranged: HashMap<String, String>,
}

const OWN_IO_OPS: &[&str] = &[
    "Add",
    "Mul",
    "Concat",
    "GlobalAveragePool",
    "Sigmoid",
    "Softmax",
    "LeakyRelu",
    "Where",
    "Split",
];

const SHARED_OPS: &[&str] = &[
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "GatherElements",
    "MaxPool",
    "AveragePool",
    "Resize",
];

impl Sites {
    /// Finds the quantization points of `model` for `target` (see the module doc).
    pub fn find(model: &ModelProto, target: Target, quantize_outputs: bool) -> Result<Sites> {
        target.validate()?;
        let mut work = Work::new(model.clone())?;
        let floats = float_tensors(work.graph());
        let asymmetric = !target.activations().symmetric;
        let grid = target.weights();
        let mut s = Sites {
            target,
            sites: Vec::new(),
            weights: Vec::new(),
            biases: Vec::new(),
            left_float: Vec::new(),
            outputs_kept: Vec::new(),
            why_unranged: HashMap::new(),
            graph_inputs: work
                .graph()
                .input
                .iter()
                .map(|v| v.name().to_string())
                .collect(),
        };
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut weights_seen = HashSet::new();
        let topo = work.index().topo().to_vec();
        for i in topo {
            let node = work.node(i).clone();
            if !node.domain().is_empty() && node.domain() != "ai.onnx" {
                continue;
            }
            let input = |k: usize| node.input.get(k).cloned().unwrap_or_default();
            let output = node.output.first().cloned().unwrap_or_default();
            let op = node.op_type();
            let quantizable =
                |t: &str, w: &Work| !t.is_empty() && floats.contains(t) && !w.is_const(t);
            let own = |s: &mut Sites, at: &mut HashMap<String, usize>, t: &str, w: &Work| {
                if quantizable(t, w)
                    && !at.contains_key(t)
                    && !quantize_outputs
                    && w.index().is_graph_output(t)
                    && !s.outputs_kept.iter().any(|o| o == t)
                {
                    s.outputs_kept.push(t.to_string());
                }
                if quantizable(t, w)
                    && !at.contains_key(t)
                    && (quantize_outputs || !w.index().is_graph_output(t))
                {
                    at.insert(t.to_string(), s.sites.len());
                    s.sites.push(Site {
                        tensor: t.to_string(),
                        kind: SiteKind::Own,
                        removable: None,
                        tie: None,
                    });
                }
            };
            match op {
                "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => match layer_of(&mut work, i) {
                    Ok(l) => {
                        own(&mut s, &mut at, &input(0), &work);
                        if weights_seen.insert(l.weight.clone()) {
                            match weight_quant(&mut work, i, &l.weight, &l.layout, grid) {
                                Ok(w) => s.weights.push(w),
                                Err(reason) => s.left_float.push(LeftFloat {
                                    tensor: l.weight.clone(),
                                    reason,
                                }),
                            }
                        }
                        if let Some(b) = &l.bias {
                            let values = work
                                .read(b)
                                .map(|t| t.data.iter().map(|v| v.abs()).collect())
                                .unwrap_or_default();
                            s.biases
                                .push((i, b.clone(), l.weight.clone(), input(0), values));
                        }
                        own(&mut s, &mut at, &output, &work);
                    }
                    Err(_) => {
                        for t in &node.input {
                            own(&mut s, &mut at, t, &work);
                        }
                        own(&mut s, &mut at, &output, &work);
                    }
                },
                "Relu" | "Clip" => {
                    let x = input(0);
                    if !at.contains_key(&x) {
                        continue;
                    }
                    own(&mut s, &mut at, &output, &work);
                    let Some(&k) = at.get(&output) else { continue };
                    let bounds = if op == "Relu" {
                        Some((0.0, f32::INFINITY))
                    } else {
                        clip_bounds(&work, i)
                    };
                    let ix = work.index();
                    let sole = ix.consumers(&x).len() == 1
                        && !ix.is_graph_output(&x)
                        && !ix.is_graph_input(&x)
                        && matches!(s.sites[at[&x]].kind, SiteKind::Own);
                    if let (true, true, Some((lo, hi))) = (asymmetric, sole, bounds) {
                        s.sites[k].removable = Some(Removable {
                            node: i,
                            input: x.clone(),
                            lo,
                            hi,
                        });
                    }
                    if bounds.is_some_and(|(lo, _)| lo == 0.0) {
                        s.sites[k].tie = relu6_min(&mut work, &output);
                    }
                }
                "Pad" => {
                    own(&mut s, &mut at, &input(0), &work);
                    if at.contains_key(&input(0)) && pads_with_zero(&work, i) {
                        share(&mut s, &mut at, &output, &input(0), &work, quantize_outputs);
                    } else {
                        own(&mut s, &mut at, &output, &work);
                    }
                }
                _ if OWN_IO_OPS.contains(&op) => {
                    for t in &node.input {
                        own(&mut s, &mut at, t, &work);
                    }
                    for t in &node.output {
                        own(&mut s, &mut at, t, &work);
                    }
                }
                _ if SHARED_OPS.contains(&op)
                    && at.contains_key(&input(0))
                    && floats.contains(&output) =>
                {
                    share(&mut s, &mut at, &output, &input(0), &work, quantize_outputs);
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// The graph inputs among the quantization points.
    pub fn graph_inputs(&self) -> Vec<String> {
        self.sites
            .iter()
            .filter(|s| self.graph_inputs.contains(&s.tensor))
            .map(|s| s.tensor.clone())
            .collect()
    }

    /// Records why each own quantization point that `why` knows about could get no range (the
    /// reason a tensor left float then gives).
    pub fn explain(&mut self, why: impl Fn(&str) -> Option<String>) {
        for site in &self.sites {
            if let Some(w) = why(&site.tensor) {
                self.why_unranged.insert(site.tensor.clone(), w);
            }
        }
    }

    /// The tensors whose ranges [`Sites::finish`] uses: every own quantization point, plus the
    /// `Min` outputs ties take their range from.
    pub fn tensors_to_range(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for site in &self.sites {
            if matches!(site.kind, SiteKind::Own) && seen.insert(site.tensor.clone()) {
                out.push(site.tensor.clone());
            }
            if let Some(t) = &site.tie {
                if seen.insert(t.output.clone()) {
                    out.push(t.output.clone());
                }
            }
        }
        out
    }

    /// Quantizes the weights named in `steps` with exactly those steps (one per output channel,
    /// as [`crate::quant::deploy::Deploy::steps`] holds them): a deploy model's weights then
    /// keep their levels.
    pub fn use_steps(&mut self, steps: &HashMap<String, Vec<f32>>) {
        for w in &mut self.weights {
            let Some(s) = steps.get(&w.weight) else {
                continue;
            };
            if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                continue;
            }
            match w.axis {
                Some(_) if s.len() == w.scales.len() => w.scales.clone_from(s),
                None if !s.is_empty() && s.iter().all(|v| *v == s[0]) => w.scales = vec![s[0]],
                _ => {}
            }
        }
    }

    /// Bounds the int16 pairs of the weights in `bytes` (by weight name) by their layers' input
    /// bytes, as the deploy model's rounding did ([`WeightQuant::bytes`]).
    pub fn use_bytes(&mut self, bytes: &HashMap<String, Vec<u8>>) {
        for w in &mut self.weights {
            if let Some(b) = bytes.get(&w.weight) {
                w.bytes = Some(b.clone());
            }
        }
    }

    /// The plan, with `ranges` (`[lo, hi]` per tensor) from `origin`, described as `ranges_name`.
    pub fn finish(
        self,
        ranges: &HashMap<String, (f32, f32)>,
        origin: RangeOrigin,
        ranges_name: &str,
    ) -> QuantPlan {
        self.finish_mixed(ranges, origin, ranges_name, &HashSet::new())
    }

    /// [`Sites::finish`] with the quantizers of `wide` (and the tensors sharing their
    /// parameters) on the 16-bit version of the target's activation grid
    /// ([`ActivationGrid::wide`]).
    pub fn finish_mixed(
        self,
        ranges: &HashMap<String, (f32, f32)>,
        origin: RangeOrigin,
        ranges_name: &str,
        wide: &HashSet<String>,
    ) -> QuantPlan {
        let target_grid = self.target.activations();
        let mut left = self.left_float;
        let first_act_float = left.len();
        let mut params: HashMap<String, ActivationQuant> = HashMap::new();
        let mut dropped: HashSet<String> = HashSet::new();
        for site in &self.sites {
            if !matches!(site.kind, SiteKind::Own) {
                continue;
            }
            let own = ranges.get(&site.tensor).copied().filter(|r| valid(*r));
            let (range, origin, from) = match &site.tie {
                Some(t) => match ranges.get(&t.output).copied().filter(|r| valid(*r)) {
                    Some(r) => (Some(r), RangeOrigin::Tied, Some(t.output.clone())),
                    None => (
                        own.map(|(lo, hi)| (lo, hi.min(t.bound_max))),
                        RangeOrigin::Tied,
                        Some(t.output.clone()),
                    ),
                },
                None => (own, origin, None),
            };
            let Some((lo, hi)) = range else {
                left.push(LeftFloat {
                    tensor: site.tensor.clone(),
                    reason: if self.graph_inputs.contains(&site.tensor) {
                        "graph input: no data-free range (give exports.input_range, \
                         --input-range)"
                            .into()
                    } else if let Some(w) = self.why_unranged.get(&site.tensor) {
                        format!("no data-free range: {w}")
                    } else {
                        "no activation range for this tensor".into()
                    },
                });
                dropped.insert(site.tensor.clone());
                continue;
            };
            let grid = if wide.contains(&site.tensor) {
                target_grid.wide()
            } else {
                target_grid
            };
            params.insert(
                site.tensor.clone(),
                ActivationQuant {
                    tensor: site.tensor.clone(),
                    lo,
                    hi,
                    params: if self.graph_inputs.contains(&site.tensor) {
                        grid.params_on_ends(lo, hi)
                    } else {
                        grid.params(lo, hi)
                    },
                    grid,
                    origin,
                    from,
                    folded: None,
                },
            );
        }
        // Folds: the quantizer of a Relu/Clip output replaces the node when its saturation
        // computes the clip exactly; the node's input then needs no quantizer of its own.
        for site in &self.sites {
            let (Some(r), Some(a)) = (&site.removable, params.get(&site.tensor)) else {
                continue;
            };
            if params.contains_key(&r.input) && saturation_covers(&a.grid, a.params, r.lo, r.hi) {
                params.remove(&r.input);
                if let Some(a) = params.get_mut(&site.tensor) {
                    a.folded = Some(r.node);
                }
            }
        }
        let mut activations = Vec::new();
        for site in &self.sites {
            match &site.kind {
                SiteKind::Own => {
                    if let Some(a) = params.get(&site.tensor) {
                        activations.push(a.clone());
                    }
                }
                SiteKind::Shared(src) => {
                    let source = activations
                        .iter()
                        .find(|a: &&ActivationQuant| &a.tensor == src)
                        .cloned()
                        .or_else(|| params.get(src).cloned());
                    match source {
                        Some(a) => activations.push(ActivationQuant {
                            tensor: site.tensor.clone(),
                            origin: RangeOrigin::Shared,
                            from: Some(src.clone()),
                            folded: None,
                            ..a
                        }),
                        None => {
                            if dropped.contains(src) {
                                left.push(LeftFloat {
                                    tensor: site.tensor.clone(),
                                    reason: format!(
                                        "shares the parameters of `{src}`, which has no range"
                                    ),
                                });
                            }
                        }
                    }
                }
            }
        }
        let act_float: Vec<LeftFloat> = left[first_act_float..].to_vec();
        let folded_inputs = activations.iter().filter(|a| a.folded.is_some()).count();
        let mut coverage = Coverage {
            quantizable: self.sites.len() - folded_inputs + self.outputs_kept.len(),
            placed: activations.len(),
            float: Vec::new(),
            outputs_kept: self.outputs_kept.len(),
        };
        let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
        let mut add = |reason: &str, t: &str| match reasons.iter_mut().find(|r| r.0 == reason) {
            Some(r) => r.1.push(t.to_string()),
            None => reasons.push((reason.to_string(), vec![t.to_string()])),
        };
        for l in &act_float {
            add(&l.reason, &l.tensor);
        }
        for o in &self.outputs_kept {
            add("graph output (kept float: quantize_outputs is off)", o);
        }
        let counted: usize = reasons.iter().map(|r| r.1.len()).sum();
        let unaccounted = coverage
            .quantizable
            .saturating_sub(coverage.placed + counted);
        if unaccounted > 0 {
            reasons.push((
                "shares the parameters of a tensor that is not quantized".into(),
                Vec::new(),
            ));
            if let Some(r) = reasons.last_mut() {
                r.1.resize(unaccounted, String::new());
            }
        }
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1.len()));
        coverage.float = reasons
            .into_iter()
            .map(|(r, ts)| {
                let n = ts.len();
                let first: Vec<String> = ts.into_iter().filter(|t| !t.is_empty()).take(3).collect();
                (r, n, first)
            })
            .collect();
        let mut biases = Vec::new();
        let mut weights = self.weights;
        for (node, bias, weight, input, magnitude) in self.biases {
            let a = activations.iter().find(|a| a.tensor == input);
            let w = weights.iter_mut().find(|w| w.weight == weight);
            let weight_quantized = w.is_some();
            match (a, w) {
                (Some(a), Some(w)) => {
                    let sx = a.params.scale;
                    // |b| / (sx·sw) must fit an int32: a per-channel weight scale grows to fit
                    // its bias (its levels only shrink); a per-tensor one would coarsen every
                    // channel, so that bias stays float instead.
                    let limit = f64::from(i32::MAX);
                    let over: Vec<usize> = (0..magnitude.len())
                        .filter(|&o| {
                            f64::from(magnitude[o]) / (f64::from(sx) * f64::from(w.scale(o)))
                                > limit
                        })
                        .collect();
                    if !over.is_empty() && w.axis.is_none() {
                        left.push(LeftFloat {
                            tensor: bias,
                            reason: format!(
                                "its int32 levels would overflow (|b| / (input scale × weight \
                                 scale) > 2^31 − 1 in channels {over:?}) on a per-tensor weight \
                                 grid"
                            ),
                        });
                        continue;
                    }
                    for &o in &over {
                        let need = f64::from(magnitude[o]) / (f64::from(sx) * limit) * (1.0 + 1e-6);
                        w.scales[o] = need as f32;
                        w.raised_for_bias.push((o, bias.clone()));
                    }
                    biases.push(BiasQuant {
                        node,
                        scales: w.scales.iter().map(|s| s * sx).collect(),
                        bias,
                        weight,
                        input,
                    })
                }
                _ => left.push(LeftFloat {
                    tensor: bias,
                    reason: if !weight_quantized {
                        "the layer's weight is not quantized".into()
                    } else {
                        "the layer's input is not quantized".into()
                    },
                }),
            }
        }
        QuantPlan {
            target: self.target,
            ranges: ranges_name.to_string(),
            activations,
            weights,
            biases,
            left_float: left,
            coverage,
        }
    }
}

fn valid((lo, hi): (f32, f32)) -> bool {
    lo.is_finite() && hi.is_finite() && lo <= hi
}

fn share(
    s: &mut Sites,
    at: &mut HashMap<String, usize>,
    out: &str,
    from: &str,
    work: &Work,
    quantize_outputs: bool,
) {
    if !out.is_empty()
        && !at.contains_key(out)
        && !quantize_outputs
        && work.index().is_graph_output(out)
        && !s.outputs_kept.iter().any(|o| o == out)
    {
        s.outputs_kept.push(out.to_string());
    }
    if out.is_empty()
        || at.contains_key(out)
        || (!quantize_outputs && work.index().is_graph_output(out))
    {
        return;
    }
    at.insert(out.to_string(), s.sites.len());
    s.sites.push(Site {
        tensor: out.to_string(),
        kind: SiteKind::Shared(from.to_string()),
        removable: None,
        tie: None,
    });
}

/// Whether quantizing with `p` saturates at or beyond `[lo, hi]`: the level of `lo` is at most
/// the lowest level and the level of `hi` at least the highest, so `Q(clip(x, lo, hi)) = Q(x)`.
fn saturation_covers(grid: &ActivationGrid, p: ActivationParams, lo: f32, hi: f32) -> bool {
    let (qmin, qmax) = grid.levels();
    let level = |v: f32| (v / p.scale).round() + p.zero_point as f32;
    let lo_ok = lo == f32::NEG_INFINITY || level(lo) <= qmin as f32;
    let hi_ok = hi == f32::INFINITY || level(hi) >= qmax as f32;
    lo_ok && hi_ok
}

fn weight_quant(
    work: &mut Work,
    node: usize,
    weight: &str,
    layout: &WeightLayout,
    grid: WeightGrid,
) -> std::result::Result<WeightQuant, String> {
    let data = &work.read(weight)?.data;
    let steps = grid.steps(data, layout);
    let fix = |s: f32| if s > 0.0 && s.is_finite() { s } else { 1.0 };
    let (axis, scales) = match grid.granularity {
        Granularity::PerTensor => (None, vec![fix(steps.first().copied().unwrap_or(0.0))]),
        Granularity::PerChannel => {
            let axis = layout.out_axis().ok_or_else(|| {
                "a per-channel grid cannot be expressed on a grouped ConvTranspose weight (its \
                 output channel spans two axes)"
                    .to_string()
            })?;
            (Some(axis), steps.into_iter().map(fix).collect())
        }
    };
    Ok(WeightQuant {
        node,
        weight: weight.to_string(),
        layout: layout.clone(),
        axis,
        scales,
        qmax: grid.qmax(),
        low: grid.asymmetric.then(|| crate::quant::target::low_of(data)),
        int16_pairs: grid.int16_pairs,
        bytes: None,
        raised_for_bias: Vec::new(),
    })
}

/// Constant bounds of Clip node `i` (absent = unbounded); `None` when one is computed.
fn clip_bounds(work: &Work, i: usize) -> Option<(f32, f32)> {
    let node = work.node(i);
    let opset = crate::onnx::onnx_opset(work.model()).unwrap_or(13);
    if opset < 11 {
        return Some((
            attr::float(node, "min").unwrap_or(f32::NEG_INFINITY),
            attr::float(node, "max").unwrap_or(f32::INFINITY),
        ));
    }
    let bound = |k: usize, default: f32| -> Option<f32> {
        let name = work.input(i, k);
        if name.is_empty() {
            Some(default)
        } else {
            work.const_scalar(name)
        }
    };
    Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?))
}

/// The exact-ReLU6 `Min(x, B)` that is the only consumer of Relu/Clip output `t`.
fn relu6_min(work: &mut Work, t: &str) -> Option<Tie> {
    let ix = work.index();
    if ix.use_count(t) != 1 {
        return None;
    }
    let m = *ix.consumers(t).first()?;
    let node = work.node(m).clone();
    if node.op_type() != "Min" || !node.domain().is_empty() || node.input.len() != 2 {
        return None;
    }
    let other = node.input.iter().find(|x| x.as_str() != t)?;
    let bound = work.read(other).ok()?;
    let bound_max = bound.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (bound_max.is_finite()).then(|| Tie {
        output: node.output.first().cloned().unwrap_or_default(),
        bound_max,
    })
}

/// Pad node `i` pads with values already representable in its input's parameters: `reflect`,
/// `edge`, `wrap`, or `constant` with a zero (absent) value.
fn pads_with_zero(work: &Work, i: usize) -> bool {
    let node = work.node(i);
    let mode = attr::string(node, "mode").unwrap_or_else(|| "constant".into());
    if matches!(mode.as_str(), "reflect" | "edge" | "wrap") {
        return true;
    }
    let opset = crate::onnx::onnx_opset(work.model()).unwrap_or(13);
    if opset < 11 {
        return attr::float(node, "value").unwrap_or(0.0) == 0.0;
    }
    let v = work.input(i, 2);
    v.is_empty() || work.const_scalar(v) == Some(0.0)
}

/// The float tensors of `graph`, by a forward pass over element types (graph inputs,
/// initializers, `Constant` values, `value_info`, and each op's output type rule). Tensors whose
/// type cannot be told are not in the set.
pub fn float_tensors(graph: &GraphProto) -> HashSet<String> {
    use crate::onnx::proto::type_proto::Value as TypeValue;
    const FLOAT: i32 = DataType::Float as i32;
    const INT64: i32 = DataType::Int64 as i32;
    const BOOL: i32 = DataType::Bool as i32;
    let mut ty: HashMap<String, i32> = HashMap::new();
    let declared = |v: &crate::onnx::ValueInfoProto| match v.r#type.as_ref()?.value.as_ref()? {
        TypeValue::TensorType(t) => t.elem_type.filter(|&e| e != 0),
        _ => None,
    };
    for v in graph.input.iter().chain(&graph.value_info) {
        if let Some(e) = declared(v) {
            ty.insert(v.name().to_string(), e);
        }
    }
    for t in &graph.initializer {
        ty.insert(t.name().to_string(), t.data_type());
    }
    let Ok(index) = crate::graph::GraphIndex::build(graph) else {
        return HashSet::new();
    };
    for &i in index.topo() {
        let n = &graph.node[i];
        let first = n.input.iter().find_map(|x| ty.get(x).copied()).unwrap_or(0);
        let known: Vec<i32> = n
            .input
            .iter()
            .map(|x| ty.get(x).copied().unwrap_or(0))
            .collect();
        let of = |k: usize| known.get(k).copied().unwrap_or(0);
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() || ty.contains_key(o) {
                continue;
            }
            let e = match n.op_type() {
                "Constant" => n
                    .attribute
                    .iter()
                    .find_map(|a| match a.name() {
                        "value" => a.t.as_ref().map(|t| t.data_type()),
                        "value_float" | "value_floats" => Some(FLOAT),
                        "value_int" | "value_ints" => Some(INT64),
                        _ => None,
                    })
                    .unwrap_or(0),
                "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => INT64,
                "Cast" => attr::int(n, "to").map_or(0, |v| v as i32),
                "CastLike" => of(1),
                "ConstantOfShape" => attr::get(n, "value")
                    .and_then(|a| a.t.as_ref())
                    .map_or(FLOAT, |t| t.data_type()),
                "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And"
                | "Or" | "Xor" | "IsNaN" | "IsInf" => BOOL,
                "Where" => of(1),
                "DequantizeLinear" => FLOAT,
                "QuantizeLinear" => of(2).max(DataType::Uint8 as i32),
                "TopK" | "MaxPool" if k == 1 => INT64,
                "RandomNormal" | "RandomUniform" | "EyeLike" | "RandomNormalLike"
                | "RandomUniformLike" => attr::int(n, "dtype").map_or(FLOAT, |v| v as i32),
                _ => first,
            };
            if e != 0 {
                ty.insert(o.clone(), e);
            }
        }
    }
    ty.into_iter()
        .filter(|(_, e)| *e == FLOAT)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{ActivationType, TargetPreset};

    #[test]
    fn saturation_decides_the_fold() {
        let u8 = ActivationGrid {
            ty: ActivationType::Uint8,
            symmetric: false,
        };
        let relu = u8.params(0.0, 3.0);
        assert!(saturation_covers(&u8, relu, 0.0, f32::INFINITY));
        let signed = u8.params(-1.0, 3.0);
        assert!(!saturation_covers(&u8, signed, 0.0, f32::INFINITY));
        // A ReLU6 range ending below 6 saturates before the clip; one past 6 would not.
        assert!(saturation_covers(&u8, u8.params(0.0, 5.0), 0.0, 6.0));
        assert!(!saturation_covers(&u8, u8.params(0.0, 7.0), 0.0, 6.0));
        let s8 = ActivationGrid {
            ty: ActivationType::Int8,
            symmetric: true,
        };
        assert!(!saturation_covers(
            &s8,
            s8.params(0.0, 3.0),
            0.0,
            f32::INFINITY
        ));
        let _ = TargetPreset::Trt;
    }
}
