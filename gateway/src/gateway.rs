//! The running gateway: the current [`Snapshot`] behind an `ArcSwap`, and the reload
//! triggers that replace it (SIGHUP, a changed file, `POST /reload`).
//!
//! A reload builds and validates a complete new snapshot off the request path, then swaps
//! it in one store; each request loads the current snapshot when it starts and keeps that
//! `Arc` until it ends. A change that fails to build is refused whole and the old snapshot
//! keeps serving.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, Config, ConfigErrors};
use crate::policy::PolicyHost;
use crate::snapshot::{SecretsMode, Snapshot, build_snapshot};
use crate::telemetry::{ReloadLabels, metrics};
use crate::watch::{Change, DirWatcher};

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
        crate::snapshot::record_certificate_expiry(&snap.config);
        let m = &metrics().config;
        m.last_reload_successful.set(1);
        m.last_reload_success.set(unix_now());
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
                    .config
                    .reloads
                    .get_or_create(&ReloadLabels {
                        result: "applied".into(),
                    })
                    .inc();
                let m = &metrics().config;
                m.last_reload_successful.set(1);
                m.last_reload_success.set(unix_now());
                info!(trigger, config_hash = %hash, "configuration reloaded");
            }
            Err(errs) => {
                metrics()
                    .config
                    .reloads
                    .get_or_create(&ReloadLabels {
                        result: "refused".into(),
                    })
                    .inc();
                metrics().config.last_reload_successful.set(0);
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
        if cfg.gateway.worker_threads != old.config.gateway.worker_threads {
            errs.push(cfg.locate_main(
                "gateway.worker_threads",
                "the number of proxy workers cannot change while running; restart to change it",
            ));
        }
        if cfg.gateway.tls.is_some() != old.config.gateway.tls.is_some() {
            errs.push(cfg.locate_main(
                "gateway.tls",
                "switching the listener between TLS and plaintext needs a restart",
            ));
        }
        // The rate-limit buckets outlive reloads (a reload must not hand every caller a
        // fresh quota), so where they live is fixed for the process.
        if cfg.policy.rate_limit_store != old.config.policy.rate_limit_store {
            errs.push(cfg.locate_main(
                "policy.rate_limit_store",
                "the rate-limit store cannot change while running; restart to move it",
            ));
        }
        if cfg.policy.rate_limit_keys != old.config.policy.rate_limit_keys {
            errs.push(cfg.locate_main(
                "policy.rate_limit_keys",
                "the rate-limit bucket count cannot change while running; restart to change it",
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
        crate::snapshot::record_certificate_expiry(&snap.config);
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

    /// Once a second, drop the injected header values that routes rendered from a secret
    /// snapshot that is no longer current (a rotated value must not stay in memory because
    /// its route is idle), until shutdown.
    pub fn spawn_injected_sweep(self: &Arc<Self>) {
        let gw = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = gw.shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let snap = gw.current();
                let generation = snap.secrets.snapshot().generation();
                for route in &snap.routes {
                    route.inject.forget_unless(generation);
                }
            }
        });
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

/// Watch the directories of every file the snapshot was built from (see [`crate::watch`]
/// for why directories), and reload once a change to one of those files has settled.
async fn watch_files(gw: Arc<Gateway>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
    // Editors and deploy tools write in several steps; reload once they are done.
    let quiet = Duration::from_millis(300);
    let mut watcher = match DirWatcher::new(&[], quiet, move |c| {
        let _ = tx.send(c);
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
                    && let Err(e) = watcher.watch(&dir)
                {
                    warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
        drop(snap);
        let change = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        // Kubernetes swaps a `..data` symlink; other files in the directories are not ours.
        let relevant = match change {
            Change::Lost => true,
            Change::Paths(paths) => paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
            }),
        };
        if relevant {
            let _ = gw.reload("file change").await;
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
