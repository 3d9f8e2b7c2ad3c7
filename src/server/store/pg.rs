//! The PostgreSQL job store (`serve --database-url postgres://…`): records, idempotency keys and
//! the queue of any number of replicas in one database.
//!
//! The queue is the `cle_jobs` table (schema: `migrations/`, applied by [`PgJobStore::migrate`]
//! at start and by `onnx-cle migrate`, under an advisory lock so replicas starting together
//! apply each migration once):
//! - **claim**: `UPDATE … FROM (SELECT id … WHERE state = 'queued' ORDER BY id LIMIT 1 FOR
//!   UPDATE SKIP LOCKED)`: concurrent claimers never wait for each other and never get the same
//!   row; the claim sets `owner`, a fresh `lease_token` and `lease_until = now() + lease`, and
//!   counts the attempt;
//! - **lease**: the claiming replica renews `lease_until` every third of the lease
//!   ([`JobStore::renew`]); any replica's reaper ([`JobStore::reap`]) puts a running job whose
//!   lease ran out back in the queue, or fails it (`job_crashed`) after
//!   [`MAX_ATTEMPTS`] runs, or cancels it when a cancellation was pending;
//! - **fencing**: completion, stage and renewal statements carry `lease_token = $token AND state
//!   = 'running'`, so a run that lost its lease (a replica that stalled past the lease and came
//!   back) changes nothing;
//! - **wake-ups**: a trigger sends `NOTIFY cle_jobs` when a job is queued, finished, deleted or
//!   asked to cancel; every replica keeps one `LISTEN` connection (reconnecting with back-off)
//!   and waiting code also polls, so a lost notification only costs a poll interval;
//! - **submit** is one transaction: the job and its idempotency key are written together or
//!   not at all; the key's primary key arbitrates between replicas racing with the same key (the
//!   loser replays the winner's job). The 429 bound counts the queued jobs in the same
//!   transaction, without a lock (a lock would serialize every submission's commit), so
//!   concurrent submissions may pass it by at most the number in flight;
//! - **retention**: `DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING id`, so
//!   each expired job is removed (and its blobs deleted) by exactly one replica.
//!
//! Times of the lease are the database's `now()`, never a replica's clock. Every call has a
//! deadline ([`OP_TIMEOUT`]); connection-level failures are [`unavailable`] errors (503 with
//! `Retry-After` at the API), SQL errors are not.
//!
//! Every connection (the pool's and the `LISTEN` one) is secured as the URL's `sslmode` and
//! `sslrootcert` ask ([`super::pg_tls`]). A first connection refused at its TLS step (the
//! server offers no TLS, or its certificate does not verify) fails [`PgJobStore::connect`] at
//! once with a message saying so, without the retries an unreachable database gets; later the
//! same failure is an [`unavailable`] error like any other lost connection (`/readyz` down).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, Row};

use super::pg_tls::{self, PgTls};
use super::{
    block_on, page, unavailable, BlobStore, CancelOutcome, Claimed, Deleted, EventSink, Finish,
    IdempotencyRecord, JobStore, Lease, QueueStats, Recovery, Renewal, StoreEvent, SubmitError,
    Submitted, MAX_ATTEMPTS,
};
use crate::server::job::{now_ms, JobId, JobRecord, JobState};
use crate::server::problem::Problem;

/// Longest any one database call may take before it counts as "unreachable".
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The notification channel of job changes.
pub const CHANNEL: &str = "cle_jobs";

/// Embedded schema migrations, in order: (version, description, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "jobs, idempotency keys, queue indexes, notify trigger",
    include_str!("migrations/0001_jobs.sql"),
)];

const MIGRATION_LOCK: i64 = 0x6f6e_6e78_636c_6501;

/// The columns every record query selects, in the order [`record`] reads them.
const COLS: &str = "record, state, attempts, stage, started_ms, finished_ms";

/// Job records, keys and the queue in PostgreSQL.
pub struct PgJobStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: PgTls,
    rt: tokio::runtime::Handle,
    describe: String,
}

