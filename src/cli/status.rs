//! `stats` and `integrations`: job counts per queue and state, and each provider's health.

use super::*;

pub(super) async fn integrations(config: &Config, json: bool) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let rows = queue::integrations::list_integrations(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no provider has been called yet");
    }
    let mut table = Table::new(&[
        "PROVIDER",
        "STATUS",
        "BREAKER",
        ">FAILURES",
        "LAST SUCCESS",
        "LAST ERROR",
    ]);
    for r in rows {
        let last_error = match (&r.last_error_class, &r.last_error) {
            (Some(c), Some(m)) => format!("{} [{c}] {m}", when(r.last_error_at)),
            _ => "-".into(),
        };
        table.row([
            r.provider,
            r.status,
            r.breaker,
            r.failures.to_string(),
            when(r.last_success_at),
            last_error,
        ]);
    }
    table.print();
    Ok(())
}

pub(super) async fn stats(config: &Config, json: bool) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let stats = queue::stats(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        let mut table = Table::new(&[
            "QUEUE",
            ">AVAILABLE",
            ">SCHEDULED",
            ">RUNNING",
            ">RETRYABLE",
            ">COMPLETED",
            ">CANCELLED",
            ">DEAD",
        ]);
        for s in stats {
            table.row([
                s.queue,
                s.available.to_string(),
                s.scheduled.to_string(),
                s.running.to_string(),
                s.retryable.to_string(),
                s.completed.to_string(),
                s.cancelled.to_string(),
                s.dead_letters.to_string(),
            ]);
        }
        table.print();
        let window = queue::daemons::liveness_window(config.daemon.rescue_interval);
        for w in queue::waiting_kinds(&pool, window).await? {
            println!(
                "{} jobs of kind {} wait for a daemon that handles it (due for {}; dead-lettered as unknown_kind after {})",
                w.jobs,
                w.kind,
                humantime::format_duration(std::time::Duration::from_secs(
                    w.oldest_due_secs as u64
                )),
                humantime::format_duration(config.daemon.unknown_kind_grace)
            );
        }
    }
    Ok(())
}
