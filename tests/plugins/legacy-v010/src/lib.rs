//! A plugin built against the old contract, `warden:policy@0.1.0` (`sdk/wit-0.1.0`), with
//! wit-bindgen directly rather than the SDK (which now targets 0.2.0): it shows that the
//! gateway still runs 0.1.0 components unchanged and still passes them the 0.1.0 request
//! fields (`route`, the method as a string, headers as records).
//!
//! Config: `{ deny_path_prefix = "/blocked", tag = "x-legacy" }`. A path starting with the
//! prefix is denied with 403 and the body `legacy says no`; anything else is allowed with
//! the request header `<tag>: <method> <route>` set.
use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({
    path: "../../../sdk/wit-0.1.0",
    world: "warden:policy/policy-plugin@0.1.0",
});

use exports::warden::policy::policy::Guest;
use warden::policy::types::{Changes, ConfigError, Denial, Header, Request, Setup, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    deny_path_prefix: String,
    tag: String,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct Legacy;

impl Guest for Legacy {
    fn configure(_setup: Setup, config: String) -> Result<(), Vec<ConfigError>> {
        let c: Config = serde_json::from_str(&config).map_err(|e| {
            vec![ConfigError {
                key: String::new(),
                reason: e.to_string(),
            }]
        })?;
        let mut errs = Vec::new();
        if !c.deny_path_prefix.starts_with('/') {
            errs.push(ConfigError {
                key: "deny_path_prefix".into(),
                reason: "must start with /".into(),
            });
        }
        if c.tag.is_empty()
            || !c
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            errs.push(ConfigError {
                key: "tag".into(),
                reason: "must be a header name".into(),
            });
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        CONFIG.with(|s| *s.borrow_mut() = Some(c));
        Ok(())
    }

    fn evaluate(r: Request) -> Verdict {
        CONFIG.with(|s| {
            let s = s.borrow();
            let c = s.as_ref().expect("evaluate called before configure");
            if r.path.starts_with(&c.deny_path_prefix) {
                Verdict::Deny(Denial {
                    status: 403,
                    body: "legacy says no".into(),
                    headers: vec![Header {
                        name: "content-type".into(),
                        value: b"text/plain; charset=utf-8".to_vec(),
                    }],
                })
            } else {
                Verdict::AllowWithChanges(Changes {
                    set_request_headers: vec![Header {
                        name: c.tag.clone(),
                        value: format!("{} {}", r.method, r.route).into_bytes(),
                    }],
                    remove_request_headers: Vec::new(),
                    add_response_headers: Vec::new(),
                })
            }
        })
    }
}

export!(Legacy);
