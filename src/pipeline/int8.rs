//! The int8 stages: the per-layer table and the end-to-end simulation of the equalized model,
//! the deploy model's simulated rows, and the int8 outputs (QDQ model, AIMET encodings,
//! onnxruntime overrides) with their figures.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use super::verifier::Verifier;
use super::{trust, Artifact, ArtifactKind, Control, SampleInputs};
use crate::error::{CoreError, Result};
use crate::graph::opset;
use crate::onnx::{self, ModelProto};
use crate::options::{
    BiasCorrection, Calibration, ExportOptions, Granularity, QuantOptions, Rounding, Target,
};
use crate::quant::{
    self,
    deploy::Deploy,
    plan::{RangeOrigin, Sites},
};
use crate::report::trust::OutputCheck;
use crate::report::Report;
use crate::runtime::InputTensor;

/// The models the int8 outputs are written from.
pub(super) struct Sources<'a> {
    /// The equalized model (the baseline's weights).
    pub equalized: &'a ModelProto,
    /// The deploy model, when one was built: its weights, data-free statistics and grid steps
    /// are used.
    pub deploy: Option<&'a Deploy>,
    /// The deploy model is its own baseline (nearest rounding, no correction, or the fallback).
    pub deploy_is_baseline: bool,
}

/// The int8 outputs `ex` asks for, on `target`'s grid, from `src` (the deploy model when one
/// was built), self-checked by `verifier` against the QDQ model of the equalized weights
/// rounded to nearest ([`super::trust`]); with their figures against the original model when
/// `measured` gives it with the inputs to run (and their description). With `refit` (every
/// sample, when `samples` are those the check did not run on), the kept QDQ model is written
/// with its ranges calibrated on all of them. Returns the outputs,
/// the check, and the `(quantized, quantizable)` activation counts.
#[allow(clippy::too_many_arguments)]
pub(super) fn exports(
    src: Sources,
    ex: &ExportOptions,
    target: &Target,
    samples: Option<&SampleInputs>,
    refit: Option<&SampleInputs>,
    measured: Option<(&ModelProto, &[InputTensor], &str)>,
    verifier: Option<&mut Verifier>,
    report: &mut Report,
    ctl: Control,
) -> Result<(Vec<Artifact>, OutputCheck, (usize, usize))> {
    let target = *target;
    let deploy = src.deploy;
    let fp32 = deploy.map_or(src.equalized, |d| &d.model);
    let stats = deploy.map(|d| &d.stats);
    let shapes = samples
        .map(|s| s.tensors.as_slice())
        .or(measured.map(|(_, i, _)| i));
    let (upgrade, qdq) = opset_for_qdq(fp32, ex, &target, shapes, report);
    let fp32 = upgrade.as_ref().map_or(fp32, |(u, _)| &u.model);
    let sites_of = |m: &ModelProto, steps: Option<&HashMap<String, Vec<f32>>>| {
        let mut s = Sites::find(m, target, ex.quantize_outputs)?;
        if let (Some(steps), Some(d)) = (steps, deploy) {
            s.use_steps(steps);
            s.use_bytes(&d.bytes);
        }
        Ok::<_, CoreError>(s)
    };
    let mut sites = sites_of(fp32, deploy.map(|d| &d.steps))?;
    if let (Calibration::DataFree, Some(st)) = (ex.calibration, stats) {
        sites.explain(|t| st.why_unknown(t).map(str::to_string));
    }
    // Calibrated ranges of `m`'s tensors to range on `s`.
    let calibrate = |m: &ModelProto, sites: &Sites, s: &SampleInputs| {
        let per = quant::samples_of(&s.tensors);
        let r = quant::calib::ranges(
            m,
            &sites.tensors_to_range(),
            &per,
            ex.calibration,
            target.activations(),
            ex.percentile,
        )
        .map_err(|e| CoreError::Unsupported(format!("calibration: {e}")))?;
        Ok::<_, CoreError>((r, RangeOrigin::Calibrated, per.len()))
    };
    // The ranges the upgrade's views and the declared input range add.
    let complete = |mut ranges: HashMap<String, (f32, f32)>, sites: &Sites| {
        for (new, original) in upgrade.iter().flat_map(|(u, _)| &u.aliases) {
            if let Some(&r) = ranges.get(original) {
                ranges.insert(new.clone(), r);
            }
        }
        if let Some([lo, hi]) = ex.input_range {
            for t in sites.graph_inputs() {
                ranges.insert(t, (lo, hi));
            }
        }
        ranges
    };
    let (ranges, origin, mut calibration_samples) = match ex.calibration {
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
            calibrate(fp32, &sites, s)?
        }
    };
    let ranges = complete(ranges, &sites);
    ctl.check()?;
    let (wide, mixed) = match ex.mixed_precision {
        Some(share) => {
            let placed: Vec<String> = sites
                .clone()
                .finish(&ranges, origin, ex.calibration.name())
                .activations
                .into_iter()
                .map(|a| a.tensor)
                .collect();
            let (w, r) =
                quant::mixed::choose(fp32, &placed, &ranges, stats, target.activations(), share);
            (w, Some(r))
        }
        None => Default::default(),
    };
    let requested_plan = sites.finish_mixed(&ranges, origin, ex.calibration.name(), &wide);
    let label = deploy.map_or_else(
        || trust::label(Rounding::Nearest, BiasCorrection::Off),
        |d| trust::label_of(&d.report),
    );
    let (plan, fp32, qdq_bytes, check) = if qdq {
        let written = quant::export::qdq::write(fp32, &requested_plan)?;
        let bytes = onnx::encode(&written);
        let requested = trust::Candidate {
            label,
            probe: Some(onnx::encode(&quant::export::qdq::as_float_ops(written))),
            bytes,
            value: (requested_plan, Cow::Borrowed(fp32)),
        };
        let baseline = || {
            let equalized = match &upgrade {
                Some(_) => {
                    let facts = crate::runtime::tensor_facts(src.equalized, shapes);
                    match opset::upgrade(src.equalized, &facts) {
                        Ok(u) => Cow::Owned(u.model),
                        Err(_) => return Ok(Vec::new()),
                    }
                }
                None => Cow::Borrowed(src.equalized),
            };
            let plan = sites_of(&equalized, None)?.finish_mixed(
                &ranges,
                origin,
                ex.calibration.name(),
                &wide,
            );
            let written = quant::export::qdq::write(&equalized, &plan)?;
            let bytes = onnx::encode(&written);
            Ok(vec![trust::Candidate {
                label: format!(
                    "baseline: {}",
                    trust::label(Rounding::Nearest, BiasCorrection::Off)
                ),
                probe: Some(onnx::encode(&quant::export::qdq::as_float_ops(written))),
                bytes,
                value: (plan, equalized),
            }])
        };
        let is_baseline = deploy.is_none() || src.deploy_is_baseline;
        let (kept, _, check) =
            trust::check("qdq.onnx", requested, is_baseline, baseline, verifier, ctl)?;
        match refit {
            // Checked with ranges fitted to the other samples; written with ranges fitted to
            // all of them.
            Some(all) if ex.calibration != Calibration::DataFree => {
                let model = kept.value.1;
                let steps = deploy.filter(|_| !check.fell_back).map(|d| &d.steps);
                let sites = sites_of(&model, steps)?;
                let (r, _, n) = calibrate(&model, &sites, all)?;
                calibration_samples = n;
                let ranges = complete(r, &sites);
                let plan = sites.finish_mixed(&ranges, origin, ex.calibration.name(), &wide);
                let bytes = onnx::encode(&quant::export::qdq::write(&model, &plan)?);
                (plan, model, Some(bytes), check)
            }
            _ => (kept.value.0, kept.value.1, Some(kept.bytes), check),
        }
    } else {
        let check = trust::not_checked(
            "qdq.onnx",
            label,
            "no QDQ model could be written (see `skipped`: opset_upgrade_refused)",
        );
        (requested_plan, Cow::Borrowed(fp32), None, check)
    };
    let fp32: &ModelProto = &fp32;
    // Graph outputs kept float by choice do not count against the int8 verdict.
    let coverage = (
        plan.coverage.placed,
        plan.coverage.quantizable - plan.coverage.outputs_kept,
    );
    let mut artifacts = Vec::new();
    let mut files = Vec::new();
    let mut push = |kind: ArtifactKind, format: String, data: Vec<u8>| {
        files.push(crate::report::ExportFile {
            name: kind.name().into(),
            format,
            bytes: data.len() as u64,
        });
        artifacts.push(Artifact { kind, data });
    };
    if let (true, Some(bytes)) = (ex.qdq, qdq_bytes) {
        push(ArtifactKind::Qdq, "qdq_onnx".into(), bytes);
    }
    // The encodings and overrides name the tensors of the model the user keeps, not the views
    // the upgrade added.
    let plan_as_given = match upgrade.as_ref().filter(|(u, _)| !u.aliases.is_empty()) {
        Some((u, _)) => {
            let added: HashSet<&str> = u.aliases.iter().map(|(n, _)| n.as_str()).collect();
            let mut p = plan.clone();
            p.activations.retain(|a| !added.contains(a.tensor.as_str()));
            p
        }
        None => plan.clone(),
    };
    let plan_given = &plan_as_given;
    if let Some(v) = ex.encodings {
        let json = serde_json::to_vec_pretty(&quant::export::encodings::aimet(plan_given, v))
            .map_err(|e| CoreError::Unsupported(e.to_string()))?;
        push(
            ArtifactKind::Encodings,
            format!("aimet_encodings_{}", v.as_str()),
            json,
        );
    }
    if ex.ort_overrides {
        let json = serde_json::to_vec_pretty(&quant::export::encodings::ort_overrides(plan_given))
            .map_err(|e| CoreError::Unsupported(e.to_string()))?;
        push(
            ArtifactKind::OrtOverrides,
            "ort_tensor_quant_overrides".into(),
            json,
        );
    }
    let mut exports = crate::report::Exports {
        target: target.describe(),
        ranges: plan.ranges.clone(),
        calibration_samples,
        activations: plan.activations.len(),
        weights: plan.weights.len(),
        biases: plan.biases.len(),
        folded_activations: plan.folded(),
        tied: plan.tied(),
        left_float: plan.left_float.clone(),
        coverage: crate::report::QdqCoverage {
            quantizable: plan.coverage.quantizable,
            placed: plan.coverage.placed,
            float: plan
                .coverage
                .float
                .iter()
                .map(|(reason, count, tensors)| crate::report::FloatReason {
                    reason: reason.clone(),
                    count: *count,
                    tensors: tensors.clone(),
                })
                .collect(),
        },
        bias_guards: plan
            .weights
            .iter()
            .flat_map(|w| {
                w.raised_for_bias.iter().map(move |(o, b)| {
                    format!(
                        "`{}` channel {o}: weight scale raised to {:.3e} so that its bias `{b}` \
                         fits an int32",
                        w.weight, w.scales[*o]
                    )
                })
            })
            .collect(),
        opset_upgrade: upgrade
            .as_ref()
            .map(|(u, diff)| crate::report::OpsetUpgrade {
                from: u.from,
                to: opset::TARGET,
                changes: u.changes.clone(),
                max_rel_diff: *diff,
            }),
        mixed_precision: mixed,
        files,
        figures: Vec::new(),
    };
    if let Some((orig, inputs, source)) = measured {
        ctl.check()?;
        let per = quant::samples_of(inputs);
        let in_sample = calibration_samples > 0;
        let figure = |output: &str, method: &str, reference: &[Vec<f32>], outs: &[Vec<f32>]| {
            let (sqnr_db, top1_agreement) = quant::score(reference, outs);
            let (median_sqnr_db, p10_sqnr_db) = quant::spread(reference, outs);
            crate::report::ExportFigure {
                output: output.into(),
                method: method.into(),
                inputs: source.to_string(),
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
                        Err(e) => report.skipped.push(crate::report::Skip {
                            pass: "exports".into(),
                            nodes: vec![],
                            reason: "not_run".into(),
                            detail: format!("tract could not run the QDQ model: {e}"),
                        }),
                    }
                }
            }
            Err(e) => report.skipped.push(crate::report::Skip {
                pass: "exports".into(),
                nodes: vec![],
                reason: "not_simulated".into(),
                detail: format!("int8 simulation of the plan failed: {e}"),
            }),
        }
    }
    report.exports = Some(exports);
    Ok((artifacts, check, coverage))
}

