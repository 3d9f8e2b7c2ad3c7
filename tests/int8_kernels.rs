//! onnxruntime's int8 kernels on x86-64 without VNNI, held against onnx-cle's model of them
//! (`onnx_cle::quant::kernels`): layers built to overflow the int16 in which those kernels add
//! neighbouring u8×s8 products run in onnxruntime (natively on such a CPU, else under QEMU's
//! emulation of an AVX2 CPU: `scripts/check_kernels.sh`; skipped with a message when neither is
//! possible), and their outputs must be what the model predicts with pair saturation, in the
//! pair order of `WeightLayout::for_each_mlas_pair`:
//! - a `MatMul` (fused to `MatMulIntegerToFloat`: float output `acc·sx·sw`) with `K` odd;
//! - a 3×3 `Conv` over 3 input channels (fused to `QLinearConv`), where MLAS's pairs cross
//!   kernel positions (`k = position·3 + channel`), so the naive pairing of neighbouring input
//!   channels predicts other outputs;
//! - a pointwise `Conv` whose weights onnx-cle wrote for the `ort` target (`int16_pairs`): the
//!   kernels compute exactly the int32 sum, whatever the input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_cle::builder::{ConvSpec, ModelBuilder, SplitMix64};
use onnx_cle::graph::layout::{LayerOp, WeightLayout};
use onnx_cle::onnx::proto::tensor_proto::DataType;
use onnx_cle::onnx::{self, ModelProto, NodeProto, TensorProto};
use onnx_cle::options::{Accumulation, Granularity, Options, Rounding, Target, WeightType};
use onnx_cle::quant::kernels;

const SX: f32 = 1.0 / 16.0;
const SW: f32 = 1.0 / 64.0;

