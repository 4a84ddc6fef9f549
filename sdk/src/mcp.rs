//! JSON-RPC 2.0 as the Model Context Protocol (MCP) sends it over HTTP.
//!
//! [`parse`] reads a request body (one message or a batch) strictly enough that a policy
//! and the upstream cannot disagree about what it says: duplicate keys, unknown top-level
//! members and case variants of the fields a decision rests on (`"Name"` next to
//! `"name"`, which Go's and .NET's decoders would fold together) are refused. Method
//! names are exact: `Tools/Call` is not `tools/call` (see [`lookalike_of`] for telling
//! such variants apart from genuinely unknown methods).
//!
//! ```ignore
//! let msg = match mcp::parse(req.body().unwrap_or_default()) {
//!     Ok(m) => m,
//!     Err(e) => return e.deny(),                      // 400, JSON-RPC error -32600/-32700
//! };
//! for call in msg.calls() {
//!     if let mcp::Op::ToolsCall { name, .. } = call.op() {
//!         if name == "drop_database" {
//!             return mcp::deny(403, &msg, mcp::codes::FORBIDDEN, "tool not allowed");
//!         }
//!     }
//! }
//! ```

use std::fmt;

use serde_json::{Map, Value, json};

use crate::Verdict;
use crate::json::folds_to;

/// JSON-RPC error codes.
pub mod codes {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The caller may not do this. JSON-RPC leaves -32000..=-32099 to implementations;
    /// Warden's policies use this one for refusals.
    pub const FORBIDDEN: i64 = -32001;
}

/// The methods an MCP client sends to a server (protocol revision 2025-06-18), requests
/// and notifications.
pub const CLIENT_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// A body that is not valid JSON-RPC, or a response that cannot be read; carries the
/// JSON-RPC error to answer with.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    code: i64,
    message: String,
    id: Option<Value>,
}

impl Error {
    fn new(id: Option<Value>, code: i64, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            id,
        }
    }
    /// The JSON-RPC error code ([`codes::PARSE_ERROR`], [`codes::INVALID_REQUEST`],
    /// [`codes::INVALID_PARAMS`], or [`codes::INTERNAL_ERROR`] for responses).
    pub fn code(&self) -> i64 {
        self.code
    }
    /// What is wrong, for the client.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The id of the offending request, when it could be read (never for a batch).
    pub fn id(&self) -> Option<&Value> {
        self.id.as_ref()
    }
    /// The JSON-RPC error object for this error.
    pub fn to_json(&self) -> Value {
        error_object(self.id.as_ref(), self.code, &self.message)
    }
    /// Deny with 400 and this error as the JSON-RPC error object.
    pub fn deny(&self) -> Verdict {
        Verdict::deny_json(400, &self.to_json())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

/// One JSON-RPC message of a request body: a request (with an id), a notification
/// (without), or the client's reply to a request the server sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    id: Option<Value>,
    method: Option<String>,
    params: Option<Value>,
    reply: Option<Value>,
}

/// What a [`Call`] asks for, with the parameters a policy decides on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op<'a> {
    /// `initialize`
    Initialize,
    /// `tools/list`
    ToolsList,
    /// `tools/call`
    ToolsCall {
        /// The tool.
        name: &'a str,
        /// Its arguments, if given.
        arguments: Option<&'a Map<String, Value>>,
    },
    /// `resources/read`
    ResourcesRead {
        /// The resource URI.
        uri: &'a str,
    },
    /// `prompts/get`
    PromptsGet {
        /// The prompt.
        name: &'a str,
        /// Its arguments, if given.
        arguments: Option<&'a Map<String, Value>>,
    },
    /// Any other method, exactly as sent.
    Other(&'a str),
    /// Not a call: the client's reply (`result` or `error`) to a server-to-client request
    /// such as `sampling/createMessage`.
    Reply,
}

