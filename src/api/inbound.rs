//! Intake: single documents (`POST /api/v1/inbound`) and atomic batches
//! (`POST /api/v1/requests`). The request summary they point to is in `tracking`.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::idempotency::Answer;
use super::{
    auth, body, ctx, finish, is_json_media, parse_json, read_body, with_state, BodyStream, Ctx, Obj,
};
use crate::error::{ApiError, InvalidExt};
use crate::model::{
    media_essence, parse_doctype, parse_media_type, parse_partner_code, parse_short_text, Env,
};
use crate::store::records::{ValidationErrorRec, MAX_RECEIVERS};
use crate::store::{AcceptError, MessageRec, NewMessage, RequestRec};
use crate::validation::Payload;
use crate::AppState;

/// Most messages one batch may carry.
pub const MAX_BATCH: usize = 1000;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let inbound = warp::path!("api" / "v1" / "inbound")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(inbound)
        .map(finish);
    let batch = warp::path!("api" / "v1" / "requests")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(batch)
        .map(finish);
    inbound.or(batch).unify().boxed()
}

/// Refuses intake while the disk is nearly full (nothing is acknowledged then).
pub(super) fn check_disk(state: &AppState) -> Result<(), ApiError> {
    if state.disk_low() {
        let mut e = ApiError::unavailable("the appliance is low on disk space; intake is paused");
        e.code = "insufficient_storage";
        return Err(e);
    }
    Ok(())
}

/// An optional query parameter checked by `parse`.
pub(super) fn opt_param(
    ctx: &Ctx,
    name: &str,
    parse: impl Fn(&str) -> Result<String, crate::model::Invalid>,
) -> Result<Option<String>, ApiError> {
    ctx.param(name)
        .filter(|v| !v.is_empty())
        .map(|v| parse(v).field(name))
        .transpose()
}

/// The receivers of a message: the named one if a route allows it, else every receiver
/// routes name for this sender and doctype. 403 when no route allows the delivery.
pub(super) fn resolve_receivers(
    state: &AppState,
    env: Env,
    sender: &str,
    receiver: Option<&str>,
    doctype: &str,
    field: &str,
) -> Result<Vec<String>, ApiError> {
    let dir = state.store.directory();
    match receiver {
        Some(r) => {
            let r = parse_partner_code(r).field(field)?;
            if dir.allows(env, sender, &r, doctype) {
                Ok(vec![r])
            } else {
                Err(no_route(sender, Some(&r), doctype, field))
            }
        }
        None => {
            let all = dir.receivers(env, sender, doctype);
            if all.is_empty() {
                return Err(no_route(sender, None, doctype, field));
            }
            if all.len() > MAX_RECEIVERS {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "routes name {} receivers; a message reaches at most {MAX_RECEIVERS}",
                        all.len()
                    ),
                ));
            }
            Ok(all)
        }
    }
}

fn no_route(sender: &str, receiver: Option<&str>, doctype: &str, field: &str) -> ApiError {
    let to = receiver.map(|r| format!(" to {r}")).unwrap_or_default();
    let mut e =
        ApiError::forbidden(format!("no route allows {sender} to send {doctype}{to}")).field(field);
    e.code = "no_route";
    e
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TransmissionRef {
    pub uuid: uuid::Uuid,
    pub receiver: String,
}

pub(super) fn transmission_refs(m: &MessageRec) -> Vec<TransmissionRef> {
    m.transmission_refs()
        .map(|(uuid, receiver)| TransmissionRef {
            uuid,
            receiver: receiver.to_owned(),
        })
        .collect()
}

pub(super) fn tracking_location(request_id: uuid::Uuid) -> String {
    format!("/api/v1/requests/{request_id}")
}

/// `?strict=true`: an invalid message refuses the whole call instead of being stored.
pub(super) fn strict(ctx: &Ctx) -> Result<bool, ApiError> {
    match ctx.param("strict") {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad_request("strict must be true or false").field("strict")),
    }
}

/// Validation errors as the API shows them.
pub(super) fn errors_view(errors: &[ValidationErrorRec]) -> Vec<serde_json::Value> {
    errors
        .iter()
        .map(|e| serde_json::json!({"pointer": e.pointer, "keyword": e.keyword, "message": e.message}))
        .collect()
}

