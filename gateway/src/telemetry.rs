//! Metrics (Prometheus text via `prometheus-client`) and log set-up.
//!
//! One process-wide [`Metrics`] registry: every module records into the same families, so
//! `/metrics` shows the whole gateway. Labels carry names chosen by operators (route,
//! plugin, provider) and small enums, never a header or secret value.

mod sharded;

pub use sharded::{Counter, Histogram};

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or `none` when no route matched.
    pub route: String,
    /// `read` (GET, HEAD, OPTIONS) or `write` (everything else).
    pub method: MethodClass,
    /// Response status code.
    pub status: u16,
    /// Who made the response: the upstream, or Warden itself (a deny, no route, a
    /// timeout, credentials unavailable …).
    pub source: Source,
}

/// Who made a response.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// The upstream's answer, passed through.
    Upstream,
    /// Warden answered itself.
    Gateway,
}

impl EncodeLabelValue for Source {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        e.write_str(match self {
            Source::Upstream => "upstream",
            Source::Gateway => "gateway",
        })
    }
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

/// A proxy worker label (`1`..`N`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    /// Worker number.
    pub worker: String,
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

/// An upstream endpoint label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Upstream name.
    pub upstream: String,
    /// `host:port`.
    pub endpoint: String,
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

/// A certificate label: what the certificate is for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// `gateway` (the downstream listener) or `upstream/NAME` (a client certificate).
    pub certificate: String,
}

/// A secret-reference label (names only, never values).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReferenceLabels {
    /// Provider name.
    pub provider: String,
    /// `${provider:name}`.
    pub reference: String,
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

/// Register `metric` under `name` and hand it back: the one way families are added.
fn add<M: Metric + Clone>(reg: &mut Registry, name: &str, help: &str, metric: M) -> M {
    reg.register(name, help, metric.clone());
    metric
}

fn latency_histograms<L: EncodeLabelSet + Clone + std::hash::Hash + Eq>()
-> Family<L, Histogram, fn() -> Histogram> {
    // 50 µs .. ~26 s: covers a warm plugin call up to a slow inference request.
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 20)))
}

