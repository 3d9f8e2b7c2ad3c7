//! The per-layer report: what every pass did, what it skipped and why, and what verification
//! measured. Serialized as JSON (`snake_case` fields, lower-case enums); the schema is the
//! `Report` component of `openapi/openapi.json` and is described in the README.
//!
//! Invariant: every rewrite a pass performs has an entry here, and every candidate a pass
//! considered and left alone has a [`Skip`] with a stable `reason` code.

pub mod html;
pub mod trust;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::options::Options;

/// JSON has no NaN or ±Inf: `serde_json` writes them as `null`. These read `null` back as NaN,
/// so a report whose figures are not finite (NaN weights, identical quantized weights…) still
/// reads back (e.g. to render `GET /jobs/{id}/report.html`). The schema marks them nullable.
mod nonfinite {
    use serde::{Deserialize, Deserializer};

    pub fn f32<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn vec_f32<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Ok(Vec::<Option<f32>>::deserialize(d)?
            .into_iter()
            .map(|v| v.unwrap_or(f32::NAN))
            .collect())
    }
}

/// Version of the report schema; bumped on incompatible changes.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// Everything one equalization run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// Report schema version.
    pub schema_version: u32,
    /// `onnx-cle <version>`.
    pub tool: String,
    /// Facts about the input and output models.
    pub model: ModelSummary,
    /// The options in effect (after normalization).
    pub options: Options,
    /// True when the equalized model is not meant to compute the same function as the input
    /// (ReLU6 replaced by Relu, AIMET high-bias fold…); `function_changes` says why.
    pub function_changed: bool,
    /// Each rewrite that changes the model's function on purpose.
    pub function_changes: Vec<String>,
    /// Where `compat = aimet` deliberately differs from aimet_onnx 2.42.
    pub compat_notes: Vec<String>,
    /// BatchNormalization nodes folded into a layer.
    pub bn_folds: Vec<BnFold>,
    /// BatchNormalization nodes that stay in the model, rewritten to mean 0 / var 1 (compat).
    pub bn_rewrites: Vec<String>,
    /// What happened to each Clip(0, 6)-like node.
    pub relu6: Vec<Relu6Decision>,
    /// Cross-layer scaling sets, in the order they were applied (per iteration).
    pub cls_sets: Vec<ClsSet>,
    /// Per-iteration convergence figures.
    pub cls_iterations: Vec<ClsIteration>,
    /// High-bias fold.
    pub hbf: HbfReport,
    /// Every candidate left alone, with its reason.
    pub skipped: Vec<Skip>,
    /// Verification of the result.
    pub verification: Verification,
    /// Quantization readiness: int8 weight SQNR per layer and end to end, activation cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    /// Wall time per stage, milliseconds, keyed by stage: `prepare`, `bn_fold`, `relu6`, `cls`,
    /// `hbf`, `finish`, `verify`, `quantization`. Described as a map rather than an object so
    /// that generated clients do not get a property named `cls` (which shadows the class
    /// argument in Python's generated `from_dict`).
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub timings_ms: Timings,
    /// Weight chains (`Transpose`, `Identity`, `Reshape`, `Squeeze`/`Unsqueeze`, float `Cast`
    /// over a constant) folded into an initializer because a pass rewrote their value.
    #[serde(default)]
    pub const_folds: Vec<ConstFold>,
    /// Shared tensors a pass had to rewrite for one of their users: that user got its own copy,
    /// every other user still reads the original.
    #[serde(default)]
    pub tensor_copies: Vec<TensorCopy>,
    /// How much of the model the passes reached: weight-bearing layers scaled, BN folded or left
    /// alone (grouped by reason), and the share of weights covered.
    #[serde(default)]
    pub coverage: Coverage,
    /// The deploy model (on-grid weights, bias correction): present when one was produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployReport>,
    /// The int8 outputs (QDQ model, encodings, onnxruntime overrides) written from one
    /// quantization plan, with their figures; absent when none was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<Exports>,
    /// The int8 outputs' self-check: each measured against its plain baseline before it was
    /// written, the fallback taken, and what is still wrong; absent when no int8 output was
    /// requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<trust::Int8Trust>,
    /// `select = auto`: every candidate scaling tried and the one kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
}

