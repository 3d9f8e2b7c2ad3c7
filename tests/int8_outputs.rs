//! The int8 outputs (`quant::plan`, `quant::export::qdq`, `quant::export::encodings`) on the shared fixtures:
//! - the QDQ model, run by tract, computes what onnx-cle's simulation of the plan computes, and
//!   so does the same model with its activation pairs as float ops (`qdq::as_float_ops`);
//! - its int8 weights dequantize to the FP32 model's weights exactly when those are on the
//!   target grid (the deploy model's), and its biases are int32 with `input scale × weight
//!   scale`;
//! - the plan folds Relu into the output quantizer (asymmetric grids only), ties every Relu that
//!   feeds an exact-ReLU6 `Min` to the `Min`'s range, leaves the logits float;
//! - each encodings file validates against its documented format (int8-output.md §4, written
//!   out below as checks: AIMET 1.0.0, AIMET 0.6.1, onnxruntime `TensorQuantOverrides`) and names
//!   only tensors of the FP32 model;
//! - calibration without samples is refused.
//!
//! Skipped, loudly, when `../shared/models` is absent.

mod common;

use std::collections::{HashMap, HashSet};

use onnx_cle::onnx::proto::tensor_proto::DataType;
use onnx_cle::onnx::ModelProto;
use onnx_cle::options::Calibration;
use onnx_cle::options::EncodingsVersion;
use onnx_cle::options::{Target, TargetPreset, WeightType};
use onnx_cle::quant::export::encodings;
use onnx_cle::quant::export::qdq;
use onnx_cle::quant::plan::{QuantPlan, RangeOrigin, Sites};
use onnx_cle::quant::{self, calib};
use onnx_cle::runtime::{self, InputTensor};
use onnx_cle::{ArtifactKind, Control, Options, SampleInputs};
use serde_json::Value;

fn tiny() -> Option<ModelProto> {
    let models = common::shared_models("int8_outputs")?;
    Some(common::load(&models.join("tiny.onnx")))
}

fn random_samples(model: &ModelProto, n: usize, seed: u64) -> Vec<InputTensor> {
    let mut specs = runtime::input_specs(model, n).unwrap();
    runtime::fill_random(&mut specs, seed);
    specs
}

fn equalized(model: &ModelProto) -> ModelProto {
    let opts = Options {
        verify: onnx_cle::VerifyOptions {
            enabled: false,
            ..Default::default()
        },
        ..Options::default()
    };
    onnx_cle::equalize(model.clone(), &opts).unwrap().model
}

fn plan_for(model: &ModelProto, target: Target, samples: &[Vec<InputTensor>]) -> QuantPlan {
    let sites = Sites::find(model, target, false).unwrap();
    let ranges = calib::ranges(
        model,
        &sites.tensors_to_range(),
        samples,
        Calibration::Minmax,
        target.activations(),
        99.999,
    )
    .unwrap();
    sites.finish(&ranges, RangeOrigin::Calibrated, "minmax")
}

fn count(model: &ModelProto, op: &str) -> usize {
    model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type() == op)
        .count()
}

fn raw_i8(t: &onnx_cle::onnx::TensorProto) -> Vec<i8> {
    t.raw_data().iter().map(|&b| b as i8).collect()
}

/// The signed levels of a QDQ weight: raw int8, or raw uint8 minus its zero point.
fn signed_levels(
    levels: &onnx_cle::onnx::TensorProto,
    zero_point: &onnx_cle::onnx::TensorProto,
) -> Vec<i32> {
    if levels.data_type() == DataType::Uint8 as i32 {
        let z = i32::from(zero_point.raw_data().first().copied().unwrap_or(0));
        levels
            .raw_data()
            .iter()
            .map(|&r| i32::from(r) - z)
            .collect()
    } else {
        raw_i8(levels).into_iter().map(i32::from).collect()
    }
}

