//! The runtime role: the SQL that gives the role a daemon runs as (`run --no-migrate`)
//! exactly the privileges it needs on schema `penguin`, generated from the list kept next to
//! the migrations (`migrations/runtime_grants.txt`). The owner role (which ran `migrate`)
//! applies it (`penguin-jobs roles print-sql`); the embedded cluster's superuser applies it
//! at every start.
//!
//! Must never grant ownership, CREATE, TRUNCATE, REFERENCES or TRIGGER, nor UPDATE or DELETE
//! on `penguin.audit_log`; and the SQL must stay idempotent and exact: applied again, it
//! takes back whatever the list no longer names.

use sqlx::PgPool;

use super::Error;

/// The runtime role's table privileges, one table a line (see the file's header).
pub const RUNTIME_GRANTS: &str = include_str!("../../migrations/runtime_grants.txt");

/// The runtime role's name unless `--runtime-role` names another.
pub const DEFAULT_RUNTIME_ROLE: &str = "penguin_jobs_runtime";

/// `penguin.horizon_holders()` runs as its owner (migration 0021) and sees other roles'
/// sessions only if that owner is a superuser or a member of `pg_read_all_stats`. The script
/// grants that membership where the role running it may (a superuser; in PostgreSQL 15 and
/// older, CREATEROLE), and otherwise only says so: the daemon warns at start while it lasts.
/// The runtime role itself never gets it (it could read every session's query text).
const HORIZON_VISIBILITY: &str = "\
-- the horizon warning (penguin.horizon_holders) sees other roles' sessions only if its owner
-- may read all statistics
do $$
declare
    owner text := (select proowner::regrole::text from pg_proc
                    where oid = 'penguin.horizon_holders()'::regprocedure);
begin
    if penguin.horizon_blind_spot() is not null then
        begin
            execute format('grant pg_read_all_stats to %s', owner);
        exception when insufficient_privilege or invalid_grant_operation then
            raise warning 'could not grant pg_read_all_stats to %: the daemon will not see transactions of other roles holding the xmin horizon; a superuser can grant it', owner;
        end;
    end if;
end
$$;
";

/// What a line of [`RUNTIME_GRANTS`] may grant on a table.
const TABLE_PRIVILEGES: [&str; 4] = ["select", "insert", "update", "delete"];

/// One line of [`RUNTIME_GRANTS`]: a table of schema `penguin` and its privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableGrant {
    /// The table's name in schema `penguin`.
    pub table: String,
    /// Lowercase, each of `select`, `insert`, `update`, `delete` at most once.
    pub privileges: Vec<String>,
}

/// The lines of [`RUNTIME_GRANTS`], checked: plain table names, each once, known
/// privileges.
pub fn table_grants() -> Result<Vec<TableGrant>, Error> {
    let mut grants: Vec<TableGrant> = Vec::new();
    let lines = RUNTIME_GRANTS.lines().enumerate();
    for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#')) {
        let bad =
            |what: String| Error::Invalid(format!("runtime_grants.txt line {}: {what}", n + 1));
        let mut words = line.split_whitespace();
        let table = words.next().unwrap_or_default().to_string();
        if !is_identifier(&table) {
            return Err(bad(format!("{table:?} is not a table name")));
        }
        if grants.iter().any(|g| g.table == table) {
            return Err(bad(format!("{table} is listed twice")));
        }
        let privileges: Vec<String> = words.map(str::to_string).collect();
        for (i, p) in privileges.iter().enumerate() {
            if !TABLE_PRIVILEGES.contains(&p.as_str()) || privileges[..i].contains(p) {
                return Err(bad(format!(
                    "{p:?}: write each of {TABLE_PRIVILEGES:?} at most once"
                )));
            }
        }
        if privileges.is_empty() {
            return Err(bad(format!("{table} has no privilege")));
        }
        grants.push(TableGrant { table, privileges });
    }
    Ok(grants)
}

/// A name we put in SQL unquoted-safe: lowercase letters, digits and `_`, not starting with
/// a digit, at most 63 bytes (PostgreSQL's limit).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// The runtime role to grant to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRole {
    name: String,
    owner: Option<String>,
    login: bool,
}

