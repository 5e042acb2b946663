//! `Idempotency-Key` on POST, PUT, PATCH and DELETE under `/api/v1`, with Stripe's
//! semantics: the first answer is stored for 24 hours under (environment, partner, key);
//! a repeat of the same request (method, path, query, body) gets that answer again with
//! `Idempotent-Replayed: true` and changes nothing; the same key on another request is
//! `409 idempotency_key_reused`; while the first is still running, `409
//! idempotency_key_in_use`.
//!
//! A handler calls [`begin`] once it knows the caller and has the body, before it
//! changes anything. The answer of a call that changes something is written by the same
//! writer job as the change ([`Claim::put`], [`Claim::remember`]), so a crash can never
//! leave the change without its answer or the reverse. Errors found before the change
//! (a 422, a 403) are not stored: nothing happened, and the caller may fix the request
//! and send it again under the same key.
//!
//! A background job's replay carries the job id as its key, whatever the method, which
//! is what makes a re-run after a crash find the answer of the first run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use sha2::{Digest, Sha256};
use warp::reply::Response;

use super::Ctx;
use crate::error::ApiError;
use crate::store::background::JobEnding;
use crate::store::StoreError;
use crate::store::{now_ms, IdemPut, IdemSlot, Principal, Remember, StoredResponse};
use crate::AppState;

/// How long a keyed call waits for the index of stored answers at start.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest key accepted, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// Response headers kept with a stored answer (besides `Content-Type`).
const KEPT_HEADERS: [&str; 4] = [
    "location",
    "retry-after",
    "preference-applied",
    "content-location",
];

/// A handler's answer in the one form that is both sent and stored.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    /// The success envelope around `data`.
    pub fn ok<T: Serialize>(status: StatusCode, data: T) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: super::envelope(data),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// As a stored response, when its body fits in a record.
    pub fn stored(&self) -> Option<StoredResponse> {
        StoredResponse::inline(self.status.as_u16(), self.headers.clone(), &self.body)
    }

    pub fn into_response(self) -> Response {
        build(self.status.as_u16(), &self.headers, self.body)
    }
}

/// An HTTP response from a status, headers and body (headers that are not valid are left
/// out: they were valid when stored).
pub fn build(status: u16, headers: &[(String, String)], body: Bytes) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            res.headers_mut().append(k, v);
        }
    }
    res
}

/// The headers of a response worth storing: its content type and those in
/// [`KEPT_HEADERS`], within [`crate::store::background::MAX_STORED_HEADER_BYTES`].
pub fn kept_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut size = 0;
    for name in std::iter::once("content-type").chain(KEPT_HEADERS) {
        for v in headers.get_all(name) {
            if let Ok(v) = v.to_str() {
                size += name.len() + v.len();
                if size > crate::store::background::MAX_STORED_HEADER_BYTES {
                    return out;
                }
                out.push((name.to_owned(), v.to_owned()));
            }
        }
    }
    out
}

/// Keys whose first call is still running, in this process (the only one that can open
/// the store).
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<Vec<u8>>>);

impl InFlight {
    fn enter(&self, key: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_vec())
    }

    fn leave(&self, key: &[u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// What [`begin`] decided.
pub enum Gate {
    /// No key: run as usual.
    Off,
    /// The first call under this key: run it and store its answer through the claim.
    Run(Claim),
    /// A repeat: send this stored answer and do nothing else.
    Replay(Response),
}

impl Gate {
    /// The claim, or the stored answer to send at once. (The answer is sent straight
    /// back by the handler, so it is not worth a box.)
    #[allow(clippy::result_large_err)]
    pub fn split(self) -> Result<Option<Claim>, Response> {
        match self {
            Gate::Off => Ok(None),
            Gate::Run(c) => Ok(Some(c)),
            Gate::Replay(r) => Err(r),
        }
    }
}

/// A key in the in-flight set; taken out when the last reference goes: the claim's,
/// and the stored answer's, which the writer keeps until the answer is durable and can
/// be found. So a call whose client went away (its handler dropped while its write is
/// queued) holds its key until a repeat can find its answer.
struct Hold {
    key: Vec<u8>,
    flights: Arc<InFlight>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.flights.leave(&self.key);
    }
}

/// A key held while its first call runs.
pub struct Claim {
    slot: IdemSlot,
    hold: Arc<Hold>,
}

impl Claim {
    /// The answer encoded to be written with the change. A body too large for a record
    /// goes to the payload log first.
    pub fn put(&self, state: &AppState, answer: &Answer) -> Result<IdemPut, StoreError> {
        let stored = match answer.stored() {
            Some(s) => s,
            None => state.store.stored_response_now(
                answer.status.as_u16(),
                answer.headers.clone(),
                &answer.body,
            )?,
        };
        Ok(IdemPut::new(self.slot.clone(), stored)?.holding(self.hold.clone()))
    }

    /// An answer rendered inside the writer job from what it found.
    pub fn remember<R: 'static>(
        &self,
        render: impl FnOnce(&R) -> Option<Answer> + Send + 'static,
    ) -> Remember<R> {
        Remember {
            slot: self.slot.clone(),
            hold: Some(self.hold.clone()),
            render: Box::new(move |r| render(r).and_then(|a| a.stored())),
        }
    }

    /// Stores the answer of a call that changed nothing else, in a write of its own. A
    /// failure is logged; the caller still gets the answer.
    pub async fn store_after(&self, state: &AppState, answer: &Answer) {
        let put = match self.put(state, answer) {
            Ok(p) => p,
            Err(_) => return,
        };
        if let Err(e) = state.store.remember(put).await {
            tracing::warn!(error = %e, "could not store an answer under its idempotency key");
        }
    }
}