/// The proxy's families: requests, latencies, connections, upstream failures.
pub struct ProxyMetrics {
    /// Requests by route, method class and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request head received to response head sent, by route.
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Time from request head received to the last response byte (a streamed body
    /// included), by route.
    pub exchange_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Time the upstream took to answer with a response head, by upstream.
    pub upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    /// Open downstream connections.
    pub active_connections: Gauge,
    /// Upstream connect errors (refused, reset, TLS verification), by upstream.
    pub upstream_connect_errors: Family<UpstreamLabel, Counter>,
    /// Upstream timeouts, by upstream.
    pub upstream_timeouts: Family<UpstreamLabel, Counter>,
    /// Failed downstream TLS handshakes.
    pub tls_handshake_failures: Counter,
    /// Downstream connections accepted, by proxy worker.
    pub worker_connections: Family<WorkerLabel, Counter>,
    /// Access-log lines dropped because the log's output could not keep up.
    pub access_log_dropped: Counter,
    /// Responses Warden made itself (errors and policy denials), by route, reason and
    /// fault: tells a 503 of Warden's from one the upstream sent.
    pub gateway_responses: Family<GatewayResponseLabels, Counter>,
}

impl ProxyMetrics {
    /// Create the families and register them.
    pub fn register(reg: &mut Registry) -> Self {
        ProxyMetrics {
            requests: add(
                reg,
                "requests",
                "Requests by route, method class and status",
                Family::default(),
            ),
            request_duration: add(
                reg,
                "request_duration_seconds",
                "Downstream latency: request head in to response head out",
                latency_histograms(),
            ),
            exchange_duration: add(
                reg,
                "exchange_duration_seconds",
                "Whole exchange: request head in to the last response byte, streamed body included",
                Family::new_with_constructor(|| {
                    // 1 ms .. ~15 min: a token stream lasts minutes.
                    Histogram::new(exponential_buckets(0.001, 2.5, 16))
                }),
            ),
            upstream_duration: add(
                reg,
                "upstream_duration_seconds",
                "Upstream latency: request sent to response head received",
                latency_histograms(),
            ),
            active_connections: add(
                reg,
                "active_connections",
                "Open downstream connections",
                Gauge::default(),
            ),
            upstream_connect_errors: add(
                reg,
                "upstream_connect_errors",
                "Upstream connection failures (refused, reset, TLS)",
                Family::default(),
            ),
            upstream_timeouts: add(
                reg,
                "upstream_timeouts",
                "Upstream connect or request timeouts",
                Family::default(),
            ),
            tls_handshake_failures: add(
                reg,
                "tls_handshake_failures",
                "Failed downstream TLS handshakes",
                Counter::default(),
            ),
            worker_connections: add(
                reg,
                "worker_connections",
                "Downstream connections accepted, by proxy worker",
                Family::default(),
            ),
            access_log_dropped: add(
                reg,
                "access_log_dropped",
                "Access-log lines dropped because stderr could not take them (a full pipe or disk never blocks a worker)",
                Counter::default(),
            ),
            gateway_responses: add(
                reg,
                "gateway_responses",
                "Responses made by Warden itself (not the upstream), by route, reason and fault",
                Family::default(),
            ),
        }
    }
}

/// Upstream endpoints and retries.
pub struct UpstreamMetrics {
    /// Attempts sent to each endpoint.
    pub endpoint_requests: Family<EndpointLabels, Counter>,
    /// Connect failures and 5xx answers, by endpoint.
    pub endpoint_failures: Family<EndpointLabels, Counter>,
    /// Passive-health ejections, by endpoint.
    pub ejections: Family<EndpointLabels, Counter>,
    /// 1 while an endpoint passes its active health checks (always 1 without them).
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    /// Retries sent, by upstream.
    pub retries: Family<UpstreamLabel, Counter>,
}

impl UpstreamMetrics {
    /// Create the families and register them.
    pub fn register(reg: &mut Registry) -> Self {
        UpstreamMetrics {
            endpoint_requests: add(
                reg,
                "upstream_endpoint_requests",
                "Attempts sent to each upstream endpoint",
                Family::default(),
            ),
            endpoint_failures: add(
                reg,
                "upstream_endpoint_failures",
                "Connect failures and 5xx answers by upstream endpoint",
                Family::default(),
            ),
            ejections: add(
                reg,
                "upstream_ejections",
                "Upstream endpoints ejected after consecutive failures",
                Family::default(),
            ),
            endpoint_healthy: add(
                reg,
                "upstream_endpoint_healthy",
                "1 while an upstream endpoint passes its active health checks",
                Family::default(),
            ),
            retries: add(
                reg,
                "upstream_retries",
                "Retries sent to an upstream",
                Family::default(),
            ),
        }
    }
}

/// The policy host's families.
pub struct PolicyMetrics {
    /// Policy verdicts by plugin, route, verdict and mode.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Time spent evaluating one plugin, by plugin.
    pub eval_duration: Family<PluginLabel, Histogram, fn() -> Histogram>,
    /// Plugin traps, by plugin.
    pub traps: Family<PluginLabel, Counter>,
    /// Plugin deadline hits, by plugin.
    pub deadline_hits: Family<PluginLabel, Counter>,
    /// Plugin memory-limit hits, by plugin.
    pub memory_limit_hits: Family<PluginLabel, Counter>,
}

impl PolicyMetrics {
    /// Create the families and register them.
    pub fn register(reg: &mut Registry) -> Self {
        // 0.5 µs .. ~8 s: a warm call is about a microsecond.
        let eval: Family<PluginLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_000_5, 2.0, 24))
            });
        PolicyMetrics {
            verdicts: add(
                reg,
                "policy_verdicts",
                "Policy verdicts by plugin, route, verdict and mode",
                Family::default(),
            ),
            eval_duration: add(
                reg,
                "plugin_eval_duration_seconds",
                "Time spent evaluating one plugin",
                eval,
            ),
            traps: add(reg, "plugin_traps", "Plugin traps", Family::default()),
            deadline_hits: add(
                reg,
                "plugin_deadline_hits",
                "Plugin evaluations stopped at their deadline",
                Family::default(),
            ),
            memory_limit_hits: add(
                reg,
                "plugin_memory_limit_hits",
                "Plugin evaluations stopped at their memory limit",
                Family::default(),
            ),
        }
    }
}

/// The secret store's families.
pub struct SecretMetrics {
    /// Successful secret refreshes, by provider.
    pub refresh_success: Family<ProviderLabel, Counter>,
    /// Failed secret refreshes, by provider and kind of failure.
    pub refresh_failure: Family<ProviderFailureLabels, Counter>,
    /// Unix time of the last successful refresh, by provider.
    pub last_success: Family<ProviderLabel, Gauge>,
    /// Seconds since the oldest value of each provider was last read successfully; set
    /// when `/metrics` is scraped.
    pub age: Family<ProviderLabel, Gauge>,
    /// Seconds since each reference was last read successfully; set when `/metrics` is
    /// scraped.
    pub reference_age: Family<ReferenceLabels, Gauge>,
}

