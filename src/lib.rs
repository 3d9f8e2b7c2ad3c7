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
//! Module map, in data-flow order: [`onnx`] (lossless protobuf I/O), [`graph`]
//! (producers/consumers/topological order), [`layout`] (the one home of weight layouts),
//! [`work`] (the model under edit), [`passes`] (one file per pass), [`quant`] (int8 analysis:
//! per-layer table, simulation), [`report`] (and its HTML rendering, [`report::html`]),
//! [`verify`] (tract). [`server`] is the HTTP transport; [`options`] and [`report`] types sit
//! at the bottom of the imports.

#![warn(missing_docs)]

pub mod builder;
pub mod consteval;
pub mod error;
pub mod fold;
pub mod graph;
pub mod layout;
pub mod limits;
pub mod npy;
pub mod onnx;
pub mod options;
pub mod passes;
pub mod quant;
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
    /// The display label of each node of `model`, as the report names it (unnamed nodes are
    /// `OpType#index` with their index in the input model).
    pub labels: Vec<String>,
}

/// Progress reporting and cooperative cancellation for long runs.
#[derive(Default, Clone, Copy)]
pub struct Control<'a> {
    /// Called with the name of each stage as it starts.
    pub progress: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Checked between stages, between the model runs of the quantization simulation, every
    /// 20 ms while verification waits for tract (see [`verify`]) and when the run ends; when set
    /// the run stops with [`CoreError::Canceled`] (a run canceled during its last stage fails
    /// rather than succeeds late).
    pub cancel: Option<&'a AtomicBool>,
}

impl Control<'_> {
    fn canceled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Fails with [`CoreError::Canceled`] once cancellation was requested.
    fn check(&self) -> Result<()> {
        if self.canceled() {
            return Err(CoreError::Canceled);
        }
        Ok(())
    }

    fn stage(&self, name: &str) -> Result<()> {
        self.check()?;
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
    equalize_capturing(model, options, ctl, false).map(|(eq, _)| eq)
}

/// [`equalize_with`]; with `folded_figures` (and a BN-fold step) it also returns the per-layer
/// int8 table ([`quant::layer_table_in`]): the BN-folded figures taken right after the fold,
/// the equalized ones from the weights still in memory before they are written back.
fn equalize_capturing(
    model: ModelProto,
    options: &Options,
    ctl: Control,
    folded_figures: bool,
) -> Result<(Equalized, Option<Vec<report::LayerQuant>>)> {
    let opts = options.clone().normalized()?;
    let mut figures = None;
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
    onnx::validate::tensors(&model)?;
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
            if folded_figures {
                let t = Instant::now();
                figures = Some(quant::folded_figures(cx.work, true));
                cx.report.timings_ms.quantization += ms(t);
            }
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
        passes::coverage::run(&mut cx);
        passes::fold_written_chains(&mut cx)?;
        passes::relu6::materialize(&mut cx)?;
        cx.report.timings_ms.finish = ms(t);
    }
    if opts.quant.layers {
        report.quantization = Some(report::Quantization {
            activations: data_free_growth(&state),
            ..Default::default()
        });
    }
    let table = match figures {
        Some(before) => {
            ctl.stage("quantization")?;
            let t = Instant::now();
            let rows = quant::layer_table_in(&before, &mut work);
            report.timings_ms.quantization += ms(t);
            Some(rows)
        }
        None => None,
    };
    let t = Instant::now();
    report.model.nodes_after = work.node_count();
    let labels = (0..work.node_count())
        .map(|i| work.label(i).to_string())
        .collect();
    let model = work.finish();
    report.model.initializers_after = model.graph.as_ref().map_or(0, |g| g.initializer.len());
    report.timings_ms.finish += ms(t);
    Ok((
        Equalized {
            model,
            report,
            labels,
        },
        table,
    ))
}

