//! Configuration: strict TOML in two stages.
//!
//! Stage one deserializes each item (an upstream, a route, a plugin, a provider) on its
//! own with serde, so that one bad item does not hide the errors of the others. Stage two
//! validates meaning across items (a route names an upstream that exists, a reference
//! names a provider that exists …). Every error names its file, line and dotted key; lines
//! come from the spans of the TOML parser, looked up by key path.
//!
//! The gateway config may `include` policy files (routes and plugins only), so a security
//! team can own `policies/` without touching listeners, upstreams or secret providers.

pub mod field;
pub mod headers;
pub mod observe;
mod source;

use std::collections::{BTreeMap, HashSet};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::http::normalize::{self, EscapedSlashes, PathParams, PathRules};
use crate::policy::{PluginConfig, PolicyConfig, PolicySettings};
use crate::secrets::{ProviderConfig, SecretRef, Template};
pub use field::{ConfigError, ConfigErrors, FieldError, de, parse_duration, parse_size};
pub use headers::{HeaderRules, HeaderRulesConfig};
pub use observe::{
    AccessField, AccessFormat, AccessLogConfig, LogConfig, OtlpConfig, TelemetryConfig,
};
pub use source::SourceMap;

// ---------------------------------------------------------------------------------------
// Raw (serde) types: exactly what the TOML says.
// ---------------------------------------------------------------------------------------

/// `[gateway]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Proxy listener address.
    pub listen: SocketAddr,
    /// Downstream TLS; plaintext (HTTP/1.1 and h2c) without it.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Proxy worker threads, each with its own runtime, listener and upstream pools
    /// (default: one per CPU).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Peers whose `X-Forwarded-*` headers are kept and extended rather than replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a client may take to send a full request head.
    #[serde(
        default = "defaults::header_read_timeout",
        deserialize_with = "de::duration"
    )]
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer; HTTP/2 header list size).
    #[serde(default = "defaults::max_header_bytes", deserialize_with = "de::size")]
    pub max_header_bytes: u64,
    /// Most request headers accepted.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Default request body limit for routes without their own `max_body`.
    #[serde(default = "defaults::max_body", deserialize_with = "de::size")]
    pub max_body: u64,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(
        default = "defaults::shutdown_grace",
        deserialize_with = "de::duration"
    )]
    pub shutdown_grace: Duration,
    /// HTTP/2 server limits.
    #[serde(default)]
    pub http2: Http2Limits,
    /// Merge repeated slashes in request paths (`/a//b` → `/a/b`).
    #[serde(default = "defaults::yes")]
    pub merge_slashes: bool,
    /// `%2F` / `%5C` in a path: "reject" (400, default) or "keep".
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// `;` path parameters: "reject" (400, default) or "keep".
    #[serde(default)]
    pub path_params: PathParams,
    /// `X-HTTP-Method-Override` and its variants: "strip" (default) or "keep".
    #[serde(default)]
    pub method_override: MethodOverride,
    /// Forward `TRACE` (never on a route that injects secrets). Off by default: an
    /// upstream answering TRACE reflects the request, injected credentials included.
    #[serde(default)]
    pub allow_trace: bool,
    /// Header names treated as credentials besides `authorization`,
    /// `proxy-authorization`, `cookie` and `x-api-key`: a literal value injected into one
    /// is refused unless `allow_literal = true`, and `GET /config` masks it.
    #[serde(default)]
    pub sensitive_headers: Vec<String>,
}

impl GatewayConfig {
    /// The path normalization rules these settings choose.
    pub fn path_rules(&self) -> PathRules {
        PathRules {
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.escaped_slashes,
            path_params: self.path_params,
        }
    }

    /// Whether `name` is a credential header: one of the well-known ones or a name in
    /// `sensitive_headers` (case-insensitive).
    pub fn is_credential_header(&self, name: &str) -> bool {
        CREDENTIAL_HEADERS
            .iter()
            .copied()
            .chain(self.sensitive_headers.iter().map(String::as_str))
            .any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// Headers that carry credentials whatever the deployment.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// Method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodOverride {
    /// Remove them before policies run (default): a GET-only policy means nothing to an
    /// upstream that turns a GET into the DELETE a header asks for.
    #[default]
    Strip,
    /// Forward them.
    Keep,
}

/// What a route does with an upgrade to a protocol it does not allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisallowedUpgrade {
    /// Forward the request as a plain request without `Upgrade` (default).
    #[default]
    Strip,
    /// Refuse it with 400.
    Reject,
}

/// `[gateway.http2]`: explicit HTTP/2 limits (flood and abuse protection).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// Streams reset by the client before we accepted them, before the connection is closed
    /// (CVE-2023-44487, "rapid reset").
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of client errors, before the connection is closed.
    pub max_local_error_reset_streams: usize,
    /// Keep-alive ping interval; idle connections that do not answer are closed.
    #[serde(deserialize_with = "de::opt_duration")]
    pub keep_alive_interval: Option<Duration>,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 256,
            max_pending_accept_reset_streams: 32,
            max_local_error_reset_streams: 256,
            keep_alive_interval: Some(Duration::from_secs(30)),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub fn dns_refresh() -> Duration {
        Duration::from_secs(5)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn upgrades() -> Vec<String> {
        vec!["websocket".to_string()]
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_header_bytes() -> u64 {
        64 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_body() -> u64 {
        16 * 1024 * 1024
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn upstream_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn admin_listen() -> std::net::SocketAddr {
        "127.0.0.1:9901".parse().expect("valid literal")
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle() -> usize {
        64
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn two() -> u32 {
        2
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_budget() -> String {
        "20%".into()
    }
    pub fn retry_backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub fn retry_buffer() -> u64 {
        64 << 10
    }
}

/// Client-certificate policy for downstream TLS.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates requested.
    #[default]
    Off,
    /// Requested and verified when presented.
    Optional,
    /// Connections without a valid client certificate are refused.
    Required,
}

/// `[gateway.tls]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates are verified against.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// off | optional | required.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// `[admin]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener address (loopback by default).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token for state-changing endpoints, usually a secret reference. Without it
    /// the POST endpoints are off.
    #[serde(default)]
    pub token: Option<String>,
    /// What `/readyz` means: "serving" (default) or "strict".
    #[serde(default)]
    pub readiness: Readiness,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::admin_listen(),
            token: None,
            readiness: Readiness::default(),
        }
    }
}

/// What `/readyz` answers 200 for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// This replica can serve: the first snapshot is active and the listeners are open.
    /// A secret provider past `max_stale` fails only the routes that need it, so one
    /// secret source cannot take every replica out of a load balancer at once.
    #[default]
    Serving,
    /// Also every secret reference is resolved and none is past `max_stale`.
    Strict,
}

/// `Host` header sent upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// The upstream URL's authority (default).
    #[default]
    Upstream,
    /// The client's `Host`, unchanged.
    Preserve,
    /// A fixed value.
    Fixed(String),
}

