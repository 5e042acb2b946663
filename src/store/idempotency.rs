//! Answers stored under idempotency keys.
//!
//! An answer is written in the same writer job as the change it answers, so after a
//! crash either both exist or neither does (see [`super::background`] for how a
//! background job's replay relies on this).
//!
//! Each answer is one record in `idempotency_hourly`, keyed by the hour it was made:
//! `hour (u32 BE) ‖ env ‖ partner ‖ 0xFF ‖ key`. An answer lives 24 hours, so a whole
//! hour's bucket can be dropped once its last answer has expired, with no second index
//! of expiry times: keyed intake costs one insert, not two. The price is on the rare
//! read: a key is looked up in each hour bucket that can still hold a live answer (26
//! point reads at most, newest first), and only when the in-memory filter of seen keys
//! says the key may be stored at all.
//!
//! Stores made by older builds kept the answer (`idempotency`) and an expiry index
//! (`idempotency_expiry`) apart; [`Store::migrate_legacy_idempotency`] moves them over at
//! open.

use serde::{Deserialize, Serialize};

use super::background::{JobEnding, StoredResponse};
use super::codec::{decode, encode, partner_prefix, Record};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::Env;

/// How long an answer is kept under its key.
pub const TTL_MS: i64 = 24 * 3600 * 1000;

/// The width of one bucket.
const HOUR_MS: i64 = 3600 * 1000;

/// Hours looked at past the current one, for a clock that stepped back a little.
const HOURS_AHEAD: u32 = 1;

/// The first answer given under an idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyRec {
    /// SHA-256 of method, path, query and body: what a repeat must match.
    pub fingerprint: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
    pub response: StoredResponse,
}

impl Record for IdempotencyRec {}

/// Where an answer under an idempotency key is stored.
#[derive(Debug, Clone)]
pub struct IdemSlot {
    /// `env ‖ partner ‖ 0xFF ‖ key`: the key without its hour.
    pub key: Vec<u8>,
    pub fingerprint: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
    /// Set for a background job's replay: the write that stores its answer ends the job.
    pub job: Option<JobEnding>,
}

/// The bucket of a time: hours since the epoch (times before it fall in bucket 0).
fn hour_of(at: i64) -> u32 {
    u32::try_from(at.max(0) / HOUR_MS).unwrap_or(u32::MAX)
}

/// The stored key of a slot key in the bucket of `hour`.
fn stored_key(hour: u32, slot: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + slot.len());
    k.extend_from_slice(&hour.to_be_bytes());
    k.extend_from_slice(slot);
    k
}

/// The first bucket that may hold an answer still alive at `now`; every earlier one
/// holds only expired answers.
fn first_live_hour(now: i64) -> u32 {
    hour_of(now.saturating_sub(TTL_MS))
}

impl IdemSlot {
    /// The slot of `key` for `partner` in `env`, for an answer made at `now`.
    pub fn new(env: Env, partner: &str, key: &str, fingerprint: [u8; 32], now: i64) -> IdemSlot {
        let mut k = partner_prefix(env, partner);
        k.extend_from_slice(key.as_bytes());
        IdemSlot {
            key: k,
            fingerprint,
            created_at: now,
            expires_at: now.saturating_add(TTL_MS),
            job: None,
        }
    }

    /// The record storing `response` here, encoded.
    pub fn encode(&self, response: StoredResponse) -> Result<Vec<u8>, StoreError> {
        encode(&IdempotencyRec {
            fingerprint: self.fingerprint,
            created_at: self.created_at,
            expires_at: self.expires_at,
            response,
        })
    }
}

/// An answer encoded ahead, to be written with the change it answers.
#[derive(Debug)]
pub struct IdemPut {
    pub slot: IdemSlot,
    pub value: Vec<u8>,
    /// The answer itself, kept for a job's replay: it becomes the job's content.
    job_content: Option<StoredResponse>,
}

impl IdemPut {
    pub fn new(slot: IdemSlot, response: StoredResponse) -> Result<IdemPut, StoreError> {
        let job_content = slot.job.as_ref().map(|_| response.clone());
        let value = slot.encode(response)?;
        Ok(IdemPut {
            slot,
            value,
            job_content,
        })
    }

    /// Writes the answer in its hour's bucket, and ends a replayed job with it.
    pub fn write(self, t: &Tx<'_>) -> Result<(), StoreError> {
        let key = stored_key(hour_of(self.slot.created_at), &self.slot.key);
        t.insert(Table::Idempotency, key, self.value)?;
        match (&self.slot.job, self.job_content) {
            (Some(job), Some(response)) => job.complete(t, response),
            _ => Ok(()),
        }
    }
}

