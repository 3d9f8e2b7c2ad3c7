//! `onnx-cle equalize`: the one-shot CLI.
//!
//! Exit codes: 0 success; 1 internal error; 2 usage error; 3 the input is not a usable ONNX
//! model; 4 invalid options or unknown start/output names; 5 a file could not be read or
//! written; 6 the verified output deviation exceeds `--max-rel-l2` (the model is still written).
//! A model over a limit (`--max-nodes`, `--max-tensor-elements`, `--max-model-memory`) is 3.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, ValueEnum};
use onnx_cle::options::flags::{self, Cli, Flag, FlagError, Kind, FLAGS};
use onnx_cle::options::{Calibration, EncodingsVersion, Options};
use onnx_cle::{ArtifactKind, CoreError};

#[derive(Clone, Copy, ValueEnum)]
enum EncodingsVersionArg {
    #[value(name = "1.0.0")]
    V1,
    #[value(name = "0.6.1")]
    V061,
}

/// Exit codes of `onnx-cle equalize` (also listed in the README).
mod exit {
    pub const INTERNAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const BAD_MODEL: u8 = 3;
    pub const BAD_REQUEST: u8 = 4;
    pub const IO: u8 = 5;
    pub const DEVIATION: u8 = 6;
    pub const INT8_NOT_TRUSTED: u8 = 7;
}

