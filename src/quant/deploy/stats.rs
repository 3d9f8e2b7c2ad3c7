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
//! upper bound); after any other op the channel is a moment-matched Gaussian. SiLU / Swish,
//! HardSwish, Sigmoid, HardSigmoid, Tanh, GELU, ELU, LeakyRelu, PRelu, Erf, Sqrt, Exp are
//! integrated by a 16-point Gauss–Hermite sum (their range: the function sampled over the
//! input's). A tensor computed elementwise from one root tensor (`x · Clip(x + 3, 0, 6) / 6`,
//! `x · Sigmoid(x)`, `x · 0.5 · (1 + Erf(x/√2))`) is integrated over the root's distribution as
//! one function, never as a product of independent tensors.
//!
//! Linear ops (layers without BN statistics: `W·E[x] + b`, ignoring zero padding at the
//! borders): **the mean is exact**; **the variance assumes the layer's inputs independent**
//! (`Var = Σ W²·Var[x]`, also for `Add` / `Sub` of two tensors and products). Natural images
//! and the channels of a trained network are correlated, so the spread of a BN-free layer is
//! an estimate (tests/data_free_ranges.rs measures how far off on random models). Means are
//! exact through constant scaling and shifts, `Concat` on the channel axis, `Pad`, average
//! pooling, `Flatten` / `Reshape` (a layer reading `K = C·r` features of a `C`-channel tensor
//! sees each channel repeated `r` times, NCHW order). A standalone BatchNormalization gives
//! `N(β, σ²)` from its own statistics; a BN folded forward into the next layer gives that
//! layer's input its running mean and variance.
//!
//! Where the channel axis is lost (`Transpose` moving axis 1, `Reshape` to another channel
//! count, `Slice`, `Gather`, `ReduceMean`, `Concat` off axis 1) the tensor becomes one mixture
//! channel (mean of the means, the mixture's variance, the hull of the ranges). `Softmax` gives
//! `[0, 1]`; attention `MatMul(Softmax, V)` the hull of `V`; a decomposed LayerNorm's
//! `(x − mean) / Sqrt(var + ε)` the standard normal (per token); `LayerNormalization`
//! `N(β, γ²)`. `MaxPool` keeps the range.
//!
//! Input model: graph inputs have the declared mean (`input_mean`; else 0, or the middle of a
//! declared range that does not contain 0). With a declared `input_range` every element is
//! uniform on it (σ = (hi − lo)/√12, range `[lo, hi]`): BN-free models then get ranges at every
//! layer. Without it, unit variance and no range at the inputs.
//!
//! [`Basis`]: what each tensor's mean rests on. BN statistics give the whole distribution (also
//! the sum of two such tensors, a residual `Add`, branches taken as independent); layers
//! without BN statistics keep the mean exact but the spread becomes the independence assumption's; a
//! nonlinearity of such a tensor, a product of two tensors, a mixture, a Softmax, attention or
//! a LayerNorm leave only an assumed mean. Bias correction uses only modelled means
//! ([`ActivationStats::input_mean`]); ranges use all.
//!
//! Ranges: a channel ranges over `[μ − nσ, μ + nσ]` (`n` = [`DEFAULT_N_SIGMA`], with BN
//! statistics after the scaling, so divided by `s_c`), clamps cut the range, intervals add at
//! `Add`; the per-tensor range is the min / max over channels ([`ActivationStats::ranges`]).
//! These are quantization ranges, not bounds: the extremes of a large tensor pass 4σ.
//!
//! Whatever is not modelled (a non-constant `Min`, `Pow`, a `MatMul` of two activations that is
//! not attention…) leaves its output unknown, with the reason ([`ActivationStats::why_unknown`]);
//! everything downstream of it too.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

use crate::graph::layer_of;
use crate::graph::layout::LayerOp;
use crate::graph::work::Work;
use crate::onnx::{attr, onnx_opset, ModelProto, NodeProto};
use crate::passes::State;
use crate::report::Report;
use crate::runtime::{InputTensor, Runner};

