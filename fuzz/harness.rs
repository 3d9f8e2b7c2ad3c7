// The fuzz harness of onnx-cle, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and
// the stable smoke test (`tests/fuzz_smoke.rs`), which both `include!` this file.
//
// Two entry points:
// - `check_bytes(data)`: `data` is a model file. Properties: the structural scan never refuses
//   as malformed what `onnx::decode` accepts; a decodable model within small limits runs
//   through the whole pipeline (verification off) in default and AIMET mode without panicking;
//   what it writes decodes again, indexes (no dangling input, no cycle) and its report survives
//   a JSON round trip.
// - `check_structured(data)`: `data` drives semantic mutations of small builder models (op
//   types, inputs, dims, data types, attribute values, NaN/Inf weights, subgraphs, duplicate
//   names, opsets, options), reaching deep into the passes, with the same properties.
//
// Every entry point only returns or panics; a panic is a finding.

#[allow(unused_imports)]
use onnx_cle::builder::{
    attr_float, attr_int, attr_ints, tensor_f32, ClipForm, ConvSpec, GemmSpec, ModelBuilder,
};
use onnx_cle::onnx::limits::Limits;
use onnx_cle::onnx::{self, AttributeProto, ModelProto, NodeProto};
use onnx_cle::{CoreError, Options, Relu6Policy};

/// Limits of the harness: small, so one input never takes long.
pub fn harness_limits() -> Limits {
    Limits {
        max_nodes: 4096,
        max_tensor_elements: 1 << 20,
        max_decoded_bytes: 64 << 20,
    }
}

/// Runs the pipeline (verification off) and checks what comes out.
pub fn check_pipeline(model: &ModelProto, options: &Options) {
    let mut opts = options.clone();
    opts.verify.enabled = false;
    opts.quant.end_to_end = false;
    opts.quant.sensitivity = false;
    let Ok(opts) = opts.normalized() else { return };
    let out = match onnx_cle::run(
        model.clone(),
        None,
        &opts,
        None,
        onnx_cle::Control::default(),
    ) {
        Ok(o) => o,
        Err(_) => return,
    };
    let again = onnx::decode(bytes::Bytes::from(out.model))
        .unwrap_or_else(|e| panic!("the equalized model does not decode: {e}"));
    let g = again
        .graph
        .as_ref()
        .expect("the equalized model has a graph");
    if let Err(e) = onnx_cle::graph::GraphIndex::build(g) {
        panic!("the equalized graph is broken: {e}");
    }
    let json = serde_json::to_vec(&out.report).expect("the report serializes");
    if let Err(e) = serde_json::from_slice::<onnx_cle::Report>(&json) {
        panic!("the report does not read back: {e}");
    }
}

/// `data` is an encoded model (see the file comment).
pub fn check_bytes(data: &[u8]) {
    let limits = harness_limits();
    let scanned = onnx::scan::scan_bytes(data, &Limits::UNLIMITED);
    let decoded = onnx::decode(bytes::Bytes::copy_from_slice(data));
    if let (Ok(_), Err(e)) = (&decoded, &scanned) {
        if !matches!(e, CoreError::Limit(_) | CoreError::InvalidTensor { .. }) {
            panic!("the scan refuses a model that decodes: {e}");
        }
    }
    let Ok(model) = decoded else { return };
    if onnx::scan::scan_bytes(data, &limits).is_err() || limits.check(&model).is_err() {
        return;
    }
    check_pipeline(&model, &Options::default());
    check_pipeline(&model, &Options::aimet());
}