/// How `select = auto` chose the scaling: each candidate's per-tensor int8 figures on the
/// samples held out for the choice (used for nothing else).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Selection {
    /// Samples the candidates were scored on (the odd-indexed given samples).
    pub scored_samples: usize,
    /// Samples left for verification and the quantization figures (the even-indexed ones).
    pub other_samples: usize,
    /// What the score is.
    pub score: String,
    /// The candidates in the order tried.
    pub candidates: Vec<SelectionCandidate>,
    /// Label of the kept candidate.
    pub chosen: String,
}

/// One candidate of `select = auto`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SelectionCandidate {
    /// `default`, `iterations 1`, `balance 2`, …
    pub label: String,
    /// CLS passes the candidate allowed.
    pub iterations: u32,
    /// Its activation-growth cap, if any.
    pub balance: Option<f32>,
    /// Per-tensor symmetric int8 weights: output SQNR on the scored samples (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_db: f64,
    /// Median per-sample SQNR (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub per_sample_median_db: f64,
    /// Top-1 agreement with the original on the scored samples.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub top1_agreement: f64,
    /// Whether this candidate was kept.
    pub chosen: bool,
}

/// Facts about the model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ModelSummary {
    /// `ir_version`.
    pub ir_version: i64,
    /// Opset of the default ONNX domain.
    pub opset: Option<i64>,
    /// `producer_name`.
    pub producer: String,
    /// Node count before.
    pub nodes_before: usize,
    /// Node count after.
    pub nodes_after: usize,
    /// Initializer count before.
    pub initializers_before: usize,
    /// Initializer count after.
    pub initializers_after: usize,
    /// Nodes inside the start/output bounds (all nodes when none given).
    pub nodes_in_scope: usize,
}

/// Direction of a BN fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FoldDirection {
    /// Layer → BN: folded into the layer's output channels.
    Backward,
    /// BN → layer: folded into the layer's input channels.
    Forward,
}

/// One folded BatchNormalization.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BnFold {
    /// The BN node.
    pub bn: String,
    /// The layer it was folded into.
    pub layer: String,
    /// Layer op type.
    pub layer_op: String,
    /// Direction.
    pub direction: FoldDirection,
    /// Channels of the BN.
    pub channels: usize,
    /// Epsilon used.
    #[serde(deserialize_with = "nonfinite::f32")]
    #[schema(value_type = Option<f32>, required = true)]
    pub epsilon: f32,
    /// A Flatten/Reshape crossed between BN and Gemm (forward folds only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
    /// Name of the bias initializer created because the layer had none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_bias: Option<String>,
}

/// Action taken on one Clip node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Relu6Action {
    /// Replaced by Relu (changes the function).
    Replaced,
    /// Rewritten to Clip(0, max bound) + per-channel Min after scaling (exact).
    RewrittenExact,
    /// Recognised and crossed, but no channel was rescaled, so it stays as it was.
    Unchanged,
    /// Left in place; it ends any chain.
    Kept,
}

/// What happened to one Clip(0, 6)-like node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Relu6Decision {
    /// The Clip node.
    pub node: String,
    /// Lower bound, if known.
    pub min: Option<f32>,
    /// Upper bound, if known.
    pub max: Option<f32>,
    /// Action.
    pub action: Relu6Action,
    /// Why.
    pub reason: String,
}

/// Kind of a CLS set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClsKind {
    /// Two layers.
    Pair,
    /// Conv → depthwise → Conv (closed-form cube root).
    Triple,
}

/// One scaled set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClsSet {
    /// CLS iteration (1-based).
    pub iteration: u32,
    /// Pair or triple.
    pub kind: ClsKind,
    /// Layers, upstream first.
    pub layers: Vec<String>,
    /// One entry per consecutive layer pair (two for a triple).
    pub pairs: Vec<ClsPair>,
}

