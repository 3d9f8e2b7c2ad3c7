//! HTTP handlers and the OpenAPI declaration they share (one `#[utoipa::path]` per handler,
//! mounted with `utoipa_axum::routes!`, so the served routes and the document cannot drift).
//!
//! Handlers are thin: extract, validate, call [`Jobs`] (on the blocking pool when it writes),
//! respond. Every error is an [`ApiError`] problem; every operation documents `4XX`/`5XX`
//! as `Problem`: [`ServerError`] is the `5XX` they share, [`NotSucceeded`] the `4XX` of the
//! operations on a succeeded job's results.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::{self, ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::config::{HEALTH_PATH, METRICS_PATH, READY_PATH};
use super::job::{Job, JobId, JobList, JobRecord, JobState};
use super::jobs::{store_error, Jobs, NewJob, RETRY_AFTER_SECS, UNAVAILABLE_RETRY_SECS};
use super::metrics::Submission;
use super::problem::{ApiError, FieldError, Problem, PROBLEM_JSON};
use super::store::BlobKind;
use super::upload::{self, EqualizeForm, EqualizeParams, OnnxFile};
use crate::onnx::limits::Limits;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The job registry.
    pub jobs: Arc<Jobs>,
    /// Largest accepted model.
    pub max_upload: u64,
    /// Longest long-poll.
    pub max_wait: Duration,
    /// Worker pool size (for metrics).
    pub workers: usize,
    /// Cancelled when shutdown starts (ends long-polls).
    pub shutdown: CancellationToken,
    /// Model limits checked on every upload before it is queued.
    pub limits: Limits,
    /// Upload slots (`--max-concurrent-uploads`).
    pub uploads: Arc<Semaphore>,
    /// Longest an upload may take.
    pub upload_timeout: Duration,
    /// Validity of presigned model URLs (`--presign`; zero: stream through the service).
    pub presign: Duration,
}

/// The base document: info and tags; paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "onnx-cle",
        description = "Data-free Cross-Layer Equalization of ONNX models as a job service. \
            Submit a model to `POST /equalize` (202 + `Location`), poll or long-poll \
            `GET /jobs/{id}?wait=30s` until `done`, then download `/jobs/{id}/model` and \
            `/jobs/{id}/report`. Errors are RFC 9457 `application/problem+json` with a stable `code`."
    ),
    tags(
        (name = "jobs", description = "Equalization jobs"),
        (name = "service", description = "Health, readiness and metrics")
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerScheme),
    security((), ("bearer_auth" = []))
)]
struct ApiDoc;

/// Declares the optional bearer-token scheme (`--auth-token`).
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_auth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on every operation but the health checks when the server runs \
                         with `--auth-token` (`ONNX_CLE_AUTH_TOKEN`); a missing or wrong token \
                         is `401 unauthorized` with `WWW-Authenticate: Bearer`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The `5XX` answer of every operation but `readyz`: "Server error.", as a [`Problem`]. Named
/// last in `responses(...)`.
pub struct ServerError;

impl utoipa::IntoResponses for ServerError {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        BTreeMap::from([("5XX".to_string(), problem_response("Server error."))])
    }
}

/// The `4XX` answer of the operations on a succeeded job's results ([`require_succeeded`]):
/// an unknown job (404) or one that has not succeeded (409), as a [`Problem`].
pub struct NotSucceeded;

impl utoipa::IntoResponses for NotSucceeded {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        let description = "Unknown job (404) or not succeeded (409).";
        BTreeMap::from([("4XX".to_string(), problem_response(description))])
    }
}

/// A response of `description` whose body is a [`Problem`] (`application/problem+json`).
fn problem_response(description: &str) -> RefOr<openapi::Response> {
    let problem = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, problem)
        .build()
        .into()
}

/// The API routes with their OpenAPI description (state still to be applied).
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(submit_job))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(cancel_job))
        .routes(routes!(download_model))
        .routes(routes!(download_artifact))
        .routes(routes!(get_report))
        .routes(routes!(get_report_html))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Query extractor whose rejection is an `invalid_query` problem.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(|| ApiError::job_not_found(raw))
}

