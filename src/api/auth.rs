//! Who is calling. Partners present an API key (`Authorization: Bearer`, `X-Api-Key`, or
//! the `apikey` query or form parameter); admins present the admin token as a bearer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use http::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Ctx;
use crate::error::ApiError;
use crate::store::Principal;
use crate::AppState;

/// The bearer token of an `Authorization` header, if any.
fn bearer(ctx: &Ctx) -> Option<&str> {
    let value = ctx.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The API key a request carries in a header or the query string.
fn presented_key(ctx: &Ctx) -> Option<&str> {
    bearer(ctx)
        .or_else(|| ctx.header("x-api-key"))
        .or_else(|| ctx.param("apikey"))
}

/// Whether the request carries an API key outside its body.
pub fn presents_key(ctx: &Ctx) -> bool {
    presented_key(ctx).is_some()
}

/// Authenticates a partner by a header or query key and applies its rate limit: 401
/// without a valid key, 429 when over `limits.partner_rps`. Called before a body is read,
/// so anonymous callers cannot make the server read large bodies.
pub fn partner(state: &AppState, ctx: &Ctx) -> Result<Principal, ApiError> {
    let key = presented_key(ctx).ok_or_else(ApiError::unauthorized)?;
    authenticate(state, key)
}

/// Whether a form pair (`name=value`, still encoded) is the `apikey` field.
fn is_key_pair(pair: &[u8]) -> bool {
    let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
    form_urlencoded::parse(name)
        .next()
        .is_some_and(|(k, _)| k == "apikey")
}

/// The value of the first `apikey` field of a form-encoded body (the reference protocol
/// lets the key travel there).
pub fn form_key(body: &[u8]) -> Option<String> {
    body.split(|b| *b == b'&')
        .find(|pair| is_key_pair(pair))
        .and_then(|pair| form_urlencoded::parse(pair).next())
        .map(|(_, v)| v.into_owned())
}

/// A form-encoded body without its `apikey` fields, so a key is never stored or
/// forwarded to the receiver, whichever way the caller authenticated. The other fields
/// keep their exact bytes.
pub fn strip_form_key(body: &bytes::Bytes) -> bytes::Bytes {
    if !body.split(|b| *b == b'&').any(is_key_pair) {
        return body.clone();
    }
    let rest: Vec<&[u8]> = body
        .split(|b| *b == b'&')
        .filter(|p| !is_key_pair(p))
        .collect();
    bytes::Bytes::from(rest.join(&b'&'))
}

/// Authenticates a partner by a key found elsewhere than the headers or query.
pub fn partner_by_key(state: &AppState, key: &str) -> Result<Principal, ApiError> {
    authenticate(state, key)
}

fn authenticate(state: &AppState, key: &str) -> Result<Principal, ApiError> {
    let principal = state
        .store
        .directory()
        .authenticate(key)
        .ok_or_else(ApiError::unauthorized)?;
    if !state.limiter.allow(&principal.partner) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    Ok(principal)
}

/// The SHA-256 of the admin token, which is what the server keeps in memory.
pub fn hash_admin_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// Checks the admin bearer token in constant time.
pub fn admin(state: &AppState, ctx: &Ctx) -> Result<(), ApiError> {
    let token = bearer(ctx).ok_or_else(ApiError::unauthorized)?;
    let given = hash_admin_token(token);
    if bool::from(given.ct_eq(&*state.admin_token_hash)) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Token buckets per partner: `rps` tokens a second, holding at most twice that.
pub struct RateLimiter {
    rps: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rps` = 0 disables limiting.
    pub fn new(rps: u32) -> Self {
        RateLimiter {
            rps,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `partner`, if there is one.
    pub fn allow(&self, partner: &str) -> bool {
        if self.rps == 0 {
            return true;
        }
        let rate = f64::from(self.rps);
        let burst = rate * 2.0;
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let (tokens, last) = buckets.entry(partner.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_of_twice_the_rate_then_refuses() {
        let l = RateLimiter::new(5);
        let allowed = (0..20).filter(|_| l.allow("ACME")).count();
        assert_eq!(allowed, 10);
        assert!(l.allow("GLOBEX"), "partners have separate buckets");
        assert!(RateLimiter::new(0).allow("X"));
    }
}
