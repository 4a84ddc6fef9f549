//! The process-wide wasmtime host: engine, linker, store state, loading and integrity.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::config::{MAX_PLUGIN_MEMORY, PluginConfig, PolicySettings};
use super::ratelimit::RateLimiter;
use crate::config::field::FieldError;
use crate::secrets::SecretBytes;

/// Generated host bindings for both contract versions. The only place that knows them.
pub(crate) mod bindings {
    /// `warden:policy@0.1.0` (`sdk/wit-0.1.0`): plugins built before 0.2.0 keep running.
    pub(crate) mod v1 {
        wasmtime::component::bindgen!({
            path: "../sdk/wit-0.1.0",
            world: "warden:policy/policy-plugin@0.1.0",
            imports: { default: trappable },
            exports: { default: async },
            ownership: Borrowing { duplicate_if_necessary: true },
        });
    }
    /// `warden:policy@0.2.0` (`sdk/wit`).
    pub(crate) mod v2 {
        wasmtime::component::bindgen!({
            path: "../sdk/wit",
            world: "warden:policy/policy-plugin@0.2.0",
            // A shared rate-limit store is a network round trip: the call must not hold a
            // runtime worker.
            imports: {
                "warden:policy/host.rate-limit": async | trappable,
                default: trappable,
            },
            exports: { default: async },
            ownership: Borrowing { duplicate_if_necessary: true },
        });
    }
}

/// The contract versions this gateway runs, oldest first.
pub(crate) const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// Which contract a loaded plugin speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contract {
    /// `warden:policy@0.1.0`: request head only.
    V1,
    /// `warden:policy@0.2.0`: bodies, response phase, rate limits.
    V2,
}

impl Contract {
    pub(crate) fn version(self) -> &'static str {
        match self {
            Contract::V1 => "0.1.0",
            Contract::V2 => "0.2.0",
        }
    }
}

/// A plugin pre-instantiated against the linker, per contract.
pub(crate) enum Pre {
    V1(bindings::v1::PolicyPluginPre<StoreState>),
    V2(bindings::v2::PolicyPluginPre<StoreState>),
}

/// WASI interfaces satisfied (granting nothing) for plugins whose std imports them
/// (`wasm32-wasip2`). Filesystem and sockets are not among them: a plugin that imports
/// them is refused at load.
const WASI_PREFIXES: &[&str] = &["wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:cli/"];

/// Process-wide plugin host. Create once with [`PolicyHost::new`]; shared across reloads.
pub struct PolicyHost {
    /// The engine, linker and epoch ticker, made when the first plugin is compiled: a
    /// gateway without plugins reserves no instance pool and wakes no ticker thread.
    wasm: std::sync::OnceLock<Wasm>,
    pub(crate) settings: PolicySettings,
    trusted_keys: Vec<Vec<u8>>,
    /// Components compiled for the current config (content hash → component), so a reload
    /// that keeps a plugin does not even read the disk cache.
    compiled: Mutex<HashMap<String, Component>>,
    pub(crate) cache_dir: Option<PathBuf>,
    /// Buckets behind `host.rate-limit`, kept across reloads so a reload never resets a
    /// caller's quota.
    rate: arc_swap::ArcSwap<RateLimiter>,
}

