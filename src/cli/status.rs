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

/// The horizon's holder and the dead row versions the queue carries; a warning line when
/// the holder has held it longer than `warn_after`.
fn print_horizon(h: &queue::horizon::Horizon, warn_after: std::time::Duration) {
    match &h.oldest {
        Some(holder) if holder.held_longer_than(warn_after) => println!(
            "WARNING: the xmin horizon is held by {}: VACUUM cannot remove the queue's dead row \
             versions until it ends (daemon.horizon_warn = {})",
            holder.describe(),
            humantime::format_duration(warn_after)
        ),
        Some(holder) => println!("xmin horizon: {}", holder.describe()),
        None => println!("xmin horizon: no other snapshot held"),
    }
    if let Some(role) = &h.blind_spot {
        println!("{}", queue::horizon::blind_spot_advice(role));
    }
    if h.tables.is_empty() {
        return;
    }
    let mut table = Table::new(&["TABLE", ">LIVE", ">DEAD", ">SIZE"]);
    for t in &h.tables {
        table.row([
            format!("penguin.{}", t.table),
            t.live.to_string(),
            t.dead.to_string(),
            format!("{:.1} MB", t.bytes as f64 / 1e6),
        ]);
    }
    table.print();
}

pub(super) async fn stats(config: &Config, json: bool) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let stats = queue::stats(&pool).await?;
    if json {
        let horizon = queue::horizon::horizon(&pool).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "queues": stats,
                "horizon": horizon,
            }))?
        );
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
        print_horizon(
            &queue::horizon::horizon(&pool).await?,
            config.daemon.horizon_warn,
        );
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
