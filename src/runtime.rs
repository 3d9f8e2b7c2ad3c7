//! The tract runtime every stage runs models with: input tensors (declared shapes, seeded
//! random or given samples), a [`Runner`] per model, batches split into single samples, and
//! [`Session`]: one model built and run on a task of its own that the caller can stop waiting
//! for (a deadline and a cancellation flag, [`Deadline`]).
//!
//! Bounded cost (what [`crate::verify`] and the pipeline's verification rely on):
//! - **Memory**: one tract model at a time; a [`Session`] drops its model before it reports, and
//!   the memory tract freed is handed back before the next model is built.
//! - **Time**: tract's calls cannot be interrupted, so on a deadline or a cancellation the caller
//!   stops waiting at once and the task is abandoned: it sees its stop flag between its steps
//!   (model parsed, optimized, each sample run) and ends there, dropping what it holds. The
//!   caller is never held past the budget; the abandoned step still runs to its end on its
//!   thread, which is why a model whose build alone would outrun the budget is not started at
//!   all ([`tract_build_estimate`]).
//! - **Long graphs**: tract-core wires every node of a typed model after scanning all the nodes
//!   wired so far for a duplicate name (`TypedModel::wire_node`), so building a model of `n`
//!   nodes takes O(n²) time (a 100 000-node chain: minutes). [`simplified`] removes `Identity`
//!   nodes from a copy handed to tract (`y = x`: the same function, see its docs).
//!
//! A model tract cannot load or run is an `Err(String)` with tract's reason, never a panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::type_proto;
use crate::onnx::ModelProto;

/// One input tensor.
#[derive(Debug, Clone)]
pub struct InputTensor {
    /// Graph input name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Element type (ONNX code).
    pub elem_type: i32,
    /// Values (cast to the element type when fed).
    pub data: Vec<f32>,
}

/// The graph inputs that need feeding (initializers excluded), with concrete shapes: every
/// dynamic dimension `dynamic_dim`.
pub fn input_specs(model: &ModelProto, dynamic_dim: usize) -> Result<Vec<InputTensor>, String> {
    input_specs_shaped(model, dynamic_dim, &BTreeMap::new())
}

/// [`input_specs`] with the inputs named in `shapes` at those shapes (each of the input's rank,
/// its fixed dimensions kept); a name that is no input, another rank or a changed fixed
/// dimension is an error.
pub fn input_specs_shaped(
    model: &ModelProto,
    dynamic_dim: usize,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<InputTensor>, String> {
    let g = model.graph.as_ref().ok_or("no graph")?;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut specs = Vec::new();
    for v in g.input.iter().filter(|v| !inits.contains(v.name())) {
        let Some(type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(format!("input `{}` is not a tensor", v.name()));
        };
        let dims = tt
            .shape
            .as_ref()
            .ok_or_else(|| format!("input `{}` has no shape", v.name()))?;
        let mut shape = Vec::new();
        for d in &dims.dim {
            let n = match d.value {
                Some(crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(n))
                    if n > 0 =>
                {
                    n as usize
                }
                _ => dynamic_dim,
            };
            shape.push(n);
        }
        if let Some(given) = shapes.get(v.name()) {
            let declared = crate::onnx::declared_dims(v).unwrap_or_default();
            let fits = given.len() == declared.len()
                && declared
                    .iter()
                    .zip(given)
                    .all(|(d, &n)| d.is_none_or(|f| f <= 0 || f as usize == n));
            if !fits {
                let text: Vec<String> = declared
                    .iter()
                    .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
                    .collect();
                return Err(format!(
                    "input shape {given:?} given for `{}` does not fit its declared shape [{}]",
                    v.name(),
                    text.join(", ")
                ));
            }
            shape.clone_from(given);
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("input too large")?;
        if count > MAX_VERIFY_ELEMENTS {
            return Err(format!(
                "input `{}` has {count} elements: too large to verify",
                v.name()
            ));
        }
        specs.push(InputTensor {
            name: v.name().to_string(),
            shape,
            elem_type: tt.elem_type.unwrap_or(0),
            data: vec![0.0; count],
        });
    }
    if let Some(name) = shapes.keys().find(|n| !specs.iter().any(|s| &s.name == *n)) {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "an input shape is given for `{name}`, which is not an input of the model (its inputs: {})",
            names.join(", ")
        ));
    }
    Ok(specs)
}

