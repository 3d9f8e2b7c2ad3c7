//! The declared int8 target: which grid the weights and activations will be quantized to.
//!
//! Every grid-tied edit (data-free rounding, bias correction against the quantization error, the
//! QDQ model, encodings, onnxruntime overrides) takes its grid from one [`Target`], and the
//! outputs name it (model `metadata_props`, report), so a model corrected for one grid is never
//! silently deployed on another (a bias-corrected model is tied to its grid: int8-output.md §1).
//!
//! Grids (int8-output.md §4):
//! - weights are symmetric in every supported runtime: `step = max|w| / q` with
//!   `q = 2^(bits−1) − 1` (127 for 8 bits), levels `−q..q`, zero point 0, one step per tensor or
//!   per output channel (the layer's output channel as [`WeightLayout`] defines it);
//! - activations: `uint8` asymmetric (`scale = (max − min) / 255`, `zero_point =
//!   round(−min / scale)`, the range first widened to contain 0), or signed symmetric
//!   (`scale = max|x| / 127`, zero point 0; TensorRT), or `uint16` asymmetric (QNN's A16);
//! - biases: int32 with `scale = activation scale × weight step`, zero point 0.
//!
//! Presets: `ort` (onnxruntime `quantize_static` defaults for CPU: per-tensor int8 symmetric
//! weights, uint8 asymmetric activations), `qnn` (Qualcomm QNN / AIMET defaults: the same
//! grids), `trt` (TensorRT explicit quantization: per-channel int8 symmetric weights, int8
//! symmetric activations). Each field can be overridden.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{CoreError, Result};
use crate::layout::WeightLayout;

/// A named runtime whose defaults a [`Target`] starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetPreset {
    /// onnxruntime `quantize_static` (CPU, QDQ): int8 symmetric per-tensor weights, uint8
    /// asymmetric activations.
    #[default]
    Ort,
    /// Qualcomm QNN (HTP) / AIMET defaults: int8 symmetric per-tensor weights, uint8 asymmetric
    /// activations.
    Qnn,
    /// TensorRT explicit quantization: int8 symmetric per-channel weights, int8 symmetric
    /// activations.
    Trt,
}

/// One scale per tensor or one per output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output channel.
    PerChannel,
}

/// The integer type of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivationType {
    /// 0..255 with a zero point.
    Uint8,
    /// −128..127 (symmetric: zero point 0, levels −127..127 used).
    Int8,
    /// 0..65535 with a zero point (QNN A16).
    Uint16,
}

/// The int8 target: a preset with optional per-field overrides (`None` = the preset's value).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Target {
    /// The runtime whose defaults apply.
    pub preset: TargetPreset,
    /// Weight scale granularity.
    pub weight_granularity: Option<Granularity>,
    /// Weight bits (2..=8; weights are always symmetric).
    pub weight_bits: Option<u8>,
    /// Activation integer type.
    pub activation_type: Option<ActivationType>,
    /// Symmetric activations (zero point 0). Required by TensorRT; only meaningful for `int8`.
    pub activation_symmetric: Option<bool>,
}

/// A weight grid: symmetric, `2^(bits−1) − 1` levels each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightGrid {
    /// Per tensor or per output channel.
    pub granularity: Granularity,
    /// Bits (2..=8).
    pub bits: u8,
}

/// An activation grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationGrid {
    /// Integer type.
    pub ty: ActivationType,
    /// Zero point 0 (signed types only).
    pub symmetric: bool,
}

/// `(scale, zero_point)` of one quantized activation tensor: `x ≈ (q − zero_point) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    /// Step.
    pub scale: f32,
    /// Zero point, in the integer type's range.
    pub zero_point: i32,
}

impl Target {
    /// The resolved weight grid.
    pub fn weights(&self) -> WeightGrid {
        WeightGrid {
            granularity: self.weight_granularity.unwrap_or(match self.preset {
                TargetPreset::Trt => Granularity::PerChannel,
                TargetPreset::Ort | TargetPreset::Qnn => Granularity::PerTensor,
            }),
            bits: self.weight_bits.unwrap_or(8),
        }
    }

