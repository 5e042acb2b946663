//! Event subscriptions, the partner's side: `POST/GET /api/v1/subscriptions`,
//! `GET/PATCH/DELETE /api/v1/subscriptions/{id}` and `POST /api/v1/subscriptions/{id}/test`.
//!
//! A subscription belongs to the partner and environment of the credentials that made it;
//! anyone else's id is a 404. Its `authHeader` is stored and sent as `Authorization`, and
//! shown masked from then on; its signing `secret` is shown once, in the creation's answer.
//! The batching and the calls themselves live in `store::subscriptions` and
//! `worker::subscriptions`.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::background::{host_refused, Refused};
use super::idempotency::{self, Answer};
use super::{
    auth, body, ctx, finish, ok, parse_id, parse_json, read_body, rfc3339, with_state, BodyStream,
    Ctx,
};
use crate::error::ApiError;
use crate::store::records::{AttemptRec, SigningSecrets};
use crate::store::subscriptions::{
    subscription_endpoint, MAX_PER_PARTNER, MAX_URL_TEMPLATE, PLACEHOLDER,
};
use crate::store::{
    now_ms, AttemptNote, ChangedBy, EventKind, Principal, SubChange, SubscriptionPatch,
    SubscriptionRec,
};
use crate::worker::delivery::NotMade;
use crate::AppState;

/// The largest request body read.
const BODY_LIMIT: u64 = 16 * 1024;
/// The longest `systemName` and `customer`, in characters.
const MAX_TEXT: usize = 200;
/// The longest `authHeader`, in bytes.
const MAX_AUTH_HEADER: usize = 1024;
/// How much of a test call's answer is shown.
const TEST_RESPONSE_CHARS: usize = 200;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let b = move || b.clone();
    let s = move || with_state(state.clone());
    let create = warp::path!("api" / "v1" / "subscriptions")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(create)
        .map(finish);
    let list = warp::path!("api" / "v1" / "subscriptions")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list)
        .map(finish);
    let get = warp::path!("api" / "v1" / "subscriptions" / String)
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(get_one)
        .map(finish);
    let patch = warp::path!("api" / "v1" / "subscriptions" / String)
        .and(warp::patch())
        .and(s())
        .and(ctx())
        .and(b())
        .then(patch)
        .map(finish);
    let delete = warp::path!("api" / "v1" / "subscriptions" / String)
        .and(warp::delete())
        .and(s())
        .and(ctx())
        .and(b())
        .then(delete)
        .map(finish);
    let test = warp::path!("api" / "v1" / "subscriptions" / String / "test")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(test)
        .map(finish);
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(test)
        .unify()
        .boxed()
}

// ---------------------------------------------------------------------------
// Input

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Create {
    system_name: Option<String>,
    url: Option<String>,
    auth_header: Option<String>,
    customer: Option<String>,
    events: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Patch {
    url: Option<String>,
    /// Absent: unchanged; `null`: removed.
    #[serde(default, deserialize_with = "present")]
    auth_header: Option<Option<String>>,
    events: Option<Vec<String>>,
    active: Option<bool>,
}

/// A field that may be given as `null`: `Some(None)` then, `None` when it is absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A callback URL: http(s) with a host, no credentials, at most [`MAX_URL_TEMPLATE`]
/// characters, the placeholder exactly once and after the host, and a host whose
/// addresses the outbound policy allows now (every call is checked again when it
/// connects).
pub(super) async fn parse_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let bad = |why: String| ApiError::invalid("url", why);
    let url = raw.trim();
    if url.len() > MAX_URL_TEMPLATE {
        return Err(bad(format!(
            "url is longer than {MAX_URL_TEMPLATE} characters"
        )));
    }
    match url.matches(PLACEHOLDER).count() {
        0 => {
            let mut e = bad(format!(
                "url must contain the placeholder {PLACEHOLDER}, which is replaced by the changed ids"
            ));
            e.code = "placeholder_required";
            return Err(e);
        }
        1 => {}
        _ => return Err(bad(format!("url must contain {PLACEHOLDER} only once"))),
    }
    let probe = url.replacen(PLACEHOLDER, "ids", 1);
    let uri: http::Uri = probe
        .parse()
        .map_err(|_| bad("url is not a valid absolute URL".into()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("url must be http:// or https://".into())),
    };
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| bad("url has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(bad("url may not carry credentials".into()));
    }
    let head = uri.scheme_str().unwrap_or_default().len() + 3 + authority.as_str().len();
    if url.find(PLACEHOLDER).is_some_and(|at| at < head) {
        return Err(bad(format!(
            "{PLACEHOLDER} must be in the path or the query, not the host"
        )));
    }
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    match host_refused(state, host, port).await {
        None => Ok(url.to_owned()),
        Some(Refused::Unresolved) => Err(bad(format!("the host {host} does not resolve"))),
        Some(Refused::NoAddress) => Err(bad(format!("the host {host} has no address"))),
        Some(Refused::Policy(why)) => Err(bad(format!("url may not be called: {why}"))),
    }
}

