//! REST creation of business documents (`POST /api/v1/documents/{doctype}`): every
//! successful creation is stored together with its transmissions in one durable write.

use http::StatusCode;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::idempotency::Answer;
use super::inbound::{
    check_disk, errors_view, opt_param, resolve_receivers, strict, tracking_location,
    transmission_refs, validate_messages,
};
use super::{
    auth, body, ctx, finish, ok, parse_id, parse_json_value, path_segment, read_body, rfc3339,
    with_state, BodyStream, Ctx,
};
use crate::error::{ApiError, InvalidExt};
use crate::model::{parse_doctype, parse_short_text};
use crate::store::{MessageRec, NewMessage, RequestRec};
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("api" / "v1" / "documents" / String)
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(create)
        .map(finish);
    let get = warp::path!("api" / "v1" / "documents" / String / String)
        .and(warp::get())
        .and(with_state(state))
        .and(ctx())
        .then(get)
        .map(finish);
    create.or(get).unify().boxed()
}

async fn create(
    doctype: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
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
    let doctype = parse_doctype(&path_segment(&doctype, "doctype")?).field("doctype")?;
    // The document must be JSON; it is stored exactly as sent.
    let _: serde_json::Value = parse_json_value(&ctx, &bytes)?;
    let version = opt_param(&ctx, "version", |v| parse_short_text(v, 64))?;
    let external_reference = opt_param(&ctx, "externalReference", |v| parse_short_text(v, 256))?;
    let receivers = resolve_receivers(
        &state,
        principal.env,
        &principal.partner,
        ctx.param("receiver").filter(|r| !r.is_empty()),
        &doctype,
        "receiver",
    )?;
    let mut message = [NewMessage {
        doctype: doctype.clone(),
        version,
        external_reference,
        content_type: "application/json".to_owned(),
        payload: bytes,
        receivers,
        validation_errors: Vec::new(),
    }];
    validate_messages(&state, &mut message, strict(&ctx)?, "document", |_| {
        "document".to_owned()
    })
    .await?;
    let mut reply = None;
    let (request, messages) = state
        .store
        .accept_remembered(
            principal.env,
            &principal.partner,
            None,
            Vec::from(message),
            crate::store::now_ms(),
            |request, messages| {
                let answer = created(request, messages);
                let put = claim.as_ref().map(|c| c.put(&state, &answer)).transpose();
                reply = Some(answer);
                put
            },
        )
        .await?;
    state.accepted(principal.env, &messages);
    Ok(reply
        .unwrap_or_else(|| created(&request, &messages))
        .into_response())
}

/// The 201 of a creation, with the document's location.
fn created(request: &RequestRec, messages: &[MessageRec]) -> Answer {
    let Some(m) = messages.first() else {
        return Answer::ok(
            StatusCode::CREATED,
            serde_json::json!({"requestId": request.id}),
        );
    };
    Answer::ok(
        StatusCode::CREATED,
        serde_json::json!({
            "id": m.id,
            "requestId": request.id,
            "doctype": m.doctype,
            "status": m.status,
            "errors": errors_view(&m.validation_errors),
            "transmissions": transmission_refs(m),
            "trackingLocation": tracking_location(request.id),
        }),
    )
    .header(
        "location",
        format!("/api/v1/documents/{}/{}", m.doctype, m.id),
    )
}

/// A document, to its sender and its receivers.
async fn get(doctype: String, id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let id = parse_id(&id, "document")?;
    let doctype = path_segment(&doctype, "doctype")?;
    let m = state
        .store
        .message(principal.env, id)?
        .filter(|m| m.doctype == doctype)
        .filter(|m| {
            m.sender == principal.partner
                || m.transmissions
                    .iter()
                    .any(|t| t.receiver == principal.partner)
        })
        .ok_or_else(|| ApiError::not_found("document"))?;
    let payload = state.store.payload(&m)?;
    let document: serde_json::Value =
        serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({
            "id": m.id,
            "requestId": m.request_id,
            "doctype": m.doctype,
            "sender": m.sender,
            "version": m.version,
            "externalReference": m.external_reference,
            "status": m.status,
            "receivedAt": rfc3339(m.received_at),
            "transmissions": transmission_refs(&m),
            "document": document,
        }),
    ))
}
