//! The self-check of the int8 outputs (int8-output.md §3): each is measured on the verification
//! inputs before it is written, against the plain baseline — the same weights rounded to
//! nearest on the target grid with no bias correction — and the baseline (or the better of the
//! requested steps taken alone) is written when the requested output is worse.
//!
//! Invariants: a checked output is never written when it deviates from the original more than
//! its baseline did on the same inputs; an output that could not be measured is written as
//! built and says so; nothing here changes the equalized model.

use super::verifier::Verifier;
use super::Control;
use crate::error::Result;
use crate::options::{BiasCorrection, DeployOptions, Rounding};
use crate::report::trust::{CheckCandidate, CheckStatus, Int8Trust, OutputCheck};
use crate::report::{DeployReport, Verification};

/// The rounding and correction of a deploy candidate, as the report names it.
pub(super) fn label(rounding: Rounding, correction: BiasCorrection) -> String {
    format!("{} + {}", rounding.name(), correction.name())
}

/// The label of a built deploy model.
pub(super) fn label_of(d: &DeployReport) -> String {
    format!("{} + {}", d.rounding, d.bias_correction)
}

/// The label [`label_of`] gives the baseline deploy model.
pub(super) fn label_of_baseline() -> String {
    label(Rounding::Nearest, BiasCorrection::Off)
}

/// What [`check`] measures: a candidate's encoded output, or why none could be built.
pub(super) struct Candidate<T> {
    pub label: String,
    pub value: T,
    /// The output as written.
    pub bytes: Vec<u8>,
    /// What is run to measure it when not `bytes` itself: a QDQ model's exact float semantics
    /// ([`crate::quant::export::qdq::as_float_ops`]).
    pub probe: Option<Vec<u8>>,
}

impl<T> Candidate<T> {
    fn measured(&self) -> &[u8] {
        self.probe.as_deref().unwrap_or(&self.bytes)
    }
}

/// Measures `requested` and, when it is not the baseline itself, the candidates `others`
/// yields (the baseline first) on `verifier`'s inputs; keeps `requested` unless it deviates
/// more than the baseline, else the least deviating candidate. Returns the kept candidate, its
/// measurement, and the check for the report.
pub(super) fn check<T>(
    output: &str,
    requested: Candidate<T>,
    is_baseline: bool,
    mut others: impl FnMut() -> Result<Vec<Candidate<T>>>,
    verifier: Option<&mut Verifier>,
    ctl: Control,
) -> Result<(Candidate<T>, Option<Verification>, OutputCheck)> {
    let mut report = OutputCheck {
        output: output.into(),
        status: CheckStatus::NotChecked,
        reason: None,
        inputs: String::new(),
        candidates: Vec::new(),
        kept: requested.label.clone(),
        fell_back: false,
    };
    if is_baseline {
        report.status = CheckStatus::Baseline;
    }
    let Some(v) = verifier else {
        if !is_baseline {
            report.reason = Some("verification is off: nothing ran the output".into());
        }
        return Ok((requested, None, report));
    };
    let measured = v.measure(requested.measured(), ctl)?;
    report.inputs = measured.inputs.clone();
    report
        .candidates
        .push(CheckCandidate::new(&requested.label, measured.max_rel_l2));
    if is_baseline {
        return Ok((requested, Some(measured), report));
    }
    let Some(mine) = measured.max_rel_l2.filter(|r| !r.is_nan()) else {
        report.reason = Some(not_measured(&measured));
        return Ok((requested, Some(measured), report));
    };
    let mut best: Option<(Candidate<T>, Verification, f64)> = None;
    let mut baseline = None;
    for c in others()? {
        ctl.check()?;
        let m = v.measure(c.measured(), ctl)?;
        report
            .candidates
            .push(CheckCandidate::new(&c.label, m.max_rel_l2));
        let Some(r) = m.max_rel_l2.filter(|r| !r.is_nan()) else {
            report.reason = Some(format!("{}: {}", c.label, not_measured(&m)));
            return Ok((requested, Some(measured), report));
        };
        if baseline.is_none() {
            baseline = Some(r);
            if mine <= r {
                report.status = CheckStatus::Checked;
                return Ok((requested, Some(measured), report));
            }
        }
        if best.as_ref().is_none_or(|b| r < b.2) {
            best = Some((c, m, r));
        }
    }
    let Some((kept, m, _)) = best else {
        report.reason = Some("no baseline could be built".into());
        return Ok((requested, Some(measured), report));
    };
    report.status = CheckStatus::Checked;
    report.kept = kept.label.clone();
    report.fell_back = true;
    Ok((kept, Some(m), report))
}

/// The check of an output that could not be built for measuring, and why.
pub(super) fn not_checked(output: &str, label: String, reason: &str) -> OutputCheck {
    OutputCheck {
        output: output.into(),
        status: CheckStatus::NotChecked,
        reason: Some(reason.into()),
        inputs: String::new(),
        candidates: Vec::new(),
        kept: label,
        fell_back: false,
    }
}

fn not_measured(v: &Verification) -> String {
    v.reason
        .clone()
        .unwrap_or_else(|| "the run gave no deviation".into())
}

/// The deploy candidates measured after the requested one: the baseline (nearest, no
/// correction) first, then each requested step taken alone.
pub(super) fn deploy_alternatives(opts: &DeployOptions) -> Vec<DeployOptions> {
    let with = |rounding, bias_correction| DeployOptions {
        rounding,
        bias_correction,
        ..opts.clone()
    };
    let mut out = vec![with(Rounding::Nearest, BiasCorrection::Off)];
    if opts.rounding != Rounding::Nearest && opts.bias_correction != BiasCorrection::Off {
        out.push(with(Rounding::Nearest, opts.bias_correction));
        out.push(with(opts.rounding, BiasCorrection::Off));
    }
    out
}

/// The share of quantizable activations an int8 output may leave in float before the run says
/// it is not really int8.
pub const MAX_FLOAT_SHARE: f64 = 0.10;

/// The verdict over `checks` and, for a QDQ plan, `activations`: `(quantized, quantizable)`
/// activation tensors.
pub(super) fn verdict(checks: Vec<OutputCheck>, activations: Option<(usize, usize)>) -> Int8Trust {
    let mut problems = Vec::new();
    for c in &checks {
        match c.status {
            CheckStatus::NotChecked => problems.push(format!(
                "{} was not checked against its baseline: {}",
                c.output,
                c.reason.as_deref().unwrap_or("unknown")
            )),
            CheckStatus::Checked | CheckStatus::Baseline => {
                let worse = match (
                    c.candidates.iter().find(|k| k.label == c.kept),
                    c.candidates.get(1),
                ) {
                    (Some(k), Some(b)) if c.status == CheckStatus::Checked => {
                        k.max_rel_l2.zip(b.max_rel_l2).is_some_and(|(k, b)| k > b)
                    }
                    _ => false,
                };
                if worse {
                    problems.push(format!("{} is worse than its baseline", c.output));
                }
            }
        }
    }
    if let Some((placed, total)) = activations {
        let float = total.saturating_sub(placed);
        if total > 0 && float as f64 > MAX_FLOAT_SHARE * total as f64 {
            problems.push(format!(
                "{float} of {total} quantizable activations stay float (more than {:.0} %): the \
                 QDQ model is not really int8",
                MAX_FLOAT_SHARE * 100.0
            ));
        }
    }
    Int8Trust {
        trusted: problems.is_empty(),
        checks,
        problems,
    }
}
