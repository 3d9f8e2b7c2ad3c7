//! Per-channel scalings of a weight recorded instead of applied: the weight keeps its input
//! bytes (borrowed from the memory-mapped model) until its value is read or written.
//!
//! Every rewrite the default passes make to a large weight is a per-channel product
//! (`W[o, …] *= f[o]` or `W[:, i, …] *= f[i]`: a BN fold, the cross-layer scaling of
//! Nagel et al. eq. 11 with its cumulative factors). A [`Deferred`] weight holds the list of
//! those products, in the order the passes asked for them, and [`Deferred::apply`] replays them
//! with the same functions ([`WeightLayout::scale_out`], [`WeightLayout::scale_in`]) on a fresh
//! decode: every value is the one an eager run computes, bit for bit (f32 products, each
//! rounded, in the same order).
//!
//! What it saves: a weight that is only scaled is never held as a whole f32 copy for the
//! length of the run. Its value is computed into a reused buffer when a pass reads it
//! ([`crate::graph::Work::with_value`]) and again while the output is written
//! ([`crate::onnx::write::Computed`]), so the process touches no fresh memory the size of the
//! model (on a virtual machine, each fresh page is a fault the host may have to back).

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::layout::{row_range, Side, WeightLayout};
use crate::onnx::tensor;
use crate::onnx::write::Computed;
use crate::onnx::TensorProto;

/// One recorded per-channel product.
#[derive(Debug, Clone)]
pub struct Scaling {
    /// The layout the factors are indexed by (the layer's view of the weight).
    pub layout: WeightLayout,
    /// Which channels the factors scale.
    pub side: Side,
    /// One factor per channel of `side`.
    pub factors: Vec<f32>,
}

impl Scaling {
    /// Applies the product to a decoded weight.
    pub fn apply(&self, w: &mut [f32]) {
        match self.side {
            Side::Out => self.layout.scale_out(w, &self.factors),
            Side::In => self.layout.scale_in(w, &self.factors),
        }
    }
}

/// The weights whose products were recorded, by initializer name, with their shapes.
#[derive(Debug, Default, Clone)]
pub struct Deferred {
    weights: HashMap<String, (Vec<usize>, Vec<Scaling>)>,
}

/// Reused f32 buffers: computed values are written into one of these instead of fresh memory.
/// A buffer is created with the capacity of the largest deferrable weight ([`reserve`]), so it
/// never moves to fresh pages as it grows.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Values the pool's buffers are created for (the largest weight they will hold).
static CAPACITY: AtomicUsize = AtomicUsize::new(0);

/// Sizes the pool's future buffers for weights of up to `values` f32 values (their pages are
/// touched only as they are used).
pub fn reserve(values: usize) {
    CAPACITY.fetch_max(values, Ordering::Relaxed);
}

/// A buffer from the pool (or a new one), given back by [`give_back`].
fn take_buffer() -> Vec<f32> {
    POOL.lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY.load(Ordering::Relaxed)))
}

/// Frees the pooled buffers (a run's end: a long-lived process keeps nothing the size of a
/// weight between runs).
pub fn clear_pool() {
    if let Ok(mut p) = POOL.lock() {
        p.clear();
    }
    CAPACITY.store(0, Ordering::Relaxed);
}

fn give_back(buf: Vec<f32>) {
    if let Ok(mut p) = POOL.lock() {
        p.push(buf);
    }
}

