//! Figure 1: status changes spread over the subscriptions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::client::{build_request, Conn};
use crate::report::{self, Row};
use crate::stats::{latency_summary, micros, now_micros, print_first_error, snippet, Tally};
use crate::{Ctx, REQUEST_TIMEOUT};

use super::{
    intake, intake_requests, Call, Hooks, Sub, CHANGES_PER_SECOND, DRIVERS, FILL_CONNECTIONS,
    POLL_LIMIT, QUANTILES, SETTLE, SUBS, WINDOW,
};

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
pub(super) async fn settle(hooks: &Hooks) {
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

pub(super) async fn status_changes(
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
    let mark = report::mark();

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
    report::record(
        Row::new(format!("status changes over {SUBS} subscriptions"))
            .rate(
                drive.changes as f64 / drove.as_secs_f64().max(1e-9),
                "changes/s",
            )
            .latency(&drive.acks.lat)
            .messages(drive.changes)
            .note(format!(
                "target {CHANGES_PER_SECOND}/s; p50/p99 of the ack; {:.2} batches per \
                 subscription per window; {lost} ids lost",
                batches as f64 / SUBS as f64 / windows.max(1e-9)
            )),
        mark,
    );
    Ok(())
}
