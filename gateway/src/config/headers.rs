//! `request_headers` and `response_headers` on routes and upstreams: headers set, added or
//! removed without a plugin. Values are literal text with request variables
//! (`${client.address}`, `${request.id}`, `${tls.identity}`); secret references stay in
//! `inject`, where they are granted, rendered and audited as credentials.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::field::FieldError;
use crate::http::{ClientInfo, is_hop_by_hop};

/// `{ set = { … }, add = { … }, remove = [ … ] }` as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Replace: whatever the other side sent under the name is removed first.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append a value next to any existing ones.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove every value of these names.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A request variable a header value may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// The TCP peer's IP address.
    ClientAddress,
    /// The request id (the client's, when it sent a usable one).
    RequestId,
    /// The verified client certificate's first URI SAN, else its first DNS SAN.
    TlsIdentity,
}

impl Var {
    const ALL: [(&'static str, Var); 3] = [
        ("client.address", Var::ClientAddress),
        ("request.id", Var::RequestId),
        ("tls.identity", Var::TlsIdentity),
    ];
}

/// A piece of a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// A request variable.
    Var(Var),
}

/// A header value: fixed, or text with variables rendered per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueTemplate {
    /// No variables.
    Fixed(HeaderValue),
    /// Literal parts and variables.
    Parts(Vec<Part>),
}

/// What a value's variables read from.
pub struct RequestVars<'a> {
    /// The caller.
    pub client: &'a ClientInfo,
    /// The request id sent upstream and back.
    pub request_id: &'a HeaderValue,
}

