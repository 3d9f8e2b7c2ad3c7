//! Every error is `application/problem+json` with a stable `code`: 413 (by Content-Length, by
//! counting a chunked body, multipart), 429 with Retry-After, 404 unknown job and route, 405,
//! 415, invalid options, bytes that are not a model (422 at intake), and a model that only the
//! run finds broken (a cycle), which becomes a failed job carrying a problem.

mod server_support;

use std::time::Duration;

use server_support::{http, http_chunked, models, multipart, Part, Server};

#[test]
fn client_errors_are_problems() {
    let server = Server::start(&["--max-upload", "64KiB"]);

    let declared = server.request(
        "POST",
        "/equalize",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", "1048576"),
        ],
        b"",
    );
    declared.problem(413, "payload_too_large");

    let big = vec![7u8; 200 << 10];
    let chunked = http_chunked(
        server.addr,
        "/equalize",
        "application/octet-stream",
        &big,
        16 << 10,
    );
    let p = chunked.problem(413, "payload_too_large");
    assert_eq!(p["instance"], "/equalize");

    let (ct, body) = multipart(&[Part::file("model", "m.onnx", big.clone())]);
    let mp = server.request("POST", "/equalize", &[("Content-Type", &ct)], &body);
    mp.problem(413, "payload_too_large");

    let (ct, body) = multipart(&[Part::file("model", "m.onnx", big)]);
    let mp = http_chunked(server.addr, "/equalize", &ct, &body, 8 << 10);
    mp.problem(413, "payload_too_large");
    assert!(server.get("/jobs").json()["jobs"]
        .as_array()
        .unwrap()
        .is_empty());
    let tmp = std::fs::read_dir(server.data_dir.join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "rejected uploads leave no temp files");

    server
        .get("/jobs/job_0123456789abcdef0123456789abcdef")
        .problem(404, "job_not_found");
    server
        .get("/jobs/not-a-job/report")
        .problem(404, "job_not_found");
    server.get("/no/such/route").problem(404, "not_found");
    let p = server
        .request("DELETE", "/equalize", &[], b"")
        .problem(405, "method_not_allowed");
    assert_eq!(p["instance"], "/equalize");
    server
        .request(
            "POST",
            "/equalize",
            &[("Content-Type", "text/plain")],
            b"hello",
        )
        .problem(415, "unsupported_media_type");
    server
        .submit_bytes(b"x", "relu6=sometimes")
        .problem(400, "invalid_query");
    server
        .submit_bytes(b"x", "bogus=1")
        .problem(400, "invalid_query");
    let p = server
        .submit_bytes(b"x", "iterations=0")
        .problem(422, "invalid_options");
    assert_eq!(p["errors"][0]["pointer"], "/options");
    server.submit_bytes(b"", "").problem(422, "empty_model");
    let (ct, body) = multipart(&[
        Part::json("options", r#"{"relu6":"exact","colour":"blue"}"#),
        Part::file("model", "m.onnx", b"abc".to_vec()),
    ]);
    let p = server
        .request("POST", "/equalize", &[("Content-Type", &ct)], &body)
        .problem(422, "invalid_options");
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");
    let (ct, body) = multipart(&[Part::json("options", "{}")]);
    server
        .request("POST", "/equalize", &[("Content-Type", &ct)], &body)
        .problem(400, "missing_model");
    server
        .request(
            "POST",
            "/equalize",
            &[("Content-Type", "multipart/form-data")],
            b"--x--",
        )
        .problem(400, "invalid_multipart");
    server
        .get("/jobs?page_size=0")
        .problem(400, "invalid_query");
    server
        .get("/jobs?state=sleeping")
        .problem(400, "invalid_query");
    server
        .get("/jobs?page_token=abc")
        .problem(400, "invalid_page_token");
    let raw = http(
        server.addr,
        "GET",
        "/jobs/job_0123456789abcdef0123456789abcdef?wait=soon",
        &[],
        b"",
    );
    raw.problem(400, "invalid_query");
}

/// A model whose two Relu nodes feed each other: valid protobuf, so it passes the upload
/// scan; only decoding and indexing it (in the job) finds the cycle.
fn cyclic_model() -> Vec<u8> {
    let mut b = onnx_cle::builder::ModelBuilder::new(13);
    let x = b.batched_input("x", "N", &[2]);
    b.output(&x);
    let mut m = b.build();
    let g = m.graph.as_mut().unwrap();
    for (i, o) in [("loop_b", "loop_a"), ("loop_a", "loop_b")] {
        g.node.push(onnx_cle::onnx::NodeProto {
            op_type: Some("Relu".into()),
            input: vec![i.into()],
            output: vec![o.into()],
            ..Default::default()
        });
    }
    onnx_cle::onnx::encode(&m)
}

#[test]
fn a_broken_model_is_a_failed_job_with_a_problem() {
    let server = Server::start(&[]);
    // Bytes that are not protobuf are refused at intake by the upload scan.
    server
        .submit_bytes(b"this is not a protobuf at all", "verify=false")
        .problem(422, "model_not_onnx");
    let r = server.submit_bytes(&cyclic_model(), "verify=false");
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = server.wait_done(&id, Duration::from_secs(60));
    assert_eq!(job["state"], "failed");
    assert_eq!(job["done"], true);
    let e = &job["error"];
    assert_eq!(e["code"], "invalid_model", "{job}");
    assert_eq!(e["status"], 422);
    assert_eq!(e["job_id"], id.as_str());
    assert!(e["title"].is_string() && e["type"].is_string() && e["detail"].is_string());
    assert!(job["result"].is_null());
    let p = server
        .get(&format!("/jobs/{id}/model"))
        .problem(409, "job_not_succeeded");
    assert_eq!(p["job_id"], id.as_str());
    server
        .get(&format!("/jobs/{id}/report"))
        .problem(409, "job_not_succeeded");
    server
        .request("POST", &format!("/jobs/{id}/cancel"), &[], b"")
        .problem(409, "job_finished");
    server.wait_metric(
        "cle_jobs_finished_total{state=\"failed\",error_code=\"invalid_model\"} 1",
        Duration::from_secs(10),
    );
}

#[test]
fn a_full_queue_is_429_with_retry_after() {
    let Some(models) = models() else { return };
    let model = std::fs::read(models.join("mobilenet_v2.onnx")).unwrap();
    let server = Server::start(&["--workers", "1", "--queue-size", "1"]);
    let mut accepted = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let r = server.submit_bytes(&model, "");
        match r.status {
            202 => accepted.push(r.json()["id"].as_str().unwrap().to_string()),
            _ => {
                let p = r.problem(429, "queue_full");
                assert!(p["detail"].is_string());
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(retry >= 1);
                refused = Some(r);
                break;
            }
        }
    }
    assert!(
        refused.is_some(),
        "no 429 with one worker and a queue of one"
    );
    assert!(accepted.len() <= 2);
    for id in &accepted {
        server.request("POST", &format!("/jobs/{id}/cancel"), &[], b"");
    }
    for id in &accepted {
        server.wait_done(id, Duration::from_secs(300));
    }
    assert!(server
        .get("/metrics")
        .text()
        .contains("cle_jobs_submitted_total{outcome=\"rejected\"} 1"));
}