/// Whether SQL state `code` means the database cannot serve right now: connection exceptions
/// (08), operator intervention such as a shutdown or recovery (57), insufficient resources (53).
fn unreachable_state(code: &str) -> bool {
    ["08", "57", "53"]
        .iter()
        .any(|class| code.starts_with(class))
}

fn pg_err(e: tokio_postgres::Error) -> io::Error {
    if let Some(f) = pg_tls::tls_failure(&e) {
        return unavailable(format!("database: {f}"));
    }
    if let Some(db) = e.as_db_error() {
        let msg = format!("database: {}: {}", db.code().code(), db.message());
        return if unreachable_state(db.code().code()) {
            unavailable(msg)
        } else {
            io::Error::other(msg)
        };
    }
    match e.code() {
        Some(c) if unreachable_state(c.code()) => unavailable(format!("database: {e}")),
        Some(_) => io::Error::other(format!("database: {e}")),
        // No SQL state: a client-side failure; unreachable when the connection is gone.
        None if e.is_closed() || io_source(&e) => unavailable(format!("database: {e}")),
        None => io::Error::other(format!("database: {e}")),
    }
}

fn io_source(e: &tokio_postgres::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<io::Error>() {
            return true;
        }
        src = s.source();
    }
    e.to_string().contains("timed out") || e.to_string().contains("connect")
}

fn pool_err(e: deadpool_postgres::PoolError) -> io::Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => unavailable(format!("database pool: {other}")),
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn lease_s(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A record from a row of [`COLS`]: the stored JSON with the queue columns laid over it.
fn record(row: &Row) -> io::Result<JobRecord> {
    let mut v: Value = row.try_get(0).map_err(io::Error::other)?;
    let state: String = row.try_get(1).map_err(io::Error::other)?;
    let attempts: i32 = row.try_get(2).map_err(io::Error::other)?;
    let stage: Option<String> = row.try_get(3).map_err(io::Error::other)?;
    let started: Option<i64> = row.try_get(4).map_err(io::Error::other)?;
    let finished: Option<i64> = row.try_get(5).map_err(io::Error::other)?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| io::Error::other("stored record is not an object"))?;
    obj.insert("state".into(), Value::String(state));
    obj.insert("attempts".into(), json!(attempts));
    obj.insert("stage".into(), json!(stage));
    obj.insert("started_ms".into(), json!(started));
    obj.insert("finished_ms".into(), json!(finished));
    serde_json::from_value(v).map_err(|e| io::Error::other(format!("stored record: {e}")))
}

/// The record of job `id`, read on a pooled connection or inside a transaction.
async fn fetch(c: &impl GenericClient, id: &str) -> io::Result<Option<JobRecord>> {
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM cle_jobs WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    row.as_ref().map(record).transpose()
}

