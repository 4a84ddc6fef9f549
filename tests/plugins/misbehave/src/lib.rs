//! A policy that misbehaves on request (config `mode`), to test the host's budgets and fail
//! modes. Never use outside tests.
//!
//! Build for `wasm32-wasip2`: `introspect` reads the wall clock, environment and arguments
//! through WASI to show what the sandbox gives (on `wasm32-unknown-unknown` std has no
//! clock and the call would trap).
use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use warden_sdk::serde_json::json;
use warden_sdk::{ConfigErrors, Level, Policy, Request, Response, ResponseVerdict, Setup, Verdict};

/// Config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to do in `evaluate`.
    mode: String,
    /// For `secret`: which secret and header; for `tag`: header name; for `rate`: the
    /// bucket key.
    #[serde(default)]
    name: String,
    /// For `secret`: header carrying the presented value; for `tag`: header value; for
    /// `set-body`: the new request body; for `response-replace`: the new response body.
    #[serde(default)]
    value: String,
    /// Loop in `configure` instead.
    #[serde(default)]
    configure_loop: bool,
    /// For `rate`: requests per window (default 2).
    #[serde(default)]
    limit: Option<u32>,
    /// For `rate`: window in milliseconds (default 60000).
    #[serde(default)]
    window_ms: Option<u64>,
    /// What to do in `evaluate-response` (default: keep): `trap`, `loop`, `replace`
    /// (with `value`), `echo` (a JSON summary of what the policy saw).
    #[serde(default)]
    response: Option<String>,
}

/// The policy.
pub struct Misbehave(Config);

impl Policy for Misbehave {
    type Config = Config;
    fn configure(_: &Setup, c: Config) -> Result<Self, ConfigErrors> {
        if c.configure_loop {
            spin_forever();
        }
        Ok(Misbehave(c))
    }

    fn evaluate(&self, req: &Request) -> Verdict {
        match self.0.mode.as_str() {
            "allow" => Verdict::allow(),
            "loop" => spin_forever(),
            "hog" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&v);
                }
            }
            "trap" => panic!("deliberate trap"),
            "bad-header" => Verdict::allow().set_request_header("connection", "close"),
            "bad-status" => Verdict::deny(200, "ok?"),
            "tag" => Verdict::allow()
                .set_request_header(&self.0.name, &self.0.value)
                .response_header("x-policy", "misbehave"),
            "deny" => Verdict::deny_json(451, &json!({ "error": "unavailable for legal reasons" }))
                .response_header("x-denied-by", "misbehave"),
            // Report what the sandbox looks like: clock, randomness, env, args, headers seen,
            // and (0.2.0) the method and body.
            "introspect" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut m = HashMap::new();
                m.insert("k", 1);
                let headers: Vec<&str> = req.headers().map(|(n, _)| n).collect();
                let body = json!({
                    "now": now,
                    "env": std::env::vars().count(),
                    "args": std::env::args().count(),
                    "headers": headers,
                    "route": req.route(),
                    "method": req.method().as_str(),
                    "client": req.client().address(),
                    "uri_sans": req.client().uri_sans(),
                    "body": req.body().map(String::from_utf8_lossy),
                });
                Verdict::deny_json(418, &body)
            }
            "log-flood" => {
                for i in 0..1000 {
                    warden_sdk::log(Level::Info, "flood", &[("i", &i.to_string())]);
                }
                Verdict::allow()
            }
            "secret" => {
                let presented = req.header_bytes(&self.0.value).unwrap_or_default();
                if warden_sdk::secret_matches(&self.0.name, presented) {
                    Verdict::allow()
                } else {
                    Verdict::deny(401, "no")
                }
            }
            // A body change: fine with the body phase, a plugin error without it.
            "set-body" => Verdict::allow().with_body(self.0.value.as_bytes()),
            // The host's token bucket, reported in response headers.
            "rate" => {
                let d = warden_sdk::rate_limit(
                    &self.0.name,
                    self.0.limit.unwrap_or(2),
                    Duration::from_millis(self.0.window_ms.unwrap_or(60_000)),
                );
                let v = if d.allowed {
                    Verdict::allow()
                } else {
                    Verdict::deny(429, "rate limited")
                };
                v.response_header("x-remaining", d.remaining.to_string())
                    .response_header("x-reset-ms", d.reset_after.as_millis().to_string())
            }
            other => Verdict::deny(500, format!("unknown mode {other}")),
        }
    }

    fn evaluate_response(&self, req: &Request, resp: &Response) -> ResponseVerdict {
        match self.0.response.as_deref() {
            None | Some("keep") => ResponseVerdict::Keep,
            Some("trap") => panic!("deliberate trap in the response phase"),
            Some("loop") => spin_forever(),
            Some("replace") => ResponseVerdict::Replace(self.0.value.as_bytes().to_vec()),
            Some("echo") => ResponseVerdict::replace_json(&json!({
                "status": resp.status(),
                "content_type": resp.header("content-type"),
                "body": String::from_utf8_lossy(resp.body()),
                "request_path": req.path(),
                "request_body": req.body().map(String::from_utf8_lossy),
            })),
            Some(other) => {
                ResponseVerdict::Replace(format!("unknown response mode {other}").into_bytes())
            }
        }
    }
}

fn spin_forever() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

warden_sdk::export_policy!(Misbehave);
