//! Tests of the registry on the filesystem stores, and the helpers the worker's tests share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Jobs, NewJob, Recovery, MAX_ATTEMPTS};
use crate::server::job::{InputInfo, JobId, JobRecord, JobState};
use crate::server::metrics::Metrics;
use crate::server::store::fs::{self, FsJobStore};
use crate::server::store::{BlobKind, BlobStore, JobStore};
use crate::Options;

/// Fresh filesystem stores in a new temporary folder (the caller removes it).
pub(super) fn temp_stores(tag: &str) -> (PathBuf, Arc<FsJobStore>, Arc<dyn BlobStore>) {
    let dir =
        std::env::temp_dir().join(format!("onnx-cle-{tag}-{}", uuid::Uuid::new_v4().simple()));
    let (js, bs) = fs::open(&dir).unwrap();
    (dir, Arc::new(js), Arc::new(bs))
}

/// The registry on `js` and `bs`, with fresh metrics, and what their recovery found.
pub(super) fn open(
    js: &Arc<FsJobStore>,
    bs: &Arc<dyn BlobStore>,
    queue_size: usize,
    retention: Duration,
) -> (Jobs, Recovery) {
    let metrics = Arc::new(Metrics::default());
    let js = Arc::clone(js) as Arc<dyn JobStore>;
    Jobs::open(js, Arc::clone(bs), queue_size, retention, metrics).unwrap()
}

/// What the upload `data` is recorded as.
pub(super) fn input(data: &[u8]) -> InputInfo {
    InputInfo {
        bytes: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
        filename: None,
    }
}

/// Stores `data` as a new job's upload and queues the job (under idempotency key `key`).
pub(super) fn queue(jobs: &Jobs, data: &[u8], key: Option<String>) -> JobId {
    let id = JobId::generate();
    jobs.blobs().put(&id, BlobKind::Input, data).unwrap();
    let new = NewJob {
        id: id.clone(),
        name: None,
        options: Options::default(),
        input: input(data),
        fingerprint: "f".into(),
    };
    jobs.submit(new, key).unwrap();
    id
}

#[test]
fn recovery_requeues_interrupted_runs_and_gives_up_after_max_attempts() {
    let (dir, js, bs) = temp_stores("jobs");
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
            input: input(b"model"),
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
    let (jobs, rec) = open(&js, &bs, 4, Duration::ZERO);
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
    let (dir, js, bs) = temp_stores("expire");
    let (jobs, _) = open(&js, &bs, 4, Duration::from_secs(60));
    let old = queue(&jobs, b"model", Some(format!("{:064x}", 0)));
    let queued = queue(&jobs, b"model", Some(format!("{:064x}", 1)));
    jobs.cancel(&old).unwrap();
    let finished = jobs.get(&old).unwrap().finished_ms.unwrap();
    assert_eq!(
        jobs.expire(finished + 59_000),
        0,
        "still within the retention"
    );
    assert_eq!(jobs.expire(finished + 121_000), 1);
    assert!(jobs.get(&old).is_none());
    assert!(bs.open(&old, BlobKind::Input).is_err(), "files removed");
    assert!(jobs.get(&queued).is_some(), "unfinished jobs never expire");
    assert!(
        js.load_keys().unwrap().is_empty(),
        "old idempotency keys removed"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
