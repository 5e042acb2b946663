//! `--phase pollack`: how fast a receiver drains its queue with poll (`limit=100`,
//! `lease=60`) and one acknowledgement per transmission.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use super::inbound::run_inbound_count;
use crate::client::{build_request, build_request_tail, Conn};
use crate::report::{self, Row};
use crate::server::{check_alive, Server};
use crate::stats::{fmt_ms, quantile};
use crate::stats::{is_success, micros, snippet, Tally};
use crate::stats::{latency_summary, print_first_error};
use crate::FILL_CONNECTIONS;
use crate::{Ctx, REQUEST_TIMEOUT};

pub const POLL_PATH: &str = "/api/v1/transmissions?limit=100&lease=60";
pub const ACK_PATH: &str = "/api/v1/transmissions/status/";
pub const ACK_BODY: &[u8] = br#"{"status":"processed"}"#;

pub const POLLERS: usize = 8;
pub const ACK_LANES: usize = 8;
pub const BACKLOG_PER_SECOND: u64 = 20_000;
pub const BACKLOG_CAP: u64 = 400_000;

// ---------------------------------------------------------------------------
// Poll + acknowledge

pub struct PollAck {
    pub acked: u64,
    pub polls: Tally,
    pub acks: Tally,
    pub elapsed: Duration,
    pub drained: bool,
}

pub async fn run_pollack(ctx: &Arc<Ctx>, duration: Duration) -> PollAck {
    let start = Instant::now();
    let end = start + duration;
    let mut set = JoinSet::new();
    for _ in 0..POLLERS {
        set.spawn(poller(ctx.clone(), end));
    }
    let mut out = PollAck {
        acked: 0,
        polls: Tally::default(),
        acks: Tally::default(),
        elapsed: Duration::ZERO,
        drained: false,
    };
    let mut last_stop = start;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(p) => {
                out.acked += p.acks.ok;
                out.polls.merge(p.polls);
                out.acks.merge(p.acks);
                out.drained |= p.drained;
                last_stop = last_stop.max(p.stopped);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    // The rate is over the time actually spent, which is shorter than the
    // requested duration when the backlog ran out.
    out.elapsed = last_stop - start;
    out
}

pub struct PollerOut {
    pub polls: Tally,
    pub acks: Tally,
    pub stopped: Instant,
    pub drained: bool,
}

pub async fn poller(ctx: Arc<Ctx>, end: Instant) -> PollerOut {
    let poll_req = build_request(
        "GET",
        POLL_PATH,
        &ctx.target.host,
        &[("X-Api-Key", &ctx.receiver_key)],
        b"",
    );
    let ack_tail = Arc::new(build_request_tail(
        &ctx.target.host,
        &[
            ("X-Api-Key", &ctx.receiver_key),
            ("Content-Type", "application/json"),
        ],
        ACK_BODY,
    ));
    let mut lanes: Vec<AckLane> = (0..ACK_LANES)
        .map(|_| AckLane::new(ctx.clone(), ack_tail.clone()))
        .collect();
    let mut polls = Tally::with_capacity(1024);
    let mut conn: Option<Conn> = None;
    let mut empty_in_a_row = 0;
    let mut drained = false;
    while Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&ctx.target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    polls.note_error(true, || format!("poll connect: {e}"));
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let start = Instant::now();
        let res = timeout(REQUEST_TIMEOUT, c.request(&poll_req)).await;
        let lat = micros(start.elapsed());
        let uuids = match res {
            Ok(Ok(status)) => {
                polls.lat.push(lat);
                let parsed = if is_success(status) {
                    transmission_uuids(&c.body)
                } else {
                    Err(format!("poll {status}: {}", snippet(&c.body)))
                };
                if !c.keep_alive {
                    conn = None;
                }
                parsed
            }
            Ok(Err(e)) => {
                conn = None;
                Err(format!("poll: {e}"))
            }
            Err(_) => {
                conn = None;
                Err("poll: timed out".into())
            }
        };
        let uuids = match uuids {
            Ok(u) => {
                polls.ok += 1;
                u
            }
            Err(e) => {
                polls.note_error(true, || e);
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if uuids.is_empty() {
            // Leased items are invisible to other pollers, so one empty answer
            // can be a race with a neighbour; two in a row mean it is drained.
            empty_in_a_row += 1;
            if empty_in_a_row >= 2 {
                drained = true;
                break;
            }
            sleep(Duration::from_millis(20)).await;
            continue;
        }
        empty_in_a_row = 0;
        for (i, u) in uuids.into_iter().enumerate() {
            lanes[i % ACK_LANES].todo.push(u);
        }
        let mut set = JoinSet::new();
        let mut idle = Vec::new();
        for lane in lanes.drain(..) {
            if lane.todo.is_empty() {
                idle.push(lane);
            } else {
                set.spawn(lane.run());
            }
        }
        lanes = idle;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(lane) => lanes.push(lane),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    }
    let stopped = Instant::now();
    let mut acks = Tally::default();
    for lane in lanes {
        acks.merge(lane.tally);
    }
    PollerOut {
        polls,
        acks,
        stopped,
        drained,
    }
}

pub fn transmission_uuids(body: &[u8]) -> Result<Vec<String>, String> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("poll: bad JSON ({e}): {}", snippet(body)))?;
    if v.get("success") == Some(&Value::Bool(false)) {
        return Err(format!("poll: success=false: {}", snippet(body)));
    }
    let Value::Array(items) = v["data"].take() else {
        return Err(format!("poll: data is not an array: {}", snippet(body)));
    };
    items
        .iter()
        .map(|item| {
            item.get("uuid")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "poll: item without uuid: {}",
                        snippet(item.to_string().as_bytes())
                    )
                })
        })
        .collect()
}

