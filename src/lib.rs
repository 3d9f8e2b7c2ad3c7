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
//! per-layer table, simulation; and the deploy model: data-free activation statistics, rounding
//! onto the declared target grid, bias correction), [`report`] (and its HTML rendering, [`report::html`]),
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
pub mod select;
pub mod server;
pub mod verify;
pub mod work;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

pub use error::{CoreError, Result};
pub use options::{Compat, HbfMode, Options, Relu6Policy, Select, Step, VerifyOptions};
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
    equalize_capturing(model, options, ctl, false).map(|(eq, _, _)| eq)
}

/// [`equalize`] and the data-free activation statistics of the equalized model
/// ([`quant::stats::propagate`] with `stats` options): per-channel `E[x]` and ranges of every
/// tensor it models.
pub fn equalize_with_stats(
    model: ModelProto,
    options: &Options,
    stats: &quant::stats::StatsOptions,
) -> Result<(Equalized, quant::stats::ActivationStats)> {
    let mut opts = options.clone();
    opts.deploy.model = true;
    let (eq, _, origins) = equalize_capturing(model, &opts, Control::default(), false)?;
    let mut eq = eq;
    eq.report.options.deploy.model = options.deploy.model;
    let mut work = Work::new(eq.model.clone())?;
    let s = quant::stats::propagate(&mut work, &eq.labels, &origins.unwrap_or_default(), stats);
    Ok((eq, s))
}

/// What [`equalize_capturing`] returns: the equalized model, the per-layer int8 table when
/// asked, and the activation origins when a deploy model was asked for.
type Captured = (
    Equalized,
    Option<quant::TablePlan>,
    Option<quant::stats::Origins>,
);

/// [`equalize_with`]; with `folded_figures` (and a BN-fold step) it also returns the per-layer
/// int8 table's plan ([`quant::TablePlan`]): the BN-folded figures taken right after the fold;
/// the equalized ones are computed on the finished model, beside its encode. With a
/// deploy model requested it also returns the data-free activation origins
/// ([`quant::stats::Origins::from_pipeline`]).
fn equalize_capturing(
    model: ModelProto,
    options: &Options,
    ctl: Control,
    folded_figures: bool,
) -> Result<Captured> {
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
    let table = figures.map(|before| quant::TablePlan::new(&before, &mut work));
    let origins = opts
        .builds_deploy()
        .then(|| quant::stats::Origins::from_pipeline(&state, &report));
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
        origins,
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
#[derive(Debug, Default)]
pub struct Output {
    /// The equalized model, protobuf-encoded.
    pub model: Vec<u8>,
    /// The report, verification included.
    pub report: Report,
    /// The other requested outputs (QDQ model, encodings, overrides), in [`ArtifactKind`] order.
    pub artifacts: Vec<Artifact>,
    /// The deploy model (weights on the target grid, bias-corrected on request),
    /// protobuf-encoded, when [`quant::deploy::DeployOptions::requested`].
    pub deploy: Option<Vec<u8>>,
}

/// A requested output of a run besides the equalized model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactKind {
    /// The deploy FP32 model.
    Deploy,
    /// The QDQ ONNX model ([`quant::qdq`]).
    Qdq,
    /// AIMET encodings ([`quant::encodings::aimet`]).
    Encodings,
    /// onnxruntime `TensorQuantOverrides` ([`quant::encodings::ort_overrides`]).
    OrtOverrides,
}

impl ArtifactKind {
    /// Every kind.
    pub const ALL: [ArtifactKind; 4] = [
        ArtifactKind::Deploy,
        ArtifactKind::Qdq,
        ArtifactKind::Encodings,
        ArtifactKind::OrtOverrides,
    ];

    /// The artifact's name (also its file name in stores and downloads).
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::Deploy => "deploy.onnx",
            ArtifactKind::Qdq => "qdq.onnx",
            ArtifactKind::Encodings => "encodings.json",
            ArtifactKind::OrtOverrides => "ort_overrides.json",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The media type it is served as.
    pub fn media_type(self) -> &'static str {
        match self {
            ArtifactKind::Deploy | ArtifactKind::Qdq => "application/octet-stream",
            ArtifactKind::Encodings | ArtifactKind::OrtOverrides => "application/json",
        }
    }
}

