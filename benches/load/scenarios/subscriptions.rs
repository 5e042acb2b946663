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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::client::{build_request, find, one_shot, Conn};
use crate::scenarios::inbound::inbound_body;
use crate::setup::{admin_call, admin_post};
use crate::stats::{
    is_success, latency_summary, micros, now_micros, print_first_error, snippet, Tally,
};
use crate::{Ctx, REQUEST_TIMEOUT, SENDER, WARMUP};

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

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
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
// Figure 1: status changes

/// What the drivers did.
#[derive(Default)]
struct Drive {
    /// Per message id: when its last change was asked for (µs).
    changed: HashMap<String, u64>,
    changes: u64,
    polls: Tally,
    acks: Tally,
    empty_polls: u64,
}

/// Paces changes: slot `n` is due at `start + n / CHANGES_PER_SECOND`.
struct Pacer {
    start: tokio::time::Instant,
    next: AtomicU64,
}

impl Pacer {
    /// Waits for the slots of `n` changes; false once they fall after `end`.
    async fn take(&self, n: u64, end: tokio::time::Instant) -> bool {
        let slot = self.next.fetch_add(n, Ordering::Relaxed);
        let at = self.start + Duration::from_secs_f64(slot as f64 / CHANGES_PER_SECOND as f64);
        if at >= end {
            return false;
        }
        tokio::time::sleep_until(at).await;
        true
    }
}

