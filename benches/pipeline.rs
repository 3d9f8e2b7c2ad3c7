//! Pipeline benchmarks (issue 3): decode, each pass, write-back, encode, the whole pipeline, the
//! CLI's `--no-verify` job, verification, and the floor (decode + encode, no passes), on a
//! ResNet-50-shaped model at 25 %, 50 % and 100 % width and on `mobilenet_v2.onnx`.
//!
//! `scripts/bench.sh` runs it in release and prints the table; `cargo bench --bench pipeline --
//! resnet50_100` runs one model. After criterion's own output a markdown table gives every
//! stage's median, the floor measured in the same run, the ratio, and the slope of the
//! pipeline's cost against model size.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode};
use onnx_cle::graph::work::Work;
use onnx_cle::onnx::{self, ModelProto};
use onnx_cle::passes::{self, Ctx, State};
use onnx_cle::report::Report;
use onnx_cle::{runtime, verify, Control, Options};

/// One benchmarked model.
struct Model {
    id: String,
    bytes: Bytes,
}

thread_local! {
    /// The (model, stage) pairs run by this process (criterion's filter skips the others).
    static RAN: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

fn mark_ran(model: &str, stage: &str) {
    RAN.with(|r| {
        let key = (model.to_string(), stage.to_string());
        let mut r = r.borrow_mut();
        if !r.contains(&key) {
            r.push(key);
        }
    });
}

/// Where criterion writes its results (the same rule as criterion's own default).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("criterion")
}

/// Criterion's median estimate (seconds per iteration) of one benchmark.
fn criterion_median(dir: &std::path::Path, model: &str, stage: &str) -> Option<f64> {
    let path = dir.join(model).join(stage).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(json["median"]["point_estimate"].as_f64()? / 1e9)
}

/// Times `routine` on a fresh `setup()` value per iteration (setup and drop untimed).
fn bench<S, O>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    model: &str,
    stage: &str,
    mut setup: impl FnMut() -> S,
    mut routine: impl FnMut(S) -> O,
) {
    g.bench_function(stage, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let input = setup();
                let t = Instant::now();
                let out = black_box(routine(black_box(input)));
                total += t.elapsed();
                drop(out);
            }
            mark_ran(model, stage);
            total
        })
    });
}

fn pipeline_options() -> Options {
    let mut o = Options::default();
    o.verify.enabled = false;
    o.quant.layers = false;
    o
}

/// `Work` after the first `passes` passes of the default pipeline, with its context.
fn prepared(model: &ModelProto, passes: usize) -> (Work, Options, Report, State) {
    let opts = pipeline_options().normalized().expect("options");
    let mut work = Work::new(model.clone()).expect("work");
    let mut report = Report::default();
    let mut state = State::default();
    let mut cx = Ctx {
        work: &mut work,
        opts: &opts,
        report: &mut report,
        state: &mut state,
    };
    for pass in &passes::PIPELINE[..passes] {
        (pass.run)(&mut cx).expect("pass");
    }
    (work, opts, report, state)
}

fn run_pass(
    (mut work, opts, mut report, mut state): (Work, Options, Report, State),
    pass: fn(&mut Ctx) -> onnx_cle::Result<()>,
) -> Work {
    let mut cx = Ctx {
        work: &mut work,
        opts: &opts,
        report: &mut report,
        state: &mut state,
    };
    pass(&mut cx).expect("pass");
    work
}

fn finish((mut work, opts, mut report, mut state): (Work, Options, Report, State)) -> ModelProto {
    let mut cx = Ctx {
        work: &mut work,
        opts: &opts,
        report: &mut report,
        state: &mut state,
    };
    passes::relu6::materialize(&mut cx).expect("materialize");
    work.finish()
}

fn bench_model(c: &mut Criterion, m: &Model, verification: bool) {
    let id = m.id.as_str();
    let mut g = c.benchmark_group(id);
    g.sampling_mode(SamplingMode::Flat);
    let decoded = onnx::decode(m.bytes.clone()).expect("decode");
    bench(&mut g, id, "decode", || m.bytes.clone(), onnx::decode);
    bench(
        &mut g,
        id,
        "bn_fold",
        || prepared(&decoded, 0),
        |s| run_pass(s, passes::bn_fold::run),
    );
    bench(
        &mut g,
        id,
        "relu6",
        || prepared(&decoded, 1),
        |s| run_pass(s, passes::relu6::run),
    );
    bench(
        &mut g,
        id,
        "cls",
        || prepared(&decoded, 2),
        |s| run_pass(s, passes::cls::run),
    );
    bench(
        &mut g,
        id,
        "hbf",
        || prepared(&decoded, 3),
        |s| run_pass(s, passes::hbf::run),
    );
    bench(&mut g, id, "write_back", || prepared(&decoded, 4), finish);
    let equalized = onnx_cle::equalize(decoded.clone(), &pipeline_options())
        .expect("equalize")
        .model;
    bench(&mut g, id, "encode", || (), |_| onnx::encode(&equalized));
    bench(
        &mut g,
        id,
        "floor",
        || m.bytes.clone(),
        |b| onnx::encode(&onnx::decode(b).expect("decode")),
    );
    bench(
        &mut g,
        id,
        "pipeline",
        || m.bytes.clone(),
        |b| {
            let model = onnx::decode(b).expect("decode");
            let eq = onnx_cle::equalize(model, &pipeline_options()).expect("equalize");
            onnx::encode(&eq.model)
        },
    );
    let mut cli = Options::default();
    cli.verify.enabled = false;
    bench(
        &mut g,
        id,
        "run_no_verify",
        || m.bytes.clone(),
        |b| {
            let model = onnx::decode(b.clone()).expect("decode");
            onnx_cle::run(model, Some(b), &cli, None, Control::default()).expect("run")
        },
    );
    if verification {
        let eq_bytes = onnx::encode(&equalized);
        let mut inputs = runtime::input_specs(&decoded, 1).expect("inputs");
        runtime::fill_random(&mut inputs, 0x5eed);
        bench(
            &mut g,
            id,
            "tract_once",
            || (),
            |_| runtime::run_model(&m.bytes, &inputs).expect("tract"),
        );
        bench(
            &mut g,
            id,
            "verify",
            || (),
            |_| verify::compare(&m.bytes, &eq_bytes, &inputs, String::new()),
        );
    }
    g.finish();
}

