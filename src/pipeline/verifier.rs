//! Verification as a stage of the run: the original model runs in tract before the passes
//! (while only the input is in memory), the equalized and the deploy model after them, against
//! the same reference and within one budget ([`crate::VerifyOptions::budget_s`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Control, SampleInputs};
use crate::error::{CoreError, Result};
use crate::onnx::{self, ModelProto};
use crate::options::VerifyOptions;
use crate::report::{self, VerifyStatus};
use crate::runtime::{self, Deadline, InputTensor, Stopped};
use crate::verify;

/// Verification in two halves around the passes (see [`super::run`]).
pub(super) struct Verifier {
    inputs: Arc<Vec<InputTensor>>,
    source: String,
    budget: Duration,
    spent: Duration,
    /// The original's outputs, or why verification already stopped.
    state: std::result::Result<verify::Reference, report::Verification>,
    /// The copy of the equalized model handed to tract, when it differs from the output.
    simplified: Option<Vec<u8>>,
}

/// Most sample inputs verification and the int8 self-check run on (the first ones): enough
/// to tell an exact model from a changed one and a better int8 candidate from a worse one,
/// while a run with many large samples stays within the verification budget.
pub const VERIFY_SAMPLES: usize = 8;

/// How many random inputs a run that builds int8 outputs verifies and self-checks them on
/// (stacked along the batch dimension when the model's is dynamic, else one).
///
/// One random input judges int8 candidates by its own noise: a QDQ model's logits SQNR moves by
/// a dB or two from one random input to the next. On the one input of seed `0x5eed`
/// EfficientNet-Lite2's squant + analytic QDQ model (with the graph input's grid of
/// [`crate::options::ActivationGrid::params_on_ends`]) measured under nearest rounding, so
/// the rounding baseline, worse on photos, was written; on four inputs it measures 1.4 to 3.7 dB
/// above it for each of four seeds, as on photos (README: Self-checked int8 outputs).
pub const RANDOM_CHECK_INPUTS: usize = 4;

/// Seeded random inputs of `model` at the shapes `opts` gives: uniform on `input_range` when the
/// run declares one (the int8 outputs are checked on the same inputs), else standard normal,
/// `count` of them when the model's batch dimension is dynamic ([`runtime::stack_samples`]);
/// with their description for the report (naming dynamic dimensions left at `dynamic_dim`).
pub(super) fn random_inputs(
    model: &ModelProto,
    opts: &VerifyOptions,
    input_range: Option<[f32; 2]>,
    count: usize,
) -> (std::result::Result<Vec<InputTensor>, String>, String) {
    let mut stacked = 1;
    let specs = runtime::input_specs_shaped(model, opts.dynamic_dim, &opts.input_shapes).map(
        |mut specs| {
            stacked = runtime::stack_samples(model, &mut specs, count);
            match input_range {
                Some(r) => runtime::fill_uniform(&mut specs, opts.seed, r),
                None => runtime::fill_random(&mut specs, opts.seed),
            }
            specs
        },
    );
    let mut source = match input_range {
        Some([lo, hi]) => format!("random uniform on [{lo}, {hi}] (seed {})", opts.seed),
        None => format!("random normal (seed {})", opts.seed),
    };
    if stacked > 1 {
        source.push_str(&format!(", {stacked} inputs"));
    }
    if let Ok(specs) = &specs {
        let defaulted = runtime::defaulted_shapes(model, specs, &opts.input_shapes);
        if !defaulted.is_empty() {
            source.push_str(&format!(
                "; dynamic dimensions at {} ({}): give the real shapes with --input-shape \
                 (verify.input_shapes) for a check at the sizes the model runs on",
                opts.dynamic_dim,
                defaulted.join(", ")
            ));
        }
    }
    (specs, source)
}

impl Verifier {
    /// Runs the original model (stage `verify_original`) on the first [`VERIFY_SAMPLES`]
    /// samples, else on `random` [`random_inputs`].
    pub(super) fn start(
        model: &ModelProto,
        original: Option<&Bytes>,
        opts: &VerifyOptions,
        input_range: Option<[f32; 2]>,
        samples: Option<&SampleInputs>,
        random: usize,
        ctl: Control,
    ) -> Result<Self> {
        ctl.stage("verify_original")?;
        let t = Instant::now();
        let (inputs, source) = match samples {
            Some(s) => {
                let s = s.first(VERIFY_SAMPLES);
                (Ok(s.tensors), s.source)
            }
            None => random_inputs(model, opts, input_range, random),
        };
        let size = original.map_or_else(|| prost::Message::encoded_len(model), |b| b.len());
        let budget = Duration::from_secs_f64(opts.budget_for(size));
        let mut v = Verifier {
            inputs: Arc::new(inputs.clone().unwrap_or_default()),
            source,
            budget,
            spent: Duration::ZERO,
            state: Ok(Err(String::new())),
            simplified: None,
        };
        if let Err(e) = inputs {
            v.state = Err(report::Verification {
                status: VerifyStatus::NotVerified,
                reason: Some(e),
                ..Default::default()
            });
            return Ok(v);
        }
        let simplified = runtime::simplified(model);
        let nodes = simplified
            .as_ref()
            .unwrap_or(model)
            .graph
            .as_ref()
            .map_or(0, |g| g.node.len());
        let estimate = runtime::tract_build_estimate(nodes) * 2;
        if budget.is_zero() {
            v.state = Err(v.stopped("starting"));
            return Ok(v);
        }
        if estimate > budget {
            v.state = Err(v.stopped(&format!(
                "tract would take about {:.0} s just to build the two {nodes}-node graphs \
                 (its graph build grows with the square of the node count)",
                estimate.as_secs_f64()
            )));
            return Ok(v);
        }
        let bytes = match (simplified, original) {
            (Some(m), _) => Bytes::from(onnx::encode(&m)),
            (None, Some(b)) if !onnx::has_external_data(model) => b.clone(),
            (None, _) => Bytes::from(onnx::encode(model)),
        };
        let limits = v.limits(ctl);
        let reference = verify::reference_within(bytes, &v.inputs, &limits);
        v.spent += t.elapsed();
        v.state = match reference {
            Ok(r) => Ok(r),
            Err(Stopped::Canceled) => return Err(CoreError::Canceled),
            Err(Stopped::Budget(what)) => Err(v.stopped(&what)),
        };
        Ok(v)
    }

