//! `sightline model` (placeholder while the module is written).

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
