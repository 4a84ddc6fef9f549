//! Write [Warden](https://example.invalid/warden) policy plugins in Rust.
//!
//! A policy is a type implementing [`Policy`]: it is built once per route from the route's
//! `config` table ([`Policy::configure`]) and then asked for a [`Verdict`] on every request
//! ([`Policy::evaluate`]). [`export_policy!`] turns it into a WebAssembly component that
//! targets the `warden:policy/policy-plugin` world (`sdk/wit/policy.wit`).
//!
//! ```ignore
//! use warden_sdk::{Policy, Request, Setup, Verdict, ConfigErrors};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { header: String }
//!
//! struct RequireHeader(Config);
//!
//! impl Policy for RequireHeader {
//!     type Config = Config;
//!     fn configure(_setup: &Setup, config: Config) -> Result<Self, ConfigErrors> {
//!         Ok(RequireHeader(config))
//!     }
//!     fn evaluate(&self, req: &Request) -> Verdict {
//!         if req.header(&self.0.header).is_some() { Verdict::allow() } else { Verdict::deny(400, "missing header") }
//!     }
//! }
//!
//! warden_sdk::export_policy!(RequireHeader);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! output `.wasm` is already a component. Unit-test natively with [`testing`].
#![deny(missing_docs)]

mod config;
mod host;
mod request;
pub mod testing;
mod verdict;

pub use config::{ConfigError, ConfigErrors, Setup};
pub use host::{Level, log, secret_matches};
pub use request::{Client, Request, RequestBuilder};
pub use verdict::{Changes, Denial, Verdict};

/// Re-exported so plugins can build JSON bodies and test configs without another dependency.
pub use serde_json;

/// A policy plugin.
///
/// One value of the implementing type exists per (route, policy) instance: the gateway
/// configures it once and then calls [`Policy::evaluate`] for many requests, so anything
/// expensive (parsing rules, compiling globs) belongs in [`Policy::configure`].
pub trait Policy: Sized + 'static {
    /// The policy's `config` table, deserialised from JSON with serde. Use
    /// `#[serde(deny_unknown_fields)]` so typos are caught by `warden check`.
    type Config: serde::de::DeserializeOwned;

    /// Validate the configuration and build the policy. Return every problem found, each
    /// with the key path relative to the `config` table.
    fn configure(setup: &Setup, config: Self::Config) -> Result<Self, ConfigErrors>;

    /// Decide about one request.
    fn evaluate(&self, request: &Request) -> Verdict;
}

/// Parse a JSON config document into `P::Config` and configure `P`, turning serde errors
/// into a [`ConfigError`] whose key is the path of the offending field.
pub fn configure_from_json<P: Policy>(setup: &Setup, json: &str) -> Result<P, ConfigErrors> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let config: P::Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let mut reason = e.into_inner().to_string();
        // serde_json appends " at line L column C" of the synthetic JSON document, which
        // means nothing to the operator who wrote TOML.
        if let Some(i) = reason.find(" at line ") {
            reason.truncate(i);
        }
        ConfigErrors::from(ConfigError::new(key, reason))
    })?;
    P::configure(setup, config)
}

/// Export a [`Policy`] implementation as the component's `warden:policy/policy` interface.
///
/// Invoke once per plugin crate, at the crate root. On non-wasm targets it expands to
/// nothing, so the same crate can be unit-tested natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static __WARDEN_POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct __WardenExport;

            impl $crate::__rt::Guest for __WardenExport {
                fn configure(
                    setup: $crate::__rt::WitSetup,
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::vec::Vec<$crate::__rt::WitConfigError>>
                {
                    let policy = $crate::__rt::configure::<$policy>(setup, &config)?;
                    __WARDEN_POLICY.with(|p| *p.borrow_mut() = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn evaluate(request: $crate::__rt::WitRequest) -> $crate::__rt::WitVerdict {
                    __WARDEN_POLICY.with(|p| {
                        let p = p.borrow();
                        let policy = p.as_ref().expect("evaluate called before configure");
                        $crate::__rt::evaluate(policy, request)
                    })
                }
            }

    $crate::__rt::export!(__WardenExport with_types_in $crate::__rt::bindings);
        };
    };
}

/// Glue between the generated bindings and the SDK types. Not part of the public API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __rt {
    #[allow(missing_docs)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "wit",
            world: "warden:policy/policy-plugin@0.1.0",
            pub_export_macro: true,
            default_bindings_module: "warden_sdk::__rt::bindings",
        });
    }

    pub use bindings::export;
    pub use bindings::exports::warden::policy::policy::Guest;
    use bindings::warden::policy::types as wit;
    pub use wit::{
        ConfigError as WitConfigError, Request as WitRequest, Setup as WitSetup,
        Verdict as WitVerdict,
    };

    use crate::{Changes, Client, Denial, Policy, Request, Setup, Verdict};

    /// Configure `P` from the host's arguments.
    pub fn configure<P: Policy>(setup: WitSetup, config: &str) -> Result<P, Vec<WitConfigError>> {
        let setup = Setup {
            route: setup.route,
            secrets: setup.secrets,
            granted_headers: setup.granted_headers,
        };
        crate::configure_from_json::<P>(&setup, config).map_err(|errs| {
            errs.into_iter()
                .map(|e| WitConfigError {
                    key: e.key,
                    reason: e.reason,
                })
                .collect()
        })
    }

    /// Convert the request, evaluate, convert the verdict.
    pub fn evaluate<P: Policy>(policy: &P, r: WitRequest) -> WitVerdict {
        let client = Client {
            address: r.client.address,
            port: r.client.port,
            tls: r.client.tls,
            sni: r.client.sni,
            uri_sans: r.client.uri_sans,
            dns_sans: r.client.dns_sans,
        };
        let request = Request {
            route: r.route,
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            client,
        };
        match policy.evaluate(&request) {
            Verdict::Allow(c) if c.is_empty() => WitVerdict::Allow,
            Verdict::Allow(Changes {
                set_request_headers,
                remove_request_headers,
                add_response_headers,
            }) => WitVerdict::AllowWithChanges(wit::Changes {
                set_request_headers: headers(set_request_headers),
                remove_request_headers,
                add_response_headers: headers(add_response_headers),
            }),
            Verdict::Deny(Denial {
                status,
                body,
                headers: h,
            }) => WitVerdict::Deny(wit::Denial {
                status,
                body,
                headers: headers(h),
            }),
        }
    }

    fn headers(h: Vec<(String, Vec<u8>)>) -> Vec<wit::Header> {
        h.into_iter()
            .map(|(name, value)| wit::Header { name, value })
            .collect()
    }

    /// Host imports.
    pub fn host_log(level: crate::Level, message: &str, fields: &[(&str, &str)]) {
        use bindings::warden::policy::host;
        let level = match level {
            crate::Level::Trace => host::Level::Trace,
            crate::Level::Debug => host::Level::Debug,
            crate::Level::Info => host::Level::Info,
            crate::Level::Warn => host::Level::Warn,
            crate::Level::Error => host::Level::Error,
        };
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host::log(level, message, &fields);
    }

    /// Host import.
    pub fn host_secret_matches(name: &str, presented: &[u8]) -> bool {
        bindings::warden::policy::host::secret_matches(name, presented)
    }
}
