//! The transmission push, one kind of delivery: what its call carries (the payload, the
//! routing query parameters, the partner's headers, signed with the partner's secret), when
//! its endpoint holds it back, and what to do when there is nothing left to push. Also
//! where an attempt is prepared for every kind (job webhooks here, subscription calls in
//! `subscriptions`).

use crate::model::{Env, Status};
use crate::outbound::Call;
use crate::store::records::{transmission_uuid, DeliveryRec, MessageRec, PartnerRec, Target};

use std::borrow::Cow;

use crate::store::{now_ms, Directory, Next, Queued, StoreError};
use crate::AppState;

/// What an attempt does.
pub enum Prepared {
    /// Make this call.
    Call(Call),
    /// No call: record this instead (the target is gone or final, the endpoint is held,
    /// the receiver polls now, the payload is damaged).
    Finish(Next),
}

/// Whether an endpoint takes calls now.
#[derive(Debug, PartialEq, Eq)]
pub enum EndpointState {
    Open,
    /// Paused, disabled or inactive: its deliveries are parked.
    Held,
}

/// The partner code and environment of a push endpoint key (`p ‖ env ‖ code`).
fn parse_endpoint(endpoint: &[u8]) -> Option<(Env, &str)> {
    match endpoint {
        [b'p', env, code @ ..] => Some((Env::from_byte(*env)?, std::str::from_utf8(code).ok()?)),
        _ => None,
    }
}

/// Whether `endpoint` takes calls now, by the current directory (and, for a subscription's
/// endpoint, the subscriptions in memory).
pub fn endpoint_state(state: &AppState, dir: &Directory, endpoint: &[u8]) -> EndpointState {
    match super::subscriptions::endpoint_held(state, endpoint) {
        Some(true) => return EndpointState::Held,
        Some(false) => return EndpointState::Open,
        None => {}
    }
    match parse_endpoint(endpoint).and_then(|(env, code)| Some((env, dir.partner(code)?))) {
        Some((env, p)) if p.push_held(env).is_some() => EndpointState::Held,
        _ => EndpointState::Open,
    }
}

/// Turns off a push endpoint or a subscription (a 410 answer, or failing for too long).
pub async fn disable(state: &AppState, endpoint: &[u8], reason: String) {
    if super::subscriptions::disable(state, endpoint, &reason).await {
        return;
    }
    let Some((env, code)) = parse_endpoint(endpoint) else {
        return;
    };
    if let Err(e) = state.store.disable_endpoint(code, env, reason).await {
        tracing::error!(error = ?e, "cannot disable the endpoint");
    }
}

/// Reads what an attempt of `q` needs, or decides that none is made.
pub fn prepare(state: &AppState, q: &Queued) -> Result<Prepared, StoreError> {
    let d = &q.delivery;
    let (message_id, index, receiver) = match &d.target {
        Target::Transmission {
            message_id,
            index,
            receiver,
        } => (message_id, index, receiver),
        Target::Webhook {
            job_id,
            partner,
            url,
        } => return webhook(state, d, *job_id, partner, url),
        Target::Subscription { .. } => return super::subscriptions::prepare(state, d),
    };
    let finish = |next| Ok(Prepared::Finish(next));
    let (m, payload) = match &q.prefetched {
        // Handed over by intake a moment ago: its entry is still there unless an
        // acknowledgement or a cancellation took it away since.
        Some(p) => {
            if !state.store.outbox.still_queued(&q.key) {
                return finish(Next::Drop);
            }
            (Cow::Borrowed(&p.message), Some(p.payload.clone()))
        }
        None => match state.store.message(d.env, *message_id)? {
            Some(m) => (Cow::Owned(m), None),
            None => return finish(Next::Drop),
        },
    };
    let Some(tx) = m.transmissions.get(usize::from(*index)) else {
        return finish(Next::Drop);
    };
    // Acknowledged, cancelled, failed or already delivered: nothing left to push.
    if tx.status.is_final() || tx.status == Status::Processed {
        return finish(Next::Drop);
    }
    let dir = state.store.directory();
    let Some(p) = dir.partner(receiver) else {
        return finish(Next::ToPolling);
    };
    let Some(url) = p.push_url_for(d.env) else {
        return finish(Next::ToPolling);
    };
    if p.push_held(d.env).is_some() {
        return finish(Next::Park);
    }
    let body = match payload.map_or_else(|| state.store.payload(&m), Ok) {
        Ok(b) => b,
        Err(StoreError::Corrupt(why)) => {
            tracing::error!(message = %m.id, %why, "a payload fails its checksum; its push is failed");
            return finish(Next::Corrupt(why));
        }
        Err(e) => return Err(e),
    };
    Ok(Prepared::Call(call(p, &m, *index, d, url, body)))
}

/// The completion webhook of a background job: `{id, state, responseStatus,
/// stateLocation, contentLocation}` as the job is now, signed with its partner's secret
/// for the job's environment. The address is checked when the call connects, like every
/// outbound call.
fn webhook(
    state: &AppState,
    d: &DeliveryRec,
    job_id: uuid::Uuid,
    partner: &str,
    url: &str,
) -> Result<Prepared, StoreError> {
    let Some(job) = state.store.job(d.env, job_id)? else {
        return Ok(Prepared::Finish(Next::Drop));
    };
    let dir = state.store.directory();
    let Some(p) = dir.partner(partner) else {
        return Ok(Prepared::Finish(Next::Drop));
    };
    let body = serde_json::json!({
        "id": job.id,
        "state": job.state.as_str(),
        "responseStatus": job.response_status,
        "stateLocation": format!("/api/v1/background/{}", job.id),
        "contentLocation": format!("/api/v1/background/{}/content", job.id),
    });
    Ok(Prepared::Call(Call {
        url: url.to_owned(),
        headers: vec![("waybill-background".into(), job.id.to_string())],
        content_type: "application/json".into(),
        body: bytes::Bytes::from(body.to_string()),
        webhook_id: format!("job_{}", d.id.simple()),
        signing_secrets: p
            .signing_for(d.env)
            .active(now_ms())
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }))
}

/// The signed call of a push.
fn call(
    p: &PartnerRec,
    m: &MessageRec,
    index: u8,
    d: &DeliveryRec,
    base: &str,
    body: bytes::Bytes,
) -> Call {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("sender", &m.sender);
    query.append_pair("receiver", &p.code);
    query.append_pair("doctype", &m.doctype);
    if let Some(v) = &m.version {
        query.append_pair("version", v);
    }
    for (k, v) in &p.push_params {
        query.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut headers = p.push_headers.clone();
    headers.push((
        "waybill-transmission".into(),
        transmission_uuid(m.id, usize::from(index)).to_string(),
    ));
    Call {
        url: format!("{base}{sep}{}", query.finish()),
        headers,
        content_type: m.content_type.clone(),
        body,
        webhook_id: format!("msg_{}", d.id.simple()),
        signing_secrets: p
            .signing_for(d.env)
            .active(now_ms())
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keys_name_their_partner_and_environment() {
        let target = Target::Transmission {
            message_id: uuid::Uuid::nil(),
            index: 0,
            receiver: "GLOBEX".into(),
        };
        for env in [Env::Live, Env::Test] {
            assert_eq!(parse_endpoint(&target.endpoint(env)), Some((env, "GLOBEX")));
        }
        assert_eq!(parse_endpoint(b"x\x00A"), None);
        assert_eq!(parse_endpoint(b"p\x09A"), None);
    }
}
