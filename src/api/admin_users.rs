//! Admin users, sign-in and the audit log:
//! `POST /admin/api/login`, `POST /admin/api/logout`, `GET /admin/api/me`,
//! `POST|GET /admin/api/users`, `DELETE /admin/api/users/{name}`,
//! `PUT /admin/api/users/{name}/password`, `GET /admin/api/audit`.
//!
//! [`audited`] wraps every admin route: each state-changing call (and every login attempt)
//! is written to the audit log with its actor, route, target, source and outcome.

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::admin_auth::{self as guard, Actor};
use super::{body, ctx, finish, ok, parse_json, path_segment, read_body, rfc3339, with_state};
use super::{BodyStream, Ctx};
use crate::error::ApiError;
use crate::store::admins::{AdminUserRec, AuditQuery, AuditRec, Role};
use crate::store::now_ms;
use crate::AppState;

const BODY_LIMIT: u64 = 16 * 1024;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let b = move || b.clone();
    let s = move || with_state(state.clone());
    let login = warp::path!("admin" / "api" / "login")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(login)
        .map(finish);
    let logout = warp::path!("admin" / "api" / "logout")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .then(logout)
        .map(finish);
    let me = warp::path!("admin" / "api" / "me")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(me)
        .map(finish);
    let create = warp::path!("admin" / "api" / "users")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(create_user)
        .map(finish);
    let list = warp::path!("admin" / "api" / "users")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list_users)
        .map(finish);
    let delete = warp::path!("admin" / "api" / "users" / String)
        .and(warp::delete())
        .and(s())
        .and(ctx())
        .then(delete_user)
        .map(finish);
    let password = warp::path!("admin" / "api" / "users" / String / "password")
        .and(warp::put())
        .and(s())
        .and(ctx())
        .and(b())
        .then(change_password)
        .map(finish);
    let audit = warp::path!("admin" / "api" / "audit")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(audit_log)
        .map(finish);
    login
        .or(logout)
        .unify()
        .or(me)
        .unify()
        .or(create)
        .unify()
        .or(list)
        .unify()
        .or(delete)
        .unify()
        .or(password)
        .unify()
        .or(audit)
        .unify()
        .boxed()
}