impl Deferred {
    /// Whether no weight is deferred.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Number of deferred weights.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether `name` is deferred.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains_key(name)
    }

    /// Records `scaling` on `name` (of shape `dims`).
    pub(crate) fn push(&mut self, name: &str, dims: &[usize], scaling: Scaling) {
        self.weights
            .entry(name.to_string())
            .or_insert_with(|| (dims.to_vec(), Vec::new()))
            .1
            .push(scaling);
    }

    /// Forgets `name`, returning its products (in order).
    pub(crate) fn remove(&mut self, name: &str) -> Option<Vec<Scaling>> {
        self.weights.remove(name).map(|(_, s)| s)
    }

    /// The recorded products of `name`, in order.
    pub fn scalings(&self, name: &str) -> Option<&[Scaling]> {
        self.weights.get(name).map(|(_, s)| s.as_slice())
    }

    /// The value of `name` computed from its stored bytes `raw` (the input's): decoded, then
    /// every product replayed. `None` when `name` is not deferred.
    pub fn value(&self, name: &str, raw: &[u8]) -> Option<Vec<f32>> {
        let (_, ops) = self.weights.get(name)?;
        let mut v = Vec::new();
        compute_into(raw, ops, &mut v);
        Some(v)
    }

    /// Writes the finished values of the deferred weights into `model`'s initializers (each
    /// its own f32 buffer), after which `model` reads like an eagerly finished one.
    pub fn apply_to(self, model: &mut crate::onnx::ModelProto) {
        let Some(g) = model.graph.as_mut() else {
            return;
        };
        for t in g.initializer.iter_mut() {
            if let Some(v) = self.value(t.name(), t.raw_data()) {
                let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
                tensor::set_raw_f32(t, &dims, tensor::f32_into_bytes(v));
            }
        }
    }

    /// `first` on the value of the deferred `t` after its first `k` products, then `then` on
    /// its finished value (the remaining products replayed on the same buffer). `None` when `t`
    /// is not deferred with at least `k` products.
    ///
    /// Each stage also gets the ranges of the value's rows when it was computed row by row (one
    /// per output channel of a layout with [`WeightLayout::row_len`]; empty otherwise), taken as
    /// the rows were written.
    pub fn with_stages<A, B>(
        &self,
        t: &TensorProto,
        k: usize,
        first: impl FnOnce(&[f32], &[f32]) -> A,
        then: impl FnOnce(&[f32], &[f32]) -> B,
    ) -> Option<(A, B)> {
        let (_, ops) = self.weights.get(t.name()).filter(|(_, o)| o.len() >= k)?;
        let mut buf = take_buffer();
        let mut ranges = Vec::new();
        compute_ranged(t.raw_data(), &ops[..k], &mut buf, Some(&mut ranges));
        let a = first(&buf, &ranges);
        if k < ops.len() {
            replay(&ops[k..], &mut buf, Some(&mut ranges));
        }
        let b = then(&buf, &ranges);
        give_back(buf);
        Some((a, b))
    }

    /// `f` on the value of `t` (deferred or not): computed into this thread's reused buffer
    /// when `t` is deferred or its bytes are not aligned, borrowed otherwise. `None` when `t`
    /// is not a FLOAT tensor with `raw_data`.
    pub fn with_tensor<R>(&self, t: &TensorProto, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        match self.weights.get(t.name()) {
            Some((_, ops)) => Some(with_scratch(t.raw_data(), ops, f)),
            None => match tensor::f32_view(t) {
                Some(v) => Some(f(v)),
                None if tensor::f32_dims(t).is_ok() && !t.raw_data().is_empty() => {
                    Some(with_scratch(t.raw_data(), &[], f))
                }
                None => {
                    let d = tensor::to_f32(t).ok()?;
                    Some(f(&d.data))
                }
            },
        }
    }
}

/// Replays `ops` on `w`, in order.
pub(crate) fn apply_all(ops: &[Scaling], w: &mut [f32]) {
    for op in ops {
        op.apply(w);
    }
}

/// Little-endian f32 bytes into `out` (resized; its memory is reused).
fn decode_into(raw: &[u8], out: &mut Vec<f32>) {
    let n = raw.len() / 4;
    out.clear();
    out.reserve(n);
    row_into(&raw[..n * 4], 0, &[], &mut out.spare_capacity_mut()[..n]);
    // SAFETY: `row_into` wrote all `n` values.
    unsafe { out.set_len(n) };
}

