//! Secrets: providers (Vault/OpenBao, age-encrypted files, secret directories), the
//! in-memory snapshot, `${provider:name}` references and header templates.
//!
//! How values flow:
//!
//! * [`SecretStore::start`] resolves every referenced secret once (failing, naming each
//!   reference that does not resolve; [`SecretStore::open`] starts anyway and retries) and
//!   then, in the background, keeps them fresh: Vault on a timer (and before leases/tokens
//!   expire), files when they change on disk. The store outlives config reloads
//!   ([`SecretStore::reuse_for`]): only references that are new are read.
//! * Values live in an immutable [`SecretSnapshot`] behind an `ArcSwap`. A refresh builds a
//!   new snapshot and swaps it in; the request path only ever loads the current `Arc` and
//!   never waits on (or calls) a provider. A request keeps the snapshot it started with.
//! * When a provider fails, the last-known-good value keeps serving until `max_stale`; after
//!   that [`Template::render_header`] answers [`SecretsError::Stale`] (the proxy maps it to
//!   503 with a value-free reason).
//! * A new value that is not a valid header value (CR, LF, NUL, other controls) is refused:
//!   the old one stays, and the error names the reference.
//!
//! Values are [`SecretBytes`]: zeroized on drop, `[redacted]` in `Debug`, and no error,
//! log line, metric label or status output in this module ever contains one. (Buffers
//! owned by other crates — the HTTP client's response body, `HeaderValue` — are outside
//! our control and are not zeroized.)

mod agefile;
mod dir;
mod store;
mod template;
mod vault;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::field::FieldError;
use crate::config::field::de;

pub use store::{RefStatus, SecretSnapshot, SecretStore};
pub use template::{InjectedHeaders, Template};

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// One `[secrets.NAME]` table, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Vault or OpenBao (KV v2 or v1).
    Vault(VaultConfig),
    /// An age-encrypted `KEY=VALUE` file.
    Age(AgeConfig),
    /// One secret per file in a directory (Docker / Kubernetes secret mounts).
    Dir(DirConfig),
}

/// `type = "vault"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `http(s)://host:port` of Vault or OpenBao.
    pub address: String,
    /// Mount path of the KV engine.
    #[serde(default = "defaults::mount")]
    pub mount: String,
    /// KV engine version: 2 (default) or 1.
    #[serde(default = "defaults::kv_version")]
    pub kv_version: u8,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How the gateway logs in.
    pub auth: VaultAuth,
    /// PEM CA bundle that signs Vault's TLS certificate (added to the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Fixed re-read interval (leases shorter than this are re-read at ~2/3 of their TTL).
    #[serde(default = "defaults::refresh", deserialize_with = "de::duration")]
    pub refresh: Duration,
    /// How long the last-known-good values keep serving while Vault fails.
    #[serde(default = "defaults::max_stale", deserialize_with = "de::duration")]
    pub max_stale: Duration,
    /// Timeout of one Vault HTTP request.
    #[serde(default = "defaults::timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
}

/// `auth = { method = … }` of a Vault provider.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaultAuth {
    /// A token read from a file (e.g. written by Vault Agent); re-read when renewal fails.
    Token {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// AppRole login with role_id and secret_id files.
    Approle {
        /// File holding the role_id.
        role_id_file: PathBuf,
        /// File holding the secret_id.
        secret_id_file: PathBuf,
        /// Mount path of the AppRole auth method.
        #[serde(default = "defaults::approle_mount")]
        mount: String,
    },
    /// JWT login, e.g. with a Kubernetes projected service-account token. The file is
    /// re-read at every login, because projected tokens rotate.
    Jwt {
        /// The role to log in as.
        role: String,
        /// File holding the JWT.
        #[serde(default = "defaults::jwt_file")]
        jwt_file: PathBuf,
        /// Mount path of the JWT auth method.
        #[serde(default = "defaults::jwt_mount")]
        mount: String,
    },
}

/// `type = "age"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeConfig {
    /// age X25519 identity file (as written by `age-keygen`).
    pub identity_file: PathBuf,
    /// The encrypted file (binary or armored); decrypts to `KEY=VALUE` lines.
    pub file: PathBuf,
    /// Serve last-known-good values this long while the file cannot be read (default:
    /// until it can be read again).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub max_stale: Option<Duration>,
}

