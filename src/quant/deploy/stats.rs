//! Data-free per-channel activation statistics of the equalized model: the `E[x]` that analytic
//! bias correction needs at every layer input, and per-tensor activation ranges for a QDQ model
//! or encodings (int8-output.md §2, §5).
//!
//! Source (Nagel et al. 2019, §4.2 and appendix C): after BN folding, channel `c` of a layer's
//! pre-activation is about `N(β_c, σ_c²)` with the folded BN's `β`, and
//! `σ_c = |γ_c|·√(var_c / (var_c + ε))` (its running variance makes near-dead channels narrow).
//! onnx-cle's own rewrite is then replayed exactly ([`Origins::from_pipeline`]): cross-layer
//! scaling divides channel `c` by its cumulative `s_c` (`N(β/s, (σ/s)²)`), the high-bias fold
//! subtracts the absorbed amount, and the exact ReLU6 rewrite appears in the graph as
//! `Clip(x, 0, M) → Min(x, 6/s_c − offset_c)`, both read like any other clamp.
//!
//! Representation: each channel of a tensor is `X = clamp(Z, a, b)` with `Z ~ N(μ, σ²)`, plus a
//! data-free range `[lo, hi]`. The clamp form is exact through `Relu`, `Clip`, `Min`/`Max` with
//! a constant and positive scaling, so ReLU and ReLU6 means are the closed forms of DFQ
//! appendix C (`E[relu] = μ·(1 − Φ(−μ/σ)) + σ·φ(−μ/σ)`, and the clipped-normal mean at the
//! upper bound); after any other op the channel is a moment-matched Gaussian. SiLU / Swish
//! (`x·Sigmoid(x)`), HardSwish, Sigmoid, HardSigmoid, Tanh, GELU, ELU, LeakyRelu and PRelu are
//! integrated by a 16-point Gauss–Hermite sum. Means are exact through every linear op (layers
//! without BN statistics: `W·E[x] + b`, ignoring zero padding at the borders), `Add` / `Sub`
//! (means add, variances add as if independent, ranges add as intervals), constant scaling and
//! shifts, `Concat` on the channel axis, `Pad`, pooling, `GlobalAveragePool`, `Flatten` /
//! `Reshape` (a layer reading `K = C·r` features of a `C`-channel tensor sees each channel
//! repeated `r` times, NCHW order). A standalone BatchNormalization gives `N(β, σ²)` from its
//! own statistics; a BN folded forward into the next layer gives that layer's input its
//! running mean and variance. Graph inputs have mean 0 (or the given per-channel mean) and
//! unit variance, and no data-free range.
//!
//! Ranges: a layer output with BN statistics ranges over `[μ − nσ, μ + nσ]` per channel (after
//! the scaling, so divided by `s_c`), clamps cut the range, intervals add at `Add`; the
//! per-tensor range is the min / max over channels ([`ActivationStats::ranges`]).
//!
//! Whatever is not modelled (`Transpose`, `Softmax`, a non-constant `Min`…) leaves its output
//! unknown, with the reason ([`ActivationStats::why_unknown`]); everything downstream of it too.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::graph::layer_of;
use crate::graph::layout::LayerOp;
use crate::graph::work::Work;
use crate::onnx::{attr, onnx_opset, ModelProto};
use crate::passes::State;
use crate::report::Report;
use crate::runtime::{InputTensor, Runner};

/// Width of the data-free ranges, in σ (int8-output.md §5: 4 to 6 is flat on EfficientNet-Lite0).
pub const DEFAULT_N_SIGMA: f32 = 4.0;

/// A per-channel Gaussian `N(mean, sigma²)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel.
    pub sigma: Vec<f32>,
}

/// What the pipeline knows about activation distributions, in the equalized model's terms.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// By layer label: the distribution of the layer's output per output channel (BN folded
    /// backward into it, then scaled by CLS and shifted by the high-bias fold).
    pub outputs: HashMap<String, Gaussian>,
    /// By tensor name: the running statistics of a BN folded forward into the layer reading it.
    pub inputs: HashMap<String, Gaussian>,
}

/// `σ = |γ|·√(var / (var + ε))`: the spread of a BN's output when its input has the running
/// variance (`|γ|` when `var + ε` is not positive).
pub fn bn_sigma(gamma: f32, var: f32, eps: f32) -> f32 {
    let v = var.max(0.0);
    if v + eps > 0.0 {
        gamma.abs() * (v / (v + eps)).sqrt()
    } else {
        gamma.abs()
    }
}

impl Origins {
    /// From the pipeline's hand-over state and report: every backward BN fold's `N(β, σ²)`
    /// divided by the layer's cumulative CLS scale and minus the bias the high-bias fold
    /// absorbed from it; every forward fold's running mean and variance.
    pub fn from_pipeline(state: &State, report: &Report) -> Origins {
        let mut outputs = HashMap::new();
        for (label, bn) in &state.bn_stats {
            let c = bn.beta.len();
            if bn.gamma.len() != c || bn.var.len() != c {
                continue;
            }
            let mut scale = vec![1f32; c];
            for p in state
                .pairs
                .iter()
                .filter(|p| &p.layer1 == label && p.scale.len() == c)
            {
                for (s, &v) in scale.iter_mut().zip(&p.scale) {
                    *s *= v;
                }
            }
            let mut absorbed = vec![0f32; c];
            for h in report
                .hbf
                .pairs
                .iter()
                .filter(|h| &h.layer1 == label && h.absorbed.len() == c)
            {
                for (a, &v) in absorbed.iter_mut().zip(&h.absorbed) {
                    *a += v;
                }
            }
            outputs.insert(
                label.clone(),
                Gaussian {
                    mean: (0..c)
                        .map(|k| bn.beta[k] / scale[k] - absorbed[k])
                        .collect(),
                    sigma: (0..c)
                        .map(|k| bn_sigma(bn.gamma[k], bn.var[k], bn.eps) / scale[k])
                        .collect(),
                },
            );
        }
        let inputs = state
            .bn_inputs
            .iter()
            .filter(|(_, s)| s.mean.len() == s.var.len())
            .map(|(t, s)| {
                (
                    t.clone(),
                    Gaussian {
                        mean: s.mean.clone(),
                        sigma: s.var.iter().map(|v| v.max(0.0).sqrt()).collect(),
                    },
                )
            })
            .collect();
        Origins { outputs, inputs }
    }
}

