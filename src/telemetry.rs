//! Logging setup: human-readable lines on stderr (coloured on a terminal only), filtered by
//! `RUST_LOG` (default `info`, with apalis and sqlx held at `warn`: apalis formats an event
//! per task at debug level, which costs measurable time per job).
//!
//! Must never install a layer that prints job payloads or secrets; spans carry ids only.

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,apalis=warn,apalis_core=warn,sqlx=warn";

/// Colours only on a terminal (a log file or journald gets plain text), and never with
/// `NO_COLOR` set.
fn colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Safe to call twice (the second call does nothing).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
