//! Warden: a Wasm-extensible policy and secrets gateway.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library. Each concern lives in
//! its own module: configuration, routing, the proxy itself, TLS, the Wasm policy
//! host, secrets, hot reload, the admin listener and telemetry.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod http;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod secrets;
pub mod telemetry;
pub mod tls;
