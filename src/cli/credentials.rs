//! The credential commands: `oauth`, `keys`, `secrets`, `audit` and `alerts`.
//!
//! Keys are read from standard input, never from an argument (arguments end up in shell
//! history and process lists). Listings never show key or token material; every change
//! is written with its audit row by the library calls used here.

use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use secrecy::SecretString;
use uuid::Uuid;

use super::{Embedded, connect, print_record, registry, user_error};
use crate::config::Config;
use crate::credentials::keys::{self as apikey, DEFAULT_ENVIRONMENT};
use crate::credentials::{self as creds, Actor};
use crate::providers::oauth::Providers;
use crate::queue::{self};
use crate::secrets::{self, Keyring, MasterKey, SecretsError};

#[derive(Debug, Subcommand)]
pub enum OauthCommand {
    /// Print the URL that starts a connection: single-use state (10 minutes), PKCE S256.
    Authorize {
        /// google, microsoft, hubspot, or one of [oauth.providers].
        provider: String,
        /// Tenant the connection belongs to (UUID).
        #[arg(long)]
        tenant: Uuid,
        /// Where the provider sends the user back: the shim's /oauth/callback/PROVIDER.
        /// Default: [oauth] redirect_uri.
        #[arg(long)]
        redirect_uri: Option<String>,
    },
    /// Mark a connection revoked (the tenant disconnected it): it is no longer refreshed.
    Disconnect { id: Uuid },
    /// Connections with their status and expiry (never tokens).
    List {
        #[arg(long)]
        tenant: Option<Uuid>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Store the key read from standard input as the active key now (the previous one
    /// retires for [api_keys] overlap).
    Set {
        provider: String,
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
        /// monthly, quarterly or never (default: the current key's, or monthly).
        #[arg(long, value_parser = parse_schedule)]
        schedule: Option<RotationSchedule>,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Stage the key read from standard input as the next key: the next rotation tests it
    /// and activates it.
    Stage {
        provider: String,
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Keys with versions, status and dates (never key material).
    List {
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a rotation now.
    Rotate {
        provider: String,
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
    },
}

/// What is stored with a key.
#[derive(Debug, clap::Args)]
pub struct MetaArgs {
    /// What the key may do at the provider, comma-separated (default: the current key's).
    #[arg(long, value_delimiter = ',')]
    permissions: Vec<String>,
    /// When the provider expires the key (RFC 3339); rotation is due a day before.
    #[arg(long)]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl MetaArgs {
    fn into_meta(self, schedule: Option<String>) -> apikey::KeyMeta {
        apikey::KeyMeta {
            schedule,
            permissions: self.permissions,
            expires_at: self.expires_at,
        }
    }
}

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

fn keyring(config: &Config) -> anyhow::Result<Keyring> {
    Ok(Keyring::from_config(config)?.ok_or(SecretsError::NoMasterKey)?)
}

fn read_key_from_stdin() -> anyhow::Result<SecretString> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the key from standard input")?;
    let key = text.trim_end_matches(['\n', '\r']).to_string();
    if key.trim().is_empty() {
        bail!("no key on standard input (pipe it in: `penguin-jobs keys set PROVIDER < keyfile`)");
    }
    Ok(SecretString::from(key))
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

pub(super) async fn oauth(config: &Config, cmd: OauthCommand) -> anyhow::Result<()> {
    match cmd {
        OauthCommand::Authorize {
            provider,
            tenant,
            redirect_uri,
        } => {
            let p = Providers::from_config(config)?.get(&provider)?;
            let redirect = match redirect_uri.or_else(|| config.oauth.redirect_uri.clone()) {
                Some(r) => r.replace("{provider}", &provider),
                None => bail!(
                    "give --redirect-uri (the shim's /oauth/callback/{provider} as the provider reaches it) or set [oauth] redirect_uri"
                ),
            };
            let keyring = keyring(config)?;
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let url = crate::credentials::connections::begin_authorization(
                &pool,
                &keyring,
                &p,
                tenant,
                &redirect,
                Actor::Cli,
            )
            .await
            .map_err(|e| match e {
                crate::credentials::connections::StoreError::Queue(q) => user_error(q),
                other => other.into(),
            })?;
            println!("{url}");
        }
        OauthCommand::Disconnect { id } => {
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let done = crate::credentials::connections::disconnect(&pool, id, Actor::Cli)
                .await
                .map_err(|e| match e {
                    crate::credentials::connections::StoreError::Queue(q) => user_error(q),
                    other => other.into(),
                })?;
            if !done {
                bail!("no live oauth connection {id}");
            }
            println!("connection {id} revoked");
        }
        OauthCommand::List { tenant, json } => {
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let rows = creds::list_connections(&pool, tenant)
                .await
                .map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<36} {:<36} {:<10} {:<16} {:<24} {:<20} LAST_ERROR",
                "ID", "TENANT", "PROVIDER", "STATUS", "ACCOUNT", "EXPIRES_AT"
            );
            for r in rows {
                println!(
                    "{:<36} {:<36} {:<10} {:<16} {:<24} {:<20} {}",
                    r.id,
                    r.tenant_id,
                    r.provider,
                    r.status,
                    r.account_email.as_deref().unwrap_or(&r.account_id),
                    when(r.expires_at),
                    r.last_error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

fn key_error(e: apikey::KeyError) -> anyhow::Error {
    match e {
        apikey::KeyError::Queue(q) => user_error(q),
        other => other.into(),
    }
}

/// `keys set --schedule`: how often the key is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationSchedule {
    Monthly,
    Quarterly,
    Never,
}

impl RotationSchedule {
    /// The name stored in `penguin.api_keys.rotation_schedule` (one of `apikey::SCHEDULES`).
    fn as_str(self) -> &'static str {
        match self {
            RotationSchedule::Monthly => "monthly",
            RotationSchedule::Quarterly => "quarterly",
            RotationSchedule::Never => "never",
        }
    }
}

/// Parses `--schedule` (clap reports the error with the flag and exits 2).
fn parse_schedule(s: &str) -> Result<RotationSchedule, String> {
    match s {
        "monthly" => Ok(RotationSchedule::Monthly),
        "quarterly" => Ok(RotationSchedule::Quarterly),
        "never" => Ok(RotationSchedule::Never),
        other => Err(format!("{other:?} is not monthly, quarterly or never")),
    }
}

pub(super) async fn keys(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Set {
            provider,
            environment,
            schedule,
            meta,
        } => {
            let keyring = keyring(config)?;
            let key = read_key_from_stdin()?;
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let (id, version) = apikey::set_key(
                &pool,
                &keyring,
                &provider,
                &environment,
                &key,
                &meta.into_meta(schedule.map(|s| s.as_str().to_string())),
                config.api_keys.overlap,
                Actor::Cli,
            )
            .await
            .map_err(key_error)?;
            println!("{provider} key version {version} ({id}) is active in {environment}");
        }
        KeysCommand::Stage {
            provider,
            environment,
            meta,
        } => {
            let keyring = keyring(config)?;
            let key = read_key_from_stdin()?;
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let (id, version) = apikey::stage_key(
                &pool,
                &keyring,
                &provider,
                &environment,
                &key,
                &meta.into_meta(None),
                Actor::Cli,
            )
            .await
            .map_err(key_error)?;
            println!(
                "{provider} key version {version} ({id}) staged in {environment}; the next rotation tests and activates it"
            );
        }
        KeysCommand::List { provider, json } => {
            let (pool, _) = connect(config, Embedded::Attach).await?;
            let rows = creds::list_api_keys(&pool, provider.as_deref())
                .await
                .map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<36} {:<10} {:<12} {:>4} {:<9} {:<10} {:<20} {:<20} {:<20} REVOKED_AT",
                "ID",
                "PROVIDER",
                "ENVIRONMENT",
                "VER",
                "STATUS",
                "SCHEDULE",
                "CREATED_AT",
                "ACTIVATED_AT",
                "ROTATE_AFTER"
            );
            for k in rows {
                println!(
                    "{:<36} {:<10} {:<12} {:>4} {:<9} {:<10} {:<20} {:<20} {:<20} {}",
                    k.id,
                    k.provider,
                    k.environment,
                    k.version,
                    k.status,
                    k.rotation_schedule,
                    when(Some(k.created_at)),
                    when(k.activated_at),
                    when(k.rotate_after),
                    when(k.revoked_at)
                );
            }
        }
        KeysCommand::Rotate {
            provider,
            environment,
        } => {
            let job = apikey::rotation_job(&provider, &environment, Actor::Cli);
            registry(config)?.check(&job)?;
            let (pool, _) = connect(config, Embedded::Attach).await?;
            if creds::active_api_key(&pool, &provider, &environment)
                .await
                .map_err(user_error)?
                .is_none()
            {
                bail!(
                    "no active {provider} key in {environment}: set one with `penguin-jobs keys set {provider}`"
                );
            }
            let id = queue::enqueue(&pool, &job).await.map_err(user_error)?;
            println!("{id}");
        }
    }
    Ok(())
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
                secrets::MASTER_KEY_ENV
            );
        }
    }
    Ok(())
}

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
    for r in rows {
        println!(
            "{:>8} {} {:<20} {:<8} {:<7} {:<16} {:<36} {}",
            r.id,
            when(Some(r.at)),
            r.event,
            r.actor,
            r.outcome,
            r.subject_type,
            r.subject_id.as_deref().unwrap_or("-"),
            r.detail
        );
    }
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
    for r in rows {
        print_record(&serde_json::to_value(&r)?);
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn every_schedule_parses_to_a_name_the_key_store_knows() {
        for name in apikey::SCHEDULES {
            assert_eq!(parse_schedule(name).unwrap().as_str(), name);
        }
        assert_eq!(
            parse_schedule("weekly").unwrap_err(),
            "\"weekly\" is not monthly, quarterly or never"
        );
    }
}
