//! The runs this replica holds: claiming queued jobs, recording stages, ending runs (fenced by
//! their lease), renewing leases, taking over jobs whose lease ran out, deadlines, and
//! cancellation, which reaches a run on whichever replica holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::{io_err, Claim, Jobs, Outcome, Running};
use crate::server::job::{now_ms, JobId, JobRecord, JobState};
use crate::server::problem::{ApiError, Problem};
use crate::server::store::{CancelOutcome, Finish, Lease, Renewal};

impl Jobs {
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

    pub(super) fn cancel_local(&self, id: &JobId) {
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

    /// Puts jobs whose lease ran out back in the queue (or fails them after
    /// [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS)).
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

    /// Asks every running job to stop; they go back to the queue state.
    pub fn interrupt_running(&self) {
        for r in self.lock().running.values() {
            r.cancel.store(true, Ordering::Relaxed);
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
