//! Who is calling: the caller conditions that `mcp-guard` and `model-guard` share, and the
//! `*` globs they match names with.
//!
//! A caller entry names one or more conditions, all of which must hold:
//!
//! | key | matches |
//! | --- | --- |
//! | `spiffe = "spiffe://sophia/*"` | a verified URI SAN; `*` only after the trust domain |
//! | `dns = "*.svc.internal"` | a verified DNS SAN; `*` only as the whole first label |
//! | `cidr = "10.0.0.0/8"` or `["10.0.0.0/8", "::1"]` | the client address |
//! | `api_key_secret = "name"` (+ `header`, `scheme`) | a header equal to a granted secret |
//! | `anyone = true` | everyone (alone) |
//!
//! The plugins deserialise these keys next to their own and hand them over as an
//! [`IdentitySpec`], so each plugin keeps `deny_unknown_fields` on one flat table.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use warden_sdk::{ConfigErrors, Request, Setup};

/// One string or a list of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The identity keys of a caller entry, as written.
#[derive(Clone, Debug, Default)]
pub struct IdentitySpec {
    /// SPIFFE ID glob.
    pub spiffe: Option<String>,
    /// DNS SAN, exact or `*.domain`.
    pub dns: Option<String>,
    /// Client networks.
    pub cidr: Option<OneOrMany>,
    /// Granted secret an API key must equal.
    pub api_key_secret: Option<String>,
    /// Header carrying the API key (default `x-api-key`).
    pub header: Option<String>,
    /// Auth scheme before the key, e.g. `Bearer`.
    pub scheme: Option<String>,
    /// Match every caller.
    pub anyone: bool,
}

/// A validated set of caller conditions.
#[derive(Clone, Debug)]
pub struct Identity {
    spiffe: Option<Glob>,
    dns: Option<Dns>,
    cidrs: Vec<IpNet>,
    api_key: Option<ApiKey>,
}

#[derive(Clone, Debug)]
enum Dns {
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Subdomain(String),
}

#[derive(Clone, Debug)]
struct ApiKey {
    secret: String,
    header: String,
    scheme: Option<String>,
}

impl Identity {
    /// Validate `spec`, recording problems under `key` (e.g. `callers[2]`).
    pub fn build(
        spec: IdentitySpec,
        key: &str,
        setup: &Setup,
        errs: &mut ConfigErrors,
    ) -> Identity {
        let conditions = usize::from(spec.spiffe.is_some())
            + usize::from(spec.dns.is_some())
            + usize::from(spec.cidr.is_some())
            + usize::from(spec.api_key_secret.is_some());
        if spec.anyone && conditions > 0 {
            errs.push(
                format!("{key}.anyone"),
                "anyone = true matches every caller; drop it or the other conditions",
            );
        } else if !spec.anyone && conditions == 0 {
            errs.push(
                key,
                "a caller needs at least one of spiffe, dns, cidr or api_key_secret (or anyone = true)",
            );
        }
        if spec.api_key_secret.is_none() && (spec.header.is_some() || spec.scheme.is_some()) {
            errs.push(
                format!("{key}.header"),
                "header and scheme only apply with api_key_secret",
            );
        }
        let spiffe = spec.spiffe.and_then(|s| match spiffe_glob(&s) {
            Ok(g) => Some(g),
            Err(e) => {
                errs.push(format!("{key}.spiffe"), e);
                None
            }
        });
        let dns = spec.dns.and_then(|d| match dns_pattern(&d) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(format!("{key}.dns"), e);
                None
            }
        });
        let mut cidrs = Vec::new();
        if let Some(c) = spec.cidr {
            let list = c.into_vec();
            if list.is_empty() {
                errs.push(format!("{key}.cidr"), "an empty list matches nobody");
            }
            for c in list {
                match c
                    .parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                {
                    Ok(n) => cidrs.push(n.trunc()),
                    Err(_) => errs.push(
                        format!("{key}.cidr"),
                        format!("{c:?} is not an IP network like 10.0.0.0/8 or an address"),
                    ),
                }
            }
        }
        let api_key = spec.api_key_secret.map(|secret| {
            if !setup.has_secret(&secret) {
                errs.push(
                    format!("{key}.api_key_secret"),
                    format!("the route grants no secret named {secret:?}: add secrets = {{ {secret} = \"${{provider:name}}\" }} to this policy"),
                );
            }
            let header = spec
                .header
                .unwrap_or_else(|| "x-api-key".into())
                .to_ascii_lowercase();
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                errs.push(format!("{key}.header"), format!("{header:?} is not a header name"));
            } else if !setup.sees_header(&header) {
                errs.push(
                    format!("{key}.header"),
                    format!("{header} is withheld from plugins unless the route grants it: add headers = [\"{header}\"] to this policy"),
                );
            }
            ApiKey {
                secret,
                header,
                scheme: spec.scheme,
            }
        });
        Identity {
            spiffe,
            dns,
            cidrs,
            api_key,
        }
    }

    /// True when every condition holds for `req`. Network conditions are checked before
    /// the API key, so a caller that fails them costs no host call.
    pub fn matches(&self, req: &Request) -> bool {
        let client = req.client();
        if !self.cidrs.is_empty() {
            let ip = client.ip();
            if !self.cidrs.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        if let Some(g) = &self.spiffe
            && !client.uri_sans().iter().any(|s| g.matches(s))
        {
            return false;
        }
        if let Some(d) = &self.dns {
            let ok = client.dns_sans().iter().any(|s| match d {
                Dns::Exact(e) => s.eq_ignore_ascii_case(e),
                Dns::Subdomain(suffix) => {
                    s.len() > suffix.len()
                        && s.is_char_boundary(s.len() - suffix.len())
                        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && !s[..s.len() - suffix.len()].contains('.')
                }
            });
            if !ok {
                return false;
            }
        }
        match &self.api_key {
            None => true,
            Some(k) => k.matches(req),
        }
    }
}