/// Scaling between two consecutive layers of a set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClsPair {
    /// Upstream layer (its output channel c was divided by `scale[c]`).
    pub layer1: String,
    /// Downstream layer (its input channel c was multiplied by `scale[c]`).
    pub layer2: String,
    /// Ops crossed between the two layers (`Relu`, `Clip`, `Pad`…).
    pub through: Vec<String>,
    /// A Relu-like activation lies between them (AIMET's relu flag).
    pub relu_between: bool,
    /// Per-channel scale factor `s`.
    #[serde(deserialize_with = "nonfinite::vec_f32")]
    #[schema(value_type = Vec<Option<f32>>)]
    pub scale: Vec<f32>,
    /// Ranges before scaling.
    pub range_before: PairRanges,
    /// Ranges after scaling.
    pub range_after: PairRanges,
}

/// Per-channel `max |w|` on both sides of a pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PairRanges {
    /// Output-channel ranges of layer 1.
    #[serde(deserialize_with = "nonfinite::vec_f32")]
    #[schema(value_type = Vec<Option<f32>>)]
    pub layer1_out: Vec<f32>,
    /// Input-channel ranges of layer 2.
    #[serde(deserialize_with = "nonfinite::vec_f32")]
    #[schema(value_type = Vec<Option<f32>>)]
    pub layer2_in: Vec<f32>,
}

/// Convergence figures of one CLS iteration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClsIteration {
    /// 1-based.
    pub iteration: u32,
    /// Sets scaled.
    pub sets: usize,
    /// `max |1 − s|` over every factor of this iteration.
    #[serde(deserialize_with = "nonfinite::f32")]
    #[schema(value_type = Option<f32>, required = true)]
    pub max_abs_one_minus_s: f32,
}

/// High-bias fold outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HbfReport {
    /// Mode used (`off`, `exact`, `aimet`).
    pub mode: String,
    /// Whether it ran.
    pub applied: bool,
    /// Why it did not run, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One entry per pair that absorbed bias.
    pub pairs: Vec<HbfPair>,
}

/// Bias absorbed from layer 1 into layer 2.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HbfPair {
    /// Upstream layer (bias reduced by `absorbed`).
    pub layer1: String,
    /// Downstream layer (bias increased by `W2 · absorbed`).
    pub layer2: String,
    /// Absorbed amount per channel of layer 1.
    #[serde(deserialize_with = "nonfinite::vec_f32")]
    #[schema(value_type = Vec<Option<f32>>)]
    pub absorbed: Vec<f32>,
}

/// A candidate left alone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Skip {
    /// Pass that skipped it (`bn_fold`, `relu6`, `cls`, `hbf`).
    pub pass: String,
    /// Nodes concerned.
    pub nodes: Vec<String>,
    /// Stable snake_case reason code.
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
}

/// Verification status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    /// Both models ran; `outputs` holds the deviations.
    Verified,
    /// Verification could not run; `reason` says why.
    NotVerified,
    /// Verification was switched off.
    #[default]
    Disabled,
}

/// Original vs equalized, run by tract on the same inputs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// Status.
    pub status: VerifyStatus,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the inputs came from (`random(seed=…)`).
    pub inputs: String,
    /// Input shapes used.
    pub input_shapes: Vec<TensorShape>,
    /// Deviation per output.
    pub outputs: Vec<OutputDeviation>,
    /// Worst relative L2 over outputs.
    pub max_rel_l2: Option<f64>,
}

/// A named shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TensorShape {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// Deviation of one output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputDeviation {
    /// Output name.
    pub name: String,
    /// `max |a − b|`.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub max_abs_err: f64,
    /// `‖a − b‖₂ / ‖a‖₂`.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub rel_l2: f64,
}

/// Stage timings in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    /// Graph indexing and scope.
    pub prepare: f64,
    /// BN folding.
    pub bn_fold: f64,
    /// ReLU6 decisions.
    pub relu6: f64,
    /// Cross-layer scaling.
    pub cls: f64,
    /// High-bias fold.
    pub hbf: f64,
    /// Writing tensors back.
    pub finish: f64,
    /// Verification.
    pub verify: f64,
    /// Quantization-readiness figures.
    pub quantization: f64,
    /// Encoding the equalized model.
    #[serde(default)]
    pub encode: f64,
    /// Deploy model: statistics, rounding, bias correction and its verification.
    #[serde(default)]
    pub deploy: f64,
    /// Int8 outputs: plan, calibration, writers and their figures.
    #[serde(default)]
    pub exports: f64,
}

