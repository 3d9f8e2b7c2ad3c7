//! The model under edit: who produces and consumes each tensor ([`index`]), where each weight
//! keeps its channels ([`layout`]), the decoded model with its weight cache and edits ([`work`]),
//! the constant chains that reach a layer ([`chains`]), small integer subgraphs evaluated
//! statically ([`consteval`]), the layer view the passes and the int8 stages share
//! ([`layer`]), and the exact default-domain opset upgrade to 13 ([`opset`]).
//!
//! Imports point down only: [`index`], [`layout`] and [`chains`] read ONNX protos; [`work`]
//! builds on them; [`consteval`] and [`layer`] read a [`work::Work`]; [`opset`] reads ONNX
//! protos only.

pub mod chains;
pub mod consteval;
pub mod index;
pub mod layer;
pub mod layout;
pub mod opset;
pub mod work;

pub use index::GraphIndex;
pub use layer::{ensure_bias, has_no_padding, is_layer_op, layer_of, Layer, NotALayer};
pub use layout::{LayerOp, WeightLayout};
pub use work::{Edits, Work};