/// Row `o` of a value: its stored bytes `src` decoded into `dst` (as many slots as `src` holds
/// values), then `ops` replayed on it with [`WeightLayout::scale_row`]. A first product on the
/// output side is taken as each value is decoded (the same product: the stored value times the
/// row's factor). Every slot of `dst` is written; the row is returned as values.
fn row_into<'a>(
    src: &[u8],
    o: usize,
    ops: &[Scaling],
    dst: &'a mut [MaybeUninit<f32>],
) -> &'a mut [f32] {
    debug_assert_eq!(dst.len() * 4, src.len());
    let value = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let rest = match ops.split_first() {
        Some((op, rest)) if op.side == Side::Out => {
            let m = op.factors[o];
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                d.write(value(c) * m);
            }
            rest
        }
        _ => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                d.write(value(c));
            }
            ops
        }
    };
    // SAFETY: every slot of `dst` was written above; `MaybeUninit<f32>` has f32's layout.
    let row = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
    for op in rest {
        op.layout.scale_row(op.side, o, row, &op.factors);
    }
    row
}

/// The row length every product of `ops` scales whole rows of, when they share one.
fn common_row(ops: &[Scaling], n: usize) -> Option<usize> {
    let len = ops.first()?.layout.row_len()?;
    (len > 0 && n.is_multiple_of(len) && ops.iter().all(|op| op.layout.row_len() == Some(len)))
        .then_some(len)
}

/// Replays `ops` on `w`: row by row when they share a row length (each row takes all its
/// products while it is in cache), else product by product. Each element goes through the
/// same products in the same order either way.
///
/// With `ranges`, also the range of every row when the products went row by row (left empty
/// otherwise).
fn replay(ops: &[Scaling], w: &mut [f32], mut ranges: Option<&mut Vec<f32>>) {
    if let Some(r) = ranges.as_deref_mut() {
        r.clear();
    }
    match common_row(ops, w.len()) {
        Some(len) => {
            for (o, row) in w.chunks_exact_mut(len).enumerate() {
                for op in ops {
                    op.layout.scale_row(op.side, o, row, &op.factors);
                }
                if let Some(r) = ranges.as_deref_mut() {
                    r.push(row_range(row));
                }
            }
        }
        None => apply_all(ops, w),
    }
}

/// The value `raw` + `ops` into `out` (its memory reused): with a common row length each row
/// is decoded and scaled in turn, so the value is written once.
fn compute_into(raw: &[u8], ops: &[Scaling], out: &mut Vec<f32>) {
    compute_ranged(raw, ops, out, None);
}

/// [`compute_into`]; with `ranges`, also the range of every row when the value was computed
/// row by row (left empty otherwise).
fn compute_ranged(raw: &[u8], ops: &[Scaling], out: &mut Vec<f32>, ranges: Option<&mut Vec<f32>>) {
    compute_from(raw, ops, out, ranges);
    // The stored bytes are read again only when the value is computed again: the pages of a
    // memory-mapped input under them leave the resident set meanwhile.
    crate::onnx::mapped::release(raw);
}

fn compute_from(
    raw: &[u8],
    ops: &[Scaling],
    out: &mut Vec<f32>,
    mut ranges: Option<&mut Vec<f32>>,
) {
    let n = raw.len() / 4;
    if let Some(r) = ranges.as_deref_mut() {
        r.clear();
    }
    match common_row(ops, n) {
        Some(len) => {
            out.clear();
            out.reserve(n);
            let spare = &mut out.spare_capacity_mut()[..n];
            let rows = raw[..n * 4]
                .chunks_exact(len * 4)
                .zip(spare.chunks_exact_mut(len));
            for (o, (src, dst)) in rows.enumerate() {
                let row = row_into(src, o, ops, dst);
                if let Some(r) = ranges.as_deref_mut() {
                    r.push(row_range(row));
                }
            }
            // SAFETY: `row_into` wrote every row, hence all `n` values.
            unsafe { out.set_len(n) };
        }
        None => {
            decode_into(raw, out);
            apply_all(ops, out);
        }
    }
}