/// Settings of [`propagate`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatsOptions {
    /// Range width in σ.
    pub n_sigma: f32,
    /// Per-channel mean of the graph inputs (one value: every channel); `None` is 0.
    pub input_mean: Option<Vec<f32>>,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            n_sigma: DEFAULT_N_SIGMA,
            input_mean: None,
        }
    }
}

/// One tensor's channels: `X_c = clamp(Z_c, a_c, b_c)`, `Z_c ~ N(mu_c, sigma_c²)`, ranging over
/// `[lo_c, hi_c]`. Every vector has the same length; length 1 means "the same for every channel".
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// Latent mean.
    pub mu: Vec<f32>,
    /// Latent standard deviation.
    pub sigma: Vec<f32>,
    /// Lower clamp (−∞ for none).
    pub a: Vec<f32>,
    /// Upper clamp (+∞ for none).
    pub b: Vec<f32>,
    /// Data-free lower range.
    pub lo: Vec<f32>,
    /// Data-free upper range.
    pub hi: Vec<f32>,
}

fn at(v: &[f32], c: usize) -> f32 {
    if v.len() == 1 {
        v[0]
    } else {
        v[c]
    }
}

/// The common length of two channel vectors under broadcasting.
fn broadcast(n1: usize, n2: usize) -> Option<usize> {
    match (n1, n2) {
        _ if n1 == n2 => Some(n1),
        (1, n) | (n, 1) => Some(n),
        _ => None,
    }
}

fn pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Mean and variance of `clamp(N(mu, sigma²), a, b)` (`a ≤ b`; infinite bounds allowed).
pub fn clamped_moments(mu: f64, sigma: f64, a: f64, b: f64) -> (f64, f64) {
    if !(sigma > 0.0 && sigma.is_finite()) {
        return (mu.clamp(a.min(b), b.max(a)), 0.0);
    }
    if a >= b {
        return (a, 0.0);
    }
    let (pa, fa, ta) = if a.is_finite() {
        let z = (a - mu) / sigma;
        (cdf(z), pdf(z), z * pdf(z))
    } else {
        (0.0, 0.0, 0.0)
    };
    let (pb, fb, tb) = if b.is_finite() {
        let z = (b - mu) / sigma;
        (cdf(z), pdf(z), z * pdf(z))
    } else {
        (1.0, 0.0, 0.0)
    };
    let mid = pb - pa;
    let (ea, ea2) = if a.is_finite() {
        (a * pa, a * a * pa)
    } else {
        (0.0, 0.0)
    };
    let (eb, eb2) = if b.is_finite() {
        (b * (1.0 - pb), b * b * (1.0 - pb))
    } else {
        (0.0, 0.0)
    };
    let m1 = ea + eb + mu * mid + sigma * (fa - fb);
    let m2 = ea2
        + eb2
        + (mu * mu + sigma * sigma) * mid
        + 2.0 * mu * sigma * (fa - fb)
        + sigma * sigma * (ta - tb);
    (m1, (m2 - m1 * m1).max(0.0))
}

/// 16-point Gauss–Hermite nodes and weights (`∫ e^{−x²} f(x) dx ≈ Σ w_i f(x_i)`), by Newton's
/// method on the orthonormal Hermite recurrence.
pub fn gauss_hermite() -> &'static [(f64, f64)] {
    static NODES: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    NODES.get_or_init(|| {
        const N: usize = 16;
        let pim4 = std::f64::consts::PI.powf(-0.25);
        let mut x = [0f64; N];
        let mut w = [0f64; N];
        let mut z = 0f64;
        for i in 0..N.div_ceil(2) {
            z = match i {
                0 => {
                    (2.0 * N as f64 + 1.0).sqrt() - 1.85575 * (2.0 * N as f64 + 1.0).powf(-0.16667)
                }
                1 => z - 1.14 * (N as f64).powf(0.426) / z,
                2 => 1.86 * z - 0.86 * x[0],
                3 => 1.91 * z - 0.91 * x[1],
                _ => 2.0 * z - x[i - 2],
            };
            let mut pp = 1.0;
            for _ in 0..100 {
                let (mut p1, mut p2) = (pim4, 0.0);
                for j in 1..=N {
                    let p3 = p2;
                    p2 = p1;
                    let jf = j as f64;
                    p1 = z * (2.0 / jf).sqrt() * p2 - ((jf - 1.0) / jf).sqrt() * p3;
                }
                pp = (2.0 * N as f64).sqrt() * p2;
                let z1 = z;
                z = z1 - p1 / pp;
                if (z - z1).abs() <= 1e-15 {
                    break;
                }
            }
            x[i] = z;
            x[N - 1 - i] = -z;
            w[i] = 2.0 / (pp * pp);
            w[N - 1 - i] = w[i];
        }
        x.into_iter().zip(w).collect()
    })
}

