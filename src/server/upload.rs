//! Model intake for `POST /equalize`: a `multipart/form-data` body (parts `model`, optional
//! `options` JSON and `name`) or a raw `application/octet-stream` body with the options as query
//! parameters.
//!
//! Invariants: the model streams into a [`BlobSink`] in ~1 MiB slices, hashed (sha256) on the
//! blocking pool as it goes, so an upload never sits whole in memory; a body over the limit is a
//! 413 before anything is committed (by `Content-Length` up front, by counting otherwise); a
//! sink dropped on any error discards its temp file. Options are validated with
//! [`Options::normalized`] before the job exists.

use std::io::Write;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::job::{InputInfo, JobId};
use super::jobs::{store_error, Jobs};
use super::problem::ApiError;
use super::store::{BlobKind, BlobSink};
use crate::onnx::limits::Limits;
use crate::options::flags::{self, Flag, FLAGS};
use crate::Options;

const FLUSH_BYTES: usize = 1 << 20;
const MAX_OPTIONS_BYTES: usize = 64 << 10;
const MAX_NAME_CHARS: usize = 200;
/// Room for multipart boundaries, part headers and the options part.
pub const MULTIPART_OVERHEAD: u64 = 1 << 20;
/// After a raw body exceeds the limit, up to this much more is read and discarded so the
/// client gets the 413 instead of a connection reset.
const DRAIN_BYTES: u64 = 16 << 20;

/// Options of a raw-body upload, as query parameters: every row of [`FLAGS`] with a query
/// name, plus the job's `name`. Unset parameters keep the defaults of `onnx-cle equalize`
/// (`compat=aimet` starts from AIMET's defaults); repeated parameters accumulate (lists) or the
/// last one wins.
#[derive(Debug, Default)]
pub struct EqualizeParams {
    /// The options given, with their raw values.
    given: Vec<(&'static Flag, Vec<String>)>,
    /// Label for the job.
    pub name: Option<String>,
}

impl IntoParams for EqualizeParams {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::Required;
        let param = |name: &str, doc: String, schema| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(doc))
                .schema(Some(schema))
                .build()
        };
        FLAGS
            .iter()
            .filter_map(|f| Some(param(f.query?, f.doc(), f.query_schema())))
            .chain([param(
                "name",
                "Label for the job.".into(),
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_NAME_CHARS))
                    .into(),
            )])
            .collect()
    }
}

/// The multipart form of `POST /equalize`.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "describes the request body in the OpenAPI document only"
)]
pub struct EqualizeForm {
    /// The ONNX model file.
    #[schema(value_type = String, format = Binary)]
    model: Vec<u8>,
    /// Options (JSON, `Content-Type: application/json`); omitted fields keep their defaults.
    options: Option<Options>,
    /// Label for the job.
    #[schema(max_length = 200)]
    name: Option<String>,
}

/// A raw ONNX model body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[expect(
    dead_code,
    reason = "describes the request body in the OpenAPI document only"
)]
pub struct OnnxFile(Vec<u8>);

/// A received upload: stored under `id`, not yet a job.
#[derive(Debug)]
pub struct Upload {
    /// Id the blob is stored under (and the job will get).
    pub id: JobId,
    /// Size, hash, file name.
    pub input: InputInfo,
    /// Normalized options.
    pub options: Options,
    /// Client label.
    pub name: Option<String>,
}

impl Upload {
    /// sha256 over the input hash and the canonical options JSON.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.input.sha256.as_bytes());
        h.update(b"\n");
        h.update(serde_json::to_vec(&self.options).unwrap_or_default());
        hex::encode(h.finalize())
    }
}

fn bad_query(name: &str, detail: impl Into<String>) -> ApiError {
    let detail = detail.into();
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", detail.clone())
        .field(&format!("/query/{name}"), detail)
}

fn invalid_options(detail: impl Into<String>) -> ApiError {
    let detail = detail.into();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_options",
        detail.clone(),
    )
    .field("/options", detail)
}

/// Parses the query string of a raw upload into [`EqualizeParams`], checking every value
/// against its option. Unknown parameters are an error (typos must not be ignored).
pub fn parse_params(query: &str) -> Result<EqualizeParams, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| bad_query("", format!("malformed query string: {e}")))?;
    let mut p = EqualizeParams::default();
    for (k, v) in pairs {
        if k == "name" {
            p.name = Some(v);
            continue;
        }
        let Some(flag) = Flag::by_query(&k) else {
            return Err(bad_query(&k, format!("unknown query parameter `{k}`")));
        };
        match p.given.iter_mut().find(|(f, _)| f.field == flag.field) {
            Some((_, values)) => values.push(v),
            None => p.given.push((flag, vec![v])),
        }
    }
    p.checked()?;
    Ok(p)
}

