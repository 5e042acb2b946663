//! Who is calling. Partners present an API key (`Authorization: Bearer`, `X-Api-Key`, or
//! the `apikey` query or form parameter) or a token minted with one (a JWT in
//! `Authorization: Bearer`); admins present the admin token as a bearer.
//!
//! Tokens are HS256 JWTs signed with a key made at the first start and kept in the store.
//! The algorithm is fixed here, never taken from the token: a token whose header names
//! another one (`none`, RS256, ...) is refused before its signature is looked at. A token
//! stands for the API key that minted it (`kid`): it is checked against the current
//! directory on every request, so revoking that key or deactivating the partner ends it
//! at once, whatever its `exp` says.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Ctx;
use crate::error::ApiError;
use crate::model::Env;
use crate::store::{Directory, Principal};
use crate::AppState;

/// The audience every partner token is minted for and must name.
const AUDIENCE: &str = "waybill-api";
/// Clock skew allowed between the appliance and whoever checks a token's times, seconds.
const LEEWAY_SECONDS: u64 = 30;
/// The longest a token may live, whatever the configuration says.
const MAX_TTL_SECONDS: u64 = 3600;

/// The claims of a partner token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    /// The partner code.
    sub: String,
    /// `live` or `test`: the environment of the minting key.
    env: String,
    exp: u64,
    iat: u64,
    /// A unique id per token, for logs and revocation lists downstream.
    jti: String,
}

/// Mints and checks partner tokens with the store's signing key.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl_seconds: u64,
}

/// A freshly minted token.
pub struct Minted {
    pub token: String,
    pub expires_at: u64,
    pub expires_in: u64,
}

impl TokenKeys {
    /// Keys from the store's secret; tokens carry `issuer` and live `ttl_seconds`.
    pub fn new(secret: &[u8], issuer: &str, ttl_seconds: u64) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            ttl_seconds: ttl_seconds.min(MAX_TTL_SECONDS),
        }
    }

    /// A token for `p`, minted at `now` (unix seconds).
    pub fn mint(&self, p: &Principal, now: u64) -> Result<Minted, ApiError> {
        let exp = now + self.ttl_seconds;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.to_owned(),
            sub: p.partner.clone(),
            env: p.env.as_str().to_owned(),
            exp,
            iat: now,
            jti: Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(p.key_id.to_string());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| {
            tracing::error!(error = %e, "token signing failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the token could not be made",
            )
        })?;
        Ok(Minted {
            token,
            expires_at: exp,
            expires_in: self.ttl_seconds,
        })
    }

    /// The principal a token stands for at `now` (unix seconds), if it is valid: signed
    /// with our key by HS256, ours (`iss`, `aud`), within its times (allowing
    /// [`LEEWAY_SECONDS`] of skew), and minted by a key that is still active for an
    /// active partner of the same code and environment.
    pub fn verify(&self, token: &str, dir: &Directory, now: u64) -> Option<Principal> {
        // An unknown algorithm (`none`) fails here; a known other one is refused below,
        // and `decode` checks again against the one algorithm `validation` allows.
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::HS256 {
            return None;
        }
        let kid: Uuid = header.kid?.parse().ok()?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        if claims.iat > now + LEEWAY_SECONDS
            || claims.exp > claims.iat.saturating_add(MAX_TTL_SECONDS)
        {
            return None;
        }
        let p = dir.key_principal(kid)?;
        (p.partner == claims.sub && Env::parse(&claims.env) == Some(p.env)).then_some(p)
    }
}

/// Whether a bearer credential is a token rather than an API key (`wb_…`).
fn is_token(credential: &str) -> bool {
    !credential.starts_with("wb_") && credential.bytes().filter(|b| *b == b'.').count() == 2
}

/// Unix seconds now.
fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
    ctx.injected.is_some() || presented_key(ctx).is_some()
}

/// Authenticates a partner by a header or query key and applies its rate limit: 401
/// without a valid key, 429 when over `limits.partner_rps`. Called before a body is read,
/// so anonymous callers cannot make the server read large bodies.
///
/// A background job's replay carries its identity instead of credentials (set only
/// in-process, never from the network): it is honoured while the key it was submitted
/// with is still active for an active partner, and it does not use up the rate limit.
pub fn partner(state: &AppState, ctx: &Ctx) -> Result<Principal, ApiError> {
    if let Some(job) = &ctx.injected {
        return state
            .store
            .directory()
            .key_principal(job.key_id)
            .filter(|p| p.partner == job.partner && p.env == job.env)
            .ok_or_else(ApiError::unauthorized);
    }
    let found = guarded(state, ctx, || {
        if let Some(token) = bearer(ctx).filter(|t| is_token(t)) {
            return state
                .tokens
                .verify(token, &state.store.directory(), now_seconds())
                .ok_or_else(ApiError::unauthorized);
        }
        let key = presented_key(ctx).ok_or_else(ApiError::unauthorized)?;
        state
            .store
            .directory()
            .authenticate(key)
            .ok_or_else(ApiError::unauthorized)
    })?;
    ctx.check_query()?;
    limit(state, found)
}

