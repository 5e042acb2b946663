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

/// A 400 about the search body, naming the place at fault.
fn bad(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).field(field)
}

/// A parsed search: the store query, and what to echo back.
pub(super) struct Search {
    query: TrackingQuery,
    echo: Vec<Value>,
    sort_echo: Value,
    /// `(number, size)` as asked; `None`: every row (up to [`MAX_ROWS`]).
    paging: Option<(u64, u64)>,
}

/// Reads `{search, paging, sorts}`; every part is optional.
pub(super) fn parse_search(
    env: Env,
    sender: &str,
    body: &Value,
    now: i64,
) -> Result<Search, ApiError> {
    let empty = Map::new();
    let root = match body {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => {
            return Err(bad(
                "invalid_search",
                "body",
                "the body must be a JSON object",
            ))
        }
    };
    let mut query = TrackingQuery {
        env,
        sender: sender.to_owned(),
        types: Vec::new(),
        statuses: Vec::new(),
        received: None,
        ids: Vec::new(),
        refs: Vec::new(),
        sort: TrackingSort::Received,
        descending: true,
        skip: 0,
        take: MAX_ROWS,
    };
    let mut echo = Vec::new();
    let mut seen = HashSet::new();
    let criteria = match root.get("search") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            return Err(bad(
                "invalid_search",
                "search",
                "search must be a list of {by, value} criteria",
            ))
        }
    };
    for (i, c) in criteria.iter().enumerate() {
        let at = |name: &str| format!("search[{i}].{name}");
        let by = c.get("by").and_then(Value::as_str).ok_or_else(|| {
            bad(
                "invalid_search",
                at("by"),
                format!("each criterion needs a `by`, one of {CRITERIA}"),
            )
        })?;
        if !matches!(
            by,
            "messageType" | "messageStatus" | "receivedDate" | "id" | "externalReference"
        ) {
            return Err(bad(
                "invalid_search",
                at("by"),
                format!("unknown criterion {by:?}; use one of {CRITERIA}"),
            ));
        }
        if !seen.insert(by) {
            return Err(bad(
                "invalid_search",
                at("by"),
                format!("{by} is given twice; give it once with a list of values"),
            ));
        }
        let raw = c.get("value").unwrap_or(&Value::Null);
        let values = string_values(raw, &at("value"))?;
        match by {
            "messageType" => query.types = values,
            "messageStatus" => {
                query.statuses = values
                    .iter()
                    .map(|v| parse_status(v, &at("value")))
                    .collect::<Result<_, _>>()?
            }
            "receivedDate" => query.received = Some(parse_dates(&values, &at("value"))?),
            "id" => {
                query.ids = values
                    .iter()
                    .map(|v| {
                        v.trim().parse::<Uuid>().map_err(|_| {
                            bad(
                                "invalid_search",
                                at("value"),
                                format!("{v:?} is not an id (a UUID)"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => {
                if let Some(v) = values.iter().find(|v| v.chars().count() > 256) {
                    return Err(bad(
                        "invalid_search",
                        at("value"),
                        format!(
                            "references are at most 256 characters; {:.40}… is longer",
                            v
                        ),
                    ));
                }
                query.refs = values
            }
        }
        echo.push(json!({"by": by, "value": raw}));
    }
    if query.received.is_none() && query.ids.is_empty() && query.refs.is_empty() {
        // Without a date, an id or a reference, the search covers today (UTC).
        let day = now.div_euclid(DAY_MS) * DAY_MS;
        query.received = Some((day, day + DAY_MS));
        let date = rfc3339(day).get(..10).unwrap_or_default().to_owned();
        echo.push(json!({"by": "receivedDate", "value": date}));
    }

    let paging = match root.get("paging") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            let number = number_field(p.get("number"), "paging.number", 1, u64::MAX / 2, 1)?;
            let size = number_field(p.get("size"), "paging.size", 1, MAX_PAGE_SIZE, 10)?;
            query.skip = usize::try_from((number - 1).saturating_mul(size)).unwrap_or(usize::MAX);
            query.take = size as usize;
            Some((number, size))
        }
        Some(_) => {
            return Err(bad(
                "invalid_paging",
                "paging",
                "paging must be an object {number, size}",
            ))
        }
    };

    let sorts = match root.get("sorts") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            return Err(bad(
                "invalid_sort",
                "sorts",
                "sorts must be a list of {by, order}",
            ))
        }
    };
    if sorts.len() > 1 {
        return Err(bad(
            "invalid_sort",
            "sorts[1]",
            "one sort is supported; ties are ordered by receivedDate",
        ));
    }
    let mut sort_by = "receivedDate";
    if let Some(s) = sorts.first() {
        let by = s.get("by").and_then(Value::as_str).unwrap_or_default();
        (query.sort, query.descending) = match by {
            "receivedDate" => (TrackingSort::Received, true),
            "processedDate" => (TrackingSort::Processed, true),
            "batchReference" => (TrackingSort::BatchReference, false),
            _ => {
                return Err(bad(
                    "invalid_sort",
                    "sorts[0].by",
                    format!("cannot sort by {by:?}; use one of {SORTS}"),
                ))
            }
        };
        sort_by = by;
        match s.get("order") {
            None | Some(Value::Null) => {}
            Some(Value::String(o)) if o.eq_ignore_ascii_case("asc") => query.descending = false,
            Some(Value::String(o)) if o.eq_ignore_ascii_case("desc") => query.descending = true,
            Some(other) => {
                return Err(bad(
                    "invalid_sort",
                    "sorts[0].order",
                    format!("order must be asc or desc, not {other}"),
                ))
            }
        }
    }
    let order = if query.descending { "desc" } else { "asc" };
    Ok(Search {
        query,
        echo,
        sort_echo: json!([{"by": sort_by, "order": order}]),
        paging,
    })
}

/// A criterion's value: one string or a non-empty list of strings.
fn string_values(raw: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let list = match raw {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("invalid_search", field, "values must be strings"))?,
        _ => {
            return Err(bad(
                "invalid_search",
                field,
                "value must be a string or a list of strings",
            ))
        }
    };
    if list.is_empty() {
        return Err(bad("invalid_search", field, "give at least one value"));
    }
    if list.len() > MAX_VALUES {
        return Err(bad(
            "invalid_search",
            field,
            format!("at most {MAX_VALUES} values"),
        ));
    }
    Ok(list)
}

/// A status name, in any case.
pub(super) fn parse_status(raw: &str, field: &str) -> Result<Status, ApiError> {
    Status::ALL
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            bad(
                "invalid_search",
                field,
                format!("unknown status {raw:?}; use one of {}", names.join(", ")),
            )
        })
}

