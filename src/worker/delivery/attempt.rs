//! One attempt of the delivery engine, from its preparation to its recorded outcome, and
//! the retry schedule, `Retry-After` clamp and health rules that decide what it leads to.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::health::HealthBook;
use super::{Done, Event};
use crate::outbound::Outcome;
use crate::store::records::{AttemptRec, DeliveryRec, EndpointHealthRec};
use crate::store::{due_at, now_ms, Finish, Next, Queued};
use crate::worker::push::{self, Prepared};
use crate::AppState;

/// Tells the engine that a call ended when dropped: exactly once per attempt, even if the
/// attempt is cut short.
pub(super) struct Slot(pub(super) Option<(mpsc::UnboundedSender<Event>, Vec<u8>)>);

impl Slot {
    fn release(&mut self) {
        if let Some((tx, endpoint)) = self.0.take() {
            let _ = tx.send(Event::CallEnded(endpoint));
        }
    }
}

/// Tells the engine that an attempt is over: exactly once, as recorded through
/// [`Report::recorded`], or as not recorded when dropped without it (an error, a round
/// that failed, a panic, a closure dropped unrun).
pub(super) struct Report {
    pub(super) to: Option<mpsc::UnboundedSender<Event>>,
    pub(super) id: Uuid,
    pub(super) endpoint: Vec<u8>,
}

impl Report {
    fn send(&mut self, retry_at: Option<u64>, recorded: bool) {
        if let Some(tx) = self.to.take() {
            let _ = tx.send(Event::Done(Done::Attempt {
                id: self.id,
                endpoint: std::mem::take(&mut self.endpoint),
                retry_at,
                recorded,
            }));
        }
    }

