//! The two persistence seams of the service: [`JobStore`] (job records, which also are the
//! durable queue: the `queued` records in id order) and [`BlobStore`] (uploads and results).
//!
//! The filesystem implementation ([`fs`]) is the default and the only code that touches the data
//! directory. Another backend (object storage, a database) implements these traits and nothing
//! else changes.
//!
//! Contract of both traits:
//! - writes are atomic: a reader sees the old value or the new one, never a torn file, and a
//!   write that returned `Ok` survives a crash (temp file, fsync, rename, fsync of the folder);
//! - methods block (they do I/O); async callers run them on the blocking pool.

pub mod fs;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::job::{JobId, JobRecord};

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

    /// Writes a whole blob atomically.
    fn put(&self, job: &JobId, kind: BlobKind, data: &[u8]) -> io::Result<()> {
        let mut sink = self.create(job, kind)?;
        sink.write_all(data)?;
        sink.commit()
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

/// Stores job records and idempotency keys.
pub trait JobStore: Send + Sync + 'static {
    /// Creates or replaces a record.
    fn save(&self, job: &JobRecord) -> io::Result<()>;

    /// Every record. Unreadable records are reported in the second list and skipped; their
    /// files (and the job's blobs) are left alone.
    fn load_all(&self) -> io::Result<(Vec<JobRecord>, Vec<Unreadable>)>;

    /// Deletes a record (no error when absent).
    fn remove(&self, id: &JobId) -> io::Result<()>;

    /// Creates or replaces an idempotency record.
    fn save_key(&self, rec: &IdempotencyRecord) -> io::Result<()>;

    /// Every idempotency record.
    fn load_keys(&self) -> io::Result<Vec<IdempotencyRecord>>;

    /// Deletes an idempotency record (no error when absent).
    fn remove_key(&self, key_sha256: &str) -> io::Result<()>;

    /// Checks that the store is writable (readiness).
    fn check(&self) -> io::Result<()>;
}