#[test]
fn the_qdq_model_runs_in_tract_as_the_plan_is_simulated() {
    let Some(model) = tiny() else { return };
    let eq = equalized(&model);
    let samples = runtime::split_batch(&random_samples(&model, 8, 7));
    let reference = quant::reference_outputs(&model, &samples).unwrap();
    let uint8_weights = Target {
        weight_type: Some(WeightType::Uint8),
        ..Target::default()
    };
    for target in [
        Target::default(),
        Target {
            preset: TargetPreset::Trt,
            ..Target::default()
        },
        uint8_weights,
    ] {
        let preset = target.preset;
        let plan = plan_for(&eq, target, &samples);
        if target.weight_type == Some(WeightType::Uint8) {
            // One zero point per weight; every raw level inside 0..=255 by construction, and
            // the grid spans the tensor's range with 255 steps.
            for w in &plan.weights {
                let z = w.zero_point();
                assert!((0..=255).contains(&z), "{}: zero point {z}", w.weight);
                assert_eq!(w.bounds(), (-(z as f32), 255.0 - z as f32));
            }
        }
        let sim = quant::plan_model(&eq, &plan).unwrap();
        let sim_out = quant::first_outputs(&onnx_cle::onnx::encode(&sim), &samples).unwrap();
        let q = qdq::write(&eq, &plan).unwrap();
        let run = quant::first_outputs(&onnx_cle::onnx::encode(&q), &samples).unwrap();
        let (a, _) = quant::score(&reference, &sim_out);
        let (b, _) = quant::score(&reference, &run);
        common::say(&format!(
            "int8_outputs tiny {preset:?}: simulated {a:.2} dB, QDQ model in tract {b:.2} dB"
        ));
        assert!(a.is_finite() && a > 10.0, "{preset:?}: {a}");
        assert!((a - b).abs() < 0.05, "{preset:?}: simulated {a} vs QDQ {b}");
        // The same QDQ model as float ops (what the int8 self-check runs): the simulation's
        // numbers, without tract's integer lowering of the pairs.
        let floated = qdq::as_float_ops(q.clone());
        assert_eq!(count(&floated, "QuantizeLinear"), 0);
        assert_eq!(
            count(&floated, "DequantizeLinear"),
            plan.weights.len() + plan.biases.len()
        );
        let emu = quant::first_outputs(&onnx_cle::onnx::encode(&floated), &samples).unwrap();
        let (c, _) = quant::score(&sim_out, &emu);
        common::say(&format!(
            "int8_outputs tiny {preset:?}: QDQ as float ops against the simulation {c:.1} dB"
        ));
        assert!(c > 80.0, "{preset:?}: float ops vs simulation {c} dB");
        assert_eq!(count(&q, "QuantizeLinear"), plan.activations.len());
        assert_eq!(
            count(&q, "DequantizeLinear"),
            plan.activations.len() + plan.weights.len() + plan.biases.len()
        );
        let meta: HashMap<&str, &str> = q
            .metadata_props
            .iter()
            .map(|e| (e.key(), e.value()))
            .collect();
        assert_eq!(meta[qdq::META_TARGET], target.describe());
        assert_eq!(meta[qdq::META_FORMAT], "qdq");
        // The logits stay float: the graph output is produced by the Gemm itself.
        let g = q.graph.as_ref().unwrap();
        let out = g.output[0].name();
        let producer = g.node.iter().find(|n| n.output.iter().any(|o| o == out));
        assert_eq!(producer.map(|n| n.op_type()), Some("Gemm"));
        // Asymmetric grids fold every Relu/Clip into its output quantizer; symmetric ones keep
        // them (the exact ReLU6 rewrite's first node is a scalar Clip).
        let clamps = |m: &ModelProto| count(m, "Relu") + count(m, "Clip");
        let before = clamps(&eq);
        match preset {
            TargetPreset::Trt => assert_eq!(clamps(&q), before),
            _ => assert_eq!(clamps(&q), before - plan.folded()),
        }
    }
}

