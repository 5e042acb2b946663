//! `--phase inbound`: durable intake of 1 KiB messages, timed or up to a count; the other
//! scenarios fill their backlogs with the same workers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::client::{build_request, Conn};
use crate::options::Options;
use crate::report::{self, Row};
use crate::server::{check_alive, Server};
use crate::stats::{is_success, micros, snippet, Tally};
use crate::stats::{latency_summary, print_first_error};
use crate::{Ctx, BODY_SIZE, INBOUND_PATH, REQUEST_TIMEOUT, SEQ_DIGITS, WARMUP};

pub const PROGRESS_EVERY: u64 = 100_000;

// ---------------------------------------------------------------------------
// Inbound load

/// How an inbound worker decides when to stop.
pub enum Budget {
    /// Run until `end`; only requests started at or after `record_from` count,
    /// so connection setup and cold caches stay out of the numbers.
    Timed { record_from: Instant, end: Instant },
    /// Send until `total` messages are stored. Tickets are handed out with an
    /// atomic counter and returned on failure so the total is exact.
    Count {
        issued: AtomicU64,
        total: u64,
        stored: AtomicU64,
        errors: AtomicU64,
        abort: AtomicBool,
        progress: Option<Instant>,
    },
}

impl Budget {
    pub fn take(&self) -> bool {
        match self {
            Budget::Timed { end, .. } => Instant::now() < *end,
            Budget::Count {
                issued,
                total,
                abort,
                ..
            } => !abort.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < *total,
        }
    }

    pub fn give_back(&self) {
        if let Budget::Count {
            issued,
            total,
            errors,
            abort,
            ..
        } = self
        {
            issued.fetch_sub(1, Ordering::Relaxed);
            // A dead server must not turn a fixed-count run into an endless one.
            if errors.fetch_add(1, Ordering::Relaxed) + 1 > 1000 + total / 100 {
                abort.store(true, Ordering::Relaxed);
            }
        }
    }

    pub fn stored(&self) {
        if let Budget::Count {
            stored,
            progress: Some(started),
            ..
        } = self
        {
            let n = stored.fetch_add(1, Ordering::Relaxed) + 1;
            if n % PROGRESS_EVERY == 0 {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "memory   {n} stored, {secs:.1}s, {:.0} msg/s",
                    n as f64 / secs
                );
            }
        }
    }

    pub fn counts(&self, start: Instant) -> bool {
        match self {
            Budget::Timed { record_from, .. } => start >= *record_from,
            Budget::Count { .. } => true,
        }
    }
}

/// A 1 KiB JSON object with a fixed-width sequence field, so each request can
/// be made unique by overwriting digits in place rather than re-encoding.
pub fn inbound_body() -> (Vec<u8>, usize) {
    let pre = br#"{"type":"order","source":"waybill-load","seq":""#;
    let mid = br#"","pad":""#;
    let end = br#""}"#;
    let pad = BODY_SIZE - pre.len() - SEQ_DIGITS - mid.len() - end.len();
    let mut body = Vec::with_capacity(BODY_SIZE);
    body.extend_from_slice(pre);
    body.resize(body.len() + SEQ_DIGITS, b'0');
    body.extend_from_slice(mid);
    body.resize(body.len() + pad, b'x');
    body.extend_from_slice(end);
    debug_assert_eq!(body.len(), BODY_SIZE);
    (body, pre.len())
}

pub fn put_digits(dst: &mut [u8], mut v: u64) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

pub async fn run_inbound_timed(ctx: &Arc<Ctx>, conns: usize, duration: Duration) -> Tally {
    let record_from = Instant::now() + WARMUP;
    let budget = Budget::Timed {
        record_from,
        end: record_from + duration,
    };
    run_inbound(ctx, conns, budget).await
}

pub async fn run_inbound_count(
    ctx: &Arc<Ctx>,
    conns: usize,
    total: u64,
    progress: Option<Instant>,
) -> Tally {
    let budget = Budget::Count {
        issued: AtomicU64::new(0),
        total,
        stored: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        progress,
    };
    run_inbound(ctx, conns, budget).await
}

