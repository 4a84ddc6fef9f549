//! Host functions: real imports in the guest, the [`testing`](crate::testing) harness
//! natively.

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