#[test]
fn the_plan_ties_relu_outputs_to_the_relu6_min_and_folds_relu() {
    let Some(model) = tiny() else { return };
    let eq = equalized(&model);
    let g = eq.graph.as_ref().unwrap();
    let mins: Vec<_> = g.node.iter().filter(|n| n.op_type() == "Min").collect();
    assert!(!mins.is_empty(), "tiny's ReLU6 become Relu + Min");
    let samples = runtime::split_batch(&random_samples(&model, 4, 3));
    let plan = plan_for(&eq, Target::default(), &samples);
    for m in &mins {
        let relu_out = &m.input[0];
        let a = plan
            .activation(relu_out)
            .expect("the Relu output is quantized");
        assert_eq!(a.origin, RangeOrigin::Tied);
        let min_out = plan.activation(&m.output[0]).expect("the Min output too");
        assert_eq!(
            (a.lo, a.hi),
            (min_out.lo, min_out.hi),
            "tied to the Min's range"
        );
        assert_eq!(a.params, min_out.params);
        assert!(a.folded.is_some(), "uint8: the Relu is folded");
        assert_eq!(a.params.zero_point, 0);
    }
    assert!(plan.left_float.is_empty(), "{:?}", plan.left_float);
    assert!(plan.activation(g.output[0].name()).is_none());
}

#[test]
fn qdq_weights_dequantize_exactly_to_on_grid_fp32_weights() {
    let Some(model) = tiny() else { return };
    let eq = equalized(&model);
    let samples = runtime::split_batch(&random_samples(&model, 4, 5));
    let targets = [
        Target {
            weight_type: Some(WeightType::Int8),
            ..Target::default()
        },
        Target {
            preset: TargetPreset::Trt,
            ..Target::default()
        },
        Target::default(),
    ];
    for target in targets {
        let preset = target.preset;
        let ty = match target.weight_type() {
            WeightType::Int8 => DataType::Int8,
            WeightType::Uint8 => DataType::Uint8,
        };
        // Put the weights on the grid (what the deploy model's rounding writes), then plan again.
        let first = plan_for(&eq, target, &samples);
        let mut on_grid = eq.clone();
        let mut work = onnx_cle::graph::work::Work::new(eq.clone()).unwrap();
        let values: HashMap<String, Vec<f32>> = first
            .weights
            .iter()
            .map(|w| {
                let data = work.read(&w.weight).unwrap().data.clone();
                (w.weight.clone(), w.dequantized(&data))
            })
            .collect();
        for t in on_grid.graph.as_mut().unwrap().initializer.iter_mut() {
            if let Some(v) = values.get(t.name()) {
                let dims = t.dims.iter().map(|&d| d as usize).collect();
                onnx_cle::onnx::tensor::write_f32(
                    t,
                    &onnx_cle::onnx::tensor::F32Tensor {
                        dims,
                        data: v.clone(),
                    },
                );
            }
        }
        let plan = plan_for(&on_grid, target, &samples);
        let q = qdq::write(&on_grid, &plan).unwrap();
        let g = q.graph.as_ref().unwrap();
        let init: HashMap<&str, &onnx_cle::onnx::TensorProto> =
            g.initializer.iter().map(|t| (t.name(), t)).collect();
        for w in &plan.weights {
            let levels = signed_levels(
                init[format!("{}_quantized", w.weight).as_str()],
                init[format!("{}_zero_point", w.weight).as_str()],
            );
            assert_eq!(
                init[format!("{}_quantized", w.weight).as_str()].data_type(),
                ty as i32
            );
            let scales =
                onnx_cle::onnx::tensor::to_f32(init[format!("{}_scale", w.weight).as_str()])
                    .unwrap()
                    .data;
            assert_eq!(scales, w.scales, "{preset:?} {}", w.weight);
            let mut dq: Vec<f32> = levels.iter().map(|&l| l as f32).collect();
            match w.axis {
                None => dq.iter_mut().for_each(|v| *v *= scales[0]),
                Some(_) => w.layout.map_out(&mut dq, |v, o| v * scales[o]),
            }
            let want = &values[&w.weight];
            let exact = dq
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0));
            assert!(exact, "{preset:?} {}: dequantized != on-grid", w.weight);
            assert!(
                ty == DataType::Uint8 || levels.iter().all(|&l| l != -128),
                "levels stay in -127..127"
            );
        }
        for b in &plan.biases {
            let t = init[format!("{}_quantized", b.bias).as_str()];
            assert_eq!(t.data_type(), DataType::Int32 as i32);
            let a = plan.activation(&b.input).unwrap();
            let w = plan.weights.iter().find(|w| w.weight == b.weight).unwrap();
            for (o, s) in b.scales.iter().enumerate() {
                assert_eq!(*s, a.params.scale * w.scale(o));
            }
        }
    }
}

