//! Whether the int8 outputs can be trusted: each one measured before it is written against the
//! plain baseline (weights rounded to nearest on the target grid, no bias correction), the
//! fallback taken when it was worse, and what is still wrong.
//!
//! Invariant: an output listed here with `status = checked` is the kept candidate, and no kept
//! candidate deviates from the original model more than the baseline did on the same inputs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The self-checks of the int8 outputs and their verdict.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Int8Trust {
    /// True when every int8 output was checked and none has a problem.
    pub trusted: bool,
    /// One check per int8 output (the deploy model, the QDQ model and the files written from
    /// its plan).
    pub checks: Vec<OutputCheck>,
    /// What is wrong, one sentence each (empty when trusted): an output worse than its baseline
    /// or not checked, quantizable activations left in float.
    pub problems: Vec<String>,
}

/// Whether an output was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// The candidates ran on the verification inputs and the kept one is the best of those
    /// allowed.
    Checked,
    /// The output is the baseline itself (nearest rounding, no correction): nothing to compare
    /// it with (its deviation is measured when verification is on).
    Baseline,
    /// It could not be measured (`reason` says why): written as built.
    NotChecked,
}

/// The check of one int8 output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputCheck {
    /// `deploy.onnx` or `qdq.onnx` (encodings and overrides come from the QDQ model's plan).
    pub output: String,
    /// Whether it was measured.
    pub status: CheckStatus,
    /// Why it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The inputs the candidates ran on (the verification inputs).
    pub inputs: String,
    /// Every candidate measured, the requested one first and the baseline among them.
    pub candidates: Vec<CheckCandidate>,
    /// Label of the candidate written.
    pub kept: String,
    /// True when the requested candidate was worse than the baseline and another was written.
    pub fell_back: bool,
}

/// One measured candidate of an output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckCandidate {
    /// What it is: `squant + analytic` (rounding + bias correction), `baseline: nearest + off`…
    pub label: String,
    /// Its worst relative L2 deviation from the original model over the outputs (tract).
    pub max_rel_l2: Option<f64>,
    /// The same as an SQNR: `−20 log10(max_rel_l2)`.
    pub sqnr_db: Option<f64>,
}

impl CheckCandidate {
    /// A candidate and its measured deviation.
    pub fn new(label: impl Into<String>, max_rel_l2: Option<f64>) -> Self {
        CheckCandidate {
            label: label.into(),
            max_rel_l2,
            sqnr_db: max_rel_l2
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| -20.0 * r.log10()),
        }
    }
}
