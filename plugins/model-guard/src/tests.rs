use super::*;
use warden_sdk::serde_json::{Value, json};
use warden_sdk::testing::Harness;

fn config() -> Value {
    json!({
        "max_tokens": 1000, "max_prompt_bytes": 100, "max_choices": 2,
        "callers": [
            { "spiffe": "spiffe://sophia/*", "models": ["gpt-4o*", "llama-3.1-70b"], "max_tokens": 4000 },
            { "api_key_secret": "ci", "models": ["llama-*"], "max_prompt_bytes": 20 },
        ],
        "default": { "models": ["llama-3.1-8b"], "max_tokens": 50 },
    })
}

fn harness_with(config: Value) -> Harness<ModelGuard> {
    Harness::builder()
        .route("inference")
        .body_max(64 * 1024)
        .secret("ci", "ci-key")
        .configure(config)
        .expect("valid config")
}

fn harness() -> Harness<ModelGuard> {
    harness_with(config())
}

fn chat(model: &str, extra: Value) -> Value {
    let mut b = json!({ "model": model, "messages": [ { "role": "user", "content": "hi" } ] });
    if let Value::Object(extra) = extra {
        b.as_object_mut().unwrap().extend(extra);
    }
    b
}

fn sophia(body: &Value) -> Request {
    Request::builder()
        .method("POST")
        .path("/v1/chat/completions")
        .uri_san("spiffe://sophia/api")
        .json(body)
        .build()
}

fn stranger(body: &Value) -> Request {
    Request::builder()
        .method("POST")
        .path("/v1/chat/completions")
        .client_ip("192.0.2.1")
        .json(body)
        .build()
}

fn err(v: &Verdict) -> (u16, String, String) {
    let b = v.body_json().expect("JSON error");
    assert_eq!(
        v.response_header_str("content-type"),
        Some("application/json")
    );
    (
        v.status().unwrap(),
        b["error"]["type"].as_str().unwrap().into(),
        b["error"]["code"].as_str().unwrap().into(),
    )
}

fn code(v: &Verdict) -> (u16, String) {
    let (s, _, c) = err(v);
    (s, c)
}

#[test]
fn needs_the_body_phase() {
    let e = Harness::<ModelGuard>::builder()
        .secret("ci", "x")
        .configure(config())
        .err()
        .unwrap();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.0[0].reason.contains("body = { max ="), "{e}");
}

#[test]
fn models_per_caller_and_default() {
    let h = harness();
    let ok = json!({ "max_tokens": 100 });
    assert!(
        h.evaluate(&sophia(&chat("gpt-4o-mini", ok.clone())))
            .is_allow()
    );
    assert!(
        h.evaluate(&sophia(&chat("llama-3.1-70b", ok.clone())))
            .is_allow()
    );
    let v = h.evaluate(&sophia(&chat("llama-3.1-8b", ok.clone())));
    assert_eq!(
        v.body_json().unwrap(),
        json!({ "error": { "message": "the model \"llama-3.1-8b\" is not available to this caller",
                           "type": "permission_error", "code": "model_not_allowed" } })
    );
    assert_eq!(v.status(), Some(403));
    // Globs are anchored and case-sensitive.
    for m in [
        "GPT-4o",
        "xgpt-4o",
        "llama-3.1-70b ",
        "llama-3.1-70b-instruct",
    ] {
        assert_eq!(
            code(&h.evaluate(&sophia(&chat(m, ok.clone())))),
            (403, "model_not_allowed".into()),
            "{m}"
        );
    }
    // Strangers get the default grant.
    assert!(
        h.evaluate(&stranger(&chat(
            "llama-3.1-8b",
            json!({ "max_tokens": 10 })
        )))
        .is_allow()
    );
    assert_eq!(
        code(&h.evaluate(&stranger(&chat("gpt-4o", json!({ "max_tokens": 10 }))))),
        (403, "model_not_allowed".into())
    );
    // Without a default they are refused outright.
    let mut c = config();
    c.as_object_mut().unwrap().remove("default");
    let h = harness_with(c);
    assert_eq!(
        err(&h.evaluate(&stranger(&chat("llama-3.1-8b", json!({}))))),
        (403, "permission_error".into(), "caller_not_allowed".into())
    );
}

#[test]
fn api_key_caller_with_its_own_prompt_limit() {
    let h = harness();
    let key = |body: &Value, k: &str| {
        Request::builder()
            .method("POST")
            .header("x-api-key", k)
            .json(body)
            .build()
    };
    let small = chat("llama-3.1-8b", json!({ "max_tokens": 5 }));
    assert!(h.evaluate(&key(&small, "ci-key")).is_allow());
    let big = json!({ "model": "llama-3.1-8b", "max_tokens": 5,
                      "messages": [ { "role": "user", "content": "x".repeat(30) } ] });
    assert_eq!(
        code(&h.evaluate(&key(&big, "ci-key"))),
        (413, "prompt_too_large".into())
    );
    // A wrong key falls back to the default grant (whose prompt limit is the top-level 100).
    assert!(h.evaluate(&key(&big, "wrong")).is_allow());
}

