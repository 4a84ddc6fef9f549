//! Host tests against real built components (`scripts/build-plugins.sh` builds them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::http::ClientInfo;
use crate::secrets::SecretSnapshot;
use crate::telemetry::{PluginLabel, metrics};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn wasm(name: &str) -> PathBuf {
    let p = if [
        "misbehave",
        "wrong_world",
        "missing_export",
        "fs_reader",
        "legacy_v010",
        "future_version",
    ]
    .contains(&name)
    {
        repo()
            .join("tests/plugins/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm"))
    } else {
        repo()
            .join("plugins/target/wasm32-unknown-unknown/release")
            .join(format!("{name}.wasm"))
    };
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        p.display()
    );
    p
}

fn host() -> Arc<PolicyHost> {
    static HOST: OnceLock<Arc<PolicyHost>> = OnceLock::new();
    HOST.get_or_init(|| {
        let settings = PolicySettings {
            cache_dir: Some(std::env::temp_dir().join("warden-policy-unit-cache")),
            max_instances: 200,
            ..PolicySettings::default()
        };
        PolicyHost::new(&settings, Path::new("/")).unwrap()
    })
    .clone()
}

fn plugin_cfg(toml_text: &str) -> PluginConfig {
    toml::from_str(toml_text).unwrap()
}

fn plugin(file: &str) -> PluginConfig {
    plugin_cfg(&format!("file = {:?}", wasm(file).display().to_string()))
}

fn load(
    plugins: &[(&str, PluginConfig)],
) -> Result<PluginSet, Vec<(String, crate::config::field::FieldError)>> {
    let map: BTreeMap<String, PluginConfig> = plugins
        .iter()
        .map(|(n, c)| (n.to_string(), c.clone()))
        .collect();
    host().load(&map, Path::new("/"))
}

fn policies(toml_text: &str) -> Vec<PolicyConfig> {
    #[derive(serde::Deserialize)]
    struct P {
        policies: Vec<PolicyConfig>,
    }
    toml::from_str::<P>(toml_text).unwrap().policies
}

async fn chain(plugins: &[(&str, PluginConfig)], route: &str, toml_text: &str) -> Chain {
    let set = load(plugins).expect("plugins load");
    Chain::build(&set, route, &policies(toml_text))
        .await
        .expect("chain builds")
}

async fn chain_errors(plugins: &[(&str, PluginConfig)], toml_text: &str) -> Vec<String> {
    let set = load(plugins).expect("plugins load");
    match Chain::build(&set, "r", &policies(toml_text)).await {
        Ok(_) => panic!("chain accepted"),
        Err(e) => e
            .into_iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect(),
    }
}

fn load_errors(plugins: &[(&str, PluginConfig)]) -> Vec<String> {
    match load(plugins) {
        Ok(_) => panic!("plugins accepted"),
        Err(e) => e
            .into_iter()
            .map(|(n, e)| format!("{n}.{}: {}", e.key, e.reason))
            .collect(),
    }
}

struct Req {
    method: Method,
    path: String,
    headers: HeaderMap,
    client: ClientInfo,
}

fn req(method: &str, path: &str) -> Req {
    Req {
        method: method.parse().unwrap(),
        path: path.into(),
        headers: HeaderMap::new(),
        client: ClientInfo {
            addr: "127.0.0.1:50000".parse::<SocketAddr>().unwrap(),
            ip: http::HeaderValue::from_static("127.0.0.1"),
            tls: false,
            sni: None,
            uri_sans: vec![],
            dns_sans: vec![],
        },
    }
}

impl Req {
    fn header(mut self, n: &'static str, v: &str) -> Self {
        self.headers.append(n, HeaderValue::from_str(v).unwrap());
        self
    }
    fn from(mut self, addr: &str) -> Self {
        self.client.addr = addr.parse().unwrap();
        self
    }
    fn san(mut self, s: &str) -> Self {
        self.client.tls = true;
        self.client.uri_sans.push(s.into());
        self
    }
    async fn eval(&self, chain: &Chain, route: &str) -> Decision {
        let pr = PolicyRequest {
            route,
            method: &self.method,
            path: &self.path,
            query: None,
            headers: &self.headers,
            client: &self.client,
            body: None,
        };
        chain.evaluate(&pr, &SecretSnapshot::empty()).await
    }
}

fn status(d: &Decision) -> u16 {
    match d {
        Decision::Allow(_) => 200,
        Decision::Deny { status, .. } => status.as_u16(),
    }
}

