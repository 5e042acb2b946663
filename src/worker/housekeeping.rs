//! Housekeeping that keeps admin data bounded: once a minute it removes sessions past
//! their idle or absolute end, audit entries older than `retention.days`, and per-minute
//! rate counters older than an hour, and saves when API keys were last used. Each pass
//! removes at most a bounded number of entries per kind; a backlog goes in later passes.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::now_ms;
use crate::AppState;

const EVERY: Duration = Duration::from_secs(60);

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        pass(&state).await;
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            changed = stop.changed() => {
                // A dropped sender also means the server is going away.
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

async fn pass(state: &AppState) {
    let now = now_ms();
    let idle = crate::api::admin_auth::session_idle_ms(state);
    match state.store.prune_sessions(now, idle).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "pruned ended admin sessions"),
        Err(e) => tracing::error!(error = %e, "cannot prune admin sessions"),
    }
    let keep = state.config.retention.days as i64 * 86_400_000;
    // Retention is judged by the retention clock, as the pruner's is.
    match state.store.prune_audit(state.clock.now_ms() - keep).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "pruned audit entries past retention.days"),
        Err(e) => tracing::error!(error = %e, "cannot prune the audit log"),
    }
    if let Err(e) = state.store.prune_rates(now).await {
        tracing::error!(error = %e, "cannot prune the rate counters");
    }
    if let Err(e) = state.store.save_key_uses().await {
        tracing::error!(error = %e, "cannot save when keys were last used");
    }
}