    /// The resolved activation grid.
    pub fn activations(&self) -> ActivationGrid {
        let ty = self.activation_type.unwrap_or(match self.preset {
            TargetPreset::Trt => ActivationType::Int8,
            TargetPreset::Ort | TargetPreset::Qnn => ActivationType::Uint8,
        });
        let symmetric = self
            .activation_symmetric
            .unwrap_or(ty == ActivationType::Int8);
        ActivationGrid { ty, symmetric }
    }

    /// Checks the overrides against each other and the preset.
    pub fn validate(&self) -> Result<()> {
        let bits = self.weights().bits;
        if !(2..=8).contains(&bits) {
            return Err(CoreError::InvalidOptions(format!(
                "target.weight_bits must be between 2 and 8 (got {bits})"
            )));
        }
        let a = self.activations();
        if a.symmetric && a.ty != ActivationType::Int8 {
            return Err(CoreError::InvalidOptions(
                "target.activation_symmetric needs activation_type int8".into(),
            ));
        }
        if self.preset == TargetPreset::Trt && !a.symmetric {
            return Err(CoreError::InvalidOptions(
                "target trt: TensorRT explicit quantization needs symmetric int8 activations"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A one-line description for `metadata_props` and the report, e.g.
    /// `ort: weights int8 symmetric per_tensor; activations uint8 asymmetric`.
    pub fn describe(&self) -> String {
        let w = self.weights();
        let a = self.activations();
        let g = match w.granularity {
            Granularity::PerTensor => "per_tensor",
            Granularity::PerChannel => "per_channel",
        };
        let preset = match self.preset {
            TargetPreset::Ort => "ort",
            TargetPreset::Qnn => "qnn",
            TargetPreset::Trt => "trt",
        };
        let ty = match a.ty {
            ActivationType::Uint8 => "uint8",
            ActivationType::Int8 => "int8",
            ActivationType::Uint16 => "uint16",
        };
        let sym = if a.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        };
        format!(
            "{preset}: weights int{} symmetric {g}; activations {ty} {sym}",
            w.bits
        )
    }
}

impl WeightGrid {
    /// Largest level: `2^(bits−1) − 1`.
    pub fn qmax(&self) -> f32 {
        f32::from((1u16 << (self.bits - 1)) - 1)
    }

    /// The step of every output channel (`len == out_channels`; all equal when per tensor):
    /// `max|w| / qmax` over the tensor or the channel. A zero range gives step 0 (the values
    /// are all 0 and stay 0).
    pub fn steps(&self, w: &[f32], layout: &WeightLayout) -> Vec<f32> {
        let q = self.qmax();
        match self.granularity {
            Granularity::PerTensor => {
                let m = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                vec![m / q; layout.out_channels()]
            }
            Granularity::PerChannel => layout.out_ranges(w).iter().map(|r| r / q).collect(),
        }
    }

    /// Integer level of `v` on step `step`: `clamp(round(v / step), −qmax, qmax)` (0 for step 0).
    pub fn level(&self, v: f32, step: f32) -> f32 {
        if step > 0.0 {
            (v / step).round().clamp(-self.qmax(), self.qmax())
        } else {
            0.0
        }
    }

    /// Quantize-dequantizes `w` in place on this grid (round to nearest).
    pub fn fake_quant(&self, w: &mut [f32], layout: &WeightLayout) {
        let steps = self.steps(w, layout);
        self.apply_levels(w, layout, &steps, |v, s| self.level(v, s) * s);
    }

    /// Rewrites every element as `f(value, step of its output channel)`.
    pub fn apply_levels(
        &self,
        w: &mut [f32],
        layout: &WeightLayout,
        steps: &[f32],
        f: impl Fn(f32, f32) -> f32,
    ) {
        if steps.iter().all(|&s| s == steps[0]) {
            let s = steps.first().copied().unwrap_or(0.0);
            w.iter_mut().for_each(|v| *v = f(*v, s));
            return;
        }
        layout.map_out(w, |v, o| f(v, steps[o]));
    }
}

impl ActivationGrid {
    /// `(qmin, qmax)` of the integer type (symmetric int8 uses −127..127).
    pub fn levels(&self) -> (i32, i32) {
        match (self.ty, self.symmetric) {
            (ActivationType::Uint8, _) => (0, 255),
            (ActivationType::Int8, true) => (-127, 127),
            (ActivationType::Int8, false) => (-128, 127),
            (ActivationType::Uint16, _) => (0, 65535),
        }
    }

    /// Scale and zero point for a tensor ranging over `[lo, hi]` (widened to contain 0).
    pub fn params(&self, lo: f32, hi: f32) -> ActivationParams {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let (qmin, qmax) = self.levels();
        if self.symmetric {
            let m = lo.abs().max(hi);
            let scale = if m > 0.0 { m / qmax as f32 } else { 1.0 };
            return ActivationParams {
                scale,
                zero_point: 0,
            };
        }
        let scale = if hi > lo {
            (hi - lo) / (qmax - qmin) as f32
        } else {
            1.0
        };
        let zero_point = (qmin as f32 - lo / scale)
            .round()
            .clamp(qmin as f32, qmax as f32) as i32;
        ActivationParams { scale, zero_point }
    }

    /// Quantize-dequantizes one value with `p`.
    pub fn fake_quant(&self, x: f32, p: ActivationParams) -> f32 {
        let (qmin, qmax) = self.levels();
        let q = ((x / p.scale).round() + p.zero_point as f32).clamp(qmin as f32, qmax as f32);
        (q - p.zero_point as f32) * p.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayerOp;

    #[test]
    fn presets_resolve_and_validate() {
        let ort = Target::default();
        assert_eq!(ort.weights().granularity, Granularity::PerTensor);
        assert_eq!(ort.activations().ty, ActivationType::Uint8);
        assert!(!ort.activations().symmetric);
        let trt = Target {
            preset: TargetPreset::Trt,
            ..Target::default()
        };
        assert_eq!(trt.weights().granularity, Granularity::PerChannel);
        assert_eq!(trt.activations().levels(), (-127, 127));
        trt.validate().unwrap();
        let bad = Target {
            preset: TargetPreset::Trt,
            activation_type: Some(ActivationType::Uint8),
            ..Target::default()
        };
        assert!(bad.validate().is_err());
        assert!(Target {
            weight_bits: Some(9),
            ..Target::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn weight_grid_levels_are_on_the_grid() {
        let layout = WeightLayout::new(LayerOp::Conv, &[2, 1, 1, 2], 1).unwrap();
        let w0 = vec![1.0f32, -0.3, 0.01, 0.5];
        for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
            let g = WeightGrid {
                granularity,
                bits: 8,
            };
            let mut w = w0.clone();
            g.fake_quant(&mut w, &layout);
            let steps = g.steps(&w0, &layout);
            for (k, v) in w.iter().enumerate() {
                let s = steps[k / 2];
                let level = v / s;
                assert!(
                    (level - level.round()).abs() < 1e-4,
                    "{granularity:?} {v} {s}"
                );
            }
            // Quantizing again reproduces the values (the max stays on ±qmax).
            let mut again = w.clone();
            g.fake_quant(&mut again, &layout);
            assert_eq!(again, w);
        }
    }

    #[test]
    fn activation_params_cover_the_range() {
        let a = ActivationGrid {
            ty: ActivationType::Uint8,
            symmetric: false,
        };
        let p = a.params(-1.0, 3.0);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(p.zero_point, 64);
        assert_eq!(a.fake_quant(0.0, p), 0.0);
        let s = ActivationGrid {
            ty: ActivationType::Int8,
            symmetric: true,
        };
        let p = s.params(-2.0, 1.0);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 2.0 / 127.0).abs() < 1e-7);
    }
}
