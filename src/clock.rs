//! The clock the retention pruner reads.
//!
//! It is the system clock plus an offset that is zero unless the process embedding the
//! server moves it forward ([`Clock::advance`]). Tests use that to make stored work "old"
//! without waiting for days, through the same code path the server always runs: the
//! pruner asks this clock for the time, whatever the offset.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Wall-clock time in unix milliseconds, as the pruner sees it. Cheap to clone; clones
/// share the offset.
#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    /// Woken when the clock moves, so the pruner looks again at once.
    moved: Arc<Notify>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        crate::store::now_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock forward by `ms` and wakes whoever waits in [`Clock::moved`].
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms.max(0), Ordering::Relaxed);
        // One waiter (the pruner); a stored permit wakes it even when it is mid-pass.
        self.moved.notify_one();
    }

    /// Completes the next time the clock is moved.
    pub async fn moved(&self) {
        self.moved.notified().await;
    }
}
