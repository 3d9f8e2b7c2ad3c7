//! The job registry of one replica: the [`JobStore`] (records, keys, the queue) plus what only
//! this process knows: the runs it holds (their cancel flags, deadlines and leases), the
//! idempotency keys its requests are using, and whether it is draining.
//!
//! Invariants:
//! - the store is written before a client hears of a change; a state a client has seen survives
//!   a crash of any replica (progress stages excepted on the filesystem store: memory-only);
//! - a job moves `queued → running → succeeded | failed | canceled`, or `queued → canceled`;
//!   the only way back is `running → queued`, when a run is interrupted (shutdown, storage
//!   trouble, a crash, or a lease that ran out on a shared store); after [`MAX_ATTEMPTS`]
//!   interrupted runs the job fails instead of looping on a model that kills the process;
//! - every run ends with a fenced [`JobStore::finish`]: a run whose lease was lost (another
//!   replica took the job over) writes nothing, so a finished job is never overwritten;
//! - at most `queue_size` jobs are queued (across all replicas); beyond that submissions get 429;
//! - the input blob is committed before the job record exists, so every record has its upload;
//!   blobs without a record (a crash in between) are removed at start (filesystem) or by the
//!   periodic orphan sweep (shared stores).
//!
//! Blocking: every method that touches the store must be called from a blocking context (worker
//! threads or `spawn_blocking`); the network stores also tolerate runtime threads.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::watch;

pub use super::store::{Recovery, MAX_ATTEMPTS};

use super::job::{now_ms, InputInfo, JobId, JobRecord, JobResult, JobState};
use super::metrics::{Gauges, Metrics};
use super::problem::{ApiError, Problem};
use super::store::{
    is_unavailable, BlobStore, CancelOutcome, Deleted, Finish, IdempotencyRecord, JobStore, Lease,
    QueueStats, Renewal, StoreEvent, SubmitError, Submitted,
};
use crate::Options;

/// Seconds clients are told to wait before asking again.
pub const RETRY_AFTER_SECS: u64 = 2;

/// Seconds a client is told to wait when the queue is full.
pub const QUEUE_FULL_RETRY_SECS: u64 = 10;

/// Seconds a client is told to wait when the database or object store is unreachable.
pub const UNAVAILABLE_RETRY_SECS: u64 = 5;

/// Default lease of a claimed job on a shared store (`--job-lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

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
    /// This run's lease token: the run's handle for [`Jobs::finish_run`], [`Jobs::set_run_stage`]
    /// and [`Jobs::holds_run`]. A replica may hold a stale run of a job whose lease it lost
    /// while it runs the job again; each run is fenced by its own token.
    pub run: String,
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
    /// The run could not go on for a reason outside the job (storage unreachable): back to
    /// the queue, to run again.
    Requeue,
}

struct Running {
    id: JobId,
    cancel: Arc<AtomicBool>,
    by_user: bool,
    timed_out: bool,
    lost: bool,
    started: Instant,
    lease: Lease,
}

#[derive(Default)]
struct Local {
    /// This replica's runs, by lease token.
    running: HashMap<String, Running>,
    keys_in_flight: HashSet<String>,
    stopping: bool,
    draining: bool,
    /// Bumped whenever a claim might now succeed (a submission here, a notification).
    wake: u64,
}

/// The 503 problem for an unreachable backend, or a 500 for any other store error.
pub fn store_error(what: &str, e: &io::Error) -> ApiError {
    if is_unavailable(e) {
        tracing::warn!("{what} unavailable: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the job database or object store is unreachable; retry shortly",
        )
        .retry_after(UNAVAILABLE_RETRY_SECS)
    } else {
        ApiError::internal(format!("{what}: {e}"))
    }
}

fn io_err(e: io::Error) -> ApiError {
    store_error("job store", &e)
}

/// The job registry, queue and idempotency keys of this replica.
pub struct Jobs {
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    local: Mutex<Local>,
    work: Condvar,
    changed: watch::Sender<u64>,
    queue_size: usize,
    retention: Duration,
    max_job_time: Duration,
    metrics: Arc<Metrics>,
    owner: String,
    lease: Duration,
}

impl Jobs {
    /// Opens the registry on `store` and `blobs`, after the store's recovery (interrupted runs
    /// back in the queue, orphan blobs removed).
    pub fn open(
        store: Arc<dyn JobStore>,
        blobs: Arc<dyn BlobStore>,
        queue_size: usize,
        retention: Duration,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Jobs, Recovery)> {
        let rec = store.recover(blobs.as_ref())?;
        let jobs = Jobs {
            store,
            blobs,
            local: Mutex::new(Local::default()),
            work: Condvar::new(),
            changed: watch::channel(0).0,
            queue_size,
            retention,
            max_job_time: Duration::ZERO,
            metrics,
            owner: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease: DEFAULT_LEASE,
        };
        Ok((jobs, rec))
    }

