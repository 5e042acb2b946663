//! The HTTP surface: one module per resource, each exporting `routes(state)` built from one
//! small filter per endpoint. Filters only match method and path and hand the request to a
//! handler; handlers return `Result<Response, ApiError>`, so domain errors never travel as
//! warp rejections (which mean "try the next route"). The single [`recover`] at the top
//! maps what is left (unknown paths, wrong methods) to the JSON envelope.

mod admin;
pub mod admin_auth;
mod admin_schemas;
mod admin_subscriptions;
mod admin_users;
mod auth;
pub mod background;
mod deliveries;
mod documents;
pub mod idempotency;
mod inbound;
mod input;
#[cfg(test)]
mod props;
mod subscriptions;
mod system;
mod tokens;
mod tracking;
mod transmissions;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
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

pub use auth::{hash_admin_token, AuthFailures, RateLimiter, TokenKeys};
use input::param_not_text;
pub use input::{check_json_payload, json_depth_within, MAX_JSON_DEPTH};
pub use system::{redirect_to_https, OPENAPI};

/// Every route of the appliance, with the envelope applied to errors.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let all = background::intercept(state.clone())
        .or(system::routes(state.clone()))
        .unify()
        .or(background::routes(state.clone()))
        .unify()
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
        .or(subscriptions::routes(state.clone()))
        .unify()
        .or(admin_subscriptions::routes(state.clone()))
        .unify()
        .or(admin_users::routes(state.clone()))
        .unify()
        .or(admin::routes(state.clone()))
        .unify()
        .or(admin_schemas::routes(state.clone()))
        .unify()
        .or(crate::ui::routes())
        .unify()
        .boxed();
    // Admin calls go through the audit log; everything else skips it at the first segment.
    refuse_large_heads()
        .and(admin_users::audited(state, all.clone()).or(all).unify())
        .recover(recover)
        .unify()
        .boxed()
}

/// A request whose headers are over the server's limits (see [`crate::server::LargeHead`]).
#[derive(Debug)]
struct HeadTooLarge;
impl warp::reject::Reject for HeadTooLarge {}

/// Refuses a request marked [`crate::server::LargeHead`] before any route reads it.
fn refuse_large_heads() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::ext::optional::<crate::server::LargeHead>()
        .and_then(|large: Option<crate::server::LargeHead>| async move {
            match large {
                Some(_) => Err(warp::reject::custom(HeadTooLarge)),
                None => Ok(()),
            }
        })
        .untuple_one()
}

/// What handlers get of a request besides its path parameters and body.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
    pub method: http::Method,
    /// The client's address, as the server accepted it.
    pub remote: Option<std::net::SocketAddr>,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The query string as sent.
    pub raw_query: String,
    /// Set only on a background job's replay, in-process: who the job runs as.
    pub injected: Option<background::Injected>,
    /// The first query parameter whose name or value does not decode to UTF-8 text
    /// (`query` holds it with U+FFFD in place of the bad bytes).
    pub query_not_text: Option<String>,
}

impl Ctx {
    /// 422 naming the first query parameter that is not UTF-8 text once percent-decoded:
    /// such a value would otherwise be read with U+FFFD in place of its bytes, and stored
    /// altered. Checked once the caller is authenticated, so anonymous callers get 401.
    pub fn check_query(&self) -> Result<(), ApiError> {
        match &self.query_not_text {
            None => Ok(()),
            Some(name) => Err(ApiError::invalid(
                name,
                format!("query parameter {name} is not UTF-8 text"),
            )),
        }
    }

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
            .map(crate::model::media_essence)
            .filter(|m| !m.is_empty())
    }

    /// The `Content-Type` header checked as a media type (415 naming it when it is not
    /// one); `None` when there is none.
    pub fn content_type(&self) -> Result<Option<String>, ApiError> {
        let Some(raw) = self.headers.get(http::header::CONTENT_TYPE) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(raw.as_bytes()).map_err(|_| {
            ApiError::unsupported_media("Content-Type is not printable ASCII").field("Content-Type")
        })?;
        crate::model::parse_media_type(text)
            .map(Some)
            .map_err(|crate::model::Invalid(why)| {
                ApiError::unsupported_media(format!("Content-Type {why}")).field("Content-Type")
            })
    }
}

