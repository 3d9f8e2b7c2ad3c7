//! Typed errors of the CLE core.
//!
//! Invariant: nothing in the core panics on user input. A model that cannot be read, or a request
//! that cannot be honoured, is a [`CoreError`]; a layer that merely cannot be equalized is *not* an
//! error but a [`crate::report::Skip`] entry in the report.

use thiserror::Error;

/// Result alias of the core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything that can make the core refuse a model or a request.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The bytes are not a protobuf-encoded `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// The model decodes but is not usable (no graph, cycles, broken references…).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The model uses something this tool refuses to rewrite.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor's data does not match its declared type or shape.
    #[error("invalid tensor `{name}`: {detail}")]
    InvalidTensor {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A tensor stored in an external file could not be resolved.
    #[error("external data for tensor `{name}`: {detail}")]
    ExternalData {
        /// Tensor name.
        name: String,
        /// Why it could not be read.
        detail: String,
    },
    /// A start or output name given by the user does not exist in the graph.
    #[error("unknown {kind} name `{name}`{}", suggestions_text(.suggestions))]
    UnknownName {
        /// `start` or `output`.
        kind: &'static str,
        /// The name the user gave.
        name: String,
        /// Closest existing node or tensor names.
        suggestions: Vec<String>,
    },
    /// Options that contradict each other or name unknown values.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A configured limit was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The run was canceled by its caller.
    #[error("canceled")]
    Canceled,
    /// Reading or writing a file failed (CLI paths only; the core itself does no I/O).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn suggestions_text(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean one of: {}", s.join(", "))
    }
}

impl CoreError {
    /// A stable snake_case machine code for this error (used by the CLI and HTTP problems).
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::Decode(_) => "model_not_onnx",
            CoreError::InvalidModel(_) => "invalid_model",
            CoreError::Unsupported(_) => "unsupported_model",
            CoreError::InvalidTensor { .. } => "invalid_tensor",
            CoreError::ExternalData { .. } => "external_data",
            CoreError::UnknownName { .. } => "unknown_name",
            CoreError::InvalidOptions(_) => "invalid_options",
            CoreError::Limit(_) => "limit_exceeded",
            CoreError::Canceled => "canceled",
            CoreError::Io { .. } => "io_error",
        }
    }
}