impl ChannelStats {
    /// `N(mean, sigma²)` per channel, ranging over `mean ± n·sigma`.
    pub fn gaussian(mean: &[f32], sigma: &[f32], n: f32) -> ChannelStats {
        let len = mean.len();
        ChannelStats {
            mu: mean.to_vec(),
            sigma: sigma.iter().map(|s| s.abs()).collect(),
            a: vec![f32::NEG_INFINITY; len],
            b: vec![f32::INFINITY; len],
            lo: (0..len).map(|c| mean[c] - n * sigma[c].abs()).collect(),
            hi: (0..len).map(|c| mean[c] + n * sigma[c].abs()).collect(),
        }
    }

    /// A moment-matched Gaussian with the given range.
    fn matched(mean: Vec<f32>, var: &[f32], lo: Vec<f32>, hi: Vec<f32>) -> ChannelStats {
        let len = mean.len();
        ChannelStats {
            mu: mean,
            sigma: var.iter().map(|v| v.max(0.0).sqrt()).collect(),
            a: vec![f32::NEG_INFINITY; len],
            b: vec![f32::INFINITY; len],
            lo,
            hi,
        }
    }

    /// Channels (1: broadcast).
    pub fn len(&self) -> usize {
        self.mu.len()
    }

    /// Never true (a tensor has at least one channel); for clippy.
    pub fn is_empty(&self) -> bool {
        self.mu.is_empty()
    }

    fn moments(&self, c: usize) -> (f64, f64) {
        clamped_moments(
            f64::from(self.mu[c]),
            f64::from(self.sigma[c]),
            f64::from(self.a[c]),
            f64::from(self.b[c]),
        )
    }

    /// `E[X_c]`.
    pub fn mean(&self) -> Vec<f32> {
        (0..self.len()).map(|c| self.moments(c).0 as f32).collect()
    }

    /// `Var[X_c]`.
    pub fn var(&self) -> Vec<f32> {
        (0..self.len()).map(|c| self.moments(c).1 as f32).collect()
    }

    /// `clamp(X, l, h)` per channel (exact).
    fn clamp(&self, l: &[f32], h: &[f32]) -> Option<ChannelStats> {
        let n = broadcast(broadcast(self.len(), l.len())?, h.len())?;
        let mut s = self.expand_to(n)?;
        for c in 0..n {
            let (lc, hc) = (at(l, c), at(h, c));
            if lc > hc {
                return None;
            }
            s.a[c] = s.a[c].clamp(lc, hc);
            s.b[c] = s.b[c].clamp(lc, hc);
            s.lo[c] = s.lo[c].clamp(lc, hc);
            s.hi[c] = s.hi[c].clamp(lc, hc);
        }
        Some(s)
    }

    /// `k·X + d` per channel (exact).
    fn affine(&self, k: &[f32], d: &[f32]) -> Option<ChannelStats> {
        let n = broadcast(broadcast(self.len(), k.len())?, d.len())?;
        let s = self.expand_to(n)?;
        let mut out = s.clone();
        for c in 0..n {
            let (kc, dc) = (at(k, c), at(d, c));
            out.mu[c] = kc * s.mu[c] + dc;
            out.sigma[c] = kc.abs() * s.sigma[c];
            let (a, b) = (kc * s.a[c] + dc, kc * s.b[c] + dc);
            let (lo, hi) = (kc * s.lo[c] + dc, kc * s.hi[c] + dc);
            if kc == 0.0 {
                (out.a[c], out.b[c], out.lo[c], out.hi[c]) =
                    (f32::NEG_INFINITY, f32::INFINITY, dc, dc);
                out.mu[c] = dc;
            } else {
                (out.a[c], out.b[c]) = (a.min(b), a.max(b));
                (out.lo[c], out.hi[c]) = (lo.min(hi), lo.max(hi));
            }
        }
        Some(out)
    }

    /// `X ± Y` for independent tensors (`sign` = 1 or −1): means add, variances add, ranges add
    /// as intervals.
    fn combine(&self, other: &ChannelStats, sign: f32) -> Option<ChannelStats> {
        let n = broadcast(self.len(), other.len())?;
        let (m1, v1, m2, v2) = (self.mean(), self.var(), other.mean(), other.var());
        let mean = (0..n).map(|c| at(&m1, c) + sign * at(&m2, c)).collect();
        let var: Vec<f32> = (0..n).map(|c| at(&v1, c) + at(&v2, c)).collect();
        let (lo, hi) = if sign > 0.0 {
            (
                (0..n).map(|c| at(&self.lo, c) + at(&other.lo, c)).collect(),
                (0..n).map(|c| at(&self.hi, c) + at(&other.hi, c)).collect(),
            )
        } else {
            (
                (0..n).map(|c| at(&self.lo, c) - at(&other.hi, c)).collect(),
                (0..n).map(|c| at(&self.hi, c) - at(&other.lo, c)).collect(),
            )
        };
        Some(ChannelStats::matched(mean, &var, lo, hi))
    }

