//! Durability: jobs submitted, the server stopped (SIGTERM, and separately kill -9) while one
//! runs and others wait, started again on the same data dir: every job reaches a terminal
//! state, finished ones are still downloadable, none is lost.

mod server_support;

use std::path::Path;
use std::time::{Duration, Instant};

use server_support::{models, tempdir, Server};

const NO_VERIFY: &str = "verify=false";

/// Submits one slow job and three quick ones on a one-worker server; returns the ids once the
/// slow one runs.
fn submit_batch(server: &Server, models: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    let slow = server.submit_raw(&models.join("mobilenet_v2.onnx"), NO_VERIFY);
    assert_eq!(slow.status, 202, "{}", slow.text());
    ids.push(slow.json()["id"].as_str().unwrap().to_string());
    for _ in 0..3 {
        let r = server.submit_multipart(
            &models.join("tiny.onnx"),
            Some(r#"{"verify":{"enabled":false}}"#),
            &[],
        );
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let t = Instant::now();
    loop {
        let job = server.get(&format!("/jobs/{}", ids[0])).json();
        if job["state"] != "queued" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the first job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ids
}

fn all_finish_and_download(server: &Server, ids: &[String]) {
    for id in ids {
        let job = server.wait_done(id, Duration::from_secs(300));
        assert_eq!(job["state"], "succeeded", "{job}");
        let model = server.get(&format!("/jobs/{id}/model"));
        assert_eq!(model.status, 200);
        assert_eq!(
            server_support::sha256(&model.body),
            job["result"]["model_sha256"]
        );
        assert_eq!(server.get(&format!("/jobs/{id}/report")).status, 200);
    }
    let listed = server.get("/jobs?page_size=100").json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        ids.len(),
        "{listed}"
    );
}

#[test]
fn sigterm_requeues_running_jobs_and_keeps_everything() {
    let Some(models) = models() else { return };
    let dir = tempdir("sigterm");
    let mut server = Server::start_in(
        dir.clone(),
        &["--workers", "1", "--shutdown-grace", "0s"],
        true,
    );
    let ids = submit_batch(&server, &models);
    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        server.log()
    );
    assert!(server.log().contains("stopped"), "{}", server.log());
    drop(server);

    let server = Server::start_in(dir.clone(), &["--workers", "2"], false);
    all_finish_and_download(&server, &ids);
    let first = server.get(&format!("/jobs/{}", ids[0])).json();
    assert!(first["attempts"].as_u64().unwrap() >= 1, "{first}");

    let mut server = server;
    assert!(server.terminate().success());
    let again = Server::start_in(dir, &[], false);
    all_finish_and_download(&again, &ids);
}

#[test]
fn kill_9_reruns_the_interrupted_job() {
    let Some(models) = models() else { return };
    let dir = tempdir("kill9");
    let mut server = Server::start_in(dir.clone(), &["--workers", "1"], true);
    let ids = submit_batch(&server, &models);
    server.kill9();
    drop(server);

    let server = Server::start_in(dir, &["--workers", "2"], false);
    assert!(server.log().contains("requeued=1"), "{}", server.log());
    all_finish_and_download(&server, &ids);
    let first = server.get(&format!("/jobs/{}", ids[0])).json();
    assert_eq!(
        first["attempts"], 2,
        "the interrupted run ran again: {first}"
    );
}