/// How `specs` ([`input_specs_shaped`]) filled dynamic dimensions past the batch dimension with
/// `dynamic_dim` where `shapes` names no size: `x [1, 3, 1, 1]`, one entry per such input, for
/// the report's description of the inputs (a run checked on 1×1 images should say so).
pub fn defaulted_shapes(
    model: &ModelProto,
    specs: &[InputTensor],
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Vec<String> {
    let declared = declared_input_dims(model);
    specs
        .iter()
        .filter(|s| !shapes.contains_key(&s.name))
        .filter(|s| {
            declared
                .get(&s.name)
                .is_some_and(|d| d.iter().skip(1).any(Option::is_none))
        })
        .map(|s| format!("{} {:?}", s.name, s.shape))
        .collect()
}

/// Most elements of one input that verification feeds tract.
pub const MAX_VERIFY_ELEMENTS: usize = 64 << 20;

/// Stacks `count` samples along the batch dimension of `specs` ([`input_specs_shaped`]) when
/// every input's declared leading dimension is dynamic and holds one sample, and the stacked
/// inputs stay within [`MAX_VERIFY_ELEMENTS`]; returns how many samples the specs hold (1 when
/// the model fixes its batch, or `count` is 0 or 1).
pub fn stack_samples(model: &ModelProto, specs: &mut [InputTensor], count: usize) -> usize {
    let declared = declared_input_dims(model);
    let batchable = |s: &InputTensor| {
        s.shape.first() == Some(&1)
            && s.data.len().saturating_mul(count) <= MAX_VERIFY_ELEMENTS
            && declared
                .get(&s.name)
                .is_some_and(|d| matches!(d.first(), Some(None | Some(0))))
    };
    if count < 2 || specs.is_empty() || !specs.iter().all(batchable) {
        return 1;
    }
    for s in specs.iter_mut() {
        s.shape[0] = count;
        s.data = vec![0.0; s.data.len() * count];
    }
    count
}

/// Seeded standard-normal values (SplitMix64 + Box–Muller).
pub fn fill_random(inputs: &mut [InputTensor], seed: u64) {
    fill(inputs, seed, |next| {
        let u1 = next().max(1e-300);
        let u2 = next();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    });
}

/// Seeded values uniform on `[lo, hi]`: the declared input range as an input model.
pub fn fill_uniform(inputs: &mut [InputTensor], seed: u64, [lo, hi]: [f32; 2]) {
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    fill(inputs, seed, |next| (lo + (hi - lo) * next()) as f32);
}

/// Fills the float inputs with `value` of a SplitMix64 stream of uniform `[0, 1)` numbers, the
/// others with zeros.
fn fill(
    inputs: &mut [InputTensor],
    seed: u64,
    mut value: impl FnMut(&mut dyn FnMut() -> f64) -> f32,
) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    for t in inputs.iter_mut() {
        let float = t.elem_type == DataType::Float as i32;
        for v in t.data.iter_mut() {
            *v = if float { value(&mut next) } else { 0.0 };
        }
    }
}

fn to_tract(t: &InputTensor) -> TractResult<Tensor> {
    let f = Tensor::from_shape(&t.shape, &t.data)?;
    let dt = match DataType::try_from(t.elem_type) {
        Ok(DataType::Float) => return Ok(f),
        Ok(DataType::Int64) => i64::datum_type(),
        Ok(DataType::Int32) => i32::datum_type(),
        Ok(DataType::Bool) => bool::datum_type(),
        Ok(DataType::Double) => f64::datum_type(),
        _ => {
            return Err(tract_onnx::prelude::TractError::msg(format!(
                "input `{}` has element type {} which verification cannot feed",
                t.name, t.elem_type
            )))
        }
    };
    Ok(f.cast_to_dt(dt)?.into_owned())
}

/// A model loaded and optimized by tract for fixed input shapes.
pub struct Runner {
    plan: std::sync::Arc<TypedRunnableModel>,
    names: Vec<String>,
}

fn guarded<T>(f: impl FnOnce() -> TractResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("tract panicked".into()),
    }
}

fn onnx() -> tract_onnx::Onnx {
    tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
}

