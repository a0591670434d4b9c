//! `schedules`: list, pause and resume cron schedules.

use super::*;

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule with its next and last fire.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop firing a schedule (fires while paused are passed over, not caught up).
    Pause { name: String },
    /// Fire a paused schedule again.
    Resume { name: String },
}

pub(super) async fn schedules(config: &Config, cmd: SchedulesCommand) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    match cmd {
        SchedulesCommand::List { json } => {
            let rows = scheduler::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let when =
                |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
            let mut table = Table::new(&[
                "NAME",
                "CRON",
                "TIMEZONE",
                "KIND",
                "ENABLED",
                "NEXT_FIRE",
                "LAST_FIRE",
                "LAST_JOB",
            ]);
            for r in rows {
                table.row([
                    r.name,
                    r.cron,
                    r.timezone,
                    r.kind,
                    r.enabled.to_string(),
                    when(r.next_fire_at),
                    when(r.last_fire_at),
                    r.last_job_id
                        .map(|j| j.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            table.print();
        }
        SchedulesCommand::Pause { name } => {
            scheduler::set_enabled(&pool, &name, false).await?;
            println!("schedule {name} paused");
        }
        SchedulesCommand::Resume { name } => {
            scheduler::set_enabled(&pool, &name, true).await?;
            println!("schedule {name} resumed");
        }
    }
    Ok(())
}
