//! Subcommands that read a whole gateway config: `warden secrets …`. They sit above the
//! config and the secret store, so neither depends on the other through them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::secrets::{RefStatus, SecretStore};

/// `warden secrets …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Resolve every secret reference in a config once and list whether each resolves,
    /// with its version and age — never its value. Exits 1 if any does not resolve.
    Check {
        /// Gateway config file.
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per reference instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `warden secrets …` subcommand.
pub async fn run_cli(cmd: SecretsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretsCommand::Check { config, json } => check(config, json).await,
    }
}

async fn check(path: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = match crate::config::load(&path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!(
                "{}: {} error(s); secrets not checked",
                path.display(),
                errs.0.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let statuses = SecretStore::check(&cfg.secrets, &cfg.base_dir, cfg.secret_refs()).await;
    let mut out = std::io::stdout().lock();
    if json {
        for s in &statuses {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        }
    } else {
        write_table(&mut out, &statuses)?;
    }
    let failed = statuses.iter().filter(|s| !s.resolved).count();
    if !json {
        if statuses.is_empty() {
            writeln!(out, "no secret references in {}", path.display())?;
        } else if failed == 0 {
            writeln!(out, "all {} reference(s) resolve", statuses.len())?;
        } else {
            writeln!(
                out,
                "{failed} of {} reference(s) do not resolve",
                statuses.len()
            )?;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_table(out: &mut impl Write, statuses: &[RefStatus]) -> std::io::Result<()> {
    let w = statuses
        .iter()
        .map(|s| s.reference.len())
        .max()
        .unwrap_or(0)
        .max("REFERENCE".len());
    writeln!(
        out,
        "{:<w$}  {:<6}  {:<8}  {:>7}  {:>6}  ERROR",
        "REFERENCE", "KIND", "RESOLVED", "VERSION", "AGE"
    )?;
    for s in statuses {
        let version = s.version.map_or("-".to_string(), |v| v.to_string());
        let age = s.age_seconds.map_or("-".to_string(), |a| format!("{a}s"));
        let resolved = if s.resolved { "yes" } else { "NO" };
        let err = s.last_error.as_deref().unwrap_or("");
        writeln!(
            out,
            "{:<w$}  {:<6}  {:<8}  {:>7}  {:>6}  {err}",
            s.reference, s.kind, resolved, version, age
        )?;
    }
    Ok(())
}
