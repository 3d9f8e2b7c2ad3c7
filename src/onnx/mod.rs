//! Lossless ONNX I/O.
//!
//! The official `onnx.proto` (onnx 1.23.2) is vendored in `proto/` and compiled by prost-build
//! through `protox`, so every field of today's `ModelProto` (functions, metadata, training info,
//! sparse initializers, value_info, doc strings…) survives a decode → encode round trip. `bytes`
//! fields are [`bytes::Bytes`], so decoding from a `Bytes` buffer keeps `raw_data` zero-copy.
//!
//! Invariant: the core only changes the initializers and nodes a pass touched; everything else is
//! written back as it was read.

pub mod attr;
pub mod limits;
pub mod mapped;
pub mod scan;
pub mod tensor;
pub mod validate;
pub mod write;

use std::path::{Component, Path};

use bytes::Bytes;
use prost::Message;

use crate::error::{CoreError, Result};

/// The generated protobuf types of `onnx.proto` (package `onnx`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// Decodes a `ModelProto`. `raw_data` of the result shares `bytes`' buffer.
pub fn decode(bytes: Bytes) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(CoreError::Decode("empty input".into()));
    }
    let model = ModelProto::decode(bytes).map_err(|e| CoreError::Decode(e.to_string()))?;
    if model.graph.is_none() {
        return Err(CoreError::InvalidModel(
            "the model has no graph (is this an ONNX model file?)".into(),
        ));
    }
    if model.ir_version() <= 0 && model.opset_import.is_empty() {
        return Err(CoreError::Decode(
            "no ir_version and no opset_import: not an ONNX model".into(),
        ));
    }
    Ok(model)
}

/// Encodes a model to protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Reads a model file (memory-mapped, see [`mapped`]) and resolves external-data tensors stored
/// next to it.
///
/// External files must be relative paths inside the model's folder; `..`, absolute paths and
/// symlinks leaving the folder are refused. Resolved tensors are inlined as `raw_data`.
pub fn load_file(path: &Path) -> Result<ModelProto> {
    let data = mapped::map_file(path).map_err(|source| CoreError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut model = decode(data)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    resolve_external_data(&mut model, Some(dir))?;
    Ok(model)
}

/// The dimensions declared by a tensor `ValueInfoProto`: `Some(n)` for a fixed size, `None` for
/// a symbolic or missing one. `None` when it is not a tensor or declares no shape.
pub fn declared_dims(v: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use proto::tensor_shape_proto::dimension::Value as DimValue;
    use proto::type_proto::Value as TypeValue;
    let Some(TypeValue::TensorType(tt)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    Some(
        tt.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(DimValue::DimValue(n)) if n >= 0 => Some(n),
                _ => None,
            })
            .collect(),
    )
}

/// True when any tensor of the main graph keeps its data in an external file.
pub fn has_external_data(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.initializer.iter().any(tensor::is_external)
            || g.node.iter().any(|n| {
                n.attribute
                    .iter()
                    .any(|a| a.t.as_ref().is_some_and(tensor::is_external))
            })
    })
}

/// Inlines external-data tensors of the main graph (initializers and `Constant` values) from
/// files under `dir`. Without a folder (`None`) any external tensor is an error.
pub fn resolve_external_data(model: &mut ModelProto, dir: Option<&Path>) -> Result<()> {
    if !has_external_data(model) {
        return Ok(());
    }
    let Some(graph) = model.graph.as_mut() else {
        return Ok(());
    };
    let Some(dir) = dir else {
        let name = graph
            .initializer
            .iter()
            .find(|t| tensor::is_external(t))
            .map(|t| t.name().to_string())
            .unwrap_or_default();
        return Err(CoreError::ExternalData {
            name,
            detail: "the model keeps weights in external files; upload a model with inline \
                     weights or run the CLI next to its data files"
                .into(),
        });
    };
    let canon_dir = dir.canonicalize().map_err(|source| CoreError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut tensors: Vec<&mut TensorProto> = graph.initializer.iter_mut().collect();
    for node in graph.node.iter_mut() {
        for a in node.attribute.iter_mut() {
            if let Some(t) = a.t.as_mut() {
                tensors.push(t);
            }
        }
    }
    for t in tensors {
        if tensor::is_external(t) {
            inline_external(t, &canon_dir)?;
        }
    }
    Ok(())
}

fn inline_external(t: &mut TensorProto, dir: &Path) -> Result<()> {
    let err = |detail: String| CoreError::ExternalData {
        name: t.name().to_string(),
        detail,
    };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => offset = kv.value().parse().map_err(|_| err("bad offset".into()))?,
            "length" => {
                length = Some(
                    kv.value()
                        .parse::<u64>()
                        .map_err(|_| err("bad length".into()))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err("no location".into()))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(format!(
            "location `{location}` must be a relative path inside the model's folder"
        )));
    }
    let file = dir.join(rel);
    let canon = file
        .canonicalize()
        .map_err(|e| err(format!("{location}: {e}")))?;
    if !canon.starts_with(dir) {
        return Err(err(format!(
            "location `{location}` leaves the model's folder"
        )));
    }
    let data = std::fs::read(&canon).map_err(|e| err(format!("{location}: {e}")))?;
    let start = usize::try_from(offset).map_err(|_| err("offset too large".into()))?;
    let end = match length {
        Some(l) => start
            .checked_add(usize::try_from(l).map_err(|_| err("length too large".into()))?)
            .ok_or_else(|| err("offset + length overflows".into()))?,
        None => data.len(),
    };
    if start > end || end > data.len() {
        return Err(err(format!(
            "range {start}..{end} is outside the file ({} bytes)",
            data.len()
        )));
    }
    t.raw_data = Some(Bytes::copy_from_slice(&data[start..end]));
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// The opset version of the default ONNX domain (`""` or `ai.onnx`), if imported.
pub fn onnx_opset(model: &ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
}

/// Lets the buffer a model was decoded from be freed: the tensors of the main graph whose
/// `raw_data` still points into `input` (the untouched ones) get their own copy, when that copy
/// is at most half the buffer (otherwise nothing changes). The buffer is freed once its last
/// other holder drops it.
pub fn release_input(model: &mut ModelProto, input: std::ops::Range<*const u8>) {
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    let (start, end) = (input.start as usize, input.end as usize);
    let inside = |t: &TensorProto| {
        t.raw_data.as_ref().is_some_and(|r| {
            let p = r.as_ptr() as usize;
            !r.is_empty() && p >= start && p < end
        })
    };
    let mut tensors: Vec<&mut TensorProto> = graph.initializer.iter_mut().collect();
    for node in graph.node.iter_mut() {
        for a in node.attribute.iter_mut() {
            tensors.extend(a.t.as_mut());
            tensors.extend(a.tensors.iter_mut());
        }
    }
    tensors.retain(|t| inside(t));
    let shared: usize = tensors.iter().map(|t| t.raw_data().len()).sum();
    if shared > (end - start) / 2 {
        return;
    }
    for t in tensors {
        let copy = Bytes::copy_from_slice(t.raw_data());
        t.raw_data = Some(copy);
    }
}