impl Timings {
    /// The time field of a pass.
    pub fn pass_mut(&mut self, step: crate::options::Step) -> &mut f64 {
        use crate::options::Step;
        match step {
            Step::BnFold => &mut self.bn_fold,
            Step::Relu6 => &mut self.relu6,
            Step::Cls => &mut self.cls,
            Step::Hbf => &mut self.hbf,
        }
    }
}

/// How ready the model is for int8 deployment, before (BN-folded) and after equalization.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Quantization {
    /// Per layer: int8 weight SQNR (dB) of the BN-folded and of the equalized weights.
    pub layers: Vec<LayerQuant>,
    /// Simulated end-to-end figures (tract, sample or random inputs); absent when not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<EndToEnd>,
    /// Per-tensor activation range growth caused by the scaling.
    pub activations: Vec<ActivationGrowth>,
}

/// Weight quantization quality of one layer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LayerQuant {
    /// Layer label.
    pub layer: String,
    /// Op type.
    pub op: String,
    /// Output channels.
    pub channels: usize,
    /// Per-tensor symmetric int8 weight SQNR of the BN-folded weight (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_before_db: f64,
    /// Per-tensor symmetric int8 weight SQNR of the equalized weight (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_after_db: f64,
    /// Per-channel symmetric int8 weight SQNR (dB; the ceiling, unchanged by CLE).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_per_channel_db: f64,
}

/// End-to-end simulated quantization against the original FP32 model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct EndToEnd {
    /// Where the inputs came from.
    pub inputs: String,
    /// Number of samples.
    pub samples: usize,
    /// One row per (model, scheme).
    pub rows: Vec<QuantRow>,
    /// Quantizing one layer at a time (per-tensor symmetric int8, equalized model).
    pub sensitivity: Vec<LayerSensitivity>,
}

/// Logits SQNR and top-1 agreement of one simulated variant against the original model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuantRow {
    /// `bn_folded` or `equalized`.
    pub model: String,
    /// `fp32`, `per_tensor_symmetric`, `per_tensor_asymmetric`, `per_channel`, `w8a8`.
    pub scheme: String,
    /// Output SQNR in dB (higher is better).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_db: f64,
    /// Fraction of samples whose arg-max output matches the original model's.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub top1_agreement: f64,
    /// Median over samples of each sample's output SQNR (dB, capped at 300), when there are
    /// several samples: the typical image, where the aggregate is dominated by loud ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample_median_db: Option<f64>,
    /// 10th percentile over samples of each sample's output SQNR (dB): the bad tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample_p10_db: Option<f64>,
}

/// Sensitivity of one layer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LayerSensitivity {
    /// Layer label.
    pub layer: String,
    /// Output SQNR (dB) when only this layer's weight is int8 (per-tensor symmetric).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_db: f64,
}

/// How much the scaling widened one activation tensor's per-tensor range.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivationGrowth {
    /// Tensor name (the output of the activation after `layer`).
    pub tensor: String,
    /// The layer whose output channels were scaled.
    pub layer: String,
    /// Per-tensor range after / before, estimated without data (per-channel bounds).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub growth_data_free: f64,
    /// Per-tensor range after / before, measured on the inputs (when run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_measured: Option<f64>,
}

/// A weight chain folded into one initializer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConstFold {
    /// The tensor the layer read (the chain's output).
    pub tensor: String,
    /// The initializer that holds the folded value now. When nothing else read the source it is
    /// the source itself, keeping its name (renamed to `tensor` when the chain is only
    /// `Identity` nodes, an exporter's alias of a deduplicated parameter); otherwise it is a new
    /// initializer named `tensor` and the source stays, unchanged, for its other users.
    pub initializer: String,
    /// The constant the chain starts from (initializer or `Constant` node output).
    pub source: String,
    /// Op types of the chain, source side first.
    pub ops: Vec<String>,
    /// Nodes removed because nothing read them any more.
    pub removed: Vec<String>,
    /// Nodes that read the folded value.
    pub consumers: Vec<String>,
    /// The source is still read by others, so the value went into a new initializer.
    pub copied: bool,
}

