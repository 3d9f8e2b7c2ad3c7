//! The pieces a [`super::ModelBuilder`] is given: the seeded PRNG, dimensions, layer specs
//! (Conv, Gemm, BatchNormalization statistics), the encodings of a Clip's bounds, and
//! free-standing attribute, tensor and value-info constructors.

use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::proto::type_proto::{Tensor as TensorTypeProto, Value as TypeValue};
use crate::onnx::proto::{TensorShapeProto, TypeProto};
use crate::onnx::{AttributeProto, TensorProto, ValueInfoProto};

/// SplitMix64: a tiny, fast, seedable PRNG (Steele et al. 2014), good enough for test weights.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        (lo as f64 + (hi as f64 - lo as f64) * self.next_f64()) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// `n` values from `N(0, std²)`.
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size (`dim_param`), e.g. a dynamic batch `"N"`.
    Symbolic(String),
    /// A dimension of unknown size (neither value nor parameter).
    Unknown,
}

impl Dim {
    /// A symbolic dimension.
    pub fn sym(name: &str) -> Dim {
        Dim::Symbolic(name.to_string())
    }

    /// `[batch, rest…]` with a symbolic leading dimension.
    pub fn batched(batch: &str, rest: &[usize]) -> Vec<Dim> {
        std::iter::once(Dim::sym(batch))
            .chain(rest.iter().map(|&d| Dim::from(d)))
            .collect()
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Fixed(v)
    }
}

impl From<i32> for Dim {
    fn from(v: i32) -> Dim {
        Dim::Fixed(i64::from(v))
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Fixed(v as i64)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Dim {
        Dim::sym(v)
    }
}

/// How a `Clip` node receives its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClipForm {
    /// Attributes before opset 11, `Constant` nodes from opset 11 (what PyTorch exports).
    #[default]
    Auto,
    /// Opset ≥ 11: `min` / `max` inputs are initializers.
    Initializers,
    /// Opset ≥ 11: `min` / `max` inputs are outputs of `Constant` nodes.
    ConstantNodes,
    /// Opset < 11: `min` / `max` float attributes.
    Attributes,
}

/// A `Conv` or `ConvTranspose` layer.
///
/// Weights are drawn uniform in `±1/√fan_in`, then each output channel is multiplied by
/// `2^u`, `u ∈ U[-spread, spread]`, so per-channel ranges differ the way trained weights do and
/// cross-layer scaling has something to equalize. Biases are uniform in `±0.5`.
#[derive(Debug, Clone)]
pub struct ConvSpec {
    /// Input channels `C_in`.
    pub in_channels: usize,
    /// Output channels `C_out`.
    pub out_channels: usize,
    /// Kernel shape (its length is the spatial rank: 1 for Conv1d, 3 for Conv3d).
    pub kernel: Vec<usize>,
    /// Number of groups.
    pub group: usize,
    /// Write the `group` attribute even when it is 1 (PyTorch always does).
    pub group_attr: bool,
    /// `ConvTranspose` instead of `Conv`.
    pub transpose: bool,
    /// Add a bias input.
    pub bias: bool,
    /// `pads` attribute.
    pub pads: Option<Vec<i64>>,
    /// `strides` attribute.
    pub strides: Option<Vec<i64>>,
    /// `dilations` attribute.
    pub dilations: Option<Vec<i64>>,
    /// `auto_pad` attribute (`SAME_UPPER`, `SAME_LOWER`, `VALID`, `NOTSET`).
    pub auto_pad: Option<String>,
    /// Per-output-channel range spread (log2), see the type's doc.
    pub spread: f32,
    /// Explicit weight values (stored layout), instead of random ones.
    pub weight: Option<Vec<f32>>,
    /// Explicit bias values, instead of random ones.
    pub bias_values: Option<Vec<f32>>,
}