/// Parses an encoded model, decoding from the slice (tract's reader would copy it first).
fn parse(bytes: &[u8]) -> TractResult<InferenceModel> {
    let proto = tract_onnx::pb::ModelProto::decode(bytes)?;
    onnx().model_for_proto_model(&proto)
}

/// Serves the weights of [`in_memory_model`] from the encoded model itself.
struct InMemory(Bytes);

impl tract_onnx::data_resolver::ModelDataResolver for InMemory {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        _: &std::path::Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        let end = offset.saturating_add(length.unwrap_or(0));
        let data = self
            .0
            .get(offset..end)
            .ok_or_else(|| TractError::msg("in-memory weight out of range"))?;
        buf.extend_from_slice(data);
        // tract keeps its copy: a memory-mapped model's pages under it leave the resident set.
        crate::onnx::mapped::release(data);
        Ok(())
    }
}

/// Parses `bytes` with every large initializer of the main graph passed by reference: tract
/// gets a copy of the model without their `raw_data`, marked as external data at their
/// offset in `bytes`, and reads each one from `bytes` as it builds its tensor. The whole
/// model is never copied into tract's protobuf types first (that copy is the size of the
/// weights). `None` when this does not apply; the caller parses `bytes` as it is.
fn in_memory_model(bytes: &Bytes) -> Option<InferenceModel> {
    use crate::onnx::proto::tensor_proto::DataLocation;
    use crate::onnx::proto::StringStringEntryProto;
    let mut model = crate::onnx::ModelProto::decode(bytes.clone()).ok()?;
    let base = bytes.as_ptr() as usize;
    let mut moved = 0usize;
    for t in model.graph.as_mut()?.initializer.iter_mut() {
        let Some(raw) = t.raw_data.as_ref().filter(|r| r.len() >= 4096) else {
            continue;
        };
        if !t.external_data.is_empty() {
            continue;
        }
        let offset = (raw.as_ptr() as usize).checked_sub(base)?;
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", ".".into()),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
        moved += raw.len();
        t.raw_data = None;
        t.data_location = Some(DataLocation::External as i32);
    }
    if moved == 0 {
        return None;
    }
    let small = model.encode_to_vec();
    drop(model);
    let proto = tract_onnx::pb::ModelProto::decode(&small[..]).ok()?;
    drop(small);
    let onnx = tract_onnx::Onnx {
        provider: Arc::new(InMemory(bytes.clone())),
        ..onnx()
    };
    // tract resolves the location inside the model folder before asking the resolver: `.` in
    // the root folder exists everywhere.
    let dir = std::path::Path::new("/");
    let result = onnx.parse(&proto, dir.to_str()).ok()?;
    result.unresolved_inputs.is_empty().then_some(result.model)
}

impl Runner {
    /// Loads `bytes` with input shapes and types taken from `inputs`.
    pub fn new(bytes: &[u8], inputs: &[InputTensor]) -> Result<Self, String> {
        guarded(|| Self::build(parse(bytes)?, inputs, &|| false))
    }

    /// [`Runner::new`] on a shared buffer: the weights go from `bytes` straight into tract's
    /// tensors ([`in_memory_model`]). Gives up (with [`STOPPED`]) when `stop()` is true after
    /// parsing or after optimizing.
    /// `bytes` is dropped once parsed: when it was the last reference, the encoded model is
    /// freed before tract optimizes its copy.
    fn new_checked(
        bytes: Bytes,
        inputs: &[InputTensor],
        stop: &dyn Fn() -> bool,
    ) -> Result<Self, String> {
        guarded(move || {
            let model = match in_memory_model(&bytes) {
                Some(m) => m,
                None => parse(&bytes)?,
            };
            drop(bytes);
            Self::build(model, inputs, stop)
        })
    }

    /// Optimizes a parsed model for the shapes of `inputs`.
    fn build(
        mut model: InferenceModel,
        inputs: &[InputTensor],
        stop: &dyn Fn() -> bool,
    ) -> TractResult<Self> {
        if stop() {
            return Err(TractError::msg(STOPPED));
        }
        let names: Vec<String> = model
            .output_outlets()?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        for (k, t) in inputs.iter().enumerate() {
            let dt = to_tract(&InputTensor {
                data: vec![0.0; t.shape.iter().product()],
                ..t.clone()
            })?
            .datum_type();
            model = model.with_input_fact(k, InferenceFact::dt_shape(dt, t.shape.clone()))?;
        }
        let plan = model.into_optimized()?.into_runnable()?;
        if stop() {
            return Err(TractError::msg(STOPPED));
        }
        Ok(Runner { plan, names })
    }