fn models() -> Vec<(Model, bool)> {
    let mut out = Vec::new();
    for (pct, width) in [(100, 1.0f32), (50, 0.5), (25, 0.25)] {
        let bytes = onnx::encode(&onnx_cle::builder::resnet50(width, 50));
        out.push((
            Model {
                id: format!("resnet50_{pct}"),
                bytes: Bytes::from(bytes),
            },
            pct == 100,
        ));
    }
    let mobilenet =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/mobilenet_v2.onnx");
    match std::fs::read(&mobilenet) {
        Ok(b) => out.push((
            Model {
                id: "mobilenet_v2".into(),
                bytes: Bytes::from(b),
            },
            true,
        )),
        Err(e) => eprintln!("skipping {}: {e}", mobilenet.display()),
    }
    out
}

const STAGES: [&str; 12] = [
    "decode",
    "bn_fold",
    "relu6",
    "cls",
    "hbf",
    "write_back",
    "encode",
    "floor",
    "pipeline",
    "run_no_verify",
    "tract_once",
    "verify",
];

/// Least-squares `y = a + b·x`.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let b = sxy / sxx;
    let r2 = if syy > 0.0 {
        sxy * sxy / (sxx * syy)
    } else {
        1.0
    };
    Some((my - b * mx, b, r2))
}

fn print_table(dir: &std::path::Path, sizes: &BTreeMap<String, usize>) {
    RAN.with(|r| {
        let r = r.borrow();
        let med = |m: &str, s: &str| {
            r.contains(&(m.to_string(), s.to_string()))
                .then(|| criterion_median(dir, m, s))
                .flatten()
        };
        let mut models: Vec<&String> = Vec::new();
        for (m, _) in r.iter() {
            if !models.contains(&m) {
                models.push(m);
            }
        }
        println!("\n## onnx-cle pipeline benchmarks\n");
        println!("| model | MB | stage | median ms | floor ms | × floor | MB/s |");
        println!("|---|---:|---|---:|---:|---:|---:|");
        for m in &models {
            let mb = sizes.get(*m).copied().unwrap_or(0) as f64 / 1e6;
            let floor = med(m, "floor");
            for s in STAGES {
                let Some(t) = med(m, s) else { continue };
                let ratio = floor.map_or("".into(), |f| format!("{:.2}", t / f));
                let fl = floor.map_or("".into(), |f| format!("{:.1}", f * 1e3));
                println!(
                    "| {m} | {mb:.1} | {s} | {:.1} | {fl} | {ratio} | {:.0} |",
                    t * 1e3,
                    mb / t
                );
            }
            if let (Some(v), Some(t)) = (med(m, "verify"), med(m, "tract_once")) {
                println!(
                    "| {m} | {mb:.1} | verify ÷ tract_once | {:.2} | | | |",
                    v / t
                );
            }
        }
        println!();
        for stage in ["pipeline", "floor", "run_no_verify"] {
            let pts: Vec<(f64, f64)> = models
                .iter()
                .filter(|m| m.starts_with("resnet50_"))
                .filter_map(|m| {
                    Some((
                        sizes.get(*m).copied()? as f64 / 1e6,
                        med(m, stage)? * 1e3,
                    ))
                })
                .collect();
            if let Some((a, b, r2)) = fit(&pts) {
                println!(
                    "{stage} vs size (ResNet-50 widths): {b:.3} ms/MB, intercept {a:.1} ms, R² {r2:.4}"
                );
            }
        }
    });
}

fn main() {
    let dir = criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let models = models();
    let sizes: BTreeMap<String, usize> = models
        .iter()
        .map(|(m, _)| (m.id.clone(), m.bytes.len()))
        .collect();
    for (m, verification) in &models {
        bench_model(&mut c, m, *verification);
    }
    c.final_summary();
    print_table(&dir, &sizes);
}
