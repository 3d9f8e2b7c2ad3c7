//! `onnx-cle equalize`: the one-shot CLI.
//!
//! Exit codes: 0 success; 1 internal error; 2 usage error; 3 the input is not a usable ONNX
//! model; 4 invalid options or unknown start/output names; 5 a file could not be read or
//! written; 6 the verified output deviation exceeds `--max-rel-l2` (the model is still written).
//! A model over a limit (`--max-nodes`, `--max-tensor-elements`, `--max-model-memory`) is 3.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use onnx_cle::options::Calibration;
use onnx_cle::options::EncodingsVersion;
use onnx_cle::{ArtifactKind, CoreError, Options, Relu6Policy, Step};

#[derive(Clone, Copy, ValueEnum)]
enum Relu6Arg {
    Exact,
    Replace,
    Keep,
}

#[derive(Clone, Copy, ValueEnum)]
enum HbfArg {
    Off,
    Exact,
    Aimet,
}

#[derive(Clone, Copy, ValueEnum)]
enum SelectArg {
    None,
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompatArg {
    None,
    Aimet,
}

#[derive(Clone, Copy, ValueEnum)]
enum CalibrationArg {
    #[value(alias = "data_free")]
    DataFree,
    Minmax,
    Percentile,
    Mse,
}

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
    pub const BAD_MODEL: u8 = 3;
    pub const BAD_REQUEST: u8 = 4;
    pub const IO: u8 = 5;
    pub const DEVIATION: u8 = 6;
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
    /// Start op (node or tensor name); repeatable. Only nodes downstream are touched.
    #[arg(long = "start")]
    start: Vec<String>,
    /// Output op (node or tensor name); repeatable. Only nodes upstream are touched.
    #[arg(long = "output-op", visible_alias = "output-name")]
    output_op: Vec<String>,
    /// Steps to run, comma-separated (bn_fold,relu6,cls,hbf); `none` runs no pass (a lossless
    /// decode + encode of the model).
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<String>>,
    /// What to do with Clip(0, 6).
    #[arg(long, value_enum)]
    relu6: Option<Relu6Arg>,
    /// High-bias fold mode.
    #[arg(long, value_enum)]
    hbf: Option<HbfArg>,
    /// Reproduce aimet_onnx 2.42's numbers.
    #[arg(long, value_enum, default_value = "none")]
    compat: CompatArg,
    /// Most cross-layer-scaling passes (stops once max |1 − s| < threshold); default: until
    /// converged (at most 100), or 1 with `--compat aimet`.
    #[arg(long)]
    iterations: Option<u32>,
    /// Convergence threshold for --iterations.
    #[arg(long, default_value_t = 1e-3)]
    threshold: f32,
    /// Skip verification with tract.
    #[arg(long)]
    no_verify: bool,
    /// Seconds verification may take (default: 0.2 s per MB of model, at least 10 s); past
    /// it the report says `not_verified` (budget exceeded) and the model is still written.
    #[arg(long, value_name = "SECONDS")]
    verify_budget: Option<f64>,
    /// Leave out the per-layer int8 weight table of the report.
    #[arg(long)]
    no_quant_table: bool,
    /// Only the model: no verification, no int8 table (`--no-verify --no-quant-table`).
    #[arg(long)]
    fast: bool,
    /// Seed of the random verification inputs.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Value of every dynamic input dimension during verification.
    #[arg(long, default_value_t = 1)]
    dynamic_dim: usize,
    /// Exit with code 6 when an output's relative L2 deviation exceeds this.
    #[arg(long)]
    max_rel_l2: Option<f64>,
    /// Sample inputs (`.npy`, float32, `[N, …]` the model input's shape) for verification and
    /// the quantization figures, instead of random data. Implies `--quant-e2e`.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Simulate int8 end to end with tract (weights-only schemes and W8A8).
    #[arg(long)]
    quant_e2e: bool,
    /// No end-to-end simulation table, even with --samples (the int8 outputs' own figures are
    /// still computed).
    #[arg(long, conflicts_with_all = ["quant_e2e", "sensitivity"])]
    no_quant_e2e: bool,
    /// Leave out the W8A8 rows of the end-to-end figures.
    #[arg(long)]
    no_w8a8: bool,
    /// Also quantize one layer at a time (one tract run per layer).
    #[arg(long)]
    sensitivity: bool,
    /// Activation-aware balancing: cap every scaled activation's per-tensor range growth at
    /// this factor (≥ 1).
    #[arg(long)]
    balance: Option<f32>,
    /// `auto`: try candidate scalings (the given options, --iterations 1/3/5, --balance 2) and
    /// keep the best per-tensor int8 SQNR on the odd-indexed --samples (used for nothing else;
    /// the even-indexed ones verify and feed the report). Needs --samples.
    #[arg(long, value_enum, default_value = "none")]
    select: SelectArg,
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
    /// Activation ranges of the int8 outputs: data-free, or calibrated on --samples.
    #[arg(long, value_enum, default_value = "data-free")]
    calibration: CalibrationArg,
    /// Quantile kept by `--calibration percentile` (percent).
    #[arg(long, default_value_t = 99.999)]
    percentile: f32,
    /// Quantize the graph outputs in the int8 outputs too (default: they stay float).
    #[arg(long)]
    quantize_outputs: bool,
    /// Range of the graph inputs for the int8 outputs, `LO,HI` (e.g. `-1,1`); without it a graph
    /// input stays float under data-free ranges.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    input_range: Option<Vec<f32>>,
    /// Refuse models with more nodes than this (all graphs, subgraphs and functions).
    #[arg(long, env = "ONNX_CLE_MAX_NODES", default_value_t = onnx_cle::onnx::limits::DEFAULT_MAX_NODES)]
    max_nodes: u64,
    /// Refuse models declaring a tensor with more elements than this.
    #[arg(long, env = "ONNX_CLE_MAX_TENSOR_ELEMENTS", default_value_t = onnx_cle::onnx::limits::DEFAULT_MAX_TENSOR_ELEMENTS)]
    max_tensor_elements: u64,
    /// Refuse models whose decoded form would take more memory than this (e.g. `4GiB`).
    #[arg(long, env = "ONNX_CLE_MAX_MODEL_MEMORY", default_value = "4GiB", value_parser = onnx_cle::onnx::limits::parse_size)]
    max_model_memory: u64,
    /// Declared int8 target of the deploy model (and every grid-tied output): onnxruntime, QNN
    /// or TensorRT defaults; the flags below override single fields.
    #[arg(long, value_parser = ["ort", "qnn", "trt"])]
    target: Option<String>,
    /// Target weight scale granularity.
    #[arg(long, value_parser = ["per-tensor", "per-channel"])]
    weight_granularity: Option<String>,
    /// Target weight bits (2..=8, symmetric).
    #[arg(long)]
    weight_bits: Option<u8>,
    /// Target activation integer type.
    #[arg(long, value_parser = ["uint8", "int8", "uint16"])]
    activation_type: Option<String>,
    /// Symmetric activations (zero point 0; int8 only).
    #[arg(long)]
    activation_symmetric: bool,
    /// Correct the deploy model's biases for the weight error on the target grid: E[x] from
    /// the folded BN statistics (analytic, data-free) or measured on --samples (empirical, at
    /// least 100 samples).
    #[arg(long, value_parser = ["off", "analytic", "empirical"])]
    bias_correction: Option<String>,
    /// How the deploy model's weights are put on the target grid: nearest, or squant
    /// (data-free error-sum flips per kernel and per channel).
    #[arg(long, value_parser = ["nearest", "squant"])]
    rounding: Option<String>,
    /// Write the deploy model here (FP32, weights on the target grid, biases corrected on
    /// request; its function differs from the input's by design). `-o` stays the exact model.
    #[arg(long)]
    deploy_output: Option<PathBuf>,
    /// Per-channel mean of the model input for analytic bias correction (comma-separated; one
    /// value for every channel); default 0.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    input_mean: Option<Vec<f32>>,
}

