//! `model-guard`: which caller may use which model, and how much, on OpenAI-compatible
//! inference routes (chat completions, completions, and anything else with a `model`).
//!
//! ```toml
//! [[routes.policies]]
//! plugin = "model-guard"
//! body = { max = "1MiB" }                   # required: the policy reads the JSON body
//! config = { max_tokens = 4096, on_excess = "clamp", max_prompt_bytes = 262144, max_choices = 1,
//!   callers = [
//!     { spiffe = "spiffe://sophia/*", models = ["gpt-4o*", "llama-3.1-70b"], max_tokens = 8192 },
//!     { cidr = "10.0.0.0/8", models = ["llama-*"] },
//!   ],
//!   default = { models = ["llama-3.1-8b"], max_tokens = 512 } }
//! ```
//!
//! **Callers** are matched like in `mcp-guard` (`spiffe`, `dns`, `cidr`, `api_key_secret`
//! with `header`/`scheme`, `anyone`; first match wins); a request from no caller gets the
//! `default` grant, or is refused without one. A grant lists `models` (globs, `*` matches
//! anything, case-sensitive) and may override `max_tokens` and `max_prompt_bytes`.
//!
//! **Limits**: `max_tokens` caps the output tokens a request asks for (`max_tokens`,
//! `max_completion_tokens`, `max_output_tokens`); a chat or completion request that sets
//! none would get the upstream's default (often the whole context), so it counts as
//! exceeding. `on_excess = "deny"` (default) refuses; `"clamp"` rewrites the body to the
//! ceiling and forwards it (re-serialised JSON). `max_prompt_bytes` caps the prompt text
//! (see `warden_sdk::inference::InferenceRequest::prompt_bytes`). `max_choices` caps `n`
//! and `best_of`, which multiply the output. `allow_stream = false` refuses streaming.
//!
//! **Refusals** use OpenAI's error shape, `{"error":{"message","type","code"}}`:
//!
//! | status | type | code | when |
//! | --- | --- | --- | --- |
//! | 403 | `permission_error` | `caller_not_allowed` | no caller matches and no default |
//! | 403 | `permission_error` | `model_not_allowed` | model not in the grant |
//! | 400 | `invalid_request_error` | `invalid_request` | no body, not JSON, bad field types, ambiguous fields |
//! | 400 | `invalid_request_error` | `model_required` | no `model` |
//! | 400 | `invalid_request_error` | `max_tokens_exceeded` | over the ceiling, `on_excess = "deny"` |
//! | 400 | `invalid_request_error` | `too_many_choices` | `n`/`best_of` over `max_choices` |
//! | 400 | `invalid_request_error` | `stream_not_allowed` | `stream` with `allow_stream = false` |
//! | 413 | `invalid_request_error` | `prompt_too_large` | prompt over `max_prompt_bytes` |
//!
//! GET and HEAD without a body pass (e.g. `GET /v1/models`); any other request needs a
//! JSON body.

use callers::{Globs, Identity, IdentitySpec, OneOrMany, clip};
use serde::Deserialize;
use warden_sdk::inference::{self, InferenceRequest, Kind};
use warden_sdk::{ConfigErrors, Method, Policy, Request, Setup, Verdict};

/// The policy's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Callers, tried in order.
    #[serde(default)]
    pub callers: Vec<RawCaller>,
    /// The grant of requests from no listed caller.
    pub default: Option<RawGrant>,
    /// Output-token ceiling.
    pub max_tokens: Option<u64>,
    /// What to do with a request over the ceiling.
    #[serde(default)]
    pub on_excess: OnExcess,
    /// Prompt-size ceiling in bytes.
    pub max_prompt_bytes: Option<u64>,
    /// Ceiling on `n` / `best_of`.
    pub max_choices: Option<u64>,
    /// Whether `stream = true` is allowed (default true).
    #[serde(default = "yes")]
    pub allow_stream: bool,
}

fn yes() -> bool {
    true
}

/// What happens to a request over the token ceiling.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnExcess {
    /// Refuse with 400.
    #[default]
    Deny,
    /// Lower the ceiling in the body and forward.
    Clamp,
}

/// A caller entry as written: identity conditions plus a grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaller {
    /// SPIFFE ID glob of a verified URI SAN.
    pub spiffe: Option<String>,
    /// Verified DNS SAN, exact or `*.domain`.
    pub dns: Option<String>,
    /// Client networks.
    pub cidr: Option<OneOrMany>,
    /// Granted secret that the API key header must equal.
    pub api_key_secret: Option<String>,
    /// Header carrying the API key (default `x-api-key`).
    pub header: Option<String>,
    /// Scheme before the key, e.g. `Bearer`.
    pub scheme: Option<String>,
    /// Match every caller.
    #[serde(default)]
    pub anyone: bool,
    /// Model globs.
    pub models: Vec<String>,
    /// Overrides the top-level `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Overrides the top-level `max_prompt_bytes`.
    pub max_prompt_bytes: Option<u64>,
}

/// The `default` grant as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    /// Model globs.
    pub models: Vec<String>,
    /// Overrides the top-level `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Overrides the top-level `max_prompt_bytes`.
    pub max_prompt_bytes: Option<u64>,
}

#[derive(Debug)]
struct Grant {
    models: Globs,
    max_tokens: Option<u64>,
    max_prompt_bytes: Option<u64>,
}

/// The configured policy.
#[derive(Debug)]
pub struct ModelGuard {
    callers: Vec<(Identity, Grant)>,
    default: Option<Grant>,
    on_excess: OnExcess,
    max_choices: Option<u64>,
    allow_stream: bool,
}

