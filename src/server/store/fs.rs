//! Filesystem stores under one data directory:
//!
//! ```text
//! <data>/jobs/<job id>.json          job records
//! <data>/keys/<sha256(key)>.json     idempotency keys
//! <data>/blobs/<job id>/input.onnx   upload
//! <data>/blobs/<job id>/model.onnx   equalized model
//! <data>/blobs/<job id>/report.json  report
//! <data>/blobs/<job id>/<artifact>    requested outputs (qdq.onnx, encodings.json, …)
//! <data>/tmp/                        files being written (emptied at start)
//! ```
//!
//! Every write goes to `tmp/`, is fsynced, renamed into place and the target folder fsynced,
//! so a crash leaves either the old file or the new one. Paths are built only from [`JobId`]s
//! (validated, hex) and hex digests, never from client text.
//!
//! The queue is an index in memory, rebuilt from the records by [`JobStore::recover`]: one
//! process owns the directory, so leases never expire while it runs (a crash is the only way a
//! run is lost, and recovery at the next start puts it back in the queue).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;

use super::{
    page, BlobKind, BlobSink, BlobStore, CancelOutcome, Claimed, Deleted, Finish,
    IdempotencyRecord, JobStore, Lease, QueueStats, Recovery, Renewal, SubmitError, Submitted,
    Unreadable, MAX_ATTEMPTS,
};
use crate::onnx::write::WriteBehind;
use crate::server::job::{now_ms, JobId, JobRecord, JobState};
use crate::server::problem::Problem;

