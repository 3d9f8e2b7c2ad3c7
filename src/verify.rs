//! Verification: run the original and the equalized model with tract on the same inputs and
//! measure how far the outputs drift (max abs error, relative L2 `‖a − b‖ / ‖a‖` per output).
//!
//! Inputs are seeded standard-normal samples (or caller-provided samples); dynamic dimensions
//! take `dynamic_dim`. A model tract cannot load or run is reported as not verified, with the
//! reason: it is never an error of the run.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tract_onnx::prelude::*;

use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::type_proto;
use crate::onnx::ModelProto;
use crate::report::{OutputDeviation, TensorShape, Verification, VerifyStatus};

/// One input tensor.
#[derive(Debug, Clone)]
pub struct InputTensor {
    /// Graph input name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Element type (ONNX code).
    pub elem_type: i32,
    /// Values (cast to the element type when fed).
    pub data: Vec<f32>,
}

/// The graph inputs that need feeding (initializers excluded), with concrete shapes.
pub fn input_specs(model: &ModelProto, dynamic_dim: usize) -> Result<Vec<InputTensor>, String> {
    let g = model.graph.as_ref().ok_or("no graph")?;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut specs = Vec::new();
    for v in g.input.iter().filter(|v| !inits.contains(v.name())) {
        let Some(type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(format!("input `{}` is not a tensor", v.name()));
        };
        let dims = tt
            .shape
            .as_ref()
            .ok_or_else(|| format!("input `{}` has no shape", v.name()))?;
        let mut shape = Vec::new();
        for d in &dims.dim {
            let n = match d.value {
                Some(crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(n))
                    if n > 0 =>
                {
                    n as usize
                }
                _ => dynamic_dim,
            };
            shape.push(n);
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("input too large")?;
        if count > 64 << 20 {
            return Err(format!(
                "input `{}` has {count} elements: too large to verify",
                v.name()
            ));
        }
        specs.push(InputTensor {
            name: v.name().to_string(),
            shape,
            elem_type: tt.elem_type.unwrap_or(0),
            data: vec![0.0; count],
        });
    }
    Ok(specs)
}

/// Seeded standard-normal values (SplitMix64 + Box–Muller).
pub fn fill_random(inputs: &mut [InputTensor], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    for t in inputs.iter_mut() {
        let float = t.elem_type == DataType::Float as i32;
        for v in t.data.iter_mut() {
            if float {
                let u1 = next().max(1e-300);
                let u2 = next();
                *v = ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32;
            } else {
                *v = 0.0;
            }
        }
    }
}

fn to_tract(t: &InputTensor) -> TractResult<Tensor> {
    let f = Tensor::from_shape(&t.shape, &t.data)?;
    let dt = match DataType::try_from(t.elem_type) {
        Ok(DataType::Float) => return Ok(f),
        Ok(DataType::Int64) => i64::datum_type(),
        Ok(DataType::Int32) => i32::datum_type(),
        Ok(DataType::Bool) => bool::datum_type(),
        Ok(DataType::Double) => f64::datum_type(),
        _ => {
            return Err(tract_onnx::prelude::TractError::msg(format!(
                "input `{}` has element type {} which verification cannot feed",
                t.name, t.elem_type
            )))
        }
    };
    Ok(f.cast_to_dt(dt)?.into_owned())
}

/// A model loaded and optimized by tract for fixed input shapes.
pub struct Runner {
    plan: std::sync::Arc<TypedRunnableModel>,
    names: Vec<String>,
}

fn guarded<T>(f: impl FnOnce() -> TractResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("tract panicked".into()),
    }
}

impl Runner {
    /// Loads `bytes` with input shapes and types taken from `inputs`.
    pub fn new(bytes: &[u8], inputs: &[InputTensor]) -> Result<Self, String> {
        guarded(|| {
            let mut model = tract_onnx::onnx()
                .with_ignore_output_shapes(true)
                .with_ignore_value_info(true)
                .model_for_read(&mut &bytes[..])?;
            let names: Vec<String> = model
                .output_outlets()?
                .iter()
                .map(|o| {
                    model
                        .outlet_label(*o)
                        .map(str::to_string)
                        .unwrap_or_else(|| model.node(o.node).name.clone())
                })
                .collect();
            for (k, t) in inputs.iter().enumerate() {
                let dt = to_tract(&InputTensor {
                    data: vec![0.0; t.shape.iter().product()],
                    ..t.clone()
                })?
                .datum_type();
                model = model.with_input_fact(k, InferenceFact::dt_shape(dt, t.shape.clone()))?;
            }
            let plan = model.into_optimized()?.into_runnable()?;
            Ok(Runner { plan, names })
        })
    }

    /// Output names.
    pub fn output_names(&self) -> &[String] {
        &self.names
    }

    /// Runs once; returns `(name, values)` per output.
    pub fn run(&self, inputs: &[InputTensor]) -> Result<Vec<(String, Vec<f32>)>, String> {
        Ok(self
            .run_typed(inputs)?
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect())
    }

