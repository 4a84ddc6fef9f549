//! Policies that see bodies (`warden:policy@0.2.0`), through the real gateway: the body
//! and response phases with the real mcp-guard, model-guard and rate-limit plugins, every
//! way around a body policy we could think of (content codings, duplicate and escaped
//! keys, content types, mixed batches, a body in many small chunks), a `@0.1.0` plugin
//! next to `@0.2.0` ones, and rate limits shared by two gateways through a real Redis.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use warden_tests::redis::Redis;
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, eventually, metric_value, plugin_wasm, repo_root};

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn test_plugin(name: &str) -> PathBuf {
    let p = repo_root()
        .join("tests/plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} not found: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// One gateway with a route per phase:
/// - `/mcp`: mcp-guard with the body and response phases (local callers may initialize,
///   list tools and call `search_*` and `get_project`);
/// - `/sse/mcp`: the same policy, for a server that answers with an event stream;
/// - `/v1/`: model-guard (sophia-small, sophia-large; `max_tokens` clamped to 512);
/// - `/small/`: model-guard with a 1 KiB body limit;
/// - `/legacy/`: a `@0.1.0` plugin next to a `@0.2.0` one.
fn config(up: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstreams.api]
url = "{up}"

[plugins.mcp-guard]
file = "{mcp}"
[plugins.model-guard]
file = "{model}"
[plugins.legacy]
file = "{legacy}"
[plugins.network-isolation]
file = "{ni}"
[plugins.misbehave]
file = "{misbehave}"

[[routes]]
name = "trap"
match = {{ path_prefix = "/trap/" }}
upstream = "api"
[[routes.policies]]
plugin = "misbehave"
response_body = {{ max = "64KiB" }}
config = {{ mode = "allow", response = "trap" }}

[[routes]]
name = "replace"
match = {{ path_prefix = "/replace/" }}
upstream = "api"
[[routes.policies]]
plugin = "misbehave"
response_body = {{ max = "64KiB" }}
config = {{ mode = "allow", response = "replace", value = "{{\"replaced\":true}}" }}

[[routes]]
name = "mcp"
match = {{ path_prefix = "/mcp" }}
upstream = "api"
[[routes.policies]]
plugin = "mcp-guard"
body = {{ max = "64KiB" }}
response_body = {{ max = "256KiB" }}
config = {{ unknown_methods = "deny", callers = [ {{ cidr = ["127.0.0.0/8", "::1/128"], methods = ["initialize", "notifications/*", "tools/list", "tools/call"], tools = ["search_*", "get_project"] }} ] }}

[[routes]]
name = "mcp-sse"
match = {{ path_prefix = "/sse/" }}
upstream = "api"
[[routes.policies]]
plugin = "mcp-guard"
body = {{ max = "64KiB" }}
response_body = {{ max = "256KiB" }}
config = {{ callers = [ {{ cidr = "127.0.0.0/8", methods = ["tools/list"] }} ] }}

[[routes]]
name = "infer"
match = {{ path_prefix = "/v1/" }}
upstream = "api"
[[routes.policies]]
plugin = "model-guard"
body = {{ max = "64KiB" }}
config = {{ on_excess = "clamp", default = {{ models = ["sophia-small", "sophia-large"], max_tokens = 512 }} }}

[[routes]]
name = "small"
match = {{ path_prefix = "/small/" }}
upstream = "api"
[[routes.policies]]
plugin = "model-guard"
body = {{ max = "1KiB" }}
config = {{ default = {{ models = ["sophia-small"], max_tokens = 512 }} }}

[[routes]]
name = "legacy"
match = {{ path_prefix = "/legacy/" }}
upstream = "api"
[[routes.policies]]
plugin = "legacy"
config = {{ deny_path_prefix = "/legacy/blocked", tag = "x-legacy" }}
[[routes.policies]]
plugin = "network-isolation"
config = {{ allow = [ {{ cidr = "127.0.0.0/8" }} ] }}
"#,
        mcp = p(&plugin_wasm("mcp_guard")),
        model = p(&plugin_wasm("model_guard")),
        legacy = p(&test_plugin("legacy_v010")),
        ni = p(&plugin_wasm("network_isolation")),
        misbehave = p(&test_plugin("misbehave")),
    )
}

fn call(id: Value, tool: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": {} } })
}

