//! The response phase: what a policy sees of the upstream's answer and what it may do.

use serde::de::DeserializeOwned;

use crate::JsonError;
use crate::headers::{HeaderIter, Headers};

/// An upstream response, seen in [`Policy::evaluate_response`](crate::Policy::evaluate_response):
/// a non-streaming JSON response within the route's `response_body.max`, already decoded
/// from any `content-encoding`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// Start building a response (for tests): `200`, no headers, empty body.
    pub fn builder() -> ResponseBuilder {
        ResponseBuilder(Response {
            status: 200,
            headers: Headers::default(),
            body: Vec::new(),
        })
    }
    /// Status code from the upstream.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// First value of header `name` (case-insensitive) as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
    /// First value of header `name` (case-insensitive) if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    /// Every value of header `name` (case-insensitive), raw.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name)
    }
    /// All headers in received order, as (lower-case name, raw value).
    pub fn headers(&self) -> HeaderIter<'_> {
        self.headers.iter()
    }
    /// The whole body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    /// Deserialize the body as JSON; an empty body is [`JsonError::NoBody`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        crate::json::from_body(Some(&self.body))
    }
}

/// Builds a [`Response`] for tests.
#[derive(Clone, Debug)]
pub struct ResponseBuilder(Response);

impl ResponseBuilder {
    /// Status code.
    pub fn status(mut self, status: u16) -> Self {
        self.0.status = status;
        self
    }
    /// Add a header (name lower-cased).
    ///
    /// # Panics
    /// If the name or value contains a 0 byte.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.headers.push(name, value.as_ref());
        self
    }
    /// Body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = body.into();
        self
    }
    /// JSON body; adds `content-type: application/json` unless a content type is set.
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.0.body = value.to_string().into_bytes();
        if self.0.headers.get("content-type").is_none() {
            self.0.headers.push("content-type", b"application/json");
        }
        self
    }
    /// Finish.
    pub fn build(self) -> Response {
        self.0
    }
}

/// What a policy decided about a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// Send the response unchanged.
    #[default]
    Keep,
    /// Send this body instead, with the same status and headers (the gateway sets
    /// `content-length`).
    Replace(Vec<u8>),
}

impl ResponseVerdict {
    /// Replace the body with this JSON document.
    pub fn replace_json(value: &serde_json::Value) -> Self {
        ResponseVerdict::Replace(value.to_string().into_bytes())
    }
    /// True for [`ResponseVerdict::Keep`].
    pub fn is_keep(&self) -> bool {
        matches!(self, ResponseVerdict::Keep)
    }
    /// The replacement body, if any.
    pub fn replaced(&self) -> Option<&[u8]> {
        match self {
            ResponseVerdict::Keep => None,
            ResponseVerdict::Replace(b) => Some(b),
        }
    }
    /// The replacement body parsed as JSON, if there is one and it is JSON.
    pub fn replaced_json(&self) -> Option<serde_json::Value> {
        self.replaced().and_then(|b| serde_json::from_slice(b).ok())
    }
}