impl EqualizeParams {
    /// The options these parameters select, not yet normalized.
    fn checked(&self) -> Result<Options, ApiError> {
        flags::apply(&self.given).map_err(|e| {
            let name = Flag::of(e.field).and_then(|f| f.query).unwrap_or("");
            let detail = format!("`{name}`: {}", e.message);
            if e.out_of_range {
                invalid_options(detail)
            } else {
                bad_query(name, detail)
            }
        })
    }

    /// The options these parameters select, with the CLI's defaults, normalized.
    pub fn options(&self) -> Result<Options, ApiError> {
        service_options(self.checked()?)
    }
}

/// Normalizes options for a job: the service takes no sample inputs, so empirical bias
/// correction, calibrated activation ranges and `select = auto` are refused here rather than
/// failing the job later.
fn service_options(o: Options) -> Result<Options, ApiError> {
    if o.select == crate::Select::Auto {
        return Err(invalid_options(
            "select=auto needs sample inputs, which the service does not take; use the CLI's --samples"
                .to_string(),
        ));
    }
    if o.exports.calibration != crate::options::Calibration::DataFree {
        return Err(invalid_options(format!(
            "exports.calibration `{}` needs sample inputs, which the service does not take; \
             use `data_free` or the CLI's --samples",
            o.exports.calibration.name()
        )));
    }
    if o.deploy.bias_correction == crate::options::BiasCorrection::Empirical {
        return Err(invalid_options(
            "deploy.bias_correction empirical needs sample inputs, which the service does not \
             take; use analytic (data-free)",
        ));
    }
    o.normalized().map_err(|e| invalid_options(e.to_string()))
}

fn check_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        Some(n) if n.chars().count() > MAX_NAME_CHARS => Err(bad_query(
            "name",
            format!("`name` is longer than {MAX_NAME_CHARS} characters"),
        )),
        Some(n) if n.is_empty() => Ok(None),
        n => Ok(n),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the model is larger than this server's limit of {limit} bytes"),
    )
}

/// Streams bytes into a blob, hashing them, in bounded slices on the blocking pool.
struct Staging {
    sink: Option<Box<dyn BlobSink>>,
    hasher: Option<Sha256>,
    buf: Vec<u8>,
    total: u64,
    limit: u64,
}

