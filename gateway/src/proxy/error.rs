//! Proxy errors and their one mapping to HTTP responses.

use http::{HeaderValue, Method, StatusCode};
use serde_json::json;
use tracing::{debug, warn};

use crate::http::ProxyBody;

/// Everything that can stop a request short of the upstream's own answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched.
    #[error("no route")]
    NoRoute,
    /// A route matched host and path but not the method.
    #[error("method not allowed")]
    MethodNotAllowed(Vec<Method>),
    /// A method refused whatever the route (`CONNECT`, `TRACE` …), with why.
    #[error("method refused: {0}")]
    MethodRefused(&'static str),
    /// The request is malformed or ambiguous.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body is over the route's limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// A body policy's route refused the body before any plugin saw it: too large, a
    /// media type or coding it does not accept, or JSON parsers could read differently.
    #[error("request body refused: {0}")]
    BodyRefused(crate::inspect::Refusal),
    /// The client's request body broke (malformed chunk, early end of stream) while it
    /// was being forwarded: the client's fault, not the upstream's.
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// The upstream did not answer in time (connect or response head).
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream refused, reset, or failed TLS verification.
    #[error("upstream connection failed: {0}")]
    UpstreamConnect(String),
    /// The upstream broke the exchange after connecting.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The upstream answered 101 to a protocol the route does not allow or the client did
    /// not ask for. No tunnel opens, and the client connection closes: whatever the client
    /// sends next may belong to the protocol it asked for.
    #[error("upstream switched to a protocol that was not allowed")]
    UpstreamBadUpgrade,
    /// A secret the route injects is missing or past `max_stale`. The message names the
    /// reference, never a value; it goes to the log, not to the client.
    #[error("secret unavailable: {0}")]
    SecretUnavailable(String),
}

impl ProxyError {
    /// Status code for each error, in one place.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) | ProxyError::MethodRefused(_) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyRefused(r) => r.status(),
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamBadUpgrade => StatusCode::BAD_GATEWAY,
            ProxyError::SecretUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Short machine-readable code: the error body's `error`, the metric's `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::MethodNotAllowed(_) | ProxyError::MethodRefused(_) => "method_not_allowed",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientBody(_) => "bad_request_body",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::BodyRefused(r) => match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                _ => "body_refused",
            },
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamConnect(_) => "upstream_unavailable",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::UpstreamBadUpgrade => "upstream_bad_upgrade",
            ProxyError::SecretUnavailable(_) => "credentials_unavailable",
        }
    }

    /// Whose fault the error is: `client` (4xx), `upstream` (502/504) or `gateway` (a
    /// 503 of Warden's own, e.g. credentials not yet resolved).
    pub fn fault(&self) -> &'static str {
        match self {
            ProxyError::NoRoute
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::MethodRefused(_)
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge
            | ProxyError::BodyRefused(_)
            | ProxyError::ClientBody(_) => "client",
            ProxyError::UpstreamTimeout
            | ProxyError::UpstreamConnect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamBadUpgrade => "upstream",
            ProxyError::SecretUnavailable(_) => "gateway",
        }
    }

    /// Whether this counts as an upstream failure for metrics.
    pub fn is_upstream_failure(&self) -> bool {
        self.fault() == "upstream"
    }

    pub(crate) fn log(&self, request_id: &HeaderValue, route: Option<&str>) {
        let rid = request_id.to_str().unwrap_or("-");
        // A client's mistake is routine (and an attacker's probe must not flood the log);
        // anything else is worth a warning.
        match self.fault() {
            "client" => debug!(request_id = rid, route, error = %self, "request refused"),
            _ => warn!(request_id = rid, route, error = %self, "request failed"),
        }
    }

    /// The client-facing response: a small JSON body with the code and request id. The
    /// detail (addresses, reference names, library messages) stays in the log.
    pub fn into_response(
        self,
        request_id: &HeaderValue,
        route: Option<&str>,
    ) -> http::Response<ProxyBody> {
        let status = self.status();
        let mut body =
            json!({ "error": self.code(), "request_id": request_id.to_str().unwrap_or("-") });
        if let Some(r) = route {
            body["route"] = json!(r);
        }
        if let ProxyError::BadRequest(why) | ProxyError::MethodRefused(why) = &self {
            body["detail"] = json!(why);
        }
        if let ProxyError::BodyRefused(r) = &self {
            body["detail"] = json!(r.reason());
        }
        let mut resp = http::Response::new(super::json_body(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let ProxyError::MethodRefused(_) = &self {
            resp.headers_mut().insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if matches!(self, ProxyError::UpstreamBadUpgrade) {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::MethodNotAllowed(methods) = &self {
            let allow = methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(http::header::ALLOW, v);
            }
        }
        resp
    }

    /// Classify a client error: timeouts, connection failures (including TLS
    /// verification) and body-limit breaches each get their own status.
    pub fn from_client_error(e: crate::upstream::SendError) -> ProxyError {
        if let Some(known) = Self::from_chain(&e) {
            return known;
        }
        let detail = error_chain(&e);
        if e.is_connect() {
            ProxyError::UpstreamConnect(detail)
        } else {
            ProxyError::Upstream(detail)
        }
    }
}

impl ProxyError {
    /// A request body that could not be read while buffering it: the client's fault.
    pub fn from_body_error(e: crate::http::BoxError) -> ProxyError {
        Self::from_chain(e.as_ref())
            .unwrap_or_else(|| ProxyError::ClientBody(error_chain(e.as_ref())))
    }

    /// The causes that are not the upstream's, wherever they sit in an error chain: the
    /// body over its limit, the client's body breaking, a timeout.
    fn from_chain(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return Some(ProxyError::BodyTooLarge);
            }
            if let Some(c) = s.downcast_ref::<ClientBodyError>() {
                return Some(ProxyError::ClientBody(c.0.to_string()));
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return Some(ProxyError::UpstreamTimeout);
            }
            src = s.source();
        }
        None
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// An error reading the client's request body, marked so that the upstream client's
/// failure to send it is attributed to the client (400), not to the upstream (502).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);