async fn post(
    gw: &Gateway,
    path: &str,
    ct: Option<&str>,
    extra: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut req = client().post(gw.url(path)).body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn deflate(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// The tool the upstream was last asked to call, from the bodies it received.
fn last_tool(up: &Echo) -> Option<String> {
    let bodies = up.bodies();
    let last = bodies.last()?;
    let v: Value = serde_json::from_slice(last).ok()?;
    v["params"]["name"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_policies_cannot_be_walked_around() {
    let up = Echo::start_named("api").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config(&up.url())).await;
    let json_ct = Some("application/json");

    // The plain forms: allowed and denied, the denial a JSON-RPC error with the id.
    let (s, b) = post(
        &gw,
        "/mcp",
        json_ct,
        &[],
        call(json!(1), "get_project").to_string(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(last_tool(&up).as_deref(), Some("get_project"));
    let (s, b) = post(
        &gw,
        "/mcp",
        json_ct,
        &[],
        call(json!("d-1"), "delete_project").to_string(),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], "d-1");
    assert_eq!(v["error"]["code"], -32001);
    let seen = up.requests();

    // Content codings are decoded and decided like the plain form, and what goes upstream
    // is the decoded body (never the encoded bytes the policy did not read).
    let denied = call(json!(2), "delete_project").to_string();
    for (coding, bytes) in [
        ("gzip", gzip(denied.as_bytes())),
        ("deflate", deflate(denied.as_bytes())),
        ("zstd", zstd::encode_all(denied.as_bytes(), 3).unwrap()),
        ("gzip, identity", gzip(denied.as_bytes())),
    ] {
        let (s, b) = post(&gw, "/mcp", json_ct, &[("content-encoding", coding)], bytes).await;
        assert_eq!(s, 403, "{coding}: {b}");
    }
    assert_eq!(
        up.requests(),
        seen,
        "no denied request reached the upstream"
    );
    let allowed = call(json!(3), "get_project").to_string();
    let (s, b) = post(
        &gw,
        "/mcp",
        json_ct,
        &[("content-encoding", "gzip")],
        gzip(allowed.as_bytes()),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let last = up.seen().pop().unwrap();
    assert!(
        last.headers.get("content-encoding").is_none(),
        "{:?}",
        last.headers
    );
    assert_eq!(
        last.headers["content-length"].to_str().unwrap(),
        allowed.len().to_string()
    );
    assert_eq!(up.bodies().last().unwrap(), allowed.as_bytes());
    // A coding the gateway cannot read is refused, and so is a compression bomb.
    let (s, _) = post(
        &gw,
        "/mcp",
        json_ct,
        &[("content-encoding", "compress")],
        denied.clone(),
    )
    .await;
    assert_eq!(s, 415);
    let bomb = gzip(&vec![b' '; 4 << 20]);
    let (s, b) = post(&gw, "/mcp", json_ct, &[("content-encoding", "gzip")], bomb).await;
    assert_eq!(s, 413, "{b}");

    // Ambiguous JSON gets 400 before the policy decides: a duplicate key (also written
    // with escapes), a BOM, trailing data, a lone surrogate, a huge integer id.
    for body in [
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get_project","name":"delete_project"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get_project","n\u0061me":"delete_project"}}"#.to_string(),
        format!("\u{feff}{}", call(json!(4), "get_project")),
        format!("{}{}", call(json!(4), "get_project"), call(json!(5), "delete_project")),
        r#"{"jsonrpc":"2.0","id":"\ud800","method":"tools/call","params":{"name":"get_project"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call","params":{"name":"get_project"}}"#.to_string(),
    ] {
        let (s, b) = post(&gw, "/mcp", json_ct, &[], body.clone()).await;
        assert_eq!(s, 400, "{body}: {b}");
    }
    // Keys equal once case-folded are duplicates too: a case-insensitive decoder upstream
    // (Go's) would read `NAME`, or `argument\u017f`, as the key the policy checked.
    for body in [
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get_project","NAME":"delete_project"}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get_project","arguments":{},"argument\u017f":{"id":1}}}"#,
    ] {
        let (s, b) = post(&gw, "/mcp", json_ct, &[], body).await;
        assert_eq!(s, 400, "{body}: {b}");
    }
    // An upgrade would open a tunnel no policy reads: refused on an inspecting route, even
    // without a body.
    let out = warden_tests::raw_exchange(
        gw.addr,
        b"GET /mcp HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A `Connection` header naming the content type does not strip it after the check.
    let body = call(json!(12), "get_project").to_string();
    let raw = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: content-type, close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = warden_tests::raw_exchange(gw.addr, raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        up.seen().pop().unwrap().headers["content-type"],
        "application/json"
    );

    // A key written with escapes is the key: it is decided as `name`.
    let (s, _) = post(
        &gw,
        "/mcp",
        json_ct,
        &[],
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"n\u0061me":"delete_project"}}"#,
    )
    .await;
    assert_eq!(s, 403);

    // Content types the upstream might parse anyway are refused.
    for ct in [
        None,
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=utf-16"),
    ] {
        let (s, _) = post(&gw, "/mcp", ct, &[], denied.clone()).await;
        assert_eq!(s, 415, "{ct:?}");
    }
    let (s, _) = post(
        &gw,
        "/mcp",
        Some("application/vnd.api+json"),
        &[],
        call(json!(7), "get_project").to_string(),
    )
    .await;
    assert_eq!(s, 200, "application/*+json is JSON");
    let raw = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{denied}",
        denied.len()
    );
    let out = warden_tests::raw_exchange(gw.addr, raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // Batches: any denied element denies the whole batch; an empty one is invalid.
    let mixed = json!([
        call(json!(8), "get_project"),
        call(json!(9), "delete_project")
    ]);
    let before = up.requests();
    let (s, b) = post(&gw, "/mcp", json_ct, &[], mixed.to_string()).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(up.requests(), before);
    let (s, _) = post(&gw, "/mcp", json_ct, &[], "[]").await;
    assert_eq!(s, 400);
    // Method names are matched exactly.
    let mut odd = call(json!(10), "get_project");
    odd["method"] = json!("Tools/Call");
    let (s, _) = post(&gw, "/mcp", json_ct, &[], odd.to_string()).await;
    assert_eq!(s, 403);

    // A body split into one-byte chunks is judged whole: denied as the plain form, and an
    // allowed one reaches the upstream whole, with its length.
    for (tool, want) in [("delete_project", "403"), ("get_project", "200")] {
        let body = call(json!(11), tool).to_string();
        let mut raw = String::from(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        );
        for b in body.bytes() {
            raw.push_str(&format!("1\r\n{}\r\n", b as char));
        }
        raw.push_str("0\r\n\r\n");
        let out = warden_tests::raw_exchange(gw.addr, raw.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {want}")),
            "{tool}: {out}"
        );
    }
    assert_eq!(
        up.bodies().last().unwrap().len(),
        call(json!(11), "get_project").to_string().len()
    );
    assert_eq!(last_tool(&up).as_deref(), Some("get_project"));

    // Too large for the body phase: 413 before any plugin runs.
    let verdicts = |m: &str| {
        metric_value(
            m,
            "warden_policy_verdicts_total",
            &["plugin=\"model-guard\"", "route=\"small\""],
        )
    };
    let before = verdicts(&gw.metrics().await);
    let big = json!({ "model": "sophia-small", "messages": [ { "role": "user", "content": "x".repeat(2000) } ] });
    let (s, b) = post(&gw, "/small/chat", json_ct, &[], big.to_string()).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(
        verdicts(&gw.metrics().await),
        before,
        "no plugin ran for the oversized body"
    );

    // A body a policy replaces reaches the upstream with its new length.
    let ask = json!({ "model": "sophia-small", "max_tokens": 4000, "messages": [ { "role": "user", "content": "hi" } ] });
    let (s, b) = post(&gw, "/v1/chat/completions", json_ct, &[], ask.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let sent: Value = serde_json::from_slice(up.bodies().last().unwrap()).unwrap();
    assert_eq!(sent["max_tokens"], 512);
    assert_eq!(sent["model"], "sophia-small");
    let last = up.seen().pop().unwrap();
    assert_eq!(
        last.headers["content-length"].to_str().unwrap(),
        up.bodies().last().unwrap().len().to_string()
    );
    let (s, _) = post(
        &gw,
        "/v1/chat/completions",
        json_ct,
        &[],
        json!({ "model": "gpt-5", "max_tokens": 5, "messages": [] }).to_string(),
    )
    .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_phase_filters_json_and_leaves_streams_alone() {
    let up = Echo::start_named("api").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config(&up.url())).await;
    let list = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }).to_string();

    // tools/list through the gateway shows only the tools this caller may call.
    let (s, b) = post(&gw, "/mcp", Some("application/json"), &[], list.clone()).await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search_projects", "get_project"]);
    // Also when the client asked for a compressed answer: the upstream is asked for
    // identity, so the filter reads what it filters.
    let r = client()
        .post(gw.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip")
        .body(list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 2, "{v}");
    assert!(
        up.seen()
            .pop()
            .unwrap()
            .headers
            .get("accept-encoding")
            .is_none()
    );
    // Nor can a range ask for a fragment the filter cannot read.
    let r = client()
        .post(gw.url("/mcp"))
        .header("content-type", "application/json")
        .header("range", "bytes=100-")
        .body(list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.seen().pop().unwrap().headers.get("range").is_none());

    // An event stream passes through untouched, even with the response phase on.
    let r = client()
        .post(gw.url("/sse/mcp?sse=1"))
        .header("content-type", "application/json")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(text.starts_with("event: message\ndata: "), "{text}");
    assert!(text.contains("delete_project"), "untouched: {text}");

    // A policy replacing a JSON response: the client gets the new body with its length;
    // one failing in the response phase fails closed with 502 (the upstream's answer never
    // goes out unchecked).
    let r = client().get(gw.url("/replace/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "17");
    assert_eq!(r.text().await.unwrap(), r#"{"replaced":true}"#);
    let r = client().get(gw.url("/trap/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "policy unavailable");
    assert_eq!(v["policy"], "misbehave");

    // A 0.1.0 plugin next to a 0.2.0 one, each behaving as it was built to.
    let r = client().get(gw.url("/legacy/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-legacy"][0], "GET legacy", "{v}");
    let r = client()
        .get(gw.url("/legacy/blocked/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "legacy says no");
}

/// A gateway limiting `x-api-key` values to `limit` requests a minute with the
/// rate-limit plugin, its buckets in `redis`.
fn limited(up: &str, redis: &str, limit: u32) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[policy]
rate_limit_store = {{ redis = "{redis}", fallback = "local", timeout = "200ms" }}
[upstreams.api]
url = "{up}"
[plugins.rate-limit]
file = "{rl}"
[[routes]]
name = "infer"
match = {{ path_prefix = "/" }}
upstream = "api"
[[routes.policies]]
plugin = "rate-limit"
config = {{ key = "header", header = "x-api-key", limit = {limit}, window = "1m" }}
"#,
        rl = p(&plugin_wasm("rate_limit")),
    )
}

async fn get_with_key(gw: &Gateway, key: &str) -> reqwest::Response {
    client()
        .get(gw.url("/v1/infer"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_through_redis_and_fall_back_when_it_goes() {
    let mut redis = Redis::start();
    let up = Echo::start_named("api").await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(da.path(), &limited(&up.url(), &redis.url(), 5)).await;
    let b = Gateway::start(db.path(), &limited(&up.url(), &redis.url(), 5)).await;
    // Both must be talking to Redis before the count starts (connecting is lazy).
    for gw in [&a, &b] {
        eventually(
            "the rate-limit store is up",
            Duration::from_secs(10),
            || async {
                let _ = get_with_key(gw, "warm-up").await;
                metric_value(&gw.metrics().await, "warden_rate_limit_store_up", &[]) == 1.0
            },
        )
        .await;
    }

    // One budget of 5 across both gateways: 3 through A, 2 through B, then 429 on either.
    for gw in [&a, &a, &a, &b, &b] {
        let r = get_with_key(gw, "team-1").await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().contains_key("ratelimit-policy"),
            "{:?}",
            r.headers()
        );
        assert!(r.headers().contains_key("ratelimit"), "{:?}", r.headers());
    }
    for gw in [&a, &b] {
        let r = get_with_key(gw, "team-1").await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Another key has its own budget.
    assert_eq!(get_with_key(&b, "team-2").await.status(), 200);

    // Redis goes away: the gateways keep deciding, on local buckets, and count it.
    redis.stop();
    let r = get_with_key(&a, "team-3").await;
    assert_eq!(
        r.status(),
        200,
        "no hang and no failure while the store is down"
    );
    for _ in 0..4 {
        assert_eq!(get_with_key(&a, "team-3").await.status(), 200);
    }
    assert_eq!(
        get_with_key(&a, "team-3").await.status(),
        429,
        "local limits still hold"
    );
    let m = a.metrics().await;
    assert!(
        metric_value(&m, "warden_rate_limit_store_fallbacks_total", &[]) >= 6.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "warden_rate_limit_store_up", &[]), 0.0);

    // Redis comes back: shared limits again.
    redis.resume();
    eventually("the store recovers", Duration::from_secs(15), || async {
        let _ = get_with_key(&a, "probe").await;
        metric_value(&a.metrics().await, "warden_rate_limit_store_up", &[]) == 1.0
    })
    .await;
    eventually("b recovers", Duration::from_secs(15), || async {
        let _ = get_with_key(&b, "probe").await;
        metric_value(&b.metrics().await, "warden_rate_limit_store_up", &[]) == 1.0
    })
    .await;
    for gw in [&b, &b, &a, &a, &a] {
        assert_eq!(get_with_key(gw, "team-4").await.status(), 200);
    }
    assert_eq!(get_with_key(&b, "team-4").await.status(), 429);
}