    /// `X·Y` for independent tensors.
    fn product(&self, other: &ChannelStats) -> Option<ChannelStats> {
        let n = broadcast(self.len(), other.len())?;
        let (m1, v1, m2, v2) = (self.mean(), self.var(), other.mean(), other.var());
        let mut mean = Vec::with_capacity(n);
        let mut var = Vec::with_capacity(n);
        let (mut lo, mut hi) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for c in 0..n {
            let (a, va, b, vb) = (at(&m1, c), at(&v1, c), at(&m2, c), at(&v2, c));
            mean.push(a * b);
            var.push((va + a * a) * (vb + b * b) - a * a * b * b);
            let corners = [
                at(&self.lo, c) * at(&other.lo, c),
                at(&self.lo, c) * at(&other.hi, c),
                at(&self.hi, c) * at(&other.lo, c),
                at(&self.hi, c) * at(&other.hi, c),
            ];
            lo.push(corners.iter().fold(f32::INFINITY, |m, &v| m.min(v)));
            hi.push(corners.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
        }
        Some(ChannelStats::matched(mean, &var, lo, hi))
    }

    /// `f(X, c)` by Gauss–Hermite over the latent Gaussian (clamped); the range is `f` sampled
    /// over `[lo, hi]`.
    fn map(&self, f: impl Fn(f64, usize) -> f64) -> ChannelStats {
        let gh = gauss_hermite();
        let norm = std::f64::consts::PI.sqrt();
        let n = self.len();
        let (mut mean, mut var) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut lo, mut hi) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for c in 0..n {
            let (mu, s) = (f64::from(self.mu[c]), f64::from(self.sigma[c]));
            let (a, b) = (f64::from(self.a[c]), f64::from(self.b[c]));
            let (mut e1, mut e2) = (0f64, 0f64);
            for &(x, w) in gh {
                let y = f((mu + std::f64::consts::SQRT_2 * s * x).clamp(a, b), c);
                e1 += w * y;
                e2 += w * y * y;
            }
            let (e1, e2) = (e1 / norm, e2 / norm);
            mean.push(e1 as f32);
            var.push((e2 - e1 * e1).max(0.0) as f32);
            let (l, h) = (f64::from(self.lo[c]), f64::from(self.hi[c]));
            if l.is_finite() && h.is_finite() {
                let (mut fl, mut fh) = (f64::INFINITY, f64::NEG_INFINITY);
                for k in 0..=64 {
                    let y = f(l + (h - l) * k as f64 / 64.0, c);
                    fl = fl.min(y);
                    fh = fh.max(y);
                }
                lo.push(fl as f32);
                hi.push(fh as f32);
            } else {
                lo.push(f32::NEG_INFINITY);
                hi.push(f32::INFINITY);
            }
        }
        ChannelStats::matched(mean, &var, lo, hi)
    }

    /// These statistics for `n` channels (a broadcast value repeated).
    fn expand_to(&self, n: usize) -> Option<ChannelStats> {
        match self.len() {
            l if l == n => Some(self.clone()),
            1 => {
                let rep = |v: &[f32]| vec![v[0]; n];
                Some(ChannelStats {
                    mu: rep(&self.mu),
                    sigma: rep(&self.sigma),
                    a: rep(&self.a),
                    b: rep(&self.b),
                    lo: rep(&self.lo),
                    hi: rep(&self.hi),
                })
            }
            _ => None,
        }
    }

    /// The range widened to contain 0 (zero padding adds zeros to the tensor).
    fn with_zero(mut self) -> ChannelStats {
        for v in &mut self.lo {
            *v = v.min(0.0);
        }
        for v in &mut self.hi {
            *v = v.max(0.0);
        }
        self
    }
}

/// `v` as seen by a layer reading `k` features: the same (`len == k`), broadcast (`len == 1`),
/// or each channel repeated `k / len` times (a `[N, C, …]` tensor flattened channel-first).
pub fn expand_channels(v: &[f32], k: usize) -> Option<Vec<f32>> {
    match v.len() {
        0 => None,
        n if n == k => Some(v.to_vec()),
        1 => Some(vec![v[0]; k]),
        n if k.is_multiple_of(n) => Some(
            v.iter()
                .flat_map(|&x| std::iter::repeat_n(x, k / n))
                .collect(),
        ),
        _ => None,
    }
}

/// The data-free statistics of every tensor of a model.
#[derive(Debug, Clone, Default)]
pub struct ActivationStats {
    tensors: HashMap<String, ChannelStats>,
    unknown: HashMap<String, String>,
}

impl ActivationStats {
    /// The statistics of `tensor`, when known.
    pub fn get(&self, tensor: &str) -> Option<&ChannelStats> {
        self.tensors.get(tensor)
    }

    /// Why `tensor` has no statistics (`None` when it has, or is not a tensor of the model).
    pub fn why_unknown(&self, tensor: &str) -> Option<&str> {
        self.unknown.get(tensor).map(String::as_str)
    }

    /// `E[x]` per channel of `tensor`.
    pub fn mean(&self, tensor: &str) -> Option<Vec<f32>> {
        self.tensors.get(tensor).map(ChannelStats::mean)
    }

    /// `E[x]` of `tensor` as a layer reading `channels` features sees it
    /// ([`expand_channels`]), or why it is unknown.
    pub fn input_mean(&self, tensor: &str, channels: usize) -> Result<Vec<f32>, String> {
        let Some(s) = self.tensors.get(tensor) else {
            return Err(self
                .why_unknown(tensor)
                .map_or_else(|| format!("no statistics for `{tensor}`"), str::to_string));
        };
        expand_channels(&s.mean(), channels).ok_or_else(|| {
            format!(
                "`{tensor}` has {} channels, the layer reads {channels}",
                s.len()
            )
        })
    }

    /// Per-channel data-free range `(lo, hi)` of `tensor`.
    pub fn channel_range(&self, tensor: &str) -> Option<(&[f32], &[f32])> {
        self.tensors
            .get(tensor)
            .map(|s| (s.lo.as_slice(), s.hi.as_slice()))
    }

    /// Per-tensor data-free ranges: `(min_c lo_c, max_c hi_c)` of every tensor whose range is
    /// known and finite (graph inputs have none unless a BN was folded forward after them).
    pub fn ranges(&self) -> HashMap<String, (f32, f32)> {
        self.tensors
            .iter()
            .filter_map(|(t, s)| {
                let lo = s.lo.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let hi = s.hi.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                (lo.is_finite() && hi.is_finite() && lo <= hi).then(|| (t.clone(), (lo, hi)))
            })
            .collect()
    }

    /// Number of tensors with statistics.
    pub fn known(&self) -> usize {
        self.tensors.len()
    }
}

