//! Resource limits on the models the core accepts.
//!
//! A [`Limits`] value bounds what one run may cost: the number of nodes (every graph, subgraph
//! and function counted), the element count of the largest declared tensor, and the estimated
//! memory of the decoded model. Going over a limit is [`CoreError::Limit`] (`limit_exceeded`;
//! CLI exit 3, HTTP 413).
//!
//! Limits are policy, not options: they are set by whoever runs the tool (`onnx-cle equalize
//! --max-nodes …`, `onnx-cle serve --max-nodes …`), never by the client of a job, so they are not
//! part of [`crate::options::Options`]. They are checked before the run:
//!
//! - on encoded bytes by [`super::scan::decode_within`] (a scan first, so a hostile input is
//!   refused before `prost` allocates anything, then [`super::decode`]);
//! - on a decoded model by [`Limits::check`].

use super::{tensor, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::error::{CoreError, Result};

/// Default of [`Limits::max_nodes`].
pub const DEFAULT_MAX_NODES: u64 = 500_000;
/// Default of [`Limits::max_tensor_elements`] (4 GiB of float32).
pub const DEFAULT_MAX_TENSOR_ELEMENTS: u64 = 1 << 30;
/// Default of [`Limits::max_decoded_bytes`].
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 4 << 30;

/// What one model may cost (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most nodes, over the main graph, every subgraph and every function.
    pub max_nodes: u64,
    /// Most elements in any one tensor (the product of its declared dimensions).
    pub max_tensor_elements: u64,
    /// Most memory the decoded model may take (an estimate made from the encoded bytes; tensor
    /// `raw_data` shares the input buffer and costs nothing extra).
    pub max_decoded_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: DEFAULT_MAX_NODES,
            max_tensor_elements: DEFAULT_MAX_TENSOR_ELEMENTS,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

impl Limits {
    /// No limit at all.
    pub const UNLIMITED: Limits = Limits {
        max_nodes: u64::MAX,
        max_tensor_elements: u64::MAX,
        max_decoded_bytes: u64::MAX,
    };

    /// Checks a decoded model: node count (all graphs and functions) and the largest tensor
    /// (initializers, sparse initializers and tensor attributes, in all graphs).
    pub fn check(&self, model: &ModelProto) -> Result<()> {
        let mut nodes = 0u64;
        let mut graphs: Vec<&GraphProto> = model.graph.iter().collect();
        for t in &model.training_info {
            graphs.extend(t.initialization.iter().chain(t.algorithm.iter()));
        }
        let mut node_lists: Vec<&[NodeProto]> =
            model.functions.iter().map(|f| &f.node[..]).collect();
        let mut tensors: Vec<&TensorProto> = Vec::new();
        loop {
            if let Some(g) = graphs.pop() {
                node_lists.push(&g.node);
                tensors.extend(&g.initializer);
                for s in &g.sparse_initializer {
                    tensors.extend(s.values.iter().chain(s.indices.iter()));
                }
                continue;
            }
            let Some(list) = node_lists.pop() else { break };
            nodes += list.len() as u64;
            if nodes > self.max_nodes {
                return Err(CoreError::Limit(format!(
                    "the model has more than {} nodes (limit max_nodes)",
                    self.max_nodes
                )));
            }
            for n in list {
                for a in &n.attribute {
                    graphs.extend(a.g.iter().chain(a.graphs.iter()));
                    tensors.extend(a.t.iter().chain(a.tensors.iter()));
                }
            }
        }
        for t in tensors {
            let (_, count) = tensor::shape_of(t).map_err(|e| CoreError::InvalidTensor {
                name: t.name().to_string(),
                detail: e.to_string(),
            })?;
            if count as u64 > self.max_tensor_elements {
                return Err(CoreError::Limit(format!(
                    "tensor `{}` declares {count} elements, more than {} (limit max_tensor_elements)",
                    t.name(),
                    self.max_tensor_elements
                )));
            }
        }
        Ok(())
    }
}

/// `s` trimmed, split into its leading number (digits and `also`) and the rest.
pub fn number_and_unit(s: &str, also: char) -> (&str, &str, &str) {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != also)
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    (s, num, unit)
}

/// Parses a byte size: a number with an optional unit (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`,
/// `GiB`, `k`, `M`, `G`; binary units for the one-letter forms).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (s, num, unit) = number_and_unit(s, '_');
    let n: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{ConvSpec, ModelBuilder};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn check_counts_nodes_in_subgraphs() {
        let mut b = ModelBuilder::new(13);
        let x = b.batched_input("x", "N", &[3, 4, 4]);
        let y = b.conv("c", &x, &ConvSpec::new(3, 2, &[1, 1]));
        b.output(&y);
        let mut m = b.build();
        let body = m.graph.clone().unwrap();
        let g = m.graph.as_mut().unwrap();
        g.node[0]
            .attribute
            .push(crate::builder::attr_float("unused", 1.0));
        g.node[0].attribute.push(crate::onnx::AttributeProto {
            name: Some("body".into()),
            g: Some(body),
            ..Default::default()
        });
        let two = Limits {
            max_nodes: 2,
            ..Limits::default()
        };
        two.check(&m).unwrap();
        let one = Limits {
            max_nodes: 1,
            ..Limits::default()
        };
        assert!(matches!(one.check(&m), Err(CoreError::Limit(_))));
        let small = Limits {
            max_tensor_elements: 5,
            ..Limits::default()
        };
        assert!(matches!(small.check(&m), Err(CoreError::Limit(_))));
    }
}
