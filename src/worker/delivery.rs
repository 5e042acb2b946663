//! The delivery engine: every outbound call Waybill makes goes through here. It reads each
//! endpoint's queue in the outbox, starts attempts with a cap per endpoint and one over all
//! of them, serves endpoints in turn so a slow one cannot starve the others, and records
//! every outcome with the retry schedule, `Retry-After`, parking and endpoint health that
//! all kinds of delivery share. What a kind carries and what its outcome does to its owner
//! live in the kind's module (`push` for transmissions and job webhooks, `subscriptions`
//! for event callbacks) and in the store's transitions.
//!
//! Which deliveries are under way is known here only, in memory: their outbox entries stay
//! at their due time until the outcome is written. A crash forgets the attempts, and the
//! entries are due again at the next start: retried, never lost, never leased out twice.
//! The engine takes only what it can start soon (a small buffer per endpoint), so nothing
//! waits in memory long enough to go stale.
//!
//! A thread whose call ended goes on with its endpoint's next ready entry, keeping the
//! endpoint's slot, unless other endpoints wait for a slot, the endpoint is held, or the
//! engine stops ([`Shared`]). Under steady traffic most attempts thus start without the
//! engine or a thread being woken.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::push::{self, EndpointState};
use crate::outbound;
use crate::store::{due_at, now_ms, Queued};
use crate::AppState;

mod attempt;
mod direct;
mod health;
#[cfg(test)]
use attempt::{failing_since_on, retry_due};
use attempt::{Attempt, Report, Slot};
use direct::Direct;
pub use direct::{DirectCalls, NotMade};
use health::HealthBook;

/// Parked entries released per store write when an endpoint is resumed.
const RELEASE_CHUNK: usize = 1000;
/// Attempts whose call ended and whose outcome waits for its group commit do not hold a
/// call slot; at most this many times `delivery.concurrency` attempts are under way.
const RECORDING_FACTOR: usize = 4;
/// How often the time of the last success is written while an endpoint stays healthy.
const SUCCESS_WRITE_MS: i64 = 60_000;

