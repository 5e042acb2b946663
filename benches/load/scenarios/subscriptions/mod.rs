//! `--phase subscriptions`: the two figures of event subscriptions.
//!
//! 100 receivers (`SUB000` … `SUB099`), each with a route from ACME and one subscription
//! whose URL points at a receiver in this process (`/s/NNN?ids={ids}`).
//!
//! 1. Status changes at 10,000/s spread over the 100 subscriptions: a backlog is sent first
//!    (intake is not a status change), then one driver per receiver polls (`limit=50`, each item
//!    `queued → processed`) and acknowledge (`processed → complete`) paced to 10,000
//!    changes/s in all, for `--duration`: 5,000 messages/s, 50 per subscription. Each change of a message feeds its receiver's
//!    subscription. Reported: the changes made, the calls per subscription per batch
//!    window (calls of one subscription that arrive within half a window of each other are
//!    one batch), the ids lost (changed, never named in a call) and the ids whose last
//!    change no call followed, and the longest URL.
//! 2. Intake with the 100 subscriptions watching (`transmission.created`, fed by every
//!    message: intake spreads over the 100 receivers) against the same intake with them
//!    turned off, alternated (off, on, on, off), each half of `--duration`; with the
//!    server's CPU time per message of each, which a shared machine disturbs less than the
//!    rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::client::{build_request, find, one_shot, read_more, Conn};
use crate::scenarios::inbound::inbound_body;
use crate::setup::{admin_call, admin_post};
use crate::stats::{is_success, micros, now_micros, snippet, Tally};
use crate::{Ctx, REQUEST_TIMEOUT, SENDER, WARMUP};

mod changes;
mod ratio;

use changes::status_changes;
use ratio::intake_ratio;

/// Subscriptions, one per receiver.
const SUBS: usize = 100;
/// Status changes per second in the first figure.
const CHANGES_PER_SECOND: u64 = 10_000;
/// Connections polling and acknowledging: one per receiver, so each subscription sees an
/// even share of the changes.
const DRIVERS: usize = SUBS;
/// Items per poll: 50 messages a subscription's driver polls and then acknowledges, about
/// once a second at the full rate, so a window holds about 50 ids: what one 2,000-character
/// URL takes (37 characters an id).
const POLL_LIMIT: usize = 50;
/// The server's batch window (the default of `subscriptions.batch_window_ms`).
const WINDOW: Duration = Duration::from_millis(1000);
/// How long to wait for the last calls after the drive.
const SETTLE: Duration = Duration::from_secs(30);
const FILL_CONNECTIONS: usize = 64;
const QUANTILES: [(&str, f64); 2] = [("p50", 0.50), ("p99", 0.99)];

fn code(i: usize) -> String {
    format!("SUB{i:03}")
}

// ---------------------------------------------------------------------------
// The receiver of the calls

/// One call as it arrived.
struct Call {
    sub: usize,
    at_us: u64,
    event: String,
    ids: Vec<String>,
    /// The request target's length (the URL is this plus scheme, host and port).
    target_len: usize,
}

