//! A structural pre-scan of an encoded `ModelProto`, before anything is decoded.
//!
//! Protobuf decoding turns a few bytes into large structures: two bytes (`tag`, `length 0`) of a
//! repeated `AttributeProto` become a struct of a few hundred bytes, one byte of a packed
//! `int64` list becomes eight. A hostile upload of 1 GiB could therefore ask for hundreds of
//! gigabytes. [`scan`] walks the wire format with a small, bounded amount of memory (a
//! `BufRead` and one stack frame per nesting level), knowing the schema of every ONNX message,
//! and refuses the input *before* `prost` allocates anything when:
//!
//! - it is not well-formed protobuf the way `prost` reads it (truncated, bad varints, a wire type
//!   that does not match the field, unbalanced groups, nesting deeper than `prost` allows):
//!   [`CoreError::Decode`];
//! - it has no graph (or neither an IR version nor an opset): the same errors as
//!   [`super::decode`];
//! - a `TensorProto` declares negative dimensions or an element count that overflows:
//!   [`CoreError::InvalidTensor`];
//! - it goes over a [`Limits`] value (nodes in all graphs and functions, elements of the largest
//!   declared tensor, estimated decoded size): [`CoreError::Limit`].
//!
//! Invariant (checked by the fuzz target): the scan never refuses as malformed an input that
//! [`super::decode`] accepts; it may accept inputs that decoding later refuses (strings that are
//! not UTF-8, for instance).

use std::io::{BufRead, ErrorKind};

use super::limits::Limits;
use super::proto;
use crate::error::{CoreError, Result};

/// Deepest message nesting `prost` decodes (its recursion limit is 100); deeper inputs fail to
/// decode anyway, so the scan stops there too (with a margin, so it never refuses first).
const MAX_DEPTH: usize = 102;

/// Longest tensor name kept for error messages.
const NAME_CHARS: usize = 120;

/// What the scan found in a model that passed it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    /// Encoded size.
    pub bytes: u64,
    /// Nodes in every graph, subgraph and function.
    pub nodes: u64,
    /// Element count of the largest declared tensor.
    pub max_tensor_elements: u64,
    /// Estimated memory of the decoded model (structures, strings, repeated scalars; `bytes`
    /// fields share the input buffer).
    pub decoded_bytes: u64,
    /// `ir_version`.
    pub ir_version: i64,
    /// Number of `opset_import` entries.
    pub opsets: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    Segment,
    Sparse,
    ValueInfo,
    Type,
    TypeTensor,
    TypeSeq,
    TypeMap,
    TypeOpaque,
    Shape,
    Dim,
    Opset,
    StringEntry,
    Annotation,
    Training,
    Function,
    /// A message type the scan does not model (device configurations): its bytes are skipped
    /// and charged generously.
    Opaque,
}

impl Msg {
    /// Decoded size of one such message (the struct itself).
    fn size(self) -> u64 {
        use std::mem::size_of;
        (match self {
            Msg::Model => size_of::<proto::ModelProto>(),
            Msg::Graph => size_of::<proto::GraphProto>(),
            Msg::Node => size_of::<proto::NodeProto>(),
            Msg::Attribute => size_of::<proto::AttributeProto>(),
            Msg::Tensor => size_of::<proto::TensorProto>(),
            Msg::Segment => size_of::<proto::tensor_proto::Segment>(),
            Msg::Sparse => size_of::<proto::SparseTensorProto>(),
            Msg::ValueInfo => size_of::<proto::ValueInfoProto>(),
            Msg::Type => size_of::<proto::TypeProto>(),
            Msg::TypeTensor => size_of::<proto::type_proto::Tensor>(),
            Msg::TypeSeq => size_of::<proto::type_proto::Sequence>(),
            Msg::TypeMap => size_of::<proto::type_proto::Map>(),
            Msg::TypeOpaque => size_of::<proto::type_proto::Opaque>(),
            Msg::Shape => size_of::<proto::TensorShapeProto>(),
            Msg::Dim => size_of::<proto::tensor_shape_proto::Dimension>(),
            Msg::Opset => size_of::<proto::OperatorSetIdProto>(),
            Msg::StringEntry => size_of::<proto::StringStringEntryProto>(),
            Msg::Annotation => size_of::<proto::TensorAnnotation>(),
            Msg::Training => size_of::<proto::TrainingInfoProto>(),
            Msg::Function => size_of::<proto::FunctionProto>(),
            Msg::Opaque => 256,
        }) as u64
    }
}