fn body(d: &Decision) -> serde_json::Value {
    match d {
        Decision::Deny { body, .. } => {
            serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
        }
        Decision::Allow(_) => panic!("allowed"),
    }
}

fn counter(
    f: &prometheus_client::metrics::family::Family<PluginLabel, crate::telemetry::Counter>,
    p: &str,
) -> u64 {
    f.get_or_create(&PluginLabel { plugin: p.into() }).get()
}

const NI_RULES: &str = r#"
[[policies]]
plugin = "ni"
config = { rule_set = "internal", allow = [
  { identity = "spiffe://sophia/sophia-api" },
  { identity = "spiffe://ml/*", methods = ["POST"] },
  { cidr = "10.0.0.0/8", methods = ["GET"], path = "/v1/models/*" },
] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_isolation_allows_by_identity_cidr_and_denies_with_a_safe_body() {
    let c = chain(
        &[("ni", plugin("network_isolation"))],
        "inference",
        NI_RULES,
    )
    .await;
    assert!(!c.is_empty());
    assert_eq!(
        status(
            &req("GET", "/x")
                .san("spiffe://sophia/sophia-api")
                .eval(&c, "inference")
                .await
        ),
        200
    );
    assert_eq!(
        status(
            &req("POST", "/x")
                .san("spiffe://ml/ns/a")
                .eval(&c, "inference")
                .await
        ),
        200
    );
    assert_eq!(
        status(
            &req("GET", "/x")
                .san("spiffe://ml/ns/a")
                .eval(&c, "inference")
                .await
        ),
        403
    );
    assert_eq!(
        status(
            &req("GET", "/v1/models/a")
                .from("10.2.3.4:1")
                .eval(&c, "inference")
                .await
        ),
        200
    );
    // IPv4-mapped IPv6 peers are presented as IPv4.
    assert_eq!(
        status(
            &req("GET", "/v1/models/a")
                .from("[::ffff:10.2.3.4]:1")
                .eval(&c, "inference")
                .await
        ),
        200
    );
    let d = req("GET", "/v1/models/a")
        .from("192.0.2.1:1")
        .eval(&c, "inference")
        .await;
    assert_eq!(status(&d), 403);
    assert_eq!(
        body(&d),
        serde_json::json!({ "error": "forbidden", "route": "inference", "policy": "internal" })
    );
    let Decision::Deny { headers, .. } = d else {
        unreachable!()
    };
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json")
    );
}

#[tokio::test]
async fn bad_plugin_config_is_refused_with_key_paths() {
    let e = chain_errors(
        &[("ni", plugin("network_isolation"))],
        r#"
[[policies]]
plugin = "ni"
config = { allow = [ { identity = "spiffe://ok/x" }, { cidr = "300.0.0.0/8" } ] }
[[policies]]
plugin = "nope"
[[policies]]
plugin = "ni"
headers = ["x-foo"]
config = { allow = [ { cidr = "10.0.0.0/8", bogus = 1 } ] }
"#,
    )
    .await;
    assert!(
        e.iter()
            .any(|e| e.starts_with("policies[0].config.allow[1].cidr: ")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("policies[1].plugin: unknown plugin \"nope\"")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with("policies[2].headers[0]: ")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("policies[2].config.allow[0].bogus: unknown field")),
        "{e:?}"
    );
}

