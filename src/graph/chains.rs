//! Weight chains: constants that reach a layer through `Identity`, `Transpose`, `Reshape`,
//! `Squeeze`, `Unsqueeze` or a float-to-float `Cast`, as PyTorch writes them without constant
//! folding (`Transpose(W) → MatMul` for `nn.Linear`, identical biases merged into one
//! initializer and read through `Identity` nodes, …).
//!
//! This module holds the pure part: what each node of such a chain does ([`Step`]), its effect on
//! the shape and element type ([`dims_after`]) and on the data ([`evaluate`]). [`crate::graph::work`]
//! finds chains in the graph, lets the passes read and write their value as if it were an
//! initializer, and folds only the chains whose value a pass rewrote.
//!
//! Invariants: every step is exact (a permutation or a re-labelling of the same values, or a
//! widening cast: FLOAT16 / BFLOAT16 → FLOAT are exact in f32); anything that could round
//! (a narrowing cast, FLOAT16 → BFLOAT16) is not a step, so a folded value equals what the
//! runtime computes, bit for bit.

use crate::onnx::attr;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::tensor::{self, F32Tensor};
use crate::onnx::{NodeProto, TensorProto};

/// Longest chain followed from a layer input back to its constant.
pub const MAX_DEPTH: usize = 16;

const FLOAT: i32 = DataType::Float as i32;
const FLOAT16: i32 = DataType::Float16 as i32;
const BFLOAT16: i32 = DataType::Bfloat16 as i32;

/// What one node of a weight chain does to its constant input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `Identity`.
    Identity,
    /// `Transpose(perm)` (`None`: reverse the axes).
    Transpose(Option<Vec<i64>>),
    /// `Reshape(shape)` (`0` copies the input dimension, `-1` is inferred).
    Reshape(Vec<i64>),
    /// `Squeeze(axes)` (`None`: every axis of size 1).
    Squeeze(Option<Vec<i64>>),
    /// `Unsqueeze(axes)`.
    Unsqueeze(Vec<i64>),
    /// `Cast(to)` between float types.
    Cast(i32),
}

impl Step {
    /// The step `node` performs on its first input, with `ints` resolving constant integer
    /// inputs (shape, axes); `None` when the node is no such step (other op, other domain,
    /// extra outputs, non-constant shape or axes, a cast that is not between float types).
    pub fn of(node: &NodeProto, ints: impl Fn(&str) -> Option<Vec<i64>>) -> Option<Step> {
        if !node.domain().is_empty()
            || node.output.first().is_none_or(String::is_empty)
            || node.output.iter().skip(1).any(|o| !o.is_empty())
            || node.input.first().is_none_or(String::is_empty)
        {
            return None;
        }
        let second = || node.input.get(1).filter(|s| !s.is_empty());
        let step = match node.op_type() {
            "Identity" => Step::Identity,
            "Transpose" => Step::Transpose(attr::ints(node, "perm").map(<[i64]>::to_vec)),
            "Reshape" => {
                if attr::int(node, "allowzero").unwrap_or(0) != 0 {
                    return None;
                }
                let shape = match second() {
                    Some(s) => ints(s)?,
                    None => attr::ints(node, "shape")?.to_vec(),
                };
                Step::Reshape(shape)
            }
            "Squeeze" => Step::Squeeze(match (attr::ints(node, "axes"), second()) {
                (Some(a), _) => Some(a.to_vec()),
                (None, Some(s)) => Some(ints(s)?),
                (None, None) => None,
            }),
            "Unsqueeze" => Step::Unsqueeze(match (attr::ints(node, "axes"), second()) {
                (Some(a), _) => a.to_vec(),
                (None, Some(s)) => ints(s)?,
                (None, None) => return None,
            }),
            "Cast" => {
                let to = attr::int(node, "to")? as i32;
                if ![FLOAT, FLOAT16, BFLOAT16].contains(&to) {
                    return None;
                }
                Step::Cast(to)
            }
            _ => return None,
        };
        Some(step)
    }

    /// The ONNX op type.
    pub fn op_type(&self) -> &'static str {
        match self {
            Step::Identity => "Identity",
            Step::Transpose(_) => "Transpose",
            Step::Reshape(_) => "Reshape",
            Step::Squeeze(_) => "Squeeze",
            Step::Unsqueeze(_) => "Unsqueeze",
            Step::Cast(_) => "Cast",
        }
    }

    /// Output shape and element type for an input of shape `dims` and type `dtype`.
    fn apply_dims(&self, dims: &[usize], dtype: i32) -> Result<(Vec<usize>, i32), String> {
        let bad = |what: &str| format!("{} {what} does not fit shape {dims:?}", self.op_type());
        let out = match self {
            Step::Identity => dims.to_vec(),
            Step::Transpose(perm) => {
                let perm = permutation(perm.as_deref(), dims.len()).ok_or_else(|| bad("perm"))?;
                perm.iter().map(|&a| dims[a]).collect()
            }
            Step::Reshape(shape) => reshape_dims(dims, shape).ok_or_else(|| bad("shape"))?,
            Step::Squeeze(axes) => {
                squeeze_dims(dims, axes.as_deref()).ok_or_else(|| bad("axes"))?
            }
            Step::Unsqueeze(axes) => unsqueeze_dims(dims, axes).ok_or_else(|| bad("axes"))?,
            Step::Cast(to) => {
                let exact = *to == dtype || (*to == FLOAT && [FLOAT16, BFLOAT16].contains(&dtype));
                if !exact {
                    return Err(format!(
                        "Cast from {} to {} can round",
                        tensor::dtype_name(dtype),
                        tensor::dtype_name(*to)
                    ));
                }
                return Ok((dims.to_vec(), *to));
            }
        };
        Ok((out, dtype))
    }
}

