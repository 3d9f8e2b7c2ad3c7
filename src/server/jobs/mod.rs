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
//!
//! This file holds the types of the registry and its state; the methods of [`Jobs`] stand by
//! what they do:
//! - here: opening, settings, change notifications, reads, readiness and draining;
//! - `intake.rs`: submissions and idempotency keys ([`NewJob`], [`KeyGuard`]);
//! - `runs.rs`: the runs this replica holds ([`Claim`], [`Outcome`]): claiming, stages, the end
//!   of a run, leases and their renewal, taking over expired leases, deadlines, cancellation;
//! - `removal.rs`: deleting jobs, expiry after the retention, the orphan-blob sweep;
//! - [`worker`]: the thread pool that claims jobs and runs the core on them.

mod intake;
mod removal;
mod runs;
pub mod worker;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::watch;

pub use super::store::{Recovery, MAX_ATTEMPTS};

use super::job::{now_ms, InputInfo, JobId, JobRecord, JobResult, JobState};
use super::metrics::{Gauges, Metrics};
use super::problem::{ApiError, Problem};
use super::store::{is_unavailable, BlobStore, JobStore, Lease, QueueStats, StoreEvent};
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

/// A run this replica holds.
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
