//! Tracking, the sender's view of what became of its requests: the search
//! (`POST /api/v1/tracking`), one request or message with its history
//! (`GET /api/v1/requests/{id}`, `GET /api/v1/messages/{id}`), and cancelling a message
//! not yet delivered (`POST /api/v1/messages/{id}/cancel`, also for admins under
//! `/admin/api/messages/{id}/cancel`).
//!
//! The search body is parsed by hand rather than by serde derive, so that each mistake
//! gets a 400 naming its place (`search[2].by`) and, for names, the allowed values.

use std::collections::HashSet;

use http::StatusCode;
use serde::Serialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::{
    auth, body, ctx, finish, ok, parse_id, parse_json_value, read_body, rfc3339, with_state,
    BodyStream, Ctx,
};
use crate::error::ApiError;
use crate::model::{Env, Status};
use crate::store::tracking::MAX_ROWS;
use crate::store::{
    now_ms, CancelOutcome, MessageRec, StatusSummary, TrackedRequest, TrackingQuery, TrackingSort,
};
use crate::AppState;

/// The criteria a search may name.
const CRITERIA: &str = "messageType, messageStatus, receivedDate, id, externalReference";
/// What a search may sort by.
const SORTS: &str = "receivedDate, processedDate, batchReference";
/// The largest search body read.
const MAX_BODY: u64 = 256 * 1024;
/// Most values one criterion may list.
const MAX_VALUES: usize = 1000;
/// Most requests one page may hold.
const MAX_PAGE_SIZE: u64 = 1000;
const DAY_MS: i64 = 86_400_000;

mod query;
pub(super) use query::{parse_dates, parse_search, parse_status, parse_time};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let search = warp::path!("api" / "v1" / "tracking")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(search)
        .map(finish);
    let request = warp::path!("api" / "v1" / "requests" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(get_request)
        .map(finish);
    let message = warp::path!("api" / "v1" / "messages" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(get_message)
        .map(finish);
    let cancel = warp::path!("api" / "v1" / "messages" / String / "cancel")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(cancel)
        .map(finish);
    let admin_cancel = warp::path!("admin" / "api" / "messages" / String / "cancel")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(admin_cancel)
        .map(finish);
    search
        .or(request)
        .unify()
        .or(message)
        .unify()
        .or(cancel)
        .unify()
        .or(admin_cancel)
        .unify()
        .boxed()
}

/// Bodies read (and ignored) by the endpoints that take none: cancellation.
pub(super) const IGNORED_BODY: u64 = 64 * 1024;

/// `queued` until anything happened, `processing` while a message is queued or being
/// delivered, `cancelled` when all were cancelled, else `complete`: every message was
/// delivered, fetched or finished (the summary says how).
fn request_status(s: &StatusSummary) -> &'static str {
    let total = s.total();
    let open = s.count(Status::Queued) + s.count(Status::Processing);
    if total > 0 && s.count(Status::Queued) == total {
        "queued"
    } else if open > 0 {
        "processing"
    } else if total > 0 && s.count(Status::Cancelled) == total {
        "cancelled"
    } else {
        "complete"
    }
}

#[derive(Serialize)]
struct Summary {
    total: u32,
    queued: u32,
    processing: u32,
    processed: u32,
    cancelled: u32,
    failed: u32,
    invalid: u32,
    complete: u32,
}

fn summary(s: &StatusSummary) -> Summary {
    Summary {
        total: s.total(),
        queued: s.count(Status::Queued),
        processing: s.count(Status::Processing),
        processed: s.count(Status::Processed),
        cancelled: s.count(Status::Cancelled),
        failed: s.count(Status::Failed),
        invalid: s.count(Status::Invalid),
        complete: s.count(Status::Complete),
    }
}