/// `type = "dir"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirConfig {
    /// Directory with one file per secret.
    pub path: PathBuf,
    /// Serve last-known-good values this long while a file cannot be read (default: until
    /// it can be read again).
    #[serde(default, deserialize_with = "de::opt_duration")]
    pub max_stale: Option<Duration>,
}

mod defaults {
    use std::time::Duration;
    pub fn mount() -> String {
        "secret".into()
    }
    pub fn approle_mount() -> String {
        "approle".into()
    }
    pub fn jwt_mount() -> String {
        "jwt".into()
    }
    pub fn jwt_file() -> std::path::PathBuf {
        "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
    }
    pub fn kv_version() -> u8 {
        2
    }
    pub fn refresh() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_stale() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(5)
    }
}

impl ProviderConfig {
    /// `vault`, `age` or `dir`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Vault(_) => "vault",
            ProviderConfig::Age(_) => "age",
            ProviderConfig::Dir(_) => "dir",
        }
    }

    /// How long last-known-good values serve while the provider fails (`None`: forever).
    pub fn max_stale(&self) -> Option<Duration> {
        match self {
            ProviderConfig::Vault(v) => Some(v.max_stale),
            ProviderConfig::Age(a) => a.max_stale,
            ProviderConfig::Dir(d) => d.max_stale,
        }
    }

    /// Make every relative path absolute against `base_dir` (the config file's directory).
    /// Idempotent: absolute paths are left alone.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let j = |p: &mut PathBuf| *p = base_dir.join(&*p);
        match self {
            ProviderConfig::Vault(v) => {
                if let Some(ca) = &mut v.ca_file {
                    j(ca);
                }
                match &mut v.auth {
                    VaultAuth::Token { token_file } => j(token_file),
                    VaultAuth::Approle {
                        role_id_file,
                        secret_id_file,
                        ..
                    } => {
                        j(role_id_file);
                        j(secret_id_file);
                    }
                    VaultAuth::Jwt { jwt_file, .. } => {
                        j(jwt_file);
                    }
                }
            }
            ProviderConfig::Age(a) => {
                j(&mut a.identity_file);
                j(&mut a.file);
            }
            ProviderConfig::Dir(d) => j(&mut d.path),
        }
    }

    /// Provider-level checks that need no network: address syntax, KV version, and that the
    /// token / role / identity / CA files and the secret file or directory exist and can
    /// be read. Call after [`resolve_paths`](Self::resolve_paths). Keys are relative to
    /// the `[secrets.NAME]` table; reasons never contain file contents.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let readable = |errs: &mut Vec<FieldError>, key: &str, p: &Path| {
            if let Err(e) = std::fs::metadata(p).and_then(|m| {
                if m.is_file() {
                    std::fs::File::open(p).map(drop)
                } else {
                    Err(std::io::Error::other("not a file"))
                }
            }) {
                errs.push(FieldError::new(
                    key,
                    format!("cannot read {}: {e}", p.display()),
                ));
            }
        };
        match self {
            ProviderConfig::Vault(v) => {
                match reqwest::Url::parse(&v.address) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                    Ok(_) => errs.push(FieldError::new(
                        "address",
                        "must be an http:// or https:// URL",
                    )),
                    Err(e) => errs.push(FieldError::new("address", format!("invalid URL: {e}"))),
                }
                if v.kv_version != 1 && v.kv_version != 2 {
                    errs.push(FieldError::new("kv_version", "must be 1 or 2"));
                }
                if v.mount.trim_matches('/').is_empty() {
                    errs.push(FieldError::new("mount", "must not be empty"));
                }
                if v.refresh.is_zero() {
                    errs.push(FieldError::new("refresh", "must be greater than zero"));
                }
                if v.timeout.is_zero() {
                    errs.push(FieldError::new("timeout", "must be greater than zero"));
                }
                match &v.auth {
                    VaultAuth::Token { token_file } => {
                        readable(&mut errs, "auth.token_file", token_file)
                    }
                    VaultAuth::Approle {
                        role_id_file,
                        secret_id_file,
                        mount,
                    } => {
                        readable(&mut errs, "auth.role_id_file", role_id_file);
                        readable(&mut errs, "auth.secret_id_file", secret_id_file);
                        if mount.trim_matches('/').is_empty() {
                            errs.push(FieldError::new("auth.mount", "must not be empty"));
                        }
                    }
                    VaultAuth::Jwt {
                        role,
                        jwt_file,
                        mount,
                    } => {
                        readable(&mut errs, "auth.jwt_file", jwt_file);
                        if role.trim().is_empty() {
                            errs.push(FieldError::new("auth.role", "must not be empty"));
                        }
                        if mount.trim_matches('/').is_empty() {
                            errs.push(FieldError::new("auth.mount", "must not be empty"));
                        }
                    }
                }
                if let Some(ca) = &v.ca_file {
                    match std::fs::read(ca) {
                        Err(e) => errs.push(FieldError::new(
                            "ca_file",
                            format!("cannot read {}: {e}", ca.display()),
                        )),
                        Ok(pem) => {
                            if vault::parse_ca_pem(&pem).is_err() {
                                errs.push(FieldError::new(
                                    "ca_file",
                                    format!("{} holds no PEM certificate", ca.display()),
                                ));
                            }
                        }
                    }
                }
            }
            ProviderConfig::Age(a) => {
                match std::fs::read(&a.identity_file) {
                    Err(e) => errs.push(FieldError::new(
                        "identity_file",
                        format!("cannot read {}: {e}", a.identity_file.display()),
                    )),
                    Ok(bytes) => {
                        let bytes = Zeroizing::new(bytes);
                        if let Err(reason) = agefile::parse_identities(&bytes) {
                            errs.push(FieldError::new(
                                "identity_file",
                                format!("{}: {reason}", a.identity_file.display()),
                            ));
                        }
                    }
                }
                readable(&mut errs, "file", &a.file);
            }
            ProviderConfig::Dir(d) => {
                if !d.path.is_dir() {
                    errs.push(FieldError::new(
                        "path",
                        format!("{} is not a readable directory", d.path.display()),
                    ));
                }
            }
        }
        errs
    }
}

