//! `warden`: the command line. Everything else lives in the library.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use warden::config;
use warden::gateway::Gateway;
use warden::snapshot::{SecretsMode, build_snapshot};
use warden::telemetry::{LogFormat, init_logging};

/// jemalloc, measured against musl's and glibc's allocators and mimalloc (BENCHMARKS.md):
/// as fast as mimalloc per request, with the least memory kept after load.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Wasm-extensible policy and secrets gateway"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "WARDEN_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        /// Gateway config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Refuse to start while any secret reference does not resolve (default: start,
        /// answer 503 on the routes that need it, and retry in the background).
        #[arg(long)]
        strict_secrets: bool,
        /// Once listening, write the bound addresses here as JSON (`{"proxy": …,
        /// "admin": …}`); for supervisors and tests that bind port 0.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate config, routes, plugins and secret references; list every error.
    Check {
        /// Gateway config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Build, inspect, precompile and test policy plugins.
    Plugin {
        #[command(subcommand)]
        cmd: warden::policy::PluginCommand,
    },
    /// Inspect secret references (never values).
    Secrets {
        #[command(subcommand)]
        cmd: warden::cli::SecretsCommand,
    },
    /// Probe an admin endpoint; exit 0 on a 2xx answer. For container health checks in
    /// images without a shell or curl.
    Health {
        /// Admin URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = config::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
    // One process-wide crypto provider for every rustls user (upstream TLS, Vault client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.cmd {
        Cmd::Run {
            config,
            strict_secrets,
            ready_file,
        } => run(&config, strict_secrets, ready_file),
        Cmd::Check { config } => check(&config),
        Cmd::Plugin { cmd } => block_on(None, warden::policy::run_cli(cmd)),
        Cmd::Secrets { cmd } => block_on(None, warden::cli::run_cli(cmd)),
        Cmd::Health { url, timeout } => block_on(Some(1), health(url, timeout)),
    }
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build()
}

fn block_on(workers: Option<usize>, f: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    match runtime(workers)
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(f))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn health(url: String, timeout: std::time::Duration) -> anyhow::Result<ExitCode> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    let uri: http::Uri = url.parse().context("invalid --url")?;
    let client =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(Ok(resp)) => {
            eprintln!("unhealthy: {url} answered {}", resp.status());
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("unhealthy: {url}: no answer within {timeout:?}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Load errors first, then the build's; an error on a key that already has one is the
/// same problem seen again (an unknown plugin is unknown to the loader and to the chain).
fn merge_errors(
    load: Vec<config::ConfigError>,
    build: Option<&config::ConfigErrors>,
) -> config::ConfigErrors {
    let mut out = load;
    for e in build.map(|b| b.0.clone()).unwrap_or_default() {
        if !out.iter().any(|o| o.file == e.file && o.key == e.key) {
            out.push(e);
        }
    }
    config::ConfigErrors(out)
}

fn print_errors(errs: &config::ConfigErrors) {
    for e in &errs.0 {
        eprintln!("error: {e}");
    }
    eprintln!("{} error(s)", errs.0.len());
}

fn check(path: &Path) -> ExitCode {
    // Go on past config errors with what loaded, so that plugins and secret references are
    // checked too and every independent error is listed in one run.
    let (cfg, load_errors) = config::load_partial(path);
    let Some(cfg) = cfg else {
        print_errors(&config::ConfigErrors(load_errors));
        return ExitCode::from(2);
    };
    block_on(None, async move {
        // `[policy]` errors are among the load errors already; check plugins anyway.
        let host = match warden::policy::PolicyHost::new(&cfg.policy.or_defaults(), &cfg.base_dir) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {}: policy: {e:#}", cfg.path.display());
                return Ok(ExitCode::from(2));
            }
        };
        let built = build_snapshot(cfg, &host, None, SecretsMode::Check).await;
        let errors = merge_errors(load_errors, built.as_ref().err());
        if !errors.0.is_empty() {
            print_errors(&errors);
            return Ok(ExitCode::from(2));
        }
        match built {
            Ok(snap) => {
                let c = &snap.config;
                println!(
                    "ok: {} ({} routes, {} upstreams, {} plugins, {} secret references)",
                    c.path.display(),
                    c.routes.len(),
                    c.upstreams.len(),
                    c.plugins.len(),
                    c.secret_refs().len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errs) => {
                print_errors(&errs);
                Ok(ExitCode::from(2))
            }
        }
    })
}

fn run(path: &Path, strict_secrets: bool, ready_file: Option<PathBuf>) -> ExitCode {
    // Bad options fail before the first socket is opened.
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            print_errors(&errs);
            return ExitCode::from(2);
        }
    };
    // Proxy workers get threads of their own; the control runtime (admin, reload, secret
    // refresh, health checks) needs one.
    warden::worker::set_count(warden::worker::resolve_count(cfg.gateway.worker_threads));
    let path = path.to_path_buf();
    block_on(Some(1), async move {
        let gw = match Gateway::start(&path, cfg, strict_secrets).await {
            Ok(gw) => gw,
            Err(errs) => {
                print_errors(&errs);
                return Ok(ExitCode::from(2));
            }
        };
        warden::serve::serve(gw, warden::serve::ServeOptions { ready_file }).await?;
        Ok(ExitCode::SUCCESS)
    })
}
