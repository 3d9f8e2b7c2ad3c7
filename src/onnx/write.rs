//! The encoded model as a stream of slices, written without building the whole encoding.
//!
//! [`stream`] encodes a [`ModelProto`] into parts: small owned buffers (at most [`CHUNK`]
//! bytes each before the next part starts) for the structure (nodes, names, shapes, small
//! tensors), and the `raw_data` of every initializer of the main graph of at least
//! [`BORROW_MIN`] bytes (and of every tensor attribute of its nodes: `Constant` values)
//! borrowed as is — from the input's memory map for the tensors no pass
//! touched, from the passes' own buffers for the rewritten ones. [`stream_computed`] also
//! takes the initializers whose value is computed from their stored bytes while they are
//! written ([`Computed`]: deferred per-channel products), one at a time into a reused buffer.
//! [`Stream::write_to`] hands the parts to vectored writes.
//!
//! Invariant: the concatenated parts are byte for byte `model.encode_to_vec()` — fields in tag
//! order, lengths from `encoded_len` (tested against prost on every fixture model).

use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::path::Path;

use prost::encoding::{self, encode_key, encode_varint, WireType};
use prost::Message;

use super::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// Smallest `raw_data` written from its own buffer instead of being copied into a part.
pub const BORROW_MIN: usize = 4096;

/// Size at which an owned part is closed and a new one started.
pub const CHUNK: usize = 64 * 1024;

/// Slices handed to one vectored write (Linux accepts 1024).
const MAX_IOV: usize = 1024;

/// Bytes handed to one vectored write, and the stretch after which a [`WriteBehind`] file
/// asks the kernel to start writing to disk.
pub const WRITE_BATCH: usize = 8 << 20;

/// Initializers whose written value is computed from their stored bytes.
pub trait Computed: Sync {
    /// Whether the initializer `name` is computed.
    fn computes(&self, name: &str) -> bool;
    /// The value of the initializer `name` from its stored `raw` bytes, into `out` (resized;
    /// as many values as `raw` holds).
    fn compute(&self, name: &str, raw: &[u8], out: &mut Vec<f32>);
}

enum Part<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
    Computed {
        name: &'a str,
        raw: &'a [u8],
        by: &'a dyn Computed,
    },
}

impl std::fmt::Debug for Part<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Owned(v) => write!(f, "Owned({})", v.len()),
            Part::Borrowed(s) => write!(f, "Borrowed({})", s.len()),
            Part::Computed { name, raw, .. } => write!(f, "Computed({name}, {})", raw.len()),
        }
    }
}

/// An encoded model as a sequence of slices (see the module documentation).
#[derive(Debug)]
pub struct Stream<'a> {
    parts: Vec<Part<'a>>,
    len: u64,
}

/// One part's bytes: its slice, or its value computed into `buf`.
fn part_bytes<'s>(p: &'s Part<'_>, buf: &'s mut Vec<f32>) -> &'s [u8] {
    match p {
        Part::Owned(v) => v,
        Part::Borrowed(s) => s,
        Part::Computed { name, raw, by } => {
            by.compute(name, raw, buf);
            f32_bytes(buf)
        }
    }
}

/// `v` as little-endian bytes (in place on little-endian targets).
fn f32_bytes(v: &mut [f32]) -> &[u8] {
    #[cfg(not(target_endian = "little"))]
    for x in v.iter_mut() {
        *x = f32::from_bits(x.to_bits().swap_bytes());
    }
    bytemuck::cast_slice(v)
}

