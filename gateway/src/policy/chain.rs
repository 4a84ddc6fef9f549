//! A route's ordered policy chain: configuration, the warm-instance pool, evaluation and
//! verdict validation.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use std::time::Instant;

use crate::telemetry::{Counter, Histogram};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use wasmtime::Store;

use super::config::{Isolation, Mode, OnError, PolicyConfig, SENSITIVE_HEADERS};
use super::host::{
    Contract, DeadlineExceeded, LoadedPlugin, PluginSet, PolicyHost, Pre, StoreState, bindings,
};
use crate::config::field::FieldError;
use crate::http::ClientInfo;
use crate::inspect::{BodyConfig, BodyRules};
use crate::secrets::{SecretBytes, SecretSnapshot, Template};
use crate::telemetry::{PluginLabel, VerdictLabels, metrics};

use bindings::v1::warden::policy::types as wit1;
use bindings::v2::warden::policy::types as wit2;

/// What a plugin sees of a request.
pub struct PolicyRequest<'a> {
    /// Route name.
    pub route: &'a str,
    /// Method.
    pub method: &'a http::Method,
    /// Path.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Request headers (sensitive ones are filtered per policy grants).
    pub headers: &'a http::HeaderMap,
    /// The client.
    pub client: &'a ClientInfo,
    /// The buffered, checked body, on routes with a body phase.
    pub body: Option<&'a Bytes>,
}

/// Header changes from a chain that allowed. Apply `remove_headers`, then `set_headers`
/// (the chain has already resolved conflicts between policies in chain order).
#[derive(Debug, Default)]
pub struct Changes {
    /// Request headers to set (replace).
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Request headers to remove.
    pub remove_headers: Vec<HeaderName>,
    /// Response headers to add.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// A replacement request body (body phase only); the last replacement wins.
    pub body: Option<Bytes>,
}

impl Changes {
    fn merge(&mut self, other: Changes) {
        for name in other.remove_headers {
            self.set_headers.retain(|(n, _)| *n != name);
            if !self.remove_headers.contains(&name) {
                self.remove_headers.push(name);
            }
        }
        for (name, value) in other.set_headers {
            self.remove_headers.retain(|n| *n != name);
            self.set_headers.retain(|(n, _)| *n != name);
            self.set_headers.push((name, value));
        }
        self.response_headers.extend(other.response_headers);
        if other.body.is_some() {
            self.body = other.body;
        }
    }
}

/// Outcome of one plugin's evaluation and of a whole chain: the one verdict type.
#[derive(Debug)]
pub enum Decision {
    /// Forward, with changes.
    Allow(Changes),
    /// Answer directly.
    Deny {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
        /// Headers.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// The per-route policy chain.
#[derive(Default)]
pub struct Chain {
    entries: Vec<Entry>,
    /// The route's body phase, shared by every policy that asked for it.
    body: Option<BodyRules>,
    /// The largest response any policy inspects; `None` without a response phase.
    response_max: Option<u64>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.plugin.name))
            .finish()
    }
}

/// One policy of a chain.
struct Entry {
    host: Arc<PolicyHost>,
    plugin: Arc<LoadedPlugin>,
    route: Arc<str>,
    mode: Mode,
    on_error: OnError,
    config_json: String,
    granted_headers: Vec<String>,
    granted_secrets: Arc<[String]>,
    secrets: Vec<(String, Template)>,
    /// The body phase's limit, when this policy sees the request body.
    body_max: Option<u64>,
    /// Largest response this policy inspects, when it has the response phase.
    response_max: Option<u64>,
    /// Warm instances, one pool per proxy worker: an instance is taken and given back by
    /// the thread that runs it, so the lock is never contended.
    pool: crate::worker::PerWorker<Mutex<Vec<Warm>>>,
    metrics: EntryMetrics,
}

struct EntryMetrics {
    allow: Counter,
    deny: Counter,
    error: Counter,
    duration: Histogram,
    traps: Counter,
    deadline: Counter,
    memory: Counter,
}

/// A configured instance.
struct Warm {
    store: Store<StoreState>,
    plugin: Instance,
    uses: u64,
}