/// The model the QDQ output is written from, and whether it is written: per-channel weights
/// need `DequantizeLinear(axis)`, opset 13, and QDQ itself opset 10, so an older model is
/// upgraded exactly ([`opset::upgrade`], tensor ranks from tract with the shapes of `shapes`
/// when given) and, with `shapes`, checked against the original on their first sample in tract
/// (the largest relative output difference comes back with it). When it cannot be upgraded, or
/// the check finds a difference, the QDQ model is skipped with the reason.
fn opset_for_qdq(
    fp32: &ModelProto,
    ex: &ExportOptions,
    target: &Target,
    shapes: Option<&[InputTensor]>,
    report: &mut Report,
) -> (Option<(opset::Upgrade, Option<f64>)>, bool) {
    let per_channel = target.weights().granularity == Granularity::PerChannel;
    let from = onnx::onnx_opset(fp32).unwrap_or(0);
    let need = if per_channel {
        "per-channel weights need opset 13 (DequantizeLinear axis)"
    } else {
        "QuantizeLinear needs opset 10"
    };
    if !ex.qdq || from >= if per_channel { opset::TARGET } else { 10 } {
        return (None, ex.qdq);
    }
    let checked = opset::upgrade(fp32, &crate::runtime::tensor_facts(fp32, shapes)).and_then(|u| {
        let diff = shapes.and_then(|s| upgrade_diff(fp32, &u.model, s));
        match diff {
            Some(d) if d.is_nan() || d > 1e-6 => Err(opset::Refused {
                from,
                nodes: vec![format!(
                    "the upgraded model's outputs differ from the original's by {d:.2e} \
                     (relative, tract, one sample)"
                )],
            }),
            _ => Ok((u, diff)),
        }
    });
    match checked {
        Ok(u) => (Some(u), true),
        Err(e) => {
            let advice = if per_channel {
                "use a per-tensor target or re-export the model"
            } else {
                "re-export the model at opset 10 or later"
            };
            report.skipped.push(crate::report::Skip {
                pass: "exports".into(),
                nodes: vec![],
                reason: "opset_upgrade_refused".into(),
                detail: format!("no QDQ model: {need} and {e}; {advice}"),
            });
            (None, false)
        }
    }
}

