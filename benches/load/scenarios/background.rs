//! `--phase background`: the three figures of the Background API and Idempotency-Key.
//!
//! 1. Latency at a steady 500 calls/s: the synchronous intake call, then the same call with
//!    `Waybill-Background: <webhook URL>`, timed from the moment it is sent to the arrival
//!    of its completion webhook at a receiver in this process. The webhook goes out after
//!    the job is recorded `completed`, so this is an upper bound of submit-to-completed
//!    that includes one push through the delivery engine.
//! 2. The cost of `Idempotency-Key`: intake on `--connections` connections without a key
//!    and with a fresh key per request, alternated (without, with, with, without) so a
//!    store that grows during the run weighs on both alike.
//! 3. Jobs accepted durably per second: `Waybill-Background: none` on `--connections`
//!    connections for `--duration`, while the workers run what was queued; then the time
//!    the workers need to run the rest.
//!
//! Latency runs first, on a store that holds no jobs yet, so that no backlog of queued
//! work shares the two cores with the calls being timed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::client::{build_request, find, read_more, Conn};
use crate::report::{self, Row};
use crate::scenarios::inbound::{inbound_body, put_digits};
use crate::setup::admin_call;
use crate::stats::{
    fmt_ms, is_success, latency_summary, micros, now_micros, print_first_error, quantile, snippet,
    Tally,
};
use crate::{Ctx, BODY_SIZE, INBOUND_PATH, REQUEST_TIMEOUT, SEQ_DIGITS, WARMUP};

/// Calls per second in the latency runs.
const RATE: u64 = 500;
/// Paced senders in the latency runs: each takes every fourth slot.
const PACED_SENDERS: u64 = 4;
/// How long to wait for the last completion webhooks.
const WEBHOOK_WAIT: Duration = Duration::from_secs(60);
/// How long to wait for the workers to run the jobs left after the acceptance run.
const DRAIN_WAIT: Duration = Duration::from_secs(300);
const KEY_PREFIX: &str = "load-";
const QUANTILES: [(&str, f64); 2] = [("p50", 0.50), ("p99", 0.99)];

/// What an intake request carries besides the 1 KiB body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Plain,
    /// A fresh `Idempotency-Key` per request.
    Keyed(KeyOrder),
    /// `Waybill-Background: none`: a job with no webhook.
    Background,
}

/// How a connection's keys follow each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyOrder {
    /// A counter per connection: each key sorts after the one before.
    Growing,
    /// Scattered digits, as random keys (UUIDv4) are.
    Random,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Plain => "without key",
            Shape::Keyed(KeyOrder::Growing) => "Idempotency-Key growing",
            Shape::Keyed(KeyOrder::Random) => "Idempotency-Key random",
            Shape::Background => "background none",
        }
    }
}

/// A pre-built intake request and where its unique digits go.
struct IntakeRequest {
    req: Vec<u8>,
    seq_at: usize,
    key_at: Option<(usize, KeyOrder)>,
}

impl IntakeRequest {
    fn new(ctx: &Ctx, shape: Shape, extra: Option<(&str, &str)>) -> IntakeRequest {
        let (body, seq_in_body) = inbound_body();
        let key = format!("{KEY_PREFIX}{}", "0".repeat(SEQ_DIGITS));
        let mut headers = vec![
            ("X-Api-Key", ctx.sender_key.as_str()),
            ("Content-Type", "application/json"),
        ];
        match shape {
            Shape::Plain => {}
            Shape::Keyed(_) => headers.push(("Idempotency-Key", &key)),
            Shape::Background => headers.push(("Waybill-Background", "none")),
        }
        headers.extend(extra);
        let req = build_request("POST", INBOUND_PATH, &ctx.target.host, &headers, &body);
        let marker = format!("Idempotency-Key: {KEY_PREFIX}");
        let key_at = match shape {
            Shape::Keyed(order) => find(&req, marker.as_bytes()).map(|i| (i + marker.len(), order)),
            _ => None,
        };
        IntakeRequest {
            seq_at: req.len() - BODY_SIZE + seq_in_body,
            req,
            key_at,
        }
    }

    /// Makes the body, and the key when there is one, unique for `seq`.
    fn stamp(&mut self, seq: u64) -> &[u8] {
        put_digits(&mut self.req[self.seq_at..self.seq_at + SEQ_DIGITS], seq);
        if let Some((at, order)) = self.key_at {
            let digits = match order {
                KeyOrder::Growing => seq,
                KeyOrder::Random => scatter(seq) % 10u64.pow(SEQ_DIGITS as u32),
            };
            put_digits(&mut self.req[at..at + SEQ_DIGITS], digits);
        }
        &self.req
    }
}

