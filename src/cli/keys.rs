//! `keys`: set, stage, list and rotate provider API keys. Keys are read from standard
//! input, never from an argument (it would land in the shell's history and `ps`).
//!
//! Must never print a key.

use super::*;

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

/// The key piped in; what was read is wiped once it is a [`SecretString`].
fn read_key_from_stdin() -> anyhow::Result<SecretString> {
    let mut text = zeroize::Zeroizing::new(String::with_capacity(4096));
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the key from standard input")?;
    let key = text.trim_end_matches(['\n', '\r']);
    if key.trim().is_empty() {
        bail!("no key on standard input (pipe it in: `penguin-jobs keys set PROVIDER < keyfile`)");
    }
    Ok(SecretString::from(key))
}

fn key_error(e: apikey::KeyError) -> anyhow::Error {
    match e {
        apikey::KeyError::Queue(q) => user_error(q),
        other => other.into(),
    }
}

/// `keys set --schedule`: how often the key is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

/// Parses `--schedule` by the enum's own names; the message names the three choices
/// (clap reports it with the flag and exits 2).
fn parse_schedule(s: &str) -> Result<RotationSchedule, String> {
    <RotationSchedule as clap::ValueEnum>::from_str(s, false)
        .map_err(|_| format!("{s:?} is not monthly, quarterly or never"))
}

pub(super) async fn keys(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Set {
            provider,
            environment,
            schedule,
            meta,
        } => {
            let meta = meta.into_meta(schedule.map(|s| s.as_str().to_string()));
            set(config, &provider, &environment, &meta).await
        }
        KeysCommand::Stage {
            provider,
            environment,
            meta,
        } => stage(config, &provider, &environment, &meta.into_meta(None)).await,
        KeysCommand::List { provider, json } => list(config, provider.as_deref(), json).await,
        KeysCommand::Rotate {
            provider,
            environment,
        } => rotate(config, &provider, &environment).await,
    }
}

/// `keys set`.
async fn set(
    config: &Config,
    provider: &str,
    environment: &str,
    meta: &apikey::KeyMeta,
) -> anyhow::Result<()> {
    let keyring = keyring(config)?;
    let key = read_key_from_stdin()?;
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let (id, version) = apikey::set_key(
        &pool,
        &keyring,
        provider,
        environment,
        &key,
        meta,
        config.api_keys.overlap,
        Actor::Cli,
    )
    .await
    .map_err(key_error)?;
    println!("{provider} key version {version} ({id}) is active in {environment}");
    Ok(())
}

/// `keys stage`.
async fn stage(
    config: &Config,
    provider: &str,
    environment: &str,
    meta: &apikey::KeyMeta,
) -> anyhow::Result<()> {
    let keyring = keyring(config)?;
    let key = read_key_from_stdin()?;
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let (id, version) = apikey::stage_key(
        &pool,
        &keyring,
        provider,
        environment,
        &key,
        meta,
        Actor::Cli,
    )
    .await
    .map_err(key_error)?;
    println!(
        "{provider} key version {version} ({id}) staged in {environment}; the next rotation tests and activates it"
    );
    Ok(())
}

/// `keys list`.
async fn list(config: &Config, provider: Option<&str>, json: bool) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let rows = creds::list_api_keys(&pool, provider)
        .await
        .map_err(user_error)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "PROVIDER",
        "ENVIRONMENT",
        ">VER",
        "STATUS",
        "SCHEDULE",
        "CREATED_AT",
        "ACTIVATED_AT",
        "ROTATE_AFTER",
        "REVOKED_AT",
    ]);
    for k in rows {
        table.row([
            k.id.to_string(),
            k.provider,
            k.environment,
            k.version.to_string(),
            k.status,
            k.rotation_schedule,
            when(Some(k.created_at)),
            when(k.activated_at),
            when(k.rotate_after),
            when(k.revoked_at),
        ]);
    }
    table.print();
    Ok(())
}

/// `keys rotate`: enqueues the rotation now.
async fn rotate(config: &Config, provider: &str, environment: &str) -> anyhow::Result<()> {
    let job = apikey::rotation_job(provider, environment, Actor::Cli);
    registry(config)?.check(&job)?;
    let (pool, _) = connect(config, Embedded::Attach).await?;
    if creds::active_api_key(&pool, provider, environment)
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
