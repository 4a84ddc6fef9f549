//! OpenAI-style inference requests: chat (`messages`) and completions (`prompt`).
//!
//! [`InferenceRequest::parse`] reads the fields a policy limits (model, token ceiling,
//! streaming, prompt size) and refuses documents an upstream could read differently:
//! duplicate keys, both `messages` and `prompt`, and case variants of the fields it reads
//! (`"Model"` next to `"model"`: Go's `encoding/json`, behind many OpenAI-compatible
//! servers, matches field names case-insensitively and takes the last).
//!
//! ```ignore
//! let mut r = inference::InferenceRequest::parse(req.body().unwrap_or_default())?;
//! if r.max_tokens().is_none_or(|n| n > 1024) && r.clamp_max_tokens(1024) {
//!     return Verdict::allow().with_body(r.to_body());
//! }
//! ```

use std::fmt;

use serde_json::{Map, Value, json};

use crate::Verdict;
use crate::json::folds_to;

/// Fields naming the output-token ceiling: chat and completions (`max_tokens`), newer chat
/// (`max_completion_tokens`) and the Responses API (`max_output_tokens`).
pub const MAX_TOKEN_FIELDS: &[&str] = &["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Fields whose strings count as prompt text (see [`InferenceRequest::prompt_bytes`]).
const PROMPT_FIELDS: &[&str] = &[
    "messages",
    "prompt",
    "suffix",
    "input",
    "instructions",
    "tools",
    "functions",
];

/// Every top-level field this module reads; a case variant of one is refused.
const READ_FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "suffix",
    "input",
    "instructions",
    "tools",
    "functions",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream",
    "n",
    "best_of",
];

/// Bytes a token id in a pre-tokenised `prompt` counts for: roughly the average UTF-8
/// length of a token, so a prompt cannot dodge the size limit by arriving tokenised.
pub const TOKEN_ID_BYTES: usize = 4;

/// Which kind of request the body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Chat completions: has `messages`.
    Chat,
    /// Legacy completions: has `prompt`.
    Completion,
    /// Neither (embeddings, Responses API, ...): only the common fields are read.
    Other,
}

/// Why a body is not a usable inference request. The `Display` text is meant for the
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not one JSON document (or one with duplicate keys).
    NotJson(String),
    /// JSON, but not an object.
    NotObject,
    /// A field has the wrong type or value.
    Field {
        /// The field.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// A top-level key that is a case variant of a field this module reads.
    Ambiguous {
        /// The key as sent.
        key: String,
        /// The field it imitates.
        field: &'static str,
    },
    /// Both `messages` and `prompt`.
    MessagesAndPrompt,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotJson(e) => write!(f, "the body is not valid JSON: {e}"),
            Error::NotObject => f.write_str("the body must be a JSON object"),
            Error::Field { field, reason } => write!(f, "{field} must be {reason}"),
            Error::Ambiguous { key, field } => {
                write!(
                    f,
                    "{key:?} is ambiguous with {field:?}; send {field:?} only"
                )
            }
            Error::MessagesAndPrompt => f.write_str("send either messages or prompt, not both"),
        }
    }
}

impl std::error::Error for Error {}

/// A parsed inference request. Keeps the document so it can be changed and re-serialised
/// ([`InferenceRequest::clamp_max_tokens`], [`InferenceRequest::to_body`]).
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceRequest {
    doc: Map<String, Value>,
    kind: Kind,
    messages: usize,
    prompt_bytes: usize,
}

