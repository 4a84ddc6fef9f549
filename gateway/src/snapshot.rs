//! The snapshot: everything one request needs, immutable.
//!
//! Config, routes, compiled plugin chains, upstream pools, TLS material and the secret
//! store live in one [`Snapshot`], built complete from a loaded config by
//! [`build_snapshot`]. The gateway ([`crate::gateway`]) swaps snapshots; this module only
//! builds them. A generation ends when its last request does: nothing else holds it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::config::{Config, ConfigError, ConfigErrors, HeaderRules, typed_inject};
use crate::policy::{Chain, PolicyHost};
use crate::routing::Router;
use crate::secrets::{InjectedHeaders, SecretStore, Template};
use crate::telemetry::{Counter, Histogram};
use crate::telemetry::{MethodClass, RequestLabels, RouteLabel, metrics};
use crate::upstream::Upstream;

/// A route ready to serve.
pub struct RouteRuntime {
    /// Route name.
    pub name: Arc<str>,
    /// Its upstream.
    pub upstream: Arc<Upstream>,
    /// Time to the response head.
    pub timeout: Duration,
    /// Request body limit in bytes.
    pub max_body: u64,
    /// Headers to inject (route entries override the upstream's), rendered once per
    /// secret snapshot.
    pub inject: InjectedHeaders,
    /// Upgrade protocols forwarded, lower case (`h2c` is refused by validation).
    pub upgrades: Vec<String>,
    /// What an upgrade to any other protocol gets.
    pub on_disallowed_upgrade: crate::config::DisallowedUpgrade,
    /// Policy chain.
    pub chain: Chain,
    /// A streamed response with no bytes for this long is cut.
    pub idle_timeout: Option<Duration>,
    /// The whole exchange, streamed body included, is cut after this.
    pub max_duration: Option<Duration>,
    /// Header rules for requests: the upstream's, then the route's.
    pub request_headers: HeaderRules,
    /// Header rules for every response of the route: the upstream's, then the route's.
    pub response_headers: HeaderRules,
    /// Retry rules (the route's, else its upstream's).
    pub retry: Arc<crate::upstream::RetryPolicy>,
    /// Metric handles resolved once, so the request path does no label lookups for the
    /// common case.
    pub metrics: RouteMetrics,
}

/// Per-route metric handles.
pub struct RouteMetrics {
    /// `request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `requests_total{route, method, status="200", source="upstream"}` for read and
    /// write methods.
    pub ok: [Counter; 2],
    /// `exchange_duration_seconds{route}`.
    pub exchange: Histogram,
}

impl RouteMetrics {
    fn new(route: &str) -> RouteMetrics {
        let m = metrics();
        let ok = |method| {
            let labels = RequestLabels {
                route: route.to_string(),
                method,
                status: 200,
                source: crate::telemetry::Source::Upstream,
            };
            m.proxy.requests.get_or_create(&labels).clone()
        };
        let ok = [ok(MethodClass::Read), ok(MethodClass::Write)];
        let duration = m
            .proxy
            .request_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone();
        let exchange = m
            .proxy
            .exchange_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone();
        RouteMetrics {
            duration,
            ok,
            exchange,
        }
    }
}

/// Everything one request needs, immutable.
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    /// Route table.
    pub router: Router,
    /// Routes by index (as in the config).
    pub routes: Vec<RouteRuntime>,
    /// Upstreams by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Downstream TLS config, when the listener is TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Secret store (values rotate inside it without a new snapshot).
    pub secrets: Arc<SecretStore>,
    /// Peers whose forwarding headers are trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Admin bearer token template.
    pub admin_token: Option<Template>,
    /// The access log's fields and format.
    pub access_log: Arc<crate::config::AccessLogConfig>,
    /// Span export, when `[telemetry] otlp` is set.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
    /// Files whose change triggers a reload (config, includes, plugins, certificates).
    pub watched: Vec<PathBuf>,
    /// Counts this generation in `warden_config_generations` while it is alive.
    _generation: Generation,
}

/// Counted in the live-generations gauge from build to drop, so a generation that never
/// ends (something holding an old snapshot) shows up as a rising gauge.
struct Generation;

impl Generation {
    fn new() -> Generation {
        metrics().config.generations.inc();
        Generation
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        metrics().config.generations.dec();
    }
}

/// How a snapshot gets its secret store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretsMode {
    /// Resolve every reference once, no background tasks; any failure is an error
    /// (`warden check`).
    Check,
    /// Keep values fresh in the background; any reference that does not resolve is an
    /// error (`warden run --strict-secrets`).
    Strict,
    /// Keep values fresh in the background; references that do not resolve yet are
    /// retried, and the routes that need them answer 503 until they do (`warden run`).
    Lenient,
}

