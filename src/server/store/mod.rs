//! The two persistence seams of the service: [`JobStore`] (job records, idempotency keys and the
//! queue) and [`BlobStore`] (uploads and results), and [`open`], which picks the backends from
//! the `serve` settings.
//!
//! Backends:
//! - [`fs`] (the default): one data directory, one replica. Records, keys and blobs are files;
//!   the queue is an in-memory index rebuilt from the records at start. `onnx-cle serve` with no
//!   flags needs nothing else.
//! - [`pg`] (`--database-url postgres://…`): records, keys and the queue in PostgreSQL, shared by
//!   any number of replicas; a claimed job holds a lease that its replica renews, a job whose
//!   lease ran out goes back to the queue, and every completion is fenced by the claim's token.
//! - [`s3`] (`--blob-store s3://BUCKET/PREFIX`): blobs in an S3-compatible object store, streamed
//!   through multipart uploads; `file:///path` keeps blobs in a folder.
//!
//! Nothing outside this folder touches a database, a bucket or the data directory.
//!
//! Contract of both traits (checked against every backend by `tests/store_contract.rs`):
//! - writes are atomic: a reader sees the old value or the new one, never a torn record or blob,
//!   and a write that returned `Ok` is durable;
//! - the queue hands out the `queued` jobs in id (= submission) order, each to one claimer at a
//!   time; [`JobStore::finish`] only lands for the claim that holds the job (its [`Lease`]), so a
//!   late duplicate run never overwrites a finished job;
//! - methods block (they do I/O): async code calls them on the blocking pool. The network
//!   backends also tolerate being called on a runtime thread (they use `block_in_place`).
//! - errors that mean "the backend is unreachable" are marked ([`unavailable`],
//!   [`is_unavailable`]) so the API answers `503` with `Retry-After` instead of `500`.

pub mod fs;
pub mod pg;
pub mod pg_tls;
pub mod s3;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::job::{JobId, JobRecord, JobResult, JobState};
use super::problem::Problem;

/// What a blob of a job holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// The uploaded model.
    Input,
    /// The equalized model.
    Model,
    /// The JSON report.
    Report,
    /// A requested output besides the model (QDQ model, encodings…), stored as
    /// [`crate::ArtifactKind::name`].
    Artifact(crate::ArtifactKind),
}

impl BlobKind {
    /// A file-name-safe key for the blob within its job (`input.onnx`, `model.onnx`,
    /// `report.json`, or the artifact's name), for backends that key blobs by name.
    pub fn file_name(self) -> &'static str {
        match self {
            BlobKind::Input => "input.onnx",
            BlobKind::Model => "model.onnx",
            BlobKind::Report => "report.json",
            BlobKind::Artifact(kind) => kind.name(),
        }
    }
}

/// A blob being written; invisible until [`BlobSink::commit`], discarded when dropped uncommitted.
pub trait BlobSink: Write + Send {
    /// Makes the written bytes durable and visible under the blob's key.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Stores the files of jobs.
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing a blob (replacing any previous one on commit).
    fn create(&self, job: &JobId, kind: BlobKind) -> io::Result<Box<dyn BlobSink>>;

    /// Opens a blob for reading, with its length. `ErrorKind::NotFound` when absent.
    fn open(&self, job: &JobId, kind: BlobKind) -> io::Result<(Box<dyn Read + Send>, u64)>;

    /// Deletes every blob of a job (no error when there is none).
    fn delete(&self, job: &JobId) -> io::Result<()>;

    /// Jobs that have at least one blob (to sweep orphans after a crash).
    fn jobs(&self) -> io::Result<Vec<JobId>>;

    /// Checks that the store is writable (readiness).
    fn check(&self) -> io::Result<()>;

    /// A URL that lets a client `GET` the blob directly for `ttl`, when the backend can sign one
    /// (S3); `None` otherwise (the API streams the blob itself).
    fn presign(&self, _job: &JobId, _kind: BlobKind, _ttl: Duration) -> io::Result<Option<String>> {
        Ok(None)
    }

    /// Writes a whole blob atomically.
    fn put(&self, job: &JobId, kind: BlobKind, data: &[u8]) -> io::Result<()> {
        let mut sink = self.create(job, kind)?;
        sink.write_all(data)?;
        sink.commit()
    }

    /// The blob's bytes without a copy into the heap, when the backend keeps blobs as local
    /// files it never rewrites (memory-mapped, see [`crate::onnx::mapped`]); `None` otherwise
    /// (use [`BlobStore::read`]).
    fn map(&self, _job: &JobId, _kind: BlobKind) -> io::Result<Option<bytes::Bytes>> {
        Ok(None)
    }