/// Job `raw`, which must have succeeded: 404 when it is unknown, 409 ([`require_succeeded`])
/// when it has not succeeded.
fn find_succeeded(app: &AppState, raw: &str) -> Result<JobRecord, ApiError> {
    let id = job_id(raw)?;
    let job = app
        .jobs
        .lookup(&id)?
        .ok_or_else(|| ApiError::job_not_found(raw))?;
    require_succeeded(&job)?;
    Ok(job)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

fn job_response(status: StatusCode, job: &JobRecord) -> Response {
    let mut res = (status, Json(Job::from(job))).into_response();
    if !job.state.is_terminal() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    res
}

fn accepted(job: &JobRecord, replayed: bool) -> Response {
    let mut res = job_response(StatusCode::ACCEPTED, job);
    let location = format!("/jobs/{}", job.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v.clone());
        res.headers_mut().insert("operation-location", v);
    }
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    };
    let text = v.to_str().map_err(|_| bad())?.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(hex::encode(Sha256::digest(text.as_bytes()))))
}

/// Submit a model for equalization.
///
/// Two forms: `multipart/form-data` with a `model` file part and optional `options` (JSON) and
/// `name` parts, or the raw model as `application/octet-stream` with the options as query
/// parameters (these are ignored, and refused, with multipart). The upload is stored and the
/// job queued; the answer is `202` with `Location` (and `Operation-Location`) pointing at the
/// job and `Retry-After`. With an `Idempotency-Key` header, repeating the same request returns
/// the original job (`Idempotent-Replayed: true`); the same key with a different model or
/// options is `422 idempotency_key_reused`; keys are kept as long as jobs (the retention).
/// A full queue is `429` with `Retry-After`; a body over the limit is `413`.
#[utoipa::path(
    post,
    path = "/equalize",
    operation_id = "submit_job",
    tag = "jobs",
    params(
        EqualizeParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request return the original job.")
    ),
    request_body(
        description = "The model, as a form or as the raw body.",
        content(
            (EqualizeForm = "multipart/form-data", encoding(("options" = (content_type = "application/json")))),
            (OnnxFile = "application/octet-stream")
        )
    ),
    responses(
        (status = 202, description = "Job queued (or replayed for a repeated Idempotency-Key).", body = Job,
            headers(
                ("Location" = String, description = "The job's URL."),
                ("Operation-Location" = String, description = "Same as Location."),
                ("Retry-After" = u64, description = "Seconds before polling.")
            )),
        (status = "4XX", description = "Invalid request, too large (413), queue full (429).", body = Problem, content_type = PROBLEM_JSON),
        ServerError
    )
)]
async fn submit_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let metrics = Arc::clone(app.jobs.metrics());
    let result = submit(&app, &headers, req).await;
    metrics.submitted(match &result {
        Ok((_, true)) => Submission::Replayed,
        Ok((_, false)) => Submission::Accepted,
        Err(_) => Submission::Rejected,
    });
    result.map(|(job, replayed)| accepted(&job, replayed))
}

async fn submit(
    app: &AppState,
    headers: &HeaderMap,
    req: Request,
) -> Result<(JobRecord, bool), ApiError> {
    let key = idempotency_key(headers)?;
    let guard = key.map(|k| app.jobs.begin_key(k)).transpose()?;
    app.jobs.check_room()?;
    let _slot = Arc::clone(&app.uploads).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            "the server is receiving as many uploads as it allows; retry shortly",
        )
        .retry_after(RETRY_AFTER_SECS)
    })?;
    let id = JobId::generate();
    let received = tokio::time::timeout(
        app.upload_timeout,
        upload::receive(&app.jobs, &id, req, app.max_upload, &app.limits),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_timeout",
            format!(
                "the upload took longer than this server allows ({}s)",
                app.upload_timeout.as_secs_f64()
            ),
        ))
    });
    let up = match received {
        Ok(up) => up,
        Err(e) => {
            discard_upload(&app.jobs, id).await;
            return Err(e);
        }
    };
    app.jobs.metrics().upload(up.input.bytes);
    let fingerprint = up.fingerprint();
    let jobs = Arc::clone(&app.jobs);
    let key = guard.as_ref().map(|g| g.key().to_string());
    let id = up.id.clone();
    let outcome = blocking(move || {
        if let Some(k) = &key {
            if let Some(existing) = jobs.replay(k, &fingerprint)? {
                return Ok((existing, true));
            }
        }
        let new = NewJob {
            id: up.id,
            name: up.name,
            options: up.options,
            input: up.input,
            fingerprint,
        };
        jobs.submit_or_replay(new, key)
    })
    .await;
    if !matches!(outcome, Ok((_, false))) {
        discard_upload(&app.jobs, id).await;
    }
    drop(guard);
    outcome
}

/// Removes the files of upload `id`, which did not become a new job (on the blocking pool).
async fn discard_upload(jobs: &Arc<Jobs>, id: JobId) {
    let jobs = Arc::clone(jobs);
    let _ = tokio::task::spawn_blocking(move || jobs.blobs().delete(&id)).await;
}