fn parse_auth_header(raw: String) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid("authHeader", format!("authHeader {why}"));
    if raw.trim().is_empty() {
        return Err(bad(
            "must not be empty (leave it out, or send null to remove it)",
        ));
    }
    if raw.len() > MAX_AUTH_HEADER {
        return Err(bad(&format!("is longer than {MAX_AUTH_HEADER} bytes")));
    }
    if !raw
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(bad("must be printable ASCII, as an HTTP header value"));
    }
    Ok(raw.trim().to_owned())
}

fn parse_text(field: &str, raw: String, required: bool) -> Result<Option<String>, ApiError> {
    let text = raw.trim();
    if text.is_empty() {
        return if required {
            Err(ApiError::invalid(field, format!("{field} is required")))
        } else {
            Ok(None)
        };
    }
    crate::model::parse_short_text(text, MAX_TEXT)
        .map(Some)
        .map_err(|crate::model::Invalid(why)| ApiError::invalid(field, format!("{field} {why}")))
}

fn parse_events(raw: Vec<String>) -> Result<Vec<EventKind>, ApiError> {
    let mut out = Vec::new();
    for name in &raw {
        let e = EventKind::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "events",
                format!(
                    "unknown event {name:?}; events are {}",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            )
        })?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "events needs at least one event",
        ));
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------
// Output

/// An `Authorization` value as listings show it: its scheme, then asterisks and, for a long
/// value, its last four characters.
pub(super) fn mask(h: &str) -> String {
    let (scheme, secret) = match h.split_once(' ') {
        Some((s, rest)) if s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {
            (format!("{s} "), rest.trim())
        }
        _ => (String::new(), h),
    };
    let n = secret.chars().count();
    let tail: String = if n >= 16 {
        secret.chars().skip(n - 4).collect()
    } else {
        String::new()
    };
    format!("{scheme}****{tail}")
}

/// A subscription as its owner sees it.
pub(super) fn view(r: &SubscriptionRec) -> Value {
    json!({
        "id": r.id,
        "url": r.url,
        "authHeader": r.auth_header.as_deref().map(mask),
        "systemName": r.system_name,
        "customer": r.customer,
        "events": r.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "active": r.active,
        "disabledReason": r.disabled.as_ref().map(|(_, why)| why),
        "disabledAt": r.disabled.as_ref().map(|(at, _)| rfc3339(*at)),
        "createdAt": rfc3339(r.created_at),
        "updatedAt": rfc3339(r.updated_at),
        "lastSuccessAt": r.last_success_at.map(rfc3339),
        "failures": r.failures,
    })
}

pub(super) fn attempt_view(a: &AttemptNote) -> Value {
    json!({
        "at": rfc3339(a.at),
        "deliveryId": a.delivery,
        "attempt": a.attempt,
        "status": a.status,
        "latencyMs": a.latency_ms,
        "error": a.error,
        "ids": a.ids,
        "test": a.test,
    })
}

fn location(id: Uuid) -> String {
    format!("/api/v1/subscriptions/{id}")
}

// ---------------------------------------------------------------------------
// Handlers

