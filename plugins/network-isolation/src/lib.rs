//! `network-isolation`: allow a request only when one of the route's rules matches it.
//!
//! ```toml
//! [[routes.policies]]
//! plugin = "network-isolation"
//! config = { rule_set = "sophia-internal", allow = [
//!     { identity = "spiffe://sophia/sophia-api" },          # exact verified identity
//!     { identity = "spiffe://ml/*", methods = ["POST"] },   # any workload of a trust domain
//!     { cidr = "127.0.0.0/8", methods = ["GET"], path = "/v1/models/*" },
//! ] }
//! ```
//!
//! Every condition present in a rule must hold (identity, cidr, methods, path); rules are
//! tried in order and the first match allows. Nothing matching means 403 with a JSON body
//! naming the route and the rule set — never the rules themselves.
//!
//! Path globs: `*` matches within one segment, `**` across segments.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use warden_sdk::serde_json::json;
use warden_sdk::{ConfigErrors, Method, Policy, Request, Setup, Verdict};

/// The policy's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name shown in the deny body (default `network-isolation`).
    #[serde(default)]
    pub rule_set: Option<String>,
    /// Allow rules, tried in order.
    pub allow: Vec<RawRule>,
    /// Status of the denial (default 403).
    #[serde(default)]
    pub deny_status: Option<u16>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Verified peer identity (URI or DNS SAN), exact or `scheme://domain/*` prefix.
    pub identity: Option<String>,
    /// Source network.
    pub cidr: Option<String>,
    /// Allowed methods.
    pub methods: Option<Vec<String>>,
    /// Path glob.
    pub path: Option<String>,
}

#[derive(Debug)]
enum Identity {
    Exact(String),
    /// Matches any URI SAN starting with this (ends in `/`).
    Prefix(String),
}

/// One rule, compiled so that a request is checked with compares, not searches: the 20
/// rules of a typical rule set cost less than one dlmalloc call.
#[derive(Debug)]
struct Rule {
    identity: Option<Identity>,
    cidr: Option<Net>,
    methods: Option<Methods>,
    path: Option<Glob>,
}

/// The methods a rule allows: the nine standard ones as bits, any other by its token.
#[derive(Debug)]
struct Methods {
    bits: u16,
    other: Vec<String>,
}

impl Methods {
    fn new(methods: &[Method]) -> Methods {
        let mut m = Methods {
            bits: 0,
            other: Vec::new(),
        };
        for method in methods {
            match method_bit(method) {
                Some(bit) => m.bits |= bit,
                None => m.other.push(method.as_str().to_owned()),
            }
        }
        m
    }

    /// `bit` is `method_bit(method)`, worked out once per request.
    fn allows(&self, bit: Option<u16>, method: &Method) -> bool {
        match bit {
            Some(b) => self.bits & b != 0,
            None => self.other.iter().any(|o| o == method.as_str()),
        }
    }
}

fn method_bit(m: &Method) -> Option<u16> {
    Some(match m {
        Method::Get => 1,
        Method::Head => 1 << 1,
        Method::Post => 1 << 2,
        Method::Put => 1 << 3,
        Method::Delete => 1 << 4,
        Method::Connect => 1 << 5,
        Method::Options => 1 << 6,
        Method::Trace => 1 << 7,
        Method::Patch => 1 << 8,
        Method::Other(_) => return None,
    })
}

/// A network as its masked bits: an address is inside when its bits under the mask are
/// the network's. An IPv4 network holds no IPv6 address and the other way round, as with
/// `IpNet::contains` (the SDK already hands IPv4-mapped peers over as IPv4).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Net {
    V4 { bits: u32, mask: u32 },
    V6 { bits: u128, mask: u128 },
}

impl Net {
    fn new(net: IpNet) -> Net {
        match net {
            IpNet::V4(n) => Net::V4 {
                bits: u32::from(n.network()),
                mask: u32::from(n.netmask()),
            },
            IpNet::V6(n) => Net::V6 {
                bits: u128::from(n.network()),
                mask: u128::from(n.netmask()),
            },
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Net::V4 { bits, mask }, IpAddr::V4(a)) => u32::from(a) & mask == *bits,
            (Net::V6 { bits, mask }, IpAddr::V6(a)) => u128::from(a) & mask == *bits,
            _ => false,
        }
    }
}

