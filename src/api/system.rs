//! Liveness, readiness and the OpenAPI document.

use http::StatusCode;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::{ok, with_state};
use crate::error::ApiError;
use crate::AppState;

/// The OpenAPI 3 description of this API, kept next to the handlers it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| ok(StatusCode::OK, serde_json::json!({"status": "up"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state))
        .map(|s: AppState| {
            if s.is_ready() {
                ok(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                ApiError::unavailable(
                    "not ready: the store is closed or the workers are not running",
                )
                .into_response()
            }
        });
    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| {
            let mut res = Response::new(OPENAPI.into());
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            res
        });
    healthz.or(readyz).unify().or(openapi).unify().boxed()
}