async fn create(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: Create = parse_json(&ctx, &bytes)?;
    let claim = match idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let system_name =
        parse_text("systemName", req.system_name.unwrap_or_default(), true)?.unwrap_or_default();
    let url = match req.url {
        Some(u) => parse_url(&state, &u).await?,
        None => return Err(ApiError::invalid("url", "url is required")),
    };
    let auth_header = req.auth_header.map(parse_auth_header).transpose()?;
    let customer = match req.customer {
        Some(c) => parse_text("customer", c, false)?,
        None => None,
    };
    let events = match req.events {
        Some(e) => parse_events(e)?,
        None => vec![EventKind::MessageStatus],
    };
    let secret =
        crate::secrets::signing_secret().map_err(|e| crate::store::StoreError::Io(e.into()))?;
    let now = now_ms();
    let rec = SubscriptionRec {
        id: Uuid::now_v7(),
        env: principal.env,
        partner: principal.partner.clone(),
        system_name,
        url,
        auth_header,
        customer,
        events,
        active: true,
        disabled: None,
        enabled_at: now,
        signing: SigningSecrets {
            current: secret.clone(),
            previous: None,
        },
        created_at: now,
        updated_at: now,
        last_success_at: None,
        failures: 0,
        last_attempts: Vec::new(),
    };
    let mut data = view(&rec);
    if let Some(o) = data.as_object_mut() {
        o.insert("message".into(), json!("subscribed"));
        o.insert("secret".into(), json!(secret));
    }
    let answer = Answer::ok(StatusCode::CREATED, data).header("location", location(rec.id));
    let put = claim.as_ref().map(|c| c.put(&state, &answer)).transpose()?;
    match state.store.create_subscription(rec, put).await? {
        SubChange::Done(_) => Ok(answer.into_response()),
        SubChange::Full | SubChange::NotFound => {
            let mut e = ApiError::conflict(format!(
                "a partner holds at most {MAX_PER_PARTNER} subscriptions per environment; delete one first"
            ));
            e.code = "subscription_limit";
            Err(e)
        }
    }
}

async fn list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let subs = state
        .store
        .partner_subscriptions(principal.env, &principal.partner)?;
    Ok(ok(
        StatusCode::OK,
        subs.iter().map(view).collect::<Vec<_>>(),
    ))
}

/// The caller's subscription; 404 for anyone else's, and for the other environment's.
fn own(state: &AppState, principal: &Principal, id: &str) -> Result<SubscriptionRec, ApiError> {
    let id = parse_id(id, "subscription")?;
    state
        .store
        .subscription(principal.env, id)?
        .filter(|s| s.partner == principal.partner)
        .ok_or_else(|| ApiError::not_found("subscription"))
}

async fn get_one(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let sub = own(&state, &principal, &id)?;
    let mut v = view(&sub);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "lastAttempts".into(),
            sub.last_attempts.iter().rev().map(attempt_view).collect(),
        );
    }
    Ok(ok(StatusCode::OK, v))
}

async fn patch(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let id = parse_id(&id, "subscription")?;
    let req: Patch = parse_json(&ctx, &bytes)?;
    let claim = match idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let patch = SubscriptionPatch {
        url: match req.url {
            Some(u) => Some(parse_url(&state, &u).await?),
            None => None,
        },
        auth_header: req
            .auth_header
            .map(|h| h.map(parse_auth_header).transpose())
            .transpose()?,
        events: req.events.map(parse_events).transpose()?,
        active: req.active,
    };
    let remember = claim.as_ref().map(|c| {
        c.remember(|o: &SubChange| match o {
            SubChange::Done(r) => Some(Answer::ok(StatusCode::OK, view(r))),
            _ => None,
        })
    });
    match state
        .store
        .update_subscription(
            principal.env,
            id,
            Some(principal.partner),
            patch,
            ChangedBy::Owner,
            remember,
            now_ms(),
        )
        .await?
    {
        SubChange::Done(r) => Ok(ok(StatusCode::OK, view(&r))),
        _ => Err(ApiError::not_found("subscription")),
    }
}

