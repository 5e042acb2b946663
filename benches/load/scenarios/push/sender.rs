//! The intake side of the push phase: bodies stamped with their send time and a sequence
//! number, sent as fast as possible or paced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::client::{build_request, find, Conn, Target};
use crate::scenarios::inbound::{put_digits, Budget};
use crate::stats::{is_success, micros, now_micros, snippet, Tally};
use crate::{Ctx, BODY_SIZE, INBOUND_PATH, REQUEST_TIMEOUT, SEQ_DIGITS};

/// Sequence numbers carry the run in their leading digit (1 throughput,
/// 2 latency), then the sender and its counter, so the receiver can tell the
/// runs apart without any state shared with the senders.
pub const SEQ_RUN: u64 = 1_000_000_000_000_000;
pub const SEQ_SENDER: u64 = 10_000_000_000;
pub const RUN_THROUGHPUT: u64 = 1;
pub const RUN_LATENCY: u64 = 2;

pub fn push_seq(run: u64, sender: u64, n: u64) -> u64 {
    run * SEQ_RUN + sender * SEQ_SENDER + n
}

pub const SENT_AT_PREFIX: &[u8] = br#"{"sentAtMicros":"#;
pub const SEQ_PREFIX: &[u8] = br#","seq":""#;

/// A 1 KiB JSON object that starts with the send time (a 16-digit number,
/// enough until the year 2286) and a fixed-width sequence string, both
/// overwritten in place per request and found by the receiver at fixed offsets.
pub fn push_body() -> Vec<u8> {
    let end = br#"","source":"waybill-load","pad":""#;
    let close = br#""}"#;
    let mut body = Vec::with_capacity(BODY_SIZE);
    body.extend_from_slice(SENT_AT_PREFIX);
    body.resize(body.len() + SEQ_DIGITS, b'1');
    body.extend_from_slice(SEQ_PREFIX);
    body.resize(body.len() + SEQ_DIGITS, b'0');
    body.extend_from_slice(end);
    body.resize(BODY_SIZE - close.len(), b'x');
    body.extend_from_slice(close);
    debug_assert_eq!(body.len(), BODY_SIZE);
    body
}

/// Send time and sequence number of a body made by [`push_body`].
pub fn parse_push_body(body: &[u8]) -> Option<(u64, u64)> {
    let sent_at = SENT_AT_PREFIX.len();
    let seq_at = sent_at + SEQ_DIGITS + SEQ_PREFIX.len();
    if body.len() < seq_at + SEQ_DIGITS
        || !body.starts_with(SENT_AT_PREFIX)
        || &body[sent_at + SEQ_DIGITS..seq_at] != SEQ_PREFIX
    {
        return None;
    }
    Some((
        parse_digits(&body[sent_at..sent_at + SEQ_DIGITS])?,
        parse_digits(&body[seq_at..seq_at + SEQ_DIGITS])?,
    ))
}

pub fn parse_digits(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.wrapping_mul(10).wrapping_add(u64::from(b - b'0')))
    })
}

// --- Senders

/// One intake connection sending push bodies: each request gets its send
/// time and sequence number written in place just before it goes out.
pub struct PushSender {
    pub target: Target,
    pub req: Vec<u8>,
    pub sent_at: usize,
    pub seq_at: usize,
    pub conn: Option<Conn>,
    pub tally: Tally,
    /// Accepted sequence numbers and the transmission each became.
    pub accepted: Vec<(u64, Option<Box<str>>)>,
    /// When the last accepted request was answered (micros since epoch).
    pub last_accept_us: u64,
}

impl PushSender {
    pub fn new(ctx: &Ctx) -> PushSender {
        let body = push_body();
        let req = build_request(
            "POST",
            INBOUND_PATH,
            &ctx.target.host,
            &[
                ("X-Api-Key", &ctx.sender_key),
                ("Content-Type", "application/json"),
            ],
            &body,
        );
        let sent_at = req.len() - BODY_SIZE + SENT_AT_PREFIX.len();
        PushSender {
            target: ctx.target.clone(),
            req,
            sent_at,
            seq_at: sent_at + SEQ_DIGITS + SEQ_PREFIX.len(),
            conn: None,
            tally: Tally::with_capacity(1024),
            accepted: Vec::with_capacity(1024),
            last_accept_us: 0,
        }
    }

