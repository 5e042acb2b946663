//! Messages across all partners: `GET /admin/api/messages` (the tracking criteria plus
//! sender and receiver, newest first), `GET /admin/api/messages/{id}` (with its payload's
//! metadata, status history, transmissions and every delivery attempt),
//! `GET /admin/api/messages/{id}/payload` (the raw bytes) and
//! `POST /admin/api/messages/{id}/redeliver`. Cancellation is in `api::tracking`, beside
//! the sender's own.

use http::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::tracking::{message_view, parse_dates, parse_status};
use super::super::{auth, ctx, finish, ok, parse_id, rfc3339, with_state, Ctx};
use super::{env_filter, id_cursor, limit_param, MAX_SCAN};
use crate::error::ApiError;
use crate::model::{parse_partner_code, Env, Status};
use crate::store::listing::MessageQuery;
use crate::store::records::transmission_uuid;
use crate::store::{now_ms, MessageRec};
use crate::AppState;

/// Most values one criterion may list.
const MAX_VALUES: usize = 100;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let s = move || with_state(state.clone());
    let list = warp::path!("admin" / "api" / "messages")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list)
        .map(finish);
    let one = warp::path!("admin" / "api" / "messages" / String)
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(one)
        .map(finish);
    let payload = warp::path!("admin" / "api" / "messages" / String / "payload")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(payload)
        .map(finish);
    let redeliver = warp::path!("admin" / "api" / "messages" / String / "redeliver")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(redeliver)
        .map(finish);
    list.or(one)
        .unify()
        .or(payload)
        .unify()
        .or(redeliver)
        .unify()
        .boxed()
}

/// Reads the message criteria from `get` (query parameters, or a bulk operation's
/// filter): `env` (live by default), `sender`, `receiver`, and the tracking criteria
/// `messageType`, `messageStatus`, `receivedDate` (a day, or `from,to`), `id` and
/// `externalReference`, each a comma-separated list.
pub(super) fn parse_query(
    get: impl Fn(&str) -> Option<Vec<String>>,
) -> Result<MessageQuery, ApiError> {
    let list = |name: &str| -> Result<Vec<String>, ApiError> {
        let values: Vec<String> = get(name)
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if values.len() > MAX_VALUES || values.iter().any(|v| v.len() > 256) {
            return Err(ApiError::bad_request(format!(
                "{name}: at most {MAX_VALUES} values of at most 256 bytes"
            ))
            .field(name));
        }
        Ok(values)
    };
    let one = |name: &str| -> Result<Option<String>, ApiError> {
        let mut v = list(name)?;
        if v.len() > 1 {
            return Err(ApiError::bad_request(format!("{name} takes one value")).field(name));
        }
        Ok(v.pop())
    };
    let partner = |name: &str| -> Result<Option<String>, ApiError> {
        one(name)?
            .map(|p| {
                parse_partner_code(&p)
                    .map_err(|e| ApiError::bad_request(format!("{name} {}", e.0)).field(name))
            })
            .transpose()
    };
    let env = match one("env")? {
        None => Env::Live,
        Some(e) => Env::parse(&e)
            .ok_or_else(|| ApiError::bad_request("env must be live or test").field("env"))?,
    };
    let statuses = list("messageStatus")?
        .iter()
        .map(|s| parse_status(s, "messageStatus"))
        .collect::<Result<Vec<Status>, _>>()?;
    let dates = list("receivedDate")?;
    let received = if dates.is_empty() {
        None
    } else {
        Some(parse_dates(&dates, "receivedDate")?)
    };
    let ids = list("id")?
        .iter()
        .map(|i| {
            i.parse::<Uuid>()
                .map_err(|_| ApiError::bad_request(format!("id {i:?} is not a UUID")).field("id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MessageQuery {
        env,
        sender: partner("sender")?,
        receiver: partner("receiver")?,
        types: list("messageType")?,
        statuses,
        received,
        ids,
        refs: list("externalReference")?,
    })
}

/// Query parameters as lists, split at commas.
fn from_params(ctx: &Ctx) -> impl Fn(&str) -> Option<Vec<String>> + '_ {
    |name| {
        ctx.param(name)
            .map(|v| v.split(',').map(str::to_owned).collect())
    }
}

/// A message as listings show it.
pub(super) fn summary(m: &MessageRec) -> Value {
    json!({
        "id": m.id,
        "requestId": m.request_id,
        "env": m.env,
        "sender": m.sender,
        "messageType": m.doctype,
        "version": m.version,
        "externalReference": m.external_reference,
        "contentType": m.content_type,
        "payloadBytes": m.payload.len,
        "messageStatus": m.status,
        "receivedAt": rfc3339(m.received_at),
        "processedTime": m.processed_at.map(rfc3339),
        "transmissions": m
            .transmissions
            .iter()
            .enumerate()
            .map(|(i, t)| json!({
                "uuid": transmission_uuid(m.id, i),
                "receiver": t.receiver,
                "status": t.status,
                "attempts": t.attempts,
            }))
            .collect::<Vec<_>>(),
    })
}

/// `GET /admin/api/messages`: newest first.
async fn list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let q = parse_query(from_params(&ctx))?;
    let limit = limit_param(&ctx, 50, 500)?;
    let before = id_cursor(&ctx)?;
    let store = std::sync::Arc::clone(&state.store);
    let page =
        tokio::task::spawn_blocking(move || store.list_messages(&q, before, limit, MAX_SCAN))
            .await
            .map_err(|_| ApiError::unavailable("the listing did not finish"))??;
    Ok(ok(
        StatusCode::OK,
        json!({
            "items": page.items.iter().map(summary).collect::<Vec<_>>(),
            "nextCursor": page.next,
        }),
    ))
}