#[derive(Args)]
pub struct EqualizeArgs {
    /// Input ONNX model (external-data files are read from its folder).
    input: PathBuf,
    /// Where to write the equalized model.
    #[arg(short, long)]
    output: PathBuf,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the visual report (a self-contained HTML page) here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Sample inputs (`.npy`, float32, `[N, …]` the model input's shape) for verification and
    /// the quantization figures, instead of random data. Implies `--quant-e2e`.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Exit with code 6 when an output's relative L2 deviation exceeds this.
    #[arg(long)]
    max_rel_l2: Option<f64>,
    /// Only the model: no verification, no int8 table (`--no-verify --no-quant-table`).
    #[arg(long)]
    fast: bool,
    /// No end-to-end simulation table, even with --samples (the int8 outputs' own figures are
    /// still computed).
    #[arg(long, conflicts_with_all = ["quant-e2e", "sensitivity"])]
    no_quant_e2e: bool,
    /// No progress or summary on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Print where the time went on stderr (read, decode, passes, int8 table, encode, verify,
    /// write), also with --quiet.
    #[arg(long)]
    timings: bool,
    /// Write the QDQ ONNX model (int8 weights, QuantizeLinear/DequantizeLinear activations,
    /// int32 biases) for the target here.
    #[arg(long)]
    qdq_output: Option<PathBuf>,
    /// Write AIMET encodings (for QNN's `--quantization_overrides`) here.
    #[arg(long)]
    encodings: Option<PathBuf>,
    /// Version of the AIMET encodings format.
    #[arg(long, value_enum, default_value = "1.0.0")]
    encodings_version: EncodingsVersionArg,
    /// Write onnxruntime `TensorQuantOverrides` (for `quantize_static`) here.
    #[arg(long)]
    ort_overrides: Option<PathBuf>,
    /// Write the deploy model here (FP32, weights on the target grid, biases corrected on
    /// request; its function differs from the input's by design). `-o` stays the exact model.
    #[arg(long)]
    deploy_output: Option<PathBuf>,
    /// Refuse models with more nodes than this (all graphs, subgraphs and functions).
    #[arg(long, env = "ONNX_CLE_MAX_NODES", default_value_t = onnx_cle::onnx::limits::DEFAULT_MAX_NODES)]
    max_nodes: u64,
    /// Refuse models declaring a tensor with more elements than this.
    #[arg(long, env = "ONNX_CLE_MAX_TENSOR_ELEMENTS", default_value_t = onnx_cle::onnx::limits::DEFAULT_MAX_TENSOR_ELEMENTS)]
    max_tensor_elements: u64,
    /// Refuse models whose decoded form would take more memory than this (e.g. `4GiB`).
    #[arg(long, env = "ONNX_CLE_MAX_MODEL_MEMORY", default_value = "4GiB", value_parser = onnx_cle::onnx::limits::parse_size)]
    max_model_memory: u64,
    /// The equalize options ([`FLAGS`]).
    #[command(flatten)]
    options: OptionFlags,
}

/// The equalize options as the CLI gives them: every flag of [`FLAGS`] that has a CLI
/// spelling, with its raw values. The help text is the option's own documentation.
#[derive(Default)]
struct OptionFlags(Vec<(&'static Flag, Vec<String>)>);

impl OptionFlags {
    /// Gives `field` the value `raw` (after whatever the flags gave it).
    fn set(&mut self, field: &str, raw: &str) {
        let Some(flag) = Flag::of(field) else { return };
        match self.0.iter_mut().find(|(f, _)| f.field == field) {
            Some((_, values)) => values.push(raw.to_string()),
            None => self.0.push((flag, vec![raw.to_string()])),
        }
    }
}

/// The first sentence of a doc comment (the short help), rustdoc links as plain code.
fn first_sentence(doc: &str) -> String {
    let flat = doc
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("[`", "`")
        .replace("`]", "`");
    let end = flat.match_indices(". ").find(|(i, _)| {
        let next = flat[i + 2..].chars().next();
        !flat[..*i].ends_with("e.g") && next.is_some_and(|c| c.is_uppercase() || c == '`')
    });
    match end {
        Some((i, _)) => flat[..=i].to_string(),
        None => flat,
    }
}

/// `doc` as the continuation of a sentence (its first letter lower-cased).
fn continued(doc: &str) -> String {
    let mut c = doc.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// The CLI argument of `f`, its help the field's documentation.
fn flag_arg(f: &'static Flag) -> Option<Arg> {
    let cli = f.cli?;
    let long = f.long()?;
    let doc = f.doc();
    let where_ = match f.query {
        Some(q) => format!("(options `{}`, query `{q}`)", f.field),
        None => format!("(options `{}`)", f.field),
    };
    let arg = match cli {
        Cli::On(_) => Arg::new(long.clone())
            .long(long)
            .action(ArgAction::SetTrue)
            .help(first_sentence(&doc)),
        Cli::Off(_) => Arg::new(long.clone())
            .long(long)
            .action(ArgAction::SetTrue)
            .help(format!(
                "Sets `{}` to false: {}",
                f.field,
                continued(&first_sentence(&doc))
            )),
        Cli::Value | Cli::Named { .. } => {
            let (alias, value_name) = match cli {
                Cli::Named {
                    alias, value_name, ..
                } => (alias, value_name),
                _ => (None, None),
            };
            let mut a = Arg::new(long.clone())
                .long(long.clone())
                .action(ArgAction::Append)
                .num_args(1)
                .value_name(long.replace('-', "_").to_uppercase())
                .help(with_default(first_sentence(&doc), f));
            if let Some(alias) = alias {
                a = a.visible_alias(alias);
            }
            if let Some(v) = value_name {
                a = a.value_name(v);
            }
            if matches!(f.kind, Kind::Range | Kind::Numbers) {
                a = a.allow_hyphen_values(true);
            }
            if let Some(c) = f.choices() {
                let values = c.values.iter().map(|v| {
                    let kebab = v.replace('_', "-");
                    let pv = PossibleValue::new(kebab.clone());
                    if kebab == *v {
                        pv
                    } else {
                        pv.alias(v.clone())
                    }
                });
                a = a.value_parser(clap::builder::PossibleValuesParser::new(values));
            }
            a
        }
    };
    Some(arg.long_help(format!("{}\n{where_}", doc.trim_end())))
}

/// `help` with the option's default, when it has one worth showing.
fn with_default(help: String, f: &Flag) -> String {
    let default = serde_json::to_value(Options::default()).ok().and_then(|o| {
        o.pointer(&format!("/{}", f.field.replace('.', "/")))
            .cloned()
    });
    match default {
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            // An f32 field reads back as the f64 nearest to it: show the f32.
            Some(x) if n.is_f64() && f64::from(x as f32) == x => {
                format!("{help} [default: {}]", x as f32)
            }
            _ => format!("{help} [default: {n}]"),
        },
        Some(serde_json::Value::String(s)) => format!("{help} [default: {}]", s.replace('_', "-")),
        _ => help,
    }
}

impl FromArgMatches for OptionFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = OptionFlags::default();
        for f in FLAGS {
            match f.cli {
                Some(Cli::On(long)) if m.get_flag(long) => given.set(f.field, "true"),
                Some(Cli::Off(long)) if m.get_flag(long) => given.set(f.field, "false"),
                Some(Cli::Value | Cli::Named { .. }) => {
                    let long = f.long().unwrap_or_default();
                    for v in m.get_many::<String>(&long).into_iter().flatten() {
                        given.set(f.field, v);
                    }
                }
                _ => {}
            }
        }
        Ok(given)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for OptionFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        FLAGS.iter().filter_map(flag_arg).fold(cmd, |c, a| c.arg(a))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("onnx-cle: error: {msg}");
    ExitCode::from(code)
}

fn core_exit(e: &CoreError) -> u8 {
    match e {
        CoreError::Decode(_)
        | CoreError::InvalidModel(_)
        | CoreError::Unsupported(_)
        | CoreError::InvalidTensor { .. }
        | CoreError::ExternalData { .. }
        | CoreError::Limit(_) => exit::BAD_MODEL,
        CoreError::UnknownName { .. } | CoreError::InvalidOptions(_) => exit::BAD_REQUEST,
        CoreError::Io { .. } => exit::IO,
        CoreError::Canceled => exit::INTERNAL,
    }
}

/// Why the options of a command line are refused: a usage error (a value of the wrong type,
/// exit 2) or invalid options (exit 4).
enum Refused {
    Usage(String),
    Invalid(CoreError),
}

/// The options of a command line: its option flags, then what its output paths and shorthands
/// imply.
fn options(a: &EqualizeArgs) -> Result<Options, Refused> {
    let mut given = OptionFlags(a.options.0.clone());
    if a.fast {
        given.set("verify.enabled", "false");
        given.set("quant.layers", "false");
    }
    if a.samples.is_some() || given.0.iter().any(|(f, _)| f.field == "quant.sensitivity") {
        given.set("quant.end_to_end", "true");
    }
    if a.no_quant_e2e {
        given.set("quant.end_to_end", "false");
    }
    if a.qdq_output.is_some() {
        given.set("exports.qdq", "true");
    }
    if a.ort_overrides.is_some() {
        given.set("exports.ort_overrides", "true");
    }
    if a.encodings.is_some() {
        let version = match a.encodings_version {
            EncodingsVersionArg::V1 => EncodingsVersion::V1_0_0,
            EncodingsVersionArg::V061 => EncodingsVersion::V0_6_1,
        };
        given.set("exports.encodings", version.as_str());
    }
    if a.deploy_output.is_some() {
        given.set("deploy.model", "true");
    }
    let o = flags::apply(&given.0).map_err(|e: FlagError| {
        let name = Flag::of(e.field)
            .and_then(Flag::long)
            .map_or_else(|| e.field.to_string(), |l| format!("--{l}"));
        let message = format!("{name}: {}", e.message);
        if e.out_of_range {
            Refused::Invalid(CoreError::InvalidOptions(message))
        } else {
            Refused::Usage(message)
        }
    })?;
    if o.exports.calibration != Calibration::DataFree && a.samples.is_none() {
        return Err(Refused::Invalid(CoreError::InvalidOptions(
            "--calibration other than data-free needs --samples".into(),
        )));
    }
    o.normalized().map_err(Refused::Invalid)
}

/// Runs `onnx-cle equalize`.
pub fn equalize(a: EqualizeArgs) -> ExitCode {
    let t0 = Instant::now();
    let opts = match options(&a) {
        Ok(o) => o,
        Err(Refused::Usage(e)) => return fail(exit::USAGE, e),
        Err(Refused::Invalid(e)) => return fail(core_exit(&e), e),
    };
    // Memory-mapped: the untouched tensors are written back from the map (onnx::mapped).
    let bytes = match onnx_cle::onnx::mapped::map_file(&a.input) {
        Ok(d) => d,
        Err(e) => return fail(exit::IO, format!("{}: {e}", a.input.display())),
    };
    let read_ms = t0.elapsed().as_secs_f64() * 1e3;
    let size = bytes.len();
    let limits = onnx_cle::onnx::limits::Limits {
        max_nodes: a.max_nodes,
        max_tensor_elements: a.max_tensor_elements,
        max_decoded_bytes: a.max_model_memory,
    };
    let mut model = match onnx_cle::onnx::scan::decode_within(bytes.clone(), &limits) {
        Ok(m) => m,
        Err(e) => return fail(core_exit(&e), format!("{}: {e}", a.input.display())),
    };
    let dir = a.input.parent().map(|p| {
        if p.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            p
        }
    });
    // The file's bytes describe the original only when its weights are inline; otherwise the
    // resolved model is encoded for verification.
    let original = (!onnx_cle::onnx::has_external_data(&model)).then_some(bytes);
    if let Err(e) = onnx_cle::onnx::resolve_external_data(&mut model, dir) {
        return fail(core_exit(&e), e);
    }
    let decode_ms = t0.elapsed().as_secs_f64() * 1e3 - read_ms;
    let verbose = !a.quiet && size >= 16 << 20;
    let progress = move |stage: &str| {
        if verbose {
            eprintln!("onnx-cle: [{:>7.2}s] {stage}", t0.elapsed().as_secs_f64());
        }
    };
    let samples = match &a.samples {
        Some(path) => {
            let data = match std::fs::read(path) {
                Ok(d) => d,
                Err(e) => return fail(exit::IO, format!("{}: {e}", path.display())),
            };
            match onnx_cle::SampleInputs::from_npy(&model, &data, &path.display().to_string()) {
                Ok(s) => Some(s),
                Err(e) => return fail(core_exit(&e), e),
            }
        }
        None => None,
    };
    let ctl = onnx_cle::Control {
        progress: Some(&progress),
        cancel: None,
    };
    let mut model_write_ms = 0.0;
    let mut write_model = |s: &onnx_cle::onnx::write::Stream<'_>| {
        let t = Instant::now();
        let written = onnx_cle::onnx::write::write_atomic(&a.output, |f| s.write_to(f));
        model_write_ms = t.elapsed().as_secs_f64() * 1e3;
        written.map_err(|source| CoreError::Io {
            path: a.output.display().to_string(),
            source,
        })
    };
    let out = match onnx_cle::run_streamed(
        model,
        original,
        &opts,
        samples.as_ref(),
        ctl,
        Some(&mut write_model),
    ) {
        Ok(o) => o,
        Err(e) => return fail(core_exit(&e), e),
    };
    let t_write = Instant::now();
    if let (Some(path), Some(deploy)) = (&a.deploy_output, &out.deploy) {
        if let Err(e) = onnx_cle::onnx::write::write_atomic(path, |f| f.write_all(deploy)) {
            return fail(exit::IO, format!("{}: {e}", path.display()));
        }
    }
    let outputs = [
        (ArtifactKind::Qdq, &a.qdq_output),
        (ArtifactKind::Encodings, &a.encodings),
        (ArtifactKind::OrtOverrides, &a.ort_overrides),
    ];
    for (kind, path) in outputs {
        let (Some(path), Some(art)) = (path, out.artifacts.iter().find(|x| x.kind == kind)) else {
            continue;
        };
        if let Err(e) = onnx_cle::onnx::write::write_atomic(path, |f| f.write_all(&art.data)) {
            return fail(exit::IO, format!("{}: {e}", path.display()));
        }
    }
    let write_ms = model_write_ms + t_write.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = &a.report {
        let json = match serde_json::to_vec_pretty(&out.report) {
            Ok(j) => j,
            Err(e) => return fail(exit::INTERNAL, e),
        };
        if let Err(e) = std::fs::write(path, json) {
            return fail(exit::IO, format!("{}: {e}", path.display()));
        }
    }
    if let Some(path) = &a.html {
        if let Err(e) = std::fs::write(path, onnx_cle::report::html::render(&out.report)) {
            return fail(exit::IO, format!("{}: {e}", path.display()));
        }
    }
    let r = &out.report;
    if a.timings {
        let t = &r.timings_ms;
        eprintln!(
            "onnx-cle: timings ms: read {read_ms:.1} decode {decode_ms:.1} passes {:.1} \
             int8_table {:.1} encode {:.1} verify {:.1} write {write_ms:.1} total {:.1}",
            t.prepare + t.bn_fold + t.relu6 + t.cls + t.hbf + t.finish,
            t.quantization,
            t.encode,
            t.verify,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    if !a.quiet {
        let verdict = match r.verification.status {
            onnx_cle::report::VerifyStatus::Verified => {
                format!(
                    "verified: max relative L2 {:.3e}",
                    r.verification.max_rel_l2.unwrap_or(0.0)
                )
            }
            onnx_cle::report::VerifyStatus::NotVerified => {
                format!(
                    "not verified: {}",
                    r.verification.reason.as_deref().unwrap_or("unknown")
                )
            }
            onnx_cle::report::VerifyStatus::Disabled => "verification off".into(),
        };
        eprintln!(
            "onnx-cle: {} BN folded, {} CLS sets, {} ReLU6 decisions, HBF {} pairs, {} skipped; {verdict}; {:.2}s",
            r.bn_folds.len(),
            r.cls_sets.len(),
            r.relu6.len(),
            r.hbf.pairs.len(),
            r.skipped.len(),
            t0.elapsed().as_secs_f64()
        );
        let mut extra = String::new();
        if !r.const_folds.is_empty() {
            extra += &format!("; {} weight chains folded", r.const_folds.len());
        }
        if !r.tensor_copies.is_empty() {
            extra += &format!("; {} shared tensors copied", r.tensor_copies.len());
        }
        eprintln!("onnx-cle: coverage: {}{extra}", r.coverage.summary);
        if let Some(d) = &r.deploy {
            let measured = d
                .measured
                .as_ref()
                .and_then(|v| v.max_rel_l2)
                .map_or("not verified".to_string(), |m| {
                    format!("measured rel L2 {m:.3e}")
                });
            eprintln!(
                "onnx-cle: deploy model ({}): {} layers on the grid ({} rounding, {} flips), {} \
                 biases corrected ({}); function changed by design: predicted rel L2 {:.3e}, {measured}",
                d.target,
                d.summary.layers,
                d.rounding,
                d.summary.flips,
                d.summary.corrected,
                d.bias_correction,
                d.predicted.rel_l2,
            );
            if d.summary.widened > 0 || d.summary.pair_moves > 0 {
                eprintln!(
                    "onnx-cle: int16 pairs (onnxruntime on x86 without VNNI) kept unsaturated: {} \
                     layers on a wider step, {} levels moved",
                    d.summary.widened, d.summary.pair_moves
                );
            }
            let kept = r
                .skipped
                .iter()
                .filter(|s| s.reason == onnx_cle::passes::bn_fold::KEPT_FOR_INT8)
                .count();
            if kept > 0 {
                eprintln!(
                    "onnx-cle: int8 outputs keep {kept} BatchNormalization unfolded (float ops): \
                     folding them would cost their layers' per-tensor weight grid (report: \
                     kept_for_per_tensor_int8)"
                );
            }
            if a.deploy_output.is_none() {
                eprintln!("onnx-cle: note: the deploy model is not written (no --deploy-output)");
            }
        }
        if let Some(e) = &r.exports {
            eprintln!("onnx-cle: QDQ coverage: {}", e.coverage.summary());
            if let Some(m) = &e.mixed_precision {
                eprintln!("onnx-cle: mixed precision: {}", m.summary());
            }
        }
        if let Some(t) = &r.int8 {
            eprintln!("onnx-cle: int8 check: {}", int8_line(t));
        }
        if let Some(sel) = &r.selection {
            let all: Vec<String> = sel
                .candidates
                .iter()
                .map(|c| format!("{} {:.2} dB", c.label, c.sqnr_db))
                .collect();
            eprintln!(
                "onnx-cle: select auto kept `{}` (per-tensor int8 SQNR on {} held-out samples: {})",
                sel.chosen,
                sel.scored_samples,
                all.join(", ")
            );
        }
        if r.function_changed {
            eprintln!(
                "onnx-cle: note: the model's function was changed on request: {}",
                r.function_changes.join("; ")
            );
        }
        if let Some(u) = r.exports.as_ref().and_then(|e| e.opset_upgrade.as_ref()) {
            eprintln!(
                "onnx-cle: QDQ model raised from opset {} to {} (same function; {} nodes \
                 rewritten, listed in the report; {})",
                u.from,
                u.to,
                u.changes.len(),
                u.max_rel_diff
                    .map_or("not run against the original".to_string(), |d| format!(
                        "against the original in tract on one sample: max rel diff {d:.1e}"
                    ))
            );
        }
        if let Some((_, note)) = r.verification.inputs.split_once("; dynamic dimensions at ") {
            eprintln!("onnx-cle: note: verification inputs with dynamic dimensions at {note}");
        }
        for s in r
            .skipped
            .iter()
            .filter(|s| s.reason == "opset_upgrade_refused")
        {
            eprintln!("onnx-cle: note: {}", s.detail);
        }
    }
    if let Some(t) = r.int8.as_ref().filter(|t| opts.strict_int8 && !t.trusted) {
        return fail(
            exit::INT8_NOT_TRUSTED,
            format!("--strict-int8: {}", t.problems.join("; ")),
        );
    }
    if let (Some(limit), Some(dev)) = (a.max_rel_l2, r.verification.max_rel_l2) {
        if dev > limit {
            return fail(
                exit::DEVIATION,
                format!("output deviation {dev:.3e} exceeds --max-rel-l2 {limit:e}"),
            );
        }
    }
    ExitCode::SUCCESS
}

/// The summary line of the int8 self-check: each output's kept candidate against its baseline,
/// then the verdict.
fn int8_line(t: &onnx_cle::report::trust::Int8Trust) -> String {
    use onnx_cle::report::trust::CheckStatus;
    let db = |v: Option<f64>| v.map_or("n/a".to_string(), |d| format!("{d:.2} dB"));
    let mut parts: Vec<String> = t
        .checks
        .iter()
        .map(|c| match c.status {
            CheckStatus::NotChecked => format!(
                "{} not checked ({})",
                c.output,
                c.reason.as_deref().unwrap_or("unknown")
            ),
            CheckStatus::Baseline => format!(
                "{} is the nearest-rounding baseline ({})",
                c.output,
                db(c.candidates.first().and_then(|k| k.sqnr_db))
            ),
            CheckStatus::Checked => {
                let kept = c.candidates.iter().find(|k| k.label.ends_with(&c.kept));
                let base = c.candidates.get(1);
                let mut s = format!(
                    "{} {} {} vs baseline {}",
                    c.output,
                    c.kept,
                    db(kept.and_then(|k| k.sqnr_db)),
                    db(base.and_then(|k| k.sqnr_db))
                );
                if c.fell_back {
                    s += &format!(
                        " (fell back: the requested {} gave {})",
                        c.candidates[0].label.trim_start_matches("requested: "),
                        db(c.candidates[0].sqnr_db)
                    );
                }
                s
            }
        })
        .collect();
    parts.push(if t.trusted {
        "trusted".into()
    } else {
        format!("NOT TRUSTED: {}", t.problems.join("; "))
    });
    parts.join("; ")
}