    /// Sets the longest a run may take before [`Jobs::enforce_deadlines`] cancels it (zero:
    /// no limit).
    pub fn with_max_job_time(mut self, max: Duration) -> Self {
        self.max_job_time = max;
        self
    }

    /// Sets the lease of claimed jobs (shared stores; renewed every third of it).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Names this replica in claims (`owner` of leases; logged).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// This replica's name in leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease of claimed jobs.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether other replicas share the store.
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// How often waiting code re-reads the store when no notification came (shared stores
    /// only; a single-replica store notifies every change).
    pub fn poll_interval(&self) -> Duration {
        if self.store.shared() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        }
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

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn wake_workers(&self) {
        self.lock().wake += 1;
        self.work.notify_all();
    }

    /// The blob store holding the jobs' files.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The job store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The metrics this registry updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A receiver that changes whenever any job does (for long-polls; on a shared store also
    /// when another replica reports a change).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Handles a change another replica made (see [`JobStore::subscribe`]).
    pub fn on_event(&self, event: StoreEvent) {
        match event {
            StoreEvent::Queued(_) => self.wake_workers(),
            StoreEvent::Changed(_) => {}
            StoreEvent::CancelRequested(id) => self.cancel_local(&id),
            StoreEvent::Resync => self.wake_workers(),
        }
        self.notify();
    }

    /// A job's current record (`None` also when the store cannot be read; see [`Jobs::lookup`]).
    pub fn get(&self, id: &JobId) -> Option<JobRecord> {
        self.lookup(id).ok().flatten()
    }

    /// A job's current record; store errors are problems (503 when it is unreachable).
    pub fn lookup(&self, id: &JobId) -> Result<Option<JobRecord>, ApiError> {
        self.store.get(id).map_err(io_err)
    }

    /// Queue figures from the store (across replicas on a shared store).
    pub fn stats(&self) -> io::Result<QueueStats> {
        self.store.stats()
    }

    /// Number of queued and of running jobs (zeros when the store cannot be read).
    pub fn counts(&self) -> (usize, usize) {
        match self.store.stats() {
            Ok(s) => (s.queued, s.running),
            Err(_) => (0, self.local_running()),
        }
    }