/// A point in time: an RFC 3339 date-time, or a date (`2026-11-29`, its midnight UTC).
/// Returns unix ms and whether only a date was given.
pub(super) fn parse_time(raw: &str, field: &str) -> Result<(i64, bool), ApiError> {
    let raw = raw.trim();
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(((t.unix_timestamp_nanos() / 1_000_000) as i64, false));
    }
    if let Ok(d) = Date::parse(raw, format_description!("[year]-[month]-[day]")) {
        return Ok((d.midnight().assume_utc().unix_timestamp() * 1000, true));
    }
    Err(bad(
        "invalid_date",
        field,
        format!("{raw:?} is not a date (2026-11-29) or an RFC 3339 time (2026-11-29T08:00:00Z)"),
    ))
}

/// `receivedDate`: one value is that whole day (UTC); two are a range, `from` to `to`
/// inclusive (a date as `to` includes that whole day). Returns `[from, to)` in unix ms.
pub(super) fn parse_dates(values: &[String], field: &str) -> Result<(i64, i64), ApiError> {
    match values {
        [one] => {
            let (at, _) = parse_time(one, field)?;
            let day = at.div_euclid(DAY_MS) * DAY_MS;
            Ok((day, day + DAY_MS))
        }
        [from, to] => {
            let (from, _) = parse_time(from, field)?;
            let (to, date_only) = parse_time(to, field)?;
            let end = if date_only { to + DAY_MS } else { to + 1 };
            if end <= from {
                return Err(bad(
                    "invalid_date",
                    field,
                    "the range ends before it starts",
                ));
            }
            Ok((from, end))
        }
        _ => Err(bad(
            "invalid_date",
            field,
            "give one date, or two: [from, to]",
        )),
    }
}

