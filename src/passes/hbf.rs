//! High-bias fold ("absorbing high biases", Nagel et al. 2019 §4.2; cle-spec §3.7).
//!
//! For a scaled pair (L1, L2): pick `c ≥ 0` per channel of L1, set `b1 −= c`, `b2 += Wsum·c`
//! with `Wsum[o, i] = Σ_k W2[o, i, k]`. This is exact wherever L1's pre-activation `x ≥ c`
//! (then `relu(x − c) = relu(x) − c`) and L2 sees no zero padding.
//!
//! Modes:
//! - `exact` (default): `c` is a proven lower bound. L1's input comes from a clip bounded to
//!   `[0, B]`, so `x ≥ y_min = b1 + Σ min(W1, 0)·B` (zero padding lies inside the box);
//!   `c = clamp(y_min, 0, bound of L1's own clip)`. Only across a single Relu or Clip and into
//!   a layer without padding. The clip's bound drops by `c` in the exact rewrite.
//! - `aimet`: the 3σ rule with the BN statistics of the *backward* fold into L1:
//!   `β' = β/s`, `γ' = γ/s`, `c = max(0, β' − 3|γ'|)` across Relu/PRelu, `c = β'` without an
//!   activation. Approximate by design: reported as a function change. Skipped entirely when no
//!   BN was folded (AIMET's rule).

use crate::options::HbfMode;
use crate::report::HbfPair;

use super::{Ctx, ScaledPair};
use crate::graph::{has_no_padding, layer_of, Layer};

const PASS: &str = "hbf";

/// Runs the high-bias fold over the pairs CLS scaled.
pub fn run(cx: &mut Ctx) -> crate::error::Result<()> {
    let mode = cx.opts.hbf;
    cx.report.hbf.mode = format!("{mode:?}").to_lowercase();
    match mode {
        HbfMode::Off => {
            cx.report.hbf.reason = Some("hbf mode is off".into());
            return Ok(());
        }
        HbfMode::Aimet if cx.state.bn_stats.is_empty() => {
            cx.report.hbf.reason =
                Some("no BatchNormalization was folded backward, so there are no statistics for the 3σ rule (AIMET skips HBF too)".into());
            return Ok(());
        }
        _ => {}
    }
    if cx.state.pairs.is_empty() {
        cx.report.hbf.reason = Some("no pair was scaled by CLS".into());
        return Ok(());
    }
    let pairs = cx.state.pairs.clone();
    let labels = cx.label_map();
    for pair in &pairs {
        let (Some(&n1), Some(&n2)) = (labels.get(&pair.layer1), labels.get(&pair.layer2)) else {
            continue;
        };
        let nodes = vec![pair.layer1.clone(), pair.layer2.clone()];
        let result = match mode {
            HbfMode::Aimet => absorb_aimet(cx, pair, n1, n2),
            HbfMode::Exact => absorb_exact(cx, pair, n1, n2),
            HbfMode::Off => Ok(None),
        };
        match result {
            Ok(Some(absorbed)) => {
                cx.report.hbf.pairs.push(HbfPair {
                    layer1: pair.layer1.clone(),
                    layer2: pair.layer2.clone(),
                    absorbed,
                });
            }
            Ok(None) => {}
            Err((code, detail)) => cx.skip(PASS, nodes, code, detail),
        }
    }
    cx.report.hbf.applied = !cx.report.hbf.pairs.is_empty();
    if mode == HbfMode::Aimet && cx.report.hbf.applied {
        cx.report.function_changed = true;
        cx.report.function_changes.push(format!(
            "high-bias fold (aimet 3σ rule) on {} pairs: approximate by design",
            cx.report.hbf.pairs.len()
        ));
    }
    if !cx.report.hbf.applied && cx.report.hbf.reason.is_none() {
        cx.report.hbf.reason = Some("no pair had bias to absorb".into());
    }
    Ok(())
}