/// An answer that depends on what a writer job finds: rendered inside the job from its
/// result, and written in the same transaction as the job's changes. A rendering of
/// `None` (the call changed nothing, e.g. a 404) stores nothing.
pub struct Remember<R> {
    pub slot: IdemSlot,
    #[allow(clippy::type_complexity)]
    pub render: Box<dyn FnOnce(&R) -> Option<StoredResponse> + Send>,
}

impl<R> Remember<R> {
    /// Renders and writes the answer for `result`. A rendering too large to keep is not
    /// stored (the caller sees the answer; a repeat runs again and changes nothing).
    pub fn write(self, t: &Tx<'_>, result: &R) -> Result<(), StoreError> {
        let Some(response) = (self.render)(result) else {
            return Ok(());
        };
        match IdemPut::new(self.slot, response) {
            Ok(put) => put.write(t),
            Err(e) => {
                tracing::warn!(error = %e, "an answer too large to keep under its idempotency key");
                Ok(())
            }
        }
    }
}

/// Old answers moved per write when migrating.
const MIGRATE_BATCH: usize = 512;

impl Store {
    /// The newest answer stored under a slot key that may still be alive at `now`
    /// (callers check `expires_at`: an answer made in the first hour looked at may have
    /// just expired).
    pub fn idempotency(&self, slot: &[u8], now: i64) -> Result<Option<IdempotencyRec>, StoreError> {
        let newest = hour_of(now).saturating_add(HOURS_AHEAD);
        for hour in (first_live_hour(now)..=newest).rev() {
            if let Some(v) = self.t.idempotency.get(stored_key(hour, slot))? {
                return decode(&v).map(Some);
            }
        }
        Ok(None)
    }

