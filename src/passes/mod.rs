//! The CLE passes, one file each, in pipeline order (cle-spec §8.1):
//!
//! 1. [`bn_fold`]: fold every foldable BatchNormalization into its Conv / ConvTranspose / Gemm /
//!    MatMul (backward folds first, then forward folds where exact);
//! 2. [`relu6`]: recognise Clip(0, 6) and apply the ReLU6 policy (`exact`, `replace`, `keep`);
//! 3. [`cls`]: find chains of layers (Nagel et al. 2019, §4.1), split them into pairs and
//!    Conv→depthwise→Conv triples, and equalize per-channel weight ranges
//!    (`s = r1 / √(r1·r2)`, paper eq. 11; triples by AIMET's cube root);
//! 4. [`hbf`]: high-bias absorption (paper §4.2), exactly or by AIMET's 3σ rule.
//!
//! Each pass is callable alone on a [`Work`]; [`State`] carries what later passes need
//! (folded BN statistics for HBF, crossed ReLU6 nodes for their exact rewrite, CLS pairs).
//! Every rewrite is recorded in the [`Report`]; every candidate left alone becomes a
//! [`Skip`].

pub mod bn_fold;
pub mod cls;
pub mod coverage;
pub mod hbf;
pub mod noise;
pub mod relu6;

use std::collections::{HashMap, HashSet};

use crate::graph::work::Work;
use crate::options::{Options, Step};
use crate::report::{Report, Skip, TensorCopy};

/// The per-channel γ and β of a BatchNormalization folded backward into a layer: what the
/// high-bias fold needs (cle-spec §3.2.4), with the running variance and ε that give the
/// spread of its output (`σ = |γ|·√(var / (var + ε))`, used by the data-free activation
/// statistics of [`crate::quant::deploy::stats`]).
#[derive(Debug, Clone)]
pub struct BnStats {
    /// γ (original).
    pub gamma: Vec<f32>,
    /// β (original).
    pub beta: Vec<f32>,
    /// Running variance (original).
    pub var: Vec<f32>,
    /// ε used by the fold.
    pub eps: f32,
}

/// The running statistics of a BatchNormalization folded forward into the layer after it: the
/// per-channel mean and variance of the tensor that layer now reads.
#[derive(Debug, Clone)]
pub struct BnInputStats {
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
}

/// A Clip(0, 6) crossed by cross-layer scaling: its channels were divided by `scale` (cumulative)
/// and shifted down by `offset` (exact high-bias fold). Rewritten at the end to
/// `Clip(x, 0, max B) → Min(x, B)`, `B = (6 − offset·…)/scale` (see [`relu6::materialize`]).
#[derive(Debug, Clone)]
pub struct CrossedClip {
    /// Cumulative per-channel divisor.
    pub scale: Vec<f32>,
    /// Per-channel amount absorbed downstream (in the scaled domain).
    pub offset: Vec<f32>,
    /// Rank of the activation tensor.
    pub rank: usize,
}

impl CrossedClip {
    /// The current per-channel upper bound.
    pub fn bound(&self) -> Vec<f32> {
        self.scale
            .iter()
            .zip(&self.offset)
            .map(|(s, o)| 6.0 / s - o)
            .collect()
    }

    /// Whether the clip still computes exactly Clip(0, 6).
    pub fn is_identity(&self) -> bool {
        self.scale.iter().all(|&s| s == 1.0) && self.offset.iter().all(|&o| o == 0.0)
    }
}

/// A scaled pair, remembered for the high-bias fold.
#[derive(Debug, Clone)]
pub struct ScaledPair {
    /// Layer 1 label.
    pub layer1: String,
    /// Layer 2 label.
    pub layer2: String,
    /// Labels of the ops between them.
    pub through: Vec<String>,
    /// Op types of the ops between them.
    pub through_ops: Vec<String>,
    /// Cumulative per-channel factor layer 1's outputs were divided by.
    pub scale: Vec<f32>,
    /// The activation tensor between the two layers (layer 2's input).
    pub activation: String,
    /// Data-free per-channel upper range of that activation before scaling (from the BN folded
    /// into layer 1, capped by a crossed ReLU6), when known.
    pub activation_range: Option<Vec<f32>>,
}

/// What passes hand to later passes.
#[derive(Debug, Default)]
pub struct State {
    /// BN statistics of backward folds, by layer label (forward folds never drive HBF).
    pub bn_stats: HashMap<String, BnStats>,
    /// Exact Clip(0, 6) nodes that CLS may cross (policy `exact`), by label.
    pub relu6_crossable: HashMap<String, ()>,
    /// Clips crossed by CLS, by label.
    pub crossed_clips: HashMap<String, CrossedClip>,
    /// Scaled pairs in application order (merged over iterations).
    pub pairs: Vec<ScaledPair>,
    /// Statistics of forward-folded BNs, by the name of the tensor they normalized.
    pub bn_inputs: HashMap<String, BnInputStats>,
    /// BatchNormalizations (labels) the fold may leave in place, set for the model an int8
    /// output with per-tensor weights is built from: each stays where folding it would cost
    /// its layer's per-tensor grid more than [`bn_fold::UNFOLD_GAIN`] ([`bn_fold::run`]).
    pub int8_unfold: HashSet<String>,
    /// The running statistics of the BNs [`bn_fold::run`] left in place for the int8 outputs,
    /// by the name of the tensor each normalizes (the layer's output).
    pub bn_kept: HashMap<String, BnInputStats>,
}

