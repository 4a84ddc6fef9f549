//! `warden plugin new`: write a policy crate that builds, passes its native tests and
//! passes `warden plugin test` as written, from any directory on disk.
//!
//! The templates live here rather than in an external generator so that the scaffold a
//! `warden` binary writes always matches the SDK and host contract that binary was built
//! with (the SDK path and the toolchain channel are taken from the same source tree).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

/// The repository's toolchain file: a new plugin pins the same channel, so the SDK it
/// compiles against is built by the compiler the SDK is tested with.
const TOOLCHAIN_FILE: &str = include_str!("../../../rust-toolchain.toml");

/// What `warden plugin new` wrote, for the "next steps" it prints.
#[derive(Debug)]
pub(crate) struct Created {
    /// The SDK it depends on.
    pub sdk: PathBuf,
    /// The component `cargo build --release --target wasm32-unknown-unknown` produces,
    /// relative to `dir`.
    pub wasm: String,
}

/// Write the crate `name` under `parent` (created if missing), depending on the SDK at
/// `sdk` (default: the one this binary was built from).
pub(crate) fn new_plugin(name: &str, parent: &Path, sdk: Option<&Path>) -> anyhow::Result<Created> {
    check_name(name).map_err(|e| anyhow!("{name:?} is not a valid plugin crate name: {e}"))?;
    let sdk = resolve_sdk(sdk)?;
    let dir = parent.join(name);
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            bail!(
                "{} already exists and is not an empty directory; refusing to overwrite it",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;

    let files = render(name, &sdk)?;
    for (rel, text) in &files {
        write_new(&dir.join(rel), text)?;
    }
    Ok(Created {
        sdk,
        wasm: format!(
            "target/wasm32-unknown-unknown/release/{}.wasm",
            artifact_stem(name)
        ),
    })
}

/// Cargo names the artifact after the library, whose name is the package name with `-`
/// turned into `_`.
pub(crate) fn artifact_stem(name: &str) -> String {
    name.replace('-', "_")
}

/// The files of a new crate, relative to its directory.
fn render(name: &str, sdk: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let sdk_text = sdk
        .to_str()
        .ok_or_else(|| anyhow!("the SDK path {} is not UTF-8", sdk.display()))?;
    let channel = toolchain_channel()?;
    let ty = type_name(name);
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &artifact_stem(name))
            .replace("{{Type}}", &ty)
            .replace("{{channel}}", &channel)
            // Last, so nothing in the path is taken for a placeholder. A TOML string,
            // escaped by the TOML writer (paths may hold `"` or `\`).
            .replace("{{sdk}}", &toml::Value::String(sdk_text.into()).to_string())
    };
    Ok(vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("rust-toolchain.toml", fill(RUST_TOOLCHAIN)),
        (".gitignore", "/target\n".into()),
        ("src/lib.rs", fill(LIB_RS)),
        ("cases.toml", fill(CASES_TOML)),
        ("README.md", fill(README_MD)),
    ])
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn toolchain_channel() -> anyhow::Result<String> {
    let t: toml::Table = toml::from_str(TOOLCHAIN_FILE).context("rust-toolchain.toml")?;
    t.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("rust-toolchain.toml has no toolchain.channel"))
}

/// The SDK directory: `--sdk`, else the `sdk/` next to the gateway this binary was built
/// from. An installed binary may have no source tree beside it, hence the clear error.
fn resolve_sdk(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (path, given) = match arg {
        Some(p) => (p.to_path_buf(), true),
        None => (Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"), false),
    };
    let dir = match std::fs::canonicalize(&path) {
        Ok(d) => d,
        Err(e) if given => bail!("--sdk {}: {e}", path.display()),
        Err(_) => bail!(
            "the warden-sdk this binary was built from ({}) is not there; pass --sdk PATH \
             to the sdk/ directory of a Warden source checkout",
            path.display()
        ),
    };
    let manifest = dir.join("Cargo.toml");
    let name = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| Some(t.get("package")?.get("name")?.as_str()?.to_owned()));
    if name.as_deref() != Some("warden-sdk") {
        bail!(
            "{} is not the warden-sdk crate (no Cargo.toml naming package warden-sdk){}",
            dir.display(),
            if given {
                ""
            } else {
                "; pass --sdk PATH to the sdk/ directory of a Warden source checkout"
            }
        );
    }
    Ok(dir)
}

/// Words a crate cannot be called: Rust keywords (the library name must be an
/// identifier), the standard crates, and the crates the scaffold itself depends on.
const RESERVED: &str = "\
    abstract as async await become box break const continue crate do dyn else enum \
    extern false final fn for gen if impl in let loop macro match mod move mut override \
    priv pub ref return self static struct super trait true try type typeof unsafe \
    unsized use virtual where while yield std core alloc proc_macro test serde \
    warden_sdk";

