//! Tried as an attacker would: requests that try to reach a protected route's upstream
//! past its policy (path encodings, host spellings, upgrade tunnels, method overrides) and
//! requests that try to read injected secrets back (TRACE, the admin API). The real
//! `warden` binary with the real network-isolation plugin, real upstreams, raw TCP clients
//! (HTTP libraries normalize paths before sending, which would hide what is tested).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, plugin_wasm, raw_exchange, run_warden};

/// The demo's routes: `/api` serves local GETs, `/api/admin` only the ops workload, and the
/// host `admin.internal` only the ops workload. A catch-all route with no policy sits under
/// them all, so any request that skips a protected route reaches the upstream with 200.
fn demo_like(upstream: &str, extra_gateway: &str, extra_routes: &str) -> String {
    let ni = plugin_wasm("network_isolation").display().to_string();
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
{extra_gateway}

[admin]
listen = "127.0.0.1:0"

[upstreams.sophia-api]
url = "{upstream}"

[plugins.network-isolation]
file = "{ni}"

[[routes]]
name = "sophia-api"
match = {{ path_prefix = "/api" }}
upstream = "sophia-api"

[[routes.policies]]
plugin = "network-isolation"
config = {{ rule_set = "sophia-api", allow = [
    {{ identity = "spiffe://sophia/*" }},
    {{ cidr = "127.0.0.0/8", methods = ["GET", "HEAD"] }},
] }}

[[routes]]
name = "sophia-admin"
match = {{ path_prefix = "/api/admin" }}
upstream = "sophia-api"

[[routes.policies]]
plugin = "network-isolation"
config = {{ rule_set = "sophia-ops", allow = [ {{ identity = "spiffe://sophia/ops" }} ] }}

[[routes]]
name = "admin-host"
match = {{ host = "admin.internal" }}
upstream = "sophia-api"

[[routes.policies]]
plugin = "network-isolation"
config = {{ rule_set = "ops-host", allow = [ {{ identity = "spiffe://sophia/ops" }} ] }}

[[routes]]
name = "open"
match = {{ path_prefix = "/" }}
upstream = "sophia-api"
{extra_routes}
"#
    )
}

/// Send raw bytes, read until the server closes (or 10 s), return what came back.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    raw_exchange(addr, request, Duration::from_secs(10)).await
}

/// One `GET target` with the given extra header lines, connection closed after it.
async fn get(addr: SocketAddr, target: &str, headers: &str) -> String {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"))
}

fn body_json(resp: &str) -> Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// At least 30 spellings of `/api/admin/users`. Each must be refused (400) or reach the
/// admin route's policy (403 naming `sophia-admin`), never the open route's upstream.
const ADMIN_SPELLINGS: &[&str] = &[
    "/api/admin/users",
    "/api//admin/users",
    "//api/admin/users",
    "/api///admin//users",
    "/api/adm%69n/users",
    "/api/%61dmin/users",
    "/api/admi%6e/users",
    "/api/%61%64%6d%69%6e/users",
    "/api/%61%64%6D%69%6E/users",
    "/%61pi/admin/users",
    "/api//%61dmin//users",
    "/api/admin%2fusers",
    "/api/admin%2Fusers",
    "/api%2fadmin/users",
    "/api/admin\\users",
    "/api\\admin\\users",
    "/api/admin%5cusers",
    "/api/admin%5Cusers",
    "/api/admin%00/users",
    "/api/admin%09/users",
    "/api/admin%7f/users",
    "/api/admin/users%00",
    "/api/admin;/users",
    "/api/admin;jsessionid=1/users",
    "/api/x/..;/admin/users",
    "/api/%c0%afadmin/users",
    "/api/admin%c0%80/users",
    "/api/%e0%80%afadmin/users",
    "/api/%u0061dmin/users",
    "/api/%zzadmin/users",
    "/api/admin%/users",
    "/api/x/../admin/users",
    "/api/./admin/users",
    "/api/x/%2e%2e/admin/users",
    "/api/x/.%2E/admin/users",
    "/api/%2e/admin/users",
    "/api/ad%6din%2f..%2fusers",
    "/api/admin/users?next=/api/x",
    "http://127.0.0.1/api/admin/users",
    "http://127.0.0.1/api//adm%69n/users",
];