impl ValueTemplate {
    /// Parse `text`; `$$` is a literal `$`. A `${provider:name}` secret reference is
    /// refused with where it belongs.
    pub fn parse(text: &str) -> Result<ValueTemplate, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                lit.push('$');
                rest = r;
                continue;
            }
            let Some(inner_start) = after.strip_prefix('{') else {
                lit.push('$');
                rest = after;
                continue;
            };
            let Some(end) = inner_start.find('}') else {
                return Err("unclosed ${ (write $$ for a literal $)".into());
            };
            let name = &inner_start[..end];
            let var = Var::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            match var {
                Some(v) => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(v));
                }
                None if name.contains(':') => {
                    return Err(format!(
                        "${{{name}}} is a secret reference; secrets go in `inject`, which grants and audits them"
                    ));
                }
                None => {
                    return Err(format!(
                        "unknown variable ${{{name}}}; expected one of: {}",
                        Var::ALL
                            .iter()
                            .map(|(n, _)| format!("${{{n}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            rest = &inner_start[end + 1..];
        }
        lit.push_str(rest);
        if parts.is_empty() {
            return HeaderValue::from_str(&lit)
                .map(ValueTemplate::Fixed)
                .map_err(|_| "not a valid header value".into());
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        for p in &parts {
            if let Part::Lit(l) = p
                && HeaderValue::from_str(l).is_err()
            {
                return Err("not a valid header value".into());
            }
        }
        Ok(ValueTemplate::Parts(parts))
    }

    /// The value for one request; `None` when a variable has no value here (no client
    /// certificate for `${tls.identity}`): the header is then left out.
    pub fn render(&self, vars: &RequestVars<'_>) -> Option<HeaderValue> {
        let parts = match self {
            ValueTemplate::Fixed(v) => return Some(v.clone()),
            ValueTemplate::Parts(p) => p,
        };
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(Var::ClientAddress) => out.push_str(&vars.client.addr.ip().to_string()),
                Part::Var(Var::RequestId) => out.push_str(vars.request_id.to_str().ok()?),
                Part::Var(Var::TlsIdentity) => out.push_str(vars.client.identity()?),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// Validated header rules, names lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderRules {
    set: Vec<(HeaderName, ValueTemplate)>,
    add: Vec<(HeaderName, ValueTemplate)>,
    remove: Vec<HeaderName>,
}

/// Names no rule may touch: the framing and routing of the message belong to the proxy.
fn reserved(name: &str) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name,
            "host" | "content-length" | "x-request-id" | "traceparent" | "tracestate"
        )
}

fn typed_name(key: String, h: &str, errs: &mut Vec<FieldError>) -> Option<HeaderName> {
    let lower = h.to_ascii_lowercase();
    match HeaderName::from_bytes(lower.as_bytes()) {
        Ok(_) if reserved(&lower) => {
            errs.push(FieldError::new(
                key,
                format!("{h:?} is managed by the proxy and cannot be changed here"),
            ));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(FieldError::new(
                key,
                format!("{h:?} is not a valid header name"),
            ));
            None
        }
    }
}

fn typed_values(
    kind: &str,
    table: &BTreeMap<String, String>,
    errs: &mut Vec<FieldError>,
) -> Vec<(HeaderName, ValueTemplate)> {
    let mut out = Vec::new();
    for (h, v) in table {
        let key = format!("{kind}.{h}");
        let name = typed_name(key.clone(), h, errs);
        match ValueTemplate::parse(v) {
            Ok(t) => out.extend(name.map(|n| (n, t))),
            Err(reason) => errs.push(FieldError::new(key, reason)),
        }
    }
    out
}

impl HeaderRules {
    /// Check and type rules as written. Errors carry the key within the rules table.
    pub fn parse(raw: &HeaderRulesConfig) -> Result<HeaderRules, Vec<FieldError>> {
        let mut errs = Vec::new();
        let set = typed_values("set", &raw.set, &mut errs);
        let add = typed_values("add", &raw.add, &mut errs);
        let remove = raw
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, h)| typed_name(format!("remove[{i}]"), h, &mut errs))
            .collect();
        if errs.is_empty() {
            Ok(HeaderRules { set, add, remove })
        } else {
            Err(errs)
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Every header name the rules write or remove.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.set
            .iter()
            .chain(&self.add)
            .map(|(n, _)| n)
            .chain(&self.remove)
    }

    /// An upstream's rules followed by a route's: the route's `set` of a name replaces the
    /// upstream's `set` and `add` of it; removals and additions accumulate.
    pub fn then(&self, route: &HeaderRules) -> HeaderRules {
        let overridden = |n: &HeaderName| route.set.iter().any(|(r, _)| r == n);
        let mut out = self.clone();
        out.set.retain(|(n, _)| !overridden(n));
        out.add.retain(|(n, _)| !overridden(n));
        out.set.extend(route.set.iter().cloned());
        out.add.extend(route.add.iter().cloned());
        out.remove.extend(route.remove.iter().cloned());
        out
    }

    /// Apply to a header map: removals, then replacements, then additions.
    pub fn apply(&self, h: &mut HeaderMap, vars: &RequestVars<'_>) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, t) in &self.set {
            h.remove(n);
            if let Some(v) = t.render(vars) {
                h.insert(n.clone(), v);
            }
        }
        for (n, t) in &self.add {
            if let Some(v) = t.render(vars) {
                h.append(n.clone(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(identity: Option<&str>) -> ClientInfo {
        ClientInfo {
            addr: "10.1.2.3:5555".parse().unwrap(),
            ip: HeaderValue::from_static("10.1.2.3"),
            tls: identity.is_some(),
            sni: None,
            uri_sans: identity.map(|s| vec![s.to_string()]).unwrap_or_default(),
            dns_sans: vec![],
        }
    }

    #[test]
    fn values_render_variables_and_refuse_secrets() {
        let rid = HeaderValue::from_static("rid-1");
        let c = client(Some("spiffe://sophia/api"));
        let vars = RequestVars {
            client: &c,
            request_id: &rid,
        };
        let t =
            ValueTemplate::parse("for=${client.address};id=${request.id};who=${tls.identity};$$5")
                .unwrap();
        assert_eq!(
            t.render(&vars).unwrap(),
            "for=10.1.2.3;id=rid-1;who=spiffe://sophia/api;$5"
        );
        let anon = client(None);
        let vars = RequestVars {
            client: &anon,
            request_id: &rid,
        };
        assert_eq!(t.render(&vars), None, "no identity: header left out");
        let e = ValueTemplate::parse("Bearer ${vault:ml/api#key}").unwrap_err();
        assert!(e.contains("inject"), "{e}");
        let e = ValueTemplate::parse("${client.port}").unwrap_err();
        assert!(e.contains("${client.address}"), "{e}");
        assert!(ValueTemplate::parse("${client.address").is_err());
        assert!(ValueTemplate::parse("a\nb").is_err());
        assert_eq!(
            ValueTemplate::parse("plain $ sign").unwrap(),
            ValueTemplate::Fixed(HeaderValue::from_static("plain $ sign"))
        );
    }

    #[test]
    fn rules_refuse_framing_headers_and_merge_route_over_upstream() {
        let raw = |set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]| HeaderRulesConfig {
            set: set
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            add: add
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        };
        for bad in [
            "Host",
            "content-length",
            "transfer-encoding",
            "connection",
            "x-request-id",
            "traceparent",
        ] {
            let errs = HeaderRules::parse(&raw(&[(bad, "x")], &[], &[])).unwrap_err();
            assert!(
                errs[0].reason.contains("managed by the proxy"),
                "{bad}: {errs:?}"
            );
        }
        assert!(HeaderRules::parse(&raw(&[], &[], &["bad name"])).is_err());

        let up =
            HeaderRules::parse(&raw(&[("x-env", "up")], &[("x-tag", "u")], &["x-drop"])).unwrap();
        let route =
            HeaderRules::parse(&raw(&[("X-Env", "route")], &[("x-tag", "r")], &[])).unwrap();
        let merged = up.then(&route);
        let c = client(None);
        let rid = HeaderValue::from_static("r");
        let mut h = HeaderMap::new();
        h.insert("x-env", HeaderValue::from_static("client-spoof"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        merged.apply(
            &mut h,
            &RequestVars {
                client: &c,
                request_id: &rid,
            },
        );
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["route"]);
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["u", "r"]);
        assert!(!h.contains_key("x-drop"));
    }
}