/// A message by id: in `?env=` when given, else in either environment.
fn find(state: &AppState, ctx: &Ctx, id: &str) -> Result<MessageRec, ApiError> {
    let id = parse_id(id, "message")?;
    let envs = match env_filter(ctx)? {
        Some(e) => vec![e],
        None => vec![Env::Live, Env::Test],
    };
    for env in envs {
        if let Some(m) = state.store.message(env, id)? {
            return Ok(m);
        }
    }
    Err(ApiError::not_found("message"))
}

/// `GET /admin/api/messages/{id}`.
async fn one(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let m = find(&state, &ctx, &id)?;
    let mut v = message_view(&m);
    let batch = state
        .store
        .request(m.env, &m.sender, m.request_id)?
        .and_then(|r| r.batch_reference);
    let mut transmissions = Vec::with_capacity(m.transmissions.len());
    let views = v["transmissions"].as_array().cloned().unwrap_or_default();
    for (i, mut t) in views.into_iter().enumerate() {
        let attempts: Vec<Value> = state
            .store
            .attempts(m.env, transmission_uuid(m.id, i))?
            .into_iter()
            .map(|(n, a)| {
                json!({
                    "attempt": n,
                    "at": rfc3339(a.at),
                    "url": a.url,
                    "status": a.status,
                    "latencyMs": a.latency_ms,
                    "response": a.response,
                    "error": a.error,
                })
            })
            .collect();
        if let Some(o) = t.as_object_mut() {
            o.insert("attemptLog".into(), Value::Array(attempts));
        }
        transmissions.push(t);
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("env".into(), json!(m.env));
        o.insert("sender".into(), json!(m.sender));
        o.insert("batchReference".into(), json!(batch));
        o.insert("transmissions".into(), Value::Array(transmissions));
        o.insert(
            "payload".into(),
            json!({
                "contentType": m.content_type,
                "bytes": m.payload.len,
                "crc32": m.payload.crc,
                "location": format!("/admin/api/messages/{}/payload?env={}", m.id, m.env.as_str()),
            }),
        );
    }
    Ok(ok(StatusCode::OK, v))
}

/// `GET /admin/api/messages/{id}/payload`: the bytes as received, with their type.
async fn payload(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let m = find(&state, &ctx, &id)?;
    let store = std::sync::Arc::clone(&state.store);
    let rec = m.clone();
    let bytes = tokio::task::spawn_blocking(move || store.payload(&rec))
        .await
        .map_err(|_| ApiError::unavailable("the payload read did not finish"))??;
    let mut res = Response::new(bytes.into());
    let ctype = http::HeaderValue::from_str(&m.content_type)
        .unwrap_or(http::HeaderValue::from_static("application/octet-stream"));
    res.headers_mut().insert(http::header::CONTENT_TYPE, ctype);
    res.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    res.headers_mut().insert(
        http::header::CONTENT_DISPOSITION,
        http::HeaderValue::from_static("attachment"),
    );
    Ok(res)
}

/// `POST /admin/api/messages/{id}/redeliver`: every failed transmission of the message
/// is sent again; 409 when none failed.
async fn redeliver(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let m = find(&state, &ctx, &id)?;
    let targets: Vec<(Uuid, usize)> = m
        .transmissions
        .iter()
        .enumerate()
        .filter(|(_, t)| t.status == Status::Failed)
        .map(|(i, _)| (m.id, i))
        .collect();
    if targets.is_empty() {
        let mut e = ApiError::conflict(format!(
            "message {} has no failed transmission to redeliver; it is {}",
            m.id,
            m.status.as_str()
        ));
        e.code = "not_redeliverable";
        return Err(e);
    }
    let n = state.store.redeliver(m.env, targets, now_ms()).await?;
    let m = state.store.message(m.env, m.id)?.unwrap_or(m);
    let mut v = summary(&m);
    if let Some(o) = v.as_object_mut() {
        o.insert("requeued".into(), json!(n));
    }
    Ok(ok(StatusCode::OK, v))
}