/// How a known field is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A singular varint (int32, int64, enum, bool).
    Varint,
    /// A singular fixed 32-bit value (float).
    Fixed32,
    /// A `string` (copied into a `String`).
    Str,
    /// A `bytes` field (a slice of the input buffer).
    Bytes,
    /// A repeated `string` or `bytes`.
    RepStr,
    /// A (possibly repeated) message.
    Sub(Msg),
    /// A repeated varint, packed or not, decoded to `elem` bytes each.
    RepVarint(u64),
    /// A repeated float, packed or not.
    RepFixed32,
    /// A repeated double, packed or not.
    RepFixed64,
}

fn field(msg: Msg, num: u32) -> Option<Kind> {
    use Kind::*;
    Some(match (msg, num) {
        (Msg::Model, 1 | 5) => Varint,
        (Msg::Model, 2 | 3 | 4 | 6) => Str,
        (Msg::Model, 7) => Sub(Msg::Graph),
        (Msg::Model, 8) => Sub(Msg::Opset),
        (Msg::Model, 14) => Sub(Msg::StringEntry),
        (Msg::Model, 20) => Sub(Msg::Training),
        (Msg::Model, 25) => Sub(Msg::Function),
        (Msg::Model, 26) => Sub(Msg::Opaque),
        (Msg::Opset, 1) => Str,
        (Msg::Opset, 2) => Varint,
        (Msg::StringEntry, 1 | 2) => Str,
        (Msg::Training, 1 | 2) => Sub(Msg::Graph),
        (Msg::Training, 3 | 4) => Sub(Msg::StringEntry),
        (Msg::Function, 1 | 8 | 10 | 13) => Str,
        (Msg::Function, 4..=6) => RepStr,
        (Msg::Function, 7) => Sub(Msg::Node),
        (Msg::Function, 9) => Sub(Msg::Opset),
        (Msg::Function, 11) => Sub(Msg::Attribute),
        (Msg::Function, 12) => Sub(Msg::ValueInfo),
        (Msg::Function, 14) => Sub(Msg::StringEntry),
        (Msg::Graph, 1) => Sub(Msg::Node),
        (Msg::Graph, 2 | 10) => Str,
        (Msg::Graph, 5) => Sub(Msg::Tensor),
        (Msg::Graph, 11..=13) => Sub(Msg::ValueInfo),
        (Msg::Graph, 14) => Sub(Msg::Annotation),
        (Msg::Graph, 15) => Sub(Msg::Sparse),
        (Msg::Graph, 16) => Sub(Msg::StringEntry),
        (Msg::Annotation, 1) => Str,
        (Msg::Annotation, 2) => Sub(Msg::StringEntry),
        (Msg::Node, 1 | 2) => RepStr,
        (Msg::Node, 3 | 4 | 6 | 7 | 8) => Str,
        (Msg::Node, 5) => Sub(Msg::Attribute),
        (Msg::Node, 9) => Sub(Msg::StringEntry),
        (Msg::Node, 10) => Sub(Msg::Opaque),
        (Msg::Attribute, 1 | 13 | 21) => Str,
        (Msg::Attribute, 2) => Fixed32,
        (Msg::Attribute, 3 | 20) => Varint,
        (Msg::Attribute, 4) => Bytes,
        (Msg::Attribute, 5 | 10) => Sub(Msg::Tensor),
        (Msg::Attribute, 6 | 11) => Sub(Msg::Graph),
        (Msg::Attribute, 7) => RepFixed32,
        (Msg::Attribute, 8) => RepVarint(8),
        (Msg::Attribute, 9) => RepStr,
        (Msg::Attribute, 14 | 15) => Sub(Msg::Type),
        (Msg::Attribute, 22 | 23) => Sub(Msg::Sparse),
        (Msg::ValueInfo, 1 | 3) => Str,
        (Msg::ValueInfo, 2) => Sub(Msg::Type),
        (Msg::ValueInfo, 4) => Sub(Msg::StringEntry),
        (Msg::Tensor, 1 | 7) => RepVarint(8),
        (Msg::Tensor, 2 | 14) => Varint,
        (Msg::Tensor, 3) => Sub(Msg::Segment),
        (Msg::Tensor, 4) => RepFixed32,
        (Msg::Tensor, 5) => RepVarint(4),
        (Msg::Tensor, 6) => RepStr,
        (Msg::Tensor, 8 | 12) => Str,
        (Msg::Tensor, 9) => Bytes,
        (Msg::Tensor, 10) => RepFixed64,
        (Msg::Tensor, 11) => RepVarint(8),
        (Msg::Tensor, 13 | 16) => Sub(Msg::StringEntry),
        (Msg::Segment, 1 | 2) => Varint,
        (Msg::Sparse, 1 | 2) => Sub(Msg::Tensor),
        (Msg::Sparse, 3) => RepVarint(8),
        (Msg::Type, 1 | 8) => Sub(Msg::TypeTensor),
        (Msg::Type, 4 | 9) => Sub(Msg::TypeSeq),
        (Msg::Type, 5) => Sub(Msg::TypeMap),
        (Msg::Type, 7) => Sub(Msg::TypeOpaque),
        (Msg::Type, 6) => Str,
        (Msg::TypeTensor, 1) => Varint,
        (Msg::TypeTensor, 2) => Sub(Msg::Shape),
        (Msg::TypeSeq, 1) => Sub(Msg::Type),
        (Msg::TypeMap, 1) => Varint,
        (Msg::TypeMap, 2) => Sub(Msg::Type),
        (Msg::TypeOpaque, 1 | 2) => Str,
        (Msg::Shape, 1) => Sub(Msg::Dim),
        (Msg::Dim, 1) => Varint,
        (Msg::Dim, 2 | 3) => Str,
        _ => return None,
    })
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Why the scan stopped.
enum Stop {
    Core(CoreError),
    Io(std::io::Error),
}

impl From<CoreError> for Stop {
    fn from(e: CoreError) -> Self {
        Stop::Core(e)
    }
}

type Step<T> = std::result::Result<T, Stop>;

/// Per-tensor facts gathered while walking a `TensorProto`.
#[derive(Default)]
struct TensorFacts {
    elements: u128,
    negative: Option<i64>,
    name: String,
}

impl TensorFacts {
    fn new() -> Self {
        TensorFacts {
            elements: 1,
            ..Default::default()
        }
    }

    fn dim(&mut self, raw: u64) {
        let d = raw as i64;
        if d < 0 {
            self.negative.get_or_insert(d);
        } else {
            // Saturates far above any limit; only "too many" matters from here on.
            self.elements = self
                .elements
                .saturating_mul(d as u128)
                .min(u128::from(u64::MAX));
        }
    }
}

struct Scanner<'l, R> {
    r: R,
    pos: u64,
    total: u64,
    limits: &'l Limits,
    sum: ScanSummary,
    graph_seen: bool,
}