// ---------------------------------------------------------------------------------------
// References and values
// ---------------------------------------------------------------------------------------

/// A reference `${provider:name}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// Provider name (the `NAME` of `[secrets.NAME]`).
    pub provider: String,
    /// Name within the provider: `path#key` for Vault, `KEY` for age, a file name for dir.
    pub name: String,
}

impl SecretRef {
    /// A reference.
    pub fn new(provider: impl Into<String>, name: impl Into<String>) -> Self {
        SecretRef {
            provider: provider.into(),
            name: name.into(),
        }
    }

    /// Parse `${provider:name}` (or the inside, `provider:name`).
    pub fn parse(s: &str) -> Result<Self, SecretsError> {
        let inner = s
            .strip_prefix("${")
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(s);
        template::parse_ref(inner)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}:{}}}", self.provider, self.name)
    }
}

/// Secret bytes: zeroized on drop, `[redacted]` in `Debug`, compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wrap bytes (taking ownership, so no un-zeroized copy is left behind).
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(v))
    }

    /// The bytes. Use only to put them on the wire or compare them; never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Shorten in place (the cut bytes are zeroized with the rest on drop).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    /// Whether a presented credential equals this secret, in constant time — the one
    /// comparison every credential check in the gateway uses (admin token, plugins'
    /// `secret-matches`). Both sides are HMACed with a per-process random key and ring
    /// compares the tags, so the time taken depends neither on where the bytes differ nor
    /// on the secret's length.
    pub fn ct_eq(&self, presented: &[u8]) -> bool {
        use std::sync::OnceLock;
        static KEY: OnceLock<ring::hmac::Key> = OnceLock::new();
        let key = KEY.get_or_init(|| {
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .expect("system randomness is available")
        });
        let tag = ring::hmac::sign(key, self.expose());
        ring::hmac::verify(key, presented, tag.as_ref()).is_ok()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a value cannot go into an HTTP header, if it cannot (no value in the reason).
pub(crate) fn header_unsafe(v: &[u8]) -> Option<&'static str> {
    v.iter().find_map(|&b| match b {
        b'\r' => Some("it contains a carriage return (CR)"),
        b'\n' => Some("it contains a line feed (LF)"),
        0 => Some("it contains a NUL byte"),
        b'\t' => None,
        0x01..=0x1f | 0x7f => Some("it contains a control character"),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Errors of the secrets domain. No variant ever carries a secret value: references are
/// named by their `${provider:name}` text and reasons describe, never quote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// A template could not be parsed.
    #[error("invalid secret template: {reason}")]
    Template {
        /// What is wrong.
        reason: String,
    },
    /// A reference names a provider that is not configured.
    #[error("{reference}: unknown secret provider {provider:?} (configured: {known})")]
    UnknownProvider {
        /// `${provider:name}`.
        reference: String,
        /// The unknown provider.
        provider: String,
        /// Configured provider names.
        known: String,
    },
    /// A reference's name does not fit its provider's syntax.
    #[error("{reference}: {reason}")]
    BadName {
        /// `${provider:name}`.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A provider could not be set up.
    #[error("secret provider {provider:?}: {reason}")]
    Provider {
        /// Provider name.
        provider: String,
        /// What is wrong.
        reason: String,
    },
    /// A reference could not be resolved.
    #[error("{reference} cannot be resolved: {reason}")]
    Unresolved {
        /// `${provider:name}`.
        reference: String,
        /// Why (never the value).
        reason: String,
    },
    /// The provider answered, and the secret does not exist (a missing path, key or
    /// file): a configuration mistake, not an outage.
    #[error("{reference} does not exist: {reason}")]
    NotFound {
        /// `${provider:name}`.
        reference: String,
        /// Why (never the value).
        reason: String,
    },
    /// A new value was refused because it cannot be used as a header value.
    #[error("{reference}: value refused because {reason}")]
    InvalidValue {
        /// `${provider:name}`.
        reference: String,
        /// Why (never the value).
        reason: String,
    },
    /// The last-known-good value is older than the provider's `max_stale`.
    #[error("{reference}: value is stale (provider failing for longer than max_stale)")]
    Stale {
        /// `${provider:name}`.
        reference: String,
    },
    /// The reference is not in the snapshot (it was not part of the configuration that
    /// started the store).
    #[error("{reference}: not loaded")]
    NotLoaded {
        /// `${provider:name}`.
        reference: String,
    },
}

impl SecretsError {
    /// The metric label of a failed read: `not_found` (the secret does not exist),
    /// `invalid` (a value that cannot be sent), or `unavailable` (the provider failed).
    pub fn failure_kind(&self) -> &'static str {
        match self {
            SecretsError::NotFound { .. } | SecretsError::BadName { .. } => "not_found",
            SecretsError::InvalidValue { .. } => "invalid",
            _ => "unavailable",
        }
    }

    /// The `${provider:name}` this error is about, if it is about one reference.
    pub fn reference(&self) -> Option<&str> {
        match self {
            SecretsError::UnknownProvider { reference, .. }
            | SecretsError::BadName { reference, .. }
            | SecretsError::Unresolved { reference, .. }
            | SecretsError::NotFound { reference, .. }
            | SecretsError::InvalidValue { reference, .. }
            | SecretsError::Stale { reference }
            | SecretsError::NotLoaded { reference } => Some(reference),
            SecretsError::Template { .. } | SecretsError::Provider { .. } => None,
        }
    }
}

/// Config-time validation without contacting providers: every reference names a configured
/// provider, and its name fits that provider's syntax (`path#key` for Vault, a `KEY` for
/// age, a plain file name for dir). File checks are per provider: [`ProviderConfig::check`].
pub fn validate_refs(
    providers: &BTreeMap<String, ProviderConfig>,
    refs: &[SecretRef],
) -> Vec<SecretsError> {
    let mut errs = Vec::new();
    for r in refs {
        let Some(p) = providers.get(&r.provider) else {
            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
            errs.push(SecretsError::UnknownProvider {
                reference: r.to_string(),
                provider: r.provider.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
            continue;
        };
        let checked = match p {
            ProviderConfig::Vault(_) => vault::parse_name(&r.name).map(drop),
            ProviderConfig::Age(_) => agefile::check_key(&r.name),
            ProviderConfig::Dir(_) => dir::check_name(&r.name),
        };
        if let Err(reason) = checked {
            errs.push(SecretsError::BadName {
                reference: r.to_string(),
                reason,
            });
        }
    }
    errs
}

#[cfg(test)]
mod tests;
