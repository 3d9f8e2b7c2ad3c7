//! RFC 9457 problem details: the one shape of every error the service returns.
//!
//! Invariants:
//! - every response with a 4xx or 5xx status is `application/problem+json` with a stable
//!   snake_case `code`, including axum's own rejections, unknown routes (404), wrong methods
//!   (405) and body-limit errors (413): [`ensure_problem`] rewrites whatever a handler or
//!   extractor produced;
//! - 5xx problems never carry internal details; the cause travels in a response extension
//!   ([`InternalCause`]) and is logged once, by [`ensure_problem`], with the request id.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::CoreError;

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Problem type URI; `about:blank` (the `code` member says what happened).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary: the HTTP reason phrase of `status`.
    pub title: String,
    /// HTTP status code of this problem.
    pub status: u16,
    /// Human-readable explanation of this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request path that produced the problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Stable snake_case machine code (`model_not_onnx`, `payload_too_large`, `job_not_found`…).
    pub code: String,
    /// The job concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Field-level errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One invalid input field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer (or query parameter as `/query/<name>`) to the field.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

impl Problem {
    /// A problem with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            instance: None,
            code: code.into(),
            job_id: None,
            errors: Vec::new(),
        }
    }

    /// The problem describing a core error. 5xx problems get a generic detail.
    pub fn from_core(e: &CoreError) -> Self {
        let status = match e {
            CoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            CoreError::Canceled => StatusCode::CONFLICT,
            CoreError::Limit(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let detail = if status.is_server_error() {
            "internal error while running the job".to_string()
        } else {
            e.to_string()
        };
        Problem::new(status, e.code(), detail)
    }
}

/// The internal cause of a 5xx response, for the log only.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

/// An error returned by a handler: a problem plus extra headers (e.g. `Retry-After`).
#[derive(Debug)]
pub struct ApiError {
    problem: Box<Problem>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    cause: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem::new(status, code, detail).into()
    }

    /// A 500 whose `cause` is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; the server log has the details",
        );
        e.cause = Some(cause.to_string());
        e
    }

    /// 404 for a job that does not exist (or has expired).
    pub fn job_not_found(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            "no such job (unknown id, deleted, or expired)",
        )
        .job(id)
    }

    /// Sets `job_id`.
    pub fn job(mut self, id: &str) -> Self {
        self.problem.job_id = Some(id.to_string());
        self
    }

    /// Adds a field error.
    pub fn field(mut self, pointer: &str, detail: impl Into<String>) -> Self {
        self.problem.errors.push(FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        });
        self
    }

    /// Adds `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.headers
            .push((header::RETRY_AFTER, HeaderValue::from(secs)));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The problem document.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError {
            problem: Box::new(p),
            headers: Vec::new(),
            cause: None,
        }
    }
}

impl From<&CoreError> for ApiError {
    fn from(e: &CoreError) -> Self {
        let mut a: ApiError = Problem::from_core(e).into();
        if a.status().is_server_error() {
            a.cause = Some(e.to_string());
        }
        if let CoreError::InvalidOptions(d) = e {
            a = a.field("/options", d.clone());
        }
        a
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = problem_response(&self.problem);
        for (k, v) in self.headers {
            res.headers_mut().insert(k, v);
        }
        res.extensions_mut().insert(*self.problem);
        if let Some(c) = self.cause {
            res.extensions_mut().insert(InternalCause(c));
        }
        res
    }
}

fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

/// The code used for a status when nothing more specific is known.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal_error",
        _ => "client_error",
    }
}

/// Router fallback: every unknown route is a `not_found` problem.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

const MAX_REJECTION_TEXT: usize = 4096;

/// Middleware that makes every 4xx/5xx response a problem document with `instance` set, and
/// logs the internal cause of 5xx responses.
pub async fn ensure_problem(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    if let Some(InternalCause(cause)) = parts.extensions.remove::<InternalCause>() {
        tracing::error!(%request_id, %path, %status, "{cause}");
    } else if status.is_server_error() {
        tracing::error!(%request_id, %path, %status, "server error");
    }
    let mut problem = match parts.extensions.remove::<Problem>() {
        Some(p) => p,
        None => {
            let text = if status.is_client_error() {
                rejection_text(body).await
            } else {
                None
            };
            let detail = text.unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_string()
            });
            Problem::new(status, code_for_status(status), detail)
        }
    };
    if problem.instance.is_none() {
        problem.instance = Some(path);
    }
    let mut out = problem_response(&problem);
    *out.status_mut() = status;
    merge_headers(out.headers_mut(), parts.headers);
    out
}

fn merge_headers(into: &mut HeaderMap, from: HeaderMap) {
    for (name, value) in from.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            into.insert(name.clone(), value.clone());
        }
    }
}

async fn rejection_text(body: Body) -> Option<String> {
    let bytes = axum::body::to_bytes(body, MAX_REJECTION_TEXT).await.ok()?;
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    (!text.is_empty()).then_some(text)
}