/// The job ids in the first column of `rows` (ids that do not parse are skipped).
fn job_ids<C: FromIterator<JobId>>(rows: &[Row]) -> C {
    rows.iter()
        .filter_map(|r| JobId::parse(r.get::<_, &str>(0)))
        .collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> io::Result<Value> {
    serde_json::to_value(v).map_err(io::Error::other)
}

impl PgJobStore {
    /// Connects a pool of up to `pool_size` connections to `url` (a libpq-style
    /// `postgres://user:password@host:port/db?options` URL, TLS as its `sslmode` and
    /// `sslrootcert` say; `ca`: the CA file used when it has no `sslrootcert`). Fails when the
    /// first connection cannot be made within a few seconds; a failure at the TLS step is not
    /// [`unavailable`] (retrying will not help).
    pub async fn connect(url: &str, ca: Option<&Path>, pool_size: usize) -> io::Result<PgJobStore> {
        let (mut config, tls) = pg_tls::parse(url, ca)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        if config.get_application_name().is_none() {
            config.application_name("onnx-cle");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let target = describe(&config);
        let describe = format!("{target} ({})", tls.describe());
        let mgr = Manager::from_config(
            config.clone(),
            tls.connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(io::Error::other)?;
        let store = PgJobStore {
            pool,
            config,
            tls,
            rt: tokio::runtime::Handle::current(),
            describe,
        };
        match store.pool.get().await {
            Ok(c) => drop(c),
            Err(deadpool_postgres::PoolError::Backend(e)) => {
                if let Some(msg) = store.tls.explain(&e, &target) {
                    return Err(io::Error::other(format!("--database-url: {msg}")));
                }
                return Err(pg_err(e));
            }
            Err(e) => return Err(pool_err(e)),
        }
        Ok(store)
    }

    /// `host:port/database (sslmode=…)` (no credentials), for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Applies the embedded migrations that the database lacks, in one transaction under an
    /// advisory lock. Returns the versions applied. Refuses a database whose schema is newer
    /// than this binary.
    pub async fn migrate(&self) -> io::Result<Vec<i32>> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS cle_schema_migrations (
                 version integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg_err)?;
        let done: HashSet<i32> = tx
            .query("SELECT version FROM cle_schema_migrations", &[])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(v) = done.iter().copied().find(|v| *v > newest) {
            return Err(io::Error::other(format!(
                "the database schema is at version {v}, newer than this binary ({newest}); \
                 upgrade onnx-cle"
            )));
        }
        let mut applied = Vec::new();
        for (version, description, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO cle_schema_migrations (version, description) VALUES ($1, $2)",
                &[version, description],
            )
            .await
            .map_err(pg_err)?;
            applied.push(*version);
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(applied)
    }

    /// Runs database call `f` to completion from blocking code, within [`OP_TIMEOUT`].
    fn run<T>(&self, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        self.run_within(OP_TIMEOUT, f)
    }

    /// [`PgJobStore::run`] within `limit`; past it the database counts as unreachable.
    fn run_within<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        block_on(&self.rt, async {
            match tokio::time::timeout(limit, f).await {
                Ok(r) => r,
                Err(_) => Err(unavailable("database: no answer in time")),
            }
        })
    }

    async fn client(&self) -> io::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// One try of [`JobStore::submit`] as one transaction; `stored` is `job` as JSON. A key
    /// taken concurrently by another request is an `AlreadyExists` error (nothing was written).
    fn submit_once(
        &self,
        job: &JobRecord,
        stored: &Value,
        key: Option<&IdempotencyRecord>,
        max_queued: usize,
    ) -> Result<Submitted, SubmitError> {
        let out: io::Result<Result<Submitted, SubmitError>> = self.run(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            if let Some(k) = key {
                let prev = tx
                    .query_opt(
                        "SELECT fingerprint, job_id FROM cle_idempotency_keys WHERE key_sha256 = $1",
                        &[&k.key_sha256],
                    )
                    .await
                    .map_err(pg_err)?;
                if let Some(prev) = prev {
                    let fp: String = prev.get(0);
                    let job_id: String = prev.get(1);
                    if let Some(existing) = fetch(&tx, &job_id).await? {
                        return Ok(if fp != k.fingerprint {
                            Err(SubmitError::KeyReused(existing.id))
                        } else {
                            Ok(Submitted::Replayed(existing))
                        });
                    }
                    // The key's job was deleted or expired: the key is free again.
                    tx.execute(
                        "DELETE FROM cle_idempotency_keys WHERE key_sha256 = $1",
                        &[&k.key_sha256],
                    )
                    .await
                    .map_err(pg_err)?;
                }
            }
            let cap = i64::try_from(max_queued).unwrap_or(i64::MAX);
            let queued: i64 = tx
                .query_one(
                    "SELECT count(*) FROM (SELECT 1 FROM cle_jobs WHERE state = 'queued' LIMIT $1) q",
                    &[&cap],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            if queued >= cap {
                return Ok(Err(SubmitError::QueueFull));
            }
            tx.execute(
                "INSERT INTO cle_jobs (id, state, record, created_ms, attempts)
                 VALUES ($1, 'queued', $2, $3, 0)",
                &[&job.id.as_str(), stored, &ms(job.created_ms)],
            )
            .await
            .map_err(pg_err)?;
            if let Some(k) = key {
                let inserted = tx
                    .execute(
                        "INSERT INTO cle_idempotency_keys (key_sha256, fingerprint, job_id, created_ms)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (key_sha256) DO NOTHING",
                        &[
                            &k.key_sha256,
                            &k.fingerprint,
                            &k.job_id.as_str(),
                            &ms(k.created_ms),
                        ],
                    )
                    .await
                    .map_err(pg_err)?;
                if inserted == 0 {
                    // Another request (any replica) took the key a moment ago: nothing of
                    // ours is kept; answer as for a repeated request.
                    tx.rollback().await.map_err(pg_err)?;
                    return Ok(Err(SubmitError::Io(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "idempotency key taken concurrently",
                    ))));
                }
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(Ok(Submitted::Created(job.clone())))
        });
        out?
    }
}

/// Joined into claims, lease renewals and stage updates: their implicit transaction commits
/// without waiting for the WAL flush (`synchronous_commit = off` for that transaction only).
/// Losing one in a database crash only sends a job back to the queue or shortens a lease; it
/// never loses or reverts a finished job. Submissions, completions, cancellations and
/// deletions commit synchronously.
const LAZY: &str = "(SELECT set_config('synchronous_commit', 'off', true)) lazy";

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

fn state_name(s: &Finish) -> &'static str {
    match s {
        Finish::Succeeded(_) => "succeeded",
        Finish::Failed(_) => "failed",
        Finish::Canceled(_) => "canceled",
        Finish::Requeue => "queued",
    }
}

