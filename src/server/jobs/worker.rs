//! The bounded worker pool: `workers` dedicated OS threads take jobs from the queue and run the
//! core on them, never on the async runtime.
//!
//! Each run maps the stored upload (or reads it into [`Bytes`] where the blob store is not
//! local files), decodes it and calls [`crate::run_streamed`], the same entry point as
//! `onnx-cle equalize`, so a job's model is byte for byte the CLI's; the model is streamed into
//! the blob store from the decoded model (untouched tensors straight from the upload's map). A
//! panic inside a run is caught and becomes a failed job (`internal_error`); the thread keeps
//! serving. Cancellation is cooperative through [`crate::Control::cancel`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Claim, Jobs, Outcome};
use crate::onnx::limits::Limits;
use crate::server::job::{ArtifactInfo, JobId, JobResult};
use crate::server::problem::Problem;
use crate::server::store::{is_unavailable, BlobKind};
use crate::{Control, CoreError, Options, Streamed};

/// What a worker runs on an upload: the core by default ([`run_core`]), a stand-in in tests.
pub type Engine = dyn Fn(Bytes, &Options, &AtomicBool, &(dyn Fn(&str) + Sync)) -> crate::Result<Streamed>
    + Send
    + Sync;

/// Decodes the upload and runs the core, exactly as the CLI does, within the default
/// [`Limits`].
pub fn run_core(
    input: Bytes,
    options: &Options,
    cancel: &AtomicBool,
    progress: &(dyn Fn(&str) + Sync),
) -> crate::Result<Streamed> {
    run_core_within(input, options, &Limits::default(), cancel, progress)
}

/// [`run_core`] within `limits`: the upload is scanned before it is decoded (see
/// [`crate::onnx::limits::decode`]), so a hostile model never gets to allocate.
pub fn run_core_within(
    input: Bytes,
    options: &Options,
    limits: &Limits,
    cancel: &AtomicBool,
    progress: &(dyn Fn(&str) + Sync),
) -> crate::Result<Streamed> {
    let mut model = crate::onnx::scan::decode_within(input.clone(), limits)?;
    crate::onnx::resolve_external_data(&mut model, None)?;
    let ctl = Control {
        progress: Some(progress),
        cancel: Some(cancel),
    };
    crate::run_streamed(model, Some(input), options, None, ctl, None)
}

