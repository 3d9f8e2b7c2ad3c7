//! `openapi/openapi.json` is what the code generates (and what `onnx-cle openapi` prints).
//! After an intended API change: `UPDATE_OPENAPI=1 cargo test --test server_openapi`.

mod server_support;

use std::path::Path;
use std::process::Command;

use server_support::Server;

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let generated = onnx_cle::server::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi/openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json differs from the code's document; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --test server_openapi` (or `onnx-cle openapi > \
         openapi/openapi.json`) and review the diff"
    );
    let printed = Command::new(env!("CARGO_BIN_EXE_onnx-cle"))
        .arg("openapi")
        .output()
        .expect("run onnx-cle openapi");
    assert!(printed.status.success());
    assert_eq!(String::from_utf8_lossy(&printed.stdout), generated);
}

#[test]
fn document_is_openapi_3_1_with_problem_errors_everywhere() {
    let doc: serde_json::Value = serde_json::from_str(&onnx_cle::server::openapi_json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/equalize",
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/cancel",
        "/jobs/{id}/model",
        "/jobs/{id}/report",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
            let five = &op["responses"]["5XX"]["content"]["application/problem+json"];
            assert_eq!(
                five["schema"]["$ref"], "#/components/schemas/Problem",
                "{method} {path}"
            );
        }
    }
    let states = &doc["components"]["schemas"]["JobState"]["enum"];
    assert_eq!(
        states,
        &serde_json::json!(["queued", "running", "succeeded", "failed", "canceled"])
    );
    let body = &doc["paths"]["/equalize"]["post"]["requestBody"]["content"];
    assert!(
        body["multipart/form-data"].is_object() && body["application/octet-stream"].is_object()
    );
}

#[test]
fn live_server_serves_the_document_swagger_ui_and_probes() {
    let server = Server::start(&[]);
    let served = server.get("/openapi.json");
    assert_eq!(served.status, 200);
    let committed: serde_json::Value =
        serde_json::from_str(&onnx_cle::server::openapi_json()).unwrap();
    assert_eq!(served.json(), committed);
    let docs = server.get("/docs/");
    assert_eq!(docs.status, 200, "{}", docs.text());
    assert!(docs
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let css = server.get("/docs/swagger-ui.css");
    assert_eq!(css.status, 200, "Swagger UI assets are embedded (vendored)");
    assert!(css.body.len() > 1000);
    assert_eq!(server.get("/healthz").json()["status"], "ok");
    assert_eq!(server.get("/readyz").json()["status"], "ready");
    let metrics = server.get("/metrics");
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(metrics.text().contains("cle_queue_depth 0"));
    assert!(metrics.text().contains("cle_workers 2"));
}
