//! `onnx-cle serve` settings: command-line flags, each with an environment variable and an
//! embedded default, so `onnx-cle serve` alone runs a complete single-node service.
//!
//! The constants here are the single source for the defaults that the `Dockerfile` and the
//! `deploy/` manifests repeat; `tests/server_deploy.rs` checks that they agree.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default listen port.
pub const DEFAULT_PORT: u16 = 8080;
/// Default listen address (loopback; containers set `ONNX_CLE_ADDR=0.0.0.0:8080`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Default data directory (job records and blobs), relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./onnx-cle-data";
/// Default niceness of the job threads (see [`ServeConfig::worker_nice`]).
pub const DEFAULT_WORKER_NICE: u8 = 10;
/// Liveness probe path: answers while the process is up, whatever its storage does.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness probe path: 503 while draining or when the data directory is not writable.
pub const READY_PATH: &str = "/readyz";
/// Prometheus metrics path.
pub const METRICS_PATH: &str = "/metrics";
/// OpenAPI document path.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Swagger UI path.
pub const DOCS_PATH: &str = "/docs";

/// Settings of `onnx-cle serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port; the chosen address is logged).
    #[arg(long, env = "ONNX_CLE_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Directory for job records, uploads and results (created when missing).
    #[arg(long, env = "ONNX_CLE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Jobs run at the same time (each on its own worker thread).
    #[arg(long, env = "ONNX_CLE_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Jobs that may wait in the queue; beyond it `POST /equalize` answers 429.
    #[arg(long, env = "ONNX_CLE_QUEUE_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_size: u32,
    /// Largest accepted model upload (e.g. `512MiB`, `2GiB`, `1000000`); larger bodies get 413.
    #[arg(long, env = "ONNX_CLE_MAX_UPLOAD", default_value = "1GiB", value_parser = crate::onnx::limits::parse_size)]
    pub max_upload: u64,
    /// How long finished jobs and their files are kept (e.g. `24h`, `7d`; `0` keeps them forever).
    #[arg(long, env = "ONNX_CLE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Longest `?wait=` long-poll a client may ask for.
    #[arg(long, env = "ONNX_CLE_MAX_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// On SIGTERM, how long running jobs may finish before they are put back in the queue.
    #[arg(long, env = "ONNX_CLE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Longest a job may run; past it the job is canceled and fails with `job_timeout` (`0`:
    /// no limit).
    #[arg(long, env = "ONNX_CLE_MAX_JOB_TIME", default_value = "30m", value_parser = parse_duration)]
    pub max_job_time: Duration,
    /// Longest an upload (the request body of `POST /equalize`) may take; slower clients get
    /// 408 `upload_timeout`.
    #[arg(long, env = "ONNX_CLE_UPLOAD_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub upload_timeout: Duration,
    /// Uploads received at the same time; beyond it `POST /equalize` answers 429
    /// `too_many_uploads`.
    #[arg(long, env = "ONNX_CLE_MAX_CONCURRENT_UPLOADS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_uploads: u32,
    /// Scheduling niceness of the job threads (Linux, 0–19): CPU-bound jobs yield to the HTTP
    /// runtime so status requests stay fast while jobs run (`0`: same priority as the server).
    #[arg(long, env = "ONNX_CLE_WORKER_NICE", default_value_t = DEFAULT_WORKER_NICE, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub worker_nice: u8,
    /// Longest a client may take to send a request's headers (also how long an idle keep-alive
    /// connection stays open); slower connections are closed (`0`: no limit).
    #[arg(long, env = "ONNX_CLE_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Connections served at once; further ones wait in the accept backlog.
    #[arg(long, env = "ONNX_CLE_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest accepted model in nodes (all graphs, subgraphs and functions); larger models get
    /// 413 `limit_exceeded`.
    #[arg(long, env = "ONNX_CLE_MAX_NODES", default_value_t = crate::onnx::limits::DEFAULT_MAX_NODES, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_nodes: u64,
    /// Largest accepted tensor in elements (product of its dimensions); larger ones get 413
    /// `limit_exceeded`.
    #[arg(long, env = "ONNX_CLE_MAX_TENSOR_ELEMENTS", default_value_t = crate::onnx::limits::DEFAULT_MAX_TENSOR_ELEMENTS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tensor_elements: u64,
    /// Most memory one decoded model may take (estimated from the upload before decoding, e.g.
    /// `4GiB`); larger ones get 413 `limit_exceeded`.
    #[arg(long, env = "ONNX_CLE_MAX_MODEL_MEMORY", default_value = "4GiB", value_parser = crate::onnx::limits::parse_size)]
    pub max_model_memory: u64,
    /// Bearer token required on every route but the health checks (`/healthz`, `/readyz`);
    /// unset: no authentication.
    #[arg(long, env = "ONNX_CLE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<Secret>,
    /// PostgreSQL holding job records, idempotency keys and the queue, shared by every replica
    /// (`postgres://user:password@host:5432/db?sslmode=verify-full`); unset: the data
    /// directory (one replica). TLS follows libpq's `sslmode`: `disable`, `prefer` (default:
    /// TLS when offered, certificate unchecked), `require` (TLS, certificate unchecked),
    /// `verify-ca` (chain checked), `verify-full` (chain and host name checked); roots:
    /// `sslrootcert=PATH` (PEM), else `--database-ca`, else the system's.
    #[arg(long, env = "ONNX_CLE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// The CA (PEM) that signed the database's certificate, for a private CA: used when
    /// `--database-url` has no `sslrootcert`; with `sslmode=require` or `prefer` it makes the
    /// chain checked too (as libpq does).
    #[arg(long, env = "ONNX_CLE_DATABASE_CA", value_name = "PATH")]
    pub database_ca: Option<PathBuf>,
    /// Where uploads and results go: `s3://BUCKET/PREFIX` (endpoint, region and credentials
    /// from the standard `AWS_*` variables) or `file:///path`; unset: the data directory.
    #[arg(long, env = "ONNX_CLE_BLOB_STORE")]
    pub blob_store: Option<crate::server::store::BlobUrl>,
    /// What this replica does: `all` (API and workers), `api` (HTTP only; needs
    /// `--database-url`) or `worker` (runs jobs; its port serves the same routes, for probes and
    /// metrics).
    #[arg(long, env = "ONNX_CLE_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Lease of a running job on a shared database: renewed every third of it; a job whose
    /// replica stops renewing goes back to the queue this long after the last renewal.
    #[arg(long, env = "ONNX_CLE_JOB_LEASE", default_value = "30s", value_parser = parse_lease)]
    pub job_lease: Duration,
    /// Answer `GET /jobs/{id}/model` with `303` to a presigned object-store URL valid this long
    /// (S3 blob store only; `--presign` alone: 15m; `0`: stream through the service).
    #[arg(long, env = "ONNX_CLE_PRESIGN", default_value = "0", num_args = 0..=1, default_missing_value = "15m", value_parser = parse_duration)]
    pub presign: Duration,
}