/// Runs a credential check for a caller at `ctx.remote`: refused at once with 429 while
/// that address is over `limits.auth_failures_per_minute`, and a 401 it returns is
/// counted against the address.
pub fn guarded<T>(
    state: &AppState,
    ctx: &Ctx,
    check: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let ip = ctx.remote.map(|r| r.ip());
    if let Some(ip) = ip {
        if let Some(wait) = state.auth_failures.blocked(ip) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "too many failed authentications from this address; try again later",
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
    }
    let out = check();
    if let (Err(e), Some(ip)) = (&out, ip) {
        if e.status == StatusCode::UNAUTHORIZED {
            state.auth_failures.failed(ip);
        }
    }
    out
}

/// Failed authentications per source address in the current minute: the brute-force
/// guard. Bounded: past [`FAILURE_ADDRESSES`] addresses, finished minutes are dropped
/// first, then everything.
pub struct AuthFailures {
    per_minute: u32,
    /// Whether any address is counted: the common case (no failures) takes no lock.
    any: std::sync::atomic::AtomicBool,
    map: std::sync::Mutex<HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

const FAILURE_ADDRESSES: usize = 10_000;
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl AuthFailures {
    pub fn new(per_minute: u32) -> AuthFailures {
        AuthFailures {
            per_minute,
            any: Default::default(),
            map: Default::default(),
        }
    }

    /// Seconds `ip` must wait, when it is over the limit.
    pub fn blocked(&self, ip: std::net::IpAddr) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.per_minute == 0 || !self.any.load(Relaxed) {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (since, n) = map.get(&ip)?;
        let elapsed = since.elapsed();
        (elapsed < FAILURE_WINDOW && *n >= self.per_minute)
            .then(|| FAILURE_WINDOW.saturating_sub(elapsed).as_secs() + 1)
    }

    /// Counts one failure of `ip`.
    pub fn failed(&self, ip: std::net::IpAddr) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.per_minute == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= FAILURE_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            if map.len() >= FAILURE_ADDRESSES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        self.any.store(true, Relaxed);
    }
}

/// Authenticates a partner by an API key only (a token cannot mint another token, or a
/// stolen one could be renewed for ever): 401 without a valid key, 403 for a token.
pub fn partner_by_key(state: &AppState, ctx: &Ctx) -> Result<Principal, ApiError> {
    if ctx.injected.is_some() {
        // Its answer would be kept as the job's content: a credential at rest.
        return Err(ApiError::forbidden(
            "tokens are not minted in the background",
        ));
    }
    if bearer(ctx).is_some_and(is_token) {
        return Err(ApiError::forbidden(
            "tokens are minted with an API key, not with another token",
        ));
    }
    partner(state, ctx)
}

/// Mints a token for `principal` with the configured lifetime.
pub fn mint(state: &AppState, principal: &Principal) -> Result<Minted, ApiError> {
    state.tokens.mint(principal, now_seconds())
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

/// Authenticates a partner by a key found in a form body's `apikey` field.
pub fn partner_by_form_key(state: &AppState, ctx: &Ctx, key: &str) -> Result<Principal, ApiError> {
    let principal = guarded(state, ctx, || {
        state
            .store
            .directory()
            .authenticate(key)
            .ok_or_else(ApiError::unauthorized)
    })?;
    ctx.check_query()?;
    limit(state, principal)
}

/// Applies the partner's rate limit: 429 when over `limits.partner_rps`.
fn limit(state: &AppState, principal: Principal) -> Result<Principal, ApiError> {
    // The request's log span (see `server::Counted`) names the caller from here on.
    tracing::Span::current().record("partner", principal.partner.as_str());
    state
        .store
        .note_key_use(principal.key_id, crate::store::now_ms());
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

/// Authenticates an admin call: the admin token, or a user's session (see `admin_auth`).
/// Its query must be text, like a partner's (see [`Ctx::check_query`]).
pub fn admin(state: &AppState, ctx: &Ctx) -> Result<super::admin_auth::Actor, ApiError> {
    let actor = super::admin_auth::admin(state, ctx)?;
    ctx.check_query()?;
    Ok(actor)
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

    #[test]
    fn only_three_part_bearers_that_are_not_keys_are_tokens() {
        assert!(is_token("eyJh.eyJz.c2ln"));
        assert!(!is_token("wb_live_abc.def.ghi"));
        assert!(!is_token("wb_live_abcdef"));
        assert!(!is_token("a.b"));
    }
}
