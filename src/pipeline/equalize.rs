//! The equalize stage: the passes on the decoded model, in pipeline order
//! ([`crate::passes::PIPELINE`]), with the report filled as they go.

use std::collections::HashSet;
use std::time::Instant;

use super::{ms, Control};
use crate::error::Result;
use crate::graph::deferred::Deferred;
use crate::graph::Work;
use crate::onnx::{self, ModelProto};
use crate::options::{Options, QuantOptions, Scaling, Step, VerifyOptions};
use crate::passes::{self, Ctx, State};
use crate::quant;
use crate::report::{self, ModelSummary, Report};

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

/// Runs the selected passes on `model` (no verification).
pub fn equalize(model: ModelProto, options: &Options) -> Result<Equalized> {
    equalize_with(model, options, Control::default())
}

/// [`equalize`] with progress and cancellation.
pub fn equalize_with(model: ModelProto, options: &Options, ctl: Control) -> Result<Equalized> {
    capturing(model, options, ctl, false).map(|(eq, _, _)| eq)
}

/// [`equalize`] and the data-free activation statistics of the equalized model
/// ([`quant::deploy::stats::propagate`] with `stats` options): per-channel `E[x]` and ranges of every
/// tensor it models.
pub fn equalize_with_stats(
    model: ModelProto,
    options: &Options,
    stats: &quant::deploy::stats::StatsOptions,
) -> Result<(Equalized, quant::deploy::stats::ActivationStats)> {
    let mut opts = options.clone();
    opts.deploy.model = true;
    let (eq, _, origins) = capturing(model, &opts, Control::default(), false)?;
    let mut eq = eq;
    eq.report.options.deploy.model = options.deploy.model;
    let mut work = Work::new(eq.model.clone())?;
    let s =
        quant::deploy::stats::propagate(&mut work, &eq.labels, &origins.unwrap_or_default(), stats);
    Ok((eq, s))
}

/// What [`capturing`] returns: the equalized model, the per-layer int8 table when
/// asked, and the activation origins when a deploy model was asked for.
type Captured = (
    Equalized,
    Option<quant::TablePlan>,
    Option<quant::deploy::stats::Origins>,
);

/// [`equalize_with`]; with `folded_figures` (and a BN-fold step) it also returns the per-layer
/// int8 table's plan ([`quant::TablePlan`]): the BN-folded figures taken right after the fold;
/// the equalized ones are computed on the finished model, beside its encode. With a
/// deploy model requested it also returns the data-free activation origins
/// ([`quant::deploy::stats::Origins::from_pipeline`]).
pub(super) fn capturing(
    model: ModelProto,
    options: &Options,
    ctl: Control,
    folded_figures: bool,
) -> Result<Captured> {
    capturing_unfolded(model, options, ctl, folded_figures, HashSet::new())
}

/// [`capturing`] for a model that is only written and tabled: per-channel products on large
/// weights are recorded instead of applied ([`crate::graph::Work::defer_scalings`]), and come
/// back beside the model, whose values of those weights are the input's. Only
/// [`onnx::write::stream_computed`], [`quant::TablePlan::rows_deferred`] and
/// [`Deferred::with_tensor`] read such a model.
pub(super) fn capturing_deferred(
    model: ModelProto,
    options: &Options,
    ctl: Control,
    folded_figures: bool,
) -> Result<(Captured, Deferred)> {
    capturing_all(model, options, ctl, folded_figures, HashSet::new(), true)
}

/// [`capturing`] with [`crate::passes::State::int8_unfold`] set to `unfold`.
fn capturing_unfolded(
    model: ModelProto,
    options: &Options,
    ctl: Control,
    folded_figures: bool,
    unfold: HashSet<String>,
) -> Result<Captured> {
    capturing_all(model, options, ctl, folded_figures, unfold, false).map(|(c, _)| c)
}