/// Paging and filtering of `GET /jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Jobs per page (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100)]
    pub page_size: Option<usize>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
}

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "One page of jobs.", body = JobList),
        (status = "4XX", description = "Invalid paging parameters.", body = Problem, content_type = PROBLEM_JSON),
        ServerError
    )
)]
async fn list_jobs(
    State(app): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<Json<JobList>, ApiError> {
    let size = p.page_size.unwrap_or(20);
    if !(1..=100).contains(&size) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "page_size must be between 1 and 100",
        )
        .field("/query/page_size", "between 1 and 100"));
    }
    let after = match p.page_token.as_deref() {
        None | Some("") => None,
        Some(t) => Some(JobId::parse(t).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_page_token",
                "page_token is not one this server issued",
            )
        })?),
    };
    let (page, next) = app.jobs.try_list(size, after.as_ref(), p.state)?;
    Ok(Json(JobList {
        jobs: page.iter().map(Job::from).collect(),
        next_page_token: next.map(String::from),
    }))
}

/// Long-poll of `GET /jobs/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Wait up to this long (e.g. `30s`, `2m`, `1500ms`; capped by the server) for the job to
    /// finish before answering.
    #[param(pattern = r"^[0-9]+(\.[0-9]+)?(ms|s|m|min|h|d)?$")]
    pub wait: Option<String>,
}

/// Get a job; with `?wait=30s`, answer as soon as it is done or when the wait is over.
///
/// A failed job is `200` with `error` set: the HTTP status describes the request, not the job.
/// While the job is not done the answer carries `Retry-After`.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id."), WaitParams),
    responses(
        (status = 200, description = "The job.", body = Job,
            headers(("Retry-After" = Option<u64>, description = "Seconds before polling again (while not done)."))),
        (status = "4XX", description = "Unknown job (404) or invalid `wait`.", body = Problem, content_type = PROBLEM_JSON),
        ServerError
    )
)]
async fn get_job(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Q(p): Q<WaitParams>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw)?;
    let wait = match p.wait.as_deref() {
        None | Some("") => Duration::ZERO,
        Some(w) => super::config::parse_duration(w).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.clone())
                .field("/query/wait", e)
        })?,
    };
    let deadline = tokio::time::Instant::now() + wait.min(app.max_wait);
    let mut changes = app.jobs.subscribe();
    loop {
        let job = app
            .jobs
            .lookup(&id)?
            .ok_or_else(|| ApiError::job_not_found(&raw))?;
        if job.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(job_response(StatusCode::OK, &job));
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Ok(job_response(StatusCode::OK, &job)); },
            () = tokio::time::sleep_until(deadline) => {},
            () = tokio::time::sleep(app.jobs.poll_interval()) => {},
            () = app.shutdown.cancelled() => return Ok(job_response(StatusCode::OK, &job)),
        }
    }
}

/// Delete a job and its files. A running job must be canceled first (409).
#[utoipa::path(
    delete,
    path = "/jobs/{id}",
    operation_id = "delete_job",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = "4XX", description = "Unknown job (404) or still running (409).", body = Problem, content_type = PROBLEM_JSON),
        ServerError
    )
)]
async fn delete_job(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = job_id(&raw)?;
    let jobs = Arc::clone(&app.jobs);
    blocking(move || jobs.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel a job (best effort): a queued job is canceled at once, a running one at its next
/// stage boundary. Finished jobs answer 409.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 202, description = "Cancellation accepted; the job as it is now.", body = Job),
        (status = "4XX", description = "Unknown job (404) or already finished (409).", body = Problem, content_type = PROBLEM_JSON),
        ServerError
    )
)]
async fn cancel_job(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw)?;
    let jobs = Arc::clone(&app.jobs);
    let job = blocking(move || jobs.cancel(&id)).await?;
    Ok(job_response(StatusCode::ACCEPTED, &job))
}

fn require_succeeded(job: &JobRecord) -> Result<(), ApiError> {
    match job.state {
        JobState::Succeeded => Ok(()),
        JobState::Queued | JobState::Running => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_not_finished",
            "the job is not finished; long-poll GET /jobs/{id}?wait=30s",
        )
        .retry_after(RETRY_AFTER_SECS)
        .job(job.id.as_str())),
        JobState::Failed | JobState::Canceled => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_not_succeeded",
            format!("the job {}; see its `error`", job.state.as_str()),
        )
        .job(job.id.as_str())),
    }
}