/// The largest relative difference (max |Δ| / max |y| per output) between `a` and `b` on the
/// first sample of `inputs`, in tract; `None` when tract cannot run one of them.
fn upgrade_diff(a: &ModelProto, b: &ModelProto, inputs: &[InputTensor]) -> Option<f64> {
    let first = crate::runtime::split_batch(inputs).into_iter().next()?;
    let ya = crate::runtime::run_model(&onnx::encode(a), &first).ok()?;
    let yb = crate::runtime::run_model(&onnx::encode(b), &first).ok()?;
    if ya.len() != yb.len() {
        return Some(f64::NAN);
    }
    let mut worst = 0.0f64;
    for ((_, x), (_, y)) in ya.iter().zip(&yb) {
        if x.len() != y.len() {
            return Some(f64::NAN);
        }
        let scale = x
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        for (p, q) in x.iter().zip(y) {
            if p == q || (p.is_nan() && q.is_nan()) {
                continue;
            }
            let d = f64::from((p - q).abs() / scale);
            if d.is_nan() {
                return Some(d);
            }
            worst = worst.max(d);
        }
    }
    Some(worst)
}

/// The models the int8 figures compare.
pub(super) struct Models<'a> {
    /// The input model.
    pub original: &'a ModelProto,
    /// The input with its BatchNorms folded: the baseline.
    pub folded: &'a ModelProto,
    /// The equalized model.
    pub equalized: &'a ModelProto,
    /// The equalized model's node labels.
    pub labels: &'a [String],
}