impl Call {
    /// The id; `None` for a notification.
    pub fn id(&self) -> Option<&Value> {
        self.id.as_ref()
    }
    /// True for a notification (a call without an id, which gets no response).
    pub fn is_notification(&self) -> bool {
        self.id.is_none() && self.method.is_some()
    }
    /// The method, exactly as sent; `None` for a reply.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }
    /// The params (an object or an array), if given.
    pub fn params(&self) -> Option<&Value> {
        self.params.as_ref()
    }
    /// For a reply, its `result` or `error` object.
    pub fn reply(&self) -> Option<&Value> {
        self.reply.as_ref()
    }
    /// What the call asks for. [`parse`] has checked the parameters of the typed methods,
    /// so `tools/call` always has a tool name, `resources/read` a URI and so on.
    pub fn op(&self) -> Op<'_> {
        let Some(m) = self.method.as_deref() else {
            return Op::Reply;
        };
        let p = self.params.as_ref().and_then(Value::as_object);
        let s = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
        let args = p
            .and_then(|p| p.get("arguments"))
            .and_then(Value::as_object);
        // The fallbacks to `Other` are unreachable after `parse`; they keep a hand-built
        // `Call` from ever looking like a call of some default tool.
        match m {
            "initialize" => Op::Initialize,
            "tools/list" => Op::ToolsList,
            "tools/call" => s("name").map_or(Op::Other(m), |name| Op::ToolsCall {
                name,
                arguments: args,
            }),
            "resources/read" => s("uri").map_or(Op::Other(m), |uri| Op::ResourcesRead { uri }),
            "prompts/get" => s("name").map_or(Op::Other(m), |name| Op::PromptsGet {
                name,
                arguments: args,
            }),
            other => Op::Other(other),
        }
    }
}

/// A request body: one message or a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// One message.
    Single(Call),
    /// A batch (never empty).
    Batch(Vec<Call>),
}

impl Message {
    /// Same as [`parse`].
    pub fn parse(body: &[u8]) -> Result<Message, Error> {
        parse(body)
    }
    /// Every message, in order (one for [`Message::Single`]).
    pub fn calls(&self) -> &[Call] {
        match self {
            Message::Single(c) => std::slice::from_ref(c),
            Message::Batch(b) => b,
        }
    }
    /// True for a batch.
    pub fn is_batch(&self) -> bool {
        matches!(self, Message::Batch(_))
    }
}

/// Parse a JSON-RPC 2.0 request body.
///
/// Refused with [`codes::PARSE_ERROR`]: anything that is not one JSON document (an empty
/// body, trailing data, duplicate keys). With [`codes::INVALID_REQUEST`]: an empty batch;
/// an element that is not an object; `jsonrpc` other than `"2.0"`; a missing or non-string
/// `method` (unless the element is a reply: an `id` and exactly one of `result`/`error`);
/// an `id` that is not a string, number or null; `params` that are not an object or
/// array; any other top-level member. With [`codes::INVALID_PARAMS`]: `tools/call` or
/// `prompts/get` without a string `name`, `resources/read` without a string `uri`,
/// `arguments` that are not an object, params of the typed methods that are not an
/// object, or a case variant of one of those field names next to (or instead of) it.
///
/// The error carries the id of a single message when it could be read; for a batch the
/// error names the element's index and carries no id.
pub fn parse(body: &[u8]) -> Result<Message, Error> {
    let v = crate::json::parse_strict(body)
        .map_err(|e| Error::new(None, codes::PARSE_ERROR, format!("parse error: {e}")))?;
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Error::new(
                    None,
                    codes::INVALID_REQUEST,
                    "invalid request: empty batch",
                ));
            }
            let mut calls = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                calls.push(parse_call(item).map_err(|e| Error {
                    id: None,
                    message: format!("batch element {i}: {}", e.message),
                    code: e.code,
                })?);
            }
            Ok(Message::Batch(calls))
        }
        other => parse_call(other).map(Message::Single),
    }
}