pub async fn run_inbound(ctx: &Arc<Ctx>, conns: usize, budget: Budget) -> Tally {
    let budget = Arc::new(budget);
    let mut set = JoinSet::new();
    for id in 0..conns {
        set.spawn(inbound_worker(ctx.clone(), id as u64, budget.clone()));
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

pub async fn inbound_worker(ctx: Arc<Ctx>, id: u64, budget: Arc<Budget>) -> Tally {
    let (body, seq_in_body) = inbound_body();
    let mut req = build_request(
        "POST",
        INBOUND_PATH,
        &ctx.target.host,
        &[
            ("X-Api-Key", &ctx.sender_key),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    let seq_at = req.len() - BODY_SIZE + seq_in_body;
    let mut t = Tally::with_capacity(16 * 1024);
    let mut conn: Option<Conn> = None;
    let mut n: u64 = 0;
    while budget.take() {
        n += 1;
        put_digits(
            &mut req[seq_at..seq_at + SEQ_DIGITS],
            id * 10_000_000_000 + n,
        );
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&ctx.target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    t.note_error(budget.counts(Instant::now()), || format!("connect: {e}"));
                    budget.give_back();
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let start = Instant::now();
        let res = timeout(REQUEST_TIMEOUT, c.request(&req)).await;
        let lat = micros(start.elapsed());
        let counted = budget.counts(start);
        match res {
            Ok(Ok(status)) => {
                if counted {
                    t.lat.push(lat);
                }
                if is_success(status) {
                    t.created += 1;
                    if counted {
                        t.ok += 1;
                    }
                    budget.stored();
                } else {
                    t.note_error(counted, || {
                        format!("inbound {status}: {}", snippet(&c.body))
                    });
                    budget.give_back();
                }
                if !c.keep_alive {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                t.note_error(counted, || format!("inbound: {e}"));
                budget.give_back();
                conn = None;
            }
            Err(_) => {
                t.note_error(counted, || "inbound: timed out".into());
                budget.give_back();
                conn = None;
            }
        }
    }
    t
}

/// What the inbound phase measured, for `--phase compare`.
#[derive(Default)]
pub struct InboundResult {
    pub line: String,
    pub rate: f64,
}

/// `--phase inbound`: intake at full speed on `--connections` for `--duration`.
/// Returns what it measured and how many messages it stored (warm-up included).
pub async fn phase(
    ctx: &Arc<Ctx>,
    opts: &Options,
    server: &mut Option<Server>,
) -> Result<(InboundResult, u64), String> {
    let label = ctx.target.label();
    let mark = report::mark();
    let t = run_inbound_timed(ctx, opts.connections, opts.duration).await;
    let created = t.created;
    let secs = opts.duration.as_secs_f64();
    let rate = t.ok as f64 / secs;
    let scenario = format!(
        "{}intake{}, 1 KiB, {} connections",
        if label.is_empty() { "" } else { "HTTPS " },
        if opts.validate {
            " with a JSON Schema"
        } else {
            ""
        },
        opts.connections
    );
    report::record(
        Row::new(scenario)
            .rate(rate, "msg/s")
            .latency(&t.lat)
            .messages(created)
            .note(format!("{} errors", t.err)),
        mark,
    );
    let line = format!(
        "{label}{} conns {:.1}s: {} ok, {} err, {:.0} req/s, {}",
        opts.connections,
        secs,
        t.ok,
        t.err,
        rate,
        latency_summary(
            t.lat,
            &[
                ("p50", 0.50),
                ("p90", 0.90),
                ("p99", 0.99),
                ("p99.9", 0.999)
            ],
            true
        )
    );
    println!("inbound  {line}");
    print_first_error(&t.first_err);
    check_alive(server, "inbound")?;
    Ok((InboundResult { line, rate }, created))
}
