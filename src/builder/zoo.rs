//! Whole models for tests and benchmarks: torchvision-shaped ResNets, a long `Identity` chain,
//! and BatchNorm statistics calibrated to an input distribution.

use super::{attr_ints, ConvSpec, GemmSpec, ModelBuilder};
use crate::onnx::ModelProto;

/// `Conv` (no bias, as PyTorch exports it) then `BatchNormalization`: the unit of a ResNet.
fn conv_bn(b: &mut ModelBuilder, name: &str, bn: &str, x: &str, spec: ConvSpec) -> String {
    let c = spec.out_channels;
    let y = b.conv(name, x, &spec.no_bias());
    b.batch_norm(bn, &y, c)
}

/// torchvision's ResNet stem on `x`: 7×7/2 `conv1`-`bn1`-`relu` and a 3×3/2 `maxpool`.
fn resnet_stem(b: &mut ModelBuilder, x: &str, channels: usize) -> String {
    let spec = ConvSpec::new(3, channels, &[7, 7])
        .pads(&[3, 3, 3, 3])
        .strides(&[2, 2]);
    let y = conv_bn(b, "conv1", "bn1", x, spec);
    let y = b.relu("relu", &y);
    let y = b.max_pool("maxpool", &y, &[3, 3], &[2, 2]);
    b.last_node_mut()
        .attribute
        .push(attr_ints("pads", &[1, 1, 1, 1]));
    y
}

/// A residual block's shortcut: a 1×1 projection `downsample` when `project`, else `x`.
fn shortcut(b: &mut ModelBuilder, p: &str, x: &str, project: Option<ConvSpec>) -> String {
    match project {
        Some(spec) => {
            let d0 = format!("{p}.downsample.0");
            let d1 = format!("{p}.downsample.1");
            conv_bn(b, &d0, &d1, x, spec)
        }
        None => x.to_string(),
    }
}

/// torchvision's ResNet head: `avgpool`, `flatten`, `fc` to 1000 classes, the graph output.
fn resnet_head(mut b: ModelBuilder, x: &str, channels: usize) -> ModelProto {
    let y = b.global_average_pool("avgpool", x);
    let y = b.flatten("flatten", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(channels, 1000));
    b.output(&y);
    b.build()
}

/// A ResNet-50-shaped model (torchvision's v1.5 layout), for benchmarks: 53 `Conv` (no bias,
/// as PyTorch exports them) each followed by a `BatchNormalization` with realistic statistics,
/// a 7×7/2 stem with a 3×3/2 `MaxPool`, bottleneck stages of [3, 4, 6, 3] blocks (1×1, 3×3
/// with the stride, 1×1, and a projection shortcut on the first block of each stage), residual
/// `Add` + `Relu`, `GlobalAveragePool`, `Flatten` and a `Gemm` to 1000 classes. Input
/// `[N, 3, 224, 224]`.
///
/// `width` scales every channel count (1.0: 25.6 M parameters, ≈ 102 MB of f32; 0.5 ≈ 26 MB;
/// 0.25 ≈ 7 MB). Node names follow torchvision (`layer2.0.conv1`, `layer2.0.downsample.0`…).
/// The same `width` and `seed` give the same model, byte for byte.
pub fn resnet50(width: f32, seed: u64) -> ModelProto {
    let ch = |c: usize| ((c as f32 * width).round() as usize).max(1);
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("input", "N", &[3, 224, 224]);
    let mut in_ch = ch(64);
    let mut y = resnet_stem(&mut b, &x, in_ch);
    for (stage, (&blocks, &planes)) in [3usize, 4, 6, 3]
        .iter()
        .zip(&[64usize, 128, 256, 512])
        .enumerate()
    {
        let (mid, out) = (ch(planes), ch(planes * 4));
        for k in 0..blocks {
            let stride = if k == 0 && stage > 0 { 2 } else { 1 };
            let p = format!("layer{}.{k}", stage + 1);
            let h = conv_bn(
                &mut b,
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                &y,
                ConvSpec::new(in_ch, mid, &[1, 1]),
            );
            let h = b.relu(&format!("{p}.relu1"), &h);
            let spec = ConvSpec::new(mid, mid, &[3, 3])
                .same_pads()
                .strides(&[stride, stride]);
            let h = conv_bn(&mut b, &format!("{p}.conv2"), &format!("{p}.bn2"), &h, spec);
            let h = b.relu(&format!("{p}.relu2"), &h);
            let spec = ConvSpec::new(mid, out, &[1, 1]);
            let h = conv_bn(&mut b, &format!("{p}.conv3"), &format!("{p}.bn3"), &h, spec);
            let project =
                (k == 0).then(|| ConvSpec::new(in_ch, out, &[1, 1]).strides(&[stride, stride]));
            let s = shortcut(&mut b, &p, &y, project);
            let s = b.add(&format!("{p}.add"), &h, &s);
            y = b.relu(&format!("{p}.relu3"), &s);
            in_ch = out;
        }
    }
    resnet_head(b, &y, in_ch)
}

/// One 3×3 Conv (3 → 8 channels, input `N×3×32×32`) followed by a chain of `identities`
/// `Identity` nodes to the graph output: a valid model of `identities + 1` nodes whose size is
/// in its graph, not its weights (the long-graph benchmark of `scripts/bench.sh`).
pub fn identity_chain(identities: usize) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(7);
    let x = b.batched_input("input", "N", &[3, 32, 32]);
    let mut y = b.conv("conv", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
    b.graph_mut().node.reserve(identities);
    for i in 0..identities {
        y = b.node1("Identity", &format!("id{i}"), &[&y], vec![]);
    }
    b.output(&y);
    b.build()
}

