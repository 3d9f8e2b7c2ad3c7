//! Data-free rounding of layer weights onto the declared target grid (after SQuant, Guo et al.,
//! ICLR 2022; int8-output.md §3; the paper is per-channel, this port also runs per tensor).
//!
//! 1. Steps: `max|w| / qmax` per tensor or per output channel ([`WeightGrid::steps`]), nudged by
//!    at most a few ULP to a step `s` with `fl(fl(qmax·s) / qmax) == s` ([`stable_step`]): a
//!    max-abs quantizer applied to the written weights then finds `s` again, bit for bit.
//! 2. Round to nearest: `l = clamp(round(w / s), −qmax, qmax)`; error `e = l − w/s` in LSB
//!    (`|e| ≤ 0.5`).
//! 3. Kernel step (kernels of more than one element): while a kernel's `|Σ e| > 0.5`, flip its
//!    `round(|Σ e|)` elements with the largest error in the direction of the sum
//!    (`l −= sign`, `e −= sign`), which leaves `|Σ e| ≤ 0.5`.
//! 4. Channel step: while an output channel's `|Σ e| > 0.5`, flip one more element per kernel,
//!    in the kernels where that costs least (smallest growth of the kernel's `|Σ e|`, then the
//!    largest element error), `round(|Σ e|)` of them.
//!
//! Invariants: a flip only moves an element whose error has the sign of the sum, so every
//! weight ends on one of the two grid levels around it (`|l − w/s| < 1`: never more than one
//! step from its value); elements on `±qmax` (the max-|w| element among them) are never
//! flipped, so the step does not change; written weights are `l·s` in f32, exactly on the grid.
//! An asymmetric grid (`uint8` weights, [`WeightGrid::bounds`]) nudges the step
//! `(max(w, 0) − min(w, 0)) / 255` the same way
//! ([`crate::quant::target::stable_asym_step`]), clamps to its levels
//! `−z..255 − z` and never flips an element on either end, so a min/max quantizer finds the
//! same step and zero point again in the written weights.
//! With [`Rounding::Nearest`] only steps 1, 2 and the write-back run.

use crate::graph::layout::WeightLayout;
use crate::options::{Rounding, WeightGrid};
use crate::quant::target::level_within;

/// What rounding did to one weight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rounded {
    /// The step of each output channel (all equal for a per-tensor grid).
    pub steps: Vec<f32>,
    /// Elements flipped by the kernel step.
    pub kernel_flips: usize,
    /// Elements flipped by the channel step.
    pub channel_flips: usize,
    /// Largest `|Σ e|` (LSB) over output channels after round-to-nearest.
    pub max_channel_error_before: f32,
    /// The same after rounding.
    pub max_channel_error_after: f32,
    /// Levels moved one step toward zero so that no MLAS pair saturates an int16
    /// ([`crate::quant::target::keep_pairs`]; grids with int16 pairs only).
    pub pair_moves: usize,
    /// Largest ratio of a step to the max-abs step of the same channel (1 when no pair
    /// constraint widened it).
    pub step_widening: f32,
    /// Output channels set back to nearest rounding where SQuant's levels predicted a larger
    /// output error ([`keep_where_better`]).
    pub reverted: usize,
}

/// The step nearest to `step` (within 64 ULP) that a max-abs quantizer reproduces:
/// `fl(fl(q·s) / q) == s`. `step` itself when it is not positive and finite or no such step
/// is near.
pub fn stable_step(step: f32, q: f32) -> f32 {
    crate::quant::target::nearest_step(step, |s: f32| (q * s) / q == s)
}

/// Rounds `w` (stored as `layout`) in place onto `grid` with `mode`; every value written is
/// `level · step` exactly.
pub fn round_to_grid(
    w: &mut [f32],
    layout: &WeightLayout,
    grid: &WeightGrid,
    mode: Rounding,
) -> Rounded {
    round_to_grid_for(w, layout, grid, mode, None)
}

