//! The int8 files written from a [`crate::quant::plan::QuantPlan`]: the QDQ ONNX model
//! ([`qdq`]) and the encodings other tools quantize with ([`encodings`]: AIMET encodings,
//! onnxruntime `TensorQuantOverrides`). Each names the same tensors with the same grids, so what
//! the plan simulates is what every file says.

pub mod encodings;
pub mod qdq;