/// A ResNet-18-shaped model (torchvision's layout), for the deploy-model evaluation: a 7×7/2
/// stem `Conv`-`BatchNormalization`-`Relu` with a 3×3/2 `MaxPool`, four stages of two basic
/// blocks (3×3 Conv-BN-Relu, 3×3 Conv-BN, a 1×1/2 projection shortcut on the first block of
/// stages 2–4, residual `Add` + `Relu`), `GlobalAveragePool`, `Flatten` and a `Gemm` to 1000
/// classes. Convs have no bias, as PyTorch exports them. Input `[N, 3, size, size]`.
///
/// `width` scales every channel count (1.0: torchvision's 64…512). BN statistics are random
/// ([`BnSpec::random`]); [`calibrate_batch_norms`] makes them match an input distribution.
pub fn resnet18(width: f32, size: usize, seed: u64) -> ModelProto {
    let ch = |c: usize| ((c as f32 * width).round() as usize).max(1);
    let mut b = ModelBuilder::new(13).seed(seed);
    let x = b.batched_input("input", "N", &[3, size, size]);
    let mut in_ch = ch(64);
    let mut y = resnet_stem(&mut b, &x, in_ch);
    for (stage, &planes) in [64usize, 128, 256, 512].iter().enumerate() {
        let out = ch(planes);
        for k in 0..2 {
            let stride = if k == 0 && stage > 0 { 2 } else { 1 };
            let p = format!("layer{}.{k}", stage + 1);
            let spec = ConvSpec::new(in_ch, out, &[3, 3])
                .same_pads()
                .strides(&[stride, stride]);
            let h = conv_bn(&mut b, &format!("{p}.conv1"), &format!("{p}.bn1"), &y, spec);
            let h = b.relu(&format!("{p}.relu1"), &h);
            let spec = ConvSpec::new(out, out, &[3, 3]).same_pads();
            let h = conv_bn(&mut b, &format!("{p}.conv2"), &format!("{p}.bn2"), &h, spec);
            let project = (stride != 1 || in_ch != out)
                .then(|| ConvSpec::new(in_ch, out, &[1, 1]).strides(&[stride, stride]));
            let s = shortcut(&mut b, &p, &y, project);
            let s = b.add(&format!("{p}.add"), &h, &s);
            y = b.relu(&format!("{p}.relu2"), &s);
            in_ch = out;
        }
    }
    resnet_head(b, &y, in_ch)
}

/// `model` with every BatchNormalization's running mean and variance replaced by the measured
/// per-channel moments of its input over `samples` (run by tract, in graph order, so each BN sees
/// the BNs before it already calibrated): what training leaves in a BN for that input
/// distribution, so the data-free statistics derived from BNs hold on such inputs.
pub fn calibrate_batch_norms(
    mut model: ModelProto,
    samples: &[Vec<crate::runtime::InputTensor>],
) -> Result<ModelProto, String> {
    let first = samples.first().ok_or("no samples")?;
    let bns: Vec<(String, String, String)> = model
        .graph
        .as_ref()
        .ok_or("no graph")?
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization" && n.input.len() >= 5)
        .map(|n| (n.input[0].clone(), n.input[3].clone(), n.input[4].clone()))
        .collect();
    for (x, mean, var) in bns {
        let probe = crate::quant::with_extra_outputs(&model, std::slice::from_ref(&x));
        let runner = crate::runtime::Runner::new(&crate::onnx::encode(&probe), first)?;
        let g = model.graph.as_mut().ok_or("no graph")?;
        let c = g
            .initializer
            .iter()
            .find(|t| t.name() == mean)
            .and_then(|t| crate::onnx::tensor::to_f32(t).ok())
            .map(|t| t.data.len())
            .ok_or_else(|| format!("BN mean `{mean}` is not an f32 initializer"))?;
        let (mut s1, mut s2, mut n) = (vec![0f64; c], vec![0f64; c], 0f64);
        for s in samples {
            let out = runner.run(s)?;
            let v = &out
                .iter()
                .find(|o| o.0 == x)
                .ok_or_else(|| format!("`{x}` not computed"))?
                .1;
            if c == 0 || v.len() % c != 0 {
                return Err(format!("`{x}` has {} values for {c} channels", v.len()));
            }
            let inner = v.len() / c;
            for (j, val) in v.iter().enumerate() {
                s1[j / inner] += f64::from(*val);
                s2[j / inner] += f64::from(*val).powi(2);
            }
            n += inner as f64;
        }
        let m: Vec<f32> = s1.iter().map(|s| (s / n) as f32).collect();
        let v: Vec<f32> = s2
            .iter()
            .zip(&s1)
            .map(|(q, s)| ((q / n - (s / n).powi(2)).max(1e-12)) as f32)
            .collect();
        for (name, vals) in [(mean, m), (var, v)] {
            if let Some(t) = g.initializer.iter_mut().find(|t| t.name() == name) {
                crate::onnx::tensor::write_f32(
                    t,
                    &crate::onnx::tensor::F32Tensor {
                        dims: vec![c],
                        data: vals,
                    },
                );
            }
        }
    }
    Ok(model)
}
