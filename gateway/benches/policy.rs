//! Policy evaluations through the real host:
//! - `network-isolation` with 20 rules (the request matches the last one), head only: warm
//!   instance pool vs a fresh instance per request;
//! - `mcp-guard` on a 2 KiB `tools/call` body (body phase);
//! - a 4 KiB JSON request: the gateway's body checks (content type, strict JSON) alone,
//!   and `model-guard` with and without the body phase.
//!
//! Run (plugins must be built first):
//!   scripts/build-plugins.sh --no-test
//!   cargo bench -p warden --bench policy
//!
//! Besides criterion's estimates, prints median and p99 of single evaluations.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{HeaderMap, HeaderValue, Method};
use warden::http::ClientInfo;
use warden::policy::{
    Chain, Decision, PluginConfig, PolicyConfig, PolicyHost, PolicyRequest, PolicySettings,
};
use warden::secrets::SecretSnapshot;

fn wasm() -> PathBuf {
    plugin("network_isolation")
}

fn plugin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

fn rules() -> String {
    let mut r = Vec::new();
    for i in 0..10 {
        r.push(format!("{{ identity = \"spiffe://other{i}/workload\" }}"));
    }
    for i in 0..5 {
        r.push(format!(
            "{{ identity = \"spiffe://td{i}/*\", methods = [\"GET\"] }}"
        ));
    }
    for i in 0..4 {
        r.push(format!(
            "{{ cidr = \"192.168.{i}.0/24\", path = \"/admin/**\" }}"
        ));
    }
    r.push("{ cidr = \"10.0.0.0/8\", methods = [\"POST\"], path = \"/v1/**\" }".into());
    assert_eq!(r.len(), 20);
    format!(
        "config = {{ rule_set = \"bench\", allow = [ {} ] }}",
        r.join(", ")
    )
}

async fn body_chain(host: &std::sync::Arc<PolicyHost>, name: &str, policy: &str) -> Chain {
    let plugin_cfg: PluginConfig =
        toml::from_str(&format!("file = {:?}", plugin(name).display().to_string())).unwrap();
    let set = host
        .load(
            &BTreeMap::from([("p".to_string(), plugin_cfg)]),
            Path::new("/"),
        )
        .unwrap();
    let policy: PolicyConfig = toml::from_str(&format!("plugin = \"p\"\n{policy}")).unwrap();
    Chain::build(&set, "bench", &[policy]).await.unwrap()
}

/// A 2 KiB MCP `tools/call`.
fn mcp_body() -> Bytes {
    let filler = "x".repeat(1900);
    let b = serde_json::json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "get_project", "arguments": { "id": "p-42", "note": filler } }
    })
    .to_string();
    Bytes::from(b)
}

