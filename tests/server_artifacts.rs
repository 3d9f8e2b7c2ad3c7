//! The int8 outputs as job artifacts, through the real binary: a job asking for the QDQ model,
//! encodings and overrides lists them in `links.artifacts` and `result.artifacts`; each download
//! is byte-equal to `onnx-cle equalize` with the same options, with its media type, `ETag`
//! (sha256, 304 on `If-None-Match`) and `Content-Disposition`; the report equals the CLI's. An
//! artifact the job did not produce is `404 artifact_not_found`; calibrated ranges, which need
//! samples, are refused at submission (`422 invalid_options`); a `strict_int8` job whose QDQ
//! model could not be checked fails with `int8_not_trusted`.

mod server_support;

use std::process::Command;
use std::time::Duration;

use server_support::{models, sha256, tempdir, without_timings, Server, BIN};

#[test]
fn int8_outputs_are_downloadable_artifacts_equal_to_the_cli() {
    let Some(models) = models() else { return };
    let model = models.join("tiny.onnx");
    let dir = tempdir("artifacts");
    let status = Command::new(BIN)
        .arg("equalize")
        .arg(&model)
        .args(["-o"])
        .arg(dir.join("eq.onnx"))
        .arg("--report")
        .arg(dir.join("r.json"))
        .args([
            "--quiet",
            "--no-verify",
            "--input-range=-1,1",
            "--rounding",
            "squant",
        ])
        .arg("--deploy-output")
        .arg(dir.join("deploy.onnx"))
        .arg("--qdq-output")
        .arg(dir.join("qdq.onnx"))
        .arg("--encodings")
        .arg(dir.join("encodings.json"))
        .args(["--encodings-version", "0.6.1"])
        .arg("--ort-overrides")
        .arg(dir.join("ort_overrides.json"))
        .status()
        .expect("run onnx-cle equalize");
    assert!(status.success());

    let server = Server::start(&[]);
    let r = server.submit_raw(
        &model,
        "verify=false&input_range=-1,1&rounding=squant&deploy=true&qdq=true&encodings=0.6.1&ort_overrides=true",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = server.wait_done(&id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
    let coverage = &job["result"]["qdq_coverage"];
    let placed = coverage["placed"]
        .as_u64()
        .expect("the job result gives the QDQ coverage");
    assert!(
        placed > 0 && placed <= coverage["quantizable"].as_u64().unwrap(),
        "{coverage}"
    );
    let links = job["links"]["artifacts"]
        .as_object()
        .expect("artifact links");
    let names = [
        "deploy.onnx",
        "qdq.onnx",
        "encodings.json",
        "ort_overrides.json",
    ];
    assert_eq!(links.len(), names.len(), "{links:?}");
    for name in names {
        let url = links[name].as_str().unwrap();
        assert_eq!(url, format!("/jobs/{id}/artifacts/{name}"));
        let got = server.get(url);
        assert_eq!(got.status, 200, "{name}: {}", got.text());
        let want = std::fs::read(dir.join(name)).unwrap();
        assert!(got.body == want, "{name} differs from the CLI's output");
        let media = if name.ends_with(".json") {
            "application/json"
        } else {
            "application/octet-stream"
        };
        assert_eq!(got.header("content-type"), Some(media));
        let etag = format!("\"{}\"", sha256(&want));
        assert_eq!(got.header("etag"), Some(etag.as_str()));
        assert_eq!(
            got.header("content-disposition"),
            Some(format!("attachment; filename=\"model.{name}\"").as_str())
        );
        let info = job["result"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap();
        assert_eq!(info["sha256"], sha256(&want));
        assert_eq!(info["bytes"], want.len());
        let again = server.request("GET", url, &[("If-None-Match", &etag)], b"");
        assert_eq!(again.status, 304);
    }
    // Verification off: the squant deploy model was not checked, and the job says so.
    assert_eq!(job["result"]["int8_trusted"], false, "{job}");
    assert!(
        job["result"]["int8_problems"][0]
            .as_str()
            .unwrap()
            .contains("deploy.onnx was not checked"),
        "{job}"
    );
    let report = server.get(&format!("/jobs/{id}/report")).json();
    let cli: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(without_timings(report.clone()), without_timings(cli));
    assert_eq!(report["exports"]["files"].as_array().unwrap().len(), 3);

    server
        .get(&format!("/jobs/{id}/artifacts/nope.onnx"))
        .problem(404, "artifact_not_found");
    let plain = server.submit_raw(&model, "verify=false");
    let plain_id = plain.json()["id"].as_str().unwrap().to_string();
    let plain_job = server.wait_done(&plain_id, Duration::from_secs(60));
    assert!(plain_job["links"].get("artifacts").is_none(), "{plain_job}");
    server
        .get(&format!("/jobs/{plain_id}/artifacts/qdq.onnx"))
        .problem(404, "artifact_not_found");

    // strict_int8: a QDQ model nothing checked (verification off) fails the job.
    let strict = server.submit_raw(
        &model,
        "verify=false&input_range=-1,1&rounding=squant&qdq=true&strict_int8=true",
    );
    assert_eq!(strict.status, 202, "{}", strict.text());
    let strict_id = strict.json()["id"].as_str().unwrap().to_string();
    let strict_job = server.wait_done(&strict_id, Duration::from_secs(60));
    assert_eq!(strict_job["state"], "failed", "{strict_job}");
    assert_eq!(
        strict_job["error"]["code"], "int8_not_trusted",
        "{strict_job}"
    );
    assert!(
        strict_job["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("deploy.onnx was not checked"),
        "{strict_job}"
    );

    server
        .submit_multipart(
            &model,
            Some(r#"{"exports": {"qdq": true, "calibration": "minmax"}}"#),
            &[],
        )
        .problem(422, "invalid_options");
    let _ = std::fs::remove_dir_all(dir);
}
