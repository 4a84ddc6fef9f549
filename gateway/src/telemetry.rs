//! Metrics (Prometheus text via `prometheus-client`) and log set-up.
//!
//! One process-wide [`Metrics`] registry: every module records into the same families, so
//! `/metrics` shows the whole gateway. Labels carry names chosen by operators (route,
//! plugin, provider) and small enums, never a header or secret value.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or `none` when no route matched.
    pub route: String,
    /// `read` (GET, HEAD, OPTIONS) or `write` (everything else).
    pub method: MethodClass,
    /// Response status code.
    pub status: u16,
}

/// Method class, to keep label cardinality bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum MethodClass {
    /// GET, HEAD, OPTIONS.
    Read,
    /// Anything else.
    Write,
}

impl EncodeLabelValue for MethodClass {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        e.write_str(match self {
            MethodClass::Read => "read",
            MethodClass::Write => "write",
        })
    }
}

impl MethodClass {
    /// Classify a method.
    pub fn of(m: &http::Method) -> Self {
        if m == http::Method::GET || m == http::Method::HEAD || m == http::Method::OPTIONS {
            MethodClass::Read
        } else {
            MethodClass::Write
        }
    }
}

/// A route label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: String,
}

/// An upstream label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// Upstream name.
    pub upstream: String,
}

/// Labels of policy verdicts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Plugin name.
    pub plugin: String,
    /// Route name.
    pub route: String,
    /// `allow`, `deny` or `error`.
    pub verdict: String,
    /// `enforce` or `shadow`.
    pub mode: String,
}

/// A plugin label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// Plugin name.
    pub plugin: String,
}

/// A secret-provider label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Provider name (the `NAME` of `[secrets.NAME]`).
    pub provider: String,
}

