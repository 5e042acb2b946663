//! Who may use the admin API, in one place: the admin token as a bearer (scripts, the CLI),
//! or an admin user's browser session (cookie) whose state-changing calls also carry the
//! session's CSRF token and a same-origin `Origin`. Viewers only read.
//!
//! Also passwords (argon2id, hashed off the async threads) and the failed-login limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use http::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Ctx;
use crate::error::ApiError;
use crate::store::admins::{Role, SessionRec};
use crate::store::now_ms;
use crate::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "waybill_session";
/// The header a browser session's state-changing calls carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
/// Longest password accepted (hashing cost grows with it).
pub const MAX_PASSWORD: usize = 1024;
/// How often a session's `last_seen` is written back.
const SEEN_EVERY_MS: i64 = 60_000;

/// Who made an admin call.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The admin token.
    Token,
    /// A signed-in user.
    User {
        username: String,
        role: Role,
        /// SHA-256 of the session id, to end the session at logout.
        session: [u8; 32],
        expires_at: i64,
    },
}

impl Actor {
    /// `token` or `user:NAME`, as the audit log names actors.
    pub fn name(&self) -> String {
        match self {
            Actor::Token => "token".to_owned(),
            Actor::User { username, .. } => format!("user:{username}"),
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Actor::Token => Role::Admin,
            Actor::User { role, .. } => *role,
        }
    }
}

/// SHA-256 of a secret handed to a client (session id, CSRF token).
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn bearer(ctx: &Ctx) -> Option<&str> {
    let value = ctx.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of one cookie of the request.
pub fn cookie<'a>(ctx: &'a Ctx, name: &str) -> Option<&'a str> {
    ctx.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether a method changes state (everything but reads).
pub fn changes_state(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Authenticates an admin call: 401 without valid credentials; for a browser session's
/// state-changing call, 403 for a viewer, without the CSRF token, or from another origin.
/// The bearer admin token needs no CSRF defence (a browser never sends it by itself).
pub fn admin(state: &AppState, ctx: &Ctx) -> Result<Actor, ApiError> {
    if let Some(token) = bearer(ctx) {
        return super::auth::guarded(state, ctx, || {
            let given = super::auth::hash_admin_token(token);
            if bool::from(given.ct_eq(&*state.admin_token_hash)) {
                Ok(Actor::Token)
            } else {
                Err(ApiError::unauthorized())
            }
        });
    }
    let (actor, csrf) = session(state, ctx)?.ok_or_else(ApiError::unauthorized)?;
    if changes_state(&ctx.method) {
        check_csrf(ctx, &csrf)?;
        if actor.role() == Role::Viewer {
            return Err(ApiError::forbidden(
                "a viewer can look but not change anything",
            ));
        }
    }
    Ok(actor)
}

/// Like [`admin`], for calls every signed-in user may make whatever their role (logout).
pub fn any_admin(state: &AppState, ctx: &Ctx) -> Result<Actor, ApiError> {
    if bearer(ctx).is_some() {
        return admin(state, ctx);
    }
    let (actor, csrf) = session(state, ctx)?.ok_or_else(ApiError::unauthorized)?;
    if changes_state(&ctx.method) {
        check_csrf(ctx, &csrf)?;
    }
    Ok(actor)
}

/// The session a cookie names, if it is valid now, with the hash of its CSRF token.
/// Refreshes its `last_seen` now and then.
fn session(state: &AppState, ctx: &Ctx) -> Result<Option<(Actor, [u8; 32])>, ApiError> {
    let Some(id) = cookie(ctx, SESSION_COOKIE) else {
        return Ok(None);
    };
    let key = digest(id);
    let Some(s) = state.store.session(&key)? else {
        return Ok(None);
    };
    let now = now_ms();
    let idle = session_idle_ms(state);
    if s.expires_at <= now || s.last_seen + idle <= now {
        let store = std::sync::Arc::clone(&state.store);
        tokio::spawn(async move {
            let _ = store.delete_session(key).await;
        });
        return Ok(None);
    }
    // The user may have been removed or demoted since: their record decides.
    let Some(user) = state.store.admin_user(&s.username)? else {
        return Ok(None);
    };
    if now - s.last_seen >= SEEN_EVERY_MS {
        let store = std::sync::Arc::clone(&state.store);
        let mut seen = s.clone();
        seen.last_seen = now;
        tokio::spawn(async move {
            if let Err(e) = store.put_session(key, seen).await {
                tracing::debug!(error = %e, "session activity not recorded");
            }
        });
    }
    let actor = Actor::User {
        username: s.username,
        role: user.role,
        session: key,
        expires_at: s.expires_at.min(now + idle),
    };
    Ok(Some((actor, s.csrf_hash)))
}

/// A browser session's state-changing call must carry the session's CSRF token and come
/// from this server's own origin.
fn check_csrf(ctx: &Ctx, expected: &[u8; 32]) -> Result<(), ApiError> {
    let csrf = |why: &str| {
        let mut e = ApiError::forbidden(why.to_owned());
        e.code = "csrf_failed";
        e
    };
    let given = ctx
        .header(CSRF_HEADER)
        .ok_or_else(|| csrf("a signed-in change needs the X-CSRF-Token header"))?;
    if !bool::from(digest(given).ct_eq(expected)) {
        return Err(csrf("the X-CSRF-Token header does not match the session"));
    }
    let origin = ctx
        .header("origin")
        .ok_or_else(|| csrf("a signed-in change needs an Origin header"))?;
    let host = ctx.header("host").unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .unwrap_or_default();
    if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Err(csrf("the request comes from another origin"));
    }
    Ok(())
}

