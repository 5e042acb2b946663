//! `--phase backup`: how fast an online backup copies a filled store, how long it holds
//! the writer, and what it costs intake meanwhile.
//!
//! The store is filled as in the retention phase (`--messages` acknowledged 1 KiB
//! messages over 30 days, through `Store::accept`), then opened again. Intake latency
//! (one message per call from 16 tasks, straight to the store) is taken for a few seconds
//! alone, then for as long as `Store::backup` (what `waybill backup` and
//! `GET /admin/api/backup` run) takes to write the whole store to a file beside it.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::retention::{fill, intake_while};
use crate::report::{self, Row};
use crate::stats::latency_summary;
use waybill::store::Store;

const ALONE: Duration = Duration::from_secs(8);

pub async fn run(messages: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().join("data");
    let open = || {
        Store::open(&path, 24)
            .map(Arc::new)
            .map_err(|e| format!("open: {e}"))
    };
    let store = open()?;
    fill(&store, messages).await?;
    store.close();
    drop(store);

    let store = open()?;
    let quantiles = [("p50", 0.5), ("p99", 0.99)];
    let alone = intake_while(&store, tokio::time::sleep(ALONE)).await;
    report::add(
        Row::new("backup: intake alone, straight to the store")
            .rate(alone.len() as f64 / ALONE.as_secs_f64(), "msg/s")
            .latency(&alone)
            .note(format!(
                "in this process, no HTTP; a store of {messages} messages"
            )),
    );
    println!(
        "backup: intake alone: {} messages in {}s, {}",
        alone.len(),
        ALONE.as_secs(),
        latency_summary(alone, &quantiles, true)
    );

    let file = dir.path().join("store.backup");
    let copier = {
        let (store, file) = (Arc::clone(&store), file.clone());
        tokio::task::spawn_blocking(move || {
            let out = std::fs::File::create(&file).map_err(|e| format!("create: {e}"))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let begun = Instant::now();
            let mut sink = |bytes: Vec<u8>| out.write_all(&bytes);
            let summary = store
                .backup(&mut sink)
                .map_err(|e| format!("backup: {e}"))?;
            out.flush().map_err(|e| format!("flush: {e}"))?;
            Ok::<_, String>((summary, begun.elapsed()))
        })
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let r = copier.await;
        let _ = done_tx.send(());
        r
    });
    let beside = intake_while(&store, async {
        let _ = done_rx.await;
    })
    .await;
    let (summary, took) = watcher
        .await
        .map_err(|e| format!("backup task: {e}"))?
        .map_err(|e| format!("backup task: {e}"))??;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let secs = took.as_secs_f64().max(0.001);
    println!(
        "backup: {:.1} MiB in {secs:.1}s ({:.1} MB/s); {} records, {} segments ({:.1} MiB); \
         the writer held {:.1} ms at the end; {} keys read again after the copy",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / 1e6 / secs,
        summary.puts,
        summary.segments,
        summary.segment_bytes as f64 / (1024.0 * 1024.0),
        summary.pause_micros as f64 / 1000.0,
        summary.reread_keys,
    );
    report::add(
        Row::new("backup: intake beside an online backup")
            .rate(beside.len() as f64 / secs, "msg/s")
            .latency(&beside)
            .note(format!(
                "the backup: {:.1} MiB at {:.1} MB/s, the writer held {:.1} ms",
                bytes as f64 / (1024.0 * 1024.0),
                bytes as f64 / 1e6 / secs,
                summary.pause_micros as f64 / 1000.0
            )),
    );
    println!(
        "backup: intake beside it: {} messages in {secs:.1}s, {}",
        beside.len(),
        latency_summary(beside, &quantiles, true)
    );
    store.close();
    Ok(())
}