impl ConvSpec {
    /// A dense (group 1) `Conv` with a bias, no padding, and an explicit `group` attribute.
    pub fn new(in_channels: usize, out_channels: usize, kernel: &[usize]) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel: kernel.to_vec(),
            group: 1,
            group_attr: true,
            transpose: false,
            bias: true,
            pads: None,
            strides: None,
            dilations: None,
            auto_pad: None,
            spread: 1.5,
            weight: None,
            bias_values: None,
        }
    }

    /// A depthwise `Conv`: `group = C_in = C_out = channels`.
    pub fn depthwise(channels: usize, kernel: &[usize]) -> Self {
        ConvSpec::new(channels, channels, kernel).group(channels)
    }

    /// A `ConvTranspose` (weight stored `[C_in, C_out/g, k…]`).
    pub fn transposed(in_channels: usize, out_channels: usize, kernel: &[usize]) -> Self {
        ConvSpec {
            transpose: true,
            ..ConvSpec::new(in_channels, out_channels, kernel)
        }
    }

    /// Sets the number of groups.
    pub fn group(mut self, group: usize) -> Self {
        self.group = group;
        self
    }

    /// Omits the `group` attribute (ONNX default 1).
    pub fn no_group_attr(mut self) -> Self {
        self.group_attr = false;
        self
    }

    /// No bias input.
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    /// Explicit `pads` (`[begin…, end…]`).
    pub fn pads(mut self, pads: &[i64]) -> Self {
        self.pads = Some(pads.to_vec());
        self
    }

    /// Symmetric `k / 2` padding on every spatial axis ("same" for odd kernels, stride 1).
    pub fn same_pads(mut self) -> Self {
        let half: Vec<i64> = self.kernel.iter().map(|&k| (k / 2) as i64).collect();
        self.pads = Some(half.iter().chain(&half).copied().collect());
        self
    }

    /// `strides` attribute.
    pub fn strides(mut self, strides: &[i64]) -> Self {
        self.strides = Some(strides.to_vec());
        self
    }

    /// `dilations` attribute.
    pub fn dilations(mut self, dilations: &[i64]) -> Self {
        self.dilations = Some(dilations.to_vec());
        self
    }

    /// `auto_pad` attribute.
    pub fn auto_pad(mut self, mode: &str) -> Self {
        self.auto_pad = Some(mode.to_string());
        self
    }

    /// Per-output-channel range spread (log2; 0 gives uniform ranges).
    pub fn spread(mut self, spread: f32) -> Self {
        self.spread = spread;
        self
    }

    /// Explicit weight values in the stored layout.
    pub fn weight(mut self, values: Vec<f32>) -> Self {
        self.weight = Some(values);
        self
    }

    /// Explicit bias values (implies a bias).
    pub fn bias_values(mut self, values: Vec<f32>) -> Self {
        self.bias = true;
        self.bias_values = Some(values);
        self
    }

    /// Stored weight shape: `[O, I/g, k…]` for Conv, `[I, O/g, k…]` for ConvTranspose.
    pub fn weight_dims(&self) -> Vec<usize> {
        let g = self.group.max(1);
        let (a, b) = if self.transpose {
            (self.in_channels, self.out_channels / g)
        } else {
            (self.out_channels, self.in_channels / g)
        };
        [a, b]
            .into_iter()
            .chain(self.kernel.iter().copied())
            .collect()
    }
}

/// A `Gemm` layer computing `alpha · A · op(B) + beta · C`.
#[derive(Debug, Clone)]
pub struct GemmSpec {
    /// Input width `K`.
    pub in_features: usize,
    /// Output width `N`.
    pub out_features: usize,
    /// `transB`: `B` stored `[N, K]` (1) or `[K, N]` (0).
    pub trans_b: bool,
    /// Add a bias `C` of shape `[N]`.
    pub bias: bool,
    /// `alpha` attribute (written only when ≠ 1).
    pub alpha: f32,
    /// `beta` attribute (written only when ≠ 1).
    pub beta: f32,
    /// Per-output-channel range spread (log2).
    pub spread: f32,
}

impl GemmSpec {
    /// `transB = 1` (PyTorch's `Linear`), with a bias, alpha = beta = 1.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        GemmSpec {
            in_features,
            out_features,
            trans_b: true,
            bias: true,
            alpha: 1.0,
            beta: 1.0,
            spread: 1.5,
        }
    }

    /// Sets `transB`.
    pub fn trans_b(mut self, trans_b: bool) -> Self {
        self.trans_b = trans_b;
        self
    }

    /// No bias.
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    /// Sets `alpha` and `beta`.
    pub fn alpha_beta(mut self, alpha: f32, beta: f32) -> Self {
        self.alpha = alpha;
        self.beta = beta;
        self
    }
}