type Absorb = Result<Option<Vec<f32>>, (&'static str, String)>;

fn biases(
    cx: &mut Ctx,
    n1: usize,
    n2: usize,
    create: bool,
) -> Result<(Layer, Layer), (&'static str, String)> {
    let l1 = layer_of(cx.work, n1)?;
    let l2 = layer_of(cx.work, n2)?;
    if !create && (l1.bias.is_none() || l2.bias.is_none()) {
        return Err((
            "no_bias",
            "a layer has no bias (AIMET never creates one for HBF)".into(),
        ));
    }
    Ok((l1, l2))
}

fn absorb_aimet(cx: &mut Ctx, pair: &ScaledPair, n1: usize, n2: usize) -> Absorb {
    let Some(stats) = cx.state.bn_stats.get(&pair.layer1).cloned() else {
        return Err((
            "no_bn_stats",
            format!(
                "no BatchNormalization was folded backward into {}",
                pair.layer1
            ),
        ));
    };
    if !pair.through_ops.iter().all(|o| o == "Relu" || o == "PRelu") {
        return Err((
            "hbf_unsupported_activation",
            format!("3σ rule not defined across {:?}", pair.through_ops),
        ));
    }
    let (l1, l2) = biases(cx, n1, n2, false)?;
    if stats.beta.len() != pair.scale.len() {
        return Err((
            "channel_mismatch",
            "BN statistics and scale differ in length".into(),
        ));
    }
    let relu = pair
        .through_ops
        .first()
        .is_some_and(|o| o == "Relu" || o == "PRelu");
    let c: Vec<f32> = (0..pair.scale.len())
        .map(|k| {
            let beta = stats.beta[k] / pair.scale[k];
            let gamma = stats.gamma[k] / pair.scale[k];
            if relu {
                (beta - 3.0 * gamma.abs()).max(0.0)
            } else {
                beta
            }
        })
        .collect();
    shift(cx, &l1, &l2, &c)?;
    Ok(Some(c))
}

fn absorb_exact(cx: &mut Ctx, pair: &ScaledPair, n1: usize, n2: usize) -> Absorb {
    let act = match pair.through_ops.as_slice() {
        [op] if op == "Relu" || op == "Clip" => op.clone(),
        _ => return Ok(None),
    };
    if cx.work.node(n2).op_type() == "Conv" && !has_no_padding(cx.work.node(n2)) {
        return Ok(None);
    }
    if cx.work.node(n2).op_type() == "ConvTranspose"
        || cx.work.node(n2).op_type() == "MatMul"
        || cx.work.node(n1).op_type() == "MatMul"
    {
        return Ok(None);
    }
    let Some(hi) = input_box(cx, n1) else {
        return Ok(None);
    };
    let (l1, l2) = biases(cx, n1, n2, true)?;
    if hi.len() != l1.layout.in_channels() {
        return Ok(None);
    }
    let neg = l1.layout.min_response(
        &cx.work
            .read(&l1.weight)
            .map_err(|e| ("weight_unreadable", e))?
            .data,
        &hi,
    );
    let b1 = match &l1.bias {
        Some(b) => cx
            .work
            .read(b)
            .map_err(|e| ("bias_unreadable", e))?
            .data
            .clone(),
        None => vec![0.0; l1.layout.out_channels()],
    };
    // A Gemm's pre-activation is `alpha·W1·x + beta·b1`.
    let (b1, neg): (Vec<f32>, Vec<f32>) = match l1.layout.op {
        crate::graph::layout::LayerOp::Gemm { .. } => {
            let node = cx.work.node(n1);
            let alpha = crate::onnx::attr::float(node, "alpha").unwrap_or(1.0);
            let beta = crate::onnx::attr::float(node, "beta").unwrap_or(1.0);
            (
                b1.iter().map(|v| v * beta).collect(),
                neg.iter().map(|v| v * alpha).collect(),
            )
        }
        _ => (b1, neg),
    };
    let upper: Option<Vec<f32>> = (act == "Clip")
        .then(|| {
            cx.state
                .crossed_clips
                .get(&pair.through[0])
                .map(|c| c.bound())
        })
        .flatten();
    if act == "Clip" && upper.is_none() {
        return Ok(None);
    }
    let c: Vec<f32> = (0..b1.len())
        .map(|k| {
            // Shrink slightly below the bound so rounding in the shifted bias can never cross it.
            let y_min = (b1[k] + neg[k]) * (1.0 - 1e-6) - f32::EPSILON * b1[k].abs();
            let lim = upper.as_ref().map_or(f32::INFINITY, |u| u[k]);
            y_min.max(0.0).min(lim)
        })
        .collect();
    if c.iter().all(|&v| v == 0.0) {
        return Ok(None);
    }
    shift(cx, &l1, &l2, &c)?;
    if let Some(clip) = cx.state.crossed_clips.get_mut(&pair.through[0]) {
        for (o, &v) in clip.offset.iter_mut().zip(&c) {
            *o += v;
        }
    }
    Ok(Some(c))
}

/// The per-input-channel upper bound of L1's input when it comes (through constant-0 `Pad`s)
/// from a crossed or crossable Clip(0, 6).
fn input_box(cx: &Ctx, n1: usize) -> Option<Vec<f32>> {
    let mut t = cx.work.input(n1, 0).to_string();
    for _ in 0..4 {
        let p = cx.work.index().producer(&t)?;
        let node = cx.work.node(p);
        match node.op_type() {
            "Pad" => t = cx.work.input(p, 0).to_string(),
            "Clip" => {
                let label = cx.work.label(p);
                if let Some(c) = cx.state.crossed_clips.get(label) {
                    return Some(c.bound());
                }
                if cx.state.relu6_crossable.contains_key(label) {
                    return None;
                }
                return None;
            }
            _ => return None,
        }
    }
    None
}

fn shift(cx: &mut Ctx, l1: &Layer, l2: &Layer, c: &[f32]) -> Result<(), (&'static str, String)> {
    let corr = l2.layout.kernel_sum_times(
        &cx.work
            .read(&l2.weight)
            .map_err(|e| ("weight_unreadable", e))?
            .data,
        c,
    );
    // Gemm computes `alpha·A·B + beta·C`: the bias moves the output by `beta·Δb`, an input shift
    // moves it by `alpha·ΔA·B` (1 for every other layer; dividing by 1 is exact).
    let gemm = |l: &Layer, a: &str| match l.layout.op {
        crate::graph::layout::LayerOp::Gemm { .. } => {
            crate::onnx::attr::float(cx.work.node(l.node), a).unwrap_or(1.0)
        }
        _ => 1.0,
    };
    let (beta1, alpha2, beta2) = (gemm(l1, "beta"), gemm(l2, "alpha"), gemm(l2, "beta"));
    if beta1 == 0.0 || beta2 == 0.0 {
        return Err((
            "gemm_beta_zero",
            "a Gemm ignores its bias (beta = 0)".into(),
        ));
    }
    let b1_name = ensure_bias(cx, l1)?;
    let b2_name = ensure_bias(cx, l2)?;
    let mut b1 = cx.work.take(&b1_name).map_err(|e| ("bias_unreadable", e))?;
    for (v, k) in b1.data.iter_mut().zip(c) {
        *v -= k / beta1;
    }
    cx.work.put(&b1_name, b1);
    let mut b2 = cx.work.take(&b2_name).map_err(|e| ("bias_unreadable", e))?;
    for (v, k) in b2.data.iter_mut().zip(&corr) {
        *v += k * alpha2 / beta2;
    }
    cx.work.put(&b2_name, b2);
    Ok(())
}

fn ensure_bias(cx: &mut Ctx, l: &Layer) -> Result<String, (&'static str, String)> {
    if let Some(b) = &l.bias {
        if l.layout.op == crate::graph::layout::LayerOp::MatMul {
            return Ok(b.clone());
        }
        return cx
            .own(PASS, l.node, 2, "bias")
            .map_err(|e| ("bias_unreadable", e.to_string()));
    }
    Ok(crate::graph::ensure_bias(cx.work, l))
}