impl ApiKey {
    fn matches(&self, req: &Request) -> bool {
        let mut values = req.header_all(&self.header);
        let (Some(mut v), None) = (values.next(), values.next()) else {
            // Absent, or sent twice: with two keys the upstream may read the other one.
            return false;
        };
        if let Some(scheme) = &self.scheme {
            let n = scheme.len();
            if v.len() <= n || !v[..n].eq_ignore_ascii_case(scheme.as_bytes()) || v[n] != b' ' {
                return false;
            }
            v = &v[n + 1..];
        }
        !v.is_empty() && warden_sdk::secret_matches(&self.secret, v)
    }
}

fn spiffe_glob(s: &str) -> Result<Glob, String> {
    let Some(rest) = s.strip_prefix("spiffe://") else {
        return Err(format!(
            "{s:?} is not a SPIFFE ID (spiffe://trust-domain/path)"
        ));
    };
    let domain = rest.split('/').next().unwrap_or("");
    if domain.is_empty() || domain.contains('*') || !rest[domain.len()..].starts_with('/') {
        return Err(format!(
            "{s:?}: name the trust domain exactly and use * only in the path, like spiffe://example.org/ns/*"
        ));
    }
    Ok(Glob::new(s))
}

fn dns_pattern(s: &str) -> Result<Dns, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    match s.strip_prefix('*') {
        None if !s.contains('*') => Ok(Dns::Exact(s.to_ascii_lowercase())),
        Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') => {
            Ok(Dns::Subdomain(suffix.to_ascii_lowercase()))
        }
        _ => Err(format!(
            "{s:?}: use an exact name or *.domain (the wildcard covers exactly one label)"
        )),
    }
}

/// A name pattern where `*` matches any run of characters (including none and `/`); other
/// characters match themselves, case-sensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    parts: Vec<String>,
}

impl Glob {
    /// Compile a pattern.
    pub fn new(pattern: &str) -> Glob {
        Glob {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    /// True when `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(x) => x,
            None => return s.is_empty(),
        };
        let Some(mut s) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        // Matching each middle part at its first occurrence is optimal for `*`-only
        // patterns: an earlier match never rules out a later one.
        for part in middle {
            match s.find(part.as_str()) {
                Some(i) => s = &s[i + part.len()..],
                None => return false,
            }
        }
        s.len() >= last.len() && s.ends_with(last.as_str())
    }
}

