//! The int8 figures of the report the caller asks for ([`crate::quant`] computes them).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