impl<'de> Deserialize<'de> for HostHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "upstream" => HostHeader::Upstream,
            "preserve" => HostHeader::Preserve,
            _ => HostHeader::Fixed(s),
        })
    }
}

/// `[upstreams.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` or `https://host:port`, optionally with a base path.
    #[serde(default)]
    pub url: Option<String>,
    /// Several endpoints instead of `url`; they share the scheme, TLS settings and base
    /// path.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// How endpoints are chosen.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Passive health: endpoints that keep failing are ejected for a while.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Retries beyond the default (one retry, on another endpoint when there is one, after
    /// a connect failure, or after a reset before the response head for idempotent
    /// methods); the default for this upstream's routes.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Speak HTTP/2 to this upstream (ALPN over TLS, prior knowledge over plaintext).
    #[serde(default)]
    pub http2: bool,
    /// TCP + TLS connect timeout.
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "de::duration"
    )]
    pub connect_timeout: Duration,
    /// Default time to the response head for routes to this upstream.
    #[serde(
        default = "defaults::upstream_timeout",
        deserialize_with = "de::duration"
    )]
    pub timeout: Duration,
    /// `Host` sent upstream: "upstream" (default), "preserve", or a fixed value.
    #[serde(default)]
    pub host_header: HostHeader,
    /// TLS settings for https upstreams.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// Connection pool.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Headers injected into every request to this upstream (routes may override).
    #[serde(default)]
    pub inject: BTreeMap<String, String>,
    /// Accept literal (non-`${…}`) values for credential headers in `inject`.
    #[serde(default)]
    pub allow_literal: bool,
    /// Headers set, added or removed on requests to this upstream (routes add theirs).
    #[serde(default)]
    pub request_headers: HeaderRulesConfig,
    /// Headers set, added or removed on responses from this upstream.
    #[serde(default)]
    pub response_headers: HeaderRulesConfig,
    /// How often host names in `url`/`endpoints` are resolved again; every address is
    /// an endpoint.
    #[serde(default = "defaults::dns_refresh", deserialize_with = "de::duration")]
    pub dns_refresh: Duration,
}

impl UpstreamConfig {
    /// The endpoint URLs: `url` alone, or `endpoints`.
    pub fn urls(&self) -> Vec<&str> {
        match &self.url {
            Some(u) => vec![u.as_str()],
            None => self.endpoints.iter().map(String::as_str).collect(),
        }
    }
}

/// How an upstream's endpoints share requests.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The less busy of two endpoints picked at random (power of two choices).
    LeastRequest,
}

/// `health = { path = "/healthz", interval = "2s", … }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path probed with GET; a 2xx is healthy.
    pub path: String,
    /// Time between probes.
    #[serde(
        default = "defaults::health_interval",
        deserialize_with = "de::duration"
    )]
    pub interval: Duration,
    /// A probe slower than this failed.
    #[serde(
        default = "defaults::health_timeout",
        deserialize_with = "de::duration"
    )]
    pub timeout: Duration,
    /// Failed probes in a row that take an endpoint out.
    #[serde(default = "defaults::two")]
    pub unhealthy_after: u32,
    /// Passed probes in a row that bring it back.
    #[serde(default = "defaults::two")]
    pub healthy_after: u32,
}

/// `outlier = { consecutive_failures = 5, base_ejection = "2s", max_ejection = "30s" }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Connect failures or 5xx in a row that eject an endpoint (0: never).
    pub consecutive_failures: u32,
    /// First ejection; each further one in a row doubles it.
    #[serde(deserialize_with = "de::duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(deserialize_with = "de::duration")]
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// `retry = { attempts = 2, on = ["connect-failure", "reset", "503"], budget = "20%",
/// backoff = "25ms", buffer = "64KiB" }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts after the first.
    #[serde(default = "defaults::retry_attempts")]
    pub attempts: u32,
    /// What is retried: `connect-failure` (always, whatever the method), and for
    /// idempotent methods `reset` and status codes such as `"503"`.
    #[serde(default)]
    pub on: Vec<String>,
    /// Retries allowed as a share of requests, e.g. `"20%"`.
    #[serde(default = "defaults::retry_budget")]
    pub budget: String,
    /// Pause before a retry.
    #[serde(default = "defaults::retry_backoff", deserialize_with = "de::duration")]
    pub backoff: Duration,
    /// Request bodies up to this size are buffered so they can be sent again; larger
    /// ones stream and are never replayed.
    #[serde(default = "defaults::retry_buffer", deserialize_with = "de::size")]
    pub buffer: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            // As nginx's `proxy_next_upstream error timeout`: a request that never got a
            // response head from a broken connection goes once to another endpoint when
            // its method is idempotent (a connect failure whatever the method).
            attempts: 1,
            on: vec!["connect-failure".into(), "reset".into()],
            budget: defaults::retry_budget(),
            backoff: Duration::ZERO,
            buffer: defaults::retry_buffer(),
        }
    }
}