#[test]
fn deny_on_excess() {
    let h = harness();
    assert!(
        h.evaluate(&sophia(&chat("gpt-4o", json!({ "max_tokens": 4000 }))))
            .is_allow()
    );
    for extra in [
        json!({ "max_tokens": 4001 }),
        json!({ "max_completion_tokens": 100000 }),
        // The larger of two fields counts: an upstream may honour either.
        json!({ "max_tokens": 10, "max_completion_tokens": 100000 }),
        json!({ "max_output_tokens": 100000 }),
        // No ceiling means the upstream default, possibly the whole context.
        json!({}),
        json!({ "max_tokens": null }),
    ] {
        let v = h.evaluate(&sophia(&chat("gpt-4o", extra.clone())));
        assert_eq!(
            err(&v),
            (
                400,
                "invalid_request_error".into(),
                "max_tokens_exceeded".into()
            ),
            "{extra}"
        );
    }
}

#[test]
fn clamp_on_excess_rewrites_the_body() {
    let mut c = config();
    c["on_excess"] = json!("clamp");
    let h = harness_with(c);
    let v = h.evaluate(&sophia(&chat(
        "gpt-4o",
        json!({ "max_tokens": 9000, "temperature": 0.5 }),
    )));
    let out = v.request_json().expect("rewritten body");
    assert_eq!(out["max_tokens"], 4000);
    assert_eq!(out["temperature"], 0.5);
    assert_eq!(
        out["messages"],
        json!([ { "role": "user", "content": "hi" } ])
    );
    // A missing ceiling is added.
    let v = h.evaluate(&stranger(&chat("llama-3.1-8b", json!({}))));
    assert_eq!(v.request_json().unwrap()["max_tokens"], 50);
    // Within the ceiling: no rewrite.
    let v = h.evaluate(&sophia(&chat("gpt-4o", json!({ "max_tokens": 10 }))));
    assert_eq!(v, Verdict::allow());
    // Both fields are clamped.
    let v = h.evaluate(&sophia(&chat(
        "gpt-4o",
        json!({ "max_tokens": 9, "max_completion_tokens": 9000 }),
    )));
    let out = v.request_json().unwrap();
    assert_eq!(
        (
            out["max_tokens"].as_u64(),
            out["max_completion_tokens"].as_u64()
        ),
        (Some(9), Some(4000))
    );
    // Completions too.
    let v = h.evaluate(&stranger(
        &json!({ "model": "llama-3.1-8b", "prompt": "x", "max_tokens": 51 }),
    ));
    assert_eq!(v.request_json().unwrap()["max_tokens"], 50);
}

#[test]
fn prompt_size_counts_every_text() {
    let h = harness();
    let at = |content: Value| {
        let body = json!({ "model": "gpt-4o", "max_tokens": 1, "messages": [ { "role": "user", "content": content } ] });
        h.evaluate(&sophia(&body))
    };
    // "user" (4) + 96 = 100: at the limit.
    assert!(at(json!("y".repeat(96))).is_allow());
    assert_eq!(
        code(&at(json!("y".repeat(97)))),
        (413, "prompt_too_large".into())
    );
    // Parts and images count.
    let parts = json!([ { "type": "image_url", "image_url": { "url": format!("data:image/png;base64,{}", "A".repeat(200)) } } ]);
    assert_eq!(code(&at(parts)), (413, "prompt_too_large".into()));
    // Multi-byte text counts in bytes.
    assert_eq!(
        code(&at(json!("é".repeat(50)))),
        (413, "prompt_too_large".into())
    );
    // Pre-tokenised prompts count per token.
    let tokens = json!({ "model": "gpt-4o", "max_tokens": 1, "prompt": vec![1; 26] });
    assert_eq!(
        code(&h.evaluate(&sophia(&tokens))),
        (413, "prompt_too_large".into())
    );
    // Tool definitions are prompt too.
    let tools = chat(
        "gpt-4o",
        json!({ "max_tokens": 1, "tools": [ { "type": "function", "function": { "name": "f", "description": "d".repeat(100) } } ] }),
    );
    assert_eq!(
        code(&h.evaluate(&sophia(&tools))),
        (413, "prompt_too_large".into())
    );
}

