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

use crate::graph::layout::WeightLayout;
use crate::options::{ActivationGrid, ActivationType, Granularity, WeightGrid};

/// `(scale, zero_point)` of one quantized activation tensor: `x ≈ (q − zero_point) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    /// Step.
    pub scale: f32,
    /// Zero point, in the integer type's range.
    pub zero_point: i32,
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
    use crate::graph::layout::LayerOp;

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