/// Width of the data-free ranges, in σ (int8-output.md §5: 4 to 6 is flat on EfficientNet-Lite0).
pub const DEFAULT_N_SIGMA: f32 = crate::passes::noise::N_SIGMA;

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
    /// By tensor name: the running statistics of a standalone BN reading it (one the int8
    /// outputs keep unfolded): its distribution and range, whatever the graph above predicts.
    pub normalized: HashMap<String, Gaussian>,
}

pub use crate::passes::noise::bn_sigma;

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
        // Running statistics by tensor name, as Gaussians.
        let gaussians = |m: &HashMap<String, crate::passes::BnInputStats>| {
            m.iter()
                .filter(|(_, s)| s.mean.len() == s.var.len())
                .map(|(t, s)| {
                    let sigma = s.var.iter().map(|v| v.max(0.0).sqrt()).collect();
                    let g = Gaussian {
                        mean: s.mean.clone(),
                        sigma,
                    };
                    (t.clone(), g)
                })
                .collect()
        };
        Origins {
            outputs,
            inputs: gaussians(&state.bn_inputs),
            normalized: gaussians(&state.bn_kept),
        }
    }
}

/// Settings of [`propagate`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatsOptions {
    /// Range width in σ.
    pub n_sigma: f32,
    /// Per-channel mean of the graph inputs (one value: every channel); `None` is 0, or the
    /// middle of `input_range` when that is given.
    pub input_mean: Option<Vec<f32>>,
    /// The declared `[lo, hi]` of every graph input element: the input model is then uniform on
    /// it (σ = (hi − lo)/√12) with that range; without it, unit variance and no range.
    pub input_range: Option<[f32; 2]>,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            n_sigma: DEFAULT_N_SIGMA,
            input_mean: None,
            input_range: None,
        }
    }
}

/// What a tensor's statistics rest on: how far its per-channel mean can be trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    /// Mean and spread per channel follow from BatchNorm running statistics (through exact
    /// ops, and sums of two such tensors taken as independent, as a residual `Add`): a
    /// nonlinearity's mean can be integrated.
    Distribution,
    /// The mean per channel is exact (linear ops from measured or declared means); the spread
    /// rests on the independence assumption.
    Mean,
    /// The mean itself rests on an assumption (which one, and where).
    Assumed(String),
}

impl Basis {
    /// After a layer without BN statistics (its mean exact given its input's mean).
    fn linear(&self) -> Basis {
        match self {
            Basis::Distribution | Basis::Mean => Basis::Mean,
            a => a.clone(),
        }
    }

    /// After a nonlinearity (its mean needs the input's whole distribution).
    fn nonlinear(&self, what: &str) -> Basis {
        match self {
            Basis::Mean => Basis::Assumed(format!(
                "{what} of a tensor without BatchNorm statistics (its spread is the independence \
                 assumption's)"
            )),
            b => b.clone(),
        }
    }

    /// The weaker of two.
    fn meet(&self, other: &Basis) -> Basis {
        match (self, other) {
            (Basis::Assumed(_), _) => self.clone(),
            (_, Basis::Assumed(_)) => other.clone(),
            (Basis::Distribution, Basis::Distribution) => Basis::Distribution,
            _ => Basis::Mean,
        }
    }

