//! Prometheus metrics in the text exposition format, hand-rolled (a few atomics and maps).
//!
//! Naming follows prometheus.io: `cle_` prefix, base units, `_total` counters. Labels are
//! bounded: job outcome, state and error code (a fixed set), HTTP method, route template
//! (axum's `MatchedPath`, never the raw URI) and status. No job id or hash is ever a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

const SECONDS_BUCKETS: &[f64] = &[0.005, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const JOB_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
const BYTES_BUCKETS: &[f64] = &[1e4, 1e5, 1e6, 1e7, 5e7, 1e8, 5e8, 1e9, 4e9];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
        let brace = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", brace(labels));
        let _ = writeln!(out, "{name}_count{} {n}", brace(labels));
    }
}

/// How a submission ended.
#[derive(Debug, Clone, Copy)]
pub enum Submission {
    /// A new job was queued.
    Accepted,
    /// Refused (queue full, invalid options, too large…).
    Rejected,
    /// An `Idempotency-Key` replay returned an existing job.
    Replayed,
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    submitted: [AtomicU64; 3],
    finished: Mutex<BTreeMap<(String, String), u64>>,
    job_seconds: Histogram,
    upload_bytes: Histogram,
    http_total: Mutex<BTreeMap<(String, String, u16), u64>>,
    http_seconds: Mutex<BTreeMap<(String, String), Histogram>>,
    store_errors: Mutex<BTreeMap<String, u64>>,
    leases_lost: AtomicU64,
    reclaimed: [AtomicU64; 2],
}

