//! The one home of weight layouts.
//!
//! Every pass that reads or scales a weight goes through [`WeightLayout`]; no other module knows
//! which axis holds which channel. Stored layouts (ONNX):
//!
//! | op | stored weight | output channel of element `[a, b, k…]` | input channel |
//! |---|---|---|---|
//! | `Conv`, group g | `[O, I/g, k…]` | `a` | `(a / (O/g))·(I/g) + b` |
//! | `ConvTranspose`, group g | `[I, O/g, k…]` | `(a / (I/g))·(O/g) + b` | `a` |
//! | `Gemm`, `transB = 1` | `[N, K]` | `a` | `b` |
//! | `Gemm`, `transB = 0`; `MatMul` | `[K, N]` | `b` | `a` |
//!
//! Kernel sums (`Σ_k W[o, i, k]`, used by the forward BN fold and the high-bias fold) follow
//! AIMET's numpy order `W.sum(-1).sum(-2)…`: the innermost spatial axis first, sequentially.
//!
//! Ranges (`max |w|` per channel) are order-independent, so they are computed in whatever order
//! vectorizes: dense layouts keep a per-column maximum while sweeping rows, and the `*_ranged`
//! scalings return the ranges of their result from the same sweep. Scalings are element-wise
//! products, identical in any order.

use crate::onnx::tensor::F32Tensor;

/// The channels a per-channel figure is taken over: a weight's output or input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Output channels (`W[o]`).
    Out,
    /// Input channels (`W[:, i]`).
    In,
}

/// Squared norms and weight counts per channel of one [`Side`]
/// ([`WeightLayout::scaled_sumsq`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelEnergy {
    /// `‖W[o]‖²` per output channel or `‖W[:, i]‖²` per input channel.
    pub energy: Vec<f64>,
    /// Weights in each.
    pub count: Vec<f64>,
}

/// The operator family a weight belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOp {
    /// `Conv` (1-D, 2-D, 3-D…).
    Conv,
    /// `ConvTranspose`.
    ConvTranspose,
    /// `Gemm`; `trans_b` is the `transB` attribute.
    Gemm {
        /// `transB != 0`.
        trans_b: bool,
    },
    /// `MatMul` with a constant 2-D right-hand side.
    MatMul,
}

impl LayerOp {
    /// From an ONNX op type and its `transB` attribute.
    pub fn from_op_type(op_type: &str, trans_b: bool) -> Option<Self> {
        match op_type {
            "Conv" => Some(LayerOp::Conv),
            "ConvTranspose" => Some(LayerOp::ConvTranspose),
            "Gemm" => Some(LayerOp::Gemm { trans_b }),
            "MatMul" => Some(LayerOp::MatMul),
            _ => None,
        }
    }
}

/// How one layer's channels relate, as far as CLS is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Every output channel sees every input channel (group 1, Gemm, MatMul).
    Dense,
    /// `group == C_in == C_out`: channel c in, channel c out (depth multiplier 1).
    Depthwise,
    /// Any other grouping (1 < g < C, or depthwise with multiplier > 1).
    Grouped,
}

/// The axis structure of one stored weight tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightLayout {
    /// Operator family.
    pub op: LayerOp,
    /// Number of groups (1 for Gemm / MatMul).
    pub group: usize,
    /// Stored shape.
    pub dims: Vec<usize>,
    a: usize,
    b: usize,
    k: usize,
    out_ch: usize,
    in_ch: usize,
}

