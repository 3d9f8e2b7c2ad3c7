//! The `Dockerfile`, `deploy/k8s/*.yaml` and `deploy/compose.yaml` agree with the code: ports,
//! probe paths, data directory, and every `ONNX_CLE_*` setting is a real `onnx-cle serve`
//! variable with a value the binary accepts. No container engine is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use onnx_cle::server::config::{self, ServeConfig};
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    cfg: ServeConfig,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn yaml(rel: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one document");
    docs.remove(0)
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// `ONNX_CLE_FOO_BAR=v` settings turned into `--foo-bar v` and parsed by the real flag
/// definitions: unknown names or invalid values fail here.
fn parse_env(env: &BTreeMap<String, String>, source: &str) -> ServeConfig {
    let mut args = vec!["serve".to_string()];
    for (k, v) in env {
        let flag = k
            .strip_prefix("ONNX_CLE_")
            .unwrap_or_else(|| panic!("{source}: unexpected variable {k}"))
            .to_ascii_lowercase()
            .replace('_', "-");
        args.push(format!("--{flag}"));
        args.push(v.clone());
    }
    match Serve::try_parse_from(&args) {
        Ok(s) => s.cfg,
        Err(e) => panic!("{source}: settings rejected by onnx-cle serve: {e}"),
    }
}

fn port_of(addr: &std::net::SocketAddr) -> u16 {
    addr.port()
}

#[test]
fn every_env_var_is_a_documented_serve_setting() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_onnx-cle"))
        .args(["serve", "--help"])
        .output()
        .expect("onnx-cle serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for var in [
        "ONNX_CLE_ADDR",
        "ONNX_CLE_DATA_DIR",
        "ONNX_CLE_WORKERS",
        "ONNX_CLE_QUEUE_SIZE",
        "ONNX_CLE_MAX_UPLOAD",
        "ONNX_CLE_RETENTION",
        "ONNX_CLE_SHUTDOWN_GRACE",
        "ONNX_CLE_DATABASE_CA",
    ] {
        assert!(
            help.contains(&format!("[env: {var}=")),
            "{var} missing from serve --help"
        );
    }
    for tls in ["sslmode=verify-full", "verify-ca", "sslrootcert=PATH"] {
        assert!(help.contains(tls), "serve --help does not document {tls}");
    }
    let defaults = Serve::try_parse_from(["serve"]).unwrap().cfg;
    assert_eq!(defaults.addr.to_string(), config::DEFAULT_ADDR);
    assert_eq!(port_of(&defaults.addr), config::DEFAULT_PORT);
    assert_eq!(defaults.data_dir, Path::new(config::DEFAULT_DATA_DIR));
}

#[test]
fn kubernetes_manifests_match_the_code() {
    let deployment = yaml("deploy/k8s/deployment.yaml");
    let service = yaml("deploy/k8s/service.yaml");
    let pvc = yaml("deploy/k8s/pvc.yaml");
    assert_eq!(s(&deployment["kind"], "kind"), "Deployment");
    assert_eq!(s(&service["kind"], "kind"), "Service");
    assert_eq!(s(&pvc["kind"], "kind"), "PersistentVolumeClaim");

    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env: BTreeMap<String, String> = c["env"]
        .as_vec()
        .expect("env list")
        .iter()
        .map(|e| {
            (
                s(&e["name"], "env name").to_string(),
                s(&e["value"], "env value").to_string(),
            )
        })
        .collect();
    let cfg = parse_env(&env, "deployment.yaml");
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    assert_eq!(args, ["serve"]);

    let port = &c["ports"][0];
    let container_port = port["containerPort"].as_i64().unwrap() as u16;
    assert_eq!(container_port, config::DEFAULT_PORT);
    assert_eq!(
        port_of(&cfg.addr),
        container_port,
        "ONNX_CLE_ADDR listens on the container port"
    );
    assert!(
        cfg.addr.ip().is_unspecified(),
        "listen on all interfaces in a pod"
    );
    let port_name = s(&port["name"], "port name");
    for (probe, path) in [
        ("livenessProbe", config::HEALTH_PATH),
        ("readinessProbe", config::READY_PATH),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(s(&get["path"], probe), path, "{probe} path");
        match &get["port"] {
            Yaml::String(n) => assert_eq!(n, port_name, "{probe} port"),
            Yaml::Integer(p) => assert_eq!(*p as u16, container_port, "{probe} port"),
            other => panic!("{probe} port: {other:?}"),
        }
    }
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                !c["resources"][kind][res].is_badvalue(),
                "resources.{kind}.{res}"
            );
        }
    }
    let mount = &c["volumeMounts"][0];
    assert_eq!(
        Path::new(s(&mount["mountPath"], "mountPath")),
        cfg.data_dir,
        "data dir is the volume"
    );
    let volume = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume declared");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"], pvc["metadata"]["name"],
        "the volume is the PVC"
    );
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
    assert!(
        grace > cfg.shutdown_grace.as_secs(),
        "k8s grace outlasts --shutdown-grace"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(pod["securityContext"]["runAsUser"].as_i64(), Some(0));

    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(&labels[s(k, "selector key")], v, "service selects the pods");
    }
    let target = &service["spec"]["ports"][0]["targetPort"];
    match target {
        Yaml::String(n) => assert_eq!(n, port_name),
        Yaml::Integer(p) => assert_eq!(*p as u16, container_port),
        other => panic!("targetPort: {other:?}"),
    }
}