/// Gauges of the queue and of this replica, read when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Jobs waiting (from the store: across every replica sharing it).
    pub queued: usize,
    /// Jobs running (from the store: across every replica sharing it).
    pub running: usize,
    /// Age of the oldest queued job in seconds (0 when none waits).
    pub oldest_queued_seconds: f64,
    /// Whether the figures above could be read from the store.
    pub store_up: bool,
    /// Runs this replica holds.
    pub replica_running: usize,
    /// Size of this replica's worker pool (0 for `--role api`).
    pub workers: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            submitted: Default::default(),
            finished: Mutex::default(),
            job_seconds: Histogram::new(JOB_BUCKETS),
            upload_bytes: Histogram::new(BYTES_BUCKETS),
            http_total: Mutex::default(),
            http_seconds: Mutex::default(),
            store_errors: Mutex::default(),
            leases_lost: AtomicU64::new(0),
            reclaimed: Default::default(),
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Counts a submission.
    pub fn submitted(&self, s: Submission) {
        self.submitted[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records an upload's size.
    pub fn upload(&self, bytes: u64) {
        self.upload_bytes.observe(bytes as f64);
    }

    /// Counts a finished run: terminal `state`, error `code` (empty on success), duration.
    pub fn finished(&self, state: &str, code: &str, seconds: f64) {
        *locked(&self.finished)
            .entry((state.to_string(), code.to_string()))
            .or_default() += 1;
        self.job_seconds.observe(seconds);
    }

    /// Counts a failed call to the `store` backend (`jobs` or `blobs`).
    pub fn store_error(&self, store: &str) {
        *locked(&self.store_errors)
            .entry(store.to_string())
            .or_default() += 1;
    }

    /// Counts a run whose lease was lost (its result discarded).
    pub fn lease_lost(&self) {
        self.leases_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts jobs taken over after their lease ran out: put back in the queue, or failed.
    pub fn reclaimed(&self, requeued: usize, failed: usize) {
        self.reclaimed[0].fetch_add(requeued as u64, Ordering::Relaxed);
        self.reclaimed[1].fetch_add(failed as u64, Ordering::Relaxed);
    }

    /// The exposition text with the queue gauges of `g` and this replica's counters.
    pub fn render_gauges(&self, g: &Gauges) -> String {
        let mut o = self.render(g.queued, g.running, g.workers);
        let gauges = [
            (
                "cle_queue_oldest_age_seconds",
                "Age of the oldest queued job (0 when none waits).",
                g.oldest_queued_seconds,
            ),
            (
                "cle_store_up",
                "Whether the queue figures could be read from the job store.",
                f64::from(u8::from(g.store_up)),
            ),
            (
                "cle_replica_jobs_running",
                "Jobs this replica is running.",
                g.replica_running as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP cle_store_errors_total Failed calls to the job store or the blob store."
        );
        let _ = writeln!(o, "# TYPE cle_store_errors_total counter");
        for store in ["blobs", "jobs"] {
            let n = locked(&self.store_errors).get(store).copied().unwrap_or(0);
            let _ = writeln!(o, "cle_store_errors_total{{store=\"{store}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP cle_leases_lost_total Runs of this replica whose lease was lost (result discarded)."
        );
        let _ = writeln!(o, "# TYPE cle_leases_lost_total counter");
        let _ = writeln!(
            o,
            "cle_leases_lost_total {}",
            self.leases_lost.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP cle_jobs_reclaimed_total Jobs this replica took over after their lease ran out."
        );
        let _ = writeln!(o, "# TYPE cle_jobs_reclaimed_total counter");
        for (i, outcome) in ["requeued", "failed"].iter().enumerate() {
            let _ = writeln!(
                o,
                "cle_jobs_reclaimed_total{{outcome=\"{outcome}\"}} {}",
                self.reclaimed[i].load(Ordering::Relaxed)
            );
        }
        o
    }

    fn http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *locked(&self.http_total)
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        locked(&self.http_seconds)
            .entry((method.to_string(), route.to_string()))
            .or_insert_with(|| Histogram::new(SECONDS_BUCKETS))
            .observe(seconds);
    }

    /// The exposition text, with the gauges read from the job registry.
    pub fn render(&self, queued: usize, running: usize, workers: usize) -> String {
        let mut o = String::with_capacity(4096);
        let _ = writeln!(o, "# HELP cle_build_info Build information.");
        let _ = writeln!(o, "# TYPE cle_build_info gauge");
        let _ = writeln!(
            o,
            "cle_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            o,
            "# HELP cle_jobs_submitted_total Job submissions by outcome."
        );
        let _ = writeln!(o, "# TYPE cle_jobs_submitted_total counter");
        for (i, name) in ["accepted", "rejected", "replayed"].iter().enumerate() {
            let _ = writeln!(
                o,
                "cle_jobs_submitted_total{{outcome=\"{name}\"}} {}",
                self.submitted[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP cle_jobs_finished_total Finished job runs by state and error code."
        );
        let _ = writeln!(o, "# TYPE cle_jobs_finished_total counter");
        for ((state, code), n) in locked(&self.finished).iter() {
            let _ = writeln!(
                o,
                "cle_jobs_finished_total{{state=\"{state}\",error_code=\"{code}\"}} {n}"
            );
        }
        let gauges = [
            ("cle_queue_depth", "Jobs waiting for a worker.", queued),
            ("cle_jobs_running", "Jobs being run.", running),
            ("cle_workers", "Size of the worker pool.", workers),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {v}");
        }
        let _ = writeln!(o, "# HELP cle_job_duration_seconds Wall time of job runs.");
        let _ = writeln!(o, "# TYPE cle_job_duration_seconds histogram");
        self.job_seconds
            .render(&mut o, "cle_job_duration_seconds", "");
        let _ = writeln!(o, "# HELP cle_model_upload_bytes Size of uploaded models.");
        let _ = writeln!(o, "# TYPE cle_model_upload_bytes histogram");
        self.upload_bytes
            .render(&mut o, "cle_model_upload_bytes", "");
        let _ = writeln!(
            o,
            "# HELP http_requests_total HTTP requests by method, route and status."
        );
        let _ = writeln!(o, "# TYPE http_requests_total counter");
        for ((m, r, s), n) in locked(&self.http_total).iter() {
            let _ = writeln!(
                o,
                "http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP http_request_duration_seconds HTTP request latency by method and route."
        );
        let _ = writeln!(o, "# TYPE http_request_duration_seconds histogram");
        for ((m, r), h) in locked(&self.http_seconds).iter() {
            h.render(
                &mut o,
                "http_request_duration_seconds",
                &format!("method=\"{m}\",route=\"{r}\""),
            );
        }
        o
    }
}

/// Middleware recording `http_requests_total` and `http_request_duration_seconds`.
pub async fn track_http(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = match method.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
        _ => "other".to_string(),
    };
    let res = next.run(req).await;
    metrics.http(
        &method,
        &route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}
