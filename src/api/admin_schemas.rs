//! Doctype schemas and the release of invalid messages, in the admin API:
//! `POST|GET /admin/api/schemas`, `DELETE /admin/api/schemas/{id}`,
//! `POST /admin/api/messages/{id}/revalidate` and its bulk form
//! `POST /admin/api/messages/revalidate` (every invalid message of a doctype).
//!
//! Changes need an admin (`admin_auth::admin`); listing is open to every signed-in user.
//! The audit log records the changes, as for every admin route.

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::admin_auth::{admin, any_admin};
use super::deliveries::env_param;
use super::inbound::{errors_view, transmission_refs};
use super::{body, ctx, finish, ok, parse_id, parse_json, read_body, rfc3339, with_state};
use super::{BodyStream, Ctx};
use crate::error::{ApiError, InvalidExt};
use crate::model::{media_essence, parse_doctype, parse_media_type, parse_short_text, Status};
use crate::store::records::{SchemaRec, ValidationErrorRec};
use crate::store::{now_ms, MessageRec};
use crate::validation::{Payload, SchemaError, MAX_SCHEMA_BYTES};
use crate::AppState;

/// A schema body: the JSON Schema itself and some room around it.
const BODY_LIMIT: u64 = MAX_SCHEMA_BYTES as u64 + 16 * 1024;
/// Most content types one schema lists.
const MAX_CONTENT_TYPES: usize = 32;
/// Invalid messages one bulk call looks at; a call that reaches it says `more`.
const BULK_LIMIT: usize = 10_000;
/// Messages validated and written per writer job in a bulk call.
const BULK_BATCH: usize = 100;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let b = move || b.clone();
    let s = move || with_state(state.clone());
    let create = warp::path!("admin" / "api" / "schemas")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(create)
        .map(finish);
    let list = warp::path!("admin" / "api" / "schemas")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list)
        .map(finish);
    let delete = warp::path!("admin" / "api" / "schemas" / String)
        .and(warp::delete())
        .and(s())
        .and(ctx())
        .then(delete)
        .map(finish);
    let revalidate_all = warp::path!("admin" / "api" / "messages" / "revalidate")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(revalidate_all)
        .map(finish);
    let revalidate = warp::path!("admin" / "api" / "messages" / String / "revalidate")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(revalidate)
        .map(finish);
    create
        .or(list)
        .unify()
        .or(delete)
        .unify()
        .or(revalidate_all)
        .unify()
        .or(revalidate)
        .unify()
        .boxed()
}

fn schema_view(r: &SchemaRec) -> Value {
    let json_schema = r
        .json_schema
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok());
    json!({
        "id": r.id,
        "doctype": r.doctype,
        "version": r.version,
        "jsonSchema": json_schema,
        "xmlRoot": r.xml_root,
        "maxBytes": r.max_bytes,
        "contentTypes": r.content_types,
        "createdAt": rfc3339(r.created_at),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSchema {
    doctype: Option<String>,
    version: Option<String>,
    json_schema: Option<Value>,
    xml_root: Option<String>,
    max_bytes: Option<u64>,
    content_types: Option<Vec<String>>,
}

/// An XML element name: 1–255 characters, none of them space, markup or a quote.
fn parse_xml_name(raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.chars().count() <= 255
        && !raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>&\"'/=".contains(c));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(
            "xmlRoot",
            "xmlRoot must be an element name of 1-255 characters without spaces or markup",
        ))
    }
}

async fn create(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    admin(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: NewSchema = parse_json(&ctx, &bytes)?;
    let doctype = req
        .doctype
        .ok_or_else(|| ApiError::invalid("doctype", "doctype is required"))?;
    let doctype = parse_doctype(&doctype).field("doctype")?;
    let version = match req.version.as_deref() {
        None | Some("") | Some("*") => "*".to_owned(),
        Some(v) => parse_short_text(v, 64).field("version")?,
    };
    let json_schema = match req.json_schema {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Object(_) | Value::Bool(_))) => {
            let text = serde_json::to_string(&v)
                .map_err(|e| ApiError::bad_request(e.to_string()).field("jsonSchema"))?;
            if text.len() > MAX_SCHEMA_BYTES {
                return Err(ApiError::invalid(
                    "jsonSchema",
                    format!("a JSON Schema may have at most {MAX_SCHEMA_BYTES} bytes"),
                ));
            }
            Some(text)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "jsonSchema must be a JSON Schema: an object or a boolean",
            )
            .field("jsonSchema"))
        }
    };
    let xml_root = req.xml_root.as_deref().map(parse_xml_name).transpose()?;
    if req.max_bytes == Some(0) {
        return Err(ApiError::invalid("maxBytes", "maxBytes must be at least 1"));
    }
    let raw_types = req.content_types.unwrap_or_default();
    if raw_types.len() > MAX_CONTENT_TYPES {
        return Err(ApiError::invalid(
            "contentTypes",
            format!("a schema lists at most {MAX_CONTENT_TYPES} content types"),
        ));
    }
    let mut content_types = Vec::with_capacity(raw_types.len());
    for t in &raw_types {
        content_types.push(media_essence(&parse_media_type(t).field("contentTypes")?));
    }
    content_types.dedup();
    let rec = SchemaRec {
        id: Uuid::now_v7(),
        doctype,
        version,
        json_schema,
        xml_root,
        max_bytes: req.max_bytes,
        content_types,
        created_at: now_ms(),
    };
    let replaced = match state.schemas.put(&state.store, rec.clone()).await {
        Ok(r) => r,
        Err(SchemaError::Compile(why)) => {
            let mut e = ApiError::bad_request(why).field("jsonSchema");
            e.code = "schema_invalid";
            return Err(e);
        }
        Err(SchemaError::Store(e)) => return Err(e.into()),
    };
    let mut view = schema_view(&rec);
    view["replaced"] = json!(replaced.map(|r| r.id));
    Ok(ok(StatusCode::CREATED, view))
}