impl JobStore for PgJobStore {
    fn shared(&self) -> bool {
        true
    }

    fn recover(&self, _blobs: &dyn BlobStore) -> io::Result<Recovery> {
        // Interrupted runs come back through lease expiry (reap); orphan blobs through the
        // periodic sweep. Nothing to repair at start.
        let stats = self.stats()?;
        Ok(Recovery {
            loaded: stats.queued + stats.running,
            ..Recovery::default()
        })
    }

    fn submit(
        &self,
        job: &JobRecord,
        key: Option<&IdempotencyRecord>,
        max_queued: usize,
    ) -> Result<Submitted, SubmitError> {
        let stored = to_json(job)?;
        for _ in 0..2 {
            match self.submit_once(job, &stored, key, max_queued) {
                Err(SubmitError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
        Err(SubmitError::Io(unavailable("idempotency key contended")))
    }

    fn get(&self, id: &JobId) -> io::Result<Option<JobRecord>> {
        self.run(async { fetch(&self.client().await?, id.as_str()).await })
    }

    fn list(
        &self,
        page_size: usize,
        after: Option<&JobId>,
        state: Option<JobState>,
    ) -> io::Result<(Vec<JobRecord>, Option<JobId>)> {
        let after = after.map(|a| a.as_str().to_string());
        let state = state.map(|s| s.as_str().to_string());
        let limit = i64::try_from(page_size + 1).unwrap_or(i64::MAX);
        self.run(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {COLS} FROM cle_jobs
                         WHERE ($1::text IS NULL OR id < $1) AND ($2::text IS NULL OR state = $2)
                         ORDER BY id DESC LIMIT $3"
                    ),
                    &[&after, &state, &limit],
                )
                .await
                .map_err(pg_err)?;
            let fetched = rows.iter().map(record).collect::<io::Result<Vec<_>>>()?;
            Ok(page(fetched, page_size))
        })
    }