    /// The gauges of `/metrics`: queue figures from the store, runs of this replica.
    pub fn gauges(&self, workers: usize) -> Gauges {
        let replica_running = self.local_running();
        match self.store.stats() {
            Ok(s) => Gauges {
                queued: s.queued,
                running: s.running,
                oldest_queued_seconds: s
                    .oldest_queued_ms
                    .map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0),
                store_up: true,
                replica_running,
                workers,
            },
            Err(_) => Gauges {
                running: replica_running,
                replica_running,
                workers,
                ..Gauges::default()
            },
        }
    }

    /// Runs this replica holds.
    pub fn local_running(&self) -> usize {
        self.lock().running.len()
    }

    /// The 429 problem when the queue is full (503 while draining or when the store is
    /// unreachable).
    pub fn check_room(&self) -> Result<(), ApiError> {
        if self.lock().draining {
            return Err(draining());
        }
        let stats = self.store.stats().map_err(io_err)?;
        if stats.queued >= self.queue_size {
            return Err(self.queue_full());
        }
        Ok(())
    }

    fn queue_full(&self) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("{} jobs are already waiting; retry later", self.queue_size),
        )
        .retry_after(QUEUE_FULL_RETRY_SECS)
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
        let Some(k) = self.store.find_key(key_sha256).map_err(io_err)? else {
            return Ok(None);
        };
        let Some(job) = self.store.get(&k.job_id).map_err(io_err)? else {
            return Ok(None);
        };
        if k.fingerprint != fingerprint {
            return Err(key_reused(&job.id));
        }
        Ok(Some(job))
    }

    /// Queues a job whose input blob is stored. On error the caller removes the blob.
    pub fn submit(&self, new: NewJob, key_sha256: Option<String>) -> Result<JobRecord, ApiError> {
        self.submit_or_replay(new, key_sha256).map(|(j, _)| j)
    }

    /// [`Jobs::submit`], also saying whether the key had already produced a job (another
    /// replica may have queued it a moment ago): then nothing was queued and the caller removes
    /// its blob.
    pub fn submit_or_replay(
        &self,
        new: NewJob,
        key_sha256: Option<String>,
    ) -> Result<(JobRecord, bool), ApiError> {
        if self.lock().draining {
            return Err(draining());
        }
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
        let key = key_sha256.map(|k| IdempotencyRecord {
            key_sha256: k,
            fingerprint: job.fingerprint.clone(),
            job_id: job.id.clone(),
            created_ms: job.created_ms,
        });
        let out = match self.store.submit(&job, key.as_ref(), self.queue_size) {
            Ok(Submitted::Created(j)) => (j, false),
            Ok(Submitted::Replayed(j)) => return Ok((j, true)),
            Err(SubmitError::QueueFull) => return Err(self.queue_full()),
            Err(SubmitError::KeyReused(id)) => return Err(key_reused(&id)),
            Err(SubmitError::Io(e)) => return Err(io_err(e)),
        };
        {
            let mut g = self.lock();
            g.wake += 1;
        }
        self.work.notify_one();
        self.notify();
        Ok(out)
    }

    /// Blocks until a queued job is available and marks it running; `None` once stopping.
    pub fn claim(&self) -> Option<Claim> {
        let mut failing = false;
        loop {
            let seen = {
                let g = self.lock();
                if g.stopping {
                    return None;
                }
                g.wake
            };
            let wait = match self.store.claim(&self.owner, self.lease) {
                Ok(Some(c)) => {
                    if failing {
                        tracing::info!("the job store answers again");
                    }
                    let id = c.job.id.clone();
                    let run = c.lease.token.clone();
                    let cancel = Arc::new(AtomicBool::new(false));
                    self.lock().running.insert(
                        run.clone(),
                        Running {
                            id: id.clone(),
                            cancel: Arc::clone(&cancel),
                            by_user: false,
                            timed_out: false,
                            lost: false,
                            started: Instant::now(),
                            lease: c.lease,
                        },
                    );
                    self.notify();
                    return Some(Claim {
                        id,
                        run,
                        options: c.job.options,
                        cancel,
                    });
                }
                Ok(None) => {
                    failing = false;
                    self.poll_interval()
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("cannot claim jobs: {e}");
                    }
                    failing = true;
                    self.metrics.store_error("jobs");
                    Duration::from_secs(1)
                }
            };
            let g = self.lock();
            let _ = self
                .work
                .wait_timeout_while(g, wait, |g| g.wake == seen && !g.stopping)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The token of this replica's newest run of `id`.
    fn run_of(&self, id: &JobId) -> Option<String> {
        let g = self.lock();
        g.running
            .iter()
            .filter(|(_, r)| &r.id == id)
            .max_by_key(|(_, r)| r.started)
            .map(|(t, _)| t.clone())
    }

    fn cancel_local(&self, id: &JobId) {
        for r in self.lock().running.values_mut().filter(|r| &r.id == id) {
            r.by_user = true;
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Records the stage a running job entered (memory only on the filesystem store).
    pub fn set_stage(&self, id: &JobId, stage: &str) {
        if let Some(run) = self.run_of(id) {
            self.set_run_stage(&run, stage);
        }
    }

    /// Records the stage run `run` entered (fenced by its lease).
    pub fn set_run_stage(&self, run: &str, stage: &str) {
        let lease = self.lock().running.get(run).map(|r| r.lease.clone());
        if let Some(lease) = lease {
            if let Err(e) = self.store.set_stage(&lease, stage) {
                tracing::debug!(job = %lease.id, "stage not recorded: {e}");
            }
        }
        self.notify();
    }

    /// Whether this replica's newest run of `id` still holds its lease (as far as it knows).
    pub fn holds(&self, id: &JobId) -> bool {
        self.run_of(id).is_some_and(|run| self.holds_run(&run))
    }

    /// Whether run `run` still holds its lease (as far as this replica knows).
    pub fn holds_run(&self, run: &str) -> bool {
        self.lock().running.get(run).is_some_and(|r| !r.lost)
    }

    /// Ends a run. A cancellation not asked for by a client (shutdown, a lost lease) puts the
    /// job back in the queue, to run again here after a restart or on another replica. The
    /// write is fenced by the run's lease and retried while the store is unreachable (for up to
    /// one lease, during which the lease keeps being renewed); after that the job runs again
    /// once its lease has run out.
    pub fn finish(&self, id: &JobId, outcome: Outcome) {
        if let Some(run) = self.run_of(id) {
            self.finish_run(&run, outcome);
        }
    }

    /// [`Jobs::finish`] for run `run` (its lease token), the form workers use.
    pub fn finish_run(&self, run: &str, outcome: Outcome) {
        let Some((id, lease, by_user, timed_out, seconds)) =
            self.lock().running.get(run).map(|r| {
                (
                    r.id.clone(),
                    r.lease.clone(),
                    r.by_user,
                    r.timed_out,
                    r.started.elapsed().as_secs_f64(),
                )
            })
        else {
            return;
        };
        let (finish, code) = match outcome {
            Outcome::Succeeded(result) => (Finish::Succeeded(result), String::new()),
            Outcome::Failed(p) => {
                let code = p.code.clone();
                (Finish::Failed(p.with_job(&id)), code)
            }
            Outcome::Canceled if timed_out && !by_user => {
                let p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "job_timeout",
                    format!(
                        "the job ran longer than this server's limit of {}s and was canceled",
                        self.max_job_time.as_secs_f64()
                    ),
                );
                (Finish::Failed(p.with_job(&id)), "job_timeout".to_string())
            }
            Outcome::Canceled if by_user => (
                Finish::Canceled(canceled_problem(&id)),
                "canceled".to_string(),
            ),
            Outcome::Canceled => (Finish::Requeue, "interrupted".to_string()),
            Outcome::Requeue => (Finish::Requeue, "storage_unavailable".to_string()),
        };
        let give_up = Instant::now() + self.lease.max(Duration::from_secs(5));
        let mut pause = Duration::from_millis(200);
        let written = loop {
            match self.store.finish(&lease, &finish, now_ms()) {
                Ok(r) => break Ok(r),
                Err(e) if Instant::now() + pause < give_up && !self.lock().stopping => {
                    tracing::warn!(job = %id, "cannot record the end of the run yet: {e}");
                    self.metrics.store_error("jobs");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => break Err(e),
            }
        };
        self.lock().running.remove(run);
        match written {
            Ok(Some(job)) => {
                let state = if job.state == JobState::Queued {
                    "requeued"
                } else {
                    job.state.as_str()
                };
                tracing::info!(
                    job = %id,
                    state,
                    attempt = job.attempts,
                    owner = %self.owner,
                    "run recorded"
                );
                self.metrics.finished(state, &code, seconds);
                if job.state == JobState::Queued {
                    self.wake_workers();
                }
            }
            Ok(None) => {
                tracing::warn!(job = %id, owner = %self.owner, "run discarded: its lease was lost (the job was taken over)");
                self.metrics.lease_lost();
            }
            Err(e) => {
                tracing::error!(job = %id, "could not record the end of the run ({e}); it runs again when its lease runs out");
                self.metrics.store_error("jobs");
            }
        }
        self.notify();
    }

    /// Renews the leases of the runs this replica holds (shared stores; every third of the
    /// lease). A lost lease stops its run at the next check; a cancellation requested on
    /// another replica is passed on.
    pub fn renew_leases(&self) {
        let leases: Vec<Lease> = self
            .lock()
            .running
            .values()
            .filter(|r| !r.lost)
            .map(|r| r.lease.clone())
            .collect();
        if leases.is_empty() {
            return;
        }
        match self.store.renew(&leases, self.lease) {
            Ok(answers) => {
                let mut g = self.lock();
                for (lease, answer) in leases.iter().zip(answers) {
                    let Some(r) = g.running.get_mut(&lease.token) else {
                        continue;
                    };
                    match answer {
                        Renewal::Held { cancel: true } => {
                            r.by_user = true;
                            r.cancel.store(true, Ordering::Relaxed);
                        }
                        Renewal::Held { cancel: false } => {}
                        Renewal::Lost => {
                            tracing::warn!(job = %lease.id, "lease lost; stopping the run");
                            r.lost = true;
                            r.cancel.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot renew {} leases: {e}", leases.len());
                self.metrics.store_error("jobs");
            }
        }
    }

    /// Puts jobs whose lease ran out back in the queue (or fails them after [`MAX_ATTEMPTS`]).
    pub fn reap(&self) {
        match self.store.reap() {
            Ok((0, 0)) => {}
            Ok((requeued, failed)) => {
                tracing::warn!(
                    requeued,
                    failed,
                    "took over jobs whose replica stopped renewing their lease"
                );
                self.metrics.reclaimed(requeued, failed);
                self.wake_workers();
                self.notify();
            }
            Err(e) => {
                tracing::debug!("lease reaper: {e}");
                self.metrics.store_error("jobs");
            }
        }
    }

    /// Cancels a job: a queued one at once, a running one at its next check (stage boundary,
    /// simulation run, or the end of the run), on whichever replica runs it.
    pub fn cancel(&self, id: &JobId) -> Result<JobRecord, ApiError> {
        match self
            .store
            .cancel(id, &canceled_problem(id), now_ms())
            .map_err(io_err)?
        {
            None => Err(ApiError::job_not_found(id.as_str())),
            Some(CancelOutcome::Canceled(job)) => {
                self.metrics.finished("canceled", "canceled", 0.0);
                self.notify();
                Ok(job)
            }
            Some(CancelOutcome::Requested(job)) => {
                self.cancel_local(id);
                Ok(job)
            }
            Some(CancelOutcome::Finished(job)) if job.state == JobState::Canceled => Ok(job),
            Some(CancelOutcome::Finished(job)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("the job already {}", job.state.as_str()),
            )
            .job(id.as_str())),
        }
    }

    /// Deletes a finished or queued job and its files; 409 while it runs.
    pub fn delete(&self, id: &JobId) -> Result<(), ApiError> {
        match self.store.delete(id).map_err(io_err)? {
            Deleted::NotFound => Err(ApiError::job_not_found(id.as_str())),
            Deleted::Running => Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_running",
                "the job is running; cancel it first",
            )
            .job(id.as_str())),
            Deleted::Removed => {
                if let Err(e) = self.blobs.delete(id) {
                    tracing::warn!(job = %id, "could not delete the job's files: {e}");
                }
                self.notify();
                Ok(())
            }
        }
    }

    /// One page of jobs, newest first, optionally filtered by state (empty when the store
    /// cannot be read; see [`Jobs::try_list`]).
    pub fn list(
        &self,
        page_size: usize,
        after: Option<&JobId>,
        state: Option<JobState>,
    ) -> (Vec<JobRecord>, Option<JobId>) {
        self.try_list(page_size, after, state).unwrap_or_default()
    }

    /// [`Jobs::list`], with store errors as problems.
    pub fn try_list(
        &self,
        page_size: usize,
        after: Option<&JobId>,
        state: Option<JobState>,
    ) -> Result<(Vec<JobRecord>, Option<JobId>), ApiError> {
        self.store.list(page_size, after, state).map_err(io_err)
    }

    /// Removes finished jobs (and their files) older than the retention, and old idempotency
    /// keys. Returns how many jobs were removed. A zero retention keeps everything. Safe with
    /// several replicas: each expired job is removed by exactly one.
    pub fn expire(&self, now_ms: u64) -> usize {
        if self.retention.is_zero() {
            return 0;
        }
        let horizon = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let mut removed = 0;
        loop {
            let ids = match self.store.expire(horizon, 500) {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!("expiry: {e}");
                    break;
                }
            };
            for id in &ids {
                if let Err(e) = self.blobs.delete(id) {
                    tracing::warn!(job = %id, "expiry: could not delete the job's files: {e}");
                }
            }
            removed += ids.len();
            if ids.len() < 500 {
                break;
            }
        }
        if removed > 0 {
            self.notify();
        }
        removed
    }

    /// Removes blobs of jobs that have no record and were created more than `min_age` ago (an
    /// upload whose replica died before queueing it, or files left by a replica that died while
    /// expiring). Returns how many jobs' blobs were removed.
    pub fn sweep_orphans(&self, now_ms: u64, min_age: Duration) -> io::Result<usize> {
        let horizon = now_ms.saturating_sub(min_age.as_millis() as u64);
        let old: Vec<JobId> = self
            .blobs
            .jobs()?
            .into_iter()
            .filter(|id| super::store::id_created_ms(id).is_some_and(|t| t < horizon))
            .collect();
        let mut removed = 0;
        for chunk in old.chunks(500) {
            let known = self.store.known(chunk)?;
            for id in chunk.iter().filter(|id| !known.contains(*id)) {
                self.blobs.delete(id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Readiness: not draining and both stores reachable and writable.
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

fn draining() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the service is shutting down; retry shortly",
    )
    .retry_after(QUEUE_FULL_RETRY_SECS)
}

fn key_reused(id: &JobId) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different model or options",
    )
    .job(id.as_str())
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
        let js = Arc::new(js);
        let bs: Arc<dyn BlobStore> = Arc::new(bs);
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
        let (jobs, rec) = Jobs::open(
            Arc::clone(&js) as Arc<dyn JobStore>,
            Arc::clone(&bs),
            4,
            Duration::ZERO,
            metrics,
        )
        .unwrap();
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
        let js = Arc::new(js);
        let bs: Arc<dyn BlobStore> = Arc::new(bs);
        let metrics = Arc::new(Metrics::default());
        let retention = Duration::from_secs(60);
        let (jobs, _) = Jobs::open(
            Arc::clone(&js) as Arc<dyn JobStore>,
            Arc::clone(&bs),
            4,
            retention,
            metrics,
        )
        .unwrap();
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
