//! The declared int8 target: which grid the weights and activations will be quantized to.
//!
//! Every grid-tied edit (data-free rounding, bias correction against the quantization error, the
//! QDQ model, encodings, onnxruntime overrides) takes its grid from one [`Target`], and the
//! outputs name it (model `metadata_props`, report), so a model corrected for one grid is never
//! silently deployed on another (a bias-corrected model is tied to its grid: int8-output.md §1).
//!
//! Grids (int8-output.md §4):
//! - weights: symmetric (`int8`) `step = max|w| / q` with `q = 2^(bits−1) − 1` (127 for 8 bits),
//!   levels `−q..q`, zero point 0, one step per tensor or per output channel (the layer's output
//!   channel as [`WeightLayout`] defines it); or asymmetric per tensor (`uint8`, as
//!   onnxruntime's `quantize_static` writes weights stored as `Constant` nodes):
//!   `step = (max(w, 0) − min(w, 0)) / (2^bits − 1)`, zero point `z = round(−min(w, 0) / step)`,
//!   signed levels `−z..2^bits − 1 − z` (the written raw level is `level + z`);
//! - activations: `uint8` asymmetric (`scale = (max − min) / 255`, `zero_point =
//!   round(−min / scale)`, the range first widened to contain 0), or signed symmetric
//!   (`scale = max|x| / 127`, zero point 0; TensorRT), or `uint16` asymmetric (QNN's A16);
//! - biases: int32 with `scale = activation scale × weight step`, zero point 0;
//! - kernels that add neighbouring products in a saturating int16 (onnxruntime on x86-64 without
//!   VNNI, [`crate::options::Accumulation::Int16Pairs`]): with a raw u8 activation up to 255, a
//!   pair `a₁·l₁ + a₂·l₂` of same-sign levels stays inside int16 iff `|l₁| + |l₂| ≤ 128`
//!   (`255·128 = 32 640 ≤ 32 767`; opposite signs never overflow). The step of such a grid is
//!   `max(max|w| / q, max_pairs(|w₁| + |w₂|) / 128)` over the pairs MLAS forms
//!   ([`WeightLayout::for_each_mlas_pair`]), so the nearest levels overshoot by at most one,
//!   and [`keep_pairs`] moves the level that rounded furthest away from zero back by one: every
//!   weight stays on one of the two levels around it, and no pair can saturate. When the largest
//!   raw byte `B` each input channel carries is known (an export calibrated on samples), the
//!   bound is `B₁·|l₁| + B₂·|l₂| ≤ 255·128` ([`PAIR_LOAD`], [`WeightGrid::steps_for`]).
//!
//! Presets: `ort` (onnxruntime CPU: per-channel int8 symmetric weights, or per-tensor uint8
//! asymmetric ones, uint8 asymmetric activations), `qnn` (Qualcomm QNN / AIMET defaults:
//! per-tensor int8 symmetric weights, uint8 asymmetric activations), `trt` (TensorRT explicit quantization: per-channel int8 symmetric weights, int8
//! symmetric activations). Each field can be overridden.

use crate::graph::layout::WeightLayout;
use crate::options::{ActivationGrid, ActivationType, Granularity, WeightGrid};

/// Most levels [`ActivationGrid::params_on_ends`] gives up to keep a graph input's range ends on
/// levels (4 of 255: at most 0.14 dB of a continuous input's quantization noise).
pub const END_LEVELS_LOST: u32 = 4;

/// `(scale, zero_point)` of one quantized activation tensor: `x ≈ (q − zero_point) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    /// Step.
    pub scale: f32,
    /// Zero point, in the integer type's range.
    pub zero_point: i32,
}

/// Largest `|l₁| + |l₂|` of a same-sign level pair that an int16 holds for any raw u8
/// activation (see the module documentation).
pub const PAIR_LEVELS: f32 = 128.0;

