//! The webhook processing kinds (`mailgun.event`, `sendgrid.event`, `stripe.event`) on a
//! real PostgreSQL: inbound events are inserted as the edge stores them, each job runs one
//! attempt through the runtime's `run_attempt`, and the effect tables are checked.

mod support;

use penguin_jobs::jobs::{Deps, Registry};
use penguin_jobs::queue::{ClaimedJob, DeadReason, Outcome};
use penguin_jobs::runtime::run_attempt;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::daemon::{config, count, register_kinds};
use support::fake_provider::{FakeProvider, Reply};

/// A test database and a registry whose handlers have its pool.
struct Env {
    db: support::TestDb,
    registry: Registry,
}

async fn env() -> Env {
    env_with("").await
}

/// [`env`] with `toml` as the daemon's config.
async fn env_with(toml: &str) -> Env {
    let db = support::test_db().await;
    let config = config(toml);
    register_kinds(&db.pool, &config).await;
    let registry =
        Registry::builtin(&config, &Deps::new(db.pool.clone()).unwrap()).expect("registry");
    Env { db, registry }
}

/// Stores an event the way the edge does; returns its inbound id.
async fn inbound(pool: &PgPool, provider: &str, event_id: &str, payload: Value) -> i64 {
    let event_type = match provider {
        "mailgun" => payload.pointer("/event-data/event"),
        "sendgrid" => payload.get("event"),
        _ => payload.get("type"),
    }
    .and_then(Value::as_str)
    .map(str::to_string);
    sqlx::query_scalar(
        "insert into penguin.inbound_events (provider, event_id, event_type, payload, raw)
         values ($1, $2, $3, $4, $5) returning id",
    )
    .bind(provider)
    .bind(event_id)
    .bind(event_type)
    .bind(&payload)
    .bind(payload.to_string().into_bytes())
    .fetch_one(pool)
    .await
    .expect("insert inbound event")
}

/// One attempt of a `kind` job with `payload`.
async fn attempt(registry: &Registry, kind: &str, payload: Value) -> Outcome {
    let now = chrono::Utc::now();
    let job = ClaimedJob {
        id: rand::random::<u32>().into(),
        kind: kind.into(),
        payload,
        attempt: 1,
        max_attempts: 10,
        priority: 0,
        run_at: now,
        tenant_id: None,
        created_at: now,
    };
    run_attempt(registry, job, false).await
}

/// Runs the job of inbound event `id`, which must complete; returns its result.
async fn process(env: &Env, kind: &str, id: i64) -> Value {
    match attempt(&env.registry, kind, json!({ "inbound_event_id": id })).await {
        Outcome::Completed {
            result: Some(result),
            ..
        } => result,
        other => panic!("{kind} of inbound event {id} did not complete: {other:?}"),
    }
}

/// Stores an event and processes it; returns the job's result.
async fn deliver(env: &Env, provider: &str, event_id: &str, payload: Value) -> Value {
    let id = inbound(&env.db.pool, provider, event_id, payload).await;
    process(env, &format!("{provider}.event"), id).await
}

/// Stores and processes a Mailgun event of campaign cmp_42 (see [`mailgun`]).
async fn mg(env: &Env, id: &str, event: &str, recipient: &str, timestamp: f64) -> Value {
    mg_with(env, id, event, recipient, timestamp, json!({})).await
}

/// [`mg`] with more `event-data` fields.
async fn mg_with(
    env: &Env,
    id: &str,
    event: &str,
    recipient: &str,
    timestamp: f64,
    extra: Value,
) -> Value {
    let body = mailgun(id, event, recipient, timestamp, extra);
    deliver(env, "mailgun", id, body).await
}

/// Stores and processes a SendGrid event of campaign cmp_42 (see [`sendgrid`]).
async fn sg(env: &Env, id: &str, event: &str, email: &str, timestamp: i64) -> Value {
    sg_with(env, id, event, email, timestamp, json!({})).await
}

/// [`sg`] with more fields.
async fn sg_with(
    env: &Env,
    id: &str,
    event: &str,
    email: &str,
    timestamp: i64,
    extra: Value,
) -> Value {
    let body = sendgrid(id, event, email, timestamp, extra);
    deliver(env, "sendgrid", id, body).await
}

/// Asserts the status of `recipient` in campaign cmp_42.
async fn assert_status(pool: &PgPool, recipient: &str, expected: &str) {
    let status = status_of(pool, "cmp_42", recipient).await;
    assert_eq!(status.as_deref(), Some(expected), "status of {recipient}");
}

/// Stores and processes a Stripe event (see [`stripe`]).
async fn st(env: &Env, id: &str, kind: &str, created: i64, object: Value) -> Value {
    deliver(env, "stripe", id, stripe(id, kind, created, object)).await
}

/// Asserts a dead letter for a data error.
fn assert_dead_data(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::Dead {
            reason: DeadReason::PermanentError,
            error: Some(error),
        } => assert_eq!(error.class, "data", "{what}: {}", error.message),
        other => panic!("{what}: expected a data dead letter, got {other:?}"),
    }
}

