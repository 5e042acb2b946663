//! One attempt of the delivery engine, from its preparation to its recorded outcome, and
//! the retry schedule, `Retry-After` clamp and health rules that decide what it leads to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::health::HealthBook;
use super::{lock, Done, Event, Ready, Shared};
use crate::outbound::Outcome;
use crate::store::records::{AttemptRec, DeliveryRec, EndpointHealthRec};
use crate::store::{due_at, now_ms, Finish, Next, Queued};
use crate::worker::push::{self, EndpointState, Prepared};
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

/// Attempts to one endpoint, run on a blocking thread that holds one of its slots:
/// preparing may read the store (the message and payload of a push that was not handed
/// over by intake, a webhook's job), and a sled read waits while the writer's transaction
/// is open; the call blocks too.
pub(super) struct Attempt {
    pub(super) state: AppState,
    pub(super) agent: ureq::Agent,
    pub(super) health: Arc<HealthBook>,
    pub(super) shared: Arc<Shared>,
    /// The endpoint's ready entries, to go on with.
    pub(super) ready: Ready,
    pub(super) events: mpsc::UnboundedSender<Event>,
}

impl Attempt {
    /// Makes the attempt of `q`, then those of the endpoint's next ready entries while
    /// [`Attempt::next`] allows; the slot is given back when it does not.
    pub(super) fn run(self, q: Queued, report: Report, mut slot: Slot) {
        let mut current = Some((q, report));
        while let Some((q, report)) = current.take() {
            // Debug level: at info, formatting the span's fields cost more than the
            // bookkeeping of a push. Errors name their delivery themselves.
            let d = &q.delivery;
            let span = tracing::debug_span!("delivery", id = %d.id, attempt = d.attempt + 1);
            let _entered = span.enter();
            current = self.once(q, report, &mut slot);
        }
    }

    /// The endpoint's next ready entry, counted as an attempt, if this thread may go on
    /// with it: no other endpoint waits for a slot, the cap on attempts under way is not
    /// reached, the endpoint takes calls and the engine is not stopping.
    fn next(&self, endpoint: &[u8]) -> Option<(Queued, Report)> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Acquire) || shared.contended.load(Ordering::Acquire) {
            return None;
        }
        if !shared.begin_attempt() {
            return None;
        }
        let dir = self.state.store.directory();
        let q = if push::endpoint_state(&self.state, &dir, endpoint) == EndpointState::Open {
            lock(&self.ready).pop_front()
        } else {
            None
        };
        let Some(q) = q else {
            shared.end_attempt();
            return None;
        };
        let report = Report {
            to: Some(self.events.clone()),
            id: q.delivery.id,
            endpoint: endpoint.to_vec(),
        };
        Some((q, report))
    }

    /// One attempt; returns the next one this thread makes, if any.
    fn once(&self, q: Queued, report: Report, slot: &mut Slot) -> Option<(Queued, Report)> {
        let endpoint = q.endpoint().to_vec();
        let id = q.delivery.id;
        let ran = push::prepare(&self.state, &q).map(|p| match p {
            Prepared::Call(call) => Ran::Called(call.send(&self.agent)),
            Prepared::Finish(next) => Ran::Finish(next),
        });
        let (attempt, next, health) = match ran {
            Err(e) => {
                tracing::error!(error = %e, delivery = %id, "cannot prepare a delivery");
                slot.release();
                return None;
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
        // Decided first, so an endpoint disabled by this outcome is not called again; the
        // next call need not wait for this outcome to be recorded.
        let then = self.next(&endpoint);
        if then.is_none() {
            slot.release();
        }
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
        then
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
