//! The real `onnx-cle` binary, as a user runs it.
//!
//! Proves that `onnx-cle equalize tiny.onnx -o OUT --report R` exits 0 and writes a decodable
//! model and a JSON report (BN folded, CLS sets, verified by tract); that `--steps`, `--relu6`,
//! `--compat aimet` and `--no-verify` are accepted and land in the report's options; and the
//! documented exit codes: 3 for a file that is not ONNX, 4 for an unknown `--start` name (with
//! "did you mean" suggestions on stderr), 5 for an input path that cannot be read.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_onnx-cle");

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onnx-cle-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run onnx-cle")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn equalize_tiny_writes_model_and_report() {
    let Some(models) = common::shared_models("cli") else {
        return;
    };
    let dir = scratch("tiny");
    let (out, rep) = (dir.join("out.onnx"), dir.join("r.json"));
    let o = run(&[
        "equalize",
        p(&models.join("tiny.onnx")),
        "-o",
        p(&out),
        "--report",
        p(&rep),
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let m = common::load(&out);
    assert!(!m.graph.as_ref().unwrap().node.is_empty());
    let r = common::read_json(&rep);
    assert_eq!(r["bn_folds"].as_array().unwrap().len(), 3, "{r:#}");
    assert!(!r["cls_sets"].as_array().unwrap().is_empty());
    assert_eq!(r["verification"]["status"], "verified");
    assert!(r["verification"]["max_rel_l2"].as_f64().unwrap() <= 1e-5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn options_are_accepted() {
    let dir = scratch("options");
    let model = common::small_model(&dir);
    let (out, rep) = (dir.join("out.onnx"), dir.join("r.json"));
    let o = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&out),
        "--report",
        p(&rep),
        "--steps",
        "bn_fold,cls",
        "--relu6",
        "keep",
        "--no-verify",
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let r = common::read_json(&rep);
    assert_eq!(r["options"]["steps"], serde_json::json!(["bn_fold", "cls"]));
    assert_eq!(r["options"]["relu6"], "keep");
    assert_eq!(r["verification"]["status"], "disabled");
    assert_eq!(r["bn_folds"].as_array().unwrap().len(), 1);

    let o = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&out),
        "--report",
        p(&rep),
        "--compat",
        "aimet",
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let r = common::read_json(&rep);
    assert_eq!(r["options"]["compat"], "aimet");
    assert_eq!(r["options"]["relu6"], "replace");
    assert_eq!(r["verification"]["status"], "verified");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_code_3_for_a_file_that_is_not_onnx() {
    let dir = scratch("not-onnx");
    let bad = dir.join("notes.onnx");
    std::fs::write(&bad, "this is not a protobuf model\n").unwrap();
    let o = run(&["equalize", p(&bad), "-o", p(&dir.join("out.onnx"))]);
    assert_eq!(code(&o), 3, "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("error"), "{}", stderr(&o));
    assert!(!dir.join("out.onnx").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_code_4_for_an_unknown_start_name_with_suggestions() {
    let dir = scratch("unknown-start");
    let model = common::small_model(&dir);
    let o = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&dir.join("out.onnx")),
        "--start",
        "conv_frist",
    ]);
    assert_eq!(code(&o), 4, "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("conv_frist"), "{err}");
    assert!(err.contains("did you mean"), "{err}");
    assert!(
        err.contains("conv_first"),
        "the closest name is suggested: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_code_5_for_an_unreadable_input() {
    let dir = scratch("unreadable");
    let o = run(&[
        "equalize",
        p(&dir.join("does-not-exist.onnx")),
        "-o",
        p(&dir.join("out.onnx")),
    ]);
    assert_eq!(code(&o), 5, "stderr: {}", stderr(&o));
    // A folder is not readable as a model either.
    let o = run(&["equalize", p(&dir), "-o", p(&dir.join("out.onnx"))]);
    assert_eq!(code(&o), 5, "stderr: {}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model whose height and width are dynamic: verification runs at the shape `--input-shape`
/// gives (the report's `input_shapes`), and without it at `dynamic_dim` with a note saying so;
/// a shape for an input that does not exist, or one that changes a fixed dimension, is refused
/// with exit code 4.
#[test]
fn input_shape_sets_the_verification_shape() {
    use onnx_cle::builder::{ConvSpec, Dim, ModelBuilder};
    let dir = scratch("input-shape");
    let mut b = ModelBuilder::new(13).seed(3);
    let x = b.input(
        "x",
        &[Dim::sym("N"), Dim::from(3), Dim::Unknown, Dim::sym("W")],
    );
    let y = b.conv("conv", &x, &ConvSpec::new(3, 4, &[3, 3]));
    let y = b.relu("relu", &y);
    let y = b.conv("conv2", &y, &ConvSpec::new(4, 2, &[1, 1]));
    b.output(&y);
    let model = dir.join("dyn.onnx");
    std::fs::write(&model, b.build_bytes()).unwrap();
    let (out, rep) = (dir.join("out.onnx"), dir.join("r.json"));
    let base = ["equalize", p(&model), "-o", p(&out), "--report", p(&rep)];

    let o = run(&[&base[..], &["--input-shape", "x:2x3x12x20"]].concat());
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let r = common::read_json(&rep);
    assert_eq!(r["verification"]["status"], "verified");
    assert_eq!(
        r["verification"]["input_shapes"][0]["shape"],
        serde_json::json!([2, 3, 12, 20])
    );
    assert!(!stderr(&o).contains("dynamic dimensions at"));

    let o = run(&[&base[..], &["--dynamic-dim", "5"]].concat());
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let r = common::read_json(&rep);
    assert_eq!(
        r["verification"]["input_shapes"][0]["shape"],
        serde_json::json!([5, 3, 5, 5])
    );
    assert!(
        stderr(&o)
            .contains("note: verification inputs with dynamic dimensions at 5 (x [5, 3, 5, 5])"),
        "stderr: {}",
        stderr(&o)
    );

    for bad in ["y:1x3x8x8", "x:1x4x8x8", "x:1x3x8"] {
        let o = run(&[&base[..], &["--input-shape", bad]].concat());
        assert_eq!(code(&o), 4, "{bad}: stderr: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A BN after which cross-layer scaling cannot cross (HardSwish), its γ spread over two
/// decades: with per-tensor weights the int8 outputs keep it unfolded and the summary says so;
/// the equalized model folds it.
#[test]
fn per_tensor_int8_outputs_say_which_bns_stay_unfolded() {
    use onnx_cle::builder::{BnSpec, ConvSpec, ModelBuilder};
    let dir = scratch("kept-bn");
    let mut b = ModelBuilder::new(14).seed(4);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("conv", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
    let spec = BnSpec {
        gamma: (0..8).map(|c| 0.05 * 100f32.powf(c as f32 / 7.0)).collect(),
        beta: vec![0.1; 8],
        mean: vec![0.0; 8],
        var: vec![1.0; 8],
        epsilon: None,
    };
    let y = b.batch_norm_with("bn", &y, &spec);
    let y = b.unary("HardSwish", "hs", &y);
    let y = b.conv("conv2", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let model = dir.join("hs.onnx");
    std::fs::write(&model, b.build_bytes()).unwrap();
    let (out, deploy) = (dir.join("out.onnx"), dir.join("deploy.onnx"));
    let o = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&out),
        "--deploy-output",
        p(&deploy),
        "--weight-granularity",
        "per-tensor",
    ]);
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("int8 outputs keep 1 BatchNormalization unfolded"),
        "stderr: {}",
        stderr(&o)
    );
    let ops = |path: &Path| {
        let m = onnx_cle::onnx::decode(std::fs::read(path).unwrap().into()).unwrap();
        m.graph
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization")
            .count()
    };
    assert_eq!((ops(&out), ops(&deploy)), (0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With ranges calibrated on the samples, the int8 self-check runs on the first 8 samples with
/// ranges fitted to the others (a check on the samples the ranges fit favours what fits them),
/// and the QDQ model is written with ranges calibrated on all of them.
#[test]
fn calibrated_outputs_are_checked_on_samples_held_out_from_calibration() {
    let dir = scratch("held-out-check");
    let model = common::small_model(&dir);
    let n = 20;
    let mut rng = onnx_cle::builder::SplitMix64::new(9);
    let data: Vec<f32> = (0..n * 3 * 8 * 8).map(|_| rng.normal()).collect();
    let npy = dir.join("s.npy");
    std::fs::write(&npy, common::npy_f32(&[n, 3, 8, 8], &data)).unwrap();
    let (out, rep, q) = (dir.join("out.onnx"), dir.join("r.json"), dir.join("q.onnx"));
    let base = ["equalize", p(&model), "-o", p(&out), "--report", p(&rep)];
    let more = [
        "--samples",
        p(&npy),
        "--calibration",
        "minmax",
        "--qdq-output",
        p(&q),
    ];
    let o = run(&[&base[..], &more[..]].concat());
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    let r = common::read_json(&rep);
    let inputs = r["verification"]["inputs"].as_str().unwrap();
    assert!(
        inputs.contains("samples 1–8 of 20, held out from calibration"),
        "{inputs}"
    );
    assert_eq!(r["exports"]["calibration_samples"], 20);
    let _ = std::fs::remove_dir_all(&dir);
}
