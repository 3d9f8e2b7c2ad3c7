//! Typed access to node attributes.

use super::{AttributeProto, NodeProto};

/// The attribute named `name`, if present.
pub fn get<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

/// An INT attribute.
pub fn int(node: &NodeProto, name: &str) -> Option<i64> {
    get(node, name).map(|a| a.i())
}

/// A FLOAT attribute.
pub fn float(node: &NodeProto, name: &str) -> Option<f32> {
    get(node, name).map(|a| a.f())
}

/// An INTS attribute.
pub fn ints<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    get(node, name).map(|a| a.ints.as_slice())
}

/// A STRING attribute, lossily decoded as UTF-8.
pub fn string(node: &NodeProto, name: &str) -> Option<String> {
    get(node, name).map(|a| String::from_utf8_lossy(a.s()).into_owned())
}

/// Sets (or adds) a FLOAT attribute.
pub fn set_float(node: &mut NodeProto, name: &str, value: f32) {
    if let Some(a) = node.attribute.iter_mut().find(|a| a.name() == name) {
        a.f = Some(value);
    } else {
        node.attribute.push(AttributeProto {
            name: Some(name.to_string()),
            f: Some(value),
            r#type: Some(super::proto::attribute_proto::AttributeType::Float as i32),
            ..Default::default()
        });
    }
}

/// True when the node carries a graph-valued attribute (If / Loop / Scan bodies).
pub fn has_subgraph(node: &NodeProto) -> bool {
    node.attribute
        .iter()
        .any(|a| a.g.is_some() || !a.graphs.is_empty())
}
