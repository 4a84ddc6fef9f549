//! A typed builder for gateway configs, so tests state what they change instead of
//! repeating TOML fragments. Listeners default to `127.0.0.1:0`.
//!
//! ```ignore
//! let cfg = ConfigBuilder::new()
//!     .gateway("max_headers", 10)
//!     .upstream("api", Upstream::url(&up.url()).set("host_header", "api.internal"))
//!     .route(Route::prefix("api", "/", "api").set("timeout", "300ms"))
//!     .toml();
//! ```

use toml::{Table, Value};

/// A whole gateway config.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    root: Table,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// Both listeners on `127.0.0.1:0`, nothing else.
    pub fn new() -> Self {
        let mut b = ConfigBuilder { root: Table::new() };
        b = b.gateway("listen", "127.0.0.1:0");
        b.admin("listen", "127.0.0.1:0")
    }

    fn table(&mut self, name: &str) -> &mut Table {
        self.root
            .entry(name)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("a table")
    }

    /// Set `[gateway] key = value`.
    pub fn gateway(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table("gateway").insert(key.into(), value.into());
        self
    }

    /// Set `[admin] key = value`.
    pub fn admin(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table("admin").insert(key.into(), value.into());
        self
    }

    /// Set `[NAME] key = value` in any top-level table (`telemetry`, `log` …).
    pub fn section(mut self, name: &str, key: &str, value: impl Into<Value>) -> Self {
        self.table(name).insert(key.into(), value.into());
        self
    }

    /// Add `[upstreams.NAME]`.
    pub fn upstream(mut self, name: &str, u: Upstream) -> Self {
        self.table("upstreams")
            .insert(name.into(), Value::Table(u.0));
        self
    }

    /// Add `[secrets.NAME]`.
    pub fn secrets(mut self, name: &str, provider: Table) -> Self {
        self.table("secrets")
            .insert(name.into(), Value::Table(provider));
        self
    }

    /// Add `[plugins.NAME]`.
    pub fn plugin(mut self, name: &str, plugin: Table) -> Self {
        self.table("plugins")
            .insert(name.into(), Value::Table(plugin));
        self
    }

    /// Append a `[[routes]]` entry.
    pub fn route(mut self, r: Route) -> Self {
        self.root
            .entry("routes")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("routes is an array")
            .push(Value::Table(r.0));
        self
    }

    /// The config as TOML text.
    pub fn toml(&self) -> String {
        toml::to_string(&self.root).expect("config serializes")
    }
}

/// One `[upstreams.NAME]` table.
#[derive(Clone, Debug)]
pub struct Upstream(Table);

impl Upstream {
    /// `url = …` (a base path after the authority is the upstream's base path).
    pub fn url(url: &str) -> Self {
        Upstream(Table::new()).set("url", url)
    }

    /// `endpoints = [...]` instead of `url`.
    pub fn endpoints(urls: &[&str]) -> Self {
        let list: Vec<Value> = urls.iter().map(|u| Value::from(*u)).collect();
        Upstream(Table::new()).set("endpoints", Value::Array(list))
    }

    /// Set any key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Inject `header = template` into every request to this upstream.
    pub fn inject(mut self, header: &str, template: &str) -> Self {
        inject(&mut self.0, header, template);
        self
    }
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct Route(Table);

impl Route {
    /// A route `name` matching paths under `prefix`, forwarding to `upstream`.
    pub fn prefix(name: &str, prefix: &str, upstream: &str) -> Self {
        let mut m = Table::new();
        m.insert("path_prefix".into(), prefix.into());
        Route(Table::new())
            .set("name", name)
            .set("upstream", upstream)
            .set("match", m)
    }

    /// Only these methods.
    pub fn methods(mut self, methods: &[&str]) -> Self {
        let list: Vec<Value> = methods.iter().map(|m| Value::from(*m)).collect();
        self.0
            .get_mut("match")
            .and_then(Value::as_table_mut)
            .expect("match table")
            .insert("methods".into(), Value::Array(list));
        self
    }

    /// Set any key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Inject `header = template` on this route.
    pub fn inject(mut self, header: &str, template: &str) -> Self {
        inject(&mut self.0, header, template);
        self
    }

    /// Append a `[[routes.policies]]` entry.
    pub fn policy(mut self, policy: Table) -> Self {
        self.0
            .entry("policies")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("policies is an array")
            .push(Value::Table(policy));
        self
    }
}

fn inject(t: &mut Table, header: &str, template: &str) {
    t.entry("inject")
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .expect("inject table")
        .insert(header.into(), template.into());
}
