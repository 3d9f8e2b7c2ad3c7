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
    /// Checked between stages, between the model runs of the quantization simulation and when
    /// the run ends; when set the run stops with [`CoreError::Canceled`] (a run canceled during
    /// its last stage fails rather than succeeds late).
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
    Option<Vec<report::LayerQuant>>,
    Option<quant::stats::Origins>,
);

/// [`equalize_with`]; with `folded_figures` (and a BN-fold step) it also returns the per-layer
/// int8 table ([`quant::layer_table_in`]): the BN-folded figures taken right after the fold,
/// the equalized ones from the weights still in memory before they are written back. With a
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
    let origins = opts
        .deploy
        .requested()
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
    /// The deploy model (weights on the target grid, bias-corrected on request),
    /// protobuf-encoded, when [`quant::deploy::DeployOptions::requested`].
    pub deploy: Option<Vec<u8>>,
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

/// The whole job shared by the CLI and the server: equalize, encode, verify; and the deploy
/// model when asked ([`quant::deploy`]).
///
/// `original` is the input's encoded bytes when available (saves an encode for verification).
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
    let deploy_opts = &options.deploy;
    let empirical = deploy_opts.requested()
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
    let original_model =
        (verify_opts.enabled || quant.end_to_end || (quant.layers && !figures_in_run))
            .then(|| model.clone());
    let input = original.as_ref().map(|b| b.as_ptr_range());
    let original = original.filter(|_| verify_opts.enabled);
    let (mut eq, table, origins) = equalize_capturing(model, options, ctl, figures_in_run)?;
    if let (None, None, Some(input)) = (&original_model, &original, input) {
        onnx::release_input(&mut eq.model, input);
    }
    let bytes = onnx::encode(&eq.model);
    let mut report = eq.report;
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
    if let Some(orig) = original_model.filter(|_| verify_opts.enabled) {
        ctl.stage("verify")?;
        let t = Instant::now();
        let orig_bytes = match original {
            Some(b) if !onnx::has_external_data(&orig) => b,
            _ => Bytes::from(onnx::encode(&orig)),
        };
        let random;
        let inputs: std::result::Result<(&[verify::InputTensor], String), String> = match samples {
            Some(s) => Ok((&s.tensors, s.source.clone())),
            None => match verify::input_specs(&orig, verify_opts.dynamic_dim) {
                Ok(mut specs) => {
                    verify::fill_random(&mut specs, verify_opts.seed);
                    random = specs;
                    Ok((
                        &random,
                        format!("random normal (seed {})", verify_opts.seed),
                    ))
                }
                Err(e) => Err(e),
            },
        };
        let verification = |model: &[u8]| match &inputs {
            Ok((tensors, source)) => verify::compare(&orig_bytes, model, tensors, source.clone()),
            Err(e) => report::Verification {
                status: VerifyStatus::NotVerified,
                reason: Some(e.clone()),
                ..Default::default()
            },
        };
        report.verification = verification(&bytes);
        report.timings_ms.verify = ms(t);
        if let Some((d, d_bytes)) = deploy.as_mut() {
            let t = Instant::now();
            d.report.measured = Some(verification(d_bytes));
            report.timings_ms.deploy += ms(t);
        }
    }
    let deploy = deploy.map(|(d, d_bytes)| {
        report.deploy = Some(d.report);
        d_bytes
    });
    ctl.check()?;
    Ok(Output {
        model: bytes,
        report,
        deploy,
    })
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
