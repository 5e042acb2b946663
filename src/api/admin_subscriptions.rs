//! Event subscriptions, the admin's side: every partner's subscriptions with their health
//! (`GET /admin/api/subscriptions`, `GET /admin/api/subscriptions/{id}`), turning one on or
//! off (`PATCH /admin/api/subscriptions/{id}` with `{active}`) and a test call
//! (`POST /admin/api/subscriptions/{id}/test`). A subscription is looked up in the
//! environment `?env=` names (`live` when absent), like other admin calls on
//! environment-scoped objects.
//!
//! Changes are written to the audit log by the wrapper every admin route goes through
//! (`admin_users::audited`).

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::admin_auth as guard;
use super::deliveries::env_param;
use super::subscriptions::{attempt_view, test_call, view};
use super::{body, ctx, finish, ok, parse_id, parse_json, read_body, rfc3339, with_state};
use super::{BodyStream, Ctx};
use crate::error::ApiError;
use crate::model::Env;
use crate::store::subscriptions::subscription_endpoint;
use crate::store::{now_ms, ChangedBy, SubChange, SubscriptionPatch, SubscriptionRec};
use crate::AppState;

const BODY_LIMIT: u64 = 16 * 1024;
/// Pending ids counted per subscription in a listing (more shows as this many).
const PENDING_COUNTED: usize = 100_000;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let s = move || with_state(state.clone());
    let list = warp::path!("admin" / "api" / "subscriptions")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list)
        .map(finish);
    let get = warp::path!("admin" / "api" / "subscriptions" / String)
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(get_one)
        .map(finish);
    let patch = warp::path!("admin" / "api" / "subscriptions" / String)
        .and(warp::patch())
        .and(s())
        .and(ctx())
        .and(b)
        .then(patch)
        .map(finish);
    let test = warp::path!("admin" / "api" / "subscriptions" / String / "test")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(test)
        .map(finish);
    list.or(get)
        .unify()
        .or(patch)
        .unify()
        .or(test)
        .unify()
        .boxed()
}

/// A subscription with everything an admin sees: owner, environment, health as the
/// delivery engine records it, ids waiting and the last attempts (newest first).
fn admin_view(state: &AppState, r: &SubscriptionRec) -> Result<Value, ApiError> {
    let mut v = view(r);
    let health = state
        .store
        .endpoint_health(&subscription_endpoint(r.env, r.id))?;
    let pending = state.store.pending_ids(r.id, PENDING_COUNTED)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("partner".into(), json!(r.partner));
        o.insert("env".into(), json!(r.env.as_str()));
        o.insert("enabledAt".into(), json!(rfc3339(r.enabled_at)));
        o.insert("pendingIds".into(), json!(pending));
        o.insert(
            "health".into(),
            json!({
                "lastSuccessAt": r.last_success_at.map(rfc3339),
                "failures": r.failures,
                "failingSince": health.as_ref().and_then(|h| h.failing_since).map(rfc3339),
                "lastFailureAt": health.as_ref().and_then(|h| h.last_failure_at).map(rfc3339),
                "lastError": health.as_ref().and_then(|h| h.last_error.clone()),
            }),
        );
        o.insert(
            "lastAttempts".into(),
            r.last_attempts.iter().rev().map(attempt_view).collect(),
        );
    }
    Ok(v)
}

/// `GET /admin/api/subscriptions?env=&partner=&active=`: every partner's subscriptions,
/// oldest first (both environments unless `env` names one).
async fn list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let env = match ctx.param("env").filter(|v| !v.is_empty()) {
        None => None,
        Some(e) => Some(
            Env::parse(e)
                .ok_or_else(|| ApiError::bad_request("env must be live or test").field("env"))?,
        ),
    };
    let active = match ctx.param("active").filter(|v| !v.is_empty()) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(ApiError::bad_request("active must be true or false").field("active"))
        }
    };
    let partner = ctx.param("partner").filter(|p| !p.is_empty());
    let store = std::sync::Arc::clone(&state.store);
    let subs = tokio::task::spawn_blocking(move || store.all_subscriptions(env))
        .await
        .map_err(|_| ApiError::unavailable("the listing did not finish"))??;
    let mut out = Vec::new();
    for r in subs
        .iter()
        .filter(|r| partner.is_none_or(|p| r.partner == p))
        .filter(|r| active.is_none_or(|a| r.active == a))
    {
        out.push(admin_view(&state, r)?);
    }
    Ok(ok(StatusCode::OK, out))
}

fn find(state: &AppState, ctx: &Ctx, id: &str) -> Result<SubscriptionRec, ApiError> {
    let env = env_param(ctx)?;
    let id = parse_id(id, "subscription")?;
    state
        .store
        .subscription(env, id)?
        .ok_or_else(|| ApiError::not_found("subscription"))
}

async fn get_one(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let r = find(&state, &ctx, &id)?;
    Ok(ok(StatusCode::OK, admin_view(&state, &r)?))
}

#[derive(Deserialize)]
struct Patch {
    active: Option<bool>,
}

/// `PATCH /admin/api/subscriptions/{id}?env=` with `{active}`: turns a subscription on
/// (also one disabled for failing; its parked calls go) or off.
async fn patch(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: Patch = parse_json(&ctx, &bytes)?;
    let env = env_param(&ctx)?;
    let id = parse_id(&id, "subscription")?;
    let active = req
        .active
        .ok_or_else(|| ApiError::invalid("active", "active (true or false) is required"))?;
    let patch = SubscriptionPatch {
        active: Some(active),
        ..SubscriptionPatch::default()
    };
    match state
        .store
        .update_subscription(env, id, None, patch, ChangedBy::Admin, None, now_ms())
        .await?
    {
        SubChange::Done(r) => Ok(ok(StatusCode::OK, admin_view(&state, &r)?)),
        _ => Err(ApiError::not_found("subscription")),
    }
}

/// `POST /admin/api/subscriptions/{id}/test?env=`: one test call now, and its outcome.
async fn test(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let r = find(&state, &ctx, &id)?;
    Ok(ok(StatusCode::OK, test_call(&state, &r).await?))
}
