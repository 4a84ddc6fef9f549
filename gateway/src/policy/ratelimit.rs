//! Token buckets behind the plugins' `host.rate-limit` function.
//!
//! `rate-limit(key, limit, window-ms)` takes one token from the bucket of `key`: a bucket of
//! capacity `limit` that refills continuously at `limit` tokens per `window`. Buckets are
//! separate per (plugin, route, key). One [`RateLimiter`] serves the whole process and
//! outlives config reloads, so a reload never hands every client a fresh budget.
//!
//! * **Local buckets** live in a bounded LRU (least recently used keys are forgotten first
//!   and counted), split into shards so that concurrent requests rarely wait on the same
//!   lock. The bucket arithmetic is exact integer arithmetic (no float drift: a bucket that
//!   has had exactly `window / limit` to refill has exactly one more token).
//! * **The Redis store** (`[policy] rate_limit_store`) shares the buckets across gateway
//!   replicas: one Lua script ([`SCRIPT`]) runs the same token bucket atomically inside
//!   Redis on Redis' own clock, so replicas whose clocks disagree still agree on a bucket.
//!   Every store call is bounded by the configured `timeout`. When the store fails, the
//!   decision is made by the configured [`Fallback`] (local buckets by default), the failure
//!   is counted and logged once per outage, and the store is retried at most once a second
//!   until it answers again — then decisions go back to it and the recovery is logged.
//!
//! Nothing here blocks a tokio worker: the local path holds one shard's mutex for a few
//! hundred nanoseconds, and Redis is only ever talked to asynchronously. The Redis URL's
//! password never appears in `Debug` output, errors or log lines.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::config::field::{FieldError, de};
use crate::telemetry::Counter;

/// How often a store that failed is tried again. Between attempts every decision uses the
/// fallback at once, so an outage costs no latency beyond the one call that found it.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Bound on establishing a connection (TCP, `AUTH`, `SELECT`, loading the script). It runs
/// in a spawned task, off the request path, so it can be longer than the per-call timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// User keys longer than this many bytes are stored in Redis under their SHA-256, so a
/// plugin that keys on something long (a JWT, a URL) cannot blow up Redis' memory.
const MAX_RAW_KEY: usize = 200;

/// At most this many shards for the local buckets: enough that two cores rarely meet on one
/// lock, few enough that the LRU stays close to a global LRU.
const MAX_SHARDS: usize = 16;

/// Shards are only split while each keeps at least this many keys: a small `max_keys` keeps
/// one exact LRU, which is what an operator who sets it small expects.
const MIN_KEYS_PER_SHARD: usize = 1024;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// What decides while the store cannot be reached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// This replica's own buckets, as without a store. Each replica then enforces the full
    /// limit on its own, so a fleet of N replicas allows up to N × limit during an outage.
    #[default]
    Local,
    /// Allow every request (fail open).
    Allow,
    /// Deny every request (fail closed).
    Deny,
}

impl Fallback {
    fn label(self) -> &'static str {
        match self {
            Fallback::Local => "local",
            Fallback::Allow => "allow",
            Fallback::Deny => "deny",
        }
    }
}

/// `[policy] rate_limit_store`: share the rate-limit buckets across replicas through Redis.
///
/// ```toml
/// [policy.rate_limit_store]          # or inline: rate_limit_store = { redis = "…" }
/// redis = "redis://127.0.0.1:6379/0"
/// fallback = "local"                 # local | allow | deny
/// timeout = "50ms"
/// prefix = "warden:rl:"
/// ```
///
/// `Debug` shows the URL with its user information and query values replaced by `***`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://[user[:password]@]host[:port][/db]`. `rediss://` (TLS) is refused by
    /// [`check`](Self::check) while the Redis client is built without TLS support.
    pub redis: String,
    /// What decides while Redis cannot be reached (default `local`).
    #[serde(default)]
    pub fallback: Fallback,
    /// Bound on each Redis call, 1ms to 5s (default 50ms). Past it the call counts as
    /// failed and the fallback decides.
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Prefix of every key Warden writes (default `warden:rl:`), so several gateways or
    /// other applications can share one Redis database.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_prefix() -> String {
    "warden:rl:".to_string()
}

impl StoreConfig {
    /// A store at `redis` with the default fallback, timeout and prefix.
    pub fn new(redis: impl Into<String>) -> Self {
        StoreConfig {
            redis: redis.into(),
            fallback: Fallback::default(),
            timeout: default_timeout(),
            prefix: default_prefix(),
        }
    }

    /// Every problem with this section, keys relative to it. Parses the URL without
    /// connecting. No reason ever contains the URL's password.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Err(reason) = open_client(&self.redis) {
            errs.push(FieldError::new("redis", reason));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > Duration::from_secs(5) {
            errs.push(FieldError::new(
                "timeout",
                format!(
                    "must be between 1ms and 5s (got {:?}): each call is made while a \
                     request waits",
                    self.timeout
                ),
            ));
        }
        errs
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("redis", &redact_url(&self.redis))
            .field("fallback", &self.fallback)
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Parse `url` into a client (no I/O), with an operator-facing reason free of secrets.
fn open_client(url: &str) -> Result<redis::Client, String> {
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "expected a redis:// or rediss:// URL, got {}",
            redact_url(url)
        ));
    }
    redis::Client::open(url).map_err(|e| {
        // Without one of the redis crate's TLS features every rediss:// URL fails to parse;
        // say so plainly rather than relaying the crate's wording.
        let tls_only = scheme == "rediss"
            && url
                .split_once("://")
                .is_some_and(|(_, rest)| redis::Client::open(format!("redis://{rest}")).is_ok());
        if tls_only {
            format!(
                "rediss:// (TLS) is not supported by this build of Warden (its Redis client has \
                 no TLS support): use redis:// on a trusted network, or a TLS sidecar, in {}",
                redact_url(url)
            )
        } else {
            format!(
                "invalid Redis URL {}: {}",
                redact_url(url),
                redact_secrets(&e.to_string(), &url_secrets(url))
            )
        }
    })
}

/// `url` with its user information (everything up to the last `@` of what follows `://`)
/// and its query values replaced by `***`. Deliberately dumb: it must redact even a URL
/// that does not parse, and over-redacting a Debug line costs nothing.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = match rest.rfind('@') {
        Some(i) => format!("***@{}", &rest[i + 1..]),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((before, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    // `protocol` (RESP2/3) is the one query key redis:// URLs take, and
                    // telling it apart helps; anything else might be a credential.
                    Some(("protocol", v)) => format!("protocol={v}"),
                    Some((k, _)) => format!("{k}=***"),
                    None => p.to_string(),
                })
                .collect();
            format!("{before}?{}", pairs.join("&"))
        }
        None => rest,
    };
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest,
    }
}

/// The password of `url` as written and percent-decoded, to scrub from error text.
fn url_secrets(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let Some(at) = rest.rfind('@') else {
        return Vec::new();
    };
    let userinfo = &rest[..at];
    let password = userinfo.split_once(':').map_or("", |(_, p)| p);
    let mut out = Vec::new();
    if !password.is_empty() {
        out.push(password.to_string());
        let decoded = percent_decode(password);
        if decoded != password {
            out.push(decoded);
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with every occurrence of each secret replaced by `***`.
fn redact_secrets(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Decisions and metrics
// ---------------------------------------------------------------------------------------

/// The answer to one `rate-limit` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// A token was taken: the request fits in the limit.
    pub allowed: bool,
    /// Tokens left in the bucket after this call.
    pub remaining: u32,
    /// When allowed: until the bucket is full again. When not: until the next request would
    /// be allowed. Whole milliseconds, rounded up, so a caller that waits this long is never
    /// early.
    pub reset_after: Duration,
}

impl Decision {
    /// [`reset_after`](Self::reset_after) in milliseconds, saturating: the WIT's
    /// `reset-after-ms`.
    pub fn reset_after_ms(&self) -> u32 {
        u32::try_from(self.reset_after.as_millis()).unwrap_or(u32::MAX)
    }
}

/// The `decision` label of `warden_rate_limit_decisions_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// A token was taken.
    Allowed,
    /// The bucket was empty.
    Limited,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> fmt::Result {
        use std::fmt::Write;
        e.write_str(match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
        })
    }
}

/// Labels of `warden_rate_limit_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allowed` or `limited`.
    pub decision: Outcome,
}