fn malformed(pos: u64, what: impl std::fmt::Display) -> Stop {
    Stop::Core(CoreError::Decode(format!(
        "invalid protobuf at byte {pos}: {what}"
    )))
}

impl<R: BufRead> Scanner<'_, R> {
    fn fill(&mut self) -> Step<&[u8]> {
        let mut tries = 0;
        while let Err(e) = self.r.fill_buf() {
            tries += 1;
            if e.kind() != ErrorKind::Interrupted || tries > 100 {
                return Err(Stop::Io(e));
            }
        }
        self.r.fill_buf().map_err(Stop::Io)
    }

    fn truncated(&self) -> Stop {
        malformed(
            self.pos,
            "the data ends in the middle of a field (truncated?)",
        )
    }

    fn byte(&mut self) -> Step<u8> {
        let b = match self.fill()?.first() {
            Some(&b) => b,
            None => return Err(self.truncated()),
        };
        self.r.consume(1);
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Step<u64> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(malformed(start, "varint longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(malformed(start, "varint longer than 64 bits"))
    }

    /// Skips `n` bytes, keeping up to `keep` of them (lossy UTF-8) in `out`.
    fn skip(&mut self, mut n: u64, keep: usize, out: Option<&mut String>) -> Step<()> {
        let mut kept = Vec::new();
        while n > 0 {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Err(self.truncated());
            }
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            if kept.len() < keep {
                let room = keep - kept.len();
                kept.extend_from_slice(&buf[..take.min(room)]);
            }
            self.r.consume(take);
            self.pos += take as u64;
            n -= take as u64;
        }
        if let Some(out) = out {
            *out = String::from_utf8_lossy(&kept).into_owned();
        }
        Ok(())
    }

    /// Walks `n` bytes of packed varints; returns how many there are. `each` sees every value.
    fn packed_varints(&mut self, n: u64, mut each: impl FnMut(u64)) -> Step<u64> {
        let end = self.pos + n;
        let mut count = 0;
        while self.pos < end {
            let v = self.varint()?;
            if self.pos > end {
                return Err(malformed(self.pos, "packed varint crosses its field's end"));
            }
            each(v);
            count += 1;
        }
        Ok(count)
    }

    fn charge(&mut self, bytes: u64) -> Step<()> {
        self.sum.decoded_bytes = self.sum.decoded_bytes.saturating_add(bytes);
        if self.sum.decoded_bytes > self.limits.max_decoded_bytes {
            return Err(Stop::Core(CoreError::Limit(format!(
                "decoding the model would take more than {} bytes of memory (limit max_decoded_bytes)",
                self.limits.max_decoded_bytes
            ))));
        }
        Ok(())
    }

    /// Reads a length prefix and checks it fits before `end`.
    fn length(&mut self, end: u64) -> Step<u64> {
        let at = self.pos;
        let len = self.varint()?;
        if len > end.saturating_sub(self.pos) {
            return Err(malformed(
                at,
                format!(
                    "a field declares {len} bytes but only {} remain (truncated?)",
                    end.saturating_sub(self.pos)
                ),
            ));
        }
        Ok(len)
    }

    /// Skips a field the schema does not know, as `prost` does (groups included).
    fn skip_unknown(&mut self, wire: u8, num: u32, end: u64, depth: usize) -> Step<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.fixed(8, end),
            FIXED32 => self.fixed(4, end),
            LEN => {
                let len = self.length(end)?;
                self.skip(len, 0, None)
            }
            START_GROUP => self.group(num, end, depth + 1),
            _ => Err(malformed(self.pos, "unexpected end-group tag")),
        }
    }

    fn fixed(&mut self, n: u64, end: u64) -> Step<()> {
        if end.saturating_sub(self.pos) < n {
            return Err(self.truncated());
        }
        self.skip(n, 0, None)
    }

    fn group(&mut self, num: u32, end: u64, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return Err(malformed(self.pos, "nesting deeper than 100 levels"));
        }
        loop {
            if self.pos >= end {
                return Err(malformed(self.pos, "group without its end tag"));
            }
            let (wire, inner) = self.key()?;
            if wire == END_GROUP {
                return if inner == num {
                    Ok(())
                } else {
                    Err(malformed(self.pos, "unexpected end-group tag"))
                };
            }
            self.skip_unknown(wire, inner, end, depth)?;
        }
    }

    fn key(&mut self) -> Step<(u8, u32)> {
        let at = self.pos;
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| malformed(at, "invalid field key"))?;
        let wire = (key & 7) as u8;
        let num = key >> 3;
        if wire > 5 {
            return Err(malformed(at, format!("invalid wire type {wire}")));
        }
        if num == 0 {
            return Err(malformed(at, "field number 0"));
        }
        Ok((wire, num))
    }

    fn message(&mut self, msg: Msg, end: u64, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return Err(malformed(self.pos, "nesting deeper than 100 levels"));
        }
        self.charge(msg.size())?;
        match msg {
            Msg::Node => {
                self.sum.nodes += 1;
                if self.sum.nodes > self.limits.max_nodes {
                    return Err(Stop::Core(CoreError::Limit(format!(
                        "the model has more than {} nodes (limit max_nodes)",
                        self.limits.max_nodes
                    ))));
                }
            }
            Msg::Opaque => {
                // Not modeled: charge generously for whatever prost builds from it.
                self.charge(end.saturating_sub(self.pos).saturating_mul(16))?;
                return self.skip(end - self.pos, 0, None);
            }
            _ => {}
        }
        let mut tensor = (msg == Msg::Tensor).then(TensorFacts::new);
        while self.pos < end {
            let at = self.pos;
            let (wire, num) = self.key()?;
            let Some(kind) = field(msg, num) else {
                self.skip_unknown(wire, num, end, depth)?;
                continue;
            };
            let wrong = || malformed(at, format!("field {num} has the wrong wire type {wire}"));
            match kind {
                Kind::Varint => {
                    if wire != VARINT {
                        return Err(wrong());
                    }
                    let v = self.varint()?;
                    if msg == Msg::Model && num == 1 {
                        self.sum.ir_version = v as i64;
                    }
                }
                Kind::Fixed32 => {
                    if wire != FIXED32 {
                        return Err(wrong());
                    }
                    self.fixed(4, end)?;
                }
                Kind::Str | Kind::Bytes | Kind::RepStr => {
                    if wire != LEN {
                        return Err(wrong());
                    }
                    let len = self.length(end)?;
                    let cost = match kind {
                        Kind::Str => len + 24,
                        Kind::Bytes => 32,
                        _ => len + 48,
                    };
                    self.charge(cost)?;
                    match tensor.as_mut().filter(|_| num == 8) {
                        Some(t) => self.skip(len, NAME_CHARS, Some(&mut t.name))?,
                        None => self.skip(len, 0, None)?,
                    }
                }
                Kind::Sub(sub) => {
                    if wire != LEN {
                        return Err(wrong());
                    }
                    let len = self.length(end)?;
                    match (msg, sub) {
                        (Msg::Model, Msg::Graph) => self.graph_seen = true,
                        (Msg::Model, Msg::Opset) => self.sum.opsets += 1,
                        _ => {}
                    }
                    self.message(sub, self.pos + len, depth + 1)?;
                }
                Kind::RepVarint(elem) => {
                    let dims = (msg == Msg::Tensor && num == 1)
                        .then_some(())
                        .and(tensor.as_mut());
                    match wire {
                        VARINT => {
                            let v = self.varint()?;
                            if let Some(t) = dims {
                                t.dim(v);
                            }
                            self.charge(2 * elem)?;
                        }
                        LEN => {
                            let len = self.length(end)?;
                            let n = match dims {
                                Some(t) => self.packed_varints(len, |v| t.dim(v))?,
                                None => self.packed_varints(len, |_| {})?,
                            };
                            self.charge(n.saturating_mul(2 * elem))?;
                        }
                        _ => return Err(wrong()),
                    }
                }
                Kind::RepFixed32 | Kind::RepFixed64 => {
                    let (size, scalar) = if kind == Kind::RepFixed32 {
                        (4, FIXED32)
                    } else {
                        (8, FIXED64)
                    };
                    if wire == scalar {
                        self.fixed(size, end)?;
                        self.charge(2 * size)?;
                    } else if wire == LEN {
                        let len = self.length(end)?;
                        if len % size != 0 {
                            return Err(malformed(
                                at,
                                format!("packed field {num} is not a multiple of {size} bytes"),
                            ));
                        }
                        self.charge(len.saturating_mul(2))?;
                        self.skip(len, 0, None)?;
                    } else {
                        return Err(wrong());
                    }
                }
            }
        }
        if let Some(t) = tensor {
            self.tensor_done(t)?;
        }
        Ok(())
    }

    fn tensor_done(&mut self, t: TensorFacts) -> Step<()> {
        let name = if t.name.is_empty() {
            "(unnamed)".to_string()
        } else {
            t.name
        };
        if let Some(d) = t.negative {
            return Err(Stop::Core(CoreError::InvalidTensor {
                name,
                detail: format!("negative dimension {d}"),
            }));
        }
        if t.elements > i64::MAX as u128 {
            return Err(Stop::Core(CoreError::InvalidTensor {
                name,
                detail: "the product of its dimensions overflows".into(),
            }));
        }
        let n = t.elements as u64;
        if n > self.limits.max_tensor_elements {
            return Err(Stop::Core(CoreError::Limit(format!(
                "tensor `{name}` declares {n} elements, more than {} (limit max_tensor_elements)",
                self.limits.max_tensor_elements
            ))));
        }
        self.sum.max_tensor_elements = self.sum.max_tensor_elements.max(n);
        Ok(())
    }
}

