//! The deploy model the caller asks for: weights on the target grid, how they are rounded, and
//! bias correction ([`crate::quant::deploy`] builds it).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{CoreError, Result};

/// What the deploy model gets (all off by default: no deploy model is made).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeployOptions {
    /// Produce the deploy model even with nearest rounding and no bias correction (weights
    /// rounded to nearest on the target grid). Implied by `bias_correction` other than `off`
    /// and by `rounding = squant`. CLI: `--deploy-output PATH`.
    pub model: bool,
    /// Bias correction for the weight error on the target grid.
    pub bias_correction: BiasCorrection,
    /// How weights are put on the grid.
    pub rounding: Rounding,
    /// Per-channel mean of the graph input, for analytic `E[x]` (one value: every channel);
    /// default 0 (`null`).
    pub input_mean: Option<Vec<f32>>,
}

impl DeployOptions {
    /// Whether a deploy model is produced.
    pub fn requested(&self) -> bool {
        self.model
            || self.bias_correction != BiasCorrection::Off
            || self.rounding != Rounding::Nearest
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = &self.input_mean {
            if m.is_empty() || m.len() > 1 << 16 || m.iter().any(|v| !v.is_finite()) {
                return Err(CoreError::InvalidOptions(
                    "deploy.input_mean must be 1 to 65536 finite numbers".into(),
                ));
            }
        }
        Ok(())
    }
}

/// How the deploy model's biases are corrected for the weight quantization error.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BiasCorrection {
    /// No correction.
    #[default]
    Off,
    /// `E[x]` from the folded BN statistics through the equalized graph (data-free).
    Analytic,
    /// `E[x]` measured on the sample inputs (at least [`MIN_EMPIRICAL_SAMPLES`]).
    Empirical,
}

impl BiasCorrection {
    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            BiasCorrection::Off => "off",
            BiasCorrection::Analytic => "analytic",
            BiasCorrection::Empirical => "empirical",
        }
    }
}

/// How weights are rounded onto the target grid in the deploy model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Round to nearest.
    #[default]
    Nearest,
    /// Data-free error-sum flips per kernel and per output channel (SQuant-style).
    Squant,
}

impl Rounding {
    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Nearest => "nearest",
            Rounding::Squant => "squant",
        }
    }
}
