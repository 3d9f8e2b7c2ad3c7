//! Graph index: who produces and who consumes each tensor, in which order nodes run.
//!
//! Invariants:
//! - nodes are identified by their index in `GraphProto.node`, never by name, so unnamed and
//!   duplicate-named nodes work;
//! - graph outputs count as consumers ([`GraphIndex::use_count`]), so a tensor that is also a
//!   model output is never rescaled behind the user's back (AIMET bug 5, cle-spec §6.2);
//! - a node whose subgraph (If / Loop / Scan body) reads an outer tensor counts as a consumer of
//!   that tensor, so subgraphs can never be silently broken;
//! - the index is rebuilt after every structural edit; it is never patched in place.

use std::collections::{HashMap, HashSet};

use crate::error::{CoreError, Result};
use crate::onnx::{GraphProto, NodeProto};

/// Producers, consumers and a topological order of the main graph.
#[derive(Debug, Default, Clone)]
pub struct GraphIndex {
    producer: HashMap<String, usize>,
    consumers: HashMap<String, Vec<usize>>,
    graph_outputs: HashSet<String>,
    graph_inputs: HashSet<String>,
    initializers: HashMap<String, usize>,
    order: Vec<usize>,
}

const NO_CONSUMERS: &[usize] = &[];

impl GraphIndex {
    /// Indexes `graph`. Fails on a cycle, on a tensor produced twice, or on a node input that
    /// nothing provides.
    pub fn build(graph: &GraphProto) -> Result<Self> {
        let mut ix = GraphIndex::default();
        for (i, t) in graph.initializer.iter().enumerate() {
            if ix.initializers.insert(t.name().to_string(), i).is_some() {
                return Err(CoreError::InvalidModel(format!(
                    "initializer `{}` is defined more than once",
                    t.name()
                )));
            }
        }
        // Sparse initializers provide tensors too; they are not dense constants, so the
        // passes never read them (a layer with a sparse weight is skipped), but they exist.
        let mut sparse = HashSet::new();
        for s in &graph.sparse_initializer {
            let name = s.values.as_ref().map_or("", |v| v.name());
            if ix.initializers.contains_key(name) || !sparse.insert(name.to_string()) {
                return Err(CoreError::InvalidModel(format!(
                    "initializer `{name}` is defined more than once"
                )));
            }
        }
        for v in &graph.input {
            ix.graph_inputs.insert(v.name().to_string());
        }
        for v in &graph.output {
            ix.graph_outputs.insert(v.name().to_string());
        }
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if ix.producer.insert(out.clone(), i).is_some() {
                    return Err(CoreError::InvalidModel(format!(
                        "tensor `{out}` is produced by more than one node"
                    )));
                }
                if ix.initializers.contains_key(out) || sparse.contains(out) {
                    return Err(CoreError::InvalidModel(format!(
                        "tensor `{out}` is defined more than once (an initializer and the output of node {})",
                        describe(node, i)
                    )));
                }
            }
        }
        for (i, node) in graph.node.iter().enumerate() {
            let mut seen: HashSet<&str> = HashSet::new();
            for inp in node.input.iter().filter(|s| !s.is_empty()) {
                if !ix.producer.contains_key(inp)
                    && !ix.initializers.contains_key(inp)
                    && !ix.graph_inputs.contains(inp)
                    && !sparse.contains(inp)
                {
                    return Err(CoreError::InvalidModel(format!(
                        "input `{inp}` of node {} is produced by no node, initializer or graph input",
                        describe(node, i)
                    )));
                }
                if seen.insert(inp.as_str()) {
                    ix.consumers.entry(inp.clone()).or_default().push(i);
                }
            }
            let mut outer = HashSet::new();
            collect_subgraph_inputs(node, &mut outer);
            for name in outer {
                if !seen.contains(name.as_str())
                    && (ix.producer.contains_key(&name)
                        || ix.initializers.contains_key(&name)
                        || ix.graph_inputs.contains(&name)
                        || sparse.contains(&name))
                {
                    ix.consumers.entry(name).or_default().push(i);
                }
            }
        }
        ix.order = topo_order(graph, &ix)?;
        Ok(ix)
    }

    /// The node producing `tensor`.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// The nodes reading `tensor` (each once, in node order).
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.consumers
            .get(tensor)
            .map(Vec::as_slice)
            .unwrap_or(NO_CONSUMERS)
    }

    /// Number of uses of `tensor`: consuming nodes, plus one when it is a graph output.
    pub fn use_count(&self, tensor: &str) -> usize {
        self.consumers(tensor).len() + usize::from(self.graph_outputs.contains(tensor))
    }

    /// Whether `tensor` is a graph output.
    pub fn is_graph_output(&self, tensor: &str) -> bool {
        self.graph_outputs.contains(tensor)
    }

    /// Whether `tensor` is a graph input (an initializer listed as input included).
    pub fn is_graph_input(&self, tensor: &str) -> bool {
        self.graph_inputs.contains(tensor)
    }

    /// The position of initializer `tensor` in `GraphProto.initializer`.
    pub fn initializer(&self, tensor: &str) -> Option<usize> {
        self.initializers.get(tensor).copied()
    }

    /// Node indices in a topological order (the file's order when it already is one).
    pub fn topo(&self) -> &[usize] {
        &self.order
    }
}

/// `name` or, for unnamed nodes, `OpType#index`.
pub fn describe(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("{}#{index}", node.op_type())
    } else {
        format!("`{}`", node.name())
    }
}

/// Every tensor name read anywhere inside the node's subgraphs (recursively). Names produced
/// inside a subgraph are included too; callers only keep names that exist in the outer scope.
fn collect_subgraph_inputs(node: &NodeProto, out: &mut HashSet<String>) {
    for a in &node.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for n in &g.node {
                for i in n.input.iter().filter(|s| !s.is_empty()) {
                    out.insert(i.clone());
                }
                collect_subgraph_inputs(n, out);
            }
            for o in &g.output {
                out.insert(o.name().to_string());
            }
        }
    }
}

fn topo_order(graph: &GraphProto, ix: &GraphIndex) -> Result<Vec<usize>> {
    let n = graph.node.len();
    let sorted = graph.node.iter().enumerate().all(|(i, node)| {
        node.input
            .iter()
            .filter_map(|t| ix.producer.get(t))
            .all(|&p| p < i)
    });
    if sorted {
        return Ok((0..n).collect());
    }
    let mut indegree = vec![0usize; n];
    for (i, node) in graph.node.iter().enumerate() {
        let preds: HashSet<usize> = node
            .input
            .iter()
            .filter_map(|t| ix.producer.get(t).copied())
            .collect();
        indegree[i] = preds.len();
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        let mut succ: Vec<usize> = graph.node[i]
            .output
            .iter()
            .flat_map(|o| ix.consumers(o).iter().copied())
            .filter(|&c| {
                graph.node[c]
                    .input
                    .iter()
                    .any(|t| graph.node[i].output.contains(t))
            })
            .collect();
        succ.sort_unstable();
        succ.dedup();
        for c in succ.into_iter().rev() {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() != n {
        return Err(CoreError::InvalidModel(
            "the graph has a cycle (nodes that depend on each other)".into(),
        ));
    }
    Ok(order)
}

impl GraphIndex {
    /// Registers an initializer appended after the index was built.
    pub fn add_initializer(&mut self, name: &str, position: usize) {
        self.initializers.insert(name.to_string(), position);
    }
}