    /// Output names.
    pub fn output_names(&self) -> &[String] {
        &self.names
    }

    /// Runs once; returns `(name, values)` per output.
    pub fn run(&self, inputs: &[InputTensor]) -> Result<Vec<(String, Vec<f32>)>, String> {
        Ok(self
            .run_typed(inputs)?
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect())
    }

    /// Runs once; returns `(name, values, is_float)` per output.
    pub fn run_typed(
        &self,
        inputs: &[InputTensor],
    ) -> Result<Vec<(String, Vec<f32>, bool)>, String> {
        guarded(|| {
            let fed: TVec<TValue> = inputs
                .iter()
                .map(|t| to_tract(t).map(|x| x.into_tvalue()))
                .collect::<TractResult<_>>()?;
            let outs = self.plan.run(fed)?;
            let mut result = Vec::new();
            for (k, o) in outs.iter().enumerate() {
                let is_float = o.datum_type().is_float();
                let f = o.cast_to::<f32>()?;
                let view = f.to_plain_array_view::<f32>()?;
                let name = self
                    .names
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("output{k}"));
                result.push((name, view.iter().copied().collect(), is_float));
            }
            Ok(result)
        })
    }
}

/// Runs a model with tract once; returns `(name, values)` per output.
pub fn run_model(bytes: &[u8], inputs: &[InputTensor]) -> Result<Vec<(String, Vec<f32>)>, String> {
    Runner::new(bytes, inputs)?.run(inputs)
}

/// Splits batched samples (`[N, …]` per input) into `N` single-sample input sets of batch 1.
pub fn split_batch(samples: &[InputTensor]) -> Vec<Vec<InputTensor>> {
    let n = samples
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    if n == 0 || samples.iter().any(|t| t.shape.first() != Some(&n)) {
        return vec![samples.to_vec()];
    }
    (0..n)
        .map(|k| {
            samples
                .iter()
                .map(|t| {
                    let per = t.data.len() / n;
                    let mut shape = t.shape.clone();
                    shape[0] = 1;
                    InputTensor {
                        data: t.data[k * per..(k + 1) * per].to_vec(),
                        shape,
                        ..t.clone()
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs every sample of `inputs` (split along the batch axis when the batch is > 1) and
/// concatenates each output over samples.
pub fn run_samples(bytes: &[u8], inputs: &[InputTensor]) -> Result<Outputs, String> {
    let samples = single_samples(inputs);
    let runner = Runner::new(bytes, &samples[0])?;
    run_each(&runner, &samples, &|| false)
}

/// `inputs` as single samples when batched (`[N, …]`, `N > 1`), else as they are.
fn single_samples(inputs: &[InputTensor]) -> Vec<Vec<InputTensor>> {
    if inputs
        .first()
        .is_some_and(|t| t.shape.first().is_some_and(|&n| n > 1))
    {
        split_batch(inputs)
    } else {
        vec![inputs.to_vec()]
    }
}

/// Runs `runner` on each sample and concatenates each output over samples; gives up between
/// samples once `stop()` is true.
fn run_each(
    runner: &Runner,
    samples: &[Vec<InputTensor>],
    stop: &dyn Fn() -> bool,
) -> Result<Outputs, String> {
    let mut acc: Outputs = Vec::new();
    for s in samples {
        if stop() {
            return Err(STOPPED.into());
        }
        let out = runner.run(s)?;
        if acc.is_empty() {
            acc = out;
        } else {
            for ((_, a), (_, o)) in acc.iter_mut().zip(out) {
                a.extend(o);
            }
        }
    }
    Ok(acc)
}

/// Why a run stopped early (set on an abandoned [`Session`]).
const STOPPED: &str = "stopped";

/// `(name, values)` per output of a model, concatenated over samples.
pub type Outputs = Vec<(String, Vec<f32>)>;

/// When a [`Session`]'s caller stops waiting: a deadline (the budget) and a cancellation flag.
#[derive(Clone, Copy, Default)]
pub struct Deadline<'a> {
    /// Give up once this instant passes.
    pub deadline: Option<Instant>,
    /// The budget the deadline came from (for the report).
    pub budget: Option<Duration>,
    /// Stop as soon as this is set.
    pub cancel: Option<&'a AtomicBool>,
}

/// Why verification did not finish.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// Past the deadline; the text says what was running.
    Budget(String),
    /// The cancellation flag was set.
    Canceled,
}

impl Deadline<'_> {
    /// `Err` once canceled or past the deadline (`what` says what was running).
    pub fn check(&self, what: &str) -> Result<(), Stopped> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Stopped::Canceled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Stopped::Budget(what.to_string()));
        }
        Ok(())
    }
}