/// The rate limiter's metric families. Handles are cheap clones sharing one value, so the
/// copy a limiter records into and the copy a registry encodes are the same metric.
#[derive(Clone, Debug)]
pub struct RateLimitMetrics {
    /// Buckets the LRU forgot to stay within `max_keys`.
    pub evictions: Counter,
    /// Decisions made without the store because it failed or was down.
    pub store_fallbacks: Counter,
    /// Store operations (connects and calls) that failed or timed out.
    pub store_errors: Counter,
    /// 1 while the store is connected and answering, else 0 (also 0 without a store).
    pub store_up: Gauge,
    /// Decisions by outcome.
    pub decisions: Family<DecisionLabels, Counter>,
    // The two children of `decisions`, held so the hot path skips the family's lock and
    // hash lookup.
    allowed: Counter,
    limited: Counter,
}

impl Default for RateLimitMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitMetrics {
    /// Fresh, unregistered families.
    pub fn new() -> Self {
        let decisions: Family<DecisionLabels, Counter> = Family::default();
        let allowed = decisions.get_or_create_owned(&DecisionLabels {
            decision: Outcome::Allowed,
        });
        let limited = decisions.get_or_create_owned(&DecisionLabels {
            decision: Outcome::Limited,
        });
        RateLimitMetrics {
            evictions: Counter::default(),
            store_fallbacks: Counter::default(),
            store_errors: Counter::default(),
            store_up: Gauge::default(),
            decisions,
            allowed,
            limited,
        }
    }