    /// Sends one message; true when the server accepted it.
    pub async fn send(&mut self, seq: u64) -> bool {
        put_digits(&mut self.req[self.seq_at..self.seq_at + SEQ_DIGITS], seq);
        let c = match self.conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&self.target).await {
                Ok(c) => self.conn.insert(c),
                Err(e) => {
                    self.tally.note_error(true, || format!("connect: {e}"));
                    sleep(Duration::from_millis(50)).await;
                    return false;
                }
            },
        };
        let sent_at = self.sent_at;
        put_digits(&mut self.req[sent_at..sent_at + SEQ_DIGITS], now_micros());
        let start = Instant::now();
        let res = timeout(REQUEST_TIMEOUT, c.request(&self.req)).await;
        self.tally.lat.push(micros(start.elapsed()));
        match res {
            Ok(Ok(status)) => {
                let ok = is_success(status);
                if ok {
                    self.tally.ok += 1;
                    self.last_accept_us = now_micros();
                    self.accepted.push((seq, transmission_of(&c.body)));
                } else {
                    self.tally
                        .note_error(true, || format!("inbound {status}: {}", snippet(&c.body)));
                }
                if !c.keep_alive {
                    self.conn = None;
                }
                ok
            }
            Ok(Err(e)) => {
                self.tally.note_error(true, || format!("inbound: {e}"));
                self.conn = None;
                false
            }
            Err(_) => {
                self.tally.note_error(true, || "inbound: timed out".into());
                self.conn = None;
                false
            }
        }
    }
}

/// The transmission uuid in an intake answer: the only `"uuid"` key in it.
/// Kept so a delivery that never arrives can be looked up afterwards.
pub fn transmission_of(body: &[u8]) -> Option<Box<str>> {
    const KEY: &[u8] = br#""uuid":""#;
    let at = find(body, KEY)? + KEY.len();
    let uuid = body.get(at..at + 36)?;
    std::str::from_utf8(uuid).ok().map(Box::from)
}

/// What one run of intake produced, merged over its senders.
pub struct Sent {
    pub tally: Tally,
    pub accepted: Vec<(u64, Option<Box<str>>)>,
    pub started_us: u64,
    pub finished_us: u64,
    pub last_accept_us: u64,
}

impl Sent {
    pub fn new(started_us: u64) -> Sent {
        Sent {
            tally: Tally::default(),
            accepted: Vec::new(),
            started_us,
            finished_us: started_us,
            last_accept_us: 0,
        }
    }

    pub fn add(&mut self, s: PushSender) {
        self.tally.merge(s.tally);
        self.accepted.extend(s.accepted);
        self.last_accept_us = self.last_accept_us.max(s.last_accept_us);
    }
}

pub async fn join_senders(mut set: JoinSet<PushSender>, started_us: u64) -> Sent {
    let mut sent = Sent::new(started_us);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(s) => sent.add(s),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    sent.finished_us = now_micros();
    sent
}

/// As fast as the intake allows until `budget` messages are stored.
pub async fn push_count_worker(ctx: Arc<Ctx>, id: u64, budget: Arc<Budget>) -> PushSender {
    let mut s = PushSender::new(&ctx);
    let mut n = 0;
    while budget.take() {
        n += 1;
        if !s.send(push_seq(RUN_THROUGHPUT, id, n)).await {
            budget.give_back();
        }
    }
    s
}

/// Sender `id` of `senders` takes every `senders`-th slot of a schedule at
/// `rate` per second, so together they send evenly spaced messages. A sender
/// that falls behind sends its late slots at once rather than dropping them.
pub async fn push_paced_worker(
    ctx: Arc<Ctx>,
    id: u64,
    senders: u64,
    rate: u64,
    start: tokio::time::Instant,
    duration: Duration,
) -> PushSender {
    let mut s = PushSender::new(&ctx);
    let mut k = 0u64;
    loop {
        let offset = Duration::from_secs_f64((id + k * senders) as f64 / rate as f64);
        if offset >= duration {
            break;
        }
        tokio::time::sleep_until(start + offset).await;
        k += 1;
        s.send(push_seq(RUN_LATENCY, id, k)).await;
    }
    s
}