/// What running plugins takes: the engine with its instance pool, the linker, and the
/// thread that advances the epoch for deadlines.
struct Wasm {
    engine: Engine,
    linker: Linker<StoreState>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Wasm {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Wasm {
    fn new(settings: &PolicySettings, cache_dir: Option<&Path>) -> anyhow::Result<Wasm> {
        let engine = build_engine(settings, cache_dir)?;
        let mut linker = Linker::<StoreState>::new(&engine);
        add_wasi_to_linker(&mut linker).map_err(|e| anyhow!("linking WASI: {e:#}"))?;
        bindings::v1::PolicyPlugin::add_to_linker::<StoreState, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow!("linking host functions (0.1.0): {e:#}"))?;
        bindings::v2::PolicyPlugin::add_to_linker::<StoreState, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow!("linking host functions (0.2.0): {e:#}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = settings.epoch_tick;
            std::thread::Builder::new()
                .name("warden-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })?;
        }
        Ok(Wasm {
            engine,
            linker,
            ticker_stop,
        })
    }
}

impl std::fmt::Debug for PolicyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHost")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// The plugins of one config snapshot, compiled and checked.
pub struct PluginSet {
    pub(crate) host: Arc<PolicyHost>,
    pub(crate) plugins: BTreeMap<String, Arc<LoadedPlugin>>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSet")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PluginSet {
    /// Names of the loaded plugins.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }

    /// The hex SHA-256 of a loaded plugin's component.
    pub fn sha256(&self, name: &str) -> Option<&str> {
        self.plugins.get(name).map(|p| p.sha256.as_str())
    }
}

/// One compiled, checked plugin.
pub(crate) struct LoadedPlugin {
    pub(crate) name: String,
    pub(crate) config: PluginConfig,
    pub(crate) sha256: String,
    pub(crate) pre: Pre,
    pub(crate) contract: Contract,
    pub(crate) logs: Arc<LogLimiter>,
}

// ---------------------------------------------------------------------------------------
// Store state and host functions
// ---------------------------------------------------------------------------------------

/// Data of one plugin instance's `Store`.
pub(crate) struct StoreState {
    pub(crate) limits: MemoryLimiter,
    /// Built on first use: a plugin without WASI imports never pays for one.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) plugin: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) logs: Arc<LogLimiter>,
    /// Secrets granted to the current evaluation, rendered just before the call and
    /// dropped (zeroized) right after it. `Err` holds a value-free reason.
    pub(crate) secrets: Vec<(String, Result<SecretBytes, String>)>,
    /// Granted secret names (also outside an evaluation, e.g. during `configure`).
    pub(crate) granted: Arc<[String]>,
    /// Epoch ticks the plugin may still run for. Counted only when a tick finds the
    /// plugin executing, so time spent waiting for a worker thread after a yield (a busy
    /// or starved machine) does not count against it: a 5 µs policy never fails its 10 ms
    /// deadline because the runtime was slow to resume it.
    pub(crate) ticks_left: u64,
    pub(crate) deadline_hit: bool,
    /// Buckets behind `host.rate-limit` (process-wide).
    pub(crate) rate: Arc<RateLimiter>,
    /// True while `evaluate` runs: rate limits count requests, not configurations.
    pub(crate) evaluating: bool,
}

impl StoreState {
    /// Arm the deadline: `budget` of running time, in ticks of `tick` (at least one).
    pub(crate) fn arm_deadline(&mut self, budget: Duration, tick: Duration) {
        let ticks = budget.as_nanos().div_ceil(tick.as_nanos().max(1));
        self.ticks_left = u64::try_from(ticks).unwrap_or(u64::MAX).max(1);
        self.deadline_hit = false;
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(deny_all_wasi),
            table: &mut self.table,
        }
    }
}

/// Memory limit: growing past `max` traps (and is recorded so the error can be
/// classified). Tracks the current size for recycling decisions.
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    pub(crate) hit: bool,
    pub(crate) current: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "plugin memory limit of {} bytes reached",
                self.max
            ));
        }
        self.current = desired;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; nothing a policy needs grows them much.
        if desired > 100_000 {
            self.hit = true;
            return Err(wasmtime::format_err!("plugin table limit reached"));
        }
        Ok(true)
    }
}

/// The deadline expired (raised from the epoch callback).
#[derive(Debug, thiserror::Error)]
#[error("plugin deadline exceeded")]
pub(crate) struct DeadlineExceeded;

impl bindings::v1::warden::policy::types::Host for StoreState {}
impl bindings::v2::warden::policy::types::Host for StoreState {}

/// The log levels of both contracts.
#[derive(Clone, Copy)]
enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl StoreState {
    fn host_log(&mut self, level: LogLevel, message: &str, fields: &[(String, String)]) {
        let Some(suppressed) = self.logs.admit() else {
            return;
        };
        let message = clip(message, 512);
        let mut rendered = String::new();
        for (k, v) in fields.iter().take(16) {
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            let _ = write!(rendered, "{}={:?}", clip(k, 64), clip(v, 256));
        }
        let (plugin, route) = (&*self.plugin, &*self.route);
        macro_rules! ev {
            ($lvl:expr) => {
                tracing::event!(target: "warden::plugin", $lvl, plugin, route, fields = %rendered, suppressed, "{message}")
            };
        }
        match level {
            LogLevel::Trace => ev!(tracing::Level::TRACE),
            LogLevel::Debug => ev!(tracing::Level::DEBUG),
            LogLevel::Info => ev!(tracing::Level::INFO),
            LogLevel::Warn => ev!(tracing::Level::WARN),
            LogLevel::Error => ev!(tracing::Level::ERROR),
        }
    }

    fn host_secret_matches(&mut self, name: &str, presented: &[u8]) -> wasmtime::Result<bool> {
        if !self.granted.iter().any(|g| g == name) {
            return Err(wasmtime::format_err!(
                "plugin asked for secret {name:?}, which this route does not grant it"
            ));
        }
        match self.secrets.iter().find(|(n, _)| n == name) {
            Some((_, Ok(secret))) => Ok(secret.ct_eq(presented)),
            Some((_, Err(reason))) => Err(wasmtime::format_err!(
                "secret {name:?} is unavailable: {reason}"
            )),
            // Granted but not rendered: called from `configure`, where no request exists.
            None => Err(wasmtime::format_err!(
                "secret-matches is only available while evaluating a request"
            )),
        }
    }
}

impl bindings::v1::warden::policy::host::Host for StoreState {
    fn log(
        &mut self,
        level: bindings::v1::warden::policy::host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        use bindings::v1::warden::policy::host::Level as L;
        let level = match level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        };
        self.host_log(level, &message, &fields);
        Ok(())
    }

    fn secret_matches(&mut self, name: String, presented: Vec<u8>) -> wasmtime::Result<bool> {
        self.host_secret_matches(&name, &presented)
    }
}

