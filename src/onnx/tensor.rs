//! `TensorProto` ⇄ f32 data.
//!
//! The core computes in f32 only. Weights are read from `raw_data` (little-endian) or `float_data`
//! and written back as `raw_data` with `float_data` cleared. Other element types are refused with
//! a clear message (the caller turns that into a skipped layer).

use bytes::Bytes;

use super::proto::tensor_proto::{DataLocation, DataType};
use super::TensorProto;

/// A dense f32 tensor decoded from a `TensorProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    /// Shape.
    pub dims: Vec<usize>,
    /// Row-major data; `data.len()` is the product of `dims`.
    pub data: Vec<f32>,
}

impl F32Tensor {
    /// A tensor of the given shape filled with `value`.
    pub fn filled(dims: Vec<usize>, value: f32) -> Self {
        let n = dims.iter().product();
        F32Tensor {
            dims,
            data: vec![value; n],
        }
    }
}

/// Why a tensor could not be read as f32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorReadError {
    /// The element type is not FLOAT.
    DType(String),
    /// Data kept in an external file that was not resolved.
    External,
    /// Shape and data disagree, or the shape is invalid.
    Malformed(String),
}

impl std::fmt::Display for TensorReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorReadError::DType(t) => write!(f, "element type {t} is not float32"),
            TensorReadError::External => write!(f, "data is stored in an external file"),
            TensorReadError::Malformed(m) => write!(f, "{m}"),
        }
    }
}

/// The name of an ONNX element type.
pub fn dtype_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|d| d.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("#{code}"))
}

/// True when the tensor's data lives in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

/// The tensor's shape as `usize`, refusing negative dims and element counts that overflow.
pub fn shape_of(t: &TensorProto) -> Result<(Vec<usize>, usize), TensorReadError> {
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut count: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| TensorReadError::Malformed(format!("negative dimension {d}")))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| TensorReadError::Malformed("element count overflows".into()))?;
        dims.push(d);
    }
    Ok((dims, count))
}

/// Checks that `t` is a readable FLOAT tensor (the checks of [`to_f32`], without decoding)
/// and returns its shape.
pub fn f32_dims(t: &TensorProto) -> Result<Vec<usize>, TensorReadError> {
    if t.data_type != Some(DataType::Float as i32) {
        return Err(TensorReadError::DType(dtype_name(t.data_type.unwrap_or(0))));
    }
    if is_external(t) {
        return Err(TensorReadError::External);
    }
    let (dims, count) = shape_of(t)?;
    let raw = t.raw_data();
    if !raw.is_empty() {
        if raw.len() != count.saturating_mul(4) {
            return Err(TensorReadError::Malformed(format!(
                "raw_data holds {} bytes, shape {:?} needs {}",
                raw.len(),
                dims,
                count.saturating_mul(4)
            )));
        }
    } else if t.float_data.len() != count {
        return Err(TensorReadError::Malformed(format!(
            "float_data holds {} values, shape {:?} needs {}",
            t.float_data.len(),
            dims,
            count
        )));
    }
    Ok(dims)
}

/// Decodes a FLOAT tensor.
pub fn to_f32(t: &TensorProto) -> Result<F32Tensor, TensorReadError> {
    let dims = f32_dims(t)?;
    let raw = t.raw_data();
    let data = if !raw.is_empty() {
        le_f32s(raw)
    } else {
        t.float_data.clone()
    };
    Ok(F32Tensor { dims, data })
}

/// A FLOAT tensor's `raw_data` as values without a copy, when it is aligned (the tensors the
/// passes wrote are their own f32 vectors) on a little-endian target; `None` otherwise (use
/// [`to_f32`]).
pub fn f32_view(t: &TensorProto) -> Option<&[f32]> {
    if !cfg!(target_endian = "little") || t.data_type() != DataType::Float as i32 || is_external(t)
    {
        return None;
    }
    bytemuck::try_cast_slice(t.raw_data()).ok()
}

