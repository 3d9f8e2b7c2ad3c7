//! The PostgreSQL queue alone, no CLE work: `JOBS` jobs are submitted (8 concurrent
//! submitters), then `CLAIMERS` threads loop claim → renew (the heartbeat) → finish until the
//! queue is empty, through the real `PgJobStore` statements (`src/server/store/pg.rs`).
//! Prints claims per second and the latency distribution of the claim statement, and of a
//! whole claim → renew → finish cycle.
//!
//! Run by `scripts/bench_queue.sh` (which starts a throwaway PostgreSQL); by hand:
//! `DATABASE_URL=postgres://… cargo bench --bench queue`. Environment: `DATABASE_URL`,
//! `QUEUE_BENCH_JOBS` (default 20000), `QUEUE_BENCH_CLAIMERS` (default 8).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use onnx_cle::server::job::{now_ms, InputInfo, JobId, JobRecord, JobResult, JobState};
use onnx_cle::server::store::pg::PgJobStore;
use onnx_cle::server::store::{Finish, JobStore, Renewal, Submitted};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record() -> JobRecord {
    JobRecord {
        id: JobId::generate(),
        name: Some("bench".into()),
        state: JobState::Queued,
        stage: None,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        options: onnx_cle::Options::default(),
        input: InputInfo {
            bytes: 13_900_112,
            sha256: "ab".repeat(32),
            filename: Some("mobilenet_v2.onnx".into()),
        },
        fingerprint: "cd".repeat(32),
        result: None,
        error: None,
        attempts: 0,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("queue bench: set DATABASE_URL (scripts/bench_queue.sh starts a database)");
        return;
    };
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let jobs = env_usize("QUEUE_BENCH_JOBS", 20_000);
    let claimers = env_usize("QUEUE_BENCH_CLAIMERS", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(async {
        let s = PgJobStore::connect(&url, None, claimers + 2)
            .await
            .expect("connect");
        s.migrate().await.expect("migrate");
        s
    });
    let store = &store;
    let lease = Duration::from_secs(30);

    let t = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    match store.submit(&record(), None, usize::MAX) {
                        Ok(Submitted::Created(_)) => {}
                        other => panic!("submit: {other:?}"),
                    }
                }
            });
        }
    });
    let submit_s = t.elapsed().as_secs_f64();
    println!(
        "submitted {jobs} jobs in {submit_s:.2} s: {:.0} submits/s (8 submitters)",
        jobs as f64 / submit_s
    );

    let result = JobResult {
        model_bytes: 13_900_112,
        model_sha256: "ef".repeat(32),
        function_changed: false,
        verification: onnx_cle::report::VerifyStatus::Verified,
        max_rel_l2: Some(1e-7),
        int8_trusted: None,
        int8_problems: Vec::new(),
        artifacts: Vec::new(),
        qdq_coverage: None,
    };
    let claim_ms = Mutex::new(Vec::with_capacity(jobs));
    let cycle_ms = Mutex::new(Vec::with_capacity(jobs));
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..claimers {
            let (claim_ms, cycle_ms, result) = (&claim_ms, &cycle_ms, &result);
            s.spawn(move || {
                let owner = format!("bench-{c}");
                let (mut mine, mut cycles) = (Vec::new(), Vec::new());
                loop {
                    let t0 = Instant::now();
                    let Some(claimed) = store.claim(&owner, lease).expect("claim") else {
                        break;
                    };
                    mine.push(t0.elapsed().as_secs_f64() * 1e3);
                    let renewed = store
                        .renew(std::slice::from_ref(&claimed.lease), lease)
                        .expect("renew");
                    assert_eq!(renewed, [Renewal::Held { cancel: false }]);
                    let done = store
                        .finish(&claimed.lease, &Finish::Succeeded(result.clone()), now_ms())
                        .expect("finish");
                    assert!(done.is_some(), "fenced out without competition");
                    cycles.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                claim_ms.lock().unwrap().extend(mine);
                cycle_ms.lock().unwrap().extend(cycles);
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let mut claims = claim_ms.into_inner().unwrap();
    let mut cycles = cycle_ms.into_inner().unwrap();
    assert_eq!(claims.len(), jobs, "every job claimed exactly once");
    claims.sort_by(f64::total_cmp);
    cycles.sort_by(f64::total_cmp);
    println!(
        "{claimers} claimers: {jobs} claim → renew → finish cycles in {wall:.2} s: {:.0} claims/s",
        jobs as f64 / wall
    );
    println!(
        "claim latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(&claims, 0.5),
        pct(&claims, 0.9),
        pct(&claims, 0.99),
        claims.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "cycle latency ms (claim + renew + finish): p50 {:.2}  p99 {:.2}",
        pct(&cycles, 0.5),
        pct(&cycles, 0.99)
    );
    let left = store.stats().expect("stats");
    assert_eq!((left.queued, left.running), (0, 0));
}
