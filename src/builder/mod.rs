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

mod spec;
mod zoo;

use std::collections::{HashMap, HashSet};

use spec::scale_out_channels;
pub use spec::*;
pub use zoo::*;

use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{OperatorSetIdProto, StringStringEntryProto};
use crate::onnx::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

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
