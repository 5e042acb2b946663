//! `--phase admin`: the admin API over a store of many messages. The store is filled
//! as `--phase tracking` fills it (through `Store::accept`, received times over 30
//! days), then the server is started on it and these are timed over HTTP, one at a time
//! on one keep-alive connection:
//!
//! * `GET /admin/api/messages`, the first page (50, newest first, no filter),
//! * the same with a sender and a doctype (a rarer filter, for scale),
//! * `GET /admin/api/stats`.

use std::time::Instant;

use serde_json::Value;

use crate::client::{build_request, Conn, Target};
use crate::report::{self, Row};
use crate::server::{dir_size, Server};
use crate::setup::wait_for_ok;
use crate::stats::{latency_summary, micros};
use crate::{RESTART_TIMEOUT, STARTUP_TIMEOUT};

/// Calls timed per kind.
const SAMPLES: usize = 400;

/// Runs the phase with a server of its own.
pub async fn run(messages: u64) -> Result<(), String> {
    let mut server = Server::start(crate::server_binary(), false, false)?;
    let target = server.target();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    wait_for_ok(&target, "/readyz", deadline, Some(&mut server)).await?;
    let token = server.admin_token(deadline).await?;
    server.stop().await?;

    super::tracking::fill(&server.data_dir, messages).await?;
    server.spawn()?;
    let target = server.target();
    let started = Instant::now();
    wait_for_ok(
        &target,
        "/readyz",
        Instant::now() + RESTART_TIMEOUT,
        Some(&mut server),
    )
    .await?;
    let ready = started.elapsed().as_secs_f64();
    println!("admin restart: ready in {ready:.2}s");
    report::watch(Some(&server));
    report::add(
        Row::new(format!("admin: a store of {messages} messages"))
            .disk(dir_size(&server.data_dir))
            .note(format!("restart to ready {ready:.2} s")),
    );
    let mut conn = Conn::connect(&target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let auth = format!("Bearer {token}");
    measure(
        "messages, first page of 50",
        "/admin/api/messages",
        &auth,
        &target,
        &mut conn,
    )
    .await?;
    measure(
        "messages, sender + type, first page of 50",
        "/admin/api/messages?sender=P3&messageType=invoice",
        &auth,
        &target,
        &mut conn,
    )
    .await?;
    measure("stats", "/admin/api/stats", &auth, &target, &mut conn).await?;
    let status = server.stop().await?;
    println!("server   stopped: {status}");
    Ok(())
}

/// Sends `GET path` [`SAMPLES`] times on `conn` and prints how long the calls took.
async fn measure(
    name: &str,
    path: &str,
    auth: &str,
    target: &Target,
    conn: &mut Conn,
) -> Result<(), String> {
    let req = build_request("GET", path, &target.host, &[("Authorization", auth)], b"");
    let mark = report::mark();
    let mut lat = Vec::with_capacity(SAMPLES);
    let mut items = 0usize;
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let status = conn
            .request(&req)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        lat.push(micros(t.elapsed()));
        if status != 200 {
            let v: Value = serde_json::from_slice(&conn.body).unwrap_or(Value::Null);
            return Err(format!("{name}: {status} {v}"));
        }
        items = serde_json::from_slice::<Value>(&conn.body)
            .ok()
            .and_then(|v| v["data"]["items"].as_array().map(Vec::len))
            .unwrap_or(0);
    }
    report::record(
        Row::new(format!("admin API: {name}"))
            .latency(&lat)
            .messages(lat.len() as u64)
            .note(format!("{} calls, one at a time; CPU per call", lat.len())),
        mark,
    );
    println!(
        "admin {name}: {} calls, {items} items each, {}",
        lat.len(),
        latency_summary(lat, &[("p50", 0.50), ("p99", 0.99)], true)
    );
    Ok(())
}