fn parse_call(v: Value) -> Result<Call, Error> {
    let Value::Object(mut m) = v else {
        return Err(Error::new(
            None,
            codes::INVALID_REQUEST,
            "invalid request: a JSON-RPC message must be an object",
        ));
    };
    let id = match m.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err(Error::new(
                None,
                codes::INVALID_REQUEST,
                "invalid request: id must be a string, a number or null",
            ));
        }
    };
    let invalid = |id: Option<Value>, why: &str| {
        Error::new(
            id,
            codes::INVALID_REQUEST,
            format!("invalid request: {why}"),
        )
    };
    if m.remove("jsonrpc").as_ref().and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(id, "jsonrpc must be \"2.0\""));
    }
    let method = m.remove("method");
    let params = m.remove("params");
    match method {
        Some(Value::String(method)) => {
            if let Some(k) = m.keys().next() {
                return Err(invalid(id, &format!("unexpected member {k:?}")));
            }
            if !matches!(params, None | Some(Value::Object(_) | Value::Array(_))) {
                return Err(invalid(id, "params must be an object or an array"));
            }
            if let Err(why) = check_params(&method, params.as_ref()) {
                return Err(Error::new(
                    id,
                    codes::INVALID_PARAMS,
                    format!("invalid params: {method}: {why}"),
                ));
            }
            Ok(Call {
                id,
                method: Some(method),
                params,
                reply: None,
            })
        }
        Some(_) => Err(invalid(id, "method must be a string")),
        None => {
            let result = m.remove("result");
            let error = m.remove("error");
            let reply = match (result, error) {
                (Some(r), None) | (None, Some(r)) if params.is_none() && id.is_some() => r,
                _ => return Err(invalid(id, "missing method")),
            };
            if let Some(k) = m.keys().next() {
                return Err(invalid(id, &format!("unexpected member {k:?}")));
            }
            Ok(Call {
                id,
                method: None,
                params: None,
                reply: Some(reply),
            })
        }
    }
}

/// Fields of the typed methods: (method, string fields, object fields).
const TYPED: &[(&str, &[&str], &[&str])] = &[
    ("initialize", &[], &[]),
    ("tools/list", &[], &[]),
    ("tools/call", &["name"], &["arguments"]),
    ("resources/read", &["uri"], &[]),
    ("prompts/get", &["name"], &["arguments"]),
];

fn check_params(method: &str, params: Option<&Value>) -> Result<(), String> {
    let Some((_, strings, objects)) = TYPED.iter().find(|(m, _, _)| *m == method) else {
        return Ok(());
    };
    let p = match params {
        None if strings.is_empty() => return Ok(()),
        None => return Err("params are required".into()),
        Some(Value::Object(p)) => p,
        Some(_) => return Err("params must be an object".into()),
    };
    for key in p.keys() {
        if let Some(field) = strings
            .iter()
            .chain(objects.iter())
            .find(|f| *f != key && folds_to(key, f))
        {
            return Err(format!(
                "{key:?} is ambiguous with {field:?}; send {field:?} only"
            ));
        }
    }
    for f in strings.iter() {
        if !p.get(*f).is_some_and(Value::is_string) {
            return Err(format!("{f} must be a string"));
        }
    }
    for f in objects.iter() {
        if !matches!(p.get(*f), None | Some(Value::Null | Value::Object(_))) {
            return Err(format!("{f} must be an object"));
        }
    }
    Ok(())
}

/// The MCP method that `method` imitates without being it: a case or whitespace variant of
/// one of [`CLIENT_METHODS`] (`"Tools/Call"`, `" tools/call"`). A policy that lets unknown
/// methods through should still refuse these, in case the upstream matches loosely.
pub fn lookalike_of(method: &str) -> Option<&'static str> {
    CLIENT_METHODS
        .iter()
        .find(|m| **m != method && folds_to(method, m))
        .copied()
}

/// The JSON-RPC error response `{"jsonrpc":"2.0","id":...,"error":{"code":...,"message":...}}`
/// (`id` null when `None`).
pub fn error_object(id: Option<&Value>, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": { "code": code, "message": message },
    })
}

/// Deny `msg` with HTTP `status` and a JSON-RPC error: for a single message one error
/// object carrying its id; for a batch an array with one error object per element that has
/// an id (or a single object with a null id if none has).
pub fn deny(status: u16, msg: &Message, code: i64, message: &str) -> Verdict {
    deny_with(status, msg, |_| (code, message.to_owned()))
}

/// Like [`deny`], with the code and message chosen per element (e.g. naming the element
/// that caused a batch to be refused).
pub fn deny_with(
    status: u16,
    msg: &Message,
    mut error: impl FnMut(&Call) -> (i64, String),
) -> Verdict {
    let body = match msg {
        Message::Single(c) => {
            let (code, m) = error(c);
            error_object(c.id(), code, &m)
        }
        Message::Batch(calls) => {
            let errors: Vec<Value> = calls
                .iter()
                .filter_map(|c| {
                    let id = c.id()?;
                    let (code, m) = error(c);
                    Some(error_object(Some(id), code, &m))
                })
                .collect();
            match calls.first() {
                // Only notifications: nothing to answer per id, so one error for the batch.
                Some(first) if errors.is_empty() => {
                    let (code, m) = error(first);
                    error_object(None, code, &m)
                }
                _ => Value::Array(errors),
            }
        }
    };
    Verdict::deny_json(status, &body)
}

