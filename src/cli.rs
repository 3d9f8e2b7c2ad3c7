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
use onnx_cle::{CoreError, Options, Relu6Policy, Step};

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
    /// Steps to run, comma-separated (bn_fold,relu6,cls,hbf).
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
    /// Refuse models with more nodes than this (all graphs, subgraphs and functions).
    #[arg(long, env = "ONNX_CLE_MAX_NODES", default_value_t = onnx_cle::limits::DEFAULT_MAX_NODES)]
    max_nodes: u64,
    /// Refuse models declaring a tensor with more elements than this.
    #[arg(long, env = "ONNX_CLE_MAX_TENSOR_ELEMENTS", default_value_t = onnx_cle::limits::DEFAULT_MAX_TENSOR_ELEMENTS)]
    max_tensor_elements: u64,
    /// Refuse models whose decoded form would take more memory than this (e.g. `4GiB`).
    #[arg(long, env = "ONNX_CLE_MAX_MODEL_MEMORY", default_value = "4GiB", value_parser = onnx_cle::server::config::parse_size)]
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
    o.verify.enabled = !a.no_verify;
    o.verify.seed = a.seed;
    o.verify.dynamic_dim = a.dynamic_dim;
    o.balance = a.balance;
    o.select = match a.select {
        SelectArg::None => onnx_cle::Select::None,
        SelectArg::Auto => onnx_cle::Select::Auto,
    };
    o.quant.end_to_end = a.quant_e2e || a.samples.is_some() || a.sensitivity;
    o.quant.w8a8 = !a.no_w8a8;
    o.quant.sensitivity = a.sensitivity;
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
    let size = data.len();
    let bytes = bytes::Bytes::from(data);
    let limits = onnx_cle::limits::Limits {
        max_nodes: a.max_nodes,
        max_tensor_elements: a.max_tensor_elements,
        max_decoded_bytes: a.max_model_memory,
    };
    let mut model = match onnx_cle::limits::decode(bytes.clone(), &limits) {
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
    if let Err(e) = onnx_cle::onnx::resolve_external_data(&mut model, dir) {
        return fail(core_exit(&e), e);
    }
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
    let out = match onnx_cle::run(model, Some(bytes), &opts, samples.as_ref(), ctl) {
        Ok(o) => o,
        Err(e) => return fail(core_exit(&e), e),
    };
    if let Err(e) = std::fs::write(&a.output, &out.model) {
        return fail(exit::IO, format!("{}: {e}", a.output.display()));
    }
    if let (Some(path), Some(deploy)) = (&a.deploy_output, &out.deploy) {
        if let Err(e) = std::fs::write(path, deploy) {
            return fail(exit::IO, format!("{}: {e}", path.display()));
        }
    }
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
