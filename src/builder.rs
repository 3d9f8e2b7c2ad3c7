//! Build ONNX models in Rust (in the spirit of candle-onnx's test helpers).
//!
//! [`ModelBuilder`] assembles a [`ModelProto`] node by node: graph inputs with fixed or symbolic
//! dimensions, f32 initializers (given or drawn from a seeded [`SplitMix64`]), `Constant` nodes,
//! the layers CLE cares about (`Conv`, `ConvTranspose`, `Gemm`, `MatMul`,
//! `BatchNormalization` with realistic statistics), activations (`Relu`, `PRelu`, `LeakyRelu`,
//! `Clip` in every bound encoding), and glue (`Add`, `Pad`, `GlobalAveragePool`, `Flatten`,
//! `Reshape`, `Identity`, `Dropout`…), plus any other node through [`ModelBuilder::node`].
//!
//! Conventions:
//! - every helper returns the name of the tensor it produced, so calls chain naturally;
//! - a node name of `""` leaves the node **unnamed** (the `name` field is absent), which is how
//!   tests exercise nodes that can only be identified by index;
//! - initializers of a named node are called `<node>.weight`, `<node>.bias`, … (like PyTorch's
//!   exporter); those of unnamed nodes get short fresh names (`w`, `b`, `w7`…); tensor
//!   names are always unique, node names are used exactly as given;
//! - everything random comes from one [`SplitMix64`] stream, so the same calls with the same
//!   seed give the same model, byte for byte.
//!
//! ```
//! use onnx_cle::builder::{ConvSpec, ModelBuilder};
//!
//! let mut b = ModelBuilder::new(13).seed(7);
//! let x = b.batched_input("x", "N", &[3, 8, 8]);
//! let y = b.conv("c1", &x, &ConvSpec::new(3, 8, &[3, 3]).same_pads());
//! let y = b.batch_norm("bn1", &y, 8);
//! let y = b.relu("r1", &y);
//! let y = b.conv("c2", &y, &ConvSpec::new(8, 4, &[1, 1]));
//! b.output(&y);
//! let model = b.build();
//! assert_eq!(model.graph.as_ref().unwrap().node.len(), 4);
//! ```

use std::collections::{HashMap, HashSet};

use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::proto::type_proto::{Tensor as TensorTypeProto, Value as TypeValue};
use crate::onnx::proto::{OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto};
use crate::onnx::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

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

/// A FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// An INT attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// An INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A STRING attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec().into()),
        ..Default::default()
    }
}

/// A TENSOR attribute.
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
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

/// Builds a [`ModelProto`] one node at a time. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    model: ModelProto,
    rng: SplitMix64,
    next_id: usize,
    names: HashSet<String>,
    ranks: HashMap<String, usize>,
}

impl ModelBuilder {
    /// An empty model importing the default ONNX domain at `opset` (IR version to match,
    /// producer `onnx-cle-builder`, graph `g`, seed 0).
    pub fn new(opset: i64) -> Self {
        let model = ModelProto {
            ir_version: Some(ir_version_for_opset(opset)),
            producer_name: Some("onnx-cle-builder".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        ModelBuilder {
            model,
            rng: SplitMix64::new(0),
            next_id: 0,
            names: HashSet::new(),
            ranks: HashMap::new(),
        }
    }

    /// Reseeds the random stream.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SplitMix64::new(seed);
        self
    }

    /// The random stream (for custom initializers).
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    /// The default-domain opset.
    pub fn opset(&self) -> i64 {
        crate::onnx::onnx_opset(&self.model).unwrap_or(0)
    }

    /// The model so far, for fields the helpers do not cover (functions, training info…).
    pub fn model_mut(&mut self) -> &mut ModelProto {
        &mut self.model
    }

    /// The graph so far.
    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.model.graph.get_or_insert_with(Default::default)
    }

    /// Adds a `key = value` entry to the model's `metadata_props`.
    pub fn metadata(&mut self, key: &str, value: &str) -> &mut Self {
        self.model.metadata_props.push(StringStringEntryProto {
            key: Some(key.into()),
            value: Some(value.into()),
        });
        self
    }

