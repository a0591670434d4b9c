//! `audit` and `alerts`: the credential audit log and the open alerts.

use super::*;

pub(super) async fn audit(
    config: &Config,
    subject: Option<String>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let rows = creds::list_audit(&pool, subject.as_deref(), limit)
        .await
        .map_err(user_error)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        match &subject {
            Some(s) => println!("no audit events about {s}"),
            None => println!("no audit events yet (credential events are recorded here)"),
        }
        return Ok(());
    }
    let mut table = Table::new(&[
        ">ID",
        "AT",
        "EVENT",
        "ACTOR",
        "OUTCOME",
        "SUBJECT",
        "SUBJECT_ID",
        "DETAIL",
    ]);
    for r in rows {
        table.row([
            r.id.to_string(),
            when(Some(r.at)),
            r.event,
            r.actor,
            r.outcome,
            r.subject_type,
            r.subject_id.unwrap_or_else(|| "-".into()),
            r.detail.to_string(),
        ]);
    }
    table.print();
    Ok(())
}

pub(super) async fn alerts(config: &Config, ack: Option<i64>, json: bool) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    if let Some(id) = ack {
        if !creds::acknowledge_alert(&pool, id)
            .await
            .map_err(user_error)?
        {
            bail!("no open alert {id}");
        }
        println!("alert {id} acknowledged");
        return Ok(());
    }
    let rows = creds::open_alerts(&pool).await.map_err(user_error)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no open alerts");
        return Ok(());
    }
    for r in rows {
        print_record(&serde_json::to_value(&r)?);
        println!();
    }
    Ok(())
}
