//! Encodings of a [`QuantPlan`] for tools that quantize an FP32 model themselves: AIMET
//! encodings (QNN converters' `--quantization_overrides`, AIMET's `load_encodings`) and
//! onnxruntime `TensorQuantOverrides` (`quantize_static`'s `extra_options`).
//!
//! Tensor names are the FP32 model's (the deploy model's, whose names are the equalized
//! model's), so the files apply to it unchanged. A Relu/Clip folded into its output's quantizer
//! has only its output listed (the runtime fuses the layer and the activation the same way).
//!
//! AIMET conventions (int8-output.md §4): `offset` is the negated zero point (asymmetric
//! `offset = −zero_point`, so `x ≈ (q + offset)·scale` with `q` unsigned); symmetric grids use
//! `offset = −2^(bw−1)` and `scale = max|x| / (2^(bw−1) − 1)`; a per-channel tensor has one entry
//! per output channel. Version 1.0.0 lists entries with `name, dtype "INT", enc_type
//! PER_TENSOR|PER_CHANNEL, bw, is_sym (bool), scale [..], offset [..]`; version 0.6.1 maps each
//! tensor name to a list of `{bitwidth, dtype "int", is_symmetric "True"|"False", min, max,
//! offset, scale}`. Biases are not listed: QNN derives int32 biases from the input and weight
//! encodings, as the QDQ model does.
//!
//! `TensorQuantOverrides`: `{tensor: [{"quant_type", "scale", "zero_point"}]}` per tensor; a
//! per-channel weight has one dict per output channel, the first with `"axis"`. `quant_type` is
//! the name of an `onnxruntime.quantization.QuantType` member and `scale` a float; onnxruntime
//! wants `QuantType` members and `numpy.float32` arrays, so load the file with the six lines in
//! the README (`QuantType.from_string`, `np.float32`).

use serde_json::{json, Map, Value};

use crate::options::{ActivationType, EncodingsVersion, Granularity};
use crate::quant::plan::QuantPlan;

/// One encoding: `x ≈ (q + offset) · scale`, `q ∈ [0, 2^bw − 1]`.
struct Enc {
    bw: u32,
    symmetric: bool,
    scale: f32,
    offset: i64,
}

impl Enc {
    fn min(&self) -> f64 {
        self.offset as f64 * f64::from(self.scale)
    }

    fn max(&self) -> f64 {
        ((1i64 << self.bw) - 1 + self.offset) as f64 * f64::from(self.scale)
    }

    fn legacy(&self) -> Value {
        json!({
            "bitwidth": self.bw,
            "dtype": "int",
            "is_symmetric": if self.symmetric { "True" } else { "False" },
            "min": self.min(),
            "max": self.max(),
            "offset": self.offset,
            "scale": self.scale,
        })
    }
}

fn activation_bits(ty: ActivationType) -> u32 {
    match ty {
        ActivationType::Uint8 | ActivationType::Int8 => 8,
        ActivationType::Uint16 => 16,
    }
}

/// A tensor's name, its encodings (one per channel when per-channel) and whether per-channel.
type Entry = (String, Vec<Enc>, bool);

/// The entries of every activation, then of every weight.
fn entries(plan: &QuantPlan) -> (Vec<Entry>, Vec<Entry>) {
    let acts = plan
        .activations
        .iter()
        .map(|x| {
            let a = x.grid;
            let bw = activation_bits(a.ty);
            let offset = if a.symmetric {
                -(1i64 << (bw - 1))
            } else {
                -i64::from(x.params.zero_point)
            };
            (
                x.tensor.clone(),
                vec![Enc {
                    bw,
                    symmetric: a.symmetric,
                    scale: x.params.scale,
                    offset,
                }],
                false,
            )
        })
        .collect();
    let wbits = u32::from(plan.target.weights().bits);
    let params = plan
        .weights
        .iter()
        .map(|w| {
            let encs = w
                .scales
                .iter()
                .map(|&scale| Enc {
                    bw: wbits,
                    symmetric: w.low.is_none(),
                    scale,
                    offset: match w.low {
                        Some(_) => -i64::from(w.zero_point()),
                        None => -(1i64 << (wbits - 1)),
                    },
                })
                .collect();
            (w.weight.clone(), encs, w.axis.is_some())
        })
        .collect();
    (acts, params)
}

