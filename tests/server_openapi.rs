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
        "openapi/openapi.json differs from the code's document ({}); regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --test server_openapi` (or `onnx-cle openapi > \
         openapi/openapi.json`) and review the diff",
        drift(&committed, &generated)
    );
    let printed = Command::new(env!("CARGO_BIN_EXE_onnx-cle"))
        .arg("openapi")
        .output()
        .expect("run onnx-cle openapi");
    assert!(printed.status.success());
    assert_eq!(String::from_utf8_lossy(&printed.stdout), generated);
}

/// What kind of change separates two documents: only descriptions and the order of entries, or
/// the contract itself (then the first differing paths).
fn drift(committed: &str, generated: &str) -> String {
    fn shape(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "description")
                    .map(|(k, v)| (k.clone(), shape(v)))
                    .collect(),
            ),
            Value::Array(a) => {
                let mut items: Vec<Value> = a.iter().map(shape).collect();
                items.sort_by_key(|i| i.to_string());
                Value::Array(items)
            }
            other => other.clone(),
        }
    }
    fn paths(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let (va, vb) = (x.get(k), y.get(k));
                    match (va, vb) {
                        (Some(va), Some(vb)) => paths(va, vb, &format!("{at}/{k}"), out),
                        _ => out.push(format!("{at}/{k}")),
                    }
                }
            }
            _ if a != b => out.push(at.to_string()),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(committed),
        serde_json::from_str::<serde_json::Value>(generated),
    ) else {
        return "the committed file is not JSON".into();
    };
    let (sa, sb) = (shape(&a), shape(&b));
    if sa == sb {
        return "only descriptions or the order of entries changed".into();
    }
    let mut changed = Vec::new();
    paths(&sa, &sb, "", &mut changed);
    changed.truncate(10);
    format!("the contract changed at {}", changed.join(", "))
}

#[test]
fn drift_tells_descriptions_from_contract_changes() {
    let a = r#"{"p":[{"name":"a","description":"x"},{"name":"b"}]}"#;
    let b = r#"{"p":[{"name":"b"},{"name":"a","description":"y"}]}"#;
    assert!(drift(a, b).starts_with("only descriptions"));
    let c = r#"{"p":[{"name":"b"},{"name":"c"}]}"#;
    assert!(
        drift(a, c).starts_with("the contract changed"),
        "{}",
        drift(a, c)
    );
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