/// One model built and run by tract on a thread of its own, so that the caller can stop
/// waiting for it (see the module docs).
pub struct Session {
    done: mpsc::Receiver<Result<Outputs, String>>,
    stop: Arc<AtomicBool>,
}

impl Session {
    /// Starts building and running `bytes` on every sample of `inputs`: as a task of the
    /// compute pool (rayon's), whose threads also run the passes, so the memory one frees is
    /// reused by the other instead of each thread's allocator arena keeping its own (on a
    /// ResNet-50, 340–365 MB peak instead of 400–410 MB on a thread of its own); on a thread of
    /// its own when called from the pool (waiting there for a task queued behind us could
    /// stall).
    pub fn start(bytes: Bytes, inputs: Arc<Vec<InputTensor>>) -> Self {
        let (tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let work = move || {
            let stopped = || flag.load(Ordering::Relaxed);
            // `bytes` is released once parsed, before the caller hears back, so it gets its
            // buffer back uncopied (or, holding no other reference, has it freed early).
            let outputs = run_samples_checked(bytes, &inputs, &stopped);
            drop(inputs);
            release_free_memory();
            let _ = tx.send(outputs);
        };
        if rayon::current_thread_index().is_none() {
            rayon::spawn(work);
            return Session { done, stop };
        }
        if let Err(e) = std::thread::Builder::new()
            .name("cle-verify".into())
            .spawn(work)
        {
            let (tx, rx) = mpsc::channel();
            let _ = tx.send(Err(format!("cannot start a verification thread: {e}")));
            return Session { done: rx, stop };
        }
        Session { done, stop }
    }

    /// Waits for the outputs within `limits` (checked every 20 ms). On a stop the thread is
    /// told to end at its next step and left behind.
    pub fn wait(self, limits: &Deadline, what: &str) -> Result<Result<Outputs, String>, Stopped> {
        loop {
            if let Err(stop) = limits.check(what) {
                self.stop.store(true, Ordering::Relaxed);
                return Err(stop);
            }
            let tick = limits.deadline.map_or(Duration::from_millis(20), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20))
            });
            match self.done.recv_timeout(tick) {
                Ok(r) => return Ok(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Err("tract panicked".into()))
                }
            }
        }
    }
}

/// Hands the memory tract freed back to the system before the next model is built. glibc keeps
/// what a thread frees in that thread's arena, and the next model may be built on another pool
/// thread: without this the default run's peak on a torchvision ResNet-50 varied between 3.4×
/// and 4.7× the model (BENCHMARKS.md). No-op elsewhere.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes no pointers and only returns free pages of its
        // own arenas to the kernel; it is thread-safe (it locks each arena).
        unsafe {
            malloc_trim(0);
        }
    }
}

/// [`run_samples`] on a shared buffer that gives up between steps once `stop()` is true.
fn run_samples_checked(
    bytes: Bytes,
    inputs: &[InputTensor],
    stop: &dyn Fn() -> bool,
) -> Result<Outputs, String> {
    let samples = single_samples(inputs);
    let runner = Runner::new_checked(bytes, &samples[0], stop)?;
    run_each(&runner, &samples, stop)
}

/// Seconds tract would take just to wire a typed model of `nodes` nodes, from the quadratic
/// duplicate-name scan of `TypedModel::wire_node` (about 22 ns per pair of nodes on the
/// 2-core benchmark machine: 108 s for 100 000 nodes). Only the quadratic term: a model whose
/// estimate exceeds the budget is not started at all.
pub fn tract_build_estimate(nodes: usize) -> Duration {
    let pairs = (nodes as f64) * (nodes as f64) / 2.0;
    Duration::from_secs_f64(pairs * 2.2e-8)
}

