//! The WebAssembly policy host.
//!
//! Security teams write policies as WebAssembly components against the contract in
//! `sdk/wit/policy.wit` (`warden:policy@0.2.0`; components built against
//! `sdk/wit-0.1.0` keep running unchanged). This module runs them:
//!
//! * [`PolicyHost`] is process-wide: one wasmtime `Engine` (component model, async, epoch
//!   interruption driven by a ticker thread, pooling allocator) and the on-disk cache of
//!   precompiled artifacts (keyed by content hash and engine, so a restart never
//!   recompiles). It outlives config reloads.
//! * [`PolicyHost::load`] compiles one config snapshot's `[plugins.*]` into a [`PluginSet`],
//!   checking the sha256 pin, the optional Ed25519 signature and the component's world.
//! * [`Chain::build`] builds one route's ordered policy chain, calling each plugin's
//!   `configure` export with its per-route config, so a bad config fails at `warden check`
//!   and reload — never at request time.
//! * [`Chain::evaluate`] runs the chain for one request (with the checked body where a
//!   policy asked for it) and [`Chain::evaluate_response`] the response phase. Wasm runs
//!   with `call_async` and yields to the tokio runtime at every epoch tick, so a looping
//!   plugin delays only its own request until its deadline traps it.
//! * [`ratelimit`] keeps the token buckets behind `host.rate-limit`, in memory or in Redis.
//!
//! Plugins get no filesystem, network, environment, arguments or stdio, and their clocks
//! and randomness are fixed. SDK plugins built for `wasm32-unknown-unknown` import no WASI
//! at all (the host componentizes the module at load); if a component imports WASI
//! (Rust's std for `wasm32-wasip2` does), those imports are satisfied by a WASI context
//! that grants nothing, built only for such components.

mod chain;
mod cli;
mod config;
mod host;
pub mod ratelimit;
mod scaffold;
#[cfg(test)]
mod tests;

pub use chain::{Chain, Changes, Decision, PolicyRequest, Report, Step};
pub use cli::{PluginCommand, run_cli};
pub use config::{
    Isolation, Limits, MAX_PLUGIN_MEMORY, Mode, OnError, PluginConfig, PolicyConfig,
    PolicySettings, PoolSettings, SENSITIVE_HEADERS,
};
pub use host::{ComponentInfo, PluginSet, PolicyHost, inspect_component};