    /// The process-wide families, which [`RateLimiter::new`] records into.
    pub fn global() -> &'static RateLimitMetrics {
        static GLOBAL: OnceLock<RateLimitMetrics> = OnceLock::new();
        GLOBAL.get_or_init(RateLimitMetrics::new)
    }

    /// Register the families in `reg`, which must be the gateway's
    /// `Registry::with_prefix("warden")`: names are given without the `warden_` prefix and
    /// counters without `_total` (the encoder adds it), so the exposition shows
    /// `warden_rate_limit_evictions_total`, `warden_rate_limit_store_fallbacks_total`,
    /// `warden_rate_limit_store_errors_total`, `warden_rate_limit_store_up` and
    /// `warden_rate_limit_decisions_total{decision="allowed"|"limited"}`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "rate_limit_evictions",
            "Rate-limit buckets forgotten by the LRU to stay within its key bound",
            self.evictions.clone(),
        );
        reg.register(
            "rate_limit_store_fallbacks",
            "Rate-limit decisions made without the store because it failed or was down",
            self.store_fallbacks.clone(),
        );
        reg.register(
            "rate_limit_store_errors",
            "Rate-limit store operations (connects and calls) that failed or timed out",
            self.store_errors.clone(),
        );
        reg.register(
            "rate_limit_store_up",
            "1 while the rate-limit store is connected and answering",
            self.store_up.clone(),
        );
        reg.register(
            "rate_limit_decisions",
            "Rate-limit decisions by outcome (allowed, limited)",
            self.decisions.clone(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The limiter
// ---------------------------------------------------------------------------------------

/// The process-wide rate limiter: local buckets, plus the Redis store when configured.
pub struct RateLimiter {
    local: LocalBuckets,
    remote: Option<Arc<Remote>>,
    metrics: RateLimitMetrics,
    max_keys: usize,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("max_keys", &self.max_keys)
            .field("shards", &self.local.shards.len())
            .field("store", &self.remote.as_ref().map(|r| &r.cfg))
            .finish()
    }
}

impl RateLimiter {
    /// A limiter keeping at most `max_keys` local buckets (at least 1), sharing buckets
    /// through `store` when given, recording into [`RateLimitMetrics::global`].
    ///
    /// Does no I/O. Inside a tokio runtime it starts connecting to the store in a spawned
    /// task; otherwise the first [`check`](Self::check) does. Until the store answers,
    /// decisions use its fallback. A store whose URL does not parse (which
    /// [`StoreConfig::check`] refuses) is logged once and behaves as a store that is down.
    pub fn new(max_keys: usize, store: Option<&StoreConfig>) -> Arc<Self> {
        Self::with_metrics(max_keys, store, RateLimitMetrics::global().clone())
    }

    /// [`new`](Self::new), recording into `metrics` instead of the process-wide families.
    pub fn with_metrics(
        max_keys: usize,
        store: Option<&StoreConfig>,
        metrics: RateLimitMetrics,
    ) -> Arc<Self> {
        Self::build(max_keys, store, metrics, Clock::real())
    }

    fn build(
        max_keys: usize,
        store: Option<&StoreConfig>,
        metrics: RateLimitMetrics,
        clock: Clock,
    ) -> Arc<Self> {
        let max_keys = max_keys.max(1);
        let remote = store.map(|cfg| Remote::new(cfg.clone(), metrics.clone()));
        if let Some(remote) = &remote {
            metrics.store_up.set(0);
            if tokio::runtime::Handle::try_current().is_ok() {
                // Connect now, so the first requests are likely to find the store up.
                let _ = remote.connection();
            }
        }
        Arc::new(RateLimiter {
            local: LocalBuckets::new(max_keys, clock),
            remote,
            metrics,
            max_keys,
        })
    }

    /// Register the process-wide families ([`RateLimitMetrics::global`]) in `registry`, the
    /// gateway's `Registry::with_prefix("warden")`. See [`RateLimitMetrics::register`].
    pub fn register(registry: &mut Registry) {
        RateLimitMetrics::global().register(registry);
    }

    /// Take one token from the bucket of (`plugin`, `route`, `key`): at most `limit`
    /// requests per `window`, refilled continuously.
    ///
    /// With a store, the shared bucket decides; if the store fails or is down, the
    /// configured fallback does. Never waits longer than the store's `timeout`, never
    /// panics. `limit` 0 and a zero `window` are refused by the caller; should they arrive
    /// anyway they are treated as 1 and 1ns.
    pub async fn check(
        &self,
        plugin: &str,
        route: &str,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Decision {
        let limit = limit.max(1);
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        let decision = match &self.remote {
            None => self.local.take(plugin, route, key, limit, window_ns),
            Some(remote) => match remote.take(plugin, route, key, limit, window_ns).await {
                Some(d) => d,
                None => {
                    self.metrics.store_fallbacks.inc();
                    remote.outage_fallbacks.fetch_add(1, Ordering::Relaxed);
                    match remote.cfg.fallback {
                        Fallback::Local => self.local.take(plugin, route, key, limit, window_ns),
                        Fallback::Allow => Decision {
                            allowed: true,
                            remaining: limit - 1,
                            // As for a fresh bucket that just gave one token.
                            reset_after: ceil_ms(u128::from(window_ns).div_ceil(u128::from(limit))),
                        },
                        Fallback::Deny => Decision {
                            allowed: false,
                            remaining: 0,
                            // Nothing is known but when the store is tried again.
                            reset_after: RETRY_INTERVAL,
                        },
                    }
                }
            },
        };
        if decision.allowed {
            self.metrics.allowed.inc();
        } else {
            self.metrics.limited.inc();
        }
        self.local.evictions.take_into(&self.metrics.evictions);
        decision
    }

    /// The store's state: `None` without a store, else whether it is connected and was
    /// answering at its last call.
    pub fn store_up(&self) -> Option<bool> {
        self.remote.as_ref().map(|r| r.lock().conn.is_some())
    }

    /// The store configuration this limiter was built with (compare with a reloaded
    /// config's to decide whether a new limiter is needed).
    pub fn store_config(&self) -> Option<&StoreConfig> {
        self.remote.as_ref().map(|r| &r.cfg)
    }

    /// The bound on local buckets.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Local buckets currently kept.
    pub fn local_buckets(&self) -> usize {
        self.local.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// Lock a mutex, going on with the data if another thread panicked while holding it: every
/// critical section here leaves the data consistent, and a rate limiter that stops
/// answering would take the gateway with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Nanoseconds, rounded up to whole milliseconds.
fn ceil_ms(ns: u128) -> Duration {
    Duration::from_millis(u64::try_from(ns.div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------
// Local buckets
// ---------------------------------------------------------------------------------------

/// Monotonic nanoseconds since the limiter started. Tests drive a manual clock.
#[derive(Clone)]
enum Clock {
    Real(Instant),
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn real() -> Self {
        Clock::Real(Instant::now())
    }

    fn now_ns(&self) -> u64 {
        match self {
            Clock::Real(start) => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            #[cfg(test)]
            Clock::Manual(ns) => ns.load(Ordering::Relaxed),
        }
    }
}

/// One bucket, in exact integer units: one token is `window` units (nanoseconds of the
/// window), and the bucket refills `limit` units per nanosecond, so it goes from empty to
/// full (`limit × window` units) in exactly one window, with no rounding anywhere.
struct Bucket {
    /// Units in the bucket at `last`.
    level: u128,
    /// When `level` was computed, in [`Clock`] nanoseconds.
    last: u64,
    /// The window `level` is expressed in (a token is this many units).
    window: u64,
}

impl Bucket {
    fn full(now: u64, limit: u32, window: u64) -> Self {
        Bucket {
            level: u128::from(limit) * u128::from(window),
            last: now,
            window,
        }
    }

    /// Refill up to `now`, then take one token if there is one.
    fn take(&mut self, now: u64, limit: u32, window: u64) -> Decision {
        if self.window != window {
            // The plugin changed its window for this key: keep the number of tokens (the
            // capacity clamp below handles a lower limit). Exact unless it overflows, and
            // then a float is close enough for a one-off rescale.
            self.level = match self.level.checked_mul(u128::from(window)) {
                Some(x) => x / u128::from(self.window),
                None => (self.level as f64 * window as f64 / self.window as f64) as u128,
            };
            self.window = window;
        }
        let limit = u128::from(limit);
        let token = u128::from(window);
        let cap = limit * token;
        // Another thread may have read the clock later but locked the shard first.
        let elapsed = u128::from(now.saturating_sub(self.last));
        self.last = self.last.max(now);
        // No overflow: level ≤ cap < 2^96 and elapsed × limit < 2^96.
        self.level = (self.level + elapsed * limit).min(cap);
        if self.level >= token {
            self.level -= token;
            Decision {
                allowed: true,
                remaining: u32::try_from(self.level / token).unwrap_or(u32::MAX),
                // Units refill at `limit` per nanosecond.
                reset_after: ceil_ms((cap - self.level).div_ceil(limit)),
            }
        } else {
            Decision {
                allowed: false,
                remaining: 0,
                reset_after: ceil_ms((token - self.level).div_ceil(limit)),
            }
        }
    }
}

/// A `BuildHasher` for keys that already are uniformly random 128-bit hashes: hashing them
/// again would only cost time.
#[derive(Clone, Copy, Default)]
struct PreHashed;

struct PreHasher(u64);

impl BuildHasher for PreHashed {
    type Hasher = PreHasher;
    fn build_hasher(&self) -> PreHasher {
        PreHasher(0)
    }
}

impl Hasher for PreHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used (the keys are u128); this keeps the type correct for
        // anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, i: u128) {
        // The low half; the high half picks the shard.
        self.0 = i as u64;
    }
}

type Shard = Mutex<LruCache<u128, Bucket, PreHashed>>;

/// Buckets evicted since the metric was last updated. Counted under the shard lock into a
/// plain atomic, and moved to the metric outside it.
#[derive(Default)]
struct EvictionTally(AtomicU64);

impl EvictionTally {
    fn take_into(&self, counter: &Counter) {
        // Cheap when nothing was evicted: one relaxed load on the hot path.
        if self.0.load(Ordering::Relaxed) != 0 {
            let n = self.0.swap(0, Ordering::Relaxed);
            counter.inc_by(n);
        }
    }
}

/// The local buckets: an LRU of (plugin, route, key) → bucket, sharded by key hash.
struct LocalBuckets {
    shards: Box<[Shard]>,
    /// Keyed SipHash (random per limiter, so clients cannot aim at a collision). A bucket is
    /// keyed by a 128-bit hash of the triple instead of three strings, which keeps entries
    /// small and lookups allocation-free; see [`LocalBuckets::id`] for why 128 bits.
    hasher: RandomState,
    clock: Clock,
    evictions: EvictionTally,
}

impl LocalBuckets {
    fn new(max_keys: usize, clock: Clock) -> Self {
        let mut shards = 1;
        while shards < MAX_SHARDS && max_keys / (shards * 2) >= MIN_KEYS_PER_SHARD {
            shards *= 2;
        }
        // Floor, so the total never exceeds `max_keys` (at most `shards - 1` keys are lost).
        let per_shard = NonZeroUsize::new(max_keys / shards).unwrap_or(NonZeroUsize::MIN);
        let shards = (0..shards)
            .map(|_| {
                // `unbounded_with_hasher` + `resize` allocates as keys arrive, where
                // `with_hasher` would reserve the whole table up front.
                let mut cache = LruCache::unbounded_with_hasher(PreHashed);
                cache.resize(per_shard);
                Mutex::new(cache)
            })
            .collect();
        LocalBuckets {
            shards,
            hasher: RandomState::new(),
            clock,
            evictions: EvictionTally::default(),
        }
    }

    /// The bucket id of (plugin, route, key): the keyed SipHash of the triple, then of the
    /// triple and one more byte, from one pass over the strings.
    ///
    /// `str`'s `Hash` ends each string with 0xff (never in UTF-8), so the hashed stream of a
    /// triple is unambiguous and ends in 0xff, and the second stream ends in 0x5a: four
    /// distinct inputs for any two triples. Both halves being outputs of a keyed PRF, two
    /// triples share an id with probability ~2^-128, so a collision (two clients sharing a
    /// budget) is not a practical concern, however many keys pass through.
    fn id(&self, plugin: &str, route: &str, key: &str) -> (u128, usize) {
        let mut h = self.hasher.build_hasher();
        (plugin, route, key).hash(&mut h);
        let lo = h.finish();
        h.write_u8(0x5a);
        let hi = h.finish();
        // The shard count is a power of two; `hi` picks the shard and `lo` (independent of
        // it) feeds the shard's table, see `PreHasher`.
        let shard = (hi >> 32) as usize & (self.shards.len() - 1);
        ((u128::from(hi) << 64) | u128::from(lo), shard)
    }

    fn take(&self, plugin: &str, route: &str, key: &str, limit: u32, window: u64) -> Decision {
        let (id, shard) = self.id(plugin, route, key);
        let now = self.clock.now_ns();
        let mut cache = lock(&self.shards[shard]);
        if let Some(bucket) = cache.get_mut(&id) {
            return bucket.take(now, limit, window);
        }
        let mut bucket = Bucket::full(now, limit, window);
        let decision = bucket.take(now, limit, window);
        if cache.push(id, bucket).is_some() {
            // `push` hands back the least recently used bucket it dropped (the key is new,
            // so it never returns a replaced value).
            self.evictions.0.fetch_add(1, Ordering::Relaxed);
        }
        decision
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// The token bucket, run atomically inside Redis.
///
/// `KEYS[1]` is the bucket, `ARGV[1]` the limit, `ARGV[2]` the window in microseconds.
/// It reads the server's clock (`TIME`), so replicas never need synchronised clocks. The
/// bucket is a hash: `l` (level), `t` (when `l` was computed, µs), `w` (the window `l` is
/// scaled to). Units as in the local buckets: one token is `w` units and the bucket
/// refills `limit` units per µs, so every value is an integer, exact while
/// `limit × window_µs` < 2^53. A denied call writes nothing (its refill is recomputed from
/// the same state next time), so a flood of denied requests costs Redis no writes. Each
/// write sets the key to expire when the bucket would be full again (+1s margin): a full
/// bucket and a missing key mean the same, so idle keys cost Redis no memory. Returns
/// `{allowed (0|1), remaining, reset_after_ms}`, reset rounded up.
pub const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local cap = limit * window
local level = cap
local state = redis.call('HMGET', KEYS[1], 'l', 't', 'w')
local l, t, w = tonumber(state[1]), tonumber(state[2]), tonumber(state[3])
local rescaled = false
if l and t and w and w > 0 then
  if w ~= window then
    l = math.floor(l * window / w)
    rescaled = true
  end
  local elapsed = now - t
  if elapsed < 0 then elapsed = 0 end
  if elapsed > window then elapsed = window end
  level = math.min(cap, l + elapsed * limit)
end
local allowed, reset
if level >= window then
  level = level - window
  allowed = 1
  reset = cap - level
else
  allowed = 0
  reset = window - level
end
if allowed == 1 or rescaled then
  redis.call('HSET', KEYS[1], 'l', string.format('%.0f', level),
    't', string.format('%.0f', now), 'w', string.format('%.0f', window))
  redis.call('PEXPIRE', KEYS[1], math.ceil((cap - level) / limit / 1000) + 1000)
end
return {allowed, math.floor(level / window), math.ceil(reset / limit / 1000)}
"#;

/// Whether the store has answered since it was configured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Not yet connected: nothing to log about yet.
    Starting,
    Up,
    Down,
}

/// The connection and what the reconnect logic needs, under one mutex (held only to read
/// or swap these fields, never across an await).
struct Link {
    /// The live connection and its generation. `None` while down or connecting.
    conn: Option<(u64, redis::aio::MultiplexedConnection)>,
    generation: u64,
    state: LinkState,
    /// When the running connect attempt started. An attempt older than twice
    /// [`CONNECT_TIMEOUT`] is taken as lost (its runtime shut down under it, say), so a lost
    /// task can never stop reconnecting for good.
    connecting: Option<Instant>,
    /// No connect attempt before this.
    next_attempt: Instant,
    /// When the current outage began.
    down_since: Option<Instant>,
}

/// The Redis store.
struct Remote {
    cfg: StoreConfig,
    /// `None` when the URL does not parse: then every decision falls back.
    client: Option<redis::Client>,
    /// The URL with its credentials redacted, for log lines.
    shown_url: String,
    /// The URL's password, scrubbed from any error text before it is logged.
    secrets: Vec<String>,
    script: redis::Script,
    link: Mutex<Link>,
    metrics: RateLimitMetrics,
    /// Fallback decisions in the current outage, for the recovery log line.
    outage_fallbacks: AtomicU64,
}

impl Remote {
    fn new(cfg: StoreConfig, metrics: RateLimitMetrics) -> Arc<Self> {
        let shown_url = redact_url(&cfg.redis);
        let client = match open_client(&cfg.redis) {
            Ok(c) => Some(c),
            Err(reason) => {
                tracing::error!(
                    fallback = cfg.fallback.label(),
                    "rate-limit store disabled: {reason}; every decision uses the fallback"
                );
                None
            }
        };
        Arc::new(Remote {
            secrets: url_secrets(&cfg.redis),
            shown_url,
            client,
            script: redis::Script::new(SCRIPT),
            link: Mutex::new(Link {
                conn: None,
                generation: 0,
                state: LinkState::Starting,
                connecting: None,
                next_attempt: Instant::now(),
                down_since: None,
            }),
            metrics,
            outage_fallbacks: AtomicU64::new(0),
            cfg,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        lock(&self.link)
    }

    /// Ask the shared bucket. `None`: the store could not decide (down, connecting, failed,
    /// timed out), and the fallback must.
    async fn take(
        self: &Arc<Self>,
        plugin: &str,
        route: &str,
        key: &str,
        limit: u32,
        window_ns: u64,
    ) -> Option<Decision> {
        let (generation, mut conn) = self.connection()?;
        // Redis' clock has microseconds; windows come in whole milliseconds anyway.
        let window_us = (window_ns / 1_000).clamp(1, 1 << 53);
        let mut call = self.script.prepare_invoke();
        call.key(self.redis_key(plugin, route, key))
            .arg(limit)
            .arg(window_us);
        let answer = tokio::time::timeout(
            self.cfg.timeout,
            call.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((allowed, remaining, reset_ms))) => Some(Decision {
                allowed: allowed == 1,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset_after: Duration::from_millis(u64::try_from(reset_ms.max(0)).unwrap_or(0)),
            }),
            Ok(Err(e)) => {
                self.failed(Some(generation), &e.to_string());
                None
            }
            Err(_) => {
                self.failed(
                    Some(generation),
                    &format!("no answer within {:?}", self.cfg.timeout),
                );
                None
            }
        }
    }

    /// The live connection, or `None` — and then start a connect attempt in the background
    /// if one is due, so no request ever waits for a connect.
    fn connection(self: &Arc<Self>) -> Option<(u64, redis::aio::MultiplexedConnection)> {
        let client = self.client.as_ref()?;
        let mut link = self.lock();
        if let Some((generation, conn)) = &link.conn {
            return Some((*generation, conn.clone()));
        }
        let now = Instant::now();
        let attempt_running = link
            .connecting
            .is_some_and(|since| now < since + 2 * CONNECT_TIMEOUT);
        if attempt_running || now < link.next_attempt {
            return None;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return None;
        };
        link.connecting = Some(now);
        link.next_attempt = now + RETRY_INTERVAL;
        drop(link);
        let this = Arc::clone(self);
        let client = client.clone();
        runtime.spawn(async move { this.connect(client).await });
        None
    }

    async fn connect(self: Arc<Self>, client: redis::Client) {
        // No response timeout on the connection: every call has its own (`cfg.timeout`).
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // Load the script now rather than at the first call, which would then need
            // three round trips (EVALSHA, SCRIPT LOAD, EVALSHA) within its timeout. This
            // also proves the server answers commands (authenticated, not loading).
            self.script.prepare_invoke().load_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        })
        .await;
        match attempt {
            Ok(Ok(conn)) => self.connected(conn),
            Ok(Err(e)) => self.failed(None, &e.to_string()),
            Err(_) => self.failed(None, &format!("no connection within {CONNECT_TIMEOUT:?}")),
        }
    }

    fn connected(&self, conn: redis::aio::MultiplexedConnection) {
        let mut link = self.lock();
        link.generation += 1;
        link.conn = Some((link.generation, conn));
        link.connecting = None;
        let before = std::mem::replace(&mut link.state, LinkState::Up);
        let down_since = link.down_since.take();
        drop(link);
        self.metrics.store_up.set(1);
        match before {
            LinkState::Down => tracing::info!(
                store = %self.shown_url,
                outage = ?down_since.map(|t| t.elapsed()).unwrap_or_default(),
                fallback_decisions = self.outage_fallbacks.load(Ordering::Relaxed),
                "rate-limit store is back: decisions use it again"
            ),
            LinkState::Starting => {
                tracing::info!(store = %self.shown_url, "rate-limit store connected")
            }
            LinkState::Up => {}
        }
    }

    /// A connect attempt (`generation` `None`) or a call on connection `generation` failed.
    fn failed(&self, generation: Option<u64>, error: &str) {
        self.metrics.store_errors.inc();
        let now = Instant::now();
        let mut link = self.lock();
        match generation {
            None => link.connecting = None,
            // Current connection: drop it, and reconnect from scratch when next due.
            Some(g) if link.conn.as_ref().is_some_and(|(c, _)| *c == g) => link.conn = None,
            // A call on a connection already dropped (many calls were in flight when it
            // broke, or it has been replaced since): the outage is already known.
            Some(_) => return,
        }
        link.next_attempt = link.next_attempt.max(now + RETRY_INTERVAL);
        let before = std::mem::replace(&mut link.state, LinkState::Down);
        if before != LinkState::Down {
            link.down_since = Some(now);
            self.outage_fallbacks.store(0, Ordering::Relaxed);
        }
        drop(link);
        self.metrics.store_up.set(0);
        if before != LinkState::Down {
            // Once per outage: while down, failed reconnects are only counted.
            tracing::warn!(
                store = %self.shown_url,
                error = %redact_secrets(error, &self.secrets),
                fallback = self.cfg.fallback.label(),
                "rate-limit store unavailable: the fallback decides until it is back \
                 (retried every {RETRY_INTERVAL:?})"
            );
        }
    }

    /// `prefix` + plugin + `:` + route + `:` + key, where `%` and `:` in the plugin and
    /// route names are percent-escaped (so the separators are unambiguous), and the key is
    /// `=` + the key itself, or `#` + its SHA-256 in hex when longer than [`MAX_RAW_KEY`]
    /// bytes (the marker keeps a client from choosing a short key equal to a hashed one).
    fn redis_key(&self, plugin: &str, route: &str, key: &str) -> String {
        let mut k = String::with_capacity(
            self.cfg.prefix.len() + plugin.len() + route.len() + key.len().min(MAX_RAW_KEY) + 8,
        );
        k.push_str(&self.cfg.prefix);
        push_escaped(&mut k, plugin);
        k.push(':');
        push_escaped(&mut k, route);
        k.push(':');
        if key.len() <= MAX_RAW_KEY {
            k.push('=');
            k.push_str(key);
        } else {
            k.push('#');
            let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
            for b in digest.as_ref() {
                use std::fmt::Write;
                let _ = write!(k, "{b:02x}");
            }
        }
        k
    }
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};

    const MS: Duration = Duration::from_millis(1);

    fn manual(max_keys: usize) -> (Arc<RateLimiter>, Arc<AtomicU64>, RateLimitMetrics) {
        let now = Arc::new(AtomicU64::new(0));
        let metrics = RateLimitMetrics::new();
        let l = RateLimiter::build(max_keys, None, metrics.clone(), Clock::Manual(now.clone()));
        (l, now, metrics)
    }

    fn advance(clock: &AtomicU64, d: Duration) {
        clock.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn d(allowed: bool, remaining: u32, reset_ms: u64) -> Decision {
        Decision {
            allowed,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
        }
    }

    /// A `redis-server` of the test's own on a free 127.0.0.1 port, killed on drop.
    struct RedisServer {
        child: Option<Child>,
        port: u16,
        dir: tempfile::TempDir,
        extra: Vec<String>,
    }

    impl RedisServer {
        fn start(extra: &[&str]) -> Self {
            let mut server = RedisServer {
                child: None,
                port: 0,
                dir: tempfile::tempdir().expect("temp dir"),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            // Another test may take the port between our probe and redis' bind: try again.
            for _ in 0..5 {
                server.port = TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("free port")
                    .port();
                if server.spawn() {
                    return server;
                }
            }
            panic!("could not start redis-server");
        }

        /// Start on `self.port`; false if it exited (port taken) or never listened.
        fn spawn(&mut self) -> bool {
            let mut child = Command::new("/usr/bin/redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            false
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }

        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        fn restart(&mut self) {
            self.kill();
            assert!(self.spawn(), "redis-server restarts on port {}", self.port);
        }

        fn client(&self) -> redis::Client {
            redis::Client::open(self.url()).unwrap()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn store(url: String, timeout: Duration) -> StoreConfig {
        StoreConfig {
            timeout,
            ..StoreConfig::new(url)
        }
    }

    /// Call through `l` until a call is decided by the store (each call also starts a
    /// connect attempt when one is due).
    async fn wait_up(l: &RateLimiter, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let _ = l.check("probe", "probe", "probe", 1000, MS * 1000).await;
            // Still up after a call: that call went through the store.
            if l.store_up() == Some(true) {
                return;
            }
            assert!(Instant::now() < deadline, "store not up within {within:?}");
            tokio::time::sleep(MS * 10).await;
        }
    }

    /// Everything logged by this test binary. One global subscriber rather than one per
    /// test: with per-thread subscribers, tracing caches a callsite's interest from whichever
    /// thread hits it first, and a test's lines could go missing.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The capture, or `None` if something else in this test binary installed the global
    /// subscriber first (then the log assertions are skipped). Only this module's events
    /// are kept, so other tests' logging costs nothing.
    fn logs() -> Option<&'static Logs> {
        static LOGS: OnceLock<Option<Logs>> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let w = logs.clone();
            let here = module_path!().trim_end_matches("::tests");
            let sub = tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .with_ansi(false)
                .with_env_filter(tracing_subscriber::EnvFilter::new(format!("{here}=debug")))
                .finish();
            tracing::subscriber::set_global_default(sub).ok()?;
            Some(logs)
        })
        .as_ref()
    }

    impl Logs {
        /// The lines that contain `needle` (a test's own Redis URL, say).
        fn lines_with(&self, needle: &str) -> String {
            let all = String::from_utf8_lossy(&lock(&self.0)).into_owned();
            all.lines()
                .filter(|l| l.contains(needle))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    // ----- local buckets -----

    #[tokio::test]
    async fn burst_then_limited_then_refill() {
        let (l, clock, m) = manual(100);
        let w = MS * 1000;
        // limit 5 per second: one token every 200ms.
        for i in 0..5u32 {
            let got = l.check("p", "r", "k", 5, w).await;
            // Allowed: reset_after is until full again, one more token's worth each time.
            assert_eq!(got, d(true, 4 - i, 200 * u64::from(i + 1)));
        }
        assert_eq!(l.check("p", "r", "k", 5, w).await, d(false, 0, 200));
        advance(&clock, MS * 150);
        assert_eq!(l.check("p", "r", "k", 5, w).await, d(false, 0, 50));
        advance(&clock, MS * 50);
        assert_eq!(l.check("p", "r", "k", 5, w).await, d(true, 0, 1000));
        assert!(!l.check("p", "r", "k", 5, w).await.allowed);
        // Long idle: full again, never above capacity.
        advance(&clock, Duration::from_secs(3600));
        for i in 0..5u32 {
            assert_eq!(l.check("p", "r", "k", 5, w).await.remaining, 4 - i);
        }
        assert!(!l.check("p", "r", "k", 5, w).await.allowed);
        assert_eq!(m.allowed.get(), 11);
        assert_eq!(m.limited.get(), 4);
    }

    #[tokio::test]
    async fn refill_is_exact_and_reset_rounds_up() {
        let (l, clock, _) = manual(100);
        let w = MS * 1000;
        // 3 per second: a token every 333.33…ms, which no float-free ms count hits exactly.
        for _ in 0..3 {
            assert!(l.check("p", "r", "k", 3, w).await.allowed);
        }
        advance(&clock, MS * 333);
        // 1/3 ms short of a token: reported as 1ms, never 0.
        assert_eq!(l.check("p", "r", "k", 3, w).await, d(false, 0, 1));
        advance(&clock, Duration::from_nanos(333_334));
        assert!(l.check("p", "r", "k", 3, w).await.allowed);
        // Many tiny steps add up exactly: 1000 × 1ms is one window, so 3 tokens.
        let (l2, clock2, _) = manual(100);
        for _ in 0..3 {
            assert!(l2.check("p", "r", "k", 3, w).await.allowed);
        }
        for _ in 0..1000 {
            advance(&clock2, MS);
            // Peek through a separate key so the bucket under test only refills.
            let _ = l2.check("p", "r", "x", 3, w).await;
        }
        for _ in 0..3 {
            assert!(l2.check("p", "r", "k", 3, w).await.allowed);
        }
        assert!(!l2.check("p", "r", "k", 3, w).await.allowed);
    }

    #[tokio::test]
    async fn buckets_are_per_plugin_route_and_key() {
        let (l, _, _) = manual(100);
        let w = MS * 1000;
        assert!(l.check("p", "r", "k", 1, w).await.allowed);
        assert!(!l.check("p", "r", "k", 1, w).await.allowed);
        for (p, r, k) in [
            ("q", "r", "k"),
            ("p", "s", "k"),
            ("p", "r", "j"),
            ("p:r", "", "k"),
        ] {
            assert!(l.check(p, r, k, 1, w).await.allowed, "{p}/{r}/{k}");
        }
        // Separator confusion: ("a:b", "c") is not ("a", "b:c").
        assert!(l.check("a:b", "c", "k", 1, w).await.allowed);
        assert!(l.check("a", "b:c", "k", 1, w).await.allowed);
        assert_eq!(l.local_buckets(), 7);
    }

    #[tokio::test]
    async fn changed_limit_or_window_keeps_tokens_within_capacity() {
        let (l, clock, _) = manual(100);
        let w = MS * 1000;
        assert_eq!(l.check("p", "r", "k", 100, w).await.remaining, 99);
        // Lower limit: clamped to the new capacity.
        assert_eq!(l.check("p", "r", "k", 10, w).await, d(true, 9, 100));
        // Higher limit: the tokens it had, refilling at the new rate.
        assert_eq!(l.check("p", "r", "k", 20, w).await, d(true, 8, 600));
        // Longer window, same token count; refills at 20 per 2s = one per 100ms.
        assert_eq!(l.check("p", "r", "k", 20, w * 2).await, d(true, 7, 1300));
        advance(&clock, MS * 100);
        assert_eq!(l.check("p", "r", "k", 20, w * 2).await.remaining, 7);
    }

    #[tokio::test]
    async fn extreme_values_do_not_overflow() {
        let (l, clock, _) = manual(10);
        let max_w = MS * u32::MAX;
        assert_eq!(
            l.check("p", "r", "k", u32::MAX, max_w).await.remaining,
            u32::MAX - 1
        );
        assert!(l.check("p", "r", "k", 1, MS).await.allowed);
        advance(&clock, Duration::from_nanos(u64::MAX / 2));
        assert!(l.check("p", "r", "k", u32::MAX, max_w).await.allowed);
        // Zero arguments (refused by the caller) are treated as 1 and 1ns, not a panic.
        assert!(l.check("p", "r", "z", 0, Duration::ZERO).await.allowed);
    }

    #[tokio::test]
    async fn lru_is_bounded_and_counts_evictions() {
        let (l, _, m) = manual(4);
        let w = MS * 1000;
        for i in 0..10 {
            assert!(l.check("p", "r", &format!("k{i}"), 1, w).await.allowed);
        }
        assert_eq!(l.local_buckets(), 4);
        assert_eq!(m.evictions.get(), 6);
        // The most recent keys are remembered, the oldest forgotten (full again).
        assert!(!l.check("p", "r", "k9", 1, w).await.allowed);
        assert!(l.check("p", "r", "k0", 1, w).await.allowed);

        // Sharded: the bound holds across shards.
        let (big, _, m) = manual(20_000);
        assert_eq!(big.local.shards.len(), 16);
        for i in 0..50_000 {
            let _ = big.check("p", "r", &i.to_string(), 10, w).await;
        }
        assert!(big.local_buckets() <= 20_000);
        assert!(big.local_buckets() > 19_000);
        assert_eq!(m.evictions.get() as usize, 50_000 - big.local_buckets());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_never_exceed_the_limit() {
        let (l, _, m) = manual(1000);
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    let mut allowed = 0;
                    for _ in 0..250 {
                        allowed += u32::from(l.check("p", "r", "k", 100, MS * 1000).await.allowed);
                    }
                    allowed
                })
            })
            .collect();
        let mut allowed = 0;
        for t in tasks {
            allowed += t.await.unwrap();
        }
        assert_eq!(allowed, 100);
        assert_eq!(m.allowed.get(), 100);
        assert_eq!(m.limited.get(), 900);
    }

    #[test]
    fn limiter_and_its_future_are_send_and_sync() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let l = RateLimiter::new(10, Some(&StoreConfig::new("redis://127.0.0.1:1")));
        send_sync(&l);
        // Wasmtime's async host functions and tokio::spawn need a Send future.
        send(&l.check("p", "r", "k", 1, MS));
    }

    // ----- configuration -----

    #[test]
    fn config_defaults_and_unknown_fields() {
        #[derive(Deserialize)]
        struct Policy {
            rate_limit_store: StoreConfig,
        }
        let p: Policy =
            toml::from_str(r#"rate_limit_store = { redis = "redis://h:6379/0" }"#).unwrap();
        assert_eq!(p.rate_limit_store, StoreConfig::new("redis://h:6379/0"));
        assert_eq!(p.rate_limit_store.timeout, MS * 50);
        assert_eq!(p.rate_limit_store.prefix, "warden:rl:");
        assert_eq!(p.rate_limit_store.fallback, Fallback::Local);
        let p: Policy = toml::from_str(
            r#"rate_limit_store = { redis = "redis://h", fallback = "deny", timeout = "250ms", prefix = "x:" }"#,
        )
        .unwrap();
        assert_eq!(p.rate_limit_store.fallback, Fallback::Deny);
        assert_eq!(p.rate_limit_store.timeout, MS * 250);
        assert!(p.rate_limit_store.check().is_empty());
        assert!(
            toml::from_str::<Policy>(r#"rate_limit_store = { redis = "redis://h", ttl = 1 }"#)
                .is_err()
        );
        assert!(
            toml::from_str::<Policy>(
                r#"rate_limit_store = { redis = "redis://h", fallback = "maybe" }"#
            )
            .is_err()
        );
    }

    #[test]
    fn config_check() {
        let keys = |c: &StoreConfig| c.check().into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert!(keys(&StoreConfig::new("redis://127.0.0.1:6379/0")).is_empty());
        assert!(keys(&StoreConfig::new("redis://user:pw@redis.internal/3")).is_empty());
        assert_eq!(keys(&StoreConfig::new("http://h:6379")), ["redis"]);
        assert_eq!(keys(&StoreConfig::new("unix:///run/redis.sock")), ["redis"]);
        assert_eq!(keys(&StoreConfig::new("127.0.0.1:6379")), ["redis"]);
        assert_eq!(keys(&StoreConfig::new("redis://h/notadb")), ["redis"]);
        assert_eq!(keys(&StoreConfig::new("redis://0.0.0.0")), ["redis"]);
        let tls = StoreConfig::new("rediss://:pw@h:6380").check();
        assert_eq!(tls.len(), 1);
        assert!(tls[0].reason.contains("TLS"), "{}", tls[0].reason);
        for (t, ok) in [(0, false), (1, true), (5000, true), (5001, false)] {
            let c = store("redis://h".into(), MS * t);
            assert_eq!(keys(&c).is_empty(), ok, "{t}ms");
        }
    }

    #[test]
    fn password_never_shown() {
        let secret = "s3cr%2Ft-pw";
        for url in [
            format!("redis://:{secret}@127.0.0.1:6379/0"),
            format!("redis://alice:{secret}@127.0.0.1:6379/bad"),
            format!("rediss://alice:{secret}@127.0.0.1:6379/0"),
            format!("http://alice:{secret}@h"),
            format!("redis://alice:{secret}@/0"),
            format!("redis://alice:{secret}@h/0?protocol=resp3&pass={secret}"),
            format!("alice:{secret}@h"),
        ] {
            let c = store(url.clone(), MS * 50);
            let shown = format!("{c:?} {:?} {:?}", c.check(), RateLimiter::new(1, Some(&c)));
            for s in ["s3cr", "cr%2Ft", "cr/t"] {
                assert!(!shown.contains(s), "{url}: {shown}");
            }
        }
        assert_eq!(
            redact_url("redis://alice:pw@h:1/0?protocol=resp3"),
            "redis://***@h:1/0?protocol=resp3"
        );
        assert_eq!(url_secrets("redis://a:p%41ss@h"), ["p%41ss", "pAss"]);
        assert_eq!(
            redact_secrets("x pAss y", &url_secrets("redis://a:p%41ss@h")),
            "x *** y"
        );
    }

    #[test]
    fn metric_names() {
        let m = RateLimitMetrics::new();
        let mut reg = Registry::with_prefix("warden");
        m.register(&mut reg);
        m.allowed.inc();
        m.store_up.set(1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for line in [
            "warden_rate_limit_evictions_total 0",
            "warden_rate_limit_store_fallbacks_total 0",
            "warden_rate_limit_store_errors_total 0",
            "warden_rate_limit_store_up 1",
            "# TYPE warden_rate_limit_store_up gauge",
            "warden_rate_limit_decisions_total{decision=\"allowed\"} 1",
            "warden_rate_limit_decisions_total{decision=\"limited\"} 0",
        ] {
            assert!(out.contains(line), "{line} missing from:\n{out}");
        }
    }

    #[tokio::test]
    async fn redis_keys_are_escaped_and_bounded() {
        let r = Remote::new(StoreConfig::new("redis://h"), RateLimitMetrics::new());
        assert_eq!(r.redis_key("p", "r", "k"), "warden:rl:p:r:=k");
        assert_eq!(r.redis_key("a:b", "c%", "x:y"), "warden:rl:a%3Ab:c%25:=x:y");
        let long = "x".repeat(MAX_RAW_KEY + 1);
        let k = r.redis_key("p", "r", &long);
        assert!(k.starts_with("warden:rl:p:r:#") && k.len() == "warden:rl:p:r:#".len() + 64);
        assert_ne!(k, r.redis_key("p", "r", &"x".repeat(MAX_RAW_KEY + 2)));
    }

    // ----- Redis -----

    #[tokio::test]
    async fn replicas_share_one_budget_through_redis() {
        let redis = RedisServer::start(&[]);
        let cfg = store(redis.url(), MS * 1000);
        let (ma, mb) = (RateLimitMetrics::new(), RateLimitMetrics::new());
        let a = RateLimiter::with_metrics(100, Some(&cfg), ma.clone());
        let b = RateLimiter::with_metrics(100, Some(&cfg), mb.clone());
        wait_up(&a, Duration::from_secs(5)).await;
        wait_up(&b, Duration::from_secs(5)).await;
        assert_eq!(ma.store_up.get(), 1);
        // `wait_up`'s probes may have fallen back while connecting; nothing may from now on.
        let fallbacks = ma.store_fallbacks.get() + mb.store_fallbacks.get();
        let local = a.local_buckets() + b.local_buckets();
        let w = MS * 60_000;
        for i in 0..3u32 {
            let got = a.check("p", "r", "client", 5, w).await;
            assert!(got.allowed && got.remaining == 4 - i, "{got:?}");
        }
        for i in 3..5u32 {
            let got = b.check("p", "r", "client", 5, w).await;
            assert!(got.allowed && got.remaining == 4 - i, "{got:?}");
            // One token per 12s; until full: i+1 tokens' worth (minus a few ms elapsed).
            let full = 12_000 * u64::from(i + 1);
            let full = Duration::from_millis(full);
            assert!(got.reset_after <= full && got.reset_after > full - MS * 1000);
        }
        for l in [&a, &b] {
            let got = l.check("p", "r", "client", 5, w).await;
            assert!(!got.allowed && got.remaining == 0, "{got:?}");
            assert!(got.reset_after > MS * 11_000 && got.reset_after <= MS * 12_000);
        }
        // Other routes, plugins and keys have their own buckets.
        assert!(a.check("p", "r2", "client", 5, w).await.allowed);
        assert!(b.check("p2", "r", "client", 5, w).await.allowed);
        let long = "k".repeat(1000);
        assert!(a.check("p", "r", &long, 1, w).await.allowed);
        assert!(!b.check("p", "r", &long, 1, w).await.allowed);
        // Nothing fell back; the local buckets were never used.
        assert_eq!(
            ma.store_fallbacks.get() + mb.store_fallbacks.get(),
            fallbacks
        );
        assert_eq!(a.local_buckets() + b.local_buckets(), local);

        // Keys expire once their bucket would be full again (+1s), and refill on Redis' clock.
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg("warden:rl:p:r:=client")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 59_000 && ttl <= 61_000, "ttl {ttl}");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("warden:rl:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 5, "{keys:?}");
        let fast = MS * 100;
        for _ in 0..2 {
            assert!(a.check("p", "r", "fast", 2, fast).await.allowed);
        }
        assert!(!b.check("p", "r", "fast", 2, fast).await.allowed);
        tokio::time::sleep(MS * 60).await;
        assert!(b.check("p", "r", "fast", 2, fast).await.allowed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_replicas_never_exceed_the_limit() {
        let redis = RedisServer::start(&[]);
        let cfg = store(redis.url(), MS * 2000);
        let replicas: Vec<_> = (0..2)
            .map(|_| RateLimiter::with_metrics(100, Some(&cfg), RateLimitMetrics::new()))
            .collect();
        for r in &replicas {
            wait_up(r, Duration::from_secs(5)).await;
        }
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let l = replicas[i % 2].clone();
                tokio::spawn(async move {
                    let mut allowed = 0;
                    for _ in 0..25 {
                        let d = l.check("p", "r", "k", 30, MS * 60_000).await;
                        allowed += u32::from(d.allowed);
                    }
                    allowed
                })
            })
            .collect();
        let mut allowed = 0;
        for t in tasks {
            allowed += t.await.unwrap();
        }
        assert_eq!(allowed, 30);
        for r in &replicas {
            assert_eq!(r.store_up(), Some(true), "a call fell back");
        }
    }

    #[tokio::test]
    async fn redis_outage_falls_back_and_recovers() {
        let logs = logs();
        let mut redis = RedisServer::start(&[]);
        let timeout = MS * 300;
        let cfg = store(redis.url(), timeout);
        let (ma, mb) = (RateLimitMetrics::new(), RateLimitMetrics::new());
        let a = RateLimiter::with_metrics(100, Some(&cfg), ma.clone());
        let b = RateLimiter::with_metrics(100, Some(&cfg), mb.clone());
        wait_up(&a, Duration::from_secs(5)).await;
        wait_up(&b, Duration::from_secs(5)).await;
        let w = MS * 60_000;
        assert!(a.check("p", "r", "k", 2, w).await.allowed);
        assert!(b.check("p", "r", "k", 2, w).await.allowed);
        assert!(!a.check("p", "r", "k", 2, w).await.allowed);

        redis.kill();
        let killed = Instant::now();
        // Decisions go on, from A's own buckets: a fresh local budget of 2.
        for i in 0..20 {
            let start = Instant::now();
            let got = a.check("p", "r", "k", 2, w).await;
            assert!(start.elapsed() < timeout + MS * 200, "call {i} hung");
            assert_eq!(got.allowed, i < 2, "call {i}: {got:?}");
        }
        assert_eq!(a.store_up(), Some(false));
        assert_eq!(ma.store_up.get(), 0);
        assert!(ma.store_fallbacks.get() >= 20);
        // Decided locally at once while down: one failed call found the outage, then at
        // most one reconnect attempt per second, not a store call per request.
        let errors = ma.store_errors.get();
        assert!(
            errors >= 1 && errors <= 1 + killed.elapsed().as_secs(),
            "{errors}"
        );

        redis.restart();
        let restarted = Instant::now();
        loop {
            let _ = a.check("p", "r", "probe", 1000, w).await;
            if a.store_up() == Some(true) {
                break;
            }
            assert!(
                restarted.elapsed() < MS * 2500,
                "store not back after restart"
            );
            tokio::time::sleep(MS * 20).await;
        }
        assert_eq!(ma.store_up.get(), 1);
        // B had no call during the outage: its first finds the dead connection, and it
        // reconnects a second later.
        wait_up(&b, Duration::from_secs(3)).await;
        // Shared again (the restarted Redis is empty: a fresh budget of 2).
        assert!(a.check("p", "r", "k", 2, w).await.allowed);
        assert!(b.check("p", "r", "k", 2, w).await.allowed);
        assert!(!a.check("p", "r", "k", 2, w).await.allowed);
        assert!(!b.check("p", "r", "k", 2, w).await.allowed);

        // One warning for the outage and one line for the recovery, however many calls.
        if let Some(logs) = logs {
            let text = logs.lines_with(&redis.url());
            let count = |what: &str| text.matches(what).count();
            assert_eq!(count("rate-limit store unavailable"), 2, "{text}");
            assert_eq!(count("rate-limit store is back"), 2, "{text}");
        }
    }

    #[tokio::test]
    async fn hung_redis_costs_one_timeout_then_recovers() {
        let redis = RedisServer::start(&[]);
        let timeout = MS * 100;
        let m = RateLimitMetrics::new();
        let l = RateLimiter::with_metrics(100, Some(&store(redis.url(), timeout)), m.clone());
        wait_up(&l, Duration::from_secs(5)).await;
        let pid = redis.child.as_ref().unwrap().id().to_string();
        let signal = |sig: &str| {
            let ok = Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig}");
        };
        // A stopped server accepts connections but never answers.
        signal("-STOP");
        let start = Instant::now();
        let first = l.check("p", "r", "k", 1, MS * 60_000).await;
        let waited = start.elapsed();
        assert!(first.allowed, "fallback local: a fresh bucket");
        assert!(
            waited >= timeout && waited < timeout + MS * 200,
            "{waited:?}"
        );
        // Then no waiting at all until the next attempt; the attempt runs in the background.
        let start = Instant::now();
        for _ in 0..50 {
            assert!(!l.check("p", "r", "k", 1, MS * 60_000).await.allowed);
        }
        assert!(start.elapsed() < timeout, "{:?}", start.elapsed());
        assert_eq!(m.store_up.get(), 0);
        signal("-CONT");
        let resumed = Instant::now();
        wait_up(&l, Duration::from_secs(4)).await;
        assert!(resumed.elapsed() < MS * 3500, "{:?}", resumed.elapsed());
        assert_eq!(m.store_up.get(), 1);
    }

    #[tokio::test]
    async fn fallback_deny_and_allow_while_down() {
        // Nothing listens on a port we just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let w = MS * 1000;
        for (fallback, allowed) in [(Fallback::Deny, false), (Fallback::Allow, true)] {
            let cfg = StoreConfig {
                fallback,
                ..store(url.clone(), MS * 50)
            };
            let m = RateLimitMetrics::new();
            let l = RateLimiter::with_metrics(100, Some(&cfg), m.clone());
            let deadline = Instant::now() + Duration::from_secs(3);
            // Wait for the first connect attempt to fail.
            while m.store_errors.get() == 0 {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(MS * 10).await;
            }
            for _ in 0..10 {
                assert_eq!(l.check("p", "r", "k", 3, w).await.allowed, allowed);
            }
            assert_eq!(l.store_up(), Some(false));
            assert_eq!(m.store_fallbacks.get(), 10);
            assert_eq!(l.local_buckets(), 0);
        }
    }

    #[tokio::test]
    async fn password_protected_redis() {
        let logs = logs();
        let secret = "pa55-w0rd-x";
        let redis = RedisServer::start(&["--requirepass", secret]);
        let good = store(
            format!("redis://:{secret}@127.0.0.1:{}/0", redis.port),
            MS * 1000,
        );
        let bad = store(
            format!("redis://default:wrong-{secret}@127.0.0.1:{}/0", redis.port),
            MS * 1000,
        );
        let mg = RateLimitMetrics::new();
        let mb = RateLimitMetrics::new();
        let g = RateLimiter::with_metrics(10, Some(&good), mg.clone());
        let b = RateLimiter::with_metrics(10, Some(&bad), mb.clone());
        wait_up(&g, Duration::from_secs(5)).await;
        assert!(g.check("p", "r", "k", 1, MS * 1000).await.allowed);
        assert!(!g.check("p", "r", "k", 1, MS * 1000).await.allowed);
        let deadline = Instant::now() + Duration::from_secs(3);
        while mb.store_errors.get() == 0 {
            assert!(Instant::now() < deadline);
            let _ = b.check("p", "r", "k", 1, MS * 1000).await;
            tokio::time::sleep(MS * 10).await;
        }
        assert_eq!(b.store_up(), Some(false));
        let port = format!("127.0.0.1:{}", redis.port);
        let text = format!("{g:?} {b:?} {good:?} {bad:?}");
        assert!(!text.contains("pa55"), "{text}");
        if let Some(logs) = logs {
            let text = logs.lines_with(&port);
            assert!(text.contains("rate-limit store unavailable"), "{text}");
            assert!(text.contains("authentication failed"), "the reason: {text}");
            assert!(!text.contains("pa55"), "{text}");
        }
    }

    /// `cargo test --release -- --ignored --nocapture local_check_cost`: the cost of a
    /// local `check`, for 10k live keys and for one hot key. Best of several rounds, in wall
    /// time and (on Linux) in this thread's CPU time, which a busy shared machine inflates
    /// less.
    #[tokio::test]
    #[ignore]
    async fn local_check_cost() {
        fn cpu_ns() -> Option<u128> {
            let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            s.split_whitespace().next()?.parse().ok()
        }
        let l = RateLimiter::with_metrics(100_000, None, RateLimitMetrics::new());
        let keys: Vec<String> = (0..10_000).map(|i| format!("client-{i}")).collect();
        let w = MS * 1000;
        for (name, n_keys) in [("10k keys", keys.len()), ("1 key", 1)] {
            let (mut wall, mut cpu) = (u128::MAX, u128::MAX);
            for _ in 0..5 {
                let n = 1_000_000;
                let (start, cpu_start) = (Instant::now(), cpu_ns());
                for i in 0..n {
                    let k = &keys[i % n_keys];
                    std::hint::black_box(l.check("plugin", "route", k, 100, w).await);
                }
                wall = wall.min(start.elapsed().as_nanos() / n as u128);
                if let (Some(a), Some(b)) = (cpu_start, cpu_ns()) {
                    cpu = cpu.min((b - a) / n as u128);
                }
            }
            println!("local check, {name}: {wall} ns/call wall, {cpu} ns/call CPU");
        }
    }
}
