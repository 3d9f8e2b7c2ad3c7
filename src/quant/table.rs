//! Per-layer int8 weight figures (no inference): per-tensor symmetric SQNR of every layer weight
//! in the BN-folded and the equalized model, and the per-channel ceiling.
//!
//! Each weight costs one range sweep (vectorized, [`WeightLayout::out_ranges`]) and one fused
//! sweep ([`weight_sqnr`]) that quantizes every element for both schemes and adds up
//! `Σw²` and `Σ(w − Q(w))²` per scheme, without a copy of the weight. The quantized values are
//! those of [`super::fake_quant`], bit for bit (rounding half away from zero, written so that
//! it vectorizes); the sums are f64 in 8 interleaved partial sums added pairwise at the end, so
//! they vectorize too. That is a different order of the same f64 additions than
//! [`super::sqnr_db`]'s single running sum: the figures agree with it to about 1e-11 dB (the
//! partial sums are, if anything, the more accurate; at most 3e-11 dB on the fixtures and the
//! two ResNet-50s).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::ratio_db;
use crate::graph::deferred::Deferred;
use crate::graph::layer_of;
use crate::graph::layout::WeightLayout;
use crate::graph::work::Work;
use crate::onnx::ModelProto;
use crate::report::LayerQuant;

/// The int8 figures of one BN-folded layer weight: the "before" side of [`layer_table`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldedFigures {
    /// SQNR (dB) per-tensor symmetric.
    pub per_tensor_db: f64,
    /// SQNR (dB) per-channel symmetric.
    pub per_channel_db: f64,
}

/// The BN-folded side of the table ([`folded_figures`]): figures by weight name, and the
/// weights whose figures wait for their value to be computed (deferred weights,
/// [`crate::graph::Work::scale`]: their BN-folded value is their stored bytes with that many
/// recorded products).
#[derive(Debug, Clone, Default)]
pub struct Folded {
    figures: HashMap<String, FoldedFigures>,
    later: HashMap<String, usize>,
}

impl Folded {
    /// The figures of `weight`, when computed.
    pub fn get(&self, weight: &str) -> Option<&FoldedFigures> {
        self.figures.get(weight)
    }
}

/// Both figures of `data` (per tensor, per channel) as the BN-folded side.
fn folded_of(data: &[f32], layout: &WeightLayout) -> FoldedFigures {
    folded_ranged(data, layout, layout.out_ranges(data))
}

/// [`folded_of`] with the output channels' ranges already taken.
fn folded_ranged(data: &[f32], layout: &WeightLayout, ranges: Vec<f32>) -> FoldedFigures {
    let (per_tensor_db, per_channel_db) = weight_sqnr(data, layout, true, Some(ranges));
    FoldedFigures {
        per_tensor_db,
        per_channel_db: per_channel_db.unwrap_or(f64::NAN),
    }
}

/// [`FoldedFigures`] of every layer weight of `work`, by weight name (the first layer reading
/// a weight gives its layout). With `keep` the decoded weights stay in `work`'s cache for the
/// passes still to run; otherwise each is decoded and dropped in turn, so memory stays at one
/// layer. A deferred weight is not read now: its figures are taken when its value is computed
/// for the table's other side ([`TablePlan::rows_deferred`]).
pub fn folded_figures(work: &mut Work, keep: bool) -> Folded {
    let mut layers: Vec<(String, WeightLayout)> = Vec::new();
    let mut seen = HashSet::new();
    let mut later = HashMap::new();
    for i in 0..work.node_count() {
        if let Ok(l) = layer_of(work, i) {
            if seen.insert(l.weight.clone()) {
                match work.deferred_ops(&l.weight) {
                    Some(k) => {
                        later.insert(l.weight, k);
                    }
                    None => layers.push((l.weight, l.layout)),
                }
            }
        }
    }
    if keep {
        let names: Vec<String> = layers
            .iter()
            .map(|(w, _)| w.clone())
            .filter(|w| !work.defers(w))
            .collect();
        work.prefetch(&names);
    }
    let work = &*work;
    let figures = layers
        .par_iter()
        .filter_map(|(weight, layout)| {
            let f = work.with_value(weight, |d| folded_of(d, layout)).ok()?;
            Some((weight.clone(), f))
        })
        .collect();
    Folded { figures, later }
}

