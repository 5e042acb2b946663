//! The in-memory side of subscriptions: who watches what ([`Snapshot`]), which
//! subscriptions have ids waiting ([`SubIndex`]), and [`Tx::feed`], through which every
//! writer job hands a change to its watchers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use uuid::Uuid;

use super::{pending_key, EventKind, SubscriptionRec};
use crate::model::Env;
use crate::store::deliveries::due_at;
use crate::store::writer::{Table, Tx};
use crate::store::StoreError;

/// What the engine and the writer need to know of a subscription, in memory.
#[derive(Debug, Clone)]
pub struct Brief {
    pub env: Env,
    pub partner: String,
    pub events: Vec<EventKind>,
    pub active: bool,
    pub enabled_at: i64,
}

/// Every subscription, and the active ones by what they watch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Active subscriptions by (environment, event), then by owner.
    watch: HashMap<(Env, EventKind), HashMap<String, Vec<Uuid>>>,
    subs: HashMap<Uuid, Brief>,
}

impl Snapshot {
    pub(super) fn from_records(recs: impl IntoIterator<Item = SubscriptionRec>) -> Snapshot {
        let mut s = Snapshot::default();
        for r in recs {
            s.subs.insert(r.id, brief(&r));
        }
        s.rebuild_watch();
        s
    }

    fn rebuild_watch(&mut self) {
        self.watch.clear();
        let mut ids: Vec<(&Uuid, &Brief)> = self.subs.iter().filter(|(_, b)| b.active).collect();
        ids.sort_by_key(|(id, _)| **id);
        for (id, b) in ids {
            for e in &b.events {
                self.watch
                    .entry((b.env, *e))
                    .or_default()
                    .entry(b.partner.clone())
                    .or_default()
                    .push(*id);
            }
        }
    }

    /// The active subscriptions of `owner` in `env` that watch `event`.
    pub fn watchers(&self, env: Env, event: EventKind, owner: &str) -> &[Uuid] {
        self.watch
            .get(&(env, event))
            .and_then(|m| m.get(owner))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether any active subscription in `env` watches `event`.
    pub fn watched(&self, env: Env, event: EventKind) -> bool {
        self.watch.get(&(env, event)).is_some_and(|m| !m.is_empty())
    }

    pub fn get(&self, id: Uuid) -> Option<&Brief> {
        self.subs.get(&id)
    }

    /// The ids of `partner`'s subscriptions in `env`, oldest first.
    pub fn of_partner(&self, env: Env, partner: &str) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .subs
            .iter()
            .filter(|(_, b)| b.env == env && b.partner == partner)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Every subscription's environment and id, oldest first.
    pub fn all(&self) -> Vec<(Env, Uuid)> {
        let mut ids: Vec<(Env, Uuid)> = self.subs.iter().map(|(id, b)| (b.env, *id)).collect();
        ids.sort_by_key(|(_, id)| *id);
        ids
    }
}

fn brief(r: &SubscriptionRec) -> Brief {
    Brief {
        env: r.env,
        partner: r.partner.clone(),
        events: r.events.clone(),
        active: r.active,
        enabled_at: r.enabled_at,
    }
}

/// The in-memory side of subscriptions: the snapshot the writer feeds changes by, and which
/// subscriptions have ids waiting (and since when), so the flusher reads nothing else.
#[derive(Default)]
pub struct SubIndex {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Whether any subscription is active: while none is, a change costs one atomic load.
    any_active: AtomicBool,
    /// Subscriptions with pending ids, and when the first of them was committed.
    pending: Mutex<HashMap<Uuid, i64>>,
    /// Wakes the flusher when a subscription gets its first pending id.
    pub wake: tokio::sync::Notify,
}

impl SubIndex {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub(super) fn replace(&self, snap: Snapshot) {
        self.any_active
            .store(snap.subs.values().any(|b| b.active), Ordering::Relaxed);
        let snap = Arc::new(snap);
        match self.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(p) => *p.into_inner() = snap,
        }
    }

    /// Puts (or replaces) a subscription in the snapshot. Called only inside writer jobs.
    pub(super) fn upsert(&self, r: &SubscriptionRec) {
        let mut snap = (*self.snapshot()).clone();
        snap.subs.insert(r.id, brief(r));
        snap.rebuild_watch();
        self.replace(snap);
    }

    /// Takes a subscription out of the snapshot. Called only inside writer jobs.
    pub(super) fn remove(&self, id: Uuid) {
        let mut snap = (*self.snapshot()).clone();
        if snap.subs.remove(&id).is_some() {
            snap.rebuild_watch();
            self.replace(snap);
        }
    }

    /// Whether any subscription is active.
    pub fn any_active(&self) -> bool {
        self.any_active.load(Ordering::Relaxed)
    }

    /// Records that subscriptions have pending ids committed at `now` (called by the writer
    /// after the transaction that wrote them commits, so the flusher finds them in the tree).
    pub(in crate::store) fn mark_pending(&self, subs: &[Uuid], now: i64) {
        if subs.is_empty() {
            return;
        }
        let mut woke = false;
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for s in subs {
            map.entry(*s).or_insert_with(|| {
                woke = true;
                now
            });
        }
        drop(map);
        if woke {
            self.wake.notify_one();
        }
    }

    /// Marks a subscription's ids as waiting since `since` again (a flush that left some, or
    /// failed), waking the flusher.
    pub fn mark_again(&self, id: Uuid, since: i64) {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let at = map.entry(id).or_insert(since);
        *at = (*at).min(since);
        drop(map);
        self.wake.notify_one();
    }

    /// Takes out the subscriptions whose window (`window_ms` since their first pending id)
    /// has passed at `now`; also returns when the next one is due.
    pub fn take_due(&self, now: i64, window_ms: i64) -> (Vec<Uuid>, Option<i64>) {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        map.retain(|id, since| {
            let at = since.saturating_add(window_ms);
            if at <= now {
                due.push(*id);
                false
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
                true
            }
        });
        (due, next)
    }

    /// Subscriptions with ids waiting.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().map_or(0, |m| m.len())
    }
}

impl Tx<'_> {
    /// Feeds a change of object `id` to `owner`'s active subscriptions in `env` that watch
    /// `event`: one pending entry each, written in this job. Nothing to do (one atomic load)
    /// while no subscription is active.
    pub(in crate::store) fn feed(
        &self,
        env: Env,
        owner: &str,
        event: EventKind,
        id: Uuid,
        at: i64,
    ) -> Result<(), StoreError> {
        let index = self.subscriptions();
        if !index.any_active() {
            return Ok(());
        }
        let snap = index.snapshot();
        for sub in snap.watchers(env, event, owner) {
            self.insert(
                Table::SubPending,
                pending_key(*sub, event, id),
                due_at(at).to_be_bytes().to_vec(),
            )?;
            self.note_fed(*sub);
        }
        Ok(())
    }
}
