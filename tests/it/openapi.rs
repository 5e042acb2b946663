//! The OpenAPI document: served, well-formed, and in step with the routes the server has.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{spawn_app, TestApp};

/// The HTTP methods an OpenAPI path item may hold operations for.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every (method, path template) the server serves, from the `warp::path!` filters of
/// `src/api/*.rs`. Path parameters are named as the document names them.
const SERVED: &[(&str, &str)] = &[
    // system.rs
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/v1/openapi.json"),
    // inbound.rs
    ("post", "/api/v1/inbound"),
    ("post", "/api/v1/requests"),
    // background.rs
    ("get", "/api/v1/background/{id}"),
    ("delete", "/api/v1/background/{id}"),
    ("get", "/api/v1/background/{id}/content"),
    ("get", "/admin/api/jobs"),
    ("post", "/admin/api/jobs/{id}/retry"),
    // tracking.rs
    ("post", "/api/v1/tracking"),
    ("get", "/api/v1/requests/{id}"),
    ("get", "/api/v1/messages/{id}"),
    ("post", "/api/v1/messages/{id}/cancel"),
    ("post", "/admin/api/messages/{id}/cancel"),
    // tokens.rs
    ("post", "/api/v1/auth/token"),
    // subscriptions.rs
    ("post", "/api/v1/subscriptions"),
    ("get", "/api/v1/subscriptions"),
    ("get", "/api/v1/subscriptions/{id}"),
    ("patch", "/api/v1/subscriptions/{id}"),
    ("delete", "/api/v1/subscriptions/{id}"),
    ("post", "/api/v1/subscriptions/{id}/test"),
    // admin_subscriptions.rs
    ("get", "/admin/api/subscriptions"),
    ("get", "/admin/api/subscriptions/{id}"),
    ("patch", "/admin/api/subscriptions/{id}"),
    ("post", "/admin/api/subscriptions/{id}/test"),
    // documents.rs
    ("post", "/api/v1/documents/{doctype}"),
    ("get", "/api/v1/documents/{doctype}/{id}"),
    // transmissions.rs
    ("get", "/api/v1/transmissions"),
    ("put", "/api/v1/transmissions/status/{uuid}"),
    ("get", "/api/v1/transmissions/{uuid}"),
    ("get", "/api/v1/transmissions/{uuid}/payload"),
    // admin_users.rs
    ("post", "/admin/api/login"),
    ("post", "/admin/api/logout"),
    ("get", "/admin/api/me"),
    ("post", "/admin/api/users"),
    ("get", "/admin/api/users"),
    ("delete", "/admin/api/users/{username}"),
    ("put", "/admin/api/users/{username}/password"),
    ("get", "/admin/api/audit"),
    // admin/
    ("get", "/admin/api/messages"),
    ("get", "/admin/api/messages/{id}"),
    ("get", "/admin/api/messages/{id}/payload"),
    ("post", "/admin/api/messages/{id}/redeliver"),
    ("post", "/admin/api/bulk-operations"),
    ("get", "/admin/api/bulk-operations"),
    ("get", "/admin/api/bulk-operations/{id}"),
    ("get", "/admin/api/deliveries"),
    ("get", "/admin/api/jobs/{id}"),
    ("post", "/admin/api/jobs/{id}/cancel"),
    ("post", "/admin/api/partners"),
    ("get", "/admin/api/partners"),
    ("get", "/admin/api/partners/{code}"),
    ("patch", "/admin/api/partners/{code}"),
    ("delete", "/admin/api/partners/{code}"),
    ("post", "/admin/api/partners/{code}/keys"),
    ("get", "/admin/api/partners/{code}/keys"),
    ("delete", "/admin/api/partners/{code}/keys/{id}"),
    ("post", "/admin/api/routes"),
    ("get", "/admin/api/routes"),
    ("delete", "/admin/api/routes/{id}"),
    ("post", "/admin/api/partners/{code}/signing-secret"),
    ("get", "/admin/api/transmissions/{uuid}/attempts"),
    ("post", "/admin/api/transmissions/{uuid}/redeliver"),
    ("post", "/admin/api/partners/{code}/redeliver-failed"),
    ("get", "/admin/api/deliveries/{id}/attempts"),
    ("get", "/admin/api/stats"),
    // admin_schemas.rs
    ("post", "/admin/api/schemas"),
    ("get", "/admin/api/schemas"),
    ("delete", "/admin/api/schemas/{id}"),
    ("post", "/admin/api/messages/{id}/revalidate"),
    ("post", "/admin/api/messages/revalidate"),
];

