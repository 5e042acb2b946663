//! Calls whose caller waits for the outcome (a subscription's test call). They go through
//! the engine like every other call, so they count toward their endpoint's cap and the cap
//! over all endpoints, but the engine stores nothing for them: no outbox entry, no retry,
//! no health. The caller records what it wants of the outcome.
//!
//! At most twice the endpoint cap of them may be under way or waiting per endpoint; more
//! are refused at once, so a caller cannot pile up calls to one receiver. One that has not
//! started by its deadline is dropped unmade.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::outbound::{Call, Outcome};

/// Why a direct call was not made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotMade {
    /// As many calls to the endpoint as allowed are under way or waiting.
    #[error("too many calls to this endpoint are under way")]
    Busy,
    /// It did not start before its deadline, or the engine stopped.
    #[error("the call could not start in time")]
    NotStarted,
}

/// A call handed to the engine.
pub(super) struct Direct {
    pub(super) endpoint: Vec<u8>,
    /// What it counts as in the delivery metrics.
    pub(super) kind: &'static str,
    pub(super) call: Call,
    /// Dropped unmade if not started by then.
    pub(super) start_by: Instant,
    pub(super) reply: oneshot::Sender<Outcome>,
    /// Counts it toward its endpoint's limit until it is dropped: the call must hold it
    /// until its outcome is handed over.
    pub(super) counted: Counted,
}

impl Direct {
    /// Whether it should still be made.
    pub(super) fn wanted(&self, now: Instant) -> bool {
        now <= self.start_by && !self.reply.is_closed()
    }
}

type Counts = Arc<Mutex<HashMap<Vec<u8>, usize>>>;

fn lock(counts: &Counts) -> MutexGuard<'_, HashMap<Vec<u8>, usize>> {
    // Each operation on the map is one insert or update: a poisoned lock holds a whole map.
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One call counted toward its endpoint's limit until dropped.
pub(super) struct Counted {
    counts: Counts,
    endpoint: Vec<u8>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.endpoint) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.endpoint);
            }
        }
    }
}

/// Where callers hand direct calls to the engine (one per process, in `AppState`).
pub struct DirectCalls {
    tx: mpsc::UnboundedSender<Direct>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Direct>>>,
    counts: Counts,
    /// Calls under way or waiting per endpoint.
    per_endpoint: usize,
}

impl DirectCalls {
    /// Allows `per_endpoint` calls under way or waiting per endpoint.
    pub fn new(per_endpoint: usize) -> DirectCalls {
        let (tx, rx) = mpsc::unbounded_channel();
        DirectCalls {
            tx,
            rx: Mutex::new(Some(rx)),
            counts: Arc::default(),
            per_endpoint: per_endpoint.max(1),
        }
    }

    /// The engine's end; `None` once taken.
    pub(super) fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Direct>> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Makes `call` to `endpoint` through the engine and waits for its outcome; `kind`
    /// names it in the delivery metrics. It must start within `wait`; the call itself is
    /// bounded by the engine's attempt timeout.
    pub async fn call(
        &self,
        endpoint: Vec<u8>,
        kind: &'static str,
        call: Call,
        wait: Duration,
    ) -> Result<Outcome, NotMade> {
        let counted = {
            let mut counts = lock(&self.counts);
            let n = counts.entry(endpoint.clone()).or_insert(0);
            if *n >= self.per_endpoint {
                return Err(NotMade::Busy);
            }
            *n += 1;
            Counted {
                counts: Arc::clone(&self.counts),
                endpoint: endpoint.clone(),
            }
        };
        let (reply, outcome) = oneshot::channel();
        let direct = Direct {
            endpoint,
            kind,
            call,
            start_by: Instant::now() + wait,
            reply,
            counted,
        };
        self.tx.send(direct).map_err(|_| NotMade::NotStarted)?;
        outcome.await.map_err(|_| NotMade::NotStarted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            url: "http://127.0.0.1:9/".into(),
            headers: vec![],
            content_type: "application/json".into(),
            body: bytes::Bytes::from_static(b"{}"),
            webhook_id: "evt_test".into(),
            signing_secrets: vec![],
        }
    }

    #[tokio::test]
    async fn calls_past_the_endpoints_limit_are_refused_and_a_dropped_one_frees_its_place() {
        let calls = Arc::new(DirectCalls::new(2));
        let mut engine = calls.take_receiver().unwrap();
        assert!(calls.take_receiver().is_none());
        let wait = Duration::from_secs(5);
        let spawn = |endpoint: &[u8]| {
            let (calls, endpoint) = (Arc::clone(&calls), endpoint.to_vec());
            tokio::spawn(async move { calls.call(endpoint, "test", call(), wait).await })
        };
        let (a, b) = (spawn(b"e1"), spawn(b"e1"));
        let first = engine.recv().await.unwrap();
        let second = engine.recv().await.unwrap();
        assert!(first.wanted(Instant::now()));
        // The third to e1 is refused; another endpoint has its own limit.
        assert_eq!(spawn(b"e1").await.unwrap().unwrap_err(), NotMade::Busy);
        let other = spawn(b"e2");
        let third = engine.recv().await.unwrap();
        assert_eq!(third.endpoint, b"e2");
        drop(third);
        assert_eq!(other.await.unwrap().unwrap_err(), NotMade::NotStarted);
        // Dropping one unmade answers its caller and frees its place.
        drop(first);
        assert_eq!(a.await.unwrap().unwrap_err(), NotMade::NotStarted);
        let c = spawn(b"e1");
        let fourth = engine.recv().await.unwrap();
        assert!(!fourth.wanted(Instant::now() + Duration::from_secs(6)));
        drop((second, fourth));
        assert!(b.await.unwrap().is_err() && c.await.unwrap().is_err());
        assert!(lock(&calls.counts).is_empty());
    }
}