/// A list of globs; matches when any does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Globs(Vec<Glob>);

impl Globs {
    /// Compile `patterns`, recording an error under `key[i]` for an empty one.
    pub fn build(patterns: &[String], key: &str, errs: &mut ConfigErrors) -> Globs {
        for (i, p) in patterns.iter().enumerate() {
            if p.is_empty() {
                errs.push(format!("{key}[{i}]"), "an empty pattern matches nothing");
            }
        }
        Globs(patterns.iter().map(|p| Glob::new(p)).collect())
    }

    /// True when any pattern matches `s`.
    pub fn matches_any(&self, s: &str) -> bool {
        self.0.iter().any(|g| g.matches(s))
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Shorten client-supplied text for an error message, so a huge name is not echoed back
/// whole.
pub fn clip(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_sdk::serde_json::json;
    use warden_sdk::testing::Harness;
    use warden_sdk::{Policy, Verdict};

    #[test]
    fn globs() {
        let g = Glob::new;
        assert!(g("search_*").matches("search_docs"));
        assert!(g("search_*").matches("search_"));
        assert!(!g("search_*").matches("Search_docs"));
        assert!(!g("search_*").matches("xsearch_docs"));
        assert!(g("*").matches(""));
        assert!(g("a*b*c").matches("abc"));
        assert!(g("a*b*c").matches("a-b-b-c"));
        assert!(!g("a*b*c").matches("a-c-b"));
        assert!(g("*ab").matches("abab"));
        assert!(!g("a*a").matches("a"));
        assert!(g("get_project").matches("get_project"));
        assert!(!g("get_project").matches("get_projects"));
        assert!(g("spiffe://t/*").matches("spiffe://t/ns/a/sa/b"));
    }

    #[test]
    fn clip_long_names() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(150);
        assert_eq!(clip(&long).chars().count(), 101);
    }

    /// A policy that allows exactly the requests matching one identity.
    struct Only(Identity);

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        spiffe: Option<String>,
        dns: Option<String>,
        cidr: Option<OneOrMany>,
        api_key_secret: Option<String>,
        header: Option<String>,
        scheme: Option<String>,
        #[serde(default)]
        anyone: bool,
    }

    impl Policy for Only {
        type Config = Cfg;
        fn configure(setup: &Setup, c: Cfg) -> Result<Self, ConfigErrors> {
            let mut errs = ConfigErrors::new();
            let spec = IdentitySpec {
                spiffe: c.spiffe,
                dns: c.dns,
                cidr: c.cidr,
                api_key_secret: c.api_key_secret,
                header: c.header,
                scheme: c.scheme,
                anyone: c.anyone,
            };
            let id = Identity::build(spec, "caller", setup, &mut errs);
            errs.into_result(Only(id))
        }
        fn evaluate(&self, req: &Request) -> Verdict {
            if self.0.matches(req) {
                Verdict::allow()
            } else {
                Verdict::deny(403, "no")
            }
        }
    }

    fn only(c: warden_sdk::serde_json::Value) -> Harness<Only> {
        Harness::builder()
            .secret("k", "s3cret")
            .grant_header("authorization")
            .configure(c)
            .unwrap()
    }