struct Hooks {
    base: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Hooks {
    async fn start() -> Result<Hooks, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("callback receiver: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&calls);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&log)));
            }
        });
        Ok(Hooks {
            base: format!("http://127.0.0.1:{port}"),
            calls,
        })
    }

    fn count(&self) -> usize {
        self.calls.lock().map_or(0, |c| c.len())
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<Call>>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let len = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(str::to_owned))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let at_us = now_micros();
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        let sub = target
            .strip_prefix("/s/")
            .and_then(|r| r.get(..3))
            .and_then(|n| n.parse::<usize>().ok());
        if let (Some(sub), Ok(v)) = (sub, serde_json::from_slice::<Value>(&body)) {
            let ids = v["ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Ok(mut calls) = log.lock() {
                calls.push(Call {
                    sub,
                    at_us,
                    event: v["event"].as_str().unwrap_or("?").to_owned(),
                    ids,
                    target_len: target.len(),
                });
            }
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Set-up

/// A receiver partner, its key and its subscription.
struct Sub {
    code: String,
    key: String,
    id: String,
}

async fn partner_call(
    ctx: &Ctx,
    key: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    let req = build_request(
        method,
        path,
        &ctx.target.host,
        &[("X-Api-Key", key), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    let (status, resp) = one_shot(&ctx.target, &req, REQUEST_TIMEOUT)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let v = serde_json::from_slice(&resp).unwrap_or_else(|_| Value::String(snippet(&resp)));
    Ok((status, v))
}

async fn provision(ctx: &Ctx, token: &str, hooks: &Hooks) -> Result<Vec<Sub>, String> {
    let mut subs = Vec::with_capacity(SUBS);
    for i in 0..SUBS {
        let code = code(i);
        let (status, v) = admin_post(
            &ctx.target,
            token,
            "/admin/api/partners",
            &json!({"code": code, "name": code}),
        )
        .await?;
        if !is_success(status) && status != 409 {
            return Err(format!("partner {code}: {status} {v}"));
        }
        let (status, v) = admin_post(
            &ctx.target,
            token,
            &format!("/admin/api/partners/{code}/keys"),
            &json!({}),
        )
        .await?;
        let key = v["data"]["key"]
            .as_str()
            .filter(|_| is_success(status))
            .ok_or_else(|| format!("key for {code}: {status} {v}"))?
            .to_owned();
        let (status, v) = admin_post(
            &ctx.target,
            token,
            "/admin/api/routes",
            &json!({"sender": SENDER, "receiver": code, "doctype": "*"}),
        )
        .await?;
        if !is_success(status) && status != 409 {
            return Err(format!("route to {code}: {status} {v}"));
        }
        let url = format!("{}/s/{i:03}?ids={{ids}}", hooks.base);
        let (status, v) = partner_call(
            ctx,
            &key,
            "POST",
            "/api/v1/subscriptions",
            &json!({"systemName": "load", "url": url, "events": ["message.status"]}),
        )
        .await?;
        let id = v["data"]["id"]
            .as_str()
            .filter(|_| status == 201)
            .ok_or_else(|| format!("subscription of {code}: {status} {v}"))?
            .to_owned();
        subs.push(Sub { code, key, id });
    }
    Ok(subs)
}

/// Changes every subscription through the admin API.
async fn set_all(ctx: &Ctx, token: &str, subs: &[Sub], body: Value) -> Result<(), String> {
    for s in subs {
        let path = format!("/admin/api/subscriptions/{}", s.id);
        let (status, v) = admin_call(&ctx.target, token, "PATCH", &path, Some(&body)).await?;
        if !is_success(status) {
            return Err(format!("PATCH {path}: {status} {v}"));
        }
    }
    Ok(())
}

/// Pre-built intake requests, one per receiver.
fn intake_requests(ctx: &Ctx, subs: &[Sub]) -> Arc<Vec<Vec<u8>>> {
    let (body, _) = inbound_body();
    Arc::new(
        subs.iter()
            .map(|s| {
                build_request(
                    "POST",
                    &format!(
                        "/api/v1/inbound?sender={SENDER}&receiver={}&doctype=order&version=1",
                        s.code
                    ),
                    &ctx.target.host,
                    &[
                        ("X-Api-Key", ctx.sender_key.as_str()),
                        ("Content-Type", "application/json"),
                    ],
                    &body,
                )
            })
            .collect(),
    )
}

/// `conns` connections sending intake round-robin over the receivers, until `count`
/// messages are stored (`Some`) or for `duration` after a warm-up second (`None`).
async fn intake(
    ctx: &Arc<Ctx>,
    reqs: &Arc<Vec<Vec<u8>>>,
    conns: usize,
    duration: Duration,
    count: Option<u64>,
) -> Tally {
    let record_from = Instant::now()
        + if count.is_some() {
            Duration::ZERO
        } else {
            WARMUP
        };
    let end = record_from + duration;
    let left = Arc::new(AtomicU64::new(count.unwrap_or(u64::MAX)));
    let mut set = JoinSet::new();
    for c in 0..conns {
        let (ctx, reqs, left) = (Arc::clone(ctx), Arc::clone(reqs), Arc::clone(&left));
        set.spawn(async move {
            let mut t = Tally::with_capacity(16 * 1024);
            let mut conn: Option<Conn> = None;
            let mut n = c;
            while Instant::now() < end {
                if left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let req = &reqs[n % reqs.len()];
                n += 1;
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::connect(&ctx.target).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            t.note_error(true, || format!("connect: {e}"));
                            sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let start = Instant::now();
                let res = timeout(REQUEST_TIMEOUT, c.request(req)).await;
                let counted = start >= record_from;
                match res {
                    Ok(Ok(status)) if is_success(status) => {
                        if counted {
                            t.ok += 1;
                            t.lat.push(micros(start.elapsed()));
                        }
                        t.created += 1;
                    }
                    Ok(Ok(status)) => {
                        t.note_error(counted, || format!("{status}: {}", snippet(&c.body)))
                    }
                    Ok(Err(e)) => {
                        t.note_error(counted, || e.to_string());
                        conn = None;
                    }
                    Err(_) => {
                        t.note_error(counted, || "timed out".into());
                        conn = None;
                    }
                }
                if conn.as_ref().is_some_and(|c| !c.keep_alive) {
                    conn = None;
                }
            }
            t
        });
    }
    let mut total = Tally::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(t) => total.merge(t),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    total
}

// ---------------------------------------------------------------------------
// The phase

/// Runs both figures. `pid` is the server's when this process started it (for its CPU
/// time per message).
pub async fn run(
    ctx: &Arc<Ctx>,
    token: &str,
    conns: usize,
    duration: Duration,
    pid: Option<u32>,
) -> Result<(), String> {
    let hooks = Hooks::start().await?;
    let started = Instant::now();
    let subs = provision(ctx, token, &hooks).await?;
    println!(
        "subscriptions set-up: {SUBS} receivers with a route and a subscription each in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    status_changes(ctx, &subs, &hooks, duration).await?;
    intake_ratio(ctx, token, &subs, &hooks, conns, duration, pid).await
}
