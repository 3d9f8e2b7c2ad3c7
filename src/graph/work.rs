//! The model being equalized: the decoded `ModelProto`, its [`GraphIndex`], per-node metadata
//! and a cache of the f32 weights the passes read and write.
//!
//! Invariants:
//! - each weight is decoded at most once, and its f32 buffer becomes the new `raw_data` without
//!   a copy ([`Work::finish`]); untouched initializers keep their original bytes, so the cost is
//!   linear in the model size;
//! - with [`Work::defer_scalings`], a large initializer that passes only scale per channel
//!   ([`Work::scale`]) is never decoded into the cache: its products are recorded
//!   ([`super::deferred`]) and every read computes the value they give, bit for bit the eager
//!   one; a read that caches it ([`Work::read`], [`Work::take`]) ends the deferral, keeping its
//!   products so the value after any prefix of them can still be computed
//!   ([`Work::with_value_after`]);
//! - structural edits (removing or inserting nodes) go through [`Work::apply`], which keeps
//!   `meta` parallel to `graph.node` and rebuilds the index;
//! - initializers that a pass made unused are removed at the end; initializers that were
//!   already unused in the input stay (nothing is dropped that was not meant to change);
//! - a tensor computed from a constant by a weight chain ([`crate::graph::chains`]) reads like a constant
//!   ([`Work::is_const`], [`Work::read`]…); the chain is folded into an initializer only when a
//!   pass wrote its value ([`Work::fold_chains`]), so untouched chains stay byte-identical;
//! - [`Work::own_input`] gives one user of a shared tensor its own copy before a pass rewrites
//!   it; no other user ever sees the rewrite.

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;

use super::chains::{self, Step};
use super::deferred::{self, Deferred, Scaling};
use super::layout::{Side, WeightLayout};
use crate::error::{CoreError, Result};
use crate::graph::GraphIndex;
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::tensor::{self, F32Tensor};
use crate::onnx::{attr, GraphProto, ModelProto, NodeProto};
use crate::report::ConstFold;

/// Per-node facts that travel with the node through edits.
#[derive(Debug, Clone)]
pub struct NodeMeta {
    /// Stable, unique display name: the node name, or `OpType#index` for unnamed nodes,
    /// `name#index` for duplicated names.
    pub label: String,
    /// Inside the start/output bounds.
    pub in_scope: bool,
}

/// Where a constant tensor lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstSource {
    /// `GraphProto.initializer[i]`.
    Initializer(usize),
    /// The `value` attribute of `Constant` node `i`.
    Constant(usize),
}

/// A weight chain: the constant `source` and the nodes computing a tensor from it.
#[derive(Debug, Clone)]
struct Chain {
    source: String,
    /// Node indices, source side first, with what each does.
    nodes: Vec<(usize, Step)>,
}

/// Nodes to remove and to insert, applied at once by [`Work::apply`].
#[derive(Debug, Default)]
pub struct Edits {
    remove: HashSet<usize>,
    insert_after: BTreeMap<usize, Vec<NodeProto>>,
}

impl Edits {
    /// Removes node `i`.
    pub fn remove(&mut self, i: usize) {
        self.remove.insert(i);
    }

    /// Inserts `node` right after node `i` (after earlier insertions at the same place).
    pub fn insert_after(&mut self, i: usize, node: NodeProto) {
        self.insert_after.entry(i).or_default().push(node);
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.insert_after.is_empty()
    }
}

struct Cached {
    tensor: F32Tensor,
    dirty: bool,
}

/// The model under edit.
pub struct Work {
    model: ModelProto,
    index: GraphIndex,
    meta: Vec<NodeMeta>,
    cache: HashMap<String, Cached>,
    names: HashSet<String>,
    initially_used: HashSet<String>,
    /// A node was handed out mutably since the index was built: [`Work::apply`] must rebuild.
    touched: bool,
    /// Uses moved off a tensor by [`Work::own_input`] since the index was built.
    moved: HashMap<String, usize>,
    /// Whether [`Work::scale`] records products on large initializers instead of applying them.
    defer: bool,
    /// The products recorded so far ([`Work::scale`]), by initializer name.
    deferred: Deferred,
    /// The products of deferred weights read since (their value is cached now), by name.
    history: HashMap<String, Vec<Scaling>>,
}

/// Smallest initializer (bytes of `raw_data`) whose products [`Work::scale`] records.
pub const DEFER_MIN: usize = 64 * 1024;

