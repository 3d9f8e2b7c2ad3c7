//! kill -9 with 20 jobs queued or running, twice (the second time while the restarted server is
//! busy writing records and results), then a last start on the same data dir: all 20 jobs reach
//! a terminal state, none is lost, no record is corrupt, every result downloads intact.
//!
//! What makes it hold: every record and blob is written to `tmp/`, fsynced, renamed into place
//! and its folder fsynced (`server/store/fs.rs`), uploads are committed before their record
//! exists, and at start interrupted runs go back to the queue (`server/jobs/`).

mod server_support;

use std::time::{Duration, Instant};

use server_support::{models, tempdir, Server};

const JOBS: usize = 20;

#[test]
fn kill_9_with_twenty_jobs_in_flight_loses_nothing() {
    let Some(models) = models() else { return };
    let dir = tempdir("crash20");
    let mut server = Server::start_in(dir.clone(), &["--workers", "1"], true);
    let mut ids = Vec::new();
    // One long job (verification on) holds the only worker; 19 wait behind it.
    let r = server.submit_raw(&models.join("mobilenet_v2.onnx"), "");
    assert_eq!(r.status, 202, "{}", r.text());
    ids.push(r.json()["id"].as_str().unwrap().to_string());
    let tiny = models.join("tiny.onnx");
    for i in 1..JOBS {
        let r = if i % 2 == 0 {
            server.submit_raw(&tiny, "verify=false&relu6=replace")
        } else {
            let key = format!("crash-test-{i}");
            server.submit_multipart(
                &tiny,
                Some(r#"{"verify":{"enabled":false}}"#),
                &[("Idempotency-Key", key.as_str())],
            )
        };
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let t = Instant::now();
    while server.get(&format!("/jobs/{}", ids[0])).json()["state"] != "running" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the first job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let states: Vec<String> = ids
        .iter()
        .map(|id| {
            server.get(&format!("/jobs/{id}")).json()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        states.iter().all(|s| s == "queued" || s == "running"),
        "all {JOBS} jobs in flight at the kill: {states:?}"
    );
    server.kill9();
    drop(server);

    // Restart with two workers and crash again while it works through the queue.
    let mut server = Server::start_in(dir.clone(), &["--workers", "2"], true);
    assert!(server.log().contains("requeued=1"), "{}", server.log());
    let t = Instant::now();
    loop {
        let done = server.get("/jobs?page_size=100&state=succeeded").json()["jobs"]
            .as_array()
            .unwrap()
            .len();
        if done >= 3 || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    drop(server);

    // Every record on disk is a complete JSON document.
    for entry in std::fs::read_dir(dir.join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read(&path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{} is corrupt: {e}", path.display()));
        assert!(v["id"].is_string(), "{}", path.display());
    }

    let server = Server::start_in(dir, &["--workers", "2"], false);
    assert!(!server.log().contains("unreadable"), "{}", server.log());
    for id in &ids {
        let job = server.wait_done(id, Duration::from_secs(600));
        assert_eq!(job["state"], "succeeded", "{job}");
        let model = server.get(&format!("/jobs/{id}/model"));
        assert_eq!(model.status, 200);
        assert_eq!(
            server_support::sha256(&model.body),
            job["result"]["model_sha256"],
            "{id}: the stored model is the one the record describes"
        );
        let report = server.get(&format!("/jobs/{id}/report"));
        assert_eq!(report.status, 200);
        let _: serde_json::Value = report.json();
    }
    let listed = server.get("/jobs?page_size=100").json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), JOBS, "{listed}");
    let first = server.get(&format!("/jobs/{}", ids[0])).json();
    assert!(first["attempts"].as_u64().unwrap() >= 2, "{first}");
}
