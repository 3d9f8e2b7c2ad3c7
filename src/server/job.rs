//! The job resource: its persisted record ([`JobRecord`]) and its API view ([`Job`]).
//!
//! Invariants: `done` is derived from `state`; `error` is set exactly when the state is
//! `failed` or `canceled`; `result` exactly when it is `succeeded`. Job ids are `job_` plus the
//! 32 hex digits of a UUIDv7 (time-ordered, 74 random bits), so sorting ids sorts by creation
//! and a valid id is always a safe file name.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::problem::Problem;
use crate::report::VerifyStatus;
use crate::Options;

/// A validated job id (`job_` + 32 lower-case hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A fresh, unguessable, time-ordered id.
    pub fn generate() -> Self {
        JobId(format!("job_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Parses an id; `None` unless it has the exact shape of a generated one.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("job_")?;
        (hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| JobId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        JobId::parse(&s).ok_or_else(|| format!("invalid job id `{s}`"))
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// Lifecycle state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished; the model and the report can be downloaded.
    Succeeded,
    /// Finished with an error (`error` says why).
    Failed,
    /// Canceled on request.
    Canceled,
}

impl JobState {
    /// Whether the job is finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Canceled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The uploaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InputInfo {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the upload, lower-case hex.
    pub sha256: String,
    /// File name given by the client (multipart), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Summary of a succeeded job; the full report is at `links.report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobResult {
    /// Size of the equalized model in bytes.
    pub model_bytes: u64,
    /// SHA-256 of the equalized model (also its `ETag`).
    pub model_sha256: String,
    /// Whether the model's function was changed on request (see the report).
    pub function_changed: bool,
    /// Verification outcome.
    pub verification: VerifyStatus,
    /// Worst relative L2 deviation measured by verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rel_l2: Option<f64>,
    /// Whether the int8 outputs passed their self-check (absent when none was requested):
    /// `false` when one is worse than its plain baseline, was not checked, or leaves more than
    /// 10 % of the quantizable activations in float (the report's `int8` section has the
    /// details; the job option `strict_int8` makes such a job fail instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_trusted: Option<bool>,
    /// What is wrong with the int8 outputs, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub int8_problems: Vec<String>,
    /// The requested outputs besides the model (`links.artifacts` has their URLs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactInfo>,
    /// With int8 outputs: activation quantizers placed / quantizable, and what stayed float by
    /// reason (the report's `exports.coverage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdq_coverage: Option<crate::report::QdqCoverage>,
}

/// One stored output of a succeeded job, served at `/jobs/{id}/artifacts/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactInfo {
    /// `deploy.onnx`, `qdq.onnx`, `encodings.json` or `ort_overrides.json`.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex (also its `ETag`).
    pub sha256: String,
    /// Media type it is served as.
    pub media_type: String,
}

/// The persisted form of a job (timestamps in Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Optional client-chosen label.
    #[serde(default)]
    pub name: Option<String>,
    /// State.
    pub state: JobState,
    /// Pipeline stage last reported by the running job.
    #[serde(default)]
    pub stage: Option<String>,
    /// Creation time.
    pub created_ms: u64,
    /// Time the last run started.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// Time it reached a terminal state.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Normalized options.
    pub options: Options,
    /// The upload.
    pub input: InputInfo,
    /// sha256 over the upload's hash and the canonical options JSON.
    pub fingerprint: String,
    /// Set when succeeded.
    #[serde(default)]
    pub result: Option<JobResult>,
    /// Set when failed or canceled.
    #[serde(default)]
    pub error: Option<Problem>,
    /// Runs started (more than one after a crash or a shutdown mid-run).
    #[serde(default)]
    pub attempts: u32,
}

/// Progress of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// Current stage, in the order a run goes through them (those it needs): `verify_original`,
    /// `prepare`, `bn_fold`, `relu6`, `cls`, `hbf`, `finish`, `int8_model` (the int8 outputs
    /// built from a run of their own: `scaling = split`, or BNs kept for per-tensor weights),
    /// `quantization`, `deploy`, `exports`, `verify`.
    pub stage: String,
}

/// Links to the job and its results (relative to the service root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobLinks {
    /// This job.
    #[serde(rename = "self")]
    pub self_: String,
    /// Equalized model (when succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// JSON report (when succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The report as an HTML page (when succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_html: Option<String>,
    /// Cancel (while not finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
    /// The requested outputs besides the model, by name (when succeeded).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub artifacts: std::collections::BTreeMap<String, String>,
}

/// A CLE job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Opaque id.
    pub id: String,
    /// Client-chosen label.
    pub name: Option<String>,
    /// State.
    pub state: JobState,
    /// `true` once the state is `succeeded`, `failed` or `canceled`.
    pub done: bool,
    /// RFC 3339 creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339 start of the last run.
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// RFC 3339 end time.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Progress while running.
    pub progress: Option<Progress>,
    /// Options in effect (normalized).
    pub options: Options,
    /// The uploaded model.
    pub input: InputInfo,
    /// sha256 of (input sha256, canonical options): equal fingerprints give equal results.
    pub fingerprint: String,
    /// Runs started so far.
    pub attempts: u32,
    /// Outcome summary when succeeded.
    pub result: Option<JobResult>,
    /// Why it failed or was canceled.
    pub error: Option<Problem>,
    /// Related resources.
    pub links: JobLinks,
}

impl From<&JobRecord> for Job {
    fn from(r: &JobRecord) -> Self {
        let base = format!("/jobs/{}", r.id);
        let ok = r.state == JobState::Succeeded;
        Job {
            id: r.id.to_string(),
            name: r.name.clone(),
            state: r.state,
            done: r.state.is_terminal(),
            created_at: rfc3339(r.created_ms),
            started_at: r.started_ms.map(rfc3339),
            finished_at: r.finished_ms.map(rfc3339),
            progress: match (r.state, &r.stage) {
                (JobState::Running, Some(s)) => Some(Progress { stage: s.clone() }),
                _ => None,
            },
            options: r.options.clone(),
            input: r.input.clone(),
            fingerprint: r.fingerprint.clone(),
            attempts: r.attempts,
            result: r.result.clone(),
            error: r.error.clone(),
            links: JobLinks {
                model: ok.then(|| format!("{base}/model")),
                report: ok.then(|| format!("{base}/report")),
                report_html: ok.then(|| format!("{base}/report.html")),
                cancel: (!r.state.is_terminal()).then(|| format!("{base}/cancel")),
                artifacts: r
                    .result
                    .iter()
                    .filter(|_| ok)
                    .flat_map(|res| &res.artifacts)
                    .map(|a| (a.name.clone(), format!("{base}/artifacts/{}", a.name)))
                    .collect(),
                self_: base,
            },
        }
    }
}

/// One page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// The jobs of this page.
    pub jobs: Vec<Job>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2024-01-31T12:00:00.000Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (H. Hinnant): days since 1970-01-01 to year/month/day.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn ids() {
        let id = JobId::generate();
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert!(JobId::parse("job_../../etc/passwd").is_none());
        assert!(JobId::parse("job_0123456789ABCDEF0123456789abcdef").is_none());
        assert!(JobId::parse("0123456789abcdef0123456789abcdef").is_none());
        assert!(JobId::generate() > id);
    }
}