impl RetryConfig {
    /// Problems, keys relative to the `retry` table.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.attempts > 5 {
            errs.push(FieldError::new("attempts", "must be at most 5"));
        }
        for (i, on) in self.on.iter().enumerate() {
            let ok = matches!(on.as_str(), "connect-failure" | "reset")
                || on.parse::<u16>().is_ok_and(|c| (500..=599).contains(&c));
            if !ok {
                errs.push(FieldError::new(
                    format!("on[{i}]"),
                    format!("{on:?}: expected \"connect-failure\", \"reset\" or a 5xx status such as \"503\""),
                ));
            }
        }
        if self.budget_ratio().is_none() {
            errs.push(FieldError::new(
                "budget",
                "expected a percentage between 0% and 100%, e.g. \"20%\"",
            ));
        }
        errs
    }

    /// The budget as a ratio (`"20%"` → 0.2).
    pub fn budget_ratio(&self) -> Option<f64> {
        let n: f64 = self.budget.trim().strip_suffix('%')?.trim().parse().ok()?;
        (0.0..=100.0).contains(&n).then_some(n / 100.0)
    }
}

/// Connection pool settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle connections are closed after this.
    #[serde(deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    /// Most idle connections kept per endpoint and worker (0: a connection per request).
    pub max_idle: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: defaults::pool_idle_timeout(),
            max_idle: defaults::pool_max_idle(),
        }
    }
}

/// `[upstreams.NAME.tls]`.
#[derive(Clone, Debug, Deserialize, Default, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Extra CA bundle (PEM) trusted besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name to verify the certificate against (and send as SNI).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate chain for mTLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Client key for mTLS.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Trust only `ca_file`, not the system roots.
    #[serde(default)]
    pub no_system_roots: bool,
}

/// `match = { … }` of a route.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`); port ignored.
    #[serde(default)]
    pub host: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix, matched on segment boundaries (`/v1` matches `/v1` and `/v1/x`, not `/v10`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Allowed methods (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
}

/// `[[routes]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name (used in metrics, logs and plugin input).
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// Upstream name.
    pub upstream: String,
    /// Time to the upstream response head (default: the upstream's `timeout`).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub timeout: Option<Duration>,
    /// Request body limit (default: `[gateway].max_body`).
    #[serde(default, deserialize_with = "de::opt_size")]
    pub max_body: Option<u64>,
    /// Headers injected upstream, usually with secret references.
    #[serde(default)]
    pub inject: BTreeMap<String, String>,
    /// Accept literal (non-`${…}`) values for credential headers in `inject`.
    #[serde(default)]
    pub allow_literal: bool,
    /// Upgrade protocols forwarded to the upstream (`[]` turns upgrades off). `h2c` never is.
    #[serde(default = "defaults::upgrades")]
    pub upgrades: Vec<String>,
    /// An upgrade to any other protocol: "strip" (forward as a plain request, default) or
    /// "reject" (400).
    #[serde(default)]
    pub on_disallowed_upgrade: DisallowedUpgrade,
    /// Ordered policy chain.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Overrides the upstream's `retry`.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Cut a streamed response that sends no bytes for this long.
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Cap on the whole exchange, streamed body included.
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub max_duration: Option<Duration>,
    /// Headers set, added or removed on requests (after the upstream's rules).
    #[serde(default)]
    pub request_headers: HeaderRulesConfig,
    /// Headers set, added or removed on every response of this route.
    #[serde(default)]
    pub response_headers: HeaderRulesConfig,
}

/// How a validated route matches requests.
#[derive(Clone, Debug, Default)]
pub struct RouteMatcher {
    /// Exact host or `*.suffix`, as written (validated).
    pub host: Option<String>,
    /// Exact path, normalized form.
    pub path: Option<String>,
    /// Path prefix, normalized form.
    pub path_prefix: Option<String>,
    /// Allowed methods (any when empty).
    pub methods: Vec<http::Method>,
}

/// A validated route (stage two of the config): typed values, and where it was defined.
/// The router and the snapshot build from this and cannot fail on it.
#[derive(Clone, Debug)]
pub struct Route {
    /// Where the route was defined, for errors found later (plugin `configure`, secrets).
    pub at: ItemSource,
    /// Unique route name.
    pub name: String,
    /// What requests this route takes.
    pub matcher: RouteMatcher,
    /// Upstream name (exists).
    pub upstream: String,
    /// Time to the upstream response head (default: the upstream's `timeout`).
    pub timeout: Option<Duration>,
    /// Request body limit (default: `[gateway].max_body`).
    pub max_body: Option<u64>,
    /// The route's own injected headers, names lower case (the upstream's come first and
    /// are overridden by these).
    pub inject: Vec<(http::HeaderName, Template)>,
    /// Upgrade protocols forwarded, lower case.
    pub upgrades: Vec<String>,
    /// What an upgrade to any other protocol gets.
    pub on_disallowed_upgrade: DisallowedUpgrade,
    /// Ordered policy chain.
    pub policies: Vec<PolicyConfig>,
    /// Overrides the upstream's `retry`.
    pub retry: Option<RetryConfig>,
    /// Cut a streamed response that sends no bytes for this long.
    pub idle_timeout: Option<Duration>,
    /// Cap on the whole exchange, streamed body included.
    pub max_duration: Option<Duration>,
    /// The route's own request header rules (applied after the upstream's).
    pub request_headers: HeaderRules,
    /// The route's own response header rules (applied after the upstream's).
    pub response_headers: HeaderRules,
}

impl Route {
    /// Stage two: the typed route. Only what validation accepted is kept, so a partially
    /// valid config (`warden check`) still builds.
    fn typed(r: RouteConfig, at: ItemSource) -> Route {
        let m = r.matcher;
        Route {
            at,
            name: r.name,
            matcher: RouteMatcher {
                host: m.host,
                path: m.path,
                path_prefix: m.path_prefix,
                methods: m
                    .methods
                    .iter()
                    .filter_map(|s| http::Method::from_bytes(s.as_bytes()).ok())
                    .collect(),
            },
            upstream: r.upstream,
            timeout: r.timeout,
            max_body: r.max_body,
            inject: typed_inject(&r.inject),
            upgrades: r.upgrades.iter().map(|p| p.to_ascii_lowercase()).collect(),
            on_disallowed_upgrade: r.on_disallowed_upgrade,
            policies: r.policies,
            retry: r.retry,
            idle_timeout: r.idle_timeout,
            max_duration: r.max_duration,
            request_headers: HeaderRules::parse(&r.request_headers).unwrap_or_default(),
            response_headers: HeaderRules::parse(&r.response_headers).unwrap_or_default(),
        }
    }
}

