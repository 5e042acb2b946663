//! The bulk worker: works through the admin's bulk operations (`store::bulk`) one batch
//! at a time. A batch looks at no more than `BATCH_SCAN` messages and acts on at most
//! `BATCH_ACT` of them in one writer job, then stores the operation's progress, so the
//! writer is never held for long, the admin sees the counts move, and a restart goes on
//! from the last stored batch. Operations take turns, one batch each.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::bulk::{BulkAction, BulkBatch, BulkRec, BulkState};
use crate::store::{now_ms, StoreError};
use crate::AppState;

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let open = match state.store.bulk_unfinished() {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the bulk operations");
                Vec::new()
            }
        };
        let mut failed = false;
        for op in &open {
            if let Err(e) = step(&state, op.clone()).await {
                tracing::warn!(error = %e, op = %op.id, "a bulk batch failed; it is tried again");
                failed = true;
            }
        }
        if open.is_empty() || failed {
            let pause = if failed { 1 } else { 30 };
            tokio::select! {
                _ = state.store.bulk_created.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(pause)) => {}
                changed = stop.changed() => {
                    // A dropped sender also means the server is going away.
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One batch of `op`: counts, or acts on, the next matches, and stores where it got to.
#[tracing::instrument(skip_all, fields(op = %op.id, action = op.action.as_str()))]
async fn step(state: &AppState, mut op: BulkRec) -> Result<(), StoreError> {
    let store = Arc::clone(&state.store);
    let scanned = op.clone();
    let batch: Result<BulkBatch, StoreError> =
        tokio::task::spawn_blocking(move || store.bulk_scan(&scanned))
            .await
            .map_err(|_| StoreError::Closed)?;
    let batch = match batch {
        Ok(b) => b,
        Err(e @ (StoreError::Codec(_) | StoreError::Corrupt(_))) => {
            // A damaged record will not mend by trying again: stop here and say so.
            op.state = BulkState::Failed;
            op.error = Some(e.to_string());
            op.finished_at = Some(now_ms());
            op.updated_at = now_ms();
            return state.store.put_bulk(op).await;
        }
        Err(e) => return Err(e),
    };
    let now = now_ms();
    if op.state == BulkState::Counting {
        op.total += batch.counted;
        op.position = batch.position;
        if batch.exhausted {
            // Counted: the action goes through the same range again from the top.
            op.state = BulkState::Running;
            op.position = op.id;
        }
    } else {
        let env = op.query.env;
        let changed = match op.action {
            BulkAction::Cancel => {
                let ids = batch.matches.iter().map(|m| m.id).collect();
                state.store.cancel_many(env, ids, now).await?
            }
            BulkAction::Redeliver => {
                let mut targets = Vec::new();
                let mut messages = 0;
                for m in &batch.matches {
                    let before = targets.len();
                    targets.extend(
                        m.transmissions
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| t.status == crate::model::Status::Failed)
                            .map(|(i, _)| (m.id, i)),
                    );
                    messages += usize::from(targets.len() > before);
                }
                if !targets.is_empty() {
                    state.store.redeliver(env, targets, now).await?;
                }
                messages
            }
        };
        op.processed += batch.matches.len() as u64;
        op.changed += changed as u64;
        op.position = batch.position;
        if batch.exhausted {
            op.state = BulkState::Completed;
            op.finished_at = Some(now);
            // What was acted on is the final count (messages may have changed status
            // between counting and acting).
            op.total = op.processed;
            tracing::info!(
                processed = op.processed,
                changed = op.changed,
                "bulk operation completed"
            );
        }
    }
    op.updated_at = now;
    state.store.put_bulk(op).await
}