/// A constant that broadcasts along the channel axis: a scalar, or a tensor with at most one
/// dimension larger than 1 (`[C]`, `[1, C, 1, 1]`…).
fn const_channels(work: &mut Work, name: &str) -> Option<Vec<f32>> {
    if name.is_empty() || !work.is_const(name) {
        return None;
    }
    if let Ok(t) = work.read(name) {
        return (t.dims.iter().filter(|&&d| d > 1).count() <= 1 && !t.data.is_empty())
            .then(|| t.data.clone());
    }
    work.const_scalar(name).map(|v| vec![v])
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn hard_sigmoid(x: f64, alpha: f64, beta: f64) -> f64 {
    (alpha * x + beta).clamp(0.0, 1.0)
}

/// Walks `work` (the equalized model; `labels` its nodes' report labels) in topological order
/// and computes the statistics of every float tensor it can.
pub fn propagate(
    work: &mut Work,
    labels: &[String],
    origins: &Origins,
    opts: &StatsOptions,
) -> ActivationStats {
    let walk = Walk {
        labels,
        origins,
        n_sigma: opts.n_sigma,
        opset: onnx_opset(work.model()).unwrap_or(13),
    };
    let n_sigma = walk.n_sigma;
    let mut st = ActivationStats::default();
    let consts: std::collections::HashSet<String> = work
        .graph()
        .initializer
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    let inputs: Vec<String> = work
        .graph()
        .input
        .iter()
        .map(|v| v.name().to_string())
        .filter(|n| !consts.contains(n) || !work.is_const(n))
        .collect();
    let mean0 = opts.input_mean.clone().unwrap_or_else(|| vec![0.0]);
    for name in inputs {
        let len = mean0.len();
        let mut s = ChannelStats::gaussian(&mean0, &vec![1.0; len], n_sigma);
        s.lo = vec![f32::NEG_INFINITY; len];
        s.hi = vec![f32::INFINITY; len];
        insert(&mut st, &name, Ok(s), &walk);
    }
    let order: Vec<usize> = work.index().topo().to_vec();
    for i in order {
        let node = work.node(i).clone();
        let Some(out) = node.output.first().filter(|o| !o.is_empty()).cloned() else {
            continue;
        };
        for extra in node.output.iter().skip(1).filter(|o| !o.is_empty()) {
            st.unknown.insert(
                extra.clone(),
                format!("secondary output of {}", node.op_type()),
            );
        }
        if node.op_type() == "Constant" {
            continue;
        }
        let result = if node.domain().is_empty() {
            node_stats(work, &st, i, &walk)
        } else {
            Err(format!(
                "{}::{} is not modelled",
                node.domain(),
                node.op_type()
            ))
        };
        insert(&mut st, &out, result, &walk);
    }
    st
}

/// What every step of [`propagate`] reads.
struct Walk<'a> {
    /// The report labels of the model's nodes.
    labels: &'a [String],
    /// The BN statistics folded into the model.
    origins: &'a Origins,
    /// Range half-width in standard deviations.
    n_sigma: f32,
    /// The model's default-domain opset.
    opset: i64,
}

fn insert(
    st: &mut ActivationStats,
    tensor: &str,
    result: Result<ChannelStats, String>,
    walk: &Walk,
) {
    let result = match (walk.origins.inputs.get(tensor), result) {
        (Some(g), r) => {
            // A BN was folded forward after this tensor: its running statistics are measured.
            let mut s = ChannelStats::gaussian(&g.mean, &g.sigma, walk.n_sigma);
            if let Ok(prev) = r {
                if prev.len() == s.len() && prev.lo.iter().chain(&prev.hi).all(|v| v.is_finite()) {
                    s.lo = prev.lo;
                    s.hi = prev.hi;
                }
            }
            Ok(s)
        }
        (None, r) => r,
    };
    match result {
        Ok(s) => {
            st.tensors.insert(tensor.to_string(), s);
        }
        Err(why) => {
            st.unknown.insert(tensor.to_string(), why);
        }
    }
}

fn data<'a>(st: &'a ActivationStats, work: &Work, name: &str) -> Result<&'a ChannelStats, String> {
    if let Some(s) = st.tensors.get(name) {
        return Ok(s);
    }
    if let Some(why) = st.unknown.get(name) {
        return Err(why.clone());
    }
    if work.is_const(name) {
        return Err(format!("`{name}` is a constant"));
    }
    Err(format!("`{name}` is not produced by the graph"))
}

