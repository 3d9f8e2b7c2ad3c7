//! Shared helpers of the `server_*` tests: start the real `onnx-cle serve` binary on a loopback
//! port chosen by the OS, and talk to it with a tiny HTTP/1.1 client over `TcpStream`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_onnx-cle");

/// `<repo>/../shared/models`, or `None` after printing the loud skip line.
pub fn models() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    if dir.join("tiny.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: ../shared/models not found");
        println!("SKIPPED: ../shared/models not found");
        None
    }
}

/// A fresh temporary directory.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "onnx-cle-test-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A running `onnx-cle serve`.
pub struct Server {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    keep_data: bool,
}

impl Server {
    /// Starts a server on a fresh data dir with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_in(tempdir("data"), extra, false)
    }

    /// Starts a server on `data_dir` (kept on drop when `keep_data`).
    pub fn start_in(data_dir: PathBuf, extra: &[&str], keep_data: bool) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .env("ONNX_CLE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn onnx-cle serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            addr,
            data_dir,
            child: Some(child),
            log,
            keep_data,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM")
            .success();
        assert!(ok, "kill -TERM failed");
        wait_exit(&mut child, Duration::from_secs(60), &self.log())
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    /// Sends a request and reads the whole answer.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        http(self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    /// `POST /equalize` as multipart with a `model` part and an optional `options` part.
    pub fn submit_multipart(
        &self,
        model: &Path,
        options: Option<&str>,
        extra_headers: &[(&str, &str)],
    ) -> Resp {
        let data = std::fs::read(model).expect("read model");
        let name = model.file_name().unwrap().to_string_lossy().to_string();
        let mut parts: Vec<Part> = vec![Part::file("model", &name, data)];
        if let Some(o) = options {
            parts.push(Part::json("options", o));
        }
        let (ct, body) = multipart(&parts);
        let mut headers = vec![("Content-Type", ct.as_str())];
        headers.extend_from_slice(extra_headers);
        self.request("POST", "/equalize", &headers, &body)
    }

    /// `POST /equalize?query` with the raw model.
    pub fn submit_raw(&self, model: &Path, query: &str) -> Resp {
        let data = std::fs::read(model).expect("read model");
        self.submit_bytes(&data, query)
    }

    pub fn submit_bytes(&self, data: &[u8], query: &str) -> Resp {
        let path = if query.is_empty() {
            "/equalize".to_string()
        } else {
            format!("/equalize?{query}")
        };
        self.request(
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream")],
            data,
        )
    }

    /// Long-polls a job until it is done (at most `limit`).
    pub fn wait_done(&self, id: &str, limit: Duration) -> Value {
        let t = Instant::now();
        loop {
            let r = self.get(&format!("/jobs/{id}?wait=20s"));
            assert_eq!(r.status, 200, "GET job: {}", r.text());
            let job = r.json();
            if job["done"] == Value::Bool(true) {
                return job;
            }
            assert!(
                t.elapsed() < limit,
                "job {id} not done after {limit:?}: {job}\n{}",
                self.log()
            );
        }
    }

    /// The `/metrics` text once it holds `line`. A run's counters are recorded just after its
    /// job record is written, so a scrape right after a job reads done may not count it yet.
    pub fn wait_metric(&self, line: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            let text = self.get("/metrics").text();
            if text.contains(line) {
                return text;
            }
            assert!(
                t.elapsed() < limit,
                "no `{line}` after {limit:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration, log: &str) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("server did not exit within {limit:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts an RFC 9457 problem with `status` and `code`; returns it.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "content type; body: {}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        assert_eq!(p["code"], code, "{p}");
        assert!(p["title"].is_string() && p["type"].is_string(), "{p}");
        p
    }
}

/// One HTTP/1.1 exchange with `Connection: close`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length && (!body.is_empty() || method == "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) before reading the body; a failed body write is fine then.
    let _ = s.write_all(body);
    read_response(&mut s)
}

/// Sends a request whose body is sent in chunked transfer encoding, `chunk` bytes per chunk.
pub fn http_chunked(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
    chunk: usize,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    for c in body.chunks(chunk) {
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .is_err()
            || s.write_all(c).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "read response: {e}");
    }
    parse_response(&raw)
}

/// Parses a whole HTTP/1.1 response (head and body, chunked or not).
pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
    out
}

/// One multipart part.
pub struct Part {
    name: String,
    filename: Option<String>,
    content_type: String,
    data: Vec<u8>,
}

impl Part {
    pub fn file(name: &str, filename: &str, data: Vec<u8>) -> Part {
        Part {
            name: name.into(),
            filename: Some(filename.into()),
            content_type: "application/octet-stream".into(),
            data,
        }
    }

    pub fn json(name: &str, json: &str) -> Part {
        Part {
            name: name.into(),
            filename: None,
            content_type: "application/json".into(),
            data: json.as_bytes().to_vec(),
        }
    }
}

/// Encodes parts as `multipart/form-data`; returns the content type and the body.
pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = format!("----onnxcle{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let filename = p
            .filename
            .as_ref()
            .map(|f| format!("; filename=\"{f}\""))
            .unwrap_or_default();
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"{filename}\r\nContent-Type: {}\r\n\r\n",
                p.name, p.content_type
            )
            .as_bytes(),
        );
        body.extend_from_slice(&p.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The report without its timing fields.
pub fn without_timings(mut report: Value) -> Value {
    if let Some(o) = report.as_object_mut() {
        o.remove("timings_ms");
    }
    report
}

/// sha256 hex of bytes.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