/// A 4 KiB OpenAI-style chat request.
fn chat_body() -> Bytes {
    let messages: Vec<serde_json::Value> = (0..16)
        .map(|i| serde_json::json!({ "role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "y".repeat(220) }))
        .collect();
    Bytes::from(
        serde_json::json!({ "model": "sophia-small", "max_tokens": 256, "stream": false, "messages": messages })
            .to_string(),
    )
}

async fn eval_body(c: &Chain, r: &Req, body: Option<&Bytes>, snap: &SecretSnapshot) -> Decision {
    let pr = PolicyRequest {
        route: "bench",
        method: &r.method,
        path: "/mcp",
        query: None,
        headers: &r.headers,
        client: &r.client,
        body,
    };
    c.evaluate(&pr, snap).await
}

async fn chain(host: &std::sync::Arc<PolicyHost>, isolation: &str) -> Chain {
    let plugin: PluginConfig = toml::from_str(&format!(
        "file = {:?}\nisolation = \"{isolation}\"",
        wasm().display().to_string()
    ))
    .unwrap();
    let set = host
        .load(
            &BTreeMap::from([("ni".to_string(), plugin)]),
            Path::new("/"),
        )
        .unwrap();
    let policy: PolicyConfig = toml::from_str(&format!("plugin = \"ni\"\n{}", rules())).unwrap();
    Chain::build(&set, "inference", &[policy]).await.unwrap()
}

struct Req {
    method: Method,
    headers: HeaderMap,
    client: ClientInfo,
}

fn request() -> Req {
    let mut headers = HeaderMap::new();
    for (n, v) in [
        ("host", "ml-gateway.internal"),
        ("user-agent", "sophia-api/1.4"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("x-request-id", "0b8f8f0e-5c1e-4d59-9a0f-3f0c2a1e7d11"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("authorization", "Bearer not-passed-to-plugins"),
    ] {
        headers.insert(n, HeaderValue::from_static(v));
    }
    Req {
        method: Method::POST,
        headers,
        client: ClientInfo {
            addr: "10.1.2.3:51234".parse().unwrap(),
            ip: HeaderValue::from_static("10.1.2.3"),
            tls: true,
            sni: Some("ml-gateway.internal".into()),
            uri_sans: vec!["spiffe://sophia/sophia-api-canary".into()],
            dns_sans: vec![],
        },
    }
}

async fn eval(c: &Chain, r: &Req, snap: &SecretSnapshot) -> Decision {
    let pr = PolicyRequest {
        route: "inference",
        method: &r.method,
        path: "/v1/infer",
        query: None,
        headers: &r.headers,
        client: &r.client,
        body: None,
    };
    c.evaluate(&pr, snap).await
}

fn host() -> std::sync::Arc<PolicyHost> {
    let settings = PolicySettings {
        max_instances: 64,
        ..PolicySettings::default()
    };
    PolicyHost::new(&settings, Path::new("/")).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = host();
    let snap = SecretSnapshot::empty();
    let r = request();
    let mut g = c.benchmark_group("policy/network-isolation-20-rules");
    for isolation in ["pooled", "per-request"] {
        let ch = rt.block_on(chain(&host, isolation));
        // Sanity: the request is allowed by the 20th rule.
        assert!(matches!(
            rt.block_on(eval(&ch, &r, &snap)),
            Decision::Allow(_)
        ));
        let name = if isolation == "pooled" {
            "warm_pool"
        } else {
            "per_request"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(eval(&ch, &r, &snap).await);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

/// Median and p99 of single evaluations (criterion reports means and medians of batches).
fn percentiles() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = host();
    let snap = SecretSnapshot::empty();
    let r = request();
    println!("\nsingle-evaluation percentiles:");
    for isolation in ["pooled", "per-request"] {
        let ch = rt.block_on(chain(&host, isolation));
        let n = 50_000;
        let samples: Vec<Duration> = rt.block_on(async {
            for _ in 0..2_000 {
                black_box(eval(&ch, &r, &snap).await);
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                black_box(eval(&ch, &r, &snap).await);
                v.push(t.elapsed());
            }
            v
        });
        report(&format!("ni-20 {isolation}"), n, samples);
    }

    // Body phase cases, warm pools.
    let mcp = rt.block_on(body_chain(
        &host,
        "mcp_guard",
        r#"body = { max = "64KiB" }
config = { callers = [ { cidr = "10.0.0.0/8", methods = ["tools/call"], tools = ["search_*", "get_project"] } ] }"#,
    ));
    let model_body = rt.block_on(body_chain(
        &host,
        "model_guard",
        r#"body = { max = "64KiB" }
config = { default = { models = ["sophia-small"], max_tokens = 512 } }"#,
    ));
    let rules = model_body.body().expect("body phase").clone();
    let mb = mcp_body();
    let cb = chat_body();
    let mut json_headers = r.headers.clone();
    json_headers.insert("content-length", HeaderValue::from(cb.len()));
    assert!(matches!(
        rt.block_on(eval_body(&mcp, &r, Some(&mb), &snap)),
        Decision::Allow(_)
    ));
    assert!(matches!(
        rt.block_on(eval_body(&model_body, &r, Some(&cb), &snap)),
        Decision::Allow(_)
    ));
    let n = 20_000;
    let time = |f: &mut dyn FnMut()| -> Vec<Duration> {
        for _ in 0..1_000 {
            f();
        }
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect()
    };
    let s = time(&mut || {
        black_box(rt.block_on(eval_body(&mcp, &r, Some(&mb), &snap)));
    });
    report(&format!("mcp-guard 2KiB ({} B)", mb.len()), n, s);
    let s = time(&mut || {
        let head = rules.check_head(&json_headers).unwrap();
        black_box(rules.check_body(&head, cb.clone()).unwrap());
    });
    report(&format!("body checks 4KiB ({} B)", cb.len()), n, s);
    let s = time(&mut || {
        let head = rules.check_head(&json_headers).unwrap();
        let b = rules.check_body(&head, cb.clone()).unwrap();
        black_box(rt.block_on(eval_body(&model_body, &r, Some(&b), &snap)));
    });
    report("checks + model-guard 4KiB", n, s);
}

fn report(name: &str, n: usize, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "  {name:<28} n={n}  median {:>8.2?}  p99 {:>8.2?}  p99.9 {:>8.2?}",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