/// The configured policy.
#[derive(Debug)]
pub struct NetworkIsolation {
    rules: Vec<Rule>,
    rule_set: String,
    deny_status: u16,
}

impl Policy for NetworkIsolation {
    type Config = Config;

    fn configure(_setup: &Setup, config: Config) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        if config.allow.is_empty() {
            errs.push("allow", "needs at least one rule (an empty list would deny everything; remove the policy instead)");
        }
        let mut rules = Vec::with_capacity(config.allow.len());
        for (i, raw) in config.allow.into_iter().enumerate() {
            let key = |field: &str| format!("allow[{i}].{field}");
            if raw.identity.is_none() && raw.cidr.is_none() && raw.path.is_none() {
                errs.push(
                    format!("allow[{i}]"),
                    "a rule needs at least one of identity, cidr or path",
                );
            }
            let identity = match raw.identity {
                None => None,
                Some(id) => match parse_identity(&id) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        errs.push(key("identity"), e);
                        None
                    }
                },
            };
            let cidr = match raw.cidr {
                None => None,
                Some(c) => match c
                    .parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                {
                    Ok(net) => Some(Net::new(net)),
                    Err(_) => {
                        errs.push(
                            key("cidr"),
                            format!("{c:?} is not an IP network like 10.0.0.0/8 or an address"),
                        );
                        None
                    }
                },
            };
            let methods = match raw.methods {
                None => None,
                Some(ms) => {
                    if ms.is_empty() {
                        errs.push(
                            key("methods"),
                            "empty list matches nothing; omit it to allow every method",
                        );
                    }
                    for (j, m) in ms.iter().enumerate() {
                        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
                        {
                            errs.push(
                                format!("allow[{i}].methods[{j}]"),
                                format!("{m:?} is not an HTTP method"),
                            );
                        }
                    }
                    let ms: Vec<Method> = ms
                        .iter()
                        .map(|m| Method::parse(&m.to_ascii_uppercase()))
                        .collect();
                    Some(Methods::new(&ms))
                }
            };
            let path = match raw.path {
                None => None,
                Some(p) => match Glob::parse(&p) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        errs.push(key("path"), e);
                        None
                    }
                },
            };
            rules.push(Rule {
                identity,
                cidr,
                methods,
                path,
            });
        }
        let deny_status = config.deny_status.unwrap_or(403);
        if !(400..=599).contains(&deny_status) {
            errs.push("deny_status", "must be 400..=599");
        }
        let rule_set = config
            .rule_set
            .unwrap_or_else(|| "network-isolation".into());
        errs.into_result(NetworkIsolation {
            rules,
            rule_set,
            deny_status,
        })
    }

    fn evaluate(&self, req: &Request) -> Verdict {
        // The SDK hands IPv4-mapped IPv6 peers over as IPv4, so a v4 CIDR also covers a
        // client that connects through a dual-stack socket.
        let ip = req.client().ip();
        let method = req.method();
        let bit = method_bit(method);
        if self.rules.iter().any(|r| r.matches(req, ip, bit, method)) {
            return Verdict::allow();
        }
        Verdict::deny_json(
            self.deny_status,
            &json!({ "error": "forbidden", "route": req.route(), "policy": self.rule_set }),
        )
    }
}

impl Rule {
    /// Cheapest condition first: a method bit, a masked compare, then the path and the
    /// identities.
    fn matches(&self, req: &Request, ip: IpAddr, bit: Option<u16>, method: &Method) -> bool {
        if let Some(m) = &self.methods
            && !m.allows(bit, method)
        {
            return false;
        }
        if let Some(net) = &self.cidr
            && !net.contains(ip)
        {
            return false;
        }
        if let Some(g) = &self.path
            && !g.matches(req.path())
        {
            return false;
        }
        match &self.identity {
            None => true,
            Some(Identity::Exact(id)) => req.client().identities().any(|s| s == id),
            Some(Identity::Prefix(p)) => req
                .client()
                .uri_sans()
                .iter()
                .any(|s| s.len() > p.len() && s.starts_with(p.as_str())),
        }
    }
}