/// Scans an encoded model of `total` bytes read from `r` (see the module documentation).
/// I/O errors are [`CoreError::Io`] with `what` as the path.
pub fn scan<R: BufRead>(r: R, total: u64, limits: &Limits, what: &str) -> Result<ScanSummary> {
    if total == 0 {
        return Err(CoreError::Decode("empty input".into()));
    }
    let mut s = Scanner {
        r,
        pos: 0,
        total,
        limits,
        sum: ScanSummary {
            bytes: total,
            ..Default::default()
        },
        graph_seen: false,
    };
    match s.message(Msg::Model, s.total, 0) {
        Ok(()) => {}
        Err(Stop::Core(e)) => return Err(e),
        Err(Stop::Io(source)) => {
            return Err(CoreError::Io {
                path: what.to_string(),
                source,
            })
        }
    }
    if !s.graph_seen {
        return Err(CoreError::InvalidModel(
            "the model has no graph (is this an ONNX model file?)".into(),
        ));
    }
    if s.sum.ir_version <= 0 && s.sum.opsets == 0 {
        return Err(CoreError::Decode(
            "no ir_version and no opset_import: not an ONNX model".into(),
        ));
    }
    Ok(s.sum)
}

/// [`scan`] over an in-memory buffer.
pub fn scan_bytes(data: &[u8], limits: &Limits) -> Result<ScanSummary> {
    scan(data, data.len() as u64, limits, "<memory>")
}