/// [`round_to_grid`] for a layer whose input channels carry at most `bytes` (raw u8, one per
/// input channel): the int16 pair bound of an `int16_pairs` grid then weighs each level by its
/// channel's byte ([`crate::quant::target::keep_pairs`], [`WeightGrid::steps_for`]).
pub fn round_to_grid_for(
    w: &mut [f32],
    layout: &WeightLayout,
    grid: &WeightGrid,
    mode: Rounding,
    bytes: Option<&[u8]>,
) -> Rounded {
    let q = grid.qmax();
    let plain = WeightGrid {
        int16_pairs: false,
        ..*grid
    }
    .steps(w, layout);
    // A step the pair constraint sets is exact already ([`WeightGrid::steps`]); only max-abs
    // steps are nudged to one a max-abs quantizer reproduces.
    let steps: Vec<f32> = grid
        .steps_for(w, layout, bytes)
        .into_iter()
        .zip(&plain)
        .map(|(s, p)| {
            // Asymmetric steps are stable already ([`WeightGrid::steps`]).
            if s > *p || grid.asymmetric {
                s
            } else {
                stable_step(s, q)
            }
        })
        .collect();
    // One zero point per tensor: asymmetric grids are per tensor.
    let bounds = grid.bounds(w, steps.first().copied().unwrap_or(0.0));
    let k = layout.kernel_len();
    // Kernels (start of `k` contiguous elements) grouped by output channel.
    let mut kernels: Vec<Vec<usize>> = vec![Vec::new(); layout.out_channels()];
    layout.for_each_kernel(|start, o, _| kernels[o].push(start));
    let mut level = vec![0f32; w.len()];
    let mut err = vec![0f32; w.len()];
    for (o, starts) in kernels.iter().enumerate() {
        let s = steps[o];
        for &start in starts {
            for j in start..start + k {
                level[j] = level_within(w[j], s, bounds);
                err[j] = if s > 0.0 { level[j] - w[j] / s } else { 0.0 };
            }
        }
    }
    let channel_error = |err: &[f32], starts: &[usize]| -> f32 {
        starts
            .iter()
            .map(|&st| err[st..st + k].iter().map(|&e| f64::from(e)).sum::<f64>())
            .sum::<f64>() as f32
    };
    let mut out = Rounded {
        max_channel_error_before: kernels
            .iter()
            .map(|st| channel_error(&err, st).abs())
            .fold(0f32, f32::max),
        ..Default::default()
    };
    if mode == Rounding::Squant {
        // May element `j` move one level in direction `−dir` (its error has the sign `dir`)?
        let (lo, hi) = bounds;
        let movable = |level: &[f32], err: &[f32], j: usize, dir: f32| {
            err[j] * dir > 0.0
                && lo < level[j]
                && level[j] < hi
                && (lo..=hi).contains(&(level[j] - dir))
        };
        if k > 1 {
            for starts in &kernels {
                for &start in starts {
                    let sum: f32 = err[start..start + k].iter().sum();
                    if sum.abs() <= 0.5 {
                        continue;
                    }
                    let dir = sum.signum();
                    let n = (sum.abs() + 0.5).floor() as usize;
                    let mut cand: Vec<usize> = (start..start + k)
                        .filter(|&j| movable(&level, &err, j, dir))
                        .collect();
                    cand.sort_by(|&a, &b| (err[b] * dir).total_cmp(&(err[a] * dir)));
                    for &j in cand.iter().take(n) {
                        level[j] -= dir;
                        err[j] -= dir;
                        out.kernel_flips += 1;
                    }
                }
            }
        }
        for starts in &kernels {
            let sum = channel_error(&err, starts);
            if sum.abs() <= 0.5 {
                continue;
            }
            let dir = sum.signum();
            let n = (sum.abs() + 0.5).floor() as usize;
            // One candidate per kernel: its element with the largest error in direction `dir`.
            let mut cand: Vec<(f32, f32, usize)> = starts
                .iter()
                .filter_map(|&start| {
                    let j = (start..start + k)
                        .filter(|&j| movable(&level, &err, j, dir))
                        .max_by(|&a, &b| (err[a] * dir).total_cmp(&(err[b] * dir)))?;
                    let ks: f32 = err[start..start + k].iter().sum();
                    Some(((ks - dir).abs() - ks.abs(), -(err[j] * dir), j))
                })
                .collect();
            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            for &(_, _, j) in cand.iter().take(n) {
                level[j] -= dir;
                err[j] -= dir;
                out.channel_flips += 1;
            }
        }
    }
    if grid.int16_pairs {
        out.pair_moves = crate::quant::target::keep_pairs(layout, &mut level, &mut err, bytes);
        // The channels whose step a pair sets keep one pair at exactly 128 levels (with bytes
        // the step is carried by the plan, not found again from the weights).
        if bytes.is_none() {
            let mut bound: Vec<bool> = steps.iter().zip(&plain).map(|(s, p)| s > p).collect();
            if grid.granularity == crate::options::Granularity::PerTensor
                && bound.iter().any(|&b| b)
            {
                let sums = crate::quant::target::pair_sums(w, layout, None);
                let top = (0..sums.len()).max_by(|&a, &b| sums[a].total_cmp(&sums[b]));
                bound = (0..sums.len()).map(|o| Some(o) == top).collect();
            }
            out.pair_moves +=
                crate::quant::target::tighten_pairs(layout, &bound, &mut level, &mut err);
        }
        out.step_widening = steps
            .iter()
            .zip(&plain)
            .filter(|(_, p)| **p > 0.0)
            .fold(1f32, |m, (s, p)| m.max(s / p));
    } else {
        out.step_widening = 1.0;
    }
    out.max_channel_error_after = kernels
        .iter()
        .map(|st| channel_error(&err, st).abs())
        .fold(0f32, f32::max);
    for (o, starts) in kernels.iter().enumerate() {
        let s = steps[o];
        for &start in starts {
            for j in start..start + k {
                w[j] = level[j] * s;
            }
        }
    }
    out.steps = steps;
    out
}