/// A shared tensor copied so that one user could be rewritten alone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TensorCopy {
    /// Pass that needed the copy (`bn_fold`, `cls`, `hbf`).
    pub pass: String,
    /// The node that reads the copy now.
    pub node: String,
    /// The shared tensor (unchanged for its other users).
    pub tensor: String,
    /// The new initializer.
    pub copy: String,
    /// How many nodes (and graph outputs) read `tensor` before the copy.
    pub users: usize,
}

/// Layers and their weights (parameter count) in one coverage class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CoverageCount {
    /// Layers.
    pub layers: usize,
    /// Weight elements of those layers.
    pub parameters: u64,
}

/// Layers that are in no CLS set, for one reason.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CoverageGroup {
    /// Stable reason code (the `cls` skip reason of these layers, or `cls_not_selected`,
    /// `not_a_cls_layer`).
    pub reason: String,
    /// Where the chain after these layers stops, when that is the reason: an op type or a
    /// recognized pattern (`SiLU`, `HardSwish`, `GELU`, `Mish`, `LayerNorm`, `squeeze-excite`),
    /// or for a plain fan-out the consumers' op types (`Add, Conv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocker: Option<String>,
    /// Layers and parameters in the group.
    pub count: CoverageCount,
    /// How many of them absorbed a BatchNormalization anyway.
    pub bn_folded: usize,
    /// The first few layers (labels).
    pub examples: Vec<String>,
}

/// How much of the model the passes reached.
///
/// Weight-bearing layers are the in-scope `Conv`, `ConvTranspose`, `Gemm` and `MatMul` nodes
/// whose weight is a constant (directly or through a foldable chain); a `MatMul` of two
/// activations is not one. `scaled`, `bn_folded` and `untouched` count layers (a layer both
/// scaled and folded is in the first two); `not_scaled` explains every layer outside a CLS set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Coverage {
    /// All weight-bearing layers in scope.
    pub total: CoverageCount,
    /// Layers in a CLS set.
    pub scaled: CoverageCount,
    /// Layers that absorbed at least one BatchNormalization.
    pub bn_folded: CoverageCount,
    /// Layers neither scaled nor BN folded.
    pub untouched: CoverageCount,
    /// `scaled.parameters / total.parameters` (0 without layers).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub scaled_share: f64,
    /// BatchNormalization nodes in scope before the passes.
    pub batch_norms: usize,
    /// Of those, folded into a layer.
    pub batch_norms_folded: usize,
    /// Layers in no CLS set, grouped by reason and blocker, largest group first.
    pub not_scaled: Vec<CoverageGroup>,
    /// One line for people, e.g. `4 of 82 layers scaled (14.9% of weights), 49 BN folded; not
    /// scaled: 47 fan_out (SiLU), 16 chain_break (Sigmoid), 9 chain_break (Add), …`.
    pub summary: String,
}

/// The deploy model: the equalized model with its layer weights written on the declared int8
/// target's grid (rounded to nearest or by data-free rounding) and, on request, biases corrected
/// for the weight error. Its function differs from the input's on purpose (it is the int8
/// model's function with FP32 activations), so `function_changed` is always true; the exact
/// equalized model stays the main output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeployReport {
    /// The declared target (`metadata_props` `onnx_cle.target` carries the same text).
    pub target: String,
    /// The cross-layer scaling of the model the deploy model (and every int8 output with it)
    /// was built from: `noise` or `equal_ranges`. With `scaling = split` it is `noise`, from a
    /// run of its own, while the equalized model has equal weight ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<crate::options::Scaling>,
    /// `nearest` or `squant`.
    pub rounding: String,
    /// `off`, `analytic` or `empirical`.
    pub bias_correction: String,
    /// Where `E[x]` came from (bias correction only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectation: Option<String>,
    /// Always true: the deploy model is tied to its grid and does not compute the input's function.
    pub function_changed: bool,
    /// Layers whose weights were put on the grid, in graph order.
    pub layers: Vec<DeployLayer>,
    /// Layers left out (not quantizable) or not corrected, with the reason.
    pub skipped: Vec<Skip>,
    /// Totals over layers.
    pub summary: DeploySummary,
    /// Output deviation from the original model predicted from the per-layer weight errors.
    pub predicted: PredictedDeviation,
    /// Deploy model vs the original, run by tract on the verification inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<Verification>,
    /// The `metadata_props` written into the deploy model.
    pub metadata: Vec<MetadataEntry>,
}