/// An instance of either contract.
enum Instance {
    V1(bindings::v1::PolicyPlugin),
    V2(bindings::v2::PolicyPlugin),
}

/// Why a plugin evaluation produced no usable verdict.
#[derive(Debug)]
enum Failure {
    Deadline,
    Memory,
    Trap(String),
    Invalid(String),
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory_limit",
            Failure::Trap(_) => "trap",
            Failure::Invalid(_) => "invalid_verdict",
        }
    }
}

impl Chain {
    /// Build one route's chain: resolve plugin names, check grants, and call each plugin's
    /// `configure` with its config (async: guest code yields at epoch ticks, so a slow
    /// `configure` never blocks a runtime worker). Errors are keyed relative to the route, e.g.
    /// `policies[0].config.allow[1]`.
    pub async fn build(
        set: &PluginSet,
        route: &str,
        policies: &[PolicyConfig],
    ) -> Result<Chain, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut entries = Vec::new();
        let mut body: Option<BodyRules> = None;
        let mut body_config: Option<BodyConfig> = None;
        let mut response_max: Option<u64> = None;
        let route: Arc<str> = Arc::from(route);
        for (i, p) in policies.iter().enumerate() {
            let at = |k: &str| {
                if k.is_empty() {
                    format!("policies[{i}]")
                } else {
                    format!("policies[{i}].{k}")
                }
            };
            let Some(plugin) = set.plugins.get(&p.plugin) else {
                let known: Vec<&str> = set.names().collect();
                errs.push(FieldError::new(
                    at("plugin"),
                    format!(
                        "unknown plugin {:?} (configured: {})",
                        p.plugin,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
                continue;
            };
            if plugin.contract == Contract::V1 {
                for (key, set) in [
                    ("body", p.body.is_some()),
                    ("response_body", p.response_body.is_some()),
                ] {
                    if set {
                        errs.push(FieldError::new(
                            at(key),
                            format!(
                                "plugin {:?} is built against warden:policy@0.1.0, which passes no bodies; rebuild it with a 0.2 warden-sdk",
                                plugin.name
                            ),
                        ));
                    }
                }
            }
            if let Some(b) = &p.body {
                match &body_config {
                    None => match BodyRules::new(b) {
                        Ok(rules) => {
                            body = Some(rules);
                            body_config = Some(b.clone());
                        }
                        Err(list) => errs.extend(list.into_iter().map(|e| e.prefixed(&at("body")))),
                    },
                    // One body is forwarded, so every policy must agree on what it accepts.
                    Some(first) if first != b => errs.push(FieldError::new(
                        at("body"),
                        "policies on one route share one body phase: give every `body` table on this route the same settings",
                    )),
                    Some(_) => {}
                }
            }
            if let Some(r) = &p.response_body {
                errs.extend(
                    r.check()
                        .into_iter()
                        .map(|e| e.prefixed(&at("response_body"))),
                );
                response_max = response_max.max(Some(r.max));
            }
            let mut granted_headers = Vec::new();
            for (j, h) in p.headers.iter().enumerate() {
                let lower = h.to_ascii_lowercase();
                if SENSITIVE_HEADERS.contains(&lower.as_str()) {
                    granted_headers.push(lower);
                } else {
                    errs.push(FieldError::new(
                        at(&format!("headers[{j}]")),
                        format!(
                            "{h:?} is not withheld from plugins, so it needs no grant (only {} do)",
                            SENSITIVE_HEADERS.join(", ")
                        ),
                    ));
                }
            }
            let (secrets, secret_errs) = p.secret_templates();
            errs.extend(
                secret_errs
                    .into_iter()
                    .map(|e| FieldError::new(at(&e.key), e.reason)),
            );
            let secrets: Vec<(String, Template)> = secrets
                .into_iter()
                .map(|(k, t)| (k.trim_start_matches("secrets.").to_string(), t))
                .collect();
            let config_json = match serde_json::to_string(&p.config) {
                Ok(j) => j,
                Err(e) => {
                    errs.push(FieldError::new(
                        at("config"),
                        format!("cannot pass to the plugin: {e}"),
                    ));
                    continue;
                }
            };
            let plabel = PluginLabel {
                plugin: plugin.name.clone(),
            };
            let vlabel = |verdict: &str| VerdictLabels {
                plugin: plugin.name.clone(),
                route: route.to_string(),
                verdict: verdict.into(),
                mode: p.mode.label().into(),
            };
            let m = metrics();
            // One statement per family: `get_or_create` returns a read guard, and a second
            // call on the same family while the first guard lives (as in one struct
            // literal) waits for a write lock forever.
            let allow = m.policy.verdicts.get_or_create(&vlabel("allow")).clone();
            let deny = m.policy.verdicts.get_or_create(&vlabel("deny")).clone();
            let error = m.policy.verdicts.get_or_create(&vlabel("error")).clone();
            let duration = m.policy.eval_duration.get_or_create(&plabel).clone();
            let traps = m.policy.traps.get_or_create(&plabel).clone();
            let deadline = m.policy.deadline_hits.get_or_create(&plabel).clone();
            let memory = m.policy.memory_limit_hits.get_or_create(&plabel).clone();
            let entry_metrics = EntryMetrics {
                allow,
                deny,
                error,
                duration,
                traps,
                deadline,
                memory,
            };
            let entry = Entry {
                host: set.host.clone(),
                plugin: plugin.clone(),
                route: route.clone(),
                mode: p.mode,
                on_error: p.on_error,
                config_json,
                granted_headers,
                granted_secrets: secrets.iter().map(|(n, _)| n.clone()).collect(),
                secrets,
                body_max: p.body.as_ref().map(|b| b.max),
                response_max: p.response_body.as_ref().map(|r| r.max),
                pool: crate::worker::PerWorker::new(|_| Mutex::new(Vec::new())),
                metrics: entry_metrics,
            };
            // Configure one instance now, so a bad config is refused here (check, start,
            // reload) rather than on the first request. Keep it warm for pooled plugins, in
            // the first worker's pool: this runs on the control thread, whose own slot no
            // request ever reaches.
            match entry.instantiate().await {
                Ok(Ok(warm)) => {
                    if entry.plugin.config.isolation == Isolation::Pooled {
                        entry
                            .pool
                            .for_worker(1)
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(warm);
                    }
                    entries.push(entry);
                }
                Ok(Err(config_errors)) => {
                    for (key, reason) in config_errors {
                        let key = if key.is_empty() {
                            "config".to_string()
                        } else {
                            format!("config.{key}")
                        };
                        errs.push(FieldError::new(at(&key), reason));
                    }
                }
                Err(f) => errs.push(FieldError::new(
                    at("config"),
                    format!(
                        "plugin {:?} failed while checking its config ({}): {}",
                        plugin.name,
                        f.kind(),
                        describe(&f)
                    ),
                )),
            }
        }
        if errs.is_empty() {
            Ok(Chain {
                entries,
                body,
                response_max,
            })
        } else {
            Err(errs)
        }
    }

    /// True when the route has no policies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The route's body phase, if any policy on it asked for the body.
    pub fn body(&self) -> Option<&BodyRules> {
        self.body.as_ref()
    }

    /// The largest response a policy on this route inspects; `None` without a response
    /// phase.
    pub fn response_max(&self) -> Option<u64> {
        self.response_max
    }

    /// Evaluate the chain: the first enforce-mode deny wins, allow changes accumulate,
    /// shadow policies are evaluated and counted but never block or change anything, and a
    /// plugin failure is the policy's `on_error`.
    pub async fn evaluate(&self, req: &PolicyRequest<'_>, secrets: &SecretSnapshot) -> Decision {
        self.evaluate_with(req, secrets, &mut Report::default())
            .await
    }

    /// [`Chain::evaluate`], telling `report` which plugin decided and, when
    /// `report.steps` is `Some`, what each plugin did and when.
    pub async fn evaluate_with(
        &self,
        req: &PolicyRequest<'_>,
        secrets: &SecretSnapshot,
        report: &mut Report,
    ) -> Decision {
        let mut changes = Changes::default();
        // A policy that replaced the body hands the next one what will be forwarded.
        let mut body: Option<Bytes> = req.body.cloned();
        for e in &self.entries {
            let started = report.steps.is_some().then(Instant::now);
            let result = e.evaluate(req, body.as_ref(), secrets).await;
            let verdict = match &result {
                Ok(Decision::Allow(_)) => {
                    e.metrics.allow.inc();
                    "allow"
                }
                Ok(Decision::Deny { .. }) => {
                    e.metrics.deny.inc();
                    "deny"
                }
                Err(_) => {
                    e.metrics.error.inc();
                    "error"
                }
            };
            if let (Some(steps), Some(started)) = (report.steps.as_mut(), started) {
                steps.push(Step {
                    plugin: e.plugin.name.clone(),
                    verdict,
                    mode: e.mode.label(),
                    started,
                    took: started.elapsed(),
                });
            }
            if e.mode == Mode::Shadow {
                match &result {
                    Ok(Decision::Allow(_)) => {
                        tracing::debug!(route = %e.route, plugin = %e.plugin.name, "shadow policy allowed")
                    }
                    Ok(Decision::Deny { status, .. }) => tracing::info!(
                        route = %e.route, plugin = %e.plugin.name, status = status.as_u16(),
                        "shadow policy would have denied this request"
                    ),
                    Err(_) => {}
                }
                continue;
            }
            match result {
                Ok(Decision::Allow(c)) => {
                    if let Some(b) = &c.body {
                        body = Some(b.clone());
                    }
                    changes.merge(c)
                }
                Ok(deny @ Decision::Deny { .. }) => {
                    report.decided_by = Some(e.plugin.name.clone());
                    return deny;
                }
                Err(_) if e.on_error == OnError::Allow => continue,
                Err(_) => {
                    report.decided_by = Some(e.plugin.name.clone());
                    return e.error_response(StatusCode::SERVICE_UNAVAILABLE);
                }
            }
        }
        Decision::Allow(changes)
    }

    /// Run the response phase over a buffered JSON response of `body.len()` bytes: each
    /// policy with `response_body` whose `max` fits inspects it in chain order and may
    /// replace it. `Ok(None)` keeps the response; `Err` is the response to send instead
    /// when a fail-closed policy failed (502).
    pub async fn evaluate_response(
        &self,
        req: &PolicyRequest<'_>,
        secrets: &SecretSnapshot,
        status: StatusCode,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Result<Option<Bytes>, Decision> {
        let mut current: Option<Bytes> = None;
        for e in &self.entries {
            if e.response_max.is_none_or(|m| body.len() as u64 > m) {
                continue;
            }
            let seen = current.as_ref().unwrap_or(body);
            let result = e
                .evaluate_response(req, secrets, status, headers, seen)
                .await;
            match result {
                Ok(replaced) if e.mode == Mode::Enforce => {
                    if replaced.is_some() {
                        current = replaced;
                    }
                }
                Ok(replaced) => {
                    if replaced.is_some() {
                        tracing::info!(route = %e.route, plugin = %e.plugin.name, "shadow policy would have replaced this response");
                    }
                }
                Err(_) if e.on_error == OnError::Allow || e.mode == Mode::Shadow => {}
                // The upstream's answer cannot go out unchecked, and it is not the client's
                // fault: 502.
                Err(_) => return Err(e.error_response(StatusCode::BAD_GATEWAY)),
            }
        }
        Ok(current)
    }
}

/// What a chain's evaluation did beyond its verdict: for the access log and for spans.
#[derive(Debug, Default)]
pub struct Report {
    /// The plugin that ended the chain: it denied, or it failed on a fail-closed route.
    pub decided_by: Option<String>,
    /// Each plugin's step, collected only when `Some` (the request is traced).
    pub steps: Option<Vec<Step>>,
}

/// One plugin's evaluation.
#[derive(Debug)]
pub struct Step {
    /// Plugin name.
    pub plugin: String,
    /// `allow`, `deny` or `error`.
    pub verdict: &'static str,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// When it started.
    pub started: Instant,
    /// How long it took.
    pub took: std::time::Duration,
}

impl Entry {
    /// A fresh, configured instance. The outer error is a plugin failure, the inner one
    /// the plugin's own config errors.
    async fn instantiate(&self) -> Result<Result<Warm, Vec<(String, String)>>, Failure> {
        let mut store = self.host.new_store(
            &self.plugin,
            self.route.clone(),
            self.granted_secrets.clone(),
        );
        let tick = self.host.settings.epoch_tick;
        store
            .data_mut()
            .arm_deadline(self.plugin.config.limits.configure_deadline, tick);
        let secrets: Vec<&str> = self.granted_secrets.iter().map(String::as_str).collect();
        let granted: Vec<&str> = self.granted_headers.iter().map(String::as_str).collect();
        let configured = match &self.plugin.pre {
            Pre::V1(pre) => {
                let plugin = match pre.instantiate_async(&mut store).await {
                    Ok(p) => p,
                    Err(e) => return Err(classify(&store, e)),
                };
                let setup = wit1::Setup {
                    route: &self.route,
                    secrets: &secrets,
                    granted_headers: &granted,
                };
                plugin
                    .warden_policy_policy()
                    .call_configure(&mut store, setup, &self.config_json)
                    .await
                    .map(|r| {
                        r.map(|()| Instance::V1(plugin))
                            .map_err(|errs| errs.into_iter().map(|e| (e.key, e.reason)).collect())
                    })
            }
            Pre::V2(pre) => {
                let plugin = match pre.instantiate_async(&mut store).await {
                    Ok(p) => p,
                    Err(e) => return Err(classify(&store, e)),
                };
                let body_max = self.body_max;
                let setup = wit2::Setup {
                    route: &self.route,
                    secrets: &secrets,
                    granted_headers: &granted,
                    body_max,
                    response_phase: self.response_max.is_some(),
                };
                plugin
                    .warden_policy_policy()
                    .call_configure(&mut store, setup, &self.config_json)
                    .await
                    .map(|r| {
                        r.map(|()| Instance::V2(plugin))
                            .map_err(|errs| errs.into_iter().map(|e| (e.key, e.reason)).collect())
                    })
            }
        };
        match configured {
            Ok(Ok(plugin)) => Ok(Ok(Warm {
                store,
                plugin,
                uses: 0,
            })),
            Ok(Err(errs)) => Ok(Err(errs)),
            Err(e) => Err(classify(&store, e)),
        }
    }

    async fn evaluate(
        &self,
        req: &PolicyRequest<'_>,
        body: Option<&Bytes>,
        secrets: &SecretSnapshot,
    ) -> Result<Decision, Failure> {
        let start = Instant::now();
        let result = self.run(Call::Request { req, body, secrets }).await;
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        self.count_failure(&result);
        match result {
            Ok(Outcome::Request(d)) => Ok(d),
            Ok(Outcome::Response(_)) => unreachable!("a request call yields a request outcome"),
            Err(f) => Err(f),
        }
    }

    async fn evaluate_response(
        &self,
        req: &PolicyRequest<'_>,
        secrets: &SecretSnapshot,
        status: StatusCode,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Result<Option<Bytes>, Failure> {
        let start = Instant::now();
        let result = self
            .run(Call::Response {
                req,
                secrets,
                status,
                headers,
                body,
            })
            .await;
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        self.count_failure(&result);
        match result {
            Ok(Outcome::Response(r)) => Ok(r),
            Ok(Outcome::Request(_)) => unreachable!("a response call yields a response outcome"),
            Err(f) => Err(f),
        }
    }

    fn count_failure<T>(&self, result: &Result<T, Failure>) {
        if let Err(f) = result {
            match f {
                Failure::Deadline => self.metrics.deadline.inc(),
                Failure::Memory => self.metrics.memory.inc(),
                Failure::Trap(_) | Failure::Invalid(_) => self.metrics.traps.inc(),
            };
            if self.plugin.logs.admit().is_some() {
                tracing::warn!(
                    route = %self.route, plugin = %self.plugin.name, failure = f.kind(),
                    on_error = ?self.on_error, mode = self.mode.label(), error = %describe(f),
                    "policy plugin failed"
                );
            }
        }
    }

    /// Headers this policy may see, packed for 0.2.0: name, 0, value, 0 for each.
    fn packed_headers(&self, headers: &http::HeaderMap) -> Vec<u8> {
        let mut out = Vec::with_capacity(headers.len() * 32);
        for (n, v) in headers {
            if !self.sees(n) {
                continue;
            }
            out.extend_from_slice(n.as_str().as_bytes());
            out.push(0);
            // A header value never holds a 0 byte (http refuses control characters), so
            // the packing cannot be confused.
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    fn sees(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        !SENSITIVE_HEADERS.contains(&n) || self.granted_headers.iter().any(|g| g == n)
    }

    async fn run(&self, call: Call<'_, '_>) -> Result<Outcome, Failure> {
        let pooled = self.plugin.config.isolation == Isolation::Pooled;
        let warm = if pooled {
            self.pool
                .get()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
        } else {
            None
        };
        let mut warm = match warm {
            Some(w) => w,
            None => match self.instantiate().await? {
                Ok(w) => w,
                // Validated at build time; a plugin that changes its mind is broken.
                Err(errs) => {
                    return Err(Failure::Invalid(format!(
                        "configure failed at request time ({} errors)",
                        errs.len()
                    )));
                }
            },
        };

        let req = call.request();
        {
            let s = warm.store.data_mut();
            s.arm_deadline(
                self.plugin.config.limits.deadline,
                self.host.settings.epoch_tick,
            );
            let (Call::Request { secrets, .. } | Call::Response { secrets, .. }) = &call;
            s.secrets = self
                .secrets
                .iter()
                .map(|(n, t)| (n.clone(), render_secret(t, secrets)))
                .collect();
            // Rate limits count requests: a response-phase call takes no token.
            s.evaluating = matches!(call, Call::Request { .. });
        }
        warm.store.set_epoch_deadline(1);

        let ip = match req.client.addr.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let uri_sans: Vec<&str> = req.client.uri_sans.iter().map(String::as_str).collect();
        let dns_sans: Vec<&str> = req.client.dns_sans.iter().map(String::as_str).collect();

        let result = match &warm.plugin {
            Instance::V1(plugin) => {
                // Borrowed bindings: no per-header allocations on the host side.
                let headers: Vec<wit1::HeaderParam<'_>> = req
                    .headers
                    .iter()
                    .filter(|(n, _)| self.sees(n))
                    .map(|(n, v)| wit1::HeaderParam {
                        name: n.as_str(),
                        value: v.as_bytes(),
                    })
                    .collect();
                let address = ip.to_string();
                let request = wit1::Request {
                    route: req.route,
                    method: req.method.as_str(),
                    path: req.path,
                    query: req.query,
                    headers: &headers,
                    client: wit1::Client {
                        address: &address,
                        port: req.client.addr.port(),
                        tls: req.client.tls,
                        sni: req.client.sni.as_deref(),
                        uri_sans: &uri_sans,
                        dns_sans: &dns_sans,
                    },
                };
                plugin
                    .warden_policy_policy()
                    .call_evaluate(&mut warm.store, request)
                    .await
                    .map(|v| validate_v1(v).map(Outcome::Request))
            }
            Instance::V2(plugin) => {
                let headers = self.packed_headers(req.headers);
                let address = match ip {
                    IpAddr::V4(v4) => wit2::IpAddress::Ipv4(u32::from(v4)),
                    IpAddr::V6(v6) => {
                        let bits = u128::from(v6);
                        wit2::IpAddress::Ipv6(((bits >> 64) as u64, bits as u64))
                    }
                };
                let method = method_v2(req.method);
                let body = match &call {
                    Call::Request { body, .. } if self.body_max.is_some() => body.map(|b| &b[..]),
                    // The response phase sees the request as it was checked.
                    Call::Response { req, .. } if self.body_max.is_some() => {
                        req.body.map(|b| &b[..])
                    }
                    _ => None,
                };
                let request = wit2::Request {
                    method,
                    path: req.path,
                    query: req.query,
                    headers: &headers,
                    client: wit2::Client {
                        address,
                        port: req.client.addr.port(),
                        tls: req.client.tls,
                        sni: req.client.sni.as_deref(),
                        uri_sans: &uri_sans,
                        dns_sans: &dns_sans,
                    },
                    body,
                };
                match &call {
                    Call::Request { .. } => plugin
                        .warden_policy_policy()
                        .call_evaluate(&mut warm.store, request)
                        .await
                        .map(|v| validate_v2(v, self.body_max.is_some()).map(Outcome::Request)),
                    Call::Response {
                        status,
                        headers: resp_headers,
                        body,
                        ..
                    } => {
                        let packed = self.packed_headers(resp_headers);
                        let response = wit2::Response {
                            status: status.as_u16(),
                            headers: &packed,
                            body,
                        };
                        plugin
                            .warden_policy_policy()
                            .call_evaluate_response(&mut warm.store, request, response)
                            .await
                            .map(|v| {
                                Ok(Outcome::Response(match v {
                                    wit2::ResponseVerdict::Keep => None,
                                    wit2::ResponseVerdict::Replace(b) => Some(Bytes::from(b)),
                                }))
                            })
                    }
                }
            }
        };
        // Secrets leave the store (and are zeroized) as soon as the call is over.
        {
            let s = warm.store.data_mut();
            s.secrets.clear();
            s.evaluating = false;
        }
        let outcome = match result {
            Ok(v) => v.map_err(Failure::Invalid)?,
            Err(e) => return Err(classify(&warm.store, e)),
        };

        warm.uses += 1;
        let s = warm.store.data();
        let healthy = warm.uses < self.plugin.config.pool.max_uses
            && (s.limits.current as u64) <= self.plugin.config.recycle_memory();
        if pooled && healthy {
            let mut pool = self.pool.get().lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < self.plugin.config.pool.size {
                pool.push(warm);
            }
        }
        Ok(outcome)
    }

    fn error_response(&self, status: StatusCode) -> Decision {
        let body = serde_json::json!({
            "error": "policy unavailable",
            "route": &*self.route,
            "policy": self.plugin.name,
        });
        Decision::Deny {
            status,
            body: Bytes::from(body.to_string()),
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
        }
    }
}

/// The one place that turns a secret template into bytes for `secret-matches`. Returns a
/// value-free reason on failure.
fn render_secret(t: &Template, snap: &SecretSnapshot) -> Result<SecretBytes, String> {
    t.render(snap).map_err(|e| e.to_string())
}

fn classify(store: &Store<StoreState>, e: wasmtime::Error) -> Failure {
    let s = store.data();
    if s.deadline_hit || e.downcast_ref::<DeadlineExceeded>().is_some() {
        Failure::Deadline
    } else if s.limits.hit {
        Failure::Memory
    } else {
        Failure::Trap(format!("{e:#}"))
    }
}

fn describe(f: &Failure) -> String {
    match f {
        Failure::Deadline => "deadline exceeded".into(),
        Failure::Memory => "memory limit reached".into(),
        Failure::Trap(m) | Failure::Invalid(m) => m.clone(),
    }
}

/// Headers a plugin may never set, remove or add: hop-by-hop and framing headers belong
/// to the gateway.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

const MAX_CHANGES: usize = 64;
const MAX_DENY_BODY: usize = 64 << 10;

fn header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let n = checked_name(name)?;
    let v = HeaderValue::from_bytes(value)
        .map_err(|_| format!("invalid value for header {name:?} (control characters?)"))?;
    Ok((n, v))
}

fn checked_name(name: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    if FORBIDDEN_HEADERS.contains(&n.as_str()) {
        return Err(format!("plugins may not change the {name:?} header"));
    }
    Ok(n)
}

/// What one plugin call is about.
enum Call<'r, 'a> {
    Request {
        req: &'r PolicyRequest<'a>,
        body: Option<&'r Bytes>,
        secrets: &'r SecretSnapshot,
    },
    Response {
        req: &'r PolicyRequest<'a>,
        secrets: &'r SecretSnapshot,
        status: StatusCode,
        headers: &'r http::HeaderMap,
        body: &'r Bytes,
    },
}

impl<'r, 'a> Call<'r, 'a> {
    fn request(&self) -> &'r PolicyRequest<'a> {
        match self {
            Call::Request { req, .. } | Call::Response { req, .. } => req,
        }
    }
}

/// What one plugin call produced.
enum Outcome {
    Request(Decision),
    Response(Option<Bytes>),
}

fn method_v2(m: &http::Method) -> wit2::Method<'_> {
    use wit2::Method as M;
    match *m {
        http::Method::GET => M::Get,
        http::Method::HEAD => M::Head,
        http::Method::POST => M::Post,
        http::Method::PUT => M::Put,
        http::Method::DELETE => M::Delete,
        http::Method::CONNECT => M::Connect,
        http::Method::OPTIONS => M::Options,
        http::Method::TRACE => M::Trace,
        http::Method::PATCH => M::Patch,
        _ => M::Other(m.as_str()),
    }
}

/// Largest body a plugin may hand back (a replacement is forwarded as it is).
const MAX_REPLACED_BODY: usize = 64 << 20;

fn validate_v2(v: wit2::Verdict, sees_body: bool) -> Result<Decision, String> {
    match v {
        wit2::Verdict::Allow => Ok(Decision::Allow(Changes::default())),
        wit2::Verdict::AllowWithChanges(c) => {
            let body = match c.body {
                Some(_) if !sees_body => {
                    return Err("replaced the body on a route without a body phase".into());
                }
                Some(b) if b.len() > MAX_REPLACED_BODY => {
                    return Err(format!(
                        "replacement body larger than {MAX_REPLACED_BODY} bytes"
                    ));
                }
                b => b.map(Bytes::from),
            };
            let mut out = changes(
                c.set_request_headers
                    .iter()
                    .map(|h| (h.name.as_str(), &h.value[..])),
                &c.remove_request_headers,
                c.add_response_headers
                    .iter()
                    .map(|h| (h.name.as_str(), &h.value[..])),
            )?;
            out.body = body;
            Ok(Decision::Allow(out))
        }
        wit2::Verdict::Deny(d) => denial(
            d.status,
            d.body,
            d.headers.iter().map(|h| (h.name.as_str(), &h.value[..])),
        ),
    }
}

fn validate_v1(v: wit1::Verdict) -> Result<Decision, String> {
    match v {
        wit1::Verdict::Allow => Ok(Decision::Allow(Changes::default())),
        wit1::Verdict::AllowWithChanges(c) => Ok(Decision::Allow(changes(
            c.set_request_headers
                .iter()
                .map(|h| (h.name.as_str(), &h.value[..])),
            &c.remove_request_headers,
            c.add_response_headers
                .iter()
                .map(|h| (h.name.as_str(), &h.value[..])),
        )?)),
        wit1::Verdict::Deny(d) => denial(
            d.status,
            d.body,
            d.headers.iter().map(|h| (h.name.as_str(), &h.value[..])),
        ),
    }
}

fn changes<'h>(
    set: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
    remove: &[String],
    add: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) -> Result<Changes, String> {
    if set.len() + remove.len() + add.len() > MAX_CHANGES {
        return Err(format!("more than {MAX_CHANGES} header changes"));
    }
    let mut out = Changes::default();
    for name in remove {
        out.merge(Changes {
            remove_headers: vec![checked_name(name)?],
            ..Changes::default()
        });
    }
    for (name, value) in set {
        let (n, v) = header(name, value)?;
        out.merge(Changes {
            set_headers: vec![(n, v)],
            ..Changes::default()
        });
    }
    for (name, value) in add {
        out.response_headers.push(header(name, value)?);
    }
    Ok(out)
}

fn denial<'h>(
    status: u16,
    body: String,
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) -> Result<Decision, String> {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| format!("deny status {status} is not 400..=599"))?;
    if body.len() > MAX_DENY_BODY {
        return Err(format!("deny body larger than {MAX_DENY_BODY} bytes"));
    }
    if headers.len() > MAX_CHANGES {
        return Err(format!("more than {MAX_CHANGES} deny headers"));
    }
    let headers = headers
        .map(|(n, v)| header(n, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decision::Deny {
        status,
        body: Bytes::from(body),
        headers,
    })
}

#[cfg(test)]
impl Chain {
    /// Idle pooled instances per entry.
    pub(crate) fn entries_idle(&self) -> Vec<usize> {
        self.entries
            .iter()
            .map(|e| e.pool.get().lock().unwrap().len())
            .collect()
    }

    /// Each entry's plugin log limiter.
    pub(crate) fn plugin_logs(&self) -> Vec<Arc<super::host::LogLimiter>> {
        self.entries.iter().map(|e| e.plugin.logs.clone()).collect()
    }
}