fn node_stats(
    work: &mut Work,
    st: &ActivationStats,
    i: usize,
    walk: &Walk,
) -> Result<ChannelStats, String> {
    let (n_sigma, opset) = (walk.n_sigma, walk.opset);
    let node = work.node(i).clone();
    let op = node.op_type();
    let input = |k: usize| node.input.get(k).cloned().unwrap_or_default();
    let x = input(0);
    let unmodelled = || format!("{op} is not modelled");
    let fail = |what: &str| format!("{op}: {what}");
    match op {
        "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => layer_stats(work, st, i, walk),
        "Relu" => data(st, work, &x)?
            .clamp(&[0.0], &[f32::INFINITY])
            .ok_or_else(|| fail("channels")),
        "Clip" => {
            let (lo, hi) = if opset < 11 {
                (
                    attr::float(&node, "min").unwrap_or(f32::NEG_INFINITY),
                    attr::float(&node, "max").unwrap_or(f32::INFINITY),
                )
            } else {
                let bound = |k: usize, default: f32| -> Result<f32, String> {
                    let name = input(k);
                    if name.is_empty() {
                        return Ok(default);
                    }
                    work.const_scalar(&name)
                        .ok_or_else(|| fail("bound computed at run time"))
                };
                (bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?)
            };
            data(st, work, &x)?
                .clamp(&[lo], &[hi])
                .ok_or_else(|| fail("empty bounds"))
        }
        "Min" | "Max" if node.input.len() == 2 => {
            let (d, c) = match (
                const_channels(work, &input(0)),
                const_channels(work, &input(1)),
            ) {
                (None, Some(c)) => (input(0), c),
                (Some(c), None) => (input(1), c),
                _ => return Err(fail("needs one constant operand")),
            };
            let s = data(st, work, &d)?;
            let inf = vec![f32::INFINITY];
            let neg = vec![f32::NEG_INFINITY];
            if op == "Min" {
                s.clamp(&neg, &c)
            } else {
                s.clamp(&c, &inf)
            }
            .ok_or_else(|| fail("channels"))
        }
        "Add" | "Sub" | "Mul" | "Div" if node.input.len() == 2 => {
            arithmetic(work, st, op, &input(0), &input(1))
        }
        "Neg" => data(st, work, &x)?
            .affine(&[-1.0], &[0.0])
            .ok_or_else(|| fail("channels")),
        "Sigmoid" => Ok(data(st, work, &x)?.map(|v, _| sigmoid(v))),
        "Tanh" => Ok(data(st, work, &x)?.map(|v, _| v.tanh())),
        "HardSigmoid" => {
            let alpha = f64::from(attr::float(&node, "alpha").unwrap_or(0.2));
            let beta = f64::from(attr::float(&node, "beta").unwrap_or(0.5));
            Ok(data(st, work, &x)?.map(|v, _| hard_sigmoid(v, alpha, beta)))
        }
        "HardSwish" => Ok(data(st, work, &x)?.map(|v, _| v * hard_sigmoid(v, 1.0 / 6.0, 0.5))),
        "LeakyRelu" => {
            let alpha = f64::from(attr::float(&node, "alpha").unwrap_or(0.01));
            Ok(data(st, work, &x)?.map(|v, _| if v >= 0.0 { v } else { alpha * v }))
        }
        "Elu" => {
            let alpha = f64::from(attr::float(&node, "alpha").unwrap_or(1.0));
            Ok(data(st, work, &x)?.map(|v, _| if v >= 0.0 { v } else { alpha * v.exp_m1() }))
        }
        "Softplus" => Ok(data(st, work, &x)?.map(|v, _| v.exp().ln_1p())),
        "Gelu" => Ok(data(st, work, &x)?
            .map(|v, _| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)))),
        "PRelu" => {
            let slope =
                const_channels(work, &input(1)).ok_or_else(|| fail("slope not constant"))?;
            let s = data(st, work, &x)?;
            let n = broadcast(s.len(), slope.len()).ok_or_else(|| fail("channels"))?;
            let s = s.expand_to(n).ok_or_else(|| fail("channels"))?;
            Ok(s.map(|v, c| {
                if v >= 0.0 {
                    v
                } else {
                    f64::from(at(&slope, c)) * v
                }
            }))
        }
        "Pad" => Ok(data(st, work, &x)?.clone().with_zero()),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "Identity"
        | "Dropout" | "Resize" | "Upsample" | "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            Ok(data(st, work, &x)?.clone())
        }
        "Concat" => {
            if attr::int(&node, "axis") != Some(1) {
                return Err(fail("only the channel axis (1) is modelled"));
            }
            let mut parts = Vec::new();
            for t in node.input.iter().filter(|t| !t.is_empty()) {
                parts.push(data(st, work, t)?.clone());
            }
            if parts.iter().any(|p| p.len() == 1) && parts.len() > 1 {
                return Err(fail("an input's channel count is unknown"));
            }
            let cat = |f: fn(&ChannelStats) -> &Vec<f32>| -> Vec<f32> {
                parts.iter().flat_map(|p| f(p).iter().copied()).collect()
            };
            Ok(ChannelStats {
                mu: cat(|p| &p.mu),
                sigma: cat(|p| &p.sigma),
                a: cat(|p| &p.a),
                b: cat(|p| &p.b),
                lo: cat(|p| &p.lo),
                hi: cat(|p| &p.hi),
            })
        }
        "BatchNormalization" => {
            let mut v = Vec::new();
            for k in 1..5 {
                let t = input(k);
                if !work.is_const(&t) {
                    return Err(fail("parameters computed at run time"));
                }
                v.push(work.read(&t).map_err(|e| fail(&e))?.data.clone());
            }
            let eps = attr::float(&node, "epsilon").unwrap_or(1e-5);
            let c = v[0].len();
            if v.iter().any(|p| p.len() != c) {
                return Err(fail("parameter lengths differ"));
            }
            let sigma: Vec<f32> = (0..c).map(|k| bn_sigma(v[0][k], v[3][k], eps)).collect();
            Ok(ChannelStats::gaussian(&v[1], &sigma, n_sigma))
        }
        _ => Err(unmodelled()),
    }
}

fn arithmetic(
    work: &mut Work,
    st: &ActivationStats,
    op: &str,
    x0: &str,
    x1: &str,
) -> Result<ChannelStats, String> {
    let fail = |what: &str| format!("{op}: {what}");
    let (c0, c1) = (const_channels(work, x0), const_channels(work, x1));
    let (zero, one) = (vec![0.0f32], vec![1.0f32]);
    let r = match (op, c0, c1) {
        (_, Some(_), Some(_)) => return Err(fail("both operands constant")),
        ("Add", None, Some(c)) => data(st, work, x0)?.affine(&one, &c),
        ("Add", Some(c), None) => data(st, work, x1)?.affine(&one, &c),
        ("Sub", None, Some(c)) => {
            let neg: Vec<f32> = c.iter().map(|v| -v).collect();
            data(st, work, x0)?.affine(&one, &neg)
        }
        ("Sub", Some(c), None) => data(st, work, x1)?.affine(&[-1.0], &c),
        ("Mul", None, Some(k)) => data(st, work, x0)?.affine(&k, &zero),
        ("Mul", Some(k), None) => data(st, work, x1)?.affine(&k, &zero),
        ("Div", None, Some(k)) => {
            if k.contains(&0.0) {
                return Err(fail("division by zero"));
            }
            let inv: Vec<f32> = k.iter().map(|v| 1.0 / v).collect();
            data(st, work, x0)?.affine(&inv, &zero)
        }
        ("Add", None, None) => data(st, work, x0)?.combine(data(st, work, x1)?, 1.0),
        ("Sub", None, None) => data(st, work, x0)?.combine(data(st, work, x1)?, -1.0),
        ("Mul", None, None) => {
            if let Some(s) = gated(work, st, x0, x1).or_else(|| gated(work, st, x1, x0)) {
                return Ok(s);
            }
            data(st, work, x0)?.product(data(st, work, x1)?)
        }
        _ => return Err(fail("not modelled with these operands")),
    };
    r.ok_or_else(|| fail("channel counts do not broadcast"))
}