    /// Reads a whole blob.
    fn read(&self, job: &JobId, kind: BlobKind) -> io::Result<Vec<u8>> {
        let (mut r, len) = self.open(job, kind)?;
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        r.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// A remembered `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// sha256 of the key (keys themselves are not stored).
    pub key_sha256: String,
    /// Fingerprint of the request that first used the key.
    pub fingerprint: String,
    /// The job that request created.
    pub job_id: JobId,
    /// When the key was first used (Unix ms).
    pub created_ms: u64,
}

/// A job record that exists but could not be read.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// The job, when the record's key names one.
    pub id: Option<JobId>,
    /// Where and why.
    pub reason: String,
}

/// Interrupted runs after which a job fails with `job_crashed` instead of running again.
pub const MAX_ATTEMPTS: u32 = 3;

/// The claim on a running job: who holds it and the claim's fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub id: JobId,
    /// The replica that claimed it.
    pub owner: String,
    /// Unique per claim; [`JobStore::finish`], [`JobStore::renew`] and [`JobStore::set_stage`]
    /// only act while the job still carries it.
    pub token: String,
}

/// A job handed out by [`JobStore::claim`], now `running`.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The record after the claim (state `running`, attempts counted).
    pub job: JobRecord,
    /// The claim.
    pub lease: Lease,
}

/// What [`JobStore::renew`] found for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; `cancel` when a client asked to cancel the job (on any replica).
    Held {
        /// A cancellation was requested.
        cancel: bool,
    },
    /// No longer ours (expired and claimed again, deleted, or finished by someone else).
    Lost,
}

/// How a run ends, as written by [`JobStore::finish`].
#[derive(Debug, Clone)]
pub enum Finish {
    /// Results stored.
    Succeeded(JobResult),
    /// Failed with this problem.
    Failed(Problem),
    /// Canceled on request (the problem says so).
    Canceled(Problem),
    /// Interrupted (shutdown, lost storage): back to `queued`, to run again.
    Requeue,
}

/// What [`JobStore::submit`] did.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The job was queued.
    Created(JobRecord),
    /// The idempotency key already named this job (same fingerprint): nothing was queued.
    Replayed(JobRecord),
}

/// Why [`JobStore::submit`] queued nothing.
#[derive(Debug)]
pub enum SubmitError {
    /// `max_queued` jobs are already waiting.
    QueueFull,
    /// The idempotency key was used for a different request (that job's id).
    KeyReused(JobId),
    /// The store failed.
    Io(io::Error),
}

impl From<io::Error> for SubmitError {
    fn from(e: io::Error) -> Self {
        SubmitError::Io(e)
    }
}

/// What [`JobStore::cancel`] did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The job was queued and is now canceled.
    Canceled(JobRecord),
    /// The job runs; its replica was asked to stop it (at its next check).
    Requested(JobRecord),
    /// The job was already finished (as it is).
    Finished(JobRecord),
}

/// What [`JobStore::delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Record (and key references) removed; the caller deletes the blobs.
    Removed,
    /// No such job.
    NotFound,
    /// The job runs; nothing was removed.
    Running,
}

/// Queue figures for metrics and the 429 check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs running (on any replica).
    pub running: usize,
    /// Creation time of the oldest queued job (Unix ms).
    pub oldest_queued_ms: Option<u64>,
}

/// What recovery at start found.
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

/// A change another replica made, reported by a shared store ([`JobStore::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A job was queued (or requeued): idle workers should try to claim.
    Queued(JobId),
    /// A job changed state or stage, or was deleted (long-polls re-read it).
    Changed(JobId),
    /// A client asked to cancel a running job.
    CancelRequested(JobId),
    /// Notifications may have been missed (the listener reconnected): re-read everything.
    Resync,
}

/// Callback receiving [`StoreEvent`]s.
pub type EventSink = Arc<dyn Fn(StoreEvent) + Send + Sync>;