/// A request body not yet read; handlers read it with [`read_body`] and its size limit.
/// It ends with [`BodyError::TimedOut`] once `server.body_timeout_seconds` have passed
/// since reading began.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Read(warp::Error),
    #[error("the request body did not arrive in time")]
    TimedOut,
}

fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Headers and the parsed query string. Never rejects: a query that is not valid
/// `application/x-www-form-urlencoded` is read as far as possible, and handlers judge values.
fn ctx() -> impl Filter<Extract = (Ctx,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::query::raw().or_else(|_| async { Ok::<_, Rejection>((String::new(),)) }))
        .and(warp::method())
        .and(warp::ext::optional::<crate::server::RemoteAddr>())
        .and(warp::path::full())
        .and(warp::ext::optional::<background::Injected>())
        .map(
            |headers,
             raw: String,
             method,
             remote: Option<crate::server::RemoteAddr>,
             path: warp::path::FullPath,
             injected| Ctx {
                headers,
                query: form_urlencoded::parse(raw.as_bytes())
                    .into_owned()
                    .collect(),
                method,
                remote: remote.map(|r| r.0),
                path: path.as_str().to_owned(),
                query_not_text: param_not_text(&raw),
                raw_query: raw,
                injected,
            },
        )
}

fn body(state: &AppState) -> impl Filter<Extract = (BodyStream,), Error = Rejection> + Clone {
    let limit = std::time::Duration::from_secs(state.config.server.body_timeout_seconds);
    warp::body::stream().map(move |s| boxed_body(s, limit))
}

fn boxed_body<S, B>(s: S, limit: std::time::Duration) -> BodyStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    let chunks = s.map(|chunk| {
        chunk
            .map(|mut b| b.copy_to_bytes(b.remaining()))
            .map_err(BodyError::Read)
    });
    Box::pin(Deadline {
        inner: Box::pin(chunks),
        limit,
        timer: None,
        expired: false,
    })
}

/// A body stream that ends with [`BodyError::TimedOut`] once `limit` has passed since it
/// was first polled, so a client that stops sending mid-body does not hold its handler.
struct Deadline {
    inner: BodyStream,
    limit: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.expired {
            return Poll::Ready(None);
        }
        let limit = self.limit;
        if let Poll::Ready(item) = self.inner.as_mut().poll_next(cx) {
            return Poll::Ready(item);
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return Poll::Ready(Some(Err(BodyError::TimedOut)));
        }
        Poll::Pending
    }
}

/// Refuses bodies in an encoding this server does not decode: a transfer coding other
/// than `chunked` (501, as RFC 9112 asks) or a content coding other than `identity`
/// (415). They would otherwise be stored still encoded.
pub fn check_encodings(ctx: &Ctx) -> Result<(), ApiError> {
    let codings = |name: http::header::HeaderName| -> Vec<String> {
        let mut out = Vec::new();
        for v in ctx.headers.get_all(name) {
            for c in String::from_utf8_lossy(v.as_bytes()).split(',') {
                let c = c.trim().to_ascii_lowercase();
                if !c.is_empty() {
                    out.push(c);
                }
            }
        }
        out
    };
    if let Some(other) = codings(http::header::TRANSFER_ENCODING)
        .into_iter()
        .find(|c| c != "chunked")
    {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_encoding",
            format!("transfer coding {other:?} is not supported; send the body plain or chunked"),
        )
        .field("Transfer-Encoding"));
    }
    if let Some(other) = codings(http::header::CONTENT_ENCODING)
        .into_iter()
        .find(|c| c != "identity")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            format!("content coding {other:?} is not supported; send the body uncompressed"),
        )
        .field("Content-Encoding"));
    }
    Ok(())
}

/// Reads a whole body, refusing with 413 as soon as it passes `limit` — before reading
/// anything when `Content-Length` already says so, and while reading for chunked bodies.
pub async fn read_body(ctx: &Ctx, body: BodyStream, limit: u64) -> Result<Bytes, ApiError> {
    read_body_after(ctx, body, limit, BytesMut::new()).await
}

/// [`read_body`] when the first bytes were already read.
async fn read_body_after(
    ctx: &Ctx,
    mut body: BodyStream,
    limit: u64,
    mut buf: BytesMut,
) -> Result<Bytes, ApiError> {
    check_encodings(ctx)?;
    if let Some(len) = ctx
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ApiError::too_large(limit));
        }
    }
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(body_error)?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::TimedOut => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive within server.body_timeout_seconds",
        ),
        BodyError::Read(e) => {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    }
}

