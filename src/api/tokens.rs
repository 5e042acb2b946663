//! Partner tokens: `POST /api/v1/auth/token` trades an API key for a short-lived JWT,
//! accepted wherever the key is (see `auth`).

use http::StatusCode;
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::tracking::IGNORED_BODY;
use super::{auth, body, ctx, finish, ok, read_body, rfc3339, with_state, BodyStream, Ctx};
use crate::error::ApiError;
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "auth" / "token")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(token)
        .map(finish)
        .boxed()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView {
    token: String,
    token_type: &'static str,
    expires_at: String,
    /// Seconds from now.
    expires_in: u64,
    env: &'static str,
    partner: String,
}

/// Mints a token for the partner and environment of the API key presented. A body, if
/// any, is read and ignored: everything the token says comes from the key.
async fn token(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let principal = auth::partner_by_key(&state, &ctx)?;
    read_body(&ctx, body, IGNORED_BODY).await?;
    let minted = auth::mint(&state, &principal)?;
    Ok(ok(
        StatusCode::OK,
        TokenView {
            token: minted.token,
            token_type: "Bearer",
            expires_at: rfc3339(minted.expires_at as i64 * 1000),
            expires_in: minted.expires_in,
            env: principal.env.as_str(),
            partner: principal.partner,
        },
    ))
}