fn data_free_growth(state: &State) -> Vec<report::ActivationGrowth> {
    state
        .pairs
        .iter()
        .filter_map(|p| {
            let hi = p.activation_range.as_ref()?;
            let before = hi.iter().fold(0f32, |m, &v| m.max(v));
            let after = hi
                .iter()
                .zip(&p.scale)
                .fold(0f32, |m, (&h, &s)| m.max(h / s));
            (before > 0.0).then(|| report::ActivationGrowth {
                tensor: p.activation.clone(),
                layer: p.layer1.clone(),
                growth_data_free: f64::from(after) / f64::from(before),
                growth_measured: None,
            })
        })
        .collect()
}

/// Inputs used by verification instead of random data.
#[derive(Debug, Clone)]
pub struct SampleInputs {
    /// One tensor per graph input, in graph order.
    pub tensors: Vec<verify::InputTensor>,
    /// Where they came from (for the report).
    pub source: String,
}

impl SampleInputs {
    /// Sample inputs from a `.npy` array for a single-input model: the array is `[N, …]` with
    /// `…` the model input's shape without its batch dimension (dynamic dims accept any size).
    pub fn from_npy(model: &ModelProto, npy: &[u8], source: &str) -> Result<Self> {
        let array = npy::parse(npy)?;
        let specs = verify::input_specs(model, 1).map_err(CoreError::InvalidOptions)?;
        let [spec] = specs.as_slice() else {
            return Err(CoreError::InvalidOptions(format!(
                "sample inputs from one .npy need a model with exactly one input (it has {})",
                specs.len()
            )));
        };
        let declared: Vec<Option<usize>> = model
            .graph
            .as_ref()
            .and_then(|g| g.input.iter().find(|v| v.name() == spec.name))
            .and_then(onnx::declared_dims)
            .map(|dims| {
                dims.into_iter()
                    .map(|d| d.filter(|&n| n > 0).map(|n| n as usize))
                    .collect()
            })
            .unwrap_or_default();
        let ok = array.shape.len() == declared.len()
            && array
                .shape
                .iter()
                .zip(&declared)
                .skip(1)
                .all(|(a, d)| d.is_none_or(|d| d == *a));
        if !ok || array.shape.is_empty() || array.shape[0] == 0 {
            return Err(CoreError::InvalidOptions(format!(
                "sample array shape {:?} does not match input `{}` ({:?}; batch first)",
                array.shape, spec.name, declared
            )));
        }
        Ok(SampleInputs {
            tensors: vec![verify::InputTensor {
                name: spec.name.clone(),
                shape: array.shape,
                elem_type: spec.elem_type,
                data: array.data,
            }],
            source: source.to_string(),
        })
    }
}

/// A finished run: the encoded model and the report.
#[derive(Debug)]
pub struct Output {
    /// The equalized model, protobuf-encoded.
    pub model: Vec<u8>,
    /// The report, verification included.
    pub report: Report,
}

