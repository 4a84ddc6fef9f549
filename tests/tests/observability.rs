//! Following traffic: W3C trace context and spans in a real OTLP receiver, the access log's
//! fields and selection, admin request logging, the `source` label and the whole-exchange
//! histogram, route and upstream header rules, and upstream host names re-resolved.
//! The real `warden` binary, real upstreams, real plugins.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use warden_tests::otlp::{OtlpReceiver, ReceivedSpan};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, eventually, metric_value, plugin_wasm, run_warden};

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A secret directory with one canary credential.
fn secret_dir(dir: &Path, files: &[(&str, &str)]) -> String {
    let d = dir.join("run-secrets");
    std::fs::create_dir_all(&d).unwrap();
    for (name, value) in files {
        std::fs::write(d.join(name), value).unwrap();
    }
    p(&d)
}

/// JSON access-log lines so far.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "warden::access")
        .collect()
}

async fn access_line_for(gw: &Gateway, request_id: &str) -> Value {
    let mut found = None;
    eventually(
        &format!("the access line of {request_id}"),
        Duration::from_secs(10),
        || {
            let hit = access_lines(gw)
                .into_iter()
                .find(|v| v["request_id"] == request_id);
            let ok = hit.is_some();
            found = hit;
            async move { ok }
        },
    )
    .await;
    found.unwrap()
}

/// `/internal` on upstream `api`, open only to 10.0.0.0/8: every test client is denied
/// by the network-isolation plugin.
fn internal_only_route() -> String {
    format!(
        r#"
[plugins.network-isolation]
file = "{}"

[[routes]]
name = "internal"
match = {{ path_prefix = "/internal" }}
upstream = "api"
[[routes.policies]]
plugin = "network-isolation"
config = {{ rule_set = "internal-only", allow = [ {{ cidr = "10.0.0.0/8" }} ] }}
"#,
        p(&plugin_wasm("network_isolation"))
    )
}

/// Send `req` as request `request_id`, read its whole answer, and return the status and
/// the exchange's access-log line.
async fn logged(gw: &Gateway, req: reqwest::RequestBuilder, request_id: &str) -> (u16, Value) {
    let r = req.header("x-request-id", request_id).send().await.unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    (status, access_line_for(gw, request_id).await)
}

