//! Warden: a Wasm-extensible policy and secrets gateway.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library. Modules are listed leaves
//! first; each depends only on modules above it, so the code reads bottom-up:
//!
//! | module | what it holds |
//! |---|---|
//! | [`http`] | `ClientInfo`, the body type, hop-by-hop rules, request normalization |
//! | [`worker`] | proxy worker numbers, per-worker slots, `SO_REUSEPORT` listeners |
//! | [`telemetry`] | metrics, logging |
//! | [`watch`] | the one debounced directory watcher |
//! | `config::field` | located config errors and serde helpers |
//! | [`secrets`] | templates, providers, the store that outlives reloads |
//! | [`inspect`] | request-body checks that run before a body policy: codings, media types, strict JSON |
//! | [`policy`] | the Wasm host, warm instance pools, chains, `warden plugin` |
//! | [`config`] | files, includes, validation with file and line |
//! | [`trace`] | W3C trace context and OTLP span export |
//! | [`routing`], [`tls`], [`upstream`] | built from validated config |
//! | [`snapshot`] | everything one request needs, immutable |
//! | [`gateway`] | the current snapshot and the reload triggers that replace it |
//! | [`proxy`] | the request pipeline and the proxy listener's drain |
//! | [`admin`] | health, readiness, metrics, reload |
//! | [`serve`] | the process: listeners, signals, shutdown order |
//! | [`cli`] | subcommands that read a whole config |
#![forbid(unsafe_code)]

pub mod http;
pub mod telemetry;
pub mod watch;
pub mod worker;

pub mod secrets;

pub mod inspect;

pub mod policy;

pub mod config;
pub mod trace;

pub mod routing;
pub mod tls;
pub mod upstream;

pub mod snapshot;

pub mod gateway;

pub mod proxy;

pub mod admin;

pub mod serve;

pub mod cli;
