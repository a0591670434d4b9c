//! The schema's migrations: applied by the owner role (`migrate`, or `run` without
//! `--no-migrate`), and checked, without changing anything, by a daemon that runs as the
//! runtime role (`run --no-migrate`), so that it refuses to work on an older schema.
//!
//! Must never change the schema in [`check_migrated`]: the runtime role cannot, and a
//! daemon that does not migrate must not try.

use std::collections::HashSet;

use sqlx::PgPool;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

use super::Error;

/// The migrations in `migrations/`, embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// SQLSTATE of "permission denied" and of "undefined table".
const INSUFFICIENT_PRIVILEGE: &str = "42501";
const UNDEFINED_TABLE: &str = "42P01";

/// Applies the embedded migrations (idempotent; concurrent daemons serialise on sqlx's lock).
/// A role that may not change the schema is told to leave migrating to the owner role.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    match MIGRATOR.run(pool).await {
        Err(e) if sqlstate(&e).as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
            Err(Error::Invalid(format!(
                "{e}: this role may not change the schema; run `penguin-jobs migrate` as the owner \
             role and start the daemon with `run --no-migrate` (README: Database roles)"
            )))
        }
        other => Ok(other?),
    }
}

/// Checks that every embedded migration has been applied (successfully) to the database,
/// reading sqlx's `_sqlx_migrations` only. A schema ahead of this binary (a newer daemon
/// migrated) is accepted: migrations only add.
pub async fn check_migrated(pool: &PgPool) -> Result<(), Error> {
    let mut conn = pool.acquire().await?;
    let read = async {
        let dirty = conn.dirty_version().await?;
        let applied = conn.list_applied_migrations().await?;
        Ok::<_, MigrateError>((dirty, applied))
    };
    let (dirty, applied) = match read.await {
        Ok(read) => read,
        Err(e) => {
            return Err(match sqlstate(&e).as_deref() {
                Some(UNDEFINED_TABLE) => Error::Invalid(
                    "the database has no migrations applied: run `penguin-jobs migrate` as the \
                     owner role first"
                        .into(),
                ),
                Some(INSUFFICIENT_PRIVILEGE) => Error::Invalid(format!(
                    "{e}: this role cannot read the migrations table _sqlx_migrations; apply \
                     `penguin-jobs roles print-sql` as the owner role"
                )),
                _ => e.into(),
            });
        }
    };
    if let Some(version) = dirty {
        return Err(Error::Invalid(format!(
            "migration {version} failed part-way: fix it and run `penguin-jobs migrate` as the owner role"
        )));
    }
    let applied: HashSet<i64> = applied.iter().map(|m| m.version).collect();
    let pending: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the database schema is not current: migration {} not applied; run \
             `penguin-jobs migrate` as the owner role, then start the daemon again",
            pending.join(", ")
        )))
    }
}

/// The SQLSTATE of a database error inside a migration error.
fn sqlstate(e: &MigrateError) -> Option<String> {
    match e {
        MigrateError::Execute(sqlx::Error::Database(db))
        | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) => {
            db.code().map(|c| c.into_owned())
        }
        _ => None,
    }
}