/// Filter the tools of a `tools/list` response (response phase): keep only the entries of
/// `result.tools` whose `name` satisfies `keep` (entries without a string name are
/// dropped).
///
/// `request` is the parsed request. For a single request the response's result is
/// filtered whatever its id; in a batch only the responses whose id belongs to a
/// `tools/list` request are. Returns `Ok(None)` when nothing changes (no `tools/list` in
/// the request, error responses, every tool kept), `Ok(Some(body))` with the new body,
/// and an [`codes::INTERNAL_ERROR`] error when a `tools/list` response cannot be read, so
/// the caller can fail closed rather than pass an unfiltered list.
pub fn filter_tools_list(
    request: &Message,
    response: &[u8],
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Option<Vec<u8>>, Error> {
    let ids: Vec<&Value> = request
        .calls()
        .iter()
        .filter(|c| matches!(c.op(), Op::ToolsList))
        .filter_map(Call::id)
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let any_id = !request.is_batch();
    let mut doc = crate::json::parse_strict(response).map_err(|e| {
        Error::new(
            None,
            codes::INTERNAL_ERROR,
            format!("tools/list response is not JSON: {e}"),
        )
    })?;
    let mut changed = false;
    match &mut doc {
        Value::Object(o) => filter_one(o, any_id, &ids, &mut keep, &mut changed)?,
        Value::Array(items) => {
            for item in items {
                if let Value::Object(o) = item {
                    filter_one(o, any_id, &ids, &mut keep, &mut changed)?;
                }
            }
        }
        _ => {
            return Err(Error::new(
                None,
                codes::INTERNAL_ERROR,
                "tools/list response is not a JSON-RPC response",
            ));
        }
    }
    Ok(changed.then(|| doc.to_string().into_bytes()))
}

fn filter_one(
    o: &mut Map<String, Value>,
    any_id: bool,
    ids: &[&Value],
    keep: &mut impl FnMut(&str) -> bool,
    changed: &mut bool,
) -> Result<(), Error> {
    if !any_id && !o.get("id").is_some_and(|id| ids.contains(&id)) {
        return Ok(());
    }
    if !o.contains_key("result") {
        // An error response lists nothing.
        return Ok(());
    }
    let Some(Value::Array(tools)) = o
        .get_mut("result")
        .and_then(Value::as_object_mut)
        .and_then(|r| r.get_mut("tools"))
    else {
        return Err(Error::new(
            None,
            codes::INTERNAL_ERROR,
            "tools/list result has no tools array",
        ));
    };
    let before = tools.len();
    tools.retain(|t| {
        t.get("name")
            .and_then(Value::as_str)
            .is_some_and(&mut *keep)
    });
    *changed |= tools.len() != before;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> Error {
        parse(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn single_typed_calls() {
        let m = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}"#).unwrap();
        assert!(!m.is_batch());
        let c = &m.calls()[0];
        assert_eq!(c.id(), Some(&json!(7)));
        let Op::ToolsCall { name, arguments } = c.op() else {
            panic!()
        };
        assert_eq!(name, "search");
        assert_eq!(arguments.unwrap()["q"], "x");
        let op = |b: &str| format!("{:?}", parse(b.as_bytes()).unwrap().calls()[0].op());
        assert_eq!(
            op(r#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{}}"#),
            "Initialize"
        );
        assert_eq!(
            op(r#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#),
            "ToolsList"
        );
        assert_eq!(
            op(
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#
            ),
            r#"ResourcesRead { uri: "file:///a" }"#
        );
        assert_eq!(
            op(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#),
            r#"PromptsGet { name: "p", arguments: None }"#
        );
        assert_eq!(
            op(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            r#"Other("notifications/initialized")"#
        );
        assert_eq!(
            op(r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{}}"#),
            r#"Other("Tools/Call")"#
        );
        assert_eq!(op(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#), "Reply");
    }

    #[test]
    fn batches() {
        let m = parse(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#).unwrap();
        assert!(m.is_batch());
        assert_eq!(m.calls().len(), 2);
        assert!(m.calls()[1].is_notification());
        let e = err("[]");
        assert_eq!(e.code(), codes::INVALID_REQUEST);
        let e = err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 3]"#);
        assert_eq!(e.code(), codes::INVALID_REQUEST);
        assert!(e.message().starts_with("batch element 1:"), "{e}");
        assert_eq!(e.id(), None);
        let e = err(r#"[[{"jsonrpc":"2.0","id":1,"method":"ping"}]]"#);
        assert_eq!(e.code(), codes::INVALID_REQUEST);
    }

    #[test]
    fn invalid_requests() {
        for (body, code) in [
            ("", codes::PARSE_ERROR),
            ("{", codes::PARSE_ERROR),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
                codes::PARSE_ERROR,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
                codes::PARSE_ERROR,
            ),
            ("3", codes::INVALID_REQUEST),
            (r#"{"id":1,"method":"ping"}"#, codes::INVALID_REQUEST),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
                codes::INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, codes::INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}"#,
                codes::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
                codes::INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","result":{}}"#, codes::INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[]}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"b"}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"b"}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name ":"b"}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","URI":"b"}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{}}"#,
                codes::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]}"#,
                codes::INVALID_PARAMS,
            ),
        ] {
            assert_eq!(err(body).code(), code, "{body}");
        }
        // The id is echoed when it could be read.
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":"x","method":7}"#).id(),
            Some(&json!("x"))
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":"x","method":7}"#).to_json(),
            json!({"jsonrpc":"2.0","id":"x","error":{"code":-32600,"message":"invalid request: method must be a string"}})
        );
        // A Kelvin sign folds to k in lenient decoders; "arguments" has an s that a
        // long s folds to.
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","argument\u017f":[]}}"#).code(), codes::INVALID_PARAMS);
    }

    #[test]
    fn lookalikes() {
        assert_eq!(lookalike_of("Tools/Call"), Some("tools/call"));
        assert_eq!(lookalike_of(" tools/call"), Some("tools/call"));
        assert_eq!(lookalike_of("tools/call"), None);
        assert_eq!(lookalike_of("vendor/thing"), None);
        assert_eq!(lookalike_of("LOGGING/SETLEVEL"), Some("logging/setLevel"));
    }

    #[test]
    fn denials_carry_ids() {
        let single =
            parse(br#"{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"x"}}"#)
                .unwrap();
        let v = deny(403, &single, codes::FORBIDDEN, "no");
        assert_eq!(v.status(), Some(403));
        assert_eq!(
            v.response_header_str("content-type"),
            Some("application/json")
        );
        assert_eq!(
            v.body_json().unwrap(),
            json!({"jsonrpc":"2.0","id":"r1","error":{"code":-32001,"message":"no"}})
        );
        let batch = parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#).unwrap();
        let b = deny(403, &batch, -1, "m").body_json().unwrap();
        assert_eq!(
            b.as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone())
                .collect::<Vec<_>>(),
            [json!(1), json!(2)]
        );
        let notes = parse(br#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#).unwrap();
        assert_eq!(
            deny(403, &notes, -1, "m").body_json().unwrap()["id"],
            Value::Null
        );
    }

    #[test]
    fn tools_list_filtering() {
        let req = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        let resp = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search_a"},{"name":"drop"},{"title":"nameless"}],"nextCursor":"c"}});
        let out = filter_tools_list(&req, resp.to_string().as_bytes(), |n| {
            n.starts_with("search")
        })
        .unwrap()
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name":"search_a"}]));
        assert_eq!(out["result"]["nextCursor"], "c");
        assert_eq!(
            filter_tools_list(
                &req,
                br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}"#,
                |_| true
            ),
            Ok(None)
        );
        assert_eq!(
            filter_tools_list(
                &req,
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
                |_| false
            ),
            Ok(None)
        );
        assert!(filter_tools_list(&req, b"not json", |_| true).is_err());
        assert!(
            filter_tools_list(&req, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, |_| true).is_err()
        );
        let other = parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
        assert_eq!(filter_tools_list(&other, b"whatever", |_| false), Ok(None));
        // In a batch only the tools/list responses are touched.
        let batch = parse(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t"}}]"#).unwrap();
        let resp = json!([
            {"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"x"}]}},
            {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"x"},{"name":"y"}]}},
        ]);
        let out = filter_tools_list(&batch, resp.to_string().as_bytes(), |n| n == "y")
            .unwrap()
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out[0]["result"]["tools"], json!([{"name":"x"}]));
        assert_eq!(out[1]["result"]["tools"], json!([{"name":"y"}]));
    }
}