/// The pair limit with activation bytes: `B₁·|l₁| + B₂·|l₂| ≤ 255 · 128` for the largest raw u8
/// bytes `B` the two input channels carry (`255 · 128 = 32 640 ≤ 32 767`); with every `B = 255`
/// it is [`PAIR_LEVELS`].
pub const PAIR_LOAD: f32 = 255.0 * PAIR_LEVELS;

/// The largest raw u8 byte input channel `c` carries: `bytes[c]`, or 255 without bounds.
fn byte(bytes: Option<&[u8]>, c: usize) -> f32 {
    bytes
        .and_then(|b| b.get(c))
        .map_or(255.0, |&v| f32::from(v))
}

/// Moves levels one step toward zero until every same-sign MLAS pair of `layout` satisfies
/// `B₁·|l₁| + B₂·|l₂| ≤` [`PAIR_LOAD`], `B` the largest raw u8 byte of each element's input
/// channel (`bytes`, one per input channel; 255 each when `None`: then `|l₁| + |l₂| ≤`
/// [`PAIR_LEVELS`]). Of a pair with equal bytes, the level whose rounding error `err`
/// (`level − w/step`, LSB) points furthest away from zero moves; otherwise one that rounded away
/// from zero, with the larger byte first (never one whose byte is 0). Its error follows.
/// Returns the number of moves. Levels with `|w/step| ≤ 64` each never move.
pub fn keep_pairs(
    layout: &WeightLayout,
    level: &mut [f32],
    err: &mut [f32],
    bytes: Option<&[u8]>,
) -> usize {
    let mut moved = 0;
    layout.for_each_mlas_pair_in(|_, a, b, ia, ib| {
        let (ba, bb) = (byte(bytes, ia), byte(bytes, ib));
        while level[a] * level[b] > 0.0 && ba * level[a].abs() + bb * level[b].abs() > PAIR_LOAD {
            let away = |j: usize| err[j] * level[j].signum();
            let j = if ba == bb {
                if away(a) >= away(b) {
                    a
                } else {
                    b
                }
            } else {
                // A level rounded away from zero moves back within its step; a larger byte
                // lowers the load more.
                let key = |j: usize, bj: f32| (bj > 0.0, away(j) > 0.0, bj);
                if key(a, ba) >= key(b, bb) {
                    a
                } else {
                    b
                }
            };
            let d = level[j].signum();
            level[j] -= d;
            err[j] -= d;
            moved += 1;
        }
    });
    moved
}

/// The step `max(plain, pair_sum / 128)`; a step set by the pair is rounded up to 16
/// significant bits, so that `l·step` is exact in f32 for every level `|l| ≤ 128`: the written
/// weights then give the same step back, bit for bit ([`tighten_pairs`] keeps a pair at 128).
fn widened(plain: f32, pair_sum: f32) -> f32 {
    let p = pair_sum / PAIR_LEVELS;
    if !(p > plain && p.is_finite()) {
        return plain;
    }
    let bits = p.to_bits();
    if bits & 0xff == 0 {
        p
    } else {
        f32::from_bits((bits | 0xff) + 1)
    }
}

