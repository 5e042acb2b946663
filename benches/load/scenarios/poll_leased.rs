//! `--phase poll-leased`: the cost of a poll when its receiver has a large number of items
//! under lease. LEASED gets `--messages` transmissions (default 100,000), all leased for an
//! hour by polls of 100, then a few fresh ones; then `limit=10` polls without a lease are
//! timed one after another. A poll reads only expired leases and unleased items, so the
//! figure should not depend on how many items are leased.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{build_request, Conn};
use crate::report::{self, Row};
use crate::setup::admin_post;
use crate::stats::{is_success, latency_summary};
use crate::{Ctx, SENDER};

const RECEIVER: &str = "LEASED";
const BATCH: usize = 1000;
const FRESH: usize = 1000;
const TIMED_POLLS: usize = 2000;

pub async fn run(ctx: &Ctx, token: &str, leased: u64) -> Result<(), String> {
    let (status, v) = admin_post(
        &ctx.target,
        token,
        "/admin/api/partners",
        &json!({"code": RECEIVER, "name": RECEIVER}),
    )
    .await?;
    if !is_success(status) {
        return Err(format!("creating {RECEIVER}: {status} {v}"));
    }
    let (status, v) = admin_post(
        &ctx.target,
        token,
        "/admin/api/routes",
        &json!({"sender": SENDER, "receiver": RECEIVER, "doctype": "*"}),
    )
    .await?;
    if !is_success(status) {
        return Err(format!("routing to {RECEIVER}: {status} {v}"));
    }
    let (status, v) = admin_post(
        &ctx.target,
        token,
        &format!("/admin/api/partners/{RECEIVER}/keys"),
        &json!({}),
    )
    .await?;
    let key = v["data"]["key"]
        .as_str()
        .filter(|_| is_success(status))
        .ok_or_else(|| format!("a key for {RECEIVER}: {status} {v}"))?
        .to_owned();

    let mut conn = Conn::connect(&ctx.target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let started = Instant::now();
    fill(ctx, &mut conn, leased as usize).await?;
    let lease_poll = poll_request(ctx, &key, "limit=100&lease=3600");
    let mut taken = 0usize;
    while taken < leased as usize {
        let status = conn
            .request(&lease_poll)
            .await
            .map_err(|e| format!("lease poll: {e}"))?;
        let items: serde_json::Value =
            serde_json::from_slice(&conn.body).map_err(|e| format!("lease poll: {e}"))?;
        let n = items["data"].as_array().map_or(0, Vec::len);
        if status != 200 || n == 0 {
            return Err(format!("lease poll answered {status} with {n} items"));
        }
        taken += n;
    }
    fill(ctx, &mut conn, FRESH).await?;
    println!(
        "poll-leased  {taken} items leased, {FRESH} unleased, set up in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mark = report::mark();
    let poll = poll_request(ctx, &key, "limit=10");
    let mut lat = Vec::with_capacity(TIMED_POLLS);
    for _ in 0..TIMED_POLLS {
        let t = Instant::now();
        let status = conn
            .request(&poll)
            .await
            .map_err(|e| format!("poll: {e}"))?;
        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if status != 200 || !conn.body.starts_with(b"{\"success\":true") {
            return Err(format!("poll answered {status}"));
        }
    }
    report::record(
        Row::new(format!("a `limit=10` poll beside {taken} leased items"))
            .latency(&lat)
            .messages(TIMED_POLLS as u64)
            .note("CPU per poll"),
        mark,
    );
    println!(
        "poll-leased  {TIMED_POLLS} polls of limit=10 beside {taken} leased items: {}",
        latency_summary(lat, &[("p50", 0.50), ("p99", 0.99)], true)
    );
    Ok(())
}

fn poll_request(ctx: &Ctx, key: &str, query: &str) -> Vec<u8> {
    build_request(
        "GET",
        &format!("/api/v1/transmissions?{query}"),
        &ctx.target.host,
        &[("X-Api-Key", key)],
        b"",
    )
}

/// Sends `n` small messages from ACME to LEASED in batches.
async fn fill(ctx: &Ctx, conn: &mut Conn, n: usize) -> Result<(), String> {
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        let messages: Vec<_> = (0..k)
            .map(|i| json!({"messageType": "order", "receiver": RECEIVER, "payload": {"n": i}}))
            .collect();
        let body =
            serde_json::to_vec(&json!({ "messages": messages })).map_err(|e| e.to_string())?;
        let req = build_request(
            "POST",
            "/api/v1/requests",
            &ctx.target.host,
            &[
                ("X-Api-Key", &ctx.sender_key),
                ("Content-Type", "application/json"),
            ],
            &body,
        );
        let status = tokio::time::timeout(Duration::from_secs(60), conn.request(&req))
            .await
            .map_err(|_| "batch timed out".to_owned())?
            .map_err(|e| format!("batch: {e}"))?;
        if status != 202 {
            return Err(format!(
                "batch answered {status}: {}",
                String::from_utf8_lossy(&conn.body)
            ));
        }
        left -= k;
    }
    Ok(())
}
