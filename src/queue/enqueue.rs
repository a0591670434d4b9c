//! Enqueue from Rust: one job through `penguin.enqueue(...)`, or many in one multi-row
//! statement. Both run on the caller's connection or transaction, so a job exists if and
//! only if the caller's transaction commits.
//!
//! Must never check payloads against a kind (that is the registry's job, before this is
//! called) and never send NOTIFY itself: the insert trigger decides whether anyone idles.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};

use super::Error;
use super::state::{live_states, same_tenant};

/// A job to insert. `None` fields take the kind's defaults from `penguin.kinds`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub kind: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// The queue (default: the kind's).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    /// Earliest start; `None` or a past time means now.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Lower runs first (default: the kind's).
    #[serde(default)]
    #[schema(minimum = -32768, maximum = 32767)]
    pub priority: Option<i16>,
    /// Attempts before the dead letters (default: the kind's).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_attempts: Option<i32>,
    /// At most one live job per key, kind and tenant; enqueueing again returns the live
    /// job's id. Keys starting with `penguin:` ([`RESERVED_KEY_PREFIX`]) are the daemon's
    /// own.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 1000)]
    pub unique_key: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<uuid::Uuid>,
}

/// Longest queue name accepted, in bytes (it is part of the claim index).
pub const MAX_QUEUE: usize = 200;

/// Longest unique key accepted, in bytes (a btree entry must stay under 2.7 kB).
pub const MAX_UNIQUE_KEY: usize = 1000;

/// The prefix of the unique keys of the daemon's own jobs (schedule fires, key rotations,
/// token refreshes, OAuth exchanges). Callers from outside (HTTP, the CLI's `enqueue`) may
/// not use it: [`NewJob::check_caller_key`].
pub const RESERVED_KEY_PREFIX: &str = "penguin:";

/// `rest` under [`RESERVED_KEY_PREFIX`]: a unique key of the daemon's own.
pub fn reserved_key(rest: impl std::fmt::Display) -> String {
    format!("{RESERVED_KEY_PREFIX}{rest}")
}

impl NewJob {
    /// Refuses a unique key under [`RESERVED_KEY_PREFIX`]: for jobs that come from outside
    /// the daemon, so that no caller can take the key of a job the daemon will enqueue.
    pub fn check_caller_key(&self) -> Result<(), String> {
        match &self.unique_key {
            Some(k) if k.starts_with(RESERVED_KEY_PREFIX) => Err(format!(
                "unique_key: keys starting with {RESERVED_KEY_PREFIX:?} are reserved for the \
                 daemon's own jobs"
            )),
            _ => Ok(()),
        }
    }

    /// A job of `kind` with `payload` and every other field defaulted.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            ..Self::default()
        }
    }

    /// Checks what the table would refuse less clearly, naming the field at fault: empty
    /// names, NUL in any text (jsonb and text refuse `\u0000`; the payload's path is
    /// named), names longer than their index allows, and a `run_at` outside years 1-9999.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(Error::Invalid)
    }

    fn check(&self) -> Result<(), String> {
        const NUL: &str = "contains a NUL character (\\u0000), which cannot be stored";
        if self.kind.trim().is_empty() {
            return Err("kind must not be empty".into());
        }
        if self.payload.is_null() {
            return Err("payload must not be null (use {} for none)".into());
        }
        if let Some(m) = self.max_attempts
            && m < 1
        {
            return Err(format!("max_attempts must be at least 1, got {m}"));
        }
        if self.queue.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return Err("queue must not be empty".into());
        }
        if self.unique_key.as_deref().is_some_and(str::is_empty) {
            return Err("unique_key must not be empty".into());
        }
        let texts = [
            ("kind", Some(self.kind.as_str())),
            ("queue", self.queue.as_deref()),
            ("unique_key", self.unique_key.as_deref()),
        ];
        for (field, value) in texts {
            if value.is_some_and(|v| !crate::text::is_storable(v)) {
                return Err(format!("{field} {NUL}"));
            }
        }
        if let Some(path) = crate::text::first_unstorable(&self.payload) {
            return Err(format!("payload: {path} {NUL}"));
        }
        if self.queue.as_ref().is_some_and(|q| q.len() > MAX_QUEUE) {
            return Err(format!("queue: at most {MAX_QUEUE} bytes"));
        }
        if let Some(q) = &self.queue
            && !crate::text::is_plain_name(q)
        {
            return Err(format!(
                "queue: {q:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.' (as queue names in the config)"
            ));
        }
        if self
            .unique_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_UNIQUE_KEY)
        {
            return Err(format!("unique_key: at most {MAX_UNIQUE_KEY} bytes"));
        }
        if let Some(at) = self.run_at
            && !(1..=9999).contains(&chrono::Datelike::year(&at))
        {
            return Err("run_at: give a time between years 1 and 9999".into());
        }
        Ok(())
    }
}

