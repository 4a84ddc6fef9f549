//! Snapshots and hot reload.
//!
//! Config, routes, compiled plugin chains, upstream pools, TLS material and the secret
//! store live in one immutable [`Snapshot`] behind an `ArcSwap`. A reload builds and
//! validates a complete new snapshot off the request path, then swaps it in one store;
//! requests already running keep the `Arc` of the snapshot they started with. A change
//! that fails to build is refused whole and the old snapshot keeps serving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::policy::{Chain, PolicyHost};
use crate::proxy::upstream::Upstream;
use crate::routing::Router;
use crate::secrets::{SecretStore, Template};
use crate::telemetry::{MethodClass, ReloadLabels, RequestLabels, RouteLabel, metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

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
    /// Headers to inject (route entries override the upstream's).
    pub inject: Vec<(HeaderName, Template)>,
    /// Upgrade protocols forwarded, lower case (`h2c` is refused by validation).
    pub upgrades: Vec<String>,
    /// What an upgrade to any other protocol gets.
    pub on_disallowed_upgrade: crate::config::DisallowedUpgrade,
    /// Policy chain.
    pub chain: Chain,
    /// Metric handles resolved once, so the request path does no label lookups for the
    /// common case.
    pub metrics: RouteMetrics,
}

/// Per-route metric handles.
pub struct RouteMetrics {
    /// `request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `requests_total{route, method, status="200"}` for read and write methods.
    pub ok: [Counter; 2],
}

impl RouteMetrics {
    fn new(route: &str) -> RouteMetrics {
        let m = metrics();
        let ok = |method| {
            let labels = RequestLabels {
                route: route.to_string(),
                method,
                status: 200,
            };
            m.requests.get_or_create(&labels).clone()
        };
        let ok = [ok(MethodClass::Read), ok(MethodClass::Write)];
        let duration = m
            .request_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone();
        RouteMetrics { duration, ok }
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
        metrics().config_generations.inc();
        Generation
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        metrics().config_generations.dec();
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
        let built = Upstream::build(name, u);
        match built {
            Ok(up) => {
                // Reuse the old pool when nothing about the connection changed, so a
                // reload does not cost every upstream a fresh handshake.
                let reused = previous
                    .and_then(|p| p.upstreams.get(name))
                    .filter(|old| old.fingerprint == up.fingerprint)
                    .cloned();
                upstreams.insert(name.clone(), reused.unwrap_or_else(|| Arc::new(up)));
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

    let mut routes = Vec::new();
    for (r, src) in cfg.routes.iter().zip(&cfg.route_sources) {
        let chain = match &plugins {
            Some(set) => match Chain::build(set, &r.name, &r.policies) {
                Ok(c) => c,
                Err(list) => {
                    errs.extend(list.into_iter().map(|fe| cfg.locate(src, fe)));
                    Chain::default()
                }
            },
            None => Chain::default(),
        };
        let Some(upstream) = upstreams.get(&r.upstream).cloned() else {
            continue;
        };
        let mut inject: BTreeMap<String, Template> = BTreeMap::new();
        let up_cfg = &cfg.upstreams[&r.upstream];
        for (h, v) in up_cfg.inject.iter().chain(r.inject.iter()) {
            if let Ok(t) = Template::parse(v) {
                inject.insert(h.to_ascii_lowercase(), t);
            }
        }
        let inject = inject
            .into_iter()
            .filter_map(|(h, t)| HeaderName::from_bytes(h.as_bytes()).ok().map(|h| (h, t)))
            .collect();
        routes.push(RouteRuntime {
            metrics: RouteMetrics::new(&r.name),
            name: r.name.as_str().into(),
            upstream: upstream.clone(),
            timeout: r.timeout.unwrap_or(upstream.timeout),
            max_body: r.max_body.unwrap_or(cfg.gateway.max_body),
            inject,
            upgrades: r.upgrades.iter().map(|p| p.to_ascii_lowercase()).collect(),
            on_disallowed_upgrade: r.on_disallowed_upgrade,
            chain,
        });
    }

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

    Ok(Snapshot {
        router: Router::new(&cfg.routes),
        trusted_proxies: cfg.gateway.trusted_proxies.clone(),
        config: cfg,
        routes,
        upstreams,
        tls,
        secrets,
        admin_token,
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

/// The running gateway: the current snapshot and what it takes to replace it.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    host: Arc<PolicyHost>,
    config_path: PathBuf,
    reload_lock: tokio::sync::Mutex<()>,
    /// Fired on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
}

impl Gateway {
    /// Load, validate and build the first snapshot. With `strict_secrets`, a secret
    /// reference that does not resolve fails the start; without, the gateway starts and
    /// the routes that need it answer 503 until it resolves.
    pub async fn start(
        config_path: &Path,
        cfg: Config,
        strict_secrets: bool,
    ) -> Result<Arc<Gateway>, ConfigErrors> {
        let host = PolicyHost::new(&cfg.policy, &cfg.base_dir)
            .map_err(|e| ConfigErrors(vec![cfg.locate_main("policy", format!("{e:#}"))]))?;
        let mode = if strict_secrets {
            SecretsMode::Strict
        } else {
            SecretsMode::Lenient
        };
        let snap = build_snapshot(cfg, &host, None, mode).await?;
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snap),
            host,
            config_path: config_path.to_path_buf(),
            reload_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
        }))
    }

    /// The snapshot new requests use.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-read the config and everything it names; swap it in if it all builds. Returns
    /// the new content hash. On error the old snapshot keeps serving.
    pub async fn reload(&self, trigger: &str) -> Result<String, ConfigErrors> {
        let _guard = self.reload_lock.lock().await;
        let result = self.reload_locked().await;
        match &result {
            Ok(hash) => {
                metrics()
                    .reloads
                    .get_or_create(&ReloadLabels {
                        result: "applied".into(),
                    })
                    .inc();
                info!(trigger, config_hash = %hash, "configuration reloaded");
            }
            Err(errs) => {
                metrics()
                    .reloads
                    .get_or_create(&ReloadLabels {
                        result: "refused".into(),
                    })
                    .inc();
                for e in &errs.0 {
                    warn!(trigger, error = %e, "reload refused; previous configuration still serving");
                }
            }
        }
        result
    }

    async fn reload_locked(&self) -> Result<String, ConfigErrors> {
        let cfg = config::load(&self.config_path)?;
        let old = self.current();
        let mut errs = Vec::new();
        if cfg.gateway.listen != old.config.gateway.listen {
            errs.push(cfg.locate_main(
                "gateway.listen",
                "the listen address cannot change while running; restart to move it",
            ));
        }
        if cfg.admin.listen != old.config.admin.listen {
            errs.push(cfg.locate_main(
                "admin.listen",
                "the admin address cannot change while running; restart to move it",
            ));
        }
        if cfg.gateway.tls.is_some() != old.config.gateway.tls.is_some() {
            errs.push(cfg.locate_main(
                "gateway.tls",
                "switching the listener between TLS and plaintext needs a restart",
            ));
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        // A reload never starts without its secrets: a reference that is new and does not
        // resolve refuses it (the old snapshot keeps serving). One the store already has
        // costs no provider request.
        let snap = build_snapshot(cfg, &self.host, Some(&old), SecretsMode::Strict).await?;
        let hash = snap.config.content_hash.clone();
        self.snapshot.store(Arc::new(snap));
        Ok(hash)
    }

    /// Re-read every secret provider now.
    pub async fn refresh_secrets(&self) -> Result<(), Vec<String>> {
        let snap = self.current();
        snap.secrets
            .refresh()
            .await
            .map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect())
    }

    /// Reload on SIGHUP and when a watched file changes (debounced), until shutdown.
    pub fn spawn_reload_triggers(self: &Arc<Self>) {
        let gw = self.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                warn!(
                    "cannot install SIGHUP handler; reload via the admin API or file changes only"
                );
                return;
            };
            loop {
                tokio::select! {
                    _ = gw.shutdown.cancelled() => return,
                    _ = hup.recv() => {
                        let _ = gw.reload("SIGHUP").await;
                        if let Err(errs) = gw.refresh_secrets().await {
                            for e in errs { warn!(error = %e, "secret refresh after SIGHUP failed"); }
                        }
                    }
                }
            }
        });
        let gw = self.clone();
        tokio::spawn(async move { watch_files(gw).await });
    }
}