#[test]
fn integrity_refusals_have_clear_messages() {
    // sha256 pin mismatch, and a malformed pin.
    let mut p = plugin("network_isolation");
    p.sha256 = Some("00".repeat(32));
    let e = load_errors(&[("ni", p.clone())]);
    assert!(
        e[0].starts_with("ni.sha256: mismatch:") && e[0].contains("refusing"),
        "{e:?}"
    );
    p.sha256 = Some("xyz".into());
    assert_eq!(
        load_errors(&[("ni", p.clone())]),
        ["ni.sha256: expected 64 hex digits"]
    );
    // The right pin loads, with or without the `sha256:` prefix.
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(&p.file).unwrap(),
    ));
    p.sha256 = Some(format!("sha256:{}", digest.to_uppercase()));
    assert_eq!(
        load(&[("ni", p)]).unwrap().sha256("ni"),
        Some(digest.as_str())
    );

    let dir = tempfile::tempdir().unwrap();
    // Not a component: a core module, and not wasm at all.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello").unwrap();
    let e = load_errors(&[(
        "core",
        plugin_cfg(&format!("file = {:?}", core.display().to_string())),
    )]);
    assert!(
        e[0].starts_with("core.file: not a component: this is a core WebAssembly module"),
        "{e:?}"
    );
    let e = load_errors(&[(
        "text",
        plugin_cfg(&format!("file = {:?}", text.display().to_string())),
    )]);
    assert!(
        e[0].starts_with("text.file: not a component: the file is not WebAssembly"),
        "{e:?}"
    );
    // Missing file.
    let e = load_errors(&[("gone", plugin_cfg("file = \"/nonexistent/x.wasm\""))]);
    assert!(
        e[0].starts_with("gone.file: cannot read /nonexistent/x.wasm"),
        "{e:?}"
    );
    // Wrong world, missing export, forbidden import.
    let e = load_errors(&[("ww", plugin("wrong_world"))]);
    assert!(
        e[0].starts_with("ww.file: wrong world: missing export warden:policy/policy@0.2.0"),
        "{e:?}"
    );
    assert!(e[0].contains("hello"), "lists what it does export: {e:?}");
    let e = load_errors(&[("me", plugin("missing_export"))]);
    assert!(
        e[0].starts_with(
            "me.file: missing export: warden:policy/policy@0.1.0 has no `evaluate` function"
        ),
        "{e:?}"
    );
    let e = load_errors(&[("fs", plugin("fs_reader"))]);
    assert!(
        e[0].starts_with("fs.file: wrong world: the component imports wasi:filesystem"),
        "{e:?}"
    );
    // Limits out of range.
    let e = load_errors(&[(
        "big",
        plugin_cfg(&format!(
            "file = {:?}\nlimits = {{ memory = \"1GiB\", deadline = \"0s\" }}",
            wasm("misbehave").display().to_string()
        )),
    )]);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("big.limits.memory: must be at most 256MiB"),
        "{e:?}"
    );
}

