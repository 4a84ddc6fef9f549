//! A native stand-in for the gateway, so a policy can be unit-tested with `cargo test`.
//!
//! ```ignore
//! use warden_sdk::{testing::Harness, serde_json::json, Request};
//!
//! let h = Harness::<MyPolicy>::builder()
//!     .secret("api_key", "s3cret")
//!     .body_max(64 * 1024)
//!     .configure(json!({ "header": "x-api-key", "secret": "api_key" }))
//!     .unwrap();
//! let v = h.evaluate(&Request::builder().header("x-api-key", "s3cret").json(&json!({})).build());
//! assert!(v.is_allow());
//! ```
//!
//! The harness behaves like the gateway where it matters to a policy:
//! - it withholds the sensitive headers the route does not grant, passes the body only
//!   with the body phase (an empty one when the request has none), and names the route;
//! - [`secret_matches`](crate::secret_matches) answers only for granted secrets (and
//!   panics, like the host's error, for others);
//! - [`rate_limit`](crate::rate_limit) is a real token bucket per key, on a clock that
//!   only moves with [`Harness::advance`];
//! - what the gateway treats as a plugin error panics: a deny status outside 400..=599, a
//!   change to a hop-by-hop or framing header, a body change without the body phase,
//!   `rate_limit` outside `evaluate`;
//! - [`log`](crate::log) records are captured for assertions.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    ConfigErrors, Level, Policy, RateDecision, Request, Response, ResponseVerdict, Setup, Verdict,
};

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

/// Header names whose change the gateway refuses as a plugin error.
const FORBIDDEN_CHANGES: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the host functions answer from while a harness evaluates.
struct HostState {
    secrets: BTreeMap<String, Vec<u8>>,
    buckets: RefCell<HashMap<String, Bucket>>,
    now: Cell<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

thread_local! {
    static CURRENT: RefCell<Option<(Rc<HostState>, Phase)>> = const { RefCell::new(None) };
    static LOGS: RefCell<Vec<LogRecord>> = const { RefCell::new(Vec::new()) };
}

/// Installs the host state for one call and removes it even if the policy panics, so a
/// `#[should_panic]` test cannot leak state into the next test on the thread.
struct Installed;

impl Installed {
    fn new(state: &Rc<HostState>, phase: Phase) -> Installed {
        CURRENT.with(|c| *c.borrow_mut() = Some((state.clone(), phase)));
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

fn with_host<T>(what: &str, f: impl FnOnce(&HostState, Phase) -> T) -> T {
    CURRENT.with(|c| {
        let c = c.borrow();
        let (state, phase) = c
            .as_ref()
            .unwrap_or_else(|| panic!("{what} called outside Harness::evaluate"));
        f(state, *phase)
    })
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
    with_host("secret_matches", |h, _| match h.secrets.get(name) {
        // Tests do not need constant time; the gateway's comparison is.
        Some(v) => v.as_slice() == presented,
        None => panic!("plugin error: secret {name:?} is not granted to this policy by the route"),
    })
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn rate_limit(key: &str, limit: u32, window_ms: u32) -> RateDecision {
    with_host("rate_limit", |h, phase| {
        assert!(
            phase == Phase::Request,
            "plugin error: rate_limit is only available in evaluate"
        );
        assert!(
            limit > 0 && window_ms > 0,
            "plugin error: rate_limit needs a limit and a window of at least 1 ms"
        );
        let now = h.now.get();
        let mut buckets = h.buckets.borrow_mut();
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            level: u128::from(limit) * u128::from(window_ms) * NS_PER_MS,
            at: now,
        });
        b.take(now, limit, window_ms)
    })
}

const NS_PER_MS: u128 = 1_000_000;

/// A token bucket in exact integer arithmetic: `level` is the token count scaled by the
/// window in nanoseconds, so refilling `limit` tokens per window adds `limit` per
/// elapsed nanosecond and one token is `window_ns`. No float drift in long tests.
struct Bucket {
    level: u128,
    at: Duration,
}

impl Bucket {
    fn take(&mut self, now: Duration, limit: u32, window_ms: u32) -> RateDecision {
        let limit = u128::from(limit);
        let token = u128::from(window_ms) * NS_PER_MS;
        let full = limit * token;
        let elapsed = now.saturating_sub(self.at).as_nanos();
        self.level = full.min(self.level + elapsed * limit);
        self.at = now;
        let (allowed, wait_ns) = if self.level >= token {
            self.level -= token;
            (true, (full - self.level).div_ceil(limit))
        } else {
            (false, (token - self.level).div_ceil(limit))
        };
        let ms = u32::try_from(wait_ns.div_ceil(NS_PER_MS)).unwrap_or(u32::MAX);
        RateDecision {
            allowed,
            remaining: u32::try_from(self.level / token).unwrap_or(u32::MAX),
            reset_after: Duration::from_millis(ms.into()),
        }
    }
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

    /// Turn on the body phase with this size limit (`body = { max = ... }`).
    pub fn body_max(mut self, max: u64) -> Self {
        self.setup.body_max = Some(max);
        self
    }

    /// Turn on the response phase (`response_body = { max = ... }`).
    pub fn response_phase(mut self, on: bool) -> Self {
        self.setup.response_phase = on;
        self
    }

