//! External tools on our output: runs `scripts/check_onnxruntime.sh` with the freshly built
//! binary, so plain `cargo test` covers it. The script equalizes `../shared/models/mobilenet_v2.onnx`
//! (default options and `--compat aimet`), checks both results with
//! `onnx.checker.check_model(full_check=True)`, and runs original and outputs in onnxruntime on
//! the same random input: the default mode must stay within 1e-5 relative L2, and the AIMET mode
//! must match AIMET's own `mobilenet_v2.aimet_cle.onnx` within 1e-4. It creates a throwaway venv
//! (onnx 1.23.2, onnxruntime, numpy) under `$ONNX_CLE_VENV_DIR` (default
//! `~/.cache/onnx-cle-venvs`) the first time.
//!
//! A second test runs `scripts/check_int8.sh`: EfficientNet-Lite0's int8 outputs (QDQ model,
//! AIMET encodings 1.0.0 and 0.6.1, onnxruntime overrides) pass `check_model(full_check=True)`,
//! the QDQ model runs in onnxruntime's int8 kernels and the overrides through onnxruntime's own
//! `quantize_static`, both within 0.5 dB of onnx-cle's simulation.
//!
//! Skipped, loudly, when `python3` is missing or `../shared/models` is absent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `script` (relative to the repo) with the freshly built binary and `env`; returns its
/// stdout, failing the test with both streams when it fails.
fn run_script(script: &str, env: &[(&str, &Path)]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join(script))
        .arg(env!("CARGO_BIN_EXE_onnx-cle"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn onnx_checker_and_onnxruntime_accept_the_output() {
    let Some(models) = common::shared_models("external_checks") else {
        return;
    };
    if !models.join("mobilenet_v2.onnx").is_file() {
        common::say(
            "\n*** SKIPPED: external_checks: mobilenet_v2.onnx not in ../shared/models ***\n",
        );
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        common::say("\n*** SKIPPED: external_checks: python3 not found ***\n");
        return;
    }
    let stdout = run_script(
        "scripts/check_onnxruntime.sh",
        &[("ONNX_CLE_MODELS", models.as_path())],
    );
    for line in stdout.lines().filter(|l| l.contains("rel L2")) {
        common::say(&format!("external_checks: {line}"));
    }
}

#[test]
fn onnxruntime_int8_kernels_agree_with_the_simulation_of_the_int8_outputs() {
    let Some(models) = common::shared_models("external_checks") else {
        return;
    };
    let data = models.join("../data");
    if !models.join("efficientnet_lite0.onnx").is_file()
        || !data.join("efficientnet_inputs_f32_nchw.npy").is_file()
    {
        common::say("\n*** SKIPPED: external_checks: efficientnet_lite0 or its inputs not in ../shared ***\n");
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        common::say("\n*** SKIPPED: external_checks: python3 not found ***\n");
        return;
    }
    let stdout = run_script(
        "scripts/check_int8.sh",
        &[
            ("ONNX_CLE_MODELS", models.as_path()),
            ("ONNX_CLE_DATA", data.as_path()),
        ],
    );
    for line in stdout.lines().filter(|l| l.contains(" dB")) {
        common::say(&format!("external_checks: {line}"));
    }
}