/// One requested output: its kind and its bytes.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// What it is.
    pub kind: ArtifactKind,
    /// Its content.
    pub data: Vec<u8>,
}

/// The int8 outputs of `options.exports` for the FP32 model `fp32`, with their figures against
/// `original` when sample inputs are given or `quant.end_to_end` is set.
fn int8_exports(
    original: Option<&ModelProto>,
    fp32: &ModelProto,
    stats: Option<&quant::stats::ActivationStats>,
    options: &Options,
    samples: Option<&SampleInputs>,
    report: &mut Report,
    ctl: Control,
) -> Result<Vec<Artifact>> {
    use quant::plan::{Calibration, RangeOrigin, Sites};
    let ex = &options.exports;
    let target = options.target;
    let sites = Sites::find(fp32, target, ex.quantize_outputs)?;
    let tensors = sites.tensors_to_range();
    let (ranges, origin, calibration_samples) = match ex.calibration {
        Calibration::DataFree => (
            stats.map(|s| s.ranges()).unwrap_or_default(),
            RangeOrigin::DataFree,
            0,
        ),
        method => {
            let Some(s) = samples else {
                return Err(CoreError::InvalidOptions(format!(
                    "calibration {} needs sample inputs (--samples)",
                    method.name()
                )));
            };
            let per = quant::samples_of(&s.tensors);
            let r = quant::calib::ranges(
                fp32,
                &tensors,
                &per,
                method,
                target.activations(),
                ex.percentile,
            )
            .map_err(|e| CoreError::Unsupported(format!("calibration: {e}")))?;
            (r, RangeOrigin::Calibrated, per.len())
        }
    };
    let mut ranges = ranges;
    if let Some([lo, hi]) = ex.input_range {
        for t in sites.graph_inputs() {
            ranges.insert(t, (lo, hi));
        }
    }
    ctl.check()?;
    let plan = sites.finish(&ranges, origin, ex.calibration.name());
    let mut artifacts = Vec::new();
    let mut files = Vec::new();
    let mut push = |kind: ArtifactKind, format: String, data: Vec<u8>| {
        files.push(report::ExportFile {
            name: kind.name().into(),
            format,
            bytes: data.len() as u64,
        });
        artifacts.push(Artifact { kind, data });
    };
    if ex.qdq {
        let m = quant::qdq::write(fp32, &plan)?;
        push(ArtifactKind::Qdq, "qdq_onnx".into(), onnx::encode(&m));
    }
    if let Some(v) = ex.encodings {
        let json = serde_json::to_vec_pretty(&quant::encodings::aimet(&plan, v))
            .map_err(|e| CoreError::Unsupported(e.to_string()))?;
        push(
            ArtifactKind::Encodings,
            format!("aimet_encodings_{}", v.as_str()),
            json,
        );
    }
    if ex.ort_overrides {
        let json = serde_json::to_vec_pretty(&quant::encodings::ort_overrides(&plan))
            .map_err(|e| CoreError::Unsupported(e.to_string()))?;
        push(
            ArtifactKind::OrtOverrides,
            "ort_tensor_quant_overrides".into(),
            json,
        );
    }
    let mut exports = report::Exports {
        target: target.describe(),
        ranges: plan.ranges.clone(),
        calibration_samples,
        activations: plan.activations.len(),
        weights: plan.weights.len(),
        biases: plan.biases.len(),
        folded_activations: plan.folded(),
        tied: plan.tied(),
        left_float: plan.left_float.clone(),
        files,
        figures: Vec::new(),
    };
    if let (Some(orig), true) = (original, samples.is_some() || options.quant.end_to_end) {
        ctl.check()?;
        let (inputs, source) = figure_inputs(orig, options, samples)?;
        let per = quant::samples_of(&inputs);
        let in_sample = calibration_samples > 0;
        let figure = |output: &str, method: &str, reference: &[Vec<f32>], outs: &[Vec<f32>]| {
            let (sqnr_db, top1_agreement) = quant::score(reference, outs);
            let (median_sqnr_db, p10_sqnr_db) = quant::spread(reference, outs);
            report::ExportFigure {
                output: output.into(),
                method: method.into(),
                inputs: source.clone(),
                samples: per.len(),
                in_sample,
                sqnr_db,
                median_sqnr_db,
                p10_sqnr_db,
                top1_agreement,
            }
        };
        let simulated = quant::reference_outputs(orig, &per).and_then(|r| {
            let sim = quant::plan_model(fp32, &plan)?;
            Ok((quant::first_outputs(&onnx::encode(&sim), &per)?, r))
        });
        match simulated {
            Ok((outs, reference)) => {
                for a in &artifacts {
                    exports
                        .figures
                        .push(figure(a.kind.name(), "simulated", &reference, &outs));
                }
                ctl.check()?;
                if let Some(q) = artifacts.iter().find(|a| a.kind == ArtifactKind::Qdq) {
                    match quant::first_outputs(&q.data, &per) {
                        Ok(run) => {
                            exports
                                .figures
                                .push(figure(q.kind.name(), "tract", &reference, &run))
                        }
                        Err(e) => report.skipped.push(report::Skip {
                            pass: "exports".into(),
                            nodes: vec![],
                            reason: "not_run".into(),
                            detail: format!("tract could not run the QDQ model: {e}"),
                        }),
                    }
                }
            }
            Err(e) => report.skipped.push(report::Skip {
                pass: "exports".into(),
                nodes: vec![],
                reason: "not_simulated".into(),
                detail: format!("int8 simulation of the plan failed: {e}"),
            }),
        }
    }
    report.exports = Some(exports);
    Ok(artifacts)
}