    /// Imports another operator set domain.
    pub fn import_opset(&mut self, domain: &str, version: i64) -> &mut Self {
        self.model.opset_import.push(OperatorSetIdProto {
            domain: Some(domain.into()),
            version: Some(version),
        });
        self
    }

    /// Finishes the model.
    pub fn build(self) -> ModelProto {
        self.model
    }

    /// Finishes and encodes the model.
    pub fn build_bytes(self) -> Vec<u8> {
        crate::onnx::encode(&self.model)
    }

    /// A tensor name not used yet, derived from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        while name.is_empty() || self.names.contains(&name) {
            self.next_id += 1;
            name = format!("{base}{}", self.next_id);
        }
        self.names.insert(name.clone());
        name
    }

    /// The base name of parameter `what` of `node` (made unique by [`ModelBuilder::init`]).
    fn param_name(&self, node: &str, what: &str) -> String {
        if node.is_empty() {
            what[..1].to_string()
        } else {
            format!("{node}.{what}")
        }
    }

    // ----- inputs, outputs, tensors -------------------------------------------------------

    /// A FLOAT graph input with the given shape; returns its name.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        let name = self.fresh(name);
        self.graph_mut()
            .input
            .push(value_info_f32(&name, Some(dims)));
        self.ranks.insert(name.clone(), dims.len());
        name
    }

    /// A FLOAT input `[batch, rest…]` with a symbolic batch dimension called `batch`.
    pub fn batched_input(&mut self, name: &str, batch: &str, rest: &[usize]) -> String {
        self.input(name, &Dim::batched(batch, rest))
    }

    /// Declares `tensor` a FLOAT graph output. Its rank is known when the builder's helpers made
    /// it (then every dimension is written as unknown, which `onnx.checker` accepts); otherwise
    /// the shape is left out.
    pub fn output(&mut self, tensor: &str) -> &mut Self {
        let dims: Option<Vec<Dim>> = self.rank(tensor).map(|r| vec![Dim::Unknown; r]);
        self.graph_mut()
            .output
            .push(value_info_f32(tensor, dims.as_deref()));
        self
    }

    /// The rank of `tensor`, when the builder knows it.
    pub fn rank(&self, tensor: &str) -> Option<usize> {
        self.ranks.get(tensor).copied()
    }

    /// Records the rank of `tensor` (for outputs of [`ModelBuilder::node`]).
    pub fn set_rank(&mut self, tensor: &str, rank: usize) -> &mut Self {
        self.ranks.insert(tensor.to_string(), rank);
        self
    }

    /// `out` has the rank of `x`; returns `out`.
    fn like(&mut self, out: String, x: &str) -> String {
        if let Some(r) = self.rank(x) {
            self.ranks.insert(out.clone(), r);
        }
        out
    }

    /// Declares `tensor` a FLOAT graph output with a shape.
    pub fn output_shaped(&mut self, tensor: &str, dims: &[Dim]) -> &mut Self {
        self.graph_mut()
            .output
            .push(value_info_f32(tensor, Some(dims)));
        self
    }

    /// Adds a `value_info` entry (a FLOAT intermediate with a known shape).
    pub fn value_info(&mut self, tensor: &str, dims: &[Dim]) -> &mut Self {
        self.graph_mut()
            .value_info
            .push(value_info_f32(tensor, Some(dims)));
        self
    }

    /// An f32 initializer with the given values; returns its (fresh) name.
    pub fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(name);
        let t = tensor_f32(&name, dims, data);
        self.graph_mut().initializer.push(t);
        name
    }

    /// An int64 initializer; returns its (fresh) name.
    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh(name);
        let t = tensor_i64(&name, dims, data);
        self.graph_mut().initializer.push(t);
        name
    }

    /// An f32 initializer uniform in `[lo, hi)`.
    pub fn init_uniform(&mut self, name: &str, dims: &[usize], lo: f32, hi: f32) -> String {
        let n = dims.iter().product();
        let data = self.rng.uniform_vec(n, lo, hi);
        self.init(name, dims, &data)
    }

    /// An f32 initializer drawn from `N(0, std²)`.
    pub fn init_normal(&mut self, name: &str, dims: &[usize], std: f32) -> String {
        let n = dims.iter().product();
        let data = self.rng.normal_vec(n, std);
        self.init(name, dims, &data)
    }

    /// A `Constant` node holding an f32 tensor; returns its output.
    pub fn constant(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let mut t = tensor_f32("", dims, data);
        t.name = None;
        let y = self.node1("Constant", name, &[], vec![attr_tensor("value", t)]);
        self.set_rank(&y, dims.len());
        y
    }

    /// A `Constant` node holding an int64 tensor; returns its output.
    pub fn constant_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let mut t = tensor_i64("", dims, data);
        t.name = None;
        let y = self.node1("Constant", name, &[], vec![attr_tensor("value", t)]);
        self.set_rank(&y, dims.len());
        y
    }

    // ----- generic nodes ------------------------------------------------------------------

    /// Adds any default-domain node with `outputs` fresh output tensors; returns them.
    /// `name == ""` leaves the node unnamed; node names are used as given (duplicates are
    /// allowed, to test them). Empty strings in `inputs` are kept (optional inputs left out).
    pub fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: usize,
        attributes: Vec<AttributeProto>,
    ) -> Vec<String> {
        let base = if name.is_empty() {
            "t".to_string()
        } else {
            format!("{name}_out")
        };
        let outs: Vec<String> = (0..outputs)
            .map(|k| {
                if k == 0 {
                    self.fresh(&base)
                } else {
                    self.fresh(&format!("{base}{k}_"))
                }
            })
            .collect();
        let node = NodeProto {
            name: (!name.is_empty()).then(|| name.to_string()),
            op_type: Some(op_type.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attributes,
            ..Default::default()
        };
        self.graph_mut().node.push(node);
        outs
    }

    /// [`ModelBuilder::node`] with a single output.
    pub fn node1(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.node(op_type, name, inputs, 1, attributes).remove(0)
    }

    /// The most recently added node (to tweak attributes, domain, metadata…).
    pub fn last_node_mut(&mut self) -> &mut NodeProto {
        self.graph_mut()
            .node
            .last_mut()
            .expect("no node has been added yet")
    }

    // ----- layers -------------------------------------------------------------------------

    /// A `Conv` / `ConvTranspose` layer; returns its output.
    pub fn conv(&mut self, name: &str, x: &str, spec: &ConvSpec) -> String {
        let g = spec.group.max(1);
        assert!(
            spec.in_channels.is_multiple_of(g) && spec.out_channels.is_multiple_of(g),
            "channels not divisible by group"
        );
        let dims = spec.weight_dims();
        let weight = match &spec.weight {
            Some(w) => w.clone(),
            None => {
                let fan_in = (spec.in_channels / g) * spec.kernel.iter().product::<usize>();
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                let mut w = self.rng.uniform_vec(dims.iter().product(), -bound, bound);
                let per_out: Vec<f32> = (0..spec.out_channels)
                    .map(|_| 2f32.powf(self.rng.uniform(-spec.spread, spec.spread)))
                    .collect();
                scale_out_channels(spec, &mut w, &per_out);
                w
            }
        };
        let w = self.param_name(name, "weight");
        let w = self.init(&w, &dims, &weight);
        let mut inputs = vec![x.to_string(), w];
        if spec.bias {
            let values = match &spec.bias_values {
                Some(v) => v.clone(),
                None => self.rng.uniform_vec(spec.out_channels, -0.5, 0.5),
            };
            let b = self.param_name(name, "bias");
            inputs.push(self.init(&b, &[spec.out_channels], &values));
        }
        let k = spec.kernel.len();
        let mut attrs = Vec::new();
        if let Some(d) = &spec.dilations {
            attrs.push(attr_ints("dilations", d));
        }
        if spec.group_attr || g != 1 {
            attrs.push(attr_int("group", g as i64));
        }
        attrs.push(attr_ints(
            "kernel_shape",
            &spec.kernel.iter().map(|&v| v as i64).collect::<Vec<_>>(),
        ));
        if let Some(mode) = &spec.auto_pad {
            attrs.push(attr_string("auto_pad", mode));
        } else {
            let pads = spec.pads.clone().unwrap_or_else(|| vec![0; 2 * k]);
            attrs.push(attr_ints("pads", &pads));
        }
        attrs.push(attr_ints(
            "strides",
            spec.strides.as_deref().unwrap_or(&vec![1; k]),
        ));
        let op = if spec.transpose {
            "ConvTranspose"
        } else {
            "Conv"
        };
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.node1(op, name, &refs, attrs);
        self.like(y, x)
    }

    /// A `Gemm` layer; returns its output.
    pub fn gemm(&mut self, name: &str, x: &str, spec: &GemmSpec) -> String {
        let (k, n) = (spec.in_features, spec.out_features);
        let bound = 1.0 / (k.max(1) as f32).sqrt();
        let per_out: Vec<f32> = (0..n)
            .map(|_| 2f32.powf(self.rng.uniform(-spec.spread, spec.spread)))
            .collect();
        let (dims, mut w) = if spec.trans_b {
            (vec![n, k], self.rng.uniform_vec(n * k, -bound, bound))
        } else {
            (vec![k, n], self.rng.uniform_vec(n * k, -bound, bound))
        };
        for (idx, v) in w.iter_mut().enumerate() {
            let o = if spec.trans_b { idx / k } else { idx % n };
            *v *= per_out[o];
        }
        let wn = self.param_name(name, "weight");
        let wn = self.init(&wn, &dims, &w);
        let mut inputs = vec![x.to_string(), wn];
        if spec.bias {
            let values = self.rng.uniform_vec(n, -0.5, 0.5);
            let b = self.param_name(name, "bias");
            inputs.push(self.init(&b, &[n], &values));
        }
        let mut attrs = Vec::new();
        if spec.alpha != 1.0 {
            attrs.push(attr_float("alpha", spec.alpha));
        }
        if spec.beta != 1.0 {
            attrs.push(attr_float("beta", spec.beta));
        }
        if spec.trans_b {
            attrs.push(attr_int("transB", 1));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.node1("Gemm", name, &refs, attrs);
        self.set_rank(&y, 2);
        y
    }

    /// A `MatMul` with a constant `[K, N]` right-hand side (no bias); returns its output.
    pub fn matmul(&mut self, name: &str, x: &str, k: usize, n: usize) -> String {
        let w = self.linear_weight(k, n, |idx| idx % n);
        let wn = self.param_name(name, "weight");
        let wn = self.init(&wn, &[k, n], &w);
        let y = self.node1("MatMul", name, &[x, &wn], vec![]);
        self.like(y, x)
    }

    /// `k·n` weights uniform in `±1/√k`, each output column (`out(index)`) scaled by `2^u`,
    /// `u ∈ U[-1.5, 1.5]`, in the order [`ModelBuilder::matmul`] has always drawn them.
    fn linear_weight(&mut self, k: usize, n: usize, out: impl Fn(usize) -> usize) -> Vec<f32> {
        let bound = 1.0 / (k.max(1) as f32).sqrt();
        let per_out: Vec<f32> = (0..n)
            .map(|_| 2f32.powf(self.rng.uniform(-1.5, 1.5)))
            .collect();
        let mut w = self.rng.uniform_vec(k * n, -bound, bound);
        for (idx, v) in w.iter_mut().enumerate() {
            *v *= per_out[out(idx)];
        }
        w
    }

    /// A `BatchNormalization` with realistic random statistics ([`BnSpec::random`]).
    pub fn batch_norm(&mut self, name: &str, x: &str, channels: usize) -> String {
        let spec = BnSpec::random(&mut self.rng, channels);
        self.batch_norm_with(name, x, &spec)
    }

    /// A `BatchNormalization` with the given parameters.
    pub fn batch_norm_with(&mut self, name: &str, x: &str, spec: &BnSpec) -> String {
        let c = spec.gamma.len();
        let mut inputs = vec![x.to_string()];
        for (what, v) in [
            ("weight", &spec.gamma),
            ("bias", &spec.beta),
            ("running_mean", &spec.mean),
            ("running_var", &spec.var),
        ] {
            assert_eq!(v.len(), c, "BatchNormalization `{name}`: {what} length");
            let n = self.param_name(name, what);
            inputs.push(self.init(&n, &[c], v));
        }
        let attrs = spec
            .epsilon
            .map(|e| vec![attr_float("epsilon", e)])
            .unwrap_or_default();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.node1("BatchNormalization", name, &refs, attrs);
        self.like(y, x)
    }

    // ----- activations --------------------------------------------------------------------

    /// `Relu`.
    pub fn relu(&mut self, name: &str, x: &str) -> String {
        let y = self.node1("Relu", name, &[x], vec![]);
        self.like(y, x)
    }

    /// `PRelu` with a per-channel slope `[C, 1, …]` (rank `rank - 1`) in `U[0.05, 0.3]`.
    pub fn prelu(&mut self, name: &str, x: &str, channels: usize, rank: usize) -> String {
        let mut dims = vec![1usize; rank.saturating_sub(1).max(1)];
        dims[0] = channels;
        let slope = self.rng.uniform_vec(channels, 0.05, 0.3);
        let s = self.param_name(name, "slope");
        let s = self.init(&s, &dims, &slope);
        let y = self.node1("PRelu", name, &[x, &s], vec![]);
        self.like(y, x)
    }

    /// `LeakyRelu` with slope `alpha`.
    pub fn leaky_relu(&mut self, name: &str, x: &str, alpha: f32) -> String {
        let y = self.node1("LeakyRelu", name, &[x], vec![attr_float("alpha", alpha)]);
        self.like(y, x)
    }

    /// `Clip(x, min, max)` with the bounds encoded as `form` says (a `None` bound is left out).
    pub fn clip(
        &mut self,
        name: &str,
        x: &str,
        min: Option<f32>,
        max: Option<f32>,
        form: ClipForm,
    ) -> String {
        let form = match form {
            ClipForm::Auto if self.opset() < 11 => ClipForm::Attributes,
            ClipForm::Auto => ClipForm::ConstantNodes,
            f => f,
        };
        match form {
            ClipForm::Attributes => {
                let mut attrs = Vec::new();
                if let Some(v) = max {
                    attrs.push(attr_float("max", v));
                }
                if let Some(v) = min {
                    attrs.push(attr_float("min", v));
                }
                let y = self.node1("Clip", name, &[x], attrs);
                self.like(y, x)
            }
            ClipForm::Initializers | ClipForm::ConstantNodes | ClipForm::Auto => {
                let bound = |b: &mut Self, v: Option<f32>, what: &str| -> String {
                    match v {
                        None => String::new(),
                        Some(v) if form == ClipForm::Initializers => {
                            let n = b.param_name(name, what);
                            b.init(&n, &[], &[v])
                        }
                        Some(v) => {
                            let n = if name.is_empty() {
                                String::new()
                            } else {
                                format!("{name}_{what}")
                            };
                            b.constant(&n, &[], &[v])
                        }
                    }
                };
                let lo = bound(self, min, "min");
                let hi = bound(self, max, "max");
                let mut inputs = vec![x, lo.as_str(), hi.as_str()];
                while inputs.last().is_some_and(|s| s.is_empty()) && inputs.len() > 1 {
                    inputs.pop();
                }
                let y = self.node1("Clip", name, &inputs, vec![]);
                self.like(y, x)
            }
        }
    }

    /// ReLU6 as PyTorch exports it: `Clip(x, 0, 6)` ([`ClipForm::Auto`]).
    pub fn relu6(&mut self, name: &str, x: &str) -> String {
        self.clip(name, x, Some(0.0), Some(6.0), ClipForm::Auto)
    }

    /// Any single-input, single-output, shape-preserving op without attributes (`Sigmoid`,
    /// `Identity`…).
    pub fn unary(&mut self, op_type: &str, name: &str, x: &str) -> String {
        let y = self.node1(op_type, name, &[x], vec![]);
        self.like(y, x)
    }

    // ----- glue ---------------------------------------------------------------------------

    /// `Add(a, b)`.
    pub fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        let y = self.node1("Add", name, &[a, b], vec![]);
        match (self.rank(a), self.rank(b)) {
            (Some(ra), Some(rb)) => {
                self.set_rank(&y, ra.max(rb));
                y
            }
            _ => y,
        }
    }

    /// Constant-mode `Pad` with value 0 (`pads` as an int64 initializer from opset 11, as an
    /// attribute before).
    pub fn pad(&mut self, name: &str, x: &str, pads: &[i64]) -> String {
        if self.opset() < 11 {
            let y = self.node1("Pad", name, &[x], vec![attr_ints("pads", pads)]);
            self.like(y, x)
        } else {
            let p = self.param_name(name, "pads");
            let p = self.init_i64(&p, &[pads.len()], pads);
            let y = self.node1("Pad", name, &[x, &p], vec![]);
            self.like(y, x)
        }
    }

    /// `GlobalAveragePool`.
    pub fn global_average_pool(&mut self, name: &str, x: &str) -> String {
        let y = self.node1("GlobalAveragePool", name, &[x], vec![]);
        self.like(y, x)
    }

    /// `Flatten` with `axis`.
    pub fn flatten(&mut self, name: &str, x: &str, axis: i64) -> String {
        let y = self.node1("Flatten", name, &[x], vec![attr_int("axis", axis)]);
        self.set_rank(&y, 2);
        y
    }

    /// `Reshape` to a constant shape (an int64 initializer).
    pub fn reshape(&mut self, name: &str, x: &str, shape: &[i64]) -> String {
        let s = self.param_name(name, "shape");
        let s = self.init_i64(&s, &[shape.len()], shape);
        let y = self.node1("Reshape", name, &[x, &s], vec![]);
        self.set_rank(&y, shape.len());
        y
    }

    /// `Transpose` (`perm = None` reverses the axes).
    pub fn transpose(&mut self, name: &str, x: &str, perm: Option<&[i64]>) -> String {
        let attrs = perm.map(|p| vec![attr_ints("perm", p)]).unwrap_or_default();
        let y = self.node1("Transpose", name, &[x], attrs);
        self.like(y, x)
    }

    /// `Unsqueeze`: `axes` as an int64 initializer from opset 13, as an attribute before.
    pub fn unsqueeze(&mut self, name: &str, x: &str, axes: &[i64]) -> String {
        let y = self.axes_node("Unsqueeze", name, x, axes);
        if let Some(r) = self.rank(x) {
            self.set_rank(&y, r + axes.len());
        }
        y
    }

    /// `Squeeze` of the given axes (encoded as for [`ModelBuilder::unsqueeze`]).
    pub fn squeeze(&mut self, name: &str, x: &str, axes: &[i64]) -> String {
        let y = self.axes_node("Squeeze", name, x, axes);
        if let Some(r) = self.rank(x) {
            self.set_rank(&y, r.saturating_sub(axes.len()));
        }
        y
    }

    fn axes_node(&mut self, op: &str, name: &str, x: &str, axes: &[i64]) -> String {
        if self.opset() >= 13 {
            let a = self.param_name(name, "axes");
            let a = self.init_i64(&a, &[axes.len()], axes);
            self.node1(op, name, &[x, &a], vec![])
        } else {
            self.node1(op, name, &[x], vec![attr_ints("axes", axes)])
        }
    }

    /// `Cast` to the element type `to` (a `TensorProto.DataType` code).
    pub fn cast(&mut self, name: &str, x: &str, to: DataType) -> String {
        let y = self.node1("Cast", name, &[x], vec![attr_int("to", to as i64)]);
        self.like(y, x)
    }

    /// A FLOAT16 initializer holding `data` truncated to half precision (toward zero; values
    /// below 2⁻¹⁴ in magnitude become 0, larger than 65504 saturate), stored as `raw_data`.
    pub fn init_f16(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(name);
        let bits: Vec<u8> = data
            .iter()
            .flat_map(|&v| f32_to_f16_trunc(v).to_le_bytes())
            .collect();
        let t = TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float16 as i32),
            raw_data: Some(bits.into()),
            ..Default::default()
        };
        self.graph_mut().initializer.push(t);
        self.set_rank(&name, dims.len());
        name
    }

    /// `nn.Linear(k, n, bias=False)` as the legacy exporter writes it without constant folding:
    /// the `[n, k]` weight `<name>.weight` reaches a `MatMul` through `Transpose` node
    /// `<name>_t`; returns the MatMul's output.
    pub fn matmul_transposed(&mut self, name: &str, x: &str, k: usize, n: usize) -> String {
        let w = self.linear_weight(k, n, |idx| idx / k);
        let wn = self.param_name(name, "weight");
        let wn = self.init(&wn, &[n, k], &w);
        let t = self.transpose(&format!("{name}_t"), &wn, Some(&[1, 0]));
        let y = self.node1("MatMul", name, &[x, &t], vec![]);
        self.like(y, x)
    }

    /// `Identity`.
    pub fn identity(&mut self, name: &str, x: &str) -> String {
        self.unary("Identity", name, x)
    }

    /// Inference `Dropout` (one output, no ratio input).
    pub fn dropout(&mut self, name: &str, x: &str) -> String {
        self.unary("Dropout", name, x)
    }

    /// `MaxPool` with a square `kernel` and stride `stride` (no padding).
    pub fn max_pool(&mut self, name: &str, x: &str, kernel: &[i64], stride: &[i64]) -> String {
        let y = self.node1(
            "MaxPool",
            name,
            &[x],
            vec![
                attr_ints("kernel_shape", kernel),
                attr_ints("strides", stride),
            ],
        );
        self.like(y, x)
    }
}