/// The correlation of neighbouring taps [`keep_where_better`] assumes: chosen on the tuning
/// photos of EfficientNet-Lite0 and ppocr_v4_rec among 0, 0.5, 0.8 and 0.95 (deploy model,
/// squant + analytic bias correction; 0.5–0.95 within 0.1 dB on EfficientNet-Lite0, 0 loses
/// 1.6 dB there; 0.5 best on ppocr_v4_rec), shown on the held-out photos of every model by
/// `scripts/eval_int8.sh`.
pub const TAP_CORRELATION: f32 = 0.5;

/// What a layer's input looks like to [`keep_where_better`], per input channel of the layer.
#[derive(Debug, Clone, Copy)]
pub struct InputModel<'a> {
    /// `Var[x_c]` (ones when unknown).
    pub var: &'a [f32],
    /// `E[x_c]` as the output still sees it: zero where bias correction removes the shift the
    /// rounding error causes, or where the mean is not modelled.
    pub mean: &'a [f32],
    /// Correlation of two taps of one kernel on the same input channel (neighbouring pixels).
    pub rho: f32,
}

/// Per output channel `o`, the output error SQuant's levels (`squant`) and the nearest levels
/// (`nearest`) of `w` predict under `x`, and squant's kept only where lower; the others are
/// set back to nearest. Returns the number of output channels set back.
///
/// With `e = q − w` in weight units, taps `t` of the kernel on input channel `c`, and inputs
/// whose taps of one channel correlate by `ρ` while channels are independent:
/// `J_o = Σ_c Var[x_c]·((1 − ρ)·Σ_t e² + ρ·(Σ_t e)²) + (Σ_c E[x_c]·Σ_t e)²`. Nearest rounding
/// minimises every `e²`; SQuant's kernel and channel sums pay for `(Σ_t e)²` and the mean term
/// with larger `e²`: it wins on correlated neighbouring pixels and on uncorrected means, and
/// loses on a 1×1 kernel whose output is bias-corrected. Both level sets share the steps and
/// satisfy the same per-channel constraints, so any mix of them per output channel is valid.
pub fn keep_where_better(
    w: &[f32],
    squant: &mut [f32],
    nearest: &[f32],
    layout: &WeightLayout,
    x: InputModel,
) -> usize {
    let k = layout.kernel_len();
    let outs = layout.out_channels();
    let rho = f64::from(x.rho);
    let mut cost = vec![[0f64; 2]; outs];
    let mut mean_sum = vec![[0f64; 2]; outs];
    layout.for_each_kernel(|start, o, c| {
        let v = f64::from(x.var.get(c).copied().unwrap_or(1.0));
        let m = f64::from(x.mean.get(c).copied().unwrap_or(0.0));
        for (slot, q) in [&*squant, nearest].into_iter().enumerate() {
            let (mut sq, mut sum) = (0f64, 0f64);
            for j in start..start + k {
                let e = f64::from(q[j]) - f64::from(w[j]);
                sq += e * e;
                sum += e;
            }
            cost[o][slot] += v * ((1.0 - rho) * sq + rho * sum * sum);
            mean_sum[o][slot] += m * sum;
        }
    });
    let worse: Vec<bool> = (0..outs)
        .map(|o| {
            let j = |s: usize| cost[o][s] + mean_sum[o][s] * mean_sum[o][s];
            j(0) >= j(1)
        })
        .collect();
    layout.for_each_kernel(|start, o, _| {
        if worse[o] {
            squant[start..start + k].copy_from_slice(&nearest[start..start + k]);
        }
    });
    worse.iter().filter(|&&b| b).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::SplitMix64;
    use crate::graph::layout::LayerOp;
    use crate::options::Granularity;

    fn grids() -> [WeightGrid; 3] {
        [
            WeightGrid {
                granularity: Granularity::PerTensor,
                bits: 8,
                asymmetric: false,
                int16_pairs: false,
            },
            WeightGrid {
                granularity: Granularity::PerChannel,
                bits: 8,
                asymmetric: false,
                int16_pairs: false,
            },
            WeightGrid {
                granularity: Granularity::PerTensor,
                bits: 4,
                asymmetric: false,
                int16_pairs: false,
            },
        ]
    }

    fn layouts() -> Vec<WeightLayout> {
        vec![
            WeightLayout::new(LayerOp::Conv, &[8, 6, 3, 3], 1).unwrap(),
            WeightLayout::new(LayerOp::Conv, &[16, 1, 3, 3], 16).unwrap(),
            WeightLayout::new(LayerOp::Conv, &[12, 10, 1, 1], 1).unwrap(),
            WeightLayout::new(LayerOp::Gemm { trans_b: false }, &[20, 7], 1).unwrap(),
            WeightLayout::new(LayerOp::ConvTranspose, &[4, 3, 2, 2], 2).unwrap(),
        ]
    }

    #[test]
    fn stable_steps_round_trip() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..20_000 {
            let m = rng.uniform(1e-6, 50.0);
            let s = stable_step(m / 127.0, 127.0);
            assert_eq!((127.0 * s) / 127.0, s, "{m}");
            assert!((s - m / 127.0).abs() <= 64.0 * f32::EPSILON * s);
        }
    }

    /// On the grid, at most one step from the original value, reproduced bit for bit by the
    /// grid's own max-abs quantizer, and the error sums within 0.5 LSB per channel.
    #[test]
    fn squant_stays_on_the_grid_within_one_step() {
        let mut rng = SplitMix64::new(11);
        for layout in layouts() {
            let n: usize = layout.dims.iter().product();
            for grid in grids() {
                for mode in [Rounding::Nearest, Rounding::Squant] {
                    let w0: Vec<f32> = (0..n).map(|_| rng.normal() * 0.3).collect();
                    let mut w = w0.clone();
                    let r = round_to_grid(&mut w, &layout, &grid, mode);
                    let mut again = w.clone();
                    grid.fake_quant(&mut again, &layout);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&again), bits(&w), "{layout:?} {grid:?} {mode:?}");
                    let steps = grid.steps(&w, &layout);
                    assert_eq!(steps, r.steps);
                    let mut o_of = vec![0usize; n];
                    layout.for_each_kernel(|st, o, _| {
                        o_of[st..st + layout.kernel_len()].fill(o);
                    });
                    for j in 0..n {
                        let s = steps[o_of[j]];
                        let l = (w[j] / s).round();
                        assert_eq!((l * s).to_bits(), w[j].to_bits(), "off grid");
                        assert!((l - w0[j] / s).abs() < 1.0, "moved more than one step");
                    }
                    if mode == Rounding::Squant {
                        assert!(r.max_channel_error_after <= 0.5 + 1e-4, "{r:?}");
                    }
                }
            }
        }
    }

    /// On an asymmetric grid both modes keep every level inside `−z..255 − z`, never move a
    /// weight more than one step, keep the tensor's end levels (so the written weights give the
    /// same zero point again) and SQuant still lowers the error sums.
    #[test]
    fn asymmetric_grids_keep_their_zero_point() {
        let mut rng = SplitMix64::new(13);
        let grid = WeightGrid {
            granularity: Granularity::PerTensor,
            bits: 8,
            asymmetric: true,
            int16_pairs: false,
        };
        for layout in layouts() {
            let n: usize = layout.dims.iter().product();
            let w0: Vec<f32> = (0..n).map(|_| rng.normal() * 0.3 + 0.2).collect();
            for mode in [Rounding::Nearest, Rounding::Squant] {
                let mut w = w0.clone();
                let r = round_to_grid(&mut w, &layout, &grid, mode);
                let s = r.steps[0];
                let (lo, hi) = grid.bounds(&w0, s);
                assert_eq!(grid.bounds(&w, s), (lo, hi), "{layout:?} {mode:?}");
                let mut again = w.clone();
                grid.fake_quant(&mut again, &layout);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&again),
                    bits(&w),
                    "{layout:?} {mode:?}: not reproduced"
                );
                for j in 0..n {
                    let l = (w[j] / s).round();
                    assert_eq!((l * s).to_bits(), w[j].to_bits(), "off grid");
                    assert!((lo..=hi).contains(&l));
                    assert!((l - w0[j] / s).abs() < 1.0, "moved more than one step");
                }
                if mode == Rounding::Squant {
                    assert!(r.max_channel_error_after <= r.max_channel_error_before + 1e-4);
                }
            }
        }
    }

    #[test]
    fn squant_lowers_the_error_sums() {
        let layout = WeightLayout::new(LayerOp::Conv, &[32, 1, 3, 3], 32).unwrap();
        let mut rng = SplitMix64::new(5);
        let w0: Vec<f32> = (0..32 * 9).map(|_| rng.normal()).collect();
        let grid = WeightGrid {
            granularity: Granularity::PerTensor,
            bits: 8,
            asymmetric: false,
            int16_pairs: false,
        };
        let mut w = w0.clone();
        let r = round_to_grid(&mut w, &layout, &grid, Rounding::Squant);
        assert!(r.max_channel_error_before > 0.5);
        assert!(r.kernel_flips > 0);
    }

    /// One rounding of heavy-tailed, mostly one-signed weights (pairs near the limit are
    /// common) onto an int16-pair grid.
    struct PairCase {
        layout: WeightLayout,
        grid: WeightGrid,
        w0: Vec<f32>,
        w: Vec<f32>,
        r: Rounded,
        /// Output channel of each element.
        o_of: Vec<usize>,
        level: Vec<f32>,
    }

    /// Every layout, both granularities and both modes, rounded with `bytes_of(layout)`.
    fn pair_cases(
        seed: u64,
        layouts: Vec<WeightLayout>,
        bytes_of: impl Fn(&WeightLayout) -> Option<Vec<u8>>,
    ) -> Vec<(PairCase, Option<Vec<u8>>)> {
        let mut rng = SplitMix64::new(seed);
        let mut out = Vec::new();
        for layout in layouts {
            let n: usize = layout.dims.iter().product();
            let bytes = bytes_of(&layout);
            for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
                let grid = WeightGrid {
                    granularity,
                    bits: 8,
                    asymmetric: false,
                    int16_pairs: true,
                };
                for mode in [Rounding::Nearest, Rounding::Squant] {
                    let w0: Vec<f32> = (0..n)
                        .map(|_| (rng.normal() * 0.3).abs() * rng.uniform(0.5, 2.0))
                        .collect();
                    let mut w = w0.clone();
                    let r = round_to_grid_for(&mut w, &layout, &grid, mode, bytes.as_deref());
                    let mut o_of = vec![0usize; n];
                    layout.for_each_kernel(|st, o, _| {
                        o_of[st..st + layout.kernel_len()].fill(o);
                    });
                    let level = (0..n).map(|j| (w[j] / r.steps[o_of[j]]).round()).collect();
                    let case = PairCase {
                        layout: layout.clone(),
                        grid,
                        w0,
                        w,
                        r,
                        o_of,
                        level,
                    };
                    out.push((case, bytes.clone()));
                }
            }
        }
        out
    }

    /// With int16 pairs bounded by input bytes: the kernels' int16 pairs (onnxruntime without
    /// VNNI, [`crate::quant::kernels::dot`]) agree with int32 accumulation for every input whose
    /// raw bytes stay within the bounds; the steps are never wider than without bounds, and
    /// every weight stays within one step of its value.
    #[test]
    fn byte_bounded_pairs_never_saturate_within_their_bytes() {
        use crate::options::Accumulation;
        use crate::quant::kernels::dot;
        let mut all = layouts();
        all.push(WeightLayout::new(LayerOp::Conv, &[8, 3, 3, 3], 2).unwrap());
        let bytes_of = |l: &WeightLayout| {
            Some(
                (0..l.in_channels())
                    .map(|k| [255u8, 0, 40, 128, 200, 90][k % 6])
                    .collect(),
            )
        };
        for (c, bytes) in pair_cases(29, all, bytes_of) {
            let bytes = bytes.unwrap();
            let plain = c.grid.steps(&c.w0, &c.layout);
            for (j, &o) in c.o_of.iter().enumerate() {
                let s = c.r.steps[o];
                assert!(s <= plain[o] * (1.0 + 1e-6), "wider than unbounded");
                assert!(
                    (c.level[j] - c.w0[j] / s).abs() < 1.0,
                    "moved more than a step"
                );
            }
            // The worst input of each pair: both elements at their channel's byte.
            c.layout.for_each_mlas_pair_in(|_, a, b, ia, ib| {
                let act = [bytes[ia], bytes[ib]];
                let wl = [c.level[a] as i8, c.level[b] as i8];
                assert_eq!(
                    dot(&act, &wl, Accumulation::Int16Pairs),
                    dot(&act, &wl, Accumulation::Int32),
                    "{:?}: {act:?} × {wl:?}",
                    c.layout
                );
            });
        }
    }

    /// With int16 pairs: on the grid of the reported steps, at most one step from the value,
    /// no same-sign MLAS pair over 128 levels, and the steps no wider than a pair needs (the
    /// 7-bit grid, `max|w| / 63`, is never coarser than them).
    #[test]
    fn int16_pair_grids_never_saturate_and_stay_within_one_step() {
        for (c, _) in pair_cases(23, layouts(), |_| None) {
            for (j, &o) in c.o_of.iter().enumerate() {
                let s = c.r.steps[o];
                assert_eq!((c.level[j] * s).to_bits(), c.w[j].to_bits(), "off grid");
                assert!(
                    (c.level[j] - c.w0[j] / s).abs() < 1.0,
                    "moved more than one step"
                );
                assert!(c.level[j].abs() <= 127.0);
            }
            c.layout.for_each_mlas_pair(|_, a, b| {
                if c.level[a] * c.level[b] > 0.0 {
                    assert!(
                        c.level[a].abs() + c.level[b].abs() <= 128.0,
                        "{:?}",
                        c.layout
                    );
                }
            });
            let seven = WeightGrid {
                bits: 7,
                int16_pairs: false,
                ..c.grid
            }
            .steps(&c.w0, &c.layout);
            for (s, s7) in c.r.steps.iter().zip(&seven) {
                assert!(*s <= *s7 * (1.0 + 1e-6), "{s} > 7-bit {s7}");
            }
            assert!(c.r.step_widening >= 1.0);
        }
    }

    /// The objective of [`keep_where_better`] is the expected squared output error of the
    /// layer: checked against a Monte-Carlo mean of `‖(q − w)·x‖²` over inputs whose taps of
    /// one channel share a common part (correlation ρ) and whose channels have their own
    /// means and variances (within 3 % over 40 000 draws); and the choice is the lower one.
    #[test]
    fn keep_where_better_predicts_the_output_error() {
        let layout = WeightLayout::new(LayerOp::Conv, &[6, 4, 3, 3], 1).unwrap();
        let mut rng = SplitMix64::new(11);
        let w: Vec<f32> = (0..6 * 4 * 9).map(|_| rng.normal() * 0.3).collect();
        let grid = grids()[0];
        let mut nearest = w.clone();
        round_to_grid(&mut nearest, &layout, &grid, Rounding::Nearest);
        let mut squant = w.clone();
        round_to_grid(&mut squant, &layout, &grid, Rounding::Squant);
        let var = [1.0f32, 0.5, 2.0, 0.8];
        let mean = [0.7f32, -0.2, 0.0, 1.1];
        let rho = 0.6f32;
        let predicted = |q: &[f32]| {
            // J summed over output channels, as keep_where_better computes it.
            let mut total = 0f64;
            for o in 0..6 {
                let (mut c, mut m) = (0f64, 0f64);
                for i in 0..4 {
                    let e: Vec<f64> = (0..9)
                        .map(|t| f64::from(q[(o * 4 + i) * 9 + t] - w[(o * 4 + i) * 9 + t]))
                        .collect();
                    let sq: f64 = e.iter().map(|e| e * e).sum();
                    let sum: f64 = e.iter().sum();
                    c += f64::from(var[i])
                        * ((1.0 - f64::from(rho)) * sq + f64::from(rho) * sum * sum);
                    m += f64::from(mean[i]) * sum;
                }
                total += c + m * m;
            }
            total
        };
        let measured = |q: &[f32], rng: &mut SplitMix64| {
            let draws = 40_000;
            let mut acc = 0f64;
            let mut x = [0f64; 36];
            for _ in 0..draws {
                for i in 0..4 {
                    let sd = f64::from(var[i]).sqrt();
                    let common = f64::from(rng.normal()) * f64::from(rho).sqrt();
                    for t in 0..9 {
                        let own = f64::from(rng.normal()) * (1.0 - f64::from(rho)).sqrt();
                        x[i * 9 + t] = f64::from(mean[i]) + sd * (common + own);
                    }
                }
                for o in 0..6 {
                    let y: f64 = (0..36)
                        .map(|j| f64::from(q[o * 36 + j] - w[o * 36 + j]) * x[j])
                        .sum();
                    acc += y * y;
                }
            }
            acc / f64::from(draws)
        };
        for q in [&nearest, &squant] {
            let (p, m) = (predicted(q), measured(q, &mut rng));
            assert!((p - m).abs() <= 0.03 * m, "predicted {p}, measured {m}");
        }
        let mut kept = squant.clone();
        let reverted = keep_where_better(
            &w,
            &mut kept,
            &nearest,
            &layout,
            InputModel {
                var: &var,
                mean: &mean,
                rho,
            },
        );
        assert!(predicted(&kept) <= predicted(&nearest).min(predicted(&squant)) + 1e-12);
        assert!(reverted <= 6);
        // A 1×1 kernel whose output is bias-corrected (no mean left) keeps nearest rounding.
        let pw = WeightLayout::new(LayerOp::Conv, &[5, 8, 1, 1], 1).unwrap();
        let w: Vec<f32> = (0..40).map(|_| rng.normal()).collect();
        let mut n = w.clone();
        round_to_grid(&mut n, &pw, &grid, Rounding::Nearest);
        let mut q = w.clone();
        round_to_grid(&mut q, &pw, &grid, Rounding::Squant);
        keep_where_better(
            &w,
            &mut q,
            &n,
            &pw,
            InputModel {
                var: &[1.0; 8],
                mean: &[0.0; 8],
                rho: 0.5,
            },
        );
        assert_eq!(q, n);
    }
}
