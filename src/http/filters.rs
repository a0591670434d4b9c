//! Webhook filters (`[[providers.NAME.filters]]`): which verified events get a processing
//! job. Pure: an event and the filters in, a yes or no out.
//!
//! Must never drop an event from storage: a filtered event is still stored raw (and
//! counted), it only gets no job.

use serde_json::Value;

use crate::config::WebhookFilter;

/// True when `filters` is empty, or some filter names this event type (or `"*"`) and all
/// its conditions hold.
pub fn wanted(filters: &[WebhookFilter], event_type: Option<&str>, event: &Value) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            (f.event == "*" || Some(f.event.as_str()) == event_type)
                && f.conditions
                    .iter()
                    .all(|(path, want)| lookup(event, path) == Some(want))
        })
}

/// The value at a dot-separated path (`data.object.currency`, `items.0.id`).
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(event: &str, conditions: Value) -> WebhookFilter {
        WebhookFilter {
            event: event.into(),
            conditions: serde_json::from_value(conditions).unwrap(),
        }
    }

    #[test]
    fn no_filters_lets_everything_through() {
        assert!(wanted(&[], Some("anything"), &json!({})));
    }

    #[test]
    fn a_filter_matches_on_type_and_every_condition() {
        let event = json!({"data": {"object": {"currency": "usd", "livemode": true}}});
        let usd = [filter(
            "payment_intent.succeeded",
            json!({"data.object.currency": "usd", "data.object.livemode": true}),
        )];
        assert!(wanted(&usd, Some("payment_intent.succeeded"), &event));
        assert!(!wanted(&usd, Some("payment_intent.payment_failed"), &event));
        let eur = [filter("*", json!({"data.object.currency": "eur"}))];
        assert!(!wanted(&eur, Some("payment_intent.succeeded"), &event));
        let any = [filter("*", json!({}))];
        assert!(wanted(&any, None, &event));
        let missing = [filter("*", json!({"data.object.nope": null}))];
        assert!(
            !wanted(&missing, None, &event),
            "a missing field is not null"
        );
    }

    #[test]
    fn paths_index_arrays() {
        let event = json!({"items": [{"id": "a"}, {"id": "b"}]});
        assert!(wanted(
            &[filter("*", json!({"items.1.id": "b"}))],
            None,
            &event
        ));
    }
}