#[test]
fn compose_file_matches_the_code() {
    let compose = yaml("deploy/compose.yaml");
    let svc = &compose["services"]["onnx-cle"];
    let env: BTreeMap<String, String> = svc["environment"]
        .as_hash()
        .expect("environment map")
        .iter()
        .map(|(k, v)| (s(k, "env name").to_string(), s(v, "env value").to_string()))
        .collect();
    let cfg = parse_env(&env, "compose.yaml");
    let ports: Vec<&str> = svc["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| s(p, "port"))
        .collect();
    let container_port: u16 = ports[0].rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(container_port, config::DEFAULT_PORT);
    assert_eq!(port_of(&cfg.addr), container_port);
    let volume = s(&svc["volumes"][0], "volume");
    assert_eq!(Path::new(volume.split(':').nth(1).unwrap()), cfg.data_dir);
    let test: Vec<&str> = svc["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| s(t, "test"))
        .collect();
    assert_eq!(test, ["CMD", "onnx-cle", "healthcheck"]);
    let command: Vec<&str> = svc["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| s(t, "cmd"))
        .collect();
    assert_eq!(command, ["serve"]);
    assert_eq!(s(&svc["build"]["dockerfile"], "dockerfile"), "Dockerfile");
    assert!(root()
        .join("deploy")
        .join(s(&svc["build"]["context"], "context"))
        .join("Dockerfile")
        .is_file());
}

#[test]
fn dockerfile_matches_the_code() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut lines: Vec<String> = Vec::new();
    let mut cont = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cont.push_str(head);
            cont.push(' ');
        } else {
            cont.push_str(t);
            lines.push(std::mem::take(&mut cont));
        }
    }
    let instr = |name: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).filter(|r| r.starts_with(' ')))
            .map(|r| r.trim().to_string())
            .collect()
    };
    assert!(instr("FROM").len() >= 2, "multi-stage build");
    assert!(
        instr("COPY").iter().any(|c| c.starts_with("--from=")),
        "runtime copies from the build stage"
    );
    let user = instr("USER");
    let user = user.last().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "non-root user");
    assert_eq!(instr("EXPOSE"), [config::DEFAULT_PORT.to_string()]);
    let mut env = BTreeMap::new();
    for e in instr("ENV") {
        for pair in e.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV k=v");
            env.insert(k.to_string(), v.to_string());
        }
    }
    let cfg = parse_env(&env, "Dockerfile");
    assert_eq!(port_of(&cfg.addr), config::DEFAULT_PORT);
    assert!(cfg.addr.ip().is_unspecified());
    let volume = instr("VOLUME");
    assert!(
        volume[0].contains(&format!("\"{}\"", cfg.data_dir.display())),
        "VOLUME is the data dir"
    );
    let health = instr("HEALTHCHECK");
    assert!(
        health[0].contains(r#"CMD ["onnx-cle", "healthcheck"]"#),
        "{health:?}"
    );
    assert_eq!(instr("ENTRYPOINT"), [r#"["onnx-cle"]"#]);
    assert_eq!(instr("CMD"), [r#"["serve"]"#]);
}

/// The `AWS_*` variables the scale-out manifests set: all read by object_store's
/// `AmazonS3Builder::from_env`.
const AWS_VARS: &[&str] = &[
    "AWS_ENDPOINT",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ALLOW_HTTP",
    "AWS_SESSION_TOKEN",
];

fn scale(rel: &str) -> Yaml {
    yaml(&format!("deploy/k8s/scale-out/{rel}"))
}

/// A container's environment, secret references resolved from `secret` (which must hold
/// every referenced key): (ONNX_CLE_* settings, AWS_* settings).
fn container_env(
    c: &Yaml,
    secret: &Yaml,
    what: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut onnx, mut aws) = (BTreeMap::new(), BTreeMap::new());
    for e in c["env"].as_vec().expect("env list") {
        let name = s(&e["name"], "env name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(
                r["name"], secret["metadata"]["name"],
                "{what}: {name} from the Secret"
            );
            let key = s(&r["key"], "secret key");
            s(&secret["stringData"][key], "secret value").to_string()
        };
        if name.starts_with("AWS_") {
            assert!(AWS_VARS.contains(&name.as_str()), "{what}: unknown {name}");
            aws.insert(name, value);
        } else {
            onnx.insert(name, value);
        }
    }
    (onnx, aws)
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    selector
        .as_hash()
        .expect("selector")
        .iter()
        .all(|(k, v)| &labels[s(k, "label")] == v)
}

#[test]
fn scale_out_manifests_match_the_code() {
    use config::Role;
    let secret = scale("secret.yaml");
    assert_eq!(s(&secret["kind"], "kind"), "Secret");
    let db_url = s(&secret["stringData"]["database-url"], "database-url");
    let (_, tls) = onnx_cle::server::store::pg_tls::parse(db_url, None).expect("database-url");
    assert_eq!(
        tls.mode(),
        onnx_cle::server::store::pg_tls::SslMode::VerifyFull,
        "the example database URL verifies the server"
    );
    let single = yaml("deploy/k8s/deployment.yaml");
    let image = &single["spec"]["template"]["spec"]["containers"][0]["image"];

    let mut cfgs = BTreeMap::new();
    for (file, role) in [
        ("api-deployment.yaml", Role::Api),
        ("worker-deployment.yaml", Role::Worker),
    ] {
        let d = scale(file);
        assert_eq!(s(&d["kind"], "kind"), "Deployment");
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(&c["image"], image, "{file}: one image for every role");
        let args: Vec<&str> = c["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| s(a, "arg"))
            .collect();
        assert_eq!(args, ["serve"]);
        let (env, aws) = container_env(c, &secret, file);
        let cfg = parse_env(&env, file);
        assert_eq!(cfg.role, role, "{file}");
        assert!(cfg.database_url.is_some(), "{file}: shared database");
        assert!(
            matches!(
                cfg.blob_store,
                Some(onnx_cle::server::store::BlobUrl::S3 { .. })
            ),
            "{file}: S3 blobs"
        );
        for var in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            assert!(aws.contains_key(var), "{file}: {var}");
        }
        assert!(
            c["volumeMounts"].is_badvalue(),
            "{file}: no volume: nothing is kept locally"
        );
        let port = c["ports"][0]["containerPort"].as_i64().unwrap() as u16;
        assert_eq!(port, cfg.addr.port());
        assert!(cfg.addr.ip().is_unspecified());
        for (probe, path) in [
            ("livenessProbe", config::HEALTH_PATH),
            ("readinessProbe", config::READY_PATH),
        ] {
            assert_eq!(
                s(&c[probe]["httpGet"]["path"], probe),
                path,
                "{file}: {probe}"
            );
        }
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
        assert!(
            grace > cfg.shutdown_grace.as_secs(),
            "{file}: k8s grace outlasts --shutdown-grace"
        );
        assert!(labels_match(
            &d["spec"]["selector"]["matchLabels"],
            &d["spec"]["template"]["metadata"]["labels"]
        ));
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        cfgs.insert(file, (cfg, d));
    }
    let (worker, worker_d) = &cfgs["worker-deployment.yaml"];
    let (_, api_d) = &cfgs["api-deployment.yaml"];
    assert!(
        worker.shutdown_grace >= std::time::Duration::from_secs(300),
        "workers drain longer than a typical job"
    );
    assert!(worker.job_lease < worker.shutdown_grace);
    assert_eq!(
        s(&api_d["spec"]["strategy"]["type"], "strategy"),
        "RollingUpdate"
    );

    // The Service reaches the API pods only.
    let svc = scale("api-service.yaml");
    let sel = &svc["spec"]["selector"];
    assert!(labels_match(
        sel,
        &api_d["spec"]["template"]["metadata"]["labels"]
    ));
    assert!(!labels_match(
        sel,
        &worker_d["spec"]["template"]["metadata"]["labels"]
    ));

    // KEDA scales the worker Deployment on the queue; one pod's share is its worker count.
    let so = scale("keda-scaledobject.yaml");
    assert_eq!(s(&so["kind"], "kind"), "ScaledObject");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        worker_d["metadata"]["name"]
    );
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(s(&trigger["type"], "trigger"), "postgresql");
    let target: u16 = s(&trigger["metadata"]["targetQueryValue"], "target")
        .parse()
        .unwrap();
    assert_eq!(
        target, worker.workers,
        "targetQueryValue = ONNX_CLE_WORKERS per pod"
    );
    let query = s(&trigger["metadata"]["query"], "query");
    let schema =
        std::fs::read_to_string(root().join("src/server/store/migrations/0001_jobs.sql")).unwrap();
    assert!(query.contains("cle_jobs") && schema.contains("CREATE TABLE cle_jobs"));
    for state in ["queued", "running"] {
        assert!(query.contains(&format!("'{state}'")), "{query}");
        assert!(onnx_cle::server::job::JobState::parse(state).is_some());
    }
    let auth = scale("keda-trigger-auth.yaml");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let target_ref = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(s(&target_ref["parameter"], "parameter"), "connection");
    assert_eq!(target_ref["name"], secret["metadata"]["name"]);
    assert!(secret["stringData"][s(&target_ref["key"], "key")]
        .as_str()
        .is_some());

    // PodDisruptionBudgets cover each Deployment's pods.
    for (file, d) in [("api-pdb.yaml", api_d), ("worker-pdb.yaml", worker_d)] {
        let pdb = scale(file);
        assert_eq!(s(&pdb["kind"], "kind"), "PodDisruptionBudget");
        assert!(
            labels_match(
                &pdb["spec"]["selector"]["matchLabels"],
                &d["spec"]["template"]["metadata"]["labels"]
            ),
            "{file}"
        );
    }

    // The migration Job runs `onnx-cle migrate` on the same database, before upgrades.
    let job = scale("migrate-job.yaml");
    assert_eq!(s(&job["kind"], "kind"), "Job");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(&c["image"], image);
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    assert_eq!(args, ["migrate"]);
    let (env, _) = container_env(c, &secret, "migrate-job.yaml");
    assert_eq!(env.keys().collect::<Vec<_>>(), ["ONNX_CLE_DATABASE_URL"]);
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_onnx-cle"))
        .args(["migrate", "--help"])
        .output()
        .expect("onnx-cle migrate --help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("[env: ONNX_CLE_DATABASE_URL"));
    assert!(s(&job["metadata"]["annotations"]["helm.sh/hook"], "hook").contains("pre-upgrade"));
}

#[test]
fn scale_out_compose_file_matches_the_code() {
    use config::Role;
    let compose = yaml("deploy/compose.scale.yaml");
    let svcs = &compose["services"];
    let env_of = |name: &str| -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut onnx = BTreeMap::new();
        let mut aws = BTreeMap::new();
        for (k, v) in svcs[name]["environment"]
            .as_hash()
            .expect("environment map")
        {
            let (k, v) = (s(k, "name").to_string(), s(v, "value").to_string());
            if k.starts_with("AWS_") {
                assert!(AWS_VARS.contains(&k.as_str()), "{name}: unknown {k}");
                aws.insert(k, v);
            } else {
                onnx.insert(k, v);
            }
        }
        (onnx, aws)
    };
    let pg = &svcs["postgres"]["environment"];
    let expected_db = format!(
        "postgres://{}:{}@postgres:5432/{}",
        s(&pg["POSTGRES_USER"], "user"),
        s(&pg["POSTGRES_PASSWORD"], "password"),
        s(&pg["POSTGRES_DB"], "db")
    );
    let s3_cmd: Vec<&str> = svcs["s3"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| s(a, "cmd"))
        .collect();
    let s3_flag = |f: &str| -> String {
        s3_cmd
            .iter()
            .find_map(|a| a.strip_prefix(&format!("-{f}=")))
            .unwrap_or_else(|| panic!("s3 command lacks -{f}"))
            .to_string()
    };
    for (name, role) in [("api", Role::Api), ("worker", Role::Worker)] {
        let (env, aws) = env_of(name);
        let cfg = parse_env(&env, name);
        assert_eq!(cfg.role, role);
        assert_eq!(
            cfg.database_url.as_ref().map(|u| u.expose().to_string()),
            Some(expected_db.clone()),
            "{name}: the compose database"
        );
        match &cfg.blob_store {
            Some(onnx_cle::server::store::BlobUrl::S3 { bucket, .. }) => {
                assert_eq!(
                    bucket,
                    &s3_flag("bucket"),
                    "{name}: the bucket SeaweedFS creates"
                )
            }
            other => panic!("{name}: blob store {other:?}"),
        }
        assert_eq!(
            aws["AWS_ENDPOINT"],
            format!("http://s3:{}", s3_flag("s3.port"))
        );
        assert_eq!(aws["AWS_ALLOW_HTTP"], "true");
        let command: Vec<&str> = svcs[name]["command"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| s(a, "cmd"))
            .collect();
        assert_eq!(command, ["serve"]);
        assert_eq!(
            svcs[name]["depends_on"]["migrate"]["condition"].as_str(),
            Some("service_completed_successfully")
        );
        let stop = s(&svcs[name]["stop_grace_period"], "stop_grace_period");
        let stop = config::parse_duration(stop).expect("stop_grace_period");
        assert!(
            stop > cfg.shutdown_grace,
            "{name}: compose waits for the drain"
        );
    }
    let ports: Vec<&str> = svcs["api"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| s(p, "port"))
        .collect();
    assert_eq!(ports, [format!("{0}:{0}", config::DEFAULT_PORT)]);
    let (migrate_env, _) = env_of("migrate");
    assert_eq!(migrate_env["ONNX_CLE_DATABASE_URL"], expected_db);
    let command: Vec<&str> = svcs["migrate"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| s(a, "cmd"))
        .collect();
    assert_eq!(command, ["migrate"]);
    let cfg_mount = s(&svcs["s3"]["volumes"][1], "s3 config volume");
    let (host, inside) = cfg_mount.split_once(':').unwrap();
    assert!(root().join("deploy").join(host).is_file(), "{host}");
    assert_eq!(
        format!("-s3.config={}", inside.trim_end_matches(":ro")),
        format!("-s3.config={}", s3_flag("s3.config"))
    );
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy").join(host)).unwrap())
            .unwrap();
    let (_, aws) = env_of("worker");
    assert_eq!(
        creds["identities"][0]["credentials"][0]["accessKey"],
        aws["AWS_ACCESS_KEY_ID"]
    );
    assert_eq!(
        creds["identities"][0]["credentials"][0]["secretKey"],
        aws["AWS_SECRET_ACCESS_KEY"]
    );
}