impl InferenceRequest {
    /// Parse and check a request body.
    ///
    /// Checked: `model` a string; `messages` an array of objects; `prompt` a string or an
    /// array of strings, of token ids or of arrays of token ids; the token ceilings
    /// ([`MAX_TOKEN_FIELDS`]) non-negative integers; `stream` a boolean; `n` and `best_of`
    /// positive integers. `null` counts as absent everywhere.
    pub fn parse(body: &[u8]) -> Result<InferenceRequest, Error> {
        let doc = match crate::json::parse_strict(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(Error::NotObject),
            Err(e) => return Err(Error::NotJson(e.to_string())),
        };
        for key in doc.keys() {
            if let Some(field) = READ_FIELDS.iter().find(|f| *f != key && folds_to(key, f)) {
                return Err(Error::Ambiguous {
                    key: key.clone(),
                    field,
                });
            }
        }
        let get = |k: &str| doc.get(k).filter(|v| !v.is_null());
        let bad = |field, reason| Err(Error::Field { field, reason });
        if get("model").is_some_and(|m| !m.is_string()) {
            return bad("model", "a string");
        }
        let messages = match get("messages") {
            None => None,
            Some(Value::Array(a)) if a.iter().all(Value::is_object) => Some(a.len()),
            Some(_) => return bad("messages", "an array of message objects"),
        };
        if let Some(p) = get("prompt") {
            let ok = match p {
                Value::String(_) => true,
                Value::Array(a) => {
                    a.iter().all(Value::is_string)
                        || a.iter().all(Value::is_u64)
                        || a.iter()
                            .all(|t| t.as_array().is_some_and(|t| t.iter().all(Value::is_u64)))
                }
                _ => false,
            };
            if !ok {
                return bad(
                    "prompt",
                    "a string, an array of strings or an array of token ids",
                );
            }
        }
        let kind = match (messages, get("prompt")) {
            (Some(_), Some(_)) => return Err(Error::MessagesAndPrompt),
            (Some(_), None) => Kind::Chat,
            (None, Some(_)) => Kind::Completion,
            (None, None) => Kind::Other,
        };
        for f in MAX_TOKEN_FIELDS {
            if get(f).is_some_and(|v| !v.is_u64()) {
                return bad(f, "a non-negative integer");
            }
        }
        if get("stream").is_some_and(|v| !v.is_boolean()) {
            return bad("stream", "true or false");
        }
        for f in ["n", "best_of"] {
            if get(f).is_some_and(|v| v.as_u64().is_none_or(|n| n == 0)) {
                return bad(f, "a positive integer");
            }
        }
        let prompt_bytes = PROMPT_FIELDS
            .iter()
            .filter_map(|f| doc.get(*f))
            .map(text_bytes)
            .fold(0usize, usize::saturating_add);
        Ok(InferenceRequest {
            kind,
            messages: messages.unwrap_or(0),
            prompt_bytes,
            doc,
        })
    }

    /// Chat, completion or other.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The requested model.
    pub fn model(&self) -> Option<&str> {
        self.doc.get("model").and_then(Value::as_str)
    }

    /// The requested output-token ceiling: the largest of [`MAX_TOKEN_FIELDS`] present;
    /// `None` when none is (the upstream's default applies, often the whole context).
    pub fn max_tokens(&self) -> Option<u64> {
        MAX_TOKEN_FIELDS
            .iter()
            .filter_map(|f| self.doc.get(*f).and_then(Value::as_u64))
            .max()
    }

    /// True when the client asks for a streamed (SSE) response.
    pub fn stream(&self) -> bool {
        self.doc
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Number of chat messages (0 for other kinds).
    pub fn message_count(&self) -> usize {
        self.messages
    }

    /// Choices generated per request: the larger of `n` and `best_of`, at least 1. The
    /// output budget is this times [`InferenceRequest::max_tokens`].
    pub fn choices(&self) -> u64 {
        ["n", "best_of"]
            .iter()
            .filter_map(|f| self.doc.get(*f).and_then(Value::as_u64))
            .max()
            .unwrap_or(1)
    }

    /// Size of the prompt text in bytes: the UTF-8 length of every string value (not
    /// keys) in `messages`, `prompt`, `suffix`, `input`, `instructions`, `tools` and
    /// `functions` (so images sent as data URLs and tool definitions count too), plus
    /// [`TOKEN_ID_BYTES`] per number (pre-tokenised prompts).
    pub fn prompt_bytes(&self) -> usize {
        self.prompt_bytes
    }

    /// The whole document.
    pub fn document(&self) -> &Map<String, Value> {
        &self.doc
    }

    /// Lower every token ceiling above `ceiling` to it; when a chat or completion request
    /// sets none, add `max_tokens = ceiling` (the field most OpenAI-compatible servers
    /// honour; an upstream that rejects it fails the request rather than running
    /// unbounded). Returns true when the document changed.
    pub fn clamp_max_tokens(&mut self, ceiling: u64) -> bool {
        let mut changed = false;
        let mut present = false;
        for f in MAX_TOKEN_FIELDS {
            if let Some(v) = self.doc.get_mut(*f).filter(|v| !v.is_null()) {
                present = true;
                if v.as_u64().is_some_and(|n| n > ceiling) {
                    *v = Value::from(ceiling);
                    changed = true;
                }
            }
        }
        if !present && matches!(self.kind, Kind::Chat | Kind::Completion) {
            self.doc.insert("max_tokens".into(), Value::from(ceiling));
            changed = true;
        }
        changed
    }

    /// The document as a request body (compact JSON; object keys come out sorted).
    pub fn to_body(&self) -> Vec<u8> {
        // Serialising a map with string keys cannot fail.
        serde_json::to_vec(&self.doc).unwrap_or_default()
    }
}

fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Number(_) => TOKEN_ID_BYTES,
        Value::Array(a) => a.iter().map(text_bytes).fold(0, usize::saturating_add),
        Value::Object(o) => o.values().map(text_bytes).fold(0, usize::saturating_add),
        Value::Null | Value::Bool(_) => 0,
    }
}