fn capturing_all(
    model: ModelProto,
    options: &Options,
    ctl: Control,
    folded_figures: bool,
    unfold: HashSet<String>,
    defer: bool,
) -> Result<(Captured, Deferred)> {
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
    if defer {
        work.defer_scalings();
    }
    report.model.nodes_before = work.node_count();
    report.model.initializers_before = work.graph().initializer.len();
    work.set_scope(&opts.start, &opts.output)?;
    report.model.nodes_in_scope = work.scope_size();
    report.timings_ms.prepare = ms(t);
    let mut state = State {
        int8_unfold: unfold,
        ..State::default()
    };
    {
        let mut cx = Ctx {
            work: &mut work,
            opts: &opts,
            report: &mut report,
            state: &mut state,
        };
        for pass in passes::PIPELINE.iter().filter(|p| opts.runs(p.step)) {
            ctl.stage(pass.step.name())?;
            let t = Instant::now();
            (pass.run)(&mut cx)?;
            *cx.report.timings_ms.pass_mut(pass.step) = ms(t);
            if pass.step == Step::BnFold && folded_figures {
                let t = Instant::now();
                figures = Some(quant::folded_figures(cx.work, true));
                cx.report.timings_ms.quantization += ms(t);
            }
        }
        if !opts.runs(Step::Hbf) {
            cx.report.hbf.mode = format!("{:?}", opts.hbf).to_lowercase();
            cx.report.hbf.reason = Some("step hbf not selected".into());
        }
        ctl.stage("finish")?;
        let t = Instant::now();
        passes::finish(&mut cx)?;
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
        .then(|| quant::deploy::stats::Origins::from_pipeline(&state, &report));
    let t = Instant::now();
    report.model.nodes_after = work.node_count();
    let labels = (0..work.node_count())
        .map(|i| work.label(i).to_string())
        .collect();
    let (model, deferred) = if defer {
        work.finish_deferred()
    } else {
        (work.finish(), Deferred::default())
    };
    report.model.initializers_after = model.graph.as_ref().map_or(0, |g| g.initializer.len());
    report.timings_ms.finish += ms(t);
    Ok((
        (
            Equalized {
                model,
                report,
                labels,
            },
            table,
            origins,
        ),
        deferred,
    ))
}

/// Whether the int8 outputs of a run with `options` may be built from a model of their own
/// ([`int8_source`]): per-tensor weights, a BN fold, and a deploy or QDQ output asked for.
pub(super) fn wants_int8_source(options: &Options) -> bool {
    options.target.weights().granularity == crate::options::Granularity::PerTensor
        && options.runs(Step::BnFold)
        && (options.builds_deploy() || options.exports.any())
}

/// Whether the deploy model and the int8 outputs are built from a run of their own
/// ([`int8_run`]): scaled apart (`scaling = split`) or with BNs kept for a per-tensor grid.
pub(super) fn wants_int8_run(options: &Options) -> bool {
    (options.builds_deploy() && options.scaling() == Scaling::Split) || wants_int8_source(options)
}

/// The run the deploy model and the int8 outputs are built from when it is not the equalized
/// one (`eq`, the run of `options`): with `scaling = split` the same passes on `model` with
/// the int8 outputs' rule ([`Scaling::of_int8`]), then [`int8_source`] on that run; otherwise
/// [`int8_source`]. `None`: the int8 outputs are built from `eq`.
pub(super) fn int8_run(
    model: ModelProto,
    options: &Options,
    eq: &Report,
    ctl: Control,
) -> Result<Option<Captured>> {
    if options.scaling() != Scaling::Split {
        return int8_source(model, options, eq, ctl);
    }
    let opts = Options {
        scaling: Some(options.scaling().of_int8()),
        ..model_only(options)
    };
    let unfold_from = wants_int8_source(&opts).then(|| model.clone());
    let own = capturing(model, &opts, ctl, false)?;
    Ok(Some(match unfold_from {
        Some(m) => int8_source(m, &opts, &own.0.report, ctl)?.unwrap_or(own),
        None => own,
    }))
}

/// The model the int8 outputs of a per-tensor grid are built from, when it differs from the
/// equalized one `eq` ([`wants_int8_source`]): the same passes on `model`, except that a
/// BatchNormalization folded backward into a layer that no cross-layer scaling set contains
/// stays in place where the fold would cost that layer's per-tensor weight grid more than
/// [`crate::passes::bn_fold::UNFOLD_GAIN`] (onnxruntime's `quantize_static` keeps every BN
/// as a float op). It computes the same function as `eq`; `None` when no BN qualifies or
/// every candidate folds anyway.
pub(super) fn int8_source(
    model: ModelProto,
    options: &Options,
    eq: &Report,
    ctl: Control,
) -> Result<Option<Captured>> {
    let scaled: HashSet<&str> = eq
        .cls_sets
        .iter()
        .flat_map(|s| s.layers.iter().map(String::as_str))
        .collect();
    let unfold: HashSet<String> = eq
        .bn_folds
        .iter()
        .filter(|f| f.direction == crate::report::FoldDirection::Backward)
        .filter(|f| !scaled.contains(f.layer.as_str()))
        .map(|f| f.bn.clone())
        .collect();
    if unfold.is_empty() {
        return Ok(None);
    }
    let captured = capturing_unfolded(model, &model_only(options), ctl, false, unfold)?;
    let kept = captured
        .0
        .report
        .skipped
        .iter()
        .any(|s| s.reason == crate::passes::bn_fold::KEPT_FOR_INT8);
    Ok(kept.then_some(captured))
}

/// The BN-folded original: the baseline of the int8 figures, when the run did not take it
/// on the way ([`capturing`] with `folded_figures`).
pub(super) fn bn_folded(original: &ModelProto, options: &Options) -> Result<ModelProto> {
    let fold_only = Options {
        steps: vec![Step::BnFold],
        ..model_only(options)
    };
    Ok(equalize(original.clone(), &fold_only)?.model)
}

/// `options` for a run that only needs the equalized model: no verification, no int8 figures.
pub(super) fn model_only(options: &Options) -> Options {
    Options {
        verify: VerifyOptions {
            enabled: false,
            ..options.verify.clone()
        },
        quant: QuantOptions {
            layers: false,
            end_to_end: false,
            ..options.quant.clone()
        },
        ..options.clone()
    }
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