fn quantizer_args(plan: &QuantPlan) -> Value {
    let a = plan.target.activations();
    let w = plan.target.weights();
    json!({
        "activation_bitwidth": activation_bits(a.ty),
        "dtype": "int",
        "is_symmetric": !w.asymmetric,
        "param_bitwidth": w.bits,
        "per_channel_quantization": w.granularity == Granularity::PerChannel,
        "quant_scheme": "post_training_tf",
    })
}

/// The AIMET encodings of `plan` in `version`.
pub fn aimet(plan: &QuantPlan, version: EncodingsVersion) -> Value {
    let (acts, params) = entries(plan);
    match version {
        EncodingsVersion::V1_0_0 => {
            let v1 = |name: &str, encs: &[Enc], per_channel: bool| {
                json!({
                    "name": name,
                    "dtype": "INT",
                    "enc_type": if per_channel { "PER_CHANNEL" } else { "PER_TENSOR" },
                    "is_sym": encs.first().is_some_and(|e| e.symmetric),
                    "bw": encs.first().map_or(8, |e| e.bw),
                    "scale": encs.iter().map(|e| e.scale).collect::<Vec<_>>(),
                    "offset": encs.iter().map(|e| e.offset).collect::<Vec<_>>(),
                })
            };
            json!({
                "version": "1.0.0",
                "activation_encodings": acts.iter().map(|(n, e, pc)| v1(n, e, *pc)).collect::<Vec<_>>(),
                "param_encodings": params.iter().map(|(n, e, pc)| v1(n, e, *pc)).collect::<Vec<_>>(),
                "excluded_layers": [],
                "quantizer_args": quantizer_args(plan),
            })
        }
        EncodingsVersion::V0_6_1 => {
            let map = |list: Vec<Entry>| {
                list.into_iter()
                    .map(|(n, e, _)| (n, Value::Array(e.iter().map(Enc::legacy).collect())))
                    .collect::<Map<String, Value>>()
            };
            json!({
                "version": "0.6.1",
                "activation_encodings": map(acts),
                "param_encodings": map(params),
                "excluded_layers": [],
                "quantizer_args": quantizer_args(plan),
            })
        }
    }
}

/// onnxruntime `TensorQuantOverrides` of `plan`.
pub fn ort_overrides(plan: &QuantPlan) -> Value {
    let mut out = Map::new();
    for x in &plan.activations {
        let act_type = match x.grid.ty {
            ActivationType::Uint8 => "QUInt8",
            ActivationType::Int8 => "QInt8",
            ActivationType::Uint16 => "QUInt16",
        };
        out.insert(
            x.tensor.clone(),
            json!([{
                "quant_type": act_type,
                "scale": x.params.scale,
                "zero_point": x.params.zero_point,
            }]),
        );
    }
    for w in &plan.weights {
        let list: Vec<Value> = match w.axis {
            None if w.low.is_some() => vec![json!({
                "quant_type": "QUInt8",
                "scale": w.scales[0],
                "zero_point": w.zero_point(),
            })],
            None => vec![json!({"quant_type": "QInt8", "scale": w.scales[0], "zero_point": 0})],
            Some(axis) => w
                .scales
                .iter()
                .enumerate()
                .map(|(k, &s)| {
                    if k == 0 {
                        json!({"quant_type": "QInt8", "axis": axis, "scale": s, "zero_point": 0})
                    } else {
                        json!({"scale": s, "zero_point": 0})
                    }
                })
                .collect(),
        };
        out.insert(w.weight.clone(), Value::Array(list));
    }
    Value::Object(out)
}
