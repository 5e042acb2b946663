//! `GET /admin/api/deliveries?state=due|held|failed`: outbound deliveries waiting for an
//! attempt (due now or at a scheduled retry), held while their endpoint is paused or
//! disabled, and failed transmissions waiting for an admin's redelivery. Attempt logs and
//! redelivery are in `api::deliveries`.

use http::StatusCode;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::deliveries::env_param;
use super::super::{auth, ctx, finish, ok, rfc3339, with_state, Ctx};
use super::{id_cursor, limit_param, MAX_SCAN};
use crate::error::ApiError;
use crate::model::parse_partner_code;
use crate::store::listing::{unhex, OutboxEntry};
use crate::store::records::{transmission_uuid, Target};
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("admin" / "api" / "deliveries")
        .and(warp::get())
        .and(with_state(state))
        .and(ctx())
        .then(list)
        .map(finish)
        .boxed()
}

fn outbox_view(e: &OutboxEntry) -> Value {
    let d = &e.delivery;
    let target = match &d.target {
        Target::Transmission {
            message_id,
            index,
            receiver,
        } => json!({
            "kind": "push",
            "messageId": message_id,
            "transmission": transmission_uuid(*message_id, usize::from(*index)),
            "receiver": receiver,
        }),
        Target::Webhook {
            job_id, partner, ..
        } => json!({"kind": "webhook", "jobId": job_id, "partner": partner}),
        Target::Subscription {
            subscription,
            event,
            ids,
            ..
        } => json!({
            "kind": "subscription",
            "subscriptionId": subscription,
            "event": event.as_str(),
            "ids": ids.len(),
        }),
    };
    json!({
        "id": d.id,
        "env": d.env,
        "endpoint": e.endpoint,
        "dueAt": e.due.map(rfc3339),
        "held": e.due.is_none(),
        "attempts": d.attempt,
        "triesSinceQueued": d.tries,
        "target": target,
    })
}

async fn list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let limit = limit_param(&ctx, 50, 500)?;
    let which = ctx
        .param("state")
        .filter(|s| !s.is_empty())
        .unwrap_or("due");
    let store = std::sync::Arc::clone(&state.store);
    let page = match which {
        "due" | "held" => {
            let after = match ctx.param("cursor").filter(|c| !c.is_empty()) {
                None => None,
                Some(c) => Some(unhex(c).ok_or_else(|| {
                    ApiError::bad_request("cursor is not one this API gave out").field("cursor")
                })?),
            };
            let held = which == "held";
            let page = tokio::task::spawn_blocking(move || {
                store.list_outbox(held, after, limit, MAX_SCAN)
            })
            .await
            .map_err(|_| ApiError::unavailable("the listing did not finish"))??;
            json!({
                "items": page.items.iter().map(outbox_view).collect::<Vec<_>>(),
                "nextCursor": page.next,
            })
        }
        "failed" => {
            let env = env_param(&ctx)?;
            let receiver = match ctx.param("receiver").filter(|r| !r.is_empty()) {
                None => None,
                Some(r) => Some(parse_partner_code(r).map_err(|e| {
                    ApiError::bad_request(format!("receiver {}", e.0)).field("receiver")
                })?),
            };
            let before = id_cursor(&ctx)?;
            let page = tokio::task::spawn_blocking(move || {
                store.list_failed(env, receiver.as_deref(), before, limit, MAX_SCAN)
            })
            .await
            .map_err(|_| ApiError::unavailable("the listing did not finish"))??;
            let items: Vec<Value> = page
                .items
                .iter()
                .filter_map(|(m, i)| {
                    let t = m.transmissions.get(*i)?;
                    Some(json!({
                        "transmission": transmission_uuid(m.id, *i),
                        "messageId": m.id,
                        "env": m.env,
                        "sender": m.sender,
                        "receiver": t.receiver,
                        "messageType": m.doctype,
                        "attempts": t.attempts,
                        "lastError": t.last_error,
                        "failedAt": t.history.last().map(|(at, _)| rfc3339(*at)),
                        "receivedAt": rfc3339(m.received_at),
                    }))
                })
                .collect();
            json!({"items": items, "nextCursor": page.next})
        }
        _ => return Err(ApiError::bad_request("state must be due, held or failed").field("state")),
    };
    Ok(ok(StatusCode::OK, page))
}
