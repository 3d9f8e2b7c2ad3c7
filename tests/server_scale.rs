//! The real `onnx-cle serve` on PostgreSQL + S3 (a throwaway cluster and SeaweedFS on loopback,
//! `scripts/backends.sh`), split by role: an API replica that runs nothing and a worker replica.
//! A job submitted to the API runs on the worker; cancelling it on the API stops it on the
//! worker; `--presign` answers 303 to a URL the S3 server honours; the queue gauges come from
//! the database; `--role api` without a database is refused. (The three-replica failure drill
//! is `scripts/cluster_check.sh`.)

mod scale_support;
mod server_support;

use std::time::{Duration, Instant};

use server_support::{models, sha256, tempdir, Server, BIN};

#[test]
fn roles_split_across_replicas_on_postgres_and_s3() {
    let Some(models) = models() else { return };
    let be = scale_support::Backends::start_slot("roles", 1);
    let url = be.database_url.clone();
    let blobs = be.env["ONNX_CLE_BLOB_STORE"].clone();
    let common = [
        "--database-url",
        url.as_str(),
        "--blob-store",
        blobs.as_str(),
        "--job-lease",
        "2s",
    ];
    let api_args: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--role", "api", "--presign", "5m"])
        .collect();
    let api = Server::start(&api_args);
    assert!(api.log().contains("jobs in PostgreSQL"), "{}", api.log());

    // Nothing runs without a worker.
    let tiny = models.join("tiny.onnx");
    let r = api.submit_raw(&tiny, "relu6=exact&verify=false");
    assert_eq!(r.status, 202, "{}", r.text());
    let first = r.json()["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(api.get(&format!("/jobs/{first}")).json()["state"], "queued");
    let metrics = api.get("/metrics").text();
    assert!(metrics.contains("cle_queue_depth 1"), "{metrics}");
    assert!(metrics.contains("cle_workers 0"), "{metrics}");
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cle_queue_oldest_age_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("oldest queued job age");
    assert!(age >= 1.0, "{metrics}");

    let worker_args: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--role", "worker", "--workers", "1"])
        .collect();
    let worker = Server::start(&worker_args);
    let job = api.wait_done(&first, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");

    // The model: 303 to a presigned URL that the S3 server serves without credentials.
    let r = api.get(&format!("/jobs/{first}/model"));
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").expect("Location").to_string();
    assert!(location.contains("X-Amz-Signature"), "{location}");
    let fetched = std::process::Command::new("curl")
        .args(["-sS", "--fail", &location])
        .output()
        .expect("curl");
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert_eq!(sha256(&fetched.stdout), job["result"]["model_sha256"]);
    let cli = tempdir("roles-cli").join("cli.onnx");
    let ok = std::process::Command::new(BIN)
        .args(["equalize"])
        .arg(&tiny)
        .arg("-o")
        .arg(&cli)
        .args(["--relu6", "exact", "--no-verify", "--quiet"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(
        fetched.stdout,
        std::fs::read(&cli).unwrap(),
        "the CLI's model"
    );
    // The worker streams (it was started without --presign); the report is served on any role.
    let r = worker.get(&format!("/jobs/{first}/model"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fetched.stdout);
    assert_eq!(api.get(&format!("/jobs/{first}/report")).status, 200);

    // Cancelling on the API stops the run on the worker.
    let r = api.submit_raw(&models.join("mobilenet_v2.onnx"), "relu6=exact");
    assert_eq!(r.status, 202, "{}", r.text());
    let long = r.json()["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    while api.get(&format!("/jobs/{long}")).json()["state"] != "running" {
        assert!(t.elapsed() < Duration::from_secs(60), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = api.request("POST", &format!("/jobs/{long}/cancel"), &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let job = api.wait_done(&long, Duration::from_secs(120));
    assert_eq!(job["state"], "canceled", "{job}");
    assert_eq!(job["error"]["code"], "canceled");
    assert!(worker.log().contains(&long), "the worker ran it");

    // Deleting works from any replica; the blobs go with the record.
    let r = worker.request("DELETE", &format!("/jobs/{first}"), &[], b"");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(api.get(&format!("/jobs/{first}")).status, 404);
    drop(worker);
    drop(api);
}

#[test]
fn split_roles_need_a_shared_database() {
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--role",
            "worker",
            "--data-dir",
        ])
        .arg(tempdir("role-alone"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--database-url"), "{err}");
}