/// Per-layer weight SQNR, BN-folded vs equalized (layers matched by weight name). `labels` names
/// the nodes of `equalized` ([`crate::pipeline::Equalized::labels`]), so rows use the report's labels.
pub fn layer_table(
    folded: &ModelProto,
    equalized: &ModelProto,
    labels: &[String],
) -> Vec<LayerQuant> {
    let before = Work::new(folded.clone())
        .map(|mut w| folded_figures(&mut w, false))
        .unwrap_or_default();
    let Ok(mut work) = Work::new(equalized.clone()) else {
        return Vec::new();
    };
    TablePlan::labelled(&before, &mut work, |work, i| {
        labels
            .get(i)
            .map_or_else(|| work.label(i).to_string(), Clone::clone)
    })
    .rows(equalized)
}

/// [`layer_table`]'s rows for a run that folds, before their "after" figures: planned on the
/// model still under edit with the BN-folded side already computed ([`folded_figures`]), and
/// completed by [`TablePlan::rows`] on the finished model, so that the caller can run that sweep
/// beside the encode (no fold-only copy of the model, no second decode of the weights the passes
/// wrote).
///
/// A weight that is not an initializer of the model under edit (a `Constant` node's, or one
/// computed by a chain of constant ops) is measured at planning time, from the model under edit,
/// as it will not be found by name among the finished model's initializers.
#[derive(Debug, Clone)]
pub struct TablePlan {
    rows: Vec<Planned>,
}

/// One row of a [`TablePlan`].
#[derive(Debug, Clone)]
struct Planned {
    row: LayerQuant,
    weight: String,
    layout: WeightLayout,
    /// Whether the per-channel figure is the equalized weight's.
    channel: bool,
    /// Whether the row is already complete.
    done: bool,
    /// The BN-folded side is the deferred weight's value after this many products.
    folded_at: Option<usize>,
}

/// `row` with the equalized weight's figures from `data` (and its per-channel figure when
/// `channel`, i.e. no BN-folded figure stands for it).
fn completed(row: &LayerQuant, data: &[f32], layout: &WeightLayout, channel: bool) -> LayerQuant {
    completed_ranged(row, data, layout, channel, layout.out_ranges(data))
}

/// [`completed`] with the output channels' ranges already taken.
fn completed_ranged(
    row: &LayerQuant,
    data: &[f32],
    layout: &WeightLayout,
    channel: bool,
    ranges: Vec<f32>,
) -> LayerQuant {
    let (after_db, after_channel_db) = weight_sqnr(data, layout, channel, Some(ranges));
    let mut row = row.clone();
    row.sqnr_after_db = after_db;
    if channel {
        row.sqnr_per_channel_db = after_channel_db.unwrap_or(f64::NAN);
    }
    row
}

impl TablePlan {
    /// One planned row per layer weight of `work` (the first layer reading it), with the
    /// BN-folded side from `before`.
    pub fn new(before: &Folded, work: &mut Work) -> Self {
        Self::labelled(before, work, |work, i| work.label(i).to_string())
    }

    /// [`TablePlan::new`] with the rows' labels from `label(work, node)`.
    fn labelled(before: &Folded, work: &mut Work, label: impl Fn(&Work, usize) -> String) -> Self {
        let initializers: HashSet<String> = work
            .graph()
            .initializer
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for i in 0..work.node_count() {
            let Ok(l) = layer_of(work, i) else {
                continue;
            };
            if !seen.insert(l.weight.clone()) {
                continue;
            }
            // A deferred weight's BN-folded figures: with its finished value when it is still
            // deferred, or now, from its stored bytes, when a pass has read it since.
            let mut folded_at = before.later.get(&l.weight).copied();
            let late;
            let b = match folded_at {
                Some(k) if work.deferred_ops(&l.weight).is_none() => {
                    folded_at = None;
                    late = work
                        .with_value_after(&l.weight, k, |d| folded_of(d, &l.layout))
                        .ok();
                    late.as_ref()
                }
                _ => before.get(&l.weight),
            };
            let row = LayerQuant {
                layer: label(work, i),
                op: work.node(i).op_type().to_string(),
                channels: l.layout.out_channels(),
                sqnr_before_db: b.map_or(f64::NAN, |b| b.per_tensor_db),
                sqnr_after_db: f64::NAN,
                sqnr_per_channel_db: b.map_or(f64::NAN, |b| b.per_channel_db),
            };
            if initializers.contains(&l.weight) {
                rows.push(Planned {
                    row,
                    weight: l.weight,
                    layout: l.layout,
                    channel: b.is_none() && folded_at.is_none(),
                    done: false,
                    folded_at,
                });
                continue;
            }
            let decoded;
            let data = match work.cached(&l.weight) {
                Some(t) => &t.data,
                None => match work.decode(&l.weight) {
                    Ok(t) => {
                        decoded = t;
                        &decoded.data
                    }
                    Err(_) => continue,
                },
            };
            let row = completed(&row, data, &l.layout, b.is_none());
            rows.push(Planned {
                row,
                weight: l.weight,
                layout: l.layout,
                channel: false,
                done: true,
                folded_at: None,
            });
        }
        TablePlan { rows }
    }