impl<'a> Stream<'a> {
    /// An already encoded model, as one borrowed slice.
    pub fn from_slice(data: &'a [u8]) -> Self {
        Stream {
            parts: vec![Part::Borrowed(data)],
            len: data.len() as u64,
        }
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the encoding is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A buffer with room for the largest computed part (so that it never moves as it fills).
    fn computed_buffer(&self) -> Vec<f32> {
        let largest = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Computed { raw, .. } => raw.len() / 4,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        Vec::with_capacity(largest)
    }

    /// The parts written straight from a buffer the stream borrows (the model's large
    /// tensors), in order.
    pub fn borrowed(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().filter_map(|p| match p {
            Part::Borrowed(s) => Some(*s),
            _ => None,
        })
    }

    /// The encoding's slices, in order; computed parts are computed one at a time into a
    /// reused buffer.
    pub fn for_each_slice(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut buf = self.computed_buffer();
        for p in &self.parts {
            f(part_bytes(p, &mut buf))?;
        }
        Ok(())
    }

    /// The whole encoding in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        let _ = self.for_each_slice(|s| {
            out.extend_from_slice(s);
            Ok(())
        });
        out
    }

    /// Writes the encoding to `w` with vectored writes of at most [`WRITE_BATCH`] bytes each
    /// (so that a [`WriteBehind`] file starts its disk writes while the rest is copied).
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut buf = self.computed_buffer();
        for p in &self.parts {
            if let Part::Computed { .. } = p {
                write_batches(w, &pieces)?;
                pieces.clear();
                write_batches(w, &[part_bytes(p, &mut buf)])?;
                continue;
            }
            let s = match p {
                Part::Owned(v) => v.as_slice(),
                Part::Borrowed(s) => s,
                Part::Computed { .. } => unreachable!("written above"),
            };
            pieces.push(s);
        }
        write_batches(w, &pieces)
    }
}

/// `slices` to `w` with vectored writes of at most [`WRITE_BATCH`] bytes and [`MAX_IOV`]
/// slices each.
fn write_batches<W: Write + ?Sized>(w: &mut W, slices: &[&[u8]]) -> io::Result<()> {
    let pieces: Vec<&[u8]> = slices.iter().flat_map(|s| s.chunks(WRITE_BATCH)).collect();
    let mut start = 0;
    while start < pieces.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < pieces.len() && end - start < MAX_IOV && bytes < WRITE_BATCH {
            bytes += pieces[end].len();
            end += 1;
        }
        let mut slices: Vec<IoSlice<'_>> = pieces[start..end]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| IoSlice::new(s))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match w.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => IoSlice::advance_slices(&mut rest, k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Written: the pages of a memory-mapped input under these bytes leave the resident set.
        for s in &pieces[start..end] {
            super::mapped::release(s);
        }
        start = end;
    }
    Ok(())
}

#[derive(Default)]
struct Builder<'a> {
    parts: Vec<Part<'a>>,
    cur: Vec<u8>,
    computed: Option<&'a dyn Computed>,
}

impl<'a> Builder<'a> {
    fn buf(&mut self) -> &mut Vec<u8> {
        if self.cur.len() >= CHUNK {
            self.flush();
        }
        &mut self.cur
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.parts.push(Part::Owned(std::mem::replace(
                &mut self.cur,
                Vec::with_capacity(CHUNK),
            )));
        }
    }

    fn borrow(&mut self, data: &'a [u8]) {
        self.flush();
        self.parts.push(Part::Borrowed(data));
    }

    fn messages<M: Message>(&mut self, tag: u32, list: &[M]) {
        for m in list {
            encoding::message::encode(tag, m, self.buf());
        }
    }

    fn string(&mut self, tag: u32, v: &Option<String>) {
        if let Some(v) = v {
            encoding::string::encode(tag, v, self.buf());
        }
    }

    fn int64(&mut self, tag: u32, v: &Option<i64>) {
        if let Some(v) = v {
            encoding::int64::encode(tag, v, self.buf());
        }
    }

    fn finish(mut self) -> Stream<'a> {
        self.flush();
        let len = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Owned(v) => v.len() as u64,
                Part::Borrowed(s) => s.len() as u64,
                Part::Computed { raw, .. } => raw.len() as u64,
            })
            .sum();
        Stream {
            parts: self.parts,
            len,
        }
    }
}

/// `model`'s encoding as a [`Stream`] borrowing the large initializers' bytes.
pub fn stream(model: &ModelProto) -> Stream<'_> {
    build(model, None)
}

/// [`stream`] with the initializers of the main graph that `computed` computes written from
/// their computed value ([`Computed::compute`] on their stored `raw_data`) instead of their
/// stored bytes; the encoding is otherwise the same (a computed value has as many bytes as the
/// stored one).
pub fn stream_computed<'a>(model: &'a ModelProto, computed: &'a dyn Computed) -> Stream<'a> {
    build(model, Some(computed))
}