/// `v` truncated toward zero to IEEE binary16 bits (see [`ModelBuilder::init_f16`]).
fn f32_to_f16_trunc(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let a = v.abs();
    if a.is_nan() {
        return sign | 0x7e00;
    }
    if a < 2f32.powi(-14) {
        return sign;
    }
    if a > 65504.0 {
        return sign | 0x7bff;
    }
    let exp = ((bits >> 23) & 0xff) as u16 + 15 - 127;
    sign | (exp << 10) | ((bits >> 13) & 0x3ff) as u16
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
    let conv_bn = |b: &mut ModelBuilder, name: &str, bn: &str, x: &str, spec: ConvSpec| {
        let c = spec.out_channels;
        let y = b.conv(name, x, &spec.no_bias());
        b.batch_norm(bn, &y, c)
    };
    let x = b.batched_input("input", "N", &[3, 224, 224]);
    let stem = ch(64);
    let spec = ConvSpec::new(3, stem, &[7, 7])
        .pads(&[3, 3, 3, 3])
        .strides(&[2, 2]);
    let y = conv_bn(&mut b, "conv1", "bn1", &x, spec);
    let y = b.relu("relu", &y);
    let mut y = b.max_pool("maxpool", &y, &[3, 3], &[2, 2]);
    b.last_node_mut()
        .attribute
        .push(attr_ints("pads", &[1, 1, 1, 1]));
    let mut in_ch = stem;
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
            let shortcut = if k == 0 {
                let spec = ConvSpec::new(in_ch, out, &[1, 1]).strides(&[stride, stride]);
                let d0 = format!("{p}.downsample.0");
                let d1 = format!("{p}.downsample.1");
                conv_bn(&mut b, &d0, &d1, &y, spec)
            } else {
                y.clone()
            };
            let s = b.add(&format!("{p}.add"), &h, &shortcut);
            y = b.relu(&format!("{p}.relu3"), &s);
            in_ch = out;
        }
    }
    let y = b.global_average_pool("avgpool", &y);
    let y = b.flatten("flatten", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(in_ch, 1000));
    b.output(&y);
    b.build()
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
    let conv_bn = |b: &mut ModelBuilder, name: &str, bn: &str, x: &str, spec: ConvSpec| {
        let c = spec.out_channels;
        let y = b.conv(name, x, &spec.no_bias());
        b.batch_norm(bn, &y, c)
    };
    let x = b.batched_input("input", "N", &[3, size, size]);
    let stem = ch(64);
    let spec = ConvSpec::new(3, stem, &[7, 7])
        .pads(&[3, 3, 3, 3])
        .strides(&[2, 2]);
    let y = conv_bn(&mut b, "conv1", "bn1", &x, spec);
    let y = b.relu("relu", &y);
    let mut y = b.max_pool("maxpool", &y, &[3, 3], &[2, 2]);
    b.last_node_mut()
        .attribute
        .push(attr_ints("pads", &[1, 1, 1, 1]));
    let mut in_ch = stem;
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
            let shortcut = if stride != 1 || in_ch != out {
                let spec = ConvSpec::new(in_ch, out, &[1, 1]).strides(&[stride, stride]);
                let d0 = format!("{p}.downsample.0");
                let d1 = format!("{p}.downsample.1");
                conv_bn(&mut b, &d0, &d1, &y, spec)
            } else {
                y.clone()
            };
            let s = b.add(&format!("{p}.add"), &h, &shortcut);
            y = b.relu(&format!("{p}.relu2"), &s);
            in_ch = out;
        }
    }
    let y = b.global_average_pool("avgpool", &y);
    let y = b.flatten("flatten", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(in_ch, 1000));
    b.output(&y);
    b.build()
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