/// Enqueues one job on `executor` (a pool, a connection or the caller's transaction) and
/// returns its id, or the id of the live job holding the same unique key.
#[tracing::instrument(skip_all, fields(job.kind = %job.kind))]
pub async fn enqueue<'e>(executor: impl PgExecutor<'e>, job: &NewJob) -> Result<i64, Error> {
    job.validate()?;
    let id: i64 = sqlx::query_scalar(
        "select penguin.enqueue($1, $2, $3, coalesce($4, now()), $5, $6, $7, $8)",
    )
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(&job.queue)
    .bind(job.run_at)
    .bind(job.priority.map(i32::from))
    .bind(job.max_attempts)
    .bind(&job.unique_key)
    .bind(job.tenant_id)
    .fetch_one(executor)
    .await?;
    Ok(id)
}

/// Enqueues many jobs in one multi-row statement on `conn` (pass `&mut *tx` to enqueue in
/// your own transaction) and returns their ids in input order. A job whose unique key is
/// held by a live job gets that job's id. The whole batch fails on an unknown kind.
#[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
pub async fn enqueue_many(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<i64>, Error> {
    Ok(enqueue_many_reporting(conn, jobs)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect())
}

/// One enqueued job: its id, and whether this call created it (`false`: a live job
/// already held its unique key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    pub created: bool,
}

/// [`enqueue_many_reporting`] with unique keys: one row per input ($1..$8 the columns as
/// arrays, in input order) of (ordinal, id of the new job or of the live job holding its key,
/// whether it was created). A key whose holder committed after this statement's snapshot
/// gives no id: the caller looks again.
const ENQUEUE_WITH_KEYS_SQL: &str = concat!("with input as materialized (
             select t.ord, nextval('penguin.jobs_id_seq') as id, t.kind, t.payload,
                    coalesce(t.queue, k.queue) as queue,
                    coalesce(t.run_at, now()) as run_at,
                    coalesce(t.priority, k.priority) as priority,
                    coalesce(t.max_attempts, k.max_attempts) as max_attempts,
                    t.unique_key, t.tenant_id, k.kind is not null as known
             from unnest($1::text[], $2::jsonb[], $3::text[], $4::timestamptz[], $5::smallint[],
                         $6::int[], $7::text[], $8::uuid[])
                  with ordinality as t(kind, payload, queue, run_at, priority, max_attempts,
                                       unique_key, tenant_id, ord)
             left join penguin.kinds k on k.kind = t.kind
         ),
         inserted as (
             insert into penguin.jobs
                 (id, queue, kind, payload, state, priority, max_attempts, run_at, unique_key, tenant_id)
             select id, queue,
                    case when known then kind else penguin.unknown_kind(kind) end,
                    payload,
                    case when run_at > now() then 'scheduled' else 'available' end,
                    priority, max_attempts, run_at, unique_key, tenant_id
             from input
             order by ord
             on conflict do nothing
             returning id
         )
         select i.ord, coalesce(
                    ins.id,
                    (select j.id from penguin.jobs j
                     where j.kind = i.kind
                       and ", same_tenant!("j.tenant_id", "i.tenant_id"), "
                       and j.unique_key = i.unique_key
                       and j.finished_at is null
                       and j.state in ", live_states!(), ")),
                ins.id is not null
         from input i left join inserted ins on ins.id = i.id
         order by i.ord");

/// [`enqueue_many`], telling for each job whether it was created or deduplicated.
pub async fn enqueue_many_reporting(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>, Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    for job in jobs {
        job.validate()?;
    }
    if jobs.iter().all(|j| j.unique_key.is_none()) {
        let ids = enqueue_many_without_keys(conn, jobs).await?;
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued { id, created: true })
            .collect());
    }
    let c = Columns::of(jobs);
    let rows: Vec<(i64, Option<i64>, bool)> = sqlx::query_as(ENQUEUE_WITH_KEYS_SQL)
        .bind(&c.kinds)
        .bind(&c.payloads)
        .bind(&c.queues)
        .bind(&c.run_ats)
        .bind(&c.priorities)
        .bind(&c.attempts)
        .bind(&c.keys)
        .bind(&c.tenants)
        .fetch_all(&mut *conn)
        .await?;

    let mut out = Vec::with_capacity(jobs.len());
    for (ord, id, created) in rows {
        match id {
            Some(id) => out.push(Enqueued { id, created }),
            // The key's holder committed after this statement's snapshot, or sits earlier
            // in this very batch: look again, then enqueue alone if it is gone.
            None => {
                let job = &jobs[(ord - 1) as usize];
                let held: Option<i64> = sqlx::query_scalar(concat!(
                    "select id from penguin.jobs
                     where kind = $1 and ",
                    same_tenant!("tenant_id", "$2::uuid"),
                    " and unique_key = $3 and finished_at is null and state in ",
                    live_states!()
                ))
                .bind(&job.kind)
                .bind(job.tenant_id)
                .bind(&job.unique_key)
                .fetch_optional(&mut *conn)
                .await?;
                out.push(match held {
                    Some(id) => Enqueued { id, created: false },
                    None => Enqueued {
                        id: enqueue(&mut *conn, job).await?,
                        created: true,
                    },
                });
            }
        }
    }
    Ok(out)
}

