//! Near-dead channels (weights almost zero, a bias that is not; or a BatchNorm with `γ ≈ 0`):
//! cross-layer scaling leaves them unscaled and says so, the equalized model keeps its function,
//! and the data-free QDQ model (per tensor and per channel) stays within 2× the relative error of
//! quantizing the BN-folded model without CLS. Before, CLS divided such a channel by `s ≈ 1e-15`:
//! its activation grew by `1e15`, every other channel of the QDQ model quantized to zero.

mod common;

use onnx_cle::builder::{tensor_f32, BnSpec, ConvSpec, ModelBuilder};
use onnx_cle::onnx::{self, ModelProto};
use onnx_cle::options::{Granularity, Options, Target};
use onnx_cle::runtime::{self, InputTensor};
use onnx_cle::{Control, Step};

/// `Conv(3→4, 3×3, pads 1)` whose `dead` channels have weights `1e-30` and large biases →
/// optional BatchNorm (`gamma`) → `Relu` → `Conv(4→4, 1×1)`; input `1×3×8×8`.
fn model(dead: &[usize], gamma: Option<&[f32]>) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(5);
    let x = b.input(
        "x",
        &[1usize.into(), 3usize.into(), 8usize.into(), 8usize.into()],
    );
    let y = b.conv("c1", &x, &ConvSpec::new(3, 4, &[3, 3]).same_pads());
    let y = match gamma {
        Some(g) => {
            let mut rng = onnx_cle::builder::SplitMix64::new(9);
            let mut spec = BnSpec::random(&mut rng, 4);
            spec.gamma = g.to_vec();
            b.batch_norm_with("bn", &y, &spec)
        }
        None => y,
    };
    let y = b.relu("r", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(4, 4, &[1, 1]));
    b.output(&y);
    let mut m = b.build();
    let g = m.graph.as_mut().unwrap();
    let w = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "c1.weight")
        .unwrap();
    let mut data = onnx::tensor::to_f32(w).unwrap().data;
    for &c in dead {
        data[c * 27..(c + 1) * 27]
            .iter_mut()
            .for_each(|v| *v = 1e-30);
    }
    *w = tensor_f32("c1.weight", &[4, 3, 3, 3], &data);
    let bias = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == "c1.bias")
        .unwrap();
    let mut bv = vec![0.1f32, 0.2, 0.3, 0.4];
    for &c in dead {
        bv[c] = 1000.0;
    }
    *bias = tensor_f32("c1.bias", &[4], &bv);
    m
}

fn inputs(n: u64) -> Vec<Vec<InputTensor>> {
    let m = model(&[], None);
    (0..n)
        .map(|k| {
            let mut s = runtime::input_specs(&m, 1).unwrap();
            runtime::fill_random(&mut s, 100 + k);
            s.iter_mut()
                .for_each(|t| t.data.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0)));
            s
        })
        .collect()
}

fn outputs(model: &[u8], samples: &[Vec<InputTensor>]) -> Vec<f32> {
    samples
        .iter()
        .flat_map(|s| runtime::run_model(model, s).unwrap().remove(0).1)
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    onnx_cle::verify::deviation(a, b).1
}

/// The QDQ model's relative L2 error against `original` on `samples`.
fn qdq_error(original: &ModelProto, steps: &[Step], g: Granularity, s: &[Vec<InputTensor>]) -> f64 {
    let mut o = Options {
        steps: steps.to_vec(),
        ..Options::default()
    };
    o.verify.enabled = false;
    o.quant.layers = false;
    o.exports.qdq = true;
    o.exports.input_range = Some([-1.0, 1.0]);
    o.target = Target {
        weight_granularity: Some(g),
        ..Target::default()
    };
    let out = onnx_cle::run(original.clone(), None, &o, None, Control::default()).unwrap();
    // No int32 bias is ever clamped: a saturated level would mean a bias silently changed.
    let q = onnx::decode(out.artifacts[0].data.clone().into()).unwrap();
    for t in &q.graph.as_ref().unwrap().initializer {
        if t.data_type() == onnx::proto::tensor_proto::DataType::Int32 as i32 {
            for c in t.raw_data().chunks_exact(4) {
                let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                assert!(
                    v != i32::MAX && v != i32::MIN,
                    "a clamped int32 bias in `{}`",
                    t.name()
                );
            }
        }
    }
    let reference = outputs(&onnx::encode(original), s);
    rel_l2(&reference, &outputs(&out.artifacts[0].data, s))
}

fn check(case: &str, m: &ModelProto, dead: &[usize]) {
    let (eq, report) = common::run_verified(m, &Options::default());
    let samples = inputs(8);
    let exact = rel_l2(
        &outputs(&onnx::encode(m), &samples),
        &outputs(&onnx::encode(&eq), &samples),
    );
    assert!(exact < 1e-5, "{case}: FP32 function changed ({exact:e})");
    let set = &report.cls_sets[0].pairs[0];
    for &c in dead {
        assert_eq!(set.scale[c], 1.0, "{case}: channel {c} was scaled");
    }
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.reason == "negligible_channel"),
        "{case}: the held channels are reported"
    );
    for g in [Granularity::PerTensor, Granularity::PerChannel] {
        let with_cls = qdq_error(m, &Step::ALL, g, &samples);
        let without = qdq_error(m, &[Step::BnFold], g, &samples);
        common::say(&format!(
            "dead_channels {case} {g:?}: QDQ rel L2 {with_cls:.3e} with CLS, {without:.3e} BN fold only"
        ));
        assert!(
            with_cls <= 2.0 * without.max(1e-4),
            "{case} {g:?}: {with_cls:e} vs {without:e} without CLS"
        );
    }
}

#[test]
fn a_near_dead_channel_is_held_and_quantizes() {
    check("one dead channel", &model(&[0], None), &[0]);
}

#[test]
fn two_near_dead_channels_are_held() {
    check("two dead channels", &model(&[0, 2], None), &[0, 2]);
}

#[test]
fn a_batchnorm_with_zero_gamma_is_held() {
    check(
        "BN gamma 1e-12",
        &model(&[], Some(&[1.0, 1e-12, 0.8, 1.2])),
        &[1],
    );
}
