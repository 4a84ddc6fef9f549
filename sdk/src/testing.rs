//! A native stand-in for the gateway, so a policy can be unit-tested with `cargo test`.
//!
//! ```ignore
//! use warden_sdk::{testing::Harness, serde_json::json, Request};
//!
//! let h = Harness::<MyPolicy>::builder()
//!     .secret("api_key", "s3cret")
//!     .configure(json!({ "header": "x-api-key", "secret": "api_key" }))
//!     .unwrap();
//! let v = h.evaluate(&Request::builder().header("x-api-key", "s3cret").build());
//! assert!(v.is_allow());
//! ```
//!
//! The harness behaves like the gateway where it matters to a policy: it withholds the
//! sensitive headers the route does not grant, [`secret_matches`](crate::secret_matches)
//! answers only for granted secrets (and panics, like the host's error, for others), and
//! [`log`](crate::log) records are captured for assertions.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{ConfigErrors, Level, Policy, Request, Setup, Verdict};

/// A captured log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// Message.
    pub message: String,
    /// Structured fields.
    pub fields: Vec<(String, String)>,
}

thread_local! {
    static SECRETS: RefCell<Option<BTreeMap<String, Vec<u8>>>> = const { RefCell::new(None) };
    static LOGS: RefCell<Vec<LogRecord>> = const { RefCell::new(Vec::new()) };
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn record_log(level: Level, message: &str, fields: &[(&str, &str)]) {
    LOGS.with(|l| {
        l.borrow_mut().push(LogRecord {
            level,
            message: message.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    });
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn secret_matches(name: &str, presented: &[u8]) -> bool {
    SECRETS.with(|s| {
        let s = s.borrow();
        let secrets = s
            .as_ref()
            .expect("secret_matches called outside Harness::evaluate");
        match secrets.get(name) {
            // Tests do not need constant time; the gateway's comparison is.
            Some(v) => v.as_slice() == presented,
            None => panic!("secret {name:?} is not granted to this policy by the route"),
        }
    })
}

/// Configures a [`Harness`].
pub struct HarnessBuilder<P> {
    setup: Setup,
    secrets: BTreeMap<String, Vec<u8>>,
    _policy: std::marker::PhantomData<fn() -> P>,
}

impl<P: Policy> HarnessBuilder<P> {
    /// Route name passed in [`Setup`].
    pub fn route(mut self, route: &str) -> Self {
        self.setup.route = route.into();
        self
    }

    /// Grant secret `name` with this value.
    pub fn secret(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.setup.secrets.push(name.into());
        self.secrets.insert(name.into(), value.as_ref().to_vec());
        self
    }

    /// Grant a sensitive header (e.g. `authorization`).
    pub fn grant_header(mut self, name: &str) -> Self {
        self.setup.granted_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Configure the policy from a JSON value (what the gateway passes for the route's
    /// `config` table).
    pub fn configure(self, config: serde_json::Value) -> Result<Harness<P>, ConfigErrors> {
        let policy = crate::configure_from_json::<P>(&self.setup, &config.to_string())?;
        Ok(Harness {
            policy,
            setup: self.setup,
            secrets: self.secrets,
        })
    }
}

/// A configured policy under test.
pub struct Harness<P> {
    policy: P,
    setup: Setup,
    secrets: BTreeMap<String, Vec<u8>>,
}

impl<P: Policy> Harness<P> {
    /// Start configuring a harness (route `test`, no secrets, no granted headers).
    pub fn builder() -> HarnessBuilder<P> {
        HarnessBuilder {
            setup: Setup {
                route: "test".into(),
                ..Setup::default()
            },
            secrets: BTreeMap::new(),
            _policy: std::marker::PhantomData,
        }
    }

    /// The policy under test.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Evaluate one request as the gateway would: withheld headers are dropped, the route
    /// name is the harness's, host functions answer from the harness.
    pub fn evaluate(&self, request: &Request) -> Verdict {
        let mut request = request.clone();
        request.route = self.setup.route.clone();
        request.headers.retain(|(n, _)| self.setup.sees_header(n));
        SECRETS.with(|s| *s.borrow_mut() = Some(self.secrets.clone()));
        let verdict = self.policy.evaluate(&request);
        SECRETS.with(|s| *s.borrow_mut() = None);
        verdict
    }

    /// Take the log records captured so far on this thread.
    pub fn take_logs(&self) -> Vec<LogRecord> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}
