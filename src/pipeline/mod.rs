//! The whole job shared by the CLI and the server ([`run`]), as stages in data-flow order:
//!
//! 1. [`equalize`]: validate, then the passes ([`crate::passes::PIPELINE`]) on a [`Work`];
//! 2. [`verifier`]: the original model runs in tract first (while only the input is in memory);
//! 3. encode the equalized model, beside the per-layer int8 table ([`int8`]);
//! 4. [`int8`]: the deploy model, the int8 outputs (QDQ model, encodings) and their figures;
//! 5. [`verifier`]: the equalized (and the deploy) model against the original's outputs.
//!
//! `select = auto` ([`select`]) scores candidate option sets on held-out samples with the
//! equalize stage alone, then runs the stages once with the chosen set. [`samples`] reads the
//! sample inputs and picks the inputs of the figures.
//!
//! Each stage takes the part of the [`Options`] it reads (`&options.verify`, `&options.exports`
//! and the target, …); only [`equalize`] takes the whole set, because the passes read it.

mod equalize;
mod int8;
pub mod npy;
mod samples;
mod select;
mod trust;
mod verifier;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

pub use equalize::{equalize, equalize_with, equalize_with_stats, Equalized};
pub use samples::SampleInputs;
pub use select::candidates;

use crate::error::{CoreError, Result};
use crate::graph::deferred::Deferred;
use crate::onnx::{self, ModelProto};
use crate::options::{BiasCorrection, Calibration, Options, Select, Step};
use crate::quant;
use crate::report::Report;
use verifier::Verifier;

/// Progress reporting and cooperative cancellation for long runs.
#[derive(Default, Clone, Copy)]
pub struct Control<'a> {
    /// Called with the name of each stage as it starts.
    pub progress: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Checked between stages, between the model runs of the quantization simulation, every
    /// 20 ms while verification waits for tract (see [`crate::runtime`]) and when the run ends; when set
    /// the run stops with [`CoreError::Canceled`] (a run canceled during its last stage fails
    /// rather than succeeds late).
    pub cancel: Option<&'a AtomicBool>,
}

impl Control<'_> {
    pub(crate) fn canceled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Fails with [`CoreError::Canceled`] once cancellation was requested.
    pub(crate) fn check(&self) -> Result<()> {
        if self.canceled() {
            return Err(CoreError::Canceled);
        }
        Ok(())
    }

    pub(crate) fn stage(&self, name: &str) -> Result<()> {
        self.check()?;
        if let Some(p) = self.progress {
            p(name);
        }
        Ok(())
    }
}

pub(crate) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
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
    /// protobuf-encoded, when [`crate::options::DeployOptions::requested`].
    pub deploy: Option<Vec<u8>>,
}

/// A requested output of a run besides the equalized model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactKind {
    /// The deploy FP32 model.
    Deploy,
    /// The QDQ ONNX model ([`quant::export::qdq`]).
    Qdq,
    /// AIMET encodings ([`quant::export::encodings::aimet`]).
    Encodings,
    /// onnxruntime `TensorQuantOverrides` ([`quant::export::encodings::ort_overrides`]).
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

/// The equalized model a run produced.
#[derive(Debug)]
pub enum ModelOutput {
    /// Encoded (a verified run encodes it for tract).
    Encoded(Vec<u8>),
    /// Decoded, its large tensors borrowed from the input or the passes' buffers: encoded as it
    /// is written ([`onnx::write::stream`]).
    Decoded(Box<ModelProto>),
    /// Decoded with its deferred weights ([`crate::graph::Work::scale`]): the model holds
    /// their stored bytes, and their values are computed as it is written
    /// ([`onnx::write::stream_computed`]).
    Computed(Box<ModelProto>, Deferred),
    /// Written by the run's [`ModelWriter`]: its length in bytes.
    Written(u64),
}

impl ModelOutput {
    /// The encoding as slices; `None` once written.
    pub fn stream(&self) -> Option<onnx::write::Stream<'_>> {
        match self {
            ModelOutput::Encoded(b) => Some(onnx::write::Stream::from_slice(b)),
            ModelOutput::Decoded(m) => Some(onnx::write::stream(m)),
            ModelOutput::Computed(m, d) => Some(onnx::write::stream_computed(m, d)),
            ModelOutput::Written(_) => None,
        }
    }

    /// The whole encoding in one buffer (empty once written).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ModelOutput::Encoded(b) => b,
            ModelOutput::Decoded(m) => onnx::encode(&m),
            ModelOutput::Computed(m, d) => onnx::write::stream_computed(&m, &d).to_vec(),
            ModelOutput::Written(_) => Vec::new(),
        }
    }
}