#[tokio::test]
async fn encodings_of_a_protected_prefix_never_reach_the_open_route() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &demo_like(&up.url(), "", "")).await;

    // Positive controls: the open route serves local GETs, and a path the upstream gets
    // in normalized form, query byte for byte.
    let r = get(
        gw.addr,
        "/api/%76%31/pro%6Aects?q=%2f%2e%2E&x=a//b",
        "Host: x\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    let echo = body_json(&r);
    assert_eq!(echo["path"], "/api/v1/projects", "{echo}");
    assert_eq!(echo["query"], "q=%2f%2e%2E&x=a//b", "{echo}");
    assert_eq!(echo["server"], "echo");
    let seen_before = up.requests();
    assert_eq!(seen_before, 1);

    let mut outcomes = Vec::new();
    for target in ADMIN_SPELLINGS {
        let r = get(gw.addr, target, "Host: x\r\n").await;
        let code = status(&r);
        match code {
            400 => {
                let detail = body_json(&r)["detail"].as_str().unwrap_or("").to_string();
                assert!(!detail.is_empty(), "{target}: 400 without a reason: {r}");
                outcomes.push(format!("{target} → 400 {detail}"));
            }
            403 => {
                assert_eq!(
                    body_json(&r)["route"],
                    "sophia-admin",
                    "{target} was denied by another route's policy: {r}"
                );
                outcomes.push(format!("{target} → 403"));
            }
            _ => panic!("{target} got {code}, expected 400 or 403:\n{r}"),
        }
    }
    assert!(ADMIN_SPELLINGS.len() >= 30);
    assert_eq!(
        up.requests(),
        seen_before,
        "a spelling of /api/admin reached the upstream: {:?}\n{}",
        up.seen().last(),
        outcomes.join("\n")
    );
    // Each refusal names its own reason.
    let reasons: std::collections::BTreeSet<&str> = outcomes
        .iter()
        .filter_map(|o| o.split(" → 400 ").nth(1))
        .collect();
    for want in [
        "path has an escaped slash (%2F or %5C)",
        "path has a backslash",
        "path has a control character",
        "path has a path parameter (';')",
        "path has invalid or overlong UTF-8",
        "path has an invalid percent-encoding",
        "path has dot segments",
    ] {
        assert!(reasons.contains(want), "no {want:?} among {reasons:?}");
    }

    // Lower-case methods are not `GET` to the router or the policy: refused.
    let r = raw(
        gw.addr,
        b"get /api/admin/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(up.requests(), seen_before);
}

#[tokio::test]
async fn host_spellings_reach_the_host_route_and_ambiguous_hosts_are_refused() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &demo_like(&up.url(), "", "")).await;

    // Positive control: another host reaches the open route.
    let r = get(gw.addr, "/x", "Host: other.internal\r\n").await;
    assert_eq!(status(&r), 200, "{r}");
    let seen = up.requests();

    for host in [
        "admin.internal",
        "ADMIN.Internal",
        "admin.internal.",
        "admin.internal:8080",
        "admin.internal.:80",
    ] {
        let r = get(gw.addr, "/x", &format!("Host: {host}\r\n")).await;
        assert_eq!(status(&r), 403, "Host: {host}\n{r}");
        assert_eq!(body_json(&r)["route"], "admin-host", "Host: {host}");
    }
    for host in [
        "admin.internal..",
        "admin%2einternal",
        "user@admin.internal",
        "admin.internal:80x",
        "admin internal",
    ] {
        let r = get(gw.addr, "/x", &format!("Host: {host}\r\n")).await;
        assert_eq!(status(&r), 400, "Host: {host}\n{r}");
    }
    // Two Host headers (RFC 9112 §3.2), either order, same or different values.
    for hosts in [
        "Host: other.internal\r\nHost: admin.internal\r\n",
        "Host: admin.internal\r\nHost: other.internal\r\n",
        "Host: other.internal\r\nHost: other.internal\r\n",
    ] {
        let r = get(gw.addr, "/x", hosts).await;
        assert_eq!(status(&r), 400, "{hosts}\n{r}");
    }
    // HTTP/1.1 without Host.
    let r = get(gw.addr, "/x", "").await;
    assert_eq!(status(&r), 400, "{r}");
    // Absolute form: the target's authority wins over Host.
    let r = get(
        gw.addr,
        "http://admin.internal/x",
        "Host: other.internal\r\n",
    )
    .await;
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(body_json(&r)["route"], "admin-host");
    assert_eq!(up.requests(), seen, "{:?}", up.seen().last());
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &demo_like(&up.url(), "", "")).await;

    let mut send = warden_tests::h2c(gw.addr).await;
    let req = |host: Option<&str>| {
        let mut b = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri(format!("http://other.internal:{}/x", gw.addr.port()));
        if let Some(h) = host {
            b = b.header(http::header::HOST, h);
        }
        b.body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let ok = send.send_request(req(None)).await.unwrap();
    assert_eq!(ok.status(), 200, "positive control");
    let same = send
        .send_request(req(Some(&format!("other.internal:{}", gw.addr.port()))))
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
    let seen = up.requests();
    let bad = send
        .send_request(req(Some("admin.internal")))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(up.requests(), seen);
}