/// Every effect table, whole, as JSON.
async fn snapshot(pool: &PgPool) -> Value {
    let mut all = serde_json::Map::new();
    for (table, order) in [
        ("email_events", "id"),
        ("email_status", "campaign_id, recipient"),
        ("suppressions", "address"),
        ("payments", "id"),
        ("invoices", "id"),
        ("connect_accounts", "id"),
        ("webhook_counters", "provider, reason"),
    ] {
        let rows: Value = sqlx::query_scalar(&format!(
            "select coalesce(jsonb_agg(to_jsonb(t) order by {order}), '[]'::jsonb)
               from penguin.{table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        all.insert(table.into(), rows);
    }
    Value::Object(all)
}

/// The rows of `sql`, as a JSON array of objects.
async fn rows(pool: &PgPool, sql: &str) -> Value {
    sqlx::query_scalar(&format!(
        "select coalesce(jsonb_agg(to_jsonb(t)), '[]'::jsonb) from ({sql}) t"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn status_of(pool: &PgPool, campaign: &str, recipient: &str) -> Option<String> {
    sqlx::query_scalar(
        "select status from penguin.email_status where campaign_id = $1 and recipient = $2",
    )
    .bind(campaign)
    .bind(recipient)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn suppression_of(pool: &PgPool, address: &str) -> Option<String> {
    sqlx::query_scalar("select reason from penguin.suppressions where address = $1")
        .bind(address)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// A Mailgun webhook body (as in the signature vectors).
fn mailgun(id: &str, event: &str, recipient: &str, timestamp: f64, extra: Value) -> Value {
    let mut data = json!({
        "id": id,
        "event": event,
        "timestamp": timestamp,
        "recipient": recipient,
        "user-variables": {"campaign-id": "cmp_42", "recipient-id": "rcp_7"},
        "message": {"headers": {"message-id": "20241124.1@mg.example.com"}},
    });
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    json!({
        "signature": {"timestamp": "1732406400", "token": "t", "signature": "s"},
        "event-data": data,
    })
}

/// One SendGrid event (one element of a batch, as in the signature vectors).
fn sendgrid(id: &str, event: &str, email: &str, timestamp: i64, extra: Value) -> Value {
    let mut e = json!({
        "email": email,
        "timestamp": timestamp,
        "event": event,
        "sg_event_id": id,
        "sg_message_id": "sg_msg_1.filter0001",
        "campaignId": "cmp_42",
        "recipientId": "rcp_8",
    });
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    e
}

/// A Stripe event.
fn stripe(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "type": kind, "created": created, "livemode": false,
        "data": {"object": object},
    })
}

#[tokio::test]
async fn mailgun_events_land_in_events_status_and_suppressions() {
    let env = env().await;
    let pool = &env.db.pool;

    let r = mg(&env, "mg_1", "delivered", "Ada@Example.com", 1732406400.5).await;
    assert_eq!(r, json!({"effects": ["email_event", "email_status"]}));
    let row: (String, String, Option<String>, Option<String>, String, i64) = sqlx::query_as(
        "select provider, event_type, campaign_id, provider_message_id, recipient,
                (extract(epoch from occurred_at) * 1000)::bigint
           from penguin.email_events",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "mailgun".into(),
            "delivered".into(),
            Some("cmp_42".into()),
            Some("20241124.1@mg.example.com".into()),
            "ada@example.com".into(),
            1_732_406_400_500
        )
    );
    assert_status(pool, "ada@example.com", "delivered").await;

    mg(&env, "mg_2", "opened", "ada@example.com", 1732406500.0).await;
    mg(&env, "mg_3", "clicked", "ada@example.com", 1732406600.0).await;
    assert_status(pool, "ada@example.com", "clicked").await;

    let r = mg_with(
        &env,
        "mg_4",
        "failed",
        "bob@example.com",
        1732406400.0,
        json!({"severity": "permanent", "reason": "bounce"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"effects": ["email_event", "email_status", "suppression"]})
    );
    assert_status(pool, "bob@example.com", "bounced").await;

    mg(&env, "mg_5", "complained", "cy@example.com", 1732406400.0).await;
    mg(&env, "mg_6", "unsubscribed", "di@example.com", 1732406400.0).await;
    assert_status(pool, "cy@example.com", "complained").await;
    assert_status(pool, "di@example.com", "unsubscribed").await;
    assert_eq!(
        count(pool, "select count(*) from penguin.email_events").await,
        6
    );
    assert_eq!(
        count(pool, "select count(*) from penguin.suppressions").await,
        3
    );
}

#[tokio::test]
async fn sendgrid_events_land_in_events_status_and_suppressions() {
    let env = env().await;
    let pool = &env.db.pool;

    // the two events of the signature vector's batch, with snake_case custom args
    let batch: Value = serde_json::from_str(
        r#"[{"email":"ada@example.com","timestamp":1732406400,"event":"delivered","sg_event_id":"sg_evt_1","sg_message_id":"sg_msg_1.filter0001","campaign_id":"cmp_42","recipient_id":"rcp_7"},{"email":"bob@example.com","timestamp":1732406401,"event":"bounce","type":"bounce","reason":"550 5.1.1 user unknown","sg_event_id":"sg_evt_2","sg_message_id":"sg_msg_2.filter0001","campaign_id":"cmp_42","recipient_id":"rcp_8"}]"#,
    )
    .unwrap();
    for event in batch.as_array().unwrap() {
        let id = event["sg_event_id"].as_str().unwrap();
        deliver(&env, "sendgrid", id, event.clone()).await;
    }
    assert_status(pool, "ada@example.com", "delivered").await;
    assert_status(pool, "bob@example.com", "bounced").await;
    let ids: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "select event_type, provider_message_id, recipient_id from penguin.email_events order by id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        ids,
        vec![
            (
                "delivered".into(),
                Some("sg_msg_1".into()),
                Some("rcp_7".into())
            ),
            (
                "bounce".into(),
                Some("sg_msg_2".into()),
                Some("rcp_8".into())
            ),
        ]
    );

    // camelCase custom args, as our sends set them
    for (n, event) in ["processed", "delivered", "open", "click"]
        .into_iter()
        .enumerate()
    {
        let id = format!("sg_c_{n}");
        sg(&env, &id, event, "cy@example.com", 1732406400 + n as i64).await;
    }
    assert_status(pool, "cy@example.com", "clicked").await;
    sg(&env, "sg_s", "spamreport", "di@example.com", 1732406400).await;
    sg(&env, "sg_u", "unsubscribe", "ed@example.com", 1732406400).await;
    sg(
        &env,
        "sg_g",
        "group_unsubscribe",
        "fa@example.com",
        1732406400,
    )
    .await;
    sg(&env, "sg_d", "dropped", "gu@example.com", 1732406400).await;
    assert_status(pool, "di@example.com", "complained").await;
    assert_status(pool, "ed@example.com", "unsubscribed").await;
    assert_status(pool, "fa@example.com", "unsubscribed").await;
    assert_status(pool, "gu@example.com", "dropped").await;
    assert_eq!(suppression_of(pool, "gu@example.com").await, None);
}

#[tokio::test]
async fn stripe_events_land_in_payments_invoices_and_accounts() {
    let env = env().await;
    let pool = &env.db.pool;

    // the signature vector's event
    let vector: Value = serde_json::from_str(
        r#"{"id":"evt_1PenguinTest","object":"event","type":"payment_intent.succeeded","created":1732406400,"livemode":false,"data":{"object":{"id":"pi_3PenguinTest","object":"payment_intent","amount":4900,"currency":"usd","status":"succeeded"}}}"#,
    )
    .unwrap();
    let r = deliver(&env, "stripe", "evt_1PenguinTest", vector).await;
    assert_eq!(r, json!({"effects": ["payment"]}));
    let card = json!({"card": {"last4": "4242", "exp_year": 2030}});
    let error = json!({"message": "Your card was declined.", "code": "card_declined",
                       "payment_method": card});
    let intent = json!({"id": "pi_2", "amount": 100, "currency": "eur", "customer": "cus_1",
                        "last_payment_error": error});
    let mut failed = stripe("evt_f", "payment_intent.payment_failed", 1732406400, intent);
    failed["account"] = json!("acct_1");
    deliver(&env, "stripe", "evt_f", failed).await;
    assert_eq!(
        rows(
            pool,
            "select id, status, amount, currency, customer, account, last_error, last_error_code
               from penguin.payments order by id"
        )
        .await,
        json!([
            {"id": "pi_2", "status": "failed", "amount": 100, "currency": "eur",
             "customer": "cus_1", "account": "acct_1", "last_error": "Your card was declined.",
             "last_error_code": "card_declined"},
            {"id": "pi_3PenguinTest", "status": "succeeded", "amount": 4900, "currency": "usd",
             "customer": null, "account": null, "last_error": null, "last_error_code": null},
        ])
    );
    let stored = snapshot(pool).await.to_string();
    assert!(!stored.contains("4242"), "card data stored: {stored}");

    let paid = json!({"id": "in_1", "status": "paid", "paid": true, "subscription": "sub_1",
                      "amount_due": 900, "amount_paid": 900, "currency": "usd", "customer": "cus_1"});
    st(
        &env,
        "evt_i1",
        "invoice.payment_succeeded",
        1732406400,
        paid,
    )
    .await;
    let open = json!({"id": "in_2", "status": "open", "paid": false, "subscription": "sub_2",
                      "amount_due": 900, "amount_paid": 0, "currency": "usd", "customer": "cus_2"});
    st(&env, "evt_i2", "invoice.payment_failed", 1732406400, open).await;
    assert_eq!(
        rows(
            pool,
            "select id, status, paid, subscription_id, subscription_status, amount_paid
               from penguin.invoices order by id"
        )
        .await,
        json!([
            {"id": "in_1", "status": "paid", "paid": true, "subscription_id": "sub_1",
             "subscription_status": "active", "amount_paid": 900},
            {"id": "in_2", "status": "open", "paid": false, "subscription_id": "sub_2",
             "subscription_status": "past_due", "amount_paid": 0},
        ])
    );

    let acct = json!({"id": "acct_1", "object": "account", "charges_enabled": true,
                      "payouts_enabled": false, "details_submitted": true,
                      "capabilities": {"card_payments": "active", "transfers": "pending"}});
    let mut account = stripe("evt_a1", "account.updated", 1732406400, acct);
    account["account"] = json!("acct_1");
    deliver(&env, "stripe", "evt_a1", account).await;
    let capability = json!({"id": "transfers", "object": "capability", "account": "acct_1",
                            "status": "active"});
    let r = st(&env, "evt_c1", "capability.updated", 1732406500, capability).await;
    assert_eq!(r, json!({"effects": ["connect_account"]}));
    assert_eq!(
        rows(
            pool,
            "select id, tenant_id, charges_enabled, payouts_enabled, details_submitted,
                    capabilities, last_event_id
               from penguin.connect_accounts"
        )
        .await,
        json!([{"id": "acct_1", "tenant_id": null, "charges_enabled": true,
                "payouts_enabled": false, "details_submitted": true,
                "capabilities": {"card_payments": "active", "transfers": "active"},
                "last_event_id": "evt_a1"}])
    );
}

#[tokio::test]
async fn a_late_delivered_after_bounced_keeps_bounced() {
    let env = env().await;
    let pool = &env.db.pool;

    let bounce = mailgun(
        "mg_b",
        "failed",
        "ada@example.com",
        1000.0,
        json!({"severity": "permanent"}),
    );
    deliver(&env, "mailgun", "mg_b", bounce).await;
    // delivered arrives after, with an earlier and with a later timestamp: bounced stays
    let r = mg(&env, "mg_d1", "delivered", "ada@example.com", 900.0).await;
    assert_eq!(r, json!({"effects": ["email_event"]}));
    sg_with(
        &env,
        "sg_d2",
        "delivered",
        "ada@example.com",
        2000,
        json!({"campaignId": "cmp_42"}),
    )
    .await;
    assert_status(pool, "ada@example.com", "bounced").await;
    let (provider, occurred): (String, f64) = sqlx::query_as(
        "select provider, extract(epoch from occurred_at)::float8 from penguin.email_status",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((provider.as_str(), occurred), ("mailgun", 1000.0));

    // an open reported before its delivery stays opened; a later complaint replaces it
    sg(&env, "sg_o", "open", "bob@example.com", 1100).await;
    sg(&env, "sg_dl", "delivered", "bob@example.com", 1000).await;
    assert_status(pool, "bob@example.com", "opened").await;
    sg(&env, "sg_sp", "spamreport", "bob@example.com", 1200).await;
    sg(&env, "sg_cl", "click", "bob@example.com", 1300).await;
    assert_status(pool, "bob@example.com", "complained").await;
    // between final statuses the later event wins
    sg(&env, "sg_un", "unsubscribe", "bob@example.com", 1400).await;
    sg_with(
        &env,
        "sg_bo",
        "bounce",
        "bob@example.com",
        1150,
        json!({"type": "bounce"}),
    )
    .await;
    assert_status(pool, "bob@example.com", "unsubscribed").await;
}

#[tokio::test]
async fn processing_the_same_event_twice_changes_nothing_the_second_time() {
    let env = env().await;
    let pool = &env.db.pool;
    let events = [
        (
            "mailgun",
            "mg_1",
            mailgun(
                "mg_1",
                "failed",
                "ada@example.com",
                1000.0,
                json!({"severity": "permanent"}),
            ),
        ),
        (
            "mailgun",
            "mg_2",
            mailgun("mg_2", "delivered", "bob@example.com", 1000.0, json!({})),
        ),
        (
            "sendgrid",
            "sg_1",
            sendgrid("sg_1", "spamreport", "cy@example.com", 1000, json!({})),
        ),
        (
            "stripe",
            "evt_1",
            stripe(
                "evt_1",
                "payment_intent.payment_failed",
                1000,
                json!({"id": "pi_1", "amount": 5}),
            ),
        ),
        (
            "stripe",
            "evt_2",
            stripe(
                "evt_2",
                "invoice.payment_failed",
                1000,
                json!({"id": "in_1", "subscription": "sub_1"}),
            ),
        ),
        (
            "stripe",
            "evt_3",
            stripe(
                "evt_3",
                "account.updated",
                1000,
                json!({"id": "acct_1", "charges_enabled": true, "capabilities": {"transfers": "active"}}),
            ),
        ),
        (
            "stripe",
            "evt_4",
            stripe(
                "evt_4",
                "capability.updated",
                1000,
                json!({"id": "card_payments", "account": "acct_1", "status": "pending"}),
            ),
        ),
    ];
    let mut ids = Vec::new();
    for (provider, event_id, payload) in events {
        let id = inbound(pool, provider, event_id, payload).await;
        process(&env, &format!("{provider}.event"), id).await;
        ids.push((provider, id));
    }
    let before = snapshot(pool).await;
    for (provider, id) in ids {
        let result = process(&env, &format!("{provider}.event"), id).await;
        assert_eq!(result["effects"], json!([]), "{provider} {id}: {result}");
        assert!(result.get("skipped").is_some(), "{result}");
    }
    assert_eq!(snapshot(pool).await, before);
}

#[tokio::test]
async fn an_older_stripe_event_after_a_newer_one_keeps_the_newer_state() {
    let env = env().await;
    let pool = &env.db.pool;

    // payment: the success from 200 arrives first, then the failure from 100
    let intent = json!({"id": "pi_1", "amount": 500});
    st(&env, "evt_s", "payment_intent.succeeded", 200, intent).await;
    let intent = json!({"id": "pi_1", "amount": 500, "last_payment_error": {"message": "no"}});
    let r = st(&env, "evt_f", "payment_intent.payment_failed", 100, intent).await;
    assert_eq!(r, json!({"effects": [], "skipped": "stale_or_duplicate"}));
    // at the same second a success beats a failure, whatever the order
    st(
        &env,
        "evt_s2",
        "payment_intent.succeeded",
        300,
        json!({"id": "pi_2"}),
    )
    .await;
    st(
        &env,
        "evt_f2",
        "payment_intent.payment_failed",
        300,
        json!({"id": "pi_2"}),
    )
    .await;
    assert_eq!(
        rows(
            pool,
            "select id, status, last_event_id, last_error from penguin.payments order by id"
        )
        .await,
        json!([
            {"id": "pi_1", "status": "succeeded", "last_event_id": "evt_s", "last_error": null},
            {"id": "pi_2", "status": "succeeded", "last_event_id": "evt_s2", "last_error": null},
        ])
    );

    // invoice: the failure from 300 first, then the success from 200
    let invoice = json!({"id": "in_1", "paid": false, "subscription": "sub_1"});
    st(&env, "evt_if", "invoice.payment_failed", 300, invoice).await;
    let invoice = json!({"id": "in_1", "paid": true, "subscription": "sub_1"});
    st(&env, "evt_is", "invoice.payment_succeeded", 200, invoice).await;
    assert_eq!(
        rows(
            pool,
            "select paid, subscription_status, last_event_id from penguin.invoices"
        )
        .await,
        json!([{"paid": false, "subscription_status": "past_due", "last_event_id": "evt_if"}])
    );

    // account: the snapshot from 500 first, then the one from 400
    let account = json!({"id": "acct_1", "charges_enabled": true, "payouts_enabled": true,
                         "capabilities": {"card_payments": "active"}});
    st(&env, "evt_a5", "account.updated", 500, account).await;
    let account = json!({"id": "acct_1", "charges_enabled": false, "payouts_enabled": false,
                         "capabilities": {"card_payments": "inactive"}});
    st(&env, "evt_a4", "account.updated", 400, account).await;
    // an older event about a capability set by a newer one is dropped; about another, kept
    let card = json!({"id": "card_payments", "account": "acct_1", "status": "pending"});
    st(&env, "evt_c3", "capability.updated", 300, card).await;
    let transfers = json!({"id": "transfers", "account": "acct_1", "status": "active"});
    st(&env, "evt_c4", "capability.updated", 450, transfers).await;
    assert_eq!(
        rows(
            pool,
            "select charges_enabled, payouts_enabled, capabilities, last_event_id
               from penguin.connect_accounts"
        )
        .await,
        json!([{"charges_enabled": true, "payouts_enabled": true, "last_event_id": "evt_a5",
                "capabilities": {"card_payments": "active", "transfers": "active"}}])
    );
}

#[tokio::test]
async fn hard_bounces_complaints_and_unsubscribes_suppress_but_soft_bounces_do_not() {
    let env = env().await;
    let pool = &env.db.pool;

    mg_with(
        &env,
        "mg_soft",
        "failed",
        "soft@example.com",
        1.0,
        json!({"severity": "temporary", "reason": "generic"}),
    )
    .await;
    sg_with(
        &env,
        "sg_blocked",
        "bounce",
        "blocked@example.com",
        1,
        json!({"type": "blocked"}),
    )
    .await;
    sg(&env, "sg_deferred", "deferred", "deferred@example.com", 1).await;
    assert_eq!(
        count(pool, "select count(*) from penguin.suppressions").await,
        0
    );
    assert_status(pool, "soft@example.com", "soft_bounced").await;
    assert_status(pool, "blocked@example.com", "soft_bounced").await;

    mg_with(
        &env,
        "mg_hard",
        "failed",
        "Hard@Example.COM",
        2.0,
        json!({"severity": "permanent", "reason": "bounce"}),
    )
    .await;
    sg_with(
        &env,
        "sg_hard",
        "bounce",
        "hard2@example.com",
        2,
        json!({"type": "bounce"}),
    )
    .await;
    mg(&env, "mg_spam", "complained", "spam@example.com", 2.0).await;
    sg(&env, "sg_spam", "spamreport", "spam2@example.com", 2).await;
    mg(&env, "mg_unsub", "unsubscribed", "unsub@example.com", 2.0).await;
    sg(&env, "sg_unsub", "unsubscribe", "unsub2@example.com", 2).await;
    // the first suppression reason wins (the status, final and later, does move)
    let r = sg(&env, "sg_again", "unsubscribe", "spam@example.com", 3).await;
    assert_eq!(r, json!({"effects": ["email_event", "email_status"]}));

    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "select address, reason, provider from penguin.suppressions order by address",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let expected: Vec<(String, String, String)> = [
        ("hard2@example.com", "hard_bounce", "sendgrid"),
        ("hard@example.com", "hard_bounce", "mailgun"),
        ("spam2@example.com", "complaint", "sendgrid"),
        ("spam@example.com", "complaint", "mailgun"),
        ("unsub2@example.com", "unsubscribe", "sendgrid"),
        ("unsub@example.com", "unsubscribe", "mailgun"),
    ]
    .iter()
    .map(|(a, r, p)| (a.to_string(), r.to_string(), p.to_string()))
    .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn events_without_a_campaign_are_recorded_but_not_keyed() {
    let env = env().await;
    let pool = &env.db.pool;
    let mut body = mailgun(
        "mg_1",
        "failed",
        "ada@example.com",
        1.0,
        json!({"severity": "permanent"}),
    );
    body["event-data"]["user-variables"] = json!({});
    let r = deliver(&env, "mailgun", "mg_1", body).await;
    assert_eq!(r, json!({"effects": ["email_event", "suppression"]}));
    assert_eq!(
        count(
            pool,
            "select count(*) from penguin.email_events where campaign_id is null"
        )
        .await,
        1
    );
    assert_eq!(
        count(pool, "select count(*) from penguin.email_status").await,
        0
    );
}

#[tokio::test]
async fn unknown_event_types_are_counted_not_failed() {
    let env = env().await;
    let pool = &env.db.pool;
    let r = deliver(
        &env,
        "mailgun",
        "mg_s1",
        json!({"event-data": {"id": "mg_s1", "event": "stored"}}),
    )
    .await;
    assert_eq!(
        r,
        json!({"ignored": "unknown_type", "event_type": "stored"})
    );
    deliver(
        &env,
        "mailgun",
        "mg_s2",
        json!({"event-data": {"id": "mg_s2", "event": "stored"}}),
    )
    .await;
    sg(&env, "sg_r", "group_resubscribe", "ada@example.com", 1).await;
    st(&env, "evt_r", "charge.refunded", 1, json!({"id": "ch_1"})).await;

    let counters: Vec<(String, String, i64)> = sqlx::query_as(
        "select provider, reason, count from penguin.webhook_counters order by provider",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        counters,
        vec![
            ("mailgun".into(), "unknown_type:stored".into(), 2),
            (
                "sendgrid".into(),
                "unknown_type:group_resubscribe".into(),
                1
            ),
            ("stripe".into(), "unknown_type:charge.refunded".into(), 1),
        ]
    );
    assert_eq!(
        count(pool, "select count(*) from penguin.email_events").await,
        0
    );
}

#[tokio::test]
async fn bad_payloads_and_missing_foreign_or_broken_events_dead_letter_as_data_errors() {
    let env = env().await;
    let pool = &env.db.pool;

    for kind in ["mailgun.event", "sendgrid.event", "stripe.event"] {
        for payload in [
            json!({}),
            json!({"inbound_event_id": "1"}),
            json!({"inbound_event_id": 1, "x": 2}),
        ] {
            assert_dead_data(
                attempt(&env.registry, kind, payload.clone()).await,
                &format!("{kind} {payload}"),
            );
        }
        assert_dead_data(
            attempt(&env.registry, kind, json!({"inbound_event_id": 987654})).await,
            &format!("{kind}: missing inbound event"),
        );
        // refused at enqueue time too
        let job = penguin_jobs::queue::NewJob::new(kind, json!({"inbound_event_id": 0}));
        assert!(env.registry.check(&job).is_err(), "{kind} accepted id 0");
    }

    let stripe_id = inbound(
        pool,
        "stripe",
        "evt_1",
        stripe(
            "evt_1",
            "payment_intent.succeeded",
            1,
            json!({"id": "pi_1"}),
        ),
    )
    .await;
    assert_dead_data(
        attempt(
            &env.registry,
            "mailgun.event",
            json!({"inbound_event_id": stripe_id}),
        )
        .await,
        "a stripe event given to mailgun.event",
    );
    let no_recipient = inbound(
        pool,
        "mailgun",
        "mg_1",
        json!({"event-data": {"event": "delivered", "timestamp": 1.0}}),
    )
    .await;
    assert_dead_data(
        attempt(
            &env.registry,
            "mailgun.event",
            json!({"inbound_event_id": no_recipient}),
        )
        .await,
        "mailgun event without recipient",
    );
    let no_time = inbound(
        pool,
        "sendgrid",
        "sg_1",
        json!({"event": "delivered", "email": "a@b.c"}),
    )
    .await;
    assert_dead_data(
        attempt(
            &env.registry,
            "sendgrid.event",
            json!({"inbound_event_id": no_time}),
        )
        .await,
        "sendgrid event without timestamp",
    );
    let no_object = inbound(
        pool,
        "stripe",
        "evt_2",
        json!({"id": "evt_2", "type": "invoice.payment_failed", "created": 1}),
    )
    .await;
    assert_dead_data(
        attempt(
            &env.registry,
            "stripe.event",
            json!({"inbound_event_id": no_object}),
        )
        .await,
        "stripe event without data.object",
    );
    assert_eq!(snapshot(pool).await, snapshot_of_nothing());
}

/// [`snapshot`] of empty tables.
fn snapshot_of_nothing() -> Value {
    json!({
        "email_events": [], "email_status": [], "suppressions": [], "payments": [],
        "invoices": [], "connect_accounts": [], "webhook_counters": [],
    })
}

/// Parses `body` with the edge's parser for `provider` and stores its events as the edge
/// does (the parsed copy when the raw bytes are not a storable event); returns their ids.
async fn store_as_the_edge(pool: &PgPool, provider: &'static str, body: &[u8]) -> Vec<i64> {
    use penguin_jobs::webhooks;
    let events = match provider {
        "sendgrid" => webhooks::sendgrid::events(body),
        "mailgun" => webhooks::mailgun::events(body),
        _ => webhooks::stripe::events(body),
    }
    .expect("the edge parses the body");
    let rows: Vec<penguin_jobs::queue::NewInboundEvent> = events
        .into_iter()
        .map(|e| penguin_jobs::queue::NewInboundEvent {
            provider,
            job_kind: None,
            event_id: e.event_id,
            event_type: e.event_type,
            headers: json!({}),
            payload: (provider != "stripe" || e.payload_cleaned).then_some(e.payload),
            raw: body.to_vec(),
        })
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    penguin_jobs::queue::store_inbound(&mut conn, &rows)
        .await
        .expect("events with NUL in their text are stored")
        .into_iter()
        .map(|id| id.expect("a new event"))
        .collect()
}

#[tokio::test]
async fn events_with_nul_in_their_text_are_stored_and_processed_with_it_replaced() {
    let env = env().await;
    let pool = &env.db.pool;
    // a bounce reason comes from a remote mail server: `\u0000` is valid JSON, but neither
    // jsonb nor text can hold it
    let sendgrid = br#"[{"email":"bob@example.com","timestamp":1732406401,"event":"bounce","type":"bounce","reason":"550 5.1.1 user\u0000unknown","sg_event_id":"sg_evt_nul","sg_message_id":"sg_msg_nul\u0000.filter0001","campaign_id":"cmp_42","recipient_id":"rcp_\u0000"}]"#;
    let mailgun = br#"{"signature":{"timestamp":"1732406400","token":"t","signature":"s"},"event-data":{"id":"mg_nul","event":"failed","severity":"permanent","reason":"bounce","timestamp":1732406402.5,"recipient":"cy@example.com","delivery-status":{"message":"no such \u0000 mailbox","code":550},"user-variables":{"campaign-id":"cmp_42","recipient-id":"rcp_9"}}}"#;
    let stripe = br#"{"id":"evt_nul","object":"event","type":"payment_intent.payment_failed","created":1732406400,"data":{"object":{"id":"pi_nul","object":"payment_intent","amount":500,"currency":"usd","last_payment_error":{"message":"Your card\u0000 was declined.","code":"card_declined"}}}}"#;

    for (provider, body) in [
        ("sendgrid", &sendgrid[..]),
        ("mailgun", &mailgun[..]),
        ("stripe", &stripe[..]),
    ] {
        for id in store_as_the_edge(pool, provider, body).await {
            process(&env, &format!("{provider}.event"), id).await;
        }
    }
    assert_status(pool, "bob@example.com", "bounced").await;
    assert_status(pool, "cy@example.com", "bounced").await;
    assert_eq!(
        suppression_of(pool, "bob@example.com").await.as_deref(),
        Some("hard_bounce")
    );
    let bob: (Option<String>, Option<String>) = sqlx::query_as(
        "select provider_message_id, recipient_id from penguin.email_events where recipient = 'bob@example.com'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        bob,
        (
            Some("sg_msg_nul\u{fffd}".into()),
            Some("rcp_\u{fffd}".into())
        )
    );
    assert_eq!(
        rows(
            pool,
            "select status, last_error, last_error_code from penguin.payments"
        )
        .await,
        json!([{"status": "failed", "last_error": "Your card\u{fffd} was declined.", "last_error_code": "card_declined"}])
    );
}

/// An env whose Mailgun events are confirmed with the Events API of `fake` before they
/// suppress anyone.
async fn confirming_env(fake: &FakeProvider, dir: &support::TempDir) -> Env {
    let key = dir.secret_file("mailgun.key", "key-mailgun-test");
    env_with(&format!(
        "[providers.mailgun]\napi_key = \"{key}\"\ndomain = \"mg.example.com\"\n\
         base_url = \"{}\"\nconfirm_suppressions = true\n",
        fake.url
    ))
    .await
}

const EVENTS: &str = "/v3/mg.example.com/events";

/// Unix seconds `secs` ago, as Mailgun writes timestamps.
fn ago(secs: i64) -> f64 {
    (chrono::Utc::now().timestamp() - secs) as f64
}

/// One attempt of the `mailgun.event` job of a new complaint by `recipient` at `at`.
async fn complaint_attempt(env: &Env, id: &str, recipient: &str, at: f64) -> Outcome {
    let body = mailgun(id, "complained", recipient, at, json!({}));
    let inbound_id = inbound(&env.db.pool, "mailgun", id, body).await;
    attempt(
        &env.registry,
        "mailgun.event",
        json!({ "inbound_event_id": inbound_id }),
    )
    .await
}

#[tokio::test]
async fn a_mailgun_complaint_unknown_to_the_events_api_suppresses_no_one() {
    let fake = FakeProvider::start().await;
    fake.always(
        EVENTS,
        vec![Reply::status(200, json!({"items": [], "paging": {}}))],
    );
    let dir = support::TempDir::new("mailgun-confirm");
    let env = confirming_env(&fake, &dir).await;
    let at = ago(2 * 3600);

    let outcome = complaint_attempt(&env, "mg_forged", "victim@example.com", at).await;
    let Outcome::Completed {
        result: Some(result),
        ..
    } = outcome
    else {
        panic!("a forged complaint completes: {outcome:?}");
    };
    assert_eq!(result["skipped"], "not confirmed", "{result}");
    assert_eq!(
        suppression_of(&env.db.pool, "victim@example.com").await,
        None
    );
    assert_eq!(
        count(&env.db.pool, "select count(*) from penguin.email_events").await,
        0
    );
    assert_eq!(
        count(&env.db.pool, "select coalesce(sum(count), 0)::bigint from penguin.webhook_counters where provider = 'mailgun' and reason = 'not_confirmed'").await,
        1
    );
    let asked = fake.requests_to(EVENTS);
    assert_eq!(asked.len(), 1);
    let query: std::collections::BTreeMap<_, _> = asked[0].query.iter().cloned().collect();
    let at = at as i64;
    assert_eq!(query["event"], "complained");
    assert_eq!(query["recipient"], "victim@example.com");
    assert_eq!(query["begin"], (at - 60).to_string());
    assert_eq!(query["end"], (at + 61).to_string());
    assert!(
        asked[0]
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic "))
    );

    // a complaint of a minute ago may not be listed yet: asked about again later
    let outcome = complaint_attempt(&env, "mg_young", "victim@example.com", ago(60)).await;
    assert!(matches!(outcome, Outcome::Snooze { .. }), "{outcome:?}");
    assert_eq!(
        suppression_of(&env.db.pool, "victim@example.com").await,
        None
    );
}

#[tokio::test]
async fn a_mailgun_complaint_the_events_api_lists_suppresses_and_its_outage_is_retried() {
    let fake = FakeProvider::start().await;
    let at = ago(600);
    fake.push(
        EVENTS,
        Reply::status(500, json!({"message": "internal error"})),
    );
    fake.always(
        EVENTS,
        vec![Reply::status(
            200,
            json!({"items": [{"id": "mg_real", "event": "complained", "timestamp": at,
                              "recipient": "spam@example.com"}], "paging": {}}),
        )],
    );
    let dir = support::TempDir::new("mailgun-confirm");
    let env = confirming_env(&fake, &dir).await;

    let body = mailgun("mg_real", "complained", "spam@example.com", at, json!({}));
    let id = inbound(&env.db.pool, "mailgun", "mg_real", body).await;
    let payload = json!({ "inbound_event_id": id });
    match attempt(&env.registry, "mailgun.event", payload.clone()).await {
        Outcome::Retry { error, .. } => assert_eq!(error.class, "api", "{}", error.message),
        other => panic!("an Events API outage is retried: {other:?}"),
    }
    assert_eq!(suppression_of(&env.db.pool, "spam@example.com").await, None);
    match attempt(&env.registry, "mailgun.event", payload).await {
        Outcome::Completed { .. } => {}
        other => panic!("the confirmed complaint completes: {other:?}"),
    }
    assert_eq!(
        suppression_of(&env.db.pool, "spam@example.com")
            .await
            .as_deref(),
        Some("complaint")
    );
    // an event that suppresses no one is not asked about
    mg(&env, "mg_ok", "delivered", "ada@example.com", at).await;
    assert_eq!(fake.requests_to(EVENTS).len(), 2);
}
