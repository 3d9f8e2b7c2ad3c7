//! The job registry and queue: the in-memory view of every job, written through to the
//! [`JobStore`] before anything is acknowledged.
//!
//! Invariants:
//! - the store is written before the memory view changes and before a client hears of it; a
//!   state a client has seen survives a crash (progress stages excepted: they are memory-only);
//! - the queue holds the `queued` jobs in id (= submission) order; at most `queue_size` jobs are
//!   queued, beyond that submissions get 429;
//! - a job moves `queued → running → succeeded | failed | canceled`, or `queued → canceled`;
//!   the only way back is `running → queued`, when a run is interrupted by shutdown or a crash
//!   (recovered at start; after [`MAX_ATTEMPTS`] interrupted runs the job fails instead of
//!   looping on a model that kills the process);
//! - the input blob is committed before the job record exists, so every record has its upload;
//!   blobs without a record (a crash in between) are removed at start.
//!
//! Blocking: every method that writes goes through the store (fsync) and must be called from a
//! blocking context (worker threads or `spawn_blocking`). Readers (`get`, `list`) only lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::watch;

use super::job::{now_ms, InputInfo, JobId, JobRecord, JobResult, JobState};
use super::metrics::Metrics;
use super::problem::{ApiError, Problem};
use super::store::{BlobStore, IdempotencyRecord, JobStore};
use crate::Options;

/// Interrupted runs after which a job fails with `job_crashed` instead of running again.
pub const MAX_ATTEMPTS: u32 = 3;

/// Seconds clients are told to wait before asking again.
pub const RETRY_AFTER_SECS: u64 = 2;

/// Seconds a client is told to wait when the queue is full.
pub const QUEUE_FULL_RETRY_SECS: u64 = 10;

/// A job about to be queued.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Id chosen before the upload (the input blob is stored under it).
    pub id: JobId,
    /// Client label.
    pub name: Option<String>,
    /// Normalized options.
    pub options: Options,
    /// The stored upload.
    pub input: InputInfo,
    /// Request fingerprint.
    pub fingerprint: String,
}

/// A job handed to a worker.
#[derive(Debug)]
pub struct Claim {
    /// The job.
    pub id: JobId,
    /// Its options.
    pub options: Options,
    /// Set to stop the run at its next check (see [`crate::Control::cancel`]).
    pub cancel: Arc<AtomicBool>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Results stored.
    Succeeded(JobResult),
    /// The run failed.
    Failed(Problem),
    /// The run observed its cancel flag.
    Canceled,
}

struct Running {
    cancel: Arc<AtomicBool>,
    by_user: bool,
    timed_out: bool,
    started: std::time::Instant,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<JobId, JobRecord>,
    queue: VecDeque<JobId>,
    running: HashMap<JobId, Running>,
    keys: HashMap<String, IdempotencyRecord>,
    keys_in_flight: HashSet<String>,
    stopping: bool,
    draining: bool,
}

impl Inner {
    fn queued(&self) -> usize {
        self.queue
            .iter()
            .filter(|id| {
                self.jobs
                    .get(*id)
                    .is_some_and(|j| j.state == JobState::Queued)
            })
            .count()
    }
}

/// What recovery found at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Jobs loaded.
    pub loaded: usize,
    /// Jobs that were running and go back to the queue.
    pub requeued: usize,
    /// Jobs failed because they were interrupted too often or lost their upload.
    pub failed: usize,
    /// Records that could not be read (left on disk, ignored).
    pub unreadable: Vec<String>,
    /// Orphan blob folders removed.
    pub orphans: usize,
}

/// The job registry, queue and idempotency keys.
pub struct Jobs {
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    inner: Mutex<Inner>,
    work: Condvar,
    changed: watch::Sender<u64>,
    queue_size: usize,
    retention: Duration,
    max_job_time: Duration,
    metrics: Arc<Metrics>,
}

fn io_err(e: io::Error) -> ApiError {
    ApiError::internal(format!("job store: {e}"))
}

