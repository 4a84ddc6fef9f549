//! What the README promises and no other suite checks: the error body shape, the access
//! log's fields, limits, `host_header` and base paths, reload triggers on their own, a
//! refused listener change, the end of `shutdown_grace`, metric values and
//! `warden health` against a live gateway.

use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::config::{ConfigBuilder, Route, Upstream};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, metric_value, raw_exchange, run_warden};

/// An address nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_warden_makes_has_one_json_shape_and_no_internals() {
    let up = Echo::start().await;
    let dead = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("run-secrets");
    std::fs::create_dir(&secrets).unwrap();
    let mut files = toml::Table::new();
    files.insert("type".into(), "dir".into());
    files.insert("path".into(), secrets.display().to_string().into());
    let cfg = ConfigBuilder::new()
        .upstream("api", Upstream::url(&up.url()))
        .upstream(
            "dead",
            Upstream::url(&format!("http://{dead}")).set("connect_timeout", "1s"),
        )
        .secrets("files", files)
        .route(
            Route::prefix("api", "/api", "api")
                .methods(&["GET", "POST"])
                .set("max_body", "1KiB")
                .set("timeout", "300ms"),
        )
        .route(Route::prefix("dead", "/dead", "dead"))
        // Its secret file does not exist yet: the route answers 503 until it does.
        .route(Route::prefix("keyed", "/keyed", "api").inject("x-key", "${files:key}"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        (c.get(gw.url("/nowhere")), 404, "no_route", None),
        // No route was chosen: one matched the path, none the method.
        (c.delete(gw.url("/api/x")), 405, "method_not_allowed", None),
        (
            c.post(gw.url("/api/x")).body(vec![b'a'; 4096]),
            413,
            "body_too_large",
            Some("api"),
        ),
        (
            c.get(gw.url("/dead/x")),
            502,
            "upstream_unavailable",
            Some("dead"),
        ),
        (
            c.get(gw.url("/api/slow/3000")),
            504,
            "upstream_timeout",
            Some("api"),
        ),
        (
            c.get(gw.url("/keyed/x")),
            503,
            "credentials_unavailable",
            Some("keyed"),
        ),
        (c.get(gw.url("/api/a%2Fb")), 400, "bad_request", None),
    ];
    for (req, status, code, route) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        assert_eq!(r.headers()["content-type"], "application/json", "{code}");
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        let obj = body.as_object().unwrap();
        assert_eq!(obj["error"], code, "{text}");
        assert_eq!(obj["request_id"], rid.as_str(), "{text}");
        assert_eq!(obj.get("route").and_then(Value::as_str), route, "{text}");
        for key in obj.keys() {
            assert!(
                ["error", "request_id", "route", "detail"].contains(&key.as_str()),
                "unexpected key {key} in {text}"
            );
        }
        for internal in [
            dead.to_string(),
            up.url(),
            "hyper".into(),
            "os error".into(),
        ] {
            assert!(
                !text.contains(&internal),
                "{code} body leaks {internal}: {text}"
            );
        }
    }

    // 431 comes from the HTTP parser before a request exists: no body to shape, and the
    // connection closes.
    let big = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(128 * 1024)
    );
    let out = raw_exchange(gw.addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_every_documented_field_in_json_and_no_values() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.toml");
    let cfg = ConfigBuilder::new()
        .upstream("api", Upstream::url(&up.url()))
        .route(Route::prefix("api", "/api", "api"))
        .toml();
    std::fs::write(&path, cfg).unwrap();
    let gw = Gateway::spawn(&path, &[("WARDEN_LOG_FORMAT", "json")])
        .await
        .unwrap();
    let canary = "header-canary-51f0";
    let r = client()
        .get(gw.url("/api/items?token=query-canary-77"))
        .header("authorization", canary)
        .header("x-request-id", "rid-access-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = client().get(gw.url("/none")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    r.bytes().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let access: Vec<Value> = gw
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "warden::access")
            .collect();
        if access.len() >= 2 || Instant::now() > deadline {
            break access;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every line of the process is JSON, not only the access log.
    for l in gw.logs().lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
    let ok = lines
        .iter()
        .find(|v| v["request_id"] == "rid-access-1")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/api/items");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream"], "api");
    assert_eq!(ok["verdict"], "none");
    assert_eq!(ok["flag"], "-");
    assert_eq!(ok["complete"], true);
    assert!(ok["bytes_out"].as_u64().unwrap() > 0, "{ok}");
    assert!(ok["duration_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    let miss = lines
        .iter()
        .find(|v| v["status"] == 404)
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(miss["route"], "-");
    assert_eq!(miss["flag"], "no_route");
    assert!(miss["upstream_ms"].is_null(), "{miss}");
    let all = gw.logs();
    assert!(!all.contains(canary), "a header value reached the log");
    assert!(
        !all.contains("query-canary-77"),
        "the query reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_limit_host_header_and_base_path() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .gateway("max_headers", 12)
        .upstream(
            "api",
            Upstream::url(&format!("{}/base/v2", up.url())).set("host_header", "api.internal"),
        )
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;

    let echo: Value = client()
        .get(gw.url("/items/7?x=1&y=%2F"))
        .header("host", "outside.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/base/v2/items/7");
    assert_eq!(echo["query"], "x=1&y=%2F");
    assert_eq!(echo["headers"]["host"], serde_json::json!(["api.internal"]));

    // A chunked body (no length: it streams, and is never buffered for a retry) arrives
    // whole.
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("abc"), Ok("def")];
    let echo: Value = client()
        .post(gw.url("/chunked"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["body"], "abcdef", "{echo}");

    let with_headers = |n: usize| {
        let mut req = String::from("GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..n {
            req.push_str(&format!("x-h{i}: v\r\n"));
        }
        req + "\r\n"
    };
    let before = up.requests();
    let out = raw_exchange(gw.addr, with_headers(5).as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let out = raw_exchange(gw.addr, with_headers(40).as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(
        up.requests(),
        before + 1,
        "the over-limit request was forwarded"
    );
}

/// The reloads the gateway has applied and refused, from `/metrics`.
async fn reloads(gw: &Gateway) -> (f64, f64) {
    let m = gw.metrics().await;
    (
        metric_value(&m, "warden_reloads_total", &["result=\"applied\""]),
        metric_value(&m, "warden_reloads_total", &["result=\"refused\""]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_each_reload_on_their_own_and_listener_changes_are_refused() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = ConfigBuilder::new()
        .admin("token", "reload-token")
        .upstream("api", Upstream::url(&up.url()))
        .route(Route::prefix("api", "/", "api"));
    let gw = Gateway::start(dir.path(), &base.toml())
        .await
        .with_admin_token("reload-token");
    assert_eq!(reloads(&gw).await, (0.0, 0.0));

    // No file changes here, so the file watcher has nothing to report: each reload below
    // is the trigger's own.
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&gw).await.0 < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads(&gw).await, (1.0, 0.0));
    // The log line may trail the counter by a moment (lines are written in batches).
    assert!(
        gw.wait_for_log("trigger=\"SIGHUP\"", Duration::from_secs(5))
            .await
            || gw.logs().contains("trigger=SIGHUP"),
        "{}",
        gw.logs()
    );

    let post_reload = || {
        client()
            .post(gw.admin_url("/reload"))
            .bearer_auth("reload-token")
            .send()
    };
    let r = post_reload().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(reloads(&gw).await, (2.0, 0.0));

    // Moving the listener needs a restart: refused with the key and line, old one serves.
    let other = closed_port();
    let moved = base.clone().gateway("listen", other.to_string()).toml();
    std::fs::write(&gw.config_path, &moved).unwrap();
    let r = post_reload().await.unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    let located = body.lines().any(|l| {
        l.contains("warden.toml:")
            && l.contains(": gateway.listen: the listen address cannot change while running")
    }) || body
        .contains("gateway.listen: the listen address cannot change while running");
    assert!(located, "{body}");
    assert!(body.contains("warden.toml:"), "no file and line: {body}");
    assert!(reloads(&gw).await.1 >= 1.0);
    let r = client().get(gw.url("/still")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        std::net::TcpStream::connect(other).is_err(),
        "the new address was bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_ends_a_request_that_outlives_it() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .gateway("shutdown_grace", "1s")
        .upstream("api", Upstream::url(&up.url()).set("timeout", "60s"))
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let mut gw = Gateway::start(dir.path(), &cfg).await;
    let url = gw.url("/slow/20000");
    let inflight = tokio::spawn(async move { client().get(url).send().await });
    // The request is with the upstream before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.requests(), 1);
    let t = Instant::now();
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits once the grace period is over");
    let took = t.elapsed();
    assert!(exit.success(), "{exit:?}");
    // The grace was 1 s; the request alone would have taken 20 s.
    assert!(
        took >= Duration::from_millis(900),
        "exited before the grace ended: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let r = inflight.await.unwrap();
    assert!(r.is_err(), "the request outlived the grace period: {r:?}");
    assert!(
        gw.logs().contains("shutdown grace period over"),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_values_follow_the_traffic() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .upstream("api", Upstream::url(&up.url()))
        .route(Route::prefix("api", "/api", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    for _ in 0..7 {
        assert_eq!(c.get(gw.url("/api/r")).send().await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(c.post(gw.url("/api/w")).send().await.unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(
            c.get(gw.url("/api/status/503"))
                .send()
                .await
                .unwrap()
                .status(),
            503
        );
    }
    for _ in 0..4 {
        assert_eq!(
            c.get(gw.url("/elsewhere")).send().await.unwrap().status(),
            404
        );
    }
    let m = gw.metrics().await;
    let v = |name: &str, parts: &[&str]| metric_value(&m, name, parts);
    let api = "route=\"api\"";
    assert_eq!(
        v(
            "warden_requests_total",
            &[api, "method=\"read\"", "status=\"200\""]
        ),
        7.0
    );
    assert_eq!(
        v(
            "warden_requests_total",
            &[api, "method=\"write\"", "status=\"200\""]
        ),
        3.0
    );
    assert_eq!(v("warden_requests_total", &[api, "status=\"503\""]), 2.0);
    assert_eq!(
        v(
            "warden_requests_total",
            &["route=\"none\"", "status=\"404\""]
        ),
        4.0
    );
    assert_eq!(v("warden_request_duration_seconds_count", &[api]), 12.0);
    assert_eq!(
        v(
            "warden_upstream_duration_seconds_count",
            &["upstream=\"api\""]
        ),
        12.0
    );
    // The upstream's 503 is the upstream's; only the 404s were Warden's own.
    assert_eq!(v("warden_gateway_responses_total", &[api]), 0.0);
    assert_eq!(
        v(
            "warden_gateway_responses_total",
            &["reason=\"no_route\"", "fault=\"client\""]
        ),
        4.0
    );
    assert_eq!(v("warden_upstream_connect_errors_total", &[]), 0.0);
    assert_eq!(v("warden_config_generations", &[]), 1.0);
    // Per endpoint: every attempt counted, none failed; the 503s were the upstream's.
    let ep = format!("endpoint=\"{}\"", up.addr);
    assert_eq!(v("warden_upstream_endpoint_requests_total", &[&ep]), 12.0);
    assert_eq!(v("warden_upstream_endpoint_failures_total", &[&ep]), 2.0);
    assert_eq!(v("warden_upstream_endpoint_healthy", &[&ep]), 1.0);

    // The process and the configuration lifecycle.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(v("process_resident_memory_bytes", &[]) > 4e6, "{m}");
    assert!(v("process_open_fds", &[]) >= 5.0, "{m}");
    // CPU time is counted in clock ticks (10 ms): a gateway this quiet may not have used
    // one yet. It works until it has, and the counter must follow.
    let mut cpu = v("process_cpu_seconds_total", &[]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cpu <= 0.0 && std::time::Instant::now() < until {
        for _ in 0..200 {
            c.get(gw.url("/elsewhere")).send().await.unwrap();
        }
        cpu = metric_value(&gw.metrics().await, "process_cpu_seconds_total", &[]);
    }
    assert!(cpu > 0.0, "process_cpu_seconds_total stayed 0 under load");
    let started = v("process_start_time_seconds", &[]);
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} vs {now}"
    );
    assert_eq!(v("warden_config_last_reload_successful", &[]), 1.0);
    let applied = v("warden_config_last_reload_success_timestamp_seconds", &[]);
    assert!(applied <= now + 1.0 && applied > now - 600.0, "{applied}");
    // The exposition stays valid OpenMetrics: the process families come before `# EOF`.
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_health_probes_a_live_gateway() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .admin("token", "admin-probe-token")
        .upstream("api", Upstream::url(&up.url()))
        .route(Route::prefix("api", "/", "api"))
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let probe = |path: &str| {
        let url = gw.admin_url(path);
        run_warden(&["health", "--url", &url, "--timeout", "2s"])
    };
    for ok in ["/healthz", "/readyz"] {
        let (code, _, err) = probe(ok);
        assert_eq!(code, 0, "{ok}: {err}");
    }
    // Not a 2xx: the token-protected config without the token.
    let (code, _, err) = probe("/config");
    assert_eq!(code, 1);
    assert!(err.contains("answered 401"), "{err}");
    // Nothing listening.
    let (code, _, err) = run_warden(&[
        "health",
        "--url",
        &format!("http://{}/healthz", closed_port()),
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unhealthy"), "{err}");
}
