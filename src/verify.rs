//! Verification: run the original and the equalized model with tract ([`crate::runtime`]) on
//! the same inputs and measure how far the outputs drift (max abs error, relative L2
//! `‖a − b‖ / ‖a‖` per output).
//!
//! Inputs are seeded standard-normal samples (or caller-provided samples); dynamic dimensions
//! take `dynamic_dim`. A model tract cannot load or run is reported as not verified, with the
//! reason: it is never an error of the run.
//!
//! Bounded cost ([`compare_within`]): the original runs first ([`reference_within`]) and only
//! its outputs are kept; the equalized model runs second, each in a [`Session`] waited for
//! within a [`Deadline`] (the verification budget and the cancellation flag).

use std::sync::Arc;

use bytes::Bytes;

use crate::report::{OutputDeviation, TensorShape, Verification, VerifyStatus};
use crate::runtime::{run_samples, Deadline, InputTensor, Outputs, Session, Stopped};

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

/// Compares two encoded models on `inputs` (described as `source` in the report), one after the
/// other, without a budget.
pub fn compare(
    original: &[u8],
    equalized: &[u8],
    inputs: &[InputTensor],
    source: String,
) -> Verification {
    let mut v = unverified(inputs, source);
    let a = match run_samples(original, inputs) {
        Ok(a) => a,
        Err(e) => {
            v.reason = Some(format!("tract cannot run the original model: {e}"));
            return v;
        }
    };
    let b = run_samples(equalized, inputs);
    finish(v, a, b)
}

fn unverified(inputs: &[InputTensor], source: String) -> Verification {
    Verification {
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
    }
}

/// The deviation of the equalized model's outputs `b` from the original's `a`.
fn finish(mut v: Verification, a: Outputs, b: Result<Outputs, String>) -> Verification {
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

/// The outputs of the original model, run first by [`compare_within`]'s caller (so that only
/// one tract model exists at a time); `Err` holds why tract could not run it.
pub type Reference = Result<Outputs, String>;

/// Runs the original model within `limits` ([`compare_within`]'s first half).
pub fn reference_within(
    original: Bytes,
    inputs: &Arc<Vec<InputTensor>>,
    limits: &Deadline,
) -> Result<Reference, Stopped> {
    limits.check("building the original model")?;
    Session::start(original, Arc::clone(inputs)).wait(limits, "running the original model")
}

/// Runs the equalized model within `limits` and compares it with the original's outputs
/// ([`reference_within`]).
pub fn compare_within(
    reference: Reference,
    equalized: Bytes,
    inputs: &Arc<Vec<InputTensor>>,
    source: String,
    limits: &Deadline,
) -> Result<Verification, Stopped> {
    let v = unverified(inputs, source);
    let a = match reference {
        Ok(a) => a,
        Err(e) => {
            return Ok(Verification {
                reason: Some(format!("tract cannot run the original model: {e}")),
                ..v
            })
        }
    };
    limits.check("building the equalized model")?;
    let b = Session::start(equalized, Arc::clone(inputs))
        .wait(limits, "running the equalized model")?;
    Ok(finish(v, a, b))
}

/// The report of a verification stopped by its budget.
pub fn budget_exceeded(
    inputs: &[InputTensor],
    source: String,
    limits: &Deadline,
    what: &str,
) -> Verification {
    let budget = limits
        .budget
        .map_or_else(String::new, |b| format!(" of {:.1} s", b.as_secs_f64()));
    Verification {
        reason: Some(format!(
            "budget exceeded: the verification budget{budget} ran out while {what} (raise it \
             with --verify-budget or the job option verify.budget_s)"
        )),
        ..unverified(inputs, source)
    }
}