/// A bijective mix of a sequence number (splitmix64's finaliser): unique in, scattered
/// out, so random keys never repeat either.
fn scatter(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Sequence numbers: the run in the leading digits, then the connection, then its count,
/// so keys never repeat across the runs of one phase.
fn seq(run: u64, conn: u64, n: u64) -> u64 {
    run * 100_000_000_000_000 + conn * 10_000_000_000 + n
}

// ---------------------------------------------------------------------------
// Throughput runs

/// `conns` connections sending `shape` as fast as they are answered; requests started in
/// the `duration` after a warm-up second count.
async fn intake(ctx: &Arc<Ctx>, shape: Shape, run: u64, conns: usize, duration: Duration) -> Tally {
    let record_from = Instant::now() + WARMUP;
    let end = record_from + duration;
    let mut set = JoinSet::new();
    for id in 0..conns as u64 {
        let ctx = Arc::clone(ctx);
        set.spawn(async move {
            let mut req = IntakeRequest::new(&ctx, shape, None);
            let want = if shape == Shape::Background { 202 } else { 0 };
            let mut t = Tally::with_capacity(16 * 1024);
            let mut conn: Option<Conn> = None;
            let mut n = 0;
            while Instant::now() < end {
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
                let res = timeout(REQUEST_TIMEOUT, c.request(req.stamp(seq(run, id, n)))).await;
                let lat = micros(start.elapsed());
                let counted = start >= record_from;
                match res {
                    Ok(Ok(status)) if status == want || (want == 0 && is_success(status)) => {
                        if counted {
                            t.ok += 1;
                            t.lat.push(lat);
                        }
                        t.created += 1;
                    }
                    Ok(Ok(status)) => {
                        t.note_error(counted, || format!("{status}: {}", snippet(&c.body)));
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

fn rate(t: &Tally, duration: Duration) -> f64 {
    t.ok as f64 / duration.as_secs_f64()
}

fn intake_line(shape: Shape, conns: usize, duration: Duration, t: &Tally) -> String {
    format!(
        "{} conns {:.1}s {}: {} ok, {} err, {:.0} req/s, {}",
        conns,
        duration.as_secs_f64(),
        shape.name(),
        t.ok,
        t.err,
        rate(t, duration),
        latency_summary(t.lat.clone(), &QUANTILES, true)
    )
}

// ---------------------------------------------------------------------------
// Latency runs

/// What the paced senders of one run saw.
#[derive(Default)]
struct Paced {
    tally: Tally,
    /// Background runs: each accepted job's id and when its request was sent.
    jobs: Vec<(String, u64)>,
}

/// `RATE` calls per second for `duration`, spread over `PACED_SENDERS` connections.
/// With `webhook`, each call asks for the background with that URL.
async fn paced(ctx: &Arc<Ctx>, run: u64, duration: Duration, webhook: Option<&str>) -> Paced {
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut set = JoinSet::new();
    for id in 0..PACED_SENDERS {
        let ctx = Arc::clone(ctx);
        let webhook = webhook.map(str::to_owned);
        set.spawn(async move {
            let extra = webhook.as_deref().map(|url| ("Waybill-Background", url));
            let mut req = IntakeRequest::new(&ctx, Shape::Plain, extra);
            let mut out = Paced::default();
            let mut conn: Option<Conn> = None;
            let mut k = 0u64;
            loop {
                let slot = id + k * PACED_SENDERS;
                let offset = Duration::from_secs_f64(slot as f64 / RATE as f64);
                if offset >= duration {
                    break;
                }
                tokio::time::sleep_until(start + offset).await;
                k += 1;
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::connect(&ctx.target).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            out.tally.note_error(true, || format!("connect: {e}"));
                            continue;
                        }
                    },
                };
                let sent_us = now_micros();
                let res = timeout(REQUEST_TIMEOUT, c.request(req.stamp(seq(run, id, k)))).await;
                let lat = now_micros().saturating_sub(sent_us);
                match res {
                    Ok(Ok(status)) if webhook.is_some() && status == 202 => match job_id(&c.body) {
                        Some(job) => {
                            out.tally.ok += 1;
                            out.jobs.push((job, sent_us));
                        }
                        None => out
                            .tally
                            .note_error(true, || format!("no job id: {}", snippet(&c.body))),
                    },
                    Ok(Ok(status)) if webhook.is_none() && is_success(status) => {
                        out.tally.ok += 1;
                        out.tally.lat.push(lat.min(u64::from(u32::MAX)) as u32);
                    }
                    Ok(Ok(status)) => out
                        .tally
                        .note_error(true, || format!("{status}: {}", snippet(&c.body))),
                    Ok(Err(e)) => {
                        out.tally.note_error(true, || e.to_string());
                        conn = None;
                    }
                    Err(_) => {
                        out.tally.note_error(true, || "timed out".into());
                        conn = None;
                    }
                }
                if conn.as_ref().is_some_and(|c| !c.keep_alive) {
                    conn = None;
                }
            }
            out
        });
    }
    let mut total = Paced::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(p) => {
                total.tally.merge(p.tally);
                total.jobs.extend(p.jobs);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    total
}

fn job_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["data"]["id"].as_str().map(str::to_owned)
}

/// One completion webhook as it arrived.
struct Completion {
    at_us: u64,
    state: String,
    status: Option<u64>,
}

/// Receives completion webhooks, answers 200 to each, and records them by job id.
struct Receiver {
    url: String,
    seen: Arc<Mutex<HashMap<String, Completion>>>,
}

impl Receiver {
    async fn start() -> Result<Receiver, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("webhook receiver: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&log)));
            }
        });
        Ok(Receiver {
            url: format!("http://127.0.0.1:{port}/done"),
            seen,
        })
    }

    fn count(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<HashMap<String, Completion>>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let at_us = now_micros();
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            if let (Some(id), Ok(mut seen)) = (v["id"].as_str(), log.lock()) {
                // A retried delivery keeps the first arrival.
                seen.entry(id.to_owned()).or_insert(Completion {
                    at_us,
                    state: v["state"].as_str().unwrap_or("?").to_owned(),
                    status: v["responseStatus"].as_u64(),
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
// Job queue

/// Whether any job is still queued or running (the admin listing, one per state).
async fn jobs_pending(ctx: &Ctx, token: &str) -> Result<bool, String> {
    for state in ["queued", "running"] {
        let path = format!("/admin/api/jobs?state={state}&limit=1");
        let (status, v) = admin_call(&ctx.target, token, "GET", &path, None).await?;
        if !is_success(status) {
            return Err(format!("listing {state} jobs: {status} {v}"));
        }
        if v["data"]["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Waits until the workers have run every job; how long that took.
async fn drain(ctx: &Ctx, token: &str) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    while started.elapsed() < DRAIN_WAIT {
        if !jobs_pending(ctx, token).await? {
            return Ok(Some(started.elapsed()));
        }
        sleep(Duration::from_millis(500)).await;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// The phase

pub async fn run(
    ctx: &Arc<Ctx>,
    token: &str,
    conns: usize,
    duration: Duration,
) -> Result<(), String> {
    let receiver = Receiver::start().await?;

    // 1. Latency at RATE: the synchronous call, then its background twin.
    let sync = paced(ctx, 1, duration, None).await;
    let sync_p50 = median(sync.tally.lat.clone());
    println!(
        "background sync intake at {RATE}/s {:.1}s: {} ok, {} err, {}",
        duration.as_secs_f64(),
        sync.tally.ok,
        sync.tally.err,
        latency_summary(sync.tally.lat.clone(), &QUANTILES, true)
    );
    print_first_error(&sync.tally.first_err);

    let mark = report::mark();
    let bg = paced(ctx, 2, duration, Some(&receiver.url)).await;
    let deadline = Instant::now() + WEBHOOK_WAIT;
    while receiver.count() < bg.jobs.len() && Instant::now() < deadline {
        sleep(Duration::from_millis(50)).await;
    }
    let (lat, other) = {
        let seen = receiver.seen.lock().map_err(|_| "webhook log poisoned")?;
        let mut lat = Vec::with_capacity(bg.jobs.len());
        let mut other = 0u64;
        for (id, sent_us) in &bg.jobs {
            if let Some(c) = seen.get(id) {
                if c.state != "completed" || !c.status.is_some_and(|s| (200..300).contains(&s)) {
                    other += 1;
                }
                lat.push(c.at_us.saturating_sub(*sent_us).min(u64::from(u32::MAX)) as u32);
            }
        }
        (lat, other)
    };
    let bg_p50 = median(lat.clone());
    report::record(
        Row::new(format!(
            "background call at {RATE}/s, submit to completion webhook"
        ))
        .rate(bg.tally.ok as f64 / duration.as_secs_f64(), "jobs/s, paced")
        .latency(&lat)
        .messages(bg.tally.ok)
        .note(format!(
            "{} webhooks, {other} not completed with a 2xx; the synchronous call: p50 {}",
            lat.len(),
            sync_p50.map_or("n/a".into(), fmt_ms)
        )),
        mark,
    );
    println!(
        "background webhook jobs at {RATE}/s {:.1}s: {} accepted, {} err, {} webhooks \
         ({} not completed with a 2xx), submit to completion webhook {}",
        duration.as_secs_f64(),
        bg.tally.ok,
        bg.tally.err,
        lat.len(),
        other,
        latency_summary(lat, &QUANTILES, true)
    );
    print_first_error(&bg.tally.first_err);
    if let (Some(b), Some(s)) = (bg_p50, sync_p50) {
        println!(
            "background p50 {:.2} ms vs sync p50 {:.2} ms: +{:.2} ms",
            b as f64 / 1000.0,
            s as f64 / 1000.0,
            (f64::from(b) - f64::from(s)) / 1000.0
        );
    }
    if drain(ctx, token).await?.is_none() {
        return Err("background jobs of the latency run did not finish".into());
    }

    // 2. Idempotency-Key against none.
    key_cost(ctx, conns, duration).await;

    // 3. Jobs accepted durably, while the workers run them.
    let mark = report::mark();
    let t = intake(ctx, Shape::Background, 9, conns, duration).await;
    report::record(
        Row::new(format!("background calls accepted, {conns} connections"))
            .rate(rate(&t, duration), "jobs/s")
            .latency(&t.lat)
            .messages(t.created)
            .note("`Waybill-Background: none`, the workers running jobs meanwhile"),
        mark,
    );
    println!(
        "background accepted {}",
        intake_line(Shape::Background, conns, duration, &t)
    );
    print_first_error(&t.first_err);
    let queued = t.created;
    match drain(ctx, token).await? {
        Some(d) => println!(
            "background the workers ran the rest of the {queued} jobs in {:.1}s after the run",
            d.as_secs_f64()
        ),
        None => println!(
            "background jobs still pending {} s after the run",
            DRAIN_WAIT.as_secs()
        ),
    }
    Ok(())
}

fn median(mut lat: Vec<u32>) -> Option<u32> {
    if lat.is_empty() {
        return None;
    }
    lat.sort_unstable();
    Some(quantile(&lat, 0.5))
}

/// The cost of `Idempotency-Key` on intake (`--phase idempotency`, and part of
/// `--phase background`): runs without a key, with keys that grow and with random keys,
/// in the order plain, growing, random, random, growing, plain, so a store that grows
/// during the run weighs on each kind alike. Each run is a third of `duration`.
pub async fn key_cost(ctx: &Arc<Ctx>, conns: usize, duration: Duration) {
    let third = duration / 3;
    // Per kind: what was counted, and the server's CPU time over its runs.
    let mut kinds: [(Shape, Tally, Option<u64>); 3] = [
        (Shape::Plain, Tally::default(), Some(0)),
        (Shape::Keyed(KeyOrder::Growing), Tally::default(), Some(0)),
        (Shape::Keyed(KeyOrder::Random), Tally::default(), Some(0)),
    ];
    for (run, i) in [0, 1, 2, 2, 1, 0].into_iter().enumerate() {
        let shape = kinds[i].0;
        let mark = report::mark();
        let t = intake(ctx, shape, 3 + run as u64, conns, third).await;
        let spent = mark.spent_us();
        println!("background intake {}", intake_line(shape, conns, third, &t));
        print_first_error(&t.first_err);
        let kind = &mut kinds[i];
        kind.1.merge(t);
        kind.2 = kind.2.zip(spent).map(|(a, b)| a + b);
    }
    let per_message = |t: &Tally, cpu: Option<u64>| {
        cpu.filter(|_| t.created > 0)
            .map(|us| us as f64 / t.created as f64)
    };
    let [(_, plain, plain_cpu), growing, random] = kinds;
    let plain_rate = rate(&plain, third * 2);
    let plain_us = per_message(&plain, plain_cpu);
    let share = |r: f64| {
        if plain_rate > 0.0 {
            100.0 * r / plain_rate
        } else {
            0.0
        }
    };
    for (shape, keyed, cpu) in [growing, random] {
        let keyed_rate = rate(&keyed, third * 2);
        let keyed_us = per_message(&keyed, cpu);
        let cpu_note = match (keyed_us, plain_us) {
            (Some(k), Some(p)) => format!("; server CPU {k:.0} against {p:.0} µs per message"),
            _ => String::new(),
        };
        report::record(
            Row::new(format!(
                "intake with a fresh {}, {conns} connections",
                shape.name()
            ))
            .rate(keyed_rate, "msg/s")
            .latency(&keyed.lat)
            .messages(keyed.created)
            .cpu_per_message(keyed_us)
            .note(format!(
                "alternated with intake without one: {plain_rate:.0} msg/s ({:.0} %){cpu_note}",
                share(keyed_rate)
            )),
            report::mark(),
        );
        println!(
            "background intake with a fresh {} per request {keyed_rate:.0} req/s ({}), \
             without {plain_rate:.0} req/s ({}): {:.0} %{cpu_note}",
            shape.name(),
            latency_summary(keyed.lat, &QUANTILES, false),
            latency_summary(plain.lat.clone(), &QUANTILES, false),
            share(keyed_rate)
        );
    }
}
