//! Verdict builders.

/// Header changes requested by an allowing policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Request headers to set (replace) before forwarding.
    pub set_request_headers: Vec<(String, Vec<u8>)>,
    /// Request headers to remove before forwarding.
    pub remove_request_headers: Vec<String>,
    /// Headers to add to the client's response.
    pub add_response_headers: Vec<(String, Vec<u8>)>,
}

impl Changes {
    /// True when there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set_request_headers.is_empty()
            && self.remove_request_headers.is_empty()
            && self.add_response_headers.is_empty()
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

/// What a policy decided.
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

    /// Refuse with `status` and a JSON body.
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

    /// True for [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    /// The denial status, if this is a denial.
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Deny(d) => Some(d.status),
            Verdict::Allow(_) => None,
        }
    }
}
