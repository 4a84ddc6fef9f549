//! `warden plugin …`: inspect, precompile, test, and sign/verify policy components.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use super::chain::{Chain, Decision, PolicyRequest};
use super::config::{PluginConfig, PolicyConfig, PolicySettings};
use super::host::{PolicyHost, inspect_component};
use crate::http::ClientInfo;
use crate::secrets::SecretSnapshot;

/// `warden plugin …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Show a component's sha256, imports and exports, and whether Warden accepts it
    /// (exit 1 if not).
    Inspect {
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// Compile components into the artifact cache, so the next start does not compile.
    Precompile {
        /// Cache directory (default: `[policy] cache_dir` default, `~/.cache/warden`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Components to compile.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a built component in the real host against request → expected-verdict cases;
    /// exit 1 on any mismatch.
    Test {
        /// The component (`.wasm`).
        plugin: PathBuf,
        /// The cases file (TOML; see `plugins/*/cases.toml`).
        cases: PathBuf,
    },
    /// Generate an Ed25519 signing key (hex PKCS#8, mode 0600) and print its public key
    /// for `[policy] trusted_keys`.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a component: writes a detached hex signature (default `FILE.sig`).
    Sign {
        /// Private key written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The component.
        file: PathBuf,
        /// Signature output (default: `FILE.sig`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a component's detached signature against a public key (hex).
    Verify {
        /// Ed25519 public key, 64 hex digits.
        #[arg(long)]
        public_key: String,
        /// The component.
        file: PathBuf,
        /// Signature file (default: `FILE.sig`).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
}

/// Run a `warden plugin …` subcommand.
pub async fn run_cli(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Inspect { file } => {
            let host = cli_host(None)?;
            let info = inspect_component(&host, &file)?;
            println!("file:    {}", file.display());
            println!("sha256:  {}", info.sha256);
            println!("size:    {} bytes", info.size);
            println!(
                "world:   {}",
                if info.verdict.is_ok() {
                    "warden:policy/policy-plugin@0.1.0"
                } else {
                    "(not a policy plugin)"
                }
            );
            println!("imports:");
            for i in &info.imports {
                println!("  {i}");
            }
            println!("exports:");
            for e in &info.exports {
                println!("  {e}");
            }
            match info.verdict {
                Ok(()) => {
                    println!("accepted: yes");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("accepted: no: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PluginCommand::Precompile { cache_dir, files } => {
            let host = cli_host(cache_dir)?;
            let dir = host
                .cache_dir
                .clone()
                .ok_or_else(|| anyhow!("no cache directory"))?;
            for f in &files {
                let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
                let component = host
                    .compile(&bytes, &sha)
                    .map_err(|e| anyhow!("{}: {e}", f.display()))?;
                host.check_component(&component)
                    .map_err(|e| anyhow!("{}: {e}", f.display()))?;
                println!("compiled {} (sha256 {sha})", f.display());
            }
            println!("cache: {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Test { plugin, cases } => run_cases(&plugin, &cases).await,
        PluginCommand::Keygen { out } => {
            use ring::signature::{Ed25519KeyPair, KeyPair};
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow!("key generation failed"))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow!("key generation failed"))?;
            write_private(&out, &hex::encode(pkcs8.as_ref()))?;
            println!("{}", hex::encode(pair.public_key().as_ref()));
            eprintln!(
                "private key written to {}; add the public key above to [policy] trusted_keys",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Sign { key, file, out } => {
            use ring::signature::Ed25519KeyPair;
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let der = hex::decode(text.trim()).context("key file is not hex")?;
            let pair = Ed25519KeyPair::from_pkcs8(&der)
                .map_err(|_| anyhow!("{} is not an Ed25519 PKCS#8 key", key.display()))?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let out = out.unwrap_or_else(|| sig_path(&file));
            std::fs::write(
                &out,
                format!("{}\n", hex::encode(pair.sign(&bytes).as_ref())),
            )
            .with_context(|| format!("writing {}", out.display()))?;
            println!("signature written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Verify {
            public_key,
            file,
            signature,
        } => {
            let key = hex::decode(public_key.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| anyhow!("--public-key: expected 64 hex digits"))?;
            let sig_file = signature.unwrap_or_else(|| sig_path(&file));
            let sig = hex::decode(
                std::fs::read_to_string(&sig_file)
                    .with_context(|| format!("reading {}", sig_file.display()))?
                    .trim(),
            )
            .context("signature is not hex")?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            match ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
                .verify(&bytes, &sig)
            {
                Ok(()) => {
                    println!("ok: {} is signed by {}", file.display(), public_key.trim());
                    Ok(ExitCode::SUCCESS)
                }
                Err(_) => {
                    println!(
                        "FAILED: {} is not a valid signature of {} by that key",
                        sig_file.display(),
                        file.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn cli_host(cache_dir: Option<PathBuf>) -> anyhow::Result<std::sync::Arc<PolicyHost>> {
    let settings = PolicySettings {
        cache_dir,
        max_instances: 64,
        ..PolicySettings::default()
    };
    PolicyHost::new(&settings, &std::env::current_dir()?)
}

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    /// Route name passed to the plugin.
    #[serde(default = "default_route")]
    route: String,
    /// `[plugins.NAME]` settings other than `file` (limits, isolation).
    #[serde(default)]
    plugin: toml::Table,
    /// The `[[routes.policies]]` entry without `plugin`. Secrets are literal values here.
    #[serde(default)]
    policy: toml::Table,
    /// Request → expected verdict.
    #[serde(default)]
    cases: Vec<Case>,
    /// Configs that must be refused, with the keys expected in the errors.
    #[serde(default)]
    config_errors: Vec<ConfigErrorCase>,
}

fn default_route() -> String {
    "test".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    client: CaseClient,
    /// Overrides `policy.config` for this case.
    config: Option<toml::Table>,
    expect: Expect,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseClient {
    address: Option<IpAddr>,
    port: Option<u16>,
    #[serde(default)]
    tls: bool,
    sni: Option<String>,
    #[serde(default)]
    uri_sans: Vec<String>,
    #[serde(default)]
    dns_sans: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow`, `deny` or `error` (the plugin failed; on_error = deny → 503).
    verdict: String,
    status: Option<u16>,
    body: Option<String>,
    body_contains: Option<String>,
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigErrorCase {
    name: String,
    config: toml::Table,
    /// Keys (relative to `config`) that must appear among the errors.
    keys: Vec<String>,
}

async fn run_cases(plugin: &Path, cases_path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(cases_path)
        .with_context(|| format!("reading {}", cases_path.display()))?;
    let file: CasesFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", cases_path.display()))?;
    let host = cli_host(None)?;
    let mut ptable = file.plugin.clone();
    let abs =
        std::fs::canonicalize(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    ptable.insert(
        "file".into(),
        toml::Value::String(abs.display().to_string()),
    );
    let pcfg: PluginConfig = ptable.try_into().context("[plugin] table")?;
    let name = plugin
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let set = host
        .load(&BTreeMap::from([(name.clone(), pcfg)]), Path::new("/"))
        .map_err(|e| {
            anyhow!(
                "{}",
                e.iter()
                    .map(|(n, e)| format!("{n}.{}: {}", e.key, e.reason))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;

    let policy_for = |config: Option<&toml::Table>| -> anyhow::Result<PolicyConfig> {
        let mut t = file.policy.clone();
        t.insert("plugin".into(), toml::Value::String(name.clone()));
        if let Some(c) = config {
            t.insert("config".into(), toml::Value::Table(c.clone()));
        }
        t.try_into().context("[policy] table")
    };

    let (mut passed, mut failed) = (0usize, 0usize);
    let mut report = |name: &str, problems: Vec<String>| {
        if problems.is_empty() {
            passed += 1;
            println!("ok    {name}");
        } else {
            failed += 1;
            println!("FAIL  {name}");
            for p in problems {
                println!("        {p}");
            }
        }
    };

    let snapshot = SecretSnapshot::empty();
    for case in &file.cases {
        let chain = Chain::build(&set, &file.route, &[policy_for(case.config.as_ref())?]).await;
        let chain = match chain {
            Ok(c) => c,
            Err(errs) => {
                report(
                    &case.name,
                    errs.iter()
                        .map(|e| format!("config refused: {}: {}", e.key, e.reason))
                        .collect(),
                );
                continue;
            }
        };
        let problems = match run_case(&chain, &file.route, case, &snapshot).await {
            Ok(p) => p,
            Err(e) => vec![format!("{e:#}")],
        };
        report(&case.name, problems);
    }
    for c in &file.config_errors {
        let problems = match Chain::build(&set, &file.route, &[policy_for(Some(&c.config))?]).await
        {
            Ok(_) => vec!["config was accepted".to_string()],
            Err(errs) => {
                let got: Vec<String> = errs
                    .iter()
                    .map(|e| {
                        e.key
                            .strip_prefix("policies[0].config")
                            .unwrap_or(&e.key)
                            .trim_start_matches('.')
                            .to_string()
                    })
                    .collect();
                c.keys
                    .iter()
                    .filter(|k| !got.contains(k))
                    .map(|k| {
                        format!(
                            "no error at {k:?}; errors: {}",
                            errs.iter()
                                .map(|e| format!("{}: {}", e.key, e.reason))
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })
                    .collect()
            }
        };
        report(&format!("config: {}", c.name), problems);
    }
    println!("{}: {passed} passed, {failed} failed", cases_path.display());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_case(
    chain: &Chain,
    route: &str,
    case: &Case,
    snapshot: &SecretSnapshot,
) -> anyhow::Result<Vec<String>> {
    let method: Method = case.method.parse().context("method")?;
    let (path, query) = match case.path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (case.path.clone(), None),
    };
    let mut headers = HeaderMap::new();
    for (n, v) in &case.headers {
        headers.append(
            HeaderName::from_bytes(n.as_bytes())?,
            HeaderValue::from_str(v)?,
        );
    }
    let client = ClientInfo {
        addr: SocketAddr::new(
            case.client.address.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            case.client.port.unwrap_or(40000),
        ),
        tls: case.client.tls
            || !case.client.uri_sans.is_empty()
            || !case.client.dns_sans.is_empty(),
        sni: case.client.sni.clone(),
        uri_sans: case.client.uri_sans.clone(),
        dns_sans: case.client.dns_sans.clone(),
    };
    let req = PolicyRequest {
        route,
        method: &method,
        path: &path,
        query: query.as_deref(),
        headers: &headers,
        client: &client,
    };
    let decision = chain.evaluate(&req, snapshot).await;
    Ok(compare(&case.expect, &decision, route))
}

fn compare(e: &Expect, d: &Decision, route: &str) -> Vec<String> {
    let mut p = Vec::new();
    let (verdict, status, body) = match d {
        Decision::Allow(_) => ("allow", 200, String::new()),
        Decision::Deny { status, body, .. } => {
            let body = String::from_utf8_lossy(body).into_owned();
            let is_error = status.as_u16() == 503
                && serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["error"] == "policy unavailable" && v["route"] == route);
            (
                if is_error { "error" } else { "deny" },
                status.as_u16(),
                body,
            )
        }
    };
    if !["allow", "deny", "error"].contains(&e.verdict.as_str()) {
        p.push(format!(
            "expect.verdict must be allow, deny or error, not {:?}",
            e.verdict
        ));
    }
    if verdict != e.verdict {
        p.push(format!(
            "expected {}, got {verdict} (status {status}{})",
            e.verdict,
            if body.is_empty() {
                String::new()
            } else {
                format!(", body {body}")
            }
        ));
        return p;
    }
    if let Some(s) = e.status
        && s != status
    {
        p.push(format!("expected status {s}, got {status}"));
    }
    if let Some(b) = &e.body
        && *b != body
    {
        p.push(format!("expected body {b:?}, got {body:?}"));
    }
    if let Some(b) = &e.body_contains
        && !body.contains(b.as_str())
    {
        p.push(format!("expected body containing {b:?}, got {body:?}"));
    }
    let (set, removed, resp, deny_headers) = match d {
        Decision::Allow(c) => (
            &c.set_headers[..],
            &c.remove_headers[..],
            &c.response_headers[..],
            &[][..],
        ),
        Decision::Deny { headers, .. } => (&[][..], &[][..], &[][..], &headers[..]),
    };
    for (n, v) in &e.set_headers {
        if !set
            .iter()
            .any(|(hn, hv)| hn.as_str() == n.to_ascii_lowercase() && hv.as_bytes() == v.as_bytes())
        {
            p.push(format!("expected request header {n}: {v} to be set"));
        }
    }
    for n in &e.remove_headers {
        if !removed
            .iter()
            .any(|hn| hn.as_str() == n.to_ascii_lowercase())
        {
            p.push(format!("expected request header {n} to be removed"));
        }
    }
    for (n, v) in &e.response_headers {
        if !resp
            .iter()
            .chain(deny_headers)
            .any(|(hn, hv)| hn.as_str() == n.to_ascii_lowercase() && hv.as_bytes() == v.as_bytes())
        {
            p.push(format!("expected response header {n}: {v}"));
        }
    }
    p
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>(_: T) {}
    let _ = |c: &'static Chain, r: &'static PolicyRequest<'static>, s: &'static SecretSnapshot| {
        is_send(c.evaluate(r, s))
    };
}
