//! Helpers shared by the integration tests: locating `../shared/models`, running the pipeline
//! with tract verification, and comparing f32 tensors in ULP.

#![allow(dead_code)]

use std::path::PathBuf;

use onnx_cle::onnx::{self, ModelProto, NodeProto, TensorProto};
use onnx_cle::{Control, Options, Report};

/// `<CARGO_MANIFEST_DIR>/../shared/models`, or `None` after printing a loud SKIPPED line.
pub fn shared_models(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    if dir.is_dir() {
        Some(dir)
    } else {
        say(&format!(
            "\n*** SKIPPED: ../shared/models not found ({test}: looked in {}) ***\n",
            dir.display()
        ));
        None
    }
}

/// Reads and decodes a model file.
pub fn load(path: &std::path::Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    onnx::decode(bytes.into()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the whole job (equalize + encode + tract verification) and returns the equalized model
/// and the report. Panics when the model could not be verified.
pub fn run_verified(model: &ModelProto, opts: &Options) -> (ModelProto, Report) {
    let mut opts = opts.clone();
    opts.verify.enabled = true;
    let out = onnx_cle::run(model.clone(), None, &opts, None, Control::default())
        .unwrap_or_else(|e| panic!("equalize failed: {e}"));
    let v = &out.report.verification;
    assert_eq!(
        v.status,
        onnx_cle::report::VerifyStatus::Verified,
        "not verified: {:?}",
        v.reason
    );
    let m = onnx::decode(out.model.into()).expect("re-decode the equalized model");
    (m, out.report)
}

/// Options running only `steps`, in default (non-AIMET) mode.
pub fn steps(steps: &[onnx_cle::Step]) -> Options {
    Options {
        steps: steps.to_vec(),
        ..Options::default()
    }
}

/// The initializer named `name`.
pub fn init<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    m.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no initializer `{name}`"))
}

/// f32 values of initializer `name`.
pub fn values(m: &ModelProto, name: &str) -> Vec<f32> {
    onnx::tensor::to_f32(init(m, name))
        .unwrap_or_else(|e| panic!("`{name}`: {e}"))
        .data
}

/// The node named `name`.
pub fn node<'a>(m: &'a ModelProto, name: &str) -> &'a NodeProto {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.name() == name)
        .unwrap_or_else(|| panic!("no node `{name}`"))
}

/// Distance in units in the last place between two finite f32 (0 for +0 / −0).
pub fn ulp(a: f32, b: f32) -> u64 {
    fn key(x: f32) -> i64 {
        let i = x.to_bits() as i32 as i64;
        if i < 0 {
            i64::from(i32::MIN) - i
        } else {
            i
        }
    }
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    (key(a) - key(b)).unsigned_abs()
}

/// Worst ULP distance between two equally long slices.
pub fn max_ulp(a: &[f32], b: &[f32]) -> u64 {
    assert_eq!(a.len(), b.len(), "length");
    a.iter().zip(b).map(|(&x, &y)| ulp(x, y)).max().unwrap_or(0)
}

/// `max |a − b| / max |b|` (0 when both are 0).
pub fn rel_max(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length");
    let num = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0f64, f64::max);
    let den = b.iter().map(|&y| f64::from(y).abs()).fold(0f64, f64::max);
    if num == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Sorted op types of the main graph (a multiset).
pub fn op_multiset(m: &ModelProto) -> Vec<String> {
    let mut v: Vec<String> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect();
    v.sort();
    v
}

/// Writes one line straight to the process's stderr, bypassing libtest's output capture, so
/// summaries show in plain `cargo test` output.
pub fn say(line: &str) {
    use std::io::Write;
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

/// `x[N, 16] → Linear(16, 8) → BN → Relu → Linear(8, 4)`, both `Linear`s as the legacy exporter
/// writes them without constant folding (`Transpose(W) → MatMul`, nodes `fc1`/`fc1_t`,
/// `fc2`/`fc2_t`).
pub fn transposed_linear_bn(seed: u64) -> ModelProto {
    let mut b = onnx_cle::builder::ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("x", "N", &[16]);
    let y = b.matmul_transposed("fc1", &x, 16, 8);
    let y = b.batch_norm("bn1", &y, 8);
    let y = b.relu("r1", &y);
    let y = b.matmul_transposed("fc2", &y, 8, 4);
    b.output(&y);
    b.build()
}

/// A little-endian float32 `.npy` file of `shape`.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// Conv → BatchNormalization → Relu → Conv (opset 13, batch `N`, 3×8×8 inputs), written to
/// `dir/small.onnx`: the CLI tests' model.
pub fn small_model(dir: &std::path::Path) -> PathBuf {
    use onnx_cle::builder::{ConvSpec, ModelBuilder};
    let mut b = ModelBuilder::new(13).seed(5);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("conv_first", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
    let y = b.batch_norm("bn_first", &y, 8);
    let y = b.relu("relu_first", &y);
    let y = b.conv("conv_second", &y, &ConvSpec::new(8, 4, &[1, 1]));
    b.output(&y);
    let path = dir.join("small.onnx");
    std::fs::write(&path, b.build_bytes()).unwrap();
    path
}

/// A JSON file (a report) read and parsed.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("report written")).expect("report JSON")
}