/// A crate name cargo accepts, limited to ASCII so the artifact and the `[plugins.NAME]`
/// key need no quoting anywhere.
fn check_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("it is empty".into());
    };
    if name.len() > 64 {
        return Err("use at most 64 characters".into());
    }
    if !first.is_ascii_alphabetic() {
        return Err("it must start with an ASCII letter".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{c:?} is not allowed (use ASCII letters, digits, '-' and '_')"
        ));
    }
    let stem = artifact_stem(name);
    if RESERVED.split_whitespace().any(|w| w == stem) {
        return Err("it is a Rust keyword or the name of a crate it would depend on".into());
    }
    Ok(())
}

/// The policy type's name: the crate name in CamelCase, moved off the names the
/// generated code imports.
fn type_name(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(['-', '_']).filter(|p| !p.is_empty()) {
        let mut cs = part.chars();
        if let Some(c) = cs.next() {
            out.push(c.to_ascii_uppercase());
            out.extend(cs);
        }
    }
    const TAKEN: &[&str] = &[
        "Config",
        "ConfigErrors",
        "Deserialize",
        "Harness",
        "Policy",
        "Request",
        "Self",
        "Setup",
        "Verdict",
    ];
    if TAKEN.contains(&out.as_str()) {
        out.push_str("Plugin");
    }
    out
}

const CARGO_TOML: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
publish = false

# A workspace of its own, so the crate builds wherever it is put (even inside another
# workspace's directory).
[workspace]

[lib]
# The `.wasm` the gateway loads. Unit tests (`cargo test`) need no `rlib`.
crate-type = ["cdylib"]

[dependencies]
warden-sdk = { path = {{sdk}} }
serde = { version = "1", features = ["derive"] }

[profile.release]
# A policy runs on every request: optimise for speed, and keep the module small with
# LTO, one codegen unit, no unwinding and no symbols.
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#;

const RUST_TOOLCHAIN: &str = r#"# The toolchain the Warden gateway and its SDK are built and tested with.
[toolchain]
channel = "{{channel}}"
targets = ["wasm32-unknown-unknown", "wasm32-wasip2"]
components = ["rustfmt", "clippy"]
profile = "minimal"
"#;

const LIB_RS: &str = r#"//! `{{name}}`: a Warden policy plugin.
//!
//! Every request must carry the header `require_header`, and its path must lie under one
//! of `allow_paths`, by whole segments (`/v1` admits `/v1` and `/v1/x`, not `/v10`).
//! Allowed requests are forwarded with `x-checked-by: {{name}}`.
//!
//! ```toml
//! [[routes.policies]]
//! plugin = "{{name}}"
//! config = { require_header = "x-request-id", allow_paths = ["/v1/public", "/healthz"] }
//! ```

use serde::Deserialize;
use warden_sdk::serde_json::json;
use warden_sdk::{ConfigErrors, Policy, Request, Setup, Verdict};

/// The route's `config` table. `deny_unknown_fields` turns a typo into a `warden check`
/// error instead of a setting that is silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A header every request must carry.
    pub require_header: String,
    /// Path prefixes the route admits.
    pub allow_paths: Vec<String>,
}

/// The configured policy: built once per route, then asked about every request.
#[derive(Debug)]
pub struct {{Type}} {
    header: String,
    allow: Vec<String>,
}

impl Policy for {{Type}} {
    type Config = Config;

    // Runs at `warden check`, start-up and reload: report every problem, each with its key
    // relative to the `config` table, so a bad config never reaches traffic.
    fn configure(setup: &Setup, c: Config) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::new();
        let header = c.require_header.to_ascii_lowercase();
        if !is_header_name(&header) {
            errs.push(
                "require_header",
                format!("{:?} is not a header name", c.require_header),
            );
        } else if !setup.sees_header(&header) {
            // The gateway withholds credential headers unless the route grants them; without
            // the grant every request would look as if it lacked the header.
            errs.push(
                "require_header",
                format!(
                    "{header} is withheld from policies: grant it with headers = [\"{header}\"]"
                ),
            );
        }
        if c.allow_paths.is_empty() {
            errs.push("allow_paths", "list at least one path prefix");
        }
        let mut allow = Vec::new();
        for (i, p) in c.allow_paths.iter().enumerate() {
            if p.starts_with('/') {
                // `/v1/` and `/v1` are the same prefix; `/` becomes "" and admits everything.
                allow.push(p.trim_end_matches('/').to_string());
            } else {
                errs.push(
                    format!("allow_paths[{i}]"),
                    format!("{p:?} must start with /"),
                );
            }
        }
        errs.into_result({{Type}} { header, allow })
    }

    // Runs on every request: keep it quick and deterministic. The path is the one the
    // upstream gets, normalised and with `.`/`..` segments refused, so a prefix check holds.
    fn evaluate(&self, req: &Request) -> Verdict {
        if req.header_bytes(&self.header).is_none() {
            return Verdict::deny_json(
                400,
                &json!({ "error": "missing required header", "header": self.header }),
            );
        }
        if !self.allow.iter().any(|p| is_under(req.path(), p)) {
            // Name the route, never the rules: the allow-list is the operator's business.
            return Verdict::deny_json(
                403,
                &json!({ "error": "path not allowed", "route": req.route() }),
            );
        }
        Verdict::allow().set_request_header("x-checked-by", "{{name}}")
    }
}