impl Staging {
    async fn new(jobs: &std::sync::Arc<Jobs>, id: &JobId, limit: u64) -> Result<Self, ApiError> {
        let blobs = std::sync::Arc::clone(jobs.blobs());
        let id = id.clone();
        let sink = tokio::task::spawn_blocking(move || blobs.create(&id, BlobKind::Input))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| store_error("blob store", &e))?;
        Ok(Staging {
            sink: Some(sink),
            hasher: Some(Sha256::new()),
            buf: Vec::with_capacity(FLUSH_BYTES),
            total: 0,
            limit,
        })
    }

    async fn push(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.total += chunk.len() as u64;
        if self.total > self.limit {
            return Err(too_large(self.limit));
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ApiError> {
        let (Some(mut sink), Some(mut hasher)) = (self.sink.take(), self.hasher.take()) else {
            return Err(ApiError::internal("upload staging reused after an error"));
        };
        let buf = std::mem::take(&mut self.buf);
        let (sink, hasher, mut buf) = tokio::task::spawn_blocking(move || {
            hasher.update(&buf);
            sink.write_all(&buf).map(|()| (sink, hasher, buf))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| store_error("writing the upload", &e))?;
        buf.clear();
        self.buf = buf;
        self.sink = Some(sink);
        self.hasher = Some(hasher);
        Ok(())
    }

    async fn finish(mut self) -> Result<(u64, String), ApiError> {
        self.flush().await?;
        let (Some(sink), Some(hasher)) = (self.sink.take(), self.hasher.take()) else {
            return Err(ApiError::internal("upload staging reused after an error"));
        };
        tokio::task::spawn_blocking(move || sink.commit())
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| store_error("committing the upload", &e))?;
        Ok((self.total, hex::encode(hasher.finalize())))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Receives the model of `POST /equalize` into the blob store under `id`, then scans it within
/// `limits` ([`crate::onnx::scan`]): malformed, graph-less or oversized models are refused
/// here (422 / 413) instead of becoming failed jobs. On error the caller deletes blob `id`.
pub async fn receive(
    jobs: &std::sync::Arc<Jobs>,
    id: &JobId,
    req: Request,
    max_upload: u64,
    limits: &Limits,
) -> Result<Upload, ApiError> {
    let up = receive_body(jobs, id, req, max_upload).await?;
    let blobs = std::sync::Arc::clone(jobs.blobs());
    let (id, limits) = (id.clone(), *limits);
    tokio::task::spawn_blocking(move || {
        let (r, len) = blobs
            .open(&id, BlobKind::Input)
            .map_err(|e| store_error("reopening the upload", &e))?;
        let r = std::io::BufReader::with_capacity(1 << 16, r);
        match crate::onnx::scan::scan(r, len, &limits, "upload") {
            Ok(_) => Ok(()),
            Err(e @ crate::CoreError::Io { .. }) => Err(ApiError::internal(e)),
            Err(e) => Err(ApiError::from(&e)),
        }
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(up)
}

async fn receive_body(
    jobs: &std::sync::Arc<Jobs>,
    id: &JobId,
    req: Request,
    max_upload: u64,
) -> Result<Upload, ApiError> {
    let media = media_type(req.headers());
    let declared = content_length(req.headers());
    match media.as_deref() {
        Some("multipart/form-data") => {
            if declared.is_some_and(|n| n > max_upload + MULTIPART_OVERHEAD) {
                return Err(too_large(max_upload));
            }
            if req.uri().query().is_some_and(|q| !q.is_empty()) {
                return Err(bad_query(
                    "",
                    "with multipart/form-data, send options as the `options` part, not as query parameters",
                ));
            }
            let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
            })?;
            let received = receive_multipart(jobs, id, &mut mp, max_upload).await;
            if received.is_err() {
                drain_multipart(&mut mp).await;
            }
            received
        }
        Some("application/octet-stream" | "application/onnx" | "application/x-onnx")
        | Some("application/x-protobuf" | "application/protobuf") => {
            if declared.is_some_and(|n| n > max_upload) {
                return Err(too_large(max_upload));
            }
            let params = parse_params(req.uri().query().unwrap_or(""))?;
            let options = params.options()?;
            let name = check_name(params.name.clone())?;
            let (bytes, sha256) = receive_raw(jobs, id, req.into_body(), max_upload).await?;
            Ok(Upload {
                id: id.clone(),
                input: InputInfo {
                    bytes,
                    sha256,
                    filename: None,
                },
                options,
                name,
            })
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the model as multipart/form-data (part `model`) or as \
                 application/octet-stream (e.g. curl --data-binary @model.onnx -H \
                 'Content-Type: application/octet-stream'); got {}",
                other.unwrap_or("no Content-Type")
            ),
        )),
    }
}

async fn receive_raw(
    jobs: &std::sync::Arc<Jobs>,
    id: &JobId,
    body: Body,
    limit: u64,
) -> Result<(u64, String), ApiError> {
    let mut staging = Staging::new(jobs, id, limit).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload_interrupted",
                format!("reading the body: {e}"),
            )
        })?;
        if let Err(e) = staging.push(&chunk).await {
            drop(staging);
            let drain = async {
                let mut drained = 0u64;
                while let Some(Ok(c)) = stream.next().await {
                    drained += c.len() as u64;
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            return Err(e);
        }
    }
    if staging.total == 0 {
        return Err(empty_model());
    }
    staging.finish().await
}

fn empty_model() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty_model",
        "the request carries no model bytes",
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
    }
}

