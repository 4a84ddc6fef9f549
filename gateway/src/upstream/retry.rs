//! Retries: what may be sent again, and a budget so that a sick upstream is not hit with
//! multiplied load.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::config::RetryConfig;

/// A route's retry rules, resolved from its `retry` or its upstream's.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub attempts: u32,
    /// Retry (idempotent methods) when an established connection broke before a
    /// response head.
    pub on_reset: bool,
    /// Retry (idempotent methods) on these upstream statuses.
    pub statuses: Vec<StatusCode>,
    /// Pause before each retry.
    pub backoff: Duration,
    /// Bodies up to this size are buffered so they can be replayed.
    pub buffer: u64,
}

impl RetryPolicy {
    /// From validated config.
    pub fn from_config(c: &RetryConfig) -> Self {
        RetryPolicy {
            attempts: c.attempts,
            on_reset: c.on.iter().any(|o| o == "reset"),
            statuses: c
                .on
                .iter()
                .filter_map(|o| o.parse::<u16>().ok())
                .filter_map(|s| StatusCode::from_u16(s).ok())
                .collect(),
            backoff: c.backoff,
            buffer: c.buffer,
        }
    }

    /// Whether a request with this method may be sent twice once it has reached the
    /// upstream (RFC 9110 §9.2.2). A connect failure sent nothing, so any method may be
    /// retried after one.
    pub fn idempotent(m: &Method) -> bool {
        matches!(
            *m,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        )
    }
}

/// Retries allowed as a share of requests: each request deposits `ratio` of a retry,
/// each retry withdraws one, and the balance is capped so an idle period does not bank an
/// unbounded burst. It starts full, so a cold upstream can still fail over.
pub struct RetryBudget {
    /// In thousandths of a retry.
    balance: AtomicI64,
    deposit: i64,
}

/// Retries the budget can hold (and starts with).
const BURST: i64 = 10_000;

impl RetryBudget {
    /// A budget of `ratio` retries per request.
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            balance: AtomicI64::new(BURST),
            deposit: (ratio * 1000.0) as i64,
        }
    }

    /// Count a request.
    pub fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < BURST).then(|| (b + self.deposit).min(BURST))
            });
    }

    /// Take one retry, if the budget has it.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_share_after_the_burst() {
        let b = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        // The starting burst of 10, then one retry per five requests.
        assert!((200..=212).contains(&retries), "{retries}");
        let none = RetryBudget::new(0.0);
        let mut n = 0;
        for _ in 0..100 {
            none.deposit();
            n += none.withdraw() as u32;
        }
        assert_eq!(n, 10, "only the starting burst");
    }
}