/// Parse `body`, clamp its token ceiling to `ceiling` (see
/// [`InferenceRequest::clamp_max_tokens`]) and return the new body, or `None` when nothing
/// needed changing.
pub fn clamp_max_tokens(body: &[u8], ceiling: u64) -> Result<Option<Vec<u8>>, Error> {
    let mut r = InferenceRequest::parse(body)?;
    Ok(r.clamp_max_tokens(ceiling).then(|| r.to_body()))
}

/// An OpenAI-style error body: `{"error":{"message":..,"type":..,"code":..}}`.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": code } })
}

/// Deny with `status` and an OpenAI-style error body (see [`error_body`]).
pub fn deny(status: u16, message: &str, kind: &str, code: &str) -> Verdict {
    Verdict::deny_json(status, &error_body(message, kind, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<InferenceRequest, Error> {
        InferenceRequest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn chat() {
        let r = parse(json!({
            "model": "llama", "max_completion_tokens": 50, "max_tokens": 70, "stream": true, "n": 2,
            "messages": [
                { "role": "system", "content": "hé" },
                { "role": "user", "content": [ { "type": "text", "text": "abc" } ] },
            ],
        }))
        .unwrap();
        assert_eq!(r.kind(), Kind::Chat);
        assert_eq!(r.model(), Some("llama"));
        assert_eq!(r.max_tokens(), Some(70));
        assert!(r.stream());
        assert_eq!(r.message_count(), 2);
        assert_eq!(r.choices(), 2);
        // "system" 6 + "hé" 3 + "user" 4 + "text" 4 + "abc" 3
        assert_eq!(r.prompt_bytes(), 20);
    }

    #[test]
    fn completions() {
        let r = parse(json!({ "model": "m", "prompt": ["ab", "c"] })).unwrap();
        assert_eq!(r.kind(), Kind::Completion);
        assert_eq!(
            (r.max_tokens(), r.stream(), r.prompt_bytes()),
            (None, false, 3)
        );
        let r = parse(json!({ "model": "m", "prompt": [[1, 2], [3]] })).unwrap();
        assert_eq!(r.prompt_bytes(), 3 * TOKEN_ID_BYTES);
        let r = parse(json!({ "model": "m", "input": "embed me", "max_tokens": null })).unwrap();
        assert_eq!(
            (r.kind(), r.max_tokens(), r.prompt_bytes()),
            (Kind::Other, None, 8)
        );
    }

    #[test]
    fn refuses_ambiguity_and_bad_types() {
        for (v, want) in [
            (json!([1]), "must be a JSON object"),
            (json!({ "model": 3 }), "model must be a string"),
            (json!({ "messages": "hi" }), "messages must be"),
            (json!({ "messages": ["hi"] }), "messages must be"),
            (json!({ "prompt": {} }), "prompt must be"),
            (json!({ "prompt": [1, "a"] }), "prompt must be"),
            (json!({ "messages": [], "prompt": "x" }), "not both"),
            (json!({ "max_tokens": -1 }), "max_tokens must be"),
            (json!({ "max_tokens": 1.5 }), "max_tokens must be"),
            (
                json!({ "max_completion_tokens": "9" }),
                "max_completion_tokens must be",
            ),
            (json!({ "stream": "yes" }), "stream must be"),
            (json!({ "n": 0 }), "n must be"),
            (json!({ "best_of": -3 }), "best_of must be"),
            (json!({ "model": "a", "Model": "b" }), "ambiguous"),
            (json!({ "MAX_TOKENS": 100000 }), "ambiguous"),
            (json!({ "max_tokens ": 100000 }), "ambiguous"),
        ] {
            let e = parse(v.clone()).expect_err(&v.to_string()).to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = InferenceRequest::parse(br#"{"model":"a","model":"b"}"#).unwrap_err();
        assert!(matches!(e, Error::NotJson(_)), "{e}");
    }

    #[test]
    fn clamping() {
        let body = json!({ "model": "m", "messages": [], "max_tokens": 5000, "max_completion_tokens": 10 });
        let out = clamp_max_tokens(body.to_string().as_bytes(), 100)
            .unwrap()
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["max_completion_tokens"], 10);
        assert_eq!(out["model"], "m");
        let within = json!({ "model": "m", "messages": [], "max_tokens": 50 });
        assert_eq!(
            clamp_max_tokens(within.to_string().as_bytes(), 100),
            Ok(None)
        );
        let missing = json!({ "model": "m", "prompt": "x", "max_tokens": null });
        let out = clamp_max_tokens(missing.to_string().as_bytes(), 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap()["max_tokens"],
            100
        );
        let embed = json!({ "model": "m", "input": "x" });
        assert_eq!(
            clamp_max_tokens(embed.to_string().as_bytes(), 100),
            Ok(None)
        );
    }

    #[test]
    fn openai_errors() {
        let v = deny(403, "no", "permission_error", "model_not_allowed");
        assert_eq!(
            v.body_json().unwrap(),
            json!({ "error": { "message": "no", "type": "permission_error", "code": "model_not_allowed" } })
        );
    }
}