fn quantization_figures(
    original: &ModelProto,
    equalized: &ModelProto,
    labels: &[String],
    options: &Options,
    samples: Option<&SampleInputs>,
    report: &mut Report,
    ctl: Control,
) -> Result<()> {
    let fold_only = Options {
        steps: vec![Step::BnFold],
        verify: VerifyOptions {
            enabled: false,
            ..options.verify.clone()
        },
        quant: quant::QuantOptions {
            layers: false,
            end_to_end: false,
            ..options.quant.clone()
        },
        ..options.clone()
    };
    let folded = equalize(original.clone(), &fold_only)?.model;
    let q = report.quantization.get_or_insert_with(Default::default);
    if options.quant.layers {
        q.layers = quant::layer_table(&folded, equalized, labels);
    }
    if !options.quant.end_to_end {
        return Ok(());
    }
    let (inputs, source) = match samples {
        Some(s) => (s.tensors.clone(), s.source.clone()),
        None => {
            let mut specs = verify::input_specs(original, options.verify.dynamic_dim)
                .map_err(CoreError::InvalidOptions)?;
            verify::fill_random(&mut specs, options.verify.seed);
            (
                specs,
                format!("random normal (seed {}), 1 sample", options.verify.seed),
            )
        }
    };
    let per_sample = quant::samples_of(&inputs);
    let models = quant::Compared {
        original,
        folded: &folded,
        equalized,
        labels,
    };
    match quant::end_to_end(&models, &per_sample, source, &options.quant, &|| {
        ctl.canceled()
    }) {
        Ok(e) => q.end_to_end = Some(e),
        Err(_) if ctl.canceled() => return Err(CoreError::Canceled),
        Err(e) => report.skipped.push(report::Skip {
            pass: "quantization".into(),
            nodes: vec![],
            reason: "not_simulated".into(),
            detail: format!("end-to-end simulation failed: {e}"),
        }),
    }
    let q = report.quantization.get_or_insert_with(Default::default);
    let tensors: Vec<String> = q.activations.iter().map(|a| a.tensor.clone()).collect();
    if samples.is_some() && !tensors.is_empty() {
        if let (Ok(before), Ok(after)) = (
            quant::measured_abs_max(&folded, &tensors, &per_sample),
            quant::measured_abs_max(equalized, &tensors, &per_sample),
        ) {
            for a in q.activations.iter_mut() {
                if let (Some(b), Some(x)) = (before.get(&a.tensor), after.get(&a.tensor)) {
                    if *b > 0.0 {
                        a.growth_measured = Some(f64::from(*x) / f64::from(*b));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The whole job shared by the CLI and the server: equalize, encode, verify.
///
/// `original` is the input's encoded bytes when available (saves an encode for verification).
///
/// Verification runs the original model in tract first (while only the input is in memory),
/// keeps its outputs, then equalizes, encodes, drops the decoded result and runs the equalized
/// model: one tract model at a time, within the verification budget
/// ([`VerifyOptions::budget_s`]) and the cancellation flag (see [`verify`]).
pub fn run(
    model: ModelProto,
    original: Option<Bytes>,
    options: &Options,
    samples: Option<&SampleInputs>,
    ctl: Control,
) -> Result<Output> {
    let verify_opts = options.verify.clone();
    let quant = &options.quant;
    // Refused options and tensors fail before any model reaches tract.
    options.clone().normalized()?;
    onnx::validate::tensors(&model)?;
    // The per-layer figures need the BN-folded weights: taken during the run when it folds,
    // instead of a second, fold-only run on a copy of the original.
    let figures_in_run = quant.layers && !quant.end_to_end && options.steps.contains(&Step::BnFold);
    let needs_original = quant.end_to_end || (quant.layers && !figures_in_run);
    let mut check = if verify_opts.enabled {
        Some(Verifier::start(
            &model,
            original.as_ref(),
            options,
            samples,
            ctl,
        )?)
    } else {
        None
    };
    let original_model = needs_original.then(|| model.clone());
    let input = original.as_ref().map(|b| b.as_ptr_range());
    drop(original);
    let (mut eq, table) = equalize_capturing(model, options, ctl, figures_in_run)?;
    if let (None, Some(input)) = (&original_model, input) {
        onnx::release_input(&mut eq.model, input);
    }
    let t = Instant::now();
    let bytes = onnx::encode(&eq.model);
    let mut report = eq.report;
    report.timings_ms.encode = ms(t);
    if let Some(rows) = table {
        report
            .quantization
            .get_or_insert_with(Default::default)
            .layers = rows;
    } else if let (Some(orig), true) = (&original_model, quant.layers || quant.end_to_end) {
        ctl.stage("quantization")?;
        let t = Instant::now();
        quantization_figures(
            orig,
            &eq.model,
            &eq.labels,
            options,
            samples,
            &mut report,
            ctl,
        )?;
        report.timings_ms.quantization = ms(t);
    }
    drop(original_model);
    if let Some(check) = check.as_mut() {
        check.simplify_equalized(&eq.model);
    }
    drop(eq.model);
    let bytes = match check {
        Some(check) => {
            ctl.stage("verify")?;
            let (verification, spent, bytes) = check.finish(bytes, ctl)?;
            report.verification = verification;
            report.timings_ms.verify = spent;
            bytes
        }
        None => bytes,
    };
    ctl.check()?;
    Ok(Output {
        model: bytes,
        report,
    })
}

/// Verification in two halves around the passes (see [`run`]).
struct Verifier {
    inputs: std::sync::Arc<Vec<verify::InputTensor>>,
    source: String,
    budget: std::time::Duration,
    spent: std::time::Duration,
    /// The original's outputs, or why verification already stopped.
    state: std::result::Result<verify::Reference, report::Verification>,
    /// The copy of the equalized model handed to tract, when it differs from the output.
    simplified: Option<Vec<u8>>,
}

impl Verifier {
    /// Runs the original model (stage `verify_original`).
    fn start(
        model: &ModelProto,
        original: Option<&Bytes>,
        options: &Options,
        samples: Option<&SampleInputs>,
        ctl: Control,
    ) -> Result<Self> {
        let opts = &options.verify;
        ctl.stage("verify_original")?;
        let t = Instant::now();
        let (inputs, source) = match samples {
            Some(s) => (Ok(s.tensors.clone()), s.source.clone()),
            None => (
                verify::input_specs(model, opts.dynamic_dim).map(|mut specs| {
                    verify::fill_random(&mut specs, opts.seed);
                    specs
                }),
                format!("random normal (seed {})", opts.seed),
            ),
        };
        let size = original.map_or_else(|| prost::Message::encoded_len(model), |b| b.len());
        let budget = std::time::Duration::from_secs_f64(opts.budget_for(size));
        let mut v = Verifier {
            inputs: std::sync::Arc::new(inputs.clone().unwrap_or_default()),
            source,
            budget,
            spent: std::time::Duration::ZERO,
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
        let simplified = verify::simplified(model);
        let nodes = simplified
            .as_ref()
            .unwrap_or(model)
            .graph
            .as_ref()
            .map_or(0, |g| g.node.len());
        let estimate = verify::tract_build_estimate(nodes) * 2;
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
            Err(verify::Stopped::Canceled) => return Err(CoreError::Canceled),
            Err(verify::Stopped::Budget(what)) => Err(v.stopped(&what)),
        };
        Ok(v)
    }

    fn limits<'a>(&self, ctl: Control<'a>) -> verify::Limits<'a> {
        verify::Limits {
            deadline: Some(Instant::now() + self.budget.saturating_sub(self.spent)),
            budget: Some(self.budget),
            cancel: ctl.cancel,
        }
    }

    fn stopped(&self, what: &str) -> report::Verification {
        verify::budget_exceeded(
            &self.inputs,
            self.source.clone(),
            &verify::Limits {
                budget: Some(self.budget),
                ..Default::default()
            },
            what,
        )
    }

    /// Prepares the copy of the equalized model tract will build, when the original needed
    /// one ([`verify::simplified`]).
    fn simplify_equalized(&mut self, equalized: &ModelProto) {
        if matches!(self.state, Ok(Ok(_))) {
            self.simplified = verify::simplified(equalized).map(|m| onnx::encode(&m));
        }
    }

    /// Runs the equalized model `bytes` and compares (stage `verify`). Returns the report
    /// section, the time verification took in milliseconds, and `bytes`.
    fn finish(
        mut self,
        bytes: Vec<u8>,
        ctl: Control,
    ) -> Result<(report::Verification, f64, Vec<u8>)> {
        let t = Instant::now();
        let reference = match std::mem::replace(&mut self.state, Ok(Err(String::new()))) {
            Ok(r) => r,
            Err(v) => return Ok((v, self.spent.as_secs_f64() * 1e3, bytes)),
        };
        let limits = self.limits(ctl);
        let (shared, output) = match self.simplified.take() {
            Some(s) => (Bytes::from(s), Some(bytes)),
            None => (Bytes::from(bytes), None),
        };
        let verified = verify::compare_within(
            reference,
            shared.clone(),
            &self.inputs,
            self.source.clone(),
            &limits,
        );
        let spent = (self.spent + t.elapsed()).as_secs_f64() * 1e3;
        let verification = match verified {
            Ok(v) => v,
            Err(verify::Stopped::Canceled) => return Err(CoreError::Canceled),
            Err(verify::Stopped::Budget(what)) => self.stopped(&what),
        };
        // The output's bytes come back without a copy unless an abandoned run still holds them.
        let bytes = output.unwrap_or_else(|| Vec::from(shared));
        Ok((verification, spent, bytes))
    }
}
