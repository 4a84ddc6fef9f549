//! Configuration of the policy host: `[policy]`, `[plugins.NAME]`, `[[routes.policies]]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ratelimit::StoreConfig;
use crate::config::field::{FieldError, de};
use crate::inspect::{BodyConfig, ResponseBodyConfig};
use crate::secrets::Template;

/// Largest memory limit a plugin may ask for. It is fixed (not configurable) because it
/// is part of the engine configuration, and so of the precompiled-artifact cache key.
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;

/// Headers withheld from plugins unless a route's policy grants them.
pub const SENSITIVE_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// `[policy]`: settings for the plugin host as a whole.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// Directory for precompiled plugin artifacts (keyed by content hash and engine), so a
    /// restart never recompiles. Default: `$XDG_CACHE_HOME/warden` or `~/.cache/warden`.
    pub cache_dir: Option<PathBuf>,
    /// Set to false to compile every plugin at every start.
    pub cache: bool,
    /// Ed25519 public keys (hex, 32 bytes) trusted to sign plugins.
    pub trusted_keys: Vec<String>,
    /// Refuse any plugin without a valid `signature`.
    pub require_signatures: bool,
    /// Upper bound on live plugin instances across all plugins (pooling allocator slots).
    pub max_instances: u32,
    /// Epoch tick: deadline granularity and how often a running plugin yields to the
    /// async runtime.
    #[serde(deserialize_with = "de::duration")]
    pub epoch_tick: Duration,
    /// Log records per second each plugin may emit (bursts up to 4x); the rest are
    /// dropped and counted.
    pub log_rate: u32,
    /// Rate-limit buckets kept in memory (all plugins, routes and keys); the least
    /// recently used are forgotten first.
    pub rate_limit_keys: usize,
    /// Share `host.rate-limit` buckets across gateway replicas through Redis.
    pub rate_limit_store: Option<StoreConfig>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            cache_dir: None,
            cache: true,
            trusted_keys: Vec::new(),
            require_signatures: false,
            max_instances: 1000,
            epoch_tick: Duration::from_millis(1),
            log_rate: 10,
            rate_limit_keys: 100_000,
            rate_limit_store: None,
        }
    }
}

impl PolicySettings {
    /// Every problem with `[policy]`, keys relative to it. Run by config validation, so
    /// `warden check` reports them with their line, and by [`PolicyHost::new`] for
    /// settings built in code.
    ///
    /// [`PolicyHost::new`]: super::PolicyHost::new
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, k) in self.trusted_keys.iter().enumerate() {
            if decode_key(k).is_none() {
                errs.push(FieldError::new(
                    format!("trusted_keys[{i}]"),
                    "expected 64 hex digits (an Ed25519 public key)",
                ));
            }
        }
        if self.require_signatures && self.trusted_keys.is_empty() {
            errs.push(FieldError::new(
                "require_signatures",
                "require_signatures = true needs at least one entry in trusted_keys",
            ));
        }
        if self.epoch_tick.is_zero() || self.epoch_tick > Duration::from_millis(100) {
            errs.push(FieldError::new(
                "epoch_tick",
                "must be between 1µs and 100ms",
            ));
        }
        if self.max_instances == 0 {
            errs.push(FieldError::new("max_instances", "must be at least 1"));
        }
        if self.rate_limit_keys == 0 {
            errs.push(FieldError::new("rate_limit_keys", "must be at least 1"));
        }
        if let Some(store) = &self.rate_limit_store {
            errs.extend(
                store
                    .check()
                    .into_iter()
                    .map(|e| e.prefixed("rate_limit_store")),
            );
        }
        errs
    }

    /// These settings with every value [`check`](Self::check) refuses replaced by its
    /// default (and unusable keys dropped), so `warden check` can go on to check plugins
    /// after reporting them.
    pub fn or_defaults(&self) -> PolicySettings {
        let d = PolicySettings::default();
        let mut s = self.clone();
        s.trusted_keys.retain(|k| decode_key(k).is_some());
        s.require_signatures &= !s.trusted_keys.is_empty();
        if s.epoch_tick.is_zero() || s.epoch_tick > Duration::from_millis(100) {
            s.epoch_tick = d.epoch_tick;
        }
        if s.max_instances == 0 {
            s.max_instances = d.max_instances;
        }
        if s.rate_limit_keys == 0 {
            s.rate_limit_keys = d.rate_limit_keys;
        }
        if s.rate_limit_store
            .as_ref()
            .is_some_and(|r| !r.check().is_empty())
        {
            s.rate_limit_store = None;
        }
        s
    }

    /// The trusted keys, decoded (those [`check`](Self::check) accepts).
    pub fn trusted_key_bytes(&self) -> Vec<[u8; 32]> {
        self.trusted_keys
            .iter()
            .filter_map(|k| decode_key(k))
            .collect()
    }
}

fn decode_key(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text.trim()).ok()?.try_into().ok()
}

/// How instances of a plugin are reused.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Keep warm, configured instances and reuse them across requests (fast). An instance
    /// is discarded after any error, after `pool.max_uses` requests, or once its memory
    /// grew past `pool.recycle_memory`.
    #[default]
    Pooled,
    /// A fresh instance for every request (no state can leak between requests).
    PerRequest,
}

