//! The Background API: any `/api/v1/*` call made with `Waybill-Background: <webhook URL>`,
//! `Waybill-Background: none` or `Prefer: respond-async` is authenticated, persisted as a
//! job and answered `202` at once; `worker::background` later replays it through these
//! same routes, as the same partner. Here: the interception ([`intercept`]), the job's
//! state, content and cancellation, and the admin's list and retry.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::idempotency::{self, Answer};
use super::{
    auth, body, ctx, finish, ok, parse_id, read_body, rfc3339_ms, with_state, BodyStream, Ctx,
};
use crate::error::ApiError;
use crate::model::Env;
use crate::store::background::{JobCancel, JobFilter, JobRec, JobState, MAX_STORED_HEADER_BYTES};
use crate::store::{now_ms, Principal};
use crate::AppState;

/// Who a replayed request runs as. Put on the request as an extension by the worker,
/// in-process only: nothing from the network can set it.
#[derive(Debug, Clone)]
pub struct Injected {
    pub job_id: Uuid,
    pub partner: String,
    pub env: Env,
    pub key_id: Uuid,
    /// Turned true by the write that stored the replay's answer and, with it, ended the job.
    pub ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The longest webhook URL accepted.
const MAX_URL: usize = 2000;

/// Request headers never stored with a job: credentials, connection handling, and the
/// background and idempotency headers themselves (the replay sets its own key).
const DROPPED_HEADERS: [&str; 15] = [
    "authorization",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "expect",
    "waybill-background",
    "prefer",
    "idempotency-key",
    "proxy-authorization",
];

/// How a call asked to run in the background.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Webhook(String),
    Quiet,
    Prefer,
}

/// Whether `ctx` asks for the background; a replay never does (no job makes another).
fn wanted(ctx: &Ctx) -> bool {
    ctx.injected.is_none() && (ctx.headers.contains_key("waybill-background") || prefers_async(ctx))
}

fn prefers_async(ctx: &Ctx) -> bool {
    ctx.headers.get_all("prefer").iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split([',', ';'])
            .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
    })
}

fn bad_webhook(why: impl Into<String>) -> ApiError {
    let mut e = ApiError::bad_request(why).field("Waybill-Background");
    e.code = "invalid_webhook";
    e
}

/// Whether `host`'s addresses may be called: an address literal is judged as is, a name
/// by what it resolves to now (and again at every delivery).
async fn check_host(state: &AppState, host: &str, port: u16) -> Result<(), ApiError> {
    match host_refused(state, host, port).await {
        Some(Refused::Unresolved) => Err(bad_webhook(format!(
            "the webhook host {host} does not resolve"
        ))),
        Some(Refused::NoAddress) => Err(bad_webhook(format!(
            "the webhook host {host} has no address"
        ))),
        Some(Refused::Policy(why)) => Err(bad_webhook(format!(
            "the webhook URL may not be called: {why}"
        ))),
        None => Ok(()),
    }
}

/// Why a callback host may not be called.
pub(super) enum Refused {
    Unresolved,
    NoAddress,
    /// The outbound policy refuses one of its addresses, for this reason.
    Policy(String),
}

/// Why `host`'s addresses may not be called, if they may not: an address literal is judged
/// as is, a name by what it resolves to now (and again at every call, when it connects).
pub(super) async fn host_refused(state: &AppState, host: &str, port: u16) -> Option<Refused> {
    let allow = state.config.outbound_allow();
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::net::lookup_host((host.to_owned(), port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => return Some(Refused::Unresolved),
            }
        }
    };
    if addrs.is_empty() {
        return Some(Refused::NoAddress);
    }
    addrs.into_iter().find_map(|ip| {
        crate::outbound::policy::permitted(ip, &allow)
            .err()
            .map(Refused::Policy)
    })
}