impl bindings::v2::warden::policy::host::Host for StoreState {
    fn log(
        &mut self,
        level: bindings::v2::warden::policy::host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        use bindings::v2::warden::policy::host::Level as L;
        let level = match level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        };
        self.host_log(level, &message, &fields);
        Ok(())
    }

    fn secret_matches(&mut self, name: String, presented: Vec<u8>) -> wasmtime::Result<bool> {
        self.host_secret_matches(&name, &presented)
    }

    async fn rate_limit(
        &mut self,
        key: String,
        limit: u32,
        window_ms: u32,
    ) -> wasmtime::Result<bindings::v2::warden::policy::types::RateDecision> {
        if !self.evaluating {
            return Err(wasmtime::format_err!(
                "rate-limit is only available while evaluating a request"
            ));
        }
        if limit == 0 || window_ms == 0 {
            return Err(wasmtime::format_err!(
                "rate-limit needs a limit and a window greater than zero"
            ));
        }
        if key.len() > MAX_RATE_KEY {
            return Err(wasmtime::format_err!(
                "rate-limit key longer than {MAX_RATE_KEY} bytes"
            ));
        }
        let d = self
            .rate
            .check(
                &self.plugin,
                &self.route,
                &key,
                limit,
                Duration::from_millis(u64::from(window_ms)),
            )
            .await;
        Ok(bindings::v2::warden::policy::types::RateDecision {
            allowed: d.allowed,
            remaining: d.remaining,
            reset_after_ms: u32::try_from(d.reset_after.as_millis()).unwrap_or(u32::MAX),
        })
    }
}

/// Longest rate-limit key a plugin may pass (a hash or an identity fits easily).
const MAX_RATE_KEY: usize = 1024;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Token bucket for plugin log records.
pub(crate) struct LogLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant, u64)>,
}

impl LogLimiter {
    pub(crate) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        LogLimiter {
            rate,
            burst: (rate * 4.0).max(1.0),
            state: Mutex::new((rate * 4.0, Instant::now(), 0)),
        }
    }

    /// `Some(records suppressed since the last admitted one)` if this record may go out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last, dropped) = &mut *s;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Some(std::mem::take(dropped))
        } else {
            *dropped += 1;
            None
        }
    }
}

/// Wall clock frozen at the Unix epoch: plugins must not depend on time.
struct FrozenWallClock;
impl wasmtime_wasi::HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// Monotonic clock that never advances.
struct FrozenMonotonicClock;
impl wasmtime_wasi::HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A WASI context that grants nothing: no args, env, preopens or network; stdin empty,
/// stdout/stderr discarded; frozen clocks; fixed "random" bytes.
fn deny_all_wasi() -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.wall_clock(FrozenWallClock)
        .monotonic_clock(FrozenMonotonicClock)
        .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a; 32]))
        .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5; 32]))
        .insecure_random_seed(0)
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false);
    b.build()
}

// ---------------------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------------------

impl PolicyHost {
    /// Check the settings and set up the host. The engine, its instance pool and the epoch
    /// ticker are made when the first plugin is compiled. Relative `cache_dir` is resolved
    /// against `base_dir`.
    pub fn new(settings: &PolicySettings, base_dir: &Path) -> anyhow::Result<Arc<Self>> {
        if let Some(e) = settings.check().into_iter().next() {
            anyhow::bail!("{}: {}", e.key, e.reason);
        }
        let trusted_keys: Vec<Vec<u8>> = settings
            .trusted_key_bytes()
            .iter()
            .map(|k| k.to_vec())
            .collect();

        let cache_dir = if settings.cache {
            match &settings.cache_dir {
                Some(d) => Some(base_dir.join(d)),
                None => default_cache_dir(),
            }
        } else {
            None
        };
        Ok(Arc::new(PolicyHost {
            wasm: std::sync::OnceLock::new(),
            settings: settings.clone(),
            trusted_keys,
            compiled: Mutex::new(HashMap::new()),
            cache_dir,
            rate: arc_swap::ArcSwap::new(RateLimiter::new(
                settings.rate_limit_keys,
                settings.rate_limit_store.as_ref(),
            )),
        }))
    }

    /// Forget every rate-limit bucket (`warden plugin test` runs each case from zero).
    pub(crate) fn fresh_rate_limits(&self) {
        let old = self.rate.load();
        self.rate.store(RateLimiter::new(
            old.max_keys(),
            self.settings.rate_limit_store.as_ref(),
        ));
    }

    /// The engine, linker and ticker, made on first use.
    fn wasm(&self) -> anyhow::Result<&Wasm> {
        if let Some(w) = self.wasm.get() {
            return Ok(w);
        }
        // Two loads racing to make it (a reload beside `warden plugin test`) make it once.
        static MAKING: Mutex<()> = Mutex::new(());
        let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = self.wasm.get() {
            return Ok(w);
        }
        let w = Wasm::new(&self.settings, self.cache_dir.as_deref())?;
        Ok(self.wasm.get_or_init(|| w))
    }

    /// The engine (for tools that precompile), made on first use.
    pub fn engine(&self) -> anyhow::Result<&Engine> {
        Ok(&self.wasm()?.engine)
    }

    /// The engine and linker of a host that has compiled a component: every caller holds
    /// one.
    fn compiled(&self) -> &Wasm {
        self.wasm
            .get()
            .expect("a component exists, so the engine that compiled it does")
    }

