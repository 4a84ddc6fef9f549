//! Gateway core end to end: the real `warden` binary between real clients (reqwest,
//! hyper, curl, raw TCP) and real upstreams.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_tests::certs::Ca;
use warden_tests::config::{ConfigBuilder, Route, Upstream};
use warden_tests::upstream::Echo;
use warden_tests::{Gateway, client, curl, eventually, metric_value, raw_exchange, run_warden};

/// One route, `/` to `upstream`.
fn one_route(upstream: Upstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .upstream("api", upstream)
        .route(Route::prefix("api", "/", "api"))
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    raw_exchange(addr, request, Duration::from_secs(10)).await
}

#[tokio::test]
async fn http1_forwarding_sets_forwarded_headers_and_request_id() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &one_route(Upstream::url(&up.url())).toml()).await;

    let resp = client()
        .get(gw.url("/hello?x=1"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "x=1");
    let h = &echo["headers"];
    // A client cannot forge its address: the untrusted value is replaced.
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!([gw.addr.to_string()])
    );
    assert!(h.get("forwarded").is_none());
    assert_eq!(h["x-request-id"], serde_json::json!(["abc-123"]));
    // Host is rewritten to the upstream's authority by default.
    assert_eq!(h["host"], serde_json::json!([up.addr.to_string()]));

    // Without a usable id the gateway makes one.
    let resp = client()
        .get(gw.url("/"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 36, "{rid}");
}

#[tokio::test]
async fn trusted_proxies_extend_forwarded_for_and_host_can_be_preserved() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = one_route(Upstream::url(&up.url()).set("host_header", "preserve"))
        .gateway("trusted_proxies", vec!["127.0.0.0/8"])
        .toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let echo: Value = client()
        .get(gw.url("/"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"])
    );
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!(["api.example.com"])
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &one_route(Upstream::url(&up.url())).toml()).await;
    let out = raw(
        gw.addr,
        b"GET /hop HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\nX-End-To-End: yes\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    let echo: Value = serde_json::from_str(&body[..body.rfind('}').unwrap() + 1]).unwrap();
    let h = echo["headers"].as_object().unwrap();
    for gone in [
        "connection",
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["te"], serde_json::json!(["trailers"]));
    assert_eq!(h["x-end-to-end"], serde_json::json!(["yes"]));
}

#[tokio::test]
async fn h2c_downstream_and_h2_upstream() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = one_route(Upstream::url(&up.url()).set("http2", true)).toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let h2 = warden_tests::client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/h2")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/2.0");
    // HTTP/1.1 downstream to the same h2 upstream.
    let echo: Value = client()
        .get(gw.url("/h1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["version"], "HTTP/2.0");
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &one_route(Upstream::url(&up.url())).toml()).await;
    let mut resp = client()
        .get(gw.url("/sse?n=5&gap_ms=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            arrivals.push((event, start.elapsed()));
        }
    }
    assert_eq!(arrivals.len(), 5);
    for (i, (ev, _)) in arrivals.iter().enumerate() {
        assert!(ev.contains(&format!("data: token-{i}")), "{ev}");
    }
    // Streamed, not buffered: the first event is seen long before the last is sent
    // (4 gaps of 300 ms), and every event arrives after the one before it.
    let first = arrivals[0].1;
    let last = arrivals[4].1;
    assert!(
        last - first >= Duration::from_millis(600),
        "events arrived together: {arrivals:?}"
    );
    assert!(
        arrivals
            .windows(2)
            .all(|w| w[1].1 > w[0].1 + Duration::from_millis(100)),
        "{arrivals:?}"
    );
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = one_route(Upstream::url(&up.url()).set("http2", true)).toml();
    let gw = Gateway::start(dir.path(), &cfg).await;
    let mut send = warden_tests::h2c(gw.addr).await;
    let mut msg = vec![0u8, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let req = http::Request::post(format!("http://{}/grpc", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(msg)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[5..], b"hello");
    // The upstream saw the request as gRPC over HTTP/2 with TE: trailers.
    let seen = up.seen().into_iter().find(|s| s.uri == "/grpc").unwrap();
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(seen.headers["te"], "trailers");
}

#[tokio::test]
async fn websocket_upgrade_and_refused_upgrade_never_smuggles() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &one_route(Upstream::url(&up.url())).toml()).await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"ping-through-the-tunnel").await.unwrap();
    let mut got = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping-through-the-tunnel");

    // A refused upgrade with a second request pipelined behind it: the bytes after the
    // upgrade request must not become a new request.
    let out = raw(
        gw.addr,
        b"GET /ws-refuse HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    // Proving a negative: give a wrongly forwarded request time to land upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        up.seen().iter().all(|s| s.uri != "/smuggled"),
        "smuggled request reached the upstream"
    );
}