/// A message's errors: why its payload failed validation (with the place and the schema
/// keyword), then delivery errors.
fn errors(m: &MessageRec) -> Vec<Value> {
    let since = m.history.last().map_or(m.received_at, |(at, _)| *at);
    let invalid = m.validation_errors.iter().map(|e| {
        json!({
            "errorMessage": e.message,
            "pointer": e.pointer,
            "keyword": e.keyword,
            "at": rfc3339(since),
        })
    });
    invalid
        .chain(
            m.errors
                .iter()
                .map(|(at, e)| json!({"errorMessage": e, "at": rfc3339(*at)})),
        )
        .collect()
}

/// A message as a search's payload lists it.
fn payload_item(m: &MessageRec) -> Value {
    json!({
        "id": m.id,
        "externalReference": m.external_reference,
        "messageStatus": m.status,
        "messageType": m.doctype,
        "processedTime": m.processed_at.map(rfc3339),
        "errors": errors(m),
    })
}

fn history(h: &[(i64, Status)]) -> Vec<Value> {
    h.iter()
        .map(|(at, status)| json!({"at": rfc3339(*at), "status": status}))
        .collect()
}

/// One message with its history, errors and transmissions.
pub(super) fn message_view(m: &MessageRec) -> Value {
    let transmissions: Vec<Value> = m
        .transmissions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "uuid": crate::store::records::transmission_uuid(m.id, i),
                "receiver": t.receiver,
                "status": t.status,
                "attempts": t.attempts,
                "deliveredAt": t.delivered_at.map(rfc3339),
                "acknowledgedAt": t.acknowledged_at.map(rfc3339),
                "lastError": t.last_error,
                "history": history(&t.history),
                "historyDropped": t.history_dropped,
            })
        })
        .collect();
    json!({
        "id": m.id,
        "requestId": m.request_id,
        "messageType": m.doctype,
        "version": m.version,
        "externalReference": m.external_reference,
        "contentType": m.content_type,
        "receivedAt": rfc3339(m.received_at),
        "messageStatus": m.status,
        "processedTime": m.processed_at.map(rfc3339),
        "history": history(&m.history),
        "historyDropped": m.history_dropped,
        "errors": errors(m),
        "errorsDropped": m.errors_dropped,
        "transmissions": transmissions,
        "trackingLocation": format!("/api/v1/requests/{}", m.request_id),
    })
}

/// One request of a search's answer.
fn row(r: &TrackedRequest, feed_id: &str, client_name: &str) -> Value {
    let mut v = json!({
        "id": r.request.id,
        "feedId": feed_id,
        "clientName": client_name,
        "batchReference": r.request.batch_reference,
        "receivedDate": rfc3339(r.request.received_at),
        "processedDate": r.processed_at.map(rfc3339),
        "requestStatus": request_status(&r.summary),
        "messageStatusSummary": summary(&r.summary),
        "payload": r.messages.iter().map(payload_item).collect::<Vec<_>>(),
    });
    if r.payload_truncated {
        v["payloadTruncated"] = json!(true);
    }
    v
}

async fn search(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, MAX_BODY).await?;
    let claim = match super::idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let parsed: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_json_value(&ctx, &bytes)?
    };
    let search = parse_search(principal.env, &principal.partner, &parsed, now_ms())?;
    let store = std::sync::Arc::clone(&state.store);
    let query = search.query.clone();
    // Index scans are blocking reads; they must not hold an async worker.
    let page = tokio::task::spawn_blocking(move || store.track(&query))
        .await
        .map_err(|_| ApiError::unavailable("the search was interrupted"))??;
    let dir = state.store.directory();
    let client_name = dir
        .partner(&principal.partner)
        .map_or(principal.partner.as_str(), |p| p.name.as_str());
    let (number, size) = search.paging.unwrap_or((1, MAX_ROWS as u64));
    let total = page.total as u64;
    let requests: Vec<Value> = page
        .rows
        .iter()
        .map(|r| row(r, &principal.partner, client_name))
        .collect();
    let answer = super::idempotency::Answer::ok(
        StatusCode::OK,
        json!({
            "search": search.echo,
            "sorts": search.sort_echo,
            "paging": {
                "number": number,
                "size": size,
                "totalRequests": total,
                "totalPages": total.div_ceil(size),
            },
            "requests": requests,
        }),
    );
    // A search changes nothing: its answer is stored on its own.
    if let Some(c) = &claim {
        c.store_after(&state, &answer).await;
    }
    Ok(answer.into_response())
}

