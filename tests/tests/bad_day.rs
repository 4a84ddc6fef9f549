//! The operator's bad day, end to end against a real OpenBao whose audit log counts every
//! request it serves: start while it is frozen, reload during the outage, readiness that
//! means "this replica can serve", reloads that cost the provider nothing, and
//! generations that end while keep-alive connections stay open.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_tests::openbao::{OpenBao, toml_path};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, metric_value, warden_bin};

const ADMIN: &str = "bad-day-admin-token";

/// A gateway with a Vault provider (`refresh` 1 h, so any provider request the test sees
/// comes from start-up or a reload), a route that injects a Vault secret (`/v1`), a route
/// that needs none (`/plain`), and an admin token from a secret directory.
fn config(bao: &OpenBao, dir: &Path, upstream: &str, admin_extra: &str, routes: &str) -> String {
    let token_file = dir.join("vault-token");
    std::fs::write(&token_file, &bao.root_token).unwrap();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("admin_token"), ADMIN).unwrap();
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token = "${{file:admin_token}}"
{admin_extra}

[secrets.vault]
type = "vault"
address = "{addr}"
auth = {{ method = "token", token_file = {tf} }}
refresh = "1h"
timeout = "1s"

[secrets.file]
type = "dir"
path = {run}

[upstreams.ml]
url = "{upstream}"

[[routes]]
name = "inference"
match = {{ path_prefix = "/v1" }}
upstream = "ml"
inject = {{ authorization = "Bearer ${{vault:ml/inference#api_key}}" }}

[[routes]]
name = "plain"
match = {{ path_prefix = "/plain" }}
upstream = "ml"
{routes}
"#,
        addr = bao.addr,
        tf = toml_path(&token_file),
        run = toml_path(&run),
    )
}

async fn status_of(gw: &Gateway, path: &str) -> (u16, Value) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn reload(gw: &Gateway) -> (u16, Value) {
    let r = client()
        .post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn vault_state(ready: &Value) -> String {
    ready["providers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["provider"] == "vault"))
        .map(|p| p["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_reload_and_readiness_while_openbao_is_frozen() {
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "after-the-thaw")]);
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&bao, dir.path(), &up.url(), "", "");
    std::fs::write(dir.path().join("warden.toml"), &cfg).unwrap();

    // --strict-secrets keeps the old fail-fast start.
    bao.freeze();
    let strict = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(warden_bin())
            .args(["run", "--strict-secrets", "--config"])
            .arg(dir.path().join("warden.toml"))
            .output(),
    )
    .await
    .expect("--strict-secrets gave up within 30 s")
    .unwrap();
    assert_eq!(strict.status.code(), Some(2), "{strict:?}");
    assert!(String::from_utf8_lossy(&strict.stderr).contains("${vault:ml/inference#api_key}"));

    // Without it the gateway starts: the route that needs no Vault secret serves, the one
    // that does answers 503 credentials_unavailable, and the replica is ready.
    let gw = Gateway::spawn(&dir.path().join("warden.toml"), &[])
        .await
        .expect("starts while OpenBao is frozen")
        .with_admin_token(ADMIN);
    assert_eq!(status_of(&gw, "/plain/x").await.0, 200);
    let (code, body) = status_of(&gw, "/v1/infer").await;
    assert_eq!(code, 503);
    assert_eq!(body["error"], "credentials_unavailable");
    let (code, ready) = readyz(&gw).await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(vault_state(&ready), "unresolved", "{ready}");

    // A reload during the outage applies (it adds no reference) …
    std::fs::write(
        dir.path().join("warden.toml"),
        config(
            &bao,
            dir.path(),
            &up.url(),
            "readiness = \"strict\"",
            "[[routes]]\nname = \"extra\"\nmatch = { path_prefix = \"/extra\" }\nupstream = \"ml\"\n",
        ),
    )
    .unwrap();
    let (code, body) = reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status_of(&gw, "/extra/x").await.0, 200);
    // … and strict readiness now fails while Vault's secrets are missing.
    assert_eq!(readyz(&gw).await.0, 503);

    // A reload that adds a reference it cannot read is refused with file:line, and the
    // previous configuration keeps serving.
    std::fs::write(
        dir.path().join("warden.toml"),
        config(
            &bao,
            dir.path(),
            &up.url(),
            "readiness = \"strict\"",
            "[[routes]]\nname = \"new-secret\"\nmatch = { path_prefix = \"/new\" }\nupstream = \"ml\"\n\
             inject = { x-api-key = \"${vault:ml/other#key}\" }\n",
        ),
    )
    .unwrap();
    let (code, body) = reload(&gw).await;
    assert_eq!(code, 422, "{body}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("warden.toml:") && errors.contains("${vault:ml/other#key}"),
        "{errors}"
    );
    assert_eq!(status_of(&gw, "/extra/x").await.0, 200);
    assert_eq!(status_of(&gw, "/new/x").await.0, 404);

    // Thawed: the route serves as soon as its value arrives (retried with backoff).
    bao.thaw();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = status_of(&gw, "/v1/infer").await;
        if code == 200 {
            assert_eq!(body["headers"]["authorization"][0], "Bearer after-the-thaw");
            break;
        }
        assert!(Instant::now() < end, "never served after the thaw");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, ready) = readyz(&gw).await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(vault_state(&ready), "ok", "{ready}");
}

