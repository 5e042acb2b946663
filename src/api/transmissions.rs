//! Receivers' side: poll pending transmissions (with long polling and leases), read one
//! and its raw payload, acknowledge it.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::{
    auth, body, ctx, finish, is_json_media, ok, parse_id, parse_json, read_body, rfc3339,
    with_state, BodyStream, Ctx,
};
use crate::error::ApiError;
use crate::model::Status;
use crate::store::{now_ms, AckOutcome, PollFilter, TransmissionRec};
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let poll = warp::path!("api" / "v1" / "transmissions")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(poll)
        .map(finish);
    let ack = warp::path!("api" / "v1" / "transmissions" / "status" / String)
        .and(warp::put())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(acknowledge)
        .map(finish);
    let detail = warp::path!("api" / "v1" / "transmissions" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(detail)
        .map(finish);
    let payload = warp::path!("api" / "v1" / "transmissions" / String / "payload")
        .and(warp::get())
        .and(with_state(state))
        .and(ctx())
        .then(payload)
        .map(finish);
    poll.or(ack)
        .unify()
        .or(detail)
        .unify()
        .or(payload)
        .unify()
        .boxed()
}

/// A bounded integer query parameter: 400 naming it when it is not a whole number in range.
fn int_param(ctx: &Ctx, name: &str, default: u64, max: u64, min: u64) -> Result<u64, ApiError> {
    match ctx.param(name) {
        None | Some("") => Ok(default),
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be a whole number from {min} to {max}"))
                    .field(name)
            }),
    }
}

fn payload_location(uuid: uuid::Uuid) -> String {
    format!("/api/v1/transmissions/{uuid}/payload")
}

/// The wire form of a transmission. Typed rather than built as a `Value` tree: a poll
/// answers up to 100 of these, and this is its hot path.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    uuid: uuid::Uuid,
    message_id: uuid::Uuid,
    sender: &'a str,
    receiver: &'a str,
    doctype: &'a str,
    version: Option<&'a str>,
    external_reference: Option<&'a str>,
    content_type: &'a str,
    received_at: String,
    status: Status,
    delivery_count: u32,
    lease_until: Option<String>,
    delivered_at: Option<String>,
    acknowledged_at: Option<String>,
    last_error: Option<&'a str>,
    /// When its next push attempt is due; null when none is queued or its endpoint is held.
    next_attempt_at: Option<String>,
    payload_location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload>,
}

/// Deepest JSON payload inlined as JSON: the poll answer wraps it in 3 levels
/// (envelope, list, item), and a parser limited to 128 levels counts the top one.
const INLINE_JSON_DEPTH: usize = super::MAX_JSON_DEPTH - 4;

/// A payload inline: JSON documents as themselves (checked, never re-built), anything
/// else as base64.
#[derive(Serialize)]
#[serde(untagged)]
enum Payload {
    Json(Box<RawValue>),
    Base64(String),
}

/// The wire form of a transmission; `payload` adds the document inline (JSON as JSON,
/// anything else base64).
fn view<'a>(t: &'a TransmissionRec, payload: Option<&Bytes>) -> View<'a> {
    let payload = payload.map(|bytes| {
        let media = t
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        // Inline only what a JSON parser with the common limit of 128 levels reads in
        // this answer: well-formed (checked by `RawValue`) and shallow enough that with the
        // envelope around it the answer stays within 128 levels. Anything else (a payload
        // stored before intake checked JSON, or one of 125-128 levels) goes as base64.
        let raw = (is_json_media(&media) && super::json_depth_within(bytes, INLINE_JSON_DEPTH))
            .then(|| std::str::from_utf8(bytes).ok())
            .flatten()
            .and_then(|text| RawValue::from_string(text.trim().to_owned()).ok());
        match raw {
            Some(json) => ("json", Payload::Json(json)),
            None => (
                "base64",
                Payload::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        }
    });
    View {
        uuid: t.uuid,
        message_id: t.message_id,
        sender: &t.sender,
        receiver: &t.state.receiver,
        doctype: &t.doctype,
        version: t.version.as_deref(),
        external_reference: t.external_reference.as_deref(),
        content_type: &t.content_type,
        received_at: rfc3339(t.received_at),
        status: t.state.status,
        delivery_count: t.state.attempts,
        lease_until: t.state.lease_until.map(rfc3339),
        delivered_at: t.state.delivered_at.map(rfc3339),
        acknowledged_at: t.state.acknowledged_at.map(rfc3339),
        last_error: t.state.last_error.as_deref(),
        next_attempt_at: t
            .state
            .outbox_due
            .filter(|due| *due != crate::store::records::PARKED)
            .and_then(|due| i64::try_from(due).ok())
            .map(rfc3339),
        payload_location: payload_location(t.uuid),
        payload_encoding: payload.as_ref().map(|(e, _)| *e),
        payload: payload.map(|(_, p)| p),
    }
}