/// `w[o, …] *= f[o]` in the stored layout of `spec`.
fn scale_out_channels(spec: &ConvSpec, w: &mut [f32], f: &[f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct_names() {
        let make = || {
            let mut b = ModelBuilder::new(13).seed(3);
            let x = b.batched_input("x", "N", &[4, 5, 5]);
            let y = b.conv("", &x, &ConvSpec::new(4, 4, &[3, 3]).same_pads());
            let y = b.conv("", &y, &ConvSpec::depthwise(4, &[3, 3]).same_pads());
            let y = b.relu6("", &y);
            b.output(&y);
            b.build_bytes()
        };
        assert_eq!(make(), make());
        let m = crate::onnx::decode(make().into()).unwrap();
        let g = m.graph.unwrap();
        let mut outs: Vec<&String> = g.node.iter().flat_map(|n| &n.output).collect();
        let n = outs.len();
        outs.sort();
        outs.dedup();
        assert_eq!(outs.len(), n);
        assert!(g.node.iter().all(|n| n.name.is_none()));
        assert_eq!(
            g.node.iter().filter(|n| n.op_type() == "Constant").count(),
            2
        );
    }

    #[test]
    fn conv_transpose_depthwise_weight_shape() {
        let s = ConvSpec::transposed(6, 6, &[3, 3]).group(6);
        assert_eq!(s.weight_dims(), vec![6, 1, 3, 3]);
        let s = ConvSpec::transposed(4, 6, &[2, 2]).group(2);
        assert_eq!(s.weight_dims(), vec![4, 3, 2, 2]);
    }

    #[test]
    fn opset10_clip_uses_attributes() {
        let mut b = ModelBuilder::new(10);
        let x = b.batched_input("x", "N", &[2]);
        let y = b.relu6("r", &x);
        b.output(&y);
        let m = b.build();
        let n = &m.graph.unwrap().node[0];
        assert_eq!(n.input.len(), 1);
        assert_eq!(n.attribute.len(), 2);
        assert_eq!(m.ir_version, Some(5));
    }
}