impl WeightLayout {
    /// Describes a weight of shape `dims`. Fails (with a reason) when the shape and group do
    /// not form a valid layer.
    pub fn new(op: LayerOp, dims: &[usize], group: usize) -> Result<Self, String> {
        let group = group.max(1);
        let (a, b, k) = match op {
            LayerOp::Conv | LayerOp::ConvTranspose => {
                if dims.len() < 3 {
                    return Err(format!("weight rank {} < 3", dims.len()));
                }
                (dims[0], dims[1], dims[2..].iter().product())
            }
            LayerOp::Gemm { .. } | LayerOp::MatMul => {
                if dims.len() != 2 {
                    return Err(format!("weight rank {} is not 2", dims.len()));
                }
                if group != 1 {
                    return Err("grouped Gemm/MatMul".into());
                }
                (dims[0], dims[1], 1)
            }
        };
        let (out_ch, in_ch) = match op {
            LayerOp::Conv => {
                if a % group != 0 {
                    return Err(format!(
                        "{a} output channels not divisible by group {group}"
                    ));
                }
                (a, b * group)
            }
            LayerOp::ConvTranspose => {
                if a % group != 0 {
                    return Err(format!("{a} input channels not divisible by group {group}"));
                }
                (b * group, a)
            }
            LayerOp::Gemm { trans_b: true } => (a, b),
            LayerOp::Gemm { trans_b: false } | LayerOp::MatMul => (b, a),
        };
        if a == 0 || b == 0 || k == 0 {
            return Err("empty weight".into());
        }
        Ok(WeightLayout {
            op,
            group,
            dims: dims.to_vec(),
            a,
            b,
            k,
            out_ch,
            in_ch,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_ch
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_ch
    }

    /// Elements of the weight.
    pub fn len(&self) -> usize {
        self.a * self.b * self.k
    }

    /// Whether the weight has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements per (output, input) pair: the kernel size.
    pub fn kernel_len(&self) -> usize {
        self.k
    }

    /// Spatial rank (0 for Gemm / MatMul).
    pub fn spatial_rank(&self) -> usize {
        self.dims.len().saturating_sub(2)
    }

    /// The stored axis that indexes output channels, when one axis does (per-channel
    /// quantization: `DequantizeLinear`'s `axis`): 0 for `Conv` and `Gemm` with `transB`, 1 for
    /// `ConvTranspose` with one group, `Gemm` without `transB` and `MatMul`. `None` for a grouped
    /// `ConvTranspose`, whose output channel depends on two axes.
    pub fn out_axis(&self) -> Option<usize> {
        match self.op {
            LayerOp::Conv | LayerOp::Gemm { trans_b: true } => Some(0),
            LayerOp::ConvTranspose => (self.group == 1).then_some(1),
            LayerOp::Gemm { trans_b: false } | LayerOp::MatMul => Some(1),
        }
    }

    /// The channel structure.
    pub fn kind(&self) -> ChannelKind {
        if self.group == 1 {
            ChannelKind::Dense
        } else if self.group == self.in_ch && self.group == self.out_ch {
            ChannelKind::Depthwise
        } else {
            ChannelKind::Grouped
        }
    }

    /// Calls `f(block, out, in)` for every `(a, b)` block; `block` is the flat start of the
    /// `kernel_len()` contiguous elements of that block.
    #[inline]
    fn for_each_block(&self, mut f: impl FnMut(usize, usize, usize)) {
        let k = self.k;
        self.for_each_block_index(|blk, o, i| f(blk * k, o, i));
    }

    /// [`WeightLayout::for_each_block`] with the block's index (`start / kernel_len()`).
    fn for_each_block_index(&self, mut f: impl FnMut(usize, usize, usize)) {
        let per_group = self.a / self.group;
        for ia in 0..self.a {
            let base = (ia / per_group) * self.b;
            for ib in 0..self.b {
                let (o, i) = match self.op {
                    LayerOp::Conv => (ia, base + ib),
                    LayerOp::ConvTranspose => (base + ib, ia),
                    LayerOp::Gemm { trans_b: true } => (ia, ib),
                    LayerOp::Gemm { trans_b: false } | LayerOp::MatMul => (ib, ia),
                };
                f(ia * self.b + ib, o, i);
            }
        }
    }

    /// Layouts whose block row `a` is output channel `a` with input channels
    /// `(a / per_group)·b ..` in order (Conv, Gemm with `transB`): `Some(per_group)`.
    fn row_blocks(&self) -> Option<usize> {
        matches!(self.op, LayerOp::Conv | LayerOp::Gemm { trans_b: true })
            .then(|| self.a / self.group)
    }

    /// Calls `f(start, out, in)` for every kernel of the weight: the `kernel_len()` contiguous
    /// elements from flat index `start` connect input channel `in` to output channel `out`
    /// (the kernels that data-free rounding balances).
    pub fn for_each_kernel(&self, f: impl FnMut(usize, usize, usize)) {
        self.for_each_block(f);
    }

    /// Calls `f(out, a, b)` for every pair of weight elements that onnxruntime's x86 int8
    /// kernels multiply into one **saturating int16** (MLAS u8×s8 GEMM, `vpmaddubsw`, on AVX2
    /// and AVX-512 without VNNI; int8-output.md §6): reduction indices `2j` and `2j + 1` of one
    /// output channel `out`, as flat offsets `a`, `b` into the stored weight. Reduction order:
    ///
    /// - `Conv` runs channels-last, per group: `k = p·(I/g) + c` for kernel position `p` and
    ///   input channel `c` of the group — input channel fastest, so with an even `I/g` a pair is
    ///   two neighbouring input channels at one position, with an odd one pairs cross positions;
    /// - `Gemm` and `MatMul` reduce over `K` in order;
    /// - a depthwise `Conv` (depth multiplier 1) accumulates every product in int32, and
    ///   onnxruntime runs `ConvTranspose` in float: no pairs.
    ///
    /// An odd reduction length leaves its last element unpaired (MLAS pads with zeros).
    pub fn for_each_mlas_pair(&self, mut f: impl FnMut(usize, usize, usize)) {
        self.for_each_mlas_pair_in(|o, a, b, _, _| f(o, a, b));
    }

    /// [`WeightLayout::for_each_mlas_pair`] with the input channel (feature) each element of
    /// the pair reads: `f(out, a, b, in_a, in_b)`, `in_* < in_channels()`.
    pub fn for_each_mlas_pair_in(&self, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        match self.op {
            LayerOp::ConvTranspose => {}
            LayerOp::Conv if self.kind() == ChannelKind::Depthwise => {}
            LayerOp::Conv => {
                let (b, k) = (self.b, self.k);
                let per_group = (self.a / self.group.max(1)).max(1);
                let at = |o: usize, r: usize| (o * b + r % b) * k + r / b;
                for o in 0..self.a {
                    let base = (o / per_group) * b;
                    for r in (0..b * k - 1).step_by(2) {
                        f(o, at(o, r), at(o, r + 1), base + r % b, base + (r + 1) % b);
                    }
                }
            }
            LayerOp::Gemm { trans_b: true } => {
                for o in 0..self.a {
                    for r in (0..self.b.saturating_sub(1)).step_by(2) {
                        f(o, o * self.b + r, o * self.b + r + 1, r, r + 1);
                    }
                }
            }
            LayerOp::Gemm { trans_b: false } | LayerOp::MatMul => {
                for o in 0..self.b {
                    for r in (0..self.a.saturating_sub(1)).step_by(2) {
                        f(o, r * self.b + o, (r + 1) * self.b + o, r, r + 1);
                    }
                }
            }
        }
    }

    fn check(&self, w: &[f32]) {
        debug_assert_eq!(w.len(), self.a * self.b * self.k, "weight length vs layout");
    }

    /// Output channel `a`, input channel `b` (dense Conv, Gemm with `transB`): each output
    /// channel is one contiguous row of `b·k` elements. The fast paths below visit elements in
    /// the same order as [`WeightLayout::for_each_block`], so results are identical.
    fn rows(&self) -> Option<usize> {
        let dense = match self.op {
            LayerOp::Conv => self.group == 1,
            LayerOp::Gemm { trans_b } => trans_b,
            _ => false,
        };
        dense.then_some(self.b * self.k)
    }

    /// Depthwise with multiplier 1 (`b = 1`): row `c` holds the `k` taps of channel `c`, which
    /// is both its output and its input channel.
    fn diagonal(&self) -> bool {
        self.b == 1 && self.kind() == ChannelKind::Depthwise
    }

    /// Row length when each output channel is one contiguous row (dense or diagonal).
    fn out_rows(&self) -> Option<usize> {
        self.rows().or(self.diagonal().then_some(self.k))
    }

    /// `max |w|` per output channel (the `r1` of cle-spec §3.3).
    pub fn out_ranges(&self, w: &[f32]) -> Vec<f32> {
        self.check(w);
        let Some(len) = self.out_rows() else {
            return self.ranges(w).0;
        };
        w.chunks_exact(len).map(row_max).collect()
    }

    /// `w[o, …] *= f[o]` for every output channel `o`.
    pub fn scale_out(&self, w: &mut [f32], f: &[f32]) {
        self.check(w);
        debug_assert_eq!(f.len(), self.out_ch);
        if let Some(row) = self.out_rows() {
            for (row, &m) in w.chunks_exact_mut(row).zip(f) {
                for v in row {
                    *v *= m;
                }
            }
            return;
        }
        self.for_each_block(|s, o, _| {
            let m = f[o];
            for v in &mut w[s..s + self.k] {
                *v *= m;
            }
        });
    }

    /// Length of the contiguous row each output channel is, when it is one (dense Conv, Gemm
    /// with `transB`, depthwise with multiplier 1): [`WeightLayout::scale_row`] then applies.
    pub fn row_len(&self) -> Option<usize> {
        self.out_rows()
    }

    /// On row `o` (of [`WeightLayout::row_len`] elements), what [`WeightLayout::scale_out`]
    /// (`Side::Out`) or [`WeightLayout::scale_in`] (`Side::In`) does to it, product for product.
    pub fn scale_row(&self, side: Side, o: usize, row: &mut [f32], f: &[f32]) {
        if side == Side::Out || self.diagonal() {
            let m = f[o];
            for v in row {
                *v *= m;
            }
        } else {
            self.scale_row_in(row, f);
        }
    }

    /// `w[e] = f(w[e], o)` for every element `e`, `o` its output channel (per-channel grids).
    pub fn map_out(&self, w: &mut [f32], f: impl Fn(f32, usize) -> f32) {
        self.check(w);
        if let Some(row) = self.out_rows() {
            for (o, row) in w.chunks_exact_mut(row).enumerate() {
                for v in row {
                    *v = f(*v, o);
                }
            }
            return;
        }
        self.for_each_block(|s, o, _| {
            for v in &mut w[s..s + self.k] {
                *v = f(*v, o);
            }
        });
    }

    /// Visits `w` in memory order as contiguous runs: `f(run, first, stride)`, where element `j`
    /// of `run` belongs to output channel `first + j·stride` (`stride` is 0 or 1). Read-only
    /// sweeps that must keep the memory order (sequential sums) use it instead of per-element
    /// channel lookups.
    pub fn for_each_out_run(&self, w: &[f32], mut f: impl FnMut(&[f32], usize, usize)) {
        self.check(w);
        if let Some(len) = self.out_rows() {
            for (o, row) in w.chunks_exact(len).enumerate() {
                f(row, o, 0);
            }
            return;
        }
        if self.k == 1 && matches!(self.op, LayerOp::Gemm { trans_b: false } | LayerOp::MatMul) {
            for row in w.chunks_exact(self.b) {
                f(row, 0, 1);
            }
            return;
        }
        self.for_each_block(|s, o, _| f(&w[s..s + self.k], o, 0));
    }

    /// `w[…, i, …] *= f[i]` for every input channel `i`.
    pub fn scale_in(&self, w: &mut [f32], f: &[f32]) {
        if self.diagonal() {
            return self.scale_out(w, f);
        }
        self.check(w);
        debug_assert_eq!(f.len(), self.in_ch);
        if let Some(row) = self.rows() {
            for row in w.chunks_exact_mut(row) {
                self.scale_row_in(row, f);
            }
            return;
        }
        self.for_each_block(|s, _, i| {
            let m = f[i];
            for v in &mut w[s..s + self.k] {
                *v *= m;
            }
        });
    }

    /// `max |w|` per output channel and per input channel (the `r1`, `r2` of cle-spec §3.3), in
    /// one sweep over `w`.
    pub fn ranges(&self, w: &[f32]) -> (Vec<f32>, Vec<f32>) {
        self.check(w);
        if self.diagonal() {
            let r: Vec<f32> = w.chunks_exact(self.k).map(row_max).collect();
            return (r.clone(), r);
        }
        let Some(len) = self.rows() else {
            let mut ro = vec![0f32; self.out_ch];
            let mut ri = vec![0f32; self.in_ch];
            self.for_each_block(|s, o, i| {
                let m = w[s..s + self.k].iter().fold(0f32, |m, v| vmax(m, v.abs()));
                ro[o] = vmax(ro[o], m);
                ri[i] = vmax(ri[i], m);
            });
            return (ro, ri);
        };
        let mut acc = vec![0f32; len];
        let ro = w
            .chunks_exact(len)
            .map(|row| row_mags(row, &mut acc))
            .collect();
        (ro, self.fold_columns(&acc))
    }

    /// Kernel maxima `m[a·b + b'] = max_k |w[a, b', k…]|` of every stored block, in storage
    /// order: all that [`WeightLayout::scaled_out_ranges`] and
    /// [`WeightLayout::scaled_in_ranges`] need to range the weight under any per-channel
    /// scaling. A positive factor commutes with the maximum (f32 rounding is monotonic), so
    /// `max_k |f·w_k| = f·max_k |w_k|`.
    pub fn block_maxima(&self, w: &[f32]) -> Vec<f32> {
        self.check(w);
        if self.k == 1 {
            return w.iter().map(|v| vmax(0.0, v.abs())).collect();
        }
        w.chunks_exact(self.k).map(row_max).collect()
    }

    /// `‖W'[o]‖²` per output channel (`Side::Out`) or `‖W'[:, i]‖²` per input channel
    /// (`Side::In`) of `W'[o, i, …] = fo[o]·fi[i]·W[o, i, …]`, from `W` itself (each stored
    /// block's sum of squares, `Σ_k w[a, b', k…]²` in f32, times its factors squared, summed in
    /// f64 in storage order), with the number of weights in each. Nothing the size of `W` is
    /// allocated; one side costs about half of both.
    pub fn scaled_sumsq(&self, w: &[f32], fo: &[f32], fi: &[f32], side: Side) -> ChannelEnergy {
        self.check(w);
        let kk = self.k.max(1);
        let n = match side {
            Side::Out => self.out_ch,
            Side::In => self.in_ch,
        };
        let mut energy = vec![0.0; n];
        let mut count = vec![0.0; n];
        let block = |s: usize, o: usize, i: usize| -> f64 {
            let q: f32 = w[s * kk..(s + 1) * kk].iter().map(|v| v * v).sum();
            f64::from(q) * f64::from(fo[o] * fi[i]).powi(2)
        };
        match (self.row_blocks(), side) {
            // Row `o` holds output channel `o`'s blocks in input order: one running sum per row.
            (Some(per_group), Side::Out) => {
                for (o, e) in energy.iter_mut().enumerate() {
                    let base = (o / per_group) * self.b;
                    let mut acc = 0.0;
                    for ib in 0..self.b {
                        acc += block(o * self.b + ib, o, base + ib);
                    }
                    *e = acc;
                }
            }
            // A one-element block's sum of squares is its square: the loop vectorizes.
            (Some(per_group), Side::In) if kk == 1 => {
                for (o, row) in w.chunks_exact(self.b).enumerate() {
                    let base = (o / per_group) * self.b;
                    let g = fo[o];
                    let cols = energy[base..base + self.b].iter_mut();
                    for (e, (&x, &f)) in cols.zip(row.iter().zip(&fi[base..base + self.b])) {
                        *e += f64::from(x * x) * f64::from(g * f).powi(2);
                    }
                }
            }
            (Some(per_group), Side::In) => {
                for o in 0..self.a {
                    let base = (o / per_group) * self.b;
                    for (ib, e) in energy[base..base + self.b].iter_mut().enumerate() {
                        *e += block(o * self.b + ib, o, base + ib);
                    }
                }
            }
            (None, Side::Out) => self.for_each_block_index(|s, o, i| energy[o] += block(s, o, i)),
            (None, Side::In) => self.for_each_block_index(|s, o, i| energy[i] += block(s, o, i)),
        }
        // Block counts times the kernel length: the integers the per-block sum would reach.
        let k = self.k as f64;
        self.for_each_block_index(|_, o, i| {
            count[match side {
                Side::Out => o,
                Side::In => i,
            }] += k;
        });
        ChannelEnergy { energy, count }
    }

    /// `max |W'|` per output channel of `W'[o, i, …] = fo[o]·fi[i]·W[o, i, …]`, from the
    /// [`WeightLayout::block_maxima`] `m` of `W`.
    pub fn scaled_out_ranges(&self, m: &[f32], fo: &[f32], fi: &[f32]) -> Vec<f32> {
        self.scaled_ranges(m, fo, fi, true)
    }

    /// `max |W'|` per input channel of `W'`, as [`WeightLayout::scaled_out_ranges`].
    pub fn scaled_in_ranges(&self, m: &[f32], fo: &[f32], fi: &[f32]) -> Vec<f32> {
        self.scaled_ranges(m, fo, fi, false)
    }

    fn scaled_ranges(&self, m: &[f32], fo: &[f32], fi: &[f32], out: bool) -> Vec<f32> {
        debug_assert_eq!(m.len(), self.a * self.b);
        let (mut r, own) = if out {
            (vec![0f32; self.out_ch], fo)
        } else {
            (vec![0f32; self.in_ch], fi)
        };
        match (self.row_blocks(), out) {
            // Row `o` of the maxima holds output channel `o`'s blocks, in input order.
            (Some(per_group), true) => {
                for (o, row) in m.chunks_exact(self.b).enumerate() {
                    let base = (o / per_group) * self.b;
                    r[o] = scaled_row_max(row, &fi[base..base + self.b]);
                }
            }
            (Some(per_group), false) => {
                for (o, row) in m.chunks_exact(self.b).enumerate() {
                    let base = (o / per_group) * self.b;
                    let g = fo[o];
                    for (r, &x) in r[base..base + self.b].iter_mut().zip(row) {
                        *r = vmax(*r, g * x);
                    }
                }
            }
            (None, true) => self.for_each_block_index(|s, o, i| r[o] = vmax(r[o], fi[i] * m[s])),
            (None, false) => self.for_each_block_index(|s, o, i| r[i] = vmax(r[i], fo[o] * m[s])),
        }
        r.iter_mut().zip(own).for_each(|(r, f)| *r *= f);
        r
    }

    /// The ranges ([`WeightLayout::ranges`]) of `W` after `W[o, …] *= fo[o]` and then
    /// `W[:, i, …] *= fi[i]` (either product left out when `None`; factors positive), from the
    /// kernel maxima `m` of `W` ([`WeightLayout::block_maxima`]), bit for bit: a block's largest
    /// magnitude goes through the same two roundings as every other element of the block, and
    /// f32 rounding is monotonic, so it stays the block's largest.
    pub fn ranges_after(
        &self,
        m: &[f32],
        fo: Option<&[f32]>,
        fi: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        debug_assert_eq!(m.len(), self.a * self.b);
        let mut ro = vec![0f32; self.out_ch];
        let mut ri = vec![0f32; self.in_ch];
        self.for_each_block_index(|s, o, i| {
            let mut v = m[s];
            if let Some(f) = fo {
                v *= f[o];
            }
            if let Some(f) = fi {
                v *= f[i];
            }
            ro[o] = vmax(ro[o], v);
            ri[i] = vmax(ri[i], v);
        });
        (ro, ri)
    }

    /// [`WeightLayout::scale_out`], then the ranges of the result ([`WeightLayout::ranges`]),
    /// each row ranged while it is still in cache.
    pub fn scale_out_ranged(&self, w: &mut [f32], f: &[f32]) -> (Vec<f32>, Vec<f32>) {
        debug_assert_eq!(f.len(), self.out_ch);
        let Some(len) = self.rows() else {
            self.scale_out(w, f);
            return self.ranges(w);
        };
        self.rows_ranged(w, len, |o, row| {
            for v in row {
                *v *= f[o];
            }
        })
    }

    /// [`WeightLayout::scale_in`], then the ranges of the result ([`WeightLayout::ranges`]),
    /// each row ranged while it is still in cache.
    pub fn scale_in_ranged(&self, w: &mut [f32], f: &[f32]) -> (Vec<f32>, Vec<f32>) {
        debug_assert_eq!(f.len(), self.in_ch);
        let Some(len) = self.rows() else {
            self.scale_in(w, f);
            return self.ranges(w);
        };
        self.rows_ranged(w, len, |_, row| self.scale_row_in(row, f))
    }

    /// Dense layouts: `edit(o, row)` on every row, each row then ranged while in cache.
    fn rows_ranged(
        &self,
        w: &mut [f32],
        len: usize,
        mut edit: impl FnMut(usize, &mut [f32]),
    ) -> (Vec<f32>, Vec<f32>) {
        self.check(w);
        let mut acc = vec![0f32; len];
        let ro = w
            .chunks_exact_mut(len)
            .enumerate()
            .map(|(o, row)| {
                edit(o, row);
                row_mags(row, &mut acc)
            })
            .collect();
        (ro, self.fold_columns(&acc))
    }

    /// `row[i, k] *= f[i]` on one row of a dense layout.
    #[inline]
    fn scale_row_in(&self, row: &mut [f32], f: &[f32]) {
        if self.k == 1 {
            for (v, &m) in row.iter_mut().zip(f) {
                *v *= m;
            }
        } else {
            for (block, &m) in row.chunks_exact_mut(self.k).zip(f) {
                for v in block {
                    *v *= m;
                }
            }
        }
    }

    /// Input ranges of a dense layout from the per-column maxima of its rows.
    fn fold_columns(&self, acc: &[f32]) -> Vec<f32> {
        acc.chunks_exact(self.k)
            .map(|block| block.iter().fold(0f32, |m, &v| vmax(m, v)))
            .collect()
    }

    /// Kernel sum of one block in numpy's `W.sum(-1).sum(-2)…` order.
    fn block_sum(&self, block: &[f32]) -> f32 {
        let spatial = &self.dims[2.min(self.dims.len())..];
        if spatial.len() <= 1 {
            return block.iter().fold(0f32, |acc, v| acc + v);
        }
        let inner = *spatial.last().unwrap_or(&1);
        block
            .chunks(inner.max(1))
            .fold(0f32, |acc, r| acc + r.iter().fold(0f32, |acc, v| acc + v))
    }

    /// `y[o] = Σ_i (Σ_k W[o, i, k]) · x[i]`: the effect of adding `x` to every input position
    /// (ignoring padding). For a depthwise layer this is the element-wise product AIMET uses.
    pub fn kernel_sum_times(&self, w: &[f32], x: &[f32]) -> Vec<f32> {
        self.check(w);
        debug_assert_eq!(x.len(), self.in_ch);
        let mut y = vec![0f64; self.out_ch];
        self.for_each_block(|s, o, i| {
            y[o] += self.block_sum(&w[s..s + self.k]) as f64 * x[i] as f64;
        });
        y.into_iter().map(|v| v as f32).collect()
    }

    /// `y[o] = Σ_i Σ_k max(W[o, i, k], 0)·hi[i] + min(W[o, i, k], 0)·hi[i]`-style bound: the
    /// smallest value `Σ W·x` can take for inputs `x[i] ∈ [0, hi[i]]`.
    pub fn min_response(&self, w: &[f32], hi: &[f32]) -> Vec<f32> {
        self.check(w);
        let mut y = vec![0f64; self.out_ch];
        self.for_each_block(|s, o, i| {
            let neg: f64 = w[s..s + self.k]
                .iter()
                .map(|&v| f64::from(v.min(0.0)))
                .sum();
            y[o] += neg * f64::from(hi[i]);
        });
        y.into_iter().map(|v| v as f32).collect()
    }

    /// Checks a decoded tensor against this layout.
    pub fn matches(&self, t: &F32Tensor) -> bool {
        t.dims == self.dims && t.data.len() == self.a * self.b * self.k
    }
}

/// `max(acc, a)` for a non-NaN `acc ≥ 0` and `a ≥ 0` or NaN: a NaN `a` is ignored, as
/// `f32::max` ignores it, so folds of `vmax(m, |v|)` from 0 equal folds of `m.max(|v|)` bit for
/// bit. Written as a compare-select, it compiles to one `maxps` lane and vectorizes.
#[inline(always)]
fn vmax(acc: f32, a: f32) -> f32 {
    if a > acc {
        a
    } else {
        acc
    }
}

const LANES: usize = 8;

/// `max_j f[j]·m[j]` (from 0) in [`LANES`] independent maxima: the same value as the sequential
/// fold, as a maximum of non-negative values (NaN products are skipped either way) does not
/// depend on the order.
#[inline]
fn scaled_row_max(m: &[f32], f: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut ms = m.chunks_exact(LANES);
    let mut fs = f.chunks_exact(LANES);
    for (a, b) in (&mut ms).zip(&mut fs) {
        for j in 0..LANES {
            lanes[j] = vmax(lanes[j], b[j] * a[j]);
        }
    }
    let tail = ms
        .remainder()
        .iter()
        .zip(fs.remainder())
        .fold(0f32, |r, (&a, &b)| vmax(r, b * a));
    lanes.iter().fold(tail, |r, &v| vmax(r, v))
}

/// A weight's `(out, in)` ranges ([`WeightLayout::ranges`]).
pub type ChannelRanges = (Vec<f32>, Vec<f32>);

/// The ranges ([`WeightLayout::ranges`]) and, when asked, the kernel maxima
/// ([`WeightLayout::block_maxima`]) of a weight given one output row at a time, in order
/// ([`WeightLayout::row_ranges`]): bit for bit those of the whole weight (the same sweeps, row
/// by row), without the weight ever being whole in memory.
pub struct RowRanges<'a> {
    layout: &'a WeightLayout,
    acc: Vec<f32>,
    out: Vec<f32>,
    maxima: Option<Vec<f32>>,
}

impl WeightLayout {
    /// A [`RowRanges`] for this layout, with the kernel maxima when `maxima`; `None` when an
    /// output channel is not one row ([`WeightLayout::row_len`]).
    pub fn row_ranges(&self, maxima: bool) -> Option<RowRanges<'_>> {
        let len = self.row_len()?;
        Some(RowRanges {
            layout: self,
            acc: if self.diagonal() {
                Vec::new()
            } else {
                vec![0f32; len]
            },
            out: Vec::with_capacity(self.out_ch),
            maxima: maxima.then(|| Vec::with_capacity(self.a * self.b)),
        })
    }
}

