//! `noop`: does nothing and succeeds. For benchmarks, probes and smoke tests.
//!
//! Must never do I/O: its cost is the runtime's own cost per job.

use serde::Deserialize;

use super::{Attempt, JobContext, Kind};

/// The `noop` kind: any payload, ignored.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl<'de> Deserialize<'de> for Noop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Noop)
    }
}

impl schemars::JsonSchema for Noop {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Noop".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "description": "Any value; ignored" })
    }
}

impl Kind for Noop {
    const KIND: &'static str = "noop";
    type Deps = ();

    async fn run(self, _ctx: &JobContext, _deps: &()) -> Attempt {
        Ok(None)
    }
}
