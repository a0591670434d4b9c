//! `oauth`: start a connection (prints the URL to send the user to), list and disconnect
//! connections.
//!
//! Must never print a token or a code.

use super::*;

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
            let mut table = Table::new(&[
                "ID",
                "TENANT",
                "PROVIDER",
                "STATUS",
                "ACCOUNT",
                "EXPIRES_AT",
                "LAST_ERROR",
            ]);
            for r in rows {
                let account = r.account_email.clone().unwrap_or(r.account_id);
                table.row([
                    r.id.to_string(),
                    r.tenant_id.to_string(),
                    r.provider,
                    r.status,
                    account,
                    when(r.expires_at),
                    r.last_error.unwrap_or_else(|| "-".into()),
                ]);
            }
            table.print();
        }
    }
    Ok(())
}