    fn find_key(&self, key_sha256: &str) -> io::Result<Option<IdempotencyRecord>> {
        self.run(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT fingerprint, job_id, created_ms FROM cle_idempotency_keys
                     WHERE key_sha256 = $1",
                    &[&key_sha256],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| {
                let job_id: String = r.get(1);
                let created: i64 = r.get(2);
                Ok(IdempotencyRecord {
                    key_sha256: key_sha256.to_string(),
                    fingerprint: r.get(0),
                    job_id: JobId::parse(&job_id)
                        .ok_or_else(|| io::Error::other("stored key names an invalid job id"))?,
                    created_ms: u64::try_from(created).unwrap_or(0),
                })
            })
            .transpose()
        })
    }

    fn stats(&self) -> io::Result<QueueStats> {
        self.run(async {
            let c = self.client().await?;
            let row = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'queued'),
                            count(*) FILTER (WHERE state = 'running'),
                            min(created_ms) FILTER (WHERE state = 'queued')
                     FROM cle_jobs WHERE state IN ('queued', 'running')",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let queued: i64 = row.get(0);
            let running: i64 = row.get(1);
            let oldest: Option<i64> = row.get(2);
            Ok(QueueStats {
                queued: usize::try_from(queued).unwrap_or(0),
                running: usize::try_from(running).unwrap_or(0),
                oldest_queued_ms: oldest.and_then(|t| u64::try_from(t).ok()),
            })
        })
    }

    fn claim(&self, owner: &str, lease: Duration) -> io::Result<Option<Claimed>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.run(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    &format!(
                        "UPDATE cle_jobs j SET state = 'running', owner = $1, lease_token = $2,
                             lease_until = now() + $3::float8 * interval '1 second',
                             attempts = j.attempts + 1, started_ms = $4, stage = NULL,
                             cancel_requested = false
                         FROM (SELECT id FROM cle_jobs WHERE state = 'queued'
                               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) c, {LAZY}
                         WHERE j.id = c.id
                         RETURNING {}",
                        COLS.split(", ")
                            .map(|c| format!("j.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    &[&owner, &token, &lease_s(lease), &ms(now_ms())],
                )
                .await
                .map_err(pg_err)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let job = record(&row)?;
            Ok(Some(Claimed {
                lease: Lease {
                    id: job.id.clone(),
                    owner: owner.to_string(),
                    token: token.clone(),
                },
                job,
            }))
        })
    }

    fn renew(&self, leases: &[Lease], lease: Duration) -> io::Result<Vec<Renewal>> {
        let ids: Vec<&str> = leases.iter().map(|l| l.id.as_str()).collect();
        let tokens: Vec<&str> = leases.iter().map(|l| l.token.as_str()).collect();
        self.run(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!(
                        "UPDATE cle_jobs SET lease_until = now() + $3::float8 * interval '1 second'
                         FROM {LAZY}
                         WHERE id = ANY($1) AND lease_token = ANY($2) AND state = 'running'
                         RETURNING lease_token, cancel_requested"
                    ),
                    &[&ids, &tokens, &lease_s(lease)],
                )
                .await
                .map_err(pg_err)?;
            let held: std::collections::HashMap<String, bool> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(leases
                .iter()
                .map(|l| match held.get(&l.token) {
                    Some(cancel) => Renewal::Held { cancel: *cancel },
                    None => Renewal::Lost,
                })
                .collect())
        })
    }

    fn reap(&self) -> io::Result<(usize, usize)> {
        let max = i32::try_from(MAX_ATTEMPTS).unwrap_or(i32::MAX);
        let canceled = to_json(&Problem::new(
            axum::http::StatusCode::CONFLICT,
            "canceled",
            "the job was canceled on request",
        ))?;
        let crashed = to_json(&Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "job_crashed",
            "",
        ))?;
        self.run(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "UPDATE cle_jobs j SET
                         state = CASE WHEN e.cancel_requested THEN 'canceled'
                                      WHEN e.attempts >= $1::int THEN 'failed' ELSE 'queued' END,
                         finished_ms = CASE WHEN e.cancel_requested OR e.attempts >= $1
                                            THEN $2::bigint ELSE NULL END,
                         started_ms = CASE WHEN e.cancel_requested OR e.attempts >= $1
                                           THEN j.started_ms ELSE NULL END,
                         record = CASE
                             WHEN e.cancel_requested THEN j.record || jsonb_build_object(
                                 'error', $3::jsonb || jsonb_build_object('job_id', j.id))
                             WHEN e.attempts >= $1 THEN j.record || jsonb_build_object(
                                 'error', $4::jsonb || jsonb_build_object('job_id', j.id,
                                     'detail', 'the job was interrupted ' || e.attempts
                                         || ' times; giving up'))
                             ELSE j.record END,
                         owner = NULL, lease_token = NULL, lease_until = NULL, stage = NULL,
                         cancel_requested = false
                     FROM (SELECT id, attempts, cancel_requested FROM cle_jobs
                           WHERE state = 'running' AND lease_until < now()
                           FOR UPDATE SKIP LOCKED) e
                     WHERE j.id = e.id
                     RETURNING j.state",
                    &[&max, &ms(now_ms()), &canceled, &crashed],
                )
                .await
                .map_err(pg_err)?;
            let requeued = rows
                .iter()
                .filter(|r| r.get::<_, String>(0) == "queued")
                .count();
            Ok((requeued, rows.len() - requeued))
        })
    }

    fn set_stage(&self, lease: &Lease, stage: &str) -> io::Result<()> {
        self.run(async {
            let c = self.client().await?;
            c.execute(
                &format!(
                    "UPDATE cle_jobs SET stage = $3 FROM {LAZY}
                     WHERE id = $1 AND lease_token = $2 AND state = 'running'"
                ),
                &[&lease.id.as_str(), &lease.token, &stage],
            )
            .await
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn finish(&self, lease: &Lease, finish: &Finish, now: u64) -> io::Result<Option<JobRecord>> {
        let patch = match finish {
            Finish::Succeeded(r) => json!({ "result": to_json(r)?, "error": null }),
            Finish::Failed(p) | Finish::Canceled(p) => json!({ "error": to_json(p)? }),
            Finish::Requeue => json!({}),
        };
        let state = state_name(finish);
        let finished = (!matches!(finish, Finish::Requeue)).then(|| ms(now));
        self.run(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    &format!(
                        "UPDATE cle_jobs SET state = $3, finished_ms = $4,
                             started_ms = CASE WHEN $3 = 'queued' THEN NULL ELSE started_ms END,
                             stage = NULL, record = record || $5::jsonb, owner = NULL,
                             lease_token = NULL, lease_until = NULL, cancel_requested = false
                         WHERE id = $1 AND lease_token = $2 AND state = 'running'
                         RETURNING {COLS}"
                    ),
                    &[&lease.id.as_str(), &lease.token, &state, &finished, &patch],
                )
                .await
                .map_err(pg_err)?;
            row.as_ref().map(record).transpose()
        })
    }

    fn cancel(&self, id: &JobId, problem: &Problem, now: u64) -> io::Result<Option<CancelOutcome>> {
        let patch = json!({ "error": to_json(problem)? });
        self.run(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let Some(row) = tx
                .query_opt(
                    &format!("SELECT {COLS} FROM cle_jobs WHERE id = $1 FOR UPDATE"),
                    &[&id.as_str()],
                )
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let job = record(&row)?;
            let out = match job.state {
                JobState::Queued => {
                    let row = tx
                        .query_one(
                            &format!(
                                "UPDATE cle_jobs SET state = 'canceled', finished_ms = $2,
                                     record = record || $3::jsonb
                                 WHERE id = $1 RETURNING {COLS}"
                            ),
                            &[&id.as_str(), &ms(now), &patch],
                        )
                        .await
                        .map_err(pg_err)?;
                    CancelOutcome::Canceled(record(&row)?)
                }
                JobState::Running => {
                    tx.execute(
                        "UPDATE cle_jobs SET cancel_requested = true WHERE id = $1",
                        &[&id.as_str()],
                    )
                    .await
                    .map_err(pg_err)?;
                    CancelOutcome::Requested(job)
                }
                _ => CancelOutcome::Finished(job),
            };
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(out))
        })
    }

    fn delete(&self, id: &JobId) -> io::Result<Deleted> {
        self.run(async {
            let c = self.client().await?;
            let n = c
                .execute(
                    "DELETE FROM cle_jobs WHERE id = $1 AND state <> 'running'",
                    &[&id.as_str()],
                )
                .await
                .map_err(pg_err)?;
            if n > 0 {
                return Ok(Deleted::Removed);
            }
            let running = c
                .query_opt("SELECT 1 FROM cle_jobs WHERE id = $1", &[&id.as_str()])
                .await
                .map_err(pg_err)?
                .is_some();
            Ok(if running {
                Deleted::Running
            } else {
                Deleted::NotFound
            })
        })
    }

    fn expire(&self, horizon_ms: u64, limit: usize) -> io::Result<Vec<JobId>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "DELETE FROM cle_jobs WHERE id IN (
                         SELECT id FROM cle_jobs
                         WHERE state IN ('succeeded', 'failed', 'canceled') AND finished_ms < $1
                         ORDER BY finished_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                    &[&ms(horizon_ms), &limit],
                )
                .await
                .map_err(pg_err)?;
            c.execute(
                "DELETE FROM cle_idempotency_keys WHERE created_ms < $1",
                &[&ms(horizon_ms)],
            )
            .await
            .map_err(pg_err)?;
            Ok(job_ids(&rows))
        })
    }

    fn known(&self, ids: &[JobId]) -> io::Result<HashSet<JobId>> {
        let ids: Vec<&str> = ids.iter().map(JobId::as_str).collect();
        self.run(async {
            let c = self.client().await?;
            let rows = c
                .query("SELECT id FROM cle_jobs WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(pg_err)?;
            Ok(job_ids(&rows))
        })
    }

    fn check(&self) -> io::Result<()> {
        self.run_within(Duration::from_secs(3), async {
            let c = self.client().await?;
            let row = c
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(pg_err)?;
            if row.get::<_, bool>(0) {
                return Err(unavailable("database is a read-only standby"));
            }
            Ok(())
        })
    }

    fn subscribe(&self, sink: EventSink) {
        let config = self.config.clone();
        self.rt.spawn(listen(config, self.tls.clone(), sink));
    }
}

