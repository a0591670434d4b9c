//! `secrets`: generate a master key, show which keys wrap the stored secrets, rotate the
//! master key.
//!
//! Must never print a secret other than a key generated on request.

use super::*;

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a new random master key (base64 of 32 bytes) to put in a file.
    GenerateKey,
    /// How many stored secrets each master key id wraps, and this daemon's key id.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every stored secret under a new master key, online. Afterwards set
    /// [secrets] master_key to the new key (keep the old one in previous_master_keys until
    /// every daemon runs with the new one).
    RotateMaster {
        /// The new key, "env:NAME" or "file:PATH" (base64 of 32 bytes).
        #[arg(long, value_name = "REF")]
        new_key: String,
    },
}

pub(super) fn keyring(config: &Config) -> anyhow::Result<Keyring> {
    Ok(Keyring::from_config(config)?.ok_or(SecretsError::NoMasterKey)?)
}

pub(super) async fn secrets(config: &Config, cmd: SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::GenerateKey => {
            let key = MasterKey::generate();
            println!("{}", secrecy::ExposeSecret::expose_secret(&key.to_base64()));
        }
        SecretsCommand::Status { json } => {
            let current = Keyring::from_config(config)?.map(|k| k.current().id().to_string());
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let counts = creds::sealed_key_ids(&pool).await.map_err(user_error)?;
            if json {
                let by_key: serde_json::Map<_, _> = counts
                    .iter()
                    .map(|(k, n)| (k.clone(), serde_json::json!(n)))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "current_key_id": current,
                        "secrets_by_key_id": by_key,
                    }))?
                );
                return Ok(());
            }
            println!(
                "current master key id: {}",
                current.as_deref().unwrap_or("(none configured)")
            );
            for (k, n) in counts {
                println!("{k}: {n} secrets");
            }
        }
        SecretsCommand::RotateMaster { new_key } => {
            let keyring = keyring(config)?;
            let new = MasterKey::from_ref("--new-key", &new_key)?;
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let moved = creds::rewrap_all(&pool, &keyring, &new, Actor::Cli)
                .await
                .map_err(|e| match e {
                    crate::credentials::connections::StoreError::Queue(q) => user_error(q),
                    other => other.into(),
                })?;
            println!(
                "{moved} secrets re-wrapped under master key {}; set [secrets] master_key (or {}) to the new key, \
                 keeping the old one in [secrets] previous_master_keys until every daemon runs with the new one",
                new.id(),
                crate::secrets::MASTER_KEY_ENV
            );
        }
    }
    Ok(())
}