    fn keys(c: warden_sdk::serde_json::Value) -> Vec<String> {
        let e = Harness::<Only>::builder()
            .configure(c)
            .err()
            .expect("refused");
        e.0.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn spiffe_matching_cannot_escape_the_trust_domain() {
        let h = only(json!({ "spiffe": "spiffe://sophia/*" }));
        let ok = |san: &str| {
            h.evaluate(&Request::builder().uri_san(san).build())
                .is_allow()
        };
        assert!(ok("spiffe://sophia/api"));
        assert!(!ok("spiffe://sophia-evil/api"));
        assert!(!ok("spiffe://sophiax/api"));
        assert!(!ok("SPIFFE://sophia/api"));
        // A DNS SAN with the same text is not a URI SAN.
        assert!(
            !h.evaluate(&Request::builder().dns_san("spiffe://sophia/api").build())
                .is_allow()
        );
        assert!(!h.evaluate(&Request::builder().build()).is_allow());
        assert_eq!(
            keys(json!({ "spiffe": "spiffe://soph*/a" })),
            ["caller.spiffe"]
        );
        assert_eq!(keys(json!({ "spiffe": "spiffe://*" })), ["caller.spiffe"]);
        assert_eq!(
            keys(json!({ "spiffe": "spiffe://sophia" })),
            ["caller.spiffe"]
        );
        assert_eq!(keys(json!({ "spiffe": "sophia/*" })), ["caller.spiffe"]);
    }

    #[test]
    fn dns_wildcard_is_one_label() {
        let h = only(json!({ "dns": "*.svc.internal" }));
        let ok = |san: &str| {
            h.evaluate(&Request::builder().dns_san(san).build())
                .is_allow()
        };
        assert!(ok("api.svc.internal"));
        assert!(ok("API.svc.INTERNAL"));
        assert!(!ok("a.b.svc.internal"));
        assert!(!ok("svc.internal"));
        assert!(!ok(".svc.internal"));
        assert!(!ok("evilsvc.internal"));
        assert_eq!(keys(json!({ "dns": "*svc.internal" })), ["caller.dns"]);
        assert_eq!(keys(json!({ "dns": "a.*.internal" })), ["caller.dns"]);
    }

    #[test]
    fn cidrs_and_conjunction() {
        let h = only(json!({ "cidr": ["10.0.0.0/8", "::1"], "spiffe": "spiffe://t/*" }));
        let r = |ip: &str, san: Option<&str>| {
            let b = Request::builder().client_ip(ip);
            let b = match san {
                Some(s) => b.uri_san(s),
                None => b,
            };
            h.evaluate(&b.build()).is_allow()
        };
        assert!(r("10.1.2.3", Some("spiffe://t/a")));
        assert!(r("::ffff:10.1.2.3", Some("spiffe://t/a")), "mapped IPv4");
        assert!(r("::1", Some("spiffe://t/a")));
        assert!(!r("10.1.2.3", None), "every condition must hold");
        assert!(!r("192.0.2.1", Some("spiffe://t/a")));
        assert_eq!(keys(json!({ "cidr": "10.0.0.0/33" })), ["caller.cidr"]);
        assert_eq!(keys(json!({ "cidr": [] })), ["caller.cidr"]);
    }

    #[test]
    fn api_keys() {
        let h = only(json!({ "api_key_secret": "k" }));
        let r = |b: warden_sdk::RequestBuilder| h.evaluate(&b.build()).is_allow();
        assert!(r(Request::builder().header("x-api-key", "s3cret")));
        assert!(!r(Request::builder().header("x-api-key", "s3cre")));
        assert!(!r(Request::builder().header("x-api-key", "")));
        assert!(!r(Request::builder()));
        assert!(
            !r(Request::builder()
                .header("x-api-key", "s3cret")
                .header("x-api-key", "other")),
            "a repeated key header is ambiguous"
        );
        let h =
            only(json!({ "api_key_secret": "k", "header": "Authorization", "scheme": "Bearer" }));
        let r = |v: &str| {
            h.evaluate(&Request::builder().header("authorization", v).build())
                .is_allow()
        };
        assert!(r("Bearer s3cret"));
        assert!(r("bearer s3cret"));
        assert!(!r("Bearers3cret"));
        assert!(!r("Basic s3cret"));
        assert!(!r("Bearer "));
        assert_eq!(
            keys(json!({ "api_key_secret": "nope" })),
            ["caller.api_key_secret"]
        );
        assert_eq!(
            keys(json!({ "api_key_secret": "nope", "header": "cookie" })),
            ["caller.api_key_secret", "caller.header"]
        );
    }

    #[test]
    fn anyone_is_alone_and_something_is_required() {
        assert!(
            only(json!({ "anyone": true }))
                .evaluate(&Request::builder().build())
                .is_allow()
        );
        assert_eq!(keys(json!({})), ["caller"]);
        assert_eq!(
            keys(json!({ "anyone": true, "cidr": "10.0.0.0/8" })),
            ["caller.anyone"]
        );
        assert_eq!(
            keys(json!({ "cidr": "10.0.0.0/8", "header": "x" })),
            ["caller.header"]
        );
    }
}