/// The `LISTEN cle_jobs` loop of one replica: forwards notifications to `sink`, reconnects
/// with back-off (0.25 s doubling to 5 s) and reports [`StoreEvent::Resync`] after a
/// reconnection (notifications sent meanwhile are lost).
async fn listen(config: tokio_postgres::Config, tls: PgTls, sink: EventSink) {
    let mut pause = Duration::from_millis(250);
    let mut connected_before = false;
    loop {
        match config.connect(tls.connector()).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!("database notifications: {e}");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        if connected_before {
                            tracing::info!("listening for job notifications again");
                            sink(StoreEvent::Resync);
                        }
                        connected_before = true;
                        pause = Duration::from_millis(250);
                        while let Some(payload) = rx.recv().await {
                            if let Some(ev) = parse_event(&payload) {
                                sink(ev);
                            }
                        }
                        tracing::warn!(
                            "lost the notification connection; polling until it is back"
                        );
                    }
                    Err(e) => tracing::warn!("LISTEN failed: {e}"),
                }
                driver.abort();
            }
            Err(e) => tracing::debug!("notification connection: {e}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

fn parse_event(payload: &str) -> Option<StoreEvent> {
    let (kind, id) = payload.split_once(':')?;
    let id = JobId::parse(id)?;
    Some(match kind {
        "queued" => StoreEvent::Queued(id),
        "cancel" => StoreEvent::CancelRequested(id),
        _ => StoreEvent::Changed(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        let id = JobId::generate();
        assert_eq!(
            parse_event(&format!("queued:{id}")),
            Some(StoreEvent::Queued(id.clone()))
        );
        assert_eq!(
            parse_event(&format!("cancel:{id}")),
            Some(StoreEvent::CancelRequested(id.clone()))
        );
        assert_eq!(
            parse_event(&format!("succeeded:{id}")),
            Some(StoreEvent::Changed(id))
        );
        assert_eq!(parse_event("queued:../x"), None);
        assert_eq!(parse_event("nonsense"), None);
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0, i as i32 + 1);
            assert!(!m.2.trim().is_empty());
        }
    }

    #[test]
    fn urls_are_described_without_credentials() {
        let c: tokio_postgres::Config = "postgres://u:secret@db.example:6543/cle".parse().unwrap();
        let d = describe(&c);
        assert_eq!(d, "db.example:6543/cle");
        assert!(!d.contains("secret"));
    }
}
