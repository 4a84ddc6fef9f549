//! Routing: pick the most specific route for a request.
//!
//! Specificity, highest first: an exact path beats a prefix; a longer prefix beats a
//! shorter one; an exact host beats a wildcard host beats no host; a route with methods
//! beats one without. Ties go to the route declared first. A request whose host and path
//! match routes but whose method matches none is a 405 with `Allow`, not a 404.

use http::Method;

use crate::config::RouteConfig;

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
    /// Compile routes (already validated by the config loader).
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut entries: Vec<Entry> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let m = &r.matcher;
                let host = match &m.host {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(rest) => HostMatch::Suffix(rest.to_ascii_lowercase()),
                        None => HostMatch::Exact(h.to_ascii_lowercase()),
                    },
                };
                let path = match (&m.path, &m.path_prefix) {
                    (Some(p), _) => PathMatch::Exact(p.clone()),
                    (None, Some(p)) => PathMatch::Prefix(p.clone()),
                    (None, None) => PathMatch::Prefix("/".to_string()),
                };
                let methods: Vec<Method> = m
                    .methods
                    .iter()
                    .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                    .collect();
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

    /// Route a request. `host` is the request authority without port, if any.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> RouteMatch {
        let host = host.map(|h| h.to_ascii_lowercase());
        let mut allowed: Vec<Method> = Vec::new();
        for e in &self.entries {
            if !host_matches(&e.host, host.as_deref()) || !path_matches(&e.path, path) {
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
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            // Segment boundaries: "/v1" matches "/v1" and "/v1/x" but not "/v10", so a
            // policy written for one API cannot be skipped by a look-alike path.
            path.starts_with(p.as_str())
                && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MatchConfig;

    fn route(
        name: &str,
        host: Option<&str>,
        path: Option<&str>,
        prefix: Option<&str>,
        methods: &[&str],
    ) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            matcher: MatchConfig {
                host: host.map(Into::into),
                path: path.map(Into::into),
                path_prefix: prefix.map(Into::into),
                methods: methods.iter().map(|s| s.to_string()).collect(),
            },
            upstream: "u".into(),
            timeout: None,
            max_body: None,
            inject: Default::default(),
            policies: vec![],
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
            r.route(Some("Other.Example.com"), "/v1/x", &get),
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
}