/// An upgrade request to `path` asking for `protocol`, then (pipelined in the same
/// write) a request for the protected prefix: whatever the first answer, the second must
/// never reach the upstream unseen by routing and policy.
async fn upgrade_then_smuggle(addr: SocketAddr, path: &str, protocol: &str, extra: &str) -> String {
    raw_exchange(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade{extra}\r\nUpgrade: {protocol}\r\n\r\n\
             GET /api/admin/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        // Refused or plain answers close the connection at once; an opened tunnel stays.
        Duration::from_secs(2),
    )
    .await
}

#[tokio::test]
async fn only_allowed_upgrades_open_a_tunnel() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra_routes = r#"
[[routes]]
name = "no-upgrades"
match = { path_prefix = "/plain" }
upstream = "sophia-api"
upgrades = []

[[routes]]
name = "strict"
match = { path_prefix = "/strict" }
upstream = "sophia-api"
on_disallowed_upgrade = "reject"
"#;
    let gw = Gateway::start(dir.path(), &demo_like(&up.url(), "", extra_routes)).await;

    // h2c with and without HTTP2-Settings, TLS, a made-up protocol: the upstream here
    // accepts any upgrade with 101, so a forwarded Upgrade would open a tunnel.
    for (protocol, extra) in [
        (
            "h2c",
            ", HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        ("h2c", ""),
        ("tls/1.2", ""),
        ("TLS/1.0, HTTP/1.1", ""),
        ("made-up-protocol", ""),
        ("h2c, made-up-protocol", ""),
    ] {
        let before = up.seen().len();
        let out = upgrade_then_smuggle(gw.addr, "/api/x", protocol, extra).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{protocol}: {out}");
        assert!(!out.contains(" 101 "), "{protocol} opened a tunnel: {out}");
        // The pipelined request was read by Warden as a request: routed, and denied by the
        // admin route's policy.
        let second = out.split("HTTP/1.1 ").nth(2).unwrap_or("");
        assert!(second.starts_with("403"), "{protocol}: {out}");
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{protocol}: {seen:?}");
        let forwarded = &seen[before];
        assert_eq!(forwarded.uri, "/api/x");
        for h in ["upgrade", "http2-settings"] {
            assert!(
                !forwarded.headers.contains_key(h),
                "{protocol}: {h} forwarded: {:?}",
                forwarded.headers
            );
        }
    }

    // WebSocket still works, with bytes through the tunnel.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"tunnel-bytes").await.unwrap();
    let mut got = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"tunnel-bytes");
    // Asked for websocket and h2c together: only websocket goes upstream.
    let before = up.seen().len();
    let out = upgrade_then_smuggle(gw.addr, "/api/ws", "h2c, websocket", "").await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert_eq!(up.seen()[before].headers["upgrade"], "websocket");

    // An upstream that switches to another protocol than the one allowed and asked for,
    // or switches unasked: 502, no tunnel, and the connection closes so nothing pipelined
    // is read.
    let before = up.seen().len();
    let out = upgrade_then_smuggle(gw.addr, "/api/ws-other", "websocket", "").await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    let out = get(gw.addr, "/switch", "Host: x\r\n").await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        up.seen()[before..]
            .iter()
            .all(|s| !s.uri.starts_with("/api/admin"))
    );

    // A route with upgrades off forwards a plain request; a strict route refuses.
    let before = up.seen().len();
    let out = upgrade_then_smuggle(gw.addr, "/plain/ws", "websocket", "").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!up.seen()[before].headers.contains_key("upgrade"));
    let out = upgrade_then_smuggle(gw.addr, "/strict/ws", "h2c", "").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = upgrade_then_smuggle(gw.addr, "/strict/ws", "websocket", "").await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
}

