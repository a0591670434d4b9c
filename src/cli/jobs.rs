//! `jobs`: list, show, cancel and retry jobs.

use super::*;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Newest jobs first.
    List {
        /// available, scheduled, running, retryable, completed, cancelled, or dead (the
        /// jobs in the dead letters).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One job with its payload, errors and result (a dead job from its dead letter:
    /// state dead, dead_letter its id).
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a live job.
    Cancel { id: i64 },
    /// Run a job again now (a finished one with fresh attempts; a dead one is replayed
    /// from its dead letter as a new job).
    Retry { id: i64 },
}

pub(super) async fn jobs(config: &Config, cmd: JobsCommand) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    match cmd {
        JobsCommand::List {
            state,
            kind,
            queue: q,
            limit,
            json,
        } => {
            let filter = JobFilter {
                state,
                kind,
                queue: q,
                limit,
                ..JobFilter::default()
            };
            let jobs = queue::list_jobs(&pool, &filter).await.map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(());
            }
            let mut table = Table::new(&[
                ">ID",
                "STATE",
                "KIND",
                "QUEUE",
                ">PRIORITY",
                ">ATTEMPT",
                "RUN_AT",
            ]);
            for j in jobs {
                table.row([
                    j.id.to_string(),
                    j.state,
                    j.kind,
                    j.queue,
                    j.priority.to_string(),
                    format!("{}/{}", j.attempt, j.max_attempts),
                    j.run_at.to_rfc3339(),
                ]);
            }
            table.print();
        }
        JobsCommand::Show { id, json } => {
            let job = queue::get_job(&pool, id).await.map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_record(&serde_json::to_value(&job)?);
            }
        }
        JobsCommand::Cancel { id } => {
            queue::cancel_job(&pool, id).await.map_err(user_error)?;
            println!("job {id} cancelled");
        }
        JobsCommand::Retry { id } => {
            let job = queue::retry_job(&pool, id).await.map_err(user_error)?;
            if job.id == id {
                println!("job {id} is available again");
            } else {
                println!("job {id} was dead-lettered: replayed as job {}", job.id);
            }
        }
    }
    Ok(())
}
