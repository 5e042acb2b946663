//! `--phase retention`: what pruning a month of traffic gives back, and what it costs
//! intake while it runs.
//!
//! The store is filled through the library's own intake (`Store::accept`, the call the
//! HTTP intake makes) with `--messages` messages of 1 KiB spread over the last 30 days,
//! each acknowledged. The store is then opened again (a new process would write to a
//! new payload segment) and pruned as the pruner does (`Store::prune_messages` in
//! writer jobs of 256, then `Store::sweep_segments`) with its clock 31 days ahead.
//! Intake latency (one 1 KiB message per call from 16 tasks, straight to the store, so
//! the writer and the disk are what is measured, not HTTP) is taken for a few seconds
//! without pruning, then while pruning. Last, `waybill compact`'s function rewrites the
//! sled files. The data directory is measured after each step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::report::{self, Row};
use crate::stats::{fmt_mib, latency_summary};
use waybill::model::Env;
use waybill::store::compact::{compact, payload_bytes, sled_bytes};
use waybill::store::retention::Retention;
use waybill::store::{NewMessage, Store};

const DAY_MS: i64 = 86_400_000;
const TASKS: usize = 64;
const INTAKE_TASKS: usize = 16;
const MEASURE: Duration = Duration::from_secs(8);

/// Prints the store's size on disk and returns it.
fn sizes(dir: &std::path::Path, what: &str) -> u64 {
    let (sled, payloads) = (sled_bytes(dir).unwrap_or(0), payload_bytes(dir));
    println!(
        "retention: {what}: sled {}, payload segments {}, together {}",
        fmt_mib(sled),
        fmt_mib(payloads),
        fmt_mib(sled + payloads)
    );
    sled + payloads
}

fn one(payload: &Bytes) -> Vec<NewMessage> {
    vec![NewMessage {
        doctype: "order".into(),
        version: Some("1".into()),
        external_reference: None,
        content_type: "application/json".into(),
        payload: payload.clone(),
        receivers: vec!["GLOBEX".into()],
        validation_errors: Vec::new(),
    }]
}

fn payload() -> Bytes {
    let mut p = br#"{"order":"PO-1","pad":""#.to_vec();
    p.resize(1022, b'x');
    p.extend_from_slice(br#""}"#);
    Bytes::from(p)
}

pub async fn fill(store: &Arc<Store>, messages: u64) -> Result<(), String> {
    let now = waybill::store::now_ms();
    let start = now - 30 * DAY_MS;
    let step = (30 * DAY_MS) as f64 / messages.max(1) as f64;
    let next = Arc::new(AtomicU64::new(0));
    let begun = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (store, next, payload) = (Arc::clone(store), Arc::clone(&next), payload());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= messages {
                    return Ok::<_, String>(());
                }
                let at = start + (n as f64 * step) as i64;
                let (_, stored) = store
                    .accept(Env::Live, "ACME", None, one(&payload), at)
                    .await
                    .map_err(|e| format!("intake: {e}"))?;
                let uuid = waybill::store::transmission_uuid(stored[0].id, 0);
                store
                    .acknowledge(Env::Live, "GLOBEX", uuid, true, None, at + 1000, None)
                    .await
                    .map_err(|e| format!("ack: {e}"))?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("fill task: {e}"))??;
    }
    println!(
        "retention: filled {messages} acknowledged messages over 30 days in {:.0}s",
        begun.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Intake latencies (µs) for `MEASURE`, from `INTAKE_TASKS` tasks.
async fn intake(store: &Arc<Store>) -> Vec<u32> {
    intake_while(store, tokio::time::sleep(MEASURE)).await
}

/// Intake latencies (µs) from `INTAKE_TASKS` tasks until `until` ends.
pub async fn intake_while(
    store: &Arc<Store>,
    until: impl std::future::Future<Output = ()>,
) -> Vec<u32> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..INTAKE_TASKS {
        let (store, stop, payload) = (Arc::clone(store), Arc::clone(&stop), payload());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let now = waybill::store::now_ms();
                if store
                    .accept(Env::Live, "ACME", None, one(&payload), now)
                    .await
                    .is_ok()
                {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            lat
        });
    }
    until.await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap_or_default());
    }
    all
}

