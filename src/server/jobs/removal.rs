//! Removing jobs and their files: on request ([`Jobs::delete`]), once finished for longer than
//! the retention ([`Jobs::expire`]), and blobs that never got a record
//! ([`Jobs::sweep_orphans`]).

use std::io;
use std::time::Duration;

use axum::http::StatusCode;

use super::{io_err, Jobs};
use crate::server::job::JobId;
use crate::server::problem::ApiError;
use crate::server::store::{id_created_ms, Deleted};

impl Jobs {
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
            .filter(|id| id_created_ms(id).is_some_and(|t| t < horizon))
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
}