fn build<'a>(model: &'a ModelProto, computed: Option<&'a dyn Computed>) -> Stream<'a> {
    let ModelProto {
        ir_version,
        opset_import,
        producer_name,
        producer_version,
        domain,
        model_version,
        doc_string,
        graph,
        metadata_props,
        training_info,
        functions,
        configuration,
    } = model;
    let mut b = Builder {
        computed,
        ..Builder::default()
    };
    b.int64(1, ir_version);
    b.string(2, producer_name);
    b.string(3, producer_version);
    b.string(4, domain);
    b.int64(5, model_version);
    b.string(6, doc_string);
    if let Some(g) = graph {
        let buf = b.buf();
        encode_key(7, WireType::LengthDelimited, buf);
        encode_varint(g.encoded_len() as u64, buf);
        graph_parts(g, &mut b);
    }
    b.messages(8, opset_import);
    b.messages(14, metadata_props);
    b.messages(20, training_info);
    b.messages(25, functions);
    b.messages(26, configuration);
    b.finish()
}

fn graph_parts<'a>(g: &'a GraphProto, b: &mut Builder<'a>) {
    let GraphProto {
        node,
        name,
        initializer,
        sparse_initializer,
        doc_string,
        input,
        output,
        value_info,
        quantization_annotation,
        metadata_props,
    } = g;
    for n in node {
        node_parts(n, b);
    }
    b.string(2, name);
    for t in initializer {
        tensor_parts(5, t, b, true);
    }
    b.string(10, doc_string);
    b.messages(11, input);
    b.messages(12, output);
    b.messages(13, value_info);
    b.messages(14, quantization_annotation);
    b.messages(15, sparse_initializer);
    b.messages(16, metadata_props);
}

fn big(t: &TensorProto) -> bool {
    t.raw_data.as_ref().is_some_and(|r| r.len() >= BORROW_MIN)
}

/// A node of the main graph (field 1); one holding a large tensor attribute is split like
/// [`tensor_parts`]: the fields before and after `attribute` (tag 5) from copies.
fn node_parts<'a>(n: &'a NodeProto, b: &mut Builder<'a>) {
    if !n.attribute.iter().any(|a| a.t.as_ref().is_some_and(big)) {
        encoding::message::encode(1, n, b.buf());
        return;
    }
    let NodeProto {
        input,
        output,
        name,
        op_type,
        domain,
        overload,
        attribute,
        doc_string,
        metadata_props,
        device_configurations,
    } = n;
    let head = NodeProto {
        input: input.clone(),
        output: output.clone(),
        name: name.clone(),
        op_type: op_type.clone(),
        ..Default::default()
    };
    let tail = NodeProto {
        domain: domain.clone(),
        overload: overload.clone(),
        doc_string: doc_string.clone(),
        metadata_props: metadata_props.clone(),
        device_configurations: device_configurations.clone(),
        ..Default::default()
    };
    let buf = b.buf();
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(n.encoded_len() as u64, buf);
    head.encode_raw(buf);
    for a in attribute {
        match a.t.as_ref().filter(|t| big(t)) {
            Some(t) => attribute_parts(a, t, b),
            None => encoding::message::encode(5, a, b.buf()),
        }
    }
    tail.encode_raw(b.buf());
}

/// A node attribute (field 5) whose tensor `t` (tag 5) is large: the fields around it from
/// copies.
fn attribute_parts<'a>(a: &'a AttributeProto, t: &'a TensorProto, b: &mut Builder<'a>) {
    let AttributeProto {
        name,
        ref_attr_name,
        doc_string,
        r#type,
        f,
        i,
        s,
        t: _,
        g,
        sparse_tensor,
        tp,
        floats,
        ints,
        strings,
        tensors,
        graphs,
        sparse_tensors,
        type_protos,
    } = a;
    let head = AttributeProto {
        name: name.clone(),
        f: *f,
        i: *i,
        s: s.clone(),
        ..Default::default()
    };
    let tail = AttributeProto {
        ref_attr_name: ref_attr_name.clone(),
        doc_string: doc_string.clone(),
        r#type: *r#type,
        g: g.clone(),
        sparse_tensor: sparse_tensor.clone(),
        tp: tp.clone(),
        floats: floats.clone(),
        ints: ints.clone(),
        strings: strings.clone(),
        tensors: tensors.clone(),
        graphs: graphs.clone(),
        sparse_tensors: sparse_tensors.clone(),
        type_protos: type_protos.clone(),
        ..Default::default()
    };
    let buf = b.buf();
    encode_key(5, WireType::LengthDelimited, buf);
    encode_varint(a.encoded_len() as u64, buf);
    head.encode_raw(buf);
    tensor_parts(5, t, b, false);
    tail.encode_raw(b.buf());
}