impl SecretMetrics {
    /// Create the families and register them.
    pub fn register(reg: &mut Registry) -> Self {
        SecretMetrics {
            refresh_success: add(
                reg,
                "secret_refresh_success",
                "Successful secret refreshes by provider",
                Family::default(),
            ),
            refresh_failure: add(
                reg,
                "secret_refresh_failure",
                "Failed secret refreshes by provider and reason (unavailable, not_found, invalid)",
                Family::default(),
            ),
            last_success: add(
                reg,
                "secret_last_success_timestamp_seconds",
                "Unix time of the last successful secret refresh by provider",
                Family::default(),
            ),
            age: add(
                reg,
                "secret_age_seconds",
                "Seconds since the last successful refresh, by provider (oldest value)",
                Family::default(),
            ),
            reference_age: add(
                reg,
                "secret_reference_age_seconds",
                "Seconds since each secret reference was last read successfully (names only)",
                Family::default(),
            ),
        }
    }
}

/// The configuration lifecycle's families.
pub struct ConfigMetrics {
    /// Config reloads applied or refused.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last reload applied, 0 when it was refused.
    pub last_reload_successful: Gauge,
    /// Unix time of the last applied reload (or of the start).
    pub last_reload_success: Gauge,
    /// `notAfter` of each certificate in use, Unix seconds.
    pub certificate_not_after: Family<CertificateLabel, Gauge>,
    /// Configuration generations alive: the current one plus those still finishing
    /// requests. Flat over time unless something holds an old generation.
    pub generations: Gauge,
}

impl ConfigMetrics {
    /// Create the families and register them.
    pub fn register(reg: &mut Registry) -> Self {
        ConfigMetrics {
            reloads: add(
                reg,
                "reloads",
                "Configuration reloads by result",
                Family::default(),
            ),
            last_reload_successful: add(
                reg,
                "config_last_reload_successful",
                "1 when the last reload applied, 0 when it was refused",
                Gauge::default(),
            ),
            last_reload_success: add(
                reg,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last applied configuration (reload or start)",
                Gauge::default(),
            ),
            certificate_not_after: add(
                reg,
                "tls_certificate_not_after_timestamp_seconds",
                "Expiry (notAfter) of each certificate in use",
                Family::default(),
            ),
            generations: add(
                reg,
                "config_generations",
                "Configuration generations alive (current plus those finishing requests)",
                Gauge::default(),
            ),
        }
    }
}

/// Every metric family the gateway exports, registered per component.
pub struct Metrics {
    registry: Registry,
    /// The proxy's.
    pub proxy: ProxyMetrics,
    /// Upstream endpoints' and retries'.
    pub upstream: UpstreamMetrics,
    /// The policy host's.
    pub policy: PolicyMetrics,
    /// The secret store's.
    pub secrets: SecretMetrics,
    /// The configuration lifecycle's.
    pub config: ConfigMetrics,
    started: Instant,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let proxy = ProxyMetrics::register(&mut registry);
        let upstream = UpstreamMetrics::register(&mut registry);
        let policy = PolicyMetrics::register(&mut registry);
        // The rate limiter's families live with it (its counters are process-wide, like
        // its buckets); only their registration happens here.
        crate::policy::ratelimit::RateLimiter::register(&mut registry);
        let secrets = SecretMetrics::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        let version = vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
        registry.register("build", "Build information", Info::new(version));
        Metrics {
            registry,
            proxy,
            upstream,
            policy,
            secrets,
            config,
            started: Instant::now(),
        }
    }

    /// Render every family as Prometheus text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        // The process families go before the closing `# EOF`.
        let body_end = out.rfind("# EOF").unwrap_or(out.len());
        out.insert_str(body_end, &process_metrics());
        out
    }

    /// Seconds since the process started.
    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// `process_*` metrics (Prometheus' process-collector conventions), read from `/proc` at
/// scrape time and appended to the text exposition.
pub fn process_metrics() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces;
    // `field(n)` is field n of proc(5), counted from 1.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok());
    // OpenMetrics: a counter family is named without `_total`, its sample with it.
    let mut emit = |name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let sample = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let _ = writeln!(
                out,
                "# TYPE {name} {kind}\n# HELP {name} {help}\n{sample} {v}"
            );
        }
    };
    emit(
        "process_cpu_seconds",
        "counter",
        "Total user and system CPU time spent in seconds.",
        field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks),
    );
    emit(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        boot.zip(field(22)).map(|(b, st)| b + st / ticks),
    );
    emit(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field(24).map(|pages| pages * page),
    );
    emit(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        field(23),
    );
    emit(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
    );
    out
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

/// Where access-log lines go. Each proxy worker appends its lines to a buffer of its own
/// and hands the whole buffer over when it reaches [`ACCESS_BATCH`] bytes or when the
/// worker's flush timer fires, the way nginx's `access_log … buffer= flush=` works; one
/// writer thread writes each batch to stderr with one call. The hand-over never waits: if
/// stderr cannot keep up (a full pipe or disk) and [`ACCESS_QUEUE`] batches are waiting,
/// the batch is dropped and counted in `warden_access_log_dropped_total`.
struct AccessOut {
    queue: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<Vec<u8>>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    format: LogFormat,
}

