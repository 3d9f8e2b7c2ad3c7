//! The layer view: a Conv / ConvTranspose / Gemm / MatMul node whose weight is a constant f32
//! tensor, with its bias and [`WeightLayout`] — what the passes rewrite and the int8 stages
//! quantize. A node that is not such a layer is a reason, never an error.

use super::layout::{LayerOp, WeightLayout};
use super::work::Work;
use crate::onnx::attr;

/// A layer whose weight the passes can rewrite.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Node index.
    pub node: usize,
    /// Weight initializer / constant name.
    pub weight: String,
    /// Bias name, when the layer has one.
    pub bias: Option<String>,
    /// Weight layout.
    pub layout: WeightLayout,
}

/// Why a node is not a usable layer: `(reason code, detail)`.
pub type NotALayer = (&'static str, String);

/// Whether `op_type` (default domain) is a layer op.
pub fn is_layer_op(node: &crate::onnx::NodeProto) -> bool {
    node.domain().is_empty()
        && matches!(node.op_type(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul")
}

/// Describes node `i` as a layer with a constant f32 weight, or says why it is not one.
pub fn layer_of(work: &mut Work, i: usize) -> Result<Layer, NotALayer> {
    let node = work.node(i);
    if !is_layer_op(node) {
        return Err((
            "not_a_layer",
            format!("{} is not a Conv/ConvTranspose/Gemm/MatMul", node.op_type()),
        ));
    }
    let trans_b = attr::int(node, "transB").unwrap_or(0) != 0;
    let op =
        LayerOp::from_op_type(node.op_type(), trans_b).ok_or(("not_a_layer", String::new()))?;
    let group = match op {
        LayerOp::Conv | LayerOp::ConvTranspose => attr::int(node, "group").unwrap_or(1),
        _ => 1,
    };
    if group < 1 {
        return Err(("invalid_attribute", format!("group {group}")));
    }
    if op == LayerOp::MatMul && node.input.len() != 2 {
        return Err(("invalid_node", "MatMul needs two inputs".into()));
    }
    if matches!(op, LayerOp::Gemm { .. }) && attr::int(node, "transA").unwrap_or(0) != 0 {
        // With transA the contraction runs over A's rows (the batch axis), not over the channel
        // axis a BN or the previous layer scales: input-side folds and scaling would be wrong.
        return Err((
            "gemm_trans_a",
            "Gemm with transA contracts over the batch axis, not the channels".into(),
        ));
    }
    let weight = work.input(i, 1).to_string();
    let bias = match op {
        LayerOp::MatMul => None,
        _ => Some(work.input(i, 2).to_string()).filter(|b| !b.is_empty()),
    };
    if weight.is_empty() || !work.is_const(&weight) {
        return Err((
            "weight_not_constant",
            "the weight is computed at run time".into(),
        ));
    }
    if let Some(b) = &bias {
        if !work.is_const(b) {
            return Err((
                "bias_not_constant",
                "the bias is computed at run time".into(),
            ));
        }
    }
    let dims = work
        .f32_dims(&weight)
        .map_err(|e| ("weight_unreadable", e))?;
    let layout =
        WeightLayout::new(op, &dims, group as usize).map_err(|e| ("invalid_weight_shape", e))?;
    if let Some(b) = &bias {
        let t = work.read(b).map_err(|e| ("bias_unreadable", e))?;
        if t.data.len() != layout.out_channels() {
            return Err((
                "bias_shape",
                format!(
                    "bias has {} values for {} output channels",
                    t.data.len(),
                    layout.out_channels()
                ),
            ));
        }
    }
    Ok(Layer {
        node: i,
        weight,
        bias,
        layout,
    })
}

/// The name of layer `l`'s bias, creating a zero `<label>.bias` initializer as its bias input
/// when it has none (Conv / ConvTranspose / Gemm; not for MatMul, which has no bias input).
pub fn ensure_bias(work: &mut Work, l: &Layer) -> String {
    if let Some(b) = &l.bias {
        return b.clone();
    }
    let label = work.label(l.node).to_string();
    let name = work.fresh_name(&format!("{label}.bias"));
    work.add_initializer(
        &name,
        crate::onnx::tensor::F32Tensor::filled(vec![l.layout.out_channels()], 0.0),
    );
    let n = work.node_mut(l.node);
    while n.input.len() < 2 {
        n.input.push(String::new());
    }
    n.input.truncate(2);
    n.input.push(name.clone());
    name
}

/// All pads of a Conv-like node are zero and `auto_pad` does not pad.
pub fn has_no_padding(node: &crate::onnx::NodeProto) -> bool {
    let pads_zero = attr::ints(node, "pads").is_none_or(|p| p.iter().all(|&v| v == 0));
    let auto = attr::string(node, "auto_pad").unwrap_or_default();
    pads_zero && (auto.is_empty() || auto == "NOTSET" || auto == "VALID")
}
