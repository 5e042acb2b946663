//! `POST|GET /admin/api/partners`, `GET|PATCH|DELETE /admin/api/partners/{code}` and
//! `POST /admin/api/partners/{code}/signing-secret`.

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::background::{host_refused, Refused};
use super::super::{
    auth, body, ctx, finish, ok, parse_json, path_segment, read_body, rfc3339, with_state,
    BodyStream, Ctx,
};
use super::keys::key_view;
use super::routes::route_view;
use super::ADMIN_BODY_LIMIT;
use crate::error::{ApiError, InvalidExt};
use crate::model::{parse_partner_code, parse_short_text, Env, Invalid};
use crate::store::{NewPartner, PartnerPatch, PartnerRec};
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let b = move || b.clone();
    let s = move || with_state(state.clone());
    let create_partner = warp::path!("admin" / "api" / "partners")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(create_partner)
        .map(finish);
    let list_partners = warp::path!("admin" / "api" / "partners")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list_partners)
        .map(finish);
    let get_partner = warp::path!("admin" / "api" / "partners" / String)
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(get_partner)
        .map(finish);
    let patch_partner = warp::path!("admin" / "api" / "partners" / String)
        .and(warp::patch())
        .and(s())
        .and(ctx())
        .and(b())
        .then(patch_partner)
        .map(finish);
    let delete_partner = warp::path!("admin" / "api" / "partners" / String)
        .and(warp::delete())
        .and(s())
        .and(ctx())
        .then(delete_partner)
        .map(finish);
    let rotate = warp::path!("admin" / "api" / "partners" / String / "signing-secret")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(rotate_secret)
        .map(finish);
    create_partner
        .or(rotate)
        .unify()
        .or(list_partners)
        .unify()
        .or(get_partner)
        .unify()
        .or(patch_partner)
        .unify()
        .or(delete_partner)
        .unify()
        .boxed()
}

fn partner_view(p: &PartnerRec) -> Value {
    let map = |pairs: &[(String, String)]| pairs.iter().cloned().collect::<BTreeMap<_, _>>();
    json!({
        "code": p.code,
        "name": p.name,
        "active": p.active,
        "pushUrl": p.push_url,
        "testPushUrl": p.test_push_url,
        "pushHeaders": map(&p.push_headers),
        "pushParams": map(&p.push_params),
        "pushPaused": p.push_paused,
        "uniqueReferences": p.unique_references,
        "retentionDays": p.retention_days,
        "disabledEndpoints": p
            .disabled_endpoints
            .iter()
            .map(|(env, at, reason)| json!({"env": env, "at": rfc3339(*at), "reason": reason}))
            .collect::<Vec<_>>(),
        "createdAt": rfc3339(p.created_at),
        "updatedAt": rfc3339(p.updated_at),
    })
}

/// A partner with the health of its push endpoints, as the delivery engine last recorded it.
fn with_health(state: &AppState, p: &PartnerRec) -> Result<Value, ApiError> {
    let mut v = partner_view(p);
    let mut health = serde_json::Map::new();
    for env in [Env::Live, Env::Test] {
        let endpoint = crate::store::records::push_endpoint(env, &p.code);
        let h = state.store.endpoint_health(&endpoint)?;
        health.insert(
            env.as_str().into(),
            match h {
                None => Value::Null,
                Some(h) => json!({
                    "lastSuccessAt": h.last_success_at.map(rfc3339),
                    "failingSince": h.failing_since.map(rfc3339),
                    "lastFailureAt": h.last_failure_at.map(rfc3339),
                    "lastError": h.last_error,
                    "consecutiveFailures": h.consecutive_failures,
                }),
            },
        );
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("endpointHealth".into(), Value::Object(health));
    }
    Ok(v)
}

/// A push URL: absolute http(s), at most 2,000 characters. Whether its address may be
/// reached is checked when it is set ([`check_push_target`]) and again at every delivery,
/// against what it resolves to then.
fn parse_push_url(raw: &str) -> Result<String, Invalid> {
    let lower = raw.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| Invalid("must be an http:// or https:// URL".into()))?;
    if raw.len() > 2000
        || rest.is_empty()
        || rest.starts_with('/')
        || raw.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Invalid(
            "must be an absolute http(s) URL with a host, without spaces".into(),
        ));
    }
    Ok(raw.to_owned())
}