fn is_int(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
}

/// AIMET encodings 1.0.0: `{version, activation_encodings: [enc], param_encodings: [enc],
/// excluded_layers?: [name], quantizer_args?: {}}`, enc = `{name, dtype INT|FLOAT, enc_type
/// PER_TENSOR|PER_CHANNEL|PER_BLOCK|LPBQ, is_sym bool, bw 1..32, scale [>0], offset [int]}`, one
/// scale and offset for PER_TENSOR, equal lengths, symmetric offsets `−2^(bw−1)`.
fn check_aimet_v1(v: &Value) -> Result<usize, String> {
    let o = v.as_object().ok_or("not an object")?;
    for k in o.keys() {
        if ![
            "version",
            "activation_encodings",
            "param_encodings",
            "excluded_layers",
            "quantizer_args",
        ]
        .contains(&k.as_str())
        {
            return Err(format!("unknown key {k}"));
        }
    }
    if o.get("version") != Some(&Value::from("1.0.0")) {
        return Err("version is not 1.0.0".into());
    }
    let mut names = HashSet::new();
    for key in ["activation_encodings", "param_encodings"] {
        for e in o
            .get(key)
            .and_then(Value::as_array)
            .ok_or(format!("{key} not a list"))?
        {
            let e = e.as_object().ok_or("entry not an object")?;
            for k in e.keys() {
                if ![
                    "name",
                    "dtype",
                    "enc_type",
                    "is_sym",
                    "bw",
                    "scale",
                    "offset",
                    "block_size",
                ]
                .contains(&k.as_str())
                {
                    return Err(format!("unknown entry key {k}"));
                }
            }
            let name = e.get("name").and_then(Value::as_str).ok_or("name")?;
            if !names.insert((key, name.to_string())) {
                return Err(format!("{name} listed twice in {key}"));
            }
            if !matches!(
                e.get("dtype").and_then(Value::as_str),
                Some("INT" | "FLOAT")
            ) {
                return Err(format!("{name}: dtype"));
            }
            let enc_type = e
                .get("enc_type")
                .and_then(Value::as_str)
                .ok_or("enc_type")?;
            if !["PER_TENSOR", "PER_CHANNEL", "PER_BLOCK", "LPBQ"].contains(&enc_type) {
                return Err(format!("{name}: enc_type {enc_type}"));
            }
            let sym = e
                .get("is_sym")
                .and_then(Value::as_bool)
                .ok_or("is_sym bool")?;
            let bw = e.get("bw").and_then(Value::as_u64).ok_or("bw")?;
            if !(1..=32).contains(&bw) {
                return Err(format!("{name}: bw {bw}"));
            }
            let scale = e.get("scale").and_then(Value::as_array).ok_or("scale")?;
            let offset = e.get("offset").and_then(Value::as_array).ok_or("offset")?;
            if scale.is_empty() || scale.len() != offset.len() {
                return Err(format!("{name}: scale/offset lengths"));
            }
            if enc_type == "PER_TENSOR" && scale.len() != 1 {
                return Err(format!("{name}: PER_TENSOR with {} scales", scale.len()));
            }
            if !scale
                .iter()
                .all(|s| s.as_f64().is_some_and(|s| s > 0.0 && s.is_finite()))
            {
                return Err(format!("{name}: scale must be > 0"));
            }
            if !offset.iter().all(is_int) {
                return Err(format!("{name}: offsets must be integers"));
            }
            let sym_offset = -(1i64 << (bw - 1)) as f64;
            if sym && !offset.iter().all(|x| x.as_f64() == Some(sym_offset)) {
                return Err(format!("{name}: symmetric offset must be {sym_offset}"));
            }
        }
    }
    Ok(names.len())
}

