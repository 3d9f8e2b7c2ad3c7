//! Static evaluation of small integer subgraphs (shapes, pads, axes).
//!
//! PyTorch exports TF-"SAME" padding as `Pad` whose `pads` input comes from a
//! `Constant → ConstantOfShape → Concat → Reshape → Slice → Transpose → Reshape → Cast` chain.
//! [`ints`] folds such chains without running the model, so CLS can prove the `Pad` leaves
//! channels alone. Only integer tensors of at most [`MAX_ELEMENTS`] elements are evaluated; any
//! other op, or anything data-dependent, gives `None`.

use super::chains::{self, norm_axis};
use super::work::Work;
use crate::onnx::attr;
use crate::onnx::tensor;

/// Largest tensor the evaluator builds.
pub const MAX_ELEMENTS: usize = 4096;
const MAX_DEPTH: usize = 48;

#[derive(Debug, Clone)]
struct ITensor {
    dims: Vec<usize>,
    data: Vec<i64>,
}

/// The integer value of tensor `name` when it is constant or computed from constants only.
pub fn ints(work: &Work, name: &str) -> Option<Vec<i64>> {
    eval(work, name, 0).map(|t| t.data)
}

fn eval(work: &Work, name: &str, depth: usize) -> Option<ITensor> {
    if depth > MAX_DEPTH || name.is_empty() {
        return None;
    }
    if let Some(data) = work.const_ints(name) {
        let dims = const_dims(work, name)?;
        return Some(ITensor { dims, data });
    }
    let p = work.index().producer(name)?;
    let node = work.node(p);
    if !node.domain().is_empty() {
        return None;
    }
    let input = |k: usize| {
        eval(
            work,
            node.input.get(k).map(String::as_str).unwrap_or(""),
            depth + 1,
        )
    };
    let out = match node.op_type() {
        "Constant" => {
            if let Some(a) = attr::get(node, "value_ints") {
                ITensor {
                    dims: vec![a.ints.len()],
                    data: a.ints.clone(),
                }
            } else if let Some(a) = attr::get(node, "value_int") {
                ITensor {
                    dims: vec![],
                    data: vec![a.i()],
                }
            } else {
                return None;
            }
        }
        "ConstantOfShape" => {
            let shape = input(0)?;
            let dims: Vec<usize> = shape
                .data
                .iter()
                .map(|&d| usize::try_from(d).ok())
                .collect::<Option<_>>()?;
            let n = checked_count(&dims)?;
            let value = match attr::get(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => tensor::to_i64(t)
                    .or_else(|| {
                        tensor::to_f32(t)
                            .ok()
                            .map(|f| f.data.iter().map(|&v| v as i64).collect())
                    })?
                    .first()
                    .copied()?,
                None => 0,
            };
            ITensor {
                dims,
                data: vec![value; n],
            }
        }
        "Identity" | "Cast" => {
            if node.op_type() == "Cast" {
                let to = attr::int(node, "to")?;
                // INT8..INT64, UINT8..UINT64
                if ![2, 3, 4, 5, 6, 7, 12, 13].contains(&to) {
                    return None;
                }
            }
            input(0)?
        }
        "Concat" => {
            let parts: Vec<ITensor> = node
                .input
                .iter()
                .map(|n| eval(work, n, depth + 1))
                .collect::<Option<_>>()?;
            if parts.iter().any(|t| t.dims.len() != 1) {
                return None;
            }
            let data: Vec<i64> = parts.into_iter().flat_map(|t| t.data).collect();
            ITensor {
                dims: vec![data.len()],
                data,
            }
        }
        "Reshape" => {
            let data = input(0)?;
            let shape = input(1)?;
            let dims = chains::reshape_dims(&data.dims, &shape.data)?;
            ITensor {
                dims,
                data: data.data,
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let data = input(0)?;
            let axes: Option<Vec<i64>> = match attr::ints(node, "axes") {
                Some(a) => Some(a.to_vec()),
                None => input(1).map(|t| t.data),
            };
            let dims = if node.op_type() == "Unsqueeze" {
                chains::unsqueeze_dims(&data.dims, &axes?)?
            } else {
                chains::squeeze_dims(&data.dims, axes.as_deref())?
            };
            ITensor {
                dims,
                data: data.data,
            }
        }
        "Transpose" => {
            let data = input(0)?;
            let perm = chains::permutation(attr::ints(node, "perm"), data.dims.len())?;
            let dims: Vec<usize> = perm.iter().map(|&a| data.dims[a]).collect();
            ITensor {
                data: chains::transpose(&data.data, &data.dims, &perm),
                dims,
            }
        }
        "Slice" => {
            let data = input(0)?;
            let starts = input(1)?.data;
            let ends = input(2)?.data;
            let rank = data.dims.len();
            let axes: Vec<usize> = match node.input.get(3).filter(|s| !s.is_empty()) {
                Some(_) => input(3)?
                    .data
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Option<_>>()?,
                None => (0..starts.len()).collect(),
            };
            let steps: Vec<i64> = match node.input.get(4).filter(|s| !s.is_empty()) {
                Some(_) => input(4)?.data,
                None => vec![1; starts.len()],
            };
            if axes.len() != starts.len()
                || ends.len() != starts.len()
                || steps.len() != starts.len()
            {
                return None;
            }
            let mut ranges: Vec<Vec<usize>> = data.dims.iter().map(|&d| (0..d).collect()).collect();
            for k in 0..axes.len() {
                let d = data.dims[axes[k]] as i64;
                let step = steps[k];
                if step == 0 {
                    return None;
                }
                let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
                let fix = |v: i64| if v < 0 { v + d } else { v };
                let mut idx = Vec::new();
                if step > 0 {
                    let (s, e) = (clamp(fix(starts[k]), 0, d), clamp(fix(ends[k]), 0, d));
                    let mut i = s;
                    while i < e {
                        idx.push(i as usize);
                        i += step;
                    }
                } else {
                    let (s, e) = (
                        clamp(fix(starts[k]), -1, d - 1),
                        clamp(fix(ends[k]), -1, d - 1),
                    );
                    let mut i = s;
                    while i > e {
                        idx.push(i as usize);
                        i += step;
                    }
                }
                ranges[axes[k]] = idx;
            }
            let dims: Vec<usize> = ranges.iter().map(Vec::len).collect();
            let n = checked_count(&dims)?;
            let st = strides(&data.dims);
            let mut out = Vec::with_capacity(n);
            for flat in 0..n {
                let idx = unravel(flat, &dims);
                let src: usize = idx
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| ranges[k][i] * st[k])
                    .sum();
                out.push(data.data[src]);
            }
            ITensor { dims, data: out }
        }
        _ => return None,
    };
    (out.data.len() <= MAX_ELEMENTS && checked_count(&out.dims) == Some(out.data.len()))
        .then_some(out)
}

fn const_dims(work: &Work, name: &str) -> Option<Vec<usize>> {
    let proto = match work.const_source(name)? {
        super::work::ConstSource::Initializer(i) => &work.graph().initializer[i],
        super::work::ConstSource::Constant(p) => attr::get(work.node(p), "value")?.t.as_ref()?,
    };
    tensor::shape_of(proto).ok().map(|(d, _)| d)
}

fn checked_count(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for k in (0..dims.len()).rev() {
        let d = dims[k].max(1);
        idx[k] = flat % d;
        flat /= d;
    }
    idx
}