    /// Compile and check every plugin of one config snapshot. Errors are keyed by plugin
    /// name, with key paths relative to the plugin's table.
    pub fn load(
        self: &Arc<Self>,
        plugins: &BTreeMap<String, PluginConfig>,
        base_dir: &Path,
    ) -> Result<PluginSet, Vec<(String, FieldError)>> {
        let mut errs = Vec::new();
        let mut loaded = BTreeMap::new();
        let mut used = HashMap::new();
        // Plugins load side by side, one thread per CPU at most: reading a precompiled
        // plugin from the cache (or componentizing and compiling it) is CPU work that
        // start-up otherwise waits for plugin after plugin. Thread `t` takes plugins t,
        // t + threads, …; results keep the config's order.
        let list: Vec<(&String, &PluginConfig)> = plugins.iter().collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, list.len().max(1));
        // A panic while loading one plugin becomes that plugin's error, so no thread ends
        // without its share's results.
        let load = |i: usize| {
            let (name, cfg) = list[i];
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.load_one(name, cfg, base_dir)
            }))
            .unwrap_or_else(|payload| {
                Err(vec![FieldError::new(
                    "file",
                    format!("loading the plugin panicked: {}", panic_text(&*payload)),
                )])
            })
        };
        let load_share = |t: usize| {
            (t..list.len())
                .step_by(threads)
                .map(|i| (i, load(i)))
                .collect::<Vec<_>>()
        };
        let mut slots: Vec<Option<LoadResult>> = (0..list.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let load_share = &load_share;
                    std::thread::Builder::new()
                        .name("warden-load".into())
                        .spawn_scoped(scope, move || load_share(t))
                })
                .collect();
            for (t, handle) in handles.into_iter().enumerate() {
                let share = match handle {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|payload| std::panic::resume_unwind(payload)),
                    // No thread to be had: load this share on the calling thread.
                    Err(_) => load_share(t),
                };
                for (i, r) in share {
                    slots[i] = Some(r);
                }
            }
        });
        let results = list
            .iter()
            .zip(slots)
            .map(|((name, _), r)| (*name, r.expect("every plugin has a result")));
        for (name, result) in results {
            match result {
                Ok((p, component)) => {
                    used.insert(p.sha256.clone(), component);
                    loaded.insert(name.clone(), Arc::new(p));
                }
                Err(list) => errs.extend(list.into_iter().map(|e| (name.clone(), e))),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        if let Some(dir) = self.cache_dir.as_deref() {
            prune_component_cache(dir, used.keys(), std::time::SystemTime::now());
        }
        *self.compiled.lock().unwrap_or_else(|e| e.into_inner()) = used;
        Ok(PluginSet {
            host: self.clone(),
            plugins: loaded,
        })
    }

    fn load_one(&self, name: &str, cfg: &PluginConfig, base_dir: &Path) -> LoadResult {
        let errs = cfg.check();
        if !errs.is_empty() {
            return Err(errs);
        }
        let path = base_dir.join(&cfg.file);
        let bytes = std::fs::read(&path).map_err(|e| {
            vec![FieldError::new(
                "file",
                format!("cannot read {}: {e}", path.display()),
            )]
        })?;
        let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));

        let mut errs = Vec::new();
        if let Some(pin) = &cfg.sha256 {
            let pin = pin
                .trim()
                .strip_prefix("sha256:")
                .unwrap_or(pin.trim())
                .to_ascii_lowercase();
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                errs.push(FieldError::new("sha256", "expected 64 hex digits"));
            } else if pin != sha256 {
                errs.push(FieldError::new(
                    "sha256",
                    format!("mismatch: {} hashes to {sha256}, but the config pins {pin}; refusing to load it", path.display()),
                ));
            }
        }
        // `signature` defaults to `FILE.sig` when that file exists (as `warden plugin sign`
        // writes it) and there are keys to check it with.
        let default_sig = {
            let mut p = path.clone().into_os_string();
            p.push(".sig");
            PathBuf::from(p)
        };
        let signature = cfg
            .signature
            .as_ref()
            .map(|s| base_dir.join(s))
            .or_else(|| {
                (!self.trusted_keys.is_empty() && default_sig.is_file()).then_some(default_sig)
            });
        match &signature {
            Some(sig) => {
                if let Err(e) = self.verify_signature(&bytes, sig) {
                    errs.push(FieldError::new("signature", e));
                }
            }
            None if self.settings.require_signatures => errs.push(FieldError::new(
                "signature",
                "missing: [policy] require_signatures is on, so every plugin needs a signature file",
            )),
            None => {}
        }
        if !errs.is_empty() {
            return Err(errs);
        }

        let component = self
            .compile(&bytes, &sha256)
            .map_err(|e| vec![FieldError::new("file", e)])?;
        let (pre, contract) = self
            .check_component(&component)
            .map_err(|e| vec![FieldError::new("file", e)])?;
        Ok((
            LoadedPlugin {
                name: name.to_string(),
                config: cfg.clone(),
                sha256,
                pre,
                contract,
                logs: Arc::new(LogLimiter::new(self.settings.log_rate)),
            },
            component,
        ))
    }

    fn verify_signature(&self, bytes: &[u8], sig_path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(sig_path)
            .map_err(|e| format!("cannot read {}: {e}", sig_path.display()))?;
        let sig = hex::decode(text.trim())
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or_else(|| {
                format!(
                    "{} is not a hex Ed25519 signature (128 hex digits)",
                    sig_path.display()
                )
            })?;
        if self.trusted_keys.is_empty() {
            return Err("cannot verify: [policy] trusted_keys is empty".into());
        }
        let ok = self.trusted_keys.iter().any(|k| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k)
                .verify(bytes, &sig)
                .is_ok()
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "verification failed: {} is not a valid signature of this file by any trusted key; refusing to load it",
                sig_path.display()
            ))
        }
    }

    /// Compile (or fetch from the in-memory map / disk cache).
    pub(crate) fn compile(&self, bytes: &[u8], sha256: &str) -> Result<Component, String> {
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
        {
            return Ok(c.clone());
        }
        let componentized;
        let bytes = match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                componentized = componentize_cached(bytes, sha256, self.cache_dir.as_deref())?;
                &componentized[..]
            }
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => bytes,
            _ => return Err("not a component: the file is not WebAssembly".into()),
        };
        let engine = &self.wasm().map_err(|e| format!("{e:#}"))?.engine;
        Component::new(engine, bytes).map_err(|e| format!("not a valid component: {e:#}"))
    }

    /// Check world, version and exports, and pre-instantiate against the linker.
    pub(crate) fn check_component(&self, component: &Component) -> Result<(Pre, Contract), String> {
        let ty = component.component_type();
        let exports: Vec<(String, ComponentItem)> = ty
            .exports(&self.compiled().engine)
            .map(|(n, item)| (n.to_string(), item.ty))
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.compiled().engine)
            .map(|(n, _)| n.to_string())
            .collect();
        // The version a plugin was built against shows in its export (or, failing that, in
        // what it imports of ours).
        let built_against = exports
            .iter()
            .find_map(|(n, _)| n.strip_prefix("warden:policy/policy@"))
            .or_else(|| {
                imports.iter().find_map(|n| {
                    n.strip_prefix("warden:policy/")
                        .and_then(|r| r.split_once('@'))
                        .map(|(_, v)| v)
                })
            })
            .map(str::to_string);
        let contract = match built_against.as_deref() {
            Some("0.1.0") => Contract::V1,
            Some("0.2.0") => Contract::V2,
            Some(other) => {
                return Err(format!(
                    "wrong world: built against warden:policy@{other}, this gateway supports {}",
                    SUPPORTED_VERSIONS.join(" and ")
                ));
            }
            None => {
                let names: Vec<&str> = exports.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "wrong world: missing export warden:policy/policy@{} (the component exports: {}); is the policy exported with warden_sdk::export_policy!?",
                    Contract::V2.version(),
                    if names.is_empty() {
                        "nothing".to_string()
                    } else {
                        names.join(", ")
                    }
                ));
            }
        };
        let version = contract.version();
        let export = format!("warden:policy/policy@{version}");
        let ours = [
            format!("warden:policy/host@{version}"),
            format!("warden:policy/types@{version}"),
        ];
        let unsupported: Vec<&str> = imports
            .iter()
            .filter(|n| !ours.contains(n) && !WASI_PREFIXES.iter().any(|p| n.starts_with(p)))
            .map(String::as_str)
            .collect();
        if !unsupported.is_empty() {
            return Err(format!(
                "wrong world: the component imports {}, which Warden does not provide to plugins \
                 (policies get no filesystem, network or other host access; target the \
                 warden:policy/policy-plugin@{version} world)",
                unsupported.join(", ")
            ));
        }
        let Some((_, item)) = exports.iter().find(|(n, _)| *n == export) else {
            return Err(format!(
                "wrong world: the component imports warden:policy@{version} but does not export {export}"
            ));
        };
        let required: &[&str] = match contract {
            Contract::V1 => &["configure", "evaluate"],
            Contract::V2 => &["configure", "evaluate", "evaluate-response"],
        };
        if let ComponentItem::ComponentInstance(inst) = item {
            let funcs: Vec<String> = inst
                .exports(&self.compiled().engine)
                .map(|(n, _)| n.to_string())
                .collect();
            for f in required {
                if !funcs.iter().any(|n| n == f) {
                    return Err(format!("missing export: {export} has no `{f}` function"));
                }
            }
        }
        let pre = self
            .compiled()
            .linker
            .instantiate_pre(component)
            .map_err(|e| format!("wrong world: cannot link the component's imports: {e:#}"))?;
        let mismatch =
            |e: wasmtime::Error| format!("wrong world: exports do not match {export}: {e:#}");
        let pre = match contract {
            Contract::V1 => Pre::V1(bindings::v1::PolicyPluginPre::new(pre).map_err(mismatch)?),
            Contract::V2 => Pre::V2(bindings::v2::PolicyPluginPre::new(pre).map_err(mismatch)?),
        };
        Ok((pre, contract))
    }

    /// A new store for one instance of `plugin` serving `route`.
    pub(crate) fn new_store(
        &self,
        plugin: &LoadedPlugin,
        route: Arc<str>,
        granted: Arc<[String]>,
    ) -> Store<StoreState> {
        let state = StoreState {
            limits: MemoryLimiter {
                max: plugin.config.limits.memory as usize,
                hit: false,
                current: 0,
            },
            wasi: None,
            table: ResourceTable::new(),
            plugin: Arc::from(plugin.name.as_str()),
            route,
            logs: plugin.logs.clone(),
            secrets: Vec::new(),
            granted,
            ticks_left: 0,
            deadline_hit: false,
            rate: self.rate.load_full(),
            evaluating: false,
        };
        let mut state = state;
        state.arm_deadline(
            plugin.config.limits.configure_deadline,
            self.settings.epoch_tick,
        );
        let mut store = Store::new(&self.compiled().engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if s.ticks_left == 0 {
                s.deadline_hit = true;
                return Err(DeadlineExceeded.into());
            }
            s.ticks_left -= 1;
            // Let other tasks run on this worker thread, then continue for another tick.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }
}

/// The address space of a 32-bit WebAssembly memory.
const WASM32_SPACE: u64 = 1 << 32;

/// The engine, with every memory slot reserving a 32-bit memory's whole address space
/// (about 4 GiB per slot, two slots per instance: 8 TiB of the 128 TiB a process can address
/// at the default 1,000 instances). Where that much address space is not there (a smaller
/// virtual address space, `ulimit -v`), each slot reserves only the largest memory limit a
/// plugin may have: plugins run the same, their memory accesses bounds-checked.
fn build_engine(settings: &PolicySettings, cache_dir: Option<&Path>) -> anyhow::Result<Engine> {
    let cache = compiled_cache(cache_dir)?;
    let whole = match engine_with(settings, cache.clone(), WASM32_SPACE, 32 << 20) {
        Ok(engine) => return Ok(engine),
        Err(e) => e,
    };
    match engine_with(settings, cache, MAX_PLUGIN_MEMORY, 64 << 10) {
        Ok(engine) => {
            tracing::warn!(
                max_instances = settings.max_instances,
                error = %format!("{whole:#}"),
                "not enough address space to reserve 4 GiB per plugin memory; plugin memory accesses will be bounds-checked (slower). Lowering policy.max_instances avoids this"
            );
            Ok(engine)
        }
        Err(e) => Err(anyhow!(
            "cannot set up the WebAssembly engine: {e:#} (every one of policy.max_instances = {} reserves address space; lower it)",
            settings.max_instances
        )),
    }
}

fn engine_with(
    settings: &PolicySettings,
    cache: Option<wasmtime::Cache>,
    reservation: u64,
    guard: u64,
) -> anyhow::Result<Engine> {
    let n = settings.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(MAX_PLUGIN_MEMORY as usize);

    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        // Not derived from settings, so the precompiled-artifact cache key is stable. With
        // the whole 4 GiB reserved and a guard after it no index can leave the reservation,
        // so compiled code checks no bounds; with less, every load and store of a plugin is
        // three instructions longer (a compare and a conditional move before each).
        .memory_reservation(reservation)
        .memory_guard_size(guard)
        .memory_reservation_for_growth(0)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .cache(cache);
    Engine::new(&cfg).map_err(|e| anyhow!("{e:#}"))
}

/// wasmtime's cache of compiled plugins, in `cache_dir/compiled`.
fn compiled_cache(cache_dir: Option<&Path>) -> anyhow::Result<Option<wasmtime::Cache>> {
    let Some(dir) = cache_dir else {
        return Ok(None);
    };
    // wasmtime's cache gets a directory of its own: its clean-up removes whatever in its
    // directory it did not write, such as the componentized plugins beside it.
    let compiled = dir.join("compiled");
    match std::fs::create_dir_all(&compiled) {
        Ok(()) => {
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(compiled);
            let cache = wasmtime::Cache::new(cc)
                .map_err(|e| anyhow!("setting up the plugin cache: {e:#}"))?;
            Ok(Some(cache))
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "plugin cache directory unusable for compiled code; plugins will be compiled at every start");
            Ok(None)
        }
    }
}