/// Refuses a push URL whose host the outbound policy refuses: an address literal as
/// written, a name by what it resolves to now. A name that does not resolve yet is taken
/// (the receiver may not be up); every delivery checks its addresses again.
async fn check_push_target(state: &AppState, url: &str, field: &str) -> Result<(), ApiError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ApiError::invalid(field, format!("{field} is not a valid absolute URL")))?;
    let Some(authority) = uri.authority() else {
        return Err(ApiError::invalid(field, format!("{field} has no host")));
    };
    if authority.as_str().contains('@') {
        return Err(ApiError::invalid(
            field,
            format!("{field} may not carry credentials"),
        ));
    }
    let https = uri.scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    match host_refused(state, authority.host(), port).await {
        Some(Refused::Policy(why)) => Err(ApiError::invalid(
            field,
            format!("{field} may not be called: {why}"),
        )),
        Some(Refused::Unresolved | Refused::NoAddress) | None => Ok(()),
    }
}

/// Header or parameter pairs from a JSON object of strings.
fn parse_pairs(
    v: BTreeMap<String, String>,
    field: &str,
    headers: bool,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::with_capacity(v.len());
    for (k, val) in v {
        let bad_name = k.is_empty()
            || k.len() > 256
            || (headers && http::HeaderName::from_bytes(k.as_bytes()).is_err());
        let bad_value = val.len() > 4096 || (headers && http::HeaderValue::from_str(&val).is_err());
        if bad_name || bad_value {
            return Err(ApiError::invalid(
                field,
                format!("{field}: {k:?} is not an acceptable name/value"),
            ));
        }
        out.push((k, val));
    }
    Ok(out)
}

fn parse_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::invalid("name", "name must not be empty"));
    }
    parse_short_text(name, 200).field("name")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatePartner {
    code: Option<String>,
    name: Option<String>,
    push_url: Option<String>,
    test_push_url: Option<String>,
    push_headers: Option<BTreeMap<String, String>>,
    push_params: Option<BTreeMap<String, String>>,
}

async fn create_partner(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let bytes = read_body(&ctx, body, ADMIN_BODY_LIMIT).await?;
    let req: CreatePartner = parse_json(&ctx, &bytes)?;
    let code = req
        .code
        .ok_or_else(|| ApiError::invalid("code", "code is required"))?;
    let code = parse_partner_code(&code).field("code")?;
    let name = parse_name(req.name.as_deref().unwrap_or(&code))?;
    let push_url = req
        .push_url
        .map(|u| parse_push_url(&u).field("pushUrl"))
        .transpose()?;
    let test_push_url = req
        .test_push_url
        .map(|u| parse_push_url(&u).field("testPushUrl"))
        .transpose()?;
    let push_headers = parse_pairs(req.push_headers.unwrap_or_default(), "pushHeaders", true)?;
    let push_params = parse_pairs(req.push_params.unwrap_or_default(), "pushParams", false)?;
    for (url, field) in [(&push_url, "pushUrl"), (&test_push_url, "testPushUrl")] {
        if let Some(u) = url {
            check_push_target(&state, u, field).await?;
        }
    }
    let rec = state
        .store
        .create_partner(NewPartner {
            code,
            name,
            push_url,
            test_push_url,
            push_headers,
            push_params,
        })
        .await?;
    // The signing secrets are shown here and by a rotation, never in listings.
    let mut view = partner_view(&rec);
    if let Some(obj) = view.as_object_mut() {
        obj.insert(
            "signingSecret".into(),
            Value::String(rec.signing.current.clone()),
        );
        obj.insert(
            "testSigningSecret".into(),
            Value::String(rec.test_signing.current.clone()),
        );
    }
    Ok(ok(StatusCode::CREATED, view))
}

async fn list_partners(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let dir = state.store.directory();
    let mut list = Vec::new();
    for p in dir.partners() {
        list.push(with_health(&state, p)?);
    }
    Ok(ok(StatusCode::OK, list))
}

async fn get_partner(code: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    let dir = state.store.directory();
    let p = dir
        .partner(&code)
        .ok_or_else(|| ApiError::not_found("partner"))?;
    let mut v = with_health(&state, p)?;
    let keys: Vec<Value> = state
        .store
        .list_keys(&code)?
        .iter()
        .map(|k| key_view(&state, k))
        .collect::<Result<_, _>>()?;
    let routes: Vec<Value> = dir
        .routes()
        .iter()
        .filter(|r| r.sender == code || r.receiver == code)
        .map(route_view)
        .collect();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("keys".into(), Value::Array(keys));
        obj.insert("routes".into(), Value::Array(routes));
    }
    Ok(ok(StatusCode::OK, v))
}