fn parse_identity(id: &str) -> Result<Identity, String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    match id.find('*') {
        None => Ok(Identity::Exact(id.into())),
        Some(pos) => {
            let prefix = &id[..pos];
            let ok = pos == id.len() - 1 && prefix.ends_with('/') && prefix.contains("://") && {
                // `scheme://` alone would match every identity of every trust domain.
                let after = &prefix[prefix.find("://").unwrap_or(0) + 3..];
                after.len() > 1
            };
            if ok {
                Ok(Identity::Prefix(prefix.into()))
            } else {
                Err(format!(
                    "{id:?}: a wildcard is only allowed as a final `/*` after a trust domain, like spiffe://example.org/*"
                ))
            }
        }
    }
}

/// The tokens of a glob, in order.
fn tokens(p: &str) -> Result<Vec<Tok>, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    let mut toks = Vec::new();
    let mut lit = String::new();
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if !lit.is_empty() {
                toks.push(Tok::Lit(std::mem::take(&mut lit)));
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                if chars.peek() == Some(&'*') {
                    return Err(format!("{p:?}: use * or **, not ***"));
                }
                toks.push(Tok::DoubleStar);
            } else {
                toks.push(Tok::Star);
            }
        } else {
            lit.push(c);
        }
    }
    if !lit.is_empty() {
        toks.push(Tok::Lit(lit));
    }
    Ok(toks)
}

/// A compiled path glob. The shapes rule sets are made of (`/exact`, `/prefix/**`) are
/// one string compare; the rest are matched token by token.
#[derive(Debug, PartialEq)]
enum Glob {
    /// No wildcard.
    Exact(String),
    /// A literal then `**`: every path starting with the literal.
    Prefix(String),
    /// Anything else: a literal (every glob starts with `/`) and then the tokens.
    Tokens(String, Vec<Tok>),
}

#[derive(Debug, PartialEq)]
enum Tok {
    Lit(String),
    /// Any run of characters except `/`.
    Star,
    /// Any run of characters.
    DoubleStar,
}

impl Glob {
    fn parse(p: &str) -> Result<Glob, String> {
        let mut toks = tokens(p)?.into_iter();
        let Some(Tok::Lit(first)) = toks.next() else {
            return Err(format!("{p:?} must start with /"));
        };
        let rest: Vec<Tok> = toks.collect();
        Ok(match rest.as_slice() {
            [] => Glob::Exact(first),
            [Tok::DoubleStar] => Glob::Prefix(first),
            _ => Glob::Tokens(first, rest),
        })
    }

    fn matches(&self, path: &str) -> bool {
        fn go(toks: &[Tok], s: &str) -> bool {
            match toks.split_first() {
                None => s.is_empty(),
                Some((Tok::Lit(l), rest)) => {
                    s.strip_prefix(l.as_str()).is_some_and(|s| go(rest, s))
                }
                Some((Tok::Star, rest)) => {
                    let seg_end = s.find('/').unwrap_or(s.len());
                    // Only at character boundaries: slicing inside a multi-byte character
                    // would panic, and a panic is the route's fail mode.
                    (0..=seg_end)
                        .rev()
                        .filter(|&i| s.is_char_boundary(i))
                        .any(|i| go(rest, &s[i..]))
                }
                Some((Tok::DoubleStar, rest)) => {
                    rest.is_empty()
                        || (0..=s.len())
                            .rev()
                            .filter(|&i| s.is_char_boundary(i))
                            .any(|i| go(rest, &s[i..]))
                }
            }
        }
        match self {
            Glob::Exact(p) => path == p,
            Glob::Prefix(p) => path.starts_with(p.as_str()),
            Glob::Tokens(first, rest) => path
                .strip_prefix(first.as_str())
                .is_some_and(|s| go(rest, s)),
        }
    }
}

warden_sdk::export_policy!(NetworkIsolation);

#[cfg(test)]
mod tests {
    use super::*;
    use warden_sdk::serde_json::{Value, json};
    use warden_sdk::testing::Harness;

    fn policy(config: Value) -> Harness<NetworkIsolation> {
        Harness::builder()
            .route("inference")
            .configure(config)
            .expect("valid config")
    }