/// The per-layer int8 table and, with `inputs`, the end-to-end simulation (`quant` says which)
/// of the equalized model against its BN-folded original; `measured_growth` also measures the
/// activation growth on those inputs (they are the user's samples).
pub(super) fn quantization_figures(
    m: Models,
    quant: &QuantOptions,
    inputs: Option<(Vec<InputTensor>, String)>,
    measured_growth: bool,
    report: &mut Report,
    ctl: Control,
) -> Result<()> {
    let Models {
        original,
        folded,
        equalized,
        labels,
    } = m;
    let q = report.quantization.get_or_insert_with(Default::default);
    if quant.layers {
        q.layers = quant::layer_table(folded, equalized, labels);
    }
    let Some((inputs, source)) = inputs.filter(|_| quant.end_to_end) else {
        return Ok(());
    };
    let per_sample = quant::samples_of(&inputs);
    let models = quant::Compared {
        original,
        folded,
        equalized,
        labels,
    };
    match quant::end_to_end(&models, &per_sample, source, quant, &|| ctl.canceled()) {
        Ok(e) => q.end_to_end = Some(e),
        Err(e) => not_simulated(report, ctl, "quantization", "end-to-end simulation", e)?,
    }
    let q = report.quantization.get_or_insert_with(Default::default);
    let tensors: Vec<String> = q.activations.iter().map(|a| a.tensor.clone()).collect();
    if measured_growth && !tensors.is_empty() {
        if let (Ok(before), Ok(after)) = (
            quant::measured_abs_max(folded, &tensors, &per_sample),
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

/// The deploy model's simulated int8 rows ([`quant::evaluate_deploy`]) on `inputs` on
/// `target`'s activation grid, appended to the end-to-end figures.
pub(super) fn deploy_figures(
    original: &ModelProto,
    deploy: &Deploy,
    target: &Target,
    quant: &QuantOptions,
    inputs: &[InputTensor],
    report: &mut Report,
    ctl: Control,
) -> Result<()> {
    let per_sample = quant::samples_of(inputs);
    ctl.check()?;
    let ranges = deploy.stats.ranges();
    let rows = quant::reference_outputs(original, &per_sample).and_then(|reference| {
        quant::evaluate_deploy(
            &reference,
            &deploy.model,
            &per_sample,
            &target.activations(),
            quant.w8a8,
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
        Err(e) => not_simulated(report, ctl, "deploy", "deploy model simulation", e)?,
    }
    Ok(())
}

/// A simulation that failed: the run stops when it was canceled, else the report says why the
/// figures are missing (`not_simulated`) and the run goes on.
fn not_simulated(
    report: &mut Report,
    ctl: Control,
    pass: &str,
    what: &str,
    error: String,
) -> Result<()> {
    ctl.check()?;
    report.skipped.push(crate::report::Skip {
        pass: pass.into(),
        nodes: vec![],
        reason: "not_simulated".into(),
        detail: format!("{what} failed: {error}"),
    });
    Ok(())
}
