//! `warden plugin …`: scaffold, inspect, precompile, test, pin and sign/verify policy
//! components.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
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
    /// Write a new policy crate NAME/ that builds and passes `warden plugin test` as is.
    New {
        /// Crate name (also the plugin's name in the config), e.g. `tenant-gate`.
        name: String,
        /// The warden-sdk directory to depend on (default: the one this binary was built
        /// from).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// Create NAME/ in this directory instead of the current one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print a ready-to-paste `[plugins.NAME]` table pinning a component's sha256 (exit 1
    /// if the gateway would not accept it).
    Pin {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Also sign it with this private key (writes `FILE.sig`, adds `signature`).
        #[arg(long)]
        sign: Option<PathBuf>,
        /// The plugin's name (default: the file stem with `_` turned into `-`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Generate an Ed25519 signing key (hex PKCS#8, mode 0600) and its public key (hex,
    /// `KEY.pub`), and print the public key for `[policy] trusted_keys`.
    Keygen {
        /// Where to write the private key (the public key goes to this path + `.pub`).
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
                info.verdict.as_deref().unwrap_or("(not a policy plugin)")
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
                Ok(_) => {
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
        PluginCommand::New { name, sdk, dir } => {
            let parent = dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let c = super::scaffold::new_plugin(&name, &parent, sdk.as_deref())?;
            // As the user named it: `cd demo-guard`, not a long absolute path.
            let shown = dir.map_or_else(|| PathBuf::from(&name), |d| d.join(&name));
            println!(
                "created {}/ (warden-sdk: {})",
                shown.display(),
                c.sdk.display()
            );
            println!();
            println!("next:");
            println!("  cd {}", shown.display());
            println!(
                "  cargo test                                              # native unit tests"
            );
            println!("  cargo build --release --target wasm32-unknown-unknown   # the component");
            println!("  warden plugin test {} cases.toml", c.wasm);
            println!("  warden plugin pin {}", c.wasm);
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Pin { file, sign, name } => pin(&file, sign.as_deref(), name),
        PluginCommand::Keygen { out } => {
            use ring::signature::{Ed25519KeyPair, KeyPair};
            let pub_path = pub_path(&out);
            // Checked before the private key is written, so a refusal leaves no key
            // without its public half.
            if pub_path.exists() {
                anyhow::bail!("{} already exists", pub_path.display());
            }
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow!("key generation failed"))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow!("key generation failed"))?;
            let public = hex::encode(pair.public_key().as_ref());
            write_private(&out, &hex::encode(pkcs8.as_ref()))?;
            write_public(&pub_path, &format!("{public}\n"))?;
            println!("{public}");
            eprintln!(
                "private key written to {}, public key to {}; add the public key to [policy] trusted_keys",
                out.display(),
                pub_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Sign { key, file, out } => {
            let out = out.unwrap_or_else(|| sig_path(&file));
            sign_file(&key, &file, &out)?;
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

fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Sign `file` with the PKCS#8 key in `key`, writing the hex signature to `out`; returns
/// the public key (hex).
fn sign_file(key: &Path, file: &Path, out: &Path) -> anyhow::Result<String> {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let text =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let der = hex::decode(text.trim()).context("key file is not hex")?;
    let pair = Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|_| anyhow!("{} is not an Ed25519 PKCS#8 key", key.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    std::fs::write(
        out,
        format!("{}\n", hex::encode(pair.sign(&bytes).as_ref())),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    Ok(hex::encode(pair.public_key().as_ref()))
}

/// `warden plugin pin`: the `[plugins.NAME]` table on stdout (and nothing else, so it can
/// be piped into a config), notes on stderr.
fn pin(file: &Path, sign: Option<&Path>, name: Option<String>) -> anyhow::Result<ExitCode> {
    // The same compile and world check the gateway runs at load: a pin for a file it
    // would refuse is worse than no pin.
    let host = cli_host(None)?;
    let info = inspect_component(&host, file)?;
    if let Err(e) = &info.verdict {
        eprintln!(
            "error: {} is not a plugin the gateway accepts: {e}",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let name = name.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| "plugin".into())
    });
    let quote = |s: &str| toml::Value::String(s.into()).to_string();
    let key = if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.clone()
    } else {
        quote(&name)
    };
    let mut block = String::new();
    let signature = match sign {
        Some(k) => {
            let sig = sig_path(file);
            let public = sign_file(k, file, &sig)?;
            eprintln!("signature written to {}", sig.display());
            block.push_str(&format!(
                "# Signed by {public}: the gateway checks it when [policy] trusted_keys lists\n\
                 # that key, e.g. trusted_keys = [\"{public}\"]\n"
            ));
            Some(sig)
        }
        None => None,
    };
    block.push_str(&format!("[plugins.{key}]\n"));
    block.push_str(&format!("file = {}\n", quote(&file.display().to_string())));
    block.push_str(&format!("sha256 = \"{}\"\n", info.sha256));
    if let Some(sig) = signature {
        block.push_str(&format!(
            "signature = {}\n",
            quote(&sig.display().to_string())
        ));
    }
    print!("{block}");
    if file.is_relative() {
        eprintln!(
            "note: relative paths in a config resolve against the directory of the file that defines the plugin"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    // Explicit, whatever the umask: the public key is meant to be handed around.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
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
    /// Request body, as text.
    body: Option<String>,
    /// Request body, as JSON (sets `content-type: application/json` unless given).
    json: Option<serde_json::Value>,
    /// Evaluate the same request this many times on one chain (rate limits); the
    /// expectations apply to the last evaluation.
    #[serde(default = "one")]
    repeat: u32,
    /// An upstream response for the response phase.
    response: Option<CaseResponse>,
    expect: Expect,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseResponse {
    #[serde(default = "ok_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    json: Option<serde_json::Value>,
}

fn ok_status() -> u16 {
    200
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
    /// The deny body, compared as JSON.
    body_json: Option<serde_json::Value>,
    /// The request body forwarded upstream (after a policy replaced it).
    request_body: Option<String>,
    /// The request body forwarded upstream, compared as JSON.
    request_json: Option<serde_json::Value>,
    /// The response body the client gets after the response phase.
    response_body: Option<String>,
    /// The response body the client gets after the response phase, compared as JSON.
    response_json: Option<serde_json::Value>,
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
        host.fresh_rate_limits();
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
    let body = match (&case.body, &case.json) {
        (Some(_), Some(_)) => anyhow::bail!("a case has `body` or `json`, not both"),
        (Some(b), None) => Some(Bytes::from(b.clone())),
        (None, Some(j)) => {
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Some(Bytes::from(serde_json::to_vec(j)?))
        }
        (None, None) => None,
    };
    // The gateway's own checks run first, as they do in front of a real route.
    let body = match (chain.body(), body) {
        (Some(rules), Some(b)) => {
            let checked = rules
                .check_head(&headers)
                .and_then(|head| rules.check_body(&head, b));
            match checked {
                Ok(b) => Some(b),
                Err(r) => {
                    let refused = Decision::Deny {
                        status: r.status(),
                        body: Bytes::from(format!("refused by the gateway: {}", r.reason())),
                        headers: Vec::new(),
                    };
                    return Ok(compare(&case.expect, &refused, route, None));
                }
            }
        }
        (_, b) => b,
    };
    let addr = SocketAddr::new(
        case.client.address.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        case.client.port.unwrap_or(40000),
    );
    let client = ClientInfo {
        addr,
        ip: ClientInfo::ip_value(addr),
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
        body: body.as_ref(),
    };
    let mut decision = chain.evaluate(&req, snapshot).await;
    for _ in 1..case.repeat.max(1) {
        decision = chain.evaluate(&req, snapshot).await;
    }
    let mut problems = compare(&case.expect, &decision, route, body.as_ref());
    if let Some(r) = &case.response {
        let response = if matches!(decision, Decision::Allow(_)) {
            Some(run_response(chain, &req, snapshot, r).await?)
        } else {
            None
        };
        problems.extend(compare_response(&case.expect, response));
    }
    Ok(problems)
}

/// What the client gets after the response phase: the status and the body.
async fn run_response(
    chain: &Chain,
    req: &PolicyRequest<'_>,
    snapshot: &SecretSnapshot,
    r: &CaseResponse,
) -> anyhow::Result<(u16, Bytes)> {
    let mut headers = HeaderMap::new();
    for (n, v) in &r.headers {
        headers.append(
            HeaderName::from_bytes(n.as_bytes())?,
            HeaderValue::from_str(v)?,
        );
    }
    let body = match (&r.body, &r.json) {
        (Some(_), Some(_)) => anyhow::bail!("a response has `body` or `json`, not both"),
        (Some(b), None) => Bytes::from(b.clone()),
        (None, Some(j)) => {
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Bytes::from(serde_json::to_vec(j)?)
        }
        (None, None) => Bytes::new(),
    };
    let status = http::StatusCode::from_u16(r.status).context("response.status")?;
    Ok(
        match chain
            .evaluate_response(req, snapshot, status, &headers, &body)
            .await
        {
            Ok(Some(replaced)) => (r.status, replaced),
            Ok(None) => (r.status, body),
            Err(Decision::Deny { status, body, .. }) => (status.as_u16(), body),
            Err(Decision::Allow(_)) => (r.status, body),
        },
    )
}

fn compare_response(e: &Expect, got: Option<(u16, Bytes)>) -> Vec<String> {
    let mut p = Vec::new();
    if e.response_body.is_none() && e.response_json.is_none() {
        return p;
    }
    let Some((status, body)) = got else {
        p.push("expected a response phase, but the request was denied".into());
        return p;
    };
    let text = String::from_utf8_lossy(&body);
    if let Some(want) = &e.response_body
        && *want != text
    {
        p.push(format!(
            "response body\n          expected: {want}\n          actual:   {text} (status {status})"
        ));
    }
    if let Some(want) = &e.response_json {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) if v == *want => {}
            Ok(v) => p.push(format!(
                "response json\n          expected: {want}\n          actual:   {v} (status {status})"
            )),
            Err(_) => p.push(format!(
                "response json\n          expected: {want}\n          actual:   {text} (not JSON; status {status})"
            )),
        }
    }
    p
}

fn compare(e: &Expect, d: &Decision, route: &str, sent: Option<&Bytes>) -> Vec<String> {
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
            "verdict\n          expected: {}\n          actual:   {verdict} (status {status}{})",
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
        p.push(format!(
            "status\n          expected: {s}\n          actual:   {status}"
        ));
    }
    if let Some(b) = &e.body
        && *b != body
    {
        p.push(format!(
            "body\n          expected: {b:?}\n          actual:   {body:?}"
        ));
    }
    if let Some(b) = &e.body_contains
        && !body.contains(b.as_str())
    {
        p.push(format!(
            "body\n          expected to contain: {b:?}\n          actual:   {body:?}"
        ));
    }
    if let Some(want) = &e.body_json {
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) if v == *want => {}
            Ok(v) => p.push(format!(
                "body json\n          expected: {want}\n          actual:   {v}"
            )),
            Err(_) => p.push(format!(
                "body json\n          expected: {want}\n          actual:   {body:?} (not JSON)"
            )),
        }
    }
    let forwarded: Option<&Bytes> = match d {
        Decision::Allow(c) => c.body.as_ref().or(sent),
        Decision::Deny { .. } => None,
    };
    let forwarded_text = forwarded.map(|b| String::from_utf8_lossy(b).into_owned());
    if let Some(want) = &e.request_body
        && forwarded_text.as_deref() != Some(want.as_str())
    {
        p.push(format!(
            "forwarded request body\n          expected: {want:?}\n          actual:   {forwarded_text:?}"
        ));
    }
    if let Some(want) = &e.request_json {
        let got = forwarded.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        if got.as_ref() != Some(want) {
            p.push(format!(
                "forwarded request json\n          expected: {want}\n          actual:   {}",
                got.map(|v| v.to_string())
                    .or(forwarded_text)
                    .unwrap_or_else(|| "(no body)".into())
            ));
        }
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
            p.push(format!(
                "request header {n}\n          expected set to: {v}\n          actual:   {}",
                show(
                    set.iter()
                        .find(|(hn, _)| hn.as_str() == n.to_ascii_lowercase())
                )
            ));
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
            p.push(format!(
                "response header {n}\n          expected: {v}\n          actual:   {}",
                show(
                    resp.iter()
                        .chain(deny_headers)
                        .find(|(hn, _)| hn.as_str() == n.to_ascii_lowercase())
                )
            ));
        }
    }
    p
}

fn show(h: Option<&(HeaderName, HeaderValue)>) -> String {
    match h {
        Some((_, v)) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => "(not set)".into(),
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>(_: T) {}
    let _ = |c: &'static Chain, r: &'static PolicyRequest<'static>, s: &'static SecretSnapshot| {
        is_send(c.evaluate(r, s))
    };
}