/// A byte cursor over fuzz input.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads `data` from the start.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    /// Whether everything was read.
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// The builder models the structured target mutates.
pub fn seed_models() -> Vec<ModelProto> {
    let mut out = Vec::new();
    // Conv → BN → Relu → Conv → BN → Relu6 → depthwise → Conv, with a residual Add.
    let mut b = ModelBuilder::new(13).seed(11);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 6, &[3, 3]).same_pads());
    let y = b.batch_norm("bn1", &y, 6);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(6, 6, &[1, 1]));
    let y = b.batch_norm("bn2", &y, 6);
    let y = b.relu6("r2", &y);
    let y = b.conv("dw", &y, &ConvSpec::depthwise(6, &[3, 3]).same_pads());
    let y = b.relu6("r3", &y);
    let z = b.conv("c3", &y, &ConvSpec::new(6, 6, &[1, 1]));
    let y = b.add("add", &z, &y);
    let y = b.global_average_pool("gap", &y);
    let y = b.flatten("flat", &y, 1);
    let y = b.gemm("fc", &y, &GemmSpec::new(6, 4));
    b.output(&y);
    out.push(b.build());
    // Gemm / MatMul with forward BN folds, LeakyRelu, Pad and pooling, opset 9 attributes.
    let mut b = ModelBuilder::new(9).seed(12);
    let x = b.batched_input("x", "N", &[4, 6, 6]);
    let y = b.batch_norm("bn0", &x, 4);
    let y = b.conv("c1", &y, &ConvSpec::new(4, 5, &[1, 1]));
    let y = b.leaky_relu("lr", &y, 0.1);
    let y = b.pad("pad", &y, &[0, 0, 1, 1, 0, 0, 1, 1]);
    let y = b.max_pool("mp", &y, &[2, 2], &[2, 2]);
    let y = b.conv("c2", &y, &ConvSpec::new(5, 3, &[3, 3]));
    let y = b.clip("clip", &y, Some(0.0), Some(6.0), ClipForm::Attributes);
    let y = b.flatten("flat", &y, 1);
    let y = b.gemm("fc1", &y, &GemmSpec::new(12, 8).trans_b(false));
    let y = b.batch_norm("bn3", &y, 8);
    let y = b.relu("r", &y);
    let y = b.matmul("mm", &y, 8, 3);
    b.output(&y);
    out.push(b.build());
    // ConvTranspose, grouped Conv, PRelu, Identity, Dropout, a Reshape after a global pool.
    let mut b = ModelBuilder::new(17).seed(13);
    let x = b.batched_input("x", "N", &[4, 5, 5]);
    let y = b.conv("ct", &x, &ConvSpec::transposed(4, 4, &[2, 2]));
    let y = b.batch_norm("bn", &y, 4);
    let y = b.prelu("pr", &y, 4, 4);
    let y = b.conv("g", &y, &ConvSpec::new(4, 4, &[1, 1]).group(2));
    let y = b.identity("id", &y);
    let y = b.dropout("do", &y);
    let y = b.conv("c", &y, &ConvSpec::new(4, 4, &[1, 1]).no_group_attr());
    let y = b.global_average_pool("gap", &y);
    let y = b.reshape("rs", &y, &[1, 4]);
    let y = b.gemm("fc", &y, &GemmSpec::new(4, 2).alpha_beta(0.5, 2.0));
    b.output(&y);
    out.push(b.build());
    out
}

const OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "Relu",
    "Clip",
    "PRelu",
    "LeakyRelu",
    "Add",
    "Pad",
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "MaxPool",
    "GlobalAveragePool",
    "Constant",
    "If",
    "Loop",
];

const FLOATS: &[f32] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    6.0,
    1e-30,
    1e30,
    f32::MAX,
    f32::MIN_POSITIVE,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
];

const INTS: &[i64] = &[0, 1, -1, 2, 3, 4, 6, 7, -7, 1 << 31, i64::MAX, i64::MIN];

fn names(m: &ModelProto) -> Vec<String> {
    let g = m.graph.as_ref().expect("graph");
    let mut v: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
    v.extend(g.initializer.iter().map(|t| t.name().to_string()));
    v.extend(g.input.iter().map(|t| t.name().to_string()));
    v.push(String::new());
    v.push("nowhere".into());
    v
}

