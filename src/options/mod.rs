//! What the caller asks the pipeline to do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod deploy;
pub mod exports;
pub mod figures;
pub mod flags;
pub mod target;

use crate::error::{CoreError, Result};

pub use deploy::{BiasCorrection, DeployOptions, Rounding};
pub use exports::{Calibration, EncodingsVersion, ExportOptions};
pub use figures::QuantOptions;
pub use target::{
    Accumulation, ActivationGrid, ActivationType, Granularity, Target, TargetPreset, WeightGrid,
    WeightType,
};

/// One pipeline step. Steps always run in this order (cle-spec §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Fold BatchNormalization into neighbouring Conv / ConvTranspose / Gemm / MatMul.
    BnFold,
    /// Decide what to do with each Clip(0, 6) ("ReLU6").
    Relu6,
    /// Cross-layer scaling of pairs and Conv→depthwise→Conv triples.
    Cls,
    /// High-bias fold.
    Hbf,
}

impl Step {
    /// All steps in pipeline order.
    pub const ALL: [Step; 4] = [Step::BnFold, Step::Relu6, Step::Cls, Step::Hbf];

    /// Its name: `bn_fold`, `relu6`, `cls`, `hbf`.
    pub fn name(self) -> &'static str {
        match self {
            Step::BnFold => "bn_fold",
            Step::Relu6 => "relu6",
            Step::Cls => "cls",
            Step::Hbf => "hbf",
        }
    }

    /// Parses `bn_fold`, `relu6`, `cls`, `hbf`.
    pub fn parse(s: &str) -> Result<Step> {
        match s.trim() {
            "bn_fold" | "bnfold" | "bn" => Ok(Step::BnFold),
            "relu6" => Ok(Step::Relu6),
            "cls" => Ok(Step::Cls),
            "hbf" => Ok(Step::Hbf),
            other => Err(CoreError::InvalidOptions(format!(
                "unknown step `{other}` (expected bn_fold, relu6, cls, hbf)"
            ))),
        }
    }
}

/// What to do with an exact Clip(0, 6) between two scaled layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Relu6Policy {
    /// Scale across it and keep the function: the Clip becomes `Relu` followed by `Min` with a
    /// per-channel bound `6 / s_c`.
    #[default]
    Exact,
    /// AIMET: replace it by `Relu` (changes the model's function; reported).
    Replace,
    /// Leave it; it ends the chain.
    Keep,
}

/// How the high-bias fold treats the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HbfMode {
    /// No high-bias fold.
    Off,
    /// Absorb only what provably keeps the function (hard bounds of a bounded input).
    #[default]
    Exact,
    /// AIMET's 3σ rule from the folded BN statistics (approximate by design; reported).
    Aimet,
}

/// Compatibility target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compat {
    /// onnx-cle's own behaviour: function-preserving, AIMET's bugs fixed.
    #[default]
    None,
    /// Reproduce aimet_onnx 2.42 `equalize_model` numbers (never its crashes or corruptions).
    Aimet,
}

/// How cross-layer scaling chooses each pair's per-channel scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Equal weight ranges on both sides of every pair (Nagel et al. eq. 11; AIMET).
    EqualRanges,
    /// Least predicted int8 noise at each pair's output from both layers' weight grids and the
    /// per-tensor activation grid between them, with the activation's data-free per-channel
    /// statistics (the folded BN's): starts from equal weight ranges and moves toward equal
    /// activation ranges as far as the prediction says it pays. Pairs whose activation has no
    /// statistics keep equal weight ranges.
    Noise,
    /// Both, each where it serves: the equalized model with equal weight ranges (what a
    /// quantizer of the user's own expects, per-tensor included), and the deploy model and the
    /// int8 outputs built from a run of their own with `noise` on the declared target's grids.
    Split,
}

impl Scaling {
    /// Report name: `equal_ranges`, `noise`, `split`.
    pub fn name(self) -> &'static str {
        match self {
            Scaling::EqualRanges => "equal_ranges",
            Scaling::Noise => "noise",
            Scaling::Split => "split",
        }
    }

    /// The rule the equalized model is scaled with.
    pub fn of_model(self) -> Scaling {
        match self {
            Scaling::Split => Scaling::EqualRanges,
            s => s,
        }
    }

    /// The rule the model under the deploy model and the int8 outputs is scaled with.
    pub fn of_int8(self) -> Scaling {
        match self {
            Scaling::Split => Scaling::Noise,
            s => s,
        }
    }
}

/// Whether to choose the scaling from the given samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// Use the options as given.
    #[default]
    None,
    /// Try a few candidate scalings (the given options, `iterations` 1, 3 and 5, `balance` 2)
    /// and keep the one with the best per-tensor int8 output SQNR on half of the samples
    /// (needs sample inputs; those samples are used for nothing else). Data-driven, opt-in.
    Auto,
}

/// Verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyOptions {
    /// Run the original and the equalized model with tract and compare.
    pub enabled: bool,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Value for every dynamic (symbolic or unknown) input dimension that `input_shapes` does
    /// not fix.
    pub dynamic_dim: usize,
    /// Concrete shapes of inputs with dynamic dimensions, by input name (`{"x": [1, 3, 48,
    /// 320]}`; CLI `--input-shape x:1x3x48x320`): the verification inputs and the int8
    /// self-check run at these shapes. Each must have the input's rank and keep its fixed
    /// dimensions. An image model whose height and width are dynamic otherwise runs at
    /// `dynamic_dim` (1×1 images), which checks little of what the model does on real inputs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Seconds verification may take (building and running both models); past it the report
    /// says `not_verified` with the reason `budget exceeded…` and the run goes on. `None`: the
    /// default, [`VerifyOptions::default_budget_s`] of the model size; `0` skips verification
    /// at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_s: Option<f64>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            enabled: true,
            seed: 0x5eed,
            dynamic_dim: 1,
            input_shapes: BTreeMap::new(),
            budget_s: None,
        }
    }
}

impl VerifyOptions {
    /// The default budget for a model of `bytes` bytes: 0.2 s per MB, at least 10 s (about
    /// ten times what building and running both models in tract takes on a 2-core machine).
    pub fn default_budget_s(bytes: usize) -> f64 {
        (bytes as f64 / 1e6 * 0.2).max(10.0)
    }

    /// The budget in force for a model of `bytes` bytes.
    pub fn budget_for(&self, bytes: usize) -> f64 {
        self.budget_s
            .unwrap_or_else(|| Self::default_budget_s(bytes))
    }
}
/// The default cap on cross-layer-scaling passes outside `compat = aimet`: CLS stops earlier once
/// the stop rule holds (EfficientNet-Lite0 and MobileNetV2 converge in 15–18 passes at the
/// default threshold 1e-3).
pub const DEFAULT_MAX_PASSES: u32 = 100;

/// Options of one equalization run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Steps to run, in pipeline order whatever the order given: `bn_fold`, `relu6`, `cls`,
    /// `hbf` (as a flag or query parameter: comma-separated or repeated; `none` runs no pass, a
    /// lossless decode + encode).
    pub steps: Vec<Step>,
    /// ReLU6 policy. With `compat = aimet` it is `replace`.
    pub relu6: Relu6Policy,
    /// High-bias fold mode. With `compat = aimet` it is `aimet`.
    pub hbf: HbfMode,
    /// Compatibility target.
    pub compat: Compat,
    /// Start op names (node or tensor names): only nodes downstream of one are touched.
    pub start: Vec<String>,
    /// Output op names (node or tensor names): only nodes upstream of one are touched.
    pub output: Vec<String>,
    /// Most cross-layer-scaling passes: AIMET runs 1 (forced with `compat = aimet`). By default
    /// CLS iterates until the stop rule `max |1 − s| < threshold` holds (sets that share layers
    /// settle; an isolated set is exact after one pass), at most [`DEFAULT_MAX_PASSES`]: a
    /// converged result does not depend on the pass count (a fixed 2 passes did, by ±2 dB
    /// per-tensor int8 on EfficientNet-Lite0). `None` means the mode's default (1 with
    /// `compat = aimet`, else [`DEFAULT_MAX_PASSES`]).
    pub iterations: Option<u32>,
    /// Stop iterating once every scale factor satisfies `max |1 − s| < threshold`.
    pub threshold: f32,
    /// Verification.
    pub verify: VerifyOptions,
    /// Activation-aware balancing: when set to `g`, CLS never lets a channel of a scaled
    /// activation exceed `g ×` that activation's original per-tensor range (data-free, from
    /// the folded BN statistics and ReLU6 bounds). Trades weight-range gains for W8A8 accuracy.
    pub balance: Option<f32>,
    /// Rule for the cross-layer scales: `equal_ranges`, `noise` (least predicted W8A8 noise on
    /// the declared target's grids; with per-channel weights a fixed step, 0.35 of the way
    /// towards equal activation reaches; not with `compat = aimet`) or `split` (the equalized
    /// model with `equal_ranges`, the deploy model and the int8 outputs from a run of their own
    /// with `noise`). Default: `split` for the `ort` and `qnn` targets (`noise` was chosen on
    /// the tuning photos of every evaluated model for the int8 outputs, README: Scaling rule;
    /// scaled for a per-channel grid, EfficientNet-Lite0's equalized model loses 2.8 dB of
    /// `quantize_static` per-tensor W8A8 to equal ranges, README: Fidelity); `equal_ranges` for
    /// `trt` (its int8 symmetric activations were not evaluated), with `balance` (whose cap
    /// the noise step does not keep: `noise` and `split` with `balance` are refused) and with
    /// `compat = aimet`.
    pub scaling: Option<Scaling>,
    /// Quantization-readiness figures in the report.
    pub quant: QuantOptions,
    /// The declared int8 target: the grid every grid-tied output (deploy model, QDQ model,
    /// encodings) uses and names.
    pub target: Target,
    /// The deploy model (weights on the target grid, bias correction); off by default.
    pub deploy: DeployOptions,
    /// Int8 outputs (QDQ model, AIMET encodings, onnxruntime overrides) and their activation
    /// ranges.
    pub exports: ExportOptions,
    /// `auto`: choose among candidate scalings on held-out samples ([`Select::Auto`]).
    pub select: Select,
    /// Fail the run when an int8 output cannot be trusted: worse than its plain baseline
    /// (nearest rounding, no bias correction) on the verification inputs, not checked (needs
    /// verification), or leaving more than 10 % of the quantizable activations in float. The
    /// outputs are still written (the CLI exits with code 7; a job fails with code
    /// `int8_not_trusted`); the report's `int8` section says why.
    pub strict_int8: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: Step::ALL.to_vec(),
            relu6: Relu6Policy::default(),
            hbf: HbfMode::default(),
            compat: Compat::default(),
            start: Vec::new(),
            output: Vec::new(),
            iterations: None,
            threshold: 1e-3,
            verify: VerifyOptions::default(),
            balance: None,
            scaling: None,
            quant: QuantOptions::default(),
            target: Target::default(),
            deploy: DeployOptions::default(),
            exports: ExportOptions::default(),
            select: Select::None,
            strict_int8: false,
        }
    }
}