/// One layer of the deploy model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeployLayer {
    /// Layer label.
    pub layer: String,
    /// Op type.
    pub op: String,
    /// Weight tensor.
    pub weight: String,
    /// Output channels.
    pub channels: usize,
    /// SQNR (dB) of the written weight against the equalized FP32 weight.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub weight_sqnr_db: f64,
    /// The same with round-to-nearest on the same grid (for comparison).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub nearest_sqnr_db: f64,
    /// Elements moved to their second-nearest level by data-free rounding.
    pub flips: usize,
    /// Largest per-channel error sum (LSB) after rounding.
    #[serde(deserialize_with = "nonfinite::f32")]
    #[schema(value_type = Option<f32>, required = true)]
    pub max_channel_error_lsb: f32,
    /// Largest ratio of a grid step to the plain max-abs step: above 1 where the target's
    /// int16 pairs (onnxruntime on x86 without VNNI) needed a wider step so that no pair of
    /// neighbouring products can saturate.
    #[serde(default = "one")]
    pub step_widening: f32,
    /// Levels moved one step toward zero so that no such pair saturates.
    #[serde(default)]
    pub pair_moves: usize,
    /// Saturation risk: pairs of neighbouring products that could saturate the int16 of x86
    /// kernels without VNNI on the plain 8-bit grid (same-sign levels over 128 in total); none
    /// remains in the written weights of an `int16_pairs` target.
    #[serde(default)]
    pub pairs_at_risk: usize,
    /// Bias correction applied to this layer.
    pub corrected: bool,
    /// RMS over output channels of the bias change.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub correction_rms: f64,
    /// Largest |bias change|.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub correction_max_abs: f64,
    /// RMS of the bias change over the RMS of the corrected bias (0 when uncorrected).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub correction_relative: f64,
}

/// Totals of the deploy edits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeploySummary {
    /// Layers on the grid.
    pub layers: usize,
    /// Layers whose bias was corrected.
    pub corrected: usize,
    /// Biases created for layers that had none.
    pub biases_created: usize,
    /// Weight elements moved by data-free rounding.
    pub flips: usize,
    /// Weight elements on the grid.
    pub elements: usize,
    /// Layers whose grid step was widened for the target's int16 pairs.
    #[serde(default)]
    pub widened: usize,
    /// Levels moved one step toward zero for the target's int16 pairs.
    #[serde(default)]
    pub pair_moves: usize,
    /// Pairs that could saturate on the plain 8-bit grid, over all layers.
    #[serde(default)]
    pub pairs_at_risk: usize,
}

fn one() -> f32 {
    1.0
}

/// A deviation predicted without running the model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PredictedDeviation {
    /// How it is computed.
    pub method: String,
    /// Predicted output SQNR (dB) against the original.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_db: f64,
    /// Predicted relative L2 deviation `‖a − b‖ / ‖a‖`.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub rel_l2: f64,
}