/// One acknowledgement connection; moved into a task per batch and handed
/// back, so its connection and buffers survive across batches.
pub struct AckLane {
    pub ctx: Arc<Ctx>,
    pub conn: Option<Conn>,
    pub tail: Arc<Vec<u8>>,
    pub req: Vec<u8>,
    pub todo: Vec<String>,
    pub tally: Tally,
}

impl AckLane {
    pub fn new(ctx: Arc<Ctx>, tail: Arc<Vec<u8>>) -> AckLane {
        AckLane {
            ctx,
            conn: None,
            tail,
            req: Vec::with_capacity(512),
            todo: Vec::with_capacity(16),
            tally: Tally::with_capacity(16 * 1024),
        }
    }

    pub async fn run(mut self) -> AckLane {
        let todo = std::mem::take(&mut self.todo);
        for uuid in &todo {
            self.req.clear();
            self.req.extend_from_slice(b"PUT ");
            self.req.extend_from_slice(ACK_PATH.as_bytes());
            self.req.extend_from_slice(uuid.as_bytes());
            self.req.extend_from_slice(&self.tail);
            let c = match self.conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(&self.ctx.target).await {
                    Ok(c) => self.conn.insert(c),
                    Err(e) => {
                        // The transmission stays leased and is simply not
                        // counted; retrying would distort the ack latency.
                        self.tally.note_error(true, || format!("ack connect: {e}"));
                        continue;
                    }
                },
            };
            let start = Instant::now();
            let res = timeout(REQUEST_TIMEOUT, c.request(&self.req)).await;
            let lat = micros(start.elapsed());
            match res {
                Ok(Ok(status)) => {
                    self.tally.lat.push(lat);
                    if is_success(status) {
                        self.tally.ok += 1;
                    } else {
                        self.tally
                            .note_error(true, || format!("ack {status}: {}", snippet(&c.body)));
                    }
                    if !c.keep_alive {
                        self.conn = None;
                    }
                }
                Ok(Err(e)) => {
                    self.tally.note_error(true, || format!("ack: {e}"));
                    self.conn = None;
                }
                Err(_) => {
                    self.tally.note_error(true, || "ack: timed out".into());
                    self.conn = None;
                }
            }
        }
        // Keep the allocation for the next batch.
        self.todo = todo;
        self.todo.clear();
        self
    }
}

/// `--phase pollack`: tops the backlog up to what `duration` can drain, then
/// polls and acknowledges for `duration`.
pub async fn phase(
    ctx: &Arc<Ctx>,
    duration: Duration,
    mut backlog: u64,
    server: &mut Option<Server>,
) -> Result<(), String> {
    let label = ctx.target.label();
    let target = ((duration.as_secs_f64() * BACKLOG_PER_SECOND as f64) as u64).min(BACKLOG_CAP);
    if backlog < target {
        let need = target - backlog;
        let started = Instant::now();
        let t = run_inbound_count(ctx, FILL_CONNECTIONS, need, None).await;
        backlog += t.created;
        println!(
            "pollack  backlog top-up: {} sent in {:.1}s, {} err (backlog {})",
            t.created,
            started.elapsed().as_secs_f64(),
            t.err,
            backlog
        );
        print_first_error(&t.first_err);
        check_alive(server, "the backlog top-up")?;
    }
    let mark = report::mark();
    let r = run_pollack(ctx, duration).await;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let mut acks = r.acks.lat.clone();
    acks.sort_unstable();
    let ack_note = if acks.is_empty() {
        String::new()
    } else {
        format!(
            "; ack p50 {}, p99 {}",
            fmt_ms(quantile(&acks, 0.50)),
            fmt_ms(quantile(&acks, 0.99))
        )
    };
    report::record(
        Row::new(format!(
            "poll (`limit=100`) + ack, {POLLERS} pollers x {ACK_LANES} ack connections"
        ))
        .rate(r.acked as f64 / secs, "tx/s")
        .latency(&r.polls.lat)
        .messages(r.acked)
        .note(format!(
            "p50/p99 of the poll{ack_note}{}",
            if r.drained { "; backlog drained" } else { "" }
        )),
        mark,
    );
    println!(
        "pollack  {label}{} pollers x {} ack conns {:.1}s{}: {} acked, {:.0} tx/s, {} polls, poll {}, ack {}, {} err",
        POLLERS,
        ACK_LANES,
        secs,
        if r.drained { " (backlog drained)" } else { "" },
        r.acked,
        r.acked as f64 / secs,
        r.polls.ok + r.polls.err,
        latency_summary(r.polls.lat, &[("p50", 0.50), ("p99", 0.99)], false),
        latency_summary(r.acks.lat, &[("p50", 0.50), ("p99", 0.99)], false),
        r.polls.err + r.acks.err
    );
    print_first_error(&r.polls.first_err);
    print_first_error(&r.acks.first_err);
    check_alive(server, "pollack")
}
