//! The xmin horizon as the queue feels it: the oldest snapshot anything on the cluster
//! holds (a session's transaction, a replication slot, a prepared transaction), past which
//! VACUUM cannot remove the row versions every claim and outcome leave behind, and how many
//! such dead versions the queue's tables carry now.
//!
//! Reads the statistics views only (`pg_stat_activity`, `pg_replication_slots` and
//! `pg_prepared_xacts` through `penguin.horizon_holders()`, migration 0021;
//! `pg_stat_user_tables`): cheap, no table scan. Must never read or return a session's query
//! text (it may carry data or secrets).

use serde::Serialize;
use sqlx::PgPool;

use super::Error;

/// What holds the oldest snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct HorizonHolder {
    /// `session`, `replication slot` or `prepared transaction`.
    pub holder: String,
    /// The session's pid (`None` for a slot or a prepared transaction).
    pub pid: Option<i32>,
    /// The session's `application_name`, the slot's or the prepared transaction's name.
    pub name: String,
    /// The session's state (`idle in transaction`, `active`...), when visible.
    pub state: Option<String>,
    /// Seconds since the transaction (or prepared transaction) began; `None` for a slot.
    pub held_secs: Option<f64>,
    /// Transactions the cluster went through since that snapshot (`age(xmin)`).
    pub xmin_age: i64,
}

/// Live and dead row versions of one queue table.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TableVersions {
    pub table: String,
    pub live: i64,
    /// Dead versions VACUUM has not removed yet (statistics, not an exact count).
    pub dead: i64,
    /// Table, indexes and TOAST, in bytes.
    pub bytes: i64,
}

/// The horizon and what the queue carries because of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Horizon {
    /// The oldest holder, if any holds a snapshot besides this session.
    pub oldest: Option<HorizonHolder>,
    /// The queue's tables with dead versions, most first.
    pub tables: Vec<TableVersions>,
    /// The role that needs `pg_read_all_stats` for `oldest` to cover every role's sessions
    /// (see [`blind_spot`]); None when it does.
    pub blind_spot: Option<String>,
}

/// The oldest snapshot held on the cluster, other than this session's own.
pub async fn oldest_holder(pool: &PgPool) -> Result<Option<HorizonHolder>, Error> {
    Ok(holders(pool, 1).await?.pop())
}

/// The `limit` oldest snapshots held on the cluster, oldest first, other than this
/// session's own: through `penguin.horizon_holders()`, which runs as its owner so that the
/// runtime role sees other roles' sessions (see [`blind_spot`]).
pub async fn holders(pool: &PgPool, limit: i64) -> Result<Vec<HorizonHolder>, Error> {
    Ok(sqlx::query_as(
        "select holder, pid, name, state, held_secs, xmin_age from penguin.horizon_holders()
         order by xmin_age desc nulls last
         limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The role to grant `pg_read_all_stats` to when `penguin.horizon_holders()` cannot see
/// other roles' sessions (its owner is neither a superuser nor a member of it), else None.
/// While it is blind, a transaction of another role holds the horizon unseen.
pub async fn blind_spot(pool: &PgPool) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar("select penguin.horizon_blind_spot()")
        .fetch_one(pool)
        .await?)
}

/// The horizon, and the dead versions of every table of schema `penguin` that has some.
pub async fn horizon(pool: &PgPool) -> Result<Horizon, Error> {
    let tables = sqlx::query_as(
        "select relname::text as table, n_live_tup as live, n_dead_tup as dead,
                pg_total_relation_size(relid) as bytes
         from pg_stat_user_tables
         where schemaname = 'penguin' and n_dead_tup > 0
         order by n_dead_tup desc",
    )
    .fetch_all(pool)
    .await?;
    Ok(Horizon {
        oldest: oldest_holder(pool).await?,
        tables,
        blind_spot: blind_spot(pool).await?,
    })
}

/// What to say while [`blind_spot`] names `role`: the horizon may be held unseen.
pub fn blind_spot_advice(role: &str) -> String {
    format!(
        "WARNING: the xmin horizon's holders are read as role {role}, which sees when a \
         transaction began only for its own sessions (and those of roles it belongs to): a \
         transaction of another role can hold the horizon unwarned; grant pg_read_all_stats to \
         {role} (`penguin-jobs roles print-sql` does where it may)"
    )
}

impl HorizonHolder {
    /// Held longer than `limit` (slots, whose age is not a time, never are).
    pub fn held_longer_than(&self, limit: std::time::Duration) -> bool {
        self.held_secs.is_some_and(|s| s > limit.as_secs_f64())
    }

    /// One line naming the holder, for logs and `stats`: what, pid, name, state, how long.
    pub fn describe(&self) -> String {
        let mut line = self.holder.clone();
        if let Some(pid) = self.pid {
            line.push_str(&format!(" pid {pid}"));
        }
        if !self.name.is_empty() {
            line.push_str(&format!(" ({:?})", self.name));
        }
        if let Some(state) = &self.state {
            line.push_str(&format!(", {state}"));
        }
        if let Some(secs) = self.held_secs {
            let held = std::time::Duration::from_secs(secs.max(0.0) as u64);
            line.push_str(&format!(", for {}", humantime::format_duration(held)));
        }
        line.push_str(&format!(", {} transactions old", self.xmin_age));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_described_without_its_query() {
        let h = HorizonHolder {
            holder: "session".into(),
            pid: Some(4242),
            name: "nightly-report".into(),
            state: Some("idle in transaction".into()),
            held_secs: Some(754.2),
            xmin_age: 120_000,
        };
        assert_eq!(
            h.describe(),
            "session pid 4242 (\"nightly-report\"), idle in transaction, for 12m 34s, \
             120000 transactions old"
        );
        assert!(h.held_longer_than(std::time::Duration::from_secs(300)));
        assert!(!h.held_longer_than(std::time::Duration::from_secs(900)));
        let slot = HorizonHolder {
            holder: "replication slot".into(),
            pid: None,
            name: "standby".into(),
            state: None,
            held_secs: None,
            xmin_age: 5,
        };
        assert!(!slot.held_longer_than(std::time::Duration::ZERO));
    }
}
