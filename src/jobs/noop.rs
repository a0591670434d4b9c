//! `noop`: does nothing and succeeds. For benchmarks, probes and smoke tests.
//!
//! Must never do I/O: its cost is the runtime's own cost per job.

use futures::future::BoxFuture;

use super::{Attempt, Handler, JobContext};

/// The `noop` kind.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl Handler for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn validate(&self, _payload: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    fn run(&self, _ctx: JobContext, _payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        Box::pin(std::future::ready(Ok(None)))
    }
}