impl RuntimeRole {
    /// The role `name`, created NOLOGIN when missing (the operator gives it LOGIN and a
    /// password). `owner` is the role that creates the tables of later migrations, for the
    /// default privileges; `None` means the role applying the SQL.
    pub fn new(name: &str, owner: Option<&str>) -> Result<Self, Error> {
        for role in std::iter::once(name).chain(owner) {
            if !is_identifier(role) {
                return Err(Error::Invalid(format!(
                    "role name {role:?}: write 1-63 of a-z, 0-9 and _, not starting with a digit"
                )));
            }
        }
        if owner == Some(name) {
            return Err(Error::Invalid(format!(
                "the runtime role {name} cannot be the owner role: it must own nothing"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            owner: owner.map(str::to_string),
            login: false,
        })
    }

    /// The same role, created (or altered) with LOGIN: for the embedded cluster, whose
    /// unix socket (mode 0700) is the only guard and which needs no password.
    pub fn with_login(mut self) -> Self {
        self.login = true;
        self
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole script for an SQL client: one transaction, to run as the owner role after
    /// every `migrate`.
    pub fn script(&self) -> Result<String, Error> {
        Ok(format!(
            "-- penguin-jobs roles print-sql: the runtime role {role} (generated from\n\
             -- migrations/runtime_grants.txt). Run it as the owner role (the one that runs\n\
             -- `penguin-jobs migrate`) after every migrate; it is idempotent. Creating the role\n\
             -- needs CREATEROLE (or create it first: create role {role} login password '...').\n\
             begin;\n{}commit;\n",
            self.statements()?,
            role = self.name
        ))
    }

    /// The statements of [`RuntimeRole::script`], without the transaction around them.
    pub fn statements(&self) -> Result<String, Error> {
        let role = &self.name;
        let login = if self.login { "login" } else { "nologin" };
        let mut sql = format!(
            "do $$\nbegin\n\
             \x20   if to_regnamespace('penguin') is null then\n\
             \x20       raise exception 'schema penguin does not exist: run `penguin-jobs migrate` first';\n\
             \x20   end if;\n\
             \x20   if not exists (select from pg_roles where rolname = '{role}') then\n\
             \x20       create role {role} {login};\n\
             \x20   end if;\n\
             \x20   if (select rolsuper from pg_roles where rolname = '{role}') then\n\
             \x20       raise exception 'role {role} is a superuser: the runtime role must not be';\n\
             \x20   end if;\n\
             \x20   if exists (select from pg_class c where c.relnamespace = 'penguin'::regnamespace\n\
             \x20              and pg_has_role('{role}', c.relowner, 'member'))\n\
             \x20      or exists (select from pg_proc p where p.pronamespace = 'penguin'::regnamespace\n\
             \x20              and pg_has_role('{role}', p.proowner, 'member'))\n\
             \x20      or pg_has_role('{role}', (select nspowner from pg_namespace where nspname = 'penguin'), 'member') then\n\
             \x20       raise exception 'role {role} owns (or is a member of a role that owns) objects of schema penguin: the runtime role must own nothing';\n\
             \x20   end if;\n\
             end\n$$;\n"
        );
        if self.login {
            sql.push_str(&format!("alter role {role} login;\n"));
        }
        sql.push_str(&format!(
            "revoke all on schema penguin from {role};\n\
             grant usage on schema penguin to {role};\n\
             revoke all on all tables in schema penguin from {role};\n"
        ));
        for grant in table_grants()? {
            sql.push_str(&format!(
                "grant {} on penguin.{} to {role};\n",
                grant.privileges.join(", "),
                grant.table
            ));
        }
        sql.push_str(&format!(
            "revoke all on all sequences in schema penguin from {role};\n\
             grant usage on all sequences in schema penguin to {role};\n\
             grant execute on all functions in schema penguin to {role};\n\
             -- `run --no-migrate` checks that the schema is current\n\
             do $$\nbegin\n\
             \x20   if to_regclass('_sqlx_migrations') is not null then\n\
             \x20       execute format('grant select on %s to {role}', to_regclass('_sqlx_migrations'));\n\
             \x20   end if;\n\
             end\n$$;\n"
        ));
        sql.push_str(HORIZON_VISIBILITY);
        sql.push_str(&self.default_privileges());
        Ok(sql)
    }

    /// Tables, sequences and functions that later migrations create get the queue tables'
    /// privileges at once (so a running daemon keeps working); the next application of
    /// the script narrows a table to its line in the list.
    fn default_privileges(&self) -> String {
        let role = &self.name;
        let alter = match &self.owner {
            Some(owner) => format!("alter default privileges for role {owner} in schema penguin"),
            None => "alter default privileges in schema penguin".to_string(),
        };
        format!(
            "{alter} grant select, insert, update, delete on tables to {role};\n\
             {alter} grant usage on sequences to {role};\n\
             {alter} grant execute on functions to {role};\n"
        )
    }
}

/// Applies [`RuntimeRole::statements`] in one transaction on `pool` (as the owner or a
/// superuser).
pub async fn apply(pool: &PgPool, role: &RuntimeRole) -> Result<(), Error> {
    let statements = role.statements()?;
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(&statements).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_keeps_the_audit_log_append_only() {
        let grants = table_grants().unwrap();
        let audit = grants.iter().find(|g| g.table == "audit_log").unwrap();
        assert_eq!(audit.privileges, ["select", "insert"]);
        assert!(grants.iter().any(|g| g.table == "jobs"));
    }

    #[test]
    fn role_names_are_plain_identifiers() {
        assert!(RuntimeRole::new("penguin_jobs_runtime", Some("owner_1")).is_ok());
        for bad in [
            "",
            "Runtime",
            "1role",
            "a-b",
            "a;drop",
            "x\"y",
            &"a".repeat(64),
        ] {
            assert!(RuntimeRole::new(bad, None).is_err(), "{bad:?}");
            assert!(RuntimeRole::new("ok", Some(bad)).is_err(), "{bad:?}");
        }
        assert!(RuntimeRole::new("same", Some("same")).is_err());
    }

    #[test]
    fn the_script_grants_no_update_or_delete_on_the_audit_log_and_no_truncate() {
        let script = RuntimeRole::new("rt", Some("own"))
            .unwrap()
            .script()
            .unwrap();
        assert!(script.contains("grant select, insert on penguin.audit_log to rt;"));
        assert!(script.contains("alter default privileges for role own in schema penguin"));
        assert!(!script.to_lowercase().contains("truncate"));
        assert!(script.starts_with("--") && script.ends_with("commit;\n"));
    }
}
