//! The int8 outputs the caller asks for (QDQ model, AIMET encodings, onnxruntime overrides) and
//! where their activation ranges come from ([`crate::quant::plan`] plans them).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Result;

/// Where activation ranges come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    /// From the folded BatchNorm statistics and the ReLU6 bounds, no data (default).
    #[default]
    DataFree,
    /// Minimum and maximum over the sample inputs.
    Minmax,
    /// The `percentile` quantiles (both tails) of the values over the sample inputs.
    Percentile,
    /// The range, shrunk from min/max, that minimizes the expected quantization error on the
    /// target grid over the histogram of the sample inputs.
    Mse,
}

impl Calibration {
    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            Calibration::DataFree => "data_free",
            Calibration::Minmax => "minmax",
            Calibration::Percentile => "percentile",
            Calibration::Mse => "mse",
        }
    }
}

/// The int8 outputs to write and how their activation ranges are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExportOptions {
    /// Write the QDQ ONNX model (artifact `qdq.onnx`).
    pub qdq: bool,
    /// Write AIMET encodings in this version (artifact `encodings.json`).
    pub encodings: Option<EncodingsVersion>,
    /// Write onnxruntime `TensorQuantOverrides` (artifact `ort_overrides.json`).
    pub ort_overrides: bool,
    /// Source of the activation ranges; every method but `data_free` needs sample inputs.
    pub calibration: Calibration,
    /// Quantile kept by `calibration = percentile`, in percent (each tail loses half the rest).
    #[schema(minimum = 50, maximum = 100)]
    pub percentile: f32,
    /// Quantize the graph outputs too (default: they stay float).
    pub quantize_outputs: bool,
    /// `[lo, hi]` of every graph input (e.g. `[-1, 1]` for pixels scaled to [−1, 1]): the
    /// statistics cannot know it, so without it a graph input stays float under data-free
    /// ranges. Overrides calibrated ranges too. It is also the input model of the data-free
    /// statistics (every element uniform on it: σ = (hi − lo)/√12; mean 0 when the range
    /// contains 0, else its middle, unless `deploy.input_mean` says otherwise), from which
    /// layers without BatchNorm statistics get their ranges.
    pub input_range: Option<[f32; 2]>,
    /// Automatic mixed precision: the share (0 to 1, e.g. `0.05`) of the activation quantizers
    /// kept on a 16-bit grid (`uint16` QDQ, which onnxruntime and QNN run): whole value chains,
    /// those whose predicted noise is largest (data-free: the rounding noise each output channel
    /// of the reading layer receives against that channel's variance from the statistics); the
    /// noise step of `scaling = noise` then judges its pairs the same way. Needs an int8 output
    /// and an unsigned 8-bit activation grid (`ort`, `qnn`).
    #[schema(minimum = 0, maximum = 1)]
    pub mixed_precision: Option<f32>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            qdq: false,
            encodings: None,
            ort_overrides: false,
            calibration: Calibration::default(),
            percentile: 99.999,
            quantize_outputs: false,
            input_range: None,
            mixed_precision: None,
        }
    }
}

impl ExportOptions {
    /// Whether any int8 output is requested.
    pub fn any(&self) -> bool {
        self.qdq || self.encodings.is_some() || self.ort_overrides
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.percentile.is_finite() && (50.0..=100.0).contains(&self.percentile)) {
            return Err(crate::error::CoreError::InvalidOptions(
                "exports.percentile must be between 50 and 100".into(),
            ));
        }
        if let Some([lo, hi]) = self.input_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(crate::error::CoreError::InvalidOptions(
                    "exports.input_range must be two finite numbers lo < hi".into(),
                ));
            }
        }
        if let Some(s) = self.mixed_precision {
            if !(s.is_finite() && (0.0..=1.0).contains(&s)) {
                return Err(crate::error::CoreError::InvalidOptions(
                    "exports.mixed_precision must be a share between 0 and 1".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Version of the AIMET encodings format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum EncodingsVersion {
    /// Lists of named entries (AIMET ≥ 1.31 `export`, QNN ≥ 2.x).
    #[default]
    #[serde(rename = "1.0.0")]
    V1_0_0,
    /// Maps from tensor name to entries (older AIMET and QNN).
    #[serde(rename = "0.6.1")]
    V0_6_1,
}

impl EncodingsVersion {
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            EncodingsVersion::V1_0_0 => "1.0.0",
            EncodingsVersion::V0_6_1 => "0.6.1",
        }
    }

    /// Parses `1.0.0` or `0.6.1`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1.0.0" | "1" => Some(EncodingsVersion::V1_0_0),
            "0.6.1" => Some(EncodingsVersion::V0_6_1),
            _ => None,
        }
    }
}
