//! A well-formed policy component for a contract version the gateway does not know,
//! `warden:policy@0.9.0` (its own `wit/`, a copy of 0.2.0 with the version changed): the
//! gateway must refuse it at load, naming the version it was built against.
wit_bindgen::generate!({
    path: "wit",
    world: "warden:policy/policy-plugin@0.9.0",
});

use exports::warden::policy::policy::Guest;
use warden::policy::types::{ConfigError, Request, Response, ResponseVerdict, Setup, Verdict};

struct Future;

impl Guest for Future {
    fn configure(_setup: Setup, _config: String) -> Result<(), Vec<ConfigError>> {
        Ok(())
    }

    fn evaluate(_request: Request) -> Verdict {
        Verdict::Allow
    }

    fn evaluate_response(_request: Request, _response: Response) -> ResponseVerdict {
        ResponseVerdict::Keep
    }
}

export!(Future);