/// One of the caller's requests with each message's history. A request may hold a
/// thousand messages, so they are read on a blocking thread.
async fn get_request(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let id = parse_id(&id, "request")?;
    let store = std::sync::Arc::clone(&state.store);
    let (env, sender) = (principal.env, principal.partner.clone());
    let found = tokio::task::spawn_blocking(move || {
        let Some(request) = store.request(env, &sender, id)? else {
            return Ok(None);
        };
        let mut messages = Vec::with_capacity(request.messages.len());
        for mid in &request.messages {
            messages.extend(store.message(env, *mid)?);
        }
        Ok::<_, crate::store::StoreError>(Some((request, messages)))
    })
    .await
    .map_err(|_| ApiError::unavailable("the request was interrupted"))??;
    let (request, messages) = found.ok_or_else(|| ApiError::not_found("request"))?;
    let mut counts = [0u32; 7];
    let mut processed: Option<i64> = None;
    let mut unprocessed = false;
    for m in &messages {
        if let Some(slot) = Status::ALL.iter().position(|s| *s == m.status) {
            counts[slot] += 1;
        }
        match m.processed_at {
            Some(at) => processed = processed.max(Some(at)),
            None => unprocessed = true,
        }
    }
    let s = StatusSummary(counts);
    Ok(ok(
        StatusCode::OK,
        json!({
            "id": request.id,
            "feedId": principal.partner,
            "batchReference": request.batch_reference,
            "receivedAt": rfc3339(request.received_at),
            "receivedDate": rfc3339(request.received_at),
            "processedDate": if unprocessed { None } else { processed.map(rfc3339) },
            "requestStatus": request_status(&s),
            "messageStatusSummary": summary(&s),
            "messages": messages.iter().map(message_view).collect::<Vec<_>>(),
        }),
    ))
}

/// One of the caller's messages (as its sender) with its history.
async fn get_message(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let id = parse_id(&id, "message")?;
    let m = state
        .store
        .message(principal.env, id)?
        .filter(|m| m.sender == principal.partner)
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(ok(StatusCode::OK, message_view(&m)))
}

/// The sender's cancellation. A body, if any, is read and ignored.
async fn cancel(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, IGNORED_BODY).await?;
    let claim = match super::idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let id = parse_id(&id, "message")?;
    let remember = claim.as_ref().map(|c| {
        c.remember(|o: &CancelOutcome| match o {
            CancelOutcome::Done(m) => Some(super::idempotency::Answer::ok(
                StatusCode::OK,
                message_view(m),
            )),
            _ => None,
        })
    });
    cancel_as(&state, principal.env, id, Some(principal.partner), remember).await
}

/// An admin's cancellation (`?env=test` for test traffic).
async fn admin_cancel(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    read_body(&ctx, body, IGNORED_BODY).await?;
    let env = super::deliveries::env_param(&ctx)?;
    let id = parse_id(&id, "message")?;
    cancel_as(&state, env, id, None, None).await
}

async fn cancel_as(
    state: &AppState,
    env: Env,
    id: Uuid,
    sender: Option<String>,
    remember: Option<crate::store::Remember<CancelOutcome>>,
) -> Result<Response, ApiError> {
    match state
        .store
        .cancel(env, id, sender, now_ms(), remember)
        .await?
    {
        CancelOutcome::Done(m) => Ok(ok(StatusCode::OK, message_view(&m))),
        CancelOutcome::Conflict(m) => {
            let mut e = ApiError::conflict(format!(
                "message {} is {} and can no longer be cancelled: a receiver already has it",
                m.id,
                m.status.as_str()
            ));
            e.code = "not_cancellable";
            Err(e)
        }
        CancelOutcome::NotFound => Err(ApiError::not_found("message")),
    }
}

#[cfg(test)]
mod tests;