async fn driver(
    ctx: Arc<Ctx>,
    mine: Vec<(String, String)>,
    pacer: Arc<Pacer>,
    end: tokio::time::Instant,
) -> Drive {
    let mut d = Drive::default();
    let mut conn: Option<Conn> = None;
    let host = ctx.target.host.clone();
    let ack_body = br#"{"status":"processed"}"#;
    'outer: for (_, key) in mine.iter().cycle() {
        if tokio::time::Instant::now() >= end {
            break;
        }
        if !pacer.take(POLL_LIMIT as u64, end).await {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&ctx.target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    d.polls.note_error(true, || format!("connect: {e}"));
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let poll = build_request(
            "GET",
            &format!("/api/v1/transmissions?limit={POLL_LIMIT}&lease=600"),
            &host,
            &[("X-Api-Key", key)],
            b"",
        );
        let started = Instant::now();
        let at = now_micros();
        let items: Vec<(String, String)> = match timeout(REQUEST_TIMEOUT, c.request(&poll)).await {
            Ok(Ok(200)) => {
                d.polls.ok += 1;
                d.polls.lat.push(micros(started.elapsed()));
                match serde_json::from_slice::<Value>(&c.body) {
                    Ok(v) => v["data"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|t| {
                                    Some((
                                        t["uuid"].as_str()?.to_owned(),
                                        t["messageId"].as_str()?.to_owned(),
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    Err(e) => {
                        d.polls.note_error(true, || format!("poll: {e}"));
                        Vec::new()
                    }
                }
            }
            Ok(Ok(status)) => {
                d.polls
                    .note_error(true, || format!("poll {status}: {}", snippet(&c.body)));
                Vec::new()
            }
            _ => {
                d.polls.note_error(true, || "poll failed".into());
                conn = None;
                Vec::new()
            }
        };
        if items.is_empty() {
            d.empty_polls += 1;
            continue;
        }
        for (_, message) in &items {
            d.changed.insert(message.clone(), at);
            d.changes += 1;
        }
        for (uuid, message) in items {
            if !pacer.take(1, end).await {
                break 'outer;
            }
            let Some(c) = conn.as_mut() else {
                continue 'outer;
            };
            let ack = build_request(
                "PUT",
                &format!("/api/v1/transmissions/status/{uuid}"),
                &host,
                &[("X-Api-Key", key), ("Content-Type", "application/json")],
                ack_body,
            );
            let started = Instant::now();
            let at = now_micros();
            match timeout(REQUEST_TIMEOUT, c.request(&ack)).await {
                Ok(Ok(200)) => {
                    d.acks.ok += 1;
                    d.acks.lat.push(micros(started.elapsed()));
                    d.changed.insert(message, at);
                    d.changes += 1;
                }
                Ok(Ok(status)) => d
                    .acks
                    .note_error(true, || format!("ack {status}: {}", snippet(&c.body))),
                _ => {
                    d.acks.note_error(true, || "ack failed".into());
                    conn = None;
                }
            }
        }
    }
    d
}

/// Waits until no call has arrived for two windows (at most [`SETTLE`]).
async fn settle(hooks: &Hooks) {
    let deadline = Instant::now() + SETTLE;
    let mut last = hooks.count();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        sleep(Duration::from_millis(100)).await;
        let n = hooks.count();
        if n != last {
            last = n;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= 2 * WINDOW {
            return;
        }
    }
}

async fn status_changes(
    ctx: &Arc<Ctx>,
    subs: &[Sub],
    hooks: &Hooks,
    duration: Duration,
) -> Result<(), String> {
    // The backlog: what the drive will take, and a fifth more.
    let needed = CHANGES_PER_SECOND / 2 * duration.as_secs().max(1) * 6 / 5;
    let reqs = intake_requests(ctx, subs);
    let started = Instant::now();
    let fill = intake(
        ctx,
        &reqs,
        FILL_CONNECTIONS,
        Duration::from_secs(600),
        Some(needed),
    )
    .await;
    println!(
        "subscriptions backlog: {} messages to {SUBS} receivers in {:.1}s, {} err",
        fill.created,
        started.elapsed().as_secs_f64(),
        fill.err
    );
    print_first_error(&fill.first_err);
    settle(hooks).await;
    let before = hooks.count();

    let mut by_driver: Vec<Vec<(String, String)>> = vec![Vec::new(); DRIVERS];
    for (i, s) in subs.iter().enumerate() {
        by_driver[i % DRIVERS].push((s.code.clone(), s.key.clone()));
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let pacer = Arc::new(Pacer {
        start,
        next: AtomicU64::new(0),
    });
    let began_us = now_micros() + 100_000;
    let mut set = JoinSet::new();
    for mine in by_driver {
        set.spawn(driver(Arc::clone(ctx), mine, Arc::clone(&pacer), end));
    }
    let mut drive = Drive::default();
    while let Some(r) = set.join_next().await {
        let d = r.map_err(|e| format!("driver: {e}"))?;
        drive.changes += d.changes;
        drive.empty_polls += d.empty_polls;
        drive.polls.merge(d.polls);
        drive.acks.merge(d.acks);
        for (id, at) in d.changed {
            let e = drive.changed.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
    }
    let drove = Duration::from_micros(now_micros().saturating_sub(began_us));
    settle(hooks).await;

    let calls = hooks.calls.lock().map_err(|_| "call log poisoned")?;
    let calls: Vec<&Call> = calls[before..]
        .iter()
        .filter(|c| c.event == "message.status")
        .collect();
    // Ids named, and when each was last named.
    let mut named: HashMap<&str, u64> = HashMap::new();
    for c in &calls {
        for id in &c.ids {
            let e = named.entry(id.as_str()).or_insert(c.at_us);
            *e = (*e).max(c.at_us);
        }
    }
    let lost = drive
        .changed
        .keys()
        .filter(|id| !named.contains_key(id.as_str()))
        .count();
    let stale = drive
        .changed
        .iter()
        .filter(|(id, at)| named.get(id.as_str()).is_some_and(|n| n < *at))
        .count();
    // Batches: a subscription's calls less than half a window apart.
    let mut per_sub: HashMap<usize, Vec<u64>> = HashMap::new();
    for c in &calls {
        per_sub.entry(c.sub).or_default().push(c.at_us);
    }
    let half = WINDOW.as_micros() as u64 / 2;
    let (mut batches, mut multi, mut max_calls) = (0u64, 0u64, 0usize);
    for times in per_sub.values_mut() {
        times.sort_unstable();
        let mut run = 1;
        for w in times.windows(2) {
            if w[1] - w[0] < half {
                run += 1;
            } else {
                batches += 1;
                multi += u64::from(run > 1);
                max_calls = max_calls.max(run);
                run = 1;
            }
        }
        batches += 1;
        multi += u64::from(run > 1);
        max_calls = max_calls.max(run);
    }
    let windows = drove.as_secs_f64() / WINDOW.as_secs_f64();
    let longest = calls.iter().map(|c| c.target_len).max().unwrap_or(0) + hooks.base.len();
    let distinct: HashSet<&str> = calls
        .iter()
        .flat_map(|c| c.ids.iter().map(String::as_str))
        .collect();
    println!(
        "subscriptions status changes: {} in {:.1}s ({:.0}/s, target {CHANGES_PER_SECOND}/s) of {} messages, \
         {} polls ({} empty), {} acks, {} err; poll {}, ack {}",
        drive.changes,
        drove.as_secs_f64(),
        drive.changes as f64 / drove.as_secs_f64().max(1e-9),
        drive.changed.len(),
        drive.polls.ok,
        drive.empty_polls,
        drive.acks.ok,
        drive.polls.err + drive.acks.err,
        latency_summary(drive.polls.lat.clone(), &QUANTILES, false),
        latency_summary(drive.acks.lat.clone(), &QUANTILES, false),
    );
    print_first_error(&drive.polls.first_err);
    print_first_error(&drive.acks.first_err);
    println!(
        "subscriptions calls: {} from {} subscriptions in {batches} batches; calls per subscription per window: \
         max {max_calls} in one batch, {} batches with more than one call, {:.2} batches per subscription \
         per window ({:.1} windows); longest URL {longest} characters",
        calls.len(),
        per_sub.len(),
        multi,
        batches as f64 / SUBS as f64 / windows.max(1e-9),
        windows,
    );
    println!(
        "subscriptions ids: {} changed, {} named, {lost} lost, {stale} whose last change no call followed",
        drive.changed.len(),
        distinct.len(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Figure 2: intake with and without subscriptions watching

/// The CPU time (user and system) the process `pid` has used, in microseconds.
fn cpu_us(pid: Option<u32>) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // After the command name (in parentheses, which may hold spaces): the state is field 3,
    // utime field 14 and stime field 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / hz)
}

async fn intake_ratio(
    ctx: &Arc<Ctx>,
    token: &str,
    subs: &[Sub],
    hooks: &Hooks,
    conns: usize,
    duration: Duration,
    pid: Option<u32>,
) -> Result<(), String> {
    set_all(ctx, token, subs, json!({"active": false})).await?;
    // Watching intake means watching for new transmissions.
    for s in subs {
        let (status, v) = partner_call(
            ctx,
            &s.key,
            "PATCH",
            &format!("/api/v1/subscriptions/{}", s.id),
            &json!({"events": ["message.status", "transmission.created"]}),
        )
        .await?;
        if !is_success(status) {
            return Err(format!("events of {}: {status} {v}", s.code));
        }
    }
    let reqs = intake_requests(ctx, subs);
    let half = duration / 2;
    let (mut off, mut on) = (Tally::default(), Tally::default());
    // Server CPU time and messages stored, per kind of run.
    let (mut off_cpu, mut on_cpu) = ((0u64, 0u64), (0u64, 0u64));
    let calls_before = hooks.count();
    for watching in [false, true, true, false] {
        set_all(ctx, token, subs, json!({"active": watching})).await?;
        settle(hooks).await;
        let cpu_before = cpu_us(pid);
        let t = intake(ctx, &reqs, conns, half, None).await;
        let cpu = cpu_us(pid)
            .zip(cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        println!(
            "subscriptions intake {} {conns} conns {:.1}s: {} ok, {} err, {:.0} req/s, {}{}",
            if watching {
                "with 100 watching"
            } else {
                "without"
            },
            half.as_secs_f64(),
            t.ok,
            t.err,
            t.ok as f64 / half.as_secs_f64(),
            latency_summary(t.lat.clone(), &QUANTILES, true),
            cpu.map_or(String::new(), |c| format!(
                ", server CPU {:.0} µs/message",
                c as f64 / t.created.max(1) as f64
            )),
        );
        print_first_error(&t.first_err);
        if let Some(c) = cpu {
            let slot = if watching { &mut on_cpu } else { &mut off_cpu };
            slot.0 += c;
            slot.1 += t.created;
        }
        if watching {
            on.merge(t);
        } else {
            off.merge(t);
        }
    }
    settle(hooks).await;
    let (on_rate, off_rate) = (
        on.ok as f64 / duration.as_secs_f64(),
        off.ok as f64 / duration.as_secs_f64(),
    );
    println!(
        "subscriptions intake with 100 subscriptions watching {on_rate:.0} req/s ({}), without \
         {off_rate:.0} req/s ({}): {:.0} %; {} calls made for the intake watched",
        latency_summary(on.lat, &QUANTILES, false),
        latency_summary(off.lat, &QUANTILES, false),
        if off_rate > 0.0 {
            100.0 * on_rate / off_rate
        } else {
            0.0
        },
        hooks.count() - calls_before,
    );
    if off_cpu.1 > 0 && on_cpu.1 > 0 {
        let per = |(us, n): (u64, u64)| us as f64 / n as f64;
        println!(
            "subscriptions server CPU per message (warm-up included) with 100 watching {:.0} µs, \
             without {:.0} µs: {:+.0} %",
            per(on_cpu),
            per(off_cpu),
            100.0 * (per(on_cpu) / per(off_cpu) - 1.0)
        );
    }
    Ok(())
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