/// A paging number: a JSON number or a numeric string (`"1"`), within `min..=max`.
fn number_field(
    raw: Option<&Value>,
    field: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ApiError> {
    let n = match raw {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    n.filter(|n| (min..=max).contains(n)).ok_or_else(|| {
        let range = if max >= u64::MAX / 2 {
            format!("a whole number from {min}")
        } else {
            format!("a whole number from {min} to {max}")
        };
        bad("invalid_paging", field, format!("{field} must be {range}"))
    })
}

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
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<Search, ApiError> {
        // 2026-11-29T12:00:00Z
        parse_search(Env::Live, "ACME", &body, 1_795_953_600_000)
    }

    #[test]
    fn no_criteria_means_today() {
        let s = parse(json!({})).unwrap();
        let (from, to) = s.query.received.unwrap();
        assert_eq!(rfc3339(from), "2026-11-29T00:00:00Z");
        assert_eq!(to - from, DAY_MS);
        assert!(s.query.descending);
        assert_eq!(s.query.sort, TrackingSort::Received);
        assert_eq!(s.query.take, MAX_ROWS);
    }

    #[test]
    fn paging_takes_numbers_and_numeric_strings() {
        let s = parse(json!({"paging": {"number": "3", "size": "10"}})).unwrap();
        assert_eq!((s.query.skip, s.query.take), (20, 10));
        let s = parse(json!({"paging": {"number": 1, "size": 1000}})).unwrap();
        assert_eq!((s.query.skip, s.query.take), (0, 1000));
        for bad in [
            json!({"number": 0}),
            json!({"size": 1001}),
            json!({"size": "x"}),
            json!({"number": -1}),
            json!({"size": 2.5}),
        ] {
            let e = parse(json!({"paging": bad})).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.field.unwrap().starts_with("paging."));
        }
    }

    #[test]
    fn dates_are_days_or_inclusive_ranges() {
        let one = |v: Value| parse(json!({"search": [{"by": "receivedDate", "value": v}]}));
        let (f, t) = one(json!("2018-10-01")).unwrap().query.received.unwrap();
        assert_eq!(
            (rfc3339(f).as_str(), t - f),
            ("2018-10-01T00:00:00Z", DAY_MS)
        );
        let (f, t) = one(json!([
            "2018-10-01T00:00:00+00:00",
            "2018-10-02T00:00:00+00:00"
        ]))
        .unwrap()
        .query
        .received
        .unwrap();
        assert_eq!(t - f, DAY_MS + 1, "the end is included");
        let (f, t) = one(json!(["2018-10-01", "2018-10-03"]))
            .unwrap()
            .query
            .received
            .unwrap();
        assert_eq!(t - f, 3 * DAY_MS, "a date as the end includes its day");
        for bad in [
            json!("yesterday"),
            json!(["2018-10-03", "2018-10-01"]),
            json!([]),
            json!(["a", "b", "c"]),
            json!(5),
        ] {
            let e = one(bad.clone()).err().unwrap();
            assert_eq!(e.field.as_deref(), Some("search[0].value"), "{bad}");
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_allowed_ones() {
        let e = parse(json!({"search": [{"by": "id", "value": [Uuid::nil().to_string()]}, {"by": "recievedDate", "value": "2018-10-01"}]}))
            .err()
            .unwrap();
        assert_eq!(e.field.as_deref(), Some("search[1].by"));
        assert!(e.message.contains("receivedDate"), "{}", e.message);
        let e = parse(json!({"sorts": [{"by": "receivedDate", "order": "78452e72-0fcb-4455-afc3-68fadb22646f"}]}))
            .err()
            .unwrap();
        assert_eq!(e.field.as_deref(), Some("sorts[0].order"));
        assert!(e.message.contains("asc or desc"));
        let e = parse(json!({"sorts": [{"by": "size"}]})).err().unwrap();
        assert!(e.message.contains("batchReference"));
        let e = parse(json!({"search": [{"by": "messageStatus", "value": "done"}]}))
            .err()
            .unwrap();
        assert!(e.message.contains("complete"), "{}", e.message);
        let s =
            parse(json!({"search": [{"by": "messageStatus", "value": ["Failed", "COMPLETE"]}]}))
                .unwrap();
        assert_eq!(s.query.statuses, vec![Status::Failed, Status::Complete]);
    }

    #[test]
    fn request_status_follows_the_summary() {
        let mut c = [0u32; 7];
        c[0] = 2;
        assert_eq!(request_status(&StatusSummary(c)), "queued");
        c[3] = 1;
        assert_eq!(request_status(&StatusSummary(c)), "processing");
        c[0] = 0;
        c[4] = 1;
        assert_eq!(request_status(&StatusSummary(c)), "complete");
        assert_eq!(
            request_status(&StatusSummary([0, 0, 0, 0, 0, 0, 3])),
            "cancelled"
        );
    }
}