/// AIMET encodings 0.6.1: `{version, activation_encodings: {name: [enc]}, param_encodings: {name:
/// [enc]}, excluded_layers?, quantizer_args?}`, enc = `{bitwidth, dtype "int"|"float",
/// is_symmetric "True"|"False", min, max, offset (int ≤ 0), scale > 0}` with
/// `min = offset·scale`, `max = (2^bw − 1 + offset)·scale`.
fn check_aimet_v061(v: &Value) -> Result<usize, String> {
    let o = v.as_object().ok_or("not an object")?;
    if o.get("version") != Some(&Value::from("0.6.1")) {
        return Err("version is not 0.6.1".into());
    }
    let mut n = 0;
    for key in ["activation_encodings", "param_encodings"] {
        for (name, list) in o
            .get(key)
            .and_then(Value::as_object)
            .ok_or(format!("{key} not a map"))?
        {
            let list = list.as_array().ok_or("encodings not a list")?;
            if list.is_empty() {
                return Err(format!("{name}: no encoding"));
            }
            for e in list {
                let e = e.as_object().ok_or("entry not an object")?;
                let keys: HashSet<&str> = e.keys().map(String::as_str).collect();
                let want: HashSet<&str> = [
                    "bitwidth",
                    "dtype",
                    "is_symmetric",
                    "min",
                    "max",
                    "offset",
                    "scale",
                ]
                .into_iter()
                .collect();
                if keys != want {
                    return Err(format!("{name}: keys {keys:?}"));
                }
                let bw = e["bitwidth"].as_u64().ok_or("bitwidth")?;
                if !matches!(e["dtype"].as_str(), Some("int" | "float")) {
                    return Err(format!("{name}: dtype"));
                }
                if !matches!(e["is_symmetric"].as_str(), Some("True" | "False")) {
                    return Err(format!(
                        "{name}: is_symmetric must be \"True\" or \"False\""
                    ));
                }
                let offset = e["offset"].as_i64().ok_or("offset int")?;
                let scale = e["scale"].as_f64().ok_or("scale")?;
                if offset > 0 || scale <= 0.0 {
                    return Err(format!("{name}: offset {offset}, scale {scale}"));
                }
                let (min, max) = (
                    e["min"].as_f64().ok_or("min")?,
                    e["max"].as_f64().ok_or("max")?,
                );
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-12);
                if !close(min, offset as f64 * scale)
                    || !close(max, ((1i64 << bw) - 1 + offset) as f64 * scale)
                {
                    return Err(format!("{name}: min/max do not match offset and scale"));
                }
            }
            n += 1;
        }
    }
    Ok(n)
}

/// onnxruntime `TensorQuantOverrides` (quantize.py's documentation): `{tensor: [dict]}`, dict keys
/// among `quant_type, scale, zero_point, axis, symmetric, reduce_range, rmin, rmax`; `scale` and
/// `zero_point` together and not with `symmetric`/`reduce_range`/`rmin`/`rmax`; several dicts only
/// for per-channel, the first with `axis`; `quant_type` a `QuantType` member name, the zero point
/// in its range.
fn check_ort_overrides(v: &Value) -> Result<usize, String> {
    let o = v.as_object().ok_or("not an object")?;
    for (name, list) in o {
        let list = list.as_array().ok_or("not a list")?;
        if list.is_empty() {
            return Err(format!("{name}: empty"));
        }
        if list.len() > 1 && list[0].get("axis").is_none() {
            return Err(format!("{name}: per-channel overrides without an axis"));
        }
        let qt = list[0].get("quant_type").and_then(Value::as_str);
        for d in list {
            let d = d.as_object().ok_or("dict")?;
            for k in d.keys() {
                if ![
                    "quant_type",
                    "scale",
                    "zero_point",
                    "axis",
                    "symmetric",
                    "reduce_range",
                    "rmin",
                    "rmax",
                ]
                .contains(&k.as_str())
                {
                    return Err(format!("{name}: unknown key {k}"));
                }
            }
            let (s, z) = (d.get("scale"), d.get("zero_point"));
            if s.is_some() != z.is_some() {
                return Err(format!("{name}: scale without zero_point"));
            }
            if s.is_some()
                && ["symmetric", "reduce_range", "rmin", "rmax"]
                    .iter()
                    .any(|k| d.contains_key(*k))
            {
                return Err(format!("{name}: scale/zero_point with range options"));
            }
            if let (Some(s), Some(z)) = (s, z) {
                if !s.as_f64().is_some_and(|s| s > 0.0) {
                    return Err(format!("{name}: scale"));
                }
                let z = z.as_i64().ok_or("zero_point int")?;
                let (lo, hi) = match qt {
                    Some("QUInt8") => (0, 255),
                    Some("QInt8") => (-128, 127),
                    Some("QUInt16") => (0, 65535),
                    Some("QInt16") => (-32768, 32767),
                    Some(other) => return Err(format!("{name}: quant_type {other}")),
                    None => (-32768, 65535),
                };
                if !(lo..=hi).contains(&z) {
                    return Err(format!("{name}: zero point {z} out of range"));
                }
            }
        }
    }
    Ok(o.len())
}