/// On a channel whose step the pair sum sets (`pair_bound[o]`), makes one same-sign pair sum
/// to exactly 128 levels when rounding left them all below: the element of the channel's
/// largest pair with the larger error toward zero moves one level away from zero (it stays
/// within one step of its value, the pair's values summing to 128 within rounding). Then the
/// written weights reproduce the channel's step. Returns the moves.
pub fn tighten_pairs(
    layout: &WeightLayout,
    pair_bound: &[bool],
    level: &mut [f32],
    err: &mut [f32],
) -> usize {
    let mut best: Vec<Option<(f32, usize, usize)>> = vec![None; pair_bound.len()];
    layout.for_each_mlas_pair(|o, a, b| {
        let x = (level[a] - err[a]).abs() + (level[b] - err[b]).abs();
        let same = (level[a] - err[a]) * (level[b] - err[b]) > 0.0;
        if same && best[o].is_none_or(|(m, _, _)| x > m) {
            best[o] = Some((x, a, b));
        }
    });
    let mut moved = 0;
    for (o, b) in best.iter().enumerate() {
        let Some((_, a, c)) = *b else { continue };
        if !pair_bound[o] || level[a].abs() + level[c].abs() >= PAIR_LEVELS {
            continue;
        }
        let toward = |j: usize| -err[j] * level[j].signum();
        let j = if toward(a) >= toward(c) { a } else { c };
        let d = if level[j] == 0.0 {
            (level[j] - err[j]).signum()
        } else {
            level[j].signum()
        };
        level[j] += d;
        err[j] += d;
        moved += 1;
    }
    moved
}

/// Per output channel, the largest `|w₁| + |w₂|` over the same-sign pairs MLAS forms; with
/// `bytes`, the largest `(B₁·|w₁| + B₂·|w₂|) / 255` (see [`keep_pairs`]).
pub(crate) fn pair_sums(w: &[f32], layout: &WeightLayout, bytes: Option<&[u8]>) -> Vec<f32> {
    let mut m = vec![0f32; layout.out_channels()];
    match bytes {
        None => layout.for_each_mlas_pair(|o, a, b| {
            if w[a] * w[b] > 0.0 {
                m[o] = m[o].max(w[a].abs() + w[b].abs());
            }
        }),
        Some(_) => layout.for_each_mlas_pair_in(|o, a, b, ia, ib| {
            if w[a] * w[b] > 0.0 {
                let load = byte(bytes, ia) * w[a].abs() + byte(bytes, ib) * w[b].abs();
                m[o] = m[o].max(load / 255.0);
            }
        }),
    }
    m
}

impl WeightGrid {
    /// Largest level of a symmetric grid: `2^(bits−1) − 1`; of an asymmetric one, the largest
    /// raw level `2^bits − 1`.
    pub fn qmax(&self) -> f32 {
        if self.asymmetric {
            f32::from((1u16 << self.bits) - 1)
        } else {
            f32::from((1u16 << (self.bits - 1)) - 1)
        }
    }

    /// Half the number of steps the grid spans (`qmax` when symmetric, `(2^bits − 1) / 2`
    /// when asymmetric): `range / (2 · half_span)` is the step of a range.
    pub fn half_span(&self) -> f32 {
        if self.asymmetric {
            self.qmax() / 2.0
        } else {
            self.qmax()
        }
    }

    /// The signed level bounds `(lo, hi)` of the values `w` on step `step`: `(−qmax, qmax)`
    /// when symmetric; `(−z, 2^bits − 1 − z)` with the zero point
    /// `z = clamp(round(−min(w, 0) / step), 0, 2^bits − 1)` when asymmetric (`(0, 0)` for
    /// step 0).
    pub fn bounds(&self, w: &[f32], step: f32) -> (f32, f32) {
        let q = self.qmax();
        if !self.asymmetric {
            return (-q, q);
        }
        if !(step > 0.0 && step.is_finite()) {
            return (0.0, 0.0);
        }
        let z = asym_zero_point(low_of(w), step, q);
        (-z, q - z)
    }

    /// The step of every output channel (`len == out_channels`; all equal when per tensor):
    /// `max|w| / qmax` over the tensor or the channel, and with [`WeightGrid::int16_pairs`] at
    /// least `max(|w₁| + |w₂|) / 128` over its same-sign MLAS pairs (see the module
    /// documentation). Asymmetric: `(max(w, 0) − min(w, 0)) / (2^bits − 1)`, nudged by
    /// [`stable_asym_step`] so that the grid's own levels give it again. A zero range gives
    /// step 0 (the values are all 0 and stay 0).
    pub fn steps(&self, w: &[f32], layout: &WeightLayout) -> Vec<f32> {
        self.steps_for(w, layout, None)
    }