/// Fewest removable `Identity` nodes for which [`simplified`] is worth a copy of the model.
pub const SIMPLIFY_MIN_IDENTITIES: usize = 256;

/// A copy of `model` without its `Identity` nodes, when it has at least
/// [`SIMPLIFY_MIN_IDENTITIES`] of them (else `None`): the copy verification hands to tract.
///
/// Same function: an `Identity` (default domain, one input, one output) computes `y = x`, so
/// replacing every use of `y` by `x` changes no value anywhere in the graph. A chain collapses
/// to its first input. An `Identity` whose output is a graph output stays (its name is the
/// output's), reading the start of its chain. Graphs with subgraphs (`If`, `Loop`, `Scan`),
/// which may read outer tensors by name, are left alone.
pub fn simplified(model: &ModelProto) -> Option<ModelProto> {
    let g = model.graph.as_ref()?;
    let is_identity = |n: &crate::onnx::NodeProto| {
        n.op_type() == "Identity"
            && (n.domain().is_empty() || n.domain() == "ai.onnx")
            && n.input.len() == 1
            && n.output.len() == 1
            && !n.input[0].is_empty()
            && !n.output[0].is_empty()
    };
    let has_subgraphs = g.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    });
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    let removable = g
        .node
        .iter()
        .filter(|n| is_identity(n) && !outputs.contains(n.output[0].as_str()))
        .count();
    if has_subgraphs || removable < SIMPLIFY_MIN_IDENTITIES {
        return None;
    }
    let alias: HashMap<&str, &str> = g
        .node
        .iter()
        .filter(|n| is_identity(n) && !outputs.contains(n.output[0].as_str()))
        .map(|n| (n.output[0].as_str(), n.input[0].as_str()))
        .collect();
    // The start of each chain, resolved once per tensor (a cycle of Identity nodes is no valid
    // graph: left alone).
    let mut root: HashMap<String, String> = HashMap::with_capacity(alias.len());
    for &start in alias.keys() {
        let mut path = Vec::new();
        let mut x = start;
        let end = loop {
            if let Some(r) = root.get(x) {
                break r.clone();
            }
            match alias.get(x) {
                Some(&next) if path.len() <= alias.len() => {
                    path.push(x);
                    x = next;
                }
                Some(_) => return None,
                None => break x.to_string(),
            }
        };
        for p in path {
            root.insert(p.to_string(), end.clone());
        }
    }
    let mut m = model.clone();
    let g = m.graph.as_mut()?;
    let mut kept = Vec::with_capacity(g.node.len() - removable);
    for mut n in std::mem::take(&mut g.node) {
        if is_identity(&n) && root.contains_key(n.output[0].as_str()) {
            continue;
        }
        for i in n.input.iter_mut() {
            if let Some(r) = root.get(i.as_str()) {
                *i = r.clone();
            }
        }
        kept.push(n);
    }
    g.node = kept;
    Some(m)
}

/// The rank and element type tract infers for the tensors of `model` (by ONNX tensor name), for
/// rewrites that depend on them ([`crate::graph::opset`]): with the shapes of `inputs` when
/// given; else with dynamic input dimensions left symbolic, and where that leaves a tensor
/// untold (a rule that needs a size), with every dynamic dimension 1. Tensors tract cannot tell
/// are missing (a model tract cannot parse gives an empty map).
pub fn tensor_facts(
    model: &ModelProto,
    inputs: Option<&[InputTensor]>,
) -> HashMap<String, crate::graph::opset::TensorFact> {
    if let Some(i) = inputs {
        return analysed_facts(model, i, &HashMap::new());
    }
    let Ok(specs) = input_specs(model, 1) else {
        return HashMap::new();
    };
    let mut facts = analysed_facts(model, &specs, &declared_input_dims(model));
    let untold = |f: &crate::graph::opset::TensorFact| f.rank.is_none() || f.elem_type.is_none();
    if facts.is_empty() || facts.values().any(untold) {
        for (name, f) in analysed_facts(model, &specs, &HashMap::new()) {
            let e = facts.entry(name).or_default();
            e.rank = e.rank.or(f.rank);
            e.elem_type = e.elem_type.or(f.elem_type);
        }
    }
    facts
}