    /// Configure the policy from a JSON value (what the gateway passes for the route's
    /// `config` table).
    pub fn configure(self, config: serde_json::Value) -> Result<Harness<P>, ConfigErrors> {
        let policy = crate::configure_from_json::<P>(&self.setup, &config.to_string())?;
        Ok(Harness {
            policy,
            route: Arc::from(self.setup.route.as_str()),
            setup: self.setup,
            host: Rc::new(HostState {
                secrets: self.secrets,
                buckets: RefCell::new(HashMap::new()),
                now: Cell::new(Duration::ZERO),
            }),
        })
    }
}

/// A configured policy under test.
pub struct Harness<P> {
    policy: P,
    setup: Setup,
    route: Arc<str>,
    host: Rc<HostState>,
}

impl<P: Policy> Harness<P> {
    /// Start configuring a harness (route `test`, no secrets, no granted headers, no body
    /// or response phase).
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

    /// The setup the policy was configured with.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The request as the gateway would pass it to this policy.
    pub fn prepare(&self, request: &Request) -> Request {
        let mut request = request.clone();
        request.route = self.route.clone();
        request.headers.retain(|n| self.setup.sees_header(n));
        request.body = match self.setup.body_max {
            None => None,
            Some(max) => {
                let body = request.body.unwrap_or_default();
                assert!(
                    body.len() as u64 <= max,
                    "the request body ({} bytes) exceeds the route's body.max ({max}): the gateway answers 413 without asking the policy",
                    body.len()
                );
                Some(body)
            }
        };
        request
    }

    /// Evaluate one request as the gateway would (see [`Harness::prepare`]), with host
    /// functions answered by the harness.
    ///
    /// # Panics
    /// Where the gateway would see a plugin error (see the [module docs](self)).
    pub fn evaluate(&self, request: &Request) -> Verdict {
        let request = self.prepare(request);
        let verdict = {
            let _host = Installed::new(&self.host, Phase::Request);
            self.policy.evaluate(&request)
        };
        self.check(&verdict);
        verdict
    }

    /// Run the response phase for `response` to `request` (which goes through
    /// [`Harness::prepare`], as the gateway passes the request as the policy saw it).
    ///
    /// # Panics
    /// If the harness has no response phase: the gateway would never call it.
    pub fn evaluate_response(&self, request: &Request, response: &Response) -> ResponseVerdict {
        assert!(
            self.setup.response_phase,
            "the response phase is off: use HarnessBuilder::response_phase(true)"
        );
        let request = self.prepare(request);
        let _host = Installed::new(&self.host, Phase::Response);
        self.policy.evaluate_response(&request, response)
    }

    /// Move the rate-limit clock forward.
    pub fn advance(&self, by: Duration) {
        self.host.now.set(self.host.now.get() + by);
    }

    /// Time on the rate-limit clock since the harness was configured.
    pub fn now(&self) -> Duration {
        self.host.now.get()
    }

    /// Take the log records captured so far on this thread.
    pub fn take_logs(&self) -> Vec<LogRecord> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    fn check(&self, v: &Verdict) {
        let header = |name: &str| {
            assert!(
                !FORBIDDEN_CHANGES.contains(&name),
                "plugin error: the gateway refuses changes to the {name:?} header"
            );
        };
        match v {
            Verdict::Allow(c) => {
                c.set_request_headers.iter().for_each(|(n, _)| header(n));
                c.remove_request_headers.iter().for_each(|n| header(n));
                c.add_response_headers.iter().for_each(|(n, _)| header(n));
                assert!(
                    c.body.is_none() || self.setup.body_max.is_some(),
                    "plugin error: a body change without the body phase"
                );
            }
            Verdict::Deny(d) => {
                assert!(
                    (400..=599).contains(&d.status),
                    "plugin error: deny status {} is outside 400..=599",
                    d.status
                );
                d.headers.iter().for_each(|(n, _)| header(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigErrors;

    struct Limited;

    impl Policy for Limited {
        type Config = serde_json::Value;
        fn configure(_: &Setup, _: Self::Config) -> Result<Self, ConfigErrors> {
            Ok(Limited)
        }
        fn evaluate(&self, req: &Request) -> Verdict {
            let d = crate::rate_limit(req.path(), 3, Duration::from_secs(3));
            let v = if d.allowed {
                Verdict::allow()
            } else {
                Verdict::deny(429, "slow down")
            };
            v.response_header("x-remaining", d.remaining.to_string())
                .response_header("x-reset-ms", d.reset_after.as_millis().to_string())
        }
    }

    fn go(h: &Harness<Limited>, path: &str) -> (bool, u32, u64) {
        let v = h.evaluate(&Request::builder().path(path).build());
        let n = |k: &str| v.response_header_str(k).unwrap().parse::<u64>().unwrap();
        (v.is_allow(), n("x-remaining") as u32, n("x-reset-ms"))
    }

    #[test]
    fn token_bucket_refills_continuously_per_key() {
        let h = Harness::<Limited>::builder()
            .configure(serde_json::json!({}))
            .unwrap();
        // 3 per 3 s: one token per second.
        assert_eq!(go(&h, "/a"), (true, 2, 1000));
        assert_eq!(go(&h, "/a"), (true, 1, 2000));
        assert_eq!(go(&h, "/a"), (true, 0, 3000));
        assert_eq!(go(&h, "/a"), (false, 0, 1000));
        assert_eq!(go(&h, "/b"), (true, 2, 1000), "separate bucket");
        h.advance(Duration::from_millis(999));
        assert_eq!(go(&h, "/a"), (false, 0, 1));
        h.advance(Duration::from_millis(1));
        assert_eq!(go(&h, "/a"), (true, 0, 3000));
        h.advance(Duration::from_secs(60));
        assert_eq!(go(&h, "/a"), (true, 2, 1000), "capped at the limit");
    }

    #[test]
    #[should_panic(expected = "outside Harness::evaluate")]
    fn host_calls_outside_evaluate_panic() {
        crate::rate_limit("k", 1, Duration::from_secs(1));
    }
}