/// The running worker threads.
pub struct Pool {
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` workers at niceness `nice` ([`lower_priority`]).
    pub fn start(
        jobs: Arc<Jobs>,
        engine: Arc<Engine>,
        n: usize,
        nice: u8,
    ) -> std::io::Result<Pool> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let jobs = Arc::clone(&jobs);
            let engine = Arc::clone(&engine);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cle-worker-{i}"))
                    .spawn(move || {
                        lower_priority(nice);
                        while let Some(claim) = jobs.claim() {
                            process(&jobs, engine.as_ref(), claim);
                        }
                    })?,
            );
        }
        Ok(Pool { threads })
    }

    /// Whether every worker thread has exited.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits for the workers to exit (after [`Jobs::stop_claiming`]).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Lowers the calling thread's scheduling priority to niceness `nice` (Linux keeps a nice value
/// per thread; threads it spawns inherit it). Jobs are CPU-bound and the runtime answering
/// status requests is not: at nice 10 a job thread weighs about a tenth of a runtime thread, so
/// a status request waits for a CPU microseconds instead of a scheduler slice. Raising one's own
/// niceness needs no privilege; a failure is logged and ignored.
pub fn lower_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), i32::from(nice)) {
            tracing::warn!("cannot lower the job threads' priority: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Builds the global rayon pool (the core's data-parallel work) with its threads at niceness
/// `nice`, like the workers that use it. Returns `false` when the pool already existed.
pub fn init_compute_pool(nice: u8) -> bool {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("cle-compute-{i}"))
        .start_handler(move |_| lower_priority(nice))
        .build_global()
        .is_ok()
}

/// Whether the run's int8 outputs passed their self-check (true when it wrote none).
fn int8_trusted(report: &crate::Report) -> bool {
    report.int8.as_ref().is_none_or(|t| t.trusted)
}

fn internal(detail: &str) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", detail)
}

/// Calls `op` until it succeeds, while its errors mean "the store is unreachable" and for at
/// most `patience` (backing off up to 2 s); other errors end at once.
fn with_retries<T>(
    jobs: &Jobs,
    id: &JobId,
    run: &str,
    what: &str,
    patience: Duration,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let give_up = Instant::now() + patience;
    let mut pause = Duration::from_millis(200);
    loop {
        match op() {
            Err(e)
                if is_unavailable(&e)
                    && Instant::now() + pause < give_up
                    && jobs.holds_run(run) =>
            {
                tracing::warn!(job = %id, "{what}: {e}; retrying");
                jobs.metrics().store_error("blobs");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

fn process(jobs: &Jobs, engine: &Engine, claim: Claim) {
    let id = claim.id.clone();
    tracing::info!(job = %id, "run started");
    let patience = jobs.lease().max(Duration::from_secs(30));
    let run = claim.run.clone();
    let input = match with_retries(
        jobs,
        &id,
        &run,
        "reading the upload",
        patience,
        || match jobs.blobs().map(&id, BlobKind::Input)? {
            Some(mapped) => Ok(mapped),
            None => jobs.blobs().read(&id, BlobKind::Input).map(Bytes::from),
        },
    ) {
        Ok(data) => data,
        Err(e) if is_unavailable(&e) => {
            tracing::warn!(job = %id, "cannot read the upload: {e}; the job goes back to the queue");
            jobs.finish_run(&run, Outcome::Requeue);
            return;
        }
        Err(e) => {
            tracing::error!(job = %id, "cannot read the upload: {e}");
            jobs.finish_run(
                &run,
                Outcome::Failed(internal("the uploaded model could not be read")),
            );
            return;
        }
    };
    let progress = |stage: &str| jobs.set_run_stage(&run, stage);
    let ran = catch_unwind(AssertUnwindSafe(|| {
        engine(input, &claim.options, &claim.cancel, &progress)
    }));
    let outcome = match ran {
        Ok(Ok(_)) if !jobs.holds_run(&run) => Outcome::Canceled,
        Ok(Ok(out)) => match with_retries(jobs, &id, &run, "storing the results", patience, || {
            store_results(jobs, &claim, &out)
        }) {
            Ok(_) if claim.options.strict_int8 && !int8_trusted(&out.report) => {
                Outcome::Failed(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "int8_not_trusted",
                    format!(
                        "strict_int8: {}",
                        out.report
                            .int8
                            .as_ref()
                            .map(|t| t.problems.join("; "))
                            .unwrap_or_default()
                    ),
                ))
            }
            Ok(result) => Outcome::Succeeded(result),
            Err(e) if is_unavailable(&e) => {
                tracing::warn!(job = %id, "cannot store the results: {e}; the job goes back to the queue");
                Outcome::Requeue
            }
            Err(e) => {
                tracing::error!(job = %id, "cannot store the results: {e}");
                Outcome::Failed(internal("the results could not be stored"))
            }
        },
        Ok(Err(CoreError::Canceled)) => Outcome::Canceled,
        Ok(Err(e)) => {
            if matches!(e, CoreError::Io { .. }) {
                tracing::error!(job = %id, "{e}");
            }
            Outcome::Failed(Problem::from_core(&e))
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(job = %id, "the run panicked: {msg}");
            Outcome::Failed(internal("internal error while running the job"))
        }
    };
    tracing::info!(job = %id, outcome = outcome_name(&outcome), "run ended");
    jobs.finish_run(&run, outcome);
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded(_) => "succeeded",
        Outcome::Failed(_) => "failed",
        Outcome::Canceled => "canceled",
        Outcome::Requeue => "requeued",
    }
}

fn store_results(jobs: &Jobs, claim: &Claim, out: &Streamed) -> std::io::Result<JobResult> {
    let report = serde_json::to_vec_pretty(&out.report).map_err(std::io::Error::other)?;
    jobs.blobs().put(&claim.id, BlobKind::Report, &report)?;
    let model = out
        .model
        .stream()
        .ok_or_else(|| std::io::Error::other("the run wrote its model elsewhere"))?;
    let mut sink = jobs.blobs().create(&claim.id, BlobKind::Model)?;
    model.write_to(&mut sink)?;
    sink.commit()?;
    let mut model_sha256 = Sha256::new();
    model.for_each_slice(|s| {
        model_sha256.update(s);
        Ok(())
    })?;
    let mut artifacts = Vec::new();
    let deploy = out.deploy.iter().map(|d| (crate::ArtifactKind::Deploy, d));
    for (kind, data) in deploy.chain(out.artifacts.iter().map(|a| (a.kind, &a.data))) {
        jobs.blobs()
            .put(&claim.id, BlobKind::Artifact(kind), data)?;
        artifacts.push(ArtifactInfo {
            name: kind.name().to_string(),
            bytes: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            media_type: kind.media_type().to_string(),
        });
    }
    Ok(JobResult {
        model_bytes: model.len(),
        model_sha256: hex::encode(model_sha256.finalize()),
        function_changed: out.report.function_changed,
        verification: out.report.verification.status,
        max_rel_l2: out.report.verification.max_rel_l2,
        int8_trusted: out.report.int8.as_ref().map(|t| t.trusted),
        int8_problems: out
            .report
            .int8
            .as_ref()
            .map(|t| t.problems.clone())
            .unwrap_or_default(),
        artifacts,
        qdq_coverage: out.report.exports.as_ref().map(|e| e.coverage.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::job::JobState;
    use crate::server::jobs::tests::{open, queue, temp_stores};

    fn echo_or_panic(
        input: Bytes,
        _: &Options,
        _: &AtomicBool,
        _: &(dyn Fn(&str) + Sync),
    ) -> crate::Result<Streamed> {
        if &input[..] == b"panic" {
            panic!("engine exploded");
        }
        Ok(crate::Output {
            model: input.to_vec(),
            report: crate::Report::default(),
            ..Default::default()
        }
        .into())
    }

    #[test]
    fn a_panicking_run_fails_its_job_and_the_pool_keeps_working() {
        let (dir, js, bs) = temp_stores("pool");
        let jobs = Arc::new(open(&js, &bs, 8, Duration::ZERO).0);
        let ids: Vec<JobId> = [&b"panic"[..], b"fine", b"panic", b"also fine"]
            .into_iter()
            .map(|data| queue(&jobs, data, None))
            .collect();
        let pool = Pool::start(Arc::clone(&jobs), Arc::new(echo_or_panic), 1, 0).unwrap();
        let t = Instant::now();
        while !ids
            .iter()
            .all(|id| jobs.get(id).unwrap().state.is_terminal())
        {
            assert!(t.elapsed() < Duration::from_secs(20), "jobs did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
        for (i, id) in ids.iter().enumerate() {
            let job = jobs.get(id).unwrap();
            if i % 2 == 0 {
                assert_eq!(job.state, JobState::Failed);
                let e = job.error.unwrap();
                assert_eq!((e.code.as_str(), e.status), ("internal_error", 500));
                assert!(
                    !e.detail.unwrap_or_default().contains("exploded"),
                    "no internals leak"
                );
            } else {
                assert_eq!(job.state, JobState::Succeeded);
                let model = jobs.blobs().read(id, BlobKind::Model).unwrap();
                assert_eq!(
                    job.result.unwrap().model_sha256,
                    hex::encode(Sha256::digest(&model))
                );
            }
        }
        jobs.stop_claiming();
        pool.join();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
