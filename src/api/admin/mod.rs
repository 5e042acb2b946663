//! The admin JSON API under `/admin/api/`: one module per resource, each with its
//! `routes(state)`. Every call passes the one admin guard in `api::admin_auth` (the admin
//! token, or a signed-in user's session).

mod keys;
mod partners;
mod routes;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use crate::error::ApiError;
use crate::store::directory::DirError;
use crate::AppState;

/// The largest body an admin call reads.
const ADMIN_BODY_LIMIT: u64 = 256 * 1024;

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

/// The admin routes of partners, their keys, and routes.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    partners::routes(state.clone())
        .or(keys::routes(state.clone()))
        .unify()
        .or(routes::routes(state))
        .unify()
        .boxed()
}