/// [`tensor_facts`] for one set of input facts: `specs`' types and shapes, with the dimensions
/// `declared` leaves open (`None`) symbolic.
fn analysed_facts(
    model: &ModelProto,
    specs: &[InputTensor],
    declared: &HashMap<String, Vec<Option<i64>>>,
) -> HashMap<String, crate::graph::opset::TensorFact> {
    let analysed = guarded(|| {
        let bytes = model.encode_to_vec();
        let mut m = parse(&bytes)?;
        for (k, t) in specs.iter().enumerate() {
            let dt = to_tract(&InputTensor {
                data: vec![0.0],
                shape: vec![1],
                ..t.clone()
            })?
            .datum_type();
            let dims: Vec<TDim> = match declared.get(&t.name) {
                Some(d) if d.len() == t.shape.len() => d
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Some(n) => TDim::from(*n),
                        None => m.symbols.sym(&format!("onnx_cle_d{k}_{i}")).into(),
                    })
                    .collect(),
                _ => t.shape.iter().map(|&n| TDim::from(n as i64)).collect(),
            };
            m = m.with_input_fact(k, InferenceFact::dt_shape(dt, dims))?;
        }
        // Obstinate: a rule that cannot hold for symbolic sizes does not stop the others.
        let _ = m.analyse(true);
        Ok(m)
    });
    let Ok(m) = analysed else {
        return HashMap::new();
    };
    let mut facts = HashMap::new();
    for node in m.nodes() {
        for k in 0..node.outputs.len() {
            let outlet = OutletId::new(node.id, k);
            let (Some(label), Ok(fact)) = (m.outlet_label(outlet), m.outlet_fact(outlet)) else {
                continue;
            };
            let rank = fact
                .shape
                .rank()
                .concretize()
                .and_then(|r| usize::try_from(r).ok());
            let elem_type = fact.datum_type.concretize().and_then(onnx_type_of);
            facts.insert(
                label.to_string(),
                crate::graph::opset::TensorFact { rank, elem_type },
            );
        }
    }
    facts
}

/// The declared dimensions of the graph inputs (`None` where dynamic).
fn declared_input_dims(model: &ModelProto) -> HashMap<String, Vec<Option<i64>>> {
    model
        .graph
        .iter()
        .flat_map(|g| &g.input)
        .filter_map(|v| Some((v.name().to_string(), crate::onnx::declared_dims(v)?)))
        .collect()
}

/// The ONNX element type code of a tract datum type (the common ones).
fn onnx_type_of(dt: DatumType) -> Option<i32> {
    let t = match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F16 => DataType::Float16,
        DatumType::F64 => DataType::Double,
        DatumType::I64 => DataType::Int64,
        DatumType::I32 => DataType::Int32,
        DatumType::I8 => DataType::Int8,
        DatumType::U8 => DataType::Uint8,
        DatumType::Bool => DataType::Bool,
        _ => return None,
    };
    Some(t as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, ModelBuilder};

    fn one_relu(batch: Dim) -> ModelProto {
        let mut b = ModelBuilder::new(13);
        let x = b.input("x", &[batch, Dim::Fixed(3), Dim::Fixed(2)]);
        let y = b.relu("r", &x);
        b.output(&y);
        b.build()
    }

    #[test]
    fn samples_stack_on_a_dynamic_batch_only() {
        let none = BTreeMap::new();
        let model = one_relu(Dim::Symbolic("N".into()));
        let mut specs = input_specs_shaped(&model, 1, &none).unwrap();
        assert_eq!(stack_samples(&model, &mut specs, 4), 4);
        assert_eq!(
            (specs[0].shape.clone(), specs[0].data.len()),
            (vec![4, 3, 2], 24)
        );
        let fixed = one_relu(Dim::Fixed(1));
        let mut specs = input_specs_shaped(&fixed, 1, &none).unwrap();
        assert_eq!(stack_samples(&fixed, &mut specs, 4), 1);
        assert_eq!(specs[0].shape, vec![1, 3, 2]);
        // A batch the caller already chose is kept.
        let shapes = BTreeMap::from([("x".to_string(), vec![2, 3, 2])]);
        let mut specs = input_specs_shaped(&model, 1, &shapes).unwrap();
        assert_eq!(stack_samples(&model, &mut specs, 4), 1);
    }
}
