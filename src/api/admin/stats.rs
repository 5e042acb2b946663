//! `GET /admin/api/stats`: message counts by environment and status, queue depths,
//! intake and deliveries per minute over the last hour, the store's size on disk and the
//! uptime, and for the dashboard the health `/readyz` reports and the disk's free space. Everything comes from counters the writer keeps (`store::counters`), so the
//! answer costs a few dozen key reads however many messages are stored.

use http::StatusCode;
use serde_json::{json, Map, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

use super::super::{auth, ctx, finish, ok, rfc3339, with_state, Ctx};
use crate::error::ApiError;
use crate::model::{Env, Status};
use crate::store::now_ms;
use crate::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("admin" / "api" / "stats")
        .and(warp::get())
        .and(with_state(state))
        .and(ctx())
        .then(stats)
        .map(finish)
        .boxed()
}

async fn stats(state: AppState, ctx: Ctx) -> Result<Response, ApiError> {
    auth::admin(&state, &ctx)?;
    let now = now_ms();
    let c = state.store.counts(now)?;
    let mut messages = Map::new();
    for env in [Env::Live, Env::Test] {
        let row = &c.messages.by_env[usize::from(env.byte())];
        let mut by = Map::new();
        for (i, s) in Status::ALL.iter().enumerate() {
            by.insert(s.as_str().into(), json!(row[i]));
        }
        by.insert("total".into(), json!(row.iter().sum::<u64>()));
        messages.insert(env.as_str().into(), Value::Object(by));
    }
    // What `/readyz` would say, for the dashboard: the workers' and the writer's state.
    let problems = state.not_ready();
    let disk = match crate::worker::disk_space(&state.config.server.data_dir) {
        Ok((free, total)) => json!({"freeBytes": free, "totalBytes": total}),
        Err(_) => Value::Null,
    };
    let per_minute: Vec<Value> = c
        .per_minute
        .iter()
        .map(|(at, intake, delivered)| {
            json!({"at": rfc3339(*at), "intake": intake, "delivered": delivered})
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({
            "messages": messages,
            "queues": {
                "pendingTransmissions": c.poll_pending + c.poll_leased,
                "leasedTransmissions": c.poll_leased,
                "dueDeliveries": c.outbox_waiting,
                "heldDeliveries": c.outbox_held,
                "queuedJobs": c.jobs_queued,
                "runningJobs": c.jobs_running,
                "pendingSubscriptionIds": c.sub_pending,
            },
            "deliveries": {"due": c.outbox_waiting, "held": c.outbox_held},
            "perMinute": per_minute,
            "lastHour": {
                "intake": c.per_minute.iter().map(|m| m.1).sum::<u64>(),
                "delivered": c.per_minute.iter().map(|m| m.2).sum::<u64>(),
            },
            "storeBytes": state.store.size_on_disk()?,
            "disk": disk,
            "health": {
                "ready": problems.is_empty(),
                "problems": problems,
                "writesQueued": state.store.writes_queued(),
            },
            "uptimeSeconds": state.store.uptime_seconds(),
            "at": rfc3339(now),
        }),
    ))
}