/// A plain gateway: one route that injects a secret, one that does not.
fn inject_config(upstream: &str, secrets_dir: &std::path::Path, extra_gateway: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
{extra_gateway}

[admin]
listen = "127.0.0.1:0"
token = "${{file:admin_token}}"

[secrets.file]
type = "dir"
path = "{dir}"

[upstreams.api]
url = "{upstream}"

[[routes]]
name = "tokens"
match = {{ path_prefix = "/tok" }}
upstream = "api"
inject = {{ authorization = "Bearer ${{file:tok}}" }}

[[routes]]
name = "plain"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        dir = secrets_dir.display()
    )
}

const TOKEN: &str = "canary-injected-7d1e";
const ADMIN: &str = "admin-token-93b1";

fn secrets_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let s = dir.join("run");
    std::fs::create_dir_all(&s).unwrap();
    std::fs::write(s.join("tok"), TOKEN).unwrap();
    std::fs::write(s.join("admin_token"), ADMIN).unwrap();
    s
}

#[tokio::test]
async fn trace_never_reflects_injected_secrets_and_overrides_are_stripped() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = secrets_dir(dir.path());
    let gw = Gateway::start(dir.path(), &inject_config(&up.url(), &s, "")).await;

    // Positive control: the secret is injected on a GET.
    let r = get(gw.addr, "/tok/x", "Host: x\r\n").await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        body_json(&r)["headers"]["authorization"][0],
        format!("Bearer {TOKEN}")
    );
    let seen = up.requests();

    for method in ["TRACE", "TRACK"] {
        for path in ["/tok/x", "/other"] {
            let r = raw(
                gw.addr,
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert_eq!(status(&r), 405, "{method} {path}: {r}");
            assert!(!r.contains(TOKEN));
            assert!(r.to_ascii_lowercase().contains("\r\nallow: "), "{r}");
        }
    }
    let r = raw(
        gw.addr,
        b"trace /tok/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    let r = raw(
        gw.addr,
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 405, "{r}");
    assert_eq!(up.requests(), seen, "the upstream saw a refused method");

    // Method-override headers are stripped by default.
    let r = get(
        gw.addr,
        "/x",
        "Host: x\r\nX-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\n",
    )
    .await;
    assert_eq!(status(&r), 200);
    let headers = body_json(&r)["headers"].clone();
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(headers.get(h).is_none(), "{h} forwarded: {headers}");
    }
}

