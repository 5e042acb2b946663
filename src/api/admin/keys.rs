//! `POST|GET /admin/api/partners/{code}/keys` and
//! `DELETE /admin/api/partners/{code}/keys/{id}`.

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::{
    auth, body, ctx, finish, ok, parse_id, parse_json, path_segment, read_body, rfc3339,
    with_state, BodyStream, Ctx,
};
use super::ADMIN_BODY_LIMIT;
use crate::error::{ApiError, InvalidExt};
use crate::model::{parse_short_text, Env};
use crate::store::ApiKeyRec;
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let b = move || b.clone();
    let s = move || with_state(state.clone());
    let create_key = warp::path!("admin" / "api" / "partners" / String / "keys")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(create_key)
        .map(finish);
    let list_keys = warp::path!("admin" / "api" / "partners" / String / "keys")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list_keys)
        .map(finish);
    let revoke_key = warp::path!("admin" / "api" / "partners" / String / "keys" / String)
        .and(warp::delete())
        .and(s())
        .and(ctx())
        .then(revoke_key)
        .map(finish);
    create_key
        .or(list_keys)
        .unify()
        .or(revoke_key)
        .unify()
        .boxed()
}

/// A key as the admin sees it: never its secret; when it was last used (to the minute
/// after a restart).
pub(super) fn key_view(state: &AppState, k: &ApiKeyRec) -> Result<Value, ApiError> {
    Ok(json!({
        "id": k.id,
        "partner": k.partner,
        "prefix": k.prefix,
        "env": k.env,
        "label": k.label,
        "createdAt": rfc3339(k.created_at),
        "revokedAt": k.revoked_at.map(rfc3339),
        "active": k.revoked_at.is_none(),
        "lastUsedAt": state.store.key_last_used(k.id)?.map(rfc3339),
    }))
}

#[derive(Deserialize, Default)]
struct CreateKey {
    label: Option<String>,
    env: Option<String>,
}

async fn create_key(
    code: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    let bytes = read_body(&ctx, body, ADMIN_BODY_LIMIT).await?;
    let req: CreateKey = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        parse_json(&ctx, &bytes)?
    };
    let env = match req.env.as_deref() {
        None => Env::Live,
        Some(e) => {
            Env::parse(e).ok_or_else(|| ApiError::invalid("env", "env must be live or test"))?
        }
    };
    let label = req
        .label
        .map(|l| parse_short_text(&l, 200).field("label"))
        .transpose()?;
    let created = state.store.create_key(&code, env, label).await?;
    let mut v = key_view(&state, &created.record)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("key".into(), Value::String(created.secret));
    }
    Ok(ok(StatusCode::CREATED, v))
}

async fn list_keys(code: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    if state.store.directory().partner(&code).is_none() {
        return Err(ApiError::not_found("partner"));
    }
    let env = match ctx.param("env") {
        None | Some("") => None,
        Some(e) => Some(
            Env::parse(e)
                .ok_or_else(|| ApiError::bad_request("env must be live or test").field("env"))?,
        ),
    };
    let keys: Vec<Value> = state
        .store
        .list_keys(&code)?
        .iter()
        .filter(|k| env.is_none_or(|e| k.env == e))
        .map(|k| key_view(&state, k))
        .collect::<Result<_, _>>()?;
    Ok(ok(StatusCode::OK, keys))
}

async fn revoke_key(
    code: String,
    id: String,
    state: AppState,
    ctx: Ctx,
) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    let id = parse_id(&id, "key")?;
    let k = state.store.revoke_key(&code, id).await?;
    Ok(ok(StatusCode::OK, key_view(&state, &k)?))
}