/// Decodes a model within `limits`: [`scan_bytes`] (refuses malformed or oversized input
/// before allocating), [`super::decode`], then [`Limits::check`].
pub fn decode_within(bytes: bytes::Bytes, limits: &Limits) -> Result<super::ModelProto> {
    scan_bytes(&bytes, limits)?;
    let model = super::decode(bytes)?;
    limits.check(&model)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{ConvSpec, ModelBuilder};
    use prost::Message;

    fn small() -> Vec<u8> {
        let mut b = ModelBuilder::new(13).seed(1);
        let x = b.batched_input("x", "N", &[3, 8, 8]);
        let y = b.conv("c1", &x, &ConvSpec::new(3, 4, &[3, 3]));
        let y = b.batch_norm("bn", &y, 4);
        let y = b.relu("r", &y);
        let y = b.conv("c2", &y, &ConvSpec::new(4, 2, &[1, 1]));
        b.output(&y);
        b.build_bytes()
    }

    #[test]
    fn a_model_passes_with_its_counts() {
        let data = small();
        let s = scan_bytes(&data, &Limits::default()).unwrap();
        assert_eq!(s.nodes, 4);
        assert_eq!(s.max_tensor_elements, 4 * 3 * 3 * 3);
        assert!(s.decoded_bytes > 0 && s.ir_version > 0 && s.opsets == 1);
    }

    #[test]
    fn every_truncation_is_refused_like_decode_does() {
        let data = small();
        for cut in 0..data.len() {
            let part = &data[..cut];
            let decoded = crate::onnx::decode(bytes::Bytes::copy_from_slice(part));
            let scanned = scan_bytes(part, &Limits::default());
            if decoded.is_ok() {
                assert!(scanned.is_ok(), "cut {cut}: {scanned:?}");
            } else {
                assert!(scanned.is_err(), "cut {cut} scans but does not decode");
            }
        }
    }

    #[test]
    fn limits_stop_the_scan() {
        let data = small();
        let d = Limits::default();
        for limits in [
            Limits { max_nodes: 3, ..d },
            Limits {
                max_tensor_elements: 100,
                ..d
            },
            Limits {
                max_decoded_bytes: 1000,
                ..d
            },
        ] {
            let scanned = scan_bytes(&data, &limits);
            assert!(matches!(scanned, Err(CoreError::Limit(_))), "{limits:?}");
        }
    }

    #[test]
    fn attribute_floods_are_refused_before_decoding() {
        // A node with 10 million empty attributes: 20 MB on the wire, gigabytes decoded.
        let mut node = vec![0x0a, 0x01, b'x']; // input "x"
        for _ in 0..10_000_000 {
            node.extend_from_slice(&[0x2a, 0x00]);
        }
        let mut graph = vec![0x0a];
        prost::encoding::encode_varint(node.len() as u64, &mut graph);
        graph.extend_from_slice(&node);
        let mut model = vec![0x08, 0x07, 0x3a];
        prost::encoding::encode_varint(graph.len() as u64, &mut model);
        model.extend_from_slice(&graph);
        let e = scan_bytes(&model, &Limits::default()).unwrap_err();
        assert!(matches!(e, CoreError::Limit(_)), "{e}");
    }

    #[test]
    fn groups_and_unknown_fields_are_skipped_like_prost() {
        let mut m = crate::onnx::ModelProto {
            ir_version: Some(7),
            graph: Some(Default::default()),
            ..Default::default()
        }
        .encode_to_vec();
        // Unknown field 99 as a group holding a varint, then unknown fixed32 and fixed64.
        m.extend_from_slice(&[0x9b, 0x06, 0x08, 0x01, 0x9c, 0x06]);
        m.extend_from_slice(&[0x9d, 0x06, 1, 2, 3, 4, 0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(crate::onnx::decode(bytes::Bytes::from(m.clone())).is_ok());
        scan_bytes(&m, &Limits::default()).unwrap();
        // A mismatched end-group tag fails both.
        let mut bad = m.clone();
        bad.extend_from_slice(&[0x9b, 0x06, 0xa4, 0x06]);
        assert!(crate::onnx::decode(bytes::Bytes::from(bad.clone())).is_err());
        assert!(scan_bytes(&bad, &Limits::default()).is_err());
    }

    #[test]
    fn bad_tensor_dims_are_invalid_tensors() {
        let mut b = ModelBuilder::new(13);
        let x = b.batched_input("x", "N", &[2]);
        b.output(&x);
        let mut m = b.build();
        m.graph
            .as_mut()
            .unwrap()
            .initializer
            .push(crate::onnx::TensorProto {
                name: Some("huge".into()),
                dims: vec![1 << 40, 1 << 40],
                data_type: Some(1),
                ..Default::default()
            });
        let e = scan_bytes(&m.encode_to_vec(), &Limits::default()).unwrap_err();
        assert!(matches!(e, CoreError::InvalidTensor { .. }), "{e}");
        m.graph.as_mut().unwrap().initializer[0].dims = vec![-3, 2];
        let e = scan_bytes(&m.encode_to_vec(), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }
}