/// Build a complete snapshot from a loaded config. `previous` lends connection pools of
/// upstreams whose settings did not change, and its secret store when the providers did
/// not change (only references that are new are then read).
pub async fn build_snapshot(
    cfg: Config,
    host: &Arc<PolicyHost>,
    previous: Option<&Snapshot>,
    mode: SecretsMode,
) -> Result<Snapshot, ConfigErrors> {
    let mut errs: Vec<ConfigError> = Vec::new();
    let cfg = Arc::new(cfg);

    let tls = match &cfg.gateway.tls {
        None => None,
        Some(t) => match crate::tls::server_config(t) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(cfg.locate_main("gateway.tls", e.to_string()));
                None
            }
        },
    };

    let mut upstreams = HashMap::new();
    for (name, u) in &cfg.upstreams {
        // Reuse the old upstream (its pools, endpoint health and retry budget) when
        // nothing about it changed, so a reload costs no fresh handshakes and forgets
        // nothing it learned about its endpoints.
        let fingerprint = Upstream::fingerprint(u);
        if let Some(old) = previous
            .and_then(|p| p.upstreams.get(name))
            .filter(|old| old.fingerprint == fingerprint)
        {
            upstreams.insert(name.clone(), old.clone());
            continue;
        }
        match Upstream::build(name, u) {
            Ok(up) => {
                upstreams.insert(name.clone(), up);
            }
            Err(e) => errs.push(cfg.locate_main(&format!("upstreams.{name}.{}", e.key), e.reason)),
        }
    }

    // Plugins compile on a blocking thread: cranelift is CPU-bound and must not stall
    // the runtime that is serving traffic during a reload.
    let plugins = {
        let host = host.clone();
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || host.load(&c.plugins, &c.base_dir))
            .await
            .expect("plugin loading panicked")
    };
    let plugins = match plugins {
        Ok(p) => Some(p),
        Err(list) => {
            for (name, fe) in list {
                match cfg.plugin_sources.get(&name) {
                    Some(src) => errs.push(cfg.locate(src, fe)),
                    None => errs.push(cfg.locate_main(&format!("plugins.{name}"), fe.reason)),
                }
            }
            None
        }
    };

    // Each upstream's header rules, typed once for all its routes (validation has
    // reported any that do not parse).
    let typed = |raw| HeaderRules::parse(raw).unwrap_or_default();
    let upstream_rules: HashMap<&str, (HeaderRules, HeaderRules)> = cfg
        .upstreams
        .iter()
        .map(|(name, u)| {
            let rules = (typed(&u.request_headers), typed(&u.response_headers));
            (name.as_str(), rules)
        })
        .collect();
    let mut routes = Vec::new();
    for r in &cfg.routes {
        let chain = match &plugins {
            Some(set) => match Chain::build(set, &r.name, &r.policies).await {
                Ok(c) => c,
                Err(list) => {
                    errs.extend(list.into_iter().map(|fe| cfg.locate(&r.at, fe)));
                    Chain::default()
                }
            },
            None => Chain::default(),
        };
        let Some(upstream) = upstreams.get(&r.upstream).cloned() else {
            continue;
        };
        let (up_request, up_response) = &upstream_rules[r.upstream.as_str()];
        let request_headers = up_request.then(&r.request_headers);
        let response_headers = up_response.then(&r.response_headers);
        // The upstream's headers, overridden by the route's.
        let mut inject = typed_inject(&cfg.upstreams[&r.upstream].inject);
        inject.retain(|(h, _)| !r.inject.iter().any(|(rh, _)| rh == h));
        inject.extend(r.inject.iter().cloned());
        routes.push(RouteRuntime {
            metrics: RouteMetrics::new(&r.name),
            name: r.name.as_str().into(),
            upstream: upstream.clone(),
            timeout: r.timeout.unwrap_or(upstream.timeout),
            max_body: r.max_body.unwrap_or(cfg.gateway.max_body),
            inject: InjectedHeaders::new(inject),
            upgrades: r.upgrades.clone(),
            retry: upstream.retry_for(r.retry.as_ref()),
            request_headers,
            response_headers,
            idle_timeout: r.idle_timeout,
            max_duration: r.max_duration,
            on_disallowed_upgrade: r.on_disallowed_upgrade,
            chain,
        });
    }

    // The exporter outlives reloads that keep its setting; `warden check` starts none.
    let tracing = match (&cfg.telemetry.otlp, mode) {
        (None, _) | (_, SecretsMode::Check) => None,
        (Some(o), _) => match previous
            .and_then(|p| p.tracing.clone())
            .filter(|t| t.config() == o)
        {
            Some(t) => Some(t),
            None => match crate::trace::Tracing::start(o) {
                Ok(t) => Some(t),
                Err(e) => {
                    errs.push(cfg.locate_main("telemetry.otlp", e));
                    None
                }
            },
        },
    };

    // `warden check` goes on to the secret references, so one run lists every error.
    if !errs.is_empty() && mode != SecretsMode::Check {
        return Err(ConfigErrors(errs));
    }

    // A partially loaded config (`warden check`) may name providers that failed to load;
    // their errors are reported already.
    let mut refs = cfg.secret_refs();
    refs.retain(|r| cfg.secrets.contains_key(&r.provider));
    let reused = match previous {
        Some(prev) if mode != SecretsMode::Check => prev
            .secrets
            .reuse_for(&cfg.secrets, &cfg.base_dir, &refs)
            .await
            .map(|r| r.map(|()| prev.secrets.clone())),
        _ => None,
    };
    let started = match reused {
        Some(r) => r,
        None => match mode {
            SecretsMode::Check => {
                SecretStore::start(&cfg.secrets, &cfg.base_dir, refs, false).await
            }
            SecretsMode::Strict => {
                SecretStore::start(&cfg.secrets, &cfg.base_dir, refs, true).await
            }
            SecretsMode::Lenient => {
                let (store, errors) = SecretStore::open(&cfg.secrets, &cfg.base_dir, refs).await;
                for e in errors {
                    warn!(error = %e, "secret not resolved yet; routes that need it answer 503 until it is");
                }
                Ok(store)
            }
        },
    };
    let secrets = match started {
        Ok(s) => s,
        Err(list) => {
            errs.extend(locate_secret_errors(&cfg, list).0);
            return Err(ConfigErrors(errs));
        }
    };
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }

    let admin_token = cfg
        .admin
        .token
        .as_deref()
        .and_then(|t| Template::parse(t).ok());
    let mut watched: Vec<PathBuf> = cfg.files.clone();
    watched.extend(cfg.plugins.values().map(|p| p.file.clone()));
    if let Some(t) = &cfg.gateway.tls {
        watched.push(t.cert_file.clone());
        watched.push(t.key_file.clone());
        watched.extend(t.client_ca_file.clone());
    }
    for u in cfg.upstreams.values() {
        if let Some(t) = &u.tls {
            watched.extend(t.ca_file.clone());
            watched.extend(t.client_cert_file.clone());
            watched.extend(t.client_key_file.clone());
        }
    }

    let access_log = Arc::new(cfg.log.access.clone());
    Ok(Snapshot {
        router: Router::new(cfg.routes.iter().map(|r| &r.matcher)),
        trusted_proxies: cfg.gateway.trusted_proxies.clone(),
        config: cfg,
        routes,
        upstreams,
        tls,
        secrets,
        admin_token,
        access_log,
        tracing,
        watched,
        _generation: Generation::new(),
    })
}