/// `x · g(x)` with `g` a Sigmoid or HardSigmoid of the same `x`: SiLU / Swish / HardSwish.
fn gated(work: &Work, st: &ActivationStats, x: &str, gate: &str) -> Option<ChannelStats> {
    let p = work.index().producer(gate)?;
    let g = work.node(p);
    if g.input.first().map(String::as_str) != Some(x) || !g.domain().is_empty() {
        return None;
    }
    let s = st.tensors.get(x)?;
    match g.op_type() {
        "Sigmoid" => Some(s.map(|v, _| v * sigmoid(v))),
        "HardSigmoid" => {
            let alpha = f64::from(attr::float(g, "alpha").unwrap_or(0.2));
            let beta = f64::from(attr::float(g, "beta").unwrap_or(0.5));
            Some(s.map(|v, _| v * hard_sigmoid(v, alpha, beta)))
        }
        _ => None,
    }
}

/// A layer's output: the BN-derived Gaussian when a BN was folded into it, else
/// `W·E[x] + b` with `Var = Σ W²·Var[x]` (inputs independent).
fn layer_stats(
    work: &mut Work,
    st: &ActivationStats,
    i: usize,
    walk: &Walk,
) -> Result<ChannelStats, String> {
    let (labels, origins, n_sigma) = (walk.labels, walk.origins, walk.n_sigma);
    let op = work.node(i).op_type().to_string();
    let l = layer_of(work, i).map_err(|(code, detail)| format!("{op}: {code} {detail}"))?;
    let out_ch = l.layout.out_channels();
    let label = labels
        .get(i)
        .cloned()
        .unwrap_or_else(|| work.label(i).to_string());
    if let Some(g) = origins
        .outputs
        .get(&label)
        .filter(|g| g.mean.len() == out_ch)
    {
        let s = ChannelStats::gaussian(&g.mean, &g.sigma, n_sigma);
        if l.layout.op == LayerOp::MatMul {
            // The BN became `Add(bias)` after the MatMul: the distribution is the Add's output.
            if let Some(bias) = matmul_bias_after(work, i) {
                let neg: Vec<f32> = bias.iter().map(|v| -v).collect();
                return s
                    .affine(&[1.0], &neg)
                    .ok_or_else(|| format!("{op}: bias channels"));
            }
        }
        return Ok(s);
    }
    let x = data(st, work, work.input(i, 0))?.clone();
    let k = l.layout.in_channels();
    let m = expand_channels(&x.mean(), k)
        .ok_or_else(|| format!("{op}: input has {} channels, the layer reads {k}", x.len()))?;
    let v = expand_channels(&x.var(), k).unwrap_or_else(|| vec![0.0; k]);
    let per_output = taps_per_output(work, i, &l.layout.op);
    let (alpha, beta) = match l.layout.op {
        LayerOp::Gemm { .. } => {
            let n = work.node(i);
            (
                attr::float(n, "alpha").unwrap_or(1.0),
                attr::float(n, "beta").unwrap_or(1.0),
            )
        }
        _ => (1.0, 1.0),
    };
    let w = work.read(&l.weight).map_err(|e| format!("{op}: {e}"))?;
    let mut mean = l.layout.kernel_sum_times(&w.data, &m);
    let sq: Vec<f32> = w.data.iter().map(|x| x * x).collect();
    let mut var = l.layout.kernel_sum_times(&sq, &v);
    for (mo, vo) in mean.iter_mut().zip(var.iter_mut()) {
        *mo *= alpha * per_output;
        *vo *= alpha * alpha * per_output;
    }
    if let Some(b) = &l.bias {
        let b = work.read(b).map_err(|e| format!("{op}: {e}"))?;
        for (mo, bv) in mean.iter_mut().zip(&b.data) {
            *mo += beta * bv;
        }
    }
    let sigma: Vec<f32> = var.iter().map(|v| v.max(0.0).sqrt()).collect();
    Ok(ChannelStats::gaussian(&mean, &sigma, n_sigma))
}

/// The average fraction of a ConvTranspose kernel that reaches one output position
/// (`1 / Π strides`); 1 for every other layer.
pub fn taps_per_output(work: &Work, i: usize, op: &LayerOp) -> f32 {
    if *op != LayerOp::ConvTranspose {
        return 1.0;
    }
    let strides = attr::ints(work.node(i), "strides").map(<[i64]>::to_vec);
    let p: i64 = strides.unwrap_or_default().iter().product::<i64>().max(1);
    1.0 / p as f32
}

/// The constant of the `Add` right after MatMul node `i` (its only use), when there is one.
pub fn matmul_bias_after(work: &mut Work, i: usize) -> Option<Vec<f32>> {
    let c = work.sole_consumer(i)?;
    let n = work.node(c);
    if n.op_type() != "Add" || !n.domain().is_empty() || n.input.len() != 2 {
        return None;
    }
    let out = work.out(i).to_string();
    let other = if n.input[0] == out {
        n.input[1].clone()
    } else {
        n.input[0].clone()
    };
    const_channels(work, &other)
}