    fn errors(config: Value) -> Vec<String> {
        match Harness::<NetworkIsolation>::builder().configure(config) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn exact_identity_allows_and_others_are_denied_with_a_body_naming_route_not_rules() {
        let h = policy(json!({ "allow": [ { "identity": "spiffe://sophia/sophia-api" } ] }));
        let ok = Request::builder()
            .uri_san("spiffe://sophia/sophia-api")
            .build();
        assert!(h.evaluate(&ok).is_allow());
        let other = Request::builder().uri_san("spiffe://sophia/other").build();
        let v = h.evaluate(&other);
        assert_eq!(v.status(), Some(403));
        let Verdict::Deny(d) = v else { unreachable!() };
        let body: Value = warden_sdk::serde_json::from_str(&d.body).unwrap();
        assert_eq!(
            body,
            json!({ "error": "forbidden", "route": "inference", "policy": "network-isolation" })
        );
        assert!(
            !d.body.contains("spiffe"),
            "deny body must not reveal rules"
        );
        assert!(!h.evaluate(&Request::builder().build()).is_allow());
    }

    #[test]
    fn trust_domain_prefix() {
        let h = policy(json!({ "allow": [ { "identity": "spiffe://ml/*" } ] }));
        assert!(
            h.evaluate(&Request::builder().uri_san("spiffe://ml/ns/a/sa/b").build())
                .is_allow()
        );
        assert!(
            !h.evaluate(&Request::builder().uri_san("spiffe://mlx/a").build())
                .is_allow()
        );
        assert!(
            !h.evaluate(&Request::builder().uri_san("spiffe://ml/").build())
                .is_allow()
        );
        // A DNS SAN never matches a URI prefix.
        assert!(
            !h.evaluate(&Request::builder().dns_san("spiffe://ml/a").build())
                .is_allow()
        );
    }

    #[test]
    fn dns_san_exact() {
        let h = policy(json!({ "allow": [ { "identity": "api.internal" } ] }));
        assert!(
            h.evaluate(&Request::builder().dns_san("api.internal").build())
                .is_allow()
        );
    }

    #[test]
    fn cidr_and_method_and_path() {
        let h = policy(json!({ "rule_set": "lan", "allow": [
            { "cidr": "10.1.0.0/16", "methods": ["get"], "path": "/v1/models/*" },
            { "cidr": "::1" },
        ] }));
        let r =
            |ip: &str, m: &str, p: &str| Request::builder().client_ip(ip).method(m).path(p).build();
        assert!(
            h.evaluate(&r("10.1.2.3", "GET", "/v1/models/gpt"))
                .is_allow()
        );
        assert!(
            !h.evaluate(&r("10.1.2.3", "GET", "/v1/models/gpt/x"))
                .is_allow()
        );
        assert!(
            !h.evaluate(&r("10.1.2.3", "POST", "/v1/models/gpt"))
                .is_allow()
        );
        assert!(
            !h.evaluate(&r("10.2.2.3", "GET", "/v1/models/gpt"))
                .is_allow()
        );
        assert!(h.evaluate(&r("::1", "DELETE", "/anything")).is_allow());
        // IPv4-mapped IPv6 peers are matched as IPv4.
        assert!(
            h.evaluate(&r("::ffff:10.1.0.1", "GET", "/v1/models/a"))
                .is_allow()
        );
        let Verdict::Deny(d) = h.evaluate(&r("192.0.2.1", "GET", "/")) else {
            panic!()
        };
        assert!(d.body.contains("\"lan\""));
    }

    #[test]
    fn globs() {
        let g = |p: &str| Glob::parse(p).unwrap();
        assert!(g("/v1/**").matches("/v1/a/b/c"));
        assert!(g("/v1/**").matches("/v1/"));
        assert!(!g("/v1/**").matches("/v2/a"));
        assert!(g("/v1/*/infer").matches("/v1/llama/infer"));
        assert!(!g("/v1/*/infer").matches("/v1/a/b/infer"));
        assert!(g("/v1/**/infer").matches("/v1/a/b/infer"));
        assert!(g("/exact").matches("/exact"));
        assert!(!g("/exact").matches("/exact/"));
        assert!(g("/files/*.json").matches("/files/a.json"));
        // A multi-byte character where `*` ends is a match or not, never a trap.
        assert!(g("/v1/*/infer").matches("/v1/é/infer"));
        assert!(g("/files/*").matches("/files/日本"));
        assert!(!g("/files/*x").matches("/files/日本"));
    }

    #[test]
    fn compiled_globs_match_exactly_what_the_tokens_match() {
        let globs = [
            "/", "/**", "/*", "/v1", "/v1/", "/v1/**", "/v1/*", "/v1/*/infer", "/v1/**/infer",
            "/files/*.json", "/a**", "/a*b*c", "/é/**", "/x/**/", "/**/end",
        ];
        let paths = [
            "/", "/v1", "/v1/", "/v1/a", "/v1/a/b", "/v1/llama/infer", "/v1/a/b/infer",
            "/v2/a", "/files/a.json", "/files/a/b.json", "/abc", "/a/b/c", "/é/x", "/é",
            "/x//", "/x/y/", "/end", "/a/end", "/v1x", "",
        ];
        for g in globs {
            let compiled = Glob::parse(g).unwrap();
            // The uncompiled form: no leading literal taken out, every token matched.
            let reference = Glob::Tokens(String::new(), tokens(g).unwrap());
            for p in paths {
                assert_eq!(
                    compiled.matches(p),
                    reference.matches(p),
                    "glob {g:?} on {p:?} ({compiled:?})"
                );
            }
        }
        assert_eq!(Glob::parse("/v1/**").unwrap(), Glob::Prefix("/v1/".into()));
        assert_eq!(Glob::parse("/v1").unwrap(), Glob::Exact("/v1".into()));
        assert!(matches!(Glob::parse("/v1/*").unwrap(), Glob::Tokens(..)));
    }

    #[test]
    fn compiled_networks_hold_exactly_what_ipnet_holds() {
        let nets = [
            "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "127.0.0.0/8",
            "::1/128", "::/0", "2001:db8::/32", "fe80::/10", "::ffff:10.0.0.0/104",
            "10.1.2.3/20",
        ];
        let ips = [
            "10.0.0.1", "10.1.255.255", "10.2.0.0", "11.0.0.0", "10.1.2.3", "127.0.0.1",
            "0.0.0.0", "255.255.255.255", "::1", "::2", "2001:db8::1", "2001:db9::1",
            "fe80::1", "::ffff:10.0.0.1", "::",
        ];
        for n in nets {
            let net: IpNet = n.parse().unwrap();
            let compiled = Net::new(net);
            for ip in ips {
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(compiled.contains(ip), net.contains(&ip), "{n} holds {ip}?");
            }
        }
    }

    #[test]
    fn methods_are_matched_as_tokens_standard_or_not() {
        let h = policy(json!({ "allow": [
            { "path": "/dav/**", "methods": ["PROPFIND", "get"] },
        ] }));
        let r = |m: &str| Request::builder().method(m).path("/dav/x").build();
        assert!(h.evaluate(&r("PROPFIND")).is_allow());
        assert!(h.evaluate(&r("GET")).is_allow());
        // Methods are case-sensitive on the wire: `get` and `propfind` are other methods.
        assert!(!h.evaluate(&r("get")).is_allow());
        assert!(!h.evaluate(&r("propfind")).is_allow());
        assert!(!h.evaluate(&r("POST")).is_allow());
        assert!(!h.evaluate(&r("PROPPATCH")).is_allow());
        for m in ["HEAD", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] {
            assert!(!h.evaluate(&r(m)).is_allow(), "{m}");
        }
        let all = Methods::new(&[
            Method::Get,
            Method::Head,
            Method::Post,
            Method::Put,
            Method::Delete,
            Method::Connect,
            Method::Options,
            Method::Trace,
            Method::Patch,
        ]);
        assert_eq!(all.bits.count_ones(), 9);
        assert!(all.other.is_empty());
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = errors(json!({ "allow": [
            { "identity": "spiffe://*" },
            { "cidr": "10.0.0.0/33" },
            { "methods": ["GET"] },
            { "path": "v1", "methods": ["G T"] },
        ] }));
        assert!(
            e.iter().any(|e| e.starts_with("allow[0].identity:")),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.starts_with("allow[1].cidr:")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("allow[2]:")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("allow[3].path:")), "{e:?}");
        assert!(
            e.iter().any(|e| e.starts_with("allow[3].methods[0]:")),
            "{e:?}"
        );
        let e = errors(json!({ "allow": [ { "cidr": "10.0.0.0/8", "port": 1 } ] }));
        assert!(
            e[0].starts_with("allow[0].port:") && e[0].contains("unknown field `port`"),
            "{e:?}"
        );
        let e = errors(json!({ "allow": [] }));
        assert!(e[0].starts_with("allow:"), "{e:?}");
        let e = errors(json!({}));
        assert!(e[0].contains("missing field `allow`"), "{e:?}");
    }
}
