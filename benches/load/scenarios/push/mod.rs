//! `--phase push`: the server POSTs every transmission to a receiver in this process; how
//! many deliveries per second it reaches, and the intake-to-receiver latency at a fixed rate.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::sleep;

use crate::options::Options;
use crate::report::{self, Row};
use crate::scenarios::inbound::Budget;
use crate::scenarios::push::receiver::{Arrival, HookLog, HookServer};
use crate::scenarios::push::sender::{
    join_senders, push_count_worker, push_paced_worker, Sent, RUN_LATENCY, RUN_THROUGHPUT,
};
use crate::server::{check_alive, new_log_lines, Server, OUTBOUND_ALLOW_ENV};
use crate::setup::admin_call;
use crate::stats::{fmt_ms, is_success, latency_summary, now_micros, print_first_error, snippet};
use crate::{Ctx, RECEIVER};

mod receiver;
mod sender;

/// Intake width of the push throughput run.
pub const PUSH_CONNECTIONS: usize = 64;
pub const PUSH_MESSAGES: u64 = 50_000;
/// How long to wait for deliveries after the last message was sent.
pub const PUSH_WAIT: Duration = Duration::from_secs(120);
pub const PUSH_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Paced senders in the latency run: one per this many messages per second.
pub const PACED_PER_CONNECTION: u64 = 125;

// --- The phase

/// How a run's deliveries compare with what was sent.
pub struct Delivered {
    /// Accepted messages that arrived (each counted once).
    pub delivered: u64,
    /// Arrivals whose webhook-id had been seen before.
    pub dup_ids: u64,
    /// Arrivals of a message that had already arrived, under any id.
    pub repeats: u64,
    /// Accepted messages that never arrived.
    pub missing: Vec<u64>,
    /// Arrivals of messages whose intake did not answer 2xx (timed out, say).
    pub unexpected: u64,
    pub first_us: u64,
    pub last_us: u64,
    /// Send to first arrival, per delivered message.
    pub latency: Vec<u32>,
    /// Longest time without any arrival between the first and the last.
    pub max_gap_us: u64,
    /// The delivered message that took longest, and how long (micros).
    pub slowest: Option<(u64, u32)>,
}

pub fn compare_deliveries(sent: &Sent, arrivals: &[Arrival]) -> Delivered {
    let mut pending: std::collections::HashSet<u64> =
        sent.accepted.iter().map(|(seq, _)| *seq).collect();
    let mut seen = std::collections::HashSet::with_capacity(arrivals.len());
    let mut d = Delivered {
        delivered: 0,
        dup_ids: 0,
        repeats: 0,
        missing: Vec::new(),
        unexpected: 0,
        first_us: arrivals.first().map_or(0, |a| a.at_us),
        last_us: arrivals.last().map_or(0, |a| a.at_us),
        latency: Vec::with_capacity(arrivals.len()),
        max_gap_us: 0,
        slowest: None,
    };
    let mut prev = d.first_us;
    for a in arrivals {
        d.max_gap_us = d.max_gap_us.max(a.at_us - prev);
        prev = a.at_us;
        if a.dup_id {
            d.dup_ids += 1;
        }
        if !seen.insert(a.seq) {
            d.repeats += 1;
            continue;
        }
        if pending.remove(&a.seq) {
            d.delivered += 1;
            let lat = a.at_us.saturating_sub(a.sent_us).min(u32::MAX as u64) as u32;
            d.latency.push(lat);
            if d.slowest.is_none_or(|(_, l)| lat > l) {
                d.slowest = Some((a.seq, lat));
            }
        } else {
            d.unexpected += 1;
        }
    }
    d.missing = pending.into_iter().collect();
    d.missing.sort_unstable();
    d
}