/// Shape of the chain's value for a FLOAT result, or why the chain does not give one.
pub fn dims_after(source: &TensorProto, steps: &[Step]) -> Result<Vec<usize>, String> {
    let (mut dims, _) = tensor::shape_of(source).map_err(|e| e.to_string())?;
    let mut dtype = source.data_type.unwrap_or(0);
    for s in steps {
        (dims, dtype) = s.apply_dims(&dims, dtype)?;
    }
    if dtype != FLOAT {
        return Err(format!(
            "element type {} is not float32",
            tensor::dtype_name(dtype)
        ));
    }
    Ok(dims)
}

/// The value of the chain: `source` decoded (FLOAT, FLOAT16 or BFLOAT16, widened to f32)
/// with every step applied. The result must be FLOAT.
pub fn evaluate(source: &TensorProto, steps: &[Step]) -> Result<F32Tensor, String> {
    dims_after(source, steps)?;
    let mut t = decode_float(source)?;
    for s in steps {
        match s {
            Step::Transpose(perm) => {
                let perm = permutation(perm.as_deref(), t.dims.len())
                    .ok_or_else(|| "Transpose perm does not fit".to_string())?;
                let dims: Vec<usize> = perm.iter().map(|&a| t.dims[a]).collect();
                t.data = transpose(&t.data, &t.dims, &perm);
                t.dims = dims;
            }
            Step::Cast(_) => {}
            other => t.dims = other.apply_dims(&t.dims, FLOAT)?.0,
        }
    }
    Ok(t)
}

/// Decodes a FLOAT, FLOAT16 or BFLOAT16 tensor into f32 (exact).
pub fn decode_float(t: &TensorProto) -> Result<F32Tensor, String> {
    let dtype = t.data_type.unwrap_or(0);
    if dtype == FLOAT {
        return tensor::to_f32(t).map_err(|e| e.to_string());
    }
    if ![FLOAT16, BFLOAT16].contains(&dtype) {
        return Err(format!(
            "element type {} is not a float type",
            tensor::dtype_name(dtype)
        ));
    }
    if tensor::is_external(t) {
        return Err("data is stored in an external file".into());
    }
    let (dims, count) = tensor::shape_of(t).map_err(|e| e.to_string())?;
    let raw = t.raw_data();
    let bits: Vec<u16> = if !raw.is_empty() {
        if raw.len() != count.saturating_mul(2) {
            return Err(format!(
                "raw_data holds {} bytes, shape {dims:?} needs {}",
                raw.len(),
                count.saturating_mul(2)
            ));
        }
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    } else {
        if t.int32_data.len() != count {
            return Err(format!(
                "int32_data holds {} values, shape {dims:?} needs {count}",
                t.int32_data.len()
            ));
        }
        t.int32_data.iter().map(|&v| v as u16).collect()
    };
    let data = if dtype == FLOAT16 {
        bits.into_iter().map(f16_to_f32).collect()
    } else {
        bits.into_iter()
            .map(|b| f32::from_bits(u32::from(b) << 16))
            .collect()
    };
    Ok(F32Tensor { dims, data })
}

/// IEEE 754 binary16 → binary32 (exact; subnormals normalized, NaN payloads kept).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// `perm` checked against `rank` (every axis exactly once); `None` reverses the axes.
pub fn permutation(perm: Option<&[i64]>, rank: usize) -> Option<Vec<usize>> {
    let Some(perm) = perm else {
        return Some((0..rank).rev().collect());
    };
    let p: Vec<usize> = perm
        .iter()
        .map(|&a| usize::try_from(a).ok().filter(|&a| a < rank))
        .collect::<Option<_>>()?;
    let mut seen = vec![false; rank];
    for &a in &p {
        if std::mem::replace(&mut seen[a], true) {
            return None;
        }
    }
    (p.len() == rank).then_some(p)
}