/// Everything a pass works with.
pub struct Ctx<'a> {
    /// The model.
    pub work: &'a mut Work,
    /// Options (normalized).
    pub opts: &'a Options,
    /// The report being filled.
    pub report: &'a mut Report,
    /// Hand-over between passes.
    pub state: &'a mut State,
}

impl Ctx<'_> {
    /// Records a skipped candidate.
    pub fn skip(
        &mut self,
        pass: &str,
        nodes: Vec<String>,
        reason: &str,
        detail: impl Into<String>,
    ) {
        self.report.skipped.push(Skip {
            pass: pass.to_string(),
            nodes,
            reason: reason.to_string(),
            detail: detail.into(),
        });
    }

    /// The tensor node `i` reads as input `k`, made its own first when other users share it
    /// ([`Work::own_input`]; the copy is `<label>.<role>` and is reported in
    /// [`Report::tensor_copies`]). Only default mode copies: with `compat = aimet` shared
    /// tensors are skipped before any pass gets here.
    pub fn own(
        &mut self,
        pass: &str,
        i: usize,
        k: usize,
        role: &str,
    ) -> crate::error::Result<String> {
        let name = self.work.input(i, k).to_string();
        let users = self.work.uses(&name);
        let base = format!("{}.{role}", self.work.label(i));
        match self
            .work
            .own_input(i, k, &base)
            .map_err(crate::error::CoreError::InvalidModel)?
        {
            Some(copy) => {
                self.report.tensor_copies.push(TensorCopy {
                    pass: pass.to_string(),
                    node: self.work.label(i).to_string(),
                    tensor: name,
                    copy: copy.clone(),
                    users,
                });
                Ok(copy)
            }
            None => Ok(name),
        }
    }

    /// Label → current node index.
    pub fn label_map(&self) -> HashMap<String, usize> {
        (0..self.work.node_count())
            .map(|i| (self.work.label(i).to_string(), i))
            .collect()
    }
}

/// One pass of the pipeline: the step that selects it, and what it runs.
#[derive(Clone, Copy)]
pub struct Pass {
    /// The step that selects it.
    pub step: Step,
    /// Runs it on the model in `cx`.
    pub run: fn(&mut Ctx) -> crate::error::Result<()>,
}

/// The passes in pipeline order (cle-spec §8.1); [`finish`] runs after them.
pub const PIPELINE: [Pass; 4] = [
    Pass {
        step: Step::BnFold,
        run: bn_fold::run,
    },
    Pass {
        step: Step::Relu6,
        run: relu6::run,
    },
    Pass {
        step: Step::Cls,
        run: cls::run,
    },
    Pass {
        step: Step::Hbf,
        run: hbf::run,
    },
];

/// What runs after the passes, whichever ran: coverage, the fold of the weight chains a pass
/// wrote, and the exact ReLU6 rewrite of crossed clips.
pub fn finish(cx: &mut Ctx) -> crate::error::Result<()> {
    coverage::run(cx);
    fold_written_chains(cx)?;
    relu6::materialize(cx)
}

/// Folds the weight chains whose value a pass rewrote ([`Work::fold_chains`]) and reports each
/// fold in [`Report::const_folds`].
pub fn fold_written_chains(cx: &mut Ctx) -> crate::error::Result<()> {
    let folds = cx.work.fold_chains()?;
    if cx.opts.is_aimet() {
        for f in &folds {
            cx.report.compat_notes.push(if f.ops == ["Transpose"] {
                format!(
                    "{}: weight `{}` transposed in place as aimet_onnx 2.42 does; its Transpose node is removed instead of being left dangling",
                    f.consumers.join(", "),
                    f.initializer
                )
            } else {
                format!(
                    "{}: `{}` is computed from `{}` by {}; folded into `{}` (aimet_onnx 2.42 reads only initializers, or one Transpose before a MatMul)",
                    f.consumers.join(", "),
                    f.tensor,
                    f.source,
                    f.ops.join(" → "),
                    f.initializer
                )
            });
        }
    }
    cx.report.const_folds.extend(folds);
    Ok(())
}

/// `f32` guard of cle-spec §3.6: NaN, ±Inf and 0 become 1.
pub fn guard(s: f32) -> f32 {
    if s.is_finite() && s != 0.0 {
        s
    } else {
        1.0
    }
}
