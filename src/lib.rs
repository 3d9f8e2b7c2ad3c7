//! # onnx-cle
//!
//! Data-free Cross-Layer Equalization (Nagel et al., "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", ICCV 2019) for ONNX models: BatchNorm folding, ReLU6
//! handling, cross-layer scaling and high-bias fold, with a per-layer report, a numerical
//! verification of the result, and the int8 model it is for (deploy model, QDQ model,
//! encodings).
//!
//! The core ([`equalize`], [`run`]) is pure and synchronous: bytes or a decoded model in, an
//! equalized model and a [`report::Report`] out. It knows nothing of HTTP; the [`server`] module
//! and the CLI both call [`run`] with the same [`Options`].
//!
//! ## Rooms, in data-flow order
//!
//! | room | holds |
//! |---|---|
//! | [`options`] | what the caller asks for, and the one table of its CLI flags and query names |
//! | [`report`] | what a run did and measured (and its HTML page) |
//! | [`onnx`] | lossless protobuf I/O, the structural pre-scan, resource limits |
//! | [`graph`] | the model under edit: index, weight layouts, weight chains, the layer view |
//! | [`runtime`] | tract: inputs, runners, sessions that can be abandoned |
//! | [`passes`] | BN fold, ReLU6, cross-layer scaling, high-bias fold (one file each) |
//! | [`quant`] | int8: target grids, plan, simulation, deploy model, QDQ and encodings |
//! | [`verify`] | the original against the equalized model, in tract |
//! | [`pipeline`] | [`run`]: the stages in order, each given the part of the options it reads |
//! | [`server`] | the HTTP job service (feature `server`) |
//!
//! ## Layering
//!
//! A module imports only modules listed above it in this order (and [`error`], which sits
//! under all of them): `error` → `options` → `report` → `onnx` → `graph` → `runtime` →
//! `passes` → `quant` → `verify` → `pipeline` → `server`. Option and report types are at the
//! bottom, so every stage can take them; nothing below `pipeline` runs a whole job; nothing in
//! the core knows HTTP.

#![warn(missing_docs)]

#[cfg(any(test, feature = "testing"))]
pub mod builder;
pub mod error;
pub mod graph;
pub mod onnx;
pub mod options;
pub mod passes;
pub mod pipeline;
pub mod quant;
pub mod report;
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
pub mod verify;

pub use error::{CoreError, Result};
pub use options::{Compat, HbfMode, Options, Relu6Policy, Select, Step, VerifyOptions};
pub use pipeline::{
    equalize, equalize_with, equalize_with_stats, run, run_streamed, Artifact, ArtifactKind,
    Control, Equalized, ModelOutput, ModelWriter, Output, SampleInputs, Streamed,
};
pub use report::Report;
