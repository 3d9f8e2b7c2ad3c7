//! # onnx-cle
//!
//! Data-free Cross-Layer Equalization (Nagel et al., "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", ICCV 2019) for ONNX models: BatchNorm folding, ReLU6
//! handling, cross-layer scaling and high-bias fold, with a per-layer report and a numerical
//! verification of the result.
//!
//! The core ([`equalize`], [`run`]) is pure and synchronous: bytes or a decoded model in, an
//! equalized model and a [`report::Report`] out. It knows nothing of HTTP; the [`server`] module
//! and the CLI both call [`run`].
//!
//! Module map: [`onnx`] (lossless protobuf I/O), [`graph`] (producers/consumers/topological
//! order), [`layout`] (the one home of weight layouts), [`work`] (the model under edit),
//! [`passes`] (one file per pass), [`report`], [`verify`] (tract).

#![warn(missing_docs)]

pub mod builder;
pub mod consteval;
pub mod error;
pub mod graph;
pub mod html;
pub mod layout;
pub mod onnx;
pub mod options;
pub mod passes;
pub mod report;
pub mod server;
pub mod verify;
pub mod work;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

pub use error::{CoreError, Result};
pub use options::{Compat, HbfMode, Options, Relu6Policy, Step, VerifyOptions};
pub use report::Report;

use onnx::ModelProto;
use passes::{Ctx, State};
use report::{ModelSummary, VerifyStatus};
use work::Work;

/// An equalized model and what was done to it.
#[derive(Debug)]
pub struct Equalized {
    /// The rewritten model.
    pub model: ModelProto,
    /// What every pass did.
    pub report: Report,
}

/// Progress reporting and cooperative cancellation for long runs.
#[derive(Default, Clone, Copy)]
pub struct Control<'a> {
    /// Called with the name of each stage as it starts.
    pub progress: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Checked between stages; when set the run stops with [`CoreError::Canceled`].
    pub cancel: Option<&'a AtomicBool>,
}

impl Control<'_> {
    fn stage(&self, name: &str) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(CoreError::Canceled);
        }
        if let Some(p) = self.progress {
            p(name);
        }
        Ok(())
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs the selected passes on `model` (no verification).
pub fn equalize(model: ModelProto, options: &Options) -> Result<Equalized> {
    equalize_with(model, options, Control::default())
}

/// [`equalize`] with progress and cancellation.
pub fn equalize_with(model: ModelProto, options: &Options, ctl: Control) -> Result<Equalized> {
    let opts = options.clone().normalized()?;
    let t = Instant::now();
    ctl.stage("prepare")?;
    let mut report = Report {
        schema_version: report::REPORT_SCHEMA_VERSION,
        tool: format!("onnx-cle {}", env!("CARGO_PKG_VERSION")),
        model: ModelSummary {
            ir_version: model.ir_version(),
            opset: onnx::onnx_opset(&model),
            producer: model.producer_name().to_string(),
            ..Default::default()
        },
        options: opts.clone(),
        ..Default::default()
    };
    let mut work = Work::new(model)?;
    report.model.nodes_before = work.node_count();
    report.model.initializers_before = work.graph().initializer.len();
    work.set_scope(&opts.start, &opts.output)?;
    report.model.nodes_in_scope = work.scope_size();
    report.timings_ms.prepare = ms(t);
    let mut state = State::default();
    {
        let mut cx = Ctx {
            work: &mut work,
            opts: &opts,
            report: &mut report,
            state: &mut state,
        };
        if opts.runs(Step::BnFold) {
            ctl.stage("bn_fold")?;
            let t = Instant::now();
            passes::bn_fold::run(&mut cx)?;
            cx.report.timings_ms.bn_fold = ms(t);
        }
        if opts.runs(Step::Relu6) {
            ctl.stage("relu6")?;
            let t = Instant::now();
            passes::relu6::run(&mut cx)?;
            cx.report.timings_ms.relu6 = ms(t);
        }
        if opts.runs(Step::Cls) {
            ctl.stage("cls")?;
            let t = Instant::now();
            passes::cls::run(&mut cx)?;
            cx.report.timings_ms.cls = ms(t);
        }
        if opts.runs(Step::Hbf) {
            ctl.stage("hbf")?;
            let t = Instant::now();
            passes::hbf::run(&mut cx)?;
            cx.report.timings_ms.hbf = ms(t);
        } else {
            cx.report.hbf.mode = format!("{:?}", opts.hbf).to_lowercase();
            cx.report.hbf.reason = Some("step hbf not selected".into());
        }
        ctl.stage("finish")?;
        let t = Instant::now();
        passes::relu6::materialize(&mut cx)?;
        cx.report.timings_ms.finish = ms(t);
    }
    let t = Instant::now();
    report.model.nodes_after = work.node_count();
    let model = work.finish();
    report.model.initializers_after = model.graph.as_ref().map_or(0, |g| g.initializer.len());
    report.timings_ms.finish += ms(t);
    Ok(Equalized { model, report })
}

/// Inputs used by verification instead of random data.
#[derive(Debug, Clone)]
pub struct SampleInputs {
    /// One tensor per graph input, in graph order.
    pub tensors: Vec<verify::InputTensor>,
    /// Where they came from (for the report).
    pub source: String,
}

/// A finished run: the encoded model and the report.
#[derive(Debug)]
pub struct Output {
    /// The equalized model, protobuf-encoded.
    pub model: Vec<u8>,
    /// The report, verification included.
    pub report: Report,
}

/// The whole job shared by the CLI and the server: equalize, encode, verify.
///
/// `original` is the input's encoded bytes when available (saves an encode for verification).
pub fn run(
    model: ModelProto,
    original: Option<Bytes>,
    options: &Options,
    samples: Option<&SampleInputs>,
    ctl: Control,
) -> Result<Output> {
    let verify_opts = options.verify.clone();
    let original_model = verify_opts.enabled.then(|| model.clone());
    let eq = equalize_with(model, options, ctl)?;
    let bytes = onnx::encode(&eq.model);
    let mut report = eq.report;
    if let Some(orig) = original_model {
        ctl.stage("verify")?;
        let t = Instant::now();
        let orig_bytes = match original {
            Some(b) if !onnx::has_external_data(&orig) => b.to_vec(),
            _ => onnx::encode(&orig),
        };
        report.verification = match samples {
            Some(s) => verify::compare(&orig_bytes, &bytes, &s.tensors, s.source.clone()),
            None => match verify::input_specs(&orig, verify_opts.dynamic_dim) {
                Ok(mut specs) => {
                    verify::fill_random(&mut specs, verify_opts.seed);
                    verify::compare(
                        &orig_bytes,
                        &bytes,
                        &specs,
                        format!("random normal (seed {})", verify_opts.seed),
                    )
                }
                Err(e) => report::Verification {
                    status: VerifyStatus::NotVerified,
                    reason: Some(e),
                    ..Default::default()
                },
            },
        };
        report.timings_ms.verify = ms(t);
    }
    Ok(Output {
        model: bytes,
        report,
    })
}
