//! The declared int8 target as the caller states it: a runtime preset with optional per-field
//! overrides. [`crate::quant::target`] resolves it to the weight and activation grids.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{CoreError, Result};

/// A named runtime whose defaults a [`Target`] starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetPreset {
    /// onnxruntime CPU (QDQ): per-channel int8 symmetric weights (the default, chosen on the
    /// tuning photos of every evaluated model: README, Weight types) or per-tensor uint8
    /// asymmetric ones (what `quantize_static` writes for weights stored as `Constant` nodes;
    /// exact u8×u8 kernels on every x86-64 CPU); uint8 asymmetric activations.
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

/// The integer type of quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightType {
    /// Signed, symmetric: zero point 0, levels `−(2^(bits−1) − 1)..=2^(bits−1) − 1`.
    Int8,
    /// Unsigned, asymmetric (per tensor only): `2^bits` levels over the tensor's
    /// `[min(w, 0), max(w, 0)]` with a zero point, as onnxruntime's `quantize_static` writes
    /// weights stored as `Constant` nodes. onnxruntime runs such layers in its u8×u8 kernels,
    /// which accumulate exactly on every x86-64 CPU (no int16 pairs).
    Uint8,
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
    /// The runtime whose grids the int8 outputs use (onnxruntime, QNN, TensorRT); the fields
    /// below override single parts of it.
    pub preset: TargetPreset,
    /// Weight scale granularity (default: per channel for `ort` and `trt`, per tensor for `qnn`).
    pub weight_granularity: Option<Granularity>,
    /// Weight bits (2..=8; default: the preset's).
    pub weight_bits: Option<u8>,
    /// Weight integer type (default: `uint8` for `ort` per tensor, `int8` otherwise; `uint8`
    /// is asymmetric and per tensor only).
    pub weight_type: Option<WeightType>,
    /// Activation integer type (default: the preset's).
    pub activation_type: Option<ActivationType>,
    /// How the target's kernels accumulate (default: `int16_pairs` for `ort`, which must run as
    /// simulated on any x86-64 CPU; `int32` for `qnn` and `trt`). Use `int32` for onnxruntime on
    /// VNNI or ARM CPUs only.
    pub accumulation: Option<Accumulation>,
    /// Symmetric activations (zero point 0). Required by TensorRT; only meaningful for `int8`.
    pub activation_symmetric: Option<bool>,
}

/// How the target's int8 kernels add the products of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Accumulation {
    /// onnxruntime on x86-64 CPUs without VNNI (AVX2, AVX-512 without `avx512_vnni`): the u8×s8
    /// kernels add two neighbouring products in a saturating int16 (`vpmaddubsw`). Weights are
    /// written so that no pair can saturate (int8-output.md §6), so the model computes what
    /// its QDQ graph says on any x86-64 CPU.
    Int16Pairs,
    /// Every product accumulates in int32: VNNI CPUs, ARM, GPUs, QNN, TensorRT. The full 8-bit
    /// grid, no pair constraint.
    Int32,
}

/// A weight grid: symmetric, `2^(bits−1) − 1` levels each side, or asymmetric with `2^bits`
/// levels and a zero point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightGrid {
    /// Per tensor or per output channel.
    pub granularity: Granularity,
    /// Bits (2..=8).
    pub bits: u8,
    /// Unsigned levels `0..2^bits − 1` over the tensor's `[min(w, 0), max(w, 0)]` with a zero
    /// point ([`WeightType::Uint8`]); otherwise symmetric.
    pub asymmetric: bool,
    /// Whether neighbouring products share a saturating int16 ([`Accumulation::Int16Pairs`]):
    /// the step then also keeps every same-sign pair of levels within `|l₁| + |l₂| ≤ 128`.
    pub int16_pairs: bool,
}

/// An activation grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationGrid {
    /// Integer type.
    pub ty: ActivationType,
    /// Zero point 0 (signed types only).
    pub symmetric: bool,
}