    /// The rows, with the "after" figures of `model`'s weights (rows whose weight cannot be read
    /// are left out).
    pub fn rows(&self, model: &ModelProto) -> Vec<LayerQuant> {
        self.rows_deferred(model, &Deferred::default())
    }

    /// [`TablePlan::rows`] of a model finished with deferred weights
    /// ([`crate::graph::Work::finish_deferred`]): their values are computed from `deferred`.
    pub fn rows_deferred(&self, model: &ModelProto, deferred: &Deferred) -> Vec<LayerQuant> {
        let by_name: HashMap<&str, &crate::onnx::TensorProto> = model
            .graph
            .iter()
            .flat_map(|g| g.initializer.iter())
            .map(|t| (t.name(), t))
            .collect();
        let one = |p: &Planned| -> Option<LayerQuant> {
            let Planned {
                row,
                weight,
                layout,
                channel,
                done,
                folded_at,
            } = p;
            if *done {
                return Some(row.clone());
            }
            let t = by_name.get(weight.as_str())?;
            if let Some(k) = folded_at.filter(|_| deferred.contains(weight)) {
                let fits = |d: &[f32]| d.len() == layout.len();
                // The rows' ranges taken as the value was computed are `out_ranges` when each
                // output channel of `layout` is one of those rows.
                let ranges = |d: &[f32], r: &[f32]| {
                    let rows = !r.is_empty()
                        && r.len() == layout.out_channels()
                        && layout.row_len() == Some(d.len() / r.len());
                    if rows {
                        r.to_vec()
                    } else {
                        layout.out_ranges(d)
                    }
                };
                let (b, after) = deferred.with_stages(
                    t,
                    k,
                    |d, r| fits(d).then(|| folded_ranged(d, layout, ranges(d, r))),
                    |d, r| fits(d).then(|| completed_ranged(row, d, layout, false, ranges(d, r))),
                )?;
                let (b, mut row) = (b?, after?);
                row.sqnr_before_db = b.per_tensor_db;
                row.sqnr_per_channel_db = b.per_channel_db;
                return Some(row);
            }
            deferred
                .with_tensor(t, |data| {
                    (data.len() == layout.len()).then(|| completed(row, data, layout, *channel))
                })
                .flatten()
        };
        self.rows.par_iter().filter_map(one).collect()
    }
}

/// Elements quantized in one batch before their squares are added up (the batch vectorizes; the
/// sums stay sequential).
const BATCH: usize = 64;

/// `x.round().clamp(-127.0, 127.0)`, bit for bit (NaN stays NaN), in operations that
/// vectorize where `f32::round` is a library call: `(a + 1.5·2²³) − 1.5·2²³` rounds `|x| ≤ 128`
/// to the nearest integer, ties to even; a tie rounded down moves up, so ties go away from zero.
#[inline(always)]
fn round_clamp127(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let a = x.abs();
    let a = if a > 128.0 { 128.0 } else { a };
    let r = (a + SHIFT) - SHIFT;
    let r = if r - a == -0.5 { r + 1.0 } else { r };
    let r = if r > 127.0 { 127.0 } else { r };
    r.copysign(x)
}

