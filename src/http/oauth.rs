//! `GET /oauth/callback/{provider}`: where a provider sends the user back after consent.
//!
//! The `state` must be one `oauth authorize` issued for this provider, unused and less than
//! ten minutes old; it is used up and the `oauth.exchange` job enqueued in one transaction.
//! A bad, expired or reused state (or a refused consent) answers 400 and enqueues nothing.
//! The code is stored encrypted under the master key (no master key: 503, nothing used up).
//! Must never call the provider here (the exchange is a job), and never echo the code.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use crate::credentials::connections::seal_code;
use crate::credentials::consume_state;
use crate::queue::NewJob;

/// The kind the callback enqueues.
pub const EXCHANGE_KIND: &str = crate::kind_names::OAUTH_EXCHANGE;

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{text}</p></body></html>"
    );
    (status, Html(body)).into_response()
}

/// The answer to a link that is invalid, expired or used.
fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Authorization failed",
        "This authorization link is invalid, has expired or was already used. Start the connection again.",
    )
}

fn plain_word(s: &str) -> Option<&str> {
    (s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(s)
}

/// The OAuth provider's redirect after the user's consent: the authorization code is
/// stored sealed and its exchange enqueued. Answers a small HTML page.
#[utoipa::path(get, path = "/oauth/callback/{provider}", tag = "oauth",
    params(("provider" = String, Path, description = "the OAuth provider's name"),
        ("state" = Option<String>, Query, description = "the state of the authorization link"),
        ("code" = Option<String>, Query, description = "the authorization code"),
        ("error" = Option<String>, Query, description = "the provider's refusal")),
    responses(
        (status = 200, description = "connected", content_type = "text/html", body = String),
        (status = 400, description = "an invalid, expired or used link", content_type = "text/html", body = String),
        (status = 503, description = "no master key, or the database is away", content_type = "text/html", body = String)))]
pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(raw_state) = query
        .get("state")
        .filter(|s| !s.is_empty() && s.len() <= 512)
    else {
        return invalid_link();
    };
    let state_hash = crate::secrets::sha256_hex(raw_state);
    let code = query
        .get("code")
        .filter(|c| !c.is_empty() && c.len() <= 4096);
    let refused = query.get("error");
    // a refusal still uses the state up, so the link cannot be replayed
    let code_kept = if refused.is_some() { None } else { code };
    if refused.is_none() && code.is_none() {
        return invalid_link();
    }
    // the code is a credential until redeemed: it is only ever stored encrypted
    let keyring = state.keyring.clone();
    if code_kept.is_some() && keyring.is_none() {
        tracing::error!(provider = %provider, "oauth callback: no master key configured, the code cannot be kept");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not configured",
            "This service cannot store connections yet (no master key). Contact its operators.",
        );
    }
    let result = consume_state(
        &state.pool,
        &provider,
        &state_hash,
        |state_id| match (code_kept, &keyring) {
            (Some(code), Some(keyring)) => seal_code(keyring, state_id, code)
                .map(Some)
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        },
        |state_id, tenant| {
            code_kept.map(|_| NewJob {
                tenant_id: Some(tenant),
                unique_key: Some(crate::queue::reserved_key(format!(
                    "{EXCHANGE_KIND}:{state_id}"
                ))),
                ..NewJob::new(EXCHANGE_KIND, serde_json::json!({ "state_id": state_id }))
            })
        },
    )
    .await;
    answer(result, refused.map(String::as_str), &provider)
}

/// The page for what the callback did: consumed (`Some`), unknown (`None`), or failed.
fn answer(
    result: Result<Option<Option<i64>>, crate::queue::Error>,
    refused: Option<&str>,
    provider: &str,
) -> Response {
    match result {
        Ok(None) => {
            tracing::info!(provider = %provider, "oauth callback with an unknown, expired or used state");
            invalid_link()
        }
        Ok(Some(_)) if refused.is_some() => {
            let why = refused.and_then(|r| plain_word(r)).unwrap_or("refused");
            page(
                StatusCode::BAD_REQUEST,
                "Authorization refused",
                &format!("The provider answered: {why}. Nothing was connected."),
            )
        }
        Ok(Some(_)) => page(
            StatusCode::OK,
            "Connected",
            "The account is being connected. You can close this window.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "oauth callback failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The connection could not be recorded right now. Start it again in a minute.",
            )
        }
    }
}
