//! Event subscriptions, one more kind of delivery: the flusher that closes each
//! subscription's batch after `subscriptions.batch_window_ms`, and what an attempt of a
//! subscription call carries (the URL with its ids, `Authorization`, the body
//! `{event, ids, occurredAt}`, signed with the subscription's secret).
//!
//! The flusher reads nothing while nothing changes: the writer tells the index which
//! subscriptions got pending ids, and it sleeps until the first of their windows closes.

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::push::Prepared;
use crate::outbound::Call;
use crate::store::records::{DeliveryRec, Target};
use crate::store::subscriptions::{
    parse_subscription_endpoint, render_url, split_ids, MAX_CALL_URL,
};
use crate::store::{now_ms, Next, StoreError, SubscriptionRec};
use crate::AppState;

/// How long the flusher sleeps when nothing is waiting and nothing wakes it.
const IDLE: Duration = Duration::from_secs(5);
/// A flush that failed is tried again after this long.
const RETRY_MS: i64 = 1000;

/// Closes batches until `stop` turns true. A batch's ids stay in the store until the job
/// that queues its calls removes them, so stopping (or a crash) loses none.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let window = state.config.subscriptions.batch_window_ms as i64;
    let index = state.store.subscription_index();
    loop {
        if *stop.borrow() {
            break;
        }
        let now = now_ms();
        let (due, next) = index.take_due(now, window);
        if !due.is_empty() {
            flush_all(&state, due, now).await;
            continue;
        }
        let wait = next.map_or(IDLE, |at| {
            Duration::from_millis(at.saturating_sub(now).clamp(1, IDLE.as_millis() as i64) as u64)
        });
        tokio::select! {
            _ = index.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
}

/// Flushes every due subscription at once, so their writer jobs share rounds.
async fn flush_all(state: &AppState, due: Vec<Uuid>, now: i64) {
    let mut set = JoinSet::new();
    for id in due {
        let s = state.clone();
        set.spawn(async move { (id, s.store.flush_subscription(id, now).await) });
    }
    let window = state.config.subscriptions.batch_window_ms as i64;
    let index = state.store.subscription_index();
    while let Some(done) = set.join_next().await {
        let Ok((id, result)) = done else { continue };
        match result {
            // More than one flush takes: the rest goes at once.
            Ok(f) if f.more => index.mark_again(id, now_ms() - window),
            Ok(f) => {
                if f.calls > 0 {
                    tracing::debug!(subscription = %id, ids = f.ids, calls = f.calls, "batch queued");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %id, "cannot queue a subscription's batch");
                index.mark_again(id, now_ms() - window + RETRY_MS);
            }
        }
    }
}

/// Whether an `s` endpoint holds its calls back (the subscription is turned off);
/// `None` for endpoints of other kinds.
pub fn endpoint_held(state: &AppState, endpoint: &[u8]) -> Option<bool> {
    let (_, id) = parse_subscription_endpoint(endpoint)?;
    Some(
        state
            .store
            .subscription_index()
            .snapshot()
            .get(id)
            .is_some_and(|b| !b.active),
    )
}

/// When a subscription endpoint was last turned on: failures before it do not count
/// toward disabling it again. `None` for endpoints of other kinds.
pub fn enabled_at(state: &AppState, endpoint: &[u8]) -> Option<i64> {
    let (_, id) = parse_subscription_endpoint(endpoint)?;
    state
        .store
        .subscription_index()
        .snapshot()
        .get(id)
        .map(|b| b.enabled_at)
}

/// Turns off a subscription whose calls fail (a 410, or no success for too long).
/// Returns false for endpoints of other kinds.
pub async fn disable(state: &AppState, endpoint: &[u8], reason: &str) -> bool {
    let Some((env, id)) = parse_subscription_endpoint(endpoint) else {
        return false;
    };
    if let Err(e) = state
        .store
        .disable_subscription(env, id, reason.to_owned(), now_ms())
        .await
    {
        tracing::error!(error = %e, subscription = %id, "cannot disable the subscription");
    }
    true
}

/// What an attempt of a subscription call does: the call, or no call when the
/// subscription or its owner is gone (drop), it is turned off (park) or its URL grew too
/// long for these ids (split them).
pub fn prepare(state: &AppState, d: &DeliveryRec) -> Result<Prepared, StoreError> {
    let Target::Subscription {
        subscription,
        event,
        ids,
        occurred_at,
    } = &d.target
    else {
        return Ok(Prepared::Finish(Next::Drop));
    };
    let Some(sub) = state.store.subscription(d.env, *subscription)? else {
        return Ok(Prepared::Finish(Next::Drop));
    };
    // A deleted partner's subscriptions stay for the record, but call no one.
    if state.store.directory().partner(&sub.partner).is_none() {
        return Ok(Prepared::Finish(Next::Drop));
    }
    if !sub.active {
        return Ok(Prepared::Finish(Next::Park));
    }
    let url = render_url(&sub.url, ids);
    if url.len() > MAX_CALL_URL && ids.len() > 1 {
        return Ok(Prepared::Finish(Next::Split(split_ids(&sub.url, ids))));
    }
    Ok(Prepared::Call(call(
        &sub,
        url,
        event.as_str(),
        ids,
        *occurred_at,
        format!("evt_{}", d.id.simple()),
    )))
}

/// The signed call of a batch: `POST url` with `{event, ids, occurredAt}`.
pub fn call(
    sub: &SubscriptionRec,
    url: String,
    event: &str,
    ids: &[Uuid],
    occurred_at: i64,
    webhook_id: String,
) -> Call {
    let body = json!({
        "event": event,
        "ids": ids,
        "occurredAt": crate::api::rfc3339(occurred_at),
    });
    let mut headers = vec![("waybill-subscription".to_owned(), sub.id.to_string())];
    if let Some(h) = &sub.auth_header {
        headers.push(("authorization".to_owned(), h.clone()));
    }
    Call {
        url,
        headers,
        content_type: "application/json".into(),
        body: bytes::Bytes::from(body.to_string()),
        webhook_id,
        signing_secrets: sub
            .signing
            .active(now_ms())
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

/// The event name of a test call.
pub const TEST_EVENT: &str = "subscription.test";

/// A test call for `sub`: no ids, the event [`TEST_EVENT`].
pub fn test_call(sub: &SubscriptionRec, delivery: Uuid) -> Call {
    call(
        sub,
        render_url(&sub.url, &[]),
        TEST_EVENT,
        &[],
        now_ms(),
        format!("evt_{}", delivery.simple()),
    )
}
