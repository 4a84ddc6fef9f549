//! The WebAssembly policy host.
//!
//! INTERFACE STUB — owned by the plugin work; signatures here are what the rest of the
//! gateway calls.

use serde::Deserialize;

use crate::proxy::ClientInfo;
use crate::secrets::SecretSnapshot;

/// One `[plugins.NAME]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Component file.
    pub file: std::path::PathBuf,
    /// Optional pin.
    pub sha256: Option<String>,
}

/// One `[[routes.policies]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Plugin name.
    pub plugin: String,
    /// Plugin config.
    #[serde(default)]
    pub config: toml::Table,
}

/// `[policy]`: settings for the plugin host as a whole.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {}

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
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The client.
    pub client: &'a ClientInfo,
}

/// Header changes from a chain that allowed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Request headers to set (replace).
    pub set_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Request headers to remove.
    pub remove_headers: Vec<http::HeaderName>,
    /// Response headers to add.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Outcome of a chain.
#[derive(Debug)]
pub enum Decision {
    /// Forward, with changes.
    Allow(Changes),
    /// Answer directly.
    Deny {
        /// Status.
        status: http::StatusCode,
        /// Body.
        body: bytes::Bytes,
        /// Headers.
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

/// The per-route policy chain.
#[derive(Default)]
pub struct Chain {}

impl Chain {
    /// True when the route has no policies.
    pub fn is_empty(&self) -> bool {
        true
    }
    /// Evaluate the chain.
    pub async fn evaluate(&self, _req: &PolicyRequest<'_>, _secrets: &SecretSnapshot) -> Decision {
        Decision::Allow(Changes::default())
    }
}

/// `warden plugin …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {}

/// Run a `warden plugin …` subcommand.
pub async fn run_cli(_cmd: PluginCommand) -> anyhow::Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::SUCCESS)
}