/// Checks each message against its doctype's schema, recording why it fails. With
/// `strict`, any failure is a 422 on `field` that names every failing message (by
/// `name(index)`; the sentence names the first ten, `details.invalid` all of them with
/// their errors) and nothing is stored.
pub(super) async fn validate_messages(
    state: &AppState,
    messages: &mut [NewMessage],
    strict: bool,
    field: &str,
    name: impl Fn(usize) -> String,
) -> Result<(), ApiError> {
    let payloads: Vec<Payload<'_>> = messages
        .iter()
        .map(|m| Payload {
            doctype: &m.doctype,
            version: m.version.as_deref(),
            content_type: &m.content_type,
            payload: &m.payload,
        })
        .collect();
    let verdicts = state.schemas.validate(&payloads).await;
    let mut failing = Vec::new();
    let mut named = Vec::new();
    for ((i, m), errors) in messages.iter_mut().enumerate().zip(verdicts) {
        m.validation_errors = errors;
        if !strict || m.validation_errors.is_empty() {
            continue;
        }
        if named.len() < 10 {
            let e = &m.validation_errors[0];
            let at = if e.pointer.is_empty() { "" } else { &e.pointer };
            named.push(format!("{} ({at} {}: {})", name(i), e.keyword, e.message));
        }
        failing.push(serde_json::json!({
            "message": name(i),
            "externalReference": m.external_reference,
            "errors": errors_view(&m.validation_errors),
        }));
    }
    if failing.is_empty() {
        return Ok(());
    }
    let more = failing.len() - named.len();
    let more = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        format!(
            "{} of {} messages failed validation and nothing was stored: {}{more}",
            failing.len(),
            messages.len(),
            named.join("; ")
        ),
    )
    .field(field)
    .details(serde_json::json!({ "invalid": failing })))
}

async fn inbound(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let limit = state.config.server.max_body_bytes;
    let content_type = ctx.content_type()?;
    let media = content_type.as_deref().map(crate::model::media_essence);
    let is_form = media.as_deref() == Some("application/x-www-form-urlencoded");
    let (principal, payload) = if auth::presents_key(&ctx) {
        let principal = auth::partner(&state, &ctx)?;
        let body = read_body(&ctx, body, limit).await?;
        // A key in the form as well never reaches the receiver.
        (
            principal,
            if is_form {
                auth::strip_form_key(&body)
            } else {
                body
            },
        )
    } else if is_form {
        super::read_form_with_key(&state, &ctx, body, limit).await?
    } else {
        return Err(ApiError::unauthorized());
    };
    let claim = match super::idempotency::begin(&state, &ctx, &principal, &payload)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    if media.as_deref().is_some_and(is_json_media) {
        super::check_json_payload(&payload)?;
    }
    check_disk(&state)?;

    let sender = ctx
        .param("sender")
        .ok_or_else(|| ApiError::invalid("sender", "sender is required"))?;
    let sender = parse_partner_code(sender).field("sender")?;
    if sender != principal.partner {
        return Err(
            ApiError::forbidden("this API key does not belong to the sender").field("sender"),
        );
    }
    let doctype = ctx
        .param("doctype")
        .ok_or_else(|| ApiError::invalid("doctype", "doctype is required"))?;
    let doctype = parse_doctype(doctype).field("doctype")?;
    let version = opt_param(&ctx, "version", |v| parse_short_text(v, 64))?;
    let external_reference = opt_param(&ctx, "externalReference", |v| parse_short_text(v, 256))?;
    let receivers = resolve_receivers(
        &state,
        principal.env,
        &sender,
        ctx.param("receiver").filter(|r| !r.is_empty()),
        &doctype,
        "receiver",
    )?;

    let mut message = [NewMessage {
        doctype,
        version,
        external_reference,
        content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
        payload,
        receivers,
        validation_errors: Vec::new(),
    }];
    validate_messages(&state, &mut message, strict(&ctx)?, "payload", |_| {
        "payload".to_owned()
    })
    .await?;
    let mut reply = None;
    let (request, messages) = state
        .store
        .accept_remembered(
            principal.env,
            &sender,
            None,
            Vec::from(message),
            crate::store::now_ms(),
            |request, messages| {
                let answer = inbound_answer(request, messages);
                let put = claim.as_ref().map(|c| c.put(&state, &answer)).transpose();
                reply = Some(answer);
                put
            },
        )
        .await?;
    state.accepted(principal.env, &messages);
    Ok(reply
        .unwrap_or_else(|| inbound_answer(&request, &messages))
        .into_response())
}

