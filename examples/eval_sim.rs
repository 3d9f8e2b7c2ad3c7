//! onnx-cle's own int8 simulation ([`onnx_cle::quant::sim`], tract) for the held-out evaluation
//! (`scripts/eval_heldout.sh`): the logits of one model with its weights quantize-dequantized
//! (per-tensor symmetric int8, or per-channel), and with W8A8 (those weights plus per-tensor uint8
//! activations at every activation point, min/max calibrated on separate calibration images).
//!
//! ```sh
//! cargo run --release --example eval_sim -- MODEL.onnx INPUTS.npy CALIB.npy OUT_PREFIX \
//!     [--per-channel] [--no-w8a8]
//! ```
//!
//! Writes `OUT_PREFIX.weights.npy` and (unless `--no-w8a8`) `OUT_PREFIX.w8a8.npy`: float32
//! `[N, K]`, the model's first output per input image, in the order of `INPUTS.npy`.

use std::io::Write;

use onnx_cle::quant::{self, Scheme};
use onnx_cle::runtime::InputTensor;
use onnx_cle::{onnx, SampleInputs};

fn write_npy(path: &str, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let k = rows.first().map_or(0, Vec::len);
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {k}), }}",
        rows.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for r in rows {
        for v in r {
            f.write_all(&v.to_le_bytes())?;
        }
    }
    f.flush()
}

/// Most images per model run: batching amortizes tract's per-run allocations; per-tensor
/// activation ranges (min/max) and every output row are the same as one image at a time.
const BATCH: usize = 10;

/// Equal batches (the model is typed for one batch size): the largest size up to [`BATCH`]
/// that divides `n` (32 calibration images: 4 × 8).
fn batches(t: InputTensor) -> Vec<Vec<InputTensor>> {
    let n = t.shape[0];
    let per = t.data.len() / n.max(1);
    let size = (1..=BATCH.min(n.max(1)))
        .rev()
        .find(|b| n.is_multiple_of(*b))
        .unwrap_or(1);
    (0..n)
        .step_by(size)
        .map(|k| {
            let b = size;
            let mut shape = t.shape.clone();
            shape[0] = b;
            vec![InputTensor {
                data: t.data[k * per..(k + b) * per].to_vec(),
                shape,
                ..t.clone()
            }]
        })
        .collect()
}

/// Batches of one input file, and its image count.
type Loaded = (Vec<Vec<InputTensor>>, usize);

/// One row per image from the per-batch outputs.
fn rows(outs: Vec<Vec<f32>>, n: usize) -> Vec<Vec<f32>> {
    let total: usize = outs.iter().map(Vec::len).sum();
    let k = total / n.max(1);
    outs.concat()
        .chunks(k.max(1))
        .map(<[f32]>::to_vec)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [model, inputs, calib, prefix] = pos.as_slice() else {
        return Err("usage: eval_sim MODEL.onnx INPUTS.npy CALIB.npy OUT_PREFIX [--per-channel] [--no-w8a8]".into());
    };
    let scheme = if flags.contains(&"--per-channel") {
        Scheme::PerChannel
    } else {
        Scheme::PerTensorSymmetric
    };
    let model = onnx::load_file(std::path::Path::new(model.as_str()))?;
    let load = |p: &str| -> Result<Loaded, Box<dyn std::error::Error>> {
        let s = SampleInputs::from_npy(&model, &std::fs::read(p)?, p)?;
        let t = s.tensors.into_iter().next().ok_or("no input")?;
        let n = t.shape[0];
        Ok((batches(t), n))
    };
    let (eval, n) = load(inputs)?;
    let q = quant::quantized_weights(&model, scheme, None);
    let weights = quant::first_outputs(&onnx::encode(&q), &eval)?;
    write_npy(&format!("{prefix}.weights.npy"), &rows(weights, n))?;
    if !flags.contains(&"--no-w8a8") {
        let (calib, _) = load(calib)?;
        let w8a8 = quant::w8a8_calibrated_outputs(&model, scheme, &calib, &eval)?;
        write_npy(&format!("{prefix}.w8a8.npy"), &rows(w8a8, n))?;
    }
    Ok(())
}