/// A batch of jobs as one array per column, for `unnest`.
struct Columns<'a> {
    kinds: Vec<&'a str>,
    payloads: Vec<&'a serde_json::Value>,
    queues: Vec<Option<&'a str>>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    priorities: Vec<Option<i16>>,
    attempts: Vec<Option<i32>>,
    keys: Vec<Option<&'a str>>,
    tenants: Vec<Option<uuid::Uuid>>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &'a [NewJob]) -> Self {
        Self {
            kinds: jobs.iter().map(|j| j.kind.as_str()).collect(),
            payloads: jobs.iter().map(|j| &j.payload).collect(),
            queues: jobs.iter().map(|j| j.queue.as_deref()).collect(),
            run_ats: jobs.iter().map(|j| j.run_at).collect(),
            priorities: jobs.iter().map(|j| j.priority).collect(),
            attempts: jobs.iter().map(|j| j.max_attempts).collect(),
            keys: jobs.iter().map(|j| j.unique_key.as_deref()).collect(),
            tenants: jobs.iter().map(|j| j.tenant_id).collect(),
        }
    }
}

/// The common case, no unique keys: a plain multi-row insert. Ids come from the identity
/// sequence in insertion order, which follows `ord`, so the returned ids sorted ascending
/// are the input's ids in input order.
async fn enqueue_many_without_keys(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<i64>, Error> {
    let c = Columns::of(jobs);
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "insert into penguin.jobs (queue, kind, payload, state, priority, max_attempts, run_at, tenant_id)
         select coalesce(t.queue, k.queue),
                case when k.kind is null then penguin.unknown_kind(t.kind) else t.kind end,
                t.payload,
                case when t.run_at > now() then 'scheduled' else 'available' end,
                coalesce(t.priority, k.priority), coalesce(t.max_attempts, k.max_attempts),
                coalesce(t.run_at, now()), t.tenant_id
           from unnest($1::text[], $2::jsonb[], $3::text[], $4::timestamptz[], $5::smallint[],
                       $6::int[], $7::uuid[])
                with ordinality as t(kind, payload, queue, run_at, priority, max_attempts, tenant_id, ord)
           left join penguin.kinds k on k.kind = t.kind
          order by t.ord
         returning id",
    )
    .bind(&c.kinds)
    .bind(&c.payloads)
    .bind(&c.queues)
    .bind(&c.run_ats)
    .bind(&c.priorities)
    .bind(&c.attempts)
    .bind(&c.tenants)
    .fetch_all(&mut *conn)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_queue_is_named_as_the_config_names_queues() {
        let with_queue = |q: &str| NewJob {
            queue: Some(q.into()),
            ..NewJob::new("noop", json!({}))
        };
        for ok in ["default", "email.v2", "bulk_sends-1"] {
            assert_eq!(with_queue(ok).check(), Ok(()), "{ok}");
        }
        for refused in ["défault", "a b", "emails/1", &"q".repeat(65)] {
            let e = with_queue(refused).check().unwrap_err();
            assert!(
                e.starts_with("queue: ") && e.contains("1-64 characters"),
                "{e}"
            );
        }
    }

    #[test]
    fn jobs_the_database_would_refuse_are_refused_naming_the_field() {
        let job = |f: &dyn Fn(&mut NewJob)| {
            let mut j = NewJob::new("noop", json!({"a": ["ok"]}));
            f(&mut j);
            j.check()
        };
        assert_eq!(job(&|_| ()), Ok(()));
        let refused = |f: &dyn Fn(&mut NewJob)| job(f).unwrap_err();
        assert!(refused(&|j| j.kind = "no\0op".into()).starts_with("kind "));
        assert!(refused(&|j| j.queue = Some("q\0".into())).starts_with("queue "));
        assert!(refused(&|j| j.unique_key = Some("\0".into())).starts_with("unique_key "));
        assert!(
            refused(&|j| j.payload = json!({"a": [1, {"b\u{0}": 2}]}))
                .starts_with("payload: $.a[1].b\u{fffd} ")
        );
        assert!(refused(&|j| j.queue = Some("q".repeat(MAX_QUEUE + 1))).contains("at most"));
        assert!(
            refused(&|j| j.unique_key = Some("k".repeat(MAX_UNIQUE_KEY + 1))).contains("at most")
        );
        let year = |y| {
            chrono::NaiveDate::from_ymd_opt(y, 1, 1)
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap().and_utc())
        };
        assert!(refused(&|j| j.run_at = year(-10_000)).starts_with("run_at"));
        assert!(refused(&|j| j.run_at = year(200_000)).starts_with("run_at"));
        assert_eq!(job(&|j| j.run_at = year(9999)), Ok(()));
    }
}