/// Send one keep-alive request on `s` and read the whole response (Content-Length).
async fn exchange(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert_eq!(n, 1, "connection closed");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_idle_keep_alive_connections_end_their_generations() {
    let bao = OpenBao::start();
    bao.kv_put(
        "ml/inference",
        &[("api_key", "gen-key"), ("other", "second-key")],
    );
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config(&bao, dir.path(), &up.url(), "", ""))
        .await
        .with_admin_token(ADMIN);
    assert_eq!(status_of(&gw, "/v1/infer").await.0, 200);

    // 50 reloads, with 4 new idle keep-alive connections opened before each: a
    // connection that kept the generation it was accepted in would keep 50 alive.
    let vault_before = bao.audit_requests();
    let mut conns = Vec::new();
    let mut rss_after_10 = 0;
    for i in 0..50 {
        for _ in 0..4 {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            assert!(
                exchange(&mut s, "/plain/x")
                    .await
                    .starts_with("HTTP/1.1 200")
            );
            conns.push(s);
        }
        let (code, body) = reload(&gw).await;
        assert_eq!(code, 200, "{body}");
        if i == 9 {
            rss_after_10 = gw.rss_kib();
        }
    }
    assert_eq!(conns.len(), 200);
    // Unrelated reloads cost the provider nothing: values come from the store that
    // outlives them, and its refresh timer (1 h) has not fired.
    assert_eq!(
        bao.audit_requests(),
        vault_before,
        "reloads reached OpenBao"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "warden_config_generations", &[]),
        1.0,
        "generations still alive after 50 reloads:\n{m}"
    );
    let rss_end = gw.rss_kib();
    assert!(
        rss_end < rss_after_10 + 16 * 1024,
        "RSS grew from {rss_after_10} KiB to {rss_end} KiB over 40 reloads"
    );

    // Old connections use the new routes: add one, reload, ask on the oldest connection.
    std::fs::write(
        dir.path().join("warden.toml"),
        config(
            &bao,
            dir.path(),
            &up.url(),
            "",
            "[[routes]]\nname = \"late\"\nmatch = { path_prefix = \"/late\" }\nupstream = \"ml\"\n\
             inject = { x-api-key = \"${vault:ml/inference#other}\" }\n",
        ),
    )
    .unwrap();
    let (code, body) = reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    // Positive control for the audit count: a reload that adds a reference reads it.
    assert!(
        bao.audit_requests() > vault_before,
        "the new reference was not read"
    );
    let answer = exchange(&mut conns[0], "/late/x").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("second-key"), "{answer}");
}

#[tokio::test]
async fn check_lists_independent_errors_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cfg = format!(
        r#"[gateway]
listen = "127.0.0.1:0"

[secrets.vault]
type = "vault"
address = "http://127.0.0.1:9"
auth = {{ method = "token", token_file = "vault-token" }}
refesh = "30s"

[secrets.file]
type = "dir"
path = {run}

[upstreams.api]
url = "http://127.0.0.1:9"

[[routes]]
name = "a"
match = {{ path_prefix = "/a" }}
upstream = "nope"

[[routes]]
name = "b"
match = {{ path_prefix = "/b" }}
upstream = "api"
inject = {{ x-token = "${{file:missing_token}}" }}

[[routes]]
name = "c"
match = {{ path_prefix = "/c" }}
upstream = "api"
inject = {{ authorization = "Bearer ${{vault:ml/x#key}}" }}

[policy]
trusted_keys = ["abcd"]
epoch_tick = "0s"
max_instances = 0
"#,
        run = toml_path(&run)
    );
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, cfg).unwrap();
    let (code, out, err) = warden_tests::run_warden(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    let text = format!("{out}{err}");
    for want in [
        "warden.toml:4: secrets.vault: unknown field `refesh`",
        "warden.toml:20: routes[0].upstream: unknown upstream \"nope\"",
        "warden.toml:26: routes[1].inject.x-token",
        "${file:missing_token}",
        // Checked in validation now, with their lines, not when the plugin host starts.
        "warden.toml:35: policy.trusted_keys[0]: expected 64 hex digits",
        "warden.toml:36: policy.epoch_tick: must be between",
        "warden.toml:37: policy.max_instances: must be at least 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("unknown secret provider") && !text.contains("unknown provider"),
        "a provider with a bad key is not also unknown:\n{text}"
    );
}