/// Labels of the secret-refresh failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderFailureLabels {
    /// Provider name.
    pub provider: String,
    /// `unavailable` (the provider failed), `not_found` (the secret does not exist) or
    /// `invalid` (a value that cannot be sent).
    pub reason: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` or `refused`.
    pub result: String,
}

/// Labels of responses Warden made itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayResponseLabels {
    /// Route name, or `none` when no route matched.
    pub route: String,
    /// The machine-readable reason, as in the error body (`bad_request`,
    /// `upstream_timeout`, `credentials_unavailable`, `policy_denied` …).
    pub reason: String,
    /// Whose fault: `client`, `upstream`, `gateway` or `policy`.
    pub fault: String,
}

/// Every metric family the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method class and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request head received to response head sent, by route.
    pub request_duration: Family<RouteLabel, Histogram>,
    /// Time the upstream took to answer with a response head, by upstream.
    pub upstream_duration: Family<UpstreamLabel, Histogram>,
    /// Open downstream connections.
    pub active_connections: Gauge,
    /// Upstream connect errors (refused, reset, TLS verification), by upstream.
    pub upstream_connect_errors: Family<UpstreamLabel, Counter>,
    /// Upstream timeouts, by upstream.
    pub upstream_timeouts: Family<UpstreamLabel, Counter>,
    /// Failed downstream TLS handshakes.
    pub tls_handshake_failures: Counter,
    /// Policy verdicts by plugin, route, verdict and mode.
    pub policy_verdicts: Family<VerdictLabels, Counter>,
    /// Time spent evaluating one plugin, by plugin.
    pub plugin_eval_duration: Family<PluginLabel, Histogram>,
    /// Plugin traps, by plugin.
    pub plugin_traps: Family<PluginLabel, Counter>,
    /// Plugin deadline hits, by plugin.
    pub plugin_deadline_hits: Family<PluginLabel, Counter>,
    /// Plugin memory-limit hits, by plugin.
    pub plugin_memory_limit_hits: Family<PluginLabel, Counter>,
    /// Successful secret refreshes, by provider.
    pub secret_refresh_success: Family<ProviderLabel, Counter>,
    /// Failed secret refreshes, by provider and kind of failure.
    pub secret_refresh_failure: Family<ProviderFailureLabels, Counter>,
    /// Unix time of the last successful refresh, by provider; `/metrics` derives the age.
    pub secret_last_success: Family<ProviderLabel, Gauge>,
    /// Seconds since the oldest value of each provider was last read successfully; set
    /// when `/metrics` is scraped.
    pub secret_age: Family<ProviderLabel, Gauge>,
    /// Config reloads applied or refused.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Responses Warden made itself (errors and policy denials), by route, reason and
    /// fault: tells a 503 of Warden's from one the upstream sent.
    pub gateway_responses: Family<GatewayResponseLabels, Counter>,
    /// Configuration generations alive: the current one plus those still finishing
    /// requests. Flat over time unless something holds an old generation.
    pub config_generations: Gauge,
    started: Instant,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 µs .. ~26 s: covers a warm plugin call up to a slow inference request.
    exponential_buckets(0.000_05, 2.0, 20)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route, method class and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "request_duration_seconds",
            "Downstream latency: request head in to response head out",
            request_duration.clone(),
        );
        let upstream_duration = Family::<UpstreamLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "upstream_duration_seconds",
            "Upstream latency: request sent to response head received",
            upstream_duration.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            "active_connections",
            "Open downstream connections",
            active_connections.clone(),
        );
        let upstream_connect_errors = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Upstream connection failures (refused, reset, TLS)",
            upstream_connect_errors.clone(),
        );
        let upstream_timeouts = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "upstream_timeouts",
            "Upstream connect or request timeouts",
            upstream_timeouts.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "Failed downstream TLS handshakes",
            tls_handshake_failures.clone(),
        );
        let policy_verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "policy_verdicts",
            "Policy verdicts by plugin, route, verdict and mode",
            policy_verdicts.clone(),
        );
        let plugin_eval_duration = Family::<PluginLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_000_5, 2.0, 24))
        });
        registry.register(
            "plugin_eval_duration_seconds",
            "Time spent evaluating one plugin",
            plugin_eval_duration.clone(),
        );
        let plugin_traps = Family::<PluginLabel, Counter>::default();
        registry.register("plugin_traps", "Plugin traps", plugin_traps.clone());
        let plugin_deadline_hits = Family::<PluginLabel, Counter>::default();
        registry.register(
            "plugin_deadline_hits",
            "Plugin evaluations stopped at their deadline",
            plugin_deadline_hits.clone(),
        );
        let plugin_memory_limit_hits = Family::<PluginLabel, Counter>::default();
        registry.register(
            "plugin_memory_limit_hits",
            "Plugin evaluations stopped at their memory limit",
            plugin_memory_limit_hits.clone(),
        );
        let secret_refresh_success = Family::<ProviderLabel, Counter>::default();
        registry.register(
            "secret_refresh_success",
            "Successful secret refreshes by provider",
            secret_refresh_success.clone(),
        );
        let secret_refresh_failure = Family::<ProviderFailureLabels, Counter>::default();
        registry.register(
            "secret_refresh_failure",
            "Failed secret refreshes by provider and reason (unavailable, not_found, invalid)",
            secret_refresh_failure.clone(),
        );
        let secret_last_success = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "secret_last_success_timestamp_seconds",
            "Unix time of the last successful secret refresh by provider",
            secret_last_success.clone(),
        );
        let secret_age = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "secret_age_seconds",
            "Seconds since the last successful refresh, by provider (oldest value)",
            secret_age.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let gateway_responses = Family::<GatewayResponseLabels, Counter>::default();
        registry.register(
            "gateway_responses",
            "Responses made by Warden itself (not the upstream), by route, reason and fault",
            gateway_responses.clone(),
        );
        let config_generations = Gauge::default();
        registry.register(
            "config_generations",
            "Configuration generations alive (current plus those finishing requests)",
            config_generations.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            active_connections,
            upstream_connect_errors,
            upstream_timeouts,
            tls_handshake_failures,
            policy_verdicts,
            plugin_eval_duration,
            plugin_traps,
            plugin_deadline_hits,
            plugin_memory_limit_hits,
            secret_refresh_success,
            secret_refresh_failure,
            secret_last_success,
            secret_age,
            reloads,
            gateway_responses,
            config_generations,
            started: Instant::now(),
        }
    }

    /// Render every family as Prometheus text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Seconds since the process started.
    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Install the global tracing subscriber. Filtering follows `RUST_LOG` (default `info`).
///
/// Lines are handed to a writer thread: a synchronous `write` per access-log line on the
/// worker that serves the request cost more than the rest of the proxying. Nothing is
/// dropped: when the writer falls behind, logging waits. Keep the returned guard alive for
/// the life of the process; dropping it flushes what is buffered.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    // The Vault client libraries log every failed call at ERROR on their own; the secrets
    // module already reports each failure once, with the provider name.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,vaultrs=off,rustify=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("warden-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}
