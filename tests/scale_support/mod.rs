//! A throwaway PostgreSQL cluster and S3 server for one test, started by `scripts/backends.sh`
//! (which installs them on first use) and stopped when dropped.
//!
//! Ports are free ones picked by the script, or, when `ONNX_CLE_TEST_PG_PORT_BASE` and
//! `ONNX_CLE_TEST_S3_PORT_BASE` are set, `base + slot` (PostgreSQL) and `base + 12 × slot`
//! (SeaweedFS's 12 ports) for the test's `slot`, so parallel tests never collide.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL + S3 pair.
pub struct Backends {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub database_url: String,
    pub bucket: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/backends.sh")
}

impl Backends {
    /// Starts both for the test named `tag` using port slot `slot`, and exports the `AWS_*`
    /// variables into this process (object_store reads them).
    pub fn start_slot(tag: &str, slot: u16) -> Backends {
        Backends::start_with(tag, slot, &[])
    }

    /// [`Backends::start_slot`] with extra environment for `scripts/backends.sh` (`PG_TLS`,
    /// `BACKENDS=pg`, `PG_OPTS`).
    pub fn start_with(tag: &str, slot: u16, script_env: &[(&str, &str)]) -> Backends {
        let dir = std::env::temp_dir().join(format!(
            "onnx-cle-backends-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("start").arg(&dir);
        cmd.envs(script_env.iter().copied());
        if let Ok(b) = std::env::var("ONNX_CLE_TEST_PG_PORT_BASE") {
            let b: u16 = b.parse().expect("ONNX_CLE_TEST_PG_PORT_BASE");
            cmd.env("PG_PORT", (b + slot).to_string());
        }
        if let Ok(b) = std::env::var("ONNX_CLE_TEST_S3_PORT_BASE") {
            let b: u16 = b.parse().expect("ONNX_CLE_TEST_S3_PORT_BASE");
            cmd.env("S3_PORT_BASE", (b + 12 * slot).to_string());
        }
        let status = cmd.status().expect("run scripts/backends.sh");
        assert!(status.success(), "scripts/backends.sh start failed");
        let text = std::fs::read_to_string(dir.join("env")).expect("backends env file");
        let mut env = BTreeMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                let v = v
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .unwrap_or(v);
                env.insert(k.to_string(), v.to_string());
            }
        }
        for (k, v) in &env {
            if k.starts_with("AWS_") {
                std::env::set_var(k, v);
            }
        }
        let bucket = env["ONNX_CLE_BLOB_STORE"]
            .strip_prefix("s3://")
            .and_then(|s| s.split('/').next())
            .expect("bucket")
            .to_string();
        Backends {
            database_url: env["DATABASE_URL"].clone(),
            dir,
            env,
            bucket,
        }
    }

    /// [`Backends::start_slot`] in slot 0.
    pub fn start(tag: &str) -> Backends {
        Backends::start_slot(tag, 0)
    }

    /// Runs `scripts/backends.sh <cmd>` on this pair (`pg-stop`, `pg-start`, `s3-stop`, …).
    pub fn control(&self, cmd: &str) {
        let status = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .arg(&self.dir)
            .status()
            .expect("run scripts/backends.sh");
        assert!(status.success(), "scripts/backends.sh {cmd} failed");
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