pub async fn run(messages: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().to_owned();
    let open = || {
        Store::open(&path, 24)
            .map(Arc::new)
            .map_err(|e| format!("open: {e}"))
    };
    let store = open()?;
    fill(&store, messages).await?;
    store.close();
    drop(store);
    let filled = sizes(&path, "after a month of traffic");

    let store = open()?;
    let quantiles = [("p50", 0.5), ("p99", 0.99)];
    let quiet = intake(&store).await;
    let n_quiet = quiet.len();
    report::add(
        Row::new(format!(
            "retention: intake alone, {INTAKE_TASKS} tasks straight to the store"
        ))
        .rate(n_quiet as f64 / MEASURE.as_secs_f64(), "msg/s")
        .latency(&quiet)
        .note(format!(
            "in this process, no HTTP; a store of {messages} messages"
        )),
    );
    println!(
        "retention: intake without pruning: {n_quiet} messages in {}s, {}",
        MEASURE.as_secs(),
        latency_summary(quiet, &quantiles, true)
    );

    let retention = Retention {
        default_days: 30,
        partners: Default::default(),
    };
    let later = waybill::store::now_ms() + 31 * DAY_MS;
    let pruner = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let begun = Instant::now();
            let (mut cursor, mut pruned) = (None, 0);
            loop {
                let pass = store
                    .prune_messages(Env::Live, cursor, later, &retention, 4096)
                    .await
                    .map_err(|e| format!("prune: {e}"))?;
                pruned += pass.messages;
                cursor = pass.next;
                if cursor.is_none() {
                    break;
                }
                // The worker's pause between two store calls.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, String>((pruned, begun.elapsed()))
        })
    };
    let busy = intake(&store).await;
    let busy_rate = busy.len() as f64 / MEASURE.as_secs_f64();
    let busy_lat = busy.clone();
    println!(
        "retention: intake while pruning: {} messages in {}s, {}",
        busy.len(),
        MEASURE.as_secs(),
        latency_summary(busy, &quantiles, true)
    );
    let (pruned, took) = pruner.await.map_err(|e| format!("pruner task: {e}"))??;
    let pruned_rate = pruned as f64 / took.as_secs_f64().max(0.001);
    report::add(
        Row::new("retention: intake beside the pruner")
            .rate(busy_rate, "msg/s")
            .latency(&busy_lat)
            .note(format!(
                "the pruner removed {pruned} messages at {pruned_rate:.0}/s"
            )),
    );
    println!(
        "retention: pruned {pruned} messages in {:.1}s ({:.0}/s)",
        took.as_secs_f64(),
        pruned as f64 / took.as_secs_f64().max(0.001)
    );
    let s = Arc::clone(&store);
    let sweep = tokio::task::spawn_blocking(move || s.sweep_segments(waybill::store::now_ms()))
        .await
        .map_err(|e| format!("sweep task: {e}"))?
        .map_err(|e| format!("sweep: {e}"))?;
    println!(
        "retention: deleted {} payload segments ({})",
        sweep.deleted.len(),
        fmt_mib(sweep.freed_bytes)
    );
    store.close();
    drop(store);
    let pruned_size = sizes(&path, "after pruning");
    let done = compact(&path).map_err(|e| format!("compact: {e}"))?;
    println!(
        "retention: compact: sled {} -> {}",
        fmt_mib(done.before),
        fmt_mib(done.after)
    );
    let compacted = sizes(&path, "after waybill compact");
    report::add(
        Row::new("retention: a month of traffic pruned")
            .disk(compacted)
            .note(format!(
                "on disk {} filled, {} after pruning, {} after `waybill compact`",
                fmt_mib(filled),
                fmt_mib(pruned_size),
                fmt_mib(compacted)
            )),
    );
    Ok(())
}