    /// Runs once; returns `(name, values, is_float)` per output.
    pub fn run_typed(
        &self,
        inputs: &[InputTensor],
    ) -> Result<Vec<(String, Vec<f32>, bool)>, String> {
        guarded(|| {
            let fed: TVec<TValue> = inputs
                .iter()
                .map(|t| to_tract(t).map(|x| x.into_tvalue()))
                .collect::<TractResult<_>>()?;
            let outs = self.plan.run(fed)?;
            let mut result = Vec::new();
            for (k, o) in outs.iter().enumerate() {
                let is_float = o.datum_type().is_float();
                let f = o.cast_to::<f32>()?;
                let view = f.to_plain_array_view::<f32>()?;
                let name = self
                    .names
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("output{k}"));
                result.push((name, view.iter().copied().collect(), is_float));
            }
            Ok(result)
        })
    }
}

/// Runs a model with tract once; returns `(name, values)` per output.
pub fn run_model(bytes: &[u8], inputs: &[InputTensor]) -> Result<Vec<(String, Vec<f32>)>, String> {
    Runner::new(bytes, inputs)?.run(inputs)
}

/// Splits batched samples (`[N, …]` per input) into `N` single-sample input sets of batch 1.
pub fn split_batch(samples: &[InputTensor]) -> Vec<Vec<InputTensor>> {
    let n = samples
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    if n == 0 || samples.iter().any(|t| t.shape.first() != Some(&n)) {
        return vec![samples.to_vec()];
    }
    (0..n)
        .map(|k| {
            samples
                .iter()
                .map(|t| {
                    let per = t.data.len() / n;
                    let mut shape = t.shape.clone();
                    shape[0] = 1;
                    InputTensor {
                        data: t.data[k * per..(k + 1) * per].to_vec(),
                        shape,
                        ..t.clone()
                    }
                })
                .collect()
        })
        .collect()
}

/// `(max |a − b|, ‖a − b‖₂ / ‖a‖₂)`.
pub fn deviation(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut max = 0f64;
    let mut num = 0f64;
    let mut den = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        max = max.max(d);
        num += d * d;
        den += (x as f64) * (x as f64);
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else if num > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (max, rel)
}

/// Runs every sample of `inputs` (split along the batch axis when the batch is > 1) and
/// concatenates each output over samples.
pub fn run_samples(
    bytes: &[u8],
    inputs: &[InputTensor],
) -> Result<Vec<(String, Vec<f32>)>, String> {
    let samples = if inputs
        .first()
        .is_some_and(|t| t.shape.first().is_some_and(|&n| n > 1))
    {
        split_batch(inputs)
    } else {
        vec![inputs.to_vec()]
    };
    let runner = Runner::new(bytes, &samples[0])?;
    let mut acc: Vec<(String, Vec<f32>)> = Vec::new();
    for s in &samples {
        let out = runner.run(s)?;
        if acc.is_empty() {
            acc = out;
        } else {
            for ((_, a), (_, o)) in acc.iter_mut().zip(out) {
                a.extend(o);
            }
        }
    }
    Ok(acc)
}

/// Compares two encoded models on `inputs` (described as `source` in the report).
pub fn compare(
    original: &[u8],
    equalized: &[u8],
    inputs: &[InputTensor],
    source: String,
) -> Verification {
    let mut v = Verification {
        status: VerifyStatus::NotVerified,
        inputs: source,
        input_shapes: inputs
            .iter()
            .map(|t| TensorShape {
                name: t.name.clone(),
                shape: t.shape.clone(),
            })
            .collect(),
        ..Default::default()
    };
    // The two models are independent: build and run them on two threads.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_samples(original, inputs));
        let b = run_samples(equalized, inputs);
        let a = a.join().unwrap_or_else(|_| Err("tract panicked".into()));
        (a, b)
    });
    let a = match a {
        Ok(a) => a,
        Err(e) => {
            v.reason = Some(format!("tract cannot run the original model: {e}"));
            return v;
        }
    };
    let b = match b {
        Ok(b) => b,
        Err(e) => {
            v.reason = Some(format!("tract cannot run the equalized model: {e}"));
            return v;
        }
    };
    if a.len() != b.len() {
        v.reason = Some(format!("output count differs: {} vs {}", a.len(), b.len()));
        return v;
    }
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if x.len() != y.len() {
            v.reason = Some(format!("output `{name}` changed size"));
            return v;
        }
        let (max_abs_err, rel_l2) = deviation(x, y);
        v.outputs.push(OutputDeviation {
            name: name.clone(),
            max_abs_err,
            rel_l2,
        });
    }
    v.max_rel_l2 = v
        .outputs
        .iter()
        .map(|o| o.rel_l2)
        .fold(None, |m, r| Some(m.map_or(r, |m: f64| m.max(r))));
    v.status = VerifyStatus::Verified;
    v
}