async fn poll(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let limit = int_param(&ctx, "limit", 10, 100, 1)? as usize;
    let wait = int_param(&ctx, "wait", 0, 20, 0)?;
    let lease = int_param(&ctx, "lease", 0, 43_200, 0)?;
    let doctype = ctx
        .param("doctype")
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    let filter = PollFilter {
        limit,
        lease_ms: (lease * 1000) as i64,
        doctype,
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let wakeup = state.wakeup(principal.env, &principal.partner, filter.doctype.as_deref());
    let mut shutdown = state.shutdown.clone();
    loop {
        // Register for wake-ups before looking, so an arrival between the look and the
        // wait is not missed.
        let notified = wakeup.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let now = now_ms();
        let claimed = state
            .store
            .claim(principal.env, &principal.partner, &filter, now)
            .await?;
        let now_instant = tokio::time::Instant::now();
        if !claimed.items.is_empty() || now_instant >= deadline || *shutdown.borrow() {
            state.metrics.handed_out(claimed.items.len() as u64);
            let items: Vec<View<'_>> = claimed
                .items
                .iter()
                .map(|(t, p)| view(t, Some(p)))
                .collect();
            return Ok(ok(StatusCode::OK, items));
        }
        // Wake at the deadline, on an arrival, or when a lease that held items back ends.
        let mut until = deadline;
        if let Some(expiry) = claimed.next_expiry {
            let in_ms = (expiry - now).max(0) as u64 + 1;
            until = until.min(now_instant + Duration::from_millis(in_ms));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A transmission its receiver or sender may see; 404 for anyone else.
fn visible(state: &AppState, ctx: &Ctx, id: &str) -> Result<TransmissionRec, ApiError> {
    let principal = auth::partner(state, ctx)?;
    let uuid = parse_id(id, "transmission")?;
    state
        .store
        .transmission(principal.env, uuid)?
        .filter(|t| t.state.receiver == principal.partner || t.sender == principal.partner)
        .ok_or_else(|| ApiError::not_found("transmission"))
}

async fn detail(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let t = visible(&state, &ctx, &id)?;
    Ok(ok(StatusCode::OK, view(&t, None)))
}

async fn payload(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let t = visible(&state, &ctx, &id)?;
    let message = state
        .store
        .message(t.env, t.message_id)?
        .ok_or_else(|| ApiError::not_found("transmission"))?;
    let bytes = state.store.payload(&message)?;
    let mut res = Response::new(bytes.into());
    let ct = http::HeaderValue::from_str(&t.content_type)
        .unwrap_or_else(|_| http::HeaderValue::from_static("application/octet-stream"));
    res.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    Ok(res)
}

#[derive(Deserialize)]
struct AckBody {
    status: Option<String>,
    message: Option<String>,
}

async fn acknowledge(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, 64 * 1024).await?;
    let claim = match super::idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let uuid = parse_id(&id, "transmission")?;
    let ack: AckBody = parse_json(&ctx, &bytes)?;
    let ok_status = match ack.status.as_deref() {
        Some("processed") => true,
        Some("failed") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "status",
                format!("status must be processed or failed, not {other:?}"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "status",
                "status is required (processed or failed)",
            ))
        }
    };
    let note = ack
        .message
        .map(|m| m.chars().take(2000).collect::<String>());
    match state
        .store
        .acknowledge(
            principal.env,
            &principal.partner,
            uuid,
            ok_status,
            note,
            now_ms(),
            claim.as_ref().map(|c| {
                c.remember(|o: &AckOutcome| match o {
                    AckOutcome::Done(t) => Some(super::idempotency::Answer::ok(
                        StatusCode::OK,
                        view(t, None),
                    )),
                    _ => None,
                })
            }),
        )
        .await?
    {
        AckOutcome::Done(t) => {
            state.metrics.acknowledged();
            Ok(ok(StatusCode::OK, view(&t, None)))
        }
        AckOutcome::Conflict(t) => Err(ApiError::conflict(format!(
            "transmission {} was already acknowledged as {}",
            t.uuid,
            t.state.status.as_str()
        ))),
        AckOutcome::NotFound => {
            // The sender may see the transmission but only its receiver may acknowledge it.
            let sender_sees = state
                .store
                .transmission(principal.env, uuid)?
                .is_some_and(|t| t.sender == principal.partner);
            if sender_sees {
                Err(ApiError::forbidden(
                    "only the receiver can acknowledge a transmission",
                ))
            } else {
                Err(ApiError::not_found("transmission"))
            }
        }
    }
}