/// Runs until `stop` turns true, then lets the attempts under way finish (up to the
/// attempt timeout) and returns. Attempts cut off then are made again after a restart.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(mut intake) = state.store.outbox.take_receiver() else {
        tracing::error!("the delivery engine is already running");
        return;
    };
    let Some(mut direct) = state.direct_calls.take_receiver() else {
        tracing::error!("the delivery engine is already running");
        return;
    };
    let cfg = &state.config.delivery;
    let timeout = Duration::from_secs(cfg.timeout_seconds);
    let (events, mut heard) = mpsc::unbounded_channel();
    let mut engine = Engine {
        agent: outbound::agent(
            timeout,
            state.config.outbound_allow(),
            cfg.endpoint_concurrency,
        ),
        concurrency: cfg.concurrency,
        endpoint_cap: cfg.endpoint_concurrency,
        buffer: (cfg.endpoint_concurrency * 4).max(16),
        health: Arc::new(HealthBook::default()),
        endpoints: HashMap::new(),
        turns: VecDeque::new(),
        owned: HashSet::new(),
        poisoned: HashSet::new(),
        running: 0,
        shared: Arc::new(Shared {
            attempts: AtomicUsize::new(0),
            contended: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            max_attempts: cfg.concurrency * RECORDING_FACTOR,
        }),
        tasks: JoinSet::new(),
        task_of: HashMap::new(),
        events,
        rescan: true,
        state: state.clone(),
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let now = due_at(now_ms());
        if std::mem::take(&mut engine.rescan) {
            engine.rescan_endpoints();
        }
        engine.release_parked(now).await;
        engine.refill(now);
        engine.dispatch();
        let wake = engine.next_wake(now);
        tokio::select! {
            biased;
            changed = stop.changed() => {
                // The server is gone without saying so: stop as well.
                if changed.is_err() {
                    break;
                }
            }
            Some(done) = engine.tasks.join_next_with_id(), if !engine.tasks.is_empty() => {
                engine.completed(done);
            }
            Some(event) = heard.recv() => engine.heard(event),
            Some(q) = intake.recv() => engine.offer(q),
            Some(d) = direct.recv() => engine.direct(d),
            _ = state.store.outbox.rescan_asked() => engine.rescan = true,
            _ = tokio::time::sleep(wake) => {}
        }
        // Take in everything else that is already waiting, so one pass serves it all.
        while let Some(done) = engine.tasks.try_join_next_with_id() {
            engine.completed(done);
        }
        while let Ok(event) = heard.try_recv() {
            engine.heard(event);
        }
        while let Ok(q) = intake.try_recv() {
            engine.offer(q);
        }
        while let Ok(d) = direct.try_recv() {
            engine.direct(d);
        }
    }
    // Let the calls under way end (each is bounded by the attempt timeout) and record them.
    engine.shared.stopping.store(true, Ordering::Release);
    let grace = timeout + Duration::from_secs(2);
    let drained = tokio::time::timeout(grace, async {
        while engine.shared.attempts() > 0 || !engine.tasks.is_empty() {
            tokio::select! {
                Some(done) = engine.tasks.join_next_with_id(), if !engine.tasks.is_empty() => {
                    engine.completed(done);
                }
                Some(event) = heard.recv() => engine.heard(event),
                else => break,
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = engine.shared.attempts() + engine.tasks.len(),
            "attempts still under way at shutdown are made again after a restart"
        );
        engine.tasks.shutdown().await;
    }
}

/// What the engine hears from the attempts it started.
enum Event {
    /// A call ended: the endpoint's slot is free.
    CallEnded(Vec<u8>),
    /// An attempt is over, recorded or not.
    Done(Done),
    /// A direct call is over: its outcome was handed to its caller, or it was cut short.
    DirectEnded,
}

/// Tells the engine that a direct call is over when dropped, so shutdown waits for the
/// direct calls under way like for any attempt.
struct DirectEnded(mpsc::UnboundedSender<Event>);

impl Drop for DirectEnded {
    fn drop(&mut self) {
        let _ = self.0.send(Event::DirectEnded);
    }
}

/// What the engine and the threads running its attempts share.
struct Shared {
    /// Attempts started and not reported done: calling, or waiting for their outcome's
    /// group commit.
    attempts: AtomicUsize,
    /// Other endpoints wait for a slot: a thread whose call ended gives its slot back
    /// rather than going on with its endpoint's next entry.
    contended: AtomicBool,
    /// The engine stops: no attempt starts any more.
    stopping: AtomicBool,
    /// Most attempts under way at once.
    max_attempts: usize,
}

impl Shared {
    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::Acquire)
    }

    /// Counts one attempt more, unless that passes the cap.
    fn begin_attempt(&self) -> bool {
        let counted = self.attempts.fetch_add(1, Ordering::AcqRel) < self.max_attempts;
        if !counted {
            self.end_attempt();
        }
        counted
    }

    fn end_attempt(&self) {
        let _ = self
            .attempts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// An endpoint's entries taken from the outbox, waiting for a slot or for a thread of
/// the endpoint whose call ended.
type Ready = Arc<Mutex<VecDeque<Queued>>>;

fn lock(ready: &Ready) -> MutexGuard<'_, VecDeque<Queued>> {
    ready
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One endpoint's state in the engine.
#[derive(Default)]
struct Endpoint {
    /// Entries taken from the outbox, waiting for a free slot.
    ready: Ready,
    /// Calls whose caller waits, served before `ready` (see [`DirectCalls`]).
    direct: VecDeque<Direct>,
    /// Calls to it under way.
    calling: usize,
    /// The earliest due time of its entries not taken yet (`None`: none known).
    next_due: Option<u64>,
    /// Some of its entries are parked.
    parked: bool,
    /// Whether it is in `turns`.
    has_turn: bool,
}

/// What a finished attempt (or parking task) reports.
enum Done {
    Attempt {
        id: Uuid,
        endpoint: Vec<u8>,
        retry_at: Option<u64>,
        recorded: bool,
    },
    Parked {
        ids: Vec<Uuid>,
        endpoint: Vec<u8>,
        recorded: bool,
    },
}

struct Engine {
    state: AppState,
    agent: ureq::Agent,
    concurrency: usize,
    endpoint_cap: usize,
    /// Entries taken per endpoint ahead of a free slot.
    buffer: usize,
    health: Arc<HealthBook>,
    endpoints: HashMap<Vec<u8>, Endpoint>,
    /// Endpoints with ready entries, in the order they get their next turn.
    turns: VecDeque<Vec<u8>>,
    /// Deliveries taken from the outbox and not yet recorded.
    owned: HashSet<Uuid>,
    /// Deliveries whose outcome could not be recorded: not tried again until a restart, so
    /// one unreadable record cannot spin the engine.
    poisoned: HashSet<Uuid>,
    /// Slots taken: threads calling (their slot not given back yet).
    running: usize,
    shared: Arc<Shared>,
    /// Tasks parking held deliveries.
    tasks: JoinSet<Done>,
    /// What each task was doing, for one that panics.
    task_of: HashMap<tokio::task::Id, (Vec<Uuid>, Vec<u8>)>,
    /// Where attempts report (see [`Event`]).
    events: mpsc::UnboundedSender<Event>,
    rescan: bool,
}

impl Engine {
    fn endpoint(&mut self, key: &[u8]) -> &mut Endpoint {
        self.endpoints.entry(key.to_vec()).or_default()
    }

    fn give_turn(&mut self, key: &[u8]) {
        let ep = self.endpoint(key);
        if !ep.has_turn && (!ep.direct.is_empty() || !lock(&ep.ready).is_empty()) {
            ep.has_turn = true;
            self.turns.push_back(key.to_vec());
        }
    }

    /// Reads which endpoints have entries (at start, and when something was queued that
    /// the engine was not handed directly).
    fn rescan_endpoints(&mut self) {
        let found = match self.state.store.outbox_endpoints() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        for e in found {
            let ep = self.endpoint(&e.endpoint);
            ep.parked = e.parked;
            if let Some(due) = e.first_due {
                ep.next_due = Some(ep.next_due.map_or(due, |d| d.min(due)));
            }
        }
    }

    /// A new entry handed over by intake.
    fn offer(&mut self, q: Queued) {
        let id = q.delivery.id;
        if self.owned.contains(&id) || self.poisoned.contains(&id) {
            self.state.store.outbox.forget(&q.key);
            return;
        }
        let key = q.endpoint().to_vec();
        let buffer = self.buffer;
        let ep = self.endpoint(&key);
        let mut ready = lock(&ep.ready);
        if ready.len() < buffer {
            ready.push_back(q);
            drop(ready);
            self.owned.insert(id);
            self.give_turn(&key);
        } else {
            drop(ready);
            // Read from the outbox when its turn comes, like any entry not handed over.
            ep.next_due = Some(ep.next_due.map_or(q.due, |d| d.min(q.due)));
            self.state.store.outbox.forget(&q.key);
        }
    }

    /// A call whose caller waits: it takes its endpoint's next free slot.
    fn direct(&mut self, d: Direct) {
        let key = d.endpoint.clone();
        self.endpoint(&key).direct.push_back(d);
        self.give_turn(&key);
    }

    /// Takes due entries from the outbox for endpoints that are running low.
    fn refill(&mut self, now: u64) {
        let wanted: Vec<Vec<u8>> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| {
                ep.next_due.is_some_and(|d| d <= now) && lock(&ep.ready).len() < self.endpoint_cap
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in wanted {
            let want = self
                .buffer
                .saturating_sub(self.endpoints.get(&key).map_or(0, |e| lock(&e.ready).len()));
            let (owned, poisoned) = (&self.owned, &self.poisoned);
            let skip = |id: &Uuid| owned.contains(id) || poisoned.contains(id);
            match self.state.store.outbox_due(&key, now, want, skip) {
                Ok((items, more)) => {
                    for q in &items {
                        self.owned.insert(q.delivery.id);
                    }
                    let ep = self.endpoint(&key);
                    lock(&ep.ready).extend(items);
                    ep.next_due = more;
                    self.give_turn(&key);
                }
                Err(e) => tracing::error!(error = %e, "cannot read an endpoint's queue"),
            }
        }
        // Forget endpoints with nothing left, so the map does not grow with every receiver.
        self.endpoints.retain(|_, ep| {
            !lock(&ep.ready).is_empty()
                || !ep.direct.is_empty()
                || ep.calling > 0
                || ep.next_due.is_some()
                || ep.parked
        });
    }

    /// Releases the parked entries of endpoints that take calls again.
    async fn release_parked(&mut self, now: u64) {
        // Runs on every pass of the loop: nothing to look up while nothing is parked.
        if !self.endpoints.values().any(|ep| ep.parked) {
            return;
        }
        let dir = self.state.store.directory();
        let open: Vec<Vec<u8>> = self
            .endpoints
            .iter()
            .filter(|(k, ep)| {
                ep.parked && push::endpoint_state(&self.state, &dir, k) == EndpointState::Open
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in open {
            let released = self
                .state
                .store
                .release_parked(&key, RELEASE_CHUNK, now as i64)
                .await;
            let ep = self.endpoint(&key);
            match released {
                Ok(n) => {
                    ep.parked = n == RELEASE_CHUNK;
                    if n > 0 {
                        ep.next_due = Some(now);
                        tracing::info!(released = n, "parked deliveries released");
                    }
                }
                Err(e) => {
                    ep.parked = false;
                    tracing::error!(error = %e, "cannot release parked deliveries");
                }
            }
        }
    }

    /// Starts attempts, one endpoint at a time in turn, while slots are free.
    fn dispatch(&mut self) {
        let dir = self.state.store.directory();
        let mut stalled = 0;
        let room = |e: &Engine| {
            e.running < e.concurrency && e.shared.attempts() + e.tasks.len() < e.shared.max_attempts
        };
        while room(self) && stalled < self.turns.len() {
            let Some(key) = self.turns.pop_front() else {
                break;
            };
            let Some(ep) = self.endpoints.get_mut(&key) else {
                continue;
            };
            ep.has_turn = false;
            // Direct calls the caller gave up on, or that missed their start, go unmade.
            let now = Instant::now();
            ep.direct.retain(|d| d.wanted(now));
            if ep.direct.is_empty() && lock(&ep.ready).is_empty() {
                continue;
            }
            if push::endpoint_state(&self.state, &dir, &key) == EndpointState::Held {
                let items: Vec<Queued> = lock(&ep.ready).drain(..).collect();
                if !items.is_empty() {
                    ep.parked = true;
                    self.park(key.clone(), items);
                }
                // A direct call is made whether its endpoint is held or not.
                let Some(ep) = self.endpoints.get_mut(&key) else {
                    continue;
                };
                if ep.direct.is_empty() {
                    continue;
                }
            }
            let Some(ep) = self.endpoints.get_mut(&key) else {
                continue;
            };
            if ep.calling >= self.endpoint_cap {
                // Full: it keeps its place in the rotation for when a call ends.
                ep.has_turn = true;
                self.turns.push_back(key);
                stalled += 1;
                continue;
            }
            if let Some(d) = ep.direct.pop_front() {
                ep.calling += 1;
                self.running += 1;
                stalled = 0;
                self.start_direct(key.clone(), d);
                self.give_turn(&key);
                continue;
            }
            let Some(q) = lock(&ep.ready).pop_front() else {
                continue;
            };
            let ready = Arc::clone(&ep.ready);
            ep.calling += 1;
            self.running += 1;
            stalled = 0;
            self.start(key.clone(), q, ready);
            self.give_turn(&key);
        }
        // Endpoints left waiting with slots all taken: threads give theirs back.
        let waiting = !self.turns.is_empty() && !room(self);
        self.shared.contended.store(waiting, Ordering::Release);
    }

    /// Starts an attempt on a blocking thread of the runtime, which prepares it, makes the
    /// call, decides what the outcome means and queues its record, then is free: the
    /// writer thread reports the attempt done once the record is durable. No async task
    /// is woken on the way, which saves a few thread switches per push.
    fn start(&mut self, endpoint: Vec<u8>, q: Queued, ready: Ready) {
        let report = Report {
            to: Some(self.events.clone()),
            id: q.delivery.id,
            endpoint: endpoint.clone(),
        };
        let attempt = Attempt {
            state: self.state.clone(),
            agent: self.agent.clone(),
            health: Arc::clone(&self.health),
            shared: Arc::clone(&self.shared),
            ready,
            events: self.events.clone(),
        };
        let slot = Slot(Some((self.events.clone(), endpoint)));
        self.shared.attempts.fetch_add(1, Ordering::AcqRel);
        // Not awaited: each attempt's `Report` tells the engine when it is over, even if
        // the closure panics or is dropped unrun at shutdown.
        drop(tokio::task::spawn_blocking(move || {
            attempt.run(q, report, slot)
        }));
    }

    /// Makes a direct call on a blocking thread and hands its outcome to the caller. It
    /// holds a slot and counts as an attempt under way like any other; nothing is recorded.
    fn start_direct(&mut self, endpoint: Vec<u8>, d: Direct) {
        let slot = Slot(Some((self.events.clone(), endpoint)));
        self.shared.attempts.fetch_add(1, Ordering::AcqRel);
        let ended = DirectEnded(self.events.clone());
        let agent = self.agent.clone();
        let metrics = Arc::clone(&self.state.metrics);
        let Direct {
            kind,
            call,
            reply,
            counted,
            ..
        } = d;
        drop(tokio::task::spawn_blocking(move || {
            let _held = (slot, counted, ended);
            let outcome = call.send(&agent);
            let result = if outcome.succeeded() {
                "delivered"
            } else {
                "failed"
            };
            metrics.delivery(kind, result, Duration::from_millis(outcome.latency_ms));
            let _ = reply.send(outcome);
        }));
    }

    fn park(&mut self, endpoint: Vec<u8>, items: Vec<Queued>) {
        let ids: Vec<Uuid> = items.iter().map(|q| q.delivery.id).collect();
        let state = self.state.clone();
        let (task_ids, task_endpoint) = (ids.clone(), endpoint.clone());
        let handle = self.tasks.spawn(async move {
            let recorded = match state.store.park_deliveries(items, now_ms()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot park held deliveries");
                    false
                }
            };
            Done::Parked {
                ids,
                endpoint,
                recorded,
            }
        });
        self.task_of.insert(handle.id(), (task_ids, task_endpoint));
    }

    fn heard(&mut self, event: Event) {
        match event {
            Event::CallEnded(endpoint) => self.call_ended(&endpoint),
            Event::DirectEnded => self.shared.end_attempt(),
            Event::Done(done) => {
                self.shared.end_attempt();
                self.record(done);
            }
        }
    }

    /// A parking task ended.
    fn completed(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let done = match done {
            Ok((task, done)) => {
                self.task_of.remove(&task);
                done
            }
            Err(e) => {
                // A task panicked: its deliveries wait until a restart rather than spin.
                let Some((ids, endpoint)) = self.task_of.remove(&e.id()) else {
                    return;
                };
                tracing::error!(error = %e, "a delivery task failed");
                if e.is_panic() {
                    self.poisoned.extend(ids.iter().copied());
                }
                Done::Parked {
                    ids,
                    endpoint,
                    recorded: false,
                }
            }
        };
        self.record(done);
    }

    fn record(&mut self, done: Done) {
        match done {
            Done::Attempt {
                id,
                endpoint,
                retry_at,
                recorded,
            } => {
                self.owned.remove(&id);
                if !recorded {
                    self.poisoned.insert(id);
                }
                if let Some(due) = retry_at {
                    let ep = self.endpoint(&endpoint);
                    ep.next_due = Some(ep.next_due.map_or(due, |d| d.min(due)));
                }
            }
            Done::Parked {
                ids,
                endpoint,
                recorded,
            } => {
                for id in &ids {
                    self.owned.remove(id);
                }
                if !recorded {
                    // Try again on a later pass.
                    self.endpoint(&endpoint).next_due = Some(due_at(now_ms() + 1000));
                }
            }
        }
    }

    fn call_ended(&mut self, endpoint: &[u8]) {
        self.running = self.running.saturating_sub(1);
        if let Some(ep) = self.endpoints.get_mut(endpoint) {
            ep.calling = ep.calling.saturating_sub(1);
        }
    }

    /// How long to sleep before the next due entry, when nothing else wakes the engine.
    fn next_wake(&self, now: u64) -> Duration {
        let next = self
            .endpoints
            .values()
            .filter_map(|ep| ep.next_due)
            .filter(|d| *d > now)
            .min();
        let ms = next.map_or(60_000, |d| (d - now).min(60_000));
        Duration::from_millis(ms.max(1))
    }
}

#[cfg(test)]
mod tests;