impl Options {
    /// AIMET compatibility: `equalize_model`'s behaviour.
    pub fn aimet() -> Self {
        Options {
            compat: Compat::Aimet,
            relu6: Relu6Policy::Replace,
            hbf: HbfMode::Aimet,
            ..Options::default()
        }
    }

    /// CLS passes to run (after [`Options::normalized`], the effective value).
    pub fn passes(&self) -> u32 {
        self.iterations.unwrap_or(if self.is_aimet() {
            1
        } else {
            DEFAULT_MAX_PASSES
        })
    }

    /// Whether `step` is enabled.
    pub fn runs(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }

    /// Whether the run builds a deploy model: asked for, or needed by the int8 outputs (their
    /// FP32 model and data-free activation statistics).
    pub fn builds_deploy(&self) -> bool {
        self.deploy.requested() || self.exports.any()
    }

    /// Whether AIMET compatibility is on.
    pub fn is_aimet(&self) -> bool {
        self.compat == Compat::Aimet
    }

    /// The resolved scaling rule ([`Options::scaling`]'s default).
    pub fn scaling(&self) -> Scaling {
        self.scaling.unwrap_or(
            if self.is_aimet() || self.balance.is_some() || self.target.preset == TargetPreset::Trt
            {
                Scaling::EqualRanges
            } else {
                Scaling::Split
            },
        )
    }