/// Waits until every accepted message of `run` arrived, the server died, or
/// `PUSH_WAIT` passed since the last send. Returns whether all arrived.
pub async fn wait_for_deliveries(
    log: &HookLog,
    run: u64,
    expected: u64,
    server: &mut Option<Server>,
    what: &str,
) -> Result<bool, String> {
    let started = Instant::now();
    let mut next_note = started + PUSH_PROGRESS_EVERY;
    loop {
        let got = log.distinct(run);
        if got >= expected {
            return Ok(true);
        }
        check_alive(server, what)?;
        let now = Instant::now();
        if now >= started + PUSH_WAIT {
            println!(
                "push     {what}: gave up waiting after {} s: {got} of {expected} delivered",
                PUSH_WAIT.as_secs()
            );
            return Ok(false);
        }
        if now >= next_note {
            println!(
                "push     {what}: {got} of {expected} delivered, waited {:.0} s",
                (now - started).as_secs_f64()
            );
            next_note += PUSH_PROGRESS_EVERY;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

pub fn secs_between(from_us: u64, to_us: u64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

/// Duplicates, missing and stray deliveries, and the longest silence.
pub fn delivery_checks(d: &Delivered) -> String {
    let mut s = format!(
        "{} duplicate webhook-ids, {} missing, longest gap between deliveries {}",
        d.dup_ids,
        d.missing.len(),
        fmt_ms(d.max_gap_us.min(u32::MAX as u64) as u32)
    );
    if d.repeats > d.dup_ids {
        s.push_str(&format!(
            ", {} messages delivered again under a new webhook-id",
            d.repeats - d.dup_ids
        ));
    }
    if d.unexpected > 0 {
        s.push_str(&format!(
            ", {} deliveries of messages whose intake failed",
            d.unexpected
        ));
    }
    s
}

/// Deliveries this much later than their send are looked up in the server's
/// attempt log: at 1 ms typical, a second is a stall, not a queue.
pub const SLOW_DELIVERY_US: u32 = 1_000_000;

/// Missing deliveries, and with `stalls` (a run well under capacity, where
/// nothing should queue) the slowest one when it took a second or more.
pub async fn explain_deliveries(ctx: &Ctx, token: &str, sent: &Sent, d: &Delivered, stalls: bool) {
    if !d.missing.is_empty() {
        explain(ctx, token, sent, &d.missing, "missing").await;
    }
    let slow = d
        .slowest
        .filter(|&(_, lat)| stalls && lat >= SLOW_DELIVERY_US);
    if let Some((seq, lat)) = slow {
        explain(
            ctx,
            token,
            sent,
            &[seq],
            &format!("slowest ({})", fmt_ms(lat)),
        )
        .await;
    }
}

/// For a few deliveries, what the server's attempt log says.
pub async fn explain(ctx: &Ctx, token: &str, sent: &Sent, seqs: &[u64], what: &str) {
    let want: std::collections::HashSet<u64> = seqs.iter().take(3).copied().collect();
    for (seq, uuid) in sent.accepted.iter().filter(|(s, _)| want.contains(s)) {
        let Some(uuid) = uuid else {
            println!("         {what} seq {seq}: no transmission uuid in its intake answer");
            continue;
        };
        let path = format!("/admin/api/transmissions/{uuid}/attempts");
        let line = match admin_call(&ctx.target, token, "GET", &path, None).await {
            Ok((status, v)) if is_success(status) => {
                let list = v.get("data").unwrap_or(&v);
                match list.as_array() {
                    Some(a) if a.is_empty() => "no attempt yet".to_string(),
                    Some(a) => format!(
                        "{} attempts: {}",
                        a.len(),
                        a.iter()
                            .map(|x| snippet(x.to_string().as_bytes()))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    None => snippet(v.to_string().as_bytes()),
                }
            }
            Ok((status, v)) => format!("{status} {}", snippet(v.to_string().as_bytes())),
            Err(e) => e,
        };
        println!("         {what} transmission {uuid}: {line}");
    }
}

pub async fn set_push_url(ctx: &Ctx, token: &str, url: Option<&str>) -> Result<(), String> {
    let path = format!("/admin/api/partners/{RECEIVER}");
    let body = json!({ "pushUrl": url });
    let (status, v) = admin_call(&ctx.target, token, "PATCH", &path, Some(&body)).await?;
    if !is_success(status) {
        return Err(format!("setting {RECEIVER}'s pushUrl failed: {status} {v}"));
    }
    Ok(())
}

pub async fn run(
    ctx: &Arc<Ctx>,
    token: &str,
    server: &mut Option<Server>,
    opts: &Options,
) -> Result<(), String> {
    let hook = HookServer::start().await?;
    let log_from = server
        .as_ref()
        .and_then(|s| fs::metadata(&s.log_path).ok())
        .map_or(0, |m| m.len());
    set_push_url(ctx, token, Some(&hook.url())).await?;
    if server.is_none() {
        println!(
            "push     note: the external server must allow 127.0.0.0/8 ({OUTBOUND_ALLOW_ENV}) \
             and run on this host"
        );
    }
    println!("push     receiver {}, {RECEIVER} pushUrl set", hook.url());
    let result = push_runs(ctx, token, server, opts, &hook).await;
    // Leave no push URL to a port that is about to close: later phases (and
    // an external server) would retry into it.
    let reset = set_push_url(ctx, token, None).await;
    let log = &hook.log;
    let (anomalies, first_anomaly) = {
        let g = log.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.anomalies, g.first_anomaly.clone())
    };
    println!(
        "push     receiver: {} requests on {} connections, {} malformed",
        log.requests.load(Ordering::Relaxed),
        log.connections.load(Ordering::Relaxed),
        anomalies
    );
    print_first_error(&first_anomaly);
    let lines = new_log_lines(server, log_from);
    if !lines.is_empty() {
        // A panicking push task leaves its delivery leased, so it arrives
        // only after the lease: worth counting when stalls show up.
        let panics = lines.iter().filter(|l| l.contains("panicked at")).count();
        println!(
            "push     server logged {} lines ({panics} panics), the first:",
            lines.len()
        );
        for l in lines.iter().take(3) {
            println!("         {}", snippet(l.as_bytes()));
        }
    }
    result?;
    reset
}

pub async fn push_runs(
    ctx: &Arc<Ctx>,
    token: &str,
    server: &mut Option<Server>,
    opts: &Options,
    hook: &HookServer,
) -> Result<(), String> {
    let log = &hook.log;

    // Throughput: a burst of N, then however long the deliveries take.
    let total = opts.messages.unwrap_or(PUSH_MESSAGES);
    let budget = Arc::new(Budget::Count {
        issued: AtomicU64::new(0),
        total,
        stored: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        progress: None,
    });
    let mark = report::mark();
    let started_us = now_micros();
    let mut set = JoinSet::new();
    for id in 0..PUSH_CONNECTIONS {
        set.spawn(push_count_worker(ctx.clone(), id as u64, budget.clone()));
    }
    let sent = join_senders(set, started_us).await;
    let accepted = sent.accepted.len() as u64;
    wait_for_deliveries(log, RUN_THROUGHPUT, accepted, server, "throughput").await?;
    let d = compare_deliveries(&sent, &log.arrivals(RUN_THROUGHPUT));
    let intake_secs = secs_between(sent.started_us, sent.finished_us).max(1e-9);
    let window = secs_between(d.first_us, d.last_us);
    println!(
        "push     throughput: {accepted} sent in {intake_secs:.1}s ({:.0}/s), {} delivered in {window:.1}s ({}), last delivery {}",
        accepted as f64 / intake_secs,
        d.delivered,
        if window > 0.0 {
            format!("{:.0} deliveries/s", d.delivered as f64 / window)
        } else {
            "n/a deliveries/s".into()
        },
        if d.last_us > 0 {
            format!(
                "{:.1} s after the last send",
                d.last_us as f64 / 1e6 - sent.last_accept_us as f64 / 1e6
            )
        } else {
            "n/a".into()
        }
    );
    println!(
        "push     throughput: {} intake err, {}, send to delivery {}",
        sent.tally.err,
        delivery_checks(&d),
        latency_summary(d.latency.clone(), &[("p50", 0.50), ("p99", 0.99)], true)
    );
    report::record(
        Row::new(format!(
            "push, {accepted} messages sent on {PUSH_CONNECTIONS} connections"
        ))
        .rate(
            if window > 0.0 {
                d.delivered as f64 / window
            } else {
                0.0
            },
            "deliveries/s",
        )
        .latency(&d.latency)
        .messages(d.delivered)
        .note(format!(
            "send to delivery; intake {:.0}/s; {} duplicate ids, {} missing",
            accepted as f64 / intake_secs,
            d.dup_ids,
            d.missing.len()
        )),
        mark,
    );
    print_first_error(&sent.tally.first_err);
    explain_deliveries(ctx, token, &sent, &d, false).await;
    check_alive(server, "push throughput")?;

    // Latency: a steady rate well under the capacity just measured.
    let rate = opts.rate;
    let senders = rate.div_ceil(PACED_PER_CONNECTION).clamp(1, 64);
    let mark = report::mark();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let started_us = now_micros() + 50_000;
    let mut set = JoinSet::new();
    for id in 0..senders {
        set.spawn(push_paced_worker(
            ctx.clone(),
            id,
            senders,
            rate,
            start,
            opts.duration,
        ));
    }
    let sent = join_senders(set, started_us).await;
    let accepted = sent.accepted.len() as u64;
    wait_for_deliveries(log, RUN_LATENCY, accepted, server, "latency").await?;
    let d = compare_deliveries(&sent, &log.arrivals(RUN_LATENCY));
    let secs = opts.duration.as_secs_f64();
    println!(
        "push     latency at {rate} msg/s for {secs:.0}s: {} delivered, {}",
        d.delivered,
        latency_summary(
            d.latency.clone(),
            &[("p50", 0.50), ("p90", 0.90), ("p99", 0.99)],
            true
        )
    );
    report::record(
        Row::new(format!("push at a steady {rate} msg/s"))
            .rate(d.delivered as f64 / secs, "deliveries/s")
            .latency(&d.latency)
            .messages(d.delivered)
            .note(format!(
                "send to delivery; {} duplicate ids, {} missing",
                d.dup_ids,
                d.missing.len()
            )),
        mark,
    );
    let sent_secs = secs_between(sent.started_us, sent.finished_us).max(1e-9);
    println!(
        "push     latency: {accepted} sent over {senders} conns ({:.0}/s), {} intake err, intake {}, {}",
        accepted as f64 / sent_secs,
        sent.tally.err,
        latency_summary(sent.tally.lat.clone(), &[("p50", 0.50), ("p99", 0.99)], false),
        delivery_checks(&d)
    );
    print_first_error(&sent.tally.first_err);
    explain_deliveries(ctx, token, &sent, &d, true).await;
    Ok(())
}
