//! End to end: the real binary on a loopback port, mobilenet_v2 by multipart and by raw body,
//! long-poll, downloads; the model is byte-equal to `onnx-cle equalize` with the same options
//! and the report equal apart from `timings_ms`. Also idempotency keys, paging, cancel/delete.

mod server_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use server_support::{models, sha256, tempdir, without_timings, Server, BIN};

fn cli(model: &Path, out_dir: &Path, tag: &str, extra: &[&str]) -> (Vec<u8>, Value) {
    let out = out_dir.join(format!("{tag}.onnx"));
    let report = out_dir.join(format!("{tag}.json"));
    let status = Command::new(BIN)
        .arg("equalize")
        .arg(model)
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .arg("--quiet")
        .args(extra)
        .status()
        .expect("run onnx-cle equalize");
    assert!(status.success(), "CLI failed: {status}");
    let json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (std::fs::read(&out).unwrap(), json)
}

fn check_against_cli(
    server: &Server,
    job: &Value,
    cli_model: &[u8],
    cli_report: &Value,
    filename: &str,
) {
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["error"].is_null());
    let model = server.get(&format!("/jobs/{id}/model"));
    assert_eq!(model.status, 200);
    assert_eq!(
        model.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        model.header("content-disposition"),
        Some(format!("attachment; filename=\"{filename}\"").as_str())
    );
    assert!(
        model.body == cli_model,
        "model differs from the CLI's output"
    );
    let etag = format!("\"{}\"", sha256(cli_model));
    assert_eq!(model.header("etag"), Some(etag.as_str()));
    assert_eq!(job["result"]["model_sha256"], sha256(cli_model));
    let again = server.request(
        "GET",
        &format!("/jobs/{id}/model"),
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(again.status, 304);
    let report = server.get(&format!("/jobs/{id}/report"));
    assert_eq!(report.status, 200);
    assert_eq!(report.header("content-type"), Some("application/json"));
    assert_eq!(
        without_timings(report.json()),
        without_timings(cli_report.clone())
    );
    let html = server.get(&format!("/jobs/{id}/report.html"));
    assert_eq!(html.status, 200);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(html.text().contains("<html"), "an HTML page");
    assert_eq!(
        job["links"]["report_html"],
        format!("/jobs/{id}/report.html")
    );
}