/// Reads a form-encoded body whose API key travels in its `apikey` field: only up to
/// [`FORM_KEY_WINDOW`] bytes are read while looking for the key (401 if it is not there),
/// and the rest only once the key is valid. Returns the caller and the body without the
/// field.
pub async fn read_form_with_key(
    state: &AppState,
    ctx: &Ctx,
    mut body: BodyStream,
    limit: u64,
) -> Result<(crate::store::Principal, Bytes), ApiError> {
    check_encodings(ctx)?;
    let mut buf = BytesMut::new();
    let mut key = None;
    let mut done = false;
    while key.is_none() {
        match body.next().await {
            Some(chunk) => buf.extend_from_slice(&chunk.map_err(body_error)?),
            None => done = true,
        }
        // Only pairs that are complete (followed by '&', or at the end) are looked at.
        let end = if done {
            buf.len()
        } else {
            buf.iter().rposition(|b| *b == b'&').unwrap_or(0)
        };
        key = auth::form_key(&buf[..end.min(FORM_KEY_WINDOW)]);
        if key.is_none() && (done || buf.len() >= FORM_KEY_WINDOW) {
            return Err(ApiError::unauthorized());
        }
        if buf.len() as u64 > limit {
            return Err(ApiError::too_large(limit));
        }
    }
    let principal = auth::partner_by_form_key(state, ctx, key.as_deref().unwrap_or_default())?;
    let bytes = if done {
        buf.freeze()
    } else {
        read_body_after(ctx, body, limit, buf).await?
    };
    Ok((principal, auth::strip_form_key(&bytes)))
}

/// How much of a form body is read while looking for its `apikey` field.
pub const FORM_KEY_WINDOW: usize = 64 * 1024;

/// Parses a JSON body into `T`: 415 unless the content type is JSON (or absent), 400 for
/// malformed JSON or wrong types, naming the place when serde can. The top level must be
/// an object when `T` is a struct (see [`Obj`]).
pub fn parse_json<T: serde::de::DeserializeOwned>(ctx: &Ctx, bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(media) = ctx.media_type() {
        if !is_json_media(&media) {
            return Err(ApiError::unsupported_media(format!(
                "this endpoint reads application/json, not {media}"
            )));
        }
    }
    serde_json::from_slice::<Obj<T>>(bytes)
        .map(|o| o.0)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Parses a JSON body of any shape (a document, a list of criteria): 415 unless the content
/// type is JSON (or absent), 400 for malformed JSON.
pub fn parse_json_value(ctx: &Ctx, bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
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

/// A JSON object read into `T`. serde's derived structs also accept an array, read by
/// position (`["processed", null]` would fill a struct's first two fields); the contract
/// says a wrong type is a 400, so request bodies and their nested objects go through
/// this, which only takes a JSON object.
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A path segment as text: percent-decoded (so `a%20b` is `a b`, checked by the same rules
/// as the query parameter of that name); 422 naming `field` when it is not UTF-8.
pub fn path_segment(raw: &str, field: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::invalid(field, format!("{field} is not UTF-8 text")))
}

/// Whether a media type is JSON (`application/json`, `application/*+json`).
pub fn is_json_media(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Answers a handler's result: the reply, or the error envelope.
fn finish(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// The bytes of the success envelope around `data`.
pub fn envelope<T: Serialize>(data: T) -> Bytes {
    #[derive(Serialize)]
    struct Envelope<T> {
        success: bool,
        data: T,
        error: Option<()>,
    }
    match serde_json::to_vec(&Envelope {
        success: true,
        data,
        error: None,
    }) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            tracing::error!(error = %e, "response serialization failed");
            Bytes::from_static(br#"{"success":false,"data":null,"error":{"code":"internal","message":"internal error","field":null}}"#)
        }
    }
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
    } else if r.find::<HeadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request's headers are over the limit of {} fields and {} bytes",
                crate::server::MAX_HEADERS,
                crate::server::MAX_HEADER_BYTES
            ),
        )
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

/// RFC 3339 UTC text of a unix-milliseconds time, to the millisecond, for times that
/// are read as durations (a background job's queue wait and run time).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// Parses a path id (percent-decoded first); anything that is not a UUID is simply not
/// found.
pub fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::not_found(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_times_keep_their_milliseconds() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }
}