/// What loading one plugin gives: the plugin and its component, or its errors.
type LoadResult = Result<(LoadedPlugin, Component), Vec<FieldError>>;

/// A panic's message, when it has one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
        .to_string()
}

/// Turn a core module built for `wasm32-unknown-unknown` (which carries its WIT world in
/// a `component-type` custom section, as wit-bindgen emits it) into a component. Such a
/// plugin imports no WASI at all, so its instances are one core module and nothing else.
/// Deterministic, so a pinned hash of the module file pins the component too.
fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    let has_world = wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(Result::ok)
        .any(|p| {
            matches!(p, wasmparser::Payload::CustomSection(c) if c.name().starts_with("component-type"))
        });
    if !has_world {
        return Err(
            "not a component: this is a core WebAssembly module with no warden:policy world in \
             it; build the plugin with warden-sdk (for --target wasm32-unknown-unknown or \
             wasm32-wasip2)"
                .into(),
        );
    }
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            format!(
                "not a component: this is a core WebAssembly module without a usable \
                 warden:policy world ({e:#}); build the plugin with warden-sdk for \
                 --target wasm32-unknown-unknown or wasm32-wasip2"
            )
        })
}

/// [`componentize`], kept in the plugin cache beside wasmtime's compiled artifacts (in
/// `components/`, apart from wasmtime's `compiled/`, which it cleans up itself), keyed
/// by the core module's SHA-256 (which the config may pin) and the versions of this build
/// and its encoder ([`component_entry_name`]). A
/// start with a warm cache then skips wit-component's validation and encoding, and the
/// pages of code that do them, which would otherwise stay resident.
///
/// The directory is trusted as wasmtime's cache in it is (that one holds native code).
/// Each entry still begins with a SHA-256 over the module's hash and the component after
/// it, so a torn or corrupted entry, or one made from another module, is noticed and made
/// again, never loaded. A cache that cannot be written costs only the time to
/// componentize.
fn componentize_cached(
    module: &[u8],
    module_sha256: &str,
    cache_dir: Option<&Path>,
) -> Result<Vec<u8>, String> {
    let Some(dir) = cache_dir else {
        return componentize(module);
    };
    let path = component_cache_path(dir, module_sha256);
    if let Some(component) = std::fs::read(&path)
        .ok()
        .and_then(|entry| cache_entry_component(entry, module_sha256))
    {
        return Ok(component);
    }
    let component = componentize(module)?;
    if let Err(e) = write_cache_entry(&path, module_sha256, &component) {
        tracing::debug!(path = %path.display(), error = %e, "componentized plugin not cached");
    }
    Ok(component)
}

