//! Submissions: the room check, idempotency keys in flight and remembered, and queueing a job
//! whose upload is stored.

use std::sync::Arc;

use axum::http::StatusCode;

use super::{io_err, Jobs, KeyGuard, NewJob, QUEUE_FULL_RETRY_SECS};
use crate::server::job::{now_ms, JobId, JobRecord, JobState};
use crate::server::problem::ApiError;
use crate::server::store::{IdempotencyRecord, SubmitError, Submitted};

impl Jobs {
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