fn tensor_names(model: &ModelProto) -> HashSet<String> {
    let g = model.graph.as_ref().unwrap();
    let mut names: HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    names.extend(g.input.iter().map(|v| v.name().to_string()));
    names.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    names
}

#[test]
fn encodings_validate_against_their_documented_formats() {
    let Some(model) = tiny() else { return };
    let eq = equalized(&model);
    let names = tensor_names(&eq);
    let samples = runtime::split_batch(&random_samples(&model, 4, 11));
    let targets = [TargetPreset::Ort, TargetPreset::Qnn, TargetPreset::Trt]
        .map(|preset| Target {
            preset,
            ..Target::default()
        })
        .into_iter()
        .chain([Target {
            weight_type: Some(WeightType::Uint8),
            ..Target::default()
        }]);
    for target in targets {
        let preset = target.preset;
        let plan = plan_for(&eq, target, &samples);
        if target.weight_type == Some(WeightType::Uint8) {
            // Asymmetric weights: QUInt8 overrides and AIMET's `offset = −zero_point`.
            let ort = encodings::ort_overrides(&plan);
            let v1 = encodings::aimet(&plan, EncodingsVersion::V1_0_0);
            for w in &plan.weights {
                assert_eq!(ort[&w.weight][0]["quant_type"], "QUInt8");
                assert_eq!(ort[&w.weight][0]["zero_point"], w.zero_point());
                let e = v1["param_encodings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == w.weight.as_str())
                    .unwrap();
                assert_eq!(e["is_sym"], false);
                assert_eq!(e["offset"][0], -w.zero_point());
            }
        }
        let expected = plan.activations.len() + plan.weights.len();
        let v1 = encodings::aimet(&plan, EncodingsVersion::V1_0_0);
        assert_eq!(check_aimet_v1(&v1), Ok(expected), "{preset:?}");
        let v061 = encodings::aimet(&plan, EncodingsVersion::V0_6_1);
        assert_eq!(check_aimet_v061(&v061), Ok(expected), "{preset:?}");
        let ort = encodings::ort_overrides(&plan);
        assert_eq!(check_ort_overrides(&ort), Ok(expected), "{preset:?}");
        for key in ["activation_encodings", "param_encodings"] {
            for e in v1[key].as_array().unwrap() {
                let n = e["name"].as_str().unwrap();
                assert!(names.contains(n), "{n} is not a tensor of the FP32 model");
            }
        }
        for n in ort.as_object().unwrap().keys() {
            assert!(names.contains(n), "{n} is not a tensor of the FP32 model");
        }
        // Per-channel targets list one encoding per output channel.
        if preset == TargetPreset::Trt {
            let w = &plan.weights[0];
            assert_eq!(
                v061["param_encodings"][&w.weight].as_array().unwrap().len(),
                w.scales.len()
            );
            assert!(w.scales.len() > 1);
        }
    }
    // The checks reject what the formats forbid.
    let mut bad = encodings::aimet(
        &plan_for(&eq, Target::default(), &samples),
        EncodingsVersion::V1_0_0,
    );
    bad["param_encodings"][0]["is_sym"] = Value::from("True");
    assert!(check_aimet_v1(&bad).is_err());
    let mut bad = serde_json::json!({"x": [{"scale": 0.1}]});
    assert!(check_ort_overrides(&bad).is_err());
    bad = serde_json::json!({"x": [{"scale": 0.1, "zero_point": 0}, {"scale": 0.1, "zero_point": 0}]});
    assert!(check_ort_overrides(&bad).is_err());
}

#[test]
fn run_writes_the_requested_int8_outputs_with_their_figures() {
    let Some(model) = tiny() else { return };
    let mut opts = Options::default();
    opts.verify.enabled = false;
    opts.quant.end_to_end = false;
    opts.exports.qdq = true;
    opts.exports.encodings = Some(EncodingsVersion::V0_6_1);
    opts.exports.ort_overrides = true;
    opts.exports.calibration = Calibration::Percentile;
    let samples = SampleInputs {
        tensors: random_samples(&model, 6, 9),
        source: "random".into(),
    };
    let out = onnx_cle::run(
        model.clone(),
        None,
        &opts,
        Some(&samples),
        Control::default(),
    )
    .unwrap();
    let kinds: Vec<ArtifactKind> = out.artifacts.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [
            ArtifactKind::Qdq,
            ArtifactKind::Encodings,
            ArtifactKind::OrtOverrides
        ]
    );
    let ex = out.report.exports.as_ref().unwrap();
    assert_eq!(
        (ex.ranges.as_str(), ex.calibration_samples),
        ("percentile", 6)
    );
    assert_eq!(ex.files.len(), 3);
    let sim = ex
        .figures
        .iter()
        .find(|f| f.output == "qdq.onnx" && f.method == "simulated")
        .unwrap();
    let run = ex
        .figures
        .iter()
        .find(|f| f.output == "qdq.onnx" && f.method == "tract")
        .unwrap();
    assert!(sim.in_sample && (sim.sqnr_db - run.sqnr_db).abs() < 0.05);
    assert!(sim.p10_sqnr_db <= sim.median_sqnr_db);
    let enc: Value = serde_json::from_slice(&out.artifacts[1].data).unwrap();
    assert!(check_aimet_v061(&enc).is_ok());

    // Calibration needs samples; nothing is exported unless asked.
    let no = onnx_cle::run(model.clone(), None, &opts, None, Control::default());
    assert!(matches!(no, Err(onnx_cle::CoreError::InvalidOptions(_))));
    let mut plain = opts.clone();
    plain.exports = Default::default();
    let out = onnx_cle::run(model, None, &plain, Some(&samples), Control::default()).unwrap();
    assert!(out.artifacts.is_empty() && out.report.exports.is_none());
}