    /// [`WeightGrid::steps`] for a layer whose input channels carry at most `bytes` (raw u8,
    /// one per input channel; [`keep_pairs`]): the pair bound is then
    /// `max((B₁·|w₁| + B₂·|w₂|) / 255) / 128`.
    pub fn steps_for(&self, w: &[f32], layout: &WeightLayout, bytes: Option<&[u8]>) -> Vec<f32> {
        let q = self.qmax();
        let pairs =
            (self.int16_pairs && 2.0 * q > PAIR_LEVELS).then(|| pair_sums(w, layout, bytes));
        match self.granularity {
            Granularity::PerTensor if self.asymmetric => {
                let (lo, hi) = w
                    .iter()
                    .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                let s = (hi - lo) / q;
                let s = if s > 0.0 && s.is_finite() {
                    stable_asym_step(s, asym_zero_point(lo, s, q), q)
                } else {
                    s
                };
                vec![s; layout.out_channels()]
            }
            Granularity::PerTensor => {
                let m = w.iter().fold(0f32, |m, v| m.max(v.abs())) / q;
                let p = pairs.map_or(0.0, |p| p.iter().fold(0f32, |a, &b| a.max(b)));
                vec![widened(m, p); layout.out_channels()]
            }
            Granularity::PerChannel => {
                let mut steps: Vec<f32> = layout.out_ranges(w).iter().map(|r| r / q).collect();
                if let Some(p) = pairs {
                    for (s, p) in steps.iter_mut().zip(p) {
                        *s = widened(*s, p);
                    }
                }
                steps
            }
        }
    }

    /// Integer level of `v` on step `step` of a symmetric grid:
    /// `clamp(round(v / step), −qmax, qmax)` (0 for step 0). See [`WeightGrid::level_within`].
    pub fn level(&self, v: f32, step: f32) -> f32 {
        level_within(v, step, (-self.qmax(), self.qmax()))
    }