/// SQNR (dB) of `data` quantized per-tensor symmetric and, with `per_channel`, per-channel
/// symmetric: the values of `sqnr_db(data, fake_quant(data))` for each scheme, in one sweep.
/// `ranges` are the output channels' (`layout.out_ranges(data)`) when already taken.
pub(crate) fn weight_sqnr(
    data: &[f32],
    layout: &WeightLayout,
    per_channel: bool,
    ranges: Option<Vec<f32>>,
) -> (f64, Option<f64>) {
    let ranges = ranges.unwrap_or_else(|| layout.out_ranges(data));
    let scale = ranges.iter().fold(0f32, |m, &r| m.max(r)) / 127.0;
    let steps: Vec<f32> = ranges
        .iter()
        .map(|r| if *r > 0.0 { r / 127.0 } else { 1.0 })
        .collect();
    let inv: Vec<f32> = steps.iter().map(|s| 1.0 / s).collect();
    let grids = Grids {
        scale,
        steps: &steps,
        inv: &inv,
        per_channel,
    };
    let mut sums = Sums::default();
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    layout.for_each_out_run(data, |run, first, stride| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { sweep_avx2(&mut sums, &grids, run, first, stride) };
        }
        sweep(&mut sums, &grids, run, first, stride)
    });
    grids.figures(&sums)
}

/// The grids of [`weight_sqnr`]: the per-tensor step, and the per-channel steps and their
/// reciprocals when `per_channel`.
struct Grids<'a> {
    scale: f32,
    steps: &'a [f32],
    inv: &'a [f32],
    per_channel: bool,
}

impl Grids<'_> {
    /// The SQNRs (dB) of the totals of `sums`.
    fn figures(&self, sums: &Sums) -> (f64, Option<f64>) {
        let (signal, tensor_noise, channel_noise) = sums.totals();
        (
            ratio_db(signal, tensor_noise),
            self.per_channel.then(|| ratio_db(signal, channel_noise)),
        )
    }
}

/// [`sweep`] compiled for AVX2: the same operations in the same order, so the same sums bit for
/// bit, on twice the lanes. (A closure keeps its caller's target features only when inlined
/// into it; this function is the boundary that gets them.)
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sweep_avx2(sums: &mut Sums, g: &Grids<'_>, run: &[f32], first: usize, stride: usize) {
    sweep(sums, g, run, first, stride)
}

/// Adds one run of [`WeightLayout::for_each_out_run`] (elements of channel `first`, or of
/// channels `first, first + 1, …` when `stride` is 1) to `sums`.
#[inline(always)]
fn sweep(sums: &mut Sums, g: &Grids<'_>, run: &[f32], first: usize, stride: usize) {
    let (scale, per_channel) = (g.scale, g.per_channel);
    let mut qt = [0f32; BATCH];
    let mut qc = [0f32; BATCH];
    for (b, chunk) in run.chunks(BATCH).enumerate() {
        let n = chunk.len();
        if scale > 0.0 {
            for (q, &v) in qt[..n].iter_mut().zip(chunk) {
                *q = round_clamp127(v / scale) * scale;
            }
        } else {
            qt[..n].copy_from_slice(chunk);
        }
        if per_channel {
            if stride == 0 {
                let (m, s) = (g.inv[first], g.steps[first]);
                for (q, &v) in qc[..n].iter_mut().zip(chunk) {
                    *q = round_clamp127(v * m) * s;
                }
            } else {
                let at = first + b * BATCH;
                let (m, s) = (&g.inv[at..at + n], &g.steps[at..at + n]);
                for (((q, &v), &m), &s) in qc[..n].iter_mut().zip(chunk).zip(m).zip(s) {
                    *q = round_clamp127(v * m) * s;
                }
            }
        }
        sums.add(chunk, &qt[..n], per_channel.then_some(&qc[..n]));
    }
}

/// Independent f64 partial sums per sum (element `j` of every 8 goes to lane `j`), so the
/// additions vectorize instead of waiting on each other.
const LANES: usize = 8;

/// `Σw²`, `Σ(w − qt)²`, `Σ(w − qc)²` in [`LANES`] partial sums each.
#[derive(Default)]
struct Sums {
    signal: [f64; LANES],
    tensor_noise: [f64; LANES],
    channel_noise: [f64; LANES],
}

