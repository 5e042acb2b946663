//! Counts kept up to date by the writer, so the admin stats read a few keys instead of
//! scanning a million records.
//!
//! The `counters` tree maps a fixed 8-byte key to an `i64` (big-endian):
//!
//! - `m ‖ env ‖ status`: messages in that environment and status. Intake adds its new
//!   messages, and [`super::tracking::MessagePut`] moves one from its old status to its new.
//! - `q ‖ queue`: entries in a queue tree ([`Queue`]), counted by [`super::writer::Tx`]
//!   itself: an insert of a new key adds one, a remove of an existing key takes one away.
//! - `r ‖ kind ‖ minute (u32 BE)`: messages taken in (`i`) and transmissions delivered
//!   (`d`) in one minute; the pruner drops minutes more than an hour old.
//!
//! A job only notes its deltas; the writer adds up a round's deltas and writes each
//! touched key once at the end of the round, inside the round's transaction. So a busy
//! intake round of a thousand messages costs two counter writes, not two thousand.
//!
//! Stores made by a build without counters get them counted once, at open.

use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::{Env, Status};

/// A counter's key.
pub type CounterKey = [u8; 8];

/// The queue trees whose sizes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Outbox entries due now or later.
    OutboxWaiting = 1,
    /// Outbox entries parked while their endpoint is held.
    OutboxHeld = 2,
    /// Transmissions waiting for their receiver's poll.
    PollPending = 3,
    /// Transmissions handed out under a lease, not yet acknowledged.
    PollLeased = 4,
    JobsQueued = 5,
    JobsRunning = 6,
    /// Ids waiting for their subscription's next batch.
    SubPending = 7,
}

/// What a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Messages taken in.
    Intake = b'i' as isize,
    /// Transmissions delivered (pushed with success, or fetched by a poll).
    Delivered = b'd' as isize,
}

fn status_byte(s: Status) -> u8 {
    Status::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// The key of messages in `env` and `status`.
pub fn message_key(env: Env, status: Status) -> CounterKey {
    [b'm', env.byte(), status_byte(status), 0, 0, 0, 0, 0]
}

fn queue_key(q: Queue) -> CounterKey {
    [b'q', q as u8, 0, 0, 0, 0, 0, 0]
}

/// The key of a rate in the minute holding `at` (unix ms).
pub fn rate_key(rate: Rate, at: i64) -> CounterKey {
    let minute = (at.max(0) / 60_000) as u32;
    let m = minute.to_be_bytes();
    [b'r', rate as u8, m[0], m[1], m[2], m[3], 0, 0]
}

/// The queue counter an insert or remove in `table` moves, if any.
pub(super) fn queue_of(table: Table, key: &[u8]) -> Option<CounterKey> {
    let q = match table {
        Table::Outbox => {
            // `endpoint ‖ 0xFF ‖ due ‖ delivery id`: parked entries are due `u64::MAX`.
            let due = key.len().checked_sub(24).and_then(|at| key.get(at..at + 8));
            if due == Some(&[0xFF; 8][..]) {
                Queue::OutboxHeld
            } else {
                Queue::OutboxWaiting
            }
        }
        Table::ReceiverPending => Queue::PollPending,
        Table::ReceiverLeased => Queue::PollLeased,
        Table::JobsQueued => Queue::JobsQueued,
        Table::JobsRunning => Queue::JobsRunning,
        Table::SubPending => Queue::SubPending,
        _ => return None,
    };
    Some(queue_key(q))
}

/// A round's deltas, added up as its jobs note them.
#[derive(Default)]
pub(super) struct Deltas(Vec<(CounterKey, i64)>);

impl Deltas {
    pub(super) fn add(&mut self, key: CounterKey, delta: i64) {
        // A round touches a handful of keys: a short list beats a map.
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, d)) => *d += delta,
            None => self.0.push((key, delta)),
        }
    }

    /// Writes each touched counter once; the last step of a round's transaction.
    pub(super) fn write(self, t: &Tx<'_>) -> Result<(), StoreError> {
        for (key, delta) in self.0 {
            if delta == 0 {
                continue;
            }
            let now = t.get(Table::Counters, key)?.map_or(0, |v| read_i64(&v));
            t.insert(Table::Counters, key, (now + delta).to_be_bytes().to_vec())?;
        }
        Ok(())
    }
}