impl Jobs {
    /// Loads every job, puts interrupted runs back in the queue and removes orphan blobs.
    pub fn open(
        store: Arc<dyn JobStore>,
        blobs: Arc<dyn BlobStore>,
        queue_size: usize,
        retention: Duration,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Jobs, Recovery)> {
        let (records, unreadable) = store.load_all()?;
        let mut rec = Recovery {
            loaded: records.len(),
            unreadable: unreadable.iter().map(|u| u.reason.clone()).collect(),
            ..Recovery::default()
        };
        let keep: HashSet<JobId> = unreadable.into_iter().filter_map(|u| u.id).collect();
        let mut inner = Inner::default();
        for mut job in records {
            if job.state == JobState::Running {
                job.stage = None;
                if job.attempts >= MAX_ATTEMPTS {
                    job.state = JobState::Failed;
                    job.finished_ms = Some(now_ms());
                    job.error = Some(
                        Problem::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "job_crashed",
                            format!("the job was interrupted {} times; giving up", job.attempts),
                        )
                        .with_job(&job.id),
                    );
                    rec.failed += 1;
                } else {
                    job.state = JobState::Queued;
                    rec.requeued += 1;
                }
                store.save(&job)?;
            }
            if job.state == JobState::Queued
                && blobs.open(&job.id, super::store::BlobKind::Input).is_err()
            {
                job.state = JobState::Failed;
                job.finished_ms = Some(now_ms());
                job.error = Some(
                    Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "input_missing",
                        "the uploaded model is missing from storage",
                    )
                    .with_job(&job.id),
                );
                store.save(&job)?;
                rec.failed += 1;
            }
            inner.jobs.insert(job.id.clone(), job);
        }
        inner.queue = inner
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| j.id.clone())
            .collect();
        for id in blobs.jobs()? {
            if !inner.jobs.contains_key(&id) && !keep.contains(&id) {
                blobs.delete(&id)?;
                rec.orphans += 1;
            }
        }
        for k in store.load_keys()? {
            inner.keys.insert(k.key_sha256.clone(), k);
        }
        let jobs = Jobs {
            store,
            blobs,
            inner: Mutex::new(inner),
            work: Condvar::new(),
            changed: watch::channel(0).0,
            queue_size,
            retention,
            max_job_time: Duration::ZERO,
            metrics,
        };
        Ok((jobs, rec))
    }

    /// Sets the longest a run may take before [`Jobs::enforce_deadlines`] cancels it (zero:
    /// no limit).
    pub fn with_max_job_time(mut self, max: Duration) -> Self {
        self.max_job_time = max;
        self
    }

    /// Cancels every run older than the maximum job time; such a run ends as a failed job with
    /// a `job_timeout` problem. Returns how many runs were told to stop.
    pub fn enforce_deadlines(&self) -> usize {
        if self.max_job_time.is_zero() {
            return 0;
        }
        let mut g = self.lock();
        let mut n = 0;
        for r in g.running.values_mut() {
            if !r.timed_out && !r.by_user && r.started.elapsed() > self.max_job_time {
                r.timed_out = true;
                r.cancel.store(true, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The blob store holding the jobs' files.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The metrics this registry updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A receiver that changes whenever any job does (for long-polls).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A job's current record.
    pub fn get(&self, id: &JobId) -> Option<JobRecord> {
        self.lock().jobs.get(id).cloned()
    }

    /// Number of queued and of running jobs.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.queued(), g.running.len())
    }

    /// The 429 problem when the queue is full.
    pub fn check_room(&self) -> Result<(), ApiError> {
        let g = self.lock();
        self.room(&g)
    }

    fn room(&self, g: &Inner) -> Result<(), ApiError> {
        if g.draining {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the service is shutting down; retry shortly",
            )
            .retry_after(QUEUE_FULL_RETRY_SECS));
        }
        if g.queued() >= self.queue_size {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("{} jobs are already waiting; retry later", self.queue_size),
            )
            .retry_after(QUEUE_FULL_RETRY_SECS));
        }
        Ok(())
    }

    /// Marks an idempotency key as in use by a request; 409 when another request holds it.
    pub fn begin_key(self: &Arc<Self>, key_sha256: String) -> Result<KeyGuard, ApiError> {
        let mut g = self.lock();
        if !g.keys_in_flight.insert(key_sha256.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being processed; retry",
            )
            .retry_after(1));
        }
        Ok(KeyGuard {
            jobs: Arc::clone(self),
            key: key_sha256,
        })
    }

    /// The job an idempotency key already produced, if any; 422 when the key was used for a
    /// different request.
    pub fn replay(
        &self,
        key_sha256: &str,
        fingerprint: &str,
    ) -> Result<Option<JobRecord>, ApiError> {
        let g = self.lock();
        let Some(k) = g.keys.get(key_sha256) else {
            return Ok(None);
        };
        let Some(job) = g.jobs.get(&k.job_id) else {
            return Ok(None);
        };
        if k.fingerprint != fingerprint {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different model or options",
            )
            .job(job.id.as_str()));
        }
        Ok(Some(job.clone()))
    }

    /// Queues a job whose input blob is stored. On error the caller removes the blob.
    pub fn submit(&self, new: NewJob, key_sha256: Option<String>) -> Result<JobRecord, ApiError> {
        let mut g = self.lock();
        self.room(&g)?;
        let job = JobRecord {
            id: new.id,
            name: new.name,
            state: JobState::Queued,
            stage: None,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            options: new.options,
            input: new.input,
            fingerprint: new.fingerprint,
            result: None,
            error: None,
            attempts: 0,
        };
        // The key first: a key whose job record never got written is ignored on replay,
        // while a job record whose upload the caller deletes on error would be a broken job.
        if let Some(key) = key_sha256 {
            let rec = IdempotencyRecord {
                key_sha256: key,
                fingerprint: job.fingerprint.clone(),
                job_id: job.id.clone(),
                created_ms: job.created_ms,
            };
            self.store.save_key(&rec).map_err(io_err)?;
            g.keys.insert(rec.key_sha256.clone(), rec);
        }
        self.store.save(&job).map_err(io_err)?;
        g.jobs.insert(job.id.clone(), job.clone());
        g.queue.push_back(job.id.clone());
        drop(g);
        self.work.notify_one();
        self.notify();
        Ok(job)
    }

    /// Blocks until a queued job is available and marks it running; `None` once stopping.
    pub fn claim(&self) -> Option<Claim> {
        let mut g = self.lock();
        loop {
            if g.stopping {
                return None;
            }
            while let Some(id) = g.queue.pop_front() {
                let Some(job) = g.jobs.get_mut(&id) else {
                    continue;
                };
                if job.state != JobState::Queued {
                    continue;
                }
                job.state = JobState::Running;
                job.started_ms = Some(now_ms());
                job.stage = None;
                job.attempts += 1;
                let snapshot = job.clone();
                if let Err(e) = self.store.save(&snapshot) {
                    tracing::error!(job = %id, "could not persist the running state: {e}");
                }
                let cancel = Arc::new(AtomicBool::new(false));
                g.running.insert(
                    id.clone(),
                    Running {
                        cancel: Arc::clone(&cancel),
                        by_user: false,
                        timed_out: false,
                        started: std::time::Instant::now(),
                    },
                );
                drop(g);
                self.notify();
                return Some(Claim {
                    id,
                    options: snapshot.options,
                    cancel,
                });
            }
            g = self.work.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Records the stage a running job entered (memory only).
    pub fn set_stage(&self, id: &JobId, stage: &str) {
        let mut g = self.lock();
        if let Some(job) = g.jobs.get_mut(id) {
            if job.state == JobState::Running {
                job.stage = Some(stage.to_string());
            }
        }
        drop(g);
        self.notify();
    }

    /// Ends a run. A cancellation not asked for by a client (shutdown) puts the job back in
    /// the queue state, to run again after restart.
    pub fn finish(&self, id: &JobId, outcome: Outcome) {
        let mut g = self.lock();
        let run = g.running.remove(id);
        let by_user = run.as_ref().is_some_and(|r| r.by_user);
        let timed_out = run.as_ref().is_some_and(|r| r.timed_out);
        let seconds = run.map_or(0.0, |r| r.started.elapsed().as_secs_f64());
        let Some(job) = g.jobs.get_mut(id) else {
            return;
        };
        job.stage = None;
        let code = match outcome {
            Outcome::Succeeded(result) => {
                job.state = JobState::Succeeded;
                job.result = Some(result);
                job.error = None;
                String::new()
            }
            Outcome::Failed(p) => {
                job.state = JobState::Failed;
                let code = p.code.clone();
                job.error = Some(p.with_job(id));
                code
            }
            Outcome::Canceled if timed_out && !by_user => {
                job.state = JobState::Failed;
                let p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "job_timeout",
                    format!(
                        "the job ran longer than this server's limit of {}s and was canceled",
                        self.max_job_time.as_secs_f64()
                    ),
                );
                job.error = Some(p.with_job(id));
                "job_timeout".to_string()
            }
            Outcome::Canceled if by_user => {
                job.state = JobState::Canceled;
                job.error = Some(canceled_problem(id));
                "canceled".to_string()
            }
            Outcome::Canceled => {
                job.state = JobState::Queued;
                job.started_ms = None;
                "interrupted".to_string()
            }
        };
        if job.state.is_terminal() {
            job.finished_ms = Some(now_ms());
        }
        let state = if job.state == JobState::Queued {
            "requeued"
        } else {
            job.state.as_str()
        };
        let snapshot = job.clone();
        if let Err(e) = self.store.save(&snapshot) {
            tracing::error!(job = %id, "could not persist the final state: {e}");
        }
        if snapshot.state == JobState::Queued && !g.stopping {
            g.queue.push_front(id.clone());
            self.work.notify_one();
        }
        drop(g);
        self.metrics.finished(state, &code, seconds);
        self.notify();
    }

    /// Cancels a job: a queued one at once, a running one at its next check (stage boundary,
    /// simulation run, or the end of the run).
    pub fn cancel(&self, id: &JobId) -> Result<JobRecord, ApiError> {
        let mut guard = self.lock();
        let g = &mut *guard;
        let job = g
            .jobs
            .get_mut(id)
            .ok_or_else(|| ApiError::job_not_found(id.as_str()))?;
        match job.state {
            JobState::Queued => {
                let mut next = job.clone();
                next.state = JobState::Canceled;
                next.finished_ms = Some(now_ms());
                next.error = Some(canceled_problem(id));
                self.store.save(&next).map_err(io_err)?;
                *job = next.clone();
                drop(guard);
                self.metrics.finished("canceled", "canceled", 0.0);
                self.notify();
                Ok(next)
            }
            JobState::Running => {
                if let Some(r) = g.running.get_mut(id) {
                    r.by_user = true;
                    r.cancel.store(true, Ordering::Relaxed);
                }
                Ok(job.clone())
            }
            JobState::Canceled => Ok(job.clone()),
            state @ (JobState::Succeeded | JobState::Failed) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("the job already {}", state.as_str()),
            )
            .job(id.as_str())),
        }
    }

    /// Deletes a finished or queued job and its files; 409 while it runs.
    pub fn delete(&self, id: &JobId) -> Result<(), ApiError> {
        let mut g = self.lock();
        let job = g
            .jobs
            .get(id)
            .ok_or_else(|| ApiError::job_not_found(id.as_str()))?;
        if job.state == JobState::Running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_running",
                "the job is running; cancel it first",
            )
            .job(id.as_str()));
        }
        self.store.remove(id).map_err(io_err)?;
        g.jobs.remove(id);
        drop(g);
        if let Err(e) = self.blobs.delete(id) {
            tracing::warn!(job = %id, "could not delete the job's files: {e}");
        }
        self.notify();
        Ok(())
    }

    /// One page of jobs, newest first, optionally filtered by state.
    pub fn list(
        &self,
        page_size: usize,
        after: Option<&JobId>,
        state: Option<JobState>,
    ) -> (Vec<JobRecord>, Option<JobId>) {
        let g = self.lock();
        let iter: Box<dyn Iterator<Item = &JobRecord>> = match after {
            Some(a) => Box::new(g.jobs.range(..a.clone()).rev().map(|(_, j)| j)),
            None => Box::new(g.jobs.values().rev()),
        };
        let mut page: Vec<JobRecord> = iter
            .filter(|j| state.is_none_or(|s| j.state == s))
            .take(page_size + 1)
            .cloned()
            .collect();
        let next = if page.len() > page_size {
            page.truncate(page_size);
            page.last().map(|j| j.id.clone())
        } else {
            None
        };
        (page, next)
    }

    /// Removes finished jobs (and their files) older than the retention, and old idempotency
    /// keys. Returns how many jobs were removed. A zero retention keeps everything.
    pub fn expire(&self, now_ms: u64) -> usize {
        if self.retention.is_zero() {
            return 0;
        }
        let horizon = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let (old, keys): (Vec<JobId>, Vec<String>) = {
            let g = self.lock();
            (
                g.jobs
                    .values()
                    .filter(|j| j.state.is_terminal() && j.finished_ms.is_some_and(|f| f < horizon))
                    .map(|j| j.id.clone())
                    .collect(),
                g.keys
                    .values()
                    .filter(|k| k.created_ms < horizon)
                    .map(|k| k.key_sha256.clone())
                    .collect(),
            )
        };
        let mut removed = 0;
        for id in old {
            match self.delete(&id) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(job = %id, "expiry: {}", e.problem().code),
            }
        }
        for k in keys {
            if self.store.remove_key(&k).is_ok() {
                self.lock().keys.remove(&k);
            }
        }
        removed
    }

    /// Readiness: not draining and both stores writable.
    pub fn ready(&self) -> Result<(), String> {
        if self.lock().draining {
            return Err("draining".into());
        }
        self.store.check().map_err(|e| format!("job store: {e}"))?;
        self.blobs.check().map_err(|e| format!("blob store: {e}"))
    }

    /// Starts draining: readiness fails and submissions get 503.
    pub fn drain(&self) {
        self.lock().draining = true;
        self.notify();
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Workers stop taking jobs (running ones go on).
    pub fn stop_claiming(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
    }

    /// Asks every running job to stop; they go back to the queue state.
    pub fn interrupt_running(&self) {
        for r in self.lock().running.values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }
}