async fn list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    any_admin(&state, &ctx)?;
    let all: Vec<Value> = state.schemas.list().iter().map(schema_view).collect();
    Ok(ok(StatusCode::OK, all))
}

async fn delete(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    admin(&state, &ctx)?;
    let id = parse_id(&id, "schema")?;
    state
        .schemas
        .delete(&state.store, id)
        .await?
        .ok_or_else(|| ApiError::not_found("schema"))?;
    Ok(ok(StatusCode::OK, json!({"id": id, "deleted": true})))
}

/// Validates one invalid message again (`?env=test` for test traffic). If it passes it
/// is queued for its receivers; if not, its errors are the fresh ones.
async fn revalidate(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    admin(&state, &ctx)?;
    let env = env_param(&ctx)?;
    let id = parse_id(&id, "message")?;
    let m = state
        .store
        .message(env, id)?
        .ok_or_else(|| ApiError::not_found("message"))?;
    if m.status != Status::Invalid {
        return Err(ApiError::conflict(format!(
            "only invalid messages are validated again; this one is {}",
            m.status.as_str()
        )));
    }
    let payload = state.store.payload(&m)?;
    let errors = state
        .schemas
        .validate(&[Payload {
            doctype: &m.doctype,
            version: m.version.as_deref(),
            content_type: &m.content_type,
            payload: &payload,
        }])
        .await
        .pop()
        .unwrap_or_default();
    let (passed, failed) = if errors.is_empty() {
        (vec![id], Vec::new())
    } else {
        (Vec::new(), vec![(id, errors)])
    };
    let released = state
        .store
        .revalidated(env, passed, failed, now_ms())
        .await?;
    state.wake_receivers(env, &released);
    let m = state
        .store
        .message(env, id)?
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "id": m.id,
            "env": env,
            "status": m.status,
            "errors": errors_view(&m.validation_errors),
            "transmissions": transmission_refs(&m),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bulk {
    doctype: Option<String>,
    version: Option<String>,
}

/// Validates again every invalid message of a doctype (and version, if given) in
/// `?env=` (live by default), [`BULK_BATCH`] per writer job, at most [`BULK_LIMIT`] per
/// call.
async fn revalidate_all(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    admin(&state, &ctx)?;
    let env = env_param(&ctx)?;
    let bytes = read_body(&ctx, body, 16 * 1024).await?;
    let req: Bulk = parse_json(&ctx, &bytes)?;
    let doctype = req
        .doctype
        .ok_or_else(|| ApiError::invalid("doctype", "doctype is required"))?;
    let doctype = parse_doctype(&doctype).field("doctype")?;
    let version = req
        .version
        .filter(|v| !v.is_empty())
        .map(|v| parse_short_text(&v, 64).field("version"))
        .transpose()?;

    let store = Arc::clone(&state.store);
    let d = doctype.clone();
    let ids = tokio::task::spawn_blocking(move || store.invalid_messages(env, &d, BULK_LIMIT))
        .await
        .map_err(|_| ApiError::unavailable("the search was interrupted"))??;
    let more = ids.len() >= BULK_LIMIT;
    let (mut checked, mut released_count) = (0usize, 0usize);
    for chunk in ids.chunks(BULK_BATCH) {
        let (store, schemas) = (Arc::clone(&state.store), Arc::clone(&state.schemas));
        let (chunk, version) = (chunk.to_vec(), version.clone());
        // Reading payloads and validating them is blocking work.
        let verdicts = tokio::task::spawn_blocking(move || {
            let mut out: Vec<(Uuid, Vec<ValidationErrorRec>)> = Vec::new();
            for id in chunk {
                let Some(m) = store.message(env, id)? else {
                    continue;
                };
                if m.status != Status::Invalid
                    || version
                        .as_ref()
                        .is_some_and(|v| m.version.as_ref() != Some(v))
                {
                    continue;
                }
                let errors = match schemas.lookup(&m.doctype, m.version.as_deref()) {
                    None => Vec::new(),
                    Some(schema) => match store.payload(&m) {
                        Ok(payload) => schema.check(&m.content_type, &payload),
                        // A damaged payload stays invalid; the others go on.
                        Err(crate::store::StoreError::Corrupt(why)) => {
                            tracing::error!(message = %id, %why, "a payload fails its checksum");
                            continue;
                        }
                        Err(e) => return Err(e),
                    },
                };
                out.push((id, errors));
            }
            Ok::<_, crate::store::StoreError>(out)
        })
        .await
        .map_err(|_| ApiError::unavailable("the validation was interrupted"))??;
        checked += verdicts.len();
        let (passed, failed): (Vec<_>, Vec<_>) =
            verdicts.into_iter().partition(|(_, e)| e.is_empty());
        let passed = passed.into_iter().map(|(id, _)| id).collect();
        let released: Vec<MessageRec> = state
            .store
            .revalidated(env, passed, failed, now_ms())
            .await?;
        state.wake_receivers(env, &released);
        released_count += released.len();
    }
    Ok(ok(
        StatusCode::OK,
        json!({
            "doctype": doctype,
            "version": version,
            "env": env,
            "checked": checked,
            "released": released_count,
            "stillInvalid": checked - released_count,
            "more": more,
        }),
    ))
}
