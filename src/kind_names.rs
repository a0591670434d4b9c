//! The kind strings more than one room names: the shim (`http/`) enqueues these kinds and
//! `jobs/` runs them. Named here once, so the two cannot drift apart while neither
//! imports the other.
//!
//! Must never hold anything but names.

/// A stored Stripe webhook event.
pub const STRIPE_EVENT: &str = "stripe.event";
/// A stored SendGrid webhook event.
pub const SENDGRID_EVENT: &str = "sendgrid.event";
/// A stored Mailgun webhook event.
pub const MAILGUN_EVENT: &str = "mailgun.event";
/// An OAuth authorization code to redeem (enqueued by the callback).
pub const OAUTH_EXCHANGE: &str = "oauth.exchange";
/// `integration.health_check`: the built-in health schedules enqueue it.
pub const HEALTH_CHECK: &str = "integration.health_check";