/// The background mode of a request: 400 for a webhook URL that is not absolute
/// http(s) or whose address the outbound policy refuses.
async fn mode(state: &AppState, ctx: &Ctx) -> Result<Mode, ApiError> {
    let Some(raw) = ctx.headers.get("waybill-background") else {
        return Ok(Mode::Prefer);
    };
    let text = raw
        .to_str()
        .map_err(|_| bad_webhook("Waybill-Background must be printable ASCII"))?
        .trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Mode::Quiet);
    }
    if text.len() > MAX_URL {
        return Err(bad_webhook(format!(
            "the webhook URL is longer than {MAX_URL} characters"
        )));
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|_| bad_webhook("Waybill-Background must be none or an http(s) URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_webhook("the webhook URL must be http:// or https://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad_webhook("the webhook URL has no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad_webhook("the webhook URL may not carry credentials"));
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    check_host(state, host, port).await?;
    Ok(Mode::Webhook(text.to_owned()))
}

/// The headers kept with a job (403-free: credentials never); 431 when they are larger
/// than a job keeps.
fn stored_headers(ctx: &Ctx) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    let mut size = 0;
    for (name, value) in &ctx.headers {
        let name = name.as_str();
        if DROPPED_HEADERS.contains(&name) || name.starts_with("proxy-") {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        size += name.len() + value.len() + 4;
        if size > MAX_STORED_HEADER_BYTES {
            return Err(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "a background request keeps at most {MAX_STORED_HEADER_BYTES} bytes of headers"
                ),
            ));
        }
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn state_location(id: Uuid) -> String {
    format!("/api/v1/background/{id}")
}

fn content_location(id: Uuid) -> String {
    format!("/api/v1/background/{id}/content")
}

/// Every `/api/v1/*` request that asks for the background; the others pass on.
pub fn intercept(state: AppState) -> BoxedFilter<(Response,)> {
    // A cheap look at two headers first, so ordinary calls do not pay for a second copy
    // of all their headers and query here; `wanted` then decides on the full request.
    let may_want = warp::header::optional::<String>("waybill-background")
        .and(warp::header::optional::<String>("prefer"))
        .and_then(|bg: Option<String>, prefer: Option<String>| async move {
            if bg.is_some() || prefer.is_some() {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one();
    warp::path("api")
        .and(warp::path("v1"))
        .and(may_want)
        .and(ctx())
        .and_then(|ctx: Ctx| async move {
            if wanted(&ctx) {
                Ok(ctx)
            } else {
                Err(warp::reject::not_found())
            }
        })
        .and(with_state(state.clone()))
        .and(body(&state))
        .then(submit)
        .map(finish)
        .boxed()
}

async fn submit(ctx: Ctx, state: AppState, body: BodyStream) -> Result<Response, ApiError> {
    let limit = state.config.server.max_body_bytes;
    let is_form = ctx.media_type().as_deref() == Some("application/x-www-form-urlencoded");
    // Credentials first: a bad key is a 401 now, not a job that fails later.
    let (principal, bytes): (Principal, Bytes) = if auth::presents_key(&ctx) {
        let p = auth::partner(&state, &ctx)?;
        let b = read_body(&ctx, body, limit).await?;
        (p, if is_form { auth::strip_form_key(&b) } else { b })
    } else if is_form {
        super::read_form_with_key(&state, &ctx, body, limit).await?
    } else {
        return Err(ApiError::unauthorized());
    };
    let mode = mode(&state, &ctx).await?;
    let claim = match idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    super::inbound::check_disk(&state)?;
    let headers = stored_headers(&ctx)?;
    let now = now_ms();
    let id = Uuid::now_v7();
    let job = JobRec {
        id,
        env: principal.env,
        partner: principal.partner.clone(),
        key_id: principal.key_id,
        method: ctx.method.as_str().to_owned(),
        path: ctx.path.clone(),
        query: idempotency::query_without_key(&ctx.raw_query),
        headers,
        body: None,
        webhook: match &mode {
            Mode::Webhook(url) => Some(url.clone()),
            _ => None,
        },
        state: JobState::Queued,
        created_at: now,
        started_at: None,
        finished_at: None,
        lease_until: None,
        runs: 0,
        response_status: None,
        error: None,
    };
    let mut answer = Answer::ok(
        StatusCode::ACCEPTED,
        json!({
            "id": id,
            "state": "queued",
            "stateLocation": state_location(id),
            "contentLocation": content_location(id),
        }),
    )
    .header("location", state_location(id))
    .header("retry-after", "1");
    if mode == Mode::Prefer {
        answer = answer.header("preference-applied", "respond-async");
    }
    let put = claim.as_ref().map(|c| c.put(&state, &answer)).transpose()?;
    // With a run slot free now, the job is started in the write that stores it.
    let slot = state.jobs.free_slot();
    let lease = slot
        .as_ref()
        .map(|_| now + crate::worker::background::lease_ms(&state));
    let job = state.store.submit_job(job, bytes, put, lease).await?;
    match slot {
        Some(slot) => state.jobs.hand_over(job, slot),
        None => state.jobs.queued.notify_one(),
    }
    Ok(answer.into_response())
}

/// The job's state as its partner sees it.
fn view(job: &JobRec) -> Value {
    json!({
        "id": job.id,
        "state": job.state.as_str(),
        "method": job.method,
        "path": job.path,
        "query": job.query,
        "createdAt": rfc3339_ms(job.created_at),
        "startedAt": job.started_at.map(rfc3339_ms),
        "finishedAt": job.finished_at.map(rfc3339_ms),
        "responseStatus": job.response_status,
        "error": job.error,
        "runs": job.runs,
        "webhook": job.webhook.is_some(),
        "stateLocation": state_location(job.id),
        "contentLocation": content_location(job.id),
    })
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let get = warp::path!("api" / "v1" / "background" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(get_job)
        .map(finish);
    let content = warp::path!("api" / "v1" / "background" / String / "content")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(get_content)
        .map(finish);
    let cancel = warp::path!("api" / "v1" / "background" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(ctx())
        .and(body(&state))
        .then(cancel)
        .map(finish);
    let list = warp::path!("admin" / "api" / "jobs")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(ctx())
        .then(admin_list)
        .map(finish);
    let retry = warp::path!("admin" / "api" / "jobs" / String / "retry")
        .and(warp::post())
        .and(with_state(state))
        .and(ctx())
        .then(admin_retry)
        .map(finish);
    get.or(content)
        .unify()
        .or(cancel)
        .unify()
        .or(list)
        .unify()
        .or(retry)
        .unify()
        .boxed()
}

/// The caller's job; 404 for anyone else's, and for the other environment's.
fn own_job(state: &AppState, ctx: &Ctx, id: &str) -> Result<(Principal, JobRec), ApiError> {
    let principal = auth::partner(state, ctx)?;
    let id = parse_id(id, "job")?;
    let job = state
        .store
        .job(principal.env, id)?
        .filter(|j| j.partner == principal.partner)
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok((principal, job))
}

async fn get_job(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let (_, job) = own_job(&state, &ctx, &id)?;
    Ok(ok(StatusCode::OK, view(&job)))
}

async fn get_content(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let (_, job) = own_job(&state, &ctx, &id)?;
    match job.state {
        JobState::Queued | JobState::Running => Ok(Answer::ok(StatusCode::ACCEPTED, view(&job))
            .header("retry-after", "1")
            .header("location", state_location(job.id))
            .into_response()),
        JobState::Completed => {
            let stored = state
                .store
                .job_content(job.env, job.id)?
                .ok_or_else(|| ApiError::not_found("job content"))?;
            let body = state.store.response_body(&stored)?;
            Ok(idempotency::build(stored.status, &stored.headers, body))
        }
        JobState::Failed => {
            let mut e = ApiError::conflict(format!(
                "the job failed and has no content: {}",
                job.error.as_deref().unwrap_or("unknown reason")
            ));
            e.code = "job_failed";
            Err(e)
        }
        JobState::Cancelled => {
            let mut e = ApiError::conflict("the job was cancelled and has no content");
            e.code = "job_cancelled";
            Err(e)
        }
    }
}

async fn cancel(
    id: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let principal = auth::partner(&state, &ctx)?;
    let bytes = read_body(&ctx, body, 64 * 1024).await?;
    let id = parse_id(&id, "job")?;
    let claim = match idempotency::begin(&state, &ctx, &principal, &bytes)
        .await?
        .split()
    {
        Ok(c) => c,
        Err(replay) => return Ok(replay),
    };
    let remember = claim.as_ref().map(|c| {
        c.remember(|o: &JobCancel| match o {
            JobCancel::Done(job) => Some(Answer::ok(StatusCode::OK, view(job))),
            _ => None,
        })
    });
    match state
        .store
        .cancel_job(
            principal.env,
            Some(principal.partner),
            id,
            remember,
            now_ms(),
        )
        .await?
    {
        JobCancel::Done(job) => Ok(ok(StatusCode::OK, view(&job))),
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

pub(super) fn admin_view(job: &JobRec) -> Value {
    let mut v = view(job);
    if let Some(o) = v.as_object_mut() {
        o.insert("partner".into(), json!(job.partner));
        o.insert("env".into(), json!(job.env.as_str()));
        o.insert("webhookUrl".into(), json!(job.webhook));
    }
    v
}

/// A time filter: RFC 3339.
fn time_param(ctx: &Ctx, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(raw) = ctx.param(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
        .map_err(|_| ApiError::bad_request(format!("{name} must be an RFC 3339 time")).field(name))
}

/// Job records one listing page looks at, per environment, at most.
const JOB_SCAN: usize = 20_000;

/// `GET /admin/api/jobs?state=&partner=&env=&from=&to=&cursor=&limit=`, newest first. A
/// rare filter may answer a short (even empty) page with a `nextCursor`: the listing
/// looks at a bounded number of jobs per call, and the next call goes on from there.
async fn admin_list(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let env = match ctx.param("env").filter(|v| !v.is_empty()) {
        None => None,
        Some(e) => Some(
            Env::parse(e)
                .ok_or_else(|| ApiError::bad_request("env must be live or test").field("env"))?,
        ),
    };
    let job_state = match ctx.param("state").filter(|v| !v.is_empty()) {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request("state must be queued, running, completed, failed or cancelled")
                .field("state")
        })?),
    };
    let limit = match ctx.param("limit").filter(|v| !v.is_empty()) {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("limit must be a whole number from 1 to 500").field("limit")
            })?,
    };
    let before = match ctx.param("cursor").filter(|v| !v.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<Uuid>().map_err(|_| {
            ApiError::bad_request("cursor must be a job id from an earlier page").field("cursor")
        })?),
    };
    let filter = JobFilter {
        env,
        state: job_state,
        partner: ctx
            .param("partner")
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
        from: time_param(&ctx, "from")?,
        to: time_param(&ctx, "to")?,
        before,
        limit,
    };
    let store = std::sync::Arc::clone(&state.store);
    let (jobs, next) = tokio::task::spawn_blocking(move || store.list_jobs(&filter, JOB_SCAN))
        .await
        .map_err(|_| ApiError::unavailable("the listing did not finish"))??;
    Ok(ok(
        StatusCode::OK,
        json!({
            "jobs": jobs.iter().map(admin_view).collect::<Vec<_>>(),
            "nextCursor": next,
        }),
    ))
}

/// `POST /admin/api/jobs/{id}/retry?env=`: a failed job runs again.
async fn admin_retry(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let env = super::deliveries::env_param(&ctx)?;
    let id = parse_id(&id, "job")?;
    match state.store.retry_job(env, id).await? {
        JobCancel::Done(job) => {
            state.jobs.queued.notify_one();
            Ok(ok(StatusCode::OK, admin_view(&job)))
        }
        JobCancel::Conflict(job) => {
            let mut e = ApiError::conflict(format!(
                "job {} is {}; only a failed job can be retried",
                job.id,
                job.state.as_str()
            ));
            e.code = "not_retryable";
            Err(e)
        }
        JobCancel::NotFound => Err(ApiError::not_found("job")),
    }
}
