use super::*;
use warden_sdk::serde_json::{Value, json};
use warden_sdk::testing::Harness;

fn harness(config: Value) -> Harness<RateLimit> {
    Harness::builder()
        .route("api")
        .configure(config)
        .expect("valid config")
}

fn from(ip: &str) -> Request {
    Request::builder().client_ip(ip).build()
}

fn headers(v: &Verdict) -> (String, String) {
    (
        v.response_header_str("ratelimit-policy")
            .unwrap()
            .to_owned(),
        v.response_header_str("ratelimit").unwrap().to_owned(),
    )
}

#[test]
fn counts_per_client_with_ietf_headers() {
    let h = harness(json!({ "key": "client", "limit": 3, "window": "1m" }));
    let policy = "\"default\";q=3;w=60";
    // One token per 20 s; `t` is the time until the bucket is full again.
    for (r, t) in [(2, 20), (1, 40), (0, 60)] {
        let v = h.evaluate(&from("10.0.0.1"));
        assert!(v.is_allow());
        assert_eq!(
            headers(&v),
            (policy.into(), format!("\"default\";r={r};t={t}"))
        );
    }
    let v = h.evaluate(&from("10.0.0.1"));
    assert_eq!(v.status(), Some(429));
    assert_eq!(v.response_header_str("retry-after"), Some("20"));
    assert_eq!(headers(&v), (policy.into(), "\"default\";r=0;t=20".into()));
    assert_eq!(
        v.body_json().unwrap(),
        json!({ "error": "rate limit exceeded", "retry_after": 20 })
    );
    assert_eq!(
        v.response_header_str("content-type"),
        Some("application/json")
    );
    // Another client has its own bucket.
    assert!(h.evaluate(&from("10.0.0.2")).is_allow());
    // Refill is continuous.
    h.advance(Duration::from_millis(19_999));
    let v = h.evaluate(&from("10.0.0.1"));
    assert_eq!(
        v.response_header_str("retry-after"),
        Some("1"),
        "rounded up, never 0"
    );
    h.advance(Duration::from_millis(1));
    assert!(h.evaluate(&from("10.0.0.1")).is_allow());
}

#[test]
fn ipv6_clients_are_grouped_by_prefix() {
    let h = harness(json!({ "key": "client", "limit": 1, "window": "1h" }));
    assert!(h.evaluate(&from("2001:db8::1")).is_allow());
    // Rotating through one /64 does not give a fresh bucket.
    assert_eq!(h.evaluate(&from("2001:db8::2")).status(), Some(429));
    assert_eq!(
        h.evaluate(&from("2001:db8::ffff:1:2:3")).status(),
        Some(429)
    );
    assert!(h.evaluate(&from("2001:db8:0:1::1")).is_allow());
    // IPv4-mapped peers count as their IPv4 address.
    assert!(h.evaluate(&from("192.0.2.1")).is_allow());
    assert_eq!(h.evaluate(&from("::ffff:192.0.2.1")).status(), Some(429));
    let h = harness(json!({ "key": "client", "limit": 1, "window": "1h", "ipv6_prefix": 128 }));
    assert!(h.evaluate(&from("2001:db8::1")).is_allow());
    assert!(h.evaluate(&from("2001:db8::2")).is_allow());
}

#[test]
fn identity_buckets_and_fallback() {
    let h = harness(json!({ "key": "identity", "limit": 1, "window": "1m" }));
    let id = |san: &str| {
        Request::builder()
            .client_ip("10.0.0.1")
            .uri_san(san)
            .build()
    };
    assert!(h.evaluate(&id("spiffe://t/a")).is_allow());
    assert_eq!(h.evaluate(&id("spiffe://t/a")).status(), Some(429));
    assert!(
        h.evaluate(&id("spiffe://t/b")).is_allow(),
        "same address, other identity"
    );
    let dns = Request::builder()
        .client_ip("10.0.0.1")
        .dns_san("api.internal")
        .build();
    assert!(h.evaluate(&dns).is_allow());
    // Without an identity: counted by address (its own namespace, not an identity's).
    assert!(h.evaluate(&from("10.0.0.1")).is_allow());
    assert_eq!(h.evaluate(&from("10.0.0.1")).status(), Some(429));
    let h = harness(json!({ "key": "identity", "limit": 1, "window": "1m", "on_missing": "deny" }));
    let v = h.evaluate(&from("10.0.0.1"));
    assert_eq!(v.status(), Some(403));
    assert!(v.response_header_str("ratelimit").is_none());
}