impl Work {
    /// Takes ownership of a decoded model and indexes it.
    pub fn new(model: ModelProto) -> Result<Self> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| CoreError::InvalidModel("the model has no graph".into()))?;
        let index = GraphIndex::build(graph)?;
        let mut name_count: HashMap<&str, usize> = HashMap::new();
        for n in &graph.node {
            *name_count.entry(n.name()).or_default() += 1;
        }
        let meta = graph
            .node
            .iter()
            .enumerate()
            .map(|(i, n)| NodeMeta {
                label: if n.name().is_empty() {
                    format!("{}#{i}", n.op_type())
                } else if name_count[n.name()] > 1 {
                    format!("{}#{i}", n.name())
                } else {
                    n.name().to_string()
                },
                in_scope: true,
            })
            .collect();
        let mut names = HashSet::new();
        for n in &graph.node {
            names.insert(n.name().to_string());
            names.extend(n.output.iter().cloned());
        }
        names.extend(graph.initializer.iter().map(|t| t.name().to_string()));
        names.extend(graph.input.iter().map(|v| v.name().to_string()));
        names.extend(graph.output.iter().map(|v| v.name().to_string()));
        names.extend(graph.value_info.iter().map(|v| v.name().to_string()));
        let initially_used = graph
            .initializer
            .iter()
            .filter(|t| index.use_count(t.name()) > 0)
            .map(|t| t.name().to_string())
            .collect();
        Ok(Work {
            model,
            index,
            meta,
            cache: HashMap::new(),
            names,
            initially_used,
            touched: false,
            moved: HashMap::new(),
            defer: false,
            deferred: Deferred::default(),
            history: HashMap::new(),
        })
    }

    /// From now on, [`Work::scale`] records per-channel products on large FLOAT initializers
    /// instead of applying them ([`super::deferred`]); reading such a weight computes its
    /// value. Only a run whose finished model goes to [`Work::finish_deferred`] asks for this.
    pub fn defer_scalings(&mut self) {
        self.defer = true;
        let largest = self
            .graph()
            .initializer
            .iter()
            .map(|t| t.raw_data().len() / 4)
            .max()
            .unwrap_or(0);
        deferred::reserve(largest);
    }

    /// Whether `name` is a FLOAT initializer of at least [`DEFER_MIN`] bytes of `raw_data`.
    fn deferrable(&self, name: &str) -> bool {
        match self.const_source(name) {
            Some(ConstSource::Initializer(i)) => {
                let t = &self.graph().initializer[i];
                t.data_type() == crate::onnx::proto::tensor_proto::DataType::Float as i32
                    && !tensor::is_external(t)
                    && t.raw_data().len() >= DEFER_MIN
                    && t.raw_data().len().is_multiple_of(4)
            }
            _ => false,
        }
    }

    /// Whether [`Work::scale`] would record a product on `name` rather than apply it.
    pub fn defers(&self, name: &str) -> bool {
        self.defer && !self.cache.contains_key(name) && self.deferrable(name)
    }

    /// `W[o, …] *= f[o]` (`side` Out) or `W[:, i, …] *= f[i]` (`side` In) on the f32 constant
    /// `name`, as `layout` reads it: applied to the cached value, or recorded
    /// ([`Work::defer_scalings`]); the value any later read sees is the same.
    pub fn scale(
        &mut self,
        name: &str,
        layout: &WeightLayout,
        side: Side,
        f: &[f32],
    ) -> std::result::Result<(), String> {
        let scaling = Scaling {
            layout: layout.clone(),
            side,
            factors: f.to_vec(),
        };
        if self.defers(name) {
            let dims = self.f32_dims(name)?;
            if dims.iter().product::<usize>() != layout.len() {
                return Err(format!("`{name}`: shape {dims:?} does not match its layer"));
            }
            self.deferred.push(name, &dims, scaling);
            return Ok(());
        }
        let mut t = self.take(name)?;
        if t.data.len() != layout.len() {
            let dims = t.dims.clone();
            self.put(name, t);
            return Err(format!("`{name}`: shape {dims:?} does not match its layer"));
        }
        scaling.apply(&mut t.data);
        self.put(name, t);
        Ok(())
    }

    /// Ends the deferral of `name` (its value was just computed to be cached), keeping its
    /// products for [`Work::with_value_after`]; whether it was deferred.
    fn undefer(&mut self, name: &str) -> bool {
        match self.deferred.remove(name) {
            Some(ops) => {
                self.history.insert(name.to_string(), ops);
                true
            }
            None => false,
        }
    }

    /// Number of products recorded on `name` so far, when it is deferred ([`Work::scale`]).
    pub fn deferred_ops(&self, name: &str) -> Option<usize> {
        self.deferred.scalings(name).map(<[Scaling]>::len)
    }

    /// `f` on the value `name` had when it had `k` recorded products ([`Work::deferred_ops`]
    /// then): its stored bytes with the first `k` products replayed, whether it is still
    /// deferred or was read since.
    pub fn with_value_after<R>(
        &self,
        name: &str,
        k: usize,
        f: impl FnOnce(&[f32]) -> R,
    ) -> std::result::Result<R, String> {
        let ops = self
            .deferred
            .scalings(name)
            .or_else(|| self.history.get(name).map(Vec::as_slice))
            .filter(|ops| ops.len() >= k)
            .ok_or_else(|| format!("`{name}` has no {k} recorded products"))?;
        let proto = self
            .proto_of(name)
            .ok_or_else(|| format!("`{name}` is gone"))?;
        Ok(deferred::with_scratch(proto.raw_data(), &ops[..k], f))
    }

    /// `f` on every row (of `len` values, [`WeightLayout::row_len`]) of the deferred weight
    /// `name`, in order, each computed into one small buffer; `false` (and nothing called) when
    /// `name` is not deferred or its products do not go by rows of `len`.
    pub fn with_rows(&self, name: &str, len: usize, f: impl FnMut(&[f32])) -> bool {
        match (self.deferred.scalings(name), self.proto_of(name)) {
            (Some(ops), Some(proto)) => deferred::for_each_row(proto.raw_data(), ops, len, f),
            _ => false,
        }
    }

    /// `f` on the value of the f32 constant `name`, without caching it: the cached value, the
    /// stored bytes when aligned, or a value computed into a reused buffer (a deferred weight,
    /// [`Work::scale`], or unaligned stored bytes).
    pub fn with_value<R>(
        &self,
        name: &str,
        f: impl FnOnce(&[f32]) -> R,
    ) -> std::result::Result<R, String> {
        if let Some(c) = self.cache.get(name) {
            return Ok(f(&c.tensor.data));
        }
        if let Some(ops) = self.deferred.scalings(name) {
            let proto = self
                .proto_of(name)
                .ok_or_else(|| format!("`{name}` is gone"))?;
            return Ok(deferred::with_scratch(proto.raw_data(), ops, f));
        }
        if let Some(proto) = self.proto_of(name) {
            tensor::f32_dims(proto).map_err(|e| format!("`{name}`: {e}"))?;
            if let Some(v) = tensor::f32_view(proto) {
                return Ok(f(v));
            }
            if proto.raw_data().len() >= DEFER_MIN {
                return Ok(deferred::with_scratch(proto.raw_data(), &[], f));
            }
        }
        Ok(f(&self.decode_fresh(name)?.data))
    }

    /// The model (with pending weight writes not yet flushed).
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// The main graph.
    pub fn graph(&self) -> &GraphProto {
        self.model
            .graph
            .as_ref()
            .expect("Work always holds a graph")
    }

    fn graph_mut(&mut self) -> &mut GraphProto {
        self.model
            .graph
            .as_mut()
            .expect("Work always holds a graph")
    }

    /// The index of the current graph.
    pub fn index(&self) -> &GraphIndex {
        &self.index
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NodeProto {
        &self.graph().node[i]
    }

    /// Mutable node `i`. Callers that rename tensors must call [`Work::apply`] (even with empty
    /// edits) before using the index again.
    pub fn node_mut(&mut self, i: usize) -> &mut NodeProto {
        self.touched = true;
        &mut self.graph_mut().node[i]
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.graph().node.len()
    }

    /// Display label of node `i`.
    pub fn label(&self, i: usize) -> &str {
        &self.meta[i].label
    }

    /// Whether node `i` is inside the start/output bounds.
    pub fn in_scope(&self, i: usize) -> bool {
        self.meta[i].in_scope
    }

    /// Number of nodes in scope.
    pub fn scope_size(&self) -> usize {
        self.meta.iter().filter(|m| m.in_scope).count()
    }

    /// The single data output of node `i` (its first output).
    pub fn out(&self, i: usize) -> &str {
        self.node(i)
            .output
            .first()
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Data input `k` of node `i`, `""` when absent.
    pub fn input(&self, i: usize, k: usize) -> &str {
        self.node(i).input.get(k).map(String::as_str).unwrap_or("")
    }

    /// The only consumer of node `i`'s outputs, when there is exactly one use in total
    /// (graph outputs count as uses).
    pub fn sole_consumer(&self, i: usize) -> Option<usize> {
        let node = self.node(i);
        let mut uses = 0;
        let mut consumer = None;
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            uses += self.index.use_count(o);
            if let Some(&c) = self.index.consumers(o).first() {
                consumer = Some(c);
            }
        }
        if uses == 1 {
            consumer
        } else {
            None
        }
    }

    /// Where the constant `name` is stored, if it is a constant. An initializer that is also a
    /// graph input (overridable, IR ≥ 4) is not a constant.
    pub fn const_source(&self, name: &str) -> Option<ConstSource> {
        if name.is_empty() {
            return None;
        }
        if let Some(i) = self.index.initializer(name) {
            if self.index.is_graph_input(name) && self.model.ir_version() >= 4 {
                return None;
            }
            return Some(ConstSource::Initializer(i));
        }
        let p = self.index.producer(name)?;
        let node = self.node(p);
        (node.op_type() == "Constant"
            && node.domain().is_empty()
            && attr::get(node, "value").is_some_and(|a| a.t.is_some()))
        .then_some(ConstSource::Constant(p))
    }

    /// Whether `name` is a constant tensor: an initializer, a `Constant` node, or computed from
    /// one by a weight chain ([`crate::graph::chains`]).
    pub fn is_const(&self, name: &str) -> bool {
        self.const_source(name).is_some() || self.chain(name).is_some()
    }

    /// Whether `name` is computed by a weight chain (a constant that is not stored as one).
    pub fn is_chain(&self, name: &str) -> bool {
        self.const_source(name).is_none() && self.chain(name).is_some()
    }

    /// The weight chain computing `name`: its producer and every node up to a stored constant
    /// are [`Step`]s. `None` for stored constants, graph outputs and anything else.
    fn chain(&self, name: &str) -> Option<Chain> {
        if name.is_empty() || self.index.is_graph_output(name) || self.const_source(name).is_some()
        {
            return None;
        }
        let mut nodes = Vec::new();
        let mut cur = name;
        for _ in 0..chains::MAX_DEPTH {
            let p = self.index.producer(cur)?;
            let node = self.node(p);
            let step = Step::of(node, |n| self.const_ints(n))?;
            nodes.push((p, step));
            cur = node.input[0].as_str();
            if self.const_source(cur).is_some() {
                nodes.reverse();
                return Some(Chain {
                    source: cur.to_string(),
                    nodes,
                });
            }
        }
        None
    }

    /// The stored constant a weight chain starts from, and its steps.
    fn chain_of(
        &self,
        name: &str,
    ) -> std::result::Result<(&crate::onnx::TensorProto, Vec<Step>), String> {
        let chain = self
            .chain(name)
            .ok_or_else(|| format!("`{name}` is not a constant"))?;
        let source = self
            .proto_of(&chain.source)
            .ok_or_else(|| format!("`{}` is not a constant", chain.source))?;
        Ok((source, chain.nodes.into_iter().map(|(_, s)| s).collect()))
    }

    /// Decodes the f32 value of the constant `name` (stored or computed by a weight chain).
    fn decode_fresh(&self, name: &str) -> std::result::Result<F32Tensor, String> {
        if let Some(proto) = self.proto_of(name) {
            let mut decoded = tensor::to_f32(proto).map_err(|e| format!("`{name}`: {e}"));
            if let (Ok(t), Some(ops)) = (decoded.as_mut(), self.deferred.scalings(name)) {
                deferred::apply_all(ops, &mut t.data);
            }
            // The copy is the working value from now on: a memory-mapped input's pages under
            // it leave the resident set (they are re-read if the tensor is written unchanged).
            crate::onnx::mapped::release(proto.raw_data());
            return decoded;
        }
        let (source, steps) = self.chain_of(name)?;
        chains::evaluate(source, &steps).map_err(|e| format!("`{name}`: {e}"))
    }

    fn proto_of(&self, name: &str) -> Option<&crate::onnx::TensorProto> {
        match self.const_source(name)? {
            ConstSource::Initializer(i) => Some(&self.graph().initializer[i]),
            ConstSource::Constant(p) => attr::get(self.node(p), "value")?.t.as_ref(),
        }
    }

    /// Whether more than one node (or a graph output) reads the constant `name`.
    pub fn is_shared(&self, name: &str) -> bool {
        let direct = self.uses(name);
        if direct > 1 {
            return true;
        }
        if let Some(ConstSource::Constant(p)) = self.const_source(name) {
            return self.node(p).output.len() > 1;
        }
        false
    }

    /// Uses of `name` (nodes and graph outputs), less those [`Work::own_input`] moved away.
    pub fn uses(&self, name: &str) -> usize {
        self.index
            .use_count(name)
            .saturating_sub(self.moved.get(name).copied().unwrap_or(0))
    }

    /// Gives node `i` its own copy of its input `k` when other nodes or a graph output also
    /// read that tensor ([`Work::is_shared`]), so that rewriting it changes nothing any other
    /// user sees. The copy is a new initializer named after `base` (made unique, so the name is
    /// deterministic); returns that name, or `None` when the input was not shared. Call
    /// [`Work::apply`] before relying on the index again.
    pub fn own_input(
        &mut self,
        i: usize,
        k: usize,
        base: &str,
    ) -> std::result::Result<Option<String>, String> {
        let name = self.input(i, k).to_string();
        if name.is_empty() || !self.is_shared(&name) {
            return Ok(None);
        }
        let t = self.decode(&name)?;
        let copy = self.fresh_name(base);
        self.add_initializer(&copy, t);
        self.node_mut(i).input[k] = copy.clone();
        if !self.node(i).input.contains(&name) {
            *self.moved.entry(name).or_default() += 1;
        }
        Ok(Some(copy))
    }

    /// Decodes (once) and returns the f32 constant `name`, moving it out of the cache; give it
    /// back with [`Work::put`].
    pub fn take(&mut self, name: &str) -> std::result::Result<F32Tensor, String> {
        if let Some(c) = self.cache.remove(name) {
            return Ok(c.tensor);
        }
        let t = self.decode_fresh(name)?;
        self.undefer(name);
        Ok(t)
    }

    /// Reads the f32 constant `name` without marking it modified.
    pub fn read(&mut self, name: &str) -> std::result::Result<&F32Tensor, String> {
        if !self.cache.contains_key(name) {
            let t = self.decode_fresh(name)?;
            let dirty = self.undefer(name);
            self.cache
                .insert(name.to_string(), Cached { tensor: t, dirty });
        }
        Ok(&self.cache[name].tensor)
    }

    /// Decodes the f32 constant `name` without caching it (the cached value when there is one).
    pub fn decode(&self, name: &str) -> std::result::Result<F32Tensor, String> {
        if let Some(c) = self.cache.get(name) {
            return Ok(c.tensor.clone());
        }
        self.decode_fresh(name)
    }

    /// Decodes the constants `names` into the cache in parallel (as [`Work::read`] would one
    /// by one). Unreadable ones are left for [`Work::read`] / [`Work::take`] to report.
    pub fn prefetch(&mut self, names: &[String]) {
        let todo: Vec<&String> = names
            .iter()
            .filter(|n| !self.cache.contains_key(n.as_str()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let decoded: Vec<(String, F32Tensor)> = todo
            .par_iter()
            .filter_map(|n| Some(((*n).clone(), self.decode_fresh(n).ok()?)))
            .collect();
        for (name, tensor) in decoded {
            let dirty = self.undefer(&name);
            self.cache.insert(name, Cached { tensor, dirty });
        }
    }

    /// The cached f32 constant `name`, if [`Work::read`] or [`Work::prefetch`] decoded it.
    pub fn cached(&self, name: &str) -> Option<&F32Tensor> {
        self.cache.get(name).map(|c| &c.tensor)
    }

    /// The shape of the f32 constant `name`, checked as [`Work::read`] checks it but without
    /// decoding its data.
    pub fn f32_dims(&self, name: &str) -> std::result::Result<Vec<usize>, String> {
        if let Some(c) = self.cache.get(name) {
            return Ok(c.tensor.dims.clone());
        }
        if let Some(proto) = self.proto_of(name) {
            return tensor::f32_dims(proto).map_err(|e| format!("`{name}`: {e}"));
        }
        let (source, steps) = self.chain_of(name)?;
        chains::dims_after(source, &steps).map_err(|e| format!("`{name}`: {e}"))
    }

    /// Stores a modified constant (written back by [`Work::finish`]).
    pub fn put(&mut self, name: &str, tensor: F32Tensor) {
        self.cache.insert(
            name.to_string(),
            Cached {
                tensor,
                dirty: true,
            },
        );
    }

    /// An integer constant (INT64 / INT32), e.g. shapes and pads.
    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        match self.const_source(name)? {
            ConstSource::Initializer(i) => tensor::to_i64(&self.graph().initializer[i]),
            ConstSource::Constant(p) => {
                tensor::to_i64(attr::get(self.node(p), "value")?.t.as_ref()?)
            }
        }
    }

    /// A scalar (or one-element) float constant; also reads `Constant(value_float)`.
    pub fn const_scalar(&self, name: &str) -> Option<f32> {
        if let Some(p) = self.index.producer(name) {
            let n = self.node(p);
            if n.op_type() == "Constant" {
                if let Some(a) = attr::get(n, "value_float") {
                    return Some(a.f());
                }
            }
        }
        let proto = self.proto_of(name)?;
        let t = tensor::to_f32(proto).ok()?;
        (t.data.len() == 1).then(|| t.data[0])
    }

    /// A name not used anywhere in the graph, derived from `base`.
    pub fn fresh_name(&mut self, base: &str) -> String {
        super::fresh_name(&mut self.names, base)
    }

    /// Removes the `value_info` entry of a tensor that no longer exists.
    pub fn drop_value_info(&mut self, tensor: &str) {
        self.graph_mut().value_info.retain(|v| v.name() != tensor);
    }

    /// Adds a new f32 initializer (appended, as AIMET does).
    pub fn add_initializer(&mut self, name: &str, t: F32Tensor) {
        let proto = tensor::new_f32(name, &t);
        let g = self.graph_mut();
        g.initializer.push(proto);
        let idx = g.initializer.len() - 1;
        self.index.add_initializer(name, idx);
        self.names.insert(name.to_string());
        self.cache.insert(
            name.to_string(),
            Cached {
                tensor: t,
                dirty: false,
            },
        );
    }

    /// Restricts edits to nodes downstream of `starts` and upstream of `outputs` (node names,
    /// labels or tensor names). An empty list means "no bound on that side".
    pub fn set_scope(&mut self, starts: &[String], outputs: &[String]) -> Result<()> {
        if starts.is_empty() && outputs.is_empty() {
            return Ok(());
        }
        let n = self.node_count();
        let down = self.reach(self.roots(starts, "start", true)?, starts.is_empty(), |i| {
            self.node(i)
                .output
                .iter()
                .flat_map(|o| self.index.consumers(o).iter().copied())
                .collect()
        });
        let up = self.reach(
            self.roots(outputs, "output", false)?,
            outputs.is_empty(),
            |i| {
                self.node(i)
                    .input
                    .iter()
                    .filter_map(|t| self.index.producer(t))
                    .collect()
            },
        );
        debug_assert!(down.len() == n && up.len() == n);
        for (i, m) in self.meta.iter_mut().enumerate() {
            m.in_scope = down[i] && up[i];
        }
        Ok(())
    }

    /// The nodes `names` ([`Work::resolve`] each).
    fn roots(&self, names: &[String], kind: &'static str, downstream: bool) -> Result<Vec<usize>> {
        let mut roots = Vec::new();
        for s in names {
            roots.extend(self.resolve(s, kind, downstream)?);
        }
        Ok(roots)
    }

    /// The nodes reached from `roots` through `next` (all of them when `everything`).
    fn reach(
        &self,
        mut stack: Vec<usize>,
        everything: bool,
        next: impl Fn(usize) -> Vec<usize>,
    ) -> Vec<bool> {
        let mut seen = vec![everything; self.node_count()];
        while let Some(i) = stack.pop() {
            if !seen[i] {
                seen[i] = true;
                stack.extend(next(i));
            }
        }
        seen
    }

    fn resolve(&self, name: &str, kind: &'static str, downstream: bool) -> Result<Vec<usize>> {
        let by_node: Vec<usize> = (0..self.node_count())
            .filter(|&i| self.node(i).name() == name || self.meta[i].label == name)
            .collect();
        if !by_node.is_empty() {
            return Ok(by_node);
        }
        let known_tensor = self.index.producer(name).is_some()
            || !self.index.consumers(name).is_empty()
            || self.index.is_graph_input(name);
        if known_tensor {
            return Ok(if downstream {
                self.index.consumers(name).to_vec()
            } else {
                self.index.producer(name).into_iter().collect()
            });
        }
        let mut candidates: Vec<(usize, &str)> = self
            .meta
            .iter()
            .map(|m| m.label.as_str())
            .chain(
                self.graph()
                    .node
                    .iter()
                    .flat_map(|n| n.output.iter().map(String::as_str)),
            )
            .chain(self.graph().input.iter().map(|v| v.name()))
            .map(|c| (levenshtein(name, c), c))
            .collect();
        candidates.sort();
        candidates.dedup_by(|a, b| a.1 == b.1);
        Err(CoreError::UnknownName {
            kind,
            name: name.to_string(),
            suggestions: candidates
                .into_iter()
                .take(5)
                .map(|(_, c)| c.to_string())
                .collect(),
        })
    }

    /// Applies structural edits and rebuilds the index. Also call it (with empty edits) after
    /// renaming tensors through [`Work::node_mut`]. With no edits and no node handed out by
    /// [`Work::node_mut`] since the last rebuild, the index is current and kept.
    pub fn apply(&mut self, edits: Edits) -> Result<()> {
        if edits.is_empty() && !self.touched {
            return Ok(());
        }
        if !edits.is_empty() {
            let old_nodes = std::mem::take(&mut self.graph_mut().node);
            let old_meta = std::mem::take(&mut self.meta);
            let mut nodes = Vec::with_capacity(old_nodes.len());
            let mut meta = Vec::with_capacity(old_meta.len());
            let mut inserts = edits.insert_after;
            for (i, (node, m)) in old_nodes.into_iter().zip(old_meta).enumerate() {
                let in_scope = m.in_scope;
                if !edits.remove.contains(&i) {
                    nodes.push(node);
                    meta.push(m);
                }
                for new in inserts.remove(&i).unwrap_or_default() {
                    let label = if new.name().is_empty() {
                        format!("{}#new{}", new.op_type(), nodes.len())
                    } else {
                        new.name().to_string()
                    };
                    meta.push(NodeMeta { label, in_scope });
                    nodes.push(new);
                }
            }
            self.graph_mut().node = nodes;
            self.meta = meta;
        }
        self.index = GraphIndex::build(self.graph())?;
        self.touched = false;
        self.moved.clear();
        Ok(())
    }

    /// Folds every weight chain whose value a pass wrote ([`Work::put`]) into an initializer and
    /// removes the nodes that nothing reads any more; returns one record per fold, in node order.
    ///
    /// When the source and every tensor of the chain had no other user, the source takes the
    /// value and keeps its name (consumers are rewired to it; an `Identity`-only chain renames the
    /// source to the chain's output instead, the name the consumers already read). Otherwise the
    /// value becomes a new initializer under the chain's output name and the source stays for its
    /// other users. Chains nobody wrote are left as they are.
    pub fn fold_chains(&mut self) -> Result<Vec<ConstFold>> {
        let written = |w: &Work| -> Vec<(usize, String, Chain)> {
            w.cache
                .iter()
                .filter(|(_, c)| c.dirty)
                .filter_map(|(n, _)| {
                    let chain = w.chain(n)?;
                    Some((chain.nodes.last()?.0, n.clone(), chain))
                })
                .collect()
        };
        // Producers only change through `apply`, so a stale index still finds the chains; the
        // rebuild (for inputs rewired since) is paid only when there is something to fold.
        if written(self).is_empty() {
            return Ok(Vec::new());
        }
        self.apply(Edits::default())?;
        let mut todo = written(self);
        todo.sort_by_key(|(p, _, _)| *p);
        let mut uses: HashMap<String, usize> = HashMap::new();
        let mut removed: HashSet<usize> = HashSet::new();
        let mut stale: HashSet<String> = HashSet::new();
        let mut edits = Edits::default();
        let mut records = Vec::new();
        for (producer, tensor, chain) in todo {
            let count = |uses: &HashMap<String, usize>, w: &Work, t: &str| {
                uses.get(t).copied().unwrap_or_else(|| w.index.use_count(t))
            };
            let source = chain.source.clone();
            let in_place = count(&uses, self, &source) == 1
                && !self.index.is_graph_input(&source)
                && chain.nodes[..chain.nodes.len() - 1]
                    .iter()
                    .all(|&(p, _)| count(&uses, self, self.out(p)) == 1);
            let consumers: Vec<usize> = self.index.consumers(&tensor).to_vec();
            let cached = self.cache.remove(&tensor).map(|c| c.tensor);
            let Some(value) = cached else { continue };
            // An Identity-only chain is an exporter's alias of a deduplicated parameter: its
            // output name is the one the layer knows, so the source is renamed to it.
            let rename = in_place
                && chain.nodes.iter().all(|(_, s)| *s == Step::Identity)
                && self.index.initializer(&source).is_some();
            let initializer = if rename {
                if let Some(i) = self.index.initializer(&source) {
                    self.graph_mut().initializer[i].name = Some(tensor.clone());
                }
                self.cache.remove(&source);
                stale.insert(source.clone());
                self.put(&tensor, value);
                tensor.clone()
            } else if in_place {
                let n = count(&uses, self, &tensor);
                *uses.entry(source.clone()).or_insert(1) += n;
                uses.insert(tensor.clone(), 0);
                for &c in &consumers {
                    for inp in self.node_mut(c).input.iter_mut() {
                        if *inp == tensor {
                            *inp = source.clone();
                        }
                    }
                }
                let same_shape = self
                    .proto_of(&source)
                    .and_then(|t| tensor::f32_dims(t).ok())
                    .is_some_and(|d| d == value.dims);
                if !same_shape {
                    stale.insert(source.clone());
                }
                self.put(&source, value);
                source.clone()
            } else {
                uses.insert(tensor.clone(), count(&uses, self, &tensor));
                let proto = tensor::new_f32(&tensor, &value);
                let g = self.graph_mut();
                g.initializer.push(proto);
                self.names.insert(tensor.clone());
                self.cache.insert(
                    tensor.clone(),
                    Cached {
                        tensor: value,
                        dirty: false,
                    },
                );
                tensor.clone()
            };
            let mut gone = Vec::new();
            let kept = (!in_place || rename).then_some(tensor.as_str());
            self.remove_dead(producer, &mut uses, &mut removed, &mut gone);
            for &r in &gone {
                let node = self.node(r);
                stale.extend(
                    node.output
                        .iter()
                        .filter(|o| !o.is_empty() && Some(o.as_str()) != kept)
                        .cloned(),
                );
            }
            for &r in &gone {
                edits.remove(r);
            }
            records.push(ConstFold {
                tensor: tensor.clone(),
                initializer,
                source,
                ops: chain
                    .nodes
                    .iter()
                    .map(|(_, s)| s.op_type().to_string())
                    .collect(),
                removed: gone.iter().map(|&r| self.label(r).to_string()).collect(),
                consumers: consumers
                    .iter()
                    .map(|&c| self.label(c).to_string())
                    .collect(),
                copied: !in_place,
            });
        }
        if !stale.is_empty() {
            self.graph_mut()
                .value_info
                .retain(|v| !stale.contains(v.name()));
        }
        self.apply(edits)?;
        Ok(records)
    }

    /// Marks node `p` removed and then every node upstream whose outputs nothing reads any more
    /// (`uses` counts what is left), appending them to `gone`.
    fn remove_dead(
        &self,
        p: usize,
        uses: &mut HashMap<String, usize>,
        removed: &mut HashSet<usize>,
        gone: &mut Vec<usize>,
    ) {
        let mut stack = vec![p];
        while let Some(q) = stack.pop() {
            if !removed.insert(q) {
                continue;
            }
            gone.push(q);
            let node = self.node(q);
            let mut seen = HashSet::new();
            for inp in node.input.iter().filter(|i| !i.is_empty()) {
                if !seen.insert(inp.as_str()) {
                    continue;
                }
                let left = {
                    let e = uses
                        .entry(inp.clone())
                        .or_insert_with(|| self.index.use_count(inp));
                    *e = e.saturating_sub(1);
                    *e
                };
                if left > 0 {
                    continue;
                }
                let Some(r) = self.index.producer(inp) else {
                    continue;
                };
                let dead = self
                    .node(r)
                    .output
                    .iter()
                    .filter(|o| !o.is_empty())
                    .all(|o| {
                        uses.get(o)
                            .copied()
                            .unwrap_or_else(|| self.index.use_count(o))
                            == 0
                    });
                if dead && !removed.contains(&r) {
                    stack.push(r);
                }
            }
        }
    }

    /// Writes every modified weight back and drops initializers the passes made unused.
    pub fn finish(mut self) -> ModelProto {
        let names: Vec<String> = self.deferred_names();
        self.prefetch(&names);
        self.finish_deferred().0
    }

    fn deferred_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .graph()
            .initializer
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| self.deferred.contains(n))
            .collect();
        names.sort();
        names
    }

    /// [`Work::finish`], with the deferred weights ([`Work::scale`]) left as their stored
    /// bytes in the model and their products returned: the model's values of those weights are
    /// the input's, and only [`Deferred`]'s readers ([`crate::onnx::write::stream_computed`],
    /// [`Deferred::with_tensor`]) give their finished values.
    pub fn finish_deferred(mut self) -> (ModelProto, Deferred) {
        // Normally done (and reported) by the pipeline already; a written chain must never be
        // dropped silently.
        let _ = self.fold_chains();
        let dirty: Vec<(String, F32Tensor)> = self
            .cache
            .drain()
            .filter(|(_, c)| c.dirty)
            .map(|(n, c)| (n, c.tensor))
            .collect();
        for (name, mut t) in dirty {
            // The f32 buffer itself becomes `raw_data` (no copy on little-endian targets).
            let raw = tensor::f32_into_bytes(std::mem::take(&mut t.data));
            match self.const_source(&name) {
                Some(ConstSource::Initializer(i)) => {
                    tensor::set_raw_f32(&mut self.graph_mut().initializer[i], &t.dims, raw)
                }
                Some(ConstSource::Constant(p)) => {
                    if let Some(a) = self.graph_mut().node[p]
                        .attribute
                        .iter_mut()
                        .find(|a| a.name() == "value")
                    {
                        if let Some(tp) = a.t.as_mut() {
                            tensor::set_raw_f32(tp, &t.dims, raw);
                            a.r#type = Some(AttributeType::Tensor as i32);
                        }
                    }
                }
                None => {}
            }
        }
        let index = &self.index;
        let used = &self.initially_used;
        let graph = self.model.graph.as_mut().expect("graph");
        graph
            .initializer
            .retain(|t| !used.contains(t.name()) || index.use_count(t.name()) > 0);
        (self.model, self.deferred)
    }
}