fn canceled_problem(id: &JobId) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "canceled",
        "the job was canceled on request",
    )
    .with_job(id)
}

impl Problem {
    fn with_job(mut self, id: &JobId) -> Self {
        self.job_id = Some(id.to_string());
        self
    }
}

/// Holds an idempotency key for the duration of one request.
pub struct KeyGuard {
    jobs: Arc<Jobs>,
    key: String,
}

impl KeyGuard {
    /// The sha256 of the key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.jobs.lock().keys_in_flight.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::{fs, BlobKind};

    #[test]
    fn recovery_requeues_interrupted_runs_and_gives_up_after_max_attempts() {
        let dir =
            std::env::temp_dir().join(format!("onnx-cle-jobs-{}", uuid::Uuid::new_v4().simple()));
        let (js, bs) = fs::open(&dir).unwrap();
        let (js, bs): (Arc<dyn JobStore>, Arc<dyn BlobStore>) = (Arc::new(js), Arc::new(bs));
        let record = |attempts| {
            let id = JobId::generate();
            bs.put(&id, BlobKind::Input, b"model").unwrap();
            let rec = JobRecord {
                id,
                name: None,
                state: JobState::Running,
                stage: Some("cls".into()),
                created_ms: 1,
                started_ms: Some(2),
                finished_ms: None,
                options: Options::default(),
                input: InputInfo {
                    bytes: 5,
                    sha256: String::new(),
                    filename: None,
                },
                fingerprint: String::new(),
                result: None,
                error: None,
                attempts,
            };
            js.save(&rec).unwrap();
            rec.id
        };
        let again = record(1);
        let poison = record(MAX_ATTEMPTS);
        let orphan = JobId::generate();
        bs.put(&orphan, BlobKind::Input, b"x").unwrap();
        let metrics = Arc::new(Metrics::default());
        let (jobs, rec) =
            Jobs::open(Arc::clone(&js), Arc::clone(&bs), 4, Duration::ZERO, metrics).unwrap();
        assert_eq!(
            (rec.loaded, rec.requeued, rec.failed, rec.orphans),
            (2, 1, 1, 1)
        );
        assert_eq!(jobs.get(&again).unwrap().state, JobState::Queued);
        let failed = jobs.get(&poison).unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.error.unwrap().code, "job_crashed");
        assert_eq!(jobs.counts(), (1, 0));
        let claim = jobs.claim().unwrap();
        assert_eq!(claim.id, again);
        assert_eq!(jobs.get(&again).unwrap().attempts, 2);
        let (reloaded, _) = js.load_all().unwrap();
        assert!(reloaded
            .iter()
            .any(|j| j.id == again && j.state == JobState::Running));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn expiry_removes_old_finished_jobs_with_their_files_and_keys() {
        let dir =
            std::env::temp_dir().join(format!("onnx-cle-expire-{}", uuid::Uuid::new_v4().simple()));
        let (js, bs) = fs::open(&dir).unwrap();
        let (js, bs): (Arc<dyn JobStore>, Arc<dyn BlobStore>) = (Arc::new(js), Arc::new(bs));
        let metrics = Arc::new(Metrics::default());
        let retention = Duration::from_secs(60);
        let (jobs, _) =
            Jobs::open(Arc::clone(&js), Arc::clone(&bs), 4, retention, metrics).unwrap();
        let mut ids = Vec::new();
        for i in 0..2 {
            let id = JobId::generate();
            bs.put(&id, BlobKind::Input, b"model").unwrap();
            let new = NewJob {
                id: id.clone(),
                name: None,
                options: Options::default(),
                input: InputInfo {
                    bytes: 5,
                    sha256: String::new(),
                    filename: None,
                },
                fingerprint: "f".into(),
            };
            jobs.submit(new, Some(format!("{i:064x}"))).unwrap();
            ids.push(id);
        }
        let (old, queued) = (&ids[0], &ids[1]);
        jobs.cancel(old).unwrap();
        let finished = jobs.get(old).unwrap().finished_ms.unwrap();
        assert_eq!(
            jobs.expire(finished + 59_000),
            0,
            "still within the retention"
        );
        assert_eq!(jobs.expire(finished + 121_000), 1);
        assert!(jobs.get(old).is_none());
        assert!(bs.open(old, BlobKind::Input).is_err(), "files removed");
        assert!(jobs.get(queued).is_some(), "unfinished jobs never expire");
        assert!(
            js.load_keys().unwrap().is_empty(),
            "old idempotency keys removed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