/// A `metadata_props` entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetadataEntry {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// The int8 outputs written from one quantization plan (`quant::plan`): what it quantizes, the
/// files, and their figures against the original FP32 model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Exports {
    /// The declared target, e.g. `ort: weights uint8 asymmetric per_tensor; activations uint8
    /// asymmetric`.
    pub target: String,
    /// Source of the activation ranges: `data_free`, `minmax`, `percentile`, `mse`.
    pub ranges: String,
    /// Sample inputs the ranges were calibrated on (0 when data-free).
    pub calibration_samples: usize,
    /// Quantized activation tensors.
    pub activations: usize,
    /// Quantized weights.
    pub weights: usize,
    /// int32 biases.
    pub biases: usize,
    /// Relu / Clip nodes whose function the output quantizer takes over (dropped from the QDQ
    /// model).
    pub folded_activations: usize,
    /// Relu outputs feeding an exact ReLU6 `Min` that take the `Min`'s range (the tie).
    pub tied: usize,
    /// Tensors a runtime would quantize that stay float, and why.
    pub left_float: Vec<LeftFloat>,
    /// Activation quantizers placed against the activations onnxruntime's `quantize_static`
    /// (QDQ) would quantize in this model.
    #[serde(default)]
    pub coverage: QdqCoverage,
    /// Per-channel weight scales raised so that a layer's int32 bias fits (a tiny weight
    /// scale under a large bias would overflow it; no bias is ever clamped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bias_guards: Vec<String>,
    /// The opset upgrade the QDQ model needed (per-channel `DequantizeLinear` needs opset 13,
    /// `QuantizeLinear` opset 10), when the model declared an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opset_upgrade: Option<OpsetUpgrade>,
    /// Automatic mixed precision (`exports.mixed_precision`): the activations kept on 16 bits
    /// and what that is predicted to buy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed_precision: Option<MixedPrecision>,
    /// The files written.
    pub files: Vec<ExportFile>,
    /// Logits figures against the original FP32 model (with sample inputs or `quant.end_to_end`).
    pub figures: Vec<ExportFigure>,
}

/// Activation quantizers placed / quantizable, and what stayed float by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QdqCoverage {
    /// Activation tensors onnxruntime's `quantize_static` (QDQ format) would quantize in this
    /// model: the inputs and outputs of the ops it quantizes, graph outputs included, a Relu or
    /// Clip input folded into its output's quantizer not counted.
    pub quantizable: usize,
    /// Activation quantizers placed.
    pub placed: usize,
    /// The quantizable activations left float, grouped by reason, most frequent first.
    pub float: Vec<FloatReason>,
}

impl QdqCoverage {
    /// `placed / quantizable` in percent (100 when nothing is quantizable).
    pub fn percent(&self) -> f64 {
        if self.quantizable == 0 {
            100.0
        } else {
            100.0 * self.placed as f64 / self.quantizable as f64
        }
    }

    /// One line: `placed of quantizable activations quantized (p %); float: n reason, …`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} of {} quantizable activations quantized ({:.0} %)",
            self.placed,
            self.quantizable,
            self.percent()
        );
        if !self.float.is_empty() {
            let parts: Vec<String> = self
                .float
                .iter()
                .take(3)
                .map(|f| format!("{} {}", f.count, f.reason))
                .collect();
            line += &format!("; float: {}", parts.join("; "));
            if self.float.len() > 3 {
                line += &format!("; {} more reasons (see the report)", self.float.len() - 3);
            }
        }
        line
    }
}

/// Quantizable activations left float for one reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FloatReason {
    /// Why.
    pub reason: String,
    /// How many.
    pub count: usize,
    /// The first of them.
    pub tensors: Vec<String>,
}

/// The default-domain opset upgrade of the QDQ model: same function, only the listed nodes
/// rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OpsetUpgrade {
    /// The opset the model declared.
    pub from: i64,
    /// The opset of the QDQ model.
    pub to: i64,
    /// One line per rewritten node (label, op and version: what changed).
    pub changes: Vec<String>,
    /// The largest relative output difference (max |Δ| / max |y| per output) between the
    /// upgraded and the original FP32 model on one sample input in tract; absent when no inputs
    /// were at hand or tract could not run one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rel_diff: Option<f64>,
}

/// What automatic mixed precision kept on 16 bits (model: `quant::mixed`). The measured
/// figures are the QDQ model's own (`figures`, with sample inputs or `quant.end_to_end`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MixedPrecision {
    /// The share of the activation quantizers allowed on 16 bits.
    pub share: f32,
    /// Activation quantizers in the plan.
    pub quantizers: usize,
    /// Of those, the ones without statistics to predict their noise (never chosen).
    pub unranked: usize,
    /// Predicted gain in output SQNR (dB) of keeping `wide` on 16 bits, against every
    /// activation on 8 bits (a relative figure: the model ranks, its absolute level is not
    /// calibrated).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub predicted_gain_db: f64,
    /// The activations kept on 16 bits, by value chain, the noisiest chain first.
    pub wide: Vec<WideActivation>,
    /// The nodes that read or write a 16-bit activation (labels): onnxruntime's CPU int8
    /// kernels are 8-bit only, so it runs them as float ops on dequantized values.
    #[serde(default)]
    pub outside_int8: Vec<String>,
}

