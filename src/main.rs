//! The `penguin-jobs` binary: parses the command line and hands over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = penguin_jobs::cli::Cli::parse();
    penguin_jobs::telemetry::init();
    penguin_jobs::cli::run(cli).await
}