/// Watch the directories of every file the snapshot was built from. Directories, not
/// files: editors replace files by rename and Kubernetes swaps a `..data` symlink, and
/// both would silently end a watch on the file itself.
async fn watch_files(gw: Arc<Gateway>) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Event>();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let _ = tx.send(ev);
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "file watching unavailable; reload via SIGHUP or the admin API");
            return;
        }
    };
    let mut watched_dirs: HashSet<PathBuf> = HashSet::new();
    let mut names: HashSet<std::ffi::OsString> = HashSet::new();
    let mut current_hash = String::new();
    loop {
        // Scoped: the snapshot must not be held while waiting for the next event, or the
        // generation it belongs to could never end.
        let snap = gw.current();
        if snap.config.content_hash != current_hash || watched_dirs.is_empty() {
            current_hash = snap.config.content_hash.clone();
            names.clear();
            for f in &snap.watched {
                if let Some(n) = f.file_name() {
                    names.insert(n.to_os_string());
                }
                let dir = f
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                if watched_dirs.insert(dir.clone())
                    && let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive)
                {
                    warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
        drop(snap);
        let relevant = |ev: &notify::Event| {
            !matches!(ev.kind, notify::EventKind::Access(_))
                && ev.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
                })
        };
        let first = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
        };
        if !relevant(&first) {
            continue;
        }
        // Debounce: editors and deploy tools write in several steps.
        loop {
            match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let _ = gw.reload("file change").await;
    }
}
