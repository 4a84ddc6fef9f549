//! Secrets end to end: the real `warden` binary, a real OpenBao dev server, real age files
//! (made with the `age` CLI) and secret directories, and a real upstream that reports what
//! it received.
//!
//! Canary values are unique strings grepped for in logs (trace level), gateway-generated
//! responses, admin output, metrics and CLI output. The echo upstream reflects request
//! headers into its own response body by design, so proxied response bodies are where a
//! canary is *expected* (that is the positive control), never anywhere else.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::openbao::{OpenBao, toml_path};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, metric_value, run_warden};

const ROUTE_INJECT: &str = r#"inject = { authorization = "Bearer ${vault:ml/inference#api_key}" }"#;

/// A gateway config with a Vault provider using `token`, one route to `upstream`.
fn vault_config(
    bao: &OpenBao,
    dir: &Path,
    token: &str,
    upstream: &str,
    vault_extra: &str,
    rest: &str,
) -> String {
    let token_file = dir.join("vault-token");
    std::fs::write(&token_file, token).unwrap();
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[secrets.vault]
type = "vault"
address = "{addr}"
auth = {{ method = "token", token_file = {tf} }}
{vault_extra}

[upstreams.ml]
url = "{upstream}"

[[routes]]
name = "inference"
match = {{ path_prefix = "/" }}
upstream = "ml"
{ROUTE_INJECT}
{rest}
"#,
        addr = bao.addr,
        tf = toml_path(&token_file),
    )
}

/// The `authorization` values the echo upstream reports having received.
fn echoed_auth(body: &Value) -> Vec<String> {
    body["headers"]["authorization"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// One request as the load loop saw it.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    task: usize,
    status: u16,
    auth: Vec<String>,
}

/// `tasks` concurrent clients sending requests (with a spoofed `Authorization`) until
/// `stop` is set. Bounded: each task has one request in flight.
fn spawn_load(
    url: String,
    tasks: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut handles = Vec::new();
        for task in 0..tasks {
            let url = url.clone();
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                let c = client();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let resp = c
                        .get(&url)
                        .header("authorization", "Bearer client-spoof")
                        .send()
                        .await;
                    let at = t0.elapsed();
                    match resp {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let auth = r
                                .json::<Value>()
                                .await
                                .map(|b| echoed_auth(&b))
                                .unwrap_or_default();
                            out.push(Sample {
                                at,
                                task,
                                status,
                                auth,
                            });
                        }
                        Err(_) => out.push(Sample {
                            at,
                            task,
                            status: 0,
                            auth: Vec::new(),
                        }),
                    }
                }
                out
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    })
}

async fn get_auth(gw: &Gateway) -> (u16, Vec<String>) {
    let r = client().get(gw.url("/v1/infer")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, echoed_auth(&body))
}