/// True when `path` is `prefix` or lies below it, segment by segment.
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// An HTTP header name (RFC 9110 token).
fn is_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

warden_sdk::export_policy!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;
    use warden_sdk::testing::Harness;

    fn harness() -> Harness<{{Type}}> {
        Harness::builder()
            .route("api")
            .configure(json!({
                "require_header": "x-request-id",
                "allow_paths": ["/v1/public", "/healthz"],
            }))
            .expect("valid config")
    }

    #[test]
    fn allows_listed_paths_with_the_header() {
        let v = harness().evaluate(
            &Request::builder()
                .method("POST")
                .path("/v1/public/items?limit=10")
                .header("X-Request-Id", "r-1")
                .build(),
        );
        assert!(v.is_allow(), "{v:?}");
        assert_eq!(
            v.set_headers(),
            [("x-checked-by".to_string(), b"{{name}}".to_vec())]
        );
    }

    #[test]
    fn denies_a_request_without_the_header() {
        let v = harness().evaluate(&Request::builder().path("/healthz").build());
        assert_eq!(v.status(), Some(400));
        assert_eq!(
            v.body_json(),
            Some(json!({ "error": "missing required header", "header": "x-request-id" }))
        );
    }

    #[test]
    fn denies_paths_outside_the_list_by_whole_segments() {
        let h = harness();
        for path in ["/v1/admin", "/v1/publicity", "/"] {
            let req = Request::builder()
                .path(path)
                .header("x-request-id", "r-1")
                .build();
            let v = h.evaluate(&req);
            assert_eq!(v.status(), Some(403), "{path}");
            assert_eq!(v.body_json().unwrap()["route"], "api", "{path}");
        }
    }

    /// The errors of a config the policy must refuse.
    fn refused(config: warden_sdk::serde_json::Value) -> Vec<String> {
        match Harness::<{{Type}}>::builder().configure(config) {
            Ok(_) => panic!("the config was accepted"),
            Err(errs) => errs.0.into_iter().map(|e| e.key).collect(),
        }
    }

    #[test]
    fn config_errors_name_their_keys() {
        assert_eq!(
            refused(json!({ "require_header": "bad header", "allow_paths": ["v1", "/ok"] })),
            ["require_header", "allow_paths[0]"]
        );
        // A typo is an error at the misspelt key (`deny_unknown_fields`).
        assert_eq!(
            refused(json!({ "require_header": "x-a", "allow_path": ["/"] })),
            ["allow_path"]
        );
    }

    #[test]
    fn a_credential_header_needs_the_routes_grant() {
        let config = json!({ "require_header": "authorization", "allow_paths": ["/"] });
        assert_eq!(refused(config.clone()), ["require_header"]);

        let h = Harness::<{{Type}}>::builder()
            .grant_header("authorization")
            .configure(config)
            .unwrap();
        let req = Request::builder()
            .header("authorization", "Bearer t")
            .build();
        assert!(h.evaluate(&req).is_allow());
    }
}
"#;

const CASES_TOML: &str = r#"# Runs the built component in the gateway's own policy host:
#   warden plugin test target/wasm32-unknown-unknown/release/{{crate}}.wasm cases.toml
route = "api"

[policy]                        # as in [[routes.policies]], without `plugin`
config = { require_header = "x-request-id", allow_paths = ["/v1/public", "/healthz"] }

[[cases]]
name = "listed path with the header is allowed and marked"
method = "POST"
path = "/v1/public/items?limit=10"
headers = { "x-request-id" = "r-1" }
client = { address = "10.0.0.7" }
expect = { verdict = "allow", set_headers = { "x-checked-by" = "{{name}}" } }

[[cases]]
name = "missing header"
path = "/healthz"
expect = { verdict = "deny", status = 400, body_json = { error = "missing required header", header = "x-request-id" } }

