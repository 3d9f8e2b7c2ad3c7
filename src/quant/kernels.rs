//! What onnxruntime's CPU int8 kernels compute for one layer (int8-output.md §6): raw u8
//! activation bytes times s8 weight levels, summed in int32 — or, on x86-64 without VNNI
//! ([`Accumulation::Int16Pairs`]: MLAS's `vpmaddubsw` on AVX2 and AVX-512 without
//! `avx512_vnni`), with the products of reduction indices `2j` and `2j + 1` first added in a
//! **saturating int16**. The activation byte is the raw quantized value (`q`, or `q + 128` for
//! int8 activations, which onnxruntime shifts to u8); zero points are subtracted afterwards, in
//! int32, so they never change what saturates. Which weight elements form a pair is
//! [`WeightLayout::for_each_mlas_pair`].
//!
//! The deploy model and the QDQ model of an `int16_pairs` target keep every same-sign pair
//! within [`PAIR_LEVELS`] ([`crate::quant::target::keep_pairs`]), so on their weights both
//! accumulations agree for every input — or, with an export calibrated on samples, for every
//! input whose raw bytes stay within each channel's bound (`B₁·|l₁| + B₂·|l₂| ≤ 255·128`); this
//! module is the model of the kernels the tests hold against onnxruntime, and [`pairs_at_risk`]
//! counts what a plain 8-bit grid would saturate.

use crate::graph::layout::WeightLayout;
use crate::options::Accumulation;
use crate::quant::target::PAIR_LEVELS;

/// `Σ a[k]·w[k]` in the order given (the reduction order of the kernel), accumulated as `acc`.
pub fn dot(a: &[u8], w: &[i8], acc: Accumulation) -> i32 {
    let product = |k: usize| i32::from(a[k]) * i32::from(w[k]);
    let n = a.len().min(w.len());
    match acc {
        Accumulation::Int32 => (0..n).map(product).sum(),
        Accumulation::Int16Pairs => (0..n)
            .step_by(2)
            .map(|k| {
                let pair = product(k) + if k + 1 < n { product(k + 1) } else { 0 };
                pair.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
            })
            .sum(),
    }
}

/// `A·W` for `A` `[m, k]` raw u8 bytes and `W` `[k, n]` s8 levels (row-major, `MatMul` and
/// `Gemm` without `transB`): `[m, n]` int32 accumulators.
pub fn matmul(a: &[u8], w: &[i8], (m, k, n): (usize, usize, usize), acc: Accumulation) -> Vec<i32> {
    let mut out = vec![0i32; m * n];
    let mut column = vec![0i8; k];
    for j in 0..n {
        for (r, c) in column.iter_mut().enumerate() {
            *c = w[r * n + j];
        }
        for i in 0..m {
            out[i * n + j] = dot(&a[i * k..(i + 1) * k], &column, acc);
        }
    }
    out
}

/// Same-sign pairs of `levels` (stored as `layout`) with `|l₁| + |l₂| >` [`PAIR_LEVELS`]: the
/// pairs that saturate for some input on x86-64 without VNNI.
pub fn pairs_at_risk(levels: &[f32], layout: &WeightLayout) -> usize {
    let mut n = 0;
    layout.for_each_mlas_pair(|_, a, b| {
        let (x, y) = (levels[a], levels[b]);
        n += usize::from(x * y > 0.0 && x.abs() + y.abs() > PAIR_LEVELS);
    });
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::layout::LayerOp;

    #[test]
    fn pairs_saturate_only_past_128_levels_of_the_same_sign() {
        let a = [255u8; 4];
        let exact = |w: &[i8]| dot(&a, w, Accumulation::Int32);
        let paired = |w: &[i8]| dot(&a, w, Accumulation::Int16Pairs);
        for w in [
            [64i8, 64, -64, -64],
            [127, -127, 127, 1],
            [127, 1, -1, -127],
        ] {
            assert_eq!(paired(&w), exact(&w), "{w:?} fits");
        }
        assert_eq!(paired(&[127, 2, 0, 0]), 32767, "129 levels: 32 895 clips");
        assert_eq!(paired(&[-127, -127, 0, 0]), -32768);
        assert_eq!(exact(&[-127, -127, 0, 0]), -64770);
        // Odd length: the last product stands alone and cannot saturate.
        assert_eq!(
            dot(&[255; 3], &[127, 127, 127], Accumulation::Int16Pairs),
            32767 + 32385
        );
    }

    #[test]
    fn risk_counts_same_sign_pairs_over_the_limit() {
        let l = WeightLayout::new(LayerOp::Gemm { trans_b: true }, &[1, 4], 1).unwrap();
        assert_eq!(pairs_at_risk(&[100.0, 29.0, -100.0, -28.0], &l), 1);
        assert_eq!(pairs_at_risk(&[100.0, -29.0, 64.0, 64.0], &l), 0);
    }
}
