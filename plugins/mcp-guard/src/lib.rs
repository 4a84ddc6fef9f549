//! `mcp-guard`: per-caller allow-lists for Model Context Protocol servers (JSON-RPC 2.0
//! over streamable HTTP).
//!
//! ```toml
//! [[routes.policies]]
//! plugin = "mcp-guard"
//! body = { max = "256KiB" }             # required: the policy reads the JSON-RPC body
//! response_body = { max = "1MiB" }      # optional: filter tools/list results per caller
//! secrets = { mcp_key = "${vault:mcp/clients#ci}" }
//! config = { unknown_methods = "deny", callers = [
//!   { spiffe = "spiffe://sophia/*",
//!     methods = ["initialize", "notifications/*", "ping", "tools/list", "tools/call"],
//!     tools = ["search_*", "get_project"] },
//!   { cidr = "127.0.0.0/8", methods = ["initialize", "notifications/*", "tools/list"], tools = ["search_*"] },
//!   { api_key_secret = "mcp_key", header = "x-api-key",
//!     methods = ["*"], tools = ["*"], resources = ["file:///docs/*"], prompts = ["*"] },
//! ] }
//! ```
//!
//! **Callers** are tried in order and the first whose conditions all hold is the caller
//! (entries are not merged); see the `callers` crate for `spiffe`, `dns`, `cidr`,
//! `api_key_secret` (+ `header`, `scheme`) and `anyone`. A request from no caller is
//! refused with 403.
//!
//! **What a caller may do**: `methods` are globs (`*` matches anything) over exact,
//! case-sensitive method names. `tools`, `resources` (URIs) and `prompts` are globs over
//! the names a `tools/call`, `resources/read` or `prompts/get` asks for; a caller whose
//! methods allow one of those must list what it may call (`["*"]` for everything).
//!
//! **Methods not listed** are refused (403). With `unknown_methods = "allow"` a method
//! that is not part of MCP (a vendor extension) passes even when not listed, but the MCP
//! methods themselves still have to be listed, and a case or whitespace variant of an MCP
//! method (`Tools/Call`) is refused always: an upstream matching loosely would run it.
//!
//! **Refusals** are JSON-RPC error responses carrying the request's `id` (for a batch, one
//! per element with an id): 403 with code -32001 when the caller may not do something
//! (any refused element refuses the whole batch); 400 with -32700 (not JSON), -32600
//! (not JSON-RPC: empty batch, missing or non-string method, ...) or -32602 (bad params,
//! e.g. `tools/call` without a string `name`). The client's replies to server requests
//! (`result`/`error` without `method`) are refused unless `client_replies = "allow"`.
//!
//! **HTTP methods**: POST carries JSON-RPC. GET (the server's event stream) and DELETE
//! (session end) pass for any caller, and must not carry a body. Others get 405.
//!
//! **Response phase**: where the route sets `response_body`, the result of every
//! `tools/list` is filtered down to the caller's `tools`; a `tools/list` response that
//! cannot be read is replaced by a JSON-RPC error (fail closed). The gateway only shows
//! non-streaming JSON responses to the policy: a server that answers `tools/list` with an
//! event stream, or with more than `response_body.max`, is not filtered, so treat the
//! filter as hygiene and the `tools/call` check as the control.

use std::ptr;

use callers::{Globs, Identity, IdentitySpec, OneOrMany, clip};
use serde::Deserialize;
use warden_sdk::mcp::{self, Call, Op, codes};
use warden_sdk::serde_json::Value;
use warden_sdk::{
    ConfigErrors, Method, Policy, Request, Response, ResponseVerdict, Setup, Verdict,
};

/// The policy's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Callers, tried in order.
    pub callers: Vec<RawCaller>,
    /// What happens to a non-MCP method a caller does not list.
    #[serde(default)]
    pub unknown_methods: Choice,
    /// What happens to the client's replies to server-to-client requests.
    #[serde(default)]
    pub client_replies: Choice,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// Refuse (the default).
    #[default]
    Deny,
    /// Let through.
    Allow,
}

/// One caller entry as written.
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
    /// Method globs this caller may call.
    pub methods: Vec<String>,
    /// Tool name globs for `tools/call` (and the `tools/list` filter).
    pub tools: Option<Vec<String>>,
    /// Resource URI globs for `resources/read`.
    pub resources: Option<Vec<String>>,
    /// Prompt name globs for `prompts/get`.
    pub prompts: Option<Vec<String>>,
}

#[derive(Debug)]
struct Caller {
    identity: Identity,
    methods: Globs,
    tools: Option<Globs>,
    resources: Option<Globs>,
    prompts: Option<Globs>,
}

/// The configured policy.
#[derive(Debug)]
pub struct McpGuard {
    callers: Vec<Caller>,
    unknown_methods: Choice,
    client_replies: Choice,
}

impl Policy for McpGuard {
    type Config = Config;

