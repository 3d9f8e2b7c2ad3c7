//! The model under edit: who produces and consumes each tensor ([`index`]), where each weight
//! keeps its channels ([`layout`]), the decoded model with its weight cache and edits ([`work`]),
//! the constant chains that reach a layer ([`chains`]), per-channel products recorded on a
//! weight instead of applied ([`deferred`]), small integer subgraphs evaluated
//! statically ([`consteval`]), the layer view the passes and the int8 stages share
//! ([`layer`]), and the exact default-domain opset upgrade to 13 ([`opset`]).
//!
//! Imports point down only: [`index`], [`layout`] and [`chains`] read ONNX protos; [`deferred`]
//! builds on [`layout`]; [`work`] builds on them; [`consteval`] and [`layer`] read a [`work::Work`]; [`opset`] reads ONNX
//! protos only.

pub mod chains;
pub mod consteval;
pub mod deferred;
pub mod index;
pub mod layer;
pub mod layout;
pub mod opset;
pub mod work;

pub use index::GraphIndex;

/// A name not in `names`, derived from `base` (`base`, `base_1`, `base_2`, …), and taken.
pub fn fresh_name(names: &mut std::collections::HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut k = 1;
    while names.contains(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    names.insert(name.clone());
    name
}
pub use layer::{ensure_bias, has_no_padding, is_layer_op, layer_of, Layer, NotALayer};
pub use layout::{LayerOp, WeightLayout};
pub use work::{Edits, Work};
