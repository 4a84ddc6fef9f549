//! A policy that misbehaves on request (config `mode`), to test the host's budgets and fail
//! modes. Never use outside tests.
use std::collections::HashMap;

use serde::Deserialize;
use warden_sdk::serde_json::json;
use warden_sdk::{ConfigErrors, Level, Policy, Request, Setup, Verdict};

/// Config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to do in `evaluate`.
    mode: String,
    /// For `secret`: which secret and header; for `tag`: header name.
    #[serde(default)]
    name: String,
    /// For `secret`: header carrying the presented value; for `tag`: header value.
    #[serde(default)]
    value: String,
    /// Loop in `configure` instead.
    #[serde(default)]
    configure_loop: bool,
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
            // Report what the sandbox looks like: clock, randomness, env, args, headers seen.
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
                    "client": req.client().address(),
                    "uri_sans": req.client().uri_sans(),
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
            other => Verdict::deny(500, format!("unknown mode {other}")),
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
