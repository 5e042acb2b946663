//! The admin API of outbound deliveries: the attempt log of any delivery and redelivery of
//! failed transmissions. (How much waits is in `/admin/api/stats`.) Every call needs the admin token.

use http::StatusCode;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::{auth, ctx, finish, ok, parse_id, path_segment, rfc3339, with_state, Ctx};
use crate::error::ApiError;
use crate::model::Env;
use crate::AppState;

/// The routes of this module.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let s = move || with_state(state.clone());
    let attempts = warp::path!("admin" / "api" / "transmissions" / String / "attempts")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(attempts)
        .map(finish);
    let delivery_attempts = warp::path!("admin" / "api" / "deliveries" / String / "attempts")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(delivery_attempts)
        .map(finish);
    let redeliver = warp::path!("admin" / "api" / "transmissions" / String / "redeliver")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(redeliver)
        .map(finish);
    let redeliver_failed = warp::path!("admin" / "api" / "partners" / String / "redeliver-failed")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(redeliver_failed)
        .map(finish);
    attempts
        .or(delivery_attempts)
        .unify()
        .or(redeliver)
        .unify()
        .or(redeliver_failed)
        .unify()
        .boxed()
}

/// The `env` query parameter of admin calls; live when absent.
pub(super) fn env_param(ctx: &Ctx) -> Result<Env, ApiError> {
    match ctx.param("env") {
        None | Some("") => Ok(Env::Live),
        Some(e) => Env::parse(e)
            .ok_or_else(|| ApiError::bad_request("env must be live or test").field("env")),
    }
}

/// Sends a failed transmission again (`?env=test` for test traffic): as a new push when
/// its receiver has a push URL, else back into its poll queue.
async fn redeliver(uuid: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let env = env_param(&ctx)?;
    let uuid = parse_id(&uuid, "transmission")?;
    let t = state
        .store
        .transmission(env, uuid)?
        .ok_or_else(|| ApiError::not_found("transmission"))?;
    if t.state.status != crate::model::Status::Failed {
        return Err(ApiError::conflict(format!(
            "only failed transmissions are redelivered; this one is {}",
            t.state.status.as_str()
        )));
    }
    let target = crate::store::records::split_transmission_uuid(uuid)
        .ok_or_else(|| ApiError::not_found("transmission"))?;
    let n = state
        .store
        .redeliver(env, vec![target], crate::store::now_ms())
        .await?;
    Ok(ok(
        StatusCode::OK,
        json!({"uuid": uuid, "env": env, "requeued": n}),
    ))
}

/// Sends every failed transmission to a partner again (`?env=test` for test traffic).
async fn redeliver_failed(code: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    let env = env_param(&ctx)?;
    if state.store.directory().partner(&code).is_none() {
        return Err(ApiError::not_found("partner"));
    }
    let targets = state.store.failed_transmissions(env, &code)?;
    let n = state
        .store
        .redeliver(env, targets, crate::store::now_ms())
        .await?;
    Ok(ok(
        StatusCode::OK,
        json!({"code": code, "env": env, "requeued": n}),
    ))
}

/// Every push attempt of a transmission (`?env=test` for test traffic).
async fn attempts(uuid: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let env = env_param(&ctx)?;
    let uuid = parse_id(&uuid, "transmission")?;
    if state.store.transmission(env, uuid)?.is_none() {
        return Err(ApiError::not_found("transmission"));
    }
    attempt_list(&state, env, uuid)
}

/// Every attempt of any delivery, by its id (a push's id is its transmission's uuid).
/// An id with no attempts answers an empty list.
async fn delivery_attempts(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let env = env_param(&ctx)?;
    let id = parse_id(&id, "delivery")?;
    attempt_list(&state, env, id)
}

fn attempt_list(state: &AppState, env: Env, id: uuid::Uuid) -> Result<Response, ApiError> {
    let list: Vec<Value> = state
        .store
        .attempts(env, id)?
        .into_iter()
        .map(|(n, a)| {
            json!({
                "attempt": n,
                "at": rfc3339(a.at),
                "url": a.url,
                "status": a.status,
                "latencyMs": a.latency_ms,
                "response": a.response,
                "error": a.error,
            })
        })
        .collect();
    Ok(ok(StatusCode::OK, list))
}
