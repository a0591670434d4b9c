//! The OpenAPI 3.1 documents both listeners serve at [`PATH`], generated from the code:
//! each route's `#[utoipa::path]` and the types it answers with (utoipa), and for
//! `POST /v1/jobs` one request schema per job kind, its payload's JSON Schema taken from
//! the kind's type (schemars, through [`super::EnqueueCheck::payload_schemas`]). A
//! TypeScript backend generates a typed client from the shim's document.
//!
//! Must never describe a route the router does not serve: the operations come from the
//! same `routes!` calls that mount the handlers.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Where each listener serves its document.
pub const PATH: &str = "/v1/openapi.json";

/// One kind's payload schema, as the shim's document lists it.
#[derive(Debug, Clone)]
pub struct KindSchema {
    pub kind: String,
    /// Internal kinds need a token that names them.
    pub internal: bool,
    /// JSON Schema 2020-12 (schemars), with its own `$defs`.
    pub schema: Value,
}

/// A bearer-token security scheme of this name, for `#[openapi(modifiers(..))]`.
pub struct BearerScheme(pub &'static str);

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            self.0,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `utoipa`'s document as JSON, with this build's version.
pub fn finish(doc: utoipa::openapi::OpenApi, version: &str) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    doc["info"]["version"] = json!(version);
    doc
}

/// Answers `GET /v1/openapi.json` (no token) with `doc`.
pub async fn serve(doc: Arc<Value>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(doc.as_ref().clone()),
    )
        .into_response()
}

/// The component name of `kind`'s payload schema (`payload.http.request`).
fn payload_name(kind: &str) -> String {
    format!("payload.{kind}")
}

/// Puts each kind's payload schema into `components.schemas` (its `$defs` beside it) and
/// makes the request body of `POST /v1/jobs` one of an `EnqueueRequest` per kind: the
/// job's fields (from `NewJob`, under `new_job_schema`) with `kind` fixed and `payload`
/// that kind's schema.
pub fn add_job_kinds(doc: &mut Value, kinds: &[KindSchema], new_job_schema: &str) {
    let mut schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let fields = schemas
        .get(new_job_schema)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut variants = Vec::new();
    for k in kinds {
        let name = payload_name(&k.kind);
        let payload = hoist_defs(k.schema.clone(), &mut schemas);
        schemas.insert(name.clone(), payload);
        let mut properties = fields.clone();
        properties.insert("kind".into(), json!({ "type": "string", "const": k.kind }));
        properties.insert(
            "payload".into(),
            json!({ "$ref": format!("#/components/schemas/{name}") }),
        );
        properties.insert(
            "wait".into(),
            json!({
                "type": ["string", "null"],
                "description": "Answer once the job is final, waiting at most this long \
                    (a duration such as \"10s\", at most 60s)"
            }),
        );
        let request = format!("enqueue.{}", k.kind);
        let mut variant = json!({
            "type": "object",
            "title": k.kind,
            "properties": properties,
            "required": ["kind", "payload"],
            "additionalProperties": false,
        });
        if k.internal {
            variant["description"] =
                json!("An internal kind: only a token that names it may enqueue it");
        }
        schemas.insert(request.clone(), variant);
        variants.push(json!({ "$ref": format!("#/components/schemas/{request}") }));
    }
    schemas.insert(
        "EnqueueRequest".into(),
        json!({
            "description": "A job: its kind, the kind's payload, and optional queue, run_at, \
                priority, max_attempts, unique_key, tenant_id and wait",
            "oneOf": variants,
        }),
    );
    doc["components"]["schemas"] = Value::Object(schemas);
    if let Some(body) =
        doc.pointer_mut("/paths/~1v1~1jobs/post/requestBody/content/application~1json")
    {
        body["schema"] = json!({ "$ref": "#/components/schemas/EnqueueRequest" });
    }
}

/// `schema` without `$schema` and `$defs`: its definitions go to `schemas` (a name taken
/// by another definition gets the schema's title prefixed) and its references follow.
fn hoist_defs(mut schema: Value, schemas: &mut Map<String, Value>) -> Value {
    let Some(object) = schema.as_object_mut() else {
        return schema;
    };
    object.remove("$schema");
    let defs = object
        .remove("$defs")
        .and_then(|d| d.as_object().cloned())
        .unwrap_or_default();
    let prefix = object
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("payload")
        .to_string();
    let mut renamed = Vec::new();
    for (name, def) in defs {
        let target = match schemas.get(&name) {
            Some(existing) if *existing != def => format!("{prefix}.{name}"),
            _ => name.clone(),
        };
        renamed.push((name, target.clone(), def));
    }
    let rewrite = |value: &mut Value| {
        for (name, target, _) in &renamed {
            rewrite_refs(
                value,
                &format!("#/$defs/{name}"),
                &format!("#/components/schemas/{target}"),
            );
        }
    };
    rewrite(&mut schema);
    for (_, target, mut def) in renamed.clone() {
        rewrite(&mut def);
        schemas.insert(target, def);
    }
    schema
}

/// Replaces every `$ref` equal to `from` in `value` with `to`.
fn rewrite_refs(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref" && v.as_str() == Some(from) {
                    *v = json!(to);
                } else {
                    rewrite_refs(v, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, from, to)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payloads_definitions_move_to_the_components_and_its_references_follow() {
        let mut doc = json!({
            "paths": { "/v1/jobs": { "post": { "requestBody": { "content": {
                "application/json": { "schema": {} } } } } } },
            "components": { "schemas": { "NewJob": { "properties": {
                "kind": { "type": "string" }, "queue": { "type": ["string", "null"] } } } } }
        });
        let kinds = [KindSchema {
            kind: "http.request".into(),
            internal: false,
            schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "HttpRequest",
                "type": "object",
                "properties": { "expect_status": { "$ref": "#/$defs/ExpectStatus" } },
                "$defs": { "ExpectStatus": { "type": "integer" } }
            }),
        }];
        add_job_kinds(&mut doc, &kinds, "NewJob");
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["payload.http.request"]["properties"]["expect_status"]["$ref"],
            "#/components/schemas/ExpectStatus"
        );
        assert_eq!(schemas["ExpectStatus"], json!({ "type": "integer" }));
        assert!(schemas["payload.http.request"].get("$schema").is_none());
        let variant = &schemas["enqueue.http.request"];
        assert_eq!(variant["properties"]["kind"]["const"], "http.request");
        assert_eq!(
            variant["properties"]["queue"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/EnqueueRequest"
        );
    }
}