/// A finished run whose model is written as a stream ([`run_streamed`]).
#[derive(Debug)]
pub struct Streamed {
    /// The equalized model.
    pub model: ModelOutput,
    /// The report, verification included.
    pub report: Report,
    /// The other requested outputs, as in [`Output::artifacts`].
    pub artifacts: Vec<Artifact>,
    /// The deploy model, as in [`Output::deploy`].
    pub deploy: Option<Vec<u8>>,
}

impl From<Output> for Streamed {
    fn from(o: Output) -> Self {
        Streamed {
            model: ModelOutput::Encoded(o.model),
            report: o.report,
            artifacts: o.artifacts,
            deploy: o.deploy,
        }
    }
}

/// Writes the equalized model (a file, a blob); its errors end the run.
pub type ModelWriter<'a> = &'a mut (dyn FnMut(&onnx::write::Stream<'_>) -> Result<()> + Send);

/// The whole job shared by the CLI and the server: equalize, encode, verify; and the deploy
/// model and the int8 outputs when asked ([`quant::deploy`], [`quant::export`]).
///
/// `original` is the input's encoded bytes when available (saves an encode for verification).
///
/// Verification runs the original model in tract first (while only the input is in memory),
/// keeps its outputs, then equalizes, encodes, drops the decoded result and runs the equalized
/// model: one tract model at a time, within the verification budget
/// ([`crate::VerifyOptions::budget_s`]) and the cancellation flag (see [`crate::runtime`]).
pub fn run(
    model: ModelProto,
    original: Option<Bytes>,
    options: &Options,
    samples: Option<&SampleInputs>,
    ctl: Control,
) -> Result<Output> {
    let s = run_streamed(model, original, options, samples, ctl, None)?;
    Ok(Output {
        model: s.model.into_vec(),
        report: s.report,
        artifacts: s.artifacts,
        deploy: s.deploy,
    })
}

/// [`run`] without a buffer for the whole encoded model when verification is off: the model
/// comes back decoded ([`ModelOutput::Decoded`], or [`ModelOutput::Computed`] when the run
/// deferred its weights' per-channel products: without verification, deploy model and int8
/// outputs nothing else reads the weights, so they are computed only as the model is written and
/// as the per-layer table is taken) or, with `write`, is handed to it as a
/// [`onnx::write::Stream`] ([`ModelOutput::Written`]). Without verification, deploy model and
/// int8 outputs, `write` runs beside the per-layer int8 table; otherwise once everything else
/// succeeded. The bytes are [`run`]'s in every case.
pub fn run_streamed(
    model: ModelProto,
    original: Option<Bytes>,
    options: &Options,
    samples: Option<&SampleInputs>,
    ctl: Control,
    mut write: Option<ModelWriter>,
) -> Result<Streamed> {
    let chosen = match options.select {
        Select::Auto => Some(select::choose(&model, options, samples, ctl)?),
        Select::None => None,
    };
    let (options, samples) = match &chosen {
        Some(c) => (&c.options, Some(&c.rest)),
        None => (options, samples),
    };
    // Ranges fitted to the samples are checked on samples they were not fitted to.
    let split = samples
        .filter(|_| options.exports.any() && options.exports.calibration != Calibration::DataFree)
        .filter(|_| options.verify.enabled)
        .and_then(|s| s.held_out(verifier::VERIFY_SAMPLES));
    let all_samples = samples;
    let (check_samples, samples) = match &split {
        Some((check, fit)) => (Some(check), Some(fit)),
        None => (samples, samples),
    };
    let quant = &options.quant;
    // Refused options and tensors fail before any model reaches tract.
    options.clone().normalized()?;
    onnx::validate::tensors(&model)?;
    if !options.verify.input_shapes.is_empty() {
        crate::runtime::input_specs_shaped(&model, 1, &options.verify.input_shapes)
            .map_err(CoreError::InvalidOptions)?;
    }
    let empirical =
        options.builds_deploy() && options.deploy.bias_correction == BiasCorrection::Empirical;
    if empirical {
        let n = samples.map_or(0, |s| quant::samples_of(&s.tensors).len());
        if n < quant::deploy::bias_correction::MIN_EMPIRICAL_SAMPLES {
            return Err(CoreError::InvalidOptions(format!(
                "empirical bias correction needs at least {} sample inputs (got {n}): per-channel \
                 means of fewer images fit the samples rather than the data; use \
                 bias_correction analytic (data-free) instead",
                quant::deploy::bias_correction::MIN_EMPIRICAL_SAMPLES
            )));
        }
    }
    // The per-layer figures need the BN-folded weights: taken during the run when it folds,
    // instead of a second, fold-only run on a copy of the original.
    let figures_in_run = quant.layers && !quant.end_to_end && options.steps.contains(&Step::BnFold);
    let export_figures = options.exports.any() && (samples.is_some() || quant.end_to_end);
    let needs_original = quant.end_to_end || export_figures || (quant.layers && !figures_in_run);
    let mut check = if options.verify.enabled {
        Some(Verifier::start(
            &model,
            original.as_ref(),
            &options.verify,
            options.exports.input_range,
            check_samples,
            if options.builds_deploy() {
                verifier::RANDOM_CHECK_INPUTS
            } else {
                1
            },
            ctl,
        )?)
    } else {
        None
    };
    if let (Some(_), Some(o)) = (&check, &original) {
        // tract has copied the original's weights: a memory-mapped input's pages leave the
        // resident set until something reads them again.
        onnx::mapped::release(o);
    }
    let original_model = needs_original.then(|| model.clone());
    let input = original.as_ref().map(|b| b.as_ptr_range());
    drop(original);
    let source_input = equalize::wants_int8_run(options).then(|| model.clone());
    // A run that only writes the model and its table never holds the scaled weights: their
    // products are replayed while the model is written and while the table is computed.
    let defer = check.is_none()
        && !options.builds_deploy()
        && !options.exports.any()
        && original_model.is_none()
        && source_input.is_none();
    let ((mut eq, table, origins), mut deferred) = if defer {
        equalize::capturing_deferred(model, options, ctl, figures_in_run)?
    } else {
        (
            equalize::capturing(model, options, ctl, figures_in_run)?,
            Deferred::default(),
        )
    };
    // The int8 outputs' own run is one stage for the caller: its passes do not announce
    // `prepare` … `finish` a second time (cancellation still reaches them).
    let source = match source_input {
        Some(m) => {
            ctl.stage("int8_model")?;
            let quiet = Control {
                progress: None,
                ..ctl
            };
            equalize::int8_run(m, options, &eq.report, quiet)?
        }
        None => None,
    };
    let kept_bn: Vec<crate::report::Skip> = source
        .iter()
        .flat_map(|(e, _, _)| {
            e.report
                .skipped
                .iter()
                .filter(|s| s.reason == crate::passes::bn_fold::KEPT_FOR_INT8)
                .cloned()
                .map(|s| crate::report::Skip {
                    pass: "int8".into(),
                    ..s
                })
        })
        .collect();
    let (int8_eq, origins) = match source {
        Some((e, _, o)) => (Some(e), o),
        None => (None, origins),
    };
    if let (None, Some(input)) = (&original_model, input) {
        onnx::release_input(&mut eq.model, input);
    }
    if table.is_some() {
        ctl.stage("quantization")?;
    }
    // The equalized half of the int8 table runs beside the encode (which is one thread), or
    // beside the write when nothing that can still fail follows it.
    let verifying = check.is_some();
    let write_early = write.is_some()
        && !verifying
        && origins.is_none()
        && !options.exports.any()
        && original_model.is_none();
    // Only the writer and the table read a deferred model (by construction of `defer`; this
    // keeps any other reader right).
    if (verifying || origins.is_some() || options.exports.any()) && !deferred.is_empty() {
        std::mem::take(&mut deferred).apply_to(&mut eq.model);
    }
    let t = Instant::now();
    let (encoded, rows) = rayon::join(
        || -> Result<(Option<Vec<u8>>, Option<u64>, f64)> {
            if verifying {
                Ok((Some(onnx::encode(&eq.model)), None, ms(t)))
            } else if let (true, Some(w)) = (write_early, write.as_mut()) {
                let s = onnx::write::stream_computed(&eq.model, &deferred);
                let encode_ms = ms(t);
                w(&s)?;
                Ok((None, Some(s.len()), encode_ms))
            } else {
                Ok((None, None, 0.0))
            }
        },
        || {
            table.map(|plan| {
                let t = Instant::now();
                (plan.rows_deferred(&eq.model, &deferred), ms(t))
            })
        },
    );
    let (encoded, written, encode_ms) = encoded?;
    // The int8 outputs come from a run of their own and the equalized model is already
    // encoded for verification: from here on only that encoding is needed, so the equalized
    // weights are freed before the deploy model and the exports are built.
    let mut simplified = false;
    if let (Some(c), Some(_), Some(_), None) = (check.as_mut(), &encoded, &int8_eq, &original_model)
    {
        c.simplify_equalized(&eq.model);
        simplified = true;
        eq.model = ModelProto::default();
        crate::runtime::release_free_memory();
    }
    let mut report = eq.report;
    report.skipped.extend(kept_bn.iter().cloned());
    let int8_model = int8_eq.as_ref().map_or(&eq.model, |e| &e.model);
    let int8_labels = int8_eq.as_ref().map_or(&eq.labels, |e| &e.labels);
    report.timings_ms.encode = encode_ms;
    let figure_inputs = |m: &ModelProto| samples::figure_inputs(m, &options.verify, samples);
    if let Some((rows, table_ms)) = rows {
        report.timings_ms.quantization += table_ms;
        report
            .quantization
            .get_or_insert_with(Default::default)
            .layers = rows;
    } else if let (Some(orig), true) = (&original_model, quant.layers || quant.end_to_end) {
        ctl.stage("quantization")?;
        let t = Instant::now();
        let folded = equalize::bn_folded(orig, options)?;
        let inputs = if quant.end_to_end {
            Some(figure_inputs(orig)?)
        } else {
            None
        };
        int8::quantization_figures(
            int8::Models {
                original: orig,
                folded: &folded,
                equalized: &eq.model,
                labels: &eq.labels,
            },
            quant,
            inputs,
            samples.is_some(),
            &mut report,
            ctl,
        )?;
        report.timings_ms.quantization = ms(t);
    }
    let mut deploy = None;
    let mut checks = Vec::new();
    if let Some(origins) = origins {
        ctl.stage("deploy")?;
        let t = Instant::now();
        let measured = match samples.filter(|_| empirical) {
            Some(s) => Some(quant::deploy::measured_input_means(
                int8_model,
                &quant::samples_of(&s.tensors),
            )?),
            None => None,
        };
        // The int16 pair bounds count on the activation ranges of the int8 exports' plan (the
        // channels' ranges over every sample: the written plan is refitted to all of them).
        let pair_ranges = match all_samples {
            Some(s)
                if options.exports.any()
                    && options.exports.calibration != Calibration::DataFree
                    && options.target.weights().int16_pairs =>
            {
                match quant::deploy::measured_input_ranges(
                    int8_model,
                    &quant::samples_of(&s.tensors),
                ) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        report.skipped.push(crate::report::Skip {
                            pass: "int8".into(),
                            nodes: vec![],
                            reason: "pair_bounds_not_measured".into(),
                            detail: format!(
                                "int16 pairs kept safe for any input byte (255): the layers' \
                                 input ranges could not be measured on the samples: {e}"
                            ),
                        });
                        None
                    }
                }
            }
            _ => None,
        };
        // Data-free runs keep every byte at 255: their self-check runs on random inputs, which
        // rank byte-bounded weights wrongly (EfficientNet-Lite2: 18.0 dB on photos, rejected
        // for bias correction off at 15.1).
        let bounds = match &pair_ranges {
            Some(r) => quant::deploy::PairBounds::Measured(r),
            None => quant::deploy::PairBounds::AnyInput,
        };
        let build = |opts: &crate::options::DeployOptions| {
            let mut d = quant::deploy::build(
                int8_model,
                int8_labels,
                &origins,
                &options.target,
                opts,
                measured.as_ref(),
                bounds,
                options.exports.input_range,
            )?;
            d.report.scaling = Some(options.scaling().of_int8());
            d.report.skipped.extend(kept_bn.iter().cloned());
            if !kept_bn.is_empty() {
                quant::deploy::note_kept_bn(&mut d, kept_bn.len());
            }
            Ok::<_, CoreError>(trust::Candidate {
                label: trust::label_of(&d.report),
                probe: None,
                bytes: onnx::encode(&d.model),
                value: d,
            })
        };
        let requested = build(&options.deploy)?;
        let plain = options.deploy.rounding == crate::options::Rounding::Nearest
            && options.deploy.bias_correction == BiasCorrection::Off;
        let alternatives = || {
            trust::deploy_alternatives(&options.deploy)
                .iter()
                .map(&build)
                .collect::<Result<Vec<_>>>()
        };
        let (kept, measured, mut checked) = trust::check(
            "deploy.onnx",
            requested,
            plain,
            alternatives,
            check.as_mut(),
            ctl,
        )?;
        if checked.fell_back {
            checked.candidates[0].label = format!("requested: {}", checked.candidates[0].label);
        }
        let baseline_kept = plain || kept.label == trust::label_of_baseline();
        let (mut d, d_bytes) = (kept.value, kept.bytes);
        d.report.measured = measured;
        if options.deploy.requested() {
            checks.push(checked);
        }
        if let (Some(orig), true) = (&original_model, quant.end_to_end) {
            let (inputs, _) = figure_inputs(orig)?;
            int8::deploy_figures(orig, &d, &options.target, quant, &inputs, &mut report, ctl)?;
        }
        report.timings_ms.deploy = ms(t);
        deploy = Some((d, d_bytes, baseline_kept));
    }
    let mut artifacts = Vec::new();
    let mut coverage = None;
    if options.exports.any() {
        ctl.stage("exports")?;
        let t = Instant::now();
        let measured = match (&original_model, export_figures) {
            (Some(orig), true) => Some((orig, figure_inputs(orig)?)),
            _ => None,
        };
        let (a, checked, counts) = int8::exports(
            int8::Sources {
                equalized: int8_model,
                deploy: deploy.as_ref().map(|(d, _, _)| d),
                deploy_is_baseline: deploy.as_ref().is_some_and(|(_, _, b)| *b),
            },
            &options.exports,
            &options.target,
            samples,
            split.as_ref().and(all_samples),
            measured
                .as_ref()
                .map(|(o, (i, s))| (*o, i.as_slice(), s.as_str())),
            check.as_mut(),
            &mut report,
            ctl,
        )?;
        artifacts = a;
        checks.push(checked);
        coverage = Some(counts);
        report.timings_ms.exports = ms(t);
    }
    if !checks.is_empty() {
        report.int8 = Some(trust::verdict(checks, coverage));
    }
    drop(original_model);
    if let (Some(check), false) = (check.as_mut(), simplified) {
        check.simplify_equalized(&eq.model);
    }
    let model = match (check, encoded) {
        (Some(check), Some(bytes)) => {
            drop(eq.model);
            // The passes' buffers were freed on this thread; tract builds on another.
            crate::runtime::release_free_memory();
            // Everything that can fail has run: with a writer the model is written now and
            // its buffer freed as soon as tract has parsed it.
            let written = match write.as_mut() {
                Some(w) => {
                    ctl.check()?;
                    w(&onnx::write::Stream::from_slice(&bytes))?;
                    Some(bytes.len() as u64)
                }
                None => None,
            };
            ctl.stage("verify")?;
            let (verification, spent, bytes) = check.finish(bytes, written.is_none(), ctl)?;
            report.verification = verification;
            report.timings_ms.verify = spent;
            match written {
                Some(n) => ModelOutput::Written(n),
                None => ModelOutput::Encoded(bytes),
            }
        }
        _ => match written {
            Some(n) => ModelOutput::Written(n),
            None if !deferred.is_empty() => ModelOutput::Computed(Box::new(eq.model), deferred),
            None => ModelOutput::Decoded(Box::new(eq.model)),
        },
    };
    let model = match (write, model) {
        (
            Some(w),
            m @ (ModelOutput::Encoded(_) | ModelOutput::Decoded(_) | ModelOutput::Computed(..)),
        ) => {
            ctl.check()?;
            let t = Instant::now();
            let s = m.stream().expect("not written yet");
            let n = s.len();
            if matches!(m, ModelOutput::Decoded(_) | ModelOutput::Computed(..)) {
                report.timings_ms.encode += ms(t);
            }
            w(&s)?;
            ModelOutput::Written(n)
        }
        (_, m) => m,
    };
    let deploy = deploy.map(|(d, d_bytes, _)| {
        report.deploy = Some(d.report);
        d_bytes
    });
    report.selection = chosen.map(|c| c.selection);
    crate::graph::deferred::clear_pool();
    ctl.check()?;
    Ok(Streamed {
        model,
        report,
        artifacts,
        deploy,
    })
}