/// `f` on every row of the value `raw` + `ops`, in order, each computed into one small buffer,
/// when the products share a row length of `len` ([`WeightLayout::row_len`]); `false` (and
/// nothing called) otherwise. Each element goes through the products of [`compute_into`].
pub(crate) fn for_each_row(
    raw: &[u8],
    ops: &[Scaling],
    len: usize,
    mut f: impl FnMut(&[f32]),
) -> bool {
    let n = raw.len() / 4;
    if common_row(ops, n) != Some(len) {
        return false;
    }
    let mut buf = vec![MaybeUninit::uninit(); len];
    for (o, src) in raw[..n * 4].chunks_exact(len * 4).enumerate() {
        f(row_into(src, o, ops, &mut buf));
    }
    crate::onnx::mapped::release(raw);
    true
}

/// `f` on the value `raw` + `ops` computed into a pooled buffer.
pub(crate) fn with_scratch<R>(raw: &[u8], ops: &[Scaling], f: impl FnOnce(&[f32]) -> R) -> R {
    let mut buf = take_buffer();
    compute_into(raw, ops, &mut buf);
    let r = f(&buf);
    give_back(buf);
    r
}

impl Computed for Deferred {
    fn computes(&self, name: &str) -> bool {
        self.contains(name)
    }

    fn compute(&self, name: &str, raw: &[u8], out: &mut Vec<f32>) {
        compute_into(raw, self.scalings(name).unwrap_or(&[]), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::layout::{test_values, TEST_LAYOUTS};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A computed value (row by row where the layout allows, product by product elsewhere) is
    /// the eager one bit for bit, and `with_stages` sees the value after `k` products first.
    #[test]
    fn computed_values_are_the_eager_products() {
        for (op, dims, group) in TEST_LAYOUTS {
            let layout = WeightLayout::new(op, dims, group).unwrap();
            let w = test_values(layout.len());
            let raw: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let factors = |n: usize, a: f32| (0..n).map(|c| a + c as f32 * 0.37).collect();
            let ops = vec![
                Scaling {
                    layout: layout.clone(),
                    side: Side::Out,
                    factors: factors(layout.out_channels(), 0.11),
                },
                Scaling {
                    layout: layout.clone(),
                    side: Side::Out,
                    factors: factors(layout.out_channels(), 1.3),
                },
                Scaling {
                    layout: layout.clone(),
                    side: Side::In,
                    factors: factors(layout.in_channels(), 0.7),
                },
            ];
            let mut eager = w.clone();
            let mut first = w.clone();
            ops[0].apply(&mut first);
            for op in &ops {
                op.apply(&mut eager);
            }
            let t = TensorProto {
                name: Some("w".into()),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(crate::onnx::proto::tensor_proto::DataType::Float as i32),
                raw_data: Some(raw.clone().into()),
                ..Default::default()
            };
            let mut d = Deferred::default();
            for op in &ops {
                d.push("w", dims, op.clone());
            }
            assert_eq!(bits(&d.value("w", &raw).unwrap()), bits(&eager), "{dims:?}");
            let ((a, ra), (b, rb)) = d
                .with_stages(
                    &t,
                    1,
                    |v, r| (v.to_vec(), r.to_vec()),
                    |v, r| (v.to_vec(), r.to_vec()),
                )
                .unwrap();
            assert_eq!(bits(&a), bits(&first), "{dims:?} after one");
            assert_eq!(bits(&b), bits(&eager), "{dims:?} finished");
            if layout.row_len().is_some() {
                assert_eq!(bits(&ra), bits(&layout.out_ranges(&first)), "{dims:?}");
                assert_eq!(bits(&rb), bits(&layout.out_ranges(&eager)), "{dims:?}");
            } else {
                assert!(ra.is_empty() && rb.is_empty(), "{dims:?}");
            }
            let mut out = Vec::new();
            d.compute("w", &raw, &mut out);
            assert_eq!(bits(&out), bits(&eager), "{dims:?} written");
            assert_eq!(d.with_tensor(&t, bits).unwrap(), bits(&eager));
        }
    }
}