impl Target {
    /// The resolved weight grid.
    pub fn weights(&self) -> WeightGrid {
        WeightGrid {
            granularity: self.granularity(),
            bits: self.weight_bits.unwrap_or(8),
            asymmetric: self.weight_type() == WeightType::Uint8,
            // u8×u8 kernels widen both operands to int16 and accumulate in int32.
            int16_pairs: self.accumulation() == Accumulation::Int16Pairs
                && self.weight_type() == WeightType::Int8,
        }
    }

    /// The resolved weight granularity: the preset's, per tensor when `uint8` weights (per
    /// tensor only) are asked for without one.
    fn granularity(&self) -> Granularity {
        self.weight_granularity
            .unwrap_or(match (self.preset, self.weight_type) {
                (_, Some(WeightType::Uint8)) | (TargetPreset::Qnn, _) => Granularity::PerTensor,
                (TargetPreset::Ort | TargetPreset::Trt, _) => Granularity::PerChannel,
            })
    }

    /// The resolved weight integer type: `uint8` for `ort` per tensor (measured on the tuning
    /// photos of every evaluated model: README, Deployable int8), `int8` otherwise.
    pub fn weight_type(&self) -> WeightType {
        self.weight_type
            .unwrap_or(match (self.preset, self.granularity()) {
                (TargetPreset::Ort, Granularity::PerTensor) => WeightType::Uint8,
                _ => WeightType::Int8,
            })
    }

    /// The resolved accumulation.
    pub fn accumulation(&self) -> Accumulation {
        self.accumulation.unwrap_or(match self.preset {
            TargetPreset::Ort => Accumulation::Int16Pairs,
            TargetPreset::Qnn | TargetPreset::Trt => Accumulation::Int32,
        })
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
        if self.weight_type() == WeightType::Uint8 {
            if self.weights().granularity != Granularity::PerTensor {
                return Err(CoreError::InvalidOptions(
                    "target.weight_type uint8 (asymmetric) needs weight_granularity per_tensor: \
                     onnxruntime's int8 kernels take one weight zero point per layer"
                        .into(),
                ));
            }
            if self.preset == TargetPreset::Trt {
                return Err(CoreError::InvalidOptions(
                    "target trt: TensorRT explicit quantization needs symmetric int8 weights"
                        .into(),
                ));
            }
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
    /// `ort: weights uint8 asymmetric per_tensor; activations uint8 asymmetric`.
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
        let acc = if w.int16_pairs {
            "; int16 pairs (x86 without VNNI) kept unsaturated"
        } else {
            ""
        };
        let weights = if w.asymmetric {
            format!("uint{} asymmetric", w.bits)
        } else {
            format!("int{} symmetric", w.bits)
        };
        format!("{preset}: weights {weights} {g}; activations {ty} {sym}{acc}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_and_validate() {
        let ort = Target::default();
        assert_eq!(ort.weights().granularity, Granularity::PerChannel);
        assert!(!ort.weights().asymmetric && ort.weights().int16_pairs);
        let ort_pt = Target {
            weight_granularity: Some(Granularity::PerTensor),
            ..ort
        };
        ort_pt.validate().unwrap();
        assert!(ort_pt.weights().asymmetric && !ort_pt.weights().int16_pairs);
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
        let u8w = Target {
            weight_type: Some(WeightType::Uint8),
            ..Target::default()
        };
        u8w.validate().unwrap();
        assert_eq!(u8w.weights().granularity, Granularity::PerTensor);
        assert!(u8w.weights().asymmetric && !u8w.weights().int16_pairs);
        assert!(Target {
            weight_granularity: Some(Granularity::PerChannel),
            ..u8w
        }
        .validate()
        .is_err());
        assert!(Target {
            weight_bits: Some(9),
            ..Target::default()
        }
        .validate()
        .is_err());
    }
}
