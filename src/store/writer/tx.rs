//! What a writer job sees: the round's transaction, and what the round does once it
//! commits (counter changes, subscription feeds, outbox offers, kept idempotency answers).

use std::cell::{Cell, RefCell};

use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::IVec;
use uuid::Uuid;

use super::super::counters::{self, CounterKey, Deltas};
use super::super::idempotency::KeptAnswer;
use super::super::subscriptions::SubIndex;
use super::super::{OutboxSignal, Queued, StoreError};
use super::{Table, TableKey};

/// One transactional view per tree, indexed by `Table as usize`.
type Views = [TransactionalTree];

/// What a job sees: reads and writes inside the round's transaction. There is
/// deliberately no way to reach a plain tree from here: a plain read or scan would wait
/// for the lock the transaction holds, on the same thread, forever.
pub struct Tx<'a> {
    pub(super) views: &'a Views,
    /// A storage error happened; the whole round's transaction is aborted.
    pub(super) poisoned: Cell<bool>,
    /// The counter changes of the round's jobs, written once at its end.
    pub(super) deltas: RefCell<Deltas>,
    pub(super) subs: &'a SubIndex,
    /// Subscriptions that got pending ids in this round; the flusher is told once it commits.
    pub(super) fed: RefCell<Vec<Uuid>>,
    /// Outbox entries of this round handed to the delivery engine once they are durable.
    pub(super) offers: RefCell<Vec<Queued>>,
    /// Answers under idempotency keys kept by this round's jobs, written as one batch
    /// at its end.
    pub(super) answers: RefCell<Vec<KeptAnswer>>,
    /// Told of every outbox entry a job removes (see [`OutboxSignal::still_queued`]).
    pub(super) outbox: &'a OutboxSignal,
    /// While a backup copies the trees: every key this round wrote or removed, handed to
    /// the [`Journal`] once the round is over.
    pub(super) touched: Option<RefCell<Vec<TableKey>>>,
}

impl Tx<'_> {
    fn tree(&self, table: Table) -> &TransactionalTree {
        // `Trees::all` lists every table in declaration order, so the index is in range.
        &self.views[table as usize]
    }

    fn check<T>(&self, r: Result<T, UnabortableTransactionError>) -> Result<T, StoreError> {
        r.map_err(|e| {
            self.poisoned.set(true);
            match e {
                UnabortableTransactionError::Storage(e) => StoreError::Sled(e),
                UnabortableTransactionError::Conflict => {
                    StoreError::Codec("transaction conflict".into())
                }
            }
        })
    }

    /// Notes a key changed in this round, while a backup needs to know.
    fn touch(&self, table: Table, key: &[u8]) {
        if let Some(t) = &self.touched {
            t.borrow_mut().push((table, key.into()));
        }
    }

    /// Reads a key, seeing the writes made earlier in this round.
    pub fn get(&self, table: Table, key: impl AsRef<[u8]>) -> Result<Option<IVec>, StoreError> {
        self.check(self.tree(table).get(key))
    }

    /// Writes a key. A new key in a queue tree counts one more entry in it.
    pub fn insert(
        &self,
        table: Table,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> Result<(), StoreError> {
        let key = key.as_ref();
        self.touch(table, key);
        let old = self.check(self.tree(table).insert(key, value))?;
        if old.is_none() {
            if let Some(counter) = counters::queue_of(table, key) {
                self.count(counter, 1);
            }
        }
        Ok(())
    }

    /// The in-memory index of subscriptions, which changes are fed by.
    pub(in crate::store) fn subscriptions(&self) -> &SubIndex {
        self.subs
    }

    /// Notes that subscription `sub` got a pending id in this round.
    pub(in crate::store) fn note_fed(&self, sub: Uuid) {
        let mut fed = self.fed.borrow_mut();
        if fed.last() != Some(&sub) {
            fed.push(sub);
        }
    }

    /// Notes that the outbox entry under `key`, which this job inserted, is handed to the
    /// delivery engine with its message (see [`OutboxSignal::still_queued`]).
    pub(in crate::store) fn handing(&self, key: &[u8]) {
        self.outbox.hand(key);
    }

    /// Hands `q`, an outbox entry this round wrote, to the delivery engine after the flush
    /// that makes it durable (nothing, should the round fail).
    pub(in crate::store) fn offer_after_commit(&self, q: Queued) {
        self.offers.borrow_mut().push(q);
    }

    /// Deletes a key. A key that was there in a queue tree counts one entry less.
    pub fn remove(&self, table: Table, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        let key = key.as_ref();
        self.touch(table, key);
        if table == Table::Outbox {
            self.outbox.forget(key);
        }
        let old = self.check(self.tree(table).remove(key))?;
        if old.is_some() {
            if let Some(counter) = counters::queue_of(table, key) {
                self.count(counter, -1);
            }
        }
        Ok(())
    }

    /// Keeps an answer under its idempotency key, to be written with the round.
    pub(in crate::store) fn keep_answer(&self, answer: KeptAnswer) {
        self.answers.borrow_mut().push(answer);
    }

    /// Adds `delta` to a counter when the round commits.
    pub fn count(&self, key: CounterKey, delta: i64) {
        self.deltas.borrow_mut().add(key, delta);
    }
}
