//! `select = auto`: choose the scaling on samples held out for the choice.
//!
//! The given samples are split: the odd-indexed ones score the candidates and are used for
//! nothing else; the even-indexed ones go to the chosen run (verification, quantization
//! figures, W8A8 calibration). Candidates: the options as given, then `iterations` 1, 3 and 5,
//! the other `scaling` rule and `balance` 2 (with equal ranges) on top of them (duplicates of
//! the given options skipped). The score is the output SQNR of per-tensor symmetric int8
//! weights against the original FP32 model; ties keep the earlier candidate. Every candidate's
//! figures land in [`crate::report::Selection`].

use super::{equalize, Control, SampleInputs};
use crate::error::{CoreError, Result};
use crate::onnx;
use crate::options::{Options, Scaling, Select};
use crate::quant::{self, Scheme};
use crate::report::{Selection, SelectionCandidate};
use crate::runtime::InputTensor;

/// The candidate options for `base`: `(label, options)`, the base first.
pub fn candidates(base: &Options) -> Vec<(String, Options)> {
    let plain = Options {
        select: Select::None,
        ..base.clone()
    };
    let mut out = vec![("given options".to_string(), plain.clone())];
    for it in [1u32, 3, 5] {
        out.push((
            format!("iterations {it}"),
            Options {
                iterations: Some(it),
                ..plain.clone()
            },
        ));
    }
    let (other, label) = match plain.scaling() {
        Scaling::Noise => (Scaling::EqualRanges, "scaling equal_ranges"),
        Scaling::EqualRanges => (Scaling::Noise, "scaling noise"),
        Scaling::Split => (Scaling::Noise, "scaling noise"),
    };
    if !plain.is_aimet() {
        out.push((
            label.to_string(),
            Options {
                scaling: Some(other),
                ..plain.clone()
            },
        ));
    }
    out.push((
        "balance 2".to_string(),
        Options {
            balance: Some(2.0),
            scaling: Some(Scaling::EqualRanges),
            ..plain.clone()
        },
    ));
    let mut seen: Vec<Options> = Vec::new();
    out.retain(|(_, o)| {
        let n = o.clone().normalized().ok();
        match n {
            Some(n) if !seen.contains(&n) => {
                seen.push(n);
                true
            }
            _ => false,
        }
    });
    out
}

fn part(t: &InputTensor, odd: bool) -> InputTensor {
    let n = t.shape[0];
    let per = t.data.len() / n.max(1);
    let keep: Vec<usize> = (0..n).filter(|k| (k % 2 == 1) == odd).collect();
    let mut data = Vec::with_capacity(keep.len() * per);
    for &k in &keep {
        data.extend_from_slice(&t.data[k * per..(k + 1) * per]);
    }
    let mut shape = t.shape.clone();
    shape[0] = keep.len();
    InputTensor {
        data,
        shape,
        ..t.clone()
    }
}

/// The choice of `select = auto`: the options to run with, the samples left for the run, and
/// the report section.
pub(super) struct Chosen {
    /// The chosen candidate's options.
    pub options: Options,
    /// The even-indexed samples: verification and the figures of the run.
    pub rest: SampleInputs,
    /// Every candidate's figures.
    pub selection: Selection,
}

/// `select = auto`: the equalize stage per candidate, scored on the odd-indexed samples.
pub(super) fn choose(
    model: &onnx::ModelProto,
    options: &Options,
    samples: Option<&SampleInputs>,
    ctl: Control,
) -> Result<Chosen> {
    let Some(samples) = samples else {
        return Err(CoreError::InvalidOptions(
            "select=auto needs sample inputs (--samples)".into(),
        ));
    };
    let n = samples.tensors.first().map_or(0, |t| t.shape[0]);
    if n < 2 || samples.tensors.iter().any(|t| t.shape.first() != Some(&n)) {
        return Err(CoreError::InvalidOptions(
            "select=auto needs at least 2 samples, batched on the first axis".into(),
        ));
    }
    options.clone().normalized()?;
    let scored: Vec<InputTensor> = samples.tensors.iter().map(|t| part(t, true)).collect();
    let rest = SampleInputs {
        tensors: samples.tensors.iter().map(|t| part(t, false)).collect(),
        source: format!("{} (even-indexed samples)", samples.source),
    };
    let per_sample = quant::samples_of(&scored);
    let reference =
        quant::reference_outputs(model, &per_sample).map_err(CoreError::InvalidOptions)?;
    let mut found: Vec<(SelectionCandidate, Options)> = Vec::new();
    for (label, opts) in candidates(options) {
        ctl.check()?;
        let eq = equalize(model.clone(), &equalize::model_only(&opts))?;
        let q = quant::quantized_weights(&eq.model, Scheme::PerTensorSymmetric, None);
        let outs = quant::first_outputs(&onnx::encode(&q), &per_sample)
            .map_err(CoreError::InvalidOptions)?;
        let (sqnr_db, top1_agreement) = quant::score(&reference, &outs);
        let (median, _) = quant::spread(&reference, &outs);
        found.push((
            SelectionCandidate {
                label,
                iterations: eq.report.options.passes(),
                balance: opts.balance,
                sqnr_db,
                per_sample_median_db: median,
                top1_agreement,
                chosen: false,
            },
            opts,
        ));
    }
    // The first best: a later candidate replaces it only when strictly better (NaN never is).
    let mut best = 0;
    for k in 1..found.len() {
        if found[k].0.sqnr_db > found[best].0.sqnr_db {
            best = k;
        }
    }
    found[best].0.chosen = true;
    let options = found[best].1.clone();
    let selection = Selection {
        scored_samples: per_sample.len(),
        other_samples: n - per_sample.len(),
        score: "per-tensor symmetric int8 weights: output SQNR against the original FP32 model"
            .into(),
        chosen: found[best].0.label.clone(),
        candidates: found.into_iter().map(|(c, _)| c).collect(),
    };
    Ok(Chosen {
        options,
        rest,
        selection,
    })
}