/// Where the channels of a layer input lie in its flat per-sample values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// `[1, C, …]` (Conv, ConvTranspose, Gemm).
    Second,
    /// `[…, C]` (MatMul).
    Last,
}

impl ChannelAxis {
    /// The axis a layer op reads its input channels on.
    pub fn of(op: &LayerOp) -> ChannelAxis {
        match op {
            LayerOp::MatMul => ChannelAxis::Last,
            _ => ChannelAxis::Second,
        }
    }
}

/// Per-channel means of `tensors` (`(name, channels, axis)`) measured by running `model` on
/// `samples` with tract (every element of every sample weighs the same).
pub fn measure_means(
    model: &ModelProto,
    tensors: &[(String, usize, ChannelAxis)],
    samples: &[Vec<InputTensor>],
) -> Result<HashMap<String, Vec<f32>>, String> {
    let names: Vec<String> = tensors.iter().map(|t| t.0.clone()).collect();
    let probe = crate::quant::with_extra_outputs(model, &names);
    let bytes = crate::onnx::encode(&probe);
    let runner = Runner::new(&bytes, samples.first().ok_or("no samples")?)?;
    let want: HashMap<&str, (usize, ChannelAxis)> = tensors
        .iter()
        .map(|(n, c, a)| (n.as_str(), (*c, *a)))
        .collect();
    let mut sums: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for s in samples {
        for (name, values, _) in runner.run_typed(s)? {
            let Some(&(c, axis)) = want.get(name.as_str()) else {
                continue;
            };
            if c == 0 || values.len() % c != 0 {
                continue;
            }
            let inner = values.len() / c;
            let e = sums
                .entry(name)
                .or_insert_with(|| (vec![0.0; c], vec![0.0; c]));
            for (j, v) in values.iter().enumerate() {
                let ch = match axis {
                    ChannelAxis::Second => j / inner,
                    ChannelAxis::Last => j % c,
                };
                e.0[ch] += f64::from(*v);
                e.1[ch] += 1.0;
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|(k, (s, n))| {
            (
                k,
                s.iter()
                    .zip(&n)
                    .map(|(s, n)| if *n > 0.0 { (s / n) as f32 } else { 0.0 })
                    .collect(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_hermite_integrates_moments() {
        let gh = gauss_hermite();
        assert_eq!(gh.len(), 16);
        let pi = std::f64::consts::PI;
        let w: f64 = gh.iter().map(|p| p.1).sum();
        assert!((w - pi.sqrt()).abs() < 1e-12, "{w}");
        let x2: f64 = gh.iter().map(|p| p.1 * p.0 * p.0).sum();
        assert!((x2 - pi.sqrt() / 2.0).abs() < 1e-12, "{x2}");
    }

    /// The closed forms against a fine numerical integration of the clamped density.
    #[test]
    fn clamped_moments_match_numerical_integration() {
        for &(mu, s, a, b) in &[
            (0.3, 1.2, 0.0, f64::INFINITY),
            (-1.0, 0.5, 0.0, 6.0),
            (4.0, 2.0, 0.0, 6.0),
            (0.0, 1.0, f64::NEG_INFINITY, f64::INFINITY),
            (2.0, 0.1, 0.0, 1.5),
        ] {
            let (m, v) = clamped_moments(mu, s, a, b);
            let (mut e1, mut e2) = (0.0, 0.0);
            let steps = 200_000;
            let (lo, hi) = (mu - 12.0 * s, mu + 12.0 * s);
            let dx = (hi - lo) / steps as f64;
            for k in 0..steps {
                let z = lo + (k as f64 + 0.5) * dx;
                let p = pdf((z - mu) / s) / s * dx;
                let x = z.clamp(a, b);
                e1 += x * p;
                e2 += x * x * p;
            }
            assert!((m - e1).abs() < 1e-6, "{mu} {s} {a} {b}: {m} vs {e1}");
            assert!((v - (e2 - e1 * e1)).abs() < 1e-5, "{mu} {s} {a} {b}: {v}");
        }
    }

    #[test]
    fn relu_mean_is_the_dfq_closed_form() {
        let s = ChannelStats::gaussian(&[0.5], &[2.0], 4.0);
        let r = s.clamp(&[0.0], &[f32::INFINITY]).unwrap();
        let (b, g) = (0.5f64, 2.0f64);
        let expect = b * (1.0 - cdf(-b / g)) + g * pdf(-b / g);
        assert!((f64::from(r.mean()[0]) - expect).abs() < 1e-6);
        assert_eq!(r.lo[0], 0.0);
        assert_eq!(r.hi[0], 8.5);
    }

    #[test]
    fn silu_by_gauss_hermite() {
        let s = ChannelStats::gaussian(&[0.7], &[1.3], 4.0);
        let m = s.map(|v, _| v * sigmoid(v)).mean()[0];
        let (mut e, steps) = (0.0, 100_000);
        for k in 0..steps {
            let z = -12.0 + 24.0 * (k as f64 + 0.5) / steps as f64;
            let x = 0.7 + 1.3 * z;
            e += x * sigmoid(x) * pdf(z) * 24.0 / steps as f64;
        }
        assert!((f64::from(m) - e).abs() < 1e-4, "{m} vs {e}");
    }

    #[test]
    fn expansion_repeats_channels_in_flatten_order() {
        assert_eq!(
            expand_channels(&[1.0, 2.0], 6),
            Some(vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
        );
        assert_eq!(expand_channels(&[3.0], 2), Some(vec![3.0, 3.0]));
        assert_eq!(expand_channels(&[1.0, 2.0], 3), None);
    }
}