    /// Checks the options and applies what `compat = aimet` implies.
    pub fn normalized(mut self) -> Result<Self> {
        let default_passes = if self.is_aimet() {
            1
        } else {
            DEFAULT_MAX_PASSES
        };
        let passes = self.iterations.unwrap_or(default_passes);
        if passes == 0 || passes > 1000 {
            return Err(CoreError::InvalidOptions(
                "iterations must be between 1 and 1000".into(),
            ));
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(CoreError::InvalidOptions(
                "threshold must be a finite number >= 0".into(),
            ));
        }
        if self.verify.dynamic_dim == 0 || self.verify.dynamic_dim > 4096 {
            return Err(CoreError::InvalidOptions(
                "verify.dynamic_dim must be between 1 and 4096".into(),
            ));
        }
        for (name, shape) in &self.verify.input_shapes {
            if shape.is_empty() || shape.iter().any(|&d| d == 0 || d > 1 << 20) {
                return Err(CoreError::InvalidOptions(format!(
                    "verify.input_shapes[{name}] must be a list of sizes between 1 and 1048576"
                )));
            }
        }
        if self
            .verify
            .budget_s
            .is_some_and(|b| !(b.is_finite() && b >= 0.0))
        {
            return Err(CoreError::InvalidOptions(
                "verify.budget_s must be a finite number of seconds >= 0".into(),
            ));
        }
        if let Some(g) = self.balance {
            if !(g.is_finite() && g >= 1.0) {
                return Err(CoreError::InvalidOptions(
                    "balance must be a finite number >= 1".into(),
                ));
            }
            if self.is_aimet() {
                return Err(CoreError::InvalidOptions(
                    "balance is not an AIMET option (compat=aimet)".into(),
                ));
            }
        }
        if self.balance.is_some() && matches!(self.scaling, Some(Scaling::Noise | Scaling::Split)) {
            return Err(CoreError::InvalidOptions(
                "scaling=noise (and split, which uses it) does not keep balance's cap on \
                 activation growth: give one of them"
                    .into(),
            ));
        }
        if self.is_aimet() && self.scaling() != Scaling::EqualRanges {
            return Err(CoreError::InvalidOptions(
                "scaling=noise and split are not AIMET options (compat=aimet)".into(),
            ));
        }
        self.exports.validate()?;
        let ex = &self.exports;
        if ex.mixed_precision.is_some() {
            if !(ex.qdq || ex.encodings.is_some() || ex.ort_overrides) {
                return Err(CoreError::InvalidOptions(
                    "exports.mixed_precision shapes the int8 outputs, and none is asked for (qdq, \
                     encodings or ort_overrides; --qdq-output, --encodings, --ort-overrides)"
                        .into(),
                ));
            }
            if self.target.activations().ty != ActivationType::Uint8 {
                return Err(CoreError::InvalidOptions(
                    "exports.mixed_precision keeps activations on uint16 instead of uint8: it \
                     needs the uint8 activation grid (targets ort and qnn)"
                        .into(),
                ));
            }
        }
        if self.is_aimet() && self.select == Select::Auto {
            return Err(CoreError::InvalidOptions(
                "select=auto is not an AIMET option (compat=aimet)".into(),
            ));
        }
        if self.is_aimet() && passes != 1 {
            return Err(CoreError::InvalidOptions(
                "compat=aimet runs a single CLS pass (iterations must be 1)".into(),
            ));
        }
        self.target.validate()?;
        self.deploy.validate()?;
        self.iterations = Some(passes);
        self.scaling = Some(self.scaling());
        if self.is_aimet() {
            if self.relu6 == Relu6Policy::Exact {
                self.relu6 = Relu6Policy::Replace;
            }
            if self.hbf == HbfMode::Exact {
                self.hbf = HbfMode::Aimet;
            }
        }
        let mut steps: Vec<Step> = Step::ALL
            .iter()
            .copied()
            .filter(|s| self.steps.contains(s))
            .collect();
        steps.dedup();
        self.steps = steps;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_names_are_the_serde_names() {
        for s in [Scaling::EqualRanges, Scaling::Noise, Scaling::Split] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }

    #[test]
    fn scaling_default_follows_the_target() {
        let n = |o: Options| o.normalized().expect("valid").scaling;
        assert_eq!(n(Options::default()), Some(Scaling::Split));
        let mut per_tensor = Options::default();
        per_tensor.target.weight_granularity = Some(Granularity::PerTensor);
        assert_eq!(n(per_tensor), Some(Scaling::Split));
        let mut trt = Options::default();
        trt.target.preset = TargetPreset::Trt;
        assert_eq!(n(trt), Some(Scaling::EqualRanges));
        assert_eq!(n(Options::aimet()), Some(Scaling::EqualRanges));
        let balanced = Options {
            balance: Some(2.0),
            ..Options::default()
        };
        assert_eq!(n(balanced), Some(Scaling::EqualRanges));
        let balanced_noise = Options {
            balance: Some(2.0),
            scaling: Some(Scaling::Noise),
            ..Options::default()
        };
        assert!(balanced_noise.normalized().is_err());
        let balanced_split = Options {
            balance: Some(2.0),
            scaling: Some(Scaling::Split),
            ..Options::default()
        };
        assert!(balanced_split.normalized().is_err());
        let equal = Options {
            scaling: Some(Scaling::EqualRanges),
            ..Options::default()
        };
        assert_eq!(n(equal), Some(Scaling::EqualRanges));
        let aimet_noise = Options {
            scaling: Some(Scaling::Noise),
            ..Options::aimet()
        };
        assert!(aimet_noise.normalized().is_err());
    }

    #[test]
    fn mixed_precision_needs_an_int8_output_and_the_uint8_grid() {
        let with = |qdq: bool, preset: TargetPreset| {
            let mut o = Options::default();
            o.exports.mixed_precision = Some(0.05);
            o.exports.qdq = qdq;
            o.target.preset = preset;
            o.normalized().map(|_| ())
        };
        assert!(with(true, TargetPreset::Ort).is_ok());
        assert!(with(false, TargetPreset::Ort).is_err());
        assert!(with(true, TargetPreset::Trt).is_err());
        let mut share = Options::default();
        share.exports.qdq = true;
        share.exports.mixed_precision = Some(1.5);
        assert!(share.normalized().is_err());
    }
}