/// A kebab-case CLI value as the snake_case serde enum it names.
fn enum_arg<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> Result<T, CoreError> {
    serde_json::from_value(serde_json::Value::String(v.replace('-', "_")))
        .map_err(|_| CoreError::InvalidOptions(format!("invalid value `{v}` for --{flag}")))
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

fn options(a: &EqualizeArgs) -> Result<Options, CoreError> {
    let mut o = match a.compat {
        CompatArg::Aimet => Options::aimet(),
        CompatArg::None => Options::default(),
    };
    if let Some(steps) = &a.steps {
        o.steps = steps
            .iter()
            .filter(|s| !(steps.len() == 1 && s.trim() == "none"))
            .map(|s| Step::parse(s))
            .collect::<Result<_, _>>()?;
    }
    if let Some(r) = a.relu6 {
        o.relu6 = match r {
            Relu6Arg::Exact => Relu6Policy::Exact,
            Relu6Arg::Replace => Relu6Policy::Replace,
            Relu6Arg::Keep => Relu6Policy::Keep,
        };
    }
    if let Some(h) = a.hbf {
        o.hbf = match h {
            HbfArg::Off => onnx_cle::HbfMode::Off,
            HbfArg::Exact => onnx_cle::HbfMode::Exact,
            HbfArg::Aimet => onnx_cle::HbfMode::Aimet,
        };
    }
    o.start = a.start.clone();
    o.output = a.output_op.clone();
    o.iterations = a.iterations;
    o.threshold = a.threshold;
    o.verify.enabled = !(a.no_verify || a.fast);
    o.verify.budget_s = a.verify_budget;
    o.verify.seed = a.seed;
    o.verify.dynamic_dim = a.dynamic_dim;
    o.balance = a.balance;
    o.select = match a.select {
        SelectArg::None => onnx_cle::Select::None,
        SelectArg::Auto => onnx_cle::Select::Auto,
    };
    o.quant.end_to_end = !a.no_quant_e2e && (a.quant_e2e || a.samples.is_some() || a.sensitivity);
    o.quant.w8a8 = !a.no_w8a8;
    o.quant.sensitivity = a.sensitivity;
    if a.no_quant_table || a.fast {
        o.quant.layers = false;
    }
    o.exports.qdq = a.qdq_output.is_some();
    o.exports.encodings = a.encodings.as_ref().map(|_| match a.encodings_version {
        EncodingsVersionArg::V1 => EncodingsVersion::V1_0_0,
        EncodingsVersionArg::V061 => EncodingsVersion::V0_6_1,
    });
    o.exports.ort_overrides = a.ort_overrides.is_some();
    o.exports.calibration = match a.calibration {
        CalibrationArg::DataFree => Calibration::DataFree,
        CalibrationArg::Minmax => Calibration::Minmax,
        CalibrationArg::Percentile => Calibration::Percentile,
        CalibrationArg::Mse => Calibration::Mse,
    };
    if o.exports.calibration != Calibration::DataFree && a.samples.is_none() {
        return Err(CoreError::InvalidOptions(
            "--calibration other than data-free needs --samples".into(),
        ));
    }
    o.exports.percentile = a.percentile;
    o.exports.quantize_outputs = a.quantize_outputs;
    o.exports.input_range = match a.input_range.as_deref() {
        None => None,
        Some(&[lo, hi]) => Some([lo, hi]),
        Some(_) => {
            return Err(CoreError::InvalidOptions(
                "--input-range takes two numbers: LO,HI".into(),
            ))
        }
    };
    if let Some(t) = &a.target {
        o.target.preset = enum_arg("target", t)?;
    }
    if let Some(g) = &a.weight_granularity {
        o.target.weight_granularity = Some(enum_arg("weight-granularity", g)?);
    }
    o.target.weight_bits = a.weight_bits.or(o.target.weight_bits);
    if let Some(t) = &a.activation_type {
        o.target.activation_type = Some(enum_arg("activation-type", t)?);
    }
    if a.activation_symmetric {
        o.target.activation_symmetric = Some(true);
    }
    if let Some(b) = &a.bias_correction {
        o.deploy.bias_correction = enum_arg("bias-correction", b)?;
    }
    if let Some(r) = &a.rounding {
        o.deploy.rounding = enum_arg("rounding", r)?;
    }
    o.deploy.model = a.deploy_output.is_some();
    o.deploy.input_mean = a.input_mean.clone();
    o.normalized()
}

/// Runs `onnx-cle equalize`.
pub fn equalize(a: EqualizeArgs) -> ExitCode {
    let t0 = Instant::now();
    let opts = match options(&a) {
        Ok(o) => o,
        Err(e) => return fail(core_exit(&e), e),
    };
    let data = match std::fs::read(&a.input) {
        Ok(d) => d,
        Err(e) => return fail(exit::IO, format!("{}: {e}", a.input.display())),
    };
    let read_ms = t0.elapsed().as_secs_f64() * 1e3;
    let size = data.len();
    let bytes = bytes::Bytes::from(data);
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
    let out = match onnx_cle::run(model, original, &opts, samples.as_ref(), ctl) {
        Ok(o) => o,
        Err(e) => return fail(core_exit(&e), e),
    };
    let t_write = Instant::now();
    if let Err(e) = std::fs::write(&a.output, &out.model) {
        return fail(exit::IO, format!("{}: {e}", a.output.display()));
    }
    if let (Some(path), Some(deploy)) = (&a.deploy_output, &out.deploy) {
        if let Err(e) = std::fs::write(path, deploy) {
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
        if let Err(e) = std::fs::write(path, &art.data) {
            return fail(exit::IO, format!("{}: {e}", path.display()));
        }
    }
    let write_ms = t_write.elapsed().as_secs_f64() * 1e3;
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
            if a.deploy_output.is_none() {
                eprintln!("onnx-cle: note: the deploy model is not written (no --deploy-output)");
            }
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
