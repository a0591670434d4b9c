//! `enqueue`: one job from the shell, checked against the built-in kinds before it is
//! written. Internal kinds (credentials, maintenance, webhook events) and unique keys
//! under the daemon's reserved prefix are refused: the daemon enqueues those itself, and
//! the commands that act on credentials (`keys`, `oauth`) record who asked.

use super::*;

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job kind, e.g. noop or http.request.
    pub kind: String,
    /// Payload as JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Queue (default: the kind's queue).
    #[arg(long)]
    pub queue: Option<String>,
    /// Earliest start, RFC 3339 (e.g. 2026-12-01T09:00:00Z), between 1970 and 100 years
    /// from now.
    #[arg(long, conflicts_with = "delay", value_parser = parse_run_at)]
    pub run_at: Option<DateTime<Utc>>,
    /// Earliest start as a delay from now (e.g. 30s, 5m), at most 100y.
    #[arg(long = "in", value_name = "DURATION", value_parser = parse_delay)]
    pub delay: Option<Duration>,
    /// Lower runs first (default: the kind's priority).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i16>,
    /// Attempts before dead-lettering (default: the kind's).
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// At most one live job of this kind and tenant per key; prints the live job's id if
    /// one exists. Keys starting with "penguin:" are the daemon's own.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// Tenant (UUID).
    #[arg(long)]
    pub tenant: Option<uuid::Uuid>,
}

pub(super) async fn enqueue(config: &Config, args: EnqueueArgs) -> anyhow::Result<()> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let run_at = match (args.run_at, args.delay) {
        (Some(at), _) => Some(at),
        (None, Some(delay)) => Some(
            chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d))
                .context("--in is too large")?,
        ),
        (None, None) => None,
    };
    let job = NewJob {
        kind: args.kind,
        payload,
        queue: args.queue,
        run_at,
        priority: args.priority,
        max_attempts: args.max_attempts,
        unique_key: args.unique_key,
        tenant_id: args.tenant,
    };
    let kinds = registry(config)?;
    if kinds.internal(&job.kind) == Some(true) {
        anyhow::bail!(
            "{} is an internal kind: the daemon enqueues it (schedules, sweeps, webhooks); use \
             the command made for it (keys, oauth) instead",
            job.kind
        );
    }
    job.check_caller_key().map_err(anyhow::Error::msg)?;
    kinds.check(&job)?;
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let id = queue::enqueue(&pool, &job).await.map_err(user_error)?;
    println!("{id}");
    Ok(())
}