async fn eventually_auth(gw: &Gateway, want: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if get_auth(gw).await.1 == vec![want.to_string()] {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_rotation_under_load_reaches_upstream_with_zero_failures() {
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "rot-one")]);
    let token = bao.create_token("1h");
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let refresh = Duration::from_secs(1);
    let cfg = vault_config(&bao, dir.path(), &token, &up.url(), "refresh = \"1s\"", "");
    let gw = Gateway::start(dir.path(), &cfg).await;
    assert_eq!(
        get_auth(&gw).await,
        (200, vec!["Bearer rot-one".to_string()])
    );

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(gw.url("/v1/infer"), 4, t0, stop.clone());
    // Deliberate: the load runs on the old value through at least one refresh round
    // (re-reading an unchanged value must not disturb it) before the rotation.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bao.kv_put("ml/inference", &[("api_key", "rot-two")]);
    let rotated_at = t0.elapsed();
    assert!(
        eventually_auth(&gw, "Bearer rot-two", Duration::from_secs(30)).await,
        "the rotated value never reached the upstream:\n{}",
        gw.logs()
    );
    // Deliberate: keep the load going for another refresh interval, so every client
    // sends requests after the switch.
    tokio::time::sleep(refresh).await;
    stop.store(true, Ordering::Relaxed);
    let samples = load.await.unwrap();

    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(samples.len() > 50, "load loop too small: {}", samples.len());
    // Injection replaced the client's header: exactly one value, never the spoof.
    for s in &samples {
        assert_eq!(s.auth.len(), 1, "{s:?}");
        assert!(
            s.auth[0] == "Bearer rot-one" || s.auth[0] == "Bearer rot-two",
            "{s:?}"
        );
    }
    // The new value reached the upstream about one refresh interval after the write. The
    // bound is generous (the round trip to OpenBao and the clients' next requests are at
    // the mercy of a loaded machine) but far below the 30 s default, so a `refresh` that
    // was not applied still fails it.
    let first_new = samples
        .iter()
        .filter(|s| s.auth[0] == "Bearer rot-two")
        .map(|s| s.at)
        .min()
        .expect("rotation seen");
    let delay = first_new.saturating_sub(rotated_at);
    assert!(delay <= refresh * 10, "new value after {delay:?}");
    // … and once a client saw it, that client never saw the old one again.
    for task in 0..4 {
        let mut seen_new = false;
        for s in samples.iter().filter(|s| s.task == task) {
            if s.auth[0] == "Bearer rot-two" {
                seen_new = true;
            } else {
                assert!(
                    !seen_new,
                    "task {task} saw the old value after the new one at {:?}",
                    s.at
                );
            }
        }
    }
    eprintln!(
        "rotation under load: {} requests, 0 failed, new value at upstream {:?} after the write (refresh {:?})",
        samples.len(),
        delay,
        refresh
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_serves_from_cache_then_recovers() {
    let mut bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "cached-one")]);
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The root token survives a dev-server restart (fixed id); a child token would not.
    let cfg = vault_config(
        &bao,
        dir.path(),
        &bao.root_token.clone(),
        &up.url(),
        "refresh = \"500ms\"\nmax_stale = \"1h\"\ntimeout = \"1s\"",
        "",
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    assert_eq!(
        get_auth(&gw).await,
        (200, vec!["Bearer cached-one".to_string()])
    );

    bao.stop();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(gw.url("/v1/infer"), 2, t0, stop.clone());
    assert!(
        gw.wait_for_log("secret refresh failed", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    // Deliberate: the load keeps running through several failed refresh rounds (500 ms
    // apart), and every request must still be served from the cache.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = load.await.unwrap();
    assert!(!samples.is_empty());
    assert!(
        samples
            .iter()
            .all(|s| s.status == 200 && s.auth == vec!["Bearer cached-one".to_string()]),
        "requests must keep succeeding from the cache"
    );
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            "warden_secret_refresh_failure_total",
            &["provider=\"vault\""]
        ) >= 1.0,
        "{m}"
    );
    let last_ok = metric_value(
        &m,
        "warden_secret_last_success_timestamp_seconds",
        &["provider=\"vault\""],
    );
    assert!(last_ok > 1.6e9, "{m}");

    // OpenBao comes back (empty: dev mode is in-memory) with a new value.
    bao.restart();
    bao.kv_put("ml/inference", &[("api_key", "recovered-two")]);
    assert!(
        eventually_auth(&gw, "Bearer recovered-two", Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert!(
        gw.wait_for_log("secret provider recovered", Duration::from_secs(5))
            .await
    );
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            "warden_secret_last_success_timestamp_seconds",
            &["provider=\"vault\""]
        ) >= last_ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_past_max_stale_answers_503_without_the_value() {
    let mut bao = OpenBao::start();
    let canary = "canary-stale-5b0d7e1a";
    bao.kv_put("ml/inference", &[("api_key", canary)]);
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(
        &bao,
        dir.path(),
        &bao.root_token.clone(),
        &up.url(),
        "refresh = \"300ms\"\nmax_stale = \"2s\"\ntimeout = \"1s\"",
        "",
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    assert_eq!(get_auth(&gw).await.0, 200);
    bao.stop();
    let end = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let r = client().get(gw.url("/v1/infer")).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status != 200 || Instant::now() > end {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains(canary), "{body}");
    assert!(!gw.logs().contains(canary));
    let before = up.requests();
    let r = client().get(gw.url("/v1/infer")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        up.requests(),
        before,
        "a stale secret must not be sent upstream"
    );
    // One provider past max_stale fails the routes that need it, not the replica:
    // readiness (serving mode, the default) stays 200 and reports the provider stale.
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    let vault = ready["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["provider"] == "vault"))
        .unwrap_or_else(|| panic!("no vault provider in {ready}"));
    assert_eq!(vault["state"], "stale", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_approle_login_and_kv2_injection() {
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "via-approle")]);
    let (role_id, secret_id) = bao.create_approle("warden", "1h", "4h");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role_id"), &role_id).unwrap();
    std::fs::write(dir.path().join("secret_id"), &secret_id).unwrap();
    let up = Echo::start().await;
    let cfg = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[secrets.vault]
type = "vault"
address = "{}"
# Relative paths resolve from this file's directory.
auth = {{ method = "approle", role_id_file = "role_id", secret_id_file = "secret_id" }}
[upstreams.ml]
url = "{}"
[[routes]]
name = "inference"
match = {{ path_prefix = "/" }}
upstream = "ml"
{ROUTE_INJECT}
"#,
        bao.addr,
        up.url()
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    let r = client()
        .get(gw.url("/v1/infer"))
        .header("Authorization", "Bearer spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(echoed_auth(&body), vec!["Bearer via-approle".to_string()]);
    assert_eq!(bao.audit_requests_to("auth/approle/login"), 1);
    assert!(!gw.logs().contains(&secret_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_path_makes_zero_provider_calls() {
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "k")]);
    let token = bao.create_token("1h");
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(&bao, dir.path(), &token, &up.url(), "refresh = \"1h\"", "");
    let gw = Gateway::start(dir.path(), &cfg).await;
    assert_eq!(get_auth(&gw).await.0, 200);

    // Positive control: the audit log exists and counts this provider's reads (the
    // start-up read of the secret), so a zero below means zero, not a missing log.
    let before = bao.audit_requests();
    assert!(
        bao.audit_requests_to("secret/data/ml/inference") >= 1,
        "the start-up read is audited"
    );
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(gw.url("/v1/infer"), 8, t0, stop.clone());
    // Deliberate: a load run of fixed length, during which OpenBao must see nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = load.await.unwrap();
    let elapsed = t0.elapsed();
    let after = bao.audit_requests();
    let ok = samples
        .iter()
        .filter(|s| s.status == 200 && s.auth == vec!["Bearer k".to_string()])
        .count();
    assert_eq!(ok, samples.len());
    assert!(samples.len() > 200, "{}", samples.len());
    assert_eq!(
        after - before,
        0,
        "OpenBao served requests during the load run"
    );
    // And a refresh (SIGHUP), unlike requests, does reach OpenBao and shows in the same
    // count.
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bao.audit_requests() == after && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        bao.audit_requests() > after,
        "a refresh reads OpenBao and is audited"
    );
    eprintln!(
        "BENCH zero-provider-calls: {} requests in {:.2?} ({:.0} req/s, 8 clients), OpenBao audited requests during the run: {}",
        samples.len(),
        elapsed,
        samples.len() as f64 / elapsed.as_secs_f64(),
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refresh_and_sighup_pick_up_rotation_immediately() {
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "manual-one")]);
    let token = bao.create_token("1h");
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("run-secrets");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("admin_token"), "admin-s3cret\n").unwrap();
    let cfg = vault_config(&bao, dir.path(), &token, &up.url(), "refresh = \"1h\"", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${file:admin_token}\"",
    ) + &format!(
        "\n[secrets.file]\ntype = \"dir\"\npath = {}\n",
        toml_path(&files)
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    assert_eq!(get_auth(&gw).await.1, vec!["Bearer manual-one".to_string()]);

    bao.kv_put("ml/inference", &[("api_key", "manual-two")]);
    let r = client()
        .post(gw.admin_url("/secrets/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(gw.admin_url("/secrets/refresh"))
        .bearer_auth("admin-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(get_auth(&gw).await.1, vec!["Bearer manual-two".to_string()]);

    bao.kv_put("ml/inference", &[("api_key", "manual-three")]);
    gw.signal("HUP");
    assert!(eventually_auth(&gw, "Bearer manual-three", Duration::from_secs(5)).await);
}

fn age_encrypt(dir: &Path, recipient: &str, plain: &str, armor: bool, out: &Path) {
    let plain_file = dir.join("plain.tmp");
    std::fs::write(&plain_file, plain).unwrap();
    let mut c = std::process::Command::new("age");
    c.arg("-r").arg(recipient).arg("-o").arg(out);
    if armor {
        c.arg("-a");
    }
    let o = c
        .arg(&plain_file)
        .output()
        .expect("the age CLI (scripts/setup.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(plain_file).unwrap();
}

fn age_keygen(dir: &Path) -> String {
    let key = dir.join("gateway.agekey");
    let o = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen");
    assert!(o.status.success());
    let o = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_and_dir_providers_rotate_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let recipient = age_keygen(d);
    std::fs::create_dir(d.join("secrets")).unwrap();
    age_encrypt(
        d,
        &recipient,
        "OPENAI_KEY=age-one\n",
        false,
        &d.join("secrets/demo.env.age"),
    );
    // A Kubernetes-style secret volume.
    let k8s = d.join("k8s");
    std::fs::create_dir_all(k8s.join("..v1")).unwrap();
    std::fs::write(k8s.join("..v1/openai_key"), "dir-one\n").unwrap();
    std::os::unix::fs::symlink("..v1", k8s.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/openai_key", k8s.join("openai_key")).unwrap();

    let up = Echo::start().await;
    let cfg = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[secrets.age]
type = "age"
identity_file = "gateway.agekey"
file = "secrets/demo.env.age"
[secrets.file]
type = "dir"
path = "k8s"
[upstreams.api]
url = "{}"
[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
inject = {{ x-openai-key = "${{age:OPENAI_KEY}}", x-other-key = "${{file:openai_key}}" }}
"#,
        up.url()
    );
    let gw = Gateway::start(d, &cfg).await;
    let get = || async {
        let r = client()
            .get(gw.url("/"))
            .header("x-openai-key", "spoof")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let b: Value = r.json().await.unwrap();
        (
            b["headers"]["x-openai-key"].clone(),
            b["headers"]["x-other-key"].clone(),
        )
    };
    assert_eq!(
        get().await,
        (
            serde_json::json!(["age-one"]),
            serde_json::json!(["dir-one"])
        )
    );

    // age: re-encrypt (armored this time) with the CLI → hot rotation.
    age_encrypt(
        d,
        &recipient,
        "OPENAI_KEY=age-two\n",
        true,
        &d.join("secrets/demo.env.age"),
    );
    // dir: kubelet-style ..data symlink swap.
    std::fs::create_dir(k8s.join("..v2")).unwrap();
    std::fs::write(k8s.join("..v2/openai_key"), "dir-two\n").unwrap();
    std::os::unix::fs::symlink("..v2", k8s.join("..data_tmp")).unwrap();
    std::fs::rename(k8s.join("..data_tmp"), k8s.join("..data")).unwrap();
    let want = (
        serde_json::json!(["age-two"]),
        serde_json::json!(["dir-two"]),
    );
    let end = Instant::now() + Duration::from_secs(5);
    while get().await != want && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get().await, want);

    // A file encrypted to another key: the old value keeps serving, the error is logged.
    let other = tempfile::tempdir().unwrap();
    let other_recipient = age_keygen(other.path());
    age_encrypt(
        d,
        &other_recipient,
        "OPENAI_KEY=age-intruder\n",
        false,
        &d.join("secrets/demo.env.age"),
    );
    assert!(
        gw.wait_for_log("cannot decrypt", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(get().await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_check_cli_lists_references_without_values() {
    let bao = OpenBao::start();
    let canary = "canary-cli-0c9d33aa";
    let version = bao.kv_put("ml/inference", &[("api_key", canary)]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(
        &bao,
        dir.path(),
        &bao.root_token.clone(),
        "http://127.0.0.1:9",
        "",
        "",
    );
    std::fs::write(dir.path().join("warden.toml"), &cfg).unwrap();
    let path = dir.path().join("warden.toml");
    let (code, out, err) = run_warden(&["secrets", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("${vault:ml/inference#api_key}"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("yes") && line.contains(&version.to_string()),
        "{line}"
    );
    assert!(!out.contains(canary) && !err.contains(canary));

    let (code, out, _) = run_warden(&[
        "secrets",
        "check",
        "--config",
        path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["resolved"], true);
    assert_eq!(v["version"], version);

    // A reference that does not resolve: listed, exit 1, the reason named.
    std::fs::write(
        &path,
        cfg.replace("ml/inference#api_key", "ml/inference#nope"),
    )
    .unwrap();
    let (code, out, err) = run_warden(&["secrets", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("${vault:ml/inference#nope}"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("NO") && line.contains("key nope not found"),
        "{line}"
    );
    assert!(!out.contains(canary) && !err.contains(canary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_never_leak_outside_the_upstream_request() {
    let bao = OpenBao::start();
    let vault_canary = "canary-vault-91c4e2f0";
    let age_canary = "canary-age-3d7b5a12";
    let dir_canary = "canary-dir-e8a0c6b4";
    let admin_canary = "canary-admin-47f1d9e3";
    bao.kv_put("ml/inference", &[("api_key", vault_canary)]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let recipient = age_keygen(d);
    age_encrypt(
        d,
        &recipient,
        &format!("OPENAI_KEY={age_canary}\n"),
        false,
        &d.join("demo.env.age"),
    );
    let files = d.join("run");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("db"), dir_canary).unwrap();
    std::fs::write(files.join("admin_token"), admin_canary).unwrap();
    let up = Echo::start().await;
    let cfg = vault_config(
        &bao,
        d,
        &bao.root_token.clone(),
        &up.url(),
        "refresh = \"500ms\"",
        r#"
[[routes]]
name = "other"
match = { path_prefix = "/other" }
upstream = "ml"
inject = { x-openai-key = "${age:OPENAI_KEY}", x-db = "key=${file:db};" }
"#,
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${file:admin_token}\"",
    ) + &format!(
        "\n[secrets.age]\ntype = \"age\"\nidentity_file = \"gateway.agekey\"\nfile = \"demo.env.age\"\n[secrets.file]\ntype = \"dir\"\npath = {}\n",
        toml_path(&files)
    );
    std::fs::write(d.join("warden.toml"), &cfg).unwrap();
    let mut gw = Gateway::spawn(&d.join("warden.toml"), &[("RUST_LOG", "trace")])
        .await
        .expect("gateway starts");

    let mut responses = String::new();
    for path in ["/v1/infer", "/other/x"] {
        let r = client()
            .get(gw.url(path))
            .header("authorization", "Bearer spoof")
            .header("x-openai-key", "spoof")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let hdrs = format!("{:?}", r.headers());
        responses.push_str(&hdrs);
        // The echo body reflects the upstream request: the positive control.
        let body: Value = r.json().await.unwrap();
        let h = &body["headers"];
        if path == "/v1/infer" {
            assert_eq!(
                h["authorization"],
                serde_json::json!([format!("Bearer {vault_canary}")])
            );
        } else {
            assert_eq!(h["x-openai-key"], serde_json::json!([age_canary]));
            assert_eq!(h["x-db"], serde_json::json!([format!("key={dir_canary};")]));
        }
    }
    // Gateway-generated and admin output.
    for (method, path, auth) in [
        ("GET", "/metrics", Some(admin_canary)),
        ("GET", "/readyz", None),
        ("GET", "/healthz", None),
        ("GET", "/config", Some(admin_canary)),
        ("GET", "/secrets", Some(admin_canary)),
        ("POST", "/secrets/refresh", Some("wrong")),
        ("POST", "/secrets/refresh", Some(admin_canary)),
        ("POST", "/reload", Some("wrong")),
    ] {
        let mut rb = client().request(method.parse().unwrap(), gw.admin_url(path));
        if let Some(a) = auth {
            rb = rb.bearer_auth(a);
        }
        let r = rb.send().await.unwrap();
        responses.push_str(&format!("{:?}", r.headers()));
        responses.push_str(&r.text().await.unwrap());
    }
    let (_, out, err) = run_warden(&[
        "secrets",
        "check",
        "--config",
        d.join("warden.toml").to_str().unwrap(),
    ]);
    responses.push_str(&out);
    responses.push_str(&err);
    // Rotate a value (logged as a rotation, by reference) and let a few refreshes run.
    bao.kv_put("ml/inference", &[("api_key", "canary-vault-rotated-6a2f")]);
    assert!(
        gw.wait_for_log("secret value rotated", Duration::from_secs(5))
            .await
    );
    gw.stop();
    let logs = gw.logs();
    assert!(logs.lines().count() > 20, "trace logs expected:\n{logs}");
    for canary in [
        vault_canary,
        age_canary,
        dir_canary,
        admin_canary,
        "canary-vault-rotated-6a2f",
    ] {
        assert!(!logs.contains(canary), "{canary} in logs");
        assert!(
            !responses.contains(canary),
            "{canary} in a gateway response, admin output or CLI output:\n{responses}"
        );
    }
}

/// A JWT signed with `key` (EdDSA), valid from now for `valid_for`.
fn sign_jwt(key: &rcgen::KeyPair, sub: &str, valid_for: Duration) -> String {
    use base64::Engine;
    use rcgen::SigningKey;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let claims = b64(serde_json::json!({
        "sub": sub, "aud": "warden", "iat": now, "nbf": now - 1,
        "exp": now + valid_for.as_secs(),
    })
    .to_string()
    .as_bytes());
    let signing_input = format!("{header}.{claims}");
    let sig = key.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64(&sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_jwt_auth_rereads_the_rotating_token_file() {
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "jwt-one")]);
    // OpenBao's JWT auth method trusts a public key the test generated; tokens it issues
    // live 2 s and cannot be renewed past that, so the gateway must log in again often.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    bao.bao(&["auth", "enable", "jwt"]);
    bao.bao(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys={}", key.public_key_pem()),
    ]);
    bao.bao(&[
        "write",
        "auth/jwt/role/warden",
        "role_type=jwt",
        "bound_audiences=warden",
        "user_claim=sub",
        "token_policies=warden-read",
        "token_ttl=2s",
        "token_max_ttl=2s",
        "expiration_leeway=-1",
        "clock_skew_leeway=-1",
        "not_before_leeway=-1",
    ]);
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("sa-token");
    // The first projected token expires in 4 s; the kubelet writes its successor.
    std::fs::write(&jwt_file, sign_jwt(&key, "warden", Duration::from_secs(4))).unwrap();
    let cfg = vault_config(
        &bao,
        dir.path(),
        "unused",
        &up.url(),
        "refresh = \"1s\"",
        "",
    )
    .replace(
        &format!(
            "auth = {{ method = \"token\", token_file = {} }}",
            toml_path(&dir.path().join("vault-token"))
        ),
        &format!(
            "auth = {{ method = \"jwt\", role = \"warden\", jwt_file = {} }}",
            toml_path(&jwt_file)
        ),
    );
    assert!(cfg.contains("method = \"jwt\""), "{cfg}");
    let gw = Gateway::start(dir.path(), &cfg).await;
    assert_eq!(get_auth(&gw).await.1, vec!["Bearer jwt-one".to_string()]);

    std::fs::write(
        &jwt_file,
        sign_jwt(&key, "warden", Duration::from_secs(3600)),
    )
    .unwrap();
    // Past the first JWT's expiry and its tokens' TTL, a new value can only be read with a
    // token from a login that read the new file.
    tokio::time::sleep(Duration::from_secs(5)).await;
    bao.kv_put("ml/inference", &[("api_key", "jwt-two")]);
    assert!(
        eventually_auth(&gw, "Bearer jwt-two", Duration::from_secs(15)).await,
        "no fresh value after the JWT rotated:\n{}",
        gw.logs()
    );
    assert!(
        bao.audit_requests_to("auth/jwt/login") >= 3,
        "expected repeated JWT logins"
    );
    assert!(!gw.logs().contains("JWT login failed"), "{}", gw.logs());
}