async fn delete(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let id = parse_id(&id, "subscription")?;
    let claim = match idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let remember = claim.as_ref().map(|c| {
        c.remember(|o: &SubChange| match o {
            SubChange::Done(r) => Some(Answer::ok(
                StatusCode::OK,
                json!({"id": r.id, "deleted": true}),
            )),
            _ => None,
        })
    });
    match state
        .store
        .delete_subscription(principal.env, id, principal.partner, remember)
        .await?
    {
        SubChange::Done(r) => Ok(ok(StatusCode::OK, json!({"id": r.id, "deleted": true}))),
        _ => Err(ApiError::not_found("subscription")),
    }
}

async fn test(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let sub = own(&state, &principal, &id)?;
    let claim = match idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let answer = Answer::ok(StatusCode::OK, test_call(&state, &sub).await?);
    if let Some(c) = &claim {
        c.store_after(&state, &answer).await;
    }
    Ok(answer.into_response())
}

/// Makes one test call to `sub` now (whether it is on or off) through the delivery engine,
/// which counts it toward the subscription's endpoint cap like its callbacks, and records
/// it on the subscription and in the attempt log. A test does not count toward the
/// subscription's health. It waits for a slot at most the attempt timeout; with twice the
/// cap of calls under way or waiting already, it is refused with 429.
pub(super) async fn test_call(state: &AppState, sub: &SubscriptionRec) -> Result<Value, ApiError> {
    let delivery = Uuid::now_v7();
    let call = crate::worker::subscriptions::test_call(sub, delivery);
    let endpoint = subscription_endpoint(sub.env, sub.id);
    let wait = Duration::from_secs(state.config.delivery.timeout_seconds);
    let outcome = state
        .direct_calls
        .call(endpoint, "test", call, wait)
        .await
        .map_err(|e| match e {
            NotMade::Busy => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "as many calls to this subscription's URL as allowed are under way; \
                     try again when one has ended",
                );
                e.retry_after = Some(1);
                e
            }
            NotMade::NotStarted => ApiError::unavailable(
                "the test call could not start in time: its endpoint is busy; try again",
            ),
        })?;
    let delivered = outcome.succeeded() && outcome.error.is_none();
    let note = AttemptNote {
        at: outcome.at,
        delivery,
        attempt: 1,
        status: outcome.status,
        latency_ms: outcome.latency_ms,
        error: outcome.error.clone(),
        ids: 0,
        test: true,
    };
    let response: String = outcome.response.chars().take(TEST_RESPONSE_CHARS).collect();
    let view = json!({
        "subscriptionId": sub.id,
        "deliveryId": delivery,
        "event": crate::worker::subscriptions::TEST_EVENT,
        "delivered": delivered,
        "status": outcome.status,
        "latencyMs": outcome.latency_ms,
        "error": outcome.error,
        "response": response,
        "at": rfc3339(outcome.at),
    });
    let attempt = AttemptRec {
        at: outcome.at,
        url: outcome.url,
        status: outcome.status,
        latency_ms: outcome.latency_ms,
        response: outcome.response,
        error: outcome.error,
    };
    state
        .store
        .note_test_call(sub.env, sub.id, note, attempt)
        .await?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_scheme_and_at_most_the_last_four_characters() {
        assert_eq!(mask("Bearer abcdefghijklmnop1234"), "Bearer ****1234");
        assert_eq!(mask("Bearer short"), "Bearer ****");
        assert_eq!(mask("s3cr3t"), "****");
        assert_eq!(mask("x".repeat(40).as_str()), "****xxxx");
        assert!(!mask("Basic dXNlcjpwYXNzd29yZA==").contains("dXNlcjpw"));
    }

    #[test]
    fn events_are_checked_and_deduplicated() {
        let e = parse_events(vec![
            "transmission.created".into(),
            "message.status".into(),
            "message.status".into(),
        ])
        .unwrap();
        assert_eq!(
            e,
            vec![EventKind::MessageStatus, EventKind::TransmissionCreated]
        );
        assert_eq!(parse_events(vec![]).unwrap_err().status.as_u16(), 422);
        assert_eq!(
            parse_events(vec!["message.deleted".into()])
                .unwrap_err()
                .field
                .as_deref(),
            Some("events")
        );
    }
}
