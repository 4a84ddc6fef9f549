//! Write [Warden](https://example.invalid/warden) policy plugins in Rust.
//!
//! A policy is a type implementing [`Policy`]: it is built once per route from the route's
//! `config` table ([`Policy::configure`]) and then asked for a [`Verdict`] on every request
//! ([`Policy::evaluate`]) and, where the route turns the response phase on, for a
//! [`ResponseVerdict`] on every JSON response ([`Policy::evaluate_response`]).
//! [`export_policy!`] exports it as the `warden:policy/policy` interface of the
//! `warden:policy/policy-plugin@0.2.0` world (`sdk/wit/policy.wit`).
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
//! Build with `cargo build --release --target wasm32-unknown-unknown` (crate type
//! `cdylib`): the module imports nothing but the `warden:policy/host` functions, and the
//! gateway turns it into a component from the component type that wit-bindgen embeds.
//! `wasm32-wasip2` works too (the output is then a component that imports the WASI
//! interfaces std uses, which the gateway stubs out). Unit-test natively with [`testing`].
//!
//! Helpers for common request shapes: [`mcp`] (JSON-RPC 2.0 / Model Context Protocol) and
//! [`inference`] (OpenAI-style chat and completions requests).
#![deny(missing_docs)]

mod config;
mod headers;
mod host;
pub mod inference;
pub mod json;
pub mod mcp;
mod request;
mod response;
pub mod testing;
mod verdict;

pub use config::{ConfigError, ConfigErrors, Setup, parse_duration};
pub use headers::HeaderIter;
pub use host::{Level, RateDecision, log, rate_limit, secret_matches};
pub use json::JsonError;
pub use request::{Client, Method, Request, RequestBuilder};
pub use response::{Response, ResponseBuilder, ResponseVerdict};
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

    /// Decide about one response (only called where [`Setup::response_phase`] is on).
    ///
    /// `request` is the request as [`Policy::evaluate`] saw it. The instance may not be
    /// the one that evaluated the request, so derive anything needed from `request`
    /// rather than from state kept between the calls.
    fn evaluate_response(&self, request: &Request, response: &Response) -> ResponseVerdict {
        let _ = (request, response);
        ResponseVerdict::Keep
    }
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

                fn evaluate_response(
                    request: $crate::__rt::WitRequest,
                    response: $crate::__rt::WitResponse,
                ) -> $crate::__rt::WitResponseVerdict {
                    __WARDEN_POLICY.with(|p| {
                        let p = p.borrow();
                        let policy = p
                            .as_ref()
                            .expect("evaluate-response called before configure");
                        $crate::__rt::evaluate_response(policy, request, response)
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
            world: "warden:policy/policy-plugin@0.2.0",
            pub_export_macro: true,
            default_bindings_module: "warden_sdk::__rt::bindings",
        });
    }

    use std::cell::RefCell;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    pub use bindings::export;
    pub use bindings::exports::warden::policy::policy::Guest;
    use bindings::warden::policy::host;
    use bindings::warden::policy::types as wit;
    pub use wit::{
        ConfigError as WitConfigError, Request as WitRequest, Response as WitResponse,
        ResponseVerdict as WitResponseVerdict, Setup as WitSetup, Verdict as WitVerdict,
    };

    use crate::headers::Headers;
    use crate::{
        Changes, Client, Denial, Method, Policy, RateDecision, Request, Response, ResponseVerdict,
        Setup, Verdict,
    };

    thread_local! {
        // The 0.2.0 request no longer names the route; it is fixed per instance, so it is
        // kept from `configure` and shared into every `Request`.
        static ROUTE: RefCell<Arc<str>> = RefCell::new(Arc::from(""));
    }

    /// Configure `P` from the host's arguments.
    pub fn configure<P: Policy>(setup: WitSetup, config: &str) -> Result<P, Vec<WitConfigError>> {
        let setup = Setup {
            route: setup.route,
            secrets: setup.secrets,
            granted_headers: setup.granted_headers,
            body_max: setup.body_max,
            response_phase: setup.response_phase,
        };
        ROUTE.with(|r| *r.borrow_mut() = Arc::from(setup.route.as_str()));
        crate::configure_from_json::<P>(&setup, config).map_err(|errs| {
            errs.into_iter()
                .map(|e| WitConfigError {
                    key: e.key,
                    reason: e.reason,
                })
                .collect()
        })
    }

    // Every field is moved, never copied: the header list stays one packed buffer.
    fn request(r: WitRequest) -> Request {
        let c = r.client;
        Request {
            route: ROUTE.with(|r| r.borrow().clone()),
            method: match r.method {
                wit::Method::Get => Method::Get,
                wit::Method::Head => Method::Head,
                wit::Method::Post => Method::Post,
                wit::Method::Put => Method::Put,
                wit::Method::Delete => Method::Delete,
                wit::Method::Connect => Method::Connect,
                wit::Method::Options => Method::Options,
                wit::Method::Trace => Method::Trace,
                wit::Method::Patch => Method::Patch,
                wit::Method::Other(s) => Method::Other(s),
            },
            path: r.path,
            query: r.query,
            headers: Headers(r.headers),
            client: Client {
                address: match c.address {
                    wit::IpAddress::Ipv4(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
                    // The host already sends mapped peers as IPv4; canonicalising again
                    // is two compares and keeps IPv4 rules unbypassable if it ever did not.
                    wit::IpAddress::Ipv6((hi, lo)) => {
                        IpAddr::V6(Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo)))
                            .to_canonical()
                    }
                },
                port: c.port,
                tls: c.tls,
                sni: c.sni,
                uri_sans: c.uri_sans,
                dns_sans: c.dns_sans,
            },
            body: r.body,
        }
    }

    /// Convert the request, evaluate, convert the verdict.
    pub fn evaluate<P: Policy>(policy: &P, r: WitRequest) -> WitVerdict {
        match policy.evaluate(&request(r)) {
            Verdict::Allow(c) if c.is_empty() => WitVerdict::Allow,
            Verdict::Allow(Changes {
                set_request_headers,
                remove_request_headers,
                add_response_headers,
                body,
            }) => WitVerdict::AllowWithChanges(wit::Changes {
                set_request_headers: headers(set_request_headers),
                remove_request_headers,
                add_response_headers: headers(add_response_headers),
                body,
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

    /// Convert the request and response, evaluate, convert the verdict.
    pub fn evaluate_response<P: Policy>(
        policy: &P,
        r: WitRequest,
        resp: WitResponse,
    ) -> WitResponseVerdict {
        let resp = Response {
            status: resp.status,
            headers: Headers(resp.headers),
            body: resp.body,
        };
        match policy.evaluate_response(&request(r), &resp) {
            ResponseVerdict::Keep => WitResponseVerdict::Keep,
            ResponseVerdict::Replace(b) => WitResponseVerdict::Replace(b),
        }
    }

    fn headers(h: Vec<(String, Vec<u8>)>) -> Vec<wit::Header> {
        h.into_iter()
            .map(|(name, value)| wit::Header { name, value })
            .collect()
    }

    /// Host import.
    pub fn host_log(level: crate::Level, message: &str, fields: &[(&str, &str)]) {
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
        host::secret_matches(name, presented)
    }

    /// Host import.
    pub fn host_rate_limit(key: &str, limit: u32, window_ms: u32) -> RateDecision {
        let d = host::rate_limit(key, limit, window_ms);
        RateDecision {
            allowed: d.allowed,
            remaining: d.remaining,
            reset_after: std::time::Duration::from_millis(d.reset_after_ms.into()),
        }
    }
}
