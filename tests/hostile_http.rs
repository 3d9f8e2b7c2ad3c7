//! The hostile-input matrix over HTTP, against the real `onnx-cle serve` on a loopback port.
//!
//! Every case ends either in a 4xx `application/problem+json` with a stable `code` at intake
//! (what the upload scan can tell without decoding: not protobuf, no graph, over a limit, a
//! tensor whose dimensions overflow; bad requests), or — when only decoding or running the job
//! can tell (cycles, dangling inputs, inconsistent tensors, external data, unknown start
//! names) — in a `failed` job whose `error` is a problem with a stable `code`. Unusual but
//! valid models succeed, with what the engine could not rewrite listed as skips (same
//! decisions as `hostile_cli.rs`). Never a 5xx; after every case the server answers the next
//! request; its log never shows a panic.
//!
//! Also here: bearer-token auth, the upload timeout against a client sending one byte per
//! second, the concurrent-upload limit, the job wall-time limit, the header timeout against
//! slow-header ("slowloris") and idle connections, the connection cap.

mod hostile_support;
mod server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hostile_support as h;
use serde_json::Value;
use server_support::{multipart, Part, Resp, Server};

const NO_VERIFY: &str = "verify=false";

fn alive(server: &Server, case: &str) {
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "{case}: the server stopped answering");
}

fn no_5xx(case: &str, r: &Resp) {
    assert!(r.status < 500, "{case}: {} {}", r.status, r.text());
}