/// Where the component made from the core module with this SHA-256 is cached.
pub(crate) fn component_cache_path(cache_dir: &Path, module_sha256: &str) -> PathBuf {
    cache_dir
        .join("components")
        .join(component_entry_name(module_sha256))
}

/// The file name of a component entry. It carries this build's version and its encoder's
/// (wit-component's), so a build with another encoder makes its own entry rather than
/// loading one it did not make.
fn component_entry_name(module_sha256: &str) -> String {
    format!(
        "{module_sha256}-{}-wit-component-{}.component",
        env!("CARGO_PKG_VERSION"),
        env!("WARDEN_WIT_COMPONENT_VERSION")
    )
}

/// Whether `name` is a component entry of some build: `<64 hex>-…-wit-component-….component`.
fn is_component_entry_name(name: &str) -> bool {
    name.len() > 65
        && name.as_bytes()[..64].iter().all(u8::is_ascii_hexdigit)
        && name.as_bytes()[64] == b'-'
        && name[65..].contains("-wit-component-")
        && name.ends_with(".component")
}

/// Whether `name` is a temporary file of [`write_cache_entry`]: `.tmp-<32 hex>`.
fn is_temp_entry_name(name: &str) -> bool {
    name.strip_prefix(".tmp-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How long a component entry that no load uses stays in the cache: a plugin replaced by
/// a new build, or an entry of another Warden version, goes once this has passed.
pub(crate) const UNUSED_COMPONENT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How old a temporary file of [`write_cache_entry`] is before it counts as left by a
/// writer that died (a live one renames it within milliseconds).
pub(crate) const STALE_TEMP_FILE: Duration = Duration::from_secs(3600);
/// How old a used entry's mark is before a load marks it again.
const MARK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Keep `components/` to what is used. The entries of the modules in `used` (the plugins
/// a load has just loaded) are marked as used, through their modification time, when
/// their mark is more than a day old; an entry unused for [`UNUSED_COMPONENT_TTL`],
/// whatever its version, and a temporary file older than [`STALE_TEMP_FILE`] are
/// removed. A time more than a day ahead of `now` (a clock set back) counts as old.
///
/// Only regular files named as this cache names them are touched, each through the
/// directory's handle and never through a link. Several gateways can share the
/// directory: each keeps its own entries marked (marking needs only write access to the
/// file, not ownership), and an entry removed under one that has run a week without a
/// load is made again at its next load.
pub(crate) fn prune_component_cache<'a>(
    cache_dir: &Path,
    used: impl Iterator<Item = &'a String>,
    now: std::time::SystemTime,
) {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
    let Ok(dir) = rustix::fs::open(
        cache_dir.join("components"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
        return;
    };
    let used: std::collections::HashSet<String> = used.map(|s| component_entry_name(s)).collect();
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let older_than = |st: &rustix::fs::Stat, limit: Duration| {
        // `st_mtime` is narrower than i64 on some targets.
        #[allow(clippy::unnecessary_cast)]
        let age = now.saturating_sub(st.st_mtime as i64);
        age > limit.as_secs() as i64 || age < -(MARK_EVERY.as_secs() as i64)
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(text) = name.to_str() else { continue };
        let in_use = used.contains(text);
        let limit = if in_use {
            MARK_EVERY
        } else if is_component_entry_name(text) {
            UNUSED_COMPONENT_TTL
        } else if is_temp_entry_name(text) {
            STALE_TEMP_FILE
        } else {
            continue;
        };
        let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || !older_than(&st, limit) {
            continue;
        }
        let result = if in_use {
            let mark = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
            };
            rustix::fs::utimensat(&dir, name, &mark, AtFlags::SYMLINK_NOFOLLOW)
        } else {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty())
        };
        if let Err(e) = result {
            tracing::debug!(dir = %cache_dir.display(), entry = text, error = %e, "plugin cache entry not pruned");
        }
    }
}

/// The digest an entry begins with: SHA-256 over the module's hash (hex) and the
/// component, binding the component to the module it was made from.
pub(crate) fn cache_entry_digest(module_sha256: &str, component: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(module_sha256.as_bytes());
    ctx.update(component);
    ctx.finish()
}

/// The component in a cache entry, if the entry is whole and was made from this module.
fn cache_entry_component(mut entry: Vec<u8>, module_sha256: &str) -> Option<Vec<u8>> {
    const DIGEST: usize = 32;
    if entry.len() <= DIGEST {
        return None;
    }
    let digest = cache_entry_digest(module_sha256, &entry[DIGEST..]);
    if digest.as_ref() != &entry[..DIGEST] {
        return None;
    }
    entry.drain(..DIGEST);
    Some(entry)
}

/// Write an entry into a new file of a random name (created exclusively, so no other
/// writer, in this process or another sharing the directory, can write into it) and
/// rename it into place, so a reader never sees part of one.
fn write_cache_entry(path: &Path, module_sha256: &str, component: &[u8]) -> std::io::Result<()> {
    use ring::rand::SecureRandom as _;
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut name = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut name)
        .map_err(|_| std::io::Error::other("no randomness for a temporary name"))?;
    let tmp = dir.join(format!(".tmp-{}", hex::encode(name)));
    let digest = cache_entry_digest(module_sha256, component);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    // From here the file is ours: removed again if it does not become the entry.
    file.write_all(digest.as_ref())
        .and_then(|()| file.write_all(component))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// `$XDG_CACHE_HOME/warden`, `$HOME/.cache/warden`, or, with neither set, a directory of
/// this user's own in the temp dir ([`private_cache_dir_in`]).
pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("warden"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(h).join(".cache").join("warden"));
    }
    private_cache_dir_in(&std::env::temp_dir())
}