/// `limits = { memory = "16MiB", deadline = "10ms" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory limit of one instance; growing past it traps.
    #[serde(deserialize_with = "de::size")]
    pub memory: u64,
    /// Running-time budget of one evaluation, counted in epoch ticks that find the plugin
    /// executing (time spent queued for a worker after a yield does not count).
    #[serde(deserialize_with = "de::duration")]
    pub deadline: Duration,
    /// Budget of `configure` (once per instance; at `warden check`, load and reload).
    #[serde(deserialize_with = "de::duration")]
    pub configure_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 16 << 20,
            deadline: Duration::from_millis(10),
            configure_deadline: Duration::from_secs(1),
        }
    }
}

/// `pool = { size = 4, max_uses = 10000, recycle_memory = "8MiB" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Idle warm instances kept per route policy, on each proxy worker.
    pub size: usize,
    /// Recycle an instance after this many evaluations.
    pub max_uses: u64,
    /// Recycle an instance whose memory grew past this (default: half of `limits.memory`).
    #[serde(deserialize_with = "de::opt_size")]
    pub recycle_memory: Option<u64>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            size: 4,
            max_uses: 10_000,
            recycle_memory: None,
        }
    }
}

/// One `[plugins.NAME]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Component file (relative to the config file that defines the plugin).
    pub file: PathBuf,
    /// Optional pin: hex SHA-256 of the file (a `sha256:` prefix is accepted).
    pub sha256: Option<String>,
    /// Optional detached Ed25519 signature file (hex) over the component bytes, checked
    /// against `[policy].trusted_keys`.
    pub signature: Option<PathBuf>,
    /// Memory and time budgets.
    #[serde(default)]
    pub limits: Limits,
    /// `pooled` (default) or `per-request`.
    #[serde(default)]
    pub isolation: Isolation,
    /// Warm pool settings (for `isolation = "pooled"`).
    #[serde(default)]
    pub pool: PoolSettings,
}

impl PluginConfig {
    /// Resolve relative paths against the directory of the file that defined the plugin.
    pub fn resolve_paths(&mut self, dir: &Path) {
        self.file = dir.join(&self.file);
        if let Some(s) = &mut self.signature {
            *s = dir.join(&*s);
        }
    }

    /// Static checks that need no file access.
    pub(crate) fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.limits.memory < 1 << 20 {
            errs.push(FieldError::new(
                "limits.memory",
                "must be at least 1MiB (a Rust plugin's stack alone is 1MiB)",
            ));
        }
        if self.limits.memory > MAX_PLUGIN_MEMORY {
            errs.push(FieldError::new(
                "limits.memory",
                format!("must be at most {}MiB", MAX_PLUGIN_MEMORY >> 20),
            ));
        }
        if self.limits.deadline.is_zero() {
            errs.push(FieldError::new(
                "limits.deadline",
                "must be greater than zero",
            ));
        }
        if self.limits.deadline > Duration::from_secs(10) {
            errs.push(FieldError::new(
                "limits.deadline",
                "must be at most 10s: a policy runs on every request",
            ));
        }
        if self.limits.configure_deadline.is_zero() {
            errs.push(FieldError::new(
                "limits.configure_deadline",
                "must be greater than zero",
            ));
        }
        if self.pool.max_uses == 0 {
            errs.push(FieldError::new("pool.max_uses", "must be at least 1"));
        }
        if let Some(r) = self.pool.recycle_memory
            && r > self.limits.memory
        {
            errs.push(FieldError::new(
                "pool.recycle_memory",
                "must not exceed limits.memory",
            ));
        }
        errs
    }

    pub(crate) fn recycle_memory(&self) -> u64 {
        self.pool.recycle_memory.unwrap_or(self.limits.memory / 2)
    }
}

/// `enforce` or `shadow`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The verdict applies.
    #[default]
    Enforce,
    /// Evaluate, log and count, but never block or change the request.
    Shadow,
}

impl Mode {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// What a plugin error (trap, deadline, memory limit, invalid verdict) means.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: 503.
    #[default]
    Deny,
    /// Fail open: continue with the next policy.
    Allow,
}

/// One `[[routes.policies]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Plugin name (a key of `[plugins]`).
    pub plugin: String,
    /// `enforce` (default) or `shadow`.
    #[serde(default)]
    pub mode: Mode,
    /// `deny` (default, 503) or `allow`.
    #[serde(default)]
    pub on_error: OnError,
    /// The plugin's own configuration, passed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Sensitive headers (`authorization`, `cookie`, `proxy-authorization`) this policy
    /// may see.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Secrets this policy may compare against with `secret-matches`: name → template
    /// such as `"${vault:ml/keys#gateway}"`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Request body phase: buffer (up to `max`), check and pass the body to this policy.
    pub body: Option<BodyConfig>,
    /// Response phase: pass non-streaming JSON responses up to `max` to this policy.
    pub response_body: Option<ResponseBodyConfig>,
}

impl PolicyConfig {
    /// The secret templates this policy grants, keyed by their path relative to the policy
    /// (`secrets.NAME`), plus parse errors with the same keys. The config module feeds the
    /// references to the secret store and validates their providers.
    pub fn secret_templates(&self) -> (Vec<(String, Template)>, Vec<FieldError>) {
        let mut ok = Vec::new();
        let mut errs = Vec::new();
        for (name, text) in &self.secrets {
            match Template::parse(text) {
                Ok(t) => ok.push((format!("secrets.{name}"), t)),
                Err(e) => errs.push(FieldError::new(format!("secrets.{name}"), e.to_string())),
            }
        }
        (ok, errs)
    }
}