fn traceparent_seen(echo: &Value) -> String {
    echo["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {echo}"))
        .to_string()
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str, trace: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name == name && s.trace_id == trace)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_or_start_and_reach_a_real_otlp_receiver_with_parent_links() {
    let up = Echo::start().await;
    let rx = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let canary = "span-canary-secret-4411";
    let secrets = secret_dir(dir.path(), &[("api_key", canary)]);
    let cfg = |ratio: f64| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[telemetry]
otlp = {{ endpoint = "{otlp}", sample_ratio = {ratio}, service_name = "warden-test" }}
[secrets.files]
type = "dir"
path = "{secrets}"
[plugins.header-guard]
file = "{hg}"
[upstreams.api]
url = "{up}"

{internal}

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "api"
inject = {{ x-api-key = "${{files:api_key}}" }}
[[routes.policies]]
plugin = "header-guard"
config = {{ set = {{ "x-gateway" = "warden" }} }}
"#,
            otlp = rx.url(),
            secrets = secrets,
            internal = internal_only_route(),
            hg = p(&plugin_wasm("header_guard")),
            up = up.url(),
        )
    };
    let mut gw = Gateway::start(dir.path(), &cfg(1.0)).await;
    let c = client();

    // Continued: the incoming trace id, a new span id for the upstream, tracestate kept.
    let r = c
        .get(gw.url("/api/continued"))
        .header(
            "traceparent",
            format!("00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
        )
        .header("tracestate", "vendor=abc")
        .header("x-request-id", "rid-continued")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    let tp = traceparent_seen(&echo);
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], INCOMING_TRACE, "{tp}");
    assert_ne!(
        parts[2], INCOMING_PARENT,
        "the upstream's parent is Warden's span: {tp}"
    );
    assert_eq!(parts[3], "01");
    assert_eq!(echo["headers"]["tracestate"][0], "vendor=abc");
    let upstream_parent = parts[2].to_string();

    // Started: no traceparent in, a fresh sampled one out.
    let r = c.get(gw.url("/api/fresh")).send().await.unwrap();
    let echo: Value = r.json().await.unwrap();
    let tp = traceparent_seen(&echo);
    let fresh: Vec<&str> = tp.split('-').collect();
    let fresh_trace = fresh[1].to_string();
    assert_eq!(fresh_trace.len(), 32);
    assert_ne!(fresh_trace, "0".repeat(32));
    assert_ne!(fresh_trace, INCOMING_TRACE);

    // A denial: the policy span says so.
    let r = c
        .get(gw.url("/internal/x"))
        .header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Shutdown flushes what is buffered (the batch interval is 5 s; this is sooner).
    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(15)).await.expect("exits");
    let spans = rx.spans();
    assert!(
        rx.paths().iter().all(|p| p == "/v1/traces") && !rx.paths().is_empty(),
        "{:?}",
        rx.paths()
    );
    assert!(spans.iter().all(|s| s.service == "warden-test"));

    let req = one(&spans, "warden.request", INCOMING_TRACE);
    assert_eq!(req.len(), 1, "{spans:#?}");
    let req = req[0];
    assert_eq!(
        req.parent_span_id, INCOMING_PARENT,
        "continues the caller's span"
    );
    assert_eq!(req.kind, 2, "server span");
    assert_eq!(req.attributes["http.route"], "api");
    assert_eq!(req.attributes["http.response.status_code"], "200");
    assert_eq!(req.attributes["url.path"], "/api/continued");
    for (name, expect) in [
        ("warden.route", 1),
        ("warden.policy", 1),
        ("warden.secrets", 1),
        ("warden.upstream", 1),
    ] {
        let children = one(&spans, name, INCOMING_TRACE);
        assert_eq!(children.len(), expect, "{name}: {spans:#?}");
        assert_eq!(
            children[0].parent_span_id, req.span_id,
            "{name} hangs under the request span"
        );
    }
    let policy = one(&spans, "warden.policy", INCOMING_TRACE)[0];
    assert_eq!(policy.attributes["warden.plugin"], "header-guard");
    assert_eq!(policy.attributes["warden.verdict"], "allow");
    let secrets_span = one(&spans, "warden.secrets", INCOMING_TRACE)[0];
    assert_eq!(
        secrets_span.attributes["warden.secret.headers"],
        "x-api-key"
    );
    let attempt = one(&spans, "warden.upstream", INCOMING_TRACE)[0];
    assert_eq!(attempt.kind, 3, "client span");
    assert_eq!(
        attempt.span_id, upstream_parent,
        "the upstream's traceparent names the attempt span"
    );
    assert_eq!(attempt.attributes["warden.retry"], "0");
    assert_eq!(attempt.attributes["server.address"], up.addr.to_string());
    assert_eq!(attempt.attributes["http.response.status_code"], "200");
    let all = format!("{spans:?}");
    assert!(!all.contains(canary), "a secret value reached a span");

    let fresh_req = one(&spans, "warden.request", &fresh_trace);
    assert_eq!(fresh_req.len(), 1);
    assert_eq!(
        fresh_req[0].parent_span_id, "",
        "a new trace has a root span"
    );

    let denied = "11111111111111111111111111111111";
    let deny = one(&spans, "warden.policy", denied);
    assert_eq!(deny[0].attributes["warden.plugin"], "network-isolation");
    assert_eq!(deny[0].attributes["warden.verdict"], "deny");
    assert!(one(&spans, "warden.upstream", denied).is_empty());
    assert_eq!(
        one(&spans, "warden.request", denied)[0].attributes["http.response.status_code"],
        "403"
    );

    // Sampled out: context still goes upstream (flag 00), and no span is exported.
    let before = rx.spans().len();
    let gw = Gateway::start(dir.path(), &cfg(0.0)).await;
    let echo: Value = c
        .get(gw.url("/api/unsampled"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = traceparent_seen(&echo);
    assert!(tp.ends_with("-00"), "not sampled: {tp}");
    // An incoming sampled trace is still followed (parent-based).
    let followed = "33333333333333333333333333333333";
    let r = c
        .get(gw.url("/api/followed"))
        .header("traceparent", format!("00-{followed}-4444444444444444-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let mut gw = gw;
    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(15)).await.expect("exits");
    let spans = rx.spans();
    let unsampled_trace = tp.split('-').nth(1).unwrap();
    assert!(one(&spans, "warden.request", unsampled_trace).is_empty());
    assert_eq!(one(&spans, "warden.request", followed).len(), 1);
    assert!(spans.len() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_selection_admin_requests_and_no_values() {
    let up = Echo::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let canary = "log-canary-secret-7730";
    let token = "admin-token-canary-1187";
    let secrets = secret_dir(dir.path(), &[("api_key", canary), ("admin", token)]);
    let path = dir.path().join("warden.toml");
    let cfg = |log: &str| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.0/8"]
[admin]
listen = "127.0.0.1:0"
token = "${{files:admin}}"
{log}
[secrets.files]
type = "dir"
path = "{secrets}"
[upstreams.api]
url = "{up}"
[upstreams.dead]
url = "http://{dead}"
connect_timeout = "1s"

{internal}

[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
upstream = "dead"

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "api"
inject = {{ x-api-key = "${{files:api_key}}" }}
"#,
            internal = internal_only_route(),
            up = up.url(),
        )
    };
    std::fs::write(&path, cfg("")).unwrap();
    let gw = Gateway::spawn(&path, &[("WARDEN_LOG_FORMAT", "json")])
        .await
        .unwrap()
        .with_admin_token(token);
    let c = client();

    let post = c
        .post(gw.url("/api/upload?sig=query-canary-5"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("authorization", "Bearer header-canary-3")
        .header(
            "traceparent",
            format!("00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
        )
        .body(vec![b'x'; 1234]);
    let (status, l) = logged(&gw, post, "rid-post").await;
    assert_eq!(status, 200);
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert_eq!(l["forwarded_for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["bytes_in"], 1234);
    assert!(l["bytes_out"].as_u64().unwrap() > 1234, "{l}");
    assert_eq!(
        l["trace_id"], INCOMING_TRACE,
        "tracing off, the caller's trace id"
    );
    assert_eq!(l["upstream"], "api");
    assert_eq!(l["endpoint"], up.addr.to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["policy"], "-");
    assert_eq!(l["reason"], "-");
    assert!(l["tls_identity"].is_null());
    let (req_ms, resp_ms, total) = (
        l["request_ms"].as_f64().unwrap(),
        l["response_ms"].as_f64().unwrap(),
        l["duration_ms"].as_f64().unwrap(),
    );
    assert!(req_ms <= resp_ms && resp_ms <= total, "{l}");
    assert!(l["upstream_ms"].as_f64().unwrap() <= resp_ms, "{l}");

    // A denial names the plugin; the upstream was never contacted.
    let (status, l) = logged(&gw, c.get(gw.url("/internal/x")), "rid-deny").await;
    assert_eq!(status, 403);
    assert_eq!(l["policy"], "network-isolation");
    assert_eq!(l["flag"], "policy_denied");
    assert_eq!(l["upstream"], "-");
    assert_eq!(l["attempts"], 0);
    assert!(l["forwarded_for"].is_null(), "never forwarded: {l}");

    // An error carries its reason in the same line.
    let (status, l) = logged(&gw, c.get(gw.url("/dead/x")), "rid-dead").await;
    assert_eq!(status, 502);
    assert_eq!(l["flag"], "upstream_unavailable");
    assert!(
        l["reason"]
            .as_str()
            .unwrap()
            .contains("upstream connection failed"),
        "{l}"
    );

    // HTTP/2 (prior knowledge) is logged as such.
    let h2 = warden_tests::client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let (status, l) = logged(&gw, h2.get(gw.url("/api/h2")), "rid-h2").await;
    assert_eq!(status, 200);
    assert_eq!(l["protocol"], "HTTP/2");

    // Admin requests: path, status and whether auth passed; never the token.
    let r = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = gw.metrics().await;
    assert!(text.contains("warden_requests_total"));
    let admin_lines = || -> Vec<Value> {
        gw.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "warden::admin")
            .collect()
    };
    eventually("both admin lines", Duration::from_secs(10), || {
        let n = admin_lines().len();
        async move { n >= 2 }
    })
    .await;
    let lines = admin_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/metrics" && l["status"] == 401 && l["auth"] == "failed"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/metrics" && l["status"] == 200 && l["auth"] == "ok"),
        "{lines:?}"
    );

    // A chosen field set and format, applied by a reload.
    std::fs::write(
        &path,
        cfg(r#"[log]
access = { format = "text", fields = ["route", "status", "bytes_in", "policy"] }"#),
    )
    .unwrap();
    let r = c
        .post(gw.admin_url("/reload"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = c
        .put(gw.url("/api/chosen"))
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert!(
        gw.wait_for_log(
            "INFO warden::access: request route=api status=200 bytes_in=5 policy=-\n",
            Duration::from_secs(10)
        )
        .await,
        "{}",
        gw.logs()
    );

    let logs = gw.logs();
    for leaked in [canary, token, "query-canary-5", "header-canary-3"] {
        assert!(!logs.contains(leaked), "{leaked} reached the log");
    }

    // A field that would carry a header value does not exist: refused with its line.
    std::fs::write(
        &path,
        cfg("[log]\naccess = { fields = [\"route\", \"authorization\"] }"),
    )
    .unwrap();
    let (code, out, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
    let out = format!("{out}{err}");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("warden.toml:")
            && out.contains("log.access")
            && out.contains("unknown variant"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_label_and_the_whole_exchange_histogram_move() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstreams.api]
url = "{up}"
[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
max_body = "1KiB"
"#,
        up = up.url()
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    // A 1 s stream: its head comes at once, its last byte a second later.
    let r = c.get(gw.url("/sse?n=5&gap_ms=250")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(
        c.get(gw.url("/status/503")).send().await.unwrap().status(),
        503
    );
    let r = c
        .post(gw.url("/x"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    eventually("the exchange histogram", Duration::from_secs(10), || {
        let gw = &gw;
        async move {
            let t = gw.metrics().await;
            metric_value(
                &t,
                "warden_exchange_duration_seconds_count",
                &["route=\"api\""],
            ) >= 3.0
        }
    })
    .await;
    let text = gw.metrics().await;
    let exchange = metric_value(
        &text,
        "warden_exchange_duration_seconds_sum",
        &["route=\"api\""],
    );
    let head = metric_value(
        &text,
        "warden_request_duration_seconds_sum",
        &["route=\"api\""],
    );
    assert!(
        exchange >= 1.0,
        "the stream's second is counted: {exchange}"
    );
    assert!(head < 0.9, "the head histogram stops at the head: {head}");
    let requests = |status: &str, source: &str| {
        metric_value(
            &text,
            "warden_requests_total",
            &[
                &format!("status=\"{status}\""),
                &format!("source=\"{source}\""),
            ],
        )
    };
    assert_eq!(requests("503", "upstream"), 1.0, "{text}");
    assert_eq!(requests("503", "gateway"), 0.0);
    assert_eq!(requests("413", "gateway"), 1.0);
    assert_eq!(requests("200", "upstream"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_set_add_remove_with_variables_and_never_touch_credentials() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = secret_dir(dir.path(), &[("api_key", "k-1")]);
    let path = dir.path().join("warden.toml");
    let cfg = || {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[secrets.files]
type = "dir"
path = "{secrets}"
[upstreams.api]
url = "{up}"
request_headers = {{ set = {{ x-env = "prod" }}, add = {{ x-tag = "from-upstream" }} }}
response_headers = {{ remove = ["x-upstream"] }}

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
max_body = "16B"
inject = {{ x-api-key = "${{files:api_key}}" }}
request_headers = {{ set = {{ x-client = "ip=${{client.address}}", x-rid = "${{request.id}}", x-who = "${{tls.identity}}" }}, add = {{ x-tag = "from-route" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ x-frame-options = "DENY", x-served-for = "${{request.id}}" }} }}
"#,
            up = up.url()
        )
    };
    std::fs::write(&path, cfg()).unwrap();
    let gw = Gateway::spawn(&path, &[]).await.unwrap();
    let c = client();
    let r = c
        .get(gw.url("/x"))
        .header("x-request-id", "rid-rules")
        // A client trying to pass for someone: `set` replaces, and an identity that is not
        // there (no client certificate) leaves the header out entirely.
        .header("x-env", "dev")
        .header("x-who", "spiffe://sophia/admin")
        .header("x-client", "ip=10.0.0.1")
        .header("x-debug", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-served-for"], "rid-rules");
    assert!(
        r.headers().get("x-upstream").is_none(),
        "removed from the response"
    );
    let echo: Value = r.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-env"], serde_json::json!(["prod"]));
    assert_eq!(h["x-client"], serde_json::json!(["ip=127.0.0.1"]));
    assert_eq!(h["x-rid"], serde_json::json!(["rid-rules"]));
    assert!(h.get("x-who").is_none(), "{h}");
    assert!(h.get("x-debug").is_none(), "{h}");
    assert_eq!(
        h["x-tag"],
        serde_json::json!(["from-upstream", "from-route"])
    );
    assert_eq!(h["x-api-key"], serde_json::json!(["k-1"]));

    // Warden's own answers on the route get the route's response headers too.
    let r = c
        .post(gw.url("/x"))
        .body(vec![0u8; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-frame-options"], "DENY");

    // Refused with file, line and reason: rules that would touch a credential, carry a
    // secret reference, or rewrite the framing.
    let refused = [
        (
            cfg().replace(
                r#"remove = ["x-debug"]"#,
                r#"remove = ["x-debug", "X-Api-Key"]"#,
            ),
            "x-api-key is injected on this route",
        ),
        (
            cfg().replace(r#"x-env = "prod""#, r#"x-env = "${files:api_key}""#),
            "secret reference",
        ),
        (
            cfg().replace(r#"x-env = "prod""#, r#"Host = "evil.example""#),
            "managed by the proxy",
        ),
        (
            cfg().replace("${client.address}", "${client.port}"),
            "unknown variable",
        ),
    ];
    for (text, needle) in refused {
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
        let out = format!("{out}{err}");
        assert_eq!(code, 2, "{needle}: {out}");
        assert!(
            out.contains("warden.toml:") && out.contains(needle),
            "{needle}: {out}"
        );
        assert!(!out.contains("k-1"), "a secret value in an error: {out}");
    }
}

/// The endpoints `/upstreams` lists for the one upstream, sorted.
async fn endpoints_of(gw: &Gateway) -> Vec<String> {
    let v = gw.upstreams().await;
    let mut eps: Vec<String> = v["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap().to_string())
        .collect();
    eps.sort();
    eps
}

async fn wait_endpoints(gw: &Gateway, want: Vec<String>) {
    eventually(
        &format!("endpoints {want:?}"),
        Duration::from_secs(10),
        || {
            let want = want.clone();
            async move { endpoints_of(gw).await == want }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_host_name_is_re_resolved_and_every_address_is_used() {
    // Three addresses for one name, on one port, as a headless Service would give.
    let a = Echo::start_at("a", "127.0.0.2:0").await;
    let port = a.addr.port();
    let b = Echo::start_at("b", &format!("127.0.0.3:{port}")).await;
    let c3 = Echo::start_at("c", &format!("127.0.0.4:{port}")).await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 api.test\n127.0.0.3 api.test\n",
    )
    .unwrap();
    let path = dir.path().join("warden.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstreams.api]
url = "http://api.test:{port}"
dns_refresh = "200ms"
[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#
        ),
    )
    .unwrap();
    let gw = Gateway::spawn_with_hosts(&path, &hosts)
        .await
        .unwrap_or_else(|logs| panic!("needs `unshare -rm` (user namespaces): {logs}"));
    let c = client();
    let want =
        |ips: &[&str]| -> Vec<String> { ips.iter().map(|ip| format!("{ip}:{port}")).collect() };
    wait_endpoints(&gw, want(&["127.0.0.2", "127.0.0.3"])).await;
    let before = (a.requests(), b.requests());
    for _ in 0..20 {
        let r = c.get(gw.url("/who")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["headers"]["host"][0],
            format!("api.test:{port}"),
            "Host is the name"
        );
    }
    assert!(
        a.requests() - before.0 >= 5,
        "a got {}",
        a.requests() - before.0
    );
    assert!(
        b.requests() - before.1 >= 5,
        "b got {}",
        b.requests() - before.1
    );

    // A pod goes, another comes: the same file, rewritten in place.
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.3 api.test\n127.0.0.4 api.test\n",
    )
    .unwrap();
    wait_endpoints(&gw, want(&["127.0.0.3", "127.0.0.4"])).await;
    let gone = a.requests();
    let came = c3.requests();
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/who")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.requests(), gone, "the removed address gets nothing");
    assert!(c3.requests() - came >= 5, "the new address gets traffic");

    // DNS answering nothing keeps the known addresses.
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(endpoints_of(&gw).await, want(&["127.0.0.3", "127.0.0.4"]));
    assert_eq!(c.get(gw.url("/who")).send().await.unwrap().status(), 200);
}
