//! `api-key`: require a request header whose value matches a route-granted secret.
//!
//! ```toml
//! [[routes.policies]]
//! plugin = "api-key"
//! secrets = { api_key = "${vault:ml/clients#sophia}" }   # the only secret this policy may use
//! config = { header = "x-api-key", secret = "api_key" }
//! ```
//!
//! The comparison happens in the gateway (`secret-matches`, constant time): this plugin
//! never sees the secret. `secret` may list several names (key rotation: any one matches).
//! With `header = "authorization"` the route must also grant the header
//! (`headers = ["authorization"]`), and `scheme = "Bearer"` strips that prefix first.
//! The presented header is removed before forwarding unless `strip = false`.

use serde::Deserialize;
use warden_sdk::serde_json::json;
use warden_sdk::{ConfigErrors, Policy, Request, Setup, Verdict};

/// One name or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// One secret.
    One(String),
    /// Any of these (rotation).
    Many(Vec<String>),
}

/// The policy's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Header carrying the key (default `x-api-key`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Granted secret name(s) to compare against.
    pub secret: Names,
    /// Auth scheme to strip from the value, e.g. `Bearer` (case-insensitive).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Remove the header before forwarding (default true).
    #[serde(default = "yes")]
    pub strip: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}
fn yes() -> bool {
    true
}

/// The configured policy.
#[derive(Debug)]
pub struct ApiKey {
    header: String,
    secrets: Vec<String>,
    scheme: Option<String>,
    strip: bool,
}

impl Policy for ApiKey {
    type Config = Config;

    fn configure(setup: &Setup, c: Config) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        let header = c.header.to_ascii_lowercase();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            errs.push("header", format!("{:?} is not a header name", c.header));
        } else if !setup.sees_header(&header) {
            errs.push(
                "header",
                format!("{header} is withheld from plugins unless the route grants it: add headers = [\"{header}\"] to this policy"),
            );
        }
        let secrets = match c.secret {
            Names::One(s) => vec![s],
            Names::Many(v) => v,
        };
        if secrets.is_empty() {
            errs.push("secret", "name at least one secret");
        }
        for s in &secrets {
            if !setup.has_secret(s) {
                errs.push(
                    "secret",
                    format!("the route grants no secret named {s:?}: add secrets = {{ {s} = \"${{provider:name}}\" }} to this policy"),
                );
            }
        }
        errs.into_result(ApiKey {
            header,
            secrets,
            scheme: c.scheme,
            strip: c.strip,
        })
    }

    fn evaluate(&self, req: &Request) -> Verdict {
        let deny = |why: &str| {
            Verdict::deny_json(
                401,
                &json!({ "error": why, "route": req.route(), "policy": "api-key" }),
            )
        };
        let Some(mut presented) = req.header_bytes(&self.header) else {
            return deny("missing credential");
        };
        if let Some(scheme) = &self.scheme {
            let n = scheme.len();
            let ok = presented.len() > n
                && presented[..n].eq_ignore_ascii_case(scheme.as_bytes())
                && presented[n] == b' ';
            if !ok {
                return deny("invalid credential");
            }
            presented = &presented[n + 1..];
        }
        // Try every name even after a match, so timing does not reveal which one matched.
        let mut matched = false;
        for s in &self.secrets {
            matched |= warden_sdk::secret_matches(s, presented);
        }
        if !matched {
            return deny("invalid credential");
        }
        if self.strip {
            Verdict::allow().remove_request_header(&self.header)
        } else {
            Verdict::allow()
        }
    }
}

warden_sdk::export_policy!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;
    use warden_sdk::serde_json::json;
    use warden_sdk::testing::Harness;
    use warden_sdk::{Changes, Verdict};

    fn harness() -> Harness<ApiKey> {
        Harness::builder()
            .secret("api_key", "s3cret")
            .configure(json!({ "header": "x-api-key", "secret": "api_key" }))
            .unwrap()
    }

    #[test]
    fn matching_key_allows_and_strips_the_header() {
        let v = harness().evaluate(&Request::builder().header("x-api-key", "s3cret").build());
        assert_eq!(
            v,
            Verdict::Allow(Changes {
                remove_request_headers: vec!["x-api-key".into()],
                ..Changes::default()
            })
        );
    }

    #[test]
    fn wrong_or_missing_key_is_401_without_revealing_anything() {
        let h = harness();
        for req in [
            Request::builder().header("x-api-key", "nope").build(),
            Request::builder().build(),
        ] {
            let Verdict::Deny(d) = h.evaluate(&req) else {
                panic!("allowed")
            };
            assert_eq!(d.status, 401);
            assert!(!d.body.contains("s3cret"));
        }
    }

    #[test]
    fn rotation_and_bearer_scheme() {
        let h = Harness::<ApiKey>::builder()
            .secret("old", "k1")
            .secret("new", "k2")
            .grant_header("authorization")
            .configure(json!({ "header": "authorization", "scheme": "Bearer", "secret": ["old", "new"], "strip": false }))
            .unwrap();
        assert_eq!(
            h.evaluate(
                &Request::builder()
                    .header("authorization", "Bearer k2")
                    .build()
            ),
            Verdict::allow()
        );
        assert_eq!(
            h.evaluate(
                &Request::builder()
                    .header("authorization", "bearer k1")
                    .build()
            ),
            Verdict::allow()
        );
        assert_eq!(
            h.evaluate(
                &Request::builder()
                    .header("authorization", "Basic k1")
                    .build()
            )
            .status(),
            Some(401)
        );
        assert_eq!(
            h.evaluate(
                &Request::builder()
                    .header("authorization", "Bearerk1")
                    .build()
            )
            .status(),
            Some(401)
        );
    }

    #[test]
    fn config_must_name_granted_secrets_and_visible_headers() {
        let e = Harness::<ApiKey>::builder()
            .configure(json!({ "header": "authorization", "secret": "api_key" }))
            .err()
            .unwrap();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["header", "secret"], "{e}");
        let e = Harness::<ApiKey>::builder()
            .configure(json!({ "header": "x-api-key" }))
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing field `secret`"), "{e}");
    }
}