#[tokio::test]
async fn errors_404_405_413_431_502_504() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
max_header_bytes = "16KiB"

[admin]
listen = "127.0.0.1:0"

[upstreams.api]
url = "{up}"

[upstreams.dead]
url = "http://{closed}"
connect_timeout = "1s"

[[routes]]
name = "api"
match = {{ path_prefix = "/api", methods = ["GET", "POST"] }}
upstream = "api"
max_body = "1KiB"
timeout = "300ms"

[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
upstream = "dead"
"#,
        up = up.url()
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();

    let r = c.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_route");

    let r = c.delete(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");

    let r = c
        .post(gw.url("/api/x"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Chunked (no Content-Length) over the limit is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'b'; 512])).collect();
    let r = c
        .post(gw.url("/api/chunked"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let before = up.requests();
    let r = c
        .post(gw.url("/api/small"))
        .body(vec![b'a'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests(), before + 1);

    let r = c
        .get(gw.url("/api/x"))
        .header("x-big", "v".repeat(32 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);

    let r = c.get(gw.url("/dead/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains(&closed.to_string()),
        "error body leaks the upstream address: {body}"
    );

    // The route's 300 ms timeout answers, not the upstream (which would take 20 s and
    // answer 200); the bound only catches waiting for the upstream, with a wide margin.
    let t = Instant::now();
    let r = c.get(gw.url("/api/slow/20000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Sent raw: an HTTP library would resolve the dot segment before sending it.
    let out = raw(
        gw.addr,
        b"GET /api/../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("path has dot segments"), "{out}");
}

#[tokio::test]
async fn slow_request_head_is_cut_off() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &one_route(Upstream::url(&up.url()))
            .gateway("header_read_timeout", "500ms")
            .toml(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection still open after 10 s");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &one_route(Upstream::url(&up.url()))
            .gateway("shutdown_grace", "10s")
            .toml(),
    )
    .await;
    // Long enough that the checks below run while the drain waits for it.
    let url = gw.url("/slow/5000");
    let inflight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    // An idle keep-alive connection, open before the signal.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The slow request is with the upstream before the signal.
    eventually(
        "the in-flight request reaches the upstream",
        Duration::from_secs(30),
        || async { up.seen().iter().any(|s| s.uri == "/slow/5000") },
    )
    .await;
    gw.signal("TERM");
    // New connections are refused (the listener is closed), not left hanging in a
    // backlog: a listener kept open would accept them for the whole drain.
    eventually(
        "new connections are refused while draining",
        Duration::from_secs(5),
        || async { TcpStream::connect(gw.addr).await.is_err() },
    )
    .await;
    assert!(
        !inflight.is_finished(),
        "refused only once the drain was over"
    );
    // The admin listener stays up during the drain: not ready, metrics still there.
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "draining");
    assert!(gw.metrics().await.contains("warden_requests_total"));
    // The idle keep-alive connection is closed by the gateway rather than kept to the end.
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let status = inflight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(status, 200);
    let exit = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("gateway exited");
    assert!(exit.success(), "{exit:?}");
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "listener still accepting after shutdown"
    );
}

#[tokio::test]
async fn downstream_tls_and_mtls_with_curl() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("warden test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (crt, key) = ca
        .leaf(&["localhost", "127.0.0.1"], &[])
        .write(dir.path(), "gw");
    let clients_ca = Ca::new("clients CA");
    let clients_ca_file = clients_ca.write(dir.path(), "clients.crt");
    let (ccrt, ckey) = clients_ca
        .leaf(&["sophia-api.internal"], &["spiffe://sophia/sophia-api"])
        .write(dir.path(), "client");
    let mut tls = toml::Table::new();
    for (k, v) in [
        ("cert_file", crt.display().to_string()),
        ("key_file", key.display().to_string()),
        ("client_ca_file", clients_ca_file.display().to_string()),
        ("client_auth", "required".to_string()),
    ] {
        tls.insert(k.into(), v.into());
    }
    // The verified identity as a request variable; a forged header never survives.
    let rules: toml::Table = r#"set = { x-client-id = "${tls.identity}" }"#.parse().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &one_route(Upstream::url(&up.url()).set("request_headers", rules))
            .gateway("tls", tls)
            .toml(),
    )
    .await;
    let url = format!("https://localhost:{}/tls", gw.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", gw.addr.port());

    // No client certificate: refused during the handshake.
    let r = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        ca_file.to_str().unwrap(),
        &url,
    ])
    .await;
    assert!(!r.ok, "request without client certificate succeeded");
    assert!(!r.stderr.is_empty());

    // With a client certificate, over HTTP/2 (ALPN) and HTTP/1.1.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let r = curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            ca_file.to_str().unwrap(),
            "--cert",
            ccrt.to_str().unwrap(),
            "--key",
            ckey.to_str().unwrap(),
            flag,
            "-H",
            "x-client-id: spiffe://forged/admin",
            "-w",
            "\n%{http_version}",
            &url,
        ])
        .await;
        assert!(r.ok, "{}", r.stderr);
        let (body, v) = r.stdout.rsplit_once('\n').unwrap();
        assert_eq!(v, version);
        let echo: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            echo["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
        assert_eq!(
            echo["headers"]["x-client-id"],
            serde_json::json!(["spiffe://sophia/sophia-api"])
        );
    }
    assert!(
        gw.wait_for_log(
            "tls_identity=spiffe://sophia/sophia-api",
            Duration::from_secs(10)
        )
        .await,
        "the access log names the client certificate: {}",
        gw.logs()
    );

    // TLS 1.1 and below are refused by the gateway for their version, not for a missing
    // client certificate: openssl presents one, and offers TLS 1.2 as the control.
    let s_client = |version: &'static str| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(gw.addr.to_string())
            .args(["-servername", "localhost", version])
            .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile"])
            .arg(&ca_file)
            .arg("-cert")
            .arg(&ccrt)
            .arg("-key")
            .arg(&ckey)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client runs");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let tls12 = s_client("-tls1_2");
    assert!(
        tls12.contains("Protocol: TLSv1.2") || tls12.contains("Protocol  : TLSv1.2"),
        "{tls12}"
    );
    assert!(tls12.contains("Verify return code: 0 (ok)"), "{tls12}");
    // The server refuses the ClientHello itself with an alert: it never sends its own
    // certificate, so the refusal is not about the client's.
    for old in ["-tls1_1", "-tls1"] {
        let out = s_client(old);
        assert!(out.contains("SSL alert number"), "{old}: {out}");
        assert!(
            out.contains("no peer certificate available"),
            "{old}: {out}"
        );
        assert!(out.contains("Cipher is (NONE)"), "{old}: {out}");
    }
}

#[tokio::test]
async fn upstream_tls_verifies_and_presents_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ml CA");
    let ca_file = ca.write(dir.path(), "ml-ca.crt");
    let gw_ca = Ca::new("gateway client CA");
    let (gcrt, gkey) = gw_ca
        .leaf(&["mcp-gateway.internal"], &["spiffe://sophia/mcp-gateway"])
        .write(dir.path(), "gw-client");
    let up = Echo::start_tls(
        "ml-gateway",
        &ca.leaf(&["ml-gateway.internal"], &[]),
        Some(&gw_ca.cert_pem),
    )
    .await;
    let other_ca = Ca::new("someone else");
    let other_ca_file = other_ca.write(dir.path(), "other.crt");

    let cfg = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[upstreams.ml]
url = "{url}"
http2 = true
tls = {{ ca_file = "{ca}", server_name = "ml-gateway.internal", client_cert_file = "{c}", client_key_file = "{k}", no_system_roots = true }}
inject = {{ x-api-key = "literal-not-secret" }}
allow_literal = true

[upstreams.wrong-ca]
url = "{url}"
tls = {{ ca_file = "{other}", server_name = "ml-gateway.internal", client_cert_file = "{c}", client_key_file = "{k}" }}
inject = {{ x-api-key = "must-never-be-sent" }}
allow_literal = true

[upstreams.no-client-cert]
url = "{url}"
tls = {{ ca_file = "{ca}", server_name = "ml-gateway.internal" }}

[[routes]]
name = "ml"
match = {{ path_prefix = "/ml" }}
upstream = "ml"

[[routes]]
name = "wrong-ca"
match = {{ path_prefix = "/wrong" }}
upstream = "wrong-ca"

[[routes]]
name = "no-client-cert"
match = {{ path_prefix = "/nocert" }}
upstream = "no-client-cert"
"#,
        url = up.url(),
        ca = ca_file.display(),
        other = other_ca_file.display(),
        c = gcrt.display(),
        k = gkey.display(),
    );
    let gw = Gateway::start(dir.path(), &cfg).await;
    let c = client();
    let r = c.get(gw.url("/ml/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(
        echo["headers"]["host"],
        Value::Null,
        "h2 carries :authority, not Host"
    );

    let seen_before = up.requests();
    let r = c.get(gw.url("/wrong/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let r = c.get(gw.url("/nocert/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        up.requests(),
        seen_before,
        "a request reached an upstream that failed verification"
    );
    assert!(!gw.logs().contains("must-never-be-sent"));
}

#[tokio::test]
async fn check_lists_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.toml");
    std::fs::write(
        &path,
        r#"[gateway]
listen = "127.0.0.1:0"
max_body = "lots"
tls = { cert_file = "missing.crt", key_file = "missing.key" }

[admin]
listen = "127.0.0.1:0"
colour = "blue"

[upstreams.api]
url = "ftp://127.0.0.1:1"

[[routes]]
name = "a"
match = { path_prefix = "v1", methods = ["get"] }
upstream = "nope"

[[routes]]
name = "a"
upstream = "api"
policies = [ { plugin = "ghost" } ]
"#,
    )
    .unwrap();
    let (code, _out, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let p = path.display().to_string();
    for expected in [
        format!("{p}:3: gateway.max_body: invalid size"),
        format!("{p}:8: admin.colour: unknown field `colour`"),
        format!("{p}:11: upstreams.api.url: scheme must be http or https"),
        format!("{p}:15: routes[0].match.path_prefix: \"v1\" must start with '/'"),
        format!("{p}:15: routes[0].match.methods[0]: \"get\" is not an upper-case HTTP method"),
        format!("{p}:16: routes[0].upstream: unknown upstream \"nope\""),
        format!("{p}:19: routes[1].name: duplicate route name \"a\""),
        format!("{p}:21: routes[1].policies[0].plugin: unknown plugin \"ghost\""),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }

    // A syntax error names its line; `run` refuses the same way before binding anything.
    std::fs::write(
        &path,
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[routes]\nname = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = run_warden(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{p}:4: invalid TOML")), "{err}");
    assert!(!err.contains("listening"));

    // A missing certificate is found when the snapshot is built.
    std::fs::write(
        &path,
        "[gateway]\nlisten = \"127.0.0.1:0\"\ntls = { cert_file = \"missing.crt\", key_file = \"missing.key\" }\n",
    )
    .unwrap();
    let (code, _, err) = run_warden(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{p}:3: gateway.tls:")) && err.contains("missing.crt"),
        "{err}"
    );
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_fault() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &one_route(Upstream::url(&up.url())).toml()).await;

    // Positive control: a well-formed chunked body goes through.
    let out = raw(
        gw.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A bad chunk size, and a body cut off by the client closing its side.
    for body in [
        &b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"[..],
        &b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n40\r\nonly-part-of-it"[..],
        &b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort"[..],
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(body).await.unwrap();
        // Half-close: the client has nothing more to send.
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        if !out.is_empty() {
            let code: u16 = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            assert!((400..500).contains(&code), "{out}");
        }
    }
    // A failure is counted (as the client's or the upstream's) where it is classified:
    // wait for the client's count, then check that nothing was blamed on the upstream.
    eventually(
        "a broken body counted as the client's fault",
        Duration::from_secs(30),
        || async {
            metric_value(
                &gw.metrics().await,
                "warden_gateway_responses_total",
                &["fault=\"client\"", "reason=\"bad_request_body\""],
            ) >= 1.0
        },
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "warden_upstream_connect_errors_total", &[]),
        0.0,
        "a client's broken body was blamed on the upstream:\n{m}"
    );
    assert_eq!(
        metric_value(&m, "warden_requests_total", &["status=\"502\""]),
        0.0,
        "{m}"
    );
    assert!(
        !gw.logs().contains("upstream failed"),
        "logged as an upstream failure:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn an_http10_upstream_leaves_the_client_on_http11_keep_alive() {
    // An upstream that speaks HTTP/1.0 and closes after each answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &one_route(Upstream::url(&format!("http://{addr}"))).toml(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..3 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 1, "connection closed after response {i}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let mut body = [0u8; 2];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"ok");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    task.abort();
}

/// SETTINGS then GOAWAY(last stream 0, PROTOCOL_ERROR): what an invalid HTTP/2 preface
/// must get (RFC 9113 §3.4), instead of a bare close.
const GOAWAY_PROTOCOL_ERROR: &[u8] = &[
    0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];

#[tokio::test]
async fn an_invalid_http2_preface_gets_goaway_over_h2c_and_tls() {
    use tokio_rustls::rustls;
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &one_route(Upstream::url(&up.url())).toml()).await;

    let read_all = |mut s: TcpStream| async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        out
    };
    for bad in [
        &b"INVALID CONNECTION PREFACE\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"GET /\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        let out = read_all(s).await;
        assert_eq!(
            out,
            GOAWAY_PROTOCOL_ERROR,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // HTTP/1 stays HTTP/1: a malformed request with a version is a 400, and a request
    // line sent in pieces is waited for.
    let out = raw(gw.addr, b"GET / HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for piece in [
        &b"GE"[..],
        b"T /pieces HT",
        b"TP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        s.write_all(piece).await.unwrap();
        // Pace the pieces so the gateway sees the request line arrive in parts.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let out = String::from_utf8(read_all(s).await).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.requests(), 1);

    // TLS with ALPN h2: the same answer inside the TLS session.
    let ca = Ca::new("preface CA");
    let (crt, key) = ca.leaf(&["localhost"], &[]).write(dir.path(), "gw");
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), crt.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let tgw = Gateway::start(
        &tls_dir,
        &one_route(Upstream::url(&up.url()))
            .gateway("tls", tls)
            .toml(),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    for (bad, want_goaway) in [
        (&b"INVALID CONNECTION PREFACE\r\n\r\n"[..], true),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
    ] {
        let tcp = TcpStream::connect(tgw.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = connector.connect(name, tcp).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(bad).await.unwrap();
        let mut out = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
            .await
            .unwrap()
            .unwrap_or(0);
        if want_goaway {
            let mut all = out[..n].to_vec();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
            assert_eq!(all, GOAWAY_PROTOCOL_ERROR);
        } else {
            // The valid preface is served: the server's SETTINGS frame comes back.
            assert!(n >= 9 && out[3] == 4, "{:?}", &out[..n]);
        }
    }
}

#[tokio::test]
async fn workers_share_the_port_each_with_its_own_thread_and_lose_no_log_line() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = one_route(Upstream::url(&up.url()))
        .gateway("worker_threads", 2i64)
        .toml();
    let mut gw = Gateway::start(dir.path(), &cfg).await;

    // One thread per worker, by name.
    let workers: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    let named = |prefix: &str| workers.iter().filter(|c| c.starts_with(prefix)).count();
    assert_eq!(named("warden-worker-"), 2, "{workers:?}");
    // No plugin configured: no engine, so no epoch ticker thread.
    assert_eq!(named("warden-epoch"), 0, "{workers:?}");

    // Every request on a new connection: the kernel spreads them over both listeners.
    let fresh = warden_tests::client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    const N: usize = 40;
    for i in 0..N {
        let resp = fresh
            .get(gw.url(&format!("/spread/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let m = gw.metrics().await;
    let w1 = metric_value(&m, "warden_worker_connections_total", &["worker=\"1\""]);
    let w2 = metric_value(&m, "warden_worker_connections_total", &["worker=\"2\""]);
    assert_eq!(w1 + w2, N as f64, "{m}");
    // 40 connections hashed over two listeners all landing on one: a 1-in-10^11 chance.
    assert!(w1 > 0.0 && w2 > 0.0, "worker 1: {w1}, worker 2: {w2}");

    // Lines buffered by the workers go out within their flush interval...
    eventually("access lines flushed", Duration::from_secs(5), || {
        let logs = gw.logs();
        async move { (0..N).all(|i| logs.contains(&format!("path=/spread/{i} "))) }
    })
    .await;
    // ...and those of requests answered just before SIGTERM go out at shutdown.
    for i in 0..N {
        let resp = client()
            .get(gw.url(&format!("/last/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(20)).await.expect("exited");
    assert!(status.success(), "{status:?}");
    let logs = gw.logs();
    for i in 0..N {
        assert!(
            logs.contains(&format!("path=/last/{i} ")),
            "line of /last/{i} lost:\n{logs}"
        );
    }
    let m_lines = logs.matches("warden::access").count();
    assert_eq!(m_lines, 2 * N, "{logs}");
}

/// Read one HTTP/1.1 response from `s` (`buf` holds what was read past it): its head, and
/// its body de-framed (Content-Length or chunked; none for a `HEAD`).
async fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (String, Vec<u8>) {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, need: impl Fn(&[u8]) -> bool) {
        while !need(buf) {
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .expect("response within 10 s")
                .unwrap();
            assert!(
                n > 0,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let find = |b: &[u8], pat: &[u8]| b.windows(pat.len()).position(|w| w == pat);
    fill(s, buf, |b| find(b, b"\r\n\r\n").is_some()).await;
    let end = find(buf, b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let field = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let mut body = Vec::new();
    if head_request {
    } else if let Some(n) = field("content-length") {
        let n: usize = n.parse().unwrap();
        fill(s, buf, |b| b.len() >= n).await;
        body = buf.drain(..n).collect();
    } else {
        assert_eq!(
            field("transfer-encoding").as_deref(),
            Some("chunked"),
            "{head}"
        );
        loop {
            fill(s, buf, |b| find(b, b"\r\n").is_some()).await;
            let line = find(buf, b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line]).unwrap(), 16).unwrap();
            fill(s, buf, |b| b.len() >= line + 2 + size + 2).await;
            body.extend_from_slice(&buf[line + 2..line + 2 + size]);
            assert_eq!(&buf[line + 2 + size..line + 4 + size], b"\r\n");
            buf.drain(..line + 4 + size);
            if size == 0 {
                break;
            }
        }
    }
    (head, body)
}

/// Warden serves plain HTTP/1.1 requests itself and hands a connection to hyper at the
/// first request it does not take (a body, an upgrade, `Expect`, HTTP/1.0, a malformed
/// head). Whatever the mix on one connection: every request is answered once, in order,
/// framed as declared, and no bytes after a head are ever read as a request they are not.
#[tokio::test]
async fn http1_requests_are_answered_in_order_and_framed_whoever_reads_them() {
    let up = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &one_route(Upstream::url(&up.url()))
            .gateway("header_read_timeout", "700ms")
            .toml(),
    )
    .await;
    let path_of = |body: &[u8]| -> String {
        serde_json::from_slice::<Value>(body).unwrap()["path"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Pipelined on one connection: two requests Warden reads, a HEAD, one with a body
    // (hyper's from there on), and two more after it.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for (path, head_request) in [
        ("/a", false),
        ("/b", false),
        ("/c", true),
        ("/d", false),
        ("/e", false),
        ("/f", false),
    ] {
        let (head, body) = read_response(&mut s, &mut buf, head_request).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("\r\ndate: "),
            "{path}: {head}"
        );
        if head_request {
            assert!(
                head.to_ascii_lowercase().contains("content-length: "),
                "{head}"
            );
        } else {
            assert_eq!(path_of(&body), path);
        }
    }
    // `Connection: close` was honoured: nothing after it was read as a request.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        buf.is_empty() && rest.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    let seen: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/a", "/b", "/c", "/d", "/e", "/f"]);
    assert_eq!(
        &up.bodies()[..],
        [
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            Bytes::from("hello"),
            Bytes::from("abc"),
            Bytes::new()
        ]
    );

    // Heads that could carry a second request inside the first, each on its own connection
    // after a request Warden served: refused or closed, never a request for /smuggled.
    for attack in [
        "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 40\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n Content-Length: 40\r\n\r\n",
        "GET /x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let request = format!(
            "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n{attack}GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let out = raw(gw.addr, request.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{attack:?}: {out}");
        assert!(!out.contains("/smuggled"), "{attack:?}: {out}");
    }
    assert!(
        up.seen().iter().all(|s| s.uri != "/smuggled"),
        "a smuggled request reached the upstream"
    );

    // The header-read timeout runs from the start of each wait, not from the connection's
    // start: requests 300 ms apart keep a connection alive past 700 ms, and then it is
    // closed once idle for the timeout.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..4 {
        s.write_all(format!("GET /kept{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut s, &mut buf, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(path_of(&body), format!("/kept{i}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle = Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok() && rest.is_empty(),
        "idle connection not closed: {rest:?}"
    );
    assert!(idle.elapsed() < Duration::from_secs(5));

    // A streamed response of unknown length goes out chunked, whole.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /big?bytes=300001 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut s, &mut buf, false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body.len(), 300_001);
    assert!(body.iter().all(|b| *b == b'x'));
    let (_, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(path_of(&body), "/after");
}