/// Little-endian f32 bytes (`len` a multiple of 4) as values: one copy on little-endian
/// targets (any alignment), a per-value conversion elsewhere.
fn le_f32s(raw: &[u8]) -> Vec<f32> {
    #[cfg(target_endian = "little")]
    {
        let n = raw.len() / 4;
        // Not zero-filled first: the huge-page advice must come before the pages are touched,
        // and the copy is then the only pass over them.
        let mut data: Vec<f32> = Vec::with_capacity(n);
        crate::onnx::mapped::huge_pages(data.as_mut_ptr().cast(), n * 4);
        let spare = &mut data.spare_capacity_mut()[..n];
        // SAFETY: `spare` is `n` allocated (uninitialized) f32 slots, `4n` bytes; they are only
        // written here, and every f32 bit pattern is valid.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), n * 4) };
        bytes.copy_from_slice(&raw[..n * 4]);
        // SAFETY: the copy above initialized all `n` values.
        unsafe { data.set_len(n) };
        data
    }
    #[cfg(not(target_endian = "little"))]
    {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// `data` as little-endian bytes.
pub fn f32_le_bytes(data: &[f32]) -> Vec<u8> {
    let mut raw = vec![0u8; data.len() * 4];
    for (c, v) in raw.chunks_exact_mut(4).zip(data) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    raw
}

/// `data` as little-endian bytes, without a copy on little-endian targets: the vector itself
/// becomes the `Bytes` buffer (freed when the last `Bytes` referring to it is dropped).
pub fn f32_into_bytes(data: Vec<f32>) -> Bytes {
    #[cfg(target_endian = "little")]
    {
        Bytes::from_owner(F32Buffer(data))
    }
    #[cfg(not(target_endian = "little"))]
    {
        Bytes::from(f32_le_bytes(&data))
    }
}

/// An f32 vector viewed as its (little-endian) bytes.
#[cfg(target_endian = "little")]
struct F32Buffer(Vec<f32>);

#[cfg(target_endian = "little")]
impl AsRef<[u8]> for F32Buffer {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// Reads an integer tensor (INT64 or INT32) as i64, for shapes, pads and axes.
pub fn to_i64(t: &TensorProto) -> Option<Vec<i64>> {
    let wide = [DataType::Int64 as i32, DataType::Int32 as i32];
    t.data_type
        .filter(|d| wide.contains(d))
        .and_then(|_| int_values(t))
}

/// Reads any integer tensor (INT8, UINT8, INT16, UINT16, INT32, INT64) as i64: `raw_data`
/// little-endian, else `int64_data` (INT64) or `int32_data` (the narrower types, as ONNX
/// stores them). `None` for other types, external data or a count that does not match.
pub fn int_values(t: &TensorProto) -> Option<Vec<i64>> {
    let (_, count) = shape_of(t).ok()?;
    if is_external(t) {
        return None;
    }
    let ty = DataType::try_from(t.data_type?).ok()?;
    let width = match ty {
        DataType::Int8 | DataType::Uint8 => 1,
        DataType::Int16 | DataType::Uint16 => 2,
        DataType::Int32 => 4,
        DataType::Int64 => 8,
        _ => return None,
    };
    let raw = t.raw_data();
    if raw.is_empty() {
        return if ty == DataType::Int64 {
            (t.int64_data.len() == count).then(|| t.int64_data.clone())
        } else {
            (t.int32_data.len() == count).then(|| t.int32_data.iter().map(|&v| v as i64).collect())
        };
    }
    (raw.len() == count * width).then(|| {
        raw.chunks_exact(width)
            .map(|c| match ty {
                DataType::Int8 => i64::from(c[0] as i8),
                DataType::Uint8 => i64::from(c[0]),
                DataType::Int16 => i64::from(i16::from_le_bytes([c[0], c[1]])),
                DataType::Uint16 => i64::from(u16::from_le_bytes([c[0], c[1]])),
                DataType::Int32 => i64::from(i32::from_le_bytes(c.try_into().unwrap_or([0; 4]))),
                _ => i64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            })
            .collect()
    })
}

/// Writes f32 data into `t` as little-endian `raw_data` (FLOAT, `float_data` cleared).
pub fn write_f32(t: &mut TensorProto, tensor: &F32Tensor) {
    set_raw_f32(t, &tensor.dims, Bytes::from(f32_le_bytes(&tensor.data)));
}

/// [`write_f32`] with the data already little-endian ([`f32_le_bytes`]).
pub fn set_raw_f32(t: &mut TensorProto, dims: &[usize], raw: Bytes) {
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.data_type = Some(DataType::Float as i32);
    t.float_data.clear();
    t.raw_data = Some(raw);
}

/// A new FLOAT initializer.
pub fn new_f32(name: &str, tensor: &F32Tensor) -> TensorProto {
    let mut t = TensorProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    write_f32(&mut t, tensor);
    t
}