    fn recorded(mut self, retry_at: Option<u64>) {
        self.send(retry_at, true);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.send(None, false);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// What an attempt's blocking part did.
enum Ran {
    /// The call was made.
    Called(Outcome),
    /// No call was due: record this.
    Finish(Next),
}

/// One attempt, run on a blocking thread: preparing may read the store (the message and
/// payload of a push that was not handed over by intake, a webhook's job), and a sled
/// read waits while the writer's transaction is open; the call blocks too.
pub(super) struct Attempt {
    pub(super) state: AppState,
    pub(super) agent: ureq::Agent,
    pub(super) health: Arc<HealthBook>,
    pub(super) report: Report,
}

impl Attempt {
    pub(super) fn run(self, q: Queued, mut slot: Slot) {
        let endpoint = q.endpoint().to_vec();
        let id = q.delivery.id;
        let ran = push::prepare(&self.state, &q).map(|p| match p {
            Prepared::Call(call) => Ran::Called(call.send(&self.agent)),
            Prepared::Finish(next) => Ran::Finish(next),
        });
        // The endpoint's next call need not wait for this one's outcome to be recorded.
        slot.release();
        let (attempt, next, health) = match ran {
            Err(e) => {
                tracing::error!(error = %e, delivery = %id, "cannot prepare a delivery");
                return;
            }
            Ok(Ran::Finish(next)) => (None, next, None),
            Ok(Ran::Called(outcome)) => {
                self.state.metrics.delivery(
                    q.delivery.target.kind(),
                    if outcome.succeeded() {
                        "delivered"
                    } else {
                        "failed"
                    },
                    Duration::from_millis(outcome.latency_ms),
                );
                let (next, health) = self.decide(&endpoint, &q.delivery, &outcome);
                (Some(attempt_record(outcome)), next, health)
            }
        };
        let retry_at = match next {
            Next::RetryAt(due) => Some(due),
            _ => None,
        };
        let finish = Finish {
            queued: q,
            attempt,
            next,
            health,
            now: now_ms(),
        };
        let report = self.report;
        let queued = self
            .state
            .store
            .finish_delivery_then(finish, move |r| match r {
                Ok(()) => report.recorded(retry_at),
                Err(e) => {
                    tracing::error!(error = %e, delivery = %id, "cannot record a delivery attempt");
                }
            });
        if let Err(e) = queued {
            tracing::error!(error = %e, delivery = %id, "cannot record a delivery attempt");
        }
    }

    /// What an attempt's outcome means for the delivery, and the endpoint's health to store.
    fn decide(
        &self,
        endpoint: &[u8],
        d: &DeliveryRec,
        outcome: &Outcome,
    ) -> (Next, Option<EndpointHealthRec>) {
        let cfg = &self.state.config.delivery;
        let store = &self.state.store;
        let now = now_ms();
        if outcome.succeeded() {
            return (Next::Delivered, self.health.succeeded(store, endpoint, now));
        }
        let error = outcome
            .error
            .clone()
            .unwrap_or_else(|| match outcome.status {
                Some(s) => format!("HTTP {s}"),
                None => "no answer".into(),
            });
        let (health, failing_ms) = self.health.failed(store, endpoint, now, &error);
        let on = crate::worker::subscriptions::enabled_at(&self.state, endpoint);
        let failing_ms = failing_since_on(failing_ms, now, on);
        let limit_ms = cfg.disable_after_hours.saturating_mul(3_600_000);
        // The receiver says the endpoint is gone (410), or it has failed for too long: stop
        // calling it until an admin turns it back on; its deliveries are parked.
        let disable = if outcome.status == Some(410) {
            Some("the endpoint answered 410 Gone".to_owned())
        } else if failing_ms >= limit_ms {
            let hours = cfg.disable_after_hours;
            Some(format!("no successful call for {hours} hours"))
        } else {
            None
        };
        if let Some(reason) = disable {
            // Rare, and on a blocking thread of the runtime, where waiting is allowed.
            tokio::runtime::Handle::current().block_on(push::disable(
                &self.state,
                endpoint,
                reason,
            ));
            return (Next::Park, Some(health));
        }
        let next = match cfg.retry_schedule.get(d.tries as usize) {
            None => Next::Failed(match outcome.status {
                Some(s) if outcome.error.is_none() => format!("HTTP {s} after the last attempt"),
                _ => error,
            }),
            Some(&secs) => Next::RetryAt(retry_due(
                now,
                secs,
                outcome.retry_after_secs,
                cfg.max_retry_after_seconds,
                jitter(),
            )),
        };
        (next, Some(health))
    }
}

/// How long an endpoint counts as failing: since its first failure after the last success,
/// but for a subscription (`enabled_at`) never since before it was last turned on, so one
/// turned back on gets the whole `delivery.disable_after_hours` again.
pub(super) fn failing_since_on(failing_ms: u64, now: i64, enabled_at: Option<i64>) -> u64 {
    match enabled_at {
        Some(on) => failing_ms.min(now.saturating_sub(on).max(0) as u64),
        None => failing_ms,
    }
}

/// When the next attempt is due: the schedule's step (spread by `jitter`), or later if the
/// receiver asked for it with `Retry-After`, but never more than `max_asked_secs` for that.
/// Saturating throughout: no value a receiver sends can overflow it.
pub(super) fn retry_due(
    now: i64,
    step_secs: u64,
    asked_secs: Option<u64>,
    max_asked_secs: u64,
    jitter: f64,
) -> u64 {
    let planned = (step_secs as f64 * 1000.0 * jitter) as u64;
    let asked = asked_secs
        .unwrap_or(0)
        .min(max_asked_secs)
        .saturating_mul(1000);
    due_at(now).saturating_add(planned.max(asked))
}

fn attempt_record(o: Outcome) -> AttemptRec {
    AttemptRec {
        at: o.at,
        url: o.url,
        status: o.status,
        latency_ms: o.latency_ms,
        response: o.response,
        error: o.error,
    }
}

/// A factor in [0.8, 1.2): spreads retries so a recovering receiver is not hit by all of
/// them at once.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b)
        .map(|_| u16::from_le_bytes(b))
        .unwrap_or(32768);
    0.8 + 0.4 * f64::from(r) / 65536.0
}