async fn patch_partner(
    code: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    let bytes = read_body(&ctx, body, ADMIN_BODY_LIMIT).await?;
    let raw: serde_json::Map<String, Value> = parse_json(&ctx, &bytes)?;
    let mut patch = PartnerPatch::default();
    let str_of = |field: &str, v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request(format!("{field} must be a string")).field(field))
    };
    let map_of = |field: &str, v: &Value| {
        serde_json::from_value::<BTreeMap<String, String>>(v.clone()).map_err(|_| {
            ApiError::bad_request(format!("{field} must be an object of strings")).field(field)
        })
    };
    for (k, v) in &raw {
        match k.as_str() {
            "name" => patch.name = Some(parse_name(&str_of("name", v)?)?),
            "active" => {
                patch.active = Some(v.as_bool().ok_or_else(|| {
                    ApiError::bad_request("active must be true or false").field("active")
                })?)
            }
            "pushUrl" if v.is_null() => patch.push_url = Some(None),
            "testPushUrl" if v.is_null() => patch.test_push_url = Some(None),
            "retentionDays" if v.is_null() => patch.retention_days = Some(None),
            "retentionDays" => {
                let days = v
                    .as_u64()
                    .filter(|d| (1..=3650).contains(d))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "retentionDays must be a whole number of days from 1 to 3650, or null",
                        )
                        .field("retentionDays")
                    })?;
                patch.retention_days = Some(Some(days as u32));
            }
            "uniqueReferences" => {
                patch.unique_references = Some(v.as_bool().ok_or_else(|| {
                    ApiError::bad_request("uniqueReferences must be true or false")
                        .field("uniqueReferences")
                })?)
            }
            "pushPaused" => {
                patch.push_paused = Some(v.as_bool().ok_or_else(|| {
                    ApiError::bad_request("pushPaused must be true or false").field("pushPaused")
                })?)
            }
            "enableEndpoints" => {
                let envs = serde_json::from_value::<Vec<Env>>(v.clone()).map_err(|_| {
                    ApiError::bad_request("enableEndpoints must be a list of \"live\"/\"test\"")
                        .field("enableEndpoints")
                })?;
                patch.enable_endpoints = Some(envs);
            }
            "testPushUrl" => {
                patch.test_push_url = Some(Some(
                    parse_push_url(&str_of("testPushUrl", v)?).field("testPushUrl")?,
                ))
            }
            "pushUrl" => {
                patch.push_url = Some(Some(
                    parse_push_url(&str_of("pushUrl", v)?).field("pushUrl")?,
                ))
            }
            "pushHeaders" => {
                patch.push_headers =
                    Some(parse_pairs(map_of("pushHeaders", v)?, "pushHeaders", true)?)
            }
            "pushParams" => {
                patch.push_params =
                    Some(parse_pairs(map_of("pushParams", v)?, "pushParams", false)?)
            }
            _ => {} // unknown fields are ignored, as everywhere
        }
    }
    for (url, field) in [
        (&patch.push_url, "pushUrl"),
        (&patch.test_push_url, "testPushUrl"),
    ] {
        if let Some(Some(u)) = url {
            check_push_target(&state, u, field).await?;
        }
    }
    let rec = state.store.update_partner(&code, patch).await?;
    Ok(ok(StatusCode::OK, partner_view(&rec)))
}

async fn delete_partner(code: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    state.store.delete_partner(&code).await?;
    Ok(ok(StatusCode::OK, json!({"code": code, "deleted": true})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Rotate {
    env: Option<Env>,
    overlap_hours: Option<u32>,
}

/// Replaces a push endpoint's signing secret; the old one keeps signing beside the new one
/// for `overlapHours` (default 24).
async fn rotate_secret(
    code: String,
    state: AppState,
    ctx: Ctx,
    body: BodyStream,
) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let code = path_segment(&code, "code")?;
    let bytes = read_body(&ctx, body, ADMIN_BODY_LIMIT).await?;
    let req: Rotate = if bytes.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        parse_json(&ctx, &bytes)?
    };
    let env = req.env.unwrap_or(Env::Live);
    let hours = req.overlap_hours.unwrap_or(24);
    if hours > 24 * 30 {
        return Err(ApiError::invalid(
            "overlapHours",
            "overlapHours is at most 720",
        ));
    }
    let rec = state
        .store
        .rotate_signing_secret(&code, env, i64::from(hours) * 3_600_000)
        .await?;
    let secrets = rec.signing_for(env);
    Ok(ok(
        StatusCode::OK,
        json!({
            "code": rec.code,
            "env": env,
            "signingSecret": secrets.current,
            "previousValidUntil": secrets.previous.as_ref().map(|(_, until)| rfc3339(*until)),
        }),
    ))
}