async fn small_part(
    field: &mut axum::extract::multipart::Field<'_>,
    limit: usize,
    what: &str,
    max_upload: u64,
) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(e, max_upload))?
    {
        if out.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "part_too_large",
                format!("the `{what}` part is larger than {limit} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

fn sanitize_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(128)
        .collect();
    (!clean.trim_matches('.').is_empty()).then_some(clean)
}

/// Reads and discards what is left of a refused form (bounded), so the client gets the
/// problem instead of a connection reset.
async fn drain_multipart(mp: &mut Multipart) {
    let drain = async {
        let mut drained = 0u64;
        while let Ok(Some(mut field)) = mp.next_field().await {
            while let Ok(Some(c)) = field.chunk().await {
                drained += c.len() as u64;
                if drained > DRAIN_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

async fn receive_multipart(
    jobs: &std::sync::Arc<Jobs>,
    id: &JobId,
    mp: &mut Multipart,
    max_upload: u64,
) -> Result<Upload, ApiError> {
    let mut model: Option<(u64, String, Option<String>)> = None;
    let mut options: Option<Options> = None;
    let mut name: Option<String> = None;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max_upload))?
    {
        let part = field.name().unwrap_or("").to_string();
        match part.as_str() {
            "model" if model.is_none() => {
                let filename = field.file_name().and_then(sanitize_filename);
                let mut staging = Staging::new(jobs, id, max_upload).await?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(e, max_upload))?
                {
                    staging.push(&chunk).await?;
                }
                if staging.total == 0 {
                    return Err(empty_model());
                }
                let (n, sha) = staging.finish().await?;
                model = Some((n, sha, filename));
            }
            "options" if options.is_none() => {
                let data = small_part(&mut field, MAX_OPTIONS_BYTES, "options", max_upload).await?;
                let parsed: Options = serde_json::from_slice(&data)
                    .map_err(|e| invalid_options(format!("options JSON: {e}")))?;
                options = Some(service_options(parsed)?);
            }
            "name" if name.is_none() => {
                let data = small_part(&mut field, MAX_NAME_CHARS * 4, "name", max_upload).await?;
                let text = String::from_utf8(data.to_vec()).map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_multipart",
                        "`name` must be UTF-8",
                    )
                })?;
                name = check_name(Some(text))?;
            }
            "model" | "options" | "name" => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_multipart",
                    format!("the `{part}` part appears twice"),
                ))
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_multipart",
                    format!("unknown part `{part}` (expected model, options, name)"),
                ))
            }
        }
    }
    let Some((bytes, sha256, filename)) = model else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_model",
            "the form has no `model` part",
        ));
    };
    let options = match options {
        Some(o) => o,
        None => Options::default()
            .normalized()
            .map_err(|e| invalid_options(e.to_string()))?,
    };
    Ok(Upload {
        id: id.clone(),
        input: InputInfo {
            bytes,
            sha256,
            filename,
        },
        options,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Relu6Policy, Step};

    /// The options of raw-body query `q` (whose parameters must parse).
    fn options_of(q: &str) -> Result<Options, ApiError> {
        parse_params(q).unwrap().options()
    }

    #[test]
    fn query_parameters_map_to_options_like_the_cli() {
        let p = parse_params(
            "steps=bn_fold,cls&steps=hbf&relu6=replace&start=a&start=b&output=c&iterations=3\
             &threshold=0.01&verify=false&seed=7&dynamic_dim=2&name=x",
        )
        .unwrap();
        let o = p.options().unwrap();
        assert_eq!(o.steps, vec![Step::BnFold, Step::Cls, Step::Hbf]);
        assert_eq!(o.relu6, Relu6Policy::Replace);
        assert_eq!(o.start, vec!["a", "b"]);
        assert_eq!(o.output, vec!["c"]);
        assert_eq!(o.iterations, Some(3));
        assert!(!o.verify.enabled);
        assert_eq!((o.verify.seed, o.verify.dynamic_dim), (7, 2));
        assert_eq!(p.name.as_deref(), Some("x"));
        assert_eq!(
            options_of("").unwrap(),
            Options::default().normalized().unwrap()
        );
        let aimet = options_of("compat=aimet").unwrap();
        assert_eq!(aimet, Options::aimet().normalized().unwrap());
    }

    #[test]
    fn export_parameters_request_artifacts_and_calibration_is_refused() {
        let o = options_of("qdq=true&encodings=0.6.1&ort_overrides=1&input_range=-1,1").unwrap();
        assert!(o.exports.qdq && o.exports.ort_overrides);
        assert_eq!(
            o.exports.encodings,
            Some(crate::options::EncodingsVersion::V0_6_1)
        );
        assert_eq!(o.exports.input_range, Some([-1.0, 1.0]));
        assert!(parse_params("encodings=2.0").is_err());
        assert!(parse_params("input_range=1").is_err());
        let mut calibrated = Options::default();
        calibrated.exports.calibration = crate::options::Calibration::Minmax;
        let e = service_options(calibrated).unwrap_err();
        assert_eq!(e.problem().code, "invalid_options");
    }

    #[test]
    fn bad_queries_are_problems() {
        for (q, code) in [
            ("relu6=maybe", "invalid_query"),
            ("steps=fold", "invalid_query"),
            ("iterations=many", "invalid_query"),
            ("verify=perhaps", "invalid_query"),
            ("relu=replace", "invalid_query"),
        ] {
            let e = parse_params(q).err().unwrap();
            assert_eq!(e.problem().code, code, "{q}");
        }
        let e = options_of("iterations=0").unwrap_err();
        assert_eq!(e.problem().code, "invalid_options");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn select_auto_is_refused_without_samples() {
        let e = options_of("select=auto").unwrap_err();
        assert_eq!(e.problem().code, "invalid_options");
        let o = options_of("select=none").unwrap();
        assert_eq!(o.select, crate::Select::None);
    }

    #[test]
    fn filenames_are_sanitized() {
        assert_eq!(
            sanitize_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            sanitize_filename("C:\\m\\mobile net.onnx").as_deref(),
            Some("mobilenet.onnx")
        );
        assert_eq!(sanitize_filename(".."), None);
    }
}