#[test]
fn api_keys_are_hashed_and_never_leave_raw() {
    let h = harness(json!({ "key": "api_key", "limit": 2, "window": "10s" }));
    let key = |k: &str, ip: &str| {
        Request::builder()
            .client_ip(ip)
            .header("x-api-key", k)
            .build()
    };
    assert!(h.evaluate(&key("sk-live-1", "10.0.0.1")).is_allow());
    // Same key from elsewhere: same bucket.
    assert!(h.evaluate(&key("sk-live-1", "10.0.0.2")).is_allow());
    let v = h.evaluate(&key("sk-live-1", "10.0.0.3"));
    assert_eq!(v.status(), Some(429));
    assert_eq!(v.response_header_str("retry-after"), Some("5"));
    assert!(h.evaluate(&key("sk-live-2", "10.0.0.1")).is_allow());
    for v in [
        h.evaluate(&key("sk-live-1", "10.0.0.1")),
        h.evaluate(&key("sk-live-2", "10.0.0.1")),
    ] {
        let everything = format!("{v:?}");
        assert!(!everything.contains("sk-live"), "{everything}");
    }
    let k = h
        .policy()
        .bucket_key(&key("sk-live-1", "10.0.0.1"))
        .unwrap();
    assert!(
        k.starts_with("default|key:") && k.len() == "default|key:".len() + 32,
        "{k}"
    );
    assert!(!k.contains("sk-live"));
    assert!(h.take_logs().is_empty());
    // Sent twice: which one would the upstream read?
    let twice = Request::builder()
        .header("x-api-key", "fresh-every-time")
        .header("x-api-key", "sk-live-1")
        .build();
    assert_eq!(h.evaluate(&twice).status(), Some(400));
    // Without a key: counted by address by default.
    let k = h.policy().bucket_key(&from("10.9.9.9")).unwrap();
    assert_eq!(k, "default|ip:10.9.9.9");
    let k = h.policy().bucket_key(&key("", "10.9.9.9")).unwrap();
    assert_eq!(k, "default|ip:10.9.9.9", "an empty key is no key");
}

#[test]
fn header_keys_and_deny_on_missing() {
    let h = harness(
        json!({ "key": "header", "header": "X-Tenant", "limit": 1, "window": "1s",
                            "name": "tenant", "on_missing": "deny" }),
    );
    let t = |v: &str| Request::builder().header("x-tenant", v).build();
    let v = h.evaluate(&t("acme"));
    assert_eq!(
        headers(&v),
        ("\"tenant\";q=1;w=1".into(), "\"tenant\";r=0;t=1".into())
    );
    assert_eq!(h.evaluate(&t("acme")).status(), Some(429));
    assert!(h.evaluate(&t("globex")).is_allow());
    let v = h.evaluate(&Request::builder().build());
    assert_eq!(v.status(), Some(400));
    assert_eq!(
        v.body_json().unwrap(),
        json!({ "error": "the x-tenant header is required" })
    );
    // Named entries keep separate buckets.
    let k = h.policy().bucket_key(&t("acme")).unwrap();
    assert!(k.starts_with("tenant|h:"), "{k}");
}

#[test]
fn sub_second_refill_rounds_retry_after_up() {
    let h = harness(json!({ "key": "client", "limit": 3, "window": "1s" }));
    for _ in 0..3 {
        assert!(h.evaluate(&from("10.0.0.1")).is_allow());
    }
    let v = h.evaluate(&from("10.0.0.1"));
    assert_eq!(v.response_header_str("retry-after"), Some("1"));
    assert_eq!(
        v.response_header_str("ratelimit"),
        Some("\"default\";r=0;t=1")
    );
}

#[test]
fn config_errors_name_their_keys() {
    let keys = |c: Value| -> Vec<String> {
        Harness::<RateLimit>::builder()
            .configure(c)
            .err()
            .expect("refused")
            .0
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert_eq!(
        keys(json!({ "key": "client", "limit": 0, "window": "1m" })),
        ["limit"]
    );
    for w in ["500ms", "1500ms", "0s", "1 m", "1y", "60"] {
        assert_eq!(
            keys(json!({ "key": "client", "limit": 1, "window": w })),
            ["window"],
            "{w}"
        );
    }
    assert_eq!(
        keys(json!({ "key": "header", "limit": 1, "window": "1s" })),
        ["header"]
    );
    assert_eq!(
        keys(json!({ "key": "client", "header": "x", "limit": 1, "window": "1s" })),
        ["header"]
    );
    assert_eq!(
        keys(json!({ "key": "api_key", "header": "authorization", "limit": 1, "window": "1s" })),
        ["header"]
    );
    assert_eq!(
        keys(json!({ "key": "client", "on_missing": "deny", "limit": 1, "window": "1s" })),
        ["on_missing"]
    );
    assert_eq!(
        keys(json!({ "key": "client", "name": "a\"b", "limit": 1, "window": "1s" })),
        ["name"]
    );
    assert_eq!(
        keys(json!({ "key": "client", "ipv6_prefix": 0, "limit": 1, "window": "1s" })),
        ["ipv6_prefix"]
    );
    assert_eq!(
        keys(json!({ "key": "user", "limit": 1, "window": "1s" })),
        ["key"]
    );
    assert_eq!(
        keys(json!({ "key": "client", "limit": -1, "window": "1s" })),
        ["limit"]
    );
    // Granted, authorization works.
    assert!(
        Harness::<RateLimit>::builder()
            .grant_header("authorization")
            .configure(
                json!({ "key": "api_key", "header": "authorization", "limit": 1, "window": "1s" })
            )
            .is_ok()
    );
}