/// `inject` tables as typed pairs: header names lower case, templates parsed. Entries
/// validation refused are left out.
pub fn typed_inject(raw: &BTreeMap<String, String>) -> Vec<(http::HeaderName, Template)> {
    raw.iter()
        .filter_map(|(h, v)| {
            let name = http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()?;
            Some((name, Template::parse(v).ok()?))
        })
        .collect()
}

/// A fully loaded and validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The main config file.
    pub path: PathBuf,
    /// Directory of the main config file: relative paths in it are resolved from here.
    pub base_dir: PathBuf,
    /// Every file read (main + includes), for the reload watcher.
    pub files: Vec<PathBuf>,
    /// SHA-256 over all files read, hex.
    pub content_hash: String,
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[secrets.*]`.
    pub secrets: BTreeMap<String, ProviderConfig>,
    /// `[policy]`.
    pub policy: PolicySettings,
    /// `[plugins.*]`, file paths resolved.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[upstreams.*]`, file paths resolved.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[[routes]]` from the main file then each include, in order, validated.
    pub routes: Vec<Route>,
    /// Where each plugin was defined.
    pub plugin_sources: BTreeMap<String, ItemSource>,
    /// Source maps of every file, by index in `files`.
    pub sources: Vec<Arc<SourceMap>>,
}

/// Where an item was defined: a file and the key path of the item in that file.
#[derive(Clone, Debug)]
pub struct ItemSource {
    /// Index into [`Config::sources`].
    pub file: usize,
    /// Key path of the item within its file (`routes[3]`, `plugins.api-key`).
    pub key: String,
}

impl Config {
    /// Turn a [`FieldError`] about an item into a located [`ConfigError`].
    pub fn locate(&self, item: &ItemSource, e: FieldError) -> ConfigError {
        self.sources[item.file].error(&join_key(&item.key, &e.key), e.reason)
    }

    /// Locate an error by a key path in the main file.
    pub fn locate_main(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        self.sources[0].error(key, reason.into())
    }

    /// Every secret reference the config uses, deduplicated, in a stable order.
    pub fn secret_refs(&self) -> Vec<SecretRef> {
        let mut out: Vec<SecretRef> = self
            .templates()
            .into_iter()
            .flat_map(|(_, _, t)| t.refs())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The templates of the main file written as plain strings (admin token, upstream
    /// `inject`), unparsed, with where they are: (file index, key, text).
    fn header_templates(&self) -> Vec<(usize, String, &str)> {
        let mut out: Vec<(usize, String, &str)> = Vec::new();
        if let Some(t) = &self.admin.token {
            out.push((0, "admin.token".into(), t));
        }
        for (name, u) in &self.upstreams {
            for (h, v) in &u.inject {
                out.push((0, format!("upstreams.{name}.inject.{h}"), v));
            }
        }
        out
    }

    /// Every template in the config with where it is: (file index, key, parsed template).
    /// Only templates that parse are returned; `load` has already reported the others.
    pub fn templates(&self) -> Vec<(usize, String, Template)> {
        let mut out: Vec<(usize, String, Template)> = self
            .header_templates()
            .into_iter()
            .filter_map(|(file, key, text)| Template::parse(text).ok().map(|t| (file, key, t)))
            .collect();
        for r in &self.routes {
            for (h, t) in &r.inject {
                out.push((r.at.file, format!("{}.inject.{h}", r.at.key), t.clone()));
            }
            for (i, p) in r.policies.iter().enumerate() {
                for (k, t) in p.secret_templates().0 {
                    out.push((r.at.file, format!("{}.policies[{i}].{k}", r.at.key), t));
                }
            }
        }
        out
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

/// Top-level keys of the main config file.
const MAIN_KEYS: &[&str] = &[
    "include",
    "gateway",
    "admin",
    "secrets",
    "policy",
    "plugins",
    "upstreams",
    "routes",
    "telemetry",
    "log",
];
/// Top-level keys allowed in an included policy file.
const INCLUDE_KEYS: &[&str] = &["plugins", "routes"];

/// Load and validate a config file and its includes. Returns every error found.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match load_partial(path) {
        (Some(cfg), errors) if errors.is_empty() => Ok(cfg),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Like [`load`], but also returns what could be loaded when there are errors (items that
/// failed are left out), so `warden check` can go on to check plugins and secret
/// references and report every independent error in one run. `None` when the main file
/// itself cannot be read or parsed.
pub fn load_partial(path: &Path) -> (Option<Config>, Vec<ConfigError>) {
    let mut loader = Loader::default();
    let cfg = loader.load(path);
    (cfg, loader.errors)
}

#[derive(Default)]
struct Loader {
    errors: Vec<ConfigError>,
    sources: Vec<Arc<SourceMap>>,
    /// Providers whose table failed to parse: their own error says what is wrong, so a
    /// reference to them must not add "unknown provider" on top.
    broken_providers: HashSet<String>,
}

impl Loader {
    fn read(&mut self, path: &Path) -> Option<(usize, toml::Table)> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.errors.push(ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: String::new(),
                    reason: format!("cannot read file: {e}"),
                });
                return None;
            }
        };
        let (map, parsed) = SourceMap::parse(path, text);
        let idx = self.sources.len();
        self.sources.push(Arc::new(map));
        match parsed {
            Ok(table) => Some((idx, table)),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    fn err(&mut self, file: usize, key: &str, reason: impl Into<String>) {
        let e = self.sources[file].error(key, reason.into());
        self.errors.push(e);
    }

    /// Deserialize one item; on error record it with its location.
    fn item<T: DeserializeOwned>(
        &mut self,
        file: usize,
        key: &str,
        value: toml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = clean_serde_message(&e.inner().to_string());
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                self.err(file, &join_key(key, &path), inner);
                None
            }
        }
    }

    fn table_items(
        &mut self,
        file: usize,
        key: &str,
        value: Option<toml::Value>,
    ) -> Vec<(String, toml::Value)> {
        match value {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => t.into_iter().collect(),
            Some(_) => {
                self.err(file, key, "expected a table");
                Vec::new()
            }
        }
    }

    fn array_items(
        &mut self,
        file: usize,
        key: &str,
        value: Option<toml::Value>,
    ) -> Vec<toml::Value> {
        match value {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                self.err(file, key, "expected an array of tables ([[routes]])");
                Vec::new()
            }
        }
    }

    fn load(&mut self, path: &Path) -> Option<Config> {
        // Absolute, so that every relative path resolved against it stays valid whatever
        // the working directory of whoever resolves it later.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (main, mut table) = self.read(&path)?;
        for key in table.keys() {
            if !MAIN_KEYS.contains(&key.as_str()) {
                self.err(
                    main,
                    key,
                    format!("unknown key; expected one of: {}", MAIN_KEYS.join(", ")),
                );
            }
        }

        let gateway = match table.remove("gateway") {
            Some(v) => self.item::<GatewayConfig>(main, "gateway", v),
            None => {
                self.err(main, "", "missing [gateway] table (at least `listen`)");
                None
            }
        };
        let admin = match table.remove("admin") {
            Some(v) => self.item::<AdminConfig>(main, "admin", v),
            None => Some(AdminConfig::default()),
        };
        let telemetry = match table.remove("telemetry") {
            Some(v) => self
                .item::<TelemetryConfig>(main, "telemetry", v)
                .unwrap_or_default(),
            None => TelemetryConfig::default(),
        };
        let log = match table.remove("log") {
            Some(v) => self.item::<LogConfig>(main, "log", v).unwrap_or_default(),
            None => LogConfig::default(),
        };
        let policy = match table.remove("policy") {
            Some(v) => self.item::<PolicySettings>(main, "policy", v),
            None => Some(PolicySettings::default()),
        };
        let mut secrets = BTreeMap::new();
        for (name, v) in self.table_items(main, "secrets", table.remove("secrets")) {
            let key = format!("secrets.{name}");
            match self.item::<ProviderConfig>(main, &key, v) {
                Some(mut p) => {
                    p.resolve_paths(&base_dir);
                    for fe in p.check() {
                        self.err(main, &join_key(&key, &fe.key), fe.reason);
                    }
                    secrets.insert(name, p);
                }
                None => {
                    self.broken_providers.insert(name);
                }
            }
        }
        let mut upstreams = BTreeMap::new();
        for (name, v) in self.table_items(main, "upstreams", table.remove("upstreams")) {
            let key = format!("upstreams.{name}");
            if let Some(mut u) = self.item::<UpstreamConfig>(main, &key, v) {
                if let Some(tls) = &mut u.tls {
                    resolve_opt(&base_dir, &mut tls.ca_file);
                    resolve_opt(&base_dir, &mut tls.client_cert_file);
                    resolve_opt(&base_dir, &mut tls.client_key_file);
                }
                upstreams.insert(name, u);
            }
        }
        let mut gateway = gateway;
        if let Some(g) = &mut gateway
            && let Some(tls) = &mut g.tls
        {
            tls.cert_file = base_dir.join(&tls.cert_file);
            tls.key_file = base_dir.join(&tls.key_file);
            resolve_opt(&base_dir, &mut tls.client_ca_file);
        }

        let mut plugins = BTreeMap::new();
        let mut plugin_sources = BTreeMap::new();
        let mut routes: Vec<(RouteConfig, ItemSource)> = Vec::new();
        let plugin_values = table.remove("plugins");
        let route_values = table.remove("routes");
        self.collect_policy_items(
            main,
            &base_dir,
            plugin_values,
            route_values,
            (&mut plugins, &mut plugin_sources),
            &mut routes,
        );

        // Includes: policy files with routes and plugins, relative to the main file.
        let includes = match table.remove("include") {
            None => Vec::new(),
            Some(v) => self
                .item::<Vec<PathBuf>>(main, "include", v)
                .unwrap_or_default(),
        };
        let mut files = vec![path.clone()];
        for (i, inc) in includes.iter().enumerate() {
            let inc_path = base_dir.join(inc);
            if files.contains(&inc_path) {
                self.err(
                    main,
                    &format!("include[{i}]"),
                    format!("{} is included twice", inc.display()),
                );
                continue;
            }
            let Some((file, mut t)) = self.read(&inc_path) else {
                continue;
            };
            files.push(inc_path.clone());
            for key in t.keys() {
                if !INCLUDE_KEYS.contains(&key.as_str()) {
                    self.err(
                        file,
                        key,
                        "not allowed in an included policy file (only [plugins.*] and [[routes]]); define it in the gateway config",
                    );
                }
            }
            let inc_dir = inc_path.parent().map(Path::to_path_buf).unwrap_or_default();
            let pv = t.remove("plugins");
            let rv = t.remove("routes");
            self.collect_policy_items(
                file,
                &inc_dir,
                pv,
                rv,
                (&mut plugins, &mut plugin_sources),
                &mut routes,
            );
        }

        let content_hash = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for s in &self.sources {
                ctx.update(s.text.as_bytes());
            }
            hex::encode(ctx.finish())
        };

        // A section that failed to parse is replaced by its defaults so that the rest of
        // the file is still validated and every error is reported in one pass; the
        // recorded errors make `load` fail regardless.
        let gateway = gateway.unwrap_or_else(|| GatewayConfig {
            listen: "127.0.0.1:0".parse().expect("valid literal"),
            tls: None,
            worker_threads: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: defaults::header_read_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_body: defaults::max_body(),
            shutdown_grace: defaults::shutdown_grace(),
            http2: Http2Limits::default(),
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
            path_params: PathParams::default(),
            method_override: MethodOverride::default(),
            allow_trace: false,
            sensitive_headers: Vec::new(),
        });
        let admin = admin.unwrap_or_default();
        let policy = policy.unwrap_or_default();
        let mut cfg = Config {
            path,
            base_dir,
            files,
            content_hash,
            gateway,
            admin,
            secrets,
            policy,
            plugins,
            upstreams,
            telemetry,
            log,
            routes: Vec::new(),
            plugin_sources,
            sources: self.sources.clone(),
        };
        self.validate(&cfg, &routes);
        cfg.routes = routes
            .into_iter()
            .map(|(r, at)| Route::typed(r, at))
            .collect();
        Some(cfg)
    }

    #[allow(clippy::type_complexity)]
    fn collect_policy_items(
        &mut self,
        file: usize,
        dir: &Path,
        plugin_values: Option<toml::Value>,
        route_values: Option<toml::Value>,
        (plugins, plugin_sources): (
            &mut BTreeMap<String, PluginConfig>,
            &mut BTreeMap<String, ItemSource>,
        ),
        routes: &mut Vec<(RouteConfig, ItemSource)>,
    ) {
        for (name, v) in self.table_items(file, "plugins", plugin_values) {
            let key = format!("plugins.{name}");
            if let Some(prev) = plugin_sources.get(&name) {
                let prev_file = self.sources[prev.file].path.display().to_string();
                self.err(
                    file,
                    &key,
                    format!("plugin {name:?} is already defined in {prev_file}"),
                );
                continue;
            }
            if let Some(mut p) = self.item::<PluginConfig>(file, &key, v) {
                p.resolve_paths(dir);
                plugins.insert(name.clone(), p);
                plugin_sources.insert(name, ItemSource { file, key });
            }
        }
        for (i, v) in self
            .array_items(file, "routes", route_values)
            .into_iter()
            .enumerate()
        {
            let key = format!("routes[{i}]");
            if let Some(r) = self.item::<RouteConfig>(file, &key, v) {
                routes.push((r, ItemSource { file, key }));
            }
        }
    }

    /// Cross-item validation, on the raw routes (the typed ones are built from what this
    /// accepts).
    fn validate(&mut self, cfg: &Config, routes: &[(RouteConfig, ItemSource)]) {
        let mut errs: Vec<ConfigError> = Vec::new();
        let main = &cfg.sources[0];

        if let Some(tls) = &cfg.gateway.tls
            && tls.client_auth != ClientAuth::Off
            && tls.client_ca_file.is_none()
        {
            errs.push(main.error(
                "gateway.tls.client_ca_file",
                "client_auth needs a client_ca_file to verify against".into(),
            ));
        }
        for (i, h) in cfg.gateway.sensitive_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(main.error(
                    &format!("gateway.sensitive_headers[{i}]"),
                    format!("{h:?} is not a valid header name"),
                ));
            }
        }
        for fe in cfg.policy.check() {
            errs.push(main.error(&join_key("policy", &fe.key), fe.reason));
        }
        if let Some(o) = &cfg.telemetry.otlp {
            for fe in o.check() {
                errs.push(main.error(&join_key("telemetry.otlp", &fe.key), fe.reason));
            }
        }
        for fe in cfg.log.access.check() {
            errs.push(main.error(&join_key("log.access", &fe.key), fe.reason));
        }
        if cfg.admin.listen == cfg.gateway.listen && cfg.gateway.listen.port() != 0 {
            errs.push(main.error("admin.listen", "must differ from gateway.listen".into()));
        }

        for (name, u) in &cfg.upstreams {
            let key = format!("upstreams.{name}");
            let urls = u.urls();
            let url_key = if u.url.is_some() {
                format!("{key}.url")
            } else {
                format!("{key}.endpoints")
            };
            match (&u.url, u.endpoints.is_empty()) {
                (Some(_), false) => {
                    errs.push(main.error(&key, "set either url or endpoints, not both".into()))
                }
                (None, true) => errs.push(main.error(
                    &key,
                    "missing url (or endpoints = [\"http://…\", …])".into(),
                )),
                _ => {}
            }
            let mut shape: Option<(String, String)> = None;
            for (i, url) in urls.iter().enumerate() {
                let ukey = if u.url.is_some() {
                    url_key.clone()
                } else {
                    format!("{url_key}[{i}]")
                };
                match url.parse::<http::Uri>() {
                    Ok(uri) => {
                        let scheme = uri.scheme_str().unwrap_or("");
                        if scheme != "http" && scheme != "https" {
                            errs.push(main.error(
                                &ukey,
                                format!("scheme must be http or https, got {url:?}"),
                            ));
                        }
                        if uri.host().is_none() {
                            errs.push(main.error(&ukey, "missing host".into()));
                        }
                        if uri.query().is_some() {
                            errs.push(main.error(&ukey, "must not have a query string".into()));
                        }
                        if scheme == "http" && u.tls.is_some() {
                            errs.push(main.error(
                                &format!("{key}.tls"),
                                "tls settings need an https:// url".into(),
                            ));
                        }
                        let this = (
                            scheme.to_string(),
                            uri.path().trim_end_matches('/').to_string(),
                        );
                        match &shape {
                            None => shape = Some(this),
                            Some(first) if *first != this => errs.push(main.error(
                                &ukey,
                                "every endpoint must have the same scheme and base path".into(),
                            )),
                            Some(_) => {}
                        }
                    }
                    Err(e) => errs.push(main.error(&ukey, format!("invalid URL: {e}"))),
                }
            }
            if let Some(h) = &u.health {
                if !h.path.starts_with('/') {
                    errs.push(
                        main.error(&format!("{key}.health.path"), "must start with /".into()),
                    );
                }
                if h.interval.is_zero() || h.timeout.is_zero() {
                    errs.push(main.error(
                        &format!("{key}.health"),
                        "interval and timeout must be greater than zero".into(),
                    ));
                }
                if h.unhealthy_after == 0 || h.healthy_after == 0 {
                    errs.push(main.error(
                        &format!("{key}.health"),
                        "unhealthy_after and healthy_after must be at least 1".into(),
                    ));
                }
            }
            if let Some(r) = &u.retry {
                for fe in r.check() {
                    errs.push(main.error(&join_key(&format!("{key}.retry"), &fe.key), fe.reason));
                }
            }
            if let Some(tls) = &u.tls {
                if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                    errs.push(main.error(
                        &format!("{key}.tls"),
                        "client_cert_file and client_key_file go together".into(),
                    ));
                }
                if let Some(sn) = &tls.server_name
                    && rustls_pki_types::ServerName::try_from(sn.as_str()).is_err()
                {
                    errs.push(main.error(
                        &format!("{key}.tls.server_name"),
                        format!("{sn:?} is not a valid DNS name or IP"),
                    ));
                }
            }
            for (field, rules) in [
                ("request_headers", &u.request_headers),
                ("response_headers", &u.response_headers),
            ] {
                if let Err(list) = HeaderRules::parse(rules) {
                    for fe in list {
                        errs.push(main.error(&format!("{key}.{field}.{}", fe.key), fe.reason));
                    }
                }
            }
            if u.dns_refresh < Duration::from_millis(100) {
                errs.push(main.error(
                    &format!("{key}.dns_refresh"),
                    "must be at least 100ms".into(),
                ));
            }
            for (h, v) in &u.inject {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errs.push(main.error(
                        &format!("{key}.inject.{h}"),
                        "not a valid header name".into(),
                    ));
                } else if let Some(reason) = literal_credential(&cfg.gateway, h, v, u.allow_literal)
                {
                    errs.push(main.error(&format!("{key}.inject.{h}"), reason));
                }
            }
        }

        let mut names = HashSet::new();
        for (r, src) in routes {
            let map = &cfg.sources[src.file];
            let k = |s: &str| join_key(&src.key, s);
            if r.name.is_empty() {
                errs.push(map.error(&k("name"), "must not be empty".into()));
            } else if !names.insert(r.name.clone()) {
                errs.push(map.error(&k("name"), format!("duplicate route name {:?}", r.name)));
            }
            if !cfg.upstreams.contains_key(&r.upstream) {
                let known: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
                errs.push(map.error(
                    &k("upstream"),
                    format!(
                        "unknown upstream {:?} (defined: {})",
                        r.upstream,
                        list_or_none(&known)
                    ),
                ));
            }
            let m = &r.matcher;
            if m.path.is_some() && m.path_prefix.is_some() {
                errs.push(map.error(
                    &k("match"),
                    "use either path or path_prefix, not both".into(),
                ));
            }
            for (field, p) in [
                ("match.path", &m.path),
                ("match.path_prefix", &m.path_prefix),
            ] {
                // Requests are matched in normalized form, so a pattern must be written in
                // it too: a pattern no normalized path can equal would silently never match.
                if let Some(p) = p
                    && let Err(e) = normalize::check_pattern(p)
                {
                    errs.push(map.error(&k(field), e));
                }
            }
            for (i, meth) in m.methods.iter().enumerate() {
                if http::Method::from_bytes(meth.as_bytes()).is_err()
                    || meth.to_ascii_uppercase() != *meth
                {
                    errs.push(map.error(
                        &k(&format!("match.methods[{i}]")),
                        format!("{meth:?} is not an upper-case HTTP method"),
                    ));
                }
            }
            if let Some(h) = &m.host {
                let name = h.strip_prefix("*.").unwrap_or(h);
                let after_literal = match name.strip_prefix('[') {
                    Some(v6) => v6.split_once(']').map(|(_, rest)| rest).unwrap_or(""),
                    None => name,
                };
                if after_literal.contains(':') || normalize::normalize_host(name).is_err() {
                    errs.push(map.error(
                        &k("match.host"),
                        format!("{h:?} is not a host name (write `api.example.com` or `*.example.com`, no port)"),
                    ));
                }
            }
            for (i, proto) in r.upgrades.iter().enumerate() {
                let key = k(&format!("upgrades[{i}]"));
                if proto.is_empty()
                    || !proto
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
                {
                    errs.push(map.error(&key, format!("{proto:?} is not a protocol name")));
                } else if proto.eq_ignore_ascii_case("h2c")
                    || proto.to_ascii_lowercase().starts_with("h2c/")
                {
                    errs.push(map.error(
                        &key,
                        "h2c upgrades are never forwarded: Warden serves h2c itself, with prior knowledge".into(),
                    ));
                }
            }
            for h in r.inject.keys() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errs.push(
                        map.error(&k(&format!("inject.{h}")), "not a valid header name".into()),
                    );
                } else if crate::http::is_hop_by_hop(h) || h.eq_ignore_ascii_case("host") {
                    errs.push(map.error(
                        &k(&format!("inject.{h}")),
                        "cannot inject a hop-by-hop or Host header".into(),
                    ));
                }
            }
            for (h, v) in &r.inject {
                if let Some(reason) = literal_credential(&cfg.gateway, h, v, r.allow_literal) {
                    errs.push(map.error(&k(&format!("inject.{h}")), reason));
                }
            }
            if let Some(retry) = &r.retry {
                for fe in retry.check() {
                    errs.push(map.error(&k(&join_key("retry", &fe.key)), fe.reason));
                }
            }
            // Injected credentials are the one thing header rules may not touch: a rule
            // could otherwise remove, replace or duplicate them.
            let injected: Vec<String> = r
                .inject
                .keys()
                .map(|h| h.to_ascii_lowercase())
                .chain(
                    cfg.upstreams
                        .get(&r.upstream)
                        .into_iter()
                        .flat_map(|u| u.inject.keys().map(|h| h.to_ascii_lowercase())),
                )
                .collect();
            for (field, rules) in [
                ("request_headers", &r.request_headers),
                ("response_headers", &r.response_headers),
            ] {
                match HeaderRules::parse(rules) {
                    Err(list) => {
                        for fe in list {
                            errs.push(map.error(&k(&format!("{field}.{}", fe.key)), fe.reason));
                        }
                    }
                    Ok(typed) if field == "request_headers" => {
                        let up = cfg
                            .upstreams
                            .get(&r.upstream)
                            .and_then(|u| HeaderRules::parse(&u.request_headers).ok())
                            .unwrap_or_default();
                        for n in typed.names().chain(up.names()) {
                            if injected.iter().any(|i| i == n.as_str()) {
                                errs.push(map.error(
                                    &k(field),
                                    format!("{n} is injected on this route; header rules cannot change it"),
                                ));
                            }
                        }
                    }
                    Ok(_) => {}
                }
            }
            for (i, p) in r.policies.iter().enumerate() {
                if !cfg.plugins.contains_key(&p.plugin) {
                    let known: Vec<&str> = cfg.plugins.keys().map(String::as_str).collect();
                    errs.push(map.error(
                        &k(&format!("policies[{i}].plugin")),
                        format!(
                            "unknown plugin {:?} (defined: {})",
                            p.plugin,
                            list_or_none(&known)
                        ),
                    ));
                }
            }
        }

        // Secret references: syntax everywhere, provider names known.
        let templates = cfg.header_templates();
        for (file, key, text) in templates {
            match Template::parse(text) {
                Err(e) => errs.push(cfg.sources[file].error(&key, e.to_string())),
                Ok(t) => {
                    for e in self.validate_refs(cfg, &t.refs()) {
                        errs.push(cfg.sources[file].error(&key, e.to_string()));
                    }
                }
            }
        }
        for (r, src) in routes {
            for (h, text) in &r.inject {
                let key = format!("{}.inject.{h}", src.key);
                match Template::parse(text) {
                    Err(e) => errs.push(cfg.sources[src.file].error(&key, e.to_string())),
                    Ok(t) => {
                        for e in self.validate_refs(cfg, &t.refs()) {
                            errs.push(cfg.sources[src.file].error(&key, e.to_string()));
                        }
                    }
                }
            }
            for (i, p) in r.policies.iter().enumerate() {
                let prefix = format!("{}.policies[{i}]", src.key);
                let (templates, parse_errs) = p.secret_templates();
                for fe in parse_errs {
                    errs.push(cfg.sources[src.file].error(&join_key(&prefix, &fe.key), fe.reason));
                }
                for (key, t) in templates {
                    for e in self.validate_refs(cfg, &t.refs()) {
                        errs.push(
                            cfg.sources[src.file].error(&join_key(&prefix, &key), e.to_string()),
                        );
                    }
                }
            }
        }
        self.errors.extend(errs);
    }
}

/// Why a value injected into header `name` is refused as a literal credential, if it is:
/// a credential written into the config is readable by everyone who can read the config
/// (its repository, `GET /config`, backups), where a reference is not.
fn literal_credential(
    g: &GatewayConfig,
    name: &str,
    value: &str,
    allow_literal: bool,
) -> Option<String> {
    if allow_literal || !g.is_credential_header(name) {
        return None;
    }
    match Template::parse(value) {
        Ok(t) if t.is_literal() => Some(format!(
            "a literal value for the credential header {name:?}; write a secret reference instead, e.g. \"${{file:{}}}\" or \"Bearer ${{vault:path#key}}\" (or set allow_literal = true beside inject)",
            name.to_ascii_lowercase()
        )),
        _ => None,
    }
}

impl Loader {
    /// [`crate::secrets::validate_refs`], less the references to a provider whose own
    /// table failed to parse (already reported there).
    fn validate_refs(&self, cfg: &Config, refs: &[SecretRef]) -> Vec<crate::secrets::SecretsError> {
        crate::secrets::validate_refs(&cfg.secrets, refs)
            .into_iter()
            .filter(|e| !matches!(e, crate::secrets::SecretsError::UnknownProvider { provider, .. } if self.broken_providers.contains(provider)))
            .collect()
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn resolve_opt(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(path) = p {
        *path = base.join(&*path);
    }
}

/// serde messages from the TOML value deserializer sometimes carry a trailing newline or
/// a "TOML parse error" preamble; keep the operator-facing part.
fn clean_serde_message(s: &str) -> String {
    s.trim().trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const MIN: &str = r#"
[gateway]
listen = "127.0.0.1:0"

[upstreams.api]
url = "http://127.0.0.1:8000"

[[routes]]
name = "all"
match = { path_prefix = "/" }
upstream = "api"
"#;

    #[test]
    fn minimal_config_loads() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "w.toml", MIN);
        let cfg = load(&p).unwrap();
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.gateway.max_body, 16 * 1024 * 1024);
        assert_eq!(cfg.upstreams["api"].connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn every_error_is_listed_with_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let text = r#"
[gateway]
listen = "127.0.0.1:0"
bogus = 1

[upstreams.api]
url = "ftp://x"
connect_timeout = "soon"

[[routes]]
name = "a"
upstream = "nope"

[[routes]]
name = "b"
upstream = "api"
match = { methods = ["get"] }
"#;
        let p = write(d.path(), "w.toml", text);
        let errs = load(&p).unwrap_err().0;
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let find = |needle: &str| {
            errs.iter()
                .find(|e| e.key == needle)
                .unwrap_or_else(|| panic!("no error for {needle} in {shown:#?}"))
        };
        assert_eq!(find("gateway.bogus").line, Some(4));
        assert_eq!(find("upstreams.api.connect_timeout").line, Some(8));
        assert_eq!(find("routes[0].upstream").line, Some(12));
        assert_eq!(find("routes[1].match.methods[0]").line, Some(17));
        assert!(
            find("routes[0].upstream")
                .reason
                .contains("unknown upstream \"nope\"")
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "w.toml",
            "[gateway]\nlisten = \"127.0.0.1:0\"\nfoo = [\n",
        );
        let errs = load(&p).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].line.is_some(), "{:?}", errs[0]);
    }

    #[test]
    fn includes_add_routes_and_refuse_other_sections() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("policies")).unwrap();
        write(
            d.path(),
            "policies/p.toml",
            "[[routes]]\nname = \"inc\"\nupstream = \"api\"\n\n[gateway]\nlisten = \"127.0.0.1:1\"\n",
        );
        let p = write(
            d.path(),
            "w.toml",
            &format!("include = [\"policies/p.toml\"]\n{MIN}"),
        );
        let errs = load(&p).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].file.ends_with("policies/p.toml"));
        assert_eq!(errs[0].key, "gateway");
        assert_eq!(errs[0].line, Some(5));

        write(
            d.path(),
            "policies/p.toml",
            "[[routes]]\nname = \"inc\"\nupstream = \"api\"\n",
        );
        let cfg = load(&p).unwrap();
        assert_eq!(cfg.routes.len(), 2);
        assert_eq!(cfg.files.len(), 2);
    }
}