fn positive(v: Option<u64>, key: String, errs: &mut ConfigErrors) -> Option<u64> {
    if v == Some(0) {
        errs.push(key, "must be at least 1");
    }
    v
}

fn grant(
    models: &[String],
    max_tokens: Option<u64>,
    max_prompt_bytes: Option<u64>,
    top: (Option<u64>, Option<u64>),
    key: &str,
    errs: &mut ConfigErrors,
) -> Grant {
    if models.is_empty() {
        errs.push(
            format!("{key}.models"),
            "list the models this caller may use ([\"*\"] for any)",
        );
    }
    Grant {
        models: Globs::build(models, &format!("{key}.models"), errs),
        max_tokens: positive(max_tokens, format!("{key}.max_tokens"), errs).or(top.0),
        max_prompt_bytes: positive(max_prompt_bytes, format!("{key}.max_prompt_bytes"), errs)
            .or(top.1),
    }
}

impl Policy for ModelGuard {
    type Config = Config;

    fn configure(setup: &Setup, c: Config) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if setup.body_max.is_none() {
            errs.push(
                "",
                "model-guard reads the request body: the route must give it the body phase with body = { max = \"1MiB\" } on this policy entry",
            );
        }
        if c.callers.is_empty() && c.default.is_none() {
            errs.push(
                "callers",
                "list callers or a default grant (with neither, every request would be refused)",
            );
        }
        let top = (
            positive(c.max_tokens, "max_tokens".into(), &mut errs),
            positive(c.max_prompt_bytes, "max_prompt_bytes".into(), &mut errs),
        );
        let max_choices = positive(c.max_choices, "max_choices".into(), &mut errs);
        let mut callers = Vec::with_capacity(c.callers.len());
        for (i, raw) in c.callers.into_iter().enumerate() {
            let key = format!("callers[{i}]");
            let identity = Identity::build(
                IdentitySpec {
                    spiffe: raw.spiffe,
                    dns: raw.dns,
                    cidr: raw.cidr,
                    api_key_secret: raw.api_key_secret,
                    header: raw.header,
                    scheme: raw.scheme,
                    anyone: raw.anyone,
                },
                &key,
                setup,
                &mut errs,
            );
            let g = grant(
                &raw.models,
                raw.max_tokens,
                raw.max_prompt_bytes,
                top,
                &key,
                &mut errs,
            );
            callers.push((identity, g));
        }
        let default = c.default.map(|d| {
            grant(
                &d.models,
                d.max_tokens,
                d.max_prompt_bytes,
                top,
                "default",
                &mut errs,
            )
        });
        errs.into_result(ModelGuard {
            callers,
            default,
            on_excess: c.on_excess,
            max_choices,
            allow_stream: c.allow_stream,
        })
    }

    fn evaluate(&self, req: &Request) -> Verdict {
        let Some(grant) = self
            .callers
            .iter()
            .find(|(id, _)| id.matches(req))
            .map(|(_, g)| g)
            .or(self.default.as_ref())
        else {
            return refuse(
                403,
                "this caller may not use this route",
                "permission_error",
                "caller_not_allowed",
            );
        };
        let body = req.body().unwrap_or_default();
        if body.is_empty() {
            return match req.method() {
                Method::Get | Method::Head => Verdict::allow(),
                _ => invalid("a JSON request body is required", "invalid_request"),
            };
        }
        let mut r = match InferenceRequest::parse(body) {
            Ok(r) => r,
            Err(e) => return invalid(&e.to_string(), "invalid_request"),
        };
        let Some(model) = r.model() else {
            return invalid("model is required", "model_required");
        };
        if !grant.models.matches_any(model) {
            return refuse(
                403,
                &format!(
                    "the model {:?} is not available to this caller",
                    clip(model)
                ),
                "permission_error",
                "model_not_allowed",
            );
        }
        if let Some(max) = grant.max_prompt_bytes
            && r.prompt_bytes() as u64 > max
        {
            return refuse(
                413,
                &format!(
                    "the prompt is {} bytes; this route accepts at most {max}",
                    r.prompt_bytes()
                ),
                "invalid_request_error",
                "prompt_too_large",
            );
        }
        if let Some(max) = self.max_choices
            && r.choices() > max
        {
            return invalid(
                &format!("n and best_of may be at most {max}"),
                "too_many_choices",
            );
        }
        if !self.allow_stream && r.stream() {
            return invalid(
                "streaming is not available on this route",
                "stream_not_allowed",
            );
        }
        if let Some(ceiling) = grant.max_tokens {
            let excess = match r.max_tokens() {
                Some(n) => n > ceiling,
                None => matches!(r.kind(), Kind::Chat | Kind::Completion),
            };
            if excess {
                return match self.on_excess {
                    OnExcess::Deny => invalid(
                        &format!("max_tokens must be set and at most {ceiling}"),
                        "max_tokens_exceeded",
                    ),
                    OnExcess::Clamp => {
                        if r.clamp_max_tokens(ceiling) {
                            Verdict::allow().with_body(r.to_body())
                        } else {
                            Verdict::allow()
                        }
                    }
                };
            }
        }
        Verdict::allow()
    }
}

fn refuse(status: u16, message: &str, kind: &str, code: &str) -> Verdict {
    inference::deny(status, message, kind, code)
}

fn invalid(message: &str, code: &str) -> Verdict {
    refuse(400, message, "invalid_request_error", code)
}

warden_sdk::export_policy!(ModelGuard);

#[cfg(test)]
mod tests;