[[cases]]
name = "path outside the allow-list"
path = "/v1/admin"
headers = { "x-request-id" = "r-1" }
expect = { verdict = "deny", status = 403, body_json = { error = "path not allowed", route = "api" } }

[[cases]]
name = "prefixes match whole segments"
path = "/v1/publicity"
headers = { "x-request-id" = "r-1" }
expect = { verdict = "deny", status = 403 }

[[cases]]
name = "a case may override the config"
path = "/anything"
headers = { "x-request-id" = "r-1" }
config = { require_header = "x-request-id", allow_paths = ["/"] }
expect = { verdict = "allow" }

[[config_errors]]
name = "bad header name and relative path"
config = { require_header = "bad header", allow_paths = ["v1"] }
keys = ["require_header", "allow_paths[0]"]

[[config_errors]]
name = "a typo is an unknown key"
config = { require_header = "x-request-id", allow_path = ["/v1"] }
keys = ["allow_path"]

[[config_errors]]
name = "authorization is not granted by the route"
config = { require_header = "authorization", allow_paths = ["/"] }
keys = ["require_header"]
"#;

const README_MD: &str = r#"# {{name}}

A [Warden](https://example.invalid/warden) policy plugin: requests must carry a header and
stay under an allow-list of path prefixes. Written with `warden-sdk` against the
`warden:policy@0.2.0` contract; change `src/lib.rs` to make it yours.

```sh
cargo test                                              # native unit tests (warden_sdk::testing)
cargo build --release --target wasm32-unknown-unknown   # the component
warden plugin test target/wasm32-unknown-unknown/release/{{crate}}.wasm cases.toml
```

`warden plugin test` runs the built `.wasm` in the gateway's real policy host (same limits,
same header filtering, same body checks) against the request → verdict cases and the
refused configs in `cases.toml`, and exits non-zero on any mismatch. Cargo names the
artifact after the crate with `-` turned into `_`. `wasm32-wasip2` works too
(`target/wasm32-wasip2/release/{{crate}}.wasm`); the gateway grants WASI nothing.

## Deploy

```sh
warden plugin pin target/wasm32-unknown-unknown/release/{{crate}}.wasm
# signed: one key pair for the team; keygen also writes team.key.pub
warden plugin keygen --out team.key
warden plugin pin --sign team.key target/wasm32-unknown-unknown/release/{{crate}}.wasm
```

`pin` checks that the gateway accepts the component and prints the `[plugins.{{name}}]`
table with its `sha256` (with `--sign`, it also writes `{{crate}}.wasm.sig` and adds
`signature`). Copy the `.wasm` (and `.sig`) next to the gateway config, fix `file` (relative
paths resolve against the config file's directory) and add a route policy:

```toml
[policy]
# trusted_keys = ["<team.key.pub>"]   # a FILE.sig next to the plugin is checked by default
# require_signatures = true

[plugins.{{name}}]
file = "plugins/{{crate}}.wasm"
sha256 = "<from warden plugin pin>"
limits = { memory = "16MiB", deadline = "10ms" }

[[routes.policies]]
plugin = "{{name}}"
mode = "shadow"                       # log and count first; "enforce" once it looks right
config = { require_header = "x-request-id", allow_paths = ["/v1/public", "/healthz"] }
```

`warden check --config warden.toml` then compiles the plugin, checks the pin and signature
and calls `configure` with every route's config.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["demo-guard", "a", "my_policy2", "Tenant-Gate"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let bad = "1abc -x _x a/b ../x x.y é fn test self serde warden-sdk warden_sdk";
        for bad in bad.split(' ').chain(["", "a b"]) {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
        assert_eq!(type_name("demo-guard"), "DemoGuard");
        assert_eq!(type_name("my__policy_x"), "MyPolicyX");
        assert_eq!(type_name("policy"), "PolicyPlugin");
        assert_eq!(artifact_stem("demo-guard"), "demo_guard");
    }

    #[test]
    fn templates_are_valid_toml_with_every_placeholder_filled() {
        let files = render("demo-guard", Path::new("/opt/wa\"rden/sdk")).unwrap();
        for (name, text) in &files {
            assert!(!text.contains("{{"), "{name} has an unfilled placeholder");
            if name.ends_with(".toml") {
                toml::from_str::<toml::Table>(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        let cargo: toml::Table = toml::from_str(&files[0].1).unwrap();
        assert_eq!(
            cargo["dependencies"]["warden-sdk"]["path"].as_str(),
            Some("/opt/wa\"rden/sdk")
        );
        assert!(cargo.contains_key("workspace"));
        let tc: toml::Table = toml::from_str(&files[1].1).unwrap();
        assert_eq!(
            tc["toolchain"]["channel"].as_str().unwrap(),
            toolchain_channel().unwrap()
        );
    }
}
