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
        .and(with_state(state.clone()))
        .map(|s: AppState| {
            let why = s.not_ready();
            if why.is_empty() {
                use std::sync::atomic::Ordering::Relaxed;
                let c = &s.connections;
                ok(
                    StatusCode::OK,
                    serde_json::json!({
                        "status": "ready",
                        "writesQueued": s.store.writes_queued(),
                        "idempotencyKeysLoaded": s.store.answers().is_filled(),
                        "connections": {
                            "open": c.open.load(Relaxed),
                            "busy": c.busy.load(Relaxed),
                            "max": c.max.load(Relaxed),
                            "evicted": c.evicted.load(Relaxed),
                            "refused": c.refused.load(Relaxed),
                        },
                    }),
                )
            } else {
                let mut e = ApiError::unavailable(format!("not ready: {}", why.join("; ")));
                e.code = "not_ready";
                e.into_response()
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
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .and(warp::header::optional::<String>("authorization"))
        .then(metrics);
    healthz
        .or(readyz)
        .unify()
        .or(openapi)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
}

/// `GET /metrics`: the Prometheus text exposition; behind a bearer token when
/// `metrics.token` is set.
async fn metrics(state: AppState, authorization: Option<String>) -> Response {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let token = state.config.metrics.token.trim();
    if !token.is_empty() {
        let given = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        let (want, got): ([u8; 32], [u8; 32]) = (
            Sha256::digest(token.as_bytes()).into(),
            Sha256::digest(given.trim().as_bytes()).into(),
        );
        if !bool::from(want.ct_eq(&got)) {
            return ApiError::unauthorized().into_response();
        }
    }
    let levels = {
        let s = state.clone();
        tokio::task::spawn_blocking(move || levels(&s))
            .await
            .unwrap_or_default()
    };
    let mut res = Response::new(state.metrics.render(&levels).into());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    res
}

/// What `/metrics` reads at the moment it is asked: the kept counters (a few dozen
/// keys), the writer's queue, and sizes on disk.
fn levels(state: &AppState) -> crate::metrics::Levels {
    let (payload_bytes, store_bytes) = state.store.disk_usage();
    let mut queues = Vec::new();
    let mut messages = Vec::new();
    match state.store.counts(crate::store::now_ms()) {
        Ok(c) => {
            queues = vec![
                ("pending_transmissions", c.poll_pending),
                ("leased_transmissions", c.poll_leased),
                ("due_deliveries", c.outbox_waiting),
                ("held_deliveries", c.outbox_held),
                ("jobs_queued", c.jobs_queued),
                ("jobs_running", c.jobs_running),
                ("subscription_ids_pending", c.sub_pending),
            ];
            for env in [crate::model::Env::Live, crate::model::Env::Test] {
                let row = &c.messages.by_env[usize::from(env.byte())];
                for (status, n) in crate::model::Status::ALL.iter().zip(row) {
                    messages.push((env.as_str(), status.as_str(), *n));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the counters for the metrics"),
    }
    crate::metrics::Levels {
        writer_queue: state.store.writes_queued() as u64,
        queues,
        messages,
        payload_bytes,
        store_bytes,
        free_disk_bytes: crate::worker::free_bytes(&state.config.server.data_dir).unwrap_or(0),
        uptime: state.started.elapsed(),
    }
}

/// The routes of the plain-HTTP listener next to HTTPS (`server.redirect_http`): every
/// request is answered with a permanent redirect to the same path and query on HTTPS.
pub fn redirect_to_https(https_port: u16) -> BoxedFilter<(Response,)> {
    warp::header::optional::<String>("host")
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(
            move |host: Option<String>, path: warp::path::FullPath, query: String| {
                let host = host
                    .as_deref()
                    .map(host_without_port)
                    .unwrap_or("localhost");
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                let location = format!("https://{host}:{https_port}{}{query}", path.as_str());
                let mut res = Response::new(bytes::Bytes::new().into());
                match http::HeaderValue::from_str(&location) {
                    Ok(v) => {
                        *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
                        res.headers_mut().insert(http::header::LOCATION, v);
                    }
                    Err(_) => *res.status_mut() = StatusCode::BAD_REQUEST,
                }
                res
            },
        )
        .boxed()
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}