    /// Whether the per-channel mean is modelled (not an assumption).
    pub fn mean_modelled(&self) -> bool {
        !matches!(self, Basis::Assumed(_))
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
    /// What the statistics rest on.
    pub basis: Basis,
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

pub use crate::passes::noise::clamped_moments;

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
            basis: Basis::Distribution,
        }
    }

    /// A moment-matched Gaussian with the given range.
    fn matched(
        mean: Vec<f32>,
        var: &[f32],
        (lo, hi): (Vec<f32>, Vec<f32>),
        basis: Basis,
    ) -> ChannelStats {
        let len = mean.len();
        ChannelStats {
            mu: mean,
            sigma: var.iter().map(|v| v.max(0.0).sqrt()).collect(),
            a: vec![f32::NEG_INFINITY; len],
            b: vec![f32::INFINITY; len],
            lo,
            hi,
            basis,
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
        Some(ChannelStats::matched(
            mean,
            &var,
            (lo, hi),
            self.basis.meet(&other.basis),
        ))
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
        let basis = match self.basis.meet(&other.basis) {
            Basis::Assumed(why) => Basis::Assumed(why),
            _ => Basis::Assumed("a product of two activations (assumed independent)".into()),
        };
        Some(ChannelStats::matched(mean, &var, (lo, hi), basis))
    }

    /// `f(X, c)` by Gauss–Hermite over the latent Gaussian (clamped); the range is `f` sampled
    /// over `[lo, hi]`.
    fn map(&self, what: &str, f: impl Fn(f64, usize) -> f64) -> ChannelStats {
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
        ChannelStats::matched(mean, &var, (lo, hi), self.basis.nonlinear(what))
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
                    basis: self.basis.clone(),
                })
            }
            _ => None,
        }
    }

    /// One channel for the whole tensor: the mixture of the channels (mean of the means, the
    /// mixture's variance, the hull of the ranges); its mean no longer describes any channel.
    fn mixed(&self, why: &str) -> ChannelStats {
        let (m, v) = (self.mean(), self.var());
        let n = m.len().max(1) as f64;
        let avg = m.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = m
            .iter()
            .zip(&v)
            .map(|(&x, &y)| f64::from(y) + (f64::from(x) - avg).powi(2))
            .sum::<f64>()
            / n;
        let lo = self.lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let hi = self.hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let basis = match &self.basis {
            Basis::Assumed(w) => Basis::Assumed(w.clone()),
            _ if self.len() == 1 => self.basis.clone(),
            _ => Basis::Assumed(format!("{why}: channels mixed")),
        };
        ChannelStats::matched(vec![avg as f32], &[var as f32], (vec![lo], vec![hi]), basis)
    }

    /// The mixture of two one-channel statistics (equal weights) with the hull of the ranges.
    fn union(&self, other: &ChannelStats) -> ChannelStats {
        let (a, b) = (self.mixed("union"), other.mixed("union"));
        let (ma, mb) = (f64::from(a.mean()[0]), f64::from(b.mean()[0]));
        let (va, vb) = (f64::from(a.var()[0]), f64::from(b.var()[0]));
        let m = (ma + mb) / 2.0;
        let v = (va + vb) / 2.0 + ((ma - m).powi(2) + (mb - m).powi(2)) / 2.0;
        ChannelStats::matched(
            vec![m as f32],
            &[v as f32],
            (vec![a.lo[0].min(b.lo[0])], vec![a.hi[0].max(b.hi[0])]),
            a.basis.meet(&b.basis),
        )
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
    /// ([`expand_channels`]), or why it is unknown or not modelled ([`Basis::Assumed`]: a bias
    /// correction on it could do harm).
    pub fn input_mean(&self, tensor: &str, channels: usize) -> Result<Vec<f32>, String> {
        let Some(s) = self.tensors.get(tensor) else {
            return Err(self
                .why_unknown(tensor)
                .map_or_else(|| format!("no statistics for `{tensor}`"), str::to_string));
        };
        if let Basis::Assumed(why) = &s.basis {
            return Err(format!("its mean is not modelled: {why}"));
        }
        expand_channels(&s.mean(), channels).ok_or_else(|| {
            format!(
                "`{tensor}` has {} channels, the layer reads {channels}",
                s.len()
            )
        })
    }

    /// What the statistics of `tensor` rest on.
    pub fn basis(&self, tensor: &str) -> Option<&Basis> {
        self.tensors.get(tensor).map(|s| &s.basis)
    }

    /// Number of tensors whose per-channel mean is modelled (not [`Basis::Assumed`]).
    pub fn mean_modelled(&self) -> usize {
        self.tensors
            .values()
            .filter(|s| s.basis.mean_modelled())
            .count()
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
    // A range around 0 is normalized data (mean about 0); else pixels scaled to [0, 1] or
    // [0, 255], whose mean is about the middle.
    let mid = opts.input_range.map(|[lo, hi]| {
        if lo < 0.0 && hi > 0.0 {
            0.0
        } else {
            (lo + hi) / 2.0
        }
    });
    let mean0 = opts
        .input_mean
        .clone()
        .unwrap_or_else(|| vec![mid.unwrap_or(0.0)]);
    for name in inputs {
        let len = mean0.len();
        let s = match opts.input_range {
            Some([lo, hi]) => {
                let sd = (hi - lo) / 12f32.sqrt();
                let mut s = ChannelStats::gaussian(&mean0, &vec![sd; len], n_sigma);
                s.lo = vec![lo; len];
                s.hi = vec![hi; len];
                s
            }
            None => {
                let mut s = ChannelStats::gaussian(&mean0, &vec![1.0; len], n_sigma);
                s.lo = vec![f32::NEG_INFINITY; len];
                s.hi = vec![f32::INFINITY; len];
                s
            }
        };
        // The declared mean is taken as given; the spread is the input model's.
        let s = ChannelStats {
            basis: Basis::Mean,
            ..s
        };
        insert(&mut st, &name, Ok(s), &walk);
    }
    let mut chains = Chains::default();
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
            node_stats(work, &st, &mut chains, i, &walk)
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
    if let Some(g) = walk.origins.normalized.get(tensor) {
        let s = ChannelStats::gaussian(&g.mean, &g.sigma, walk.n_sigma);
        st.tensors.insert(tensor.to_string(), s);
        return;
    }
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

/// An elementwise function of a root tensor's values (per channel).
type ElemFn = Rc<dyn Fn(f64, usize) -> f64>;

/// Tensors that are elementwise functions of another tensor (`root`, `f`): `x · f(x)` (SiLU,
/// decomposed HardSwish, GELU…) is then integrated over the root's distribution instead of
/// treated as a product of independent tensors.
#[derive(Default)]
struct Chains(HashMap<String, (String, ElemFn, usize)>);

/// Longest chain followed (steps from the root).
const MAX_CHAIN: usize = 12;

impl Chains {
    /// `(root, f)` of `t` (`t` itself and the identity when it has no chain).
    fn of(&self, t: &str) -> (String, ElemFn) {
        match self.0.get(t) {
            Some((r, f, _)) => (r.clone(), f.clone()),
            None => (t.to_string(), Rc::new(|v, _| v)),
        }
    }

    fn extend(&mut self, out: &str, x: &str, g: ElemFn) {
        let depth = self.0.get(x).map_or(0, |c| c.2) + 1;
        if depth > MAX_CHAIN {
            return;
        }
        let (root, f) = self.of(x);
        self.0.insert(
            out.to_string(),
            (root, Rc::new(move |v, c| g(f(v, c), c)), depth),
        );
    }
}

/// The elementwise function node `node` computes of its data input `x` (the others constant),
/// with its name; `None` for other ops.
fn unary_fn(work: &mut Work, node: &NodeProto, opset: i64) -> Option<(String, ElemFn)> {
    let op = node.op_type();
    let input = |k: usize| node.input.get(k).cloned().unwrap_or_default();
    let f: ElemFn = match op {
        "Relu" => Rc::new(|v, _| v.max(0.0)),
        "Identity" | "Dropout" => Rc::new(|v, _| v),
        "Neg" => Rc::new(|v, _| -v),
        "Sigmoid" => Rc::new(|v, _| sigmoid(v)),
        "Tanh" => Rc::new(|v, _| v.tanh()),
        "Erf" => Rc::new(|v, _| libm::erf(v)),
        "Sqrt" => Rc::new(|v, _| v.max(0.0).sqrt()),
        "Abs" => Rc::new(|v, _| v.abs()),
        "Exp" => Rc::new(|v, _| v.exp()),
        "Softplus" => Rc::new(|v, _| v.exp().ln_1p()),
        "Gelu" => Rc::new(|v, _| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))),
        "HardSigmoid" => {
            let alpha = f64::from(attr::float(node, "alpha").unwrap_or(0.2));
            let beta = f64::from(attr::float(node, "beta").unwrap_or(0.5));
            Rc::new(move |v, _| hard_sigmoid(v, alpha, beta))
        }
        "HardSwish" => Rc::new(|v, _| v * hard_sigmoid(v, 1.0 / 6.0, 0.5)),
        "LeakyRelu" => {
            let alpha = f64::from(attr::float(node, "alpha").unwrap_or(0.01));
            Rc::new(move |v, _| if v >= 0.0 { v } else { alpha * v })
        }
        "Elu" => {
            let alpha = f64::from(attr::float(node, "alpha").unwrap_or(1.0));
            Rc::new(move |v, _| if v >= 0.0 { v } else { alpha * v.exp_m1() })
        }
        "PRelu" => {
            let slope = const_channels(work, &input(1))?;
            Rc::new(move |v, c| {
                if v >= 0.0 {
                    v
                } else {
                    f64::from(at(&slope, c.min(slope.len() - 1))) * v
                }
            })
        }
        "Clip" => {
            let (lo, hi) = clip_bounds(work, node, opset)?;
            let (lo, hi) = (f64::from(lo), f64::from(hi));
            Rc::new(move |v, _| v.clamp(lo, hi))
        }
        "Add" | "Sub" | "Mul" | "Div" | "Min" | "Max" | "Pow" if node.input.len() == 2 => {
            let (c0, c1) = (
                const_channels(work, &input(0)),
                const_channels(work, &input(1)),
            );
            let (k, data_first) = match (c0, c1) {
                (None, Some(k)) => (k, true),
                (Some(k), None) => (k, false),
                _ => return None,
            };
            let kc = move |c: usize| f64::from(at(&k, c.min(k.len() - 1)));
            match (op, data_first) {
                ("Add", _) => Rc::new(move |v, c| v + kc(c)),
                ("Sub", true) => Rc::new(move |v, c| v - kc(c)),
                ("Sub", false) => Rc::new(move |v, c| kc(c) - v),
                ("Mul", _) => Rc::new(move |v, c| v * kc(c)),
                ("Div", true) => Rc::new(move |v, c| v / kc(c)),
                ("Min", _) => Rc::new(move |v, c| v.min(kc(c))),
                ("Max", _) => Rc::new(move |v, c| v.max(kc(c))),
                ("Pow", true) => Rc::new(move |v, c| v.powf(kc(c))),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some((op.to_string(), f))
}

/// Constant bounds of a Clip node (absent = unbounded); `None` when one is computed.
fn clip_bounds(work: &Work, node: &NodeProto, opset: i64) -> Option<(f32, f32)> {
    if opset < 11 {
        return Some((
            attr::float(node, "min").unwrap_or(f32::NEG_INFINITY),
            attr::float(node, "max").unwrap_or(f32::INFINITY),
        ));
    }
    let bound = |k: usize, default: f32| -> Option<f32> {
        match node.input.get(k).map(String::as_str) {
            None | Some("") => Some(default),
            Some(name) => work.const_scalar(name),
        }
    };
    Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?))
}

/// The data inputs of a node (not constants, not empty).
fn data_inputs(work: &Work, node: &NodeProto) -> Vec<String> {
    node.input
        .iter()
        .filter(|t| !t.is_empty() && !work.is_const(t))
        .cloned()
        .collect()
}

/// The statistics of node `i`'s output, with their [`Basis`]; records elementwise chains.
fn node_stats(
    work: &mut Work,
    st: &ActivationStats,
    chains: &mut Chains,
    i: usize,
    walk: &Walk,
) -> Result<ChannelStats, String> {
    let node = work.node(i).clone();
    let op = node.op_type().to_string();
    let out = node.output.first().cloned().unwrap_or_default();
    let unary = unary_fn(work, &node, walk.opset);
    let ins = data_inputs(work, &node);
    if let (Some((_, f)), [x]) = (&unary, ins.as_slice()) {
        if st.tensors.contains_key(x) {
            chains.extend(&out, x, f.clone());
        }
    }
    // Two data operands that are elementwise functions of one root: integrate over the root.
    if matches!(op.as_str(), "Mul" | "Add" | "Sub" | "Div")
        && ins.len() == 2
        && node.input.len() == 2
    {
        let ((r0, f0), (r1, f1)) = (chains.of(&ins[0]), chains.of(&ins[1]));
        if r0 == r1 {
            if let Some(root) = st.tensors.get(&r0) {
                let g: ElemFn = match op.as_str() {
                    "Mul" => Rc::new(move |v, c| f0(v, c) * f1(v, c)),
                    "Add" => Rc::new(move |v, c| f0(v, c) + f1(v, c)),
                    "Sub" => Rc::new(move |v, c| f0(v, c) - f1(v, c)),
                    _ => Rc::new(move |v, c| f0(v, c) / f1(v, c)),
                };
                let s = root.map(&format!("{op} of two functions of one tensor"), |v, c| {
                    g(v, c)
                });
                if chains.0.get(&r0).is_none_or(|c| c.2 < MAX_CHAIN) {
                    chains.0.insert(out.clone(), (r0.clone(), g, 1));
                }
                return Ok(s);
            }
        }
    }
    let s = node_stats_by_op(work, st, i, walk)?;
    Ok(s)
}

fn node_stats_by_op(
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
    let nonlinear = |s: ChannelStats| ChannelStats {
        basis: s.basis.nonlinear(op),
        ..s
    };
    match op {
        "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => layer_stats(work, st, i, walk),
        "Relu" => data(st, work, &x)?
            .clamp(&[0.0], &[f32::INFINITY])
            .map(nonlinear)
            .ok_or_else(|| fail("channels")),
        "Clip" => {
            let (lo, hi) = clip_bounds(work, &node, opset)
                .ok_or_else(|| fail("bound computed at run time"))?;
            data(st, work, &x)?
                .clamp(&[lo], &[hi])
                .map(nonlinear)
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
            .map(nonlinear)
            .ok_or_else(|| fail("channels"))
        }
        "Add" | "Sub" | "Mul" | "Div" if node.input.len() == 2 => {
            arithmetic(work, st, op, &input(0), &input(1))
        }
        "Neg" => data(st, work, &x)?
            .affine(&[-1.0], &[0.0])
            .ok_or_else(|| fail("channels")),
        "Sigmoid" | "Tanh" | "HardSigmoid" | "HardSwish" | "LeakyRelu" | "Elu" | "Softplus"
        | "Gelu" | "PRelu" | "Erf" | "Sqrt" | "Abs" | "Exp" => {
            let (_, f) = unary_fn(work, &node, opset).ok_or_else(|| fail("slope not constant"))?;
            let s = data(st, work, &x)?;
            let n = match op {
                "PRelu" => {
                    let slope = const_channels(work, &input(1))
                        .ok_or_else(|| fail("slope not constant"))?;
                    broadcast(s.len(), slope.len()).ok_or_else(|| fail("channels"))?
                }
                _ => s.len(),
            };
            let s = s.expand_to(n).ok_or_else(|| fail("channels"))?;
            Ok(s.map(op, |v, c| f(v, c)))
        }
        "Pad" => Ok(data(st, work, &x)?.clone().with_zero()),
        "MaxPool" | "GlobalMaxPool" => {
            let s = data(st, work, &x)?.clone();
            Ok(ChannelStats {
                basis: match s.basis {
                    Basis::Assumed(w) => Basis::Assumed(w),
                    _ => Basis::Assumed(format!("{op}: the mean of a window maximum")),
                },
                ..s
            })
        }
        "AveragePool" | "GlobalAveragePool" | "Identity" | "Dropout" | "Resize" | "Upsample"
        | "Flatten" | "Squeeze" | "Unsqueeze" => Ok(data(st, work, &x)?.clone()),
        "Reshape" => reshape(work, st, &node),
        "Transpose" => {
            let s = data(st, work, &x)?;
            let perm = attr::ints(&node, "perm").map(<[i64]>::to_vec);
            match perm {
                Some(p) if p.get(1) == Some(&1) || s.len() == 1 => Ok(s.clone()),
                _ => Ok(s.mixed(&format!("{op} moved the channel axis"))),
            }
        }
        "Softmax" => {
            // Whatever its input: values in [0, 1]; the mean (1 / axis length) is not known.
            let mut s = ChannelStats::gaussian(&[0.5], &[0.5 / 3f32.sqrt()], n_sigma);
            (s.lo, s.hi) = (vec![0.0], vec![1.0]);
            s.basis = Basis::Assumed("Softmax (its mean depends on the axis length)".into());
            Ok(s)
        }
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "Slice" | "Gather" | "Expand" | "Tile" => {
            // Values (or means of values) of the input: its hull bounds them.
            Ok(data(st, work, &x)?.mixed(op))
        }
        "Concat" => {
            if attr::int(&node, "axis") != Some(1) {
                let mut parts = Vec::new();
                for t in node.input.iter().filter(|t| !t.is_empty()) {
                    parts.push(data(st, work, t)?.mixed("Concat off the channel axis"));
                }
                return parts
                    .into_iter()
                    .reduce(|a, b| a.union(&b))
                    .ok_or_else(|| fail("no inputs"));
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
            let basis = parts
                .iter()
                .map(|p| p.basis.clone())
                .reduce(|a, b| match (&a, &b) {
                    (Basis::Assumed(_), _) => a,
                    (_, Basis::Assumed(_)) => b,
                    (Basis::Distribution, Basis::Distribution) => a,
                    _ => Basis::Mean,
                })
                .unwrap_or(Basis::Distribution);
            Ok(ChannelStats {
                mu: cat(|p| &p.mu),
                sigma: cat(|p| &p.sigma),
                a: cat(|p| &p.a),
                b: cat(|p| &p.b),
                lo: cat(|p| &p.lo),
                hi: cat(|p| &p.hi),
                basis,
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
        "LayerNormalization" => {
            let (g, b) = (
                const_channels(work, &input(1)),
                const_channels(work, &input(2)),
            );
            let g = g.ok_or_else(|| fail("scale computed at run time"))?;
            let b = b.unwrap_or_else(|| vec![0.0]);
            let n = broadcast(g.len(), b.len()).ok_or_else(|| fail("channels"))?;
            let mu: Vec<f32> = (0..n).map(|c| at(&b, c)).collect();
            let sd: Vec<f32> = (0..n).map(|c| at(&g, c).abs()).collect();
            let mut s = ChannelStats::gaussian(&mu, &sd, n_sigma);
            s.basis = Basis::Assumed("LayerNormalization (normalized per token)".into());
            Ok(s)
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
        ("Mul", None, None) => data(st, work, x0)?.product(data(st, work, x1)?),
        ("Div", None, None) if layer_norm_div(work, x0, x1) => {
            let mut s = ChannelStats::gaussian(&[0.0], &[1.0], DEFAULT_N_SIGMA);
            s.basis = Basis::Assumed("a LayerNorm's normalized values (per token)".into());
            Some(s)
        }
        _ => return Err(fail("not modelled with these operands")),
    };
    r.ok_or_else(|| fail("channel counts do not broadcast"))
}

/// `a / b` is a decomposed LayerNorm's normalization: `a = x − ReduceMean(x)`, `b = Sqrt(…)`.
fn layer_norm_div(work: &Work, a: &str, b: &str) -> bool {
    let ix = work.index();
    let op = |t: &str| ix.producer(t).map(|p| work.node(p));
    let (Some(sub), Some(sqrt)) = (op(a), op(b)) else {
        return false;
    };
    if sub.op_type() != "Sub" || sqrt.op_type() != "Sqrt" || sub.input.len() != 2 {
        return false;
    }
    op(&sub.input[1])
        .is_some_and(|m| m.op_type() == "ReduceMean" && m.input.first() == sub.input.first())
}

/// `Reshape`: the statistics pass when the channel axis (1) keeps its size or the shape is not
/// constant, else mix.
fn reshape(
    work: &mut Work,
    st: &ActivationStats,
    node: &NodeProto,
) -> Result<ChannelStats, String> {
    let s = data(st, work, &node.input[0])?;
    let shape = node
        .input
        .get(1)
        .and_then(|t| crate::graph::consteval::ints(work, t));
    match shape {
        Some(d) if s.len() > 1 && (d.len() < 2 || (d[1] != s.len() as i64 && d[1] != 0)) => {
            Ok(s.mixed("Reshape off the channel axis"))
        }
        // A shape computed at run time: read as keeping the channels (or flattening them).
        _ => Ok(s.clone()),
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
    if op == "MatMul" {
        if let Some(s) = attention_values(work, st, i) {
            return Ok(s);
        }
    }
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
    Ok(ChannelStats {
        basis: x.basis.linear(),
        ..ChannelStats::gaussian(&mean, &sigma, n_sigma)
    })
}

/// `MatMul(P, V)` with `P` a Softmax output (attention weights): every output is a convex
/// combination of `V`'s values, so it lies in `V`'s hull; its mean is `E[V]` when the weights do
/// not depend on the values (assumed), its spread at most `V`'s.
fn attention_values(work: &Work, st: &ActivationStats, i: usize) -> Option<ChannelStats> {
    let node = work.node(i);
    let (p, v) = (node.input.first()?, node.input.get(1)?);
    let softmax = work
        .index()
        .producer(p)
        .is_some_and(|k| work.node(k).op_type() == "Softmax");
    if !softmax || work.is_const(v) {
        return None;
    }
    let s = st.tensors.get(v)?.mixed("attention");
    Some(ChannelStats {
        basis: Basis::Assumed(
            "attention (softmax weights assumed independent of the values)".into(),
        ),
        ..s
    })
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

/// Runs `model` on `samples` with tract and calls `visit(tensor, channels, channel, value)` for
/// every finite float value of `tensors` (`(name, channels, axis)`).
fn for_each_channel_value(
    model: &ModelProto,
    tensors: &[(String, usize, ChannelAxis)],
    samples: &[Vec<InputTensor>],
    mut visit: impl FnMut(&str, usize, usize, f32),
) -> Result<(), String> {
    let names: Vec<String> = tensors.iter().map(|t| t.0.clone()).collect();
    let probe = crate::quant::with_extra_outputs(model, &names);
    let bytes = crate::onnx::encode(&probe);
    let runner = Runner::new(&bytes, samples.first().ok_or("no samples")?)?;
    let want: HashMap<&str, (usize, ChannelAxis)> = tensors
        .iter()
        .map(|(n, c, a)| (n.as_str(), (*c, *a)))
        .collect();
    for s in samples {
        for (name, values, is_float) in runner.run_typed(s)? {
            let Some(&(c, axis)) = want.get(name.as_str()) else {
                continue;
            };
            if !is_float || c == 0 || values.len() % c != 0 {
                continue;
            }
            let inner = values.len() / c;
            for (j, v) in values.iter().enumerate().filter(|(_, v)| v.is_finite()) {
                let ch = match axis {
                    ChannelAxis::Second => j / inner,
                    ChannelAxis::Last => j % c,
                };
                visit(&name, c, ch, *v);
            }
        }
    }
    Ok(())
}

/// Per-channel means of `tensors` (`(name, channels, axis)`) measured by running `model` on
/// `samples` with tract (every element of every sample weighs the same).
pub fn measure_means(
    model: &ModelProto,
    tensors: &[(String, usize, ChannelAxis)],
    samples: &[Vec<InputTensor>],
) -> Result<HashMap<String, Vec<f32>>, String> {
    let mut sums: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for_each_channel_value(model, tensors, samples, |name, c, ch, v| {
        let e = sums
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; c], vec![0.0; c]));
        e.0[ch] += f64::from(v);
        e.1[ch] += 1.0;
    })?;
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

/// Per-channel ranges: `(min, max)` per channel, by tensor name.
pub type ChannelRanges = HashMap<String, (Vec<f32>, Vec<f32>)>;

/// Per-channel `(min, max)` of `tensors` (`(name, channels, axis)`) measured by running
/// `model` on `samples` with tract.
pub fn measure_ranges(
    model: &ModelProto,
    tensors: &[(String, usize, ChannelAxis)],
    samples: &[Vec<InputTensor>],
) -> Result<ChannelRanges, String> {
    let mut out = ChannelRanges::new();
    for_each_channel_value(model, tensors, samples, |name, c, ch, v| {
        let e = out
            .entry(name.to_string())
            .or_insert_with(|| (vec![f32::INFINITY; c], vec![f32::NEG_INFINITY; c]));
        e.0[ch] = e.0[ch].min(v);
        e.1[ch] = e.1[ch].max(v);
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::noise::{cdf, pdf};

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
        let m = s.map("SiLU", |v, _| v * sigmoid(v)).mean()[0];
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
