//! The `penguin-jobs` binary: parses the command line and hands over to the library.
//!
//! A command that fails prints `error: ` and the error's chain of causes on one line to
//! stderr and exits 1: a refused request or a missing row is not a crash, so no stack
//! trace is printed whatever `RUST_BACKTRACE` says (a panic still prints its own).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = penguin_jobs::cli::Cli::parse();
    penguin_jobs::telemetry::init();
    match penguin_jobs::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