#[tokio::test]
async fn allow_trace_opts_in_except_where_secrets_are_injected() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = secrets_dir(dir.path());
    let gw = Gateway::start(
        dir.path(),
        &inject_config(
            &up.url(),
            &s,
            "allow_trace = true\nmethod_override = \"keep\"",
        ),
    )
    .await;

    let r = raw(
        gw.addr,
        b"TRACE /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body_json(&r)["method"], "TRACE");
    let seen = up.requests();
    let r = raw(
        gw.addr,
        b"TRACE /tok/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 405, "{r}");
    assert!(!r.contains(TOKEN), "{r}");
    assert_eq!(
        up.requests(),
        seen,
        "TRACE reached an injecting route's upstream"
    );

    let r = get(
        gw.addr,
        "/x",
        "Host: x\r\nX-HTTP-Method-Override: DELETE\r\n",
    )
    .await;
    assert_eq!(
        body_json(&r)["headers"]["x-http-method-override"][0],
        "DELETE"
    );
}

#[tokio::test]
async fn admin_endpoints_need_the_token_except_the_probes() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = secrets_dir(dir.path());
    let gw = Gateway::start(dir.path(), &inject_config(&up.url(), &s, "")).await;
    let c = client();
    for path in ["/healthz", "/readyz"] {
        let r = c.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for path in ["/config", "/secrets", "/metrics"] {
        let r = c.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(!r.text().await.unwrap().contains("file:tok"), "{path}");
        let r = c
            .get(gw.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = c
            .get(gw.admin_url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains(TOKEN) && !text.contains(ADMIN),
            "{path}: {text}"
        );
        if path == "/config" {
            assert!(text.contains("${file:tok}"), "{text}");
        }
    }
}

#[tokio::test]
async fn check_refuses_literal_credentials_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"[gateway]
listen = "127.0.0.1:0"
sensitive_headers = ["X-Internal-Token"]

[admin]
listen = "127.0.0.1:0"

[upstreams.api]
url = "http://127.0.0.1:9"
inject = { cookie = "session=abc" }

[[routes]]
name = "a"
match = { path_prefix = "/a" }
upstream = "api"
inject = { authorization = "Basic dXNlcjpwYXNz", x-env = "prod" }

[[routes]]
name = "b"
match = { path_prefix = "/b" }
upstream = "api"
inject = { x-internal-token = "t0k3n" }

[[routes]]
name = "c"
match = { path_prefix = "/c" }
upstream = "api"
allow_literal = true
inject = { x-api-key = "legacy-key" }
"#;
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, cfg).unwrap();
    let (code, out, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    let text = format!("{out}{err}");
    for (line, key) in [
        (10, "upstreams.api.inject.cookie"),
        (16, "routes[0].inject.authorization"),
        (22, "routes[1].inject.x-internal-token"),
    ] {
        let want = format!("warden.toml:{line}: {key}: a literal value for the credential header");
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(text.contains("write a secret reference instead"), "{text}");
    assert!(
        !text.contains("x-env"),
        "non-credential literals are fine: {text}"
    );
    assert!(
        !text.contains("routes[2]"),
        "allow_literal opts out: {text}"
    );
    // No value is echoed back.
    for v in ["dXNlcjpwYXNz", "session=abc", "t0k3n", "legacy-key"] {
        assert!(!text.contains(v), "{v} in check output");
    }
}

#[tokio::test]
async fn check_refuses_route_patterns_and_upgrades_no_request_can_match() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"[gateway]
listen = "127.0.0.1:0"
escaped_slashes = "sometimes"

[upstreams.api]
url = "http://127.0.0.1:9"

[[routes]]
name = "a"
match = { path_prefix = "/api/%61dmin", host = "admin.internal:80" }
upstream = "api"
upgrades = ["h2c"]

[[routes]]
name = "b"
match = { path = "/api//x" }
upstream = "api"
"#;
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, cfg).unwrap();
    let (code, out, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    let text = format!("{out}{err}");
    for want in [
        "warden.toml:3: gateway.escaped_slashes",
        "warden.toml:10: routes[0].match.path_prefix",
        "warden.toml:10: routes[0].match.host",
        "warden.toml:12: routes[0].upgrades[0]: h2c upgrades are never forwarded",
        "warden.toml:16: routes[1].match.path",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