/// Point each secret error at the first place in the config that uses its reference.
fn locate_secret_errors(cfg: &Config, list: Vec<crate::secrets::SecretsError>) -> ConfigErrors {
    let templates = cfg.templates();
    ConfigErrors(
        list.into_iter()
            .map(|e| {
                let msg = e.to_string();
                let at = templates
                    .iter()
                    .find(|(_, _, t)| t.refs().iter().any(|r| msg.contains(&r.to_string())));
                match at {
                    Some((file, key, _)) => cfg.sources[*file].error(key, msg),
                    None => cfg.locate_main("secrets", msg),
                }
            })
            .collect(),
    )
}

/// `warden_tls_certificate_not_after_timestamp_seconds` for the listener's certificate and
/// each upstream client certificate of the config now serving.
pub(crate) fn record_certificate_expiry(cfg: &Config) {
    let family = &metrics().config.certificate_not_after;
    family.clear();
    let set = |name: String, path: &std::path::Path| {
        if let Some(t) = crate::tls::not_after(path) {
            family
                .get_or_create(&crate::telemetry::CertificateLabel { certificate: name })
                .set(t);
        }
    };
    if let Some(t) = &cfg.gateway.tls {
        set("gateway".into(), &t.cert_file);
    }
    for (name, u) in &cfg.upstreams {
        if let Some(path) = u.tls.as_ref().and_then(|t| t.client_cert_file.as_ref()) {
            set(format!("upstream/{name}"), path);
        }
    }
}
