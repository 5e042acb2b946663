//! The admin JSON API under `/admin/api/`: one module per resource, each with its
//! `routes(state)`. Every call passes the one admin guard in `api::admin_auth` (the admin
//! token, or a signed-in user's session).
//!
//! Every listing is paged with a cursor: `?cursor=` takes the `nextCursor` of the page
//! before, `?limit=` the page size. A listing reads a bounded number of records per call,
//! so a page of a rare filter may come back short with a `nextCursor`: go on from there.

mod backup;
mod bulk;
mod deliveries;
mod jobs;
mod keys;
mod messages;
mod partners;
mod routes;
mod stats;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::Ctx;
use crate::error::ApiError;
use crate::model::Env;
use crate::store::directory::DirError;
use crate::AppState;

/// The largest body an admin call reads.
const ADMIN_BODY_LIMIT: u64 = 256 * 1024;
/// Records one listing page looks at, at most.
const MAX_SCAN: usize = 20_000;

impl From<DirError> for ApiError {
    fn from(e: DirError) -> Self {
        match e {
            DirError::NotFound(what) => ApiError::not_found(what),
            DirError::Conflict(m) => ApiError::conflict(m),
            DirError::Invalid { field, message } => ApiError::invalid(field, message),
            DirError::Store(e) => e.into(),
        }
    }
}

/// Every admin route of this module's resources.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    partners::routes(state.clone())
        .or(keys::routes(state.clone()))
        .unify()
        .or(routes::routes(state.clone()))
        .unify()
        .or(messages::routes(state.clone()))
        .unify()
        .or(bulk::routes(state.clone()))
        .unify()
        .or(jobs::routes(state.clone()))
        .unify()
        .or(deliveries::routes(state.clone()))
        .unify()
        .or(stats::routes(state.clone()))
        .unify()
        .or(backup::routes(state))
        .unify()
        .boxed()
}

/// `?limit=`: 1 to `max`, `default` when absent.
fn limit_param(ctx: &Ctx, default: usize, max: usize) -> Result<usize, ApiError> {
    match ctx.param("limit").filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a whole number from 1 to {max}"))
                    .field("limit")
            }),
    }
}

/// `?cursor=` of listings paged by id.
fn id_cursor(ctx: &Ctx) -> Result<Option<uuid::Uuid>, ApiError> {
    match ctx.param("cursor").filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            ApiError::bad_request("cursor is not one this API gave out").field("cursor")
        }),
    }
}

/// `?env=`: `None` when absent.
fn env_filter(ctx: &Ctx) -> Result<Option<Env>, ApiError> {
    match ctx.param("env").filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(e) => Env::parse(e)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("env must be live or test").field("env")),
    }
}