fn mutate(m: &mut ModelProto, c: &mut Cursor, opts: &mut Options) {
    let pool = names(m);
    let op = c.byte() % 20;
    let g = m.graph.as_mut().expect("graph");
    let nn = g.node.len();
    let ni = g.initializer.len();
    match op {
        0 if nn > 0 => {
            let k = c.below(nn);
            g.node[k].op_type = Some(c.pick(OPS).to_string());
        }
        1 if nn > 0 => {
            let k = c.below(nn);
            let slot = c.below(4);
            let name = c.pick(&pool);
            let node = &mut g.node[k];
            if slot < node.input.len() {
                node.input[slot] = name;
            } else {
                node.input.push(name);
            }
        }
        2 if nn > 0 => {
            let k = c.below(nn);
            g.node.remove(k);
        }
        3 if nn > 0 => {
            let k = c.below(nn);
            let mut copy = g.node[k].clone();
            if c.byte().is_multiple_of(2) {
                copy.output = copy.output.iter().map(|o| format!("{o}_dup")).collect();
            }
            let at = c.below(nn + 1);
            g.node.insert(at, copy);
        }
        4 if ni > 0 => {
            let k = c.below(ni);
            let v = c.pick(FLOATS);
            if let Ok(mut t) = onnx::tensor::to_f32(&g.initializer[k]) {
                if !t.data.is_empty() {
                    let at = c.below(t.data.len());
                    if c.byte().is_multiple_of(4) {
                        t.data.iter_mut().for_each(|x| *x = v);
                    } else {
                        t.data[at] = v;
                    }
                    onnx::tensor::write_f32(&mut g.initializer[k], &t);
                }
            }
        }
        5 if ni > 0 => {
            let k = c.below(ni);
            let t = &mut g.initializer[k];
            let d = c.pick(INTS);
            match c.byte() % 3 {
                0 if !t.dims.is_empty() => {
                    let at = c.below(t.dims.len());
                    t.dims[at] = d;
                }
                1 => t.dims.push(d.clamp(0, 4)),
                _ => {
                    t.dims.pop();
                }
            }
        }
        6 | 7 if nn > 0 => {
            let k = c.below(nn);
            let name = c.pick(&[
                "group", "transB", "transA", "axis", "alpha", "beta", "epsilon", "pads",
                "auto_pad", "min", "max", "mode", "value", "perm",
            ]);
            let node = &mut g.node[k];
            node.attribute.retain(|a| a.name() != name);
            let attr = match c.byte() % 3 {
                0 => attr_int(name, c.pick(INTS)),
                1 => attr_float(name, c.pick(FLOATS)),
                _ => {
                    let len = c.below(9);
                    let v: Vec<i64> = (0..len).map(|_| c.pick(INTS)).collect();
                    attr_ints(name, &v)
                }
            };
            node.attribute.push(attr);
        }
        8 if ni > 0 => {
            let k = c.below(ni);
            g.initializer[k].data_type = Some(c.pick(&[0, 1, 2, 3, 6, 7, 8, 10, 11, 16, 22, 99]));
        }
        9 if ni > 0 => {
            let k = c.below(ni);
            let t = &mut g.initializer[k];
            let raw = t.raw_data().to_vec();
            match c.byte() % 3 {
                0 => t.raw_data = Some(bytes::Bytes::from(raw[..c.below(raw.len() + 1)].to_vec())),
                1 => {
                    t.float_data = raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    t.raw_data = None;
                }
                _ => t.data_location = Some(1),
            }
        }
        10 => {
            let name = c.pick(&pool);
            if c.byte().is_multiple_of(2) {
                g.output
                    .push(onnx_cle::builder::value_info_f32(&name, None));
            } else if !g.output.is_empty() {
                let k = c.below(g.output.len());
                g.output.remove(k);
            }
        }
        11 => {
            let v = c.pick(&[0i64, 1, 6, 9, 10, 11, 13, 17, 25, 1000, -1]);
            if let Some(o) = m.opset_import.first_mut() {
                o.version = Some(v);
            }
        }
        12 if nn > 0 => {
            let k = c.below(nn);
            let mut body = g.clone();
            body.initializer.clear();
            g.node[k].attribute.push(AttributeProto {
                name: Some(c.pick(&["then_branch", "else_branch", "body"]).to_string()),
                g: Some(body),
                r#type: Some(5),
                ..Default::default()
            });
        }
        13 if nn > 0 => {
            let k = c.below(nn);
            let other = c.below(nn);
            g.node[k].name = if c.byte().is_multiple_of(2) {
                g.node[other].name.clone()
            } else {
                None
            };
        }
        14 if nn > 1 => {
            let (a, b) = (c.below(nn), c.below(nn));
            g.node.swap(a, b);
        }
        15 => {
            let name = c.pick(&pool);
            g.input.push(onnx_cle::builder::value_info_f32(&name, None));
        }
        16 if nn > 0 => {
            let k = c.below(nn);
            let v = c.pick(FLOATS);
            let len = c.below(4);
            let t = tensor_f32("", &[len], &vec![v; len]);
            let node: &mut NodeProto = &mut g.node[k];
            node.attribute.retain(|a| a.name() != "value");
            node.attribute
                .push(onnx_cle::builder::attr_tensor("value", t));
        }
        17 if ni > 0 => {
            let k = c.below(ni);
            g.sparse_initializer.push(onnx::proto::SparseTensorProto {
                values: Some(g.initializer.remove(k)),
                ..Default::default()
            });
        }
        _ => {
            // Options.
            match c.byte() % 7 {
                0 => *opts = Options::aimet(),
                1 => {
                    opts.relu6 =
                        c.pick(&[Relu6Policy::Exact, Relu6Policy::Replace, Relu6Policy::Keep])
                }
                2 => opts.iterations = Some(c.pick(&[1, 2, 5])),
                3 => opts.start = vec![c.pick(&pool)],
                4 => opts.output = vec![c.pick(&pool)],
                5 => opts.balance = Some(c.pick(&[1.0, 1.5, 4.0])),
                _ => {
                    opts.hbf = c.pick(&[
                        onnx_cle::HbfMode::Off,
                        onnx_cle::HbfMode::Exact,
                        onnx_cle::HbfMode::Aimet,
                    ])
                }
            }
        }
    }
}

/// `data` drives mutations of a seed model (see the file comment).
pub fn check_structured(data: &[u8]) {
    check_structured_with(&seed_models(), data);
}

/// [`check_structured`] with the seeds built once by the caller.
pub fn check_structured_with(seeds: &[ModelProto], data: &[u8]) {
    let mut c = Cursor::new(data);
    let mut model = seeds[c.below(seeds.len())].clone();
    let mut opts = Options::default();
    let mut steps = 0;
    while !c.done() && steps < 64 {
        mutate(&mut model, &mut c, &mut opts);
        steps += 1;
    }
    let bytes = onnx::encode(&model);
    check_bytes(&bytes);
    let limits = harness_limits();
    if onnx::scan::scan_bytes(&bytes, &limits).is_ok() && limits.check(&model).is_ok() {
        check_pipeline(&model, &opts);
    }
}