#[test]
fn signatures_are_verified_against_trusted_keys() {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let other =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let file = wasm("network_isolation");
    let bytes = std::fs::read(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sig");
    std::fs::write(&good, hex::encode(key.sign(&bytes).as_ref())).unwrap();
    let bad = dir.path().join("bad.sig");
    std::fs::write(&bad, hex::encode(other.sign(&bytes).as_ref())).unwrap();

    let settings = PolicySettings {
        trusted_keys: vec![hex::encode(key.public_key().as_ref())],
        require_signatures: true,
        cache_dir: Some(std::env::temp_dir().join("warden-policy-unit-cache")),
        max_instances: 10,
        ..PolicySettings::default()
    };
    let h = PolicyHost::new(&settings, Path::new("/")).unwrap();
    let with_sig = |sig: Option<&Path>| {
        let mut p = plugin("network_isolation");
        p.signature = sig.map(Path::to_path_buf);
        BTreeMap::from([("ni".to_string(), p)])
    };
    assert!(h.load(&with_sig(Some(&good)), Path::new("/")).is_ok());
    let e = h.load(&with_sig(Some(&bad)), Path::new("/")).unwrap_err();
    assert_eq!(e[0].1.key, "signature");
    assert!(e[0].1.reason.starts_with("verification failed"), "{e:?}");
    let e = h.load(&with_sig(None), Path::new("/")).unwrap_err();
    assert!(e[0].1.reason.contains("require_signatures"), "{e:?}");
    // Bad settings fail host creation.
    let bad_settings = PolicySettings {
        trusted_keys: vec!["abcd".into()],
        ..PolicySettings::default()
    };
    assert!(
        PolicyHost::new(&bad_settings, Path::new("/"))
            .unwrap_err()
            .to_string()
            .contains("trusted_keys[0]")
    );
}

fn misbehave(extra: &str) -> PluginConfig {
    plugin_cfg(&format!(
        "file = {:?}\n{extra}",
        wasm("misbehave").display().to_string()
    ))
}

// One thread: a plugin that blocked its worker would stop the ticker entirely.
#[tokio::test(flavor = "current_thread")]
async fn looping_plugin_hits_its_deadline_without_stalling_the_runtime() {
    let c = chain(
        &[("loop-a", misbehave("limits = { deadline = \"20ms\" }"))],
        "r",
        "[[policies]]\nplugin = \"loop-a\"\nconfig = { mode = \"loop\" }",
    )
    .await;
    let before = counter(&metrics().policy.deadline_hits, "loop-a");
    // While the plugin loops, other tasks on the runtime keep running: a ticker counts
    // its ticks during the evaluation only.
    let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (ticks, done) = (ticks.clone(), done.clone());
        async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let start = Instant::now();
    let d = req("GET", "/").eval(&c, "r").await;
    let took = start.elapsed();
    let ticked = ticks.load(std::sync::atomic::Ordering::Relaxed);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.await.unwrap();
    assert_eq!(status(&d), 503);
    assert_eq!(
        body(&d),
        serde_json::json!({ "error": "policy unavailable", "route": "r", "policy": "loop-a" })
    );
    // The deadline counts the plugin's running time, so the wall clock is at least the
    // deadline; the upper bound only catches a plugin that was never stopped.
    assert!(
        took >= Duration::from_millis(20) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    assert_eq!(
        counter(&metrics().policy.deadline_hits, "loop-a"),
        before + 1
    );
    assert!(
        ticked >= 3,
        "the runtime stalled while the plugin looped: {ticked} ticks in {took:?}"
    );

    // A looping configure is refused at build time.
    let e = chain_errors(
        &[(
            "loop-b",
            misbehave("limits = { configure_deadline = \"50ms\" }"),
        )],
        "[[policies]]\nplugin = \"loop-b\"\nconfig = { mode = \"allow\", configure_loop = true }",
    )
    .await;
    assert!(
        e[0].starts_with(
            "policies[0].config: plugin \"loop-b\" failed while checking its config (deadline)"
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_and_traps_follow_on_error() {
    let c = chain(
        &[
            (
                "hog",
                misbehave("limits = { memory = \"8MiB\", deadline = \"1s\" }"),
            ),
            ("trap", misbehave("")),
            ("ok", misbehave("")),
        ],
        "r",
        r#"
[[policies]]
plugin = "hog"
on_error = "allow"
config = { mode = "hog" }
[[policies]]
plugin = "trap"
on_error = "allow"
config = { mode = "trap" }
[[policies]]
plugin = "ok"
config = { mode = "tag", name = "x-seen", value = "1" }
"#,
    )
    .await;
    let (h0, t0) = (
        counter(&metrics().policy.memory_limit_hits, "hog"),
        counter(&metrics().policy.traps, "trap"),
    );
    for _ in 0..20 {
        let d = req("GET", "/").eval(&c, "r").await;
        let Decision::Allow(ch) = d else {
            panic!("on_error = allow should continue: {d:?}")
        };
        assert_eq!(ch.set_headers.len(), 1);
    }
    assert_eq!(counter(&metrics().policy.memory_limit_hits, "hog"), h0 + 20);
    assert_eq!(counter(&metrics().policy.traps, "trap"), t0 + 20);

    let c = chain(
        &[(
            "hog2",
            misbehave("limits = { memory = \"8MiB\", deadline = \"1s\" }"),
        )],
        "r",
        "[[policies]]\nplugin = \"hog2\"\nconfig = { mode = \"hog\" }",
    )
    .await;
    let d = req("GET", "/").eval(&c, "r").await;
    assert_eq!(status(&d), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_verdicts_are_plugin_errors() {
    let c = chain(
        &[("m", misbehave(""))],
        "r",
        "[[policies]]\nplugin = \"m\"\nconfig = { mode = \"bad-header\" }",
    )
    .await;
    assert_eq!(status(&req("GET", "/").eval(&c, "r").await), 503);
    let c = chain(
        &[("m", misbehave(""))],
        "r",
        "[[policies]]\nplugin = \"m\"\nconfig = { mode = \"bad-status\" }",
    )
    .await;
    assert_eq!(status(&req("GET", "/").eval(&c, "r").await), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_semantics_first_deny_wins_changes_accumulate_shadow_never_blocks() {
    let plugins = [("m", misbehave("")), ("ni", plugin("network_isolation"))];
    // Shadow deny does not block; enforce changes accumulate; enforce deny wins with the
    // plugin's status, body and headers; later policies are not consulted.
    let c = chain(
        &plugins,
        "r",
        r#"
[[policies]]
plugin = "ni"
mode = "shadow"
config = { allow = [ { cidr = "192.0.2.0/24" } ] }
[[policies]]
plugin = "m"
config = { mode = "tag", name = "x-a", value = "1" }
[[policies]]
plugin = "m"
config = { mode = "tag", name = "x-b", value = "2" }
"#,
    )
    .await;
    let shadow = metrics()
        .policy
        .verdicts
        .get_or_create(&crate::telemetry::VerdictLabels {
            plugin: "ni".into(),
            route: "r".into(),
            verdict: "deny".into(),
            mode: "shadow".into(),
        })
        // Clone the counter: holding the family's read guard would deadlock the next
        // registration in this family.
        .clone();
    let before = shadow.get();
    let Decision::Allow(ch) = req("GET", "/").eval(&c, "r").await else {
        panic!("shadow blocked")
    };
    let set: Vec<(&str, &str)> = ch
        .set_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(set, [("x-a", "1"), ("x-b", "2")]);
    assert_eq!(ch.response_headers.len(), 2);
    assert_eq!(shadow.get(), before + 1);

    let c = chain(
        &plugins,
        "r",
        r#"
[[policies]]
plugin = "m"
config = { mode = "tag", name = "x-a", value = "1" }
[[policies]]
plugin = "m"
config = { mode = "deny" }
[[policies]]
plugin = "m"
config = { mode = "loop" }
"#,
    )
    .await;
    let d = req("GET", "/").eval(&c, "r").await;
    let Decision::Deny {
        status,
        body,
        headers,
    } = d
    else {
        panic!()
    };
    assert_eq!(status.as_u16(), 451);
    assert_eq!(&body[..], br#"{"error":"unavailable for legal reasons"}"#);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "x-denied-by" && v == "misbehave")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_has_no_clock_env_or_sensitive_headers_unless_granted() {
    let c = chain(
        &[("m", misbehave(""))],
        "r",
        r#"
[[policies]]
plugin = "m"
config = { mode = "introspect" }
[[policies]]
plugin = "m"
headers = ["authorization"]
config = { mode = "introspect" }
"#,
    )
    .await;
    let r = req("GET", "/")
        .header("authorization", "Bearer x")
        .header("cookie", "a=b")
        .header("x-other", "1")
        .san("spiffe://t/w");
    let d = r.eval(&c, "r").await;
    let b = body(&d);
    assert_eq!(b["now"], 0, "wall clock is frozen");
    assert_eq!(b["env"], 0);
    assert_eq!(b["headers"], serde_json::json!(["x-other"]));
    assert_eq!(b["uri_sans"], serde_json::json!(["spiffe://t/w"]));
    assert_eq!(b["client"], "127.0.0.1");

    // The second policy (granted authorization) is reached only if the first allows; check
    // it alone.
    let c = chain(
        &[("m", misbehave(""))],
        "r",
        "[[policies]]\nplugin = \"m\"\nheaders = [\"Authorization\"]\nconfig = { mode = \"introspect\" }",
    ).await;
    let b = body(&r.eval(&c, "r").await);
    assert_eq!(
        b["headers"],
        serde_json::json!(["authorization", "x-other"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_matches_compares_only_granted_secrets() {
    let plugins = [("m", misbehave("")), ("ak", plugin("api_key"))];
    let c = chain(
        &plugins,
        "r",
        r#"
[[policies]]
plugin = "ak"
secrets = { api_key = "s3cret-value" }
config = { header = "x-api-key", secret = "api_key" }
"#,
    )
    .await;
    let ok = req("GET", "/")
        .header("x-api-key", "s3cret-value")
        .eval(&c, "r")
        .await;
    let Decision::Allow(ch) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(ch.remove_headers, ["x-api-key"]);
    let bad = req("GET", "/")
        .header("x-api-key", "s3cret-valuf")
        .eval(&c, "r")
        .await;
    assert_eq!(status(&bad), 401);
    assert!(
        !String::from_utf8_lossy(match &bad {
            Decision::Deny { body, .. } => body,
            _ => unreachable!(),
        })
        .contains("s3cret")
    );

    // Asking for a secret the route does not grant is a plugin error.
    let c = chain(
        &plugins,
        "r",
        "[[policies]]\nplugin = \"m\"\nconfig = { mode = \"secret\", name = \"other\", value = \"x-k\" }",
    ).await;
    assert_eq!(
        status(&req("GET", "/").header("x-k", "v").eval(&c, "r").await),
        503
    );

    // api-key refuses at configure time when the secret is not granted.
    let e = chain_errors(
        &plugins,
        "[[policies]]\nplugin = \"ak\"\nconfig = { secret = \"api_key\" }",
    )
    .await;
    assert!(
        e[0].starts_with("policies[0].config.secret: the route grants no secret named \"api_key\""),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_isolation_and_pool_recycling_work() {
    let c = chain(
        &[
            ("pr", misbehave("isolation = \"per-request\"")),
            ("pool", misbehave("pool = { size = 2, max_uses = 3 }")),
        ],
        "r",
        r#"
[[policies]]
plugin = "pr"
config = { mode = "tag", name = "x-a", value = "1" }
[[policies]]
plugin = "pool"
config = { mode = "tag", name = "x-b", value = "1" }
"#,
    )
    .await;
    let mut tasks = Vec::new();
    let c = Arc::new(c);
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let Decision::Allow(ch) = req("GET", "/").eval(&c, "r").await else {
                    panic!()
                };
                assert_eq!(ch.set_headers.len(), 2);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let idle = c.entries_idle();
    assert_eq!(idle[0], 0, "per-request keeps no instances");
    assert!(
        idle[1] <= 2,
        "pool keeps at most `size` idle instances: {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logs_are_rate_limited() {
    let c = chain(
        &[("flood", misbehave(""))],
        "r",
        "[[policies]]\nplugin = \"flood\"\nconfig = { mode = \"log-flood\" }",
    )
    .await;
    // 200, not 503: the flood finished inside its 10 ms running-time deadline. The wall
    // clock is not held to that (the deadline counts running time); its bound only
    // catches a hang.
    let start = Instant::now();
    assert_eq!(status(&req("GET", "/").eval(&c, "r").await), 200);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    // The limiter admitted a burst and dropped the rest.
    let logs = &c.plugin_logs()[0];
    let admitted = (0..100).filter(|_| logs.admit().is_some()).count();
    assert!(admitted < 5, "bucket is drained: {admitted}");
}

/// Settings with the plugin cache in `dir`, and header-guard as the one plugin: what the
/// cache tests load, each load as after a restart.
fn header_guard_cached_in(dir: &Path) -> (PolicySettings, BTreeMap<String, PluginConfig>) {
    let settings = PolicySettings {
        cache_dir: Some(dir.to_path_buf()),
        max_instances: 4,
        ..PolicySettings::default()
    };
    let plugins = BTreeMap::from([("hg".to_string(), plugin("header_guard"))]);
    (settings, plugins)
}

#[test]
fn precompiled_artifacts_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, plugins) = header_guard_cached_in(dir.path());
    let h = PolicyHost::new(&settings, Path::new("/")).unwrap();
    let t = Instant::now();
    h.load(&plugins, Path::new("/")).unwrap();
    let cold = t.elapsed();
    drop(h);
    let count = walk(dir.path());
    assert!(count > 0, "cache directory has artifacts");
    // A new host (as after a restart) loads from the cache.
    let h = PolicyHost::new(&settings, Path::new("/")).unwrap();
    let t = Instant::now();
    h.load(&plugins, Path::new("/")).unwrap();
    let warm = t.elapsed();
    assert!(
        warm < cold,
        "cached load {warm:?} should beat compiling {cold:?}"
    );
}

#[test]
fn componentized_plugins_are_cached_and_a_damaged_entry_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, plugins) = header_guard_cached_in(dir.path());
    let sha256 = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    let module = std::fs::read(wasm("header_guard")).unwrap();
    assert_eq!(
        &module[4..8],
        [1, 0, 0, 0],
        "the demo plugins are core modules"
    );
    let entry = super::host::component_cache_path(dir.path(), &hex::encode(sha256(&module)));
    // Each load is a new host, as after a restart: nothing is kept in memory between them.
    let load = || -> Result<(), Vec<String>> {
        PolicyHost::new(&settings, Path::new("/"))
            .unwrap()
            .load(&plugins, Path::new("/"))
            .map(|_| ())
            .map_err(|e| {
                e.into_iter()
                    .map(|(n, e)| format!("{n}.{}: {}", e.key, e.reason))
                    .collect()
            })
    };

    load().unwrap();
    let made = std::fs::read(&entry).expect("the componentized plugin is cached");
    let module_sha = hex::encode(sha256(&module));
    let digest = |component: &[u8]| super::host::cache_entry_digest(&module_sha, component);
    assert_eq!(
        &made[..32],
        digest(&made[32..]).as_ref(),
        "entry = digest ++ component"
    );
    assert_eq!(&made[32..36], b"\0asm");
    assert_eq!(&made[38..40], [1, 0], "a component, not the core module");
    let files = || std::fs::read_dir(entry.parent().unwrap()).unwrap().count();
    assert_eq!(files(), 1, "no temporary file is left");

    // A restart loads what the entry holds, without componentizing the module again: an
    // entry holding another component, digested for this module, is what gets checked.
    let other = std::fs::read(wasm("wrong_world")).unwrap();
    std::fs::write(&entry, [digest(&other).as_ref(), &other[..]].concat()).unwrap();
    let e = load().unwrap_err();
    assert!(e[0].starts_with("hg.file: wrong world"), "{e:?}");

    // An entry made from another module (whole, but moved or written under this module's
    // name), one digested without the module's hash, and a damaged one (a flipped byte,
    // torn short) are never loaded: each is made again.
    let moved = {
        let d = super::host::cache_entry_digest(&hex::encode(sha256(b"another")), &other);
        [d.as_ref(), &other[..]].concat()
    };
    let unbound = [sha256(&made[32..]).as_ref(), &made[32..]].concat();
    let mut flipped = made.clone();
    let mid = 32 + (flipped.len() - 32) / 2;
    flipped[mid] ^= 0x40;
    for damaged in [
        moved,
        unbound,
        flipped,
        made[..20].to_vec(),
        made[..made.len() - 1].to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&entry, &damaged).unwrap();
        load().unwrap();
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            made,
            "the entry is written whole again"
        );
    }

    // No cache directory: nothing is written, and the plugin still loads.
    let off = PolicySettings {
        cache: false,
        ..settings.clone()
    };
    std::fs::remove_file(&entry).unwrap();
    PolicyHost::new(&off, Path::new("/"))
        .unwrap()
        .load(&plugins, Path::new("/"))
        .unwrap();
    assert!(!entry.exists());
}

#[test]
fn the_component_cache_keeps_what_is_used_and_drops_what_is_not() {
    use std::time::{Duration, SystemTime};
    let dir = tempfile::tempdir().unwrap();
    let (settings, plugins) = header_guard_cached_in(dir.path());
    let load = || {
        PolicyHost::new(&settings, Path::new("/"))
            .unwrap()
            .load(&plugins, Path::new("/"))
            .unwrap()
    };
    load();
    let module = std::fs::read(wasm("header_guard")).unwrap();
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &module));
    let entry = super::host::component_cache_path(dir.path(), &sha);
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    // The name carries the version of the encoder that made the entry, as the component's
    // own producers section records it.
    let component = std::fs::read(&entry).unwrap()[32..].to_vec();
    let mut made_by = None;
    for payload in wasmparser::Parser::new(0).parse_all(&component) {
        if let Ok(wasmparser::Payload::CustomSection(c)) = payload
            && let wasmparser::KnownCustom::Producers(fields) = c.as_known()
        {
            for field in fields.into_iter().flatten() {
                if field.name != "processed-by" {
                    continue;
                }
                for v in field.values.into_iter().flatten() {
                    if v.name == "wit-component" {
                        made_by = Some(v.version.to_string());
                    }
                }
            }
        }
    }
    let made_by = made_by.expect("wit-component names itself in the component's producers");
    assert_eq!(
        name,
        format!(
            "{sha}-{}-wit-component-{made_by}.component",
            env!("CARGO_PKG_VERSION")
        ),
        "the entry names this build's encoder"
    );
    let components = entry.parent().unwrap().to_path_buf();

    let now = SystemTime::now();
    let days = |n: u64| now - Duration::from_secs(n * 24 * 3600);
    let set_modified = |p: &Path, t: SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap()
    };
    let file = |name: &str, modified: SystemTime| {
        let p = components.join(name);
        std::fs::write(&p, b"x").unwrap();
        set_modified(&p, modified);
        p
    };
    // An entry of an older Warden (or encoder), and of a plugin since replaced, unused for
    // more than a week: removed. One unused for a day (another gateway sharing the
    // directory may use it): kept. A writer's temporary file older than an hour (its
    // writer died): removed; a fresh one (a writer at work): kept. An entry dated more
    // than a day ahead (a clock set back) counts as old. Names the cache does not write,
    // directories, and links (and what they point to) are never touched, whatever their age.
    let tmp = |c: char| format!(".tmp-{}", c.to_string().repeat(32));
    let old_version = file(
        &format!("{sha}-0.0.1-wit-component-0.1.0.component"),
        days(8),
    );
    let replaced = file(&name.replacen(&sha, &"0".repeat(64), 1), days(30));
    let ahead = file(
        &name.replacen(&sha, &"2".repeat(64), 1),
        now + Duration::from_secs(3 * 24 * 3600),
    );
    let recent = file(
        &format!("{}-0.0.9-wit-component-0.0.1.component", "1".repeat(64)),
        days(1),
    );
    let dead_writer = file(&tmp('a'), now - Duration::from_secs(7200));
    let live_writer = file(&tmp('b'), now - Duration::from_secs(10));
    let foreign = [
        file("notes.txt", days(400)),
        file("mine.component", days(400)),
        file(".tmp-mine", days(400)),
    ];
    std::fs::create_dir(components.join("sub.component")).unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"not the cache's").unwrap();
    set_modified(&outside, days(400));
    let outside_modified = std::fs::metadata(&outside).unwrap().modified().unwrap();
    let link = components.join(format!(
        "{}-0.0.1-wit-component-0.1.0.component",
        "3".repeat(64)
    ));
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    // The entry in use, last marked long ago, is kept and marked as used now.
    set_modified(&entry, days(60));

    load();
    for gone in [&old_version, &replaced, &ahead, &dead_writer] {
        assert!(!gone.exists(), "{} is removed", gone.display());
    }
    for kept in [&recent, &live_writer, &entry].into_iter().chain(&foreign) {
        assert!(kept.exists(), "{} is kept", kept.display());
    }
    assert!(components.join("sub.component").is_dir());
    assert!(link.symlink_metadata().is_ok(), "a link is left alone");
    assert_eq!(
        std::fs::metadata(&outside).unwrap().modified().unwrap(),
        outside_modified,
        "what a link points to is left alone"
    );
    let marked = std::fs::metadata(&entry).unwrap().modified().unwrap();
    assert!(
        marked > days(1),
        "the entry in use is marked as used at this load"
    );

    // Marked again only once its mark is a day old: a reload does not write to the cache.
    let modified = || std::fs::metadata(&entry).unwrap().modified().unwrap();
    set_modified(&entry, now - Duration::from_secs(3600));
    let an_hour_ago = modified();
    load();
    assert_eq!(modified(), an_hour_ago);
}

#[test]
fn the_temp_dir_cache_is_used_only_when_it_is_this_users_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = super::host::private_cache_dir_in(tmp.path()).expect("made private");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert_eq!(
        super::host::private_cache_dir_in(tmp.path()),
        Some(dir.clone())
    );

    // Another user could have made it first: writable by others, or a link elsewhere.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(super::host::private_cache_dir_in(tmp.path()), None);
    std::fs::remove_dir(&dir).unwrap();
    let elsewhere = tmp.path().join("planted");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    assert_eq!(super::host::private_cache_dir_in(tmp.path()), None);
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn inspect_reports_world_and_hash() {
    let info = inspect_component(&host(), &wasm("network_isolation")).unwrap();
    assert_eq!(info.sha256.len(), 64);
    assert!(
        info.exports.iter().any(|e| e
            .starts_with("warden:policy/policy@0.2.0 { configure, evaluate, evaluate-response }")),
        "{info:?}"
    );
    assert!(
        info.imports
            .iter()
            .any(|i| i == "warden:policy/types@0.2.0"),
        "{info:?}"
    );
    // Built for wasm32-unknown-unknown: nothing of WASI at all.
    assert!(
        !info.imports.iter().any(|i| i.starts_with("wasi:")),
        "{info:?}"
    );
    assert_eq!(
        info.verdict.as_deref(),
        Ok("warden:policy/policy-plugin@0.2.0")
    );
    // The contract before 0.2.0 still loads; a version from the future is refused by name.
    let legacy = inspect_component(&host(), &wasm("legacy_v010")).unwrap();
    assert_eq!(
        legacy.verdict.as_deref(),
        Ok("warden:policy/policy-plugin@0.1.0")
    );
    let future = inspect_component(&host(), &wasm("future_version")).unwrap();
    assert_eq!(
        future.verdict,
        Err(
            "wrong world: built against warden:policy@0.9.0, this gateway supports 0.1.0 and 0.2.0"
                .into()
        )
    );
    let info = inspect_component(&host(), &wasm("wrong_world")).unwrap();
    assert!(info.verdict.is_err());
}