/// The document as the server serves it.
pub(crate) fn fetch_document(app: &TestApp) -> Value {
    let resp = app.call("GET", "/api/v1/openapi.json", &[], None);
    assert_eq!(
        resp.status,
        200,
        "GET /api/v1/openapi.json: {}",
        String::from_utf8_lossy(&resp.body)
    );
    let content_type = resp
        .headers
        .get("content-type")
        .expect("the OpenAPI document has a content type")
        .to_str()
        .expect("the content type is text");
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    serde_json::from_slice(&resp.body).expect("the OpenAPI document is valid JSON")
}

/// Every (method, path template, operation) of the document.
pub(crate) fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"]
        .as_object()
        .expect("the document has a paths object");
    let mut out = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("path item {path} is not an object"));
        for (key, op) in item {
            if METHODS.contains(&key.as_str()) {
                out.push((key.clone(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// Every `$ref` string anywhere in `v`.
fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "$ref" {
                    if let Value::String(r) = child {
                        out.push(r);
                        continue;
                    }
                }
                collect_refs(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}

/// A concrete path for a template: path parameters become plausible values.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{code}" => "NOPE".to_owned(),
            "{doctype}" => "order".to_owned(),
            s if s.starts_with('{') && s.ends_with('}') => uuid::Uuid::nil().to_string(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn openapi_is_served_and_valid() {
    let app = spawn_app();
    let doc = fetch_document(&app);

    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3."), "openapi version {version}");
    assert_eq!(doc["info"]["title"], "Waybill");
    assert!(
        doc["info"]["version"].is_string(),
        "info.version is a string"
    );

    let ops = operations(&doc);
    assert!(!ops.is_empty(), "the document describes no operation");
    let mut ids = BTreeSet::new();
    for (method, path, op) in &ops {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no responses map"));
        assert!(
            !responses.is_empty(),
            "{method} {path} documents no response"
        );
    }

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(
        !refs.is_empty(),
        "the document uses no $ref (components are expected)"
    );
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("$ref {r} points outside the document"));
        assert!(doc.pointer(pointer).is_some(), "$ref {r} does not resolve");
    }
}

#[test]
fn every_documented_operation_exists() {
    let app = spawn_app();
    let doc = fetch_document(&app);
    for (method, template, op) in operations(&doc) {
        let path = concrete(&template);
        let upper = method.to_ascii_uppercase();
        let resp = if matches!(method.as_str(), "post" | "put" | "patch") {
            app.call(
                &upper,
                &path,
                &[("Content-Type", "application/json")],
                Some(b"{}"),
            )
        } else {
            app.call(&upper, &path, &[], None)
        };
        let body = String::from_utf8_lossy(&resp.body);
        assert_ne!(
            resp.status, 405,
            "{upper} {template} ({path}) is documented but the method is not served: {body}"
        );
        if resp.status == 404 {
            let v: Value = serde_json::from_slice(&resp.body)
                .unwrap_or_else(|e| panic!("{upper} {path}: a 404 that is not JSON ({e}): {body}"));
            let router_404 =
                v["error"]["code"] == "not_found" && v["error"]["message"] == "no such endpoint";
            assert!(
                !router_404,
                "{upper} {template} ({path}) is documented but not served: {body}"
            );
        }
        // Whatever it answered without credentials is an answer the document lists.
        let status = resp.status.to_string();
        assert!(
            op["responses"].get(&status).is_some(),
            "{upper} {template} answered {status}, which its documented responses do not list: {body}"
        );
    }
}

#[test]
fn every_served_route_is_documented() {
    let app = spawn_app();
    let doc = fetch_document(&app);
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let missing: Vec<String> = SERVED
        .iter()
        .filter(|(m, p)| !documented.contains(&(m.to_string(), p.to_string())))
        .map(|(m, p)| format!("{} {p}", m.to_ascii_uppercase()))
        .collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
}
