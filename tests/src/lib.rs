//! Test harness for Warden's end-to-end tests: the real `warden` binary as a child
//! process, real upstream servers on `127.0.0.1:0`, real certificates.
//!
//! Everything started here is stopped on `Drop`, so a failing test leaves nothing behind.

pub mod certs;
pub mod config;
pub mod openbao;
pub mod otlp;
pub mod redis;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The test upstream as its own process (`src/bin/echo-server.rs`), built with the
/// workspace's binaries.
pub fn echo_server_bin() -> PathBuf {
    let p = target_dir().join("release/echo-server");
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The release `warden` binary (built by `scripts/test.sh` before the tests run).
pub fn warden_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARDEN_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("release/warden");
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release -p warden` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A built example plugin: `plugins/target/wasm32-unknown-unknown/release/{name}.wasm`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let p = repo_root()
        .join("plugins/target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} not found: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// Install the ring crypto provider for rustls users in the test process.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder that never uses a proxy from the environment, with the
/// process crypto provider installed (reqwest's rustls needs one).
pub fn client_builder() -> reqwest::ClientBuilder {
    init_crypto();
    reqwest::Client::builder().no_proxy()
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`, driven by a task of its own:
/// for what reqwest does not show, such as trailers, or sends differently, such as a
/// `:authority` that disagrees with `Host`.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// A reqwest client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A running `warden run` process.
pub struct Gateway {
    /// Proxy listener address.
    pub addr: SocketAddr,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Config file path.
    pub config_path: PathBuf,
    /// Bearer token sent by the admin helpers ([`Gateway::metrics`]), when the config sets
    /// `[admin] token`.
    pub admin_token: Option<String>,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    /// The threads copying the child's stderr and stdout into `logs`; they end when the
    /// process has exited and its output is all read.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Write `config_toml` to `dir/warden.toml` and start the gateway on it. The config
    /// must use `127.0.0.1:0` listeners; the real ports come from the gateway's
    /// `--ready-file`.
    pub async fn start(dir: &Path, config_toml: &str) -> Gateway {
        Self::try_start(dir, config_toml)
            .await
            .unwrap_or_else(|logs| panic!("gateway did not start:\n{logs}"))
    }

    /// Like [`Gateway::start`], returning the logs when the gateway exits or never
    /// becomes ready.
    pub async fn try_start(dir: &Path, config_toml: &str) -> Result<Gateway, String> {
        let config_path = dir.join("warden.toml");
        std::fs::write(&config_path, config_toml).expect("write config");
        Self::spawn(&config_path, &[]).await
    }

    /// Start on an existing config file, with extra environment variables.
    pub async fn spawn(config_path: &Path, env: &[(&str, &str)]) -> Result<Gateway, String> {
        Self::spawn_inner(config_path, env, None).await
    }

    /// Start on an existing config file in a mount namespace of its own where `hosts` is
    /// `/etc/hosts` (`unshare -rm`, no privileges needed): host names resolve as the test
    /// says, and the test may rewrite the file while the gateway runs.
    pub async fn spawn_with_hosts(config_path: &Path, hosts: &Path) -> Result<Gateway, String> {
        Self::spawn_inner(config_path, &[], Some(hosts)).await
    }

    async fn spawn_inner(
        config_path: &Path,
        env: &[(&str, &str)],
        hosts: Option<&Path>,
    ) -> Result<Gateway, String> {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ready_file =
            config_path.with_file_name(format!(".warden-ready-{}-{n}.json", std::process::id()));
        let _ = std::fs::remove_file(&ready_file);
        let mut cmd = match hosts {
            None => Command::new(warden_bin()),
            Some(h) => {
                // `exec` keeps one process: the pid the harness signals is the gateway's.
                let mut c = Command::new("unshare");
                c.args([
                    "-rm",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
                ])
                .arg(h)
                .arg(warden_bin());
                c
            }
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--ready-file")
            .arg(&ready_file);
        cmd.env(
            "RUST_LOG",
            std::env::var("WARDEN_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn warden");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("WARDEN_TEST_ECHO").is_some() {
                        eprintln!("[warden] {line}");
                    }
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            }));
        }
        let mut gw = Gateway {
            addr: "0.0.0.0:0".parse().unwrap(),
            admin_addr: "0.0.0.0:0".parse().unwrap(),
            config_path: config_path.to_path_buf(),
            admin_token: None,
            child: Some(child),
            logs,
            readers,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(bytes) = std::fs::read(&ready_file) {
                let bound: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("ready file is JSON");
                gw.addr = bound["proxy"].as_str().unwrap().parse().unwrap();
                gw.admin_addr = bound["admin"].as_str().unwrap().parse().unwrap();
                let _ = std::fs::remove_file(&ready_file);
                return Ok(gw);
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                gw.drain_output();
                return Err(format!("exited with {status}:\n{}", gw.logs()));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after 60 s:\n{}", gw.logs()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Use `token` for the admin helpers from now on.
    pub fn with_admin_token(mut self, token: &str) -> Gateway {
        self.admin_token = Some(token.to_string());
        self
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://admin_addr{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Everything the gateway has logged so far (stderr and stdout).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// After the process has exited: wait (at most 10 s) until the reader threads have
    /// copied all of its output into the logs, so [`Gateway::logs`] is complete.
    fn drain_output(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until the logs contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send a signal (e.g. "TERM", "HUP"), without spawning `kill`.
    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Wait for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.drain_output();
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The gateway's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// GET an admin path, with the admin token when there is one.
    async fn admin_get(&self, path: &str) -> reqwest::Response {
        let mut req = client().get(self.admin_url(path));
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("admin request")
    }

    /// Fetch `/metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// Fetch `/upstreams` (every endpoint's state) from the admin listener.
    pub async fn upstreams(&self) -> serde_json::Value {
        let body = self.admin_get("/upstreams").await.text().await.unwrap();
        serde_json::from_str(&body).expect("/upstreams is JSON")
    }

    /// Stop the gateway.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.drain_output();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `check` until it returns true, panicking with `what` if it still does not after
/// `timeout`. For a condition that holds some time after the action that causes it (a
/// reload applied, a file re-read, a counter moved): a fixed sleep before the assertion
/// fails on a loaded machine and wastes time on an idle one. Give a generous timeout; a
/// passing test never waits for it.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send raw bytes over a new TCP connection and return whatever comes back before the
/// server closes it or `wait` passes. Raw, because HTTP libraries normalize paths and
/// headers before sending, which would hide what the gateway is being tested on.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Send `sig` ("TERM", "HUP", "STOP", "CONT", "INT", "KILL") to process `pid`.
pub fn send_signal(pid: u32, sig: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let sig = match sig {
        "TERM" => Signal::TERM,
        "HUP" => Signal::HUP,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "INT" => Signal::INT,
        "KILL" => Signal::KILL,
        other => panic!("unknown signal {other}"),
    };
    let pid = Pid::from_raw(pid as i32).expect("a live process has a non-zero pid");
    kill_process(pid, sig).expect("send signal");
}

/// Run `warden` with arguments; returns (exit code, stdout, stderr).
pub fn run_warden(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(warden_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sum of a counter/gauge in Prometheus text whose name and labels contain all `parts`.
pub fn metric_value(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Output of a real `curl` run.
pub struct CurlOutput {
    /// Whether curl exited 0.
    pub ok: bool,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Run the real `curl -sS --max-time 10 ARGS…` without blocking the runtime (the test's
/// own upstreams run on it).
pub async fn curl(args: &[&str]) -> CurlOutput {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    CurlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
