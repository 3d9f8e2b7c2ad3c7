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
    ] {
        assert!(
            help.contains(&format!("[env: {var}=")),
            "{var} missing from serve --help"
        );
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
