//! The retention pruner: a minute after start and then every `retention.every_minutes`
//! (or at once when the retention clock is moved), it removes finished messages past
//! their retention, finished background jobs, expired idempotent answers and the old
//! attempt logs of job webhooks and subscription calls, then
//! deletes the payload segment files nothing points into any more, and copies the few
//! live payloads out of mostly dead segments (`retention.compact_below`), so that the
//! next pass deletes those files too.
//!
//! Each environment's messages are read in key order (v7 ids: oldest first) from where the
//! last pass stopped, at most [`SCAN`] records per store call, each batch of removals an
//! ordinary writer job ([`crate::store::retention::BATCH`] messages), with a pause
//! between calls so that intake keeps its share of the writer and the disk.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::Env;
use crate::store::compact_segments::CompactionPlan;
use crate::store::retention::Retention;
use crate::store::StoreError;
use crate::AppState;

/// Records read by one store call.
const SCAN: usize = 4096;
/// Store calls per environment in one pass; a larger backlog goes in later passes.
const CALLS_PER_PASS: usize = 64;
/// Pause between two store calls.
const BREATHER: Duration = Duration::from_millis(20);
/// How often the scan of old call attempt rows starts over from the first row.
const CALLS_RESCAN_MS: i64 = 86_400_000;
/// Background jobs and idempotent answers removed per writer job.
const BACKGROUND_BATCH: usize = 1000;
/// The first pass waits this long after start, so a restart is not slowed by pruning.
const FIRST_PASS: Duration = Duration::from_secs(60);

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut cursors: [Option<Vec<u8>>; 2] = [None, None];
    // Where each environment's scan of old call attempt rows goes on; kept across passes,
    // since a row it passed over stays with its stored message. Started over once a day:
    // a retry of an old call (one parked behind a subscription turned off, or retried
    // after its first rows went) writes a row behind the cursor.
    let mut calls: [Option<Vec<u8>>; 2] = [None, None];
    let mut calls_from = state.clock.now_ms();
    let every = Duration::from_secs(state.config.retention.every_minutes.max(1) * 60);
    let mut wait = FIRST_PASS;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.clock.moved() => {}
            changed = stop.changed() => {
                // A dropped sender also means the server is going away.
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        let now = state.clock.now_ms();
        if now.saturating_sub(calls_from) >= CALLS_RESCAN_MS {
            calls = [None, None];
            calls_from = now;
        }
        pass(&state, &mut cursors, &mut calls).await;
        wait = every;
    }
}

fn retention_of(state: &AppState) -> Retention {
    let dir = state.store.directory();
    Retention {
        default_days: u32::try_from(state.config.retention.days).unwrap_or(u32::MAX),
        partners: dir
            .partners()
            .iter()
            .filter_map(|p| p.retention_days.map(|d| (p.code.clone(), d)))
            .collect(),
    }
}

