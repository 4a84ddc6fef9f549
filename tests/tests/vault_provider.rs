//! The Vault provider through the secret store's own API, against a real OpenBao dev
//! server with its audit log counting requests: KV v1 and v2, token, AppRole, leases,
//! outages and TLS. (tests/tests/secrets.rs covers the same provider through the gateway.)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use warden::secrets::{ProviderConfig, SecretRef, SecretStore, SecretsError, Template};
use warden_tests::openbao::{OpenBao, toml_path};

const CANARY: &str = "canary-7f3a91c2-do-not-leak";

fn r(p: &str, n: &str) -> SecretRef {
    SecretRef::new(p, n)
}

fn providers(toml_text: &str) -> BTreeMap<String, ProviderConfig> {
    #[derive(serde::Deserialize)]
    struct W {
        secrets: BTreeMap<String, ProviderConfig>,
    }
    toml::from_str::<W>(toml_text)
        .expect("provider config")
        .secrets
}

fn value_of(store: &SecretStore, re: &SecretRef) -> Result<String, SecretsError> {
    let s = store.snapshot();
    s.get(re)
        .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
}

/// Poll `f` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn vault_providers(bao: &OpenBao, auth: &str, extra: &str) -> BTreeMap<String, ProviderConfig> {
    providers(&format!(
        "[secrets.vault]\ntype = \"vault\"\naddress = \"{}\"\nauth = {auth}\n{extra}\n",
        bao.addr
    ))
}

