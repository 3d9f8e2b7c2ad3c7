//! One contract, every backend pair: the filesystem stores (the default) and PostgreSQL + S3
//! (a throwaway cluster and a SeaweedFS server on loopback, started by `scripts/backends.sh`,
//! which installs them on first use). The same assertions on records, queue order, fencing,
//! idempotency keys, cancellation, retention, blobs and atomicity run against both; lease
//! expiry runs where leases can expire (shared stores).

mod scale_support;

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use onnx_cle::server::job::{now_ms, InputInfo, JobId, JobRecord, JobResult, JobState};
use onnx_cle::server::problem::Problem;
use onnx_cle::server::store::{
    self, BlobKind, BlobStore, CancelOutcome, Deleted, Finish, IdempotencyRecord, JobStore,
    Renewal, SubmitError, Submitted, MAX_ATTEMPTS,
};
use onnx_cle::Options;

const LEASE: Duration = Duration::from_secs(30);

fn new_record(name: &str) -> JobRecord {
    let id = JobId::generate();
    JobRecord {
        id,
        name: Some(name.to_string()),
        state: JobState::Queued,
        stage: None,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        options: Options::default().normalized().unwrap(),
        input: InputInfo {
            bytes: 5,
            sha256: "ab".repeat(32),
            filename: Some(format!("{name}.onnx")),
        },
        fingerprint: format!("fp-{name}"),
        result: None,
        error: None,
        attempts: 0,
    }
}

fn key(k: &str, job: &JobRecord, fingerprint: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        key_sha256: format!("{:0>64}", k),
        fingerprint: fingerprint.to_string(),
        job_id: job.id.clone(),
        created_ms: job.created_ms,
    }
}

fn submitted(r: Result<Submitted, SubmitError>) -> JobRecord {
    match r {
        Ok(Submitted::Created(j)) => j,
        other => panic!("expected a created job, got {other:?}"),
    }
}

fn result() -> JobResult {
    JobResult {
        model_bytes: 7,
        model_sha256: "cd".repeat(32),
        function_changed: false,
        verification: onnx_cle::report::VerifyStatus::Verified,
        max_rel_l2: Some(1e-7),
        int8_trusted: Some(false),
        int8_problems: vec!["qdq.onnx was not checked against its baseline".into()],
        artifacts: vec![onnx_cle::server::job::ArtifactInfo {
            name: "qdq.onnx".into(),
            bytes: 3,
            sha256: "ab".repeat(32),
            media_type: "application/octet-stream".into(),
        }],
        qdq_coverage: None,
    }
}

fn problem(code: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        code,
        "the job was canceled on request",
    )
}