/// A worker hands its buffer over at this size.
pub const ACCESS_BATCH: usize = 64 * 1024;
/// Batches waiting for the writer before new ones are dropped (at most 16 MiB).
const ACCESS_QUEUE: usize = 256;
/// How often a worker hands over a partly filled buffer.
pub const ACCESS_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

static ACCESS_OUT: OnceLock<AccessOut> = OnceLock::new();

thread_local! {
    static ACCESS_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Append one access-log line: `render` writes it (with its newline) into the calling
/// worker's buffer. Threads that are not proxy workers have no flush timer, so their lines
/// go out at once.
pub fn write_access_line(render: impl FnOnce(&mut String)) {
    let full = ACCESS_BUF.with_borrow_mut(|buf| {
        render(buf);
        buf.len() >= ACCESS_BATCH || crate::worker::index() == 0
    });
    if full {
        flush_access_log();
    }
}

/// Hand the calling thread's buffered access-log lines to the writer (the worker's flush
/// timer, a full buffer, and a worker's last act before it ends).
pub fn flush_access_log() {
    let batch = ACCESS_BUF.with_borrow_mut(|buf| {
        if buf.is_empty() {
            return None;
        }
        Some(std::mem::replace(buf, String::with_capacity(ACCESS_BATCH + 1024)).into_bytes())
    });
    let Some(batch) = batch else { return };
    let Some(out) = ACCESS_OUT.get() else {
        // No logging set up (library use, unit tests): straight to stderr.
        use std::io::Write;
        let _ = std::io::stderr().write_all(&batch);
        return;
    };
    let queue = out.queue.lock().unwrap_or_else(|p| p.into_inner());
    let sent = match queue.as_ref() {
        Some(q) => q.try_send(batch),
        // The writer has been shut down: nothing is left to take it.
        None => Err(std::sync::mpsc::TrySendError::Disconnected(batch)),
    };
    if let Err(
        std::sync::mpsc::TrySendError::Full(b) | std::sync::mpsc::TrySendError::Disconnected(b),
    ) = sent
    {
        let lines = b.iter().filter(|&&c| c == b'\n').count();
        metrics().proxy.access_log_dropped.inc_by(lines as u64);
    }
}

/// Ends the access-log writer when dropped: every batch handed over is written first.
pub struct LogGuard {
    _process: tracing_appender::non_blocking::WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_access_log();
        if let Some(out) = ACCESS_OUT.get() {
            out.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = out.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = w.join();
            }
        }
    }
}

fn start_access_writer(format: LogFormat) {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(ACCESS_QUEUE);
    let writer = std::thread::Builder::new()
        .name("warden-access".into())
        .spawn(move || {
            for batch in rx {
                // One locked write per batch of whole lines: never interleaved with a
                // line of the process log, which writes through the same lock.
                let _ = std::io::stderr().lock().write_all(&batch);
            }
        })
        .ok();
    let _ = ACCESS_OUT.set(AccessOut {
        queue: std::sync::Mutex::new(writer.as_ref().map(|_| tx)),
        writer: std::sync::Mutex::new(writer),
        format,
    });
}

/// The process log's format (`--log-format`), the access log's default.
pub fn process_log_format() -> LogFormat {
    ACCESS_OUT
        .get()
        .map(|o| o.format)
        .unwrap_or(LogFormat::Human)
}

/// Install the global tracing subscriber. Filtering follows `RUST_LOG` (default `info`).
///
/// Lines are handed to a writer thread: a synchronous `write` per access-log line on the
/// worker that serves the request cost more than the rest of the proxying. Nothing is
/// dropped: when the writer falls behind, logging waits. Keep the returned guard alive for
/// the life of the process; dropping it flushes what is buffered.
pub fn init_logging(format: LogFormat) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    // The Vault client libraries log every failed call at ERROR on their own; the secrets
    // module already reports each failure once, with the provider name.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,vaultrs=off,rustify=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // The queue's slots are all written when it is made: the default 128,000 lines
        // would keep 4 MiB resident for a diagnostic log that queues a handful. A burst
        // past this many lines waits for the writer; none is dropped.
        .buffered_lines_limit(8192)
        .thread_name("warden-log")
        // Buffered: the writer thread drains every line queued since its last write into
        // one `write`, and flushes whenever the queue is empty, so a busy proxy makes one
        // system call per batch instead of per line, and a quiet one still writes each line
        // at once. The guard flushes at exit.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    start_access_writer(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard { _process: guard }
}
