//! Bulk operations: `POST /admin/api/bulk-operations` `{action, filter}` starts a cancel
//! or redelivery of every message the filter matches (the criteria of
//! `GET /admin/api/messages`), answered at once with `202`; the work runs in the
//! background (`worker::bulk`). `GET /admin/api/bulk-operations/{id}` follows its
//! progress, `GET /admin/api/bulk-operations` lists them, newest first.

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::{
    auth, body, ctx, finish, ok, parse_id, parse_json, read_body, rfc3339, with_state, BodyStream,
    Ctx,
};
use super::{id_cursor, limit_param};
use crate::error::ApiError;
use crate::store::bulk::{BulkAction, BulkRec, BulkState};
use crate::store::now_ms;
use crate::AppState;

const BODY_LIMIT: u64 = 64 * 1024;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let s = move || with_state(state.clone());
    let create = warp::path!("admin" / "api" / "bulk-operations")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b)
        .then(create)
        .map(finish);
    let list = warp::path!("admin" / "api" / "bulk-operations")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list)
        .map(finish);
    let one = warp::path!("admin" / "api" / "bulk-operations" / String)
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(one)
        .map(finish);
    create.or(list).unify().or(one).unify().boxed()
}

fn view(r: &BulkRec) -> Value {
    let q = &r.query;
    json!({
        "id": r.id,
        "action": r.action.as_str(),
        "state": r.state.as_str(),
        "filter": {
            "env": q.env,
            "sender": q.sender,
            "receiver": q.receiver,
            "messageType": q.types,
            "messageStatus": q.statuses,
            "receivedFrom": q.received.map(|(from, _)| rfc3339(from)),
            "receivedBefore": q.received.map(|(_, to)| rfc3339(to)),
            "id": q.ids,
        },
        "total": (r.state != BulkState::Counting).then_some(r.total),
        "counted": r.total,
        "processed": r.processed,
        "changed": r.changed,
        "actor": r.actor,
        "createdAt": rfc3339(r.created_at),
        "updatedAt": rfc3339(r.updated_at),
        "finishedAt": r.finished_at.map(rfc3339),
        "error": r.error,
        "location": format!("/admin/api/bulk-operations/{}", r.id),
    })
}

#[derive(Deserialize)]
struct Create {
    action: Option<String>,
    filter: Option<BTreeMap<String, Value>>,
}

/// A filter value: a string (comma-separated, as in a query) or a list of strings.
fn filter_values(v: &Value, name: &str) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) => Ok(s.split(',').map(str::to_owned).collect()),
        Value::Array(items) if items.len() <= 1000 => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::bad_request(format!("filter.{name} must hold strings")).field(name)
            }),
        _ => Err(ApiError::bad_request(format!(
            "filter.{name} must be a string or a list of strings"
        ))
        .field(name)),
    }
}

async fn create(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let actor = auth::admin(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: Create = parse_json(&ctx, &bytes)?;
    let action = req
        .action
        .as_deref()
        .and_then(BulkAction::parse)
        .ok_or_else(|| ApiError::invalid("action", "action must be cancel or redeliver"))?;
    let filter = req.filter.unwrap_or_default();
    let mut values = BTreeMap::new();
    for (k, v) in &filter {
        values.insert(k.clone(), filter_values(v, k)?);
    }
    let query = super::messages::parse_query(|name| values.get(name).cloned())?;
    if !query.refs.is_empty() {
        return Err(ApiError::invalid(
            "externalReference",
            "a bulk operation filters by env, sender, receiver, messageType, messageStatus, \
             receivedDate and id; list the messages of a reference and act on them one by one",
        ));
    }
    let now = now_ms();
    let id = Uuid::now_v7();
    let rec = BulkRec {
        id,
        action,
        query,
        state: BulkState::Counting,
        // Messages taken in after this moment are not part of the operation.
        position: id,
        total: 0,
        processed: 0,
        changed: 0,
        actor: actor.name(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        error: None,
    };
    state.store.put_bulk(rec.clone()).await?;
    state.store.bulk_created.notify_one();
    let mut res = ok(StatusCode::ACCEPTED, view(&rec));
    if let Ok(v) = http::HeaderValue::from_str(&format!("/admin/api/bulk-operations/{id}")) {
        res.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(res)
}

async fn list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let limit = limit_param(&ctx, 50, 500)?;
    let before = id_cursor(&ctx)?;
    let items = state.store.bulk_list(before, limit)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(ok(
        StatusCode::OK,
        json!({"items": items.iter().map(view).collect::<Vec<_>>(), "nextCursor": next}),
    ))
}

async fn one(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let id = parse_id(&id, "bulk operation")?;
    let rec = state
        .store
        .bulk(id)?
        .ok_or_else(|| ApiError::not_found("bulk operation"))?;
    Ok(ok(StatusCode::OK, view(&rec)))
}
