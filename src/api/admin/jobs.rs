//! One background job as the admin sees it: `GET /admin/api/jobs/{id}` (its stored
//! request and, once it ran, its stored response) and `POST /admin/api/jobs/{id}/cancel`.
//! The list and retry are in `api::background`, beside the partner's calls.

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::background::admin_view;
use super::super::{auth, ctx, finish, is_json_media, ok, parse_id, with_state, Ctx};
use super::env_filter;
use crate::error::ApiError;
use crate::model::Env;
use crate::store::background::JobCancel;
use crate::store::{now_ms, JobRec};
use crate::AppState;

/// Most body bytes shown inline; the rest is cut (`bodyTruncated`).
const SHOWN_BODY: usize = 64 * 1024;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let s = move || with_state(state.clone());
    let one = warp::path!("admin" / "api" / "jobs" / String)
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(one)
        .map(finish);
    let cancel = warp::path!("admin" / "api" / "jobs" / String / "cancel")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(cancel)
        .map(finish);
    one.or(cancel).unify().boxed()
}

/// A job by id: in `?env=` when given, else in either environment.
fn find(state: &AppState, ctx: &Ctx, id: &str) -> Result<JobRec, ApiError> {
    let id = parse_id(id, "job")?;
    let envs = match env_filter(ctx)? {
        Some(e) => vec![e],
        None => vec![Env::Live, Env::Test],
    };
    for env in envs {
        if let Some(j) = state.store.job(env, id)? {
            return Ok(j);
        }
    }
    Err(ApiError::not_found("job"))
}

/// A body for reading: text when it is UTF-8, else base64; cut at [`SHOWN_BODY`].
fn shown(bytes: &Bytes, content_type: Option<&str>) -> Value {
    let cut = &bytes[..bytes.len().min(SHOWN_BODY)];
    let text = std::str::from_utf8(cut).ok().filter(|_| {
        content_type.is_none_or(|c| {
            c.starts_with("text/") || is_json_media(c) || c.contains("xml") || c.contains("form")
        })
    });
    json!({
        "bytes": bytes.len(),
        "encoding": if text.is_some() { "utf-8" } else { "base64" },
        "body": match text {
            Some(t) => t.to_owned(),
            None => base64::engine::general_purpose::STANDARD.encode(cut),
        },
        "bodyTruncated": bytes.len() > SHOWN_BODY,
    })
}

/// The media type named by a stored `Content-Type` header.
fn content_type(headers: &[(String, String)]) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| crate::model::media_essence(v))
}

/// `GET /admin/api/jobs/{id}`: the job, the request it stored (credentials were never
/// stored) and the response its run stored.
async fn one(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let job = find(&state, &ctx, &id)?;
    let store = std::sync::Arc::clone(&state.store);
    let j = job.clone();
    let (body, content) = tokio::task::spawn_blocking(move || {
        let body = store.job_body(&j)?;
        let content = match store.job_content(j.env, j.id)? {
            Some(r) => Some((store.response_body(&r)?, r)),
            None => None,
        };
        Ok::<_, crate::store::StoreError>((body, content))
    })
    .await
    .map_err(|_| ApiError::unavailable("the job read did not finish"))??;
    let mut v = admin_view(&job);
    let mut request = json!({
        "method": job.method,
        "path": job.path,
        "query": job.query,
        "headers": job.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
    });
    merge(
        &mut request,
        shown(&body, content_type(&job.headers).as_deref()),
    );
    let response = content.map(|(bytes, r)| {
        let mut out = json!({
            "status": r.status,
            "headers": r.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        });
        merge(&mut out, shown(&bytes, content_type(&r.headers).as_deref()));
        out
    });
    if let Some(o) = v.as_object_mut() {
        o.insert("request".into(), request);
        o.insert("response".into(), response.unwrap_or(Value::Null));
    }
    Ok(ok(StatusCode::OK, v))
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// `POST /admin/api/jobs/{id}/cancel`: a queued job of any partner is cancelled.
async fn cancel(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let job = find(&state, &ctx, &id)?;
    match state
        .store
        .cancel_job(job.env, None, job.id, None, now_ms())
        .await?
    {
        JobCancel::Done(job) => Ok(ok(StatusCode::OK, admin_view(&job))),
        JobCancel::Conflict(job) => {
            let mut e = ApiError::conflict(format!(
                "job {} is {} and can no longer be cancelled",
                job.id,
                job.state.as_str()
            ));
            e.code = "not_cancellable";
            Err(e)
        }
        JobCancel::NotFound => Err(ApiError::not_found("job")),
    }
}
