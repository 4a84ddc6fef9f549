//! `warden plugin …`.

/// `warden plugin …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {}

/// Run a `warden plugin …` subcommand.
pub async fn run_cli(_cmd: PluginCommand) -> anyhow::Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::SUCCESS)
}
