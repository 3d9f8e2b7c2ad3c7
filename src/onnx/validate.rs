//! Consistency of the constant tensors of the main graph: declared shape against stored data.
//!
//! A tensor whose dimensions are negative or overflow, or whose data holds more or fewer values
//! than its shape needs, makes the model unusable in every runtime; the core refuses it with
//! [`CoreError::InvalidTensor`] instead of rewriting around it. Tensors kept in external files
//! are checked once they are inlined (see [`super::resolve_external_data`]); element types whose
//! storage this module does not know (sub-byte and 6-bit floats) are only checked for shape.

use super::proto::tensor_proto::DataType;
use super::{attr, tensor, ModelProto, TensorProto};
use crate::error::{CoreError, Result};

/// Which typed field holds a data type's values, how many values one element takes there, and
/// how many bytes one element takes in `raw_data`.
fn storage(dt: DataType) -> Option<(Field, usize, usize)> {
    use DataType::*;
    Some(match dt {
        Float => (Field::Float, 1, 4),
        Complex64 => (Field::Float, 2, 8),
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => (Field::Int32, 1, 1),
        Uint16 | Int16 | Float16 | Bfloat16 => (Field::Int32, 1, 2),
        Int32 => (Field::Int32, 1, 4),
        Int64 => (Field::Int64, 1, 8),
        Double => (Field::Double, 1, 8),
        Complex128 => (Field::Double, 2, 16),
        Uint32 => (Field::Uint64, 1, 4),
        Uint64 => (Field::Uint64, 1, 8),
        String => (Field::String, 1, 0),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Float,
    Int32,
    Int64,
    Double,
    Uint64,
    String,
}

fn field_len(t: &TensorProto, f: Field) -> usize {
    match f {
        Field::Float => t.float_data.len(),
        Field::Int32 => t.int32_data.len(),
        Field::Int64 => t.int64_data.len(),
        Field::Double => t.double_data.len(),
        Field::Uint64 => t.uint64_data.len(),
        Field::String => t.string_data.len(),
    }
}

/// Why `t` is inconsistent, if it is.
pub fn tensor_problem(t: &TensorProto) -> Option<String> {
    let (dims, count) = match tensor::shape_of(t) {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    if tensor::is_external(t) || t.data_type.is_none() {
        return None;
    }
    let dt = DataType::try_from(t.data_type.unwrap_or(0)).ok()?;
    let (field, per, bytes) = storage(dt)?;
    let raw = t.raw_data();
    if !raw.is_empty() {
        if field == Field::String {
            return Some("a string tensor cannot use raw_data".into());
        }
        let need = count.checked_mul(bytes)?;
        return (raw.len() != need).then(|| {
            format!(
                "raw_data holds {} bytes, shape {dims:?} of {} needs {need}",
                raw.len(),
                tensor::dtype_name(dt as i32)
            )
        });
    }
    let need = count.checked_mul(per)?;
    let have = field_len(t, field);
    (have != need).then(|| {
        format!(
            "holds {have} values, shape {dims:?} of {} needs {need}",
            tensor::dtype_name(dt as i32)
        )
    })
}

/// Checks every initializer and every `Constant` value of the main graph.
pub fn tensors(model: &ModelProto) -> Result<()> {
    let Some(g) = model.graph.as_ref() else {
        return Ok(());
    };
    let constants = g
        .node
        .iter()
        .filter(|n| n.op_type() == "Constant" && n.domain().is_empty())
        .filter_map(|n| attr::get(n, "value").and_then(|a| a.t.as_ref()));
    for t in g.initializer.iter().chain(constants) {
        if let Some(detail) = tensor_problem(t) {
            return Err(CoreError::InvalidTensor {
                name: t.name().to_string(),
                detail,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::tensor_f32;

    #[test]
    fn shape_and_data_must_agree() {
        let ok = tensor_f32("w", &[2, 3], &[0.0; 6]);
        assert_eq!(tensor_problem(&ok), None);
        let mut short = tensor_f32("w", &[2, 3], &[0.0; 6]);
        short.dims = vec![2, 4];
        assert!(tensor_problem(&short).unwrap().contains("needs 32"));
        let mut typed = TensorProto {
            dims: vec![3],
            data_type: Some(DataType::Float as i32),
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        assert!(tensor_problem(&typed).is_some());
        typed.float_data.push(3.0);
        assert_eq!(tensor_problem(&typed), None);
        let strings = TensorProto {
            dims: vec![2],
            data_type: Some(DataType::String as i32),
            string_data: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(tensor_problem(&strings), None);
        let negative = TensorProto {
            dims: vec![-1],
            data_type: Some(DataType::Float as i32),
            ..Default::default()
        };
        assert!(tensor_problem(&negative).unwrap().contains("negative"));
        let empty = TensorProto {
            dims: vec![0, 5],
            data_type: Some(DataType::Float as i32),
            ..Default::default()
        };
        assert_eq!(tensor_problem(&empty), None);
    }
}