    fn configure(setup: &Setup, c: Config) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if setup.body_max.is_none() {
            errs.push(
                "",
                "mcp-guard reads the JSON-RPC body: the route must give it the body phase with body = { max = \"256KiB\" } on this policy entry",
            );
        }
        if c.callers.is_empty() {
            errs.push(
                "callers",
                "list at least one caller (with none, every request would be refused)",
            );
        }
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
            if raw.methods.is_empty() {
                errs.push(
                    format!("{key}.methods"),
                    "list the methods this caller may call",
                );
            }
            for (j, m) in raw.methods.iter().enumerate() {
                if let Some(real) = mcp::lookalike_of(m) {
                    errs.push(
                        format!("{key}.methods[{j}]"),
                        format!("method names are case-sensitive: did you mean {real:?}?"),
                    );
                }
            }
            let methods = Globs::build(&raw.methods, &format!("{key}.methods"), &mut errs);
            let mut list = |names: Option<Vec<String>>, field: &str, method: &str| {
                let globs = names.map(|n| Globs::build(&n, &format!("{key}.{field}"), &mut errs));
                if globs.is_none() && methods.matches_any(method) {
                    errs.push(
                        format!("{key}.{field}"),
                        format!("{method} is allowed: list the {field} this caller may use ({field} = [\"*\"] for all)"),
                    );
                }
                globs
            };
            let tools = list(raw.tools, "tools", "tools/call");
            let resources = list(raw.resources, "resources", "resources/read");
            let prompts = list(raw.prompts, "prompts", "prompts/get");
            callers.push(Caller {
                identity,
                methods,
                tools,
                resources,
                prompts,
            });
        }
        errs.into_result(McpGuard {
            callers,
            unknown_methods: c.unknown_methods,
            client_replies: c.client_replies,
        })
    }

    fn evaluate(&self, req: &Request) -> Verdict {
        let caller = self.caller(req);
        let body = req.body().unwrap_or_default();
        match req.method() {
            Method::Post => {}
            Method::Get | Method::Delete => {
                if !body.is_empty() {
                    return rpc_error(400, codes::INVALID_REQUEST, "GET and DELETE carry no body");
                }
                return match caller {
                    Some(_) => Verdict::allow(),
                    None => rpc_error(403, codes::FORBIDDEN, "forbidden"),
                };
            }
            _ => {
                return rpc_error(405, codes::INVALID_REQUEST, "use POST for JSON-RPC")
                    .response_header("allow", "GET, POST, DELETE");
            }
        }
        let msg = mcp::parse(body);
        let Some(caller) = caller else {
            // Refused before any detail of the body matters; the id is echoed if readable.
            return match &msg {
                Ok(m) => mcp::deny(403, m, codes::FORBIDDEN, "forbidden"),
                Err(_) => rpc_error(403, codes::FORBIDDEN, "forbidden"),
            };
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return e.deny(),
        };
        for (i, call) in msg.calls().iter().enumerate() {
            if let Err(why) = self.check(caller, call) {
                return mcp::deny_with(403, &msg, |c| {
                    let m = if ptr::eq(c, call) {
                        why.clone()
                    } else {
                        format!("batch refused: element {i} is not allowed")
                    };
                    (codes::FORBIDDEN, m)
                });
            }
        }
        Verdict::allow()
    }

    fn evaluate_response(&self, req: &Request, resp: &Response) -> ResponseVerdict {
        // Only requests `evaluate` allowed reach the upstream, so a caller and a valid
        // message are there; anything else is left alone.
        let Some(caller) = self.caller(req) else {
            return ResponseVerdict::Keep;
        };
        let Ok(msg) = mcp::parse(req.body().unwrap_or_default()) else {
            return ResponseVerdict::Keep;
        };
        let keep = |name: &str| caller.tools.as_ref().is_some_and(|t| t.matches_any(name));
        match mcp::filter_tools_list(&msg, resp.body(), keep) {
            Ok(None) => ResponseVerdict::Keep,
            Ok(Some(body)) => ResponseVerdict::Replace(body),
            Err(e) => {
                let ids: Vec<&Value> = msg
                    .calls()
                    .iter()
                    .filter(|c| matches!(c.op(), Op::ToolsList))
                    .filter_map(Call::id)
                    .collect();
                let errors: Vec<Value> = ids
                    .iter()
                    .map(|id| {
                        mcp::error_object(
                            Some(id),
                            e.code(),
                            "tools/list response could not be filtered",
                        )
                    })
                    .collect();
                let body = match (msg.is_batch(), errors.len()) {
                    (false, 1) => errors.into_iter().next().unwrap_or_default(),
                    _ => Value::Array(errors),
                };
                ResponseVerdict::replace_json(&body)
            }
        }
    }
}

impl McpGuard {
    fn caller(&self, req: &Request) -> Option<&Caller> {
        self.callers.iter().find(|c| c.identity.matches(req))
    }

    fn check(&self, caller: &Caller, call: &Call) -> Result<(), String> {
        let op = call.op();
        let Some(method) = call.method() else {
            return match self.client_replies {
                Choice::Allow => Ok(()),
                Choice::Deny => Err("replies to server requests are not accepted here".into()),
            };
        };
        if mcp::lookalike_of(method).is_some() {
            return Err(format!(
                "method {:?} is not allowed (method names are case-sensitive)",
                clip(method)
            ));
        }
        if !caller.methods.matches_any(method) {
            let is_mcp = mcp::CLIENT_METHODS.contains(&method);
            if is_mcp || self.unknown_methods == Choice::Deny {
                return Err(format!("method {:?} is not allowed", clip(method)));
            }
            return Ok(());
        }
        let allowed =
            |globs: &Option<Globs>, name: &str| globs.as_ref().is_some_and(|g| g.matches_any(name));
        match op {
            Op::ToolsCall { name, .. } if !allowed(&caller.tools, name) => {
                Err(format!("tool {:?} is not allowed", clip(name)))
            }
            Op::ResourcesRead { uri } if !allowed(&caller.resources, uri) => {
                Err(format!("resource {:?} is not allowed", clip(uri)))
            }
            Op::PromptsGet { name, .. } if !allowed(&caller.prompts, name) => {
                Err(format!("prompt {:?} is not allowed", clip(name)))
            }
            _ => Ok(()),
        }
    }
}

fn rpc_error(status: u16, code: i64, message: &str) -> Verdict {
    Verdict::deny_json(status, &mcp::error_object(None, code, message))
}

warden_sdk::export_policy!(McpGuard);

#[cfg(test)]
mod tests;