fn read_i64(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

/// Messages by environment and status.
#[derive(Debug, Clone, Default)]
pub struct MessageCounts {
    /// `[env][status]`, statuses in the order of [`Status::ALL`].
    pub by_env: [[u64; 7]; 2],
}

/// What the stats show, read from the counters.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub messages: MessageCounts,
    pub outbox_waiting: u64,
    pub outbox_held: u64,
    pub poll_pending: u64,
    pub poll_leased: u64,
    pub jobs_queued: u64,
    pub jobs_running: u64,
    /// Ids waiting for their subscription's next batch.
    pub sub_pending: u64,
    /// Per minute of the last hour, oldest first: (minute start in unix ms, intake,
    /// delivered).
    pub per_minute: Vec<(i64, u64, u64)>,
}

impl Store {
    fn counter(&self, key: CounterKey) -> Result<u64, StoreError> {
        Ok(self.t.counters.get(key)?.map_or(0, |v| read_i64(&v)).max(0) as u64)
    }

    /// The kept counts, and the rates of the 60 minutes up to `now`. Reads about 80 keys.
    pub fn counts(&self, now: i64) -> Result<Counts, StoreError> {
        let mut c = Counts::default();
        for env in [Env::Live, Env::Test] {
            for (i, s) in Status::ALL.iter().enumerate() {
                c.messages.by_env[usize::from(env.byte())][i] =
                    self.counter(message_key(env, *s))?;
            }
        }
        c.outbox_waiting = self.counter(queue_key(Queue::OutboxWaiting))?;
        c.outbox_held = self.counter(queue_key(Queue::OutboxHeld))?;
        c.poll_pending = self.counter(queue_key(Queue::PollPending))?;
        c.poll_leased = self.counter(queue_key(Queue::PollLeased))?;
        c.jobs_queued = self.counter(queue_key(Queue::JobsQueued))?;
        c.jobs_running = self.counter(queue_key(Queue::JobsRunning))?;
        c.sub_pending = self.counter(queue_key(Queue::SubPending))?;
        let last = now.max(0) / 60_000;
        let first = last - 59;
        let minutes = |rate: Rate| -> Result<Vec<u64>, StoreError> {
            let mut out = vec![0u64; 60];
            let range = rate_key(rate, first * 60_000)..=rate_key(rate, last * 60_000);
            for item in self.t.counters.range(range) {
                let (k, v) = item?;
                let minute = i64::from(u32::from_be_bytes([k[2], k[3], k[4], k[5]]));
                if let Some(slot) = usize::try_from(minute - first)
                    .ok()
                    .and_then(|i| out.get_mut(i))
                {
                    *slot = read_i64(&v).max(0) as u64;
                }
            }
            Ok(out)
        };
        let intake = minutes(Rate::Intake)?;
        let delivered = minutes(Rate::Delivered)?;
        c.per_minute = (0..60)
            .map(|i| ((first + i as i64) * 60_000, intake[i], delivered[i]))
            .collect();
        Ok(c)
    }