fn inbound_answer(request: &RequestRec, messages: &[MessageRec]) -> Answer {
    let Some(m) = messages.first() else {
        return Answer::ok(
            StatusCode::ACCEPTED,
            serde_json::json!({"requestId": request.id}),
        );
    };
    Answer::ok(
        StatusCode::ACCEPTED,
        serde_json::json!({
            "id": m.id,
            "requestId": request.id,
            "status": m.status,
            "errors": errors_view(&m.validation_errors),
            "transmissions": transmission_refs(m),
            "trackingLocation": tracking_location(request.id),
        }),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchBody {
    batch_reference: Option<String>,
    messages: Vec<Obj<BatchMessage>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchMessage {
    message_type: Option<String>,
    receiver: Option<String>,
    version: Option<String>,
    external_reference: Option<String>,
    content_type: Option<String>,
    /// `Some(Null)` when the payload is JSON `null`; `None` only when it is absent.
    #[serde(default, deserialize_with = "present")]
    payload: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Checks every message of a batch before anything is stored; the first bad one makes
/// the whole batch a 422 that names it (`messages[3].messageType`).
fn validate_batch(
    state: &AppState,
    env: Env,
    sender: &str,
    body: BatchBody,
) -> Result<(Option<String>, Vec<NewMessage>), ApiError> {
    let batch_reference = body
        .batch_reference
        .map(|r| parse_short_text(&r, 256).field("batchReference"))
        .transpose()?;
    if body.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "a batch needs at least one message",
        ));
    }
    if body.messages.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "messages",
            format!("a batch holds at most {MAX_BATCH} messages"),
        ));
    }
    let mut out = Vec::with_capacity(body.messages.len());
    for (i, Obj(m)) in body.messages.into_iter().enumerate() {
        let f = |name: &str| format!("messages[{i}].{name}");
        let doctype = m
            .message_type
            .ok_or_else(|| ApiError::invalid(&f("messageType"), "messageType is required"))?;
        let doctype = parse_doctype(&doctype).field(&f("messageType"))?;
        let version = m
            .version
            .map(|v| parse_short_text(&v, 64).field(&f("version")))
            .transpose()?;
        let external_reference = m
            .external_reference
            .map(|v| parse_short_text(&v, 256).field(&f("externalReference")))
            .transpose()?;
        let content_type = match m.content_type {
            Some(ct) => parse_media_type(&ct).field(&f("contentType"))?,
            None => "application/json".to_owned(),
        };
        let payload = m
            .payload
            .ok_or_else(|| ApiError::invalid(&f("payload"), "payload is required"))?;
        let media = media_essence(&content_type);
        let payload = if is_json_media(&media) {
            Bytes::from(
                serde_json::to_vec(&payload)
                    .map_err(|e| ApiError::invalid(&f("payload"), e.to_string()))?,
            )
        } else {
            let text = payload.as_str().ok_or_else(|| {
                ApiError::invalid(
                    &f("payload"),
                    "a payload that is not JSON must be a base64 string",
                )
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| ApiError::invalid(&f("payload"), "payload is not valid base64"))?;
            Bytes::from(bytes)
        };
        let receivers = resolve_receivers(
            state,
            env,
            sender,
            m.receiver.as_deref().filter(|r| !r.is_empty()),
            &doctype,
            &f("receiver"),
        )?;
        out.push(NewMessage {
            doctype,
            version,
            external_reference,
            content_type,
            payload,
            receivers,
            validation_errors: Vec::new(),
        });
    }
    Ok((batch_reference, out))
}

async fn batch(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, state.config.server.max_body_bytes).await?;
    let claim = match super::idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    check_disk(&state)?;
    let parsed: BatchBody = parse_json(&ctx, &bytes)?;
    let (batch_reference, mut messages) =
        validate_batch(&state, principal.env, &principal.partner, parsed)?;
    validate_messages(&state, &mut messages, strict(&ctx)?, "messages", |i| {
        format!("messages[{i}]")
    })
    .await?;
    let mut reply = None;
    let (request, messages) = state
        .store
        .accept_remembered(
            principal.env,
            &principal.partner,
            batch_reference,
            messages,
            crate::store::now_ms(),
            |request, messages| {
                let answer = batch_answer(request, messages);
                let put = claim.as_ref().map(|c| c.put(&state, &answer)).transpose();
                reply = Some(answer);
                put
            },
        )
        .await
        .map_err(|e| match e {
            AcceptError::Duplicate {
                index,
                reference,
                first,
            } => crate::error::duplicate_reference(
                &reference,
                first,
                &format!("messages[{index}].externalReference"),
            ),
            e => e.into(),
        })?;
    state.accepted(principal.env, &messages);
    Ok(reply
        .unwrap_or_else(|| batch_answer(&request, &messages))
        .into_response())
}

fn batch_answer(request: &RequestRec, messages: &[MessageRec]) -> Answer {
    let list: Vec<_> = messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "externalReference": m.external_reference,
                "status": m.status,
                "errors": errors_view(&m.validation_errors),
                "transmissions": transmission_refs(m),
            })
        })
        .collect();
    Answer::ok(
        StatusCode::ACCEPTED,
        serde_json::json!({
            "id": request.id,
            "batchReference": request.batch_reference,
            "messages": list,
            "trackingLocation": tracking_location(request.id),
        }),
    )
}