/// Edit distance, for "did you mean" suggestions.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ModelBuilder;

    /// A deferred weight ([`Work::defer_scalings`]) reads, writes and finishes as the eagerly
    /// scaled one, bit for bit, whether it stays deferred to the end or is read on the way.
    #[test]
    fn deferred_products_read_and_finish_as_eager_ones() {
        use crate::graph::layout::{test_values, LayerOp};
        let dims = [64usize, 32, 3, 3];
        let n: usize = dims.iter().product();
        assert!(n * 4 >= DEFER_MIN);
        let build = || {
            let mut b = ModelBuilder::new(13).seed(3);
            let x = b.batched_input("x", "N", &[32, 5, 5]);
            let w = b.init("w", &dims, &test_values(n));
            let y = b.node1("Conv", "c", &[&x, &w], vec![]);
            b.output(&y);
            b.build()
        };
        let layout = WeightLayout::new(LayerOp::Conv, &dims, 1).unwrap();
        let fo: Vec<f32> = (0..64).map(|o| 0.2 + o as f32 * 0.31).collect();
        let fi: Vec<f32> = (0..32).map(|i| 1.7 - i as f32 * 0.05).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut eager = Work::new(build()).unwrap();
        eager.scale("w", &layout, Side::Out, &fo).unwrap();
        let after_one = eager.decode("w").unwrap().data;
        eager.scale("w", &layout, Side::In, &fi).unwrap();
        let want = crate::onnx::encode(&eager.finish());

        let mut lazy = Work::new(build()).unwrap();
        lazy.defer_scalings();
        lazy.scale("w", &layout, Side::Out, &fo).unwrap();
        lazy.scale("w", &layout, Side::In, &fi).unwrap();
        assert_eq!(lazy.deferred_ops("w"), Some(2));
        assert!(lazy.cached("w").is_none());
        let one = lazy.with_value_after("w", 1, bits).unwrap();
        assert_eq!(one, bits(&after_one));
        let (model, deferred) = lazy.finish_deferred();
        assert_eq!(deferred.len(), 1);
        assert!(crate::onnx::write::stream_computed(&model, &deferred).to_vec() == want);
        let mut applied = model.clone();
        deferred.apply_to(&mut applied);
        assert!(crate::onnx::encode(&applied) == want);

        let mut read = Work::new(build()).unwrap();
        read.defer_scalings();
        read.scale("w", &layout, Side::Out, &fo).unwrap();
        assert_eq!(bits(&read.read("w").unwrap().data), bits(&after_one));
        assert_eq!(read.deferred_ops("w"), None);
        read.scale("w", &layout, Side::In, &fi).unwrap();
        assert_eq!(
            read.with_value_after("w", 1, bits).unwrap(),
            bits(&after_one)
        );
        assert!(crate::onnx::encode(&read.finish()) == want);
    }

    /// `W → Transpose → {Reshape → conv a, Unsqueeze → conv b}`, both weights written: the
    /// first fold (in node order) must copy, since the Transpose output still feeds the other
    /// chain; the second then owns the whole chain and folds into `W` in place.
    #[test]
    fn chains_sharing_a_prefix_fold_once_each() {
        let mut b = ModelBuilder::new(13).seed(3);
        let x = b.batched_input("x", "N", &[4, 2, 2]);
        let values: Vec<f32> = (0..32).map(|v| v as f32).collect();
        let w = b.init("w", &[4, 8], &values);
        let t = b.transpose("t", &w, Some(&[1, 0]));
        let wa = b.reshape("ra", &t, &[8, 4, 1, 1]);
        let wb = b.unsqueeze("ub", &t, &[2, 3]);
        let ya = b.node1("Conv", "a", &[&x, &wa], vec![]);
        let yb = b.node1("Conv", "b", &[&x, &wb], vec![]);
        b.output(&ya).output(&yb);
        let mut work = Work::new(b.build()).unwrap();
        let transposed = |k: usize| ((k % 4) * 8 + k / 4) as f32;
        for (name, scale) in [(&wa, 2.0), (&wb, 3.0)] {
            assert!(work.is_chain(name));
            let mut v = work.take(name).unwrap();
            assert_eq!(v.dims, [8, 4, 1, 1]);
            for (k, x) in v.data.iter_mut().enumerate() {
                assert_eq!(*x, transposed(k));
                *x *= scale;
            }
            work.put(name, v);
        }
        let folds = work.fold_chains().unwrap();
        let summary: Vec<(&str, &str, bool, usize)> = folds
            .iter()
            .map(|f| {
                (
                    f.tensor.as_str(),
                    f.initializer.as_str(),
                    f.copied,
                    f.removed.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (wa.as_str(), wa.as_str(), true, 1),
                (wb.as_str(), "w", false, 2)
            ]
        );
        let m = work.finish();
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 2, "only the convs are left");
        let get = |n: &str| {
            let t = g.initializer.iter().find(|t| t.name() == n).unwrap();
            tensor::to_f32(t).unwrap()
        };
        let (a, w) = (get(&wa), get("w"));
        assert_eq!(
            (a.dims.as_slice(), w.dims.as_slice()),
            ([8, 4, 1, 1].as_slice(), [8, 4, 1, 1].as_slice())
        );
        for k in 0..32 {
            assert_eq!(a.data[k], 2.0 * transposed(k));
            assert_eq!(w.data[k], 3.0 * transposed(k));
        }
        assert!(g
            .initializer
            .iter()
            .all(|t| !t.name().starts_with("ra.") && !t.name().starts_with("ub.")));
        assert_eq!(g.node[1].input[1], "w");
    }
}
