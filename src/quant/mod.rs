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

//!
//! Rooms: this file holds the schemes and the SQNR measure; [`table`] the per-layer weight
//! figures; [`sim`] the end-to-end simulation with tract (weights and activations
//! fake-quantized, calibration, scores); [`target`] the declared int8 grids every grid-tied
//! edit uses; [`stats`] data-free activation statistics (`E[x]`, ranges); [`rounding`]
//! data-free rounding onto the grid; [`bias_correction`] the correction for the weight error;
//! [`deploy`] the deploy model built from them; [`plan`] what an int8 deployment quantizes
//! (shared by the writers and the simulation), [`calib`] activation ranges from sample inputs,
//! [`qdq`] the QDQ ONNX model, [`encodings`] AIMET encodings and onnxruntime overrides;
//! [`mixed`] which activations mixed precision keeps on 16 bits.

pub mod calib;
pub mod deploy;
pub mod export;
pub mod kernels;
pub mod mixed;
pub mod plan;
pub mod sim;
pub mod table;
pub mod target;

pub use sim::*;
pub use table::*;

use crate::graph::layout::WeightLayout;

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
    ratio_db(s, n)
}

/// `10·log10(signal / noise)` with [`sqnr_db`]'s conventions (∞ without noise, −∞ without
/// signal).
pub(crate) fn ratio_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}
