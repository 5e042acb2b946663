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

/// The API key of a request. `form` is the body when it is form-encoded, where the
/// reference protocol also allows `apikey`.
fn presented_key(ctx: &Ctx, form: Option<&[u8]>) -> Option<String> {
    if let Some(k) = bearer(ctx)
        .or_else(|| ctx.header("x-api-key"))
        .or_else(|| ctx.param("apikey"))
    {
        return Some(k.to_owned());
    }
    form.and_then(|body| {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "apikey")
            .map(|(_, v)| v.into_owned())
    })
}

/// Authenticates a partner and applies its rate limit: 401 without a valid key, 429 when
/// over `limits.partner_rps`.
pub fn partner(state: &AppState, ctx: &Ctx, form: Option<&[u8]>) -> Result<Principal, ApiError> {
    let key = presented_key(ctx, form).ok_or_else(ApiError::unauthorized)?;
    let principal = state
        .store
        .directory()
        .authenticate(&key)
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