fn reader_body(mut reader: Box<dyn Read + Send>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0u8; 256 << 10];
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn download_name(job: &JobRecord) -> String {
    let stem = job
        .input
        .filename
        .as_deref()
        .map(|f| f.strip_suffix(".onnx").unwrap_or(f))
        .filter(|s| !s.is_empty())
        .unwrap_or("model");
    format!("{stem}.cle.onnx")
}

/// Download the equalized model (`application/octet-stream`, with `ETag` and
/// `Content-Disposition`). `If-None-Match` with the ETag answers 304.
#[utoipa::path(
    get,
    path = "/jobs/{id}/model",
    operation_id = "download_model",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The equalized ONNX model.", body = OnnxFile, content_type = "application/octet-stream",
            headers(
                ("ETag" = String, description = "Quoted sha256 of the model."),
                ("Content-Disposition" = String, description = "attachment; filename=\"<upload>.cle.onnx\"")
            )),
        (status = 303, description = "With `--presign` on an S3 blob store: the model is at the presigned URL in `Location`.",
            headers(("Location" = String, description = "Presigned URL of the model."))),
        (status = 304, description = "Not modified (If-None-Match matched)."),
        NotSucceeded,
        ServerError
    )
)]
async fn download_model(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = find_succeeded(&app, &raw)?;
    let sha = job
        .result
        .as_ref()
        .map(|r| r.model_sha256.clone())
        .unwrap_or_default();
    let name = download_name(&job);
    serve_blob(
        &app,
        &job,
        BlobKind::Model,
        &sha,
        "application/octet-stream",
        &name,
        &headers,
    )
    .await
}

/// Streams blob `kind` of `job` with its ETag (`sha`), answering 304 to a matching
/// `If-None-Match`.
async fn serve_blob(
    app: &AppState,
    job: &JobRecord,
    kind: BlobKind,
    sha: &str,
    media_type: &'static str,
    filename: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{sha}\"");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag_value = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    if !app.presign.is_zero() {
        let (jobs, id, ttl) = (Arc::clone(&app.jobs), job.id.clone(), app.presign);
        let url = blocking(move || {
            jobs.blobs()
                .presign(&id, BlobKind::Model, ttl)
                .map_err(|e| store_error("blob store", &e))
        })
        .await?;
        if let Some(url) = url {
            let location = HeaderValue::from_str(&url).map_err(ApiError::internal)?;
            return Ok((
                StatusCode::SEE_OTHER,
                [(header::LOCATION, location), (header::ETAG, etag_value)],
            )
                .into_response());
        }
    }
    let jobs = Arc::clone(&app.jobs);
    let id = job.id.clone();
    let (reader, len) = blocking(move || {
        jobs.blobs()
            .open(&id, kind)
            .map_err(|e| store_error(&format!("opening {} of {id}", kind.file_name()), &e))
    })
    .await?;
    let disposition = format!("attachment; filename=\"{filename}\"");
    let mut res = Response::new(reader_body(reader));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ETAG, etag_value);
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(ApiError::internal)?,
    );
    Ok(res)
}

/// Download one requested output of a succeeded job: `deploy.onnx`, `qdq.onnx` (the QDQ ONNX
/// model), `encodings.json` (AIMET encodings) or `ort_overrides.json` (onnxruntime
/// `TensorQuantOverrides`), as listed in the job's `links.artifacts`. With `ETag` (its sha256)
/// and `Content-Disposition`; `If-None-Match` with the ETag answers 304. An output the job did not
/// produce is `404 artifact_not_found`.
#[utoipa::path(
    get,
    path = "/jobs/{id}/artifacts/{name}",
    operation_id = "download_artifact",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id."),
        ("name" = String, Path, description = "Artifact name, as in `links.artifacts`.")
    ),
    responses(
        (status = 200, description = "The artifact: an ONNX model (`application/octet-stream`) or JSON (`application/json`).",
            content(
                (OnnxFile = "application/octet-stream"),
                (serde_json::Value = "application/json")
            ),
            headers(
                ("ETag" = String, description = "Quoted sha256 of the artifact."),
                ("Content-Disposition" = String, description = "attachment; filename=\"<upload>.<name>\"")
            )),
        (status = 304, description = "Not modified (If-None-Match matched)."),
        (status = "4XX", description = "Unknown job or artifact (404) or not succeeded (409).", body = Problem, content_type = PROBLEM_JSON),
        ServerError
    )
)]
async fn download_artifact(
    State(app): State<AppState>,
    Path((raw, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = find_succeeded(&app, &raw)?;
    let listed = job
        .result
        .as_ref()
        .map(|r| r.artifacts.as_slice())
        .unwrap_or_default();
    let found = crate::ArtifactKind::parse(&name)
        .and_then(|kind| Some((kind, listed.iter().find(|a| a.name == name)?)));
    let Some((kind, info)) = found else {
        let available: Vec<&str> = listed.iter().map(|a| a.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "artifact_not_found",
            if available.is_empty() {
                format!("the job has no artifact `{name}`; it produced none (request them in the options' `exports`)")
            } else {
                format!(
                    "the job has no artifact `{name}`; it has {}",
                    available.join(", ")
                )
            },
        )
        .job(job.id.as_str()));
    };
    let stem = download_name(&job);
    let stem = stem.strip_suffix(".cle.onnx").unwrap_or(&stem);
    serve_blob(
        &app,
        &job,
        BlobKind::Artifact(kind),
        &info.sha256.clone(),
        kind.media_type(),
        &format!("{stem}.{name}"),
        &headers,
    )
    .await
}

/// Get the JSON report of a succeeded job (per-layer folds, scales, skips, verification).
#[utoipa::path(
    get,
    path = "/jobs/{id}/report",
    operation_id = "get_report",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The report.", body = crate::Report),
        NotSucceeded,
        ServerError
    )
)]
async fn get_report(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let data = stored_report(&app, &raw, Ok).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], data).into_response())
}

