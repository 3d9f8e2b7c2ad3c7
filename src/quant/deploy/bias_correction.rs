//! Bias correction against the declared target grid (Nagel et al. 2019, §4.2; int8-output.md §2).
//!
//! With `ε = W̃ − W` (`W̃` the weights as the deploy model stores them, on the target grid), the
//! quantized layer's output is off by `E[ỹ] − E[y] = ε·E[x]` per output channel. Correcting the
//! bias by `b ← b − ε·E[x]` removes that mean shift:
//! - Conv: `Σ_i (Σ_k ε[o, i, k])·E[x_i]`; depthwise `(Σ_k ε[o, k])·E[x_o]`; grouped convs sum
//!   over their group's inputs ([`WeightLayout::kernel_sum_times`]);
//! - ConvTranspose: the same, times `1 / Π strides` (the average share of the kernel that
//!   reaches one output position);
//! - Gemm `α·A·B + β·C`: `C ← C − α·ε·E[x] / β`; MatMul: the constant of its bias `Add`, or a
//!   new `Add` after it.
//!
//! `E[x]` is assumed constant over space (zero-padded border windows see less, as for the
//! high-bias fold). After the correction a layer's output mean is the FP32 one in expectation,
//! so the `E[x]` of the layers after it stay as computed on the FP32 model.

use crate::graph::layout::{LayerOp, WeightLayout};
use crate::graph::work::{Edits, Work};
use crate::graph::{ensure_bias, Layer};
use crate::onnx::{attr, NodeProto};

/// Fewest samples empirical correction accepts: per-channel means of fewer images fit the
/// sample set rather than the data (AIMET asks for 500–1000; with 32 images it lost 4.6 dB to
/// the analytic correction on EfficientNet-Lite0, int8-output.md §1).
pub const MIN_EMPIRICAL_SAMPLES: usize = 100;

/// `ε·E[x]` per output channel of a layer (`eps` in the stored layout, `mean` per input
/// channel, `share` the fraction of the kernel that reaches one output position).
pub fn expected_shift(eps: &[f32], layout: &WeightLayout, mean: &[f32], share: f32) -> Vec<f32> {
    let mut shift = layout.kernel_sum_times(eps, mean);
    if share != 1.0 {
        for v in &mut shift {
            *v *= share;
        }
    }
    shift
}

/// Subtracts `shift` (the output's mean shift) from layer `l`'s bias, creating a bias when it
/// has none (MatMul: a new `Add`, queued in `edits`). Returns the per-channel bias change.
pub fn correct(
    work: &mut Work,
    l: &Layer,
    shift: &[f32],
    edits: &mut Edits,
) -> Result<Vec<f32>, (&'static str, String)> {
    let node = work.node(l.node);
    let (alpha, beta) = match l.layout.op {
        LayerOp::Gemm { .. } => (
            attr::float(node, "alpha").unwrap_or(1.0),
            attr::float(node, "beta").unwrap_or(1.0),
        ),
        _ => (1.0, 1.0),
    };
    if beta == 0.0 {
        return Err((
            "gemm_beta_zero",
            "the Gemm ignores its bias (beta = 0)".into(),
        ));
    }
    let delta: Vec<f32> = shift.iter().map(|s| -s * alpha / beta).collect();
    if delta.iter().all(|&d| d == 0.0) {
        // ε·E[x] = 0 (weights already on the grid): nothing to correct, nothing created.
        return Ok(delta);
    }
    if l.layout.op == LayerOp::MatMul {
        return correct_matmul(work, l, &delta, edits).map(|()| delta);
    }
    if let Some(b) = &l.bias {
        if work.is_shared(b) {
            return Err((
                "shared_bias",
                format!("bias `{b}` is used by several nodes"),
            ));
        }
    }
    let name = ensure_bias(work, l);
    let mut b = work.take(&name).map_err(|e| ("bias_unreadable", e))?;
    for (v, d) in b.data.iter_mut().zip(&delta) {
        *v += d;
    }
    work.put(&name, b);
    Ok(delta)
}

fn correct_matmul(
    work: &mut Work,
    l: &Layer,
    delta: &[f32],
    edits: &mut Edits,
) -> Result<(), (&'static str, String)> {
    let out = work.out(l.node).to_string();
    if let Some(add) = work.sole_consumer(l.node) {
        let n = work.node(add);
        if n.op_type() == "Add" && n.domain().is_empty() && n.input.len() == 2 {
            let other = if n.input[0] == out {
                n.input[1].clone()
            } else {
                n.input[0].clone()
            };
            if work.is_const(&other) && !work.is_shared(&other) {
                if let Ok(t) = work.read(&other) {
                    let last = t.dims.last().copied().unwrap_or(0);
                    let only_last = t.dims.iter().rev().skip(1).all(|&d| d == 1);
                    if last == delta.len() && only_last && t.data.len() == delta.len() {
                        let mut t = work.take(&other).map_err(|e| ("bias_unreadable", e))?;
                        for (v, d) in t.data.iter_mut().zip(delta) {
                            *v += d;
                        }
                        work.put(&other, t);
                        return Ok(());
                    }
                }
            }
        }
    }
    let label = work.label(l.node).to_string();
    let bias = work.fresh_name(&format!("{label}.bias"));
    work.add_initializer(
        &bias,
        crate::onnx::tensor::F32Tensor {
            dims: vec![delta.len()],
            data: delta.to_vec(),
        },
    );
    let mid = work.fresh_name(&format!("{out}_matmul"));
    let add_name = work.fresh_name(&format!("{label}_bias_correction"));
    work.node_mut(l.node).output[0] = mid.clone();
    edits.insert_after(
        l.node,
        NodeProto {
            op_type: Some("Add".into()),
            name: Some(add_name),
            input: vec![mid, bias],
            output: vec![out],
            ..Default::default()
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_and_dense_shifts() {
        let dw = WeightLayout::new(LayerOp::Conv, &[2, 1, 2, 1], 2).unwrap();
        let eps = [0.1, 0.2, -0.3, 0.1];
        let s = expected_shift(&eps, &dw, &[2.0, 1.0], 1.0);
        assert!(
            (s[0] - 0.6).abs() < 1e-6 && (s[1] + 0.2).abs() < 1e-6,
            "{s:?}"
        );
        let dense = WeightLayout::new(LayerOp::Gemm { trans_b: true }, &[2, 3], 1).unwrap();
        let eps = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        assert_eq!(
            expected_shift(&eps, &dense, &[1.0, 2.0, 3.0], 1.0),
            vec![-2.0, 3.0]
        );
        assert_eq!(
            expected_shift(&[0.0; 6], &dense, &[1.0, 2.0, 3.0], 1.0),
            vec![0.0, 0.0]
        );
    }
}