/// A tensor field: its fields before `raw_data` (tags 1–8) and after it (10–16) are encoded
/// from copies that leave `raw_data` out; `raw_data` (tag 9) itself is borrowed, or computed
/// while it is written for an `initializer` the builder's [`Computed`] computes.
fn tensor_parts<'a>(tag: u32, t: &'a TensorProto, b: &mut Builder<'a>, initializer: bool) {
    let computed = b.computed.filter(|c| {
        initializer
            && t.raw_data().len().is_multiple_of(4)
            && !t.raw_data().is_empty()
            && c.computes(t.name())
    });
    let Some(raw) = t
        .raw_data
        .as_ref()
        .filter(|r| r.len() >= BORROW_MIN || computed.is_some())
    else {
        encoding::message::encode(tag, t, b.buf());
        return;
    };
    let TensorProto {
        dims,
        data_type,
        segment,
        float_data,
        int32_data,
        string_data,
        int64_data,
        name,
        doc_string,
        raw_data: _,
        external_data,
        data_location,
        double_data,
        uint64_data,
        metadata_props,
    } = t;
    let head = TensorProto {
        dims: dims.clone(),
        data_type: *data_type,
        segment: *segment,
        float_data: float_data.clone(),
        int32_data: int32_data.clone(),
        string_data: string_data.clone(),
        int64_data: int64_data.clone(),
        name: name.clone(),
        ..Default::default()
    };
    let tail = TensorProto {
        doc_string: doc_string.clone(),
        external_data: external_data.clone(),
        data_location: *data_location,
        double_data: double_data.clone(),
        uint64_data: uint64_data.clone(),
        metadata_props: metadata_props.clone(),
        ..Default::default()
    };
    let buf = b.buf();
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(t.encoded_len() as u64, buf);
    head.encode_raw(buf);
    encode_key(9, WireType::LengthDelimited, buf);
    encode_varint(raw.len() as u64, buf);
    match computed {
        Some(by) => {
            b.flush();
            b.parts.push(Part::Computed {
                name: t.name(),
                raw,
                by,
            });
        }
        None => b.borrow(raw),
    }
    tail.encode_raw(b.buf());
}

/// A file being written that hands each [`WRITE_BATCH`] of new bytes to the disk at once
/// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`: start writeback, do not wait), so that the
/// final fsync waits for the last stretch only instead of the whole file. Nothing else changes:
/// the bytes, and the durability the fsync gives.
#[derive(Debug)]
pub struct WriteBehind {
    file: File,
    /// Offset up to which writeback was started, and bytes written.
    started: u64,
    written: u64,
    enabled: bool,
}

impl WriteBehind {
    /// `file`, written from its start, with its disk writes started as it fills.
    pub fn new(file: File) -> Self {
        Self::with(file, true)
    }

    /// The file, to fsync and close.
    pub fn into_file(self) -> File {
        self.file
    }

    fn with(file: File, enabled: bool) -> Self {
        WriteBehind {
            file,
            started: 0,
            written: 0,
            enabled,
        }
    }

    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if self.enabled && self.written - self.started >= WRITE_BATCH as u64 {
            start_writeback(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.wrote(n);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Starts writeback of `len` bytes from `offset` (best effort: an error only means the fsync
/// does all the work).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn sync_file_range(
            fd: std::ffi::c_int,
            offset: i64,
            nbytes: i64,
            flags: std::ffi::c_uint,
        ) -> std::ffi::c_int;
    }
    const SYNC_FILE_RANGE_WRITE: std::ffi::c_uint = 2;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on an open descriptor this `File` owns; no memory is passed.
    unsafe {
        sync_file_range(file.as_raw_fd(), offset, len, SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}

/// Writes a file atomically: `write` fills a temporary file next to `path` (its disk writes
/// start as it fills: [`WriteBehind`]), which is fsynced and renamed over `path` (then the
/// folder is fsynced, where the platform allows); on failure the temporary file is removed and
/// `path` is left as it was. A `path` that exists and is not a regular file (`/dev/null`, a
/// pipe) is written directly.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut WriteBehind) -> io::Result<()>,
) -> io::Result<()> {
    if fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let f = fs::OpenOptions::new().write(true).open(path)?;
        return write(&mut WriteBehind::with(f, false));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = WriteBehind::new(File::create(&tmp)?);
        write(&mut f)?;
        f.file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