#[test]
fn ambiguous_or_malformed_bodies_are_refused() {
    let h = harness();
    let raw = |body: &str| {
        h.evaluate(
            &Request::builder()
                .method("POST")
                .uri_san("spiffe://sophia/api")
                .body(body)
                .build(),
        )
    };
    for body in [
        // The last of two equal keys wins in some parsers, the first in others.
        r#"{"model":"gpt-4o","model":"o1-pro","max_tokens":1,"messages":[]}"#,
        // Go's encoding/json folds case: "Model" would win there.
        r#"{"model":"gpt-4o","Model":"o1-pro","max_tokens":1,"messages":[]}"#,
        r#"{"model":"gpt-4o","MAX_TOKENS":100000,"max_tokens":1,"messages":[]}"#,
        r#"{"model":"gpt-4o","max_tokens":"1","messages":[]}"#,
        r#"{"model":"gpt-4o","max_tokens":1e9,"messages":[]}"#,
        r#"{"model":"gpt-4o","max_tokens":-1,"messages":[]}"#,
        r#"{"model":"gpt-4o","max_tokens":1,"messages":[],"prompt":"x"}"#,
        r#"{"model":["gpt-4o"],"max_tokens":1,"messages":[]}"#,
        r#"{"model":"gpt-4o","max_tokens":1,"messages":"hi"}"#,
        r#"{"model":"gpt-4o","max_tokens":1,"messages":[],"stream":"true"}"#,
        r#"{"model":"gpt-4o","max_tokens":1,"messages":[]} trailing"#,
        "[]",
        "not json",
    ] {
        assert_eq!(code(&raw(body)), (400, "invalid_request".into()), "{body}");
    }
    assert_eq!(
        code(&raw(r#"{"messages":[],"max_tokens":1}"#)),
        (400, "model_required".into())
    );
    assert_eq!(
        code(
            &h.evaluate(
                &Request::builder()
                    .method("POST")
                    .uri_san("spiffe://sophia/api")
                    .build()
            )
        ),
        (400, "invalid_request".into())
    );
}

#[test]
fn choices_streaming_and_bodyless_requests() {
    let h = harness();
    assert!(
        h.evaluate(&sophia(&chat("gpt-4o", json!({ "max_tokens": 1, "n": 2 }))))
            .is_allow()
    );
    assert_eq!(
        code(&h.evaluate(&sophia(&chat("gpt-4o", json!({ "max_tokens": 1, "n": 3 }))))),
        (400, "too_many_choices".into())
    );
    assert_eq!(
        code(&h.evaluate(&sophia(
            &json!({ "model": "gpt-4o", "prompt": "x", "max_tokens": 1, "best_of": 5 })
        ))),
        (400, "too_many_choices".into())
    );
    assert!(
        h.evaluate(&sophia(&chat(
            "gpt-4o",
            json!({ "max_tokens": 1, "stream": true })
        )))
        .is_allow()
    );
    let mut c = config();
    c["allow_stream"] = json!(false);
    let h2 = harness_with(c);
    assert_eq!(
        code(&h2.evaluate(&sophia(&chat(
            "gpt-4o",
            json!({ "max_tokens": 1, "stream": true })
        )))),
        (400, "stream_not_allowed".into())
    );
    // GET /v1/models passes; a GET that smuggles a body is checked like a POST.
    assert!(
        h.evaluate(
            &Request::builder()
                .path("/v1/models")
                .uri_san("spiffe://sophia/api")
                .build()
        )
        .is_allow()
    );
    let smuggled = Request::builder()
        .uri_san("spiffe://sophia/api")
        .json(&chat("o1-pro", json!({ "max_tokens": 1 })))
        .build();
    assert_eq!(
        code(&h.evaluate(&smuggled)),
        (403, "model_not_allowed".into())
    );
}

#[test]
fn other_kinds_are_checked_for_model_and_prompt() {
    let h = harness();
    let embed = json!({ "model": "llama-3.1-70b", "input": "short" });
    assert!(
        h.evaluate(&sophia(&embed)).is_allow(),
        "no output-token ceiling needed"
    );
    let big = json!({ "model": "llama-3.1-70b", "input": "z".repeat(101) });
    assert_eq!(
        code(&h.evaluate(&sophia(&big))),
        (413, "prompt_too_large".into())
    );
    let over = json!({ "model": "llama-3.1-70b", "input": "q", "max_output_tokens": 5000 });
    assert_eq!(
        code(&h.evaluate(&sophia(&over))),
        (400, "max_tokens_exceeded".into())
    );
}

#[test]
fn config_errors_name_their_keys() {
    let keys = |c: Value| -> Vec<String> {
        Harness::<ModelGuard>::builder()
            .body_max(1024)
            .configure(c)
            .err()
            .expect("refused")
            .0
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert_eq!(keys(json!({})), ["callers"]);
    assert_eq!(
        keys(json!({ "max_tokens": 0, "callers": [ { "cidr": "10.0.0.0/8", "models": [] } ] })),
        ["max_tokens", "callers[0].models"]
    );
    assert_eq!(
        keys(json!({ "default": { "models": ["a"], "max_prompt_bytes": 0 } })),
        ["default.max_prompt_bytes"]
    );
    assert_eq!(
        keys(json!({ "default": { "models": ["a"] }, "on_excess": "truncate" })),
        ["on_excess"]
    );
    assert_eq!(
        keys(json!({ "callers": [ { "spiffe": "spiffe://*", "models": ["a"] } ] })),
        ["callers[0].spiffe"]
    );
    assert_eq!(
        keys(json!({ "default": { "models": ["a"], "extra": 1 } })),
        ["default.extra"]
    );
}
