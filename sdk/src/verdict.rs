//! Verdict builders, and accessors that keep tests short.

/// Changes requested by an allowing policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Request headers to set (replace) before forwarding.
    pub set_request_headers: Vec<(String, Vec<u8>)>,
    /// Request headers to remove before forwarding.
    pub remove_request_headers: Vec<String>,
    /// Headers to add to the client's response.
    pub add_response_headers: Vec<(String, Vec<u8>)>,
    /// A new request body; only allowed where the policy has the body phase.
    pub body: Option<Vec<u8>>,
}

impl Changes {
    /// True when there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set_request_headers.is_empty()
            && self.remove_request_headers.is_empty()
            && self.add_response_headers.is_empty()
            && self.body.is_none()
    }
}

/// A refusal, answered by the gateway without contacting the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Status code (400..=599).
    pub status: u16,
    /// Body the client sees.
    pub body: String,
    /// Extra response headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a policy decided about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward, possibly with changes.
    Allow(Changes),
    /// Refuse.
    Deny(Denial),
}

impl Verdict {
    /// Forward unchanged.
    pub fn allow() -> Self {
        Verdict::Allow(Changes::default())
    }

    /// Refuse with `status` and a plain-text body.
    pub fn deny(status: u16, body: impl Into<String>) -> Self {
        Verdict::Deny(Denial {
            status,
            body: body.into(),
            headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
        })
    }

    /// Refuse with `status` and a JSON body (`content-type: application/json`).
    pub fn deny_json(status: u16, body: &serde_json::Value) -> Self {
        Verdict::Deny(Denial {
            status,
            body: body.to_string(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        })
    }

    /// Set (replace) a request header before forwarding. No effect on a denial.
    pub fn set_request_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        if let Verdict::Allow(c) = &mut self {
            c.set_request_headers
                .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        }
        self
    }

    /// Remove a request header before forwarding. No effect on a denial.
    pub fn remove_request_header(mut self, name: &str) -> Self {
        if let Verdict::Allow(c) = &mut self {
            c.remove_request_headers.push(name.to_ascii_lowercase());
        }
        self
    }

    /// Add a response header: to the upstream's response when allowing, to the denial
    /// response when denying.
    pub fn response_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let h = (name.to_ascii_lowercase(), value.as_ref().to_vec());
        match &mut self {
            Verdict::Allow(c) => c.add_response_headers.push(h),
            Verdict::Deny(d) => d.headers.push(h),
        }
        self
    }

    /// Forward this request body instead of the client's (the gateway fixes
    /// `content-length`). Only where the policy has the body phase: elsewhere the gateway
    /// treats it as a plugin error. No effect on a denial.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        if let Verdict::Allow(c) = &mut self {
            c.body = Some(body.into());
        }
        self
    }

    /// True for [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    /// True for [`Verdict::Deny`].
    pub fn is_deny(&self) -> bool {
        matches!(self, Verdict::Deny(_))
    }

    /// The denial status, if this is a denial.
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Deny(d) => Some(d.status),
            Verdict::Allow(_) => None,
        }
    }

    /// Headers for the client's response: added to the upstream's response when allowing,
    /// those of the denial when denying.
    pub fn response_headers(&self) -> &[(String, Vec<u8>)] {
        match self {
            Verdict::Allow(c) => &c.add_response_headers,
            Verdict::Deny(d) => &d.headers,
        }
    }

    /// The first response header named `name` (case-insensitive) if it is UTF-8.
    pub fn response_header_str(&self, name: &str) -> Option<&str> {
        self.response_headers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Request headers set before forwarding (empty for a denial).
    pub fn set_headers(&self) -> &[(String, Vec<u8>)] {
        match self {
            Verdict::Allow(c) => &c.set_request_headers,
            Verdict::Deny(_) => &[],
        }
    }

    /// Request headers removed before forwarding (empty for a denial).
    pub fn removed_headers(&self) -> &[String] {
        match self {
            Verdict::Allow(c) => &c.remove_request_headers,
            Verdict::Deny(_) => &[],
        }
    }

    /// The denial body, if this is a denial.
    pub fn deny_body(&self) -> Option<&str> {
        match self {
            Verdict::Deny(d) => Some(&d.body),
            Verdict::Allow(_) => None,
        }
    }

    /// The denial body parsed as JSON, if this is a denial with a JSON body.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        self.deny_body().and_then(|b| serde_json::from_str(b).ok())
    }

    /// The replacement request body, if this allows with one.
    pub fn request_body(&self) -> Option<&[u8]> {
        match self {
            Verdict::Allow(c) => c.body.as_deref(),
            Verdict::Deny(_) => None,
        }
    }

    /// The replacement request body parsed as JSON, if there is one and it is JSON.
    pub fn request_json(&self) -> Option<serde_json::Value> {
        self.request_body()
            .and_then(|b| serde_json::from_slice(b).ok())
    }
}
