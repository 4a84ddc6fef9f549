//! Host functions: real imports in the guest, the [`testing`](crate::testing) harness
//! natively.

use std::time::Duration;

/// Severity of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Handled surprises.
    Warn,
    /// Unhandled problems.
    Error,
}

/// Log through the gateway (rate-limited per plugin). Never log credentials.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    crate::__rt::host_log(level, message, fields);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message, fields);
}

/// Compare `presented` with the route-granted secret `name` in constant time, without
/// ever seeing the secret. Asking for a secret the route does not grant is an error that
/// ends the evaluation with the route's `on_error` outcome.
pub fn secret_matches(name: &str, presented: &[u8]) -> bool {
    #[cfg(target_arch = "wasm32")]
    return crate::__rt::host_secret_matches(name, presented);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::secret_matches(name, presented);
}

/// The answer of [`rate_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// True when the request fits in the limit (a token was taken).
    pub allowed: bool,
    /// Requests left in the bucket after this one.
    pub remaining: u32,
    /// When not allowed: how long until the next request would be. When allowed: how long
    /// until the bucket is full again. Millisecond precision.
    pub reset_after: Duration,
}

/// Take one token from the bucket of `key`: at most `limit` requests per `window`,
/// refilled continuously (a token bucket of capacity `limit`).
///
/// Buckets are separate per (plugin, route, key) and may be shared across gateway
/// replicas, so never put a credential in `key`: hash it. `window` is used with
/// millisecond precision and saturates at `u32::MAX` ms (about 49 days). `limit` 0 or a
/// window under 1 ms is a plugin error, as is calling this outside
/// [`Policy::evaluate`](crate::Policy::evaluate).
pub fn rate_limit(key: &str, limit: u32, window: Duration) -> RateDecision {
    let window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
    #[cfg(target_arch = "wasm32")]
    return crate::__rt::host_rate_limit(key, limit, window_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::rate_limit(key, limit, window_ms);
}