/// Stores job records and idempotency keys, and is the queue.
pub trait JobStore: Send + Sync + 'static {
    /// Whether several replicas may share this store (leases and renewals matter).
    fn shared(&self) -> bool;

    /// At start: loads what the store needs and repairs what a crash left (interrupted runs,
    /// uploads without a record). Shared stores leave interrupted runs to lease expiry.
    fn recover(&self, blobs: &dyn BlobStore) -> io::Result<Recovery>;

    /// Queues `job` (state `queued`) and remembers `key` with it, atomically: either both exist
    /// afterwards or neither. Refuses when `max_queued` jobs are waiting; replays the job of a
    /// key already used with the same fingerprint.
    fn submit(
        &self,
        job: &JobRecord,
        key: Option<&IdempotencyRecord>,
        max_queued: usize,
    ) -> Result<Submitted, SubmitError>;

    /// A job's record.
    fn get(&self, id: &JobId) -> io::Result<Option<JobRecord>>;

    /// One page of jobs, newest first, optionally in one state, after (older than) `after`.
    /// Returns the page and the id to continue after when there are more.
    fn list(
        &self,
        page_size: usize,
        after: Option<&JobId>,
        state: Option<JobState>,
    ) -> io::Result<(Vec<JobRecord>, Option<JobId>)>;

    /// The record of an idempotency key.
    fn find_key(&self, key_sha256: &str) -> io::Result<Option<IdempotencyRecord>>;

    /// Queue figures.
    fn stats(&self) -> io::Result<QueueStats>;

    /// Takes the oldest queued job for `owner`, marks it running (attempts + 1, `started_ms`
    /// now) with a lease of `lease`; `None` when nothing is queued.
    fn claim(&self, owner: &str, lease: Duration) -> io::Result<Option<Claimed>>;

    /// Extends the leases (by `lease` from now) and reports, per lease in order, whether it is
    /// still held and whether a cancellation was requested.
    fn renew(&self, leases: &[Lease], lease: Duration) -> io::Result<Vec<Renewal>>;

    /// Puts running jobs whose lease ran out back in the queue, or fails them (`job_crashed`)
    /// after [`MAX_ATTEMPTS`] runs. Returns (requeued, failed).
    fn reap(&self) -> io::Result<(usize, usize)>;

    /// Records the stage a running job entered (fenced by the lease).
    fn set_stage(&self, lease: &Lease, stage: &str) -> io::Result<()>;

    /// Ends a run, fenced: writes the outcome only while the job is running under `lease`.
    /// Returns the new record, or `None` when the lease was lost (nothing written).
    fn finish(&self, lease: &Lease, finish: &Finish, now_ms: u64) -> io::Result<Option<JobRecord>>;

    /// Cancels a queued job at once, or asks the replica running it to stop; `None` when there
    /// is no such job.
    fn cancel(
        &self,
        id: &JobId,
        problem: &Problem,
        now_ms: u64,
    ) -> io::Result<Option<CancelOutcome>>;

    /// Deletes a job that is not running.
    fn delete(&self, id: &JobId) -> io::Result<Deleted>;

    /// Removes up to `limit` finished jobs that finished before `horizon_ms`, and idempotency
    /// keys created before it. Returns the removed jobs (the caller deletes their blobs); with
    /// several replicas each job is returned to exactly one of them.
    fn expire(&self, horizon_ms: u64, limit: usize) -> io::Result<Vec<JobId>>;

    /// Which of `ids` have a record (for the orphan-blob sweep).
    fn known(&self, ids: &[JobId]) -> io::Result<HashSet<JobId>>;

    /// Checks that the store is reachable and writable (readiness).
    fn check(&self) -> io::Result<()>;

    /// Starts reporting other replicas' changes to `sink` (no-op for a single-replica store).
    fn subscribe(&self, _sink: EventSink) {}
}

/// Marks an error as "the backend is unreachable" (see [`is_unavailable`]).
#[derive(Debug)]
struct Unavailable(String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// An I/O error meaning the backend cannot be reached right now (a retry later may work).
pub fn unavailable(what: impl std::fmt::Display) -> io::Error {
    io::Error::other(Unavailable(what.to_string()))
}

/// Whether `e` was made by [`unavailable`].
pub fn is_unavailable(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Unavailable>())
}

/// The backends picked by the `serve` settings.
pub struct Backends {
    /// Job records and queue.
    pub jobs: Arc<dyn JobStore>,
    /// Blobs.
    pub blobs: Arc<dyn BlobStore>,
    /// Human-readable description for the start-up log.
    pub describe: String,
}

/// Where blobs go, parsed from `--blob-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobUrl {
    /// `s3://BUCKET/PREFIX`.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix (no leading or trailing slash; may be empty).
        prefix: String,
    },
    /// `file:///path`.
    Dir(std::path::PathBuf),
}

impl std::str::FromStr for BlobUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid =
                |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if bucket.len() < 3 || !bucket.chars().all(valid) {
                return Err(format!(
                    "`{bucket}` is not an S3 bucket name (s3://BUCKET/PREFIX)"
                ));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if prefix.split('/').any(|p| p == "." || p == "..")
                || prefix.contains("//")
                || !prefix.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!("`{prefix}` is not a usable key prefix"));
            }
            return Ok(BlobUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err("file:// URLs need an absolute path (file:///var/lib/onnx-cle)".into());
            }
            return Ok(BlobUrl::Dir(path.into()));
        }
        Err(format!(
            "`{s}` is not a blob store URL (s3://BUCKET/PREFIX or file:///path)"
        ))
    }
}