/// `DIR/warden-cache-UID`, made private to this user. The cache holds native code, and a
/// shared temp dir lets any local user make that path first, so it is used only when it
/// is a directory (not a link) that this user owns and no one else can write to; else
/// there is no cache and plugins are compiled at every start.
pub(crate) fn private_cache_dir_in(tmp: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    // The process's effective user owns `/proc/self`.
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let dir = tmp.join(format!("warden-cache-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let private = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0);
    if !private {
        tracing::warn!(
            dir = %dir.display(),
            "no private plugin cache directory (another user can write to this one): plugins \
             will be compiled at every start; set [policy] cache_dir"
        );
        return None;
    }
    Some(dir)
}

/// Link the WASI interfaces a `wasm32-wasip2` std may import, backed by [`deny_all_wasi`].
/// Filesystem and sockets are deliberately absent.
fn add_wasi_to_linker(l: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::p2::bindings::{cli, random};
    use wasmtime_wasi::random::WasiRandom;
    // io (error, poll, streams), clocks, random/random, stdin/stdout/stderr.
    wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(l)?;
    random::insecure::add_to_linker::<StoreState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<StoreState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<StoreState, WasiCli>(l, <StoreState as WasiCliView>::cli)?;
    cli::environment::add_to_linker::<StoreState, WasiCli>(l, <StoreState as WasiCliView>::cli)?;
    cli::terminal_input::add_to_linker::<StoreState, WasiCli>(l, <StoreState as WasiCliView>::cli)?;
    cli::terminal_output::add_to_linker::<StoreState, WasiCli>(
        l,
        <StoreState as WasiCliView>::cli,
    )?;
    cli::terminal_stdin::add_to_linker::<StoreState, WasiCli>(l, <StoreState as WasiCliView>::cli)?;
    cli::terminal_stdout::add_to_linker::<StoreState, WasiCli>(
        l,
        <StoreState as WasiCliView>::cli,
    )?;
    cli::terminal_stderr::add_to_linker::<StoreState, WasiCli>(
        l,
        <StoreState as WasiCliView>::cli,
    )?;
    Ok(())
}

/// What `warden plugin inspect` shows.
#[derive(Debug)]
pub struct ComponentInfo {
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// Imported interfaces.
    pub imports: Vec<String>,
    /// Exported interfaces/functions (with their functions).
    pub exports: Vec<String>,
    /// The world it targets when the gateway would accept it, else why not.
    pub verdict: Result<String, String>,
}

/// Inspect a component file with `host`'s engine.
pub fn inspect_component(host: &PolicyHost, path: &Path) -> anyhow::Result<ComponentInfo> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    let component = host
        .compile(&bytes, &sha256)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let ty = component.component_type();
    let imports = ty
        .imports(&host.compiled().engine)
        .map(|(n, _)| n.to_string())
        .collect();
    let exports = ty
        .exports(&host.compiled().engine)
        .map(|(n, item)| match item.ty {
            ComponentItem::ComponentInstance(i) => {
                let f: Vec<String> = i
                    .exports(&host.compiled().engine)
                    .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                    .map(|(n, _)| n.to_string())
                    .collect();
                format!("{n} {{ {} }}", f.join(", "))
            }
            _ => n.to_string(),
        })
        .collect();
    let verdict = host
        .check_component(&component)
        .map(|(_, c)| format!("warden:policy/policy-plugin@{}", c.version()));
    Ok(ComponentInfo {
        sha256,
        size: bytes.len(),
        imports,
        exports,
        verdict,
    })
}