fn prepare(root: &Path, subs: &[&str]) -> io::Result<()> {
    for sub in subs {
        fs::create_dir_all(root.join(sub))?;
    }
    for entry in fs::read_dir(root.join("tmp"))? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Opens (creating when needed) the stores of a data directory.
pub fn open(data_dir: &Path) -> io::Result<(FsJobStore, FsBlobStore)> {
    prepare(data_dir, &["jobs", "keys", "blobs", "tmp"])?;
    Ok((FsJobStore::new(data_dir), FsBlobStore::new(data_dir)))
}

/// Opens only the job records of a data directory (blobs live elsewhere).
pub fn open_jobs(data_dir: &Path) -> io::Result<FsJobStore> {
    prepare(data_dir, &["jobs", "keys", "tmp"])?;
    Ok(FsJobStore::new(data_dir))
}

/// Opens only the blobs of a folder (`--blob-store file:///path`, or the data directory when
/// the records are in a database).
pub fn open_blobs(dir: &Path) -> io::Result<FsBlobStore> {
    prepare(dir, &["blobs", "tmp"])?;
    Ok(FsBlobStore::new(dir))
}

fn tmp_path(root: &Path) -> PathBuf {
    root.join("tmp")
        .join(format!("{}.part", uuid::Uuid::new_v4().simple()))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_atomic(root: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(root);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        sync_dir(dest.parent().unwrap_or(root))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn probe(root: &Path) -> io::Result<()> {
    write_atomic(root, &root.join("tmp").join("probe"), b"ok")
}

/// Job records as JSON files, with the queue as an index in memory.
#[derive(Debug)]
pub struct FsJobStore {
    root: PathBuf,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    jobs: BTreeMap<JobId, JobRecord>,
    queue: VecDeque<JobId>,
    keys: HashMap<String, IdempotencyRecord>,
    /// Token of the claim each running job is under, and whether a cancel was requested.
    runs: HashMap<JobId, (String, bool)>,
}

impl Index {
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

    fn held(&self, lease: &Lease) -> bool {
        self.runs
            .get(&lease.id)
            .is_some_and(|(t, _)| *t == lease.token)
            && self
                .jobs
                .get(&lease.id)
                .is_some_and(|j| j.state == JobState::Running)
    }
}

impl FsJobStore {
    fn new(root: &Path) -> Self {
        FsJobStore {
            root: root.to_path_buf(),
            index: Mutex::new(Index::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn job_path(&self, id: &JobId) -> PathBuf {
        self.root.join("jobs").join(format!("{id}.json"))
    }

    fn key_path(&self, key_sha256: &str) -> Option<PathBuf> {
        let safe = key_sha256.len() == 64 && key_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        safe.then(|| self.root.join("keys").join(format!("{key_sha256}.json")))
    }

    /// Writes a record file (creating or replacing it); the index is not touched.
    pub fn save(&self, job: &JobRecord) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(job).map_err(io::Error::other)?;
        write_atomic(&self.root, &self.job_path(&job.id), &data)
    }

    /// Every record file. Unreadable records are reported in the second list and skipped;
    /// their files (and the job's blobs) are left alone.
    pub fn load_all(&self) -> io::Result<(Vec<JobRecord>, Vec<Unreadable>)> {
        let mut jobs = Vec::new();
        let mut bad = Vec::new();
        for path in json_files(&self.root.join("jobs"))? {
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<JobRecord>(&d).map_err(|e| e.to_string()))
            {
                Ok(j) => jobs.push(j),
                Err(e) => bad.push(Unreadable {
                    id: path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(JobId::parse),
                    reason: format!("{}: {e}", path.display()),
                }),
            }
        }
        Ok((jobs, bad))
    }

    fn remove_file(&self, id: &JobId) -> io::Result<()> {
        remove_if_exists(&self.job_path(id))
    }

    fn save_key(&self, rec: &IdempotencyRecord) -> io::Result<()> {
        let path = self
            .key_path(&rec.key_sha256)
            .ok_or_else(|| io::Error::other("idempotency key digest is not hex"))?;
        let data = serde_json::to_vec(rec).map_err(io::Error::other)?;
        write_atomic(&self.root, &path, &data)
    }

    /// Every idempotency record file.
    pub fn load_keys(&self) -> io::Result<Vec<IdempotencyRecord>> {
        let mut out = Vec::new();
        for path in json_files(&self.root.join("keys"))? {
            if let Ok(rec) = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
            {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn remove_key(&self, key_sha256: &str) -> io::Result<()> {
        match self.key_path(key_sha256) {
            Some(p) => remove_if_exists(&p),
            None => Ok(()),
        }
    }
}

fn json_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The problem of a job interrupted [`MAX_ATTEMPTS`] times.
pub fn crashed_problem(id: &JobId, attempts: u32) -> Problem {
    let mut p = Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "job_crashed",
        format!("the job was interrupted {attempts} times; giving up"),
    );
    p.job_id = Some(id.to_string());
    p
}

/// The record `job` becomes when a run ends with `finish` at `now`.
pub fn apply_finish(job: &mut JobRecord, finish: &Finish, now: u64) {
    job.stage = None;
    match finish {
        Finish::Succeeded(result) => {
            job.state = JobState::Succeeded;
            job.result = Some(result.clone());
            job.error = None;
        }
        Finish::Failed(p) => {
            job.state = JobState::Failed;
            job.error = Some(p.clone());
        }
        Finish::Canceled(p) => {
            job.state = JobState::Canceled;
            job.error = Some(p.clone());
        }
        Finish::Requeue => {
            job.state = JobState::Queued;
            job.started_ms = None;
        }
    }
    if job.state.is_terminal() {
        job.finished_ms = Some(now);
    }
}

impl JobStore for FsJobStore {
    fn shared(&self) -> bool {
        false
    }

    fn recover(&self, blobs: &dyn BlobStore) -> io::Result<Recovery> {
        let (records, unreadable) = self.load_all()?;
        let mut rec = Recovery {
            loaded: records.len(),
            unreadable: unreadable.iter().map(|u| u.reason.clone()).collect(),
            ..Recovery::default()
        };
        let keep: HashSet<JobId> = unreadable.into_iter().filter_map(|u| u.id).collect();
        let mut index = Index::default();
        for mut job in records {
            if job.state == JobState::Running {
                job.stage = None;
                if job.attempts >= MAX_ATTEMPTS {
                    job.state = JobState::Failed;
                    job.finished_ms = Some(now_ms());
                    job.error = Some(crashed_problem(&job.id, job.attempts));
                    rec.failed += 1;
                } else {
                    job.state = JobState::Queued;
                    rec.requeued += 1;
                }
                self.save(&job)?;
            }
            if job.state == JobState::Queued && blobs.open(&job.id, BlobKind::Input).is_err() {
                job.state = JobState::Failed;
                job.finished_ms = Some(now_ms());
                let mut p = Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "input_missing",
                    "the uploaded model is missing from storage",
                );
                p.job_id = Some(job.id.to_string());
                job.error = Some(p);
                self.save(&job)?;
                rec.failed += 1;
            }
            index.jobs.insert(job.id.clone(), job);
        }
        index.queue = index
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| j.id.clone())
            .collect();
        for id in blobs.jobs()? {
            if !index.jobs.contains_key(&id) && !keep.contains(&id) {
                blobs.delete(&id)?;
                rec.orphans += 1;
            }
        }
        for k in self.load_keys()? {
            index.keys.insert(k.key_sha256.clone(), k);
        }
        *self.lock() = index;
        Ok(rec)
    }

    fn submit(
        &self,
        job: &JobRecord,
        key: Option<&IdempotencyRecord>,
        max_queued: usize,
    ) -> Result<Submitted, SubmitError> {
        let mut g = self.lock();
        if let Some(k) = key {
            if let Some(existing) = g.keys.get(&k.key_sha256) {
                if let Some(prev) = g.jobs.get(&existing.job_id) {
                    if existing.fingerprint != k.fingerprint {
                        return Err(SubmitError::KeyReused(prev.id.clone()));
                    }
                    return Ok(Submitted::Replayed(prev.clone()));
                }
            }
        }
        if g.queued() >= max_queued {
            return Err(SubmitError::QueueFull);
        }
        // The key first: a key whose job record never got written is ignored on replay,
        // while a job record whose upload the caller deletes on error would be a broken job.
        if let Some(k) = key {
            self.save_key(k)?;
            g.keys.insert(k.key_sha256.clone(), k.clone());
        }
        self.save(job)?;
        g.jobs.insert(job.id.clone(), job.clone());
        g.queue.push_back(job.id.clone());
        Ok(Submitted::Created(job.clone()))
    }

    fn get(&self, id: &JobId) -> io::Result<Option<JobRecord>> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    fn list(
        &self,
        page_size: usize,
        after: Option<&JobId>,
        state: Option<JobState>,
    ) -> io::Result<(Vec<JobRecord>, Option<JobId>)> {
        let g = self.lock();
        let iter: Box<dyn Iterator<Item = &JobRecord>> = match after {
            Some(a) => Box::new(g.jobs.range(..a.clone()).rev().map(|(_, j)| j)),
            None => Box::new(g.jobs.values().rev()),
        };
        let fetched = iter
            .filter(|j| state.is_none_or(|s| j.state == s))
            .take(page_size + 1)
            .cloned()
            .collect();
        Ok(page(fetched, page_size))
    }

    fn find_key(&self, key_sha256: &str) -> io::Result<Option<IdempotencyRecord>> {
        Ok(self.lock().keys.get(key_sha256).cloned())
    }

    fn stats(&self) -> io::Result<QueueStats> {
        let g = self.lock();
        let oldest = g
            .queue
            .iter()
            .filter_map(|id| g.jobs.get(id))
            .filter(|j| j.state == JobState::Queued)
            .map(|j| j.created_ms)
            .min();
        Ok(QueueStats {
            queued: g.queued(),
            running: g.runs.len(),
            oldest_queued_ms: oldest,
        })
    }

    fn claim(&self, owner: &str, _lease: Duration) -> io::Result<Option<Claimed>> {
        let mut g = self.lock();
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
            if let Err(e) = self.save(&snapshot) {
                tracing::error!(job = %id, "could not persist the running state: {e}");
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            g.runs.insert(id.clone(), (token.clone(), false));
            return Ok(Some(Claimed {
                job: snapshot,
                lease: Lease {
                    id,
                    owner: owner.to_string(),
                    token,
                },
            }));
        }
        Ok(None)
    }

    fn renew(&self, leases: &[Lease], _lease: Duration) -> io::Result<Vec<Renewal>> {
        let g = self.lock();
        Ok(leases
            .iter()
            .map(|l| match g.runs.get(&l.id) {
                Some((t, cancel)) if *t == l.token && g.held(l) => {
                    Renewal::Held { cancel: *cancel }
                }
                _ => Renewal::Lost,
            })
            .collect())
    }

    fn reap(&self) -> io::Result<(usize, usize)> {
        Ok((0, 0))
    }

    fn set_stage(&self, lease: &Lease, stage: &str) -> io::Result<()> {
        let mut g = self.lock();
        if g.held(lease) {
            if let Some(job) = g.jobs.get_mut(&lease.id) {
                job.stage = Some(stage.to_string());
            }
        }
        Ok(())
    }

    fn finish(&self, lease: &Lease, finish: &Finish, now: u64) -> io::Result<Option<JobRecord>> {
        let mut g = self.lock();
        if !g.held(lease) {
            return Ok(None);
        }
        let Some(job) = g.jobs.get(&lease.id) else {
            return Ok(None);
        };
        let mut next = job.clone();
        apply_finish(&mut next, finish, now);
        if let Err(e) = self.save(&next) {
            tracing::error!(job = %lease.id, "could not persist the final state: {e}");
        }
        g.runs.remove(&lease.id);
        g.jobs.insert(lease.id.clone(), next.clone());
        if next.state == JobState::Queued {
            g.queue.push_front(lease.id.clone());
        }
        Ok(Some(next))
    }

    fn cancel(&self, id: &JobId, problem: &Problem, now: u64) -> io::Result<Option<CancelOutcome>> {
        let mut g = self.lock();
        let Some(job) = g.jobs.get(id) else {
            return Ok(None);
        };
        match job.state {
            JobState::Queued => {
                let mut next = job.clone();
                next.state = JobState::Canceled;
                next.finished_ms = Some(now);
                next.error = Some(problem.clone());
                self.save(&next)?;
                g.jobs.insert(id.clone(), next.clone());
                Ok(Some(CancelOutcome::Canceled(next)))
            }
            JobState::Running => {
                let job = job.clone();
                if let Some(run) = g.runs.get_mut(id) {
                    run.1 = true;
                }
                Ok(Some(CancelOutcome::Requested(job)))
            }
            _ => Ok(Some(CancelOutcome::Finished(job.clone()))),
        }
    }

    fn delete(&self, id: &JobId) -> io::Result<Deleted> {
        let mut g = self.lock();
        match g.jobs.get(id).map(|j| j.state) {
            None => Ok(Deleted::NotFound),
            Some(JobState::Running) => Ok(Deleted::Running),
            Some(_) => {
                self.remove_file(id)?;
                g.jobs.remove(id);
                Ok(Deleted::Removed)
            }
        }
    }

    fn expire(&self, horizon_ms: u64, limit: usize) -> io::Result<Vec<JobId>> {
        let (old, keys): (Vec<JobId>, Vec<String>) = {
            let g = self.lock();
            (
                g.jobs
                    .values()
                    .filter(|j| {
                        j.state.is_terminal() && j.finished_ms.is_some_and(|f| f < horizon_ms)
                    })
                    .take(limit)
                    .map(|j| j.id.clone())
                    .collect(),
                g.keys
                    .values()
                    .filter(|k| k.created_ms < horizon_ms)
                    .map(|k| k.key_sha256.clone())
                    .collect(),
            )
        };
        let mut removed = Vec::new();
        for id in old {
            match self.delete(&id) {
                Ok(Deleted::Removed) => removed.push(id),
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %id, "expiry: {e}"),
            }
        }
        for k in keys {
            if self.remove_key(&k).is_ok() {
                self.lock().keys.remove(&k);
            }
        }
        Ok(removed)
    }

    fn known(&self, ids: &[JobId]) -> io::Result<HashSet<JobId>> {
        let g = self.lock();
        Ok(ids
            .iter()
            .filter(|id| g.jobs.contains_key(*id))
            .cloned()
            .collect())
    }

    fn check(&self) -> io::Result<()> {
        probe(&self.root)
    }
}

/// Job files in one folder per job.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    fn new(root: &Path) -> Self {
        FsBlobStore {
            root: root.to_path_buf(),
        }
    }

    fn dir(&self, job: &JobId) -> PathBuf {
        self.root.join("blobs").join(job.as_str())
    }

    fn path(&self, job: &JobId, kind: BlobKind) -> PathBuf {
        self.dir(job).join(kind.file_name())
    }
}

struct FsSink {
    file: Option<BufWriter<WriteBehind>>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Write for FsSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("blob already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl BlobSink for FsSink {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("blob already committed"))?;
        let file = file.into_inner().map_err(|e| e.into_error())?.into_file();
        file.sync_all()?;
        drop(file);
        let dir = self
            .dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        fs::create_dir_all(&dir)?;
        fs::rename(&self.tmp, &self.dest)?;
        sync_dir(&dir)
    }
}

impl Drop for FsSink {
    fn drop(&mut self) {
        // Best effort: after a commit the temp file no longer exists.
        let _ = fs::remove_file(&self.tmp);
    }
}

impl BlobStore for FsBlobStore {
    fn create(&self, job: &JobId, kind: BlobKind) -> io::Result<Box<dyn BlobSink>> {
        let tmp = tmp_path(&self.root);
        let file = File::create(&tmp)?;
        Ok(Box::new(FsSink {
            file: Some(BufWriter::with_capacity(1 << 16, WriteBehind::new(file))),
            tmp,
            dest: self.path(job, kind),
        }))
    }

    fn open(&self, job: &JobId, kind: BlobKind) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let file = File::open(self.path(job, kind))?;
        let len = file.metadata()?.len();
        Ok((Box::new(file), len))
    }

    /// Blobs are written once (temporary file, fsync, rename) and never rewritten in place;
    /// deleting one unlinks it, which leaves a map of it valid: the invariant
    /// [`crate::onnx::mapped`] needs.
    fn map(&self, job: &JobId, kind: BlobKind) -> io::Result<Option<bytes::Bytes>> {
        crate::onnx::mapped::map_file(&self.path(job, kind)).map(Some)
    }

    fn delete(&self, job: &JobId) -> io::Result<()> {
        match fs::remove_dir_all(self.dir(job)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn jobs(&self) -> io::Result<Vec<JobId>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join("blobs"))? {
            if let Some(id) = entry?.file_name().to_str().and_then(JobId::parse) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn check(&self) -> io::Result<()> {
        probe(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "onnx-cle-store-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn blobs_are_invisible_until_committed_and_temp_files_vanish() {
        let dir = tempdir("blobs");
        let (_, blobs) = open(&dir).unwrap();
        let id = JobId::generate();
        let mut sink = blobs.create(&id, BlobKind::Input).unwrap();
        sink.write_all(b"hello").unwrap();
        assert!(blobs.open(&id, BlobKind::Input).is_err());
        sink.commit().unwrap();
        assert_eq!(blobs.read(&id, BlobKind::Input).unwrap(), b"hello");
        let mut dropped = blobs.create(&id, BlobKind::Model).unwrap();
        dropped.write_all(b"partial").unwrap();
        drop(dropped);
        assert!(blobs.open(&id, BlobKind::Model).is_err());
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(blobs.jobs().unwrap(), vec![id.clone()]);
        blobs.delete(&id).unwrap();
        blobs.delete(&id).unwrap();
        assert!(blobs.jobs().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unreadable_records_are_reported_not_fatal() {
        let dir = tempdir("jobs");
        let (jobs, _) = open(&dir).unwrap();
        let id = JobId::generate();
        fs::write(dir.join("jobs").join(format!("{id}.json")), b"{not json").unwrap();
        fs::write(dir.join("jobs").join("notes.json"), b"[]").unwrap();
        let (ok, bad) = jobs.load_all().unwrap();
        assert!(ok.is_empty());
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].id.as_ref(), Some(&id));
        assert!(bad[1].id.is_none());
        jobs.check().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}