#[test]
fn qdq_weights_dequantize_exactly_to_the_deploy_models_weights() {
    let Some(models) = common::shared_models("int8_outputs") else {
        return;
    };
    for (file, preset, weight_type) in [
        ("tiny.onnx", TargetPreset::Ort, Some(WeightType::Int8)),
        ("tiny.onnx", TargetPreset::Trt, None),
        (
            "mobilenet_v2.onnx",
            TargetPreset::Ort,
            Some(WeightType::Int8),
        ),
        ("mobilenet_v2.onnx", TargetPreset::Ort, None),
    ] {
        let model = common::load(&models.join(file));
        let mut opts = Options::default();
        opts.verify.enabled = false;
        opts.target.preset = preset;
        opts.target.weight_type = weight_type;
        opts.deploy.rounding = onnx_cle::options::Rounding::Squant;
        opts.deploy.bias_correction = onnx_cle::options::BiasCorrection::Analytic;
        opts.exports.qdq = true;
        let out = onnx_cle::run(model, None, &opts, None, Control::default()).unwrap();
        let deploy = onnx_cle::onnx::decode(out.deploy.unwrap().into()).unwrap();
        let qdq_bytes = out.artifacts[0].data.clone();
        let q = onnx_cle::onnx::decode(qdq_bytes.into()).unwrap();
        let init = |m: &ModelProto| -> HashMap<String, onnx_cle::onnx::TensorProto> {
            m.graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .map(|t| (t.name().to_string(), t.clone()))
                .collect()
        };
        let (d, qi) = (init(&deploy), init(&q));
        let g = q.graph.as_ref().unwrap();
        let mut checked = 0;
        for n in g.node.iter().filter(|n| n.op_type() == "DequantizeLinear") {
            let Some(levels) = qi.get(&n.input[0]) else {
                continue;
            };
            let unsigned = levels.data_type() == DataType::Uint8 as i32;
            if levels.data_type() != DataType::Int8 as i32 && !unsigned {
                continue;
            }
            let want = onnx_cle::onnx::tensor::to_f32(&d[&n.output[0]]).unwrap();
            let scales = onnx_cle::onnx::tensor::to_f32(&qi[&n.input[1]])
                .unwrap()
                .data;
            let l = signed_levels(levels, &qi[&n.input[2]]);
            assert_eq!(
                unsigned,
                opts.target.weight_type() == WeightType::Uint8,
                "{file} {weight_type:?}: weight type"
            );
            let axis = n
                .attribute
                .iter()
                .find(|a| a.name() == "axis")
                .map(|a| a.i());
            let inner: usize = match axis {
                Some(a) => want.dims[a as usize + 1..].iter().product(),
                None => want.data.len(),
            };
            let per = axis.map_or(1, |a| want.dims[a as usize]);
            for (k, (&level, w)) in l.iter().zip(&want.data).enumerate() {
                let s = scales[(k / inner) % per];
                let dq = level as f32 * s;
                assert!(
                    dq.to_bits() == w.to_bits() || (dq == 0.0 && *w == 0.0),
                    "{file} {preset:?} {weight_type:?} {}[{k}]: {dq} != deploy {w}",
                    n.output[0]
                );
            }
            checked += 1;
        }
        assert!(checked > 0, "{file}: no weight checked");
        common::say(&format!(
            "int8_outputs {file} {preset:?} {weight_type:?}: {checked} QDQ weights dequantize bit for bit to the deploy model's"
        ));
    }
}

