//! Operations end to end: hot reload of config, policy, plugin, certificate and secrets under
//! a steady load loop with zero failed requests; refused reloads; the admin API's token;
//! metrics that a Prometheus parser accepts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::certs::Ca;
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, eventually, metric_value, plugin_wasm};

const ADMIN_TOKEN: &str = "ops-test-admin-token-5e1f";

/// A bounded load loop: `workers` tasks sending GETs until stopped, at most 60 s or 200k
/// requests. Any non-200 or transport error is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, c: reqwest::Client, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures, url, c) = (
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    url.clone(),
                    c.clone(),
                );
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(60)
                        && n < 200_000
                    {
                        n += 1;
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failures.lock().unwrap().push(format!("error {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

fn write_atomic(path: &Path, contents: &[u8]) {
    // Write-then-rename, as deploy tools do: readers never see a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Stack {
    dir: tempfile::TempDir,
    a: Echo,
    b: Echo,
}

impl Stack {
    async fn new() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/admin_token"), ADMIN_TOKEN).unwrap();
        std::fs::write(dir.path().join("secrets/svc_token"), "svc-token-v1").unwrap();
        std::fs::copy(
            plugin_wasm("header_guard"),
            dir.path().join("header_guard.wasm"),
        )
        .unwrap();
        std::fs::copy(
            plugin_wasm("network_isolation"),
            dir.path().join("network_isolation.wasm"),
        )
        .unwrap();
        Stack {
            dir,
            a: Echo::start_named("A").await,
            b: Echo::start_named("B").await,
        }
    }

    /// A config: `upstream` is "a" or "b"; `edge` is the plugin on the route and its config.
    fn config(&self, upstream: &str, edge_file: &str, edge_config: &str, tls: &str) -> String {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
{tls}

[admin]
listen = "127.0.0.1:0"
token = "${{file:admin_token}}"

[secrets.file]
type = "dir"
path = "secrets"

[plugins.edge]
file = "{edge_file}"

[upstreams.a]
url = "{a}"

[upstreams.b]
url = "{b}"

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
upstream = "{upstream}"
inject = {{ x-service-token = "${{file:svc_token}}" }}

[[routes.policies]]
plugin = "edge"
config = {edge_config}
"#,
            a = self.a.url(),
            b = self.b.url(),
        )
    }
}

const GUARD_V1: &str = r#"{ set = { "x-policy" = "v1" } }"#;
const GUARD_V2: &str = r#"{ set = { "x-policy" = "v2" } }"#;
const ISOLATION: &str = r#"{ allow = [ { cidr = "127.0.0.0/8" } ] }"#;

async fn echo(c: &reqwest::Client, url: &str) -> Value {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_applies_under_load_with_zero_failures() {
    let s = Stack::new().await;
    let path = s.dir.path().join("warden.toml");
    let gw = Gateway::start(
        s.dir.path(),
        &s.config("a", "header_guard.wasm", GUARD_V1, ""),
    )
    .await
    .with_admin_token(ADMIN_TOKEN);
    let c = client();
    let url = gw.url("/load");
    let load = Load::start(url.clone(), c.clone(), 4);

    // Config reload (file watch): the route moves from upstream A to B.
    let first = echo(&c, &url).await;
    assert_eq!(first["server"], "A");
    assert_eq!(first["headers"]["x-policy"][0], "v1");
    write_atomic(
        &path,
        s.config("b", "header_guard.wasm", GUARD_V1, "").as_bytes(),
    );
    eventually(
        "route moves to upstream B",
        Duration::from_secs(10),
        || async { echo(&c, &url).await["server"] == "B" },
    )
    .await;

    // Policy change (admin reload): the plugin's per-route config changes.
    std::fs::write(&path, s.config("b", "header_guard.wasm", GUARD_V2, "")).unwrap();
    let r = c
        .post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    eventually("policy v2 applies", Duration::from_secs(10), || async {
        echo(&c, &url).await["headers"]["x-policy"][0] == "v2"
    })
    .await;

    // Plugin swap (SIGHUP): the route's plugin becomes network-isolation.
    std::fs::write(
        &path,
        s.config("b", "network_isolation.wasm", ISOLATION, ""),
    )
    .unwrap();
    gw.signal("HUP");
    eventually("plugin swapped", Duration::from_secs(10), || async {
        echo(&c, &url).await["headers"].get("x-policy").is_none()
    })
    .await;

    // Secret refresh: the injected token rotates.
    assert_eq!(
        echo(&c, &url).await["headers"]["x-service-token"][0],
        "svc-token-v1"
    );
    write_atomic(&s.dir.path().join("secrets/svc_token"), b"svc-token-v2");
    let r = c
        .post(gw.admin_url("/secrets/refresh"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(
        "rotated token reaches the upstream",
        Duration::from_secs(10),
        || async { echo(&c, &url).await["headers"]["x-service-token"][0] == "svc-token-v2" },
    )
    .await;

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "load loop made only {ok} requests");
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, "warden_reloads_total", &["result=\"applied\""]) >= 3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "warden_reloads_total", &["result=\"refused\""]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swap_reaches_new_connections_without_failures() {
    warden_tests::init_crypto();
    let s = Stack::new().await;
    let d = s.dir.path();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (crt, key) = old_ca.leaf(&["localhost"], &[]).write(d, "gw");
    let tls = format!(
        "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
        crt.display(),
        key.display()
    );
    let gw = Gateway::start(d, &s.config("a", "header_guard.wasm", GUARD_V1, &tls)).await;
    let url = format!("https://localhost:{}/load", gw.addr.port());

    let trusting = |cas: &[&Ca]| {
        let mut b = warden_tests::client_builder()
            .resolve("localhost", gw.addr)
            .pool_max_idle_per_host(0);
        for ca in cas {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap(),
            );
        }
        b.tls_built_in_root_certs(false).build().unwrap()
    };
    let both = trusting(&[&old_ca, &new_ca]);
    let only_new = trusting(&[&new_ca]);
    assert!(
        only_new.get(&url).send().await.is_err(),
        "new CA trusted before the swap"
    );

    let load = Load::start(url.clone(), both.clone(), 4);
    eventually(
        "the load loop is running",
        Duration::from_secs(30),
        || async { load.ok.load(Ordering::Relaxed) >= 10 },
    )
    .await;
    let leaf = new_ca.leaf(&["localhost"], &[]);
    // Key first, then certificate: the watcher debounces, and a reload between the two
    // writes is refused (key does not match) while the old pair keeps serving.
    write_atomic(&key, leaf.key_pem.as_bytes());
    write_atomic(&crt, leaf.cert_pem.as_bytes());
    eventually(
        "new certificate served",
        Duration::from_secs(15),
        || async {
            only_new
                .get(&url)
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        },
    )
    .await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests during certificate swap: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_invalid_reloads_are_refused_counted_and_harmless() {
    let s = Stack::new().await;
    let path = s.dir.path().join("warden.toml");
    let good = s.config("a", "header_guard.wasm", GUARD_V1, "");
    let gw = Gateway::start(s.dir.path(), &good)
        .await
        .with_admin_token(ADMIN_TOKEN);
    let c = client();
    let url = gw.url("/load");
    let load = Load::start(url.clone(), c.clone(), 4);

    std::fs::write(s.dir.path().join("garbage.wasm"), b"not a component").unwrap();
    let bad: Vec<(String, &str)> = vec![
        (good.replace("[admin]", "[admin\n"), "invalid TOML"),
        (
            good.replace("[[routes]]", "[[routes]]\ncolour = \"red\""),
            "unknown field `colour`",
        ),
        (
            good.replace("header_guard.wasm", "missing.wasm"),
            "missing.wasm",
        ),
        (
            good.replace("header_guard.wasm", "garbage.wasm"),
            "plugins.edge.file: not a component",
        ),
        (
            good.replace("[plugins.edge]", "[plugins.edge]\nsha256 = \"00\""),
            "sha256",
        ),
        (
            good.replace("${file:svc_token}", "${file:no_such_secret}"),
            "no_such_secret",
        ),
        (
            good.replace(GUARD_V1, r#"{ max_value_bytes = "lots" }"#),
            "max_value_bytes",
        ),
        (
            good.replace("upstream = \"a\"", "upstream = \"ghost\""),
            "unknown upstream \"ghost\"",
        ),
    ];
    for i in 0..20 {
        let (text, expect) = &bad[i % bad.len()];
        std::fs::write(&path, text).unwrap();
        let r = c
            .post(gw.admin_url("/reload"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "reload {i} was not refused");
        let body: Value = r.json().await.unwrap();
        let errors: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let errors = errors.join("\n");
        assert!(
            errors.contains(expect),
            "reload {i}: expected {expect:?} in {errors}"
        );
        assert!(
            errors.contains("warden.toml"),
            "error does not name the file: {errors}"
        );
    }
    // The file watcher saw those writes too: its debounced reload is refused as well,
    // with the load still running.
    eventually(
        "the file watcher's reload is refused",
        Duration::from_secs(30),
        || async {
            gw.logs()
                .lines()
                .any(|l| l.contains("reload refused") && l.contains("trigger=\"file change\""))
        },
    )
    .await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20);
    let echo = echo(&c, &url).await;
    assert_eq!(echo["server"], "A");
    assert_eq!(echo["headers"]["x-policy"][0], "v1");
    let ready = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, "warden_reloads_total", &["result=\"refused\""]) >= 20.0,
        "{m}"
    );
    assert!(gw.logs().contains("reload refused"));
}

#[tokio::test]
async fn admin_posts_need_the_token() {
    let s = Stack::new().await;
    let gw = Gateway::start(
        s.dir.path(),
        &s.config("a", "header_guard.wasm", GUARD_V1, ""),
    )
    .await
    .with_admin_token(ADMIN_TOKEN);
    let c = client();
    for path in ["/reload", "/secrets/refresh"] {
        let r = c.post(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without token");
        let r = c
            .post(gw.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with wrong token");
        let r = c
            .post(gw.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with token");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "warden_reloads_total", &[]),
        1.0,
        "a refused POST changed something"
    );
    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // /config shows references, never values, and the content hash; with a token
    // configured it needs the token like everything but the probes.
    assert_eq!(
        c.get(gw.admin_url("/config"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let cfg: Value = c
        .get(gw.admin_url("/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = cfg.to_string();
    assert!(text.contains("${file:svc_token}"));
    assert!(!text.contains("svc-token-v1") && !text.contains(ADMIN_TOKEN));
    assert_eq!(cfg["config_hash"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn metrics_parse_and_carry_the_documented_series() {
    let s = Stack::new().await;
    let gw = Gateway::start(
        s.dir.path(),
        &s.config("a", "header_guard.wasm", GUARD_V1, ""),
    )
    .await
    .with_admin_token(ADMIN_TOKEN);
    let c = client();
    for _ in 0..3 {
        echo(&c, &gw.url("/x")).await;
    }
    let _ = c
        .get(gw.url("/x"))
        .header("x-bad", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    let text = gw.metrics().await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for expected in [
        "warden_requests_total",
        // The parser files histogram buckets under the histogram's own name.
        "warden_request_duration_seconds",
        "warden_upstream_duration_seconds",
        "warden_active_connections",
        "warden_policy_verdicts_total",
        "warden_plugin_eval_duration_seconds",
        "warden_build_info",
    ] {
        assert!(names.contains(expected), "missing {expected} in {names:?}");
    }
    let ok = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "warden_requests_total"
                && s.labels.get("status") == Some("200")
                && s.labels.get("method") == Some("read")
        })
        .expect("200s counted");
    assert_eq!(ok.labels.get("route"), Some("main"));
    let count = match ok.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("requests_total is not a counter: {other:?}"),
    };
    assert_eq!(count, 3.0, "three GETs answered 200");
    // Labels carry names and classes, never header values or secrets.
    assert!(
        !text.contains("svc-token") && !text.contains(ADMIN_TOKEN) && !text.contains("aaaaaaaa")
    );
}