/// Row-major transpose of `data` (shape `dims`) by a valid permutation `perm`.
pub fn transpose<T: Copy>(data: &[T], dims: &[usize], perm: &[usize]) -> Vec<T> {
    let rank = dims.len();
    let mut strides = vec![1usize; rank];
    for k in (0..rank.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&a| dims[a]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
    let n = data.len();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    // An odometer over the output index; `src` follows it through the input's strides.
    let mut idx = vec![0usize; rank];
    let mut src = 0usize;
    for _ in 0..n {
        out.push(data[src]);
        for k in (0..rank).rev() {
            idx[k] += 1;
            src += src_strides[k];
            if idx[k] < out_dims[k] {
                break;
            }
            src -= src_strides[k] * out_dims[k];
            idx[k] = 0;
        }
    }
    out
}

/// `a` (may be negative) as an axis of a rank-`rank` tensor.
pub fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Output shape of `Reshape(shape)` (no `allowzero`: `0` copies the input dimension).
pub fn reshape_dims(from: &[usize], shape: &[i64]) -> Option<Vec<usize>> {
    let total: usize = from.iter().product();
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (k, &s) in shape.iter().enumerate() {
        match s {
            0 => dims.push(*from.get(k)?),
            -1 if infer.is_none() => {
                infer = Some(k);
                dims.push(1);
            }
            s if s > 0 => dims.push(s as usize),
            _ => return None,
        }
    }
    let known: usize = dims.iter().product();
    if let Some(k) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        dims[k] = total / known;
    }
    (dims.iter().product::<usize>() == total).then_some(dims)
}

/// Output shape of `Unsqueeze(axes)`.
pub fn unsqueeze_dims(dims: &[usize], axes: &[i64]) -> Option<Vec<usize>> {
    let rank = dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Option<_>>()?;
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut out = dims.to_vec();
    for a in axes {
        if a > out.len() {
            return None;
        }
        out.insert(a, 1);
    }
    Some(out)
}

/// Output shape of `Squeeze(axes)` (`None`: every axis of size 1); a listed axis must be 1.
pub fn squeeze_dims(dims: &[usize], axes: Option<&[i64]>) -> Option<Vec<usize>> {
    let Some(axes) = axes else {
        return Some(dims.iter().copied().filter(|&d| d != 1).collect());
    };
    let axes: Vec<usize> = axes
        .iter()
        .map(|&a| norm_axis(a, dims.len()))
        .collect::<Option<_>>()?;
    if axes.iter().any(|&a| dims[a] != 1) {
        return None;
    }
    Some(
        dims.iter()
            .enumerate()
            .filter(|(k, _)| !axes.contains(k))
            .map(|(_, &d)| d)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn transpose_matches_index_arithmetic() {
        let dims = [2, 3, 4];
        let data: Vec<u32> = (0..24).collect();
        for perm in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]] {
            let out = transpose(&data, &dims, &perm);
            let od: Vec<usize> = perm.iter().map(|&a| dims[a]).collect();
            for (flat, &v) in out.iter().enumerate() {
                let o = [flat / (od[1] * od[2]), flat / od[2] % od[1], flat % od[2]];
                let mut i = [0; 3];
                for k in 0..3 {
                    i[perm[k]] = o[k];
                }
                assert_eq!(v as usize, i[0] * 12 + i[1] * 4 + i[2], "perm {perm:?}");
            }
        }
    }

    #[test]
    fn shape_steps() {
        assert_eq!(reshape_dims(&[4, 6], &[0, -1, 2]), Some(vec![4, 3, 2]));
        assert_eq!(reshape_dims(&[4, 6], &[5, -1]), None);
        assert_eq!(unsqueeze_dims(&[8, 4], &[-1, 2]), Some(vec![8, 4, 1, 1]));
        assert_eq!(unsqueeze_dims(&[8], &[0, 0]), None);
        assert_eq!(squeeze_dims(&[1, 8, 1], None), Some(vec![8]));
        assert_eq!(squeeze_dims(&[1, 8, 1], Some(&[-1])), Some(vec![1, 8]));
        assert_eq!(squeeze_dims(&[1, 8, 1], Some(&[1])), None);
        assert_eq!(permutation(Some(&[1, 1]), 2), None);
        assert_eq!(permutation(None, 3), Some(vec![2, 1, 0]));
    }

    #[test]
    fn narrowing_casts_are_refused() {
        let mut t = crate::builder::tensor_f32("w", &[2], &[1.0, 2.0]);
        assert!(dims_after(&t, &[Step::Cast(FLOAT16)]).is_err());
        assert_eq!(
            dims_after(&t, &[Step::Cast(FLOAT16)]).unwrap_err(),
            "Cast from float to float16 can round"
        );
        t.data_type = Some(FLOAT16);
        t.raw_data = Some(vec![0x00, 0x3c, 0x00, 0xc0].into());
        let v = evaluate(&t, &[Step::Cast(FLOAT), Step::Unsqueeze(vec![0])]).unwrap();
        assert_eq!((v.dims, v.data), (vec![1, 2], vec![1.0, -2.0]));
        assert!(dims_after(&t, &[Step::Cast(BFLOAT16)]).is_err());
        assert!(dims_after(&t, &[]).is_err(), "the result must be float32");
    }
}
