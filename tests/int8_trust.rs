//! The int8 outputs' self-check, through the real binary: a deploy model whose requested bias
//! correction makes it worse than plain nearest rounding is replaced by the baseline (the very
//! file `--deploy-output` writes without the correction) and the report says so; a run whose
//! int8 outputs cannot be trusted (here: not checked, verification off) is flagged on the
//! summary line and, with `--strict-int8`, exits 7 with its outputs written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_onnx-cle");

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onnx-cle-trust-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run onnx-cle")
}

#[test]
fn a_correction_worse_than_nearest_rounding_falls_back_to_the_baseline() {
    let dir = scratch("fallback");
    let model = common::small_model(&dir);
    // A declared input mean of 30 for inputs drawn on [-1, 1]: analytic bias correction
    // corrects for an expectation the inputs do not have.
    let asked = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&dir.join("eq.onnx")),
        "--input-range=-1,1",
        "--bias-correction",
        "analytic",
        "--input-mean",
        "30",
        "--deploy-output",
        p(&dir.join("deploy.onnx")),
        "--report",
        p(&dir.join("r.json")),
        "--html",
        p(&dir.join("r.html")),
    ]);
    let err = String::from_utf8_lossy(&asked.stderr);
    assert!(asked.status.success(), "{err}");
    assert!(
        err.contains("int8 check: deploy.onnx nearest + off"),
        "{err}"
    );
    assert!(
        err.contains("fell back: the requested nearest + analytic"),
        "{err}"
    );
    let r = common::read_json(&dir.join("r.json"));
    let check = &r["int8"]["checks"][0];
    assert_eq!(check["output"], "deploy.onnx", "{check}");
    assert_eq!(check["status"], "checked", "{check}");
    assert_eq!(check["fell_back"], true, "{check}");
    assert_eq!(check["kept"], "nearest + off", "{check}");
    let c = check["candidates"].as_array().unwrap();
    let requested = c[0]["max_rel_l2"].as_f64().unwrap();
    let baseline = c[1]["max_rel_l2"].as_f64().unwrap();
    assert!(requested > baseline, "{check}");
    assert_eq!(r["int8"]["trusted"], true, "{}", r["int8"]);
    // Four random inputs on the model's dynamic batch dimension, not one.
    let inputs = r["int8"]["checks"][0]["inputs"].as_str().unwrap();
    assert!(inputs.starts_with("random uniform on [-1, 1]"), "{inputs}");
    assert!(inputs.ends_with(", 4 inputs"), "{inputs}");
    assert_eq!(
        r["verification"]["input_shapes"][0]["shape"][0], 4,
        "{}",
        r["verification"]
    );

    let html = std::fs::read_to_string(dir.join("r.html")).unwrap();
    assert!(
        html.contains("<section id=\"int8-check\">"),
        "no self-check section"
    );
    assert!(
        html.contains("requested: nearest + analytic"),
        "no requested candidate row"
    );

    // The written deploy model is the one a run without the correction writes.
    let plain = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&dir.join("eq2.onnx")),
        "--input-range=-1,1",
        "--deploy-output",
        p(&dir.join("plain.onnx")),
    ]);
    assert!(plain.status.success());
    assert!(
        std::fs::read(dir.join("deploy.onnx")).unwrap()
            == std::fs::read(dir.join("plain.onnx")).unwrap(),
        "the fallback is not the nearest-rounding deploy model"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_helpful_correction_is_kept() {
    let dir = scratch("kept");
    let model = common::small_model(&dir);
    let out = run(&[
        "equalize",
        p(&model),
        "-o",
        p(&dir.join("eq.onnx")),
        "--input-range=-1,1",
        "--bias-correction",
        "analytic",
        "--rounding",
        "squant",
        "--qdq-output",
        p(&dir.join("qdq.onnx")),
        "--report",
        p(&dir.join("r.json")),
        "--strict-int8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let r = common::read_json(&dir.join("r.json"));
    let checks = r["int8"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{}", r["int8"]);
    for c in checks {
        if c["status"] == "baseline" {
            continue;
        }
        assert_eq!(c["status"], "checked", "{c}");
        let kept = c["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| {
                k["label"]
                    .as_str()
                    .unwrap()
                    .ends_with(c["kept"].as_str().unwrap())
            })
            .unwrap();
        let baseline = &c["candidates"][1];
        assert!(
            kept["max_rel_l2"].as_f64().unwrap() <= baseline["max_rel_l2"].as_f64().unwrap(),
            "{c}"
        );
    }
    assert_eq!(r["int8"]["trusted"], true, "{}", r["int8"]);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("; trusted"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn strict_int8_exits_7_when_the_outputs_were_not_checked() {
    let dir = scratch("strict");
    let model = common::small_model(&dir);
    let qdq = dir.join("qdq.onnx");
    let eq = dir.join("eq.onnx");
    let args = [
        "equalize",
        p(&model),
        "-o",
        p(&eq),
        "--no-verify",
        "--input-range=-1,1",
        "--rounding",
        "squant",
        "--qdq-output",
        p(&qdq),
    ];
    let lenient = run(&args);
    let err = String::from_utf8_lossy(&lenient.stderr);
    assert!(lenient.status.success(), "{err}");
    assert!(
        err.contains("NOT TRUSTED: deploy.onnx was not checked"),
        "{err}"
    );

    std::fs::remove_file(&qdq).unwrap();
    let strict = run(&[&args[..], &["--strict-int8"]].concat());
    let err = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(7), "{err}");
    assert!(
        err.contains("--strict-int8: deploy.onnx was not checked"),
        "{err}"
    );
    assert!(qdq.exists(), "the outputs are still written");
    let _ = std::fs::remove_dir_all(dir);
}
