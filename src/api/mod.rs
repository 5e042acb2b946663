//! The HTTP surface: one module per resource, each exporting `routes(state)` built from one
//! small filter per endpoint. Filters only match method and path and hand the request to a
//! handler; handlers return `Result<Response, ApiError>`, so domain errors never travel as
//! warp rejections (which mean "try the next route"). The single [`recover`] at the top
//! maps what is left (unknown paths, wrong methods) to the JSON envelope.

mod admin;
mod auth;
mod deliveries;
mod documents;
mod inbound;
mod system;
mod tokens;
mod tracking;
mod transmissions;

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection};

use crate::error::ApiError;
use crate::AppState;

pub use auth::{hash_admin_token, RateLimiter, TokenKeys};
pub use system::redirect_to_https;

/// Every route of the appliance, with the envelope applied to errors.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    system::routes(state.clone())
        .or(inbound::routes(state.clone()))
        .unify()
        .or(documents::routes(state.clone()))
        .unify()
        .or(transmissions::routes(state.clone()))
        .unify()
        .or(deliveries::routes(state.clone()))
        .unify()
        .or(tokens::routes(state.clone()))
        .unify()
        .or(tracking::routes(state.clone()))
        .unify()
        .or(admin::routes(state))
        .unify()
        .recover(recover)
        .unify()
        .boxed()
}

/// What handlers get of a request besides its path parameters and body.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
}

impl Ctx {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// A header as text (absent when missing or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type of the body, lowercased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type")
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|m| !m.is_empty())
    }
}

/// A request body not yet read; handlers read it with [`read_body`] and its size limit.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Headers and the parsed query string. Never rejects: a query that is not valid
/// `application/x-www-form-urlencoded` is read as far as possible, and handlers judge values.
fn ctx() -> impl Filter<Extract = (Ctx,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::query::raw().or_else(|_| async { Ok::<_, Rejection>((String::new(),)) }))
        .map(|headers, raw: String| Ctx {
            headers,
            query: form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        })
}

fn body() -> impl Filter<Extract = (BodyStream,), Error = Rejection> + Clone {
    warp::body::stream().map(boxed_body)
}

fn boxed_body<S, B>(s: S) -> BodyStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    Box::pin(s.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining()))))
}

/// Reads a whole body, refusing with 413 as soon as it passes `limit` — before reading
/// anything when `Content-Length` already says so, and while reading for chunked bodies.
pub async fn read_body(ctx: &Ctx, mut body: BodyStream, limit: u64) -> Result<Bytes, ApiError> {
    if let Some(len) = ctx
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ApiError::too_large(limit));
        }
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Parses a JSON body into `T`: 415 unless the content type is JSON (or absent), 400 for
/// malformed JSON or wrong types, naming the place when serde can.
pub fn parse_json<T: serde::de::DeserializeOwned>(ctx: &Ctx, bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(media) = ctx.media_type() {
        if !is_json_media(&media) {
            return Err(ApiError::unsupported_media(format!(
                "this endpoint reads application/json, not {media}"
            )));
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Whether a media type is JSON (`application/json`, `application/*+json`).
pub fn is_json_media(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Answers a handler's result: the reply, or the error envelope.
fn finish(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// A JSON response with the given status.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "response serialization failed");
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"success": false, "data": null, "error": {"code": "internal", "message": "internal error", "field": null}}),
            );
        }
    };
    let mut res = Response::new(bytes.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

/// The success envelope `{"success": true, "data": ..., "error": null}`.
pub fn ok<T: Serialize>(status: StatusCode, data: T) -> Response {
    #[derive(Serialize)]
    struct Envelope<T> {
        success: bool,
        data: T,
        error: Option<()>,
    }
    json_response(
        status,
        &Envelope {
            success: true,
            data,
            error: None,
        },
    )
}

/// Maps the rejections that reach the top (no route matched) to the envelope.
async fn recover(r: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType};
    let e = if r.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if r.find::<MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
    } else if r.find::<PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if r.find::<LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required",
        )
    } else if r.find::<UnsupportedMediaType>().is_some() {
        ApiError::unsupported_media("unsupported content type")
    } else {
        tracing::debug!(rejection = ?r, "unhandled rejection");
        ApiError::bad_request("the request could not be read")
    };
    Ok(e.into_response())
}

/// RFC 3339 UTC text of a unix-milliseconds time, to the second.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses a path id; anything that is not a UUID is simply not found.
pub fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}