fn scratch(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("int8_kernels_{test}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn scalar(name: &str, ty: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(ty as i32),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

fn int8_tensor(name: &str, dims: &[usize], levels: &[i8]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        ..scalar(
            name,
            DataType::Int8,
            levels.iter().map(|&l| l as u8).collect(),
        )
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// `x → QuantizeLinear(sx, 0) → DequantizeLinear → op(·, DequantizeLinear(W)) [→ Q/DQ(sy, zy)]`.
fn qdq_model(
    input_dims: &[usize],
    op: NodeProto,
    weight: TensorProto,
    output: Option<(f32, u8)>,
) -> ModelProto {
    let mut b = ModelBuilder::new(21);
    let dims: Vec<onnx_cle::builder::Dim> = input_dims.iter().map(|&d| d.into()).collect();
    let x = b.input("x", &dims);
    let g = b.graph_mut();
    g.initializer.extend([
        scalar("sx", DataType::Float, SX.to_le_bytes().to_vec()),
        scalar("zx", DataType::Uint8, vec![0]),
        scalar("sw", DataType::Float, SW.to_le_bytes().to_vec()),
        scalar("zw", DataType::Int8, vec![0]),
        weight,
    ]);
    g.node.extend([
        node("QuantizeLinear", &[&x, "sx", "zx"], "xq"),
        node("DequantizeLinear", &["xq", "sx", "zx"], "xd"),
        node("DequantizeLinear", &["W", "sw", "zw"], "Wd"),
        op,
    ]);
    let y = match output {
        None => "y".to_string(),
        Some((sy, zy)) => {
            g.initializer.extend([
                scalar("sy", DataType::Float, sy.to_le_bytes().to_vec()),
                scalar("zy", DataType::Uint8, vec![zy]),
            ]);
            g.node.extend([
                node("QuantizeLinear", &["y", "sy", "zy"], "yq"),
                node("DequantizeLinear", &["yq", "sy", "zy"], "yd"),
            ]);
            "yd".to_string()
        }
    };
    b.output(&y);
    b.build()
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    std::fs::write(path, common::npy_f32(shape, data)).unwrap();
}

fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let a = onnx_cle::pipeline::npy::parse(&bytes).expect("npy");
    a.data
}

/// Runs every model of `dir` in the kernels of a CPU without VNNI; `false` when skipped.
fn run_kernels(dir: &Path, test: &str) -> bool {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/check_kernels.sh"))
        .arg(dir)
        .output()
        .expect("run scripts/check_kernels.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        common::say(&format!("int8_kernels {test}: {line}"));
    }
    match out.status.code() {
        Some(0) => true,
        Some(3) => {
            common::say(&format!(
                "\n*** SKIPPED: int8_kernels {test}: {stdout} ***\n"
            ));
            false
        }
        _ => panic!(
            "check_kernels.sh failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Raw u8 activation bytes near the top of the range (the products saturate most there).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| 200 + (rng.next_u64() % 56) as u8).collect()
}

#[test]
fn matmul_pairs_saturate_as_predicted() {
    let dir = scratch("matmul");
    let (m, k, n) = (4, 9, 5);
    let mut rng = SplitMix64::new(3);
    // Same-sign neighbours of up to ±127, and a column of opposite signs that never saturates.
    let w: Vec<i8> = (0..k * n)
        .map(|j| {
            let v = 60 + (rng.next_u64() % 68) as i8;
            match j % n {
                0 => v,
                1 => -v,
                2 if (j / n) % 2 == 0 => v,
                2 => -v,
                _ => v / 2,
            }
        })
        .collect();
    let a = bytes(m * k, 5);
    let x: Vec<f32> = a.iter().map(|&q| f32::from(q) * SX).collect();
    let model = qdq_model(
        &[1, m, k],
        node("MatMul", &["xd", "Wd"], "y"),
        int8_tensor("W", &[k, n], &w),
        None,
    );
    std::fs::write(dir.join("mm.onnx"), onnx::encode(&model)).unwrap();
    // One sample of the model's input without its leading axis (`ort_outputs.py` adds it).
    write_npy(&dir.join("mm.npy"), &[1, m, k], &x);
    if !run_kernels(&dir, "matmul") {
        return;
    }
    let got = read_npy(&dir.join("mm.out.npy"));
    let paired = kernels::matmul(&a, &w, (m, k, n), Accumulation::Int16Pairs);
    let exact = kernels::matmul(&a, &w, (m, k, n), Accumulation::Int32);
    assert_ne!(paired, exact, "the layer is built to saturate");
    for (j, (g, p)) in got.iter().zip(&paired).enumerate() {
        let want = *p as f32 * SX * SW;
        assert!(
            (g - want).abs() <= 1e-6 * want.abs().max(1.0),
            "output {j}: onnxruntime {g}, pair-saturating model {want}, int32 {}",
            exact[j] as f32 * SX * SW
        );
    }
}

#[test]
fn conv_pairs_follow_the_mlas_reduction_order() {
    let dir = scratch("conv");
    let (cout, cin) = (6, 3);
    let layout = WeightLayout::new(LayerOp::Conv, &[cout, cin, 3, 3], 1).unwrap();
    let mut rng = SplitMix64::new(11);
    let w: Vec<i8> = (0..cout * cin * 9)
        .map(|_| {
            let v = 70 + (rng.next_u64() % 58) as i8;
            if rng.next_u64().is_multiple_of(4) {
                -v
            } else {
                v
            }
        })
        .collect();
    // One output position: the kernel covers the whole 3×3 input, no padding.
    let a = bytes(cin * 9, 13);
    let x: Vec<f32> = a.iter().map(|&q| f32::from(q) * SX).collect();
    // Output requantization by a power of two: `round(acc / 2^13) + 128`, in range.
    let sy = SX * SW * 8192.0;
    let model = qdq_model(
        &[1, cin, 3, 3],
        node("Conv", &["xd", "Wd"], "y"),
        int8_tensor("W", &[cout, cin, 3, 3], &w),
        Some((sy, 128)),
    );
    std::fs::write(dir.join("conv.onnx"), onnx::encode(&model)).unwrap();
    write_npy(&dir.join("conv.npy"), &[1, cin, 3, 3], &x);
    if !run_kernels(&dir, "conv") {
        return;
    }
    let got = read_npy(&dir.join("conv.out.npy"));
    // The input element of weight element `e = (o·3 + c)·9 + p` is `a[c·9 + p]`.
    let act = |e: usize| a[e % (cin * 9)];
    let requant = |acc: i32| ((acc as f32 / 8192.0).round() + 128.0).clamp(0.0, 255.0);
    let product = |e: usize| i32::from(act(e)) * i32::from(w[e]);
    let mut mlas = vec![0i32; cout];
    let mut paired = vec![false; w.len()];
    layout.for_each_mlas_pair(|o, e1, e2| {
        mlas[o] += (product(e1) + product(e2)).clamp(-32768, 32767);
        paired[e1] = true;
        paired[e2] = true;
    });
    // The odd element out of each row (27 taps) is added alone.
    for (e, _) in paired.iter().enumerate().filter(|(_, p)| !**p) {
        mlas[e / (cin * 9)] += product(e);
    }
    let naive: Vec<i32> = (0..cout)
        .map(|o| {
            let row: Vec<usize> = (0..cin * 9).map(|r| o * cin * 9 + r).collect();
            let e: Vec<u8> = row.iter().map(|&j| act(j)).collect();
            let v: Vec<i8> = row.iter().map(|&j| w[j]).collect();
            kernels::dot(&e, &v, Accumulation::Int16Pairs)
        })
        .collect();
    let mut told_apart = false;
    for o in 0..cout {
        let level = got[o] / sy + 128.0;
        assert!(
            (level - requant(mlas[o])).abs() <= 1.0,
            "channel {o}: onnxruntime level {level}, MLAS-order model {}, stored-order {}",
            requant(mlas[o]),
            requant(naive[o])
        );
        told_apart |= (requant(mlas[o]) - requant(naive[o])).abs() > 1.0;
    }
    assert!(told_apart, "the weights tell the two pair orders apart");
}

#[test]
fn weights_written_for_the_ort_target_never_saturate() {
    let dir = scratch("written");
    // A pointwise conv with large same-sign neighbours, per-channel and per-tensor grids.
    let (cout, cin) = (8, 6);
    let mut b = ModelBuilder::new(13).seed(17);
    let x = b.batched_input("x", "N", &[cin, 4, 4]);
    let y = b.conv("c", &x, &ConvSpec::new(cin, cout, &[1, 1]));
    // BatchNorm statistics give the conv output a data-free range, so it is quantized and
    // onnxruntime fuses the layer into QLinearConv.
    let y = b.batch_norm("bn", &y, cout);
    let y = b.relu("r", &y);
    b.output(&y);
    let mut model = b.build();
    let w = model
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name() == "c.weight")
        .unwrap();
    let mut rng = SplitMix64::new(19);
    let v: Vec<f32> = (0..cout * cin).map(|_| rng.uniform(0.5, 1.0)).collect();
    *w = onnx_cle::builder::tensor_f32("c.weight", &[cout, cin, 1, 1], &v);
    let inputs: Vec<f32> = (0..cin * 16)
        .map(|j| 4.0 * ((j * 37 % 17) as f32 / 16.0))
        .collect();
    // int8 per tensor and per channel (int16 pairs kept unsaturated), and the default per
    // tensor grid: uint8 asymmetric weights, which onnxruntime runs in its u8×u8 kernels.
    let cases = [
        (Granularity::PerTensor, Some(WeightType::Int8)),
        (Granularity::PerChannel, None),
        (Granularity::PerTensor, None),
    ];
    for (k, (granularity, weight_type)) in cases.into_iter().enumerate() {
        let mut opts = Options {
            steps: vec![onnx_cle::Step::BnFold],
            ..Options::default()
        };
        opts.verify.enabled = false;
        opts.quant.layers = false;
        opts.deploy.rounding = Rounding::Squant;
        opts.exports.qdq = true;
        opts.exports.input_range = Some([0.0, 4.0]);
        opts.exports.quantize_outputs = true;
        opts.target = Target {
            weight_granularity: Some(granularity),
            weight_type,
            ..Target::default()
        };
        assert_eq!(opts.target.accumulation(), Accumulation::Int16Pairs);
        let out = onnx_cle::run(model.clone(), None, &opts, None, Default::default()).unwrap();
        let qdq = &out.artifacts[0].data;
        let q = onnx::decode(qdq.clone().into()).unwrap();
        let unsigned = opts.target.weight_type() == WeightType::Uint8;
        let weights_of = |ty: DataType| {
            q.graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .any(|t| t.data_type() == ty as i32 && t.dims.len() == 4)
        };
        if unsigned {
            assert!(weights_of(DataType::Uint8) && !weights_of(DataType::Int8));
            std::fs::write(dir.join(format!("q{k}.onnx")), qdq).unwrap();
            write_npy(&dir.join(format!("q{k}.npy")), &[1, cin, 4, 4], &inputs);
            continue;
        }
        let levels: Vec<f32> = q
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.data_type() == DataType::Int8 as i32 && t.dims.len() == 4)
            .map(|t| t.raw_data().iter().map(|&b| f32::from(b as i8)).collect())
            .unwrap();
        let layout = WeightLayout::new(LayerOp::Conv, &[cout, cin, 1, 1], 1).unwrap();
        assert_eq!(
            kernels::pairs_at_risk(&levels, &layout),
            0,
            "{granularity:?}"
        );
        let d = out.report.deploy.as_ref().unwrap();
        assert!(d.summary.pairs_at_risk > 0, "the plain grid would saturate");
        std::fs::write(dir.join(format!("q{k}.onnx")), qdq).unwrap();
        write_npy(&dir.join(format!("q{k}.npy")), &[1, cin, 4, 4], &inputs);
    }
    if !run_kernels(&dir, "written") {
        return;
    }
    // The same models as float QDQ ops (the exact semantics) on this machine.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var("ONNX_CLE_VENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/onnx-cle-venvs")
        })
        .join("ort/bin/python");
    for k in 0..cases.len() {
        let status = Command::new(&venv)
            .arg(root.join("scripts/ort_outputs.py"))
            .arg(dir.join(format!("q{k}.onnx")))
            .arg(dir.join(format!("q{k}.npy")))
            .arg(dir.join(format!("q{k}.float.npy")))
            .arg("--float-ops")
            .status()
            .unwrap();
        assert!(status.success());
        let kernels_out = read_npy(&dir.join(format!("q{k}.out.npy")));
        let float_ops = read_npy(&dir.join(format!("q{k}.float.npy")));
        let diff = kernels_out
            .iter()
            .zip(&float_ops)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = float_ops.iter().fold(0f32, |m, v| m.max(v.abs()));
        common::say(&format!(
            "int8_kernels written q{k}: max |kernels − float ops| {diff:.3e} (outputs up to {scale:.2})"
        ));
        assert!(diff <= 1e-3 * scale, "q{k}: the kernels saturated ({diff})");
    }
}
