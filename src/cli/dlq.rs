//! `dlq`: list, show, replay and purge dead letters.

use super::*;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Newest dead letters first.
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its whole error history.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a dead letter again as a new job with fresh attempts.
    Replay {
        /// Dead letter id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Replay every dead letter not replayed yet.
        #[arg(long)]
        all: bool,
        /// With --all: only this kind.
        #[arg(long, requires = "all")]
        kind: Option<String>,
    },
    /// Delete dead letters older than a duration.
    Purge {
        /// Age (e.g. 30d), at most 100y.
        #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
        older_than: Duration,
    },
}

pub(super) async fn dlq(config: &Config, cmd: DlqCommand) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    match cmd {
        DlqCommand::List { kind, limit, json } => {
            let filter = queue::DeadLetterFilter {
                kind,
                limit,
                ..queue::DeadLetterFilter::default()
            };
            let rows = queue::list_dead_letters(&pool, &filter)
                .await
                .map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let mut table = Table::new(&[
                ">ID",
                ">JOB",
                "KIND",
                "QUEUE",
                "REASON",
                ">ATTEMPT",
                "DEAD_AT",
                "REPLAYED_AS",
            ]);
            for d in rows {
                table.row([
                    d.id.to_string(),
                    d.job_id.to_string(),
                    d.kind,
                    d.queue,
                    d.reason,
                    format!("{}/{}", d.attempt, d.max_attempts),
                    d.dead_at.to_rfc3339(),
                    d.replayed_as.map(|j| j.to_string()).unwrap_or_default(),
                ]);
            }
            table.print();
        }
        DlqCommand::Show { id, json } => {
            let d = queue::get_dead_letter(&pool, id)
                .await
                .map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_record(&serde_json::to_value(&d)?);
            }
        }
        DlqCommand::Replay { id, all, kind } => {
            let ids = id.map(|i| vec![i]);
            if !all && ids.is_none() {
                bail!("give a dead letter id or --all");
            }
            let replayed = queue::replay_dead_letters(&pool, ids.as_deref(), kind.as_deref())
                .await
                .map_err(user_error)?;
            for r in &replayed {
                println!("dead letter {} replayed as job {}", r.dead_letter, r.job);
            }
            if replayed.is_empty() {
                println!("nothing to replay");
            }
        }
        DlqCommand::Purge { older_than } => {
            let n = queue::purge_dead_letters(&pool, older_than)
                .await
                .map_err(user_error)?;
            println!("{n} dead letters purged");
        }
    }
    Ok(())
}