#[test]
fn mobilenet_multipart_and_raw_match_the_cli_byte_for_byte() {
    let Some(models) = models() else { return };
    let model = models.join("mobilenet_v2.onnx");
    let out = tempdir("e2e");
    let server = Server::start(&["--workers", "2"]);

    let multipart = server.submit_multipart(&model, None, &[]);
    assert_eq!(multipart.status, 202, "{}", multipart.text());
    let location = multipart.header("location").unwrap().to_string();
    assert!(location.starts_with("/jobs/job_"));
    assert_eq!(
        multipart.header("operation-location"),
        Some(location.as_str())
    );
    assert!(multipart.header("retry-after").is_some());
    let job = multipart.json();
    assert_eq!(location, format!("/jobs/{}", job["id"].as_str().unwrap()));
    assert!(matches!(job["state"].as_str(), Some("queued" | "running")));
    assert_eq!(job["done"], false);
    let input = std::fs::read(&model).unwrap();
    assert_eq!(job["input"]["bytes"], input.len());
    assert_eq!(job["input"]["sha256"], sha256(&input));

    let raw = server.submit_raw(&model, "verify=false&name=raw%20upload");
    assert_eq!(raw.status, 202, "{}", raw.text());
    let raw_job = raw.json();
    assert_eq!(raw_job["name"], "raw upload");
    assert_eq!(raw_job["options"]["verify"]["enabled"], false);

    let (cli_verified, cli_verified_report) = cli(&model, &out, "verified", &[]);
    let (cli_plain, cli_plain_report) = cli(&model, &out, "plain", &["--no-verify"]);

    let done = server.wait_done(job["id"].as_str().unwrap(), Duration::from_secs(600));
    assert_eq!(done["result"]["verification"], "verified", "{done}");
    check_against_cli(
        &server,
        &done,
        &cli_verified,
        &cli_verified_report,
        "mobilenet_v2.cle.onnx",
    );
    let raw_done = server.wait_done(raw_job["id"].as_str().unwrap(), Duration::from_secs(600));
    check_against_cli(
        &server,
        &raw_done,
        &cli_plain,
        &cli_plain_report,
        "model.cle.onnx",
    );
    assert!(raw_done["finished_at"].is_string() && raw_done["started_at"].is_string());
    assert_eq!(
        raw_done["links"]["model"],
        format!("/jobs/{}/model", raw_done["id"].as_str().unwrap())
    );

    let page = server.get("/jobs?page_size=1").json();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], raw_done["id"], "newest first");
    let token = page["next_page_token"].as_str().unwrap();
    let page2 = server
        .get(&format!("/jobs?page_size=1&page_token={token}"))
        .json();
    assert_eq!(page2["jobs"][0]["id"], done["id"]);
    assert!(page2["next_page_token"].is_null());
    let succeeded = server.get("/jobs?state=succeeded").json();
    assert_eq!(succeeded["jobs"].as_array().unwrap().len(), 2);

    let metrics = server.wait_metric(
        "cle_jobs_finished_total{state=\"succeeded\",error_code=\"\"} 2",
        Duration::from_secs(10),
    );
    assert!(
        metrics.contains("cle_jobs_submitted_total{outcome=\"accepted\"} 2"),
        "{metrics}"
    );
    assert!(metrics
        .contains("http_requests_total{method=\"POST\",route=\"/equalize\",status=\"202\"} 2"));

    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn idempotency_keys_replay_or_refuse() {
    let Some(models) = models() else { return };
    let tiny = models.join("tiny.onnx");
    let server = Server::start(&[]);
    let opts = r#"{"verify":{"enabled":false}}"#;
    let key = [("Idempotency-Key", "\"3f1c0a4e-key\"")];
    let first = server.submit_multipart(&tiny, Some(opts), &key);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_string();
    server.wait_done(&id, Duration::from_secs(120));
    let replay = server.submit_multipart(&tiny, Some(opts), &key);
    assert_eq!(replay.status, 202);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], id.as_str());
    assert_eq!(replay.json()["state"], "succeeded");
    let other = server.submit_multipart(
        &tiny,
        Some(r#"{"verify":{"enabled":false},"iterations":3}"#),
        &key,
    );
    let p = other.problem(422, "idempotency_key_reused");
    assert_eq!(p["job_id"], id.as_str());
    let bad_key = server.submit_multipart(&tiny, Some(opts), &[("Idempotency-Key", "")]);
    bad_key.problem(400, "invalid_idempotency_key");
    let jobs = server.get("/jobs").json();
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        1,
        "no job for replays or refusals"
    );
    let fresh = server.submit_multipart(&tiny, Some(opts), &[]);
    assert_eq!(fresh.json()["fingerprint"], first.json()["fingerprint"]);
    assert_ne!(fresh.json()["id"], first.json()["id"]);
}

#[test]
fn cancel_and_delete() {
    let Some(models) = models() else { return };
    let mobilenet = models.join("mobilenet_v2.onnx");
    let tiny = models.join("tiny.onnx");
    let server = Server::start(&["--workers", "1"]);
    let slow = server.submit_raw(&mobilenet, "").json();
    let queued = server.submit_raw(&tiny, "verify=false").json();
    let slow_id = slow["id"].as_str().unwrap();
    let queued_id = queued["id"].as_str().unwrap();

    let canceled = server.request("POST", &format!("/jobs/{queued_id}/cancel"), &[], b"");
    assert_eq!(canceled.status, 202, "{}", canceled.text());
    let canceled = server.wait_done(queued_id, Duration::from_secs(60));
    assert_eq!(canceled["state"], "canceled", "{canceled}");
    assert_eq!(canceled["error"]["code"], "canceled");
    server
        .get(&format!("/jobs/{queued_id}/model"))
        .problem(409, "job_not_succeeded");

    let running = server.request("DELETE", &format!("/jobs/{slow_id}"), &[], b"");
    if running.status != 204 {
        running.problem(409, "job_running");
        let r = server.request("POST", &format!("/jobs/{slow_id}/cancel"), &[], b"");
        assert_eq!(r.status, 202, "{}", r.text());
        let ended = server.wait_done(slow_id, Duration::from_secs(300));
        assert!(
            matches!(ended["state"].as_str(), Some("canceled" | "succeeded")),
            "{ended}"
        );
        let d = server.request("DELETE", &format!("/jobs/{slow_id}"), &[], b"");
        assert_eq!(d.status, 204, "{}", d.text());
    }
    server
        .get(&format!("/jobs/{slow_id}"))
        .problem(404, "job_not_found");
    let d = server.request("DELETE", &format!("/jobs/{queued_id}"), &[], b"");
    assert_eq!(d.status, 204);
    server
        .request("POST", &format!("/jobs/{queued_id}/cancel"), &[], b"")
        .problem(404, "job_not_found");
    assert!(!server.data_dir.join("blobs").join(queued_id).exists());
}