    fn limits<'a>(&self, ctl: Control<'a>) -> Deadline<'a> {
        Deadline {
            deadline: Some(Instant::now() + self.budget.saturating_sub(self.spent)),
            budget: Some(self.budget),
            cancel: ctl.cancel,
        }
    }

    fn stopped(&self, what: &str) -> report::Verification {
        verify::budget_exceeded(
            &self.inputs,
            self.source.clone(),
            &Deadline {
                budget: Some(self.budget),
                ..Default::default()
            },
            what,
        )
    }

    /// Prepares the copy of the equalized model tract will build, when the original needed
    /// one ([`runtime::simplified`]).
    pub(super) fn simplify_equalized(&mut self, equalized: &ModelProto) {
        if matches!(self.state, Ok(Ok(_))) {
            self.simplified = runtime::simplified(equalized).map(|m| onnx::encode(&m));
        }
    }

    /// Runs another model (an int8 output) against the same reference; its deviation is the
    /// report's figure, not a verdict on the equalized output. Each such run has the
    /// verification budget to itself, so that checking the int8 outputs never leaves the
    /// equalized model unverified.
    pub(super) fn measure(&mut self, bytes: &[u8], ctl: Control) -> Result<report::Verification> {
        let reference = match &self.state {
            Ok(r) => r.clone(),
            Err(v) => return Ok(v.clone()),
        };
        let limits = Deadline {
            deadline: Some(Instant::now() + self.budget),
            budget: Some(self.budget),
            cancel: ctl.cancel,
        };
        let measured = verify::compare_within(
            reference,
            Bytes::copy_from_slice(bytes),
            &self.inputs,
            self.source.clone(),
            &limits,
        );
        match measured {
            Ok(v) => Ok(v),
            Err(Stopped::Canceled) => Err(CoreError::Canceled),
            Err(Stopped::Budget(what)) => Ok(self.stopped(&what)),
        }
    }

    /// Runs the equalized model `bytes` and compares (stage `verify`). Returns the report
    /// section, the time verification took in milliseconds, and `bytes` when `keep` (empty
    /// otherwise: the buffer is freed as soon as tract has parsed it).
    pub(super) fn finish(
        mut self,
        bytes: Vec<u8>,
        keep: bool,
        ctl: Control,
    ) -> Result<(report::Verification, f64, Vec<u8>)> {
        let t = Instant::now();
        let reference = match std::mem::replace(&mut self.state, Ok(Err(String::new()))) {
            Ok(r) => r,
            Err(v) => return Ok((v, self.spent.as_secs_f64() * 1e3, bytes)),
        };
        let limits = self.limits(ctl);
        // What tract gets, and what comes back: the buffer itself, or tract's shared copy.
        let (shared, output): (Bytes, Option<std::result::Result<Vec<u8>, Bytes>>) =
            match (self.simplified.take(), keep) {
                (Some(s), true) => (Bytes::from(s), Some(Ok(bytes))),
                (Some(s), false) => (Bytes::from(s), None),
                (None, true) => {
                    let b = Bytes::from(bytes);
                    (b.clone(), Some(Err(b)))
                }
                (None, false) => (Bytes::from(bytes), None),
            };
        let verified = verify::compare_within(
            reference,
            shared,
            &self.inputs,
            self.source.clone(),
            &limits,
        );
        let spent = (self.spent + t.elapsed()).as_secs_f64() * 1e3;
        let verification = match verified {
            Ok(v) => v,
            Err(Stopped::Canceled) => return Err(CoreError::Canceled),
            Err(Stopped::Budget(what)) => self.stopped(&what),
        };
        // The output's bytes come back without a copy unless an abandoned run still holds them.
        let bytes = match output {
            Some(Ok(v)) => v,
            Some(Err(shared)) => Vec::from(shared),
            None => Vec::new(),
        };
        Ok((verification, spent, bytes))
    }
}