    /// Calls `f` with the slot key of every answer that may be alive at `now`; returns
    /// how many.
    pub fn idempotency_keys(
        &self,
        now: i64,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        let from = first_live_hour(now).to_be_bytes();
        for k in self.t.idempotency.range(from..).keys() {
            let k = k?;
            if let Some(slot) = k.get(4..) {
                f(slot);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stores an answer on its own: for calls that change nothing else.
    pub async fn remember(&self, put: IdemPut) -> Result<(), StoreError> {
        self.writer.write(move |t| put.write(t)).await
    }

    /// Removes up to `max` answers from hour buckets whose answers have all expired at
    /// `now`; returns how many.
    pub(super) async fn prune_idempotency(
        &self,
        now: i64,
        max: usize,
    ) -> Result<usize, StoreError> {
        let until = first_live_hour(now).to_be_bytes();
        let expired = self
            .t
            .idempotency
            .range(..until)
            .keys()
            .take(max)
            .collect::<Result<Vec<_>, _>>()?;
        if expired.is_empty() {
            return Ok(0);
        }
        self.writer
            .write_waiting(move |t| {
                let n = expired.len();
                for k in expired {
                    t.remove(Table::Idempotency, &k)?;
                }
                Ok(n)
            })
            .await
    }

    /// Moves answers stored by older builds into their hour buckets, dropping expired and
    /// unreadable ones, and empties the old expiry index. Runs at open, before the
    /// server answers; returns how many answers were moved.
    pub(super) fn migrate_legacy_idempotency(&self, now: i64) -> Result<usize, StoreError> {
        let mut moved = 0;
        loop {
            let mut batch = Vec::new();
            for item in self.t.legacy_idempotency.iter().take(MIGRATE_BATCH) {
                let (k, v) = item?;
                let target = match decode::<IdempotencyRec>(&v) {
                    Ok(rec) if rec.expires_at > now => {
                        Some(stored_key(hour_of(rec.created_at), &k))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "an old idempotency answer cannot be read; dropped");
                        None
                    }
                };
                batch.push((k.to_vec(), target.map(|t| (t, v.to_vec()))));
            }
            if batch.is_empty() {
                break;
            }
            moved += batch.iter().filter(|(_, t)| t.is_some()).count();
            self.writer.write_blocking(move |t| {
                for (old, target) in batch {
                    t.remove(Table::LegacyIdempotency, &old)?;
                    if let Some((k, v)) = target {
                        t.insert(Table::Idempotency, k, v)?;
                    }
                }
                Ok(())
            })?;
        }
        loop {
            let keys = self
                .t
                .legacy_idempotency_expiry
                .iter()
                .keys()
                .take(MIGRATE_BATCH)
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                return Ok(moved);
            }
            self.writer.write_blocking(move |t| {
                for k in keys {
                    t.remove(Table::LegacyIdempotencyExpiry, &k)?;
                }
                Ok(())
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::background::StoredBody;

    fn answer(n: u8) -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![],
            body: StoredBody::Inline(vec![n]),
        }
    }

    fn body(rec: &IdempotencyRec) -> Vec<u8> {
        match &rec.response.body {
            StoredBody::Inline(b) => b.clone(),
            StoredBody::Logged(_) => panic!("logged"),
        }
    }

    fn put(store: &Store, slot: IdemSlot, n: u8) {
        let p = IdemPut::new(slot, answer(n)).unwrap();
        store.writer.write_blocking(move |t| p.write(t)).unwrap();
    }

    const T0: i64 = 1_795_953_600_000;

    #[test]
    fn an_answer_is_found_for_its_whole_day_and_pruned_only_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        // Made late in an hour, so its day ends late in the hour a day later.
        let made = T0 + HOUR_MS - 1_000;
        let slot = IdemSlot::new(Env::Live, "ACME", "k-1", [1; 32], made);
        let key = slot.key.clone();
        put(&store, slot, 7);
        for at in [made, made + HOUR_MS, made + TTL_MS - 1] {
            let rec = store.idempotency(&key, at).unwrap().expect("found");
            assert_eq!(body(&rec), [7]);
            assert!(rec.expires_at > at);
        }
        let other = IdemSlot::new(Env::Test, "ACME", "k-1", [1; 32], made).key;
        assert!(store.idempotency(&other, made).unwrap().is_none());

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Expired but its bucket still holds the last second of live answers: kept.
        assert_eq!(
            rt.block_on(store.prune_idempotency(made + TTL_MS, 100))
                .unwrap(),
            0
        );
        let mut seen = Vec::new();
        store
            .idempotency_keys(made + TTL_MS, |k| seen.push(k.to_vec()))
            .unwrap();
        assert_eq!(seen, std::slice::from_ref(&key));
        // Once every answer of its hour has expired, the bucket goes.
        let later = made + TTL_MS + 1_000;
        assert_eq!(rt.block_on(store.prune_idempotency(later, 100)).unwrap(), 1);
        assert!(store.idempotency(&key, made).unwrap().is_none());
        store.close();
    }

    #[test]
    fn the_newest_answer_under_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let first = IdemSlot::new(Env::Live, "ACME", "k", [1; 32], T0);
        let key = first.key.clone();
        put(&store, first, 1);
        // The first expired; the key was used again a day later.
        let again = T0 + TTL_MS + 5 * HOUR_MS;
        put(
            &store,
            IdemSlot::new(Env::Live, "ACME", "k", [2; 32], again),
            2,
        );
        let rec = store.idempotency(&key, again).unwrap().unwrap();
        assert_eq!((rec.fingerprint, body(&rec)), ([2; 32], vec![2]));
        store.close();
    }

    #[test]
    fn answers_of_older_builds_move_into_their_buckets_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = super::super::now_ms();
        let live = IdemSlot::new(Env::Live, "ACME", "old-live", [3; 32], now - HOUR_MS);
        let dead = IdemSlot::new(Env::Live, "ACME", "old-dead", [4; 32], now - 2 * TTL_MS);
        {
            let store = Store::open(dir.path(), 8).unwrap();
            let rows = [(&live, 3u8), (&dead, 4)]
                .map(|(s, n)| (s.key.clone(), s.expires_at, s.encode(answer(n)).unwrap()));
            store
                .writer
                .write_blocking(move |t| {
                    for (k, expires, v) in rows {
                        let mut e = (expires as u64).to_be_bytes().to_vec();
                        e.extend_from_slice(&k);
                        t.insert(Table::LegacyIdempotencyExpiry, e, vec![])?;
                        t.insert(Table::LegacyIdempotency, k, v)?;
                    }
                    t.insert(Table::LegacyIdempotency, b"junk", b"\xff".to_vec())?;
                    Ok(())
                })
                .unwrap();
            store.close();
        }
        let store = Store::open(dir.path(), 8).unwrap();
        assert!(store.t.legacy_idempotency.is_empty());
        assert!(store.t.legacy_idempotency_expiry.is_empty());
        let rec = store.idempotency(&live.key, now).unwrap().expect("moved");
        assert_eq!((rec.fingerprint, body(&rec)), ([3; 32], vec![3]));
        assert!(store.idempotency(&dead.key, now).unwrap().is_none());
        assert_eq!(store.t.idempotency.len(), 1);
        store.close();
    }
}
