//! Reads a file: it imports wasi:filesystem, which Warden does not provide, so it must be
//! refused at load.
//!
//! Must be built for `wasm32-wasip2`: that is what makes `std::fs` import
//! `wasi:filesystem` (on `wasm32-unknown-unknown` it would import nothing and just fail).
use warden_sdk::{ConfigErrors, Policy, Request, Setup, Verdict};

/// The policy.
pub struct FsReader;

impl Policy for FsReader {
    type Config = warden_sdk::serde_json::Value;
    fn configure(_: &Setup, _: Self::Config) -> Result<Self, ConfigErrors> {
        Ok(FsReader)
    }
    fn evaluate(&self, _: &Request) -> Verdict {
        match std::fs::read_to_string("/etc/passwd") {
            Ok(s) => Verdict::deny(403, s),
            Err(_) => Verdict::allow(),
        }
    }
}

warden_sdk::export_policy!(FsReader);