fn token_auth(bao: &OpenBao, token: &str) -> String {
    format!(
        "{{ method = \"token\", token_file = {} }}",
        toml_path(&bao.write_file("token", token))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_token_kv2_read_rotate_and_errors() {
    init_crypto();
    let bao = OpenBao::start();
    let v1 = bao.kv_put("ml/inference", &[("api_key", CANARY), ("other", "o1")]);
    bao.kv_put("bad/value", &[("k", "line1\nline2")]);
    let token = bao.create_token("1h");
    let p = vault_providers(&bao, &token_auth(&bao, &token), "refresh = \"1h\"");
    let key = r("vault", "ml/inference#api_key");
    let other = r("vault", "ml/inference#other");
    let before = bao.audit_requests_to("secret/data/ml/inference");
    let store = SecretStore::start(&p, Path::new("/"), vec![key.clone(), other.clone()], true)
        .await
        .unwrap();
    assert_eq!(value_of(&store, &key).unwrap(), CANARY);
    let st = store.status();
    assert_eq!(st[0].version, Some(v1));
    assert_eq!(st[0].kind, "vault");
    // Two keys of one path: one read.
    let reads = bao.audit_requests_to("secret/data/ml/inference") - before;
    assert_eq!(reads, 1, "one read per path");

    let v2 = bao.kv_put("ml/inference", &[("api_key", "rotated"), ("other", "o2")]);
    store.refresh().await.unwrap();
    assert_eq!(value_of(&store, &key).unwrap(), "rotated");
    assert_eq!(store.status()[0].version, Some(v2));

    // Start-up errors name each reference; a header-invalid value is refused.
    let refs = vec![
        r("vault", "ml/inference#missing"),
        r("vault", "no/such/path#k"),
        r("vault", "bad/value#k"),
        key.clone(),
    ];
    let errs = SecretStore::start(&p, Path::new("/"), refs, false)
        .await
        .unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(
        text.iter().any(|t| t
            .starts_with("${vault:ml/inference#missing} does not exist: key missing not found")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("${vault:no/such/path#k} does not exist") && t.contains("404")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t
            .starts_with("${vault:bad/value#k}: value refused because it contains a line feed")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .all(|t| !t.contains(CANARY) && !t.contains("line1"))
    );

    // A bad token fails start-up clearly.
    let p_bad = vault_providers(&bao, &token_auth(&bao, "not-a-token"), "");
    let errs = SecretStore::start(&p_bad, Path::new("/"), vec![key.clone()], false)
        .await
        .unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("token lookup failed: Vault answered HTTP 403"),
        "{}",
        errs[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_token_file_reread_after_revocation() {
    init_crypto();
    let bao = OpenBao::start();
    bao.kv_put("app", &[("k", "v1")]);
    let t1 = bao.create_token("1h");
    let p = vault_providers(&bao, &token_auth(&bao, &t1), "refresh = \"1h\"");
    let key = r("vault", "app#k");
    let store = SecretStore::start(&p, Path::new("/"), vec![key.clone()], false)
        .await
        .unwrap();
    // Whoever manages the token file (Vault Agent …) writes a new one and revokes the old.
    let t2 = bao.create_token("1h");
    bao.write_file("token", &t2);
    bao.revoke_token(&t1);
    bao.kv_put("app", &[("k", "v2")]);
    store.refresh().await.unwrap();
    assert_eq!(value_of(&store, &key).unwrap(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_approle_login_renewal_and_relogin() {
    init_crypto();
    let bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "a1")]);
    // Short TTLs: renewal at ~2/3 of 3s, and re-login once max TTL (5s) is near.
    let (role_id, secret_id) = bao.create_approle("warden", "3s", "5s");
    let auth = format!(
        "{{ method = \"approle\", role_id_file = {}, secret_id_file = {} }}",
        toml_path(&bao.write_file("role_id", &role_id)),
        toml_path(&bao.write_file("secret_id", &secret_id))
    );
    let p = vault_providers(&bao, &auth, "refresh = \"500ms\"");
    let key = r("vault", "ml/inference#api_key");
    let store = SecretStore::start(&p, Path::new("/"), vec![key.clone()], true)
        .await
        .unwrap();
    // The first token was issued before this instant.
    let first_login = Instant::now();
    assert_eq!(value_of(&store, &key).unwrap(), "a1");
    let logins0 = bao.audit_requests_to("auth/approle/login");
    assert_eq!(logins0, 1);

    // The token is renewed, then replaced by a new login near its max TTL …
    assert!(
        eventually(Duration::from_secs(30), || {
            bao.audit_requests_to("auth/token/renew-self") >= 1
                && bao.audit_requests_to("auth/approle/login") >= 2
        })
        .await,
        "token renewed (renewals {}) and re-login near max TTL (logins {})",
        bao.audit_requests_to("auth/token/renew-self"),
        bao.audit_requests_to("auth/approle/login")
    );
    // … and reads keep succeeding past the first token's max TTL (5 s). Deliberate wait:
    // once it has passed, a value written can only be read with a token from a later
    // login.
    tokio::time::sleep(
        (first_login + Duration::from_secs(6)).saturating_duration_since(Instant::now()),
    )
    .await;
    bao.kv_put("ml/inference", &[("api_key", "a2")]);
    assert!(
        eventually(Duration::from_secs(10), || value_of(&store, &key)
            .is_ok_and(|v| v == "a2"))
        .await,
        "{:?}",
        store.status()
    );
    assert!(
        store.status()[0].last_error.is_none(),
        "{:?}",
        store.status()
    );
    assert!(
        store.status()[0].age_seconds.unwrap() <= 1,
        "{:?}",
        store.status()
    );

    // The secret_id is never in a status or error.
    assert!(!format!("{:?}", store.status()).contains(&secret_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_kv1_lease_aware_refresh() {
    init_crypto();
    let bao = OpenBao::start();
    bao.kv1_put("legacy/db", &[("password", "p1")], Some("3s"));
    let token = bao.create_token("1h");
    let p = vault_providers(
        &bao,
        &token_auth(&bao, &token),
        "mount = \"kv1\"\nkv_version = 1\nrefresh = \"1h\"",
    );
    let key = r("vault", "legacy/db#password");
    let store = SecretStore::start(&p, Path::new("/"), vec![key.clone()], true)
        .await
        .unwrap();
    assert_eq!(value_of(&store, &key).unwrap(), "p1");
    assert_eq!(store.status()[0].version, None);
    bao.kv1_put("legacy/db", &[("password", "p2")], Some("3s"));
    // refresh is 1h, but the 3s lease brings the next read forward to ~2s.
    assert!(
        eventually(Duration::from_secs(6), || value_of(&store, &key).unwrap()
            == "p2")
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_serves_cache_then_stale_then_recovers() {
    init_crypto();
    let mut bao = OpenBao::start();
    bao.kv_put("ml/inference", &[("api_key", "k1")]);
    let auth = token_auth(&bao, &bao.root_token.clone());
    let p = vault_providers(
        &bao,
        &auth,
        "refresh = \"300ms\"\nmax_stale = \"3s\"\ntimeout = \"1s\"",
    );
    let key = r("vault", "ml/inference#api_key");
    let t = Template::parse("Bearer ${vault:ml/inference#api_key}").unwrap();
    let store = SecretStore::start(&p, Path::new("/"), vec![key.clone()], true)
        .await
        .unwrap();

    bao.stop();
    let down = Instant::now();
    // Requests keep rendering from the cache while failures are recorded.
    assert!(
        eventually(Duration::from_secs(3), || store.status()[0]
            .last_error
            .is_some())
        .await
    );
    let err = store.status()[0].last_error.clone().unwrap();
    assert!(err.contains("request failed"), "{err}");
    if down.elapsed() < Duration::from_millis(2500) {
        assert_eq!(t.render_header(&store.snapshot()).unwrap(), "Bearer k1");
    }
    // Past max_stale: a value-free Stale error.
    assert!(
        eventually(Duration::from_secs(5), || t
            .render_header(&store.snapshot())
            .is_err())
        .await
    );
    assert_eq!(
        t.render_header(&store.snapshot()).unwrap_err(),
        SecretsError::Stale {
            reference: key.to_string()
        }
    );

    // Back up (in-memory dev server: data written again) → recovery within backoff.
    bao.restart();
    bao.kv_put("ml/inference", &[("api_key", "k2")]);
    assert!(
        eventually(Duration::from_secs(10), || t
            .render_header(&store.snapshot())
            .is_ok())
        .await
    );
    assert_eq!(t.render_header(&store.snapshot()).unwrap(), "Bearer k2");
    assert!(store.status()[0].last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_tls_with_ca_file() {
    init_crypto();
    let bao = OpenBao::start_tls();
    bao.kv_put("tls/app", &[("k", "over-tls")]);
    let ca = bao.ca_file.clone().unwrap();
    let key = r("vault", "tls/app#k");
    let auth = token_auth(&bao, &bao.root_token.clone());
    let p = vault_providers(&bao, &auth, &format!("ca_file = {}", toml_path(&ca)));
    for cfg in p.values() {
        assert!(cfg.check().is_empty(), "{:?}", cfg.check());
    }
    let store = SecretStore::start(&p, Path::new("/"), vec![key.clone()], false)
        .await
        .unwrap();
    assert_eq!(value_of(&store, &key).unwrap(), "over-tls");
    // Without the CA the server certificate is not trusted.
    let p = vault_providers(&bao, &auth, "");
    let errs = SecretStore::start(&p, Path::new("/"), vec![key], false)
        .await
        .unwrap_err();
    assert!(
        errs[0].to_string().contains("request failed"),
        "{}",
        errs[0]
    );
}
