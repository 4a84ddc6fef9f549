//! Secrets: providers (Vault/OpenBao, age files, secret directories), the in-memory
//! snapshot, references and header templates.
//!
//! INTERFACE STUB — owned by the secrets work; signatures here are what the rest of
//! the gateway calls.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

/// One `[secrets.NAME]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderConfig {
    /// Vault or OpenBao.
    Vault(toml::Table),
    /// An age-encrypted `KEY=VALUE` file.
    Age(toml::Table),
    /// One secret per file in a directory.
    Dir(toml::Table),
}

/// `${provider:name}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// Provider name.
    pub provider: String,
    /// Name within the provider (`path#key` for Vault).
    pub name: String,
}

/// A string with `${provider:name}` references.
#[derive(Clone, Debug)]
pub struct Template {}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Placeholder.
    #[error("{0}")]
    Other(String),
}

impl Template {
    /// Parse a template.
    pub fn parse(_s: &str) -> Result<Self, SecretsError> {
        Ok(Template {})
    }
    /// References in this template.
    pub fn refs(&self) -> Vec<SecretRef> {
        Vec::new()
    }
    /// Render as a header value (marked sensitive when it contains a secret).
    pub fn render_header(&self, _snap: &SecretSnapshot) -> Result<http::HeaderValue, SecretsError> {
        Err(SecretsError::Other("unimplemented".into()))
    }
}

/// An immutable view of all secret values.
#[derive(Debug, Default)]
pub struct SecretSnapshot {}

/// Owns providers and background refresh.
pub struct SecretStore {}

impl SecretStore {
    /// Start providers and resolve all references.
    pub async fn start(
        _providers: &BTreeMap<String, ProviderConfig>,
        _base_dir: &Path,
        _refs: Vec<SecretRef>,
    ) -> Result<Arc<SecretStore>, Vec<SecretsError>> {
        Ok(Arc::new(SecretStore {}))
    }
    /// Current snapshot.
    pub fn snapshot(&self) -> Arc<SecretSnapshot> {
        Arc::new(SecretSnapshot::default())
    }
}

/// `warden secrets …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {}

/// Run a `warden secrets …` subcommand.
pub async fn run_cli(_cmd: SecretsCommand) -> anyhow::Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::SUCCESS)
}