impl RowRanges<'_> {
    /// Takes the next row.
    pub fn push(&mut self, row: &[f32]) {
        let l = self.layout;
        if l.diagonal() {
            self.out.push(row_max(row));
        } else {
            self.out.push(row_mags(row, &mut self.acc));
        }
        if let Some(m) = self.maxima.as_mut() {
            if l.k == 1 {
                m.extend(row.iter().map(|v| vmax(0.0, v.abs())));
            } else {
                m.extend(row.chunks_exact(l.k).map(row_max));
            }
        }
    }

    /// The `(out, in)` ranges, and the kernel maxima when asked.
    pub fn finish(self) -> (ChannelRanges, Option<Vec<f32>>) {
        let ranges = if self.layout.diagonal() {
            (self.out.clone(), self.out)
        } else {
            let inputs = self.layout.fold_columns(&self.acc);
            (self.out, inputs)
        };
        (ranges, self.maxima)
    }
}

/// `max |v|` over one row of a weight: what [`WeightLayout::out_ranges`] gives an output
/// channel that is one row ([`WeightLayout::row_len`]), bit for bit.
pub fn row_range(row: &[f32]) -> f32 {
    row_max(row)
}

/// Maximum `|v|` over `row`, in independent lanes so the loop vectorizes.
#[inline]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] = vmax(lanes[j], c[j].abs());
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0f32, |m, v| vmax(m, v.abs()));
    lanes.iter().fold(tail, |m, &v| vmax(m, v))
}