    /// Removes rate counters older than an hour before `now`; returns how many.
    pub async fn prune_rates(&self, now: i64) -> Result<usize, StoreError> {
        let cut = now - 3_600_000 - 60_000;
        let mut old = Vec::new();
        for rate in [Rate::Intake, Rate::Delivered] {
            let range = rate_key(rate, 0)..rate_key(rate, cut);
            for k in self.t.counters.range(range).keys().take(1000) {
                old.push(k?.to_vec());
            }
        }
        let n = old.len();
        if n > 0 {
            self.writer
                .write_waiting(move |t| {
                    for k in old {
                        t.remove(Table::Counters, k)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(n)
    }

    /// Counts messages and queues once for a store of a build that kept no counters.
    /// Runs when the store opens, before anything else writes; a marker in `meta` says
    /// the counters are complete from then on.
    pub(super) fn build_counters(&self) -> Result<bool, StoreError> {
        const MARKER: &[u8] = b"counters";
        if self.t.meta.contains_key(MARKER)? {
            return Ok(false);
        }
        let mut totals: Vec<(CounterKey, i64)> = Vec::new();
        let mut add = |key: CounterKey, n: i64| match totals.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v += n,
            None => totals.push((key, n)),
        };
        for env in [Env::Live, Env::Test] {
            for s in Status::ALL {
                add(message_key(env, s), 0);
            }
        }
        // The tracking index holds every message's status in its first value byte.
        for item in self.t.tracking.iter() {
            let (k, v) = item?;
            let env = k.first().copied().and_then(Env::from_byte);
            let status = v.first().and_then(|b| Status::ALL.get(usize::from(*b)));
            if let (Some(env), Some(status)) = (env, status) {
                add(message_key(env, *status), 1);
            }
        }
        for k in self.t.outbox.iter().keys() {
            if let Some(key) = queue_of(Table::Outbox, &k?) {
                add(key, 1);
            }
        }
        add(queue_key(Queue::OutboxWaiting), 0);
        add(queue_key(Queue::OutboxHeld), 0);
        for (tree, table) in [
            (&self.t.receiver_pending, Table::ReceiverPending),
            (&self.t.receiver_leased, Table::ReceiverLeased),
            (&self.t.jobs_queued, Table::JobsQueued),
            (&self.t.jobs_running, Table::JobsRunning),
            (&self.t.sub_pending, Table::SubPending),
        ] {
            if let Some(key) = queue_of(table, b"") {
                add(key, tree.len() as i64);
            }
        }
        self.writer.write_blocking(move |t| {
            for (key, n) in totals {
                t.insert(Table::Counters, key, n.to_be_bytes().to_vec())?;
            }
            t.insert(Table::Meta, MARKER, vec![1])
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(r: &str) -> crate::store::NewMessage {
        crate::store::NewMessage {
            doctype: "order".into(),
            version: None,
            external_reference: Some(r.into()),
            content_type: "application/json".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            receivers: vec!["GLOBEX".into()],
            validation_errors: Vec::new(),
        }
    }

    fn count(c: &Counts, env: Env, s: Status) -> u64 {
        c.messages.by_env[usize::from(env.byte())][usize::from(status_byte(s))]
    }

    #[tokio::test]
    async fn counts_follow_intake_and_changes_and_are_rebuilt_for_older_stores() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let now = super::super::now_ms();
        let (_, live) = store
            .accept(Env::Live, "ACME", None, vec![new("a"), new("b")], now)
            .await
            .unwrap();
        store
            .accept(Env::Test, "ACME", None, vec![new("c")], now)
            .await
            .unwrap();
        let c = store.counts(now).unwrap();
        assert_eq!(count(&c, Env::Live, Status::Queued), 2);
        assert_eq!(count(&c, Env::Test, Status::Queued), 1);
        assert_eq!(c.poll_pending, 3, "no push URL: all wait for a poll");
        assert_eq!(c.per_minute.last().map(|m| m.1), Some(3));

        store
            .cancel(Env::Live, live[0].id, None, now, None)
            .await
            .unwrap();
        let c = store.counts(now).unwrap();
        assert_eq!(count(&c, Env::Live, Status::Queued), 1);
        assert_eq!(count(&c, Env::Live, Status::Cancelled), 1);
        assert_eq!(c.poll_pending, 2, "the cancelled one left its queue");

        // As a build without counters left it: nothing counted, no marker.
        store.t.counters.clear().unwrap();
        store.t.meta.remove(b"counters").unwrap();
        store.close();
        drop(store);
        let store = Store::open(dir.path(), 8).unwrap();
        let c = store.counts(now).unwrap();
        assert_eq!(count(&c, Env::Live, Status::Queued), 1);
        assert_eq!(count(&c, Env::Live, Status::Cancelled), 1);
        assert_eq!(count(&c, Env::Test, Status::Queued), 1);
        assert_eq!(c.poll_pending, 2);
        assert!(!store.build_counters().unwrap(), "counted once");
        store.close();
    }

    #[test]
    fn outbox_keys_count_as_held_only_when_parked() {
        let id = uuid::Uuid::now_v7();
        let held = super::super::deliveries::outbox_key(b"p\0ACME", u64::MAX, id);
        let due = super::super::deliveries::outbox_key(b"p\0ACME", 12345, id);
        assert_eq!(
            queue_of(Table::Outbox, &held),
            Some(queue_key(Queue::OutboxHeld))
        );
        assert_eq!(
            queue_of(Table::Outbox, &due),
            Some(queue_key(Queue::OutboxWaiting))
        );
        assert_eq!(queue_of(Table::Messages, &due), None);
    }
}
