//! `rate-limit`: a token bucket per caller, kept by the gateway (`host.rate-limit`), with
//! the IETF `RateLimit-Policy` / `RateLimit` headers on every answer.
//!
//! ```toml
//! [[routes.policies]]
//! plugin = "rate-limit"
//! config = { key = "api_key", header = "x-api-key", limit = 20, window = "1m" }
//! ```
//!
//! | key | one bucket per | when absent |
//! | --- | --- | --- |
//! | `"identity"` | verified client identity (first URI SAN, else first DNS SAN) | `on_missing` |
//! | `"client"` | client address (IPv6 grouped by `ipv6_prefix`, default /64) | — |
//! | `"api_key"` | SHA-256 of the `header` value (default `x-api-key`) | `on_missing` |
//! | `"header"` | SHA-256 of the `header` value (e.g. a tenant id) | `on_missing` |
//!
//! `limit` requests per `window` (`"30s"`, `"1m"`, `"1h"`: whole seconds), refilled
//! continuously. Header values are hashed before they leave the plugin, so a credential
//! never reaches the gateway's bucket store (or Redis) and is never logged. A header
//! sent more than once is refused (400): the upstream might read a different copy than
//! the one counted. `api_key` and `header` trust the value as sent: put an authenticating
//! policy (e.g. `api-key`) before this one, or a client can mint fresh buckets.
//!
//! `on_missing = "client"` (default) counts requests without the key by client address;
//! `"deny"` refuses them (403 without an identity, 400 without the header).
//!
//! Every answer carries (draft-ietf-httpapi-ratelimit-headers, structured fields)
//! `RateLimit-Policy: "default";q=20;w=60` and `RateLimit: "default";r=<remaining>;t=<s>`
//! where `t` is the seconds until the bucket is full again (allowed) or until the next
//! request fits (refused). Over the limit: 429, `Retry-After: <s>` (rounded up, never
//! below 1 s) and `{"error":"rate limit exceeded","retry_after":<s>}`. `name` (default
//! `"default"`) names the policy in the headers and separates the buckets of two
//! `rate-limit` entries on one route.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use warden_sdk::serde_json::json;
use warden_sdk::{ConfigErrors, Policy, Request, Setup, Verdict};

/// The policy's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What a bucket belongs to.
    pub key: KeyKind,
    /// Header for `api_key` (default `x-api-key`) and `header` (required).
    pub header: Option<String>,
    /// Requests per window.
    pub limit: u32,
    /// Window length, whole seconds (`"1m"`).
    pub window: String,
    /// Policy name in the headers (default `default`).
    pub name: Option<String>,
    /// What to do without the key.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// Prefix length IPv6 clients are grouped by (default 64).
    pub ipv6_prefix: Option<u8>,
}

/// What a bucket belongs to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The verified client identity.
    Identity,
    /// The client address.
    Client,
    /// A hashed API key header.
    ApiKey,
    /// A hashed header value.
    Header,
}

/// What happens to a request without the key.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Count it by client address.
    #[default]
    Client,
    /// Refuse it.
    Deny,
}

/// The configured policy.
#[derive(Debug)]
pub struct RateLimit {
    kind: KeyKind,
    header: String,
    limit: u32,
    window: Duration,
    name: String,
    on_missing: OnMissing,
    ipv6_prefix: u8,
    policy_header: String,
}

impl Policy for RateLimit {
    type Config = Config;

