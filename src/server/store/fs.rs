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

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{BlobKind, BlobSink, BlobStore, IdempotencyRecord, JobStore, Unreadable};
use crate::server::job::{JobId, JobRecord};

/// Opens (creating when needed) the stores of a data directory.
pub fn open(data_dir: &Path) -> io::Result<(FsJobStore, FsBlobStore)> {
    let root = data_dir.to_path_buf();
    for sub in ["jobs", "keys", "blobs", "tmp"] {
        fs::create_dir_all(root.join(sub))?;
    }
    for entry in fs::read_dir(root.join("tmp"))? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(path)?;
        }
    }
    Ok((FsJobStore { root: root.clone() }, FsBlobStore { root }))
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

/// Job records as JSON files.
#[derive(Debug, Clone)]
pub struct FsJobStore {
    root: PathBuf,
}

impl FsJobStore {
    fn job_path(&self, id: &JobId) -> PathBuf {
        self.root.join("jobs").join(format!("{id}.json"))
    }

    fn key_path(&self, key_sha256: &str) -> Option<PathBuf> {
        let safe = key_sha256.len() == 64 && key_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        safe.then(|| self.root.join("keys").join(format!("{key_sha256}.json")))
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

impl JobStore for FsJobStore {
    fn save(&self, job: &JobRecord) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(job).map_err(io::Error::other)?;
        write_atomic(&self.root, &self.job_path(&job.id), &data)
    }

    fn load_all(&self) -> io::Result<(Vec<JobRecord>, Vec<Unreadable>)> {
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

    fn remove(&self, id: &JobId) -> io::Result<()> {
        remove_if_exists(&self.job_path(id))
    }

    fn save_key(&self, rec: &IdempotencyRecord) -> io::Result<()> {
        let path = self
            .key_path(&rec.key_sha256)
            .ok_or_else(|| io::Error::other("idempotency key digest is not hex"))?;
        let data = serde_json::to_vec(rec).map_err(io::Error::other)?;
        write_atomic(&self.root, &path, &data)
    }

    fn load_keys(&self) -> io::Result<Vec<IdempotencyRecord>> {
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
    fn dir(&self, job: &JobId) -> PathBuf {
        self.root.join("blobs").join(job.as_str())
    }

    fn path(&self, job: &JobId, kind: BlobKind) -> PathBuf {
        self.dir(job).join(kind.file_name())
    }
}

struct FsSink {
    file: Option<BufWriter<File>>,
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
        let file = file.into_inner().map_err(|e| e.into_error())?;
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
            file: Some(BufWriter::with_capacity(1 << 16, file)),
            tmp,
            dest: self.path(job, kind),
        }))
    }

    fn open(&self, job: &JobId, kind: BlobKind) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let file = File::open(self.path(job, kind))?;
        let len = file.metadata()?.len();
        Ok((Box::new(file), len))
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