    /// Quantize-dequantizes `w` in place on this grid (round to nearest, then
    /// [`keep_pairs`] when the grid has int16 pairs).
    pub fn fake_quant(&self, w: &mut [f32], layout: &WeightLayout) {
        let steps = self.steps(w, layout);
        if self.asymmetric {
            let s = steps.first().copied().unwrap_or(0.0);
            let b = self.bounds(w, s);
            w.iter_mut().for_each(|v| *v = level_within(*v, s, b) * s);
            return;
        }
        if !self.int16_pairs {
            self.apply_levels(w, layout, &steps, |v, s| self.level(v, s) * s);
            return;
        }
        let mut level = w.to_vec();
        self.apply_levels(&mut level, layout, &steps, |v, s| self.level(v, s));
        let mut err = w.to_vec();
        let mut scaled = w.to_vec();
        self.apply_levels(&mut scaled, layout, &steps, |v, s| {
            if s > 0.0 {
                v / s
            } else {
                0.0
            }
        });
        err.iter_mut()
            .zip(&level)
            .zip(&scaled)
            .for_each(|((e, l), x)| *e = l - x);
        keep_pairs(layout, &mut level, &mut err, None);
        w.copy_from_slice(&level);
        self.apply_levels(w, layout, &steps, |l, s| l * s);
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

/// The step nearest to `step` (within 64 ULP) that an asymmetric min/max quantizer with raw
/// levels `0..=top` reproduces from weights whose end levels are `−z` and `top − z` (written as
/// `level · s` in f32): `fl(fl(fl((top − z)·s) − fl(−z·s)) / top) == s`, with the same zero
/// point `round(−fl(−z·s) / s) == z`. `step` itself when none is near.
pub fn stable_asym_step(step: f32, z: f32, top: f32) -> f32 {
    let ok = |s: f32| {
        let (hi, lo) = ((top - z) * s, -z * s);
        (hi - lo) / top == s && (-lo / s).round() == z
    };
    nearest_step(step, ok)
}

/// The step nearest to `step` within 64 ULP (`step` itself first) for which `ok` holds;
/// `step` when it is not positive and finite or none is near.
pub fn nearest_step(step: f32, ok: impl Fn(f32) -> bool) -> f32 {
    if !(step > 0.0 && step.is_finite()) || ok(step) {
        return step;
    }
    let (mut up, mut down) = (step, step);
    for _ in 0..64 {
        up = up.next_up();
        if ok(up) {
            return up;
        }
        down = down.next_down();
        if down > 0.0 && ok(down) {
            return down;
        }
    }
    step
}

/// `min(w, 0)`: the low end of an asymmetric grid's range.
pub fn low_of(w: &[f32]) -> f32 {
    w.iter().fold(0f32, |l, &v| l.min(v))
}

/// The zero point of an asymmetric grid with raw levels `0..=top` on step `step` whose range
/// starts at `low` ([`low_of`]): `clamp(round(−low / step), 0, top)`.
pub fn asym_zero_point(low: f32, step: f32, top: f32) -> f32 {
    (-low / step).round().clamp(0.0, top)
}

/// Integer level of `v` on step `step` within the signed bounds `(lo, hi)`
/// ([`WeightGrid::bounds`]): `clamp(round(v / step), lo, hi)` (0 for step 0).
pub fn level_within(v: f32, step: f32, (lo, hi): (f32, f32)) -> f32 {
    if step > 0.0 {
        (v / step).round().clamp(lo, hi)
    } else {
        0.0
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

    /// [`ActivationGrid::params`] for a graph input: the grid keeps both ends of the range on
    /// levels when that costs at most [`END_LEVELS_LOST`] levels.
    ///
    /// A graph input is usually a normalized 8-bit image, and its declared range is the image of
    /// pixels 0 and 255. `[−1, 1] = (p − 127.5) / 127.5` lies half a step off every grid of step
    /// `2/255` with an integer zero point (127.5 is not one), so each pixel rounds by exactly half
    /// a step: error variance `step²/4`, three times the `step²/12` of a grid the data does not
    /// line up with. Step `2/254` with zero point 127 keeps −1 and 1 on levels and spreads the
    /// pixels' errors over the step (−4.8 dB of input quantization noise for 0.03 dB of a
    /// continuous input's). A range whose zero point is already an integer (`[0, 1]`,
    /// `[0, 255]`) keeps [`ActivationGrid::params`]; symmetric grids keep theirs (`±max` are
    /// levels already); a range no grid of at least `N − END_LEVELS_LOST` steps fits (ImageNet
    /// normalization, `[−2.1179, 2.64]`) too.
    pub fn params_on_ends(&self, lo: f32, hi: f32) -> ActivationParams {
        let plain = self.params(lo, hi);
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        if self.symmetric || lo >= 0.0 || hi <= 0.0 {
            return plain;
        }
        let (qmin, qmax) = self.levels();
        let most = f64::from(qmax - qmin);
        let below = -f64::from(lo) / (f64::from(hi) - f64::from(lo));
        (0..=END_LEVELS_LOST)
            .map(|lost| most - f64::from(lost))
            .find_map(|n| {
                let z = below * n;
                ((z - z.round()).abs() <= 1e-3).then(|| ActivationParams {
                    scale: ((f64::from(hi) - f64::from(lo)) / n) as f32,
                    zero_point: qmin + z.round() as i32,
                })
            })
            .unwrap_or(plain)
    }

    /// The 16-bit grid mixed precision keeps an activation on: `uint16` for `uint8` (same
    /// symmetry); other grids have no wider type here and stay as they are.
    pub fn wide(self) -> ActivationGrid {
        match self.ty {
            ActivationType::Uint8 => ActivationGrid {
                ty: ActivationType::Uint16,
                ..self
            },
            _ => self,
        }
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
                asymmetric: false,
                int16_pairs: false,
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

    /// An asymmetric grid spans `[min(w, 0), max(w, 0)]` with 255 steps, never a coarser step
    /// than the symmetric grid, and its levels stay inside `−z..255 − z`.
    #[test]
    fn asymmetric_weight_grid_spans_the_range_with_its_zero_point() {
        let layout = WeightLayout::new(LayerOp::Conv, &[2, 1, 1, 3], 1).unwrap();
        let sym = WeightGrid {
            granularity: Granularity::PerTensor,
            bits: 8,
            asymmetric: false,
            int16_pairs: false,
        };
        let asym = WeightGrid {
            asymmetric: true,
            ..sym
        };
        for w0 in [
            vec![1.0f32, -0.3, 0.01, 0.5, 0.2, 0.9],
            vec![-2.0f32, -0.5, 0.0, -1.0, -0.1, -0.7],
            vec![0.4f32, -0.4, 0.1, -0.1, 0.0, 0.2],
        ] {
            let s = asym.steps(&w0, &layout)[0];
            let (lo, hi) = w0
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            assert!((s * 255.0 - (hi - lo)).abs() <= 1e-6 * (hi - lo));
            assert!(s <= sym.steps(&w0, &layout)[0]);
            let (blo, bhi) = asym.bounds(&w0, s);
            assert_eq!(bhi - blo, 255.0);
            assert_eq!(blo, -(-lo / s).round());
            let mut w = w0.clone();
            asym.fake_quant(&mut w, &layout);
            for (q, v) in w.iter().zip(&w0) {
                let l = q / s;
                assert!((l - l.round()).abs() < 1e-4 && (blo..=bhi).contains(&l.round()));
                assert!((q - v).abs() <= 0.5 * s + 1e-6, "{q} vs {v}");
            }
        }
    }

    const U8: ActivationGrid = ActivationGrid {
        ty: ActivationType::Uint8,
        symmetric: false,
    };

    #[test]
    fn graph_input_grid_keeps_the_range_ends_on_levels() {
        let a = U8;
        // Pixels normalized to [-1, 1]: every one on a level of the plain grid's step would
        // need zero point 127.5; the input grid has both ends (and 0) on levels.
        let p = a.params_on_ends(-1.0, 1.0);
        assert_eq!((p.scale, p.zero_point), (2.0 / 254.0, 127));
        assert_eq!(a.fake_quant(-1.0, p), -1.0);
        assert!((a.fake_quant(1.0, p) - 1.0).abs() < 1e-6);
        // Pixels of [-1, 1]: errors spread over the step (the plain grid's are half a step).
        let err = |p: ActivationParams| {
            (0..256)
                .map(|px| {
                    let x = (px as f32 - 127.5) / 127.5;
                    f64::from(a.fake_quant(x, p) - x).powi(2)
                })
                .sum::<f64>()
                / 256.0
        };
        let plain = a.params(-1.0, 1.0);
        let s = f64::from(plain.scale);
        assert!((err(plain) - s * s / 4.0).abs() < 0.02 * s * s);
        assert!(err(p) < 0.4 * err(plain), "{} vs {}", err(p), err(plain));
        // An integer zero point already: the plain grid; no grid fits: the plain grid.
        assert_eq!(a.params_on_ends(0.0, 1.0), a.params(0.0, 1.0));
        assert_eq!(a.params_on_ends(-0.5, 1.0), a.params(-0.5, 1.0));
        assert_eq!(a.params_on_ends(-2.1179, 2.64), a.params(-2.1179, 2.64));
        let wide = a.wide().params_on_ends(-1.0, 1.0);
        assert_eq!((wide.scale, wide.zero_point), (2.0 / 65534.0, 32767));
    }

    #[test]
    fn activation_params_cover_the_range() {
        let a = U8;
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