/// What one `onnx-cle serve` process does (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// API and workers.
    All,
    /// HTTP API only: accepts, lists and serves jobs; runs none.
    Api,
    /// Runs jobs; its HTTP port serves the same routes (health probes, metrics).
    Worker,
}

impl Role {
    /// Whether this role runs a worker pool.
    pub fn runs_jobs(self) -> bool {
        self != Role::Api
    }
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("the lease must be at least 1s".into());
    }
    Ok(d)
}

/// A secret setting: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the token must not be empty".into());
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII characters (no spaces)".into());
        }
        Ok(Secret(s.to_string()))
    }
}

impl ServeConfig {
    /// The defaults, with `data_dir` replaced (handy in tests).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data_dir: data_dir.into(),
            workers: 2,
            queue_size: 64,
            max_upload: 1 << 30,
            retention: Duration::from_secs(24 * 3600),
            max_wait: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(20),
            max_job_time: Duration::from_secs(30 * 60),
            upload_timeout: Duration::from_secs(5 * 60),
            max_concurrent_uploads: 16,
            worker_nice: DEFAULT_WORKER_NICE,
            header_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_nodes: crate::onnx::limits::DEFAULT_MAX_NODES,
            max_tensor_elements: crate::onnx::limits::DEFAULT_MAX_TENSOR_ELEMENTS,
            max_model_memory: crate::onnx::limits::DEFAULT_MAX_DECODED_BYTES,
            auth_token: None,
            database_url: None,
            database_ca: None,
            blob_store: None,
            role: Role::All,
            job_lease: Duration::from_secs(30),
            presign: Duration::ZERO,
        }
    }

    /// The model limits these settings give.
    pub fn limits(&self) -> crate::onnx::limits::Limits {
        crate::onnx::limits::Limits {
            max_nodes: self.max_nodes,
            max_tensor_elements: self.max_tensor_elements,
            max_decoded_bytes: self.max_model_memory,
        }
    }
}

/// Parses a duration: a number with an optional unit (`ms`, `s`, `m`, `h`, `d`; seconds when
/// omitted), e.g. `30s`, `1500ms`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (s, num, unit) = crate::onnx::limits::number_and_unit(s, '.');
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 24h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("unknown duration unit `{other}` (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("1e400").is_err());
    }
}
