//! `POST|GET /admin/api/routes` and `DELETE /admin/api/routes/{id}`.

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::{
    auth, body, ctx, finish, ok, parse_id, parse_json, read_body, rfc3339, with_state, BodyStream,
    Ctx,
};
use super::ADMIN_BODY_LIMIT;
use crate::error::{ApiError, InvalidExt};
use crate::model::{parse_doctype, parse_partner_code};
use crate::store::RouteRec;
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let b = body(&state);
    let b = move || b.clone();
    let s = move || with_state(state.clone());
    let create_route = warp::path!("admin" / "api" / "routes")
        .and(warp::post())
        .and(s())
        .and(ctx())
        .and(b())
        .then(create_route)
        .map(finish);
    let list_routes = warp::path!("admin" / "api" / "routes")
        .and(warp::get())
        .and(s())
        .and(ctx())
        .then(list_routes)
        .map(finish);
    let delete_route = warp::path!("admin" / "api" / "routes" / String)
        .and(warp::delete())
        .and(s())
        .and(ctx())
        .then(delete_route)
        .map(finish);
    create_route
        .or(list_routes)
        .unify()
        .or(delete_route)
        .unify()
        .boxed()
}

pub(super) fn route_view(r: &RouteRec) -> Value {
    json!({
        "id": r.id,
        "sender": r.sender,
        "receiver": r.receiver,
        "doctype": r.doctype,
        "liveOnly": r.live_only,
        "createdAt": rfc3339(r.created_at),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRoute {
    sender: Option<String>,
    receiver: Option<String>,
    doctype: Option<String>,
    live_only: Option<bool>,
}

async fn create_route(state: AppState, ctx: Ctx, body: BodyStream) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let bytes = read_body(&ctx, body, ADMIN_BODY_LIMIT).await?;
    let req: CreateRoute = parse_json(&ctx, &bytes)?;
    let need = |v: Option<String>, f: &str| {
        v.ok_or_else(|| ApiError::invalid(f, format!("{f} is required")))
    };
    let sender = parse_partner_code(&need(req.sender, "sender")?).field("sender")?;
    let receiver = parse_partner_code(&need(req.receiver, "receiver")?).field("receiver")?;
    let doctype = need(req.doctype, "doctype")?;
    let doctype = if doctype == "*" {
        doctype
    } else {
        parse_doctype(&doctype).field("doctype")?
    };
    if sender == receiver {
        return Err(ApiError::invalid(
            "receiver",
            "a route needs two different partners",
        ));
    }
    let rec = state
        .store
        .create_route(&sender, &receiver, &doctype, req.live_only.unwrap_or(false))
        .await?;
    Ok(ok(StatusCode::CREATED, route_view(&rec)))
}

async fn list_routes(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let list: Vec<Value> = state
        .store
        .directory()
        .routes()
        .iter()
        .map(route_view)
        .collect();
    Ok(ok(StatusCode::OK, list))
}

async fn delete_route(id: String, state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let id = parse_id(&id, "route")?;
    state.store.delete_route(id).await?;
    Ok(ok(StatusCode::OK, json!({"id": id, "deleted": true})))
}
