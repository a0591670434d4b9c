//! Every sealed column, for master key rotation: which rows are sealed under an old key, and their re-sealing.

use super::*;

/// Every secret column: `(table, column)`. Each ciphertext's additional data is
/// `"<table>.<column>:<row id>"` (see [`sealed_aad`]).
pub const SEALED_COLUMNS: [(&str, &str); 5] = [
    ("oauth_connections", "access_token_enc"),
    ("oauth_connections", "refresh_token_enc"),
    ("oauth_states", "code_verifier_enc"),
    ("oauth_states", "code_enc"),
    ("api_keys", "key_enc"),
];

/// The additional authenticated data of the ciphertext in `table.column` of row `id`.
pub fn sealed_aad(table: &str, column: &str, id: Uuid) -> String {
    format!("{table}.{column}:{id}")
}

/// One stored ciphertext.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub table: &'static str,
    pub column: &'static str,
    pub id: Uuid,
    pub value: String,
}

/// Up to `limit` ciphertexts of `table.column` not written under master key `key_id`.
pub async fn sealed_not_under(
    pool: &PgPool,
    table: &'static str,
    column: &'static str,
    key_id: &str,
    limit: i64,
) -> Result<Vec<Sealed>, Error> {
    if !SEALED_COLUMNS.contains(&(table, column)) {
        return Err(Error::Invalid(format!(
            "{table}.{column} is not a secret column"
        )));
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(&format!(
        "select id, {column} from penguin.{table}
          where {column} is not null and {column} not like $1 order by id limit $2"
    ))
    .bind(format!("pj1.{key_id}.%"))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, value)| Sealed {
            table,
            column,
            id,
            value,
        })
        .collect())
}

/// Replaces one ciphertext if it is still `old.value` (a refresh may have written a new
/// one meanwhile): `false` if it changed.
pub async fn replace_sealed(pool: &PgPool, old: &Sealed, new_value: &str) -> Result<bool, Error> {
    if !SEALED_COLUMNS.contains(&(old.table, old.column)) {
        return Err(Error::Invalid(format!(
            "{}.{} is not a secret column",
            old.table, old.column
        )));
    }
    let done = sqlx::query(&format!(
        "update penguin.{} set {} = $3 where id = $1 and {} = $2",
        old.table, old.column, old.column
    ))
    .bind(old.id)
    .bind(&old.value)
    .bind(new_value)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many ciphertexts each master key id wraps, over every secret column.
pub async fn sealed_key_ids(pool: &PgPool) -> Result<Vec<(String, i64)>, Error> {
    let parts: Vec<String> = SEALED_COLUMNS
        .iter()
        .map(|(t, c)| {
            format!("select split_part({c}, '.', 2) as k from penguin.{t} where {c} is not null")
        })
        .collect();
    Ok(sqlx::query_as(&format!(
        "select k, count(*) from ({}) s group by k order by k",
        parts.join(" union all ")
    ))
    .fetch_all(pool)
    .await?)
}

/// Re-wraps every secret not sealed under `new` (its data key is sealed again; the
/// ciphertext of the secret itself is unchanged), then records it in the audit log;
/// returns how many were re-wrapped. A ciphertext replaced meanwhile (a refresh) is read
/// again on the next pass.
pub async fn rewrap_all(
    pool: &PgPool,
    keyring: &crate::secrets::Keyring,
    new: &crate::secrets::MasterKey,
    actor: Actor,
) -> Result<u64, super::connections::StoreError> {
    let before = sealed_key_ids(pool).await?;
    let mut moved = 0u64;
    for (table, column) in SEALED_COLUMNS {
        for _pass in 0..1000 {
            let batch = sealed_not_under(pool, table, column, new.id(), 500).await?;
            if batch.is_empty() {
                break;
            }
            for sealed in &batch {
                let aad = sealed_aad(table, column, sealed.id);
                let rewrapped = keyring.rewrap(&sealed.value, &aad, new)?;
                if replace_sealed(pool, sealed, &rewrapped).await? {
                    moved += 1;
                }
            }
        }
    }
    let from: Vec<&str> = before
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != new.id())
        .collect();
    audit(
        pool,
        &AuditEvent {
            event: AuditAction::MasterKeyRotated,
            actor,
            subject_type: Subject::MasterKey,
            subject_id: Some(new.id().to_string()),
            tenant_id: None,
            provider: None,
            ok: true,
            detail: serde_json::json!({ "from": from, "to": new.id(), "rewrapped": moved }),
        },
    )
    .await?;
    Ok(moved)
}