/// The contract. `shared`: the store is shared by replicas (leases can expire).
fn contract(js: &dyn JobStore, bs: &dyn BlobStore, shared: bool) {
    assert_eq!(js.shared(), shared);
    js.check().expect("job store ready");
    bs.check().expect("blob store ready");

    // Empty.
    let s = js.stats().unwrap();
    assert_eq!((s.queued, s.running, s.oldest_queued_ms), (0, 0, None));
    assert!(js.claim("r1", LEASE).unwrap().is_none());
    assert!(js.list(10, None, None).unwrap().0.is_empty());

    // Records round-trip whole; ids are submission order.
    let mut jobs = Vec::new();
    for i in 0..5 {
        let rec = new_record(&format!("job{i}"));
        let k = (i == 0).then(|| key("a", &rec, &rec.fingerprint));
        jobs.push(submitted(js.submit(&rec, k.as_ref(), 5)));
        assert_eq!(
            js.get(&rec.id).unwrap().as_ref(),
            Some(&rec),
            "record round-trips"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids are time-ordered");
    let s = js.stats().unwrap();
    assert_eq!((s.queued, s.running), (5, 0));
    assert_eq!(s.oldest_queued_ms, Some(jobs[0].created_ms));

    // Paging: newest first, tokens continue, state filter.
    let (page, next) = js.list(2, None, None).unwrap();
    assert_eq!(
        page.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&ids[4], &ids[3]]
    );
    assert_eq!(next.as_ref(), Some(&ids[3]));
    let (page, next) = js.list(2, next.as_ref(), None).unwrap();
    assert_eq!(
        page.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&ids[2], &ids[1]]
    );
    let (page, next) = js.list(2, next.as_ref(), None).unwrap();
    assert_eq!(page.iter().map(|j| &j.id).collect::<Vec<_>>(), [&ids[0]]);
    assert!(next.is_none());
    assert_eq!(
        js.list(10, None, Some(JobState::Queued)).unwrap().0.len(),
        5
    );
    assert!(js
        .list(10, None, Some(JobState::Running))
        .unwrap()
        .0
        .is_empty());

    // The queue bound: nothing is stored when it is full.
    let extra = new_record("extra");
    assert!(matches!(
        js.submit(&extra, None, 5),
        Err(SubmitError::QueueFull)
    ));
    assert!(
        js.get(&extra.id).unwrap().is_none(),
        "refused job not stored"
    );

    // Idempotency keys: same key and fingerprint replays, another fingerprint is refused; neither
    // stores anything.
    let again = new_record("again");
    match js.submit(&again, Some(&key("a", &again, &jobs[0].fingerprint)), 100) {
        Ok(Submitted::Replayed(j)) => assert_eq!(j.id, ids[0]),
        other => panic!("expected a replay, got {other:?}"),
    }
    match js.submit(&again, Some(&key("a", &again, "other")), 100) {
        Err(SubmitError::KeyReused(id)) => assert_eq!(id, ids[0]),
        other => panic!("expected key_reused, got {other:?}"),
    }
    assert!(js.get(&again.id).unwrap().is_none());
    let k = js.find_key(&format!("{:0>64}", "a")).unwrap().unwrap();
    assert_eq!(
        (k.job_id, k.fingerprint),
        (ids[0].clone(), jobs[0].fingerprint.clone())
    );
    assert!(js.find_key(&"f".repeat(64)).unwrap().is_none());

    // Claims take the oldest queued job and count the attempt.
    let c0 = js.claim("r1", LEASE).unwrap().expect("a job");
    assert_eq!(c0.job.id, ids[0]);
    assert_eq!((c0.job.state, c0.job.attempts), (JobState::Running, 1));
    assert!(c0.job.started_ms.is_some());
    assert_eq!(c0.lease.owner, "r1");
    let stored = js.get(&ids[0]).unwrap().unwrap();
    assert_eq!((stored.state, stored.attempts), (JobState::Running, 1));
    assert_eq!(js.stats().unwrap().running, 1);

    // Concurrent claimers never share a job.
    let taken = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let taken = &taken;
            s.spawn(move || {
                while let Some(c) = js.claim(&format!("t{t}"), LEASE).unwrap() {
                    taken.lock().unwrap().push(c);
                }
            });
        }
    });
    let taken = taken.into_inner().unwrap();
    let got: HashSet<JobId> = taken.iter().map(|c| c.job.id.clone()).collect();
    assert_eq!(taken.len(), 4, "each job claimed once");
    assert_eq!(got, ids[1..].iter().cloned().collect::<HashSet<_>>());
    assert!(js.claim("r1", LEASE).unwrap().is_none());
    let s = js.stats().unwrap();
    assert_eq!((s.queued, s.running, s.oldest_queued_ms), (0, 5, None));

    // Stages and renewals are fenced by the lease token.
    let mut forged = c0.lease.clone();
    forged.token = "not-the-token".into();
    js.set_stage(&c0.lease, "cls").unwrap();
    js.set_stage(&forged, "hbf").unwrap();
    assert_eq!(
        js.get(&ids[0]).unwrap().unwrap().stage.as_deref(),
        Some("cls")
    );
    assert_eq!(
        js.renew(&[c0.lease.clone(), forged.clone()], LEASE)
            .unwrap(),
        [Renewal::Held { cancel: false }, Renewal::Lost]
    );

    // Cancelling a running job asks its holder to stop (seen on renewal).
    let by_id = |id: &JobId| taken.iter().find(|c| &c.job.id == id).unwrap();
    let c1 = by_id(&ids[1]);
    match js.cancel(&ids[1], &problem("canceled"), now_ms()).unwrap() {
        Some(CancelOutcome::Requested(j)) => assert_eq!(j.state, JobState::Running),
        other => panic!("expected a cancel request, got {other:?}"),
    }
    assert_eq!(
        js.renew(std::slice::from_ref(&c1.lease), LEASE).unwrap(),
        [Renewal::Held { cancel: true }]
    );
    let canceled = js
        .finish(&c1.lease, &Finish::Canceled(problem("canceled")), now_ms())
        .unwrap()
        .unwrap();
    assert_eq!(canceled.state, JobState::Canceled);
    assert_eq!(canceled.error.as_ref().unwrap().code, "canceled");

    // Completion is fenced: a wrong token changes nothing, the holder's lands once.
    assert!(js
        .finish(&forged, &Finish::Failed(problem("boom")), now_ms())
        .unwrap()
        .is_none());
    assert_eq!(js.get(&ids[0]).unwrap().unwrap().state, JobState::Running);
    let done = js
        .finish(&c0.lease, &Finish::Succeeded(result()), now_ms())
        .unwrap()
        .expect("the holder's completion lands");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(result()));
    assert!(done.error.is_none() && done.finished_ms.is_some() && done.stage.is_none());
    assert_eq!(js.get(&ids[0]).unwrap().as_ref(), Some(&done));
    assert!(
        js.finish(&c0.lease, &Finish::Failed(problem("late")), now_ms())
            .unwrap()
            .is_none(),
        "a late duplicate never overwrites a finished job"
    );
    assert_eq!(js.get(&ids[0]).unwrap().as_ref(), Some(&done));
    assert_eq!(
        js.renew(std::slice::from_ref(&c0.lease), LEASE).unwrap(),
        [Renewal::Lost]
    );

    // An interrupted run goes back to the queue, ahead of younger jobs, and counts again.
    let c2 = by_id(&ids[2]);
    let requeued = js
        .finish(&c2.lease, &Finish::Requeue, now_ms())
        .unwrap()
        .unwrap();
    assert_eq!(
        (requeued.state, requeued.started_ms),
        (JobState::Queued, None)
    );
    let young = submitted(js.submit(&new_record("young"), None, 100));
    let again = js.claim("r2", LEASE).unwrap().unwrap();
    assert_eq!(
        (again.job.id.clone(), again.job.attempts),
        (ids[2].clone(), 2)
    );
    js.finish(
        &again.lease,
        &Finish::Failed(problem("model_not_onnx")),
        now_ms(),
    )
    .unwrap()
    .unwrap();

    // Cancelling a queued job is immediate; a finished job stays as it is.
    match js
        .cancel(&young.id, &problem("canceled"), now_ms())
        .unwrap()
    {
        Some(CancelOutcome::Canceled(j)) => {
            assert_eq!(j.state, JobState::Canceled);
            assert!(j.finished_ms.is_some());
        }
        other => panic!("expected canceled, got {other:?}"),
    }
    assert!(matches!(
        js.cancel(&ids[0], &problem("canceled"), now_ms()).unwrap(),
        Some(CancelOutcome::Finished(j)) if j.state == JobState::Succeeded
    ));
    assert!(js
        .cancel(&JobId::generate(), &problem("canceled"), now_ms())
        .unwrap()
        .is_none());
    assert_eq!(js.claim("r1", LEASE).unwrap().map(|c| c.job.id), None);

    // Deletion: not while running; finished jobs go; unknown ids say so.
    assert_eq!(js.delete(&ids[3]).unwrap(), Deleted::Running);
    assert_eq!(js.delete(&ids[2]).unwrap(), Deleted::Removed);
    assert!(js.get(&ids[2]).unwrap().is_none());
    assert_eq!(js.delete(&ids[2]).unwrap(), Deleted::NotFound);
    let known = js.known(&ids).unwrap();
    assert_eq!(
        known,
        [&ids[0], &ids[1], &ids[3], &ids[4]]
            .into_iter()
            .cloned()
            .collect()
    );

    // Retention removes finished jobs before the horizon and old keys, nothing running.
    let mut expired = js.expire(now_ms() + 1, 100).unwrap();
    expired.sort();
    assert_eq!(
        expired,
        vec![ids[0].clone(), ids[1].clone(), young.id.clone()]
    );
    assert!(
        js.expire(now_ms() + 1, 100).unwrap().is_empty(),
        "each job expires once"
    );
    assert!(js.get(&ids[0]).unwrap().is_none());
    assert_eq!(js.get(&ids[3]).unwrap().unwrap().state, JobState::Running);
    assert!(js.find_key(&format!("{:0>64}", "a")).unwrap().is_none());
    for id in [&ids[3], &ids[4]] {
        let c = by_id(id);
        js.finish(&c.lease, &Finish::Succeeded(result()), now_ms())
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        js.expire(now_ms() + 1, 1).unwrap().len(),
        1,
        "limit honoured"
    );
    assert_eq!(js.expire(now_ms() + 1, 10).unwrap().len(), 1);
    assert_eq!(js.stats().unwrap(), Default::default());

    blobs(bs);

    if shared {
        leases(js);
    }
}