/// Whether `method` takes an `Idempotency-Key` from the client.
fn keyed_method(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE
    )
}

/// The key of this request: a replay's job id, or the client's header. 400 for a key
/// that is empty, longer than [`MAX_KEY_CHARS`] or not printable ASCII.
pub fn key_of(ctx: &Ctx) -> Result<Option<String>, ApiError> {
    if let Some(inj) = &ctx.injected {
        return Ok(
            (!matches!(ctx.method, http::Method::GET | http::Method::HEAD))
                .then(|| inj.job_id.to_string()),
        );
    }
    if !keyed_method(&ctx.method) {
        return Ok(None);
    }
    let Some(raw) = ctx.headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        let mut e =
            ApiError::bad_request(format!("Idempotency-Key {why}")).field("Idempotency-Key");
        e.code = "invalid_idempotency_key";
        e
    };
    let text = raw
        .to_str()
        .map_err(|_| bad("must be printable ASCII"))?
        .trim();
    if text.is_empty() {
        return Err(bad("must not be empty"));
    }
    if text.chars().count() > MAX_KEY_CHARS {
        return Err(bad(&format!("is longer than {MAX_KEY_CHARS} characters")));
    }
    Ok(Some(text.to_owned()))
}

/// The query string without credentials, as it is compared and stored.
pub fn query_without_key(raw: &str) -> String {
    if !raw.contains("apikey") {
        return raw.to_owned();
    }
    raw.split('&')
        .filter(|pair| {
            form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_none_or(|(k, _)| k != "apikey")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// What a repeat must match: method, path, query and body.
pub fn fingerprint(ctx: &Ctx, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ctx.method.as_str().as_bytes());
    h.update([0]);
    h.update(ctx.path.as_bytes());
    h.update([0]);
    h.update(query_without_key(&ctx.raw_query).as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// Decides what to do with a call of `principal` whose body is `body`: run it (holding
/// its key), replay a stored answer, or refuse (409).
pub async fn begin(
    state: &AppState,
    ctx: &Ctx,
    principal: &Principal,
    body: &[u8],
) -> Result<Gate, ApiError> {
    let Some(key) = key_of(ctx)? else {
        return Ok(Gate::Off);
    };
    let now = now_ms();
    let mut slot = IdemSlot::new(
        principal.env,
        &principal.partner,
        &key,
        fingerprint(ctx, body),
        now,
    );
    // A job's replay: the write that stores its answer also ends the job.
    if let Some(inj) = &ctx.injected {
        slot.job = Some(JobEnding {
            env: inj.env,
            id: inj.job_id,
            max_bytes: state.config.background.max_content_bytes,
            ended: Arc::clone(&inj.ended),
        });
    }
    // Held before the stored answer is read: a first call removes its key only after its
    // answer is durable, so a repeat either sees the key held or finds the answer.
    if !state.in_flight.enter(&slot.key) {
        let mut e = ApiError::conflict(
            "a request with this Idempotency-Key is still being processed; retry later",
        )
        .field("Idempotency-Key");
        e.code = "idempotency_key_in_use";
        e.retry_after = Some(1);
        return Err(e);
    }
    let claim = Claim {
        hold: Arc::new(Hold {
            key: slot.key.clone(),
            flights: Arc::clone(&state.in_flight),
        }),
        slot,
    };
    // The index of stored answers is exact once filled (moments after start): a key it
    // does not know has no answer, which is nearly every key, known without a read.
    let answers = state.store.answers();
    if !answers.is_filled()
        && tokio::time::timeout(INDEX_WAIT, answers.filled())
            .await
            .is_err()
    {
        let mut e = ApiError::unavailable(
            "the stored Idempotency-Key answers are still being loaded; retry shortly",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    // A key it knows is read on a blocking thread: a read waits while the writer's
    // transaction is open, and an async worker held there stalls every request it serves.
    let found = if answers.stamps(&claim.slot.key).is_empty() {
        None
    } else {
        let store = Arc::clone(&state.store);
        let key = claim.slot.key.clone();
        tokio::task::spawn_blocking(move || store.idempotency(&key))
            .await
            .map_err(|_| ApiError::unavailable("the Idempotency-Key lookup did not finish"))??
    };
    let Some(rec) = found.filter(|r| r.expires_at > now) else {
        return Ok(Gate::Run(claim));
    };
    if rec.fingerprint != claim.slot.fingerprint {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request (method, path, query or body)",
        )
        .field("Idempotency-Key");
        e.retry_after = None;
        return Err(e);
    }
    let body = state.store.response_body(&rec.response)?;
    let mut res = build(rec.response.status, &rec.response.headers, body);
    res.headers_mut().insert(
        "idempotent-replayed",
        http::HeaderValue::from_static("true"),
    );
    Ok(Gate::Replay(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_query_before_it_is_compared() {
        assert_eq!(query_without_key("a=1&apikey=wb_x&b=2"), "a=1&b=2");
        assert_eq!(query_without_key("a=1"), "a=1");
        assert_eq!(query_without_key("apikeys=1"), "apikeys=1");
    }
}
