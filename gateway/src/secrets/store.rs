//! The snapshot, the store that owns providers, and the background refresh tasks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::agefile::AgeProvider;
use super::dir::DirProvider;
use super::vault::VaultProvider;
use super::{ProviderConfig, SecretBytes, SecretRef, SecretsError, header_unsafe, validate_refs};
use crate::telemetry::{ProviderFailureLabels, ProviderLabel, metrics};
use crate::watch::DirWatcher;

// ---------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------

/// Milliseconds on a monotonic clock (staleness must not jump with wall-clock changes).
pub(super) fn mono_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) const NEVER: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------------------

/// Freshness of one reference, shared by every snapshot that holds its value (so a
/// successful re-read that finds the same value does not need a new snapshot).
#[derive(Debug)]
pub(super) struct RefHealth {
    max_stale_ms: Option<u64>,
    /// `mono_ms()` of the last successful read, `NEVER` before the first.
    last_ok_ms: AtomicU64,
    /// Unix seconds of the last successful read.
    last_ok_unix: AtomicU64,
    /// Provider version of the value (Vault KV v2 metadata version), 0 when none.
    version: AtomicU64,
    /// The last refresh error for this reference (value-free), cleared on success.
    last_error: Mutex<Option<String>>,
}

impl RefHealth {
    fn new(max_stale: Option<Duration>) -> Self {
        RefHealth {
            max_stale_ms: max_stale.map(|d| d.as_millis() as u64),
            last_ok_ms: AtomicU64::new(NEVER),
            last_ok_unix: AtomicU64::new(0),
            version: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn mark_ok(&self, version: Option<u64>) {
        self.last_ok_ms.store(mono_ms(), Ordering::Release);
        self.last_ok_unix.store(unix_secs(), Ordering::Relaxed);
        self.version.store(version.unwrap_or(0), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn mark_err(&self, e: &SecretsError) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }

    fn age_ms(&self) -> Option<u64> {
        let last = self.last_ok_ms.load(Ordering::Acquire);
        (last != NEVER).then(|| mono_ms().saturating_sub(last))
    }

    fn is_stale(&self) -> bool {
        match (self.max_stale_ms, self.age_ms()) {
            (Some(max), Some(age)) => age > max,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: SecretBytes,
    health: Arc<RefHealth>,
}

/// An immutable view of every secret value. A request loads one `Arc<SecretSnapshot>` and
/// uses it from start to end, so all its headers come from the same generation.
#[derive(Debug)]
pub struct SecretSnapshot {
    entries: HashMap<SecretRef, Arc<Entry>>,
    /// Unique to this snapshot (never reused, unlike its address), so that what was
    /// rendered from it can be recognised and reused while it is current.
    generation: u64,
}

impl SecretSnapshot {
    fn new(entries: HashMap<SecretRef, Arc<Entry>>) -> Self {
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        SecretSnapshot {
            entries,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A snapshot with no values.
    pub fn empty() -> Self {
        SecretSnapshot::new(HashMap::new())
    }

    /// This snapshot's generation: different for every snapshot ever made.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Until when (milliseconds on [`mono_ms`]) the values of `refs` may still be used
    /// without asking [`SecretSnapshot::get`] again: the earliest moment one of them with a
    /// `max_stale` limit turns stale; [`NEVER`] when none has a limit. A successful refresh
    /// only moves that moment later, so the answer is safe to keep.
    pub(super) fn fresh_until<'a>(&self, refs: impl IntoIterator<Item = &'a SecretRef>) -> u64 {
        refs.into_iter()
            .filter_map(|r| self.entries.get(r))
            .filter_map(|e| {
                let max = e.health.max_stale_ms?;
                let last = e.health.last_ok_ms.load(Ordering::Acquire);
                Some(if last == NEVER {
                    0
                } else {
                    last.saturating_add(max)
                })
            })
            .min()
            .unwrap_or(NEVER)
    }

    /// A snapshot from fixed values that never go stale — for tests and benchmarks of code
    /// that renders templates (the proxy, plugins).
    pub fn from_values(values: impl IntoIterator<Item = (SecretRef, SecretBytes)>) -> Self {
        let entries = values
            .into_iter()
            .map(|(r, value)| {
                let health = Arc::new(RefHealth::new(None));
                health.mark_ok(None);
                (r, Arc::new(Entry { value, health }))
            })
            .collect();
        SecretSnapshot::new(entries)
    }

    /// The value of a reference. Fails with [`SecretsError::Stale`] once its provider has
    /// been failing for longer than `max_stale`, and with [`SecretsError::NotLoaded`] for
    /// a reference the store was not started with.
    pub fn get(&self, r: &SecretRef) -> Result<&SecretBytes, SecretsError> {
        let e = self.entries.get(r).ok_or_else(|| SecretsError::NotLoaded {
            reference: r.to_string(),
        })?;
        if e.health.max_stale_ms.is_some() && e.health.is_stale() {
            return Err(SecretsError::Stale {
                reference: r.to_string(),
            });
        }
        Ok(&e.value)
    }

    /// Whether the snapshot holds a value for the reference (stale or not).
    pub fn contains(&self, r: &SecretRef) -> bool {
        self.entries.contains_key(r)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Provider plumbing
// ---------------------------------------------------------------------------------------

/// One value as read from a provider.
pub(super) struct Fetched {
    pub value: SecretBytes,
    /// Provider version (Vault KV v2 metadata version).
    pub version: Option<u64>,
    /// Lease TTL, when the provider gave one (KV v1 `ttl`): refresh at about 2/3 of it.
    pub ttl: Option<Duration>,
}

/// Why one name could not be read — kept apart because they page different people: a
/// provider that cannot be reached is an outage, a secret that does not exist is a
/// configuration mistake.
pub(super) enum ReadError {
    /// The provider could not be read (network, permissions, I/O): value-free reason.
    Unavailable(String),
    /// The provider answered, and the secret (path, key or file) does not exist.
    NotFound(String),
}

impl ReadError {
    fn into_error(self, r: &SecretRef) -> SecretsError {
        match self {
            ReadError::Unavailable(reason) => SecretsError::Unresolved {
                reference: r.to_string(),
                reason,
            },
            ReadError::NotFound(reason) => SecretsError::NotFound {
                reference: r.to_string(),
                reason,
            },
        }
    }
}

/// What one refresh round read: per name, a value or a value-free reason; or a reason
/// the whole provider failed (unreadable file, bad identity, login refused …).
pub(super) type FetchAll = Result<Vec<(String, Result<Fetched, ReadError>)>, String>;

enum Backend {
    Vault(Box<VaultProvider>),
    Age(AgeProvider),
    Dir(DirProvider),
}

impl Backend {
    async fn fetch(&self, names: &[String]) -> FetchAll {
        match self {
            Backend::Vault(v) => v.fetch(names).await,
            Backend::Age(a) => a.fetch(names),
            Backend::Dir(d) => d.fetch(names),
        }
    }
}

struct ProviderRt {
    name: String,
    backend: Backend,
    /// Names referenced in this provider, sorted. Grows when a reload adds references and
    /// shrinks when one drops them; the provider itself (its login, its watcher) stays.
    names: Mutex<Vec<String>>,
    /// One refresh at a time per provider (background, manual and SIGHUP may race).
    fetch_lock: tokio::sync::Mutex<()>,
    /// Whether the last round failed (to log recovery once).
    failing: std::sync::atomic::AtomicBool,
}

pub(super) struct Inner {
    current: ArcSwap<SecretSnapshot>,
    providers: Vec<Arc<ProviderRt>>,
    /// Settings (paths resolved) of the providers in use: a reload whose providers are
    /// unchanged reuses this store.
    configs: BTreeMap<String, ProviderConfig>,
    /// Kind of every configured provider, by name.
    kinds: HashMap<String, &'static str>,
    health: std::sync::RwLock<BTreeMap<SecretRef, Arc<RefHealth>>>,
    /// Serializes read-modify-write of `current` across providers.
    swap_lock: Mutex<()>,
}

/// Outcome of one provider round.
struct Round {
    errors: Vec<SecretsError>,
    /// Shortest lease TTL seen, if any.
    min_ttl: Option<Duration>,
}

impl Inner {
    async fn refresh_provider(&self, p: &ProviderRt, initial: bool) -> Round {
        let _guard = p.fetch_lock.lock().await;
        let names = lock(&p.names).clone();
        if names.is_empty() {
            // Every reference to this provider was dropped by a reload: nothing to read.
            return Round {
                errors: Vec::new(),
                min_ttl: None,
            };
        }
        let fetched = p.backend.fetch(&names).await;
        self.apply(p, &names, fetched, initial)
    }

    fn health_of(&self, r: &SecretRef) -> Option<Arc<RefHealth>> {
        read(&self.health).get(r).cloned()
    }

    /// Fold one round into the snapshot: changed, header-safe values are swapped in; any
    /// failure keeps the old value and is logged naming the reference, never the value.
    fn apply(&self, p: &ProviderRt, names: &[String], fetched: FetchAll, initial: bool) -> Round {
        let mut errors = Vec::new();
        let mut ok: Vec<(SecretRef, Option<u64>)> = Vec::new();
        let mut changed: Vec<(SecretRef, SecretBytes)> = Vec::new();
        let mut min_ttl: Option<Duration> = None;
        let current = self.current.load();
        match fetched {
            Err(reason) => {
                for n in names {
                    let r = SecretRef::new(&p.name, n);
                    let e = SecretsError::Unresolved {
                        reference: r.to_string(),
                        reason: reason.clone(),
                    };
                    errors.push((r, e));
                }
            }
            Ok(items) => {
                for (name, res) in items {
                    let r = SecretRef::new(&p.name, name);
                    match res {
                        Err(e) => {
                            let e = e.into_error(&r);
                            errors.push((r, e));
                        }
                        Ok(f) => {
                            if let Some(reason) = unusable(&f.value) {
                                let e = SecretsError::InvalidValue {
                                    reference: r.to_string(),
                                    reason: reason.into(),
                                };
                                errors.push((r, e));
                                continue;
                            }
                            if let Some(ttl) = f.ttl {
                                min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));
                            }
                            let same = current.entries.get(&r).is_some_and(|e| e.value == f.value);
                            if !same {
                                changed.push((r.clone(), f.value));
                            }
                            ok.push((r, f.version));
                        }
                    }
                }
            }
        }
        drop(current);

        if !changed.is_empty() {
            let _l = self.swap_lock.lock().unwrap_or_else(|e| e.into_inner());
            let cur = self.current.load_full();
            let mut entries = cur.entries.clone();
            for (r, value) in &changed {
                // A reference dropped by a reload while this round ran has no health.
                let Some(health) = self.health_of(r) else {
                    continue;
                };
                entries.insert(
                    r.clone(),
                    Arc::new(Entry {
                        value: value.clone(),
                        health,
                    }),
                );
            }
            self.current.store(Arc::new(SecretSnapshot::new(entries)));
        }
        for (r, version) in &ok {
            if let Some(h) = self.health_of(r) {
                h.mark_ok(*version);
            }
        }
        for (r, e) in &errors {
            if let Some(h) = self.health_of(r) {
                h.mark_err(e);
            }
        }

        let label = ProviderLabel {
            provider: p.name.clone(),
        };
        let m = metrics();
        if errors.is_empty() {
            m.secrets.refresh_success.get_or_create(&label).inc();
            m.secrets
                .last_success
                .get_or_create(&label)
                .set(unix_secs() as i64);
            if p.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(provider = %p.name, "secret provider recovered");
            }
        } else {
            // One count per kind of failure in the round: `unavailable` is an outage,
            // `not_found` and `invalid` are mistakes to fix in the config or the store.
            let mut reasons: Vec<&str> = errors.iter().map(|(_, e)| e.failure_kind()).collect();
            reasons.sort();
            reasons.dedup();
            for reason in reasons {
                m.secrets
                    .refresh_failure
                    .get_or_create(&ProviderFailureLabels {
                        provider: p.name.clone(),
                        reason: reason.to_string(),
                    })
                    .inc();
            }
            p.failing.store(true, Ordering::Relaxed);
        }
        if !initial {
            for (r, _) in &changed {
                let version = self
                    .health_of(r)
                    .map_or(0, |h| h.version.load(Ordering::Relaxed));
                tracing::info!(provider = %p.name, reference = %r, version, "secret value rotated");
            }
            for (_, e) in &errors {
                match e {
                    SecretsError::InvalidValue { .. } => {
                        tracing::error!(provider = %p.name, error = %e, "new secret value refused; keeping the previous value")
                    }
                    _ => {
                        tracing::warn!(provider = %p.name, error = %e, "secret refresh failed; keeping the last-known-good value")
                    }
                }
            }
        }
        Round {
            errors: errors.into_iter().map(|(_, e)| e).collect(),
            min_ttl,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------

/// What `status` reports about one reference — never its value.
#[derive(Clone, Debug, Serialize)]
pub struct RefStatus {
    /// `${provider:name}`.
    pub reference: String,
    /// Provider name.
    pub provider: String,
    /// `vault`, `age` or `dir`.
    pub kind: String,
    /// Whether a value is loaded.
    pub resolved: bool,
    /// Provider version of the value (Vault KV v2 metadata version).
    pub version: Option<u64>,
    /// Seconds since the value was last read successfully.
    pub age_seconds: Option<u64>,
    /// Unix time of the last successful read.
    pub last_success_unix: Option<u64>,
    /// Whether the value is past `max_stale` (requests needing it get 503).
    pub stale: bool,
    /// The last refresh error, if the last refresh failed (value-free).
    pub last_error: Option<String>,
}

/// Owns the providers, the current snapshot and the background refresh tasks. Dropping it
/// (or calling [`shutdown`](Self::shutdown)) stops the tasks and file watchers; a config
/// reload builds a new store and drops the old one.
pub struct SecretStore {
    inner: Arc<Inner>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("refs", &read(&self.inner.health).len())
            .finish_non_exhaustive()
    }
}

impl Drop for SecretStore {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SecretStore {
    /// Resolve every reference once — failing with one error per unresolvable reference,
    /// named by its `${provider:name}` text — then, if `background`, start refresh tasks
    /// (Vault timers, file watchers). Providers that no reference uses are not contacted.
    /// Relative paths in `providers` are resolved against `base_dir`.
    pub async fn start(
        providers: &BTreeMap<String, ProviderConfig>,
        base_dir: &Path,
        refs: Vec<SecretRef>,
        background: bool,
    ) -> Result<Arc<SecretStore>, Vec<SecretsError>> {
        let built = build(providers, base_dir, refs, background).await;
        if !built.errors.is_empty() {
            return Err(built.errors);
        }
        Ok(Self::run(built, background))
    }

    /// Like [`start`](Self::start) with background refresh, but a reference that does not
    /// resolve yet is no error: the store starts anyway, returns what failed, and keeps
    /// retrying those providers with backoff and jitter. Until a reference resolves, a
    /// template that needs it fails with [`SecretsError::NotLoaded`] (routes answer 503),
    /// and it serves as soon as the value arrives. `warden run` starts this way, so one
    /// unreachable provider does not keep the routes that never use it from serving.
    pub async fn open(
        providers: &BTreeMap<String, ProviderConfig>,
        base_dir: &Path,
        refs: Vec<SecretRef>,
    ) -> (Arc<SecretStore>, Vec<SecretsError>) {
        let mut built = build(providers, base_dir, refs, true).await;
        let errors = std::mem::take(&mut built.errors);
        (Self::run(built, true), errors)
    }

    fn run(built: Built, background: bool) -> Arc<SecretStore> {
        let inner = built.inner;
        let cancel = CancellationToken::new();
        if background {
            for ((cfg, p, fw), (ttl, ok)) in built.providers.into_iter().zip(built.ttls) {
                let inner = inner.clone();
                let cancel = cancel.clone();
                match (cfg, fw) {
                    (ProviderConfig::Vault(v), _) => {
                        tokio::spawn(vault_loop(inner, p, v.refresh, ttl, ok, cancel));
                    }
                    (cfg, Some(fw)) => {
                        tokio::spawn(file_loop(
                            inner,
                            p,
                            fw,
                            poll_interval(cfg.max_stale()),
                            cancel,
                        ));
                    }
                    (_, None) => {}
                }
            }
        }
        Arc::new(SecretStore { inner, cancel })
    }

    /// Serve a reload with this store: `None` when a provider the new references use is
    /// not in this store or its settings changed (the caller builds a new store). Else
    /// read only the references that are new — an unrelated reload makes no provider
    /// request at all, and so applies while a provider is down — and stop refreshing the
    /// ones no longer used. When a new reference cannot be read, nothing changes and the
    /// errors are returned.
    pub async fn reuse_for(
        &self,
        providers: &BTreeMap<String, ProviderConfig>,
        base_dir: &Path,
        refs: &[SecretRef],
    ) -> Option<Result<(), Vec<SecretsError>>> {
        let inner = &self.inner;
        for r in refs {
            let mut cfg = providers.get(&r.provider)?.clone();
            cfg.resolve_paths(base_dir);
            if inner.configs.get(&r.provider) != Some(&cfg) {
                return None;
            }
        }
        let known: Vec<SecretRef> = read(&inner.health).keys().cloned().collect();
        let new: Vec<&SecretRef> = refs.iter().filter(|r| !known.contains(r)).collect();
        let mut by_provider: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for r in &new {
            by_provider
                .entry(r.provider.as_str())
                .or_default()
                .push(r.name.clone());
        }
        let mut staged = Vec::new();
        let mut errors = Vec::new();
        for (pname, names) in by_provider {
            let p = inner.providers.iter().find(|p| p.name == pname)?;
            let _guard = p.fetch_lock.lock().await;
            match p.backend.fetch(&names).await {
                Err(reason) => errors.extend(names.iter().map(|n| SecretsError::Unresolved {
                    reference: SecretRef::new(pname, n).to_string(),
                    reason: reason.clone(),
                })),
                Ok(items) => {
                    for (n, res) in items {
                        let r = SecretRef::new(pname, &n);
                        match res {
                            Err(e) => errors.push(e.into_error(&r)),
                            Ok(f) => match unusable(&f.value) {
                                Some(reason) => errors.push(SecretsError::InvalidValue {
                                    reference: r.to_string(),
                                    reason: reason.into(),
                                }),
                                None => staged.push((p.clone(), r, f)),
                            },
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Some(Err(errors));
        }
        let max_stale: HashMap<&str, Option<Duration>> = inner
            .configs
            .iter()
            .map(|(n, c)| (n.as_str(), c.max_stale()))
            .collect();
        {
            let _l = inner.swap_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut health = write(&inner.health);
            let cur = inner.current.load_full();
            let mut entries = cur.entries.clone();
            for (p, r, f) in staged {
                let h = Arc::new(RefHealth::new(
                    max_stale.get(r.provider.as_str()).copied().flatten(),
                ));
                h.mark_ok(f.version);
                health.insert(r.clone(), h.clone());
                entries.insert(
                    r.clone(),
                    Arc::new(Entry {
                        value: f.value,
                        health: h,
                    }),
                );
                let mut names = lock(&p.names);
                names.push(r.name.clone());
                names.sort();
            }
            // References the new config no longer uses stop being refreshed (a secret
            // removed from Vault must not look like an outage).
            health.retain(|r, _| refs.contains(r));
            entries.retain(|r, _| refs.contains(r));
            for p in &inner.providers {
                lock(&p.names).retain(|n| refs.contains(&SecretRef::new(&p.name, n)));
            }
            inner.current.store(Arc::new(SecretSnapshot::new(entries)));
        }
        Some(Ok(()))
    }

    /// Resolve every reference once, without background tasks, and report each one —
    /// resolved or not, with its error — instead of failing (`warden secrets check`).
    pub async fn check(
        providers: &BTreeMap<String, ProviderConfig>,
        base_dir: &Path,
        refs: Vec<SecretRef>,
    ) -> Vec<RefStatus> {
        let built = build(providers, base_dir, refs, false).await;
        status_of(&built.inner)
    }

    /// The current snapshot (cheap: one atomic load and an `Arc` clone).
    pub fn snapshot(&self) -> Arc<SecretSnapshot> {
        self.inner.current.load_full()
    }

    /// Re-read every provider now (`POST /secrets/refresh`, SIGHUP). Failures keep the old
    /// values and are returned (value-free).
    pub async fn refresh(&self) -> Result<(), Vec<SecretsError>> {
        let inner = &self.inner;
        let rounds = futures_util::future::join_all(
            inner
                .providers
                .iter()
                .map(|p| inner.refresh_provider(p, false)),
        )
        .await;
        let errors: Vec<SecretsError> = rounds.into_iter().flat_map(|r| r.errors).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// One entry per reference: resolved?, version, age, stale?, last error. Never a value.
    pub fn status(&self) -> Vec<RefStatus> {
        status_of(&self.inner)
    }

    /// Whether every reference has a value that is not stale (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        let snap = self.snapshot();
        read(&self.inner.health)
            .iter()
            .all(|(r, h)| snap.contains(r) && !h.is_stale())
    }

    #[cfg(test)]
    pub(super) fn inner_weak(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Stop background tasks and watchers (also done on drop).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

fn status_of(inner: &Inner) -> Vec<RefStatus> {
    let snap = inner.current.load();
    read(&inner.health)
        .iter()
        .map(|(r, h)| {
            let version = h.version.load(Ordering::Relaxed);
            let last_unix = h.last_ok_unix.load(Ordering::Relaxed);
            RefStatus {
                reference: r.to_string(),
                provider: r.provider.clone(),
                kind: inner
                    .kinds
                    .get(&r.provider)
                    .copied()
                    .unwrap_or("unknown")
                    .to_string(),
                resolved: snap.contains(r),
                version: (version != 0).then_some(version),
                age_seconds: h.age_ms().map(|ms| ms / 1000),
                last_success_unix: (last_unix != 0).then_some(last_unix),
                stale: h.is_stale(),
                last_error: h
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            }
        })
        .collect()
}

struct Built {
    inner: Arc<Inner>,
    providers: Vec<(ProviderConfig, Arc<ProviderRt>, Option<FileWatch>)>,
    /// Per provider: the shortest lease TTL of the first round, and whether it succeeded.
    ttls: Vec<(Option<Duration>, bool)>,
    errors: Vec<SecretsError>,
}

/// Why a value read from a provider must not be used, if it must not: an empty value is
/// a half-written file or a mistake, never a credential worth sending, and a value that is
/// not a valid header value would break (or inject into) the request.
fn unusable(value: &SecretBytes) -> Option<&'static str> {
    if value.is_empty() {
        Some("it is empty")
    } else {
        header_unsafe(value.expose())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Set up the providers that references use and read every reference once. Every
/// reference gets a health entry, failed ones with their error.
async fn build(
    providers: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
    refs: Vec<SecretRef>,
    watch_files: bool,
) -> Built {
    let mut refs = refs;
    refs.sort();
    refs.dedup();
    let mut errors = Vec::new();
    let mut health: BTreeMap<SecretRef, Arc<RefHealth>> = BTreeMap::new();
    let mut bad: Vec<(SecretRef, SecretsError)> = Vec::new();
    for e in validate_refs(providers, &refs) {
        if let Some(r) = refs
            .iter()
            .find(|r| e.reference() == Some(r.to_string().as_str()))
        {
            bad.push((r.clone(), e.clone()));
        }
        errors.push(e);
    }

    let mut by_provider: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &refs {
        if bad.iter().any(|(b, _)| b == r) {
            continue;
        }
        by_provider
            .entry(r.provider.as_str())
            .or_default()
            .push(r.name.clone());
    }
    let mut rts = Vec::new();
    let mut configs = BTreeMap::new();
    for (pname, names) in by_provider {
        let mut cfg = providers[pname].clone();
        cfg.resolve_paths(base_dir);
        for n in &names {
            health.insert(
                SecretRef::new(pname, n),
                Arc::new(RefHealth::new(cfg.max_stale())),
            );
        }
        let backend = match &cfg {
            ProviderConfig::Vault(v) => {
                VaultProvider::new(pname, v.clone()).map(|v| Backend::Vault(Box::new(v)))
            }
            ProviderConfig::Age(a) => Ok(Backend::Age(AgeProvider::new(a.clone()))),
            ProviderConfig::Dir(d) => Ok(Backend::Dir(DirProvider::new(d.clone()))),
        };
        let backend = match backend {
            Ok(b) => b,
            Err(reason) => {
                for n in &names {
                    let r = SecretRef::new(pname, n);
                    let e = SecretsError::Unresolved {
                        reference: r.to_string(),
                        reason: format!("provider {pname}: {reason}"),
                    };
                    bad.push((r, e.clone()));
                    errors.push(e);
                }
                continue;
            }
        };
        let rt = ProviderRt {
            name: pname.to_string(),
            backend,
            names: Mutex::new(names),
            fetch_lock: tokio::sync::Mutex::new(()),
            failing: Default::default(),
        };
        // Watch before the first read, so no change between the two is missed.
        let dirs = match &cfg {
            ProviderConfig::Vault(_) => Vec::new(),
            ProviderConfig::Age(a) => {
                let mut dirs = vec![parent(&a.file), parent(&a.identity_file)];
                dirs.dedup();
                dirs
            }
            ProviderConfig::Dir(d) => vec![d.path.clone()],
        };
        let fw = (watch_files && !dirs.is_empty()).then(|| {
            let notify = Arc::new(tokio::sync::Notify::new());
            let watcher = watch_dirs(pname, &dirs, &notify);
            FileWatch {
                dirs,
                notify,
                watcher,
            }
        });
        configs.insert(pname.to_string(), cfg.clone());
        rts.push((cfg, Arc::new(rt), fw));
    }
    for (r, e) in &bad {
        let h = health
            .entry(r.clone())
            .or_insert_with(|| Arc::new(RefHealth::new(None)));
        h.mark_err(e);
    }

    let inner = Arc::new(Inner {
        current: ArcSwap::from_pointee(SecretSnapshot::empty()),
        kinds: providers
            .iter()
            .map(|(n, p)| (n.clone(), p.kind()))
            .collect(),
        providers: rts.iter().map(|(_, p, _)| p.clone()).collect(),
        configs,
        health: std::sync::RwLock::new(health),
        swap_lock: Mutex::new(()),
    });
    let rounds = futures_util::future::join_all(
        inner
            .providers
            .iter()
            .map(|p| inner.refresh_provider(p, true)),
    )
    .await;
    let mut ttls = Vec::new();
    for round in rounds {
        ttls.push((round.min_ttl, round.errors.is_empty()));
        errors.extend(round.errors);
    }
    errors.sort_by(|a, b| a.reference().cmp(&b.reference()));
    Built {
        inner,
        providers: rts,
        ttls,
        errors,
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Files are re-read on every change event; the poll is the safety net for file systems
/// without working notifications, and what keeps `max_stale` meaningful for files.
fn poll_interval(max_stale: Option<Duration>) -> Duration {
    let base = Duration::from_secs(30);
    match max_stale {
        Some(m) => base.min(m / 3).max(Duration::from_millis(200)),
        None => base,
    }
}

/// Exponential backoff with jitter: 0.5 s · 2^(n-1), capped, times a random factor in
/// [0.5, 1.0) so that many gateways do not retry in lockstep.
pub(super) fn backoff(failures: u32, cap: Duration) -> Duration {
    let base =
        Duration::from_millis(500).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let d = base.min(cap);
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Next fixed refresh, brought forward to ~2/3 of the shortest lease TTL.
fn next_refresh(refresh: Duration, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(t) if !t.is_zero() => refresh
            .min(t.mul_f64(2.0 / 3.0))
            .max(Duration::from_millis(200)),
        _ => refresh,
    }
}

async fn vault_loop(
    inner: Arc<Inner>,
    p: Arc<ProviderRt>,
    refresh: Duration,
    ttl: Option<Duration>,
    first_round_ok: bool,
    cancel: CancellationToken,
) {
    let Backend::Vault(vault) = &p.backend else {
        return;
    };
    let cap = refresh
        .min(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    // A first round that failed (Vault down at start) is retried with backoff, not after
    // a whole refresh interval: routes that need its values are waiting for them.
    let mut failures = u32::from(!first_round_ok);
    let mut next_fetch = tokio::time::Instant::now()
        + if first_round_ok {
            next_refresh(refresh, ttl)
        } else {
            backoff(1, cap)
        };
    loop {
        let wake = match vault.renew_at().await {
            Some(r) => next_fetch.min(tokio::time::Instant::from_std(r)),
            None => next_fetch,
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if tokio::time::Instant::now() >= next_fetch {
            let round = inner.refresh_provider(&p, false).await;
            if round.errors.is_empty() {
                failures = 0;
                next_fetch = tokio::time::Instant::now() + next_refresh(refresh, round.min_ttl);
            } else {
                failures += 1;
                let delay = backoff(failures, cap);
                tracing::debug!(provider = %p.name, failures, retry_in = ?delay, "vault refresh failed; backing off");
                next_fetch = tokio::time::Instant::now() + delay;
            }
        } else {
            // Token renewal (or re-login) only; values are read on the fetch timer.
            let _guard = p.fetch_lock.lock().await;
            if let Err(reason) = vault.maintain_token().await {
                tracing::warn!(provider = %p.name, error = %reason, "vault token renewal failed; will retry");
            }
        }
    }
}

/// Quiet time after the last change before a file provider re-reads.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Wake `notify` on every change in `dirs`. `None` when the watch could not be set up
/// (logged; the provider falls back to polling and retries the watch).
fn watch_dirs(
    provider: &str,
    dirs: &[PathBuf],
    notify: &Arc<tokio::sync::Notify>,
) -> Option<DirWatcher> {
    let notify = notify.clone();
    match DirWatcher::new(dirs, DEBOUNCE, move |_| notify.notify_one()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(provider, error = %e, "cannot watch the secret files; polling only");
            None
        }
    }
}

/// A file provider's watcher, set up before its first read.
struct FileWatch {
    dirs: Vec<PathBuf>,
    notify: Arc<tokio::sync::Notify>,
    watcher: Option<DirWatcher>,
}

async fn file_loop(
    inner: Arc<Inner>,
    p: Arc<ProviderRt>,
    fw: FileWatch,
    poll: Duration,
    cancel: CancellationToken,
) {
    let FileWatch {
        dirs,
        notify,
        mut watcher,
    } = fw;
    let mut poll_tick = tokio::time::interval(poll);
    poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll_tick.tick().await; // the first tick is immediate; the initial read already happened
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            // Writers truncate, write and rename in several steps: the watcher reports a
            // change once they have been quiet for a moment.
            _ = notify.notified() => {
                tracing::debug!(provider = %p.name, "secret files changed; re-reading");
            }
            _ = poll_tick.tick() => {
                if watcher.is_none() {
                    watcher = watch_dirs(&p.name, &dirs, &notify);
                }
            }
        }
        inner.refresh_provider(&p, false).await;
    }
}