impl Sums {
    /// Adds one batch (`qc`: the per-channel values, when computed).
    #[inline(always)]
    fn add(&mut self, w: &[f32], qt: &[f32], qc: Option<&[f32]>) {
        let lanes = w.len() / LANES * LANES;
        match qc {
            Some(qc) => {
                for ((a, t), c) in w[..lanes]
                    .chunks_exact(LANES)
                    .zip(qt.chunks_exact(LANES))
                    .zip(qc.chunks_exact(LANES))
                {
                    for j in 0..LANES {
                        let x = f64::from(a[j]);
                        self.signal[j] += x * x;
                        self.tensor_noise[j] += (x - f64::from(t[j])).powi(2);
                        self.channel_noise[j] += (x - f64::from(c[j])).powi(2);
                    }
                }
                for (j, ((&a, &t), &c)) in w[lanes..]
                    .iter()
                    .zip(&qt[lanes..])
                    .zip(&qc[lanes..])
                    .enumerate()
                {
                    let x = f64::from(a);
                    self.signal[j] += x * x;
                    self.tensor_noise[j] += (x - f64::from(t)).powi(2);
                    self.channel_noise[j] += (x - f64::from(c)).powi(2);
                }
            }
            None => {
                for (a, t) in w[..lanes].chunks_exact(LANES).zip(qt.chunks_exact(LANES)) {
                    for j in 0..LANES {
                        let x = f64::from(a[j]);
                        self.signal[j] += x * x;
                        self.tensor_noise[j] += (x - f64::from(t[j])).powi(2);
                    }
                }
                for (j, (&a, &t)) in w[lanes..].iter().zip(&qt[lanes..]).enumerate() {
                    let x = f64::from(a);
                    self.signal[j] += x * x;
                    self.tensor_noise[j] += (x - f64::from(t)).powi(2);
                }
            }
        }
    }

    /// `(Σw², Σ(w − qt)², Σ(w − qc)²)`, the lanes added pairwise.
    fn totals(&self) -> (f64, f64, f64) {
        let total =
            |l: &[f64; LANES]| ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        (
            total(&self.signal),
            total(&self.tensor_noise),
            total(&self.channel_noise),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::layout::{test_values, TEST_LAYOUTS};
    use crate::quant::{fake_quant, sqnr_db, Scheme};

    #[test]
    fn rounding_matches_f32_round() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            126.5,
            127.5,
            -127.5,
            128.0,
            1e9,
            -1e9,
            0.49999997,
            -0.49999997,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ];
        xs.extend((0..20_000).map(|i| (i as f32 - 10_000.0) * 0.01337));
        xs.extend((0..=256).map(|i| i as f32 * 0.5 - 64.0));
        xs.extend((0..=2000).map(|i| f32::from_bits(0x3f00_0000 + i - 1000)));
        for x in xs {
            let (a, b) = (x.round().clamp(-127.0, 127.0), round_clamp127(x));
            assert_eq!(a.to_bits(), b.to_bits(), "{x}: {a} vs {b}");
        }
        assert!(round_clamp127(f32::NAN).is_nan());
    }

    /// The fused sweep gives the figures of a quantized copy and `sqnr_db` (to rounding of the
    /// sums), on every layout path, with zeros, a zero channel, a NaN and an all-zero weight.
    #[test]
    fn fused_figures_equal_the_reference() {
        for (ci, (op, dims, group)) in TEST_LAYOUTS.into_iter().enumerate() {
            let l = WeightLayout::new(op, dims, group).unwrap();
            let n: usize = dims.iter().product();
            let mut variants: Vec<Vec<f32>> = Vec::new();
            let w = test_values(n);
            variants.push(w.clone());
            let mut zeros = w.clone();
            zeros[..n / 3].iter_mut().for_each(|v| *v = 0.0);
            variants.push(zeros);
            let mut nan = w.clone();
            nan[n / 2] = f32::NAN;
            variants.push(nan);
            variants.push(vec![0.0; n]);
            for (vi, w) in variants.iter().enumerate() {
                let reference = |scheme| {
                    let mut q = w.clone();
                    fake_quant(&mut q, &l, scheme);
                    sqnr_db(w, &q)
                };
                let (t, c) = weight_sqnr(w, &l, true, None);
                let (t2, c2) = weight_sqnr(w, &l, false, None);
                let same = |a: f64, b: f64| {
                    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * b.abs().max(1.0)
                };
                assert!(
                    same(t, reference(Scheme::PerTensorSymmetric)),
                    "case {ci}/{vi}"
                );
                assert!(
                    same(c.unwrap(), reference(Scheme::PerChannel)),
                    "case {ci}/{vi}"
                );
                assert!(same(t, t2) && c2.is_none(), "case {ci}/{vi}");
            }
        }
    }
}