async fn pass(
    state: &AppState,
    cursors: &mut [Option<Vec<u8>>; 2],
    calls: &mut [Option<Vec<u8>>; 2],
) {
    let now = state.clock.now_ms();
    let retention = retention_of(state);
    let (mut messages, mut rows) = (0, 0);
    for (env, cursor) in [Env::Live, Env::Test].into_iter().zip(cursors.iter_mut()) {
        for _ in 0..CALLS_PER_PASS {
            let (store, after, r) = (Arc::clone(&state.store), cursor.take(), retention.clone());
            // The scan reads sled: on an async worker it would wait for the writer's
            // open transaction and stall every request that worker serves.
            let found =
                tokio::task::spawn_blocking(move || store.scan_prunable(env, after, now, &r, SCAN))
                    .await
                    .map_err(|_| StoreError::Closed)
                    .and_then(|f| f);
            let removed = match found {
                Ok(f) => state.store.remove_prunable(env, now, &retention, f).await,
                Err(e) => Err(e),
            };
            match removed {
                Ok(p) => {
                    messages += p.messages;
                    rows += p.rows;
                    *cursor = p.next;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot prune messages");
                    break;
                }
            }
            if cursor.is_none() {
                break;
            }
            tokio::time::sleep(BREATHER).await;
        }
    }
    if messages > 0 {
        tracing::info!(messages, rows, "pruned finished messages past retention");
    }
    state.metrics.pruned("message", messages as u64);
    state.metrics.pruned("row", rows as u64);

    let keep = i64::from(retention.default_days) * 86_400_000;
    let mut background = 0;
    loop {
        // Each job is kept for its owner's retention. The scan reads sled: off the async
        // workers, like the message scan.
        let (store, r) = (Arc::clone(&state.store), retention.clone());
        let old = tokio::task::spawn_blocking(move || store.old_jobs(now, &r, BACKGROUND_BATCH))
            .await
            .map_err(|_| StoreError::Closed)
            .and_then(|f| f);
        let removed = match old {
            Ok(old) => {
                let full = old.len() >= BACKGROUND_BATCH;
                state
                    .store
                    .prune_background(now, old, BACKGROUND_BATCH)
                    .await
                    .map(|n| (n, full))
            }
            Err(e) => Err(e),
        };
        match removed {
            Ok((n, full)) => {
                background += n;
                if n < BACKGROUND_BATCH && !full {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prune old jobs");
                break;
            }
        }
        tokio::time::sleep(BREATHER).await;
    }
    if background > 0 {
        tracing::info!(
            removed = background,
            "pruned old jobs and idempotent answers"
        );
    }
    state.metrics.pruned("background", background as u64);
    prune_call_attempts(state, now - keep, calls).await;

    // The removals above were answered, so they are durable: a segment nothing points
    // into now stays that way. Segment ages are judged by the real clock.
    let store = Arc::clone(&state.store);
    let now = crate::store::now_ms();
    let below = state.config.retention.compact_below;
    let plan = match tokio::task::spawn_blocking(move || store.sweep_and_plan(now, below)).await {
        Ok(Ok(s)) => {
            if !s.deleted.is_empty() {
                tracing::info!(segments = ?s.deleted, bytes = s.freed_bytes, "deleted payload files nothing points into");
            }
            if s.pinned > 0 {
                tracing::info!(segments = s.pinned, "dead payload files kept while pinned");
            }
            state.metrics.reclaimed(s.freed_bytes);
            s.compactable
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot sweep payload segments");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "payload segment sweep failed");
            return;
        }
    };
    compact(state, plan).await;
}

/// Removes the attempt rows of job webhooks and subscription calls made before `before`,
/// which no message takes along when it goes.
async fn prune_call_attempts(state: &AppState, before: i64, cursors: &mut [Option<Vec<u8>>; 2]) {
    let mut rows = 0;
    for (env, cursor) in [Env::Live, Env::Test].into_iter().zip(cursors.iter_mut()) {
        for _ in 0..CALLS_PER_PASS {
            let (store, after) = (Arc::clone(&state.store), cursor.clone());
            let found = tokio::task::spawn_blocking(move || {
                store.scan_old_call_attempts(env, after, before, SCAN)
            })
            .await
            .map_err(|_| StoreError::Closed)
            .and_then(|f| f);
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "cannot scan old call attempts");
                    break;
                }
            };
            match state.store.remove_attempt_rows(found.keys).await {
                Ok(n) => rows += n,
                Err(e) => {
                    tracing::error!(error = %e, "cannot prune old call attempts");
                    break;
                }
            }
            // Only once its removals are written: a failed job is scanned again next pass.
            if found.last.is_some() {
                *cursor = found.last;
            }
            if found.done {
                break;
            }
            tokio::time::sleep(BREATHER).await;
        }
    }
    if rows > 0 {
        tracing::info!(
            rows,
            "pruned old attempt rows of webhooks and subscription calls"
        );
    }
    state.metrics.pruned("row", rows as u64);
}

/// Copies the live payloads of mostly dead segments forward; the next pass's sweep, which
/// starts after these writes were answered, deletes the files they leave unreferenced.
async fn compact(state: &AppState, plan: CompactionPlan) {
    if plan.segments.is_empty() {
        return;
    }
    let picked: Vec<u32> = plan.segments.iter().map(|c| c.segment).collect();
    match state.store.compact_segments(plan).await {
        Ok(c) => {
            tracing::info!(
                segments = ?picked,
                emptied = ?c.emptied,
                moved = c.moved,
                bytes = c.copied_bytes,
                changed = c.changed,
                damaged = c.corrupt,
                "copied live payloads out of mostly dead payload files"
            );
            state
                .metrics
                .compacted(c.emptied.len() as u64, c.copied_bytes);
        }
        Err(e) => {
            tracing::error!(error = %e, segments = ?picked, "cannot compact payload segments")
        }
    }
}