    fn configure(setup: &Setup, c: Config) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if c.limit == 0 {
            errs.push("limit", "must be at least 1");
        }
        let window = match warden_sdk::parse_duration(&c.window) {
            Ok(w) if w.as_secs() == 0 || w.subsec_nanos() != 0 => {
                errs.push(
                    "window",
                    "must be a whole number of seconds (the headers count in seconds)",
                );
                w
            }
            Ok(w) if w.as_millis() > u128::from(u32::MAX) => {
                errs.push("window", "must be at most 49 days");
                w
            }
            Ok(w) => w,
            Err(e) => {
                errs.push("window", e);
                Duration::from_secs(1)
            }
        };
        let header = match (c.kind_needs_header(), c.header) {
            (false, Some(_)) => {
                errs.push(
                    "header",
                    "only applies with key = \"api_key\" or \"header\"",
                );
                String::new()
            }
            (false, None) => String::new(),
            (true, h) => {
                let h = match (h, c.key) {
                    (Some(h), _) => h.to_ascii_lowercase(),
                    (None, KeyKind::ApiKey) => "x-api-key".into(),
                    (None, _) => {
                        errs.push("header", "name the header whose value is the key");
                        String::new()
                    }
                };
                if !h.is_empty() {
                    if !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                    {
                        errs.push("header", format!("{h:?} is not a header name"));
                    } else if !setup.sees_header(&h) {
                        errs.push(
                            "header",
                            format!("{h} is withheld from plugins unless the route grants it: add headers = [\"{h}\"] to this policy"),
                        );
                    }
                }
                h
            }
        };
        if c.key == KeyKind::Client && c.on_missing != OnMissing::Client {
            errs.push("on_missing", "a request always has a client address");
        }
        let name = c.name.unwrap_or_else(|| "default".into());
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            errs.push(
                "name",
                "1 to 64 printable ASCII characters, without \" or \\",
            );
        }
        let ipv6_prefix = c.ipv6_prefix.unwrap_or(64);
        if !(1..=128).contains(&ipv6_prefix) {
            errs.push("ipv6_prefix", "must be 1..=128");
        }
        let policy_header = format!("\"{name}\";q={};w={}", c.limit, window.as_secs());
        errs.into_result(RateLimit {
            kind: c.key,
            header,
            limit: c.limit,
            window,
            name,
            on_missing: c.on_missing,
            ipv6_prefix,
            policy_header,
        })
    }

    fn evaluate(&self, req: &Request) -> Verdict {
        let key = match self.bucket_key(req) {
            Ok(k) => k,
            Err(refusal) => return refusal,
        };
        let d = warden_sdk::rate_limit(&key, self.limit, self.window);
        let secs = d.reset_after.as_millis().div_ceil(1000);
        let state = format!("\"{}\";r={};t={secs}", self.name, d.remaining);
        let v = if d.allowed {
            Verdict::allow()
        } else {
            let retry = secs.max(1);
            Verdict::deny_json(
                429,
                &json!({ "error": "rate limit exceeded", "retry_after": retry }),
            )
            .response_header("retry-after", retry.to_string())
        };
        v.response_header("ratelimit-policy", &self.policy_header)
            .response_header("ratelimit", state)
    }
}

impl RateLimit {
    /// The bucket key: `name|kind:value`, so two entries on one route never share one.
    fn bucket_key(&self, req: &Request) -> Result<String, Verdict> {
        let mut key = String::with_capacity(self.name.len() + 72);
        key.push_str(&self.name);
        key.push('|');
        let missing = match self.kind {
            KeyKind::Client => None,
            KeyKind::Identity => {
                let c = req.client();
                match c.uri_sans().first().or(c.dns_sans().first()) {
                    Some(id) => {
                        key.push_str("id:");
                        key.push_str(id);
                        return Ok(key);
                    }
                    None => Some((403, "a verified client identity is required".to_owned())),
                }
            }
            KeyKind::ApiKey | KeyKind::Header => {
                let mut values = req.header_all(&self.header);
                match (values.next(), values.next()) {
                    (Some(v), None) if !v.is_empty() => {
                        key.push_str(if self.kind == KeyKind::ApiKey {
                            "key:"
                        } else {
                            "h:"
                        });
                        // 128 bits of SHA-256: collisions are out of reach, and the value
                        // (perhaps a credential) cannot be read back from the store.
                        for b in &Sha256::digest(v)[..16] {
                            let _ = write!(key, "{b:02x}");
                        }
                        return Ok(key);
                    }
                    (Some(_), Some(_)) => {
                        return Err(Verdict::deny_json(
                            400,
                            &json!({ "error": format!("{} sent more than once", self.header) }),
                        ));
                    }
                    _ => Some((400, format!("the {} header is required", self.header))),
                }
            }
        };
        if let Some((status, why)) = missing
            && self.on_missing == OnMissing::Deny
        {
            return Err(Verdict::deny_json(status, &json!({ "error": why })));
        }
        key.push_str("ip:");
        let _ = write!(key, "{}", self.client_net(req.client().ip()));
        Ok(key)
    }

    fn client_net(&self, ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                // One customer usually holds a whole /64: counting addresses would hand
                // them 2^64 buckets.
                let bits = u128::from(v6);
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                format!(
                    "{}/{}",
                    std::net::Ipv6Addr::from(bits & mask),
                    self.ipv6_prefix
                )
            }
        }
    }
}

impl Config {
    fn kind_needs_header(&self) -> bool {
        matches!(self.key, KeyKind::ApiKey | KeyKind::Header)
    }
}

warden_sdk::export_policy!(RateLimit);

#[cfg(test)]
mod tests;