/// The idle limit of sessions, in milliseconds.
pub fn session_idle_ms(state: &AppState) -> i64 {
    (state.config.admin.session_idle_minutes * 60_000) as i64
}

/// A new session record for `username`.
pub fn new_session(
    state: &AppState,
    username: &str,
    role: Role,
    csrf: &str,
    source: Option<String>,
) -> SessionRec {
    let now = now_ms();
    SessionRec {
        username: username.to_owned(),
        role,
        csrf_hash: digest(csrf),
        created_at: now,
        last_seen: now,
        expires_at: now + (state.config.admin.session_max_hours * 3_600_000) as i64,
        source,
    }
}

/// The `Set-Cookie` value for a session id (`None`: the cookie that clears it).
pub fn session_cookie(state: &AppState, id: Option<&str>) -> String {
    let secure = state.config.admin.secure_cookies || state.config.server.tls_cert.is_some();
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            state.config.admin.session_max_hours * 3600
        ),
        None => format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

/// argon2id with OWASP's parameters: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password's length (in characters).
pub fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(ApiError::invalid(
            "password",
            format!("a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"),
        ));
    }
    Ok(())
}

/// Hashes a password on a blocking thread (it takes tens of milliseconds by design).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = crate::secrets::random_token(16)
            .ok()
            .and_then(|t| SaltString::from_b64(&t.replace(['-', '_'], "A")).ok());
        let salt = salt.ok_or_else(|| ApiError::unavailable("no randomness for a salt"))?;
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::unavailable(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|_| ApiError::unavailable("password hashing was interrupted"))?
}

/// Checks a password against a stored hash on a blocking thread. With no hash (unknown
/// user) a dummy hash is checked, so the answer takes as long either way.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let ok = PasswordHash::new(&hash)
            .map(|parsed| {
                hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
    .unwrap_or(false)
}

/// A valid argon2id hash of a random password, checked for unknown usernames.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9Yt6C2z2FVH0NvD6QeXwzS4oUSK7ObqflHqaGmI0C7Q";

/// Failed logins per username and per source address: after 5 failures within 15
/// minutes, further attempts are refused (429) until the oldest failure is 15 minutes old.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

const LOGIN_FAILURES: usize = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Keys kept at most; the oldest are dropped beyond it, so a flood cannot grow memory.
const LOGIN_KEYS: usize = 10_000;

impl LoginLimiter {
    /// Seconds to wait before `keys` may try again; `None` when they may now.
    pub fn blocked(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for k in keys {
            if let Some(times) = map.get_mut(k) {
                times.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
                if times.len() >= LOGIN_FAILURES {
                    let free = LOGIN_WINDOW.saturating_sub(now.duration_since(times[0]));
                    wait = Some(wait.unwrap_or(0).max(free.as_secs() + 1));
                }
            }
        }
        wait
    }

    /// Counts a failure against each of `keys`.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LOGIN_KEYS {
            map.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < LOGIN_WINDOW));
            if map.len() >= LOGIN_KEYS {
                map.clear();
            }
        }
        for k in keys {
            map.entry(k.clone()).or_default().push(now);
        }
    }

    /// Forgets the failures of a username after a successful login.
    pub fn succeeded(&self, username_key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(username_key);
    }
}

/// 429 for a login that must wait.
pub fn too_many_logins(wait: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many failed logins; wait before trying again",
    );
    e.retry_after = Some(wait);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify_and_the_dummy_hash_parses() {
        let h = hash_password("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong horse battery".into(), Some(h)).await);
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password("anything at all".into(), None).await);
    }

    #[test]
    fn the_limiter_blocks_after_five_failures_per_key() {
        let l = LoginLimiter::default();
        let keys = vec!["user:alice".to_owned(), "ip:10.0.0.1".to_owned()];
        for _ in 0..5 {
            assert!(l.blocked(&keys).is_none());
            l.failed(&keys);
        }
        assert!(l.blocked(&keys).is_some_and(|w| w > 0));
        assert!(
            l.blocked(&["ip:10.0.0.1".to_owned()]).is_some(),
            "per address"
        );
        assert!(l.blocked(&["user:bob".to_owned()]).is_none());
        l.succeeded("user:alice");
        assert!(l.blocked(&["user:alice".to_owned()]).is_none());
    }
}