/// Every admin route, with each state-changing call written to the audit log after it is
/// answered (its status is the outcome). The actor is who the credentials name, checked
/// again here: a refused call by a wrong token is logged as `anonymous`.
pub fn audited(state: AppState, routes: BoxedFilter<(Response,)>) -> BoxedFilter<(Response,)> {
    warp::path::peek()
        .and_then(|p: warp::path::Peek| async move {
            if p.as_str().starts_with("admin/api/") {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::path::full())
        .and(with_state(state))
        .and(ctx())
        .and(routes)
        .then(
            |path: warp::path::FullPath, state: AppState, ctx: Ctx, res: Response| async move {
                let login = path.as_str() == "/admin/api/login";
                let actor = if login {
                    // Every attempt, except those the failure limit turned away unchecked.
                    (res.status() != StatusCode::TOO_MANY_REQUESTS).then(|| "anonymous".to_owned())
                } else {
                    // Calls without valid credentials are not written: a flood of them
                    // must not turn into a flood of durable writes.
                    guard::any_admin(&state, &ctx).ok().map(|a| a.name())
                };
                if let Some(actor) = actor.filter(|_| guard::changes_state(&ctx.method)) {
                    let target = if login {
                        res.headers()
                            .get("x-waybill-login")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    } else {
                        path.as_str().trim_start_matches("/admin/api/").to_owned()
                    };
                    let rec = AuditRec {
                        id: uuid::Uuid::now_v7(),
                        at: now_ms(),
                        actor,
                        action: format!("{} {}", ctx.method, route_of(path.as_str())),
                        target,
                        source: ctx.remote.map(|a| a.ip().to_string()),
                        status: res.status().as_u16(),
                    };
                    if let Err(e) = state.store.audit(rec).await {
                        tracing::error!(error = %e, "an admin action could not be audited");
                    }
                }
                let mut res = res;
                res.headers_mut().remove("x-waybill-login");
                res
            },
        )
        .boxed()
}

/// A path with its ids replaced by `{}`, e.g. `/admin/api/partners/{}/keys`: the route.
fn route_of(path: &str) -> String {
    const WORDS: &[&str] = &[
        "admin",
        "api",
        "partners",
        "keys",
        "routes",
        "signing-secret",
        "transmissions",
        "attempts",
        "deliveries",
        "stats",
        "redeliver",
        "redeliver-failed",
        "messages",
        "cancel",
        "users",
        "password",
        "login",
        "logout",
        "me",
        "audit",
        "jobs",
        "retry",
        "subscriptions",
        "test",
        "schemas",
        "revalidate",
        "payload",
        "bulk-operations",
    ];
    path.split('/')
        .map(|seg| {
            if seg.is_empty() || WORDS.contains(&seg) {
                seg
            } else {
                "{}"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Deserialize)]
struct Login {
    username: Option<String>,
    password: Option<String>,
}

async fn login(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: Login = parse_json(&ctx, &bytes)?;
    let username = req
        .username
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::invalid("username", "username is required"))?;
    let password = req
        .password
        .ok_or_else(|| ApiError::invalid("password", "password is required"))?;
    let user_key = format!("user:{}", username.to_lowercase());
    let mut keys = vec![user_key.clone()];
    if let Some(addr) = ctx.remote {
        keys.push(format!("ip:{}", addr.ip()));
    }
    let tag = |mut res: Response| {
        if let Ok(v) = http::HeaderValue::from_str(&username.chars().take(64).collect::<String>()) {
            res.headers_mut().insert("x-waybill-login", v);
        }
        res
    };
    if let Some(wait) = state.logins.blocked(&keys) {
        tracing::warn!(user = %username, source = ?ctx.remote.map(|a| a.ip()), "admin login refused: too many failures");
        return Ok(tag(guard::too_many_logins(wait).into_response()));
    }
    let user = state.store.admin_user(&username)?;
    let valid =
        guard::verify_password(password, user.as_ref().map(|u| u.password_hash.clone())).await;
    let Some(mut user) = user.filter(|_| valid) else {
        state.logins.failed(&keys);
        tracing::warn!(user = %username, source = ?ctx.remote.map(|a| a.ip()), "admin login failed");
        let mut e = ApiError::unauthorized();
        e.message = "wrong username or password".into();
        return Ok(tag(e.into_response()));
    };
    state.logins.succeeded(&user_key);
    let id = crate::secrets::random_token(32)
        .map_err(|_| ApiError::unavailable("no randomness for a session"))?;
    let csrf = crate::secrets::random_token(32)
        .map_err(|_| ApiError::unavailable("no randomness for a session"))?;
    let session = guard::new_session(
        &state,
        &user.username,
        user.role,
        &csrf,
        ctx.remote.map(|a| a.ip().to_string()),
    );
    let expires_at = session.expires_at;
    state.store.put_session(guard::digest(&id), session).await?;
    user.last_login_at = Some(now_ms());
    let role = user.role;
    let name = user.username.clone();
    state.store.put_admin_user(user).await?;
    tracing::info!(user = %name, "admin signed in");
    let mut res = ok(
        StatusCode::OK,
        json!({
            "username": name,
            "role": role.as_str(),
            "csrfToken": csrf,
            "expiresAt": rfc3339(expires_at),
        }),
    );
    let cookie = guard::session_cookie(&state, Some(&id));
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(tag(res))
}

async fn logout(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let actor = guard::any_admin(&state, &ctx)?;
    if let Actor::User { session, .. } = actor {
        state.store.delete_session(session).await?;
    }
    let mut res = ok(StatusCode::OK, json!({"signedOut": true}));
    let cookie = guard::session_cookie(&state, None);
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    Ok(res)
}

async fn me(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let actor = guard::any_admin(&state, &ctx)?;
    let body = match &actor {
        Actor::Token => {
            json!({"actor": "token", "username": null, "role": "admin", "expiresAt": null})
        }
        Actor::User {
            username,
            role,
            expires_at,
            ..
        } => json!({
            "actor": "user",
            "username": username,
            "role": role.as_str(),
            "expiresAt": rfc3339(*expires_at),
        }),
    };
    Ok(ok(StatusCode::OK, body))
}

fn user_view(u: &AdminUserRec) -> serde_json::Value {
    json!({
        "username": u.username,
        "role": u.role.as_str(),
        "createdAt": rfc3339(u.created_at),
        "passwordChangedAt": rfc3339(u.password_changed_at),
        "lastLoginAt": u.last_login_at.map(rfc3339),
    })
}

/// A username: 1–64 characters of letters, digits, `.`, `_`, `-` and `@`.
fn parse_username(raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(
            "username",
            "username must be 1-64 characters of letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

#[derive(Deserialize)]
struct NewUser {
    username: Option<String>,
    password: Option<String>,
    role: Option<String>,
}

async fn create_user(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: NewUser = parse_json(&ctx, &bytes)?;
    let username = parse_username(req.username.as_deref().unwrap_or_default())?;
    let password = req
        .password
        .ok_or_else(|| ApiError::invalid("password", "password is required"))?;
    guard::check_password(&password)?;
    let role = match req.role.as_deref() {
        None => Role::Admin,
        Some(r) => Role::parse(r)
            .ok_or_else(|| ApiError::invalid("role", "role must be admin or viewer"))?,
    };
    let now = now_ms();
    let user = AdminUserRec {
        username,
        role,
        password_hash: guard::hash_password(password).await?,
        created_at: now,
        password_changed_at: now,
        last_login_at: None,
    };
    let view = user_view(&user);
    if !state.store.create_admin_user(user).await? {
        return Err(ApiError::conflict("a user by that name exists"));
    }
    Ok(ok(StatusCode::CREATED, view))
}

async fn list_users(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let users: Vec<_> = state.store.admin_users()?.iter().map(user_view).collect();
    Ok(ok(StatusCode::OK, users))
}

async fn delete_user(name: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let name = path_segment(&name, "username")?;
    if !state.store.delete_admin_user(&name).await? {
        return Err(ApiError::not_found("user"));
    }
    Ok(ok(
        StatusCode::OK,
        json!({"username": name, "deleted": true}),
    ))
}

#[derive(Deserialize)]
struct NewPassword {
    password: Option<String>,
}

/// An admin sets anyone's password; a viewer only their own.
async fn change_password(
    name: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let name = path_segment(&name, "username")?;
    let actor = guard::any_admin(&state, &ctx)?;
    let own = matches!(&actor, Actor::User { username, .. } if *username == name);
    if actor.role() != Role::Admin && !own {
        return Err(ApiError::forbidden(
            "a viewer may change only their own password",
        ));
    }
    let bytes = read_body(&ctx, body, BODY_LIMIT).await?;
    let req: NewPassword = parse_json(&ctx, &bytes)?;
    let password = req
        .password
        .ok_or_else(|| ApiError::invalid("password", "password is required"))?;
    guard::check_password(&password)?;
    let mut user = state
        .store
        .admin_user(&name)?
        .ok_or_else(|| ApiError::not_found("user"))?;
    user.password_hash = guard::hash_password(password).await?;
    user.password_changed_at = now_ms();
    // Every other session of the user ends with the old password.
    let keep = match &actor {
        Actor::User { session, .. } if own => Some(*session),
        _ => None,
    };
    for key in state.store.session_keys_of(&name)? {
        if keep.is_none_or(|k| k[..] != key[..]) {
            if let Ok(k) = <[u8; 32]>::try_from(key.as_slice()) {
                state.store.delete_session(k).await?;
            }
        }
    }
    let view = user_view(&user);
    if !state.store.put_admin_user(user).await? {
        return Err(ApiError::not_found("user"));
    }
    Ok(ok(StatusCode::OK, view))
}

/// The audit log, newest first: `?actor=&action=&since=&limit=&cursor=`.
async fn audit_log(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    guard::admin(&state, &ctx)?;
    let limit = match ctx.param("limit") {
        None | Some("") => 100,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be 1-1000").field("limit"))?,
    };
    let since = match ctx.param("since").filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(
            time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    ApiError::bad_request("since must be an RFC 3339 time").field("since")
                })?,
        ),
    };
    let before = match ctx.param("cursor").filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(parse_cursor(raw).ok_or_else(|| {
            ApiError::bad_request("cursor is not one this API gave out").field("cursor")
        })?),
    };
    let q = AuditQuery {
        actor: ctx
            .param("actor")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        action: ctx
            .param("action")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        since,
        before,
        limit,
    };
    let store = std::sync::Arc::clone(&state.store);
    let entries = tokio::task::spawn_blocking(move || store.audit_entries(&q))
        .await
        .map_err(|_| ApiError::unavailable("the audit read was interrupted"))??;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| format!("{}.{}", e.at, e.id)))
        .flatten();
    let items: Vec<_> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "at": rfc3339(e.at),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "source": e.source,
                "status": e.status,
            })
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"items": items, "nextCursor": next}),
    ))
}

fn parse_cursor(raw: &str) -> Option<(i64, uuid::Uuid)> {
    let (at, id) = raw.split_once('.')?;
    Some((at.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn routes_hide_their_ids() {
        assert_eq!(route_of("/admin/api/partners"), "/admin/api/partners");
        assert_eq!(
            route_of("/admin/api/partners/ACME/keys"),
            "/admin/api/partners/{}/keys"
        );
        assert_eq!(
            route_of("/admin/api/transmissions/01a2-ff/redeliver"),
            "/admin/api/transmissions/{}/redeliver"
        );
        assert_eq!(
            route_of("/admin/api/users/alice/password"),
            "/admin/api/users/{}/password"
        );
    }
}