fn blobs(bs: &dyn BlobStore) {
    let id = JobId::generate();
    // A blob larger than one multipart part, written in 1 MiB slices: invisible until committed.
    let big: Vec<u8> = (0..(12usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let mut sink = bs.create(&id, BlobKind::Input).unwrap();
    for slice in big.chunks(1 << 20) {
        sink.write_all(slice).unwrap();
    }
    match bs.open(&id, BlobKind::Input) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound),
        Ok(_) => panic!("an uncommitted blob is visible"),
    }
    sink.commit().unwrap();
    let (_, len) = bs.open(&id, BlobKind::Input).unwrap();
    assert_eq!(len, big.len() as u64);
    assert!(
        bs.read(&id, BlobKind::Input).unwrap() == big,
        "content round-trips"
    );

    // Small blobs; a dropped sink leaves nothing; replacing is atomic.
    bs.put(&id, BlobKind::Report, b"{\"a\":1}").unwrap();
    bs.put(&id, BlobKind::Report, b"{\"a\":2}").unwrap();
    assert_eq!(bs.read(&id, BlobKind::Report).unwrap(), b"{\"a\":2}");
    // Every artifact kind is its own blob of the job, deleted with it.
    for (i, kind) in onnx_cle::ArtifactKind::ALL.iter().enumerate() {
        bs.put(&id, BlobKind::Artifact(*kind), &[i as u8; 3])
            .unwrap();
    }
    for (i, kind) in onnx_cle::ArtifactKind::ALL.iter().enumerate() {
        assert_eq!(
            bs.read(&id, BlobKind::Artifact(*kind)).unwrap(),
            [i as u8; 3]
        );
    }
    let mut dropped = bs.create(&id, BlobKind::Model).unwrap();
    dropped.write_all(&big[..(9 << 20)]).unwrap();
    drop(dropped);
    assert_eq!(
        bs.open(&id, BlobKind::Model).err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    let other = JobId::generate();
    bs.put(&other, BlobKind::Model, b"m").unwrap();
    let listed: HashSet<JobId> = bs.jobs().unwrap().into_iter().collect();
    assert!(
        listed.contains(&id) && listed.contains(&other),
        "{listed:?}"
    );
    bs.delete(&id).unwrap();
    bs.delete(&id).unwrap();
    assert_eq!(
        bs.open(&id, BlobKind::Artifact(onnx_cle::ArtifactKind::Qdq))
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        bs.open(&id, BlobKind::Input).err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    assert!(!bs.jobs().unwrap().contains(&id));
    bs.delete(&other).unwrap();
}

/// Shared stores: a job whose holder stops renewing goes back to the queue once its lease ran
/// out, the old holder is fenced out, and after MAX_ATTEMPTS runs the job fails.
fn leases(js: &dyn JobStore) {
    let short = Duration::from_millis(600);
    let rec = submitted(js.submit(&new_record("lease"), None, 100));
    let mut last = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let c = js.claim("dying", short).unwrap().expect("claimable");
        assert_eq!(
            (c.job.id.clone(), c.job.attempts),
            (rec.id.clone(), attempt)
        );
        assert_eq!(js.reap().unwrap(), (0, 0), "lease still valid");
        std::thread::sleep(short + Duration::from_millis(400));
        let (requeued, failed) = js.reap().unwrap();
        if attempt < MAX_ATTEMPTS {
            assert_eq!((requeued, failed), (1, 0));
            let j = js.get(&rec.id).unwrap().unwrap();
            assert_eq!((j.state, j.attempts), (JobState::Queued, attempt));
        } else {
            assert_eq!((requeued, failed), (0, 1));
        }
        assert!(
            js.finish(&c.lease, &Finish::Succeeded(result()), now_ms())
                .unwrap()
                .is_none(),
            "the expired holder is fenced out"
        );
        last = Some(c);
    }
    let j = js.get(&rec.id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, "job_crashed");
    assert_eq!(e.job_id.as_deref(), Some(rec.id.as_str()));
    assert!(e.detail.unwrap().contains(&MAX_ATTEMPTS.to_string()));
    assert_eq!(
        js.renew(std::slice::from_ref(&last.unwrap().lease), short)
            .unwrap(),
        [Renewal::Lost]
    );

    // A renewed lease does not expire; a pending cancellation wins over a re-run.
    let rec = submitted(js.submit(&new_record("renewed"), None, 100));
    let c = js.claim("alive", short).unwrap().unwrap();
    for _ in 0..4 {
        std::thread::sleep(short / 3);
        assert_eq!(
            js.renew(std::slice::from_ref(&c.lease), short).unwrap(),
            [Renewal::Held { cancel: false }]
        );
        assert_eq!(js.reap().unwrap(), (0, 0));
    }
    js.cancel(&rec.id, &problem("canceled"), now_ms()).unwrap();
    std::thread::sleep(short + Duration::from_millis(400));
    assert_eq!(js.reap().unwrap(), (0, 1));
    let j = js.get(&rec.id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Canceled);
    assert_eq!(j.error.unwrap().code, "canceled");
}

#[test]
fn filesystem_stores_keep_the_contract() {
    let dir = std::env::temp_dir().join(format!(
        "onnx-cle-contract-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let (js, bs) = store::fs::open(&dir).unwrap();
    js.recover(&bs).unwrap();
    contract(&js, &bs, false);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn postgres_and_s3_stores_keep_the_contract() {
    let env = scale_support::Backends::start("contract");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (js, bs) = rt.block_on(async {
        let js = store::pg::PgJobStore::connect(&env.database_url, None, 16)
            .await
            .expect("connect to PostgreSQL");
        assert_eq!(js.migrate().await.unwrap(), vec![1]);
        assert!(
            js.migrate().await.unwrap().is_empty(),
            "migrations are idempotent"
        );
        let bs = store::s3::S3BlobStore::from_env(&env.bucket, "contract").expect("S3 store");
        (Arc::new(js), Arc::new(bs))
    });
    js.recover(bs.as_ref()).unwrap();
    contract(js.as_ref(), bs.as_ref(), true);

    // The KEDA trigger's query (deploy/k8s/scale-out) counts what the store counts.
    for i in 0..3 {
        submitted(js.submit(&new_record(&format!("keda{i}")), None, 100));
    }
    js.claim("r1", LEASE).unwrap().unwrap();
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/k8s/scale-out/keda-scaledobject.yaml"),
    )
    .unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&manifest).unwrap()[0];
    let query = doc["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap()
        .to_string();
    let counted: i64 = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query_one(query.as_str(), &[]).await.unwrap().get(0)
    });
    let s = js.stats().unwrap();
    assert_eq!((counted, s.queued + s.running), (3, 3), "{query}");
    drop((js, bs));
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// A connection to `url` without TLS (for the test's own queries).
async fn plain(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("plain connection");
    tokio::spawn(conn);
    client
}

/// (encrypted, plaintext) connections of application `app`.
async fn connections(admin: &tokio_postgres::Client, app: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Applies `settings` (`ALTER SYSTEM …` statements), reloads the server's configuration and
/// ends the connections of application `app`, so its pool must connect again.
async fn reconfigure(admin: &tokio_postgres::Client, settings: &[&str], app: &str) {
    for s in settings {
        admin.batch_execute(s).await.unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
}

/// Waits until `js.check()` fails with an error whose text contains `needle` (a pooled
/// connection that was just ended may first fail otherwise); every failure is "unavailable"
/// (the API's 503 and `/readyz` down).
fn wait_check_fails(js: &dyn JobStore, needle: &str) -> String {
    let mut seen = Vec::new();
    for _ in 0..50 {
        match js.check() {
            Ok(()) => {}
            Err(e) => {
                assert!(store::is_unavailable(&e), "{e}");
                if e.to_string().contains(needle) {
                    return e.to_string();
                }
                seen.push(e.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("check() never failed with `{needle}`; saw {seen:?}");
}

/// Makes a self-signed certificate for localhost in `dir` (openssl CLI): a certificate no
/// client trusts.
fn rogue_certificate(dir: &std::path::Path) -> (String, String) {
    let (crt, key) = (dir.join("rogue.crt"), dir.join("rogue.key"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl req");
    // Readable by the server: owned like its data folder, key private.
    let owner = format!("--reference={}", dir.join("data").display());
    for f in [&crt, &key] {
        let ok = std::process::Command::new("chown")
            .arg(&owner)
            .arg(f)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", f.display());
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (crt.display().to_string(), key.display().to_string())
}

/// `sslmode` and `sslrootcert` as libpq reads them, against a throwaway PostgreSQL with
/// `ssl = on` and a certificate (for localhost and 127.0.0.1) from a CA that
/// `scripts/backends.sh` makes with openssl (`PG_TLS=1`).
#[test]
fn postgres_over_tls_keeps_the_contract_and_refuses_what_does_not_verify() {
    let env = scale_support::Backends::start_with("tls", 2, &[("PG_TLS", "1"), ("BACKENDS", "pg")]);
    let ca = std::path::PathBuf::from(&env.env["PG_CA"]);
    let port = std::fs::read_to_string(env.dir.join("pg.port")).unwrap();
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", port.trim());
    let pg_dir = std::path::PathBuf::from(
        std::fs::read_to_string(env.dir.join("pg.dir"))
            .unwrap()
            .trim(),
    );
    assert!(
        env.database_url.contains("sslmode=verify-full"),
        "{}",
        env.database_url
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let connect = |url: String, ca: Option<std::path::PathBuf>| {
        rt.block_on(async move { store::pg::PgJobStore::connect(&url, ca.as_deref(), 8).await })
    };
    let refused = |url: String, ca: Option<std::path::PathBuf>, needle: &str| -> String {
        let e = match connect(url.clone(), ca) {
            Ok(_) => panic!("{url}: connected"),
            Err(e) => e,
        };
        assert!(e.to_string().contains(needle), "{url}: {e}");
        assert!(
            !store::is_unavailable(&e),
            "{url}: a TLS refusal is final (no start-up retries): {e}"
        );
        e.to_string()
    };
    let admin = rt.block_on(plain(&format!("{base}?sslmode=disable")));

    // verify-full with the CA (from the URL) keeps the contract, notifications included.
    let js = Arc::new(connect(env.database_url.clone(), None).expect("verify-full"));
    assert!(
        js.describe().contains("sslmode=verify-full"),
        "{}",
        js.describe()
    );
    rt.block_on(js.migrate()).unwrap();
    let blobs_dir = env.dir.join("blobs");
    let bs = store::fs::open_blobs(&blobs_dir).unwrap();
    js.recover(&bs).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    js.subscribe(Arc::new(move |ev| {
        let _ = tx.lock().unwrap().send(ev);
    }));
    contract(js.as_ref(), &bs, true);
    let rec = submitted(js.submit(&new_record("over-tls"), None, 100));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(store::StoreEvent::Queued(id)) if id == rec.id => break,
            Ok(_) => {}
            Err(e) => panic!("no notification over the TLS LISTEN connection: {e}"),
        }
    }
    let (tls, clear) = rt.block_on(connections(&admin, "onnx-cle"));
    assert!(
        tls >= 2,
        "the pool and the LISTEN connection use TLS ({tls})"
    );
    assert_eq!(clear, 0, "no plaintext connection");

    // The CA from --database-ca (ONNX_CLE_DATABASE_CA) when the URL has none.
    let s =
        connect(format!("{base}?sslmode=verify-full"), Some(ca.clone())).expect("--database-ca");
    s.check().unwrap();

    // verify-full without the CA, and with a host name the certificate does not list.
    let e = refused(
        format!("{base}?sslmode=verify-full"),
        None,
        "does not verify",
    );
    assert!(
        e.contains("UnknownIssuer") && e.contains("sslrootcert"),
        "{e}"
    );
    let wrong_host = format!(
        "postgres://postgres@db.invalid:{}/postgres?hostaddr=127.0.0.1",
        port.trim()
    );
    let e = refused(
        format!(
            "{wrong_host}&sslmode=verify-full&sslrootcert={}",
            ca.display()
        ),
        None,
        "does not verify",
    );
    assert!(e.contains("not valid for name \"db.invalid\""), "{e}");
    // verify-ca checks the chain only; a foreign CA still fails it.
    let s =
        connect(format!("{wrong_host}&sslmode=verify-ca"), Some(ca.clone())).expect("verify-ca");
    s.check().unwrap();
    refused(format!("{base}?sslmode=verify-ca"), None, "UnknownIssuer");

    // disable: plaintext; require: encrypted, certificate unchecked.
    let plain_store = connect(
        format!("{base}?sslmode=disable&application_name=cle-plain"),
        None,
    )
    .expect("disable");
    plain_store.check().unwrap();
    assert_eq!(rt.block_on(connections(&admin, "cle-plain")).0, 0);
    let req = connect(
        format!("{base}?sslmode=require&application_name=cle-require"),
        None,
    )
    .expect("require");
    req.check().unwrap();
    let (tls, clear) = rt.block_on(connections(&admin, "cle-require"));
    assert!(tls >= 1 && clear == 0, "({tls}, {clear})");

    // A server without TLS: `require` is refused at start, and a running store whose
    // connections come back without TLS reports itself down (what /readyz reads).
    rt.block_on(reconfigure(
        &admin,
        &["ALTER SYSTEM SET ssl = off"],
        "cle-require",
    ));
    refused(
        format!("{base}?sslmode=require"),
        None,
        "does not offer TLS",
    );
    wait_check_fails(&req, "does not offer TLS");
    connect(format!("{base}?sslmode=disable"), None)
        .expect("disable without TLS")
        .check()
        .unwrap();
    connect(base.clone(), None)
        .expect("prefer falls back to plaintext")
        .check()
        .unwrap();

    // A certificate that stops verifying takes a running verify-full store down; it recovers
    // by itself once the right certificate is back.
    let (crt, key) = rogue_certificate(&pg_dir);
    rt.block_on(reconfigure(
        &admin,
        &[
            "ALTER SYSTEM RESET ssl",
            &format!("ALTER SYSTEM SET ssl_cert_file = '{crt}'"),
            &format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
        ],
        "onnx-cle",
    ));
    let e = wait_check_fails(js.as_ref(), "certificate");
    assert!(e.contains("UnknownIssuer"), "{e}");
    req.check().expect("require does not check the certificate");
    rt.block_on(reconfigure(
        &admin,
        &[
            "ALTER SYSTEM RESET ssl_cert_file",
            "ALTER SYSTEM RESET ssl_key_file",
        ],
        "none",
    ));
    js.check()
        .expect("verify-full again once the certificate verifies");

    drop((js, s, plain_store, req, admin));
    rt.shutdown_timeout(Duration::from_secs(5));
}
