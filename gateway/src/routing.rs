//! Routing: pick the most specific route for a request.
//!
//! Specificity, highest first: an exact path beats a prefix; a longer prefix beats a
//! shorter one; an exact host beats a wildcard host beats no host; a route with methods
//! beats one without. Ties go to the route declared first. A request whose host and path
//! match routes but whose method matches none is a 405 with `Allow`, not a 404.

use http::Method;

use crate::config::RouteMatcher;
use crate::http::normalize::{match_pattern, normalize_host};

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` → stores `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    host: HostMatch,
    path: PathMatch,
    methods: Vec<Method>,
    score: (u8, usize, u8, u8),
}

/// The outcome of routing one request.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// Index of the route in the config.
    Found(usize),
    /// Host and path matched, the method did not; these methods would.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// A compiled route table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    entries: Vec<Entry>,
}

impl Router {
    /// Compile the matchers of validated routes, in declaration order.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a RouteMatcher>) -> Router {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .enumerate()
            .map(|(index, m)| {
                // Hosts compare in normalized form: lower case, without a trailing dot.
                let host = match &m.host {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(rest) => HostMatch::Suffix(
                            rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase(),
                        ),
                        None => HostMatch::Exact(
                            normalize_host(h).unwrap_or_else(|_| h.to_ascii_lowercase()),
                        ),
                    },
                };
                let path = match (&m.path, &m.path_prefix) {
                    (Some(p), _) => PathMatch::Exact(p.clone()),
                    (None, Some(p)) => PathMatch::Prefix(p.clone()),
                    (None, None) => PathMatch::Prefix("/".to_string()),
                };
                let methods = m.methods.clone();
                let score = (
                    matches!(path, PathMatch::Exact(_)) as u8,
                    match &path {
                        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.len(),
                    },
                    match host {
                        HostMatch::Exact(_) => 2,
                        HostMatch::Suffix(_) => 1,
                        HostMatch::Any => 0,
                    },
                    (!methods.is_empty()) as u8,
                );
                Entry {
                    index,
                    host,
                    path,
                    methods,
                    score,
                }
            })
            .collect();
        // Most specific first; the sort is stable, so ties keep declaration order.
        entries.sort_by_key(|e| std::cmp::Reverse(e.score));
        Router { entries }
    }

    /// Route a request. `host` and `path` are in normalized form
    /// ([`crate::http::normalize`]): the host lower case without port or trailing dot.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> RouteMatch {
        let mut allowed: Vec<Method> = Vec::new();
        for e in &self.entries {
            if !host_matches(&e.host, host) || !path_matches(&e.path, path) {
                continue;
            }
            if e.methods.is_empty() || e.methods.contains(method) {
                return RouteMatch::Found(e.index);
            }
            for m in &e.methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

fn host_matches(m: &HostMatch, host: Option<&str>) -> bool {
    match (m, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(h), Some(req)) => h == req,
        (HostMatch::Suffix(s), Some(req)) => req.len() > s.len() && req.ends_with(s.as_str()),
        _ => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => match_pattern(p, path) == Some(path.len()),
        PathMatch::Prefix(p) => match match_pattern(p, path) {
            // Segment boundaries: "/v1" matches "/v1" and "/v1/x" but not "/v10", so a
            // policy written for one API cannot be skipped by a look-alike path.
            Some(n) => p.ends_with('/') || n == path.len() || path.as_bytes()[n] == b'/',
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn route(
        _name: &str,
        host: Option<&str>,
        path: Option<&str>,
        prefix: Option<&str>,
        methods: &[&str],
    ) -> RouteMatcher {
        RouteMatcher {
            host: host.map(Into::into),
            path: path.map(Into::into),
            path_prefix: prefix.map(Into::into),
            methods: methods
                .iter()
                .map(|s| Method::from_bytes(s.as_bytes()).unwrap())
                .collect(),
        }
    }

    #[test]
    fn most_specific_wins() {
        let r = Router::new(&[
            route("root", None, None, Some("/"), &[]),
            route("v1", None, None, Some("/v1"), &[]),
            route("infer", None, None, Some("/v1/infer"), &["POST"]),
            route("exact", None, Some("/v1/infer/health"), None, &[]),
            route("host", Some("api.example.com"), None, Some("/v1"), &[]),
            route("wild", Some("*.example.com"), None, Some("/v1"), &[]),
        ]);
        let get = Method::GET;
        assert_eq!(
            r.route(None, "/v1/infer", &Method::POST),
            RouteMatch::Found(2)
        );
        assert_eq!(
            r.route(None, "/v1/infer/health", &get),
            RouteMatch::Found(3)
        );
        assert_eq!(r.route(None, "/v1/inference", &get), RouteMatch::Found(1));
        assert_eq!(r.route(None, "/v10", &get), RouteMatch::Found(0));
        assert_eq!(
            r.route(Some("api.example.com"), "/v1/x", &get),
            RouteMatch::Found(4)
        );
        assert_eq!(
            r.route(Some("other.example.com"), "/v1/x", &get),
            RouteMatch::Found(5)
        );
        assert_eq!(
            r.route(Some("example.com"), "/v1/x", &get),
            RouteMatch::Found(1)
        );
        // GET on /v1/infer falls through to the /v1 prefix, which takes any method.
        assert_eq!(r.route(None, "/v1/infer", &get), RouteMatch::Found(1));
    }

    #[test]
    fn method_mismatch_is_405_and_nothing_is_404() {
        let r = Router::new(&[route(
            "infer",
            None,
            None,
            Some("/v1/infer"),
            &["POST", "PUT"],
        )]);
        assert_eq!(
            r.route(None, "/v1/infer/x", &Method::GET),
            RouteMatch::MethodNotAllowed(vec![Method::POST, Method::PUT])
        );
        assert_eq!(r.route(None, "/other", &Method::GET), RouteMatch::NotFound);
    }

    /// The route table the agreement properties run on: an open prefix, a protected one
    /// below it, an exact path with a sub-delimiter, and a host-bound route.
    /// A route in the model: path, host, exact.
    type ModelRoute = (&'static str, Option<&'static str>, bool);

    fn demo_router() -> (Router, Vec<ModelRoute>) {
        let table = vec![
            ("/", None, false),
            ("/api", None, false),
            ("/api/admin", None, false),
            ("/api/m:p", None, true),
            ("/api/admin", Some("admin.internal"), false),
        ];
        let routes: Vec<RouteMatcher> = table
            .iter()
            .enumerate()
            .map(|(i, (p, host, exact))| {
                let name = format!("r{i}");
                if *exact {
                    route(&name, *host, Some(p), None, &[])
                } else {
                    route(&name, *host, None, Some(p), &[])
                }
            })
            .collect();
        (Router::new(&routes), table)
    }

    /// How a typical upstream framework routes: on the fully percent-decoded path, with
    /// literal comparison, most specific first (the model the gateway must agree with).
    fn upstream_route(table: &[ModelRoute], host: Option<&str>, decoded: &str) -> Option<usize> {
        let mut best: Option<(usize, (u8, usize, u8))> = None;
        for (i, (p, h, exact)) in table.iter().enumerate() {
            let host_ok = match h {
                None => true,
                Some(h) => host == Some(*h),
            };
            let path_ok = if *exact {
                decoded == *p
            } else {
                decoded.starts_with(p)
                    && (p.ends_with('/')
                        || decoded.len() == p.len()
                        || decoded.as_bytes()[p.len()] == b'/')
            };
            let score = (*exact as u8, p.len(), h.is_some() as u8);
            if host_ok && path_ok && best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    fn percent_decode(p: &str) -> String {
        let b = p.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match crate::http::normalize::decode_escape(b, i) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    use crate::http::normalize::{PathRules, normalize_path, tests::raw_path};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Either a raw path is refused, or the route the gateway picks for it is the route
        /// an upstream picks for what it receives — decoded, with slashes merged or
        /// backslashes read as slashes — so no encoding reaches a handler past its route.
        #[test]
        fn gateway_and_upstream_agree_on_the_route(
            raw in raw_path(),
            host in prop_oneof![
                Just(None),
                Just(Some("admin.internal")),
                Just(Some("ADMIN.internal.")),
                Just(Some("admin.internal.:8080")),
                Just(Some("other.internal")),
            ],
        ) {
            let (router, table) = demo_router();
            let Ok(path) = normalize_path(&raw, &PathRules::default()) else {
                return Ok(());
            };
            let host = host.map(|h| normalize_host(h).unwrap());
            let chosen = match router.route(host.as_deref(), &path, &Method::GET) {
                RouteMatch::Found(i) => Some(i),
                _ => None,
            };
            let decoded = percent_decode(&path);
            let mut merged = decoded.replace('\\', "/");
            while merged.contains("//") {
                merged = merged.replace("//", "/");
            }
            for view in [&decoded, &merged] {
                prop_assert_eq!(
                    upstream_route(&table, host.as_deref(), view),
                    chosen,
                    "raw {:?} normalized {:?} upstream sees {:?}", raw, path, view
                );
            }
            // Normalizing again changes nothing, so the route cannot change either.
            let again = normalize_path(&path, &PathRules::default()).unwrap();
            prop_assert_eq!(
                router.route(host.as_deref(), &again, &Method::GET),
                router.route(host.as_deref(), &path, &Method::GET)
            );
        }

        /// The router never panics, whatever it is given.
        #[test]
        fn router_never_panics(path in "\\PC{0,30}", host in proptest::option::of("\\PC{0,12}")) {
            let (router, _) = demo_router();
            let _ = router.route(host.as_deref(), &path, &Method::GET);
        }
    }
}