/// Submits raw bytes; asserts a problem at intake.
fn refused(server: &Server, case: &str, bytes: &[u8], status: u16, code: &str) -> Value {
    let r = server.submit_bytes(bytes, NO_VERIFY);
    no_5xx(case, &r);
    let p = r.problem(status, code);
    assert!(
        p["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}: {p}"
    );
    alive(server, case);
    p
}

/// Submits raw bytes (with `query`); asserts the job is accepted and ends in `state`.
fn job(server: &Server, case: &str, bytes: &[u8], query: &str, state: &str) -> Value {
    let r = server.submit_bytes(bytes, query);
    no_5xx(case, &r);
    assert_eq!(r.status, 202, "{case}: {}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = server.wait_done(&id, Duration::from_secs(120));
    assert_eq!(job["state"], state, "{case}: {job}");
    alive(server, case);
    job
}

fn failed(server: &Server, case: &str, bytes: &[u8], query: &str, code: &str) {
    let job = job(server, case, bytes, query, "failed");
    let e = &job["error"];
    assert_eq!(e["code"], code, "{case}: {job}");
    let status = e["status"].as_u64().unwrap();
    assert!((400..500).contains(&status), "{case}: {job}");
    assert!(
        e["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}"
    );
    let id = job["id"].as_str().unwrap();
    no_5xx(case, &server.get(&format!("/jobs/{id}/model")));
}

/// A succeeded job whose model, report and report page all download; returns the report.
fn succeeded(server: &Server, case: &str, bytes: &[u8], query: &str) -> Value {
    let job = job(server, case, bytes, query, "succeeded");
    let id = job["id"].as_str().unwrap();
    for path in ["model", "report", "report.html"] {
        let r = server.get(&format!("/jobs/{id}/{path}"));
        assert_eq!(r.status, 200, "{case}: /{path}: {}", r.text());
    }
    server.get(&format!("/jobs/{id}/report")).json()
}

#[test]
fn hostile_models_are_refused_or_fail_cleanly_and_unusual_ones_succeed() {
    let server = Server::start(&["--max-upload", "64MiB", "--workers", "2"]);

    // Refused at intake, before a job exists.
    refused(&server, "empty", b"", 422, "empty_model");
    refused(
        &server,
        "random_bytes",
        &h::random_bytes(),
        422,
        "model_not_onnx",
    );
    refused(&server, "truncated", &h::truncated(), 422, "model_not_onnx");
    refused(
        &server,
        "not_a_model",
        &h::not_a_model(),
        422,
        "model_not_onnx",
    );
    refused(&server, "no_graph", &h::no_graph(), 422, "invalid_model");
    refused(
        &server,
        "deep_nesting",
        &h::deep_nesting(60),
        422,
        "model_not_onnx",
    );
    refused(
        &server,
        "dims_overflow",
        &h::dims_overflow(),
        422,
        "invalid_tensor",
    );
    refused(
        &server,
        "huge_tensor",
        &h::huge_declared_tensor(),
        413,
        "limit_exceeded",
    );
    let p = refused(
        &server,
        "attribute_flood",
        &h::attribute_flood(10_000_000),
        413,
        "limit_exceeded",
    );
    assert!(p["detail"].as_str().unwrap().contains("memory"), "{p}");
    let p = refused(
        &server,
        "million_nodes",
        &h::relu_chain(1_000_001),
        413,
        "limit_exceeded",
    );
    assert!(p["detail"].as_str().unwrap().contains("nodes"), "{p}");
    assert!(
        server.get("/jobs").json()["jobs"]
            .as_array()
            .unwrap()
            .is_empty(),
        "refused uploads create no job"
    );
    let blobs = std::fs::read_dir(server.data_dir.join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "refused uploads leave no files");

    // Accepted, then failed by the run with a problem.
    failed(&server, "cycle", &h::cycle(), NO_VERIFY, "invalid_model");
    failed(
        &server,
        "missing_init",
        &h::missing_initializer(),
        NO_VERIFY,
        "invalid_model",
    );
    failed(
        &server,
        "dims_vs_data",
        &h::dims_vs_data(),
        NO_VERIFY,
        "invalid_tensor",
    );
    failed(
        &server,
        "dup_outputs",
        &h::duplicate_outputs(),
        NO_VERIFY,
        "invalid_model",
    );
    failed(
        &server,
        "dup_inits",
        &h::duplicate_initializers(),
        NO_VERIFY,
        "invalid_model",
    );
    for loc in ["../weights.bin", "/etc/hostname", "weights.bin"] {
        failed(
            &server,
            loc,
            &h::external_data(loc),
            NO_VERIFY,
            "external_data",
        );
    }
    let healthy = h::healthy();
    failed(
        &server,
        "unknown_start",
        &healthy,
        "start=nope",
        "unknown_name",
    );
    failed(
        &server,
        "unknown_output",
        &healthy,
        "output=nope&output=c2",
        "unknown_name",
    );

    // Unusual but valid: succeed, with reasons for what is left alone (verification on).
    let r = succeeded(&server, "nan_inf_weights", &h::nan_inf_weights(), "");
    assert_eq!(r["cls_sets"][0]["pairs"][0]["scale"][0], 1.0, "{r:#}");
    let r = succeeded(&server, "bn_bad_variance", &h::bn_bad_variance(), "");
    assert!(
        r["skipped"].to_string().contains("bn_invalid_params"),
        "{r:#}"
    );
    succeeded(
        &server,
        "many_attributes",
        &h::many_attributes(20_000),
        NO_VERIFY,
    );
    let r = succeeded(&server, "nested_subgraphs", &h::nested_subgraphs(), "");
    assert!(r["cls_sets"].as_array().unwrap().is_empty(), "{r:#}");
    succeeded(&server, "string_tensor", &h::string_tensor(), "");
    let r = succeeded(&server, "sparse", &h::sparse_initializer(), "");
    assert!(
        r["skipped"].to_string().contains("weight_not_constant"),
        "{r:#}"
    );
    let r = succeeded(&server, "qdq_int8", &h::qdq_int8(), "");
    assert!(r["skipped"].to_string().contains("QuantizeLinear"), "{r:#}");
    let r = succeeded(&server, "fp16", &h::fp16_weights(), "");
    assert!(r["skipped"].to_string().contains("float16"), "{r:#}");
    for (case, bytes) in [
        ("opset1", h::opset(1, 3)),
        ("opset1000", h::opset(1000, 99)),
    ] {
        let r = succeeded(&server, case, &bytes, "");
        assert_eq!(r["bn_folds"].as_array().unwrap().len(), 1, "{case}: {r:#}");
    }
    succeeded(&server, "dup_names", &h::duplicate_node_names(), "");
    let r = succeeded(&server, "group0", &h::bad_group(0), NO_VERIFY);
    assert!(
        r["skipped"].to_string().contains("invalid_attribute"),
        "{r:#}"
    );

    // Bad requests.
    let (ct, body) = multipart(&[
        Part::file("model", "m.onnx", healthy.clone()),
        Part::json("options", r#"{"relu6": "exact", "#),
    ]);
    let r = server.request("POST", "/equalize", &[("Content-Type", &ct)], &body);
    r.problem(422, "invalid_options");
    let (ct, body) = multipart(&[
        Part::file("model", "m.onnx", healthy.clone()),
        Part::json("options", r#"{"iterations": "many"}"#),
    ]);
    let r = server.request("POST", "/equalize", &[("Content-Type", &ct)], &body);
    r.problem(422, "invalid_options");
    let (ct, body) = multipart(&[Part::json("options", "{}"), Part::json("name", "x")]);
    let r = server.request("POST", "/equalize", &[("Content-Type", &ct)], &body);
    r.problem(400, "missing_model");
    for ct in ["text/plain", "application/json", "image/png"] {
        let r = server.request("POST", "/equalize", &[("Content-Type", ct)], &healthy);
        r.problem(415, "unsupported_media_type");
    }
    let r = server.request("POST", "/equalize", &[], &healthy);
    r.problem(415, "unsupported_media_type");
    let (ct, body) = multipart(&[Part::file("model", "m.onnx", h::random_bytes())]);
    let r = server.request("POST", "/equalize", &[("Content-Type", &ct)], &body);
    r.problem(422, "model_not_onnx");
    assert_eq!(
        std::fs::read_dir(server.data_dir.join("blobs"))
            .unwrap()
            .count(),
        server.get("/jobs?page_size=100").json()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        "every blob folder belongs to a job"
    );

    // The service still does its job.
    let r = succeeded(&server, "healthy", &healthy, "");
    assert_eq!(r["verification"]["status"], "verified");
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}

/// Writes a request head announcing `len` body bytes, then the body one byte per `every`.
fn slow_upload(server: &Server, len: usize, every: Duration) -> std::thread::JoinHandle<Resp> {
    let addr = server.addr;
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "POST /equalize HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..len {
            if s.write_all(&[0x08]).is_err() {
                break;
            }
            let t = Instant::now();
            while t.elapsed() < every {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if !raw.is_empty() {
                break;
            }
        }
        s.set_nonblocking(false).unwrap();
        let _ = s.read_to_end(&mut raw);
        server_support::parse_response(&raw)
    })
}

#[test]
fn a_client_sending_one_byte_per_second_times_out_and_uploads_are_bounded() {
    let server = Server::start(&[
        "--upload-timeout",
        "2s",
        "--max-concurrent-uploads",
        "1",
        "--workers",
        "1",
    ]);
    let t = Instant::now();
    let slow = slow_upload(&server, 1000, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    // The slow upload holds the only upload slot: another upload is told to come back.
    let busy = server.submit_bytes(&h::healthy(), NO_VERIFY);
    let p = busy.problem(429, "too_many_uploads");
    assert!(busy.header("retry-after").is_some(), "{p}");
    // Everything else is served meanwhile.
    alive(&server, "during the slow upload");
    assert_eq!(server.get("/jobs").status, 200);
    let r = slow.join().unwrap();
    let elapsed = t.elapsed();
    r.problem(408, "upload_timeout");
    assert!(
        elapsed < Duration::from_secs(15),
        "timed out after {elapsed:?}"
    );
    // The slot is free again and no worker was ever taken.
    let ok = server.submit_bytes(&h::healthy(), NO_VERIFY);
    assert_eq!(ok.status, 202, "{}", ok.text());
    let id = ok.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        server.wait_done(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );
    assert_eq!(
        server.get("/jobs").json()["jobs"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        std::fs::read_dir(server.data_dir.join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn bearer_token_guards_everything_but_the_health_checks() {
    let token = "t0ken-with-some-length";
    let server = Server::start(&["--auth-token", token]);
    let auth = format!("Bearer {token}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(server.get(path).status, 200, "{path} stays open");
    }
    for (method, path) in [
        ("GET", "/jobs"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs/"),
        ("GET", "/jobs/job_0123456789abcdef0123456789abcdef"),
        ("POST", "/equalize"),
        ("GET", "/no/such/route"),
    ] {
        let r = server.request(method, path, &[], b"");
        r.problem(401, "unauthorized");
        let challenge = r.header("www-authenticate").unwrap_or("");
        assert!(challenge.starts_with("Bearer"), "{path}: {challenge}");
        for bad in [
            "Bearer nope",
            "Basic dXNlcjpwYXNz",
            &format!("Bearer {token}x"),
            "Bearer",
        ] {
            let r = server.request(method, path, &[("Authorization", bad)], b"");
            r.problem(401, "unauthorized");
        }
    }
    assert_eq!(
        server
            .request("GET", "/jobs", &[("Authorization", &auth)], b"")
            .status,
        200
    );
    let data = h::healthy();
    let r = server.request(
        "POST",
        "/equalize?verify=false",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Authorization", &auth),
        ],
        &data,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let path = format!("/jobs/{id}?wait=30s");
    let job = server
        .request("GET", &path, &[("Authorization", &auth)], b"")
        .json();
    assert_eq!(job["state"], "succeeded", "{job}");
    server
        .get(&format!("/jobs/{id}/model"))
        .problem(401, "unauthorized");
    let model = server.request(
        "GET",
        &format!("/jobs/{id}/model"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(model.status, 200);
    assert!(!server.log().contains(token), "the token is never logged");
}

#[test]
fn a_job_over_the_wall_time_limit_is_canceled_and_fails() {
    let Some(models) = server_support::models() else {
        return;
    };
    // The deadline is checked every 250 ms and a run stops at its next stage boundary;
    // mobilenet_v2 spends about a second in the stages before verification (debug build), so
    // with a 1 ms limit every run is caught there. The second job shows the worker was freed.
    let server = Server::start(&["--max-job-time", "1ms", "--workers", "1"]);
    let mobilenet = models.join("mobilenet_v2.onnx");
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let r = server.submit_raw(&mobilenet, "");
            assert_eq!(r.status, 202, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        let job = server.wait_done(id, Duration::from_secs(300));
        assert_eq!(job["state"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "job_timeout", "{job}");
        assert_eq!(job["error"]["status"], 422, "{job}");
        server
            .get(&format!("/jobs/{id}/model"))
            .problem(409, "job_not_succeeded");
    }
    assert!(server.log().contains("max-job-time"), "{}", server.log());
    server.wait_metric(
        "cle_jobs_finished_total{state=\"failed\",error_code=\"job_timeout\"} 2",
        Duration::from_secs(10),
    );
}

/// Seconds until the server closes `s` (reads until EOF or error), at most `limit`.
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(t.elapsed()),
        }
    }
}

#[test]
fn slow_headers_and_idle_connections_are_closed_and_connections_are_capped() {
    let server = Server::start(&["--header-timeout", "1s", "--max-connections", "3"]);
    // Headers that never end, one byte at a time: closed after the header timeout.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let t = Instant::now();
    let closed = (0..40).find_map(|_| {
        if slow.write_all(b"a").is_err() {
            return Some(t.elapsed());
        }
        closed_after(&mut slow, Duration::from_millis(100)).map(|_| t.elapsed())
    });
    let closed = closed.expect("a slow-header client was not disconnected within 4 s");
    assert!(
        closed >= Duration::from_millis(900),
        "closed too early: {closed:?}"
    );
    // An idle keep-alive connection (one request served, nothing after) is closed too.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let gone = closed_after(&mut idle, Duration::from_secs(5));
    assert!(
        gone.is_some(),
        "an idle keep-alive connection stayed open 5 s"
    );

    // Three connections hold every slot: a fourth is not served until one closes.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut waiting = TcpStream::connect(server.addr).unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 12];
    assert!(
        waiting.read(&mut buf).is_err(),
        "a connection beyond the cap was served while the cap was full"
    );
    drop(held);
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    waiting.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    alive(&server, "after the connection cap");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