/// Settings [`open`] needs.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The data directory (the default home of records and blobs).
    pub data_dir: std::path::PathBuf,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--database-ca`: the CA that signed the database's certificate, when the URL has no
    /// `sslrootcert`.
    pub database_ca: Option<std::path::PathBuf>,
    /// `--blob-store`.
    pub blob_store: Option<BlobUrl>,
    /// Largest pool of database connections.
    pub pool_size: usize,
}

/// Opens the backends the settings select. Async because the network backends connect (and
/// the database is migrated) here; the returned stores are used from blocking code.
pub async fn open(cfg: &BackendConfig) -> io::Result<Backends> {
    let blobs: (Arc<dyn BlobStore>, String) = match &cfg.blob_store {
        Some(BlobUrl::S3 { bucket, prefix }) => {
            let s = s3::S3BlobStore::from_env(bucket, prefix)?;
            (Arc::new(s), format!("blobs in s3://{bucket}/{prefix}"))
        }
        Some(BlobUrl::Dir(dir)) => (
            Arc::new(in_folder(dir, fs::open_blobs).await?),
            format!("blobs in {}", dir.display()),
        ),
        None if cfg.database_url.is_some() => (
            Arc::new(in_folder(&cfg.data_dir, fs::open_blobs).await?),
            format!("blobs in {}", cfg.data_dir.join("blobs").display()),
        ),
        None => {
            let (js, bs) = in_folder(&cfg.data_dir, fs::open).await?;
            return Ok(Backends {
                jobs: Arc::new(js),
                blobs: Arc::new(bs),
                describe: format!("job store opened at {}", cfg.data_dir.display()),
            });
        }
    };
    let jobs: (Arc<dyn JobStore>, String) = match &cfg.database_url {
        Some(url) => {
            let s = pg::PgJobStore::connect(url, cfg.database_ca.as_deref(), cfg.pool_size).await?;
            s.migrate().await?;
            let describe = format!("jobs in PostgreSQL {}", s.describe());
            (Arc::new(s), describe)
        }
        None => (
            Arc::new(in_folder(&cfg.data_dir, fs::open_jobs).await?),
            format!("jobs in {}", cfg.data_dir.join("jobs").display()),
        ),
    };
    Ok(Backends {
        jobs: jobs.0,
        blobs: blobs.0,
        describe: format!("{}, {}", jobs.1, blobs.1),
    })
}

/// Opens a filesystem store in folder `dir` with `open`, on the blocking pool.
async fn in_folder<T: Send + 'static>(
    dir: &Path,
    open: fn(&Path) -> io::Result<T>,
) -> io::Result<T> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || open(&dir))
        .await
        .map_err(io::Error::other)?
}

/// The page of [`JobStore::list`] out of `fetched`, the jobs that follow the page token in
/// order: a backend fetches up to `page_size + 1` of them, and the one past the page only tells
/// that more follow. Returns the page and, when more follow, the id to continue after.
pub(crate) fn page(
    mut fetched: Vec<JobRecord>,
    page_size: usize,
) -> (Vec<JobRecord>, Option<JobId>) {
    let next = if fetched.len() > page_size {
        fetched.truncate(page_size);
        fetched.last().map(|j| j.id.clone())
    } else {
        None
    };
    (fetched, next)
}

/// Milliseconds since the Unix epoch at which a job id was generated (ids are UUIDv7).
pub fn id_created_ms(id: &JobId) -> Option<u64> {
    let hex = id.as_str().strip_prefix("job_")?;
    u64::from_str_radix(hex.get(..12)?, 16).ok()
}

/// Runs `f` to completion from blocking code, also when called on a runtime worker thread.
pub(crate) fn block_on<F: std::future::Future>(rt: &tokio::runtime::Handle, f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| rt.block_on(f))
    } else {
        rt.block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls() {
        assert_eq!(
            "s3://my-bucket/a/b/".parse::<BlobUrl>(),
            Ok(BlobUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            "s3://my-bucket".parse::<BlobUrl>(),
            Ok(BlobUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "file:///srv/blobs".parse::<BlobUrl>(),
            Ok(BlobUrl::Dir("/srv/blobs".into()))
        );
        for bad in [
            "s3://Bad_Bucket/x",
            "s3://ok-bucket/../x",
            "file://rel",
            "http://x",
        ] {
            assert!(bad.parse::<BlobUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_carry_their_creation_time() {
        let before = super::super::job::now_ms();
        let id = JobId::generate();
        let t = id_created_ms(&id).unwrap();
        assert!(t >= before && t <= before + 1000, "{t} vs {before}");
    }

    #[test]
    fn unavailable_errors_are_recognized() {
        assert!(is_unavailable(&unavailable("db down")));
        assert!(!is_unavailable(&io::Error::other("disk full")));
        assert_eq!(unavailable("db down").to_string(), "db down");
    }
}
