//! Activation ranges calibrated on sample inputs, for the [`super::plan`] (`--calibration`).
//!
//! - `minmax`: the smallest and largest value of each tensor over all samples (one model run per
//!   sample);
//! - `percentile p`: a second run per sample fills a 2048-bin histogram over the min/max range;
//!   each tail loses `(100 − p) / 2` % of the values (range ends on bin edges);
//! - `mse`: from the same histogram, the range `[α·min, α·max]` (α from 1 down to 0.2 in steps of
//!   0.01) minimizing the expected squared quantization error on the target's activation grid:
//!   `Σ_bins n_b · e_b` with `e_b = step² / 12` inside the representable range (uniform rounding
//!   noise) and the squared distance to the clamped value outside it.
//!
//! Non-float tensors and non-finite values are ignored; a tensor no sample produced has no range.

use std::collections::HashMap;

use crate::onnx::ModelProto;
use crate::options::{ActivationGrid, Calibration};
use crate::runtime::{InputTensor, Runner};

const BINS: usize = 2048;

/// Runs `model` (with `tensors` as extra outputs) on every sample and hands each float tensor's
/// values to `visit`.
fn for_each_value(
    runner: &Runner,
    samples: &[Vec<InputTensor>],
    mut visit: impl FnMut(&str, &[f32]),
) -> Result<(), String> {
    for s in samples {
        for (name, values, is_float) in runner.run_typed(s)? {
            if is_float {
                visit(&name, &values);
            }
        }
    }
    Ok(())
}

/// Ranges of `tensors` over `samples` by `method` (not `data_free`) for activations on `grid`.
pub fn ranges(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Vec<InputTensor>],
    method: Calibration,
    grid: ActivationGrid,
    percentile: f32,
) -> Result<HashMap<String, (f32, f32)>, String> {
    let probe = super::sim::with_extra_outputs(model, tensors);
    let bytes = crate::onnx::encode(&probe);
    let runner = Runner::new(&bytes, samples.first().ok_or("no samples")?)?;
    let wanted: std::collections::HashSet<&str> = tensors.iter().map(String::as_str).collect();
    let mut minmax: HashMap<String, (f32, f32)> = HashMap::new();
    for_each_value(&runner, samples, |name, values| {
        if !wanted.contains(name) {
            return;
        }
        let e = minmax
            .entry(name.to_string())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for &v in values.iter().filter(|v| v.is_finite()) {
            e.0 = e.0.min(v);
            e.1 = e.1.max(v);
        }
    })?;
    minmax.retain(|_, (lo, hi)| lo <= hi);
    if matches!(method, Calibration::Minmax | Calibration::DataFree) {
        return Ok(minmax);
    }
    let mut hist: HashMap<String, Histogram> = minmax
        .iter()
        .map(|(k, &(lo, hi))| (k.clone(), Histogram::new(lo, hi)))
        .collect();
    for_each_value(&runner, samples, |name, values| {
        if let Some(h) = hist.get_mut(name) {
            h.add(values);
        }
    })?;
    Ok(hist
        .into_iter()
        .map(|(k, h)| {
            let r = match method {
                Calibration::Percentile => h.percentile(percentile),
                _ => h.mse(&grid),
            };
            (k, r)
        })
        .collect())
}

/// A fixed-range histogram of one tensor's values.
#[derive(Debug, Clone)]
pub struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram over `[lo, hi]`.
    pub fn new(lo: f32, hi: f32) -> Self {
        Histogram {
            lo,
            hi,
            counts: vec![0; BINS],
        }
    }

    fn width(&self) -> f64 {
        (f64::from(self.hi) - f64::from(self.lo)) / BINS as f64
    }

    /// Adds values (outside `[lo, hi]` go to the end bins; non-finite ones are ignored).
    pub fn add(&mut self, values: &[f32]) {
        let w = self.width();
        if w <= 0.0 {
            self.counts[0] += values.iter().filter(|v| v.is_finite()).count() as u64;
            return;
        }
        let inv = 1.0 / w;
        let lo = f64::from(self.lo);
        for &v in values.iter().filter(|v| v.is_finite()) {
            let b = ((f64::from(v) - lo) * inv) as isize;
            self.counts[b.clamp(0, BINS as isize - 1) as usize] += 1;
        }
    }

    fn edge(&self, b: usize) -> f32 {
        (f64::from(self.lo) + self.width() * b as f64) as f32
    }

    /// The range keeping `p` % of the values, each tail losing half of the rest.
    pub fn percentile(&self, p: f32) -> (f32, f32) {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.width() <= 0.0 {
            return (self.lo, self.hi);
        }
        let cut = (total as f64 * f64::from(100.0 - p) / 200.0).floor() as u64;
        let mut acc = 0u64;
        let mut lo_bin = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            if acc + c > cut {
                lo_bin = b;
                break;
            }
            acc += c;
        }
        acc = 0;
        let mut hi_bin = BINS - 1;
        for (b, &c) in self.counts.iter().enumerate().rev() {
            if acc + c > cut {
                hi_bin = b;
                break;
            }
            acc += c;
        }
        (self.edge(lo_bin), self.edge(hi_bin + 1).min(self.hi))
    }

    /// The shrunk range minimizing the expected quantization error on `grid`.
    pub fn mse(&self, grid: &ActivationGrid) -> (f32, f32) {
        if self.width() <= 0.0 {
            return (self.lo, self.hi);
        }
        let (qmin, qmax) = grid.levels();
        let centers: Vec<f64> = (0..BINS)
            .map(|b| f64::from(self.lo) + self.width() * (b as f64 + 0.5))
            .collect();
        let mut best = (f64::INFINITY, (self.lo, self.hi));
        for k in 0..=80 {
            let alpha = 1.0 - 0.01 * k as f32;
            let (lo, hi) = (self.lo * alpha, self.hi * alpha);
            let p = grid.params(lo, hi);
            let s = f64::from(p.scale);
            let rmin = (f64::from(qmin) - f64::from(p.zero_point)) * s;
            let rmax = (f64::from(qmax) - f64::from(p.zero_point)) * s;
            let noise = s * s / 12.0;
            let err: f64 = centers
                .iter()
                .zip(&self.counts)
                .filter(|(_, &n)| n > 0)
                .map(|(&c, &n)| {
                    let e = if c < rmin {
                        (rmin - c).powi(2)
                    } else if c > rmax {
                        (c - rmax).powi(2)
                    } else {
                        noise
                    };
                    n as f64 * e
                })
                .sum();
            if err < best.0 {
                best = (err, (lo, hi));
            }
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ActivationType;

    #[test]
    fn percentile_cuts_the_tails_and_mse_clips_outliers() {
        let mut h = Histogram::new(-10.0, 10.0);
        let mut values: Vec<f32> = (0..1_000_000)
            .map(|i| (i % 200) as f32 / 100.0 - 1.0)
            .collect();
        values.push(10.0);
        values.push(-10.0);
        h.add(&values);
        let (lo, hi) = h.percentile(99.99);
        assert!(lo > -1.05 && lo <= -0.99, "{lo}");
        assert!((0.99..1.05).contains(&hi), "{hi}");
        assert_eq!(h.percentile(100.0), (-10.0, 10.0));
        let grid = ActivationGrid {
            ty: ActivationType::Uint8,
            symmetric: false,
        };
        let (lo, hi) = h.mse(&grid);
        assert!(
            hi < 10.0 && lo > -10.0,
            "the two outliers are not worth the range"
        );
        assert!(hi >= 2.0, "most of the mass is kept: {hi}");
    }
}