impl MixedPrecision {
    /// One line: how many quantizers are on 16 bits, the budget, the predicted gain.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} activation quantizers on uint16 (budget {:.1} %), predicted {:+.1} dB; \
             not int8 on onnxruntime's CPU kernels: {} node(s) reading or writing them run as \
             float ops there; the lists are in the report",
            self.wide.len(),
            self.quantizers,
            100.0 * f64::from(self.share),
            self.predicted_gain_db,
            self.outside_int8.len()
        )
    }
}

/// One activation kept on 16 bits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WideActivation {
    /// Tensor name.
    pub tensor: String,
    /// Its value chain's share of the predicted 8-bit activation noise (the quantizers of one
    /// chain re-apply one grid and are kept wide together).
    pub noise_share: f64,
}

/// A tensor left in float, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeftFloat {
    /// Tensor name.
    pub tensor: String,
    /// Why it is not quantized.
    pub reason: String,
}

/// One written int8 output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportFile {
    /// Artifact name: `qdq.onnx`, `encodings.json`, `ort_overrides.json`.
    pub name: String,
    /// Format: `qdq_onnx`, `aimet_encodings_1.0.0`, `aimet_encodings_0.6.1`,
    /// `ort_tensor_quant_overrides`.
    pub format: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Logits SQNR of one int8 output against the original FP32 model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportFigure {
    /// The output: an artifact name.
    pub output: String,
    /// `simulated` (the plan in float, weights dequantized and activations fake-quantized,
    /// run by tract) or `tract` (the QDQ model itself run by tract).
    pub method: String,
    /// Where the inputs came from.
    pub inputs: String,
    /// Number of samples.
    pub samples: usize,
    /// The evaluated samples are also the calibration samples (an optimistic figure).
    pub in_sample: bool,
    /// Logits SQNR over all samples (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub sqnr_db: f64,
    /// Per-sample SQNR, median (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub median_sqnr_db: f64,
    /// Per-sample SQNR, 10th percentile (dB).
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub p10_sqnr_db: f64,
    /// Fraction of samples whose arg-max output matches the original model's.
    #[serde(deserialize_with = "nonfinite::f64")]
    #[schema(value_type = Option<f64>, required = true)]
    pub top1_agreement: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_figures_survive_a_json_round_trip() {
        // Regression: `serde_json` writes NaN/±Inf as `null`, which plain `f32`/`f64` fields
        // refused to read back, so `GET /jobs/{id}/report.html` of such a job was a 500.
        let report = Report {
            cls_sets: vec![ClsSet {
                pairs: vec![ClsPair {
                    scale: vec![1.0, f32::NAN],
                    range_before: PairRanges {
                        layer1_out: vec![f32::INFINITY, 2.0],
                        layer2_in: vec![1.0, f32::NEG_INFINITY],
                    },
                    ..serde_json::from_value(serde_json::json!({
                        "layer1": "a", "layer2": "b", "through": [], "relu_between": true,
                        "scale": [], "range_before": {"layer1_out": [], "layer2_in": []},
                        "range_after": {"layer1_out": [], "layer2_in": []}
                    }))
                    .unwrap()
                }],
                ..serde_json::from_value(serde_json::json!({
                    "iteration": 1, "kind": "pair", "layers": [], "pairs": []
                }))
                .unwrap()
            }],
            ..Default::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("null"), "{json}");
        let back: Report = serde_json::from_str(&json).expect("reads back");
        let p = &back.cls_sets[0].pairs[0];
        assert!(p.scale[1].is_nan() && p.range_before.layer1_out[0].is_nan());
        assert_eq!(p.range_before.layer1_out[1], 2.0);
    }
}