/// The inputs of the int8 figures: the sample inputs, else one seeded random sample of
/// `original`'s inputs; with a description for the report.
fn figure_inputs(
    original: &ModelProto,
    options: &Options,
    samples: Option<&SampleInputs>,
) -> Result<(Vec<verify::InputTensor>, String)> {
    Ok(match samples {
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
    })
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
    let (inputs, source) = figure_inputs(original, options, samples)?;
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

/// The whole job shared by the CLI and the server: equalize, encode, verify; and the deploy
/// model when asked ([`quant::deploy`]).
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
    if options.select == Select::Auto {
        return select::run(model, original, options, samples, ctl);
    }
    let verify_opts = options.verify.clone();
    let quant = &options.quant;
    // Refused options and tensors fail before any model reaches tract.
    options.clone().normalized()?;
    onnx::validate::tensors(&model)?;
    let deploy_opts = &options.deploy;
    let empirical = options.builds_deploy()
        && deploy_opts.bias_correction == quant::bias_correction::BiasCorrection::Empirical;
    if empirical {
        let n = samples.map_or(0, |s| quant::samples_of(&s.tensors).len());
        if n < quant::bias_correction::MIN_EMPIRICAL_SAMPLES {
            return Err(CoreError::InvalidOptions(format!(
                "empirical bias correction needs at least {} sample inputs (got {n}): per-channel \
                 means of fewer images fit the samples rather than the data; use \
                 bias_correction analytic (data-free) instead",
                quant::bias_correction::MIN_EMPIRICAL_SAMPLES
            )));
        }
    }
    // The per-layer figures need the BN-folded weights: taken during the run when it folds,
    // instead of a second, fold-only run on a copy of the original.
    let figures_in_run = quant.layers && !quant.end_to_end && options.steps.contains(&Step::BnFold);
    let export_figures = options.exports.any() && (samples.is_some() || options.quant.end_to_end);
    let needs_original = quant.end_to_end || export_figures || (quant.layers && !figures_in_run);
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
    let (mut eq, table, origins) = equalize_capturing(model, options, ctl, figures_in_run)?;
    if let (None, Some(input)) = (&original_model, input) {
        onnx::release_input(&mut eq.model, input);
    }
    if table.is_some() {
        ctl.stage("quantization")?;
    }
    // The equalized half of the int8 table runs beside the encode (which is one thread).
    let t = Instant::now();
    let ((bytes, encode_ms), rows) = rayon::join(
        || (onnx::encode(&eq.model), ms(t)),
        || {
            table.map(|plan| {
                let t = Instant::now();
                (plan.rows(&eq.model), ms(t))
            })
        },
    );
    let mut report = eq.report;
    report.timings_ms.encode = encode_ms;
    if let Some((rows, table_ms)) = rows {
        report.timings_ms.quantization += table_ms;
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
    let mut deploy = None;
    if let Some(origins) = origins {
        ctl.stage("deploy")?;
        let t = Instant::now();
        let measured = match samples.filter(|_| empirical) {
            Some(s) => Some(quant::deploy::measured_input_means(
                &eq.model,
                &quant::samples_of(&s.tensors),
            )?),
            None => None,
        };
        let d = quant::deploy::build(
            &eq.model,
            &eq.labels,
            &origins,
            &options.target,
            deploy_opts,
            measured.as_ref(),
        )?;
        let d_bytes = onnx::encode(&d.model);
        if let (Some(orig), true) = (&original_model, quant.end_to_end) {
            deploy_figures(orig, &d, options, samples, &mut report, ctl)?;
        }
        report.timings_ms.deploy = ms(t);
        deploy = Some((d, d_bytes));
    }
    let mut artifacts = Vec::new();
    if options.exports.any() {
        ctl.stage("exports")?;
        let t = Instant::now();
        let (fp32, stats) = match &deploy {
            Some((d, _)) => (&d.model, Some(&d.stats)),
            None => (&eq.model, None),
        };
        artifacts = int8_exports(
            original_model.as_ref(),
            fp32,
            stats,
            options,
            samples,
            &mut report,
            ctl,
        )?;
        report.timings_ms.exports = ms(t);
    }
    drop(original_model);
    if let Some(check) = check.as_mut() {
        if let Some((d, d_bytes)) = deploy.as_mut() {
            ctl.stage("verify_deploy")?;
            let t = Instant::now();
            d.report.measured = Some(check.measure(d_bytes, ctl)?);
            report.timings_ms.deploy += ms(t);
        }
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
    let deploy = deploy.map(|(d, d_bytes)| {
        report.deploy = Some(d.report);
        d_bytes
    });
    ctl.check()?;
    Ok(Output {
        model: bytes,
        report,
        artifacts,
        deploy,
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

    /// Runs another model (the deploy model) against the same reference; its deviation is the
    /// report's figure, not a verdict on the equalized output.
    fn measure(&mut self, bytes: &[u8], ctl: Control) -> Result<report::Verification> {
        let t = Instant::now();
        let reference = match &self.state {
            Ok(r) => r.clone(),
            Err(v) => return Ok(v.clone()),
        };
        let limits = self.limits(ctl);
        let measured = verify::compare_within(
            reference,
            Bytes::copy_from_slice(bytes),
            &self.inputs,
            self.source.clone(),
            &limits,
        );
        self.spent += t.elapsed();
        match measured {
            Ok(v) => Ok(v),
            Err(verify::Stopped::Canceled) => Err(CoreError::Canceled),
            Err(verify::Stopped::Budget(what)) => Ok(self.stopped(&what)),
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

/// The deploy model's simulated int8 rows ([`quant::evaluate_deploy`]), appended to the
/// end-to-end figures (same inputs as [`quantization_figures`]).
fn deploy_figures(
    original: &ModelProto,
    deploy: &quant::deploy::Deploy,
    options: &Options,
    samples: Option<&SampleInputs>,
    report: &mut Report,
    ctl: Control,
) -> Result<()> {
    let inputs = match samples {
        Some(s) => s.tensors.clone(),
        None => {
            let mut specs = verify::input_specs(original, options.verify.dynamic_dim)
                .map_err(CoreError::InvalidOptions)?;
            verify::fill_random(&mut specs, options.verify.seed);
            specs
        }
    };
    let per_sample = quant::samples_of(&inputs);
    ctl.check()?;
    let ranges = deploy.stats.ranges();
    let rows = quant::reference_outputs(original, &per_sample).and_then(|reference| {
        quant::evaluate_deploy(
            &reference,
            &deploy.model,
            &per_sample,
            &options.target.activations(),
            options.quant.w8a8,
            Some(&ranges),
        )
    });
    match rows {
        Ok(rows) => {
            if let Some(e) = report
                .quantization
                .get_or_insert_with(Default::default)
                .end_to_end
                .as_mut()
            {
                e.rows.extend(rows);
            }
        }
        Err(_) if ctl.canceled() => return Err(CoreError::Canceled),
        Err(e) => report.skipped.push(report::Skip {
            pass: "deploy".into(),
            nodes: vec![],
            reason: "not_simulated".into(),
            detail: format!("deploy model simulation failed: {e}"),
        }),
    }
    Ok(())
}