/// BatchNormalization parameters. [`BnSpec::random`] draws realistic inference statistics:
/// `γ ∈ U[0.2, 2]`, `β ∈ U[-1, 1]`, `mean ∈ U[-1, 1]`, `var ∈ U[0.2, 2]`.
#[derive(Debug, Clone)]
pub struct BnSpec {
    /// Scale γ.
    pub gamma: Vec<f32>,
    /// Shift β.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance (> 0).
    pub var: Vec<f32>,
    /// `epsilon` attribute; `None` omits it (ONNX default 1e-5).
    pub epsilon: Option<f32>,
}

impl BnSpec {
    /// Realistic random statistics for `channels` channels, `epsilon = 1e-5` written explicitly.
    pub fn random(rng: &mut SplitMix64, channels: usize) -> Self {
        BnSpec {
            gamma: rng.uniform_vec(channels, 0.2, 2.0),
            beta: rng.uniform_vec(channels, -1.0, 1.0),
            mean: rng.uniform_vec(channels, -1.0, 1.0),
            var: rng.uniform_vec(channels, 0.2, 2.0),
            epsilon: Some(1e-5),
        }
    }

    /// Sets the `epsilon` attribute (`None` omits it).
    pub fn epsilon(mut self, epsilon: Option<f32>) -> Self {
        self.epsilon = epsilon;
        self
    }
}

/// An attribute `name` of type `ty`, its value set by `set`.
fn attr(name: &str, ty: AttributeType, set: impl FnOnce(&mut AttributeProto)) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.into()),
        r#type: Some(ty as i32),
        ..Default::default()
    };
    set(&mut a);
    a
}

/// A FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    attr(name, AttributeType::Float, |a| a.f = Some(v))
}

/// An INT attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    attr(name, AttributeType::Int, |a| a.i = Some(v))
}

/// An INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    attr(name, AttributeType::Ints, |a| a.ints = v.to_vec())
}

/// A STRING attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    attr(name, AttributeType::String, |a| {
        a.s = Some(v.as_bytes().to_vec().into())
    })
}

/// A TENSOR attribute.
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    attr(name, AttributeType::Tensor, |a| a.t = Some(t))
}

/// A FLOAT tensor stored as little-endian `raw_data`.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    assert_eq!(
        dims.iter().product::<usize>(),
        data.len(),
        "tensor `{name}`: shape {dims:?} vs {} values",
        data.len()
    );
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

/// An INT64 tensor stored as little-endian `raw_data`.
pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    assert_eq!(dims.iter().product::<usize>(), data.len());
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

/// A FLOAT tensor `ValueInfoProto`; `None` leaves the shape unknown.
pub fn value_info_f32(name: &str, dims: Option<&[Dim]>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: match d {
                    Dim::Fixed(v) => Some(dimension::Value::DimValue(*v)),
                    Dim::Symbolic(s) => Some(dimension::Value::DimParam(s.clone())),
                    Dim::Unknown => None,
                },
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorTypeProto {
                elem_type: Some(DataType::Float as i32),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The IR version that goes with an opset (onnx's `VERSION_TABLE`, at least 4 so that
/// initializers need not be graph inputs).
pub fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        ..=10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// `w[o, …] *= f[o]` in the stored layout of `spec`.
pub(super) fn scale_out_channels(spec: &ConvSpec, w: &mut [f32], f: &[f32]) {
    let dims = spec.weight_dims();
    let k: usize = spec.kernel.iter().product();
    let (a, b) = (dims[0], dims[1]);
    let g = spec.group.max(1);
    for ia in 0..a {
        for ib in 0..b {
            let o = if spec.transpose {
                (ia / (a / g)) * b + ib
            } else {
                ia
            };
            let s = (ia * b + ib) * k;
            for v in &mut w[s..s + k] {
                *v *= f[o];
            }
        }
    }
}
