//! Upstreams that fail gracefully: several endpoints, a killed and restarted endpoint
//! under load, active health checks, and retries within their budget.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::config::{ConfigBuilder, Route, Upstream};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, echo_server_bin, metric_value};

/// The echo upstream in its own process, killable with SIGKILL.
struct EchoProcess {
    child: Child,
    addr: String,
}

impl EchoProcess {
    fn start(addr: &str, name: &str) -> EchoProcess {
        let mut child = Command::new(echo_server_bin())
            .args([addr, name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn echo-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("echo-server announces its address")
            .to_string();
        EchoProcess { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET `url` in a loop from `clients` tasks until `stop`; returns (ok, failed, served by
/// each server name in order of the responses).
fn load(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    by_name: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, stop, ok, failures, by_name) = (
                url.clone(),
                stop.clone(),
                ok.clone(),
                failures.clone(),
                by_name.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap_or_default();
                            let name = v["server"].as_str().unwrap_or("?").to_string();
                            by_name.lock().unwrap().push((Instant::now(), name));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let f = failures.lock().unwrap().clone();
        (ok.load(Ordering::Relaxed), f)
    })
}

fn served_by_since(
    log: &std::sync::Mutex<Vec<(Instant, String)>>,
    since: Instant,
    name: &str,
) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(t, n)| *t >= since && n == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_costs_no_failed_request_and_gets_traffic_back_after_restart() {
    let mut a = EchoProcess::start("127.0.0.1:0", "A");
    let b = EchoProcess::start("127.0.0.1:0", "B");
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .upstream(
            "api",
            Upstream::endpoints(&[&format!("http://{}", a.addr), &format!("http://{}", b.addr)])
                .set("outlier", outlier("500ms", "2s")),
        )
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let run = load(gw.url("/work"), 4, stop.clone(), log.clone());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t_kill = Instant::now();
    a.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Traffic has shifted to the survivor.
    let late = t_kill + Duration::from_millis(1000);
    assert_eq!(
        served_by_since(&log, late, "A"),
        0,
        "A served after it was killed"
    );
    assert!(served_by_since(&log, late, "B") > 50);

    // Restarted on the same address: it gets traffic again once its ejection ends.
    let a2 = EchoProcess::start(&a.addr, "A");
    let t_back = Instant::now();
    let deadline = t_back + Duration::from_secs(10);
    while served_by_since(&log, t_back, "A") < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = run.await.unwrap();
    assert!(
        served_by_since(&log, t_back, "A") >= 20,
        "the restarted endpoint never got traffic back"
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 2000, "only {ok} requests");
    let m = gw.metrics().await;
    let ep_a = format!("endpoint=\"{}\"", a2.addr);
    assert!(
        metric_value(&m, "warden_upstream_ejections_total", &[&ep_a]) >= 1.0,
        "{m}"
    );
    assert!(metric_value(&m, "warden_upstream_retries_total", &["upstream=\"api\""]) >= 1.0);
    eprintln!(
        "BENCH failover: {ok} requests, {} failed, across a SIGKILL and restart of one of two endpoints",
        failures.len()
    );
    // `/upstreams` shows both endpoints.
    let ups = gw.upstreams().await;
    let eps = ups["upstreams"][0]["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{ups}");
}

fn outlier(base: &str, max: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("consecutive_failures".into(), 2.into());
    t.insert("base_ejection".into(), base.into());
    t.insert("max_ejection".into(), max.into());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_health_check_stops_getting_traffic() {
    let a = Echo::start_named("A").await;
    let b = Echo::start_named("B").await;
    let dir = tempfile::tempdir().unwrap();
    let mut health = toml::Table::new();
    health.insert("path".into(), "/healthz".into());
    health.insert("interval".into(), "200ms".into());
    health.insert("timeout".into(), "150ms".into());
    health.insert("unhealthy_after".into(), 2.into());
    health.insert("healthy_after".into(), 2.into());
    let cfg = ConfigBuilder::new()
        .upstream(
            "api",
            Upstream::endpoints(&[&a.url(), &b.url()]).set("health", health),
        )
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert!(
        a.requests() >= 5 && b.requests() >= 5,
        "both share: {} / {}",
        a.requests(),
        b.requests()
    );

    a.set_health(503);
    // unhealthy_after × interval = 400 ms; allow a probe cycle more.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = a.requests();
    for _ in 0..40 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.requests(), before, "an unhealthy endpoint got traffic");
    let m = gw.metrics().await;
    let ep_a = format!("endpoint=\"{}\"", a.addr);
    assert_eq!(
        metric_value(&m, "warden_upstream_endpoint_healthy", &[&ep_a]),
        0.0,
        "{m}"
    );

    // Healthy again after healthy_after passes; and with both unhealthy, both are used
    // rather than none.
    a.set_health(200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = a.requests();
    for _ in 0..20 {
        c.get(gw.url("/x")).send().await.unwrap();
    }
    assert!(
        a.requests() > before,
        "the recovered endpoint got no traffic"
    );
    a.set_health(503);
    b.set_health(503);
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
}

/// `retry` (two more attempts after a refused connection or a 503, within `budget`) and an
/// `outlier` table that never ejects, so every endpoint stays in the rotation.
fn retry_twice(budget: &str) -> (toml::Table, toml::Table) {
    let mut retry = toml::Table::new();
    retry.insert("attempts".into(), 2.into());
    retry.insert(
        "on".into(),
        toml::Value::Array(vec!["connect-failure".into(), "503".into()]),
    );
    retry.insert("budget".into(), budget.into());
    retry.insert("backoff".into(), "1ms".into());
    let mut no_eject = toml::Table::new();
    no_eject.insert("consecutive_failures".into(), 0.into());
    (retry, no_eject)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_503_stay_within_the_budget_and_never_replay_writes() {
    let sick = Echo::start_named("sick").await;
    sick.force_status(503);
    let dir = tempfile::tempdir().unwrap();
    let (retry, no_eject) = retry_twice("20%");
    let cfg = ConfigBuilder::new()
        .upstream(
            "api",
            Upstream::url(&sick.url())
                .set("retry", retry)
                .set("outlier", no_eject),
        )
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    let n = 200;
    for _ in 0..n {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 503);
    }
    let attempts = sick.requests();
    // Without a budget: 3 attempts each (600). With 20 %: 200 + 40 + the burst of 10.
    assert!(attempts > n, "no retry at all: {attempts}");
    assert!(
        attempts <= n + n / 5 + 10,
        "{attempts} attempts for {n} requests"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "warden_upstream_retries_total", &["upstream=\"api\""]) as usize,
        attempts - n
    );

    // A POST is not idempotent: a 503 is passed on, never replayed.
    let before = sick.requests();
    let r = c.post(gw.url("/x")).body("once").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(sick.requests(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_goes_to_the_other_endpoint_with_its_body() {
    let live = Echo::start_named("live").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .upstream(
            "api",
            Upstream::endpoints(&[&format!("http://{dead}"), &live.url()]),
        )
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    // Round robin sends every other first attempt to the dead endpoint: each is retried
    // on the live one, POST bodies included (nothing reached the dead one).
    for i in 0..10 {
        let r = c
            .post(gw.url("/w"))
            .body(format!("body-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["server"], "live");
        assert_eq!(v["body"], format!("body-{i}"), "{v}");
    }
    assert_eq!(live.requests(), 10);
}

/// A retried request goes out with the headers of its first attempt: the client's (repeated
/// ones in order), the injected secret, one request id, one Host, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_carries_the_headers_of_its_first_attempt() {
    let sick = Echo::start_named("sick").await;
    sick.force_status(503);
    let live = Echo::start_named("live").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("run-secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("key"), "k-123").unwrap();
    let mut files = toml::Table::new();
    files.insert("type".into(), "dir".into());
    files.insert("path".into(), secrets.display().to_string().into());
    let (retry, no_eject) = retry_twice("100%");
    let cfg = ConfigBuilder::new()
        .secrets("files", files)
        .upstream(
            "status",
            Upstream::endpoints(&[&sick.url(), &live.url()])
                .set("retry", retry.clone())
                .set("outlier", no_eject.clone()),
        )
        .upstream(
            "connect",
            Upstream::endpoints(&[&format!("http://{dead}"), &live.url()])
                .set("retry", retry)
                .set("outlier", no_eject),
        )
        .route(Route::prefix("status", "/status", "status").inject("x-key", "${files:key}"))
        .route(Route::prefix("connect", "/connect", "connect").inject("x-key", "${files:key}"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    let mut ids = std::collections::HashSet::new();
    for path in ["/status/a", "/connect/b"] {
        // Round robin: every other request is retried, after a 503 or a refused connection.
        for _ in 0..6 {
            let r = c
                .get(gw.url(path))
                .header("x-client", "a")
                .header("x-multi", "1")
                .header("x-multi", "2")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["server"], "live");
            let h = &v["headers"];
            assert_eq!(h["x-key"], serde_json::json!(["k-123"]), "{path}: {h}");
            assert_eq!(h["x-client"], serde_json::json!(["a"]), "{path}: {h}");
            assert_eq!(h["x-multi"], serde_json::json!(["1", "2"]), "{path}: {h}");
            assert_eq!(h["host"].as_array().map(Vec::len), Some(1), "{path}: {h}");
            let id = h["x-request-id"].as_array().expect("a request id");
            assert_eq!(id.len(), 1, "{path}: {h}");
            ids.insert(id[0].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 12, "request ids repeated: {ids:?}");
    // The first attempts the sick endpoint answered carried the same fields.
    let first = sick.seen();
    assert!(
        first.len() >= 3,
        "{} requests retried after a 503",
        first.len()
    );
    for s in &first {
        let multi: Vec<_> = s.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert_eq!(s.headers.get_all("x-key").iter().count(), 1);
        assert_eq!(s.headers["x-key"], "k-123");
    }
    assert_eq!(live.requests(), 12);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "warden_upstream_retries_total",
            &["upstream=\"status\""]
        ) as usize,
        first.len()
    );
    let connect_retries = |m: &str| {
        metric_value(
            m,
            "warden_upstream_retries_total",
            &["upstream=\"connect\""],
        )
    };
    let before = connect_retries(&m);
    assert!(before >= 3.0, "{before} retries after a refused connection");

    // A request with a body goes through hyper's client, which keeps its request: the
    // retry after a refused connection goes out with a copy of the same fields.
    for i in 0..4 {
        let r = c
            .post(gw.url("/connect/post"))
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(format!("body-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["body"], format!("body-{i}"));
        let h = &v["headers"];
        assert_eq!(h["x-key"], serde_json::json!(["k-123"]), "{h}");
        assert_eq!(h["x-multi"], serde_json::json!(["1", "2"]), "{h}");
        assert_eq!(h["host"].as_array().map(Vec::len), Some(1), "{h}");
        assert_eq!(h["x-request-id"].as_array().map(Vec::len), Some(1), "{h}");
    }
    let after = connect_retries(&gw.metrics().await);
    assert!(after > before, "no POST was retried");
}

/// A route for every path of one host.
fn host_route(name: &str, host: &str) -> Route {
    let mut m = toml::Table::new();
    m.insert("host".into(), host.into());
    m.insert("path_prefix".into(), "/".into());
    Route::prefix(name, "/", "api").set("match", m)
}

/// Read a streamed response until it ends or breaks: (body so far, whether it broke).
async fn read_stream(mut r: reqwest::Response) -> (String, bool) {
    let mut body = String::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => body.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => return (body, false),
            Err(_) => return (body, true),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_cut_at_idle_timeout_and_a_long_one_at_max_duration() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .upstream("api", Upstream::url(&up.url()))
        .route(host_route("idle", "idle.test").set("idle_timeout", "500ms"))
        .route(host_route("capped", "capped.test").set("max_duration", "1s"))
        .route(Route::prefix("free", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();

    // Events 3 s apart: the first arrives, then the stream stalls past idle_timeout.
    let t = Instant::now();
    let r = c
        .get(gw.url("/sse?n=3&gap_ms=3000"))
        .header("host", "idle.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (body, broke) = read_stream(r).await;
    let took = t.elapsed();
    assert!(
        body.contains("token-0") && !body.contains("token-1"),
        "{body}"
    );
    assert!(broke, "the stream ended cleanly instead of being cut");
    assert!(
        took < Duration::from_millis(2900),
        "cut after {took:?}, not at idle_timeout"
    );

    // A steady stream (an event every 100 ms) never idles, but max_duration ends it.
    let t = Instant::now();
    let r = c
        .get(gw.url("/sse?n=100&gap_ms=100"))
        .header("host", "capped.test")
        .send()
        .await
        .unwrap();
    let (body, broke) = read_stream(r).await;
    let took = t.elapsed();
    assert!(
        broke && body.contains("token-3") && !body.contains("token-40"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Without limits the same steady stream runs to its end.
    let r = c.get(gw.url("/sse?n=5&gap_ms=100")).send().await.unwrap();
    let (body, broke) = read_stream(r).await;
    assert!(!broke && body.contains("token-4"), "{body}");

    // The access log says why.
    assert!(
        gw.wait_for_log("flag=\"idle_timeout\"", Duration::from_secs(5))
            .await
            || gw.logs().contains("flag=idle_timeout"),
        "{}",
        gw.logs()
    );
    assert!(gw.logs().contains("max_duration"), "{}", gw.logs());
}

/// What the scripted upstream sends for one request: `reply`, then `late` 20 ms later,
/// then it closes the connection if `close`.
struct Reply {
    reply: &'static [u8],
    late: &'static [u8],
    close: bool,
}

/// A bare HTTP/1.1 upstream that answers each bodiless request as `script` says for the
/// last segment of its path: it sends what no well-behaved server would. It counts
/// connections and keeps each request head.
struct Scripted {
    addr: std::net::SocketAddr,
    /// Connections ever accepted.
    accepted: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: fn(&str) -> Reply) -> Scripted {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (acc, op, seen) = (accepted.clone(), open.clone(), heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                op.fetch_add(1, Ordering::SeqCst);
                let (op, seen) = (op.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'conn: loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let path = head.split(' ').nth(1).unwrap_or("").to_string();
                            seen.lock().unwrap().push(head);
                            let name = path.rsplit('/').next().unwrap_or("");
                            let r = script(name);
                            if s.write_all(r.reply).await.is_err() {
                                break 'conn;
                            }
                            if !r.late.is_empty() {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                if s.write_all(r.late).await.is_err() {
                                    break 'conn;
                                }
                            }
                            if r.close {
                                break 'conn;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    drop(s);
                    op.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Scripted {
            addr,
            accepted,
            open,
            heads,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// "ok" on a connection kept open.
fn ok(_: &str) -> Reply {
    Reply {
        reply: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        late: b"",
        close: false,
    }
}

/// "ok", then the connection closed without `Connection: close`, as by an upstream whose
/// keep-alive timer fires.
fn ok_then_close(name: &str) -> Reply {
    Reply {
        close: true,
        ..ok(name)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_replaced_when_closed_and_closed_when_idle() {
    let kept = Scripted::start(ok).await;
    let closing = Scripted::start(ok_then_close).await;
    let unpooled = Scripted::start(ok).await;
    let pool = |idle: &str, max: i64| {
        let mut t = toml::Table::new();
        t.insert("idle_timeout".into(), idle.into());
        t.insert("max_idle".into(), max.into());
        t
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .gateway("worker_threads", 1)
        .upstream(
            "kept",
            Upstream::url(&kept.url()).set("pool", pool("1s", 8)),
        )
        .upstream("closing", Upstream::url(&closing.url()))
        .upstream(
            "unpooled",
            Upstream::url(&unpooled.url()).set("pool", pool("90s", 0)),
        )
        .route(Route::prefix("kept", "/kept", "kept"))
        .route(Route::prefix("closing", "/closing", "closing"))
        .route(Route::prefix("unpooled", "/unpooled", "unpooled"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    let get = |path: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status();
            (status, r.text().await.unwrap())
        }
    };

    // One connection carries every request in turn.
    for _ in 0..5 {
        assert_eq!(get("/kept").await, (reqwest::StatusCode::OK, "ok".into()));
    }
    assert_eq!(kept.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(kept.open.load(Ordering::SeqCst), 1);

    // A kept connection the upstream closed is never handed a request: each request
    // after a close gets a new connection and its answer, not a 502.
    for i in 1..=4 {
        assert_eq!(
            get("/closing").await,
            (reqwest::StatusCode::OK, "ok".into())
        );
        assert_eq!(closing.accepted.load(Ordering::SeqCst), i);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // max_idle = 0 keeps nothing: a connection per request, each closed after it.
    for _ in 0..3 {
        assert_eq!(get("/unpooled").await.0, 200);
    }
    assert_eq!(unpooled.accepted.load(Ordering::SeqCst), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while unpooled.open.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(unpooled.open.load(Ordering::SeqCst), 0);

    // Idle past pool.idle_timeout (1 s; the sweep runs every second), the kept connection
    // is closed by the gateway; the next request opens a new one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while kept.open.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        kept.open.load(Ordering::SeqCst),
        0,
        "idle connection not closed"
    );
    assert_eq!(get("/kept").await.0, 200);
    assert_eq!(kept.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_an_http2_upstream_share_one_connection() {
    let up = Echo::start_named("h2").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .gateway("worker_threads", 1)
        .upstream("api", Upstream::url(&up.url()).set("http2", true))
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    // 32 requests at once on 32 client connections, before any upstream connection
    // exists: they wait for the one being made instead of each making their own.
    let c = client();
    let answers = futures_util::future::join_all((0..32).map(|i| {
        let (c, url) = (c.clone(), gw.url(&format!("/burst/{i}")));
        async move { c.get(url).send().await.unwrap().status() }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(up.requests(), 32);
    assert_eq!(up.connections(), 1, "one HTTP/2 connection for the worker");
}

/// A response larger than one read: 256 KiB of `x`.
static BIG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 262144\r\n\r\n".to_vec();
    r.extend(std::iter::repeat_n(b'x', 262_144));
    r
});

/// What the scripted upstream answers for each name.
fn script(name: &str) -> Reply {
    let (reply, late, close): (&'static [u8], &'static [u8], bool) = match name {
        "big" => (BIG.as_slice(), b"", false),
        "plain" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain", b"", false),
        "chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
            b"",
            false,
        ),
        "head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", b"", false),
        "early" => (
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"",
            false,
        ),
        // A second response nobody asked for, after the first one's declared end: at
        // once, or once the connection is idle in the pool.
        "smuggle" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            b"",
            false,
        ),
        "late" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            false,
        ),
        // Closed after the response without saying so, as a keep-alive timer would.
        "bye" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"", true),
        "both" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"",
            false,
        ),
        "conflict" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 4\r\n\r\nevil",
            b"",
            false,
        ),
        "folded" => (
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n x-b: 2\r\ncontent-length: 2\r\n\r\nok",
            b"",
            false,
        ),
        "bad-chunk" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX2\r\nok\r\n0\r\n\r\n",
            b"",
            false,
        ),
        // An empty chunk-size line, which a lenient parser reads as the last chunk.
        "empty-size" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            b"",
            false,
        ),
        // A bare LF inside a chunk extension.
        "lf-ext" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n",
            b"",
            false,
        ),
        "close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil close", b"", true),
        "cut" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345", b"", true),
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", b"", false),
    };
    Reply { reply, late, close }
}

/// Bodiless requests go out on Warden's own HTTP/1.1 exchange (hyper keeps the rest). An
/// upstream that frames a response ambiguously, sends more than it declared, or cuts it
/// short must never get a byte of it read as the answer to another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_responses_keep_their_framing_and_never_answer_another_request() {
    let up = Scripted::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .gateway("worker_threads", 1)
        .upstream("s", {
            // No retries, so that a kept connection the gateway should not have used
            // shows as a 502 rather than as a second attempt.
            let mut retry = toml::Table::new();
            retry.insert("attempts".into(), 0.into());
            Upstream::url(&up.url()).set("retry", retry)
        })
        // The same upstream with the default retries (once, on a reset).
        .upstream("r", Upstream::url(&up.url()))
        .route(Route::prefix("s", "/", "s"))
        .route(Route::prefix("r", "/retried/", "r"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    let get = |path: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let accepted = || up.accepted.load(Ordering::SeqCst);

    // Well-framed answers, each read to its end, all on one connection: a length, chunks
    // with an extension and trailers, a HEAD's declared length with no body, an interim
    // 103 before the answer.
    assert_eq!(get("/plain").await, (200, "plain".into()));
    assert_eq!(get("/chunked").await, (200, "hello world".into()));
    let head = c.head(gw.url("/head")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "5");
    assert_eq!(get("/early").await, (200, "ok".into()));
    let (status, big) = get("/big").await;
    assert_eq!(status, 200);
    assert!(big.len() == 262_144 && big.bytes().all(|b| b == b'x'));
    assert_eq!(get("/plain").await, (200, "plain".into()));
    assert_eq!(
        accepted(),
        1,
        "every well-framed answer left the connection usable"
    );
    // The request went out as sent: origin-form, Host, and no framing header invented
    // for a request without a body.
    let first = up.heads.lock().unwrap()[0].clone();
    assert!(first.starts_with("GET /plain HTTP/1.1\r\n"), "{first}");
    let lower = first.to_ascii_lowercase();
    assert!(lower.contains(&format!("\r\nhost: {}", up.addr)), "{first}");
    assert!(!lower.contains("content-length"), "{first}");
    assert!(!lower.contains("transfer-encoding"), "{first}");

    // Bytes after the declared end are not the next request's answer, whether they came
    // with the response or once the connection was idle in the pool; and a kept
    // connection the upstream closed without saying so is not used (no retries on this
    // route: using it would be a 502). Each time the next request gets a new connection.
    for (path, why) in [
        ("/smuggle", "extra bytes with the response"),
        ("/late", "bytes written unasked to an idle connection"),
        ("/bye", "a connection closed while idle"),
    ] {
        let before = accepted();
        assert_eq!(get(path).await, (200, "ok".into()), "{path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get("/plain").await, (200, "plain".into()), "after {why}");
        assert_eq!(accepted(), before + 1, "{why}: connection not dropped");
    }

    // Ambiguous or malformed framing is the upstream's fault: a 502, and the connection
    // goes with it. It is not retried where resets are: the answer would be the same.
    for path in [
        "/both",
        "/conflict",
        "/folded",
        "/retried/both",
        "/retried/folded",
    ] {
        let before = accepted();
        assert_eq!(get(path).await.0, 502, "{path}");
        assert_eq!(get("/plain").await, (200, "plain".into()));
        // One new connection: the 502's on a route that had none kept, or the next
        // request's after the 502 took the kept one. Two would be a retry.
        assert_eq!(
            accepted(),
            before + 1,
            "{path}: retried, or connection kept"
        );
    }

    // A malformed chunk (bad data end, an empty size line, a bare LF in an extension), or
    // a body cut short of its length, ends the client's response in an error, never as a
    // complete one; the next request gets a new connection.
    for path in ["/bad-chunk", "/empty-size", "/lf-ext", "/cut"] {
        let before = accepted();
        // The head may not have gone out yet when the body breaks: then the request fails.
        if let Ok(r) = c.get(gw.url(path)).send().await {
            assert!(
                r.text().await.is_err(),
                "{path}: a broken body read as whole"
            );
        }
        assert_eq!(get("/plain").await, (200, "plain".into()));
        assert_eq!(accepted(), before + 1, "{path}: connection not dropped");
    }
    assert!(
        gw.wait_for_log(
            "the upstream closed the connection before the response body ended",
            Duration::from_secs(5)
        )
        .await,
        "the cut is logged"
    );

    // A body without a length runs to the close.
    assert_eq!(get("/close").await, (200, "until close".into()));

    // Chunked trailers reach an HTTP/2 client.
    use http_body_util::BodyExt;
    let mut send = warden_tests::h2c(gw.addr).await;
    let req = http::Request::get(format!("http://{}/chunked", gw.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["x-sum"], "11");
    assert_eq!(&collected.to_bytes()[..], b"hello world");
}