#[test]
fn quantized_graph_outputs_keep_their_names() {
    let Some(model) = tiny() else { return };
    let eq = equalized(&model);
    let samples = runtime::split_batch(&random_samples(&model, 4, 13));
    let target = Target::default();
    let sites = Sites::find(&eq, target, true).unwrap();
    let ranges = calib::ranges(
        &eq,
        &sites.tensors_to_range(),
        &samples,
        Calibration::Minmax,
        target.activations(),
        99.999,
    )
    .unwrap();
    let plan = sites.finish(&ranges, RangeOrigin::Calibrated, "minmax");
    let out = eq.graph.as_ref().unwrap().output[0].name().to_string();
    assert!(plan.activation(&out).is_some(), "the logits are quantized");
    let q = qdq::write(&eq, &plan).unwrap();
    let g = q.graph.as_ref().unwrap();
    assert_eq!(g.output[0].name(), out);
    let producer = g.node.iter().find(|n| n.output.contains(&out));
    assert_eq!(producer.map(|n| n.op_type()), Some("DequantizeLinear"));
    let reference = quant::reference_outputs(&model, &samples).unwrap();
    let sim = quant::plan_model(&eq, &plan).unwrap();
    let a = quant::score(
        &reference,
        &quant::first_outputs(&onnx_cle::onnx::encode(&sim), &samples).unwrap(),
    )
    .0;
    let b = quant::score(
        &reference,
        &quant::first_outputs(&onnx_cle::onnx::encode(&q), &samples).unwrap(),
    )
    .0;
    assert!((a - b).abs() < 0.05, "simulated {a} vs QDQ {b}");
}