/// Maximum `|v|` over `row`; raises `acc[j]` to `|row[j]|` on the way. The maximum is kept in
/// independent lanes so the loop vectorizes (a maximum does not depend on the order).
#[inline]
fn row_mags(row: &[f32], acc: &mut [f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut rows = row.chunks_exact(LANES);
    let mut accs = acc.chunks_exact_mut(LANES);
    for (r, a) in (&mut rows).zip(&mut accs) {
        for j in 0..LANES {
            let m = r[j].abs();
            a[j] = vmax(a[j], m);
            lanes[j] = vmax(lanes[j], m);
        }
    }
    for (a, v) in accs.into_remainder().iter_mut().zip(rows.remainder()) {
        let m = v.abs();
        *a = vmax(*a, m);
        lanes[0] = vmax(lanes[0], m);
    }
    lanes.iter().fold(0f32, |m, &v| vmax(m, v))
}

/// Layouts that exercise every path of this module and of the weight sweeps built on it
/// (dense rows short and long, grouped, depthwise with and without multiplier, 1-D, transposed,
/// both Gemm layouts, MatMul): `(op, stored dims, group)`.
#[cfg(test)]
pub(crate) const TEST_LAYOUTS: [(LayerOp, &[usize], usize); 16] = [
    (LayerOp::Conv, &[6, 4, 3, 3], 1),
    (LayerOp::Conv, &[6, 4, 1, 1], 1),
    (LayerOp::Conv, &[6, 70, 1, 1], 1),
    (LayerOp::Conv, &[2, 3, 1, 1], 1),
    (LayerOp::Conv, &[6, 2, 3, 3], 2),
    (LayerOp::Conv, &[4, 1, 3, 3], 4),
    (LayerOp::Conv, &[8, 1, 3, 3], 4),
    (LayerOp::Conv, &[5, 1, 3], 5),
    (LayerOp::ConvTranspose, &[4, 3, 2, 2], 2),
    (LayerOp::ConvTranspose, &[4, 1, 3, 3], 4),
    (LayerOp::ConvTranspose, &[4, 5, 3], 1),
    (LayerOp::Gemm { trans_b: true }, &[5, 7], 1),
    (LayerOp::Gemm { trans_b: true }, &[5, 130], 1),
    (LayerOp::Gemm { trans_b: false }, &[7, 150], 1),
    (LayerOp::MatMul, &[7, 5], 1),
    (LayerOp::MatMul, &[3, 200], 1),
];

/// `n` deterministic weight values of mixed sign and magnitude.
#[cfg(test)]
pub(crate) fn test_values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|j| ((j * 7919 % 101) as f32 - 50.0) * 0.37f32.powi((j % 5) as i32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positive per-channel factors of several magnitudes, one per output and per input channel.
    fn channel_factors(l: &WeightLayout) -> (Vec<f32>, Vec<f32>) {
        let fo = (0..l.out_channels())
            .map(|c| 0.3 + c as f32 * 0.71)
            .collect();
        let fi = (0..l.in_channels())
            .map(|c| 1.7 - c as f32 * 0.013)
            .collect();
        (fo, fi)
    }

    /// `ranges_after` on the kernel maxima is the scaled weight's `ranges`, bit for bit, with
    /// no product, either or both; `scale_row` row by row is `scale_out` / `scale_in`.
    #[test]
    fn ranges_after_and_scale_row_match_the_scaled_weight_exactly() {
        for (op, dims, group) in TEST_LAYOUTS {
            let l = WeightLayout::new(op, dims, group).unwrap();
            let w = test_values(l.len());
            let (fo, fi) = channel_factors(&l);
            let m = l.block_maxima(&w);
            if let Some(mut rr) = l.row_ranges(true) {
                for row in w.chunks_exact(l.row_len().unwrap()) {
                    rr.push(row);
                }
                let (r, m2) = rr.finish();
                let bits = |r: &[f32]| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let want = l.ranges(&w);
                assert_eq!(bits(&r.0), bits(&want.0), "{op:?} {dims:?} row ranges out");
                assert_eq!(bits(&r.1), bits(&want.1), "{op:?} {dims:?} row ranges in");
                assert_eq!(bits(&m2.unwrap()), bits(&m), "{op:?} {dims:?} row maxima");
            }
            for (o_on, i_on) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut v = w.clone();
                if o_on {
                    l.scale_out(&mut v, &fo);
                }
                if i_on {
                    l.scale_in(&mut v, &fi);
                }
                let got = l.ranges_after(&m, o_on.then_some(&fo[..]), i_on.then_some(&fi[..]));
                let want = l.ranges(&v);
                let bits = |r: &[f32]| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.0), bits(&want.0), "{op:?} {dims:?} out");
                assert_eq!(bits(&got.1), bits(&want.1), "{op:?} {dims:?} in");
                if let Some(len) = l.row_len() {
                    let mut r = w.clone();
                    for (o, row) in r.chunks_exact_mut(len).enumerate() {
                        if o_on {
                            l.scale_row(Side::Out, o, row, &fo);
                        }
                        if i_on {
                            l.scale_row(Side::In, o, row, &fi);
                        }
                    }
                    assert_eq!(bits(&r), bits(&v), "{op:?} {dims:?} rows");
                }
            }
        }
    }

    #[test]
    fn scaled_ranges_and_energies_match_a_scaled_weight() {
        let cases = [
            (LayerOp::Conv, vec![4, 3, 3, 3], 1),
            (LayerOp::Conv, vec![4, 2, 3, 3], 2),
            (LayerOp::Conv, vec![4, 1, 3, 3], 4),
            (LayerOp::ConvTranspose, vec![4, 3, 2, 2], 2),
            (LayerOp::Gemm { trans_b: false }, vec![3, 5], 1),
            (LayerOp::MatMul, vec![5, 2], 1),
        ];
        for (op, dims, group) in cases {
            let l = WeightLayout::new(op, &dims, group).unwrap();
            let n: usize = dims.iter().product();
            let w: Vec<f32> = (0..n).map(|j| ((j * 37 % 11) as f32 - 5.0) * 0.3).collect();
            let fo: Vec<f32> = (0..l.out_channels())
                .map(|o| 0.5 + o as f32 * 0.7)
                .collect();
            let fi: Vec<f32> = (0..l.in_channels()).map(|i| 2.0 - i as f32 * 0.3).collect();
            let mut scaled = w.clone();
            l.scale_out(&mut scaled, &fo);
            l.scale_in(&mut scaled, &fi);
            let (ro, ri) = l.ranges(&scaled);
            let m = l.block_maxima(&w);
            let close = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1.0))
            };
            assert!(
                close(&ro, &l.scaled_out_ranges(&m, &fo, &fi)),
                "{op:?} {dims:?} out"
            );
            assert!(
                close(&ri, &l.scaled_in_ranges(&m, &fo, &fi)),
                "{op:?} {dims:?} in"
            );
            // Energies: from the unscaled weight and the factors, as from the scaled weight;
            // each side sums to the scaled weight's total energy.
            let ones = |k: usize| vec![1.0f32; k];
            let [e_out, e_in, direct_out, direct_in] = [
                (&w, &fo, &fi, Side::Out),
                (&w, &fo, &fi, Side::In),
                (&scaled, &ones(fo.len()), &ones(fi.len()), Side::Out),
                (&scaled, &ones(fo.len()), &ones(fi.len()), Side::In),
            ]
            .map(|(w, fo, fi, side)| l.scaled_sumsq(w, fo, fi, side).energy);
            let near = |a: &[f64], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1e-3))
            };
            assert!(near(&e_out, &direct_out), "{op:?} {dims:?} energy out");
            assert!(near(&e_in, &direct_in), "{op:?} {dims:?} energy in");
            let total: f64 = scaled.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            for side in [&e_out, &e_in] {
                let s: f64 = side.iter().sum();
                assert!(
                    (s - total).abs() <= 1e-5 * total,
                    "{op:?} {dims:?}: {s} vs {total}"
                );
            }
            for side in [Side::Out, Side::In] {
                let counted: f64 = l.scaled_sumsq(&w, &fo, &fi, side).count.iter().sum();
                assert_eq!(counted, n as f64);
            }
        }
    }

    #[test]
    fn conv_transpose_grouped_channels() {
        // ConvTranspose, I=4, O/g=3, g=2 → O=6; element [a=3, b=1] is in channel 3 (group 1),
        // out channel 1*3+1 = 4.
        let l = WeightLayout::new(LayerOp::ConvTranspose, &[4, 3, 1, 1], 2).unwrap();
        assert_eq!((l.out_channels(), l.in_channels()), (6, 4));
        let mut w = vec![0f32; 12];
        w[3 * 3 + 1] = 5.0;
        let r = l.out_ranges(&w);
        assert_eq!(r, vec![0.0, 0.0, 0.0, 0.0, 5.0, 0.0]);
        assert_eq!(l.ranges(&w).1, vec![0.0, 0.0, 0.0, 5.0]);
    }

    #[test]
    fn conv_grouped_channels() {
        // Conv O=4, I/g=2, g=2 → I=4; element [o=3, b=1] reads input (3/2)*2+1 = 3.
        let l = WeightLayout::new(LayerOp::Conv, &[4, 2, 1], 2).unwrap();
        assert_eq!(l.in_channels(), 4);
        let mut w = vec![0f32; 8];
        w[3 * 2 + 1] = -2.0;
        assert_eq!(l.ranges(&w).1, vec![0.0, 0.0, 0.0, 2.0]);
        assert_eq!(l.kind(), ChannelKind::Grouped);
    }

    #[test]
    fn gemm_layouts() {
        let t = WeightLayout::new(LayerOp::Gemm { trans_b: true }, &[3, 2], 1).unwrap();
        let n = WeightLayout::new(LayerOp::Gemm { trans_b: false }, &[2, 3], 1).unwrap();
        assert_eq!((t.out_channels(), t.in_channels()), (3, 2));
        assert_eq!((n.out_channels(), n.in_channels()), (3, 2));
        let w = [1.0, -4.0, 2.0, 0.5, 0.0, 3.0]; // [K=2, N=3]
        assert_eq!(n.out_ranges(&w), vec![1.0, 4.0, 3.0]);
        assert_eq!(n.ranges(&w).1, vec![4.0, 3.0]);
    }

    /// Output and input channel of flat element `j`, straight from the table in the module
    /// docs (independent of the fast paths).
    fn channels_of(op: LayerOp, dims: &[usize], group: usize, j: usize) -> (usize, usize) {
        let k: usize = dims[2..].iter().product();
        let (a, b) = (j / (dims[1] * k), (j / k) % dims[1]);
        match op {
            LayerOp::Conv => (a, (a / (dims[0] / group)) * dims[1] + b),
            LayerOp::ConvTranspose => ((a / (dims[0] / group)) * dims[1] + b, a),
            LayerOp::Gemm { trans_b: true } => (a, b),
            LayerOp::Gemm { trans_b: false } | LayerOp::MatMul => (b, a),
        }
    }

    /// Every range and scaling path (dense rows, diagonal depthwise, generic blocks, fused
    /// sweeps) equals a naive per-element evaluation of the layout table, bit for bit.
    #[test]
    fn every_path_matches_the_layout_table() {
        for (op, dims, group) in TEST_LAYOUTS {
            let l = WeightLayout::new(op, dims, group).unwrap();
            let n: usize = dims.iter().product();
            // Deterministic values of mixed sign and magnitude, including a zero and a NaN.
            let mut w = test_values(n);
            w[n / 2] = 0.0;
            w[n / 3] = f32::NAN;
            let ch: Vec<(usize, usize)> = (0..n).map(|j| channels_of(op, dims, group, j)).collect();
            let naive_ranges = |w: &[f32]| {
                let mut ro = vec![0f32; l.out_channels()];
                let mut ri = vec![0f32; l.in_channels()];
                for (v, &(o, i)) in w.iter().zip(&ch) {
                    ro[o] = ro[o].max(v.abs());
                    ri[i] = ri[i].max(v.abs());
                }
                (ro, ri)
            };
            let expected = naive_ranges(&w);
            let case = format!("{op:?} {dims:?} group {group}");
            assert_eq!(l.ranges(&w), expected, "{case}");
            assert_eq!(l.out_ranges(&w), expected.0, "{case}");
            let (fo, fi) = channel_factors(&l);
            for (side, f) in [("out", &fo), ("in", &fi)] {
                let naive: Vec<f32> = w
                    .iter()
                    .zip(&ch)
                    .map(|(v, &(o, i))| v * f[if side == "out" { o } else { i }])
                    .collect();
                let (mut plain, mut fused) = (w.clone(), w.clone());
                let got = if side == "out" {
                    l.scale_out(&mut plain, f);
                    l.scale_out_ranged(&mut fused, f)
                } else {
                    l.scale_in(&mut plain, f);
                    l.scale_in_ranged(&mut fused, f)
                };
                assert_eq!(plain.map_bits(), naive.map_bits(), "{case} scale_{side}");
                assert_eq!(
                    fused.map_bits(),
                    naive.map_bits(),
                    "{case} scale_{side}_ranged"
                );
                assert_eq!(
                    got,
                    naive_ranges(&naive),
                    "{case} scale_{side}_ranged ranges"
                );
            }
        }
    }

    trait Bits {
        fn map_bits(&self) -> Vec<u32>;
    }

    impl Bits for Vec<f32> {
        fn map_bits(&self) -> Vec<u32> {
            self.iter().map(|v| v.to_bits()).collect()
        }
    }

    #[test]
    fn depthwise_kind_and_kernel_sums() {
        let l = WeightLayout::new(LayerOp::Conv, &[2, 1, 2, 2], 2).unwrap();
        assert_eq!(l.kind(), ChannelKind::Depthwise);
        let w = [1.0, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0, -1.0];
        assert_eq!(l.kernel_sum_times(&w, &[1.0, 2.0]), vec![10.0, -8.0]);
    }
}