/// The stored JSON report of succeeded job `raw`, turned into `T` by `then` on the blocking pool.
async fn stored_report<T: Send + 'static>(
    app: &AppState,
    raw: &str,
    then: impl FnOnce(Vec<u8>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let job = find_succeeded(app, raw)?;
    let jobs = Arc::clone(&app.jobs);
    let id = job.id.clone();
    blocking(move || {
        let data = jobs
            .blobs()
            .read(&id, BlobKind::Report)
            .map_err(|e| store_error(&format!("reading the report of {id}"), &e))?;
        then(data)
    })
    .await
}

/// Get the report of a succeeded job as a self-contained HTML page (no scripts, no external
/// resources): the same content as `/report`, for people.
#[utoipa::path(
    get,
    path = "/jobs/{id}/report.html",
    operation_id = "get_report_html",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The report page.", body = String, content_type = "text/html; charset=utf-8"),
        NotSucceeded,
        ServerError
    )
)]
async fn get_report_html(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let html = stored_report(&app, &raw, |data| {
        let report: crate::Report = serde_json::from_slice(&data)
            .map_err(|e| ApiError::internal(format!("stored report: {e}")))?;
        Ok(crate::report::html::render(&report))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
        ],
        html,
    )
        .into_response())
}

/// Health or readiness status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok` (live) or `ready`.
    pub status: String,
}

/// Liveness: the process is up (does not touch storage).
#[utoipa::path(
    get,
    path = HEALTH_PATH,
    operation_id = "healthz",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "Alive.", body = Status),
        ServerError
    )
)]
async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: accepting jobs (not draining; job store and blob store reachable and writable);
/// 503 problem with `Retry-After` otherwise.
#[utoipa::path(
    get,
    path = READY_PATH,
    operation_id = "readyz",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = Status),
        (status = "5XX", description = "Not ready (503) or server error.", body = Problem, content_type = PROBLEM_JSON)
    )
)]
async fn readyz(State(app): State<AppState>) -> Result<Json<Status>, ApiError> {
    let jobs = Arc::clone(&app.jobs);
    blocking(move || {
        jobs.ready().map_err(|reason| {
            let draining = reason == "draining";
            let e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                if draining { "draining" } else { "not_ready" },
                if draining {
                    "shutting down"
                } else {
                    "storage is not writable or not reachable"
                },
            )
            .retry_after(if draining { 10 } else { UNAVAILABLE_RETRY_SECS });
            if !draining {
                tracing::warn!("readiness: {reason}");
            }
            e
        })
    })
    .await?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get,
    path = METRICS_PATH,
    operation_id = "metrics",
    tag = "service",
    responses(
        (status = 200, description = "Metrics.", body = String, content_type = "text/plain; version=0.0.4"),
        ServerError
    )
)]
async fn metrics(State(app): State<AppState>) -> Response {
    let (jobs, workers) = (Arc::clone(&app.jobs), app.workers);
    let gauges = tokio::task::spawn_blocking(move || jobs.gauges(workers))
        .await
        .unwrap_or_default();
    let text = app.jobs.metrics().render_gauges(&gauges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
