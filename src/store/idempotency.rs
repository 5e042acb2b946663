//! Answers stored under idempotency keys.
//!
//! An answer is written in the same writer round as the change it answers, so after a
//! crash either both exist or neither does (see [`super::background`] for how a
//! background job's replay relies on this).
//!
//! The answers a round's jobs keep are written together, as one record of up to
//! [`BATCH_BYTES`] (more records when they are more), in `idempotency_batches` under a
//! stamp that grows with every batch and starts from the newest answer's time (see
//! [`index::stamp_at`]). A keyed call thus costs no insert of its own, only its share of
//! the round's one, which always lands at the end of the tree: an insert per key at a
//! place set by the key cost keyed intake a fifth of its rate with random keys, most of
//! it sled copying and freeing the leaf each insert lands in.
//!
//! Finding an answer by its key needs the in-memory [`AnswerIndex`] from key hash to
//! stamps, filled from the batches at start. An answer lives 24 hours; a batch's stamp is
//! no earlier than its newest answer, so every batch stamped before `now - 24 h` holds
//! only expired answers and the pruner drops that range of the tree.
//!
//! Stores made by older builds kept one record per answer, in `idempotency_hourly` or
//! before that in `idempotency` (with an expiry index, `idempotency_expiry`);
//! [`Store::migrate_legacy_idempotency`] moves them into batches at open.

mod index;

use index::stamp_at;
pub use index::AnswerIndex;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::background::{JobEnding, StoredResponse};
use super::codec::{decode, encode, partner_prefix, Record, MAX_RECORD_BYTES};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::Env;

/// How long an answer is kept under its key.
pub const TTL_MS: i64 = 24 * 3600 * 1000;

/// Answers gathered into one batch record up to about this many bytes (one answer
/// larger than this is a batch of its own).
pub const BATCH_BYTES: usize = 32 * 1024;

/// The format of a batch record: this byte, the newest answer's time (i64 BE), the
/// number of answers (u32 BE), then per answer its slot key (u16 BE length, bytes) and its
/// encoded [`IdempotencyRec`] (u32 BE length, bytes).
const BATCH_VERSION: u8 = 1;
const BATCH_HEAD: usize = 1 + 8 + 4;

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
    /// `env ‖ partner ‖ 0xFF ‖ key`.
    pub key: Vec<u8>,
    pub fingerprint: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
    /// Set for a background job's replay: the write that stores its answer ends the job.
    pub job: Option<JobEnding>,
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

/// What keeps a key held against concurrent repeats (see `api::idempotency`). The writer
/// keeps it with the answer until the answer is durable and indexed, so the key stays held
/// even when the call that stored it is dropped first (its client went away).
pub type KeyHold = Arc<dyn std::any::Any + Send + Sync>;

/// An answer encoded ahead, to be written with the change it answers.
pub struct IdemPut {
    pub slot: IdemSlot,
    pub value: Vec<u8>,
    /// The answer itself, kept for a job's replay: it becomes the job's content.
    job_content: Option<StoredResponse>,
    hold: Option<KeyHold>,
}

impl IdemPut {
    pub fn new(slot: IdemSlot, response: StoredResponse) -> Result<IdemPut, StoreError> {
        let job_content = slot.job.as_ref().map(|_| response.clone());
        let value = slot.encode(response)?;
        // Its batch, even alone, must stay a record of bounded size.
        if BATCH_HEAD + 6 + slot.key.len() + value.len() > MAX_RECORD_BYTES {
            return Err(StoreError::Codec(format!(
                "an answer of {} bytes is too large to keep",
                value.len()
            )));
        }
        Ok(IdemPut {
            slot,
            value,
            job_content,
            hold: None,
        })
    }

    /// Keeps `hold` until the answer is durable and can be found.
    pub fn holding(mut self, hold: KeyHold) -> IdemPut {
        self.hold = Some(hold);
        self
    }

    /// Keeps the answer for its round's batch, and ends a replayed job with it.
    pub fn write(self, t: &Tx<'_>) -> Result<(), StoreError> {
        t.keep_answer(KeptAnswer {
            key: self.slot.key,
            created_at: self.slot.created_at,
            value: self.value,
            hold: self.hold,
        });
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
    /// Kept with a stored answer until it is durable (see [`KeyHold`]).
    pub hold: Option<KeyHold>,
}

impl<R> Remember<R> {
    /// Renders and writes the answer for `result`. A rendering too large to keep is not
    /// stored (the caller sees the answer; a repeat runs again and changes nothing).
    pub fn write(self, t: &Tx<'_>, result: &R) -> Result<(), StoreError> {
        let Some(response) = (self.render)(result) else {
            return Ok(());
        };
        match IdemPut::new(self.slot, response) {
            Ok(put) => match self.hold {
                Some(hold) => put.holding(hold).write(t),
                None => put.write(t),
            },
            Err(e) => {
                tracing::warn!(error = %e, "an answer too large to keep under its idempotency key");
                Ok(())
            }
        }
    }
}

/// An answer a job keeps, written with the other answers of its round.
pub struct KeptAnswer {
    key: Vec<u8>,
    created_at: i64,
    /// An encoded [`IdempotencyRec`].
    value: Vec<u8>,
    hold: Option<KeyHold>,
}

impl KeptAnswer {
    fn framed_len(&self) -> usize {
        2 + self.key.len() + 4 + self.value.len()
    }
}

fn encode_batch(answers: &[KeptAnswer]) -> Vec<u8> {
    let size = BATCH_HEAD + answers.iter().map(KeptAnswer::framed_len).sum::<usize>();
    let newest = answers.iter().map(|a| a.created_at).max().unwrap_or(0);
    let mut out = Vec::with_capacity(size);
    out.push(BATCH_VERSION);
    out.extend_from_slice(&newest.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u32).to_be_bytes());
    for a in answers {
        // Both lengths are bounded well below their width by `IdemPut::new` and the
        // 255-character key limit.
        out.extend_from_slice(&(a.key.len() as u16).to_be_bytes());
        out.extend_from_slice(&a.key);
        out.extend_from_slice(&(a.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&a.value);
    }
    out
}

/// A slot key and its encoded answer, as a batch holds them.
type Entry<'a> = (&'a [u8], &'a [u8]);

/// The entries of a batch record, in the order written.
fn batch_entries(bytes: &[u8]) -> Result<Vec<Entry<'_>>, StoreError> {
    let bad = || StoreError::Codec("a batch of idempotency answers is malformed".into());
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    let mut b = bytes;
    match take(&mut b, 1) {
        Some([BATCH_VERSION]) => {}
        _ => return Err(bad()),
    }
    take(&mut b, 8).ok_or_else(bad)?;
    let count = take(&mut b, 4)
        .and_then(|c| c.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(bad)?;
    let mut out = Vec::with_capacity((count as usize).min(b.len() / 6));
    for _ in 0..count {
        let klen = take(&mut b, 2)
            .and_then(|c| c.try_into().ok())
            .map(u16::from_be_bytes)
            .ok_or_else(bad)?;
        let key = take(&mut b, klen as usize).ok_or_else(bad)?;
        let vlen = take(&mut b, 4)
            .and_then(|c| c.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(bad)?;
        let value = take(&mut b, vlen as usize).ok_or_else(bad)?;
        out.push((key, value));
    }
    Ok(out)
}

/// What a round that stored answers leaves for after its flush.
#[derive(Default)]
pub(super) struct Stored {
    /// (key hash, stamp) of each answer, for the index.
    pub indexed: Vec<(u64, u64)>,
    /// Dropped once the answers are indexed.
    pub holds: Vec<KeyHold>,
}

/// Writes the answers a round's jobs kept, as batch records at the end of the tree.
pub(super) fn write_answers(
    t: &Tx<'_>,
    index: &AnswerIndex,
    mut answers: Vec<KeptAnswer>,
) -> Result<Stored, StoreError> {
    let holds = answers.iter_mut().filter_map(|a| a.hold.take()).collect();
    let mut indexed = Vec::with_capacity(answers.len());
    let mut rest = &answers[..];
    while !rest.is_empty() {
        let mut size = BATCH_HEAD;
        let mut n = 0;
        for a in rest {
            if n > 0 && size + a.framed_len() > BATCH_BYTES {
                break;
            }
            size += a.framed_len();
            n += 1;
        }
        let (batch, after) = rest.split_at(n);
        rest = after;
        let newest = batch.iter().map(|a| a.created_at).max().unwrap_or(0);
        let stamp = index.next_stamp(newest);
        t.insert(Table::Idempotency, stamp.to_be_bytes(), encode_batch(batch))?;
        indexed.extend(batch.iter().map(|a| (index.hash(&a.key), stamp)));
    }
    Ok(Stored { indexed, holds })
}

/// Old answers moved per write when migrating.
const MIGRATE_BATCH: usize = 512;

impl Store {
    /// The index of stored answers.
    pub fn answers(&self) -> &AnswerIndex {
        &self.answers
    }

    /// The newest answer stored under a slot key (callers check `expires_at`: an answer
    /// may have expired and not been pruned yet). Before the index is filled, every
    /// batch is read.
    pub fn idempotency(&self, slot: &[u8]) -> Result<Option<IdempotencyRec>, StoreError> {
        let stamps: Vec<Vec<u8>> = if self.answers.is_filled() {
            self.answers
                .stamps(slot)
                .into_iter()
                .map(|s| s.to_be_bytes().to_vec())
                .collect()
        } else {
            let keys = self.t.idempotency.iter().keys().rev();
            keys.map(|k| k.map(|k| k.to_vec()))
                .collect::<Result<_, _>>()?
        };
        for stamp in stamps {
            let Some(batch) = self.t.idempotency.get(&stamp)? else {
                continue;
            };
            // A key answered twice in one batch (only after its first answer expired):
            // the later one counts.
            let found = batch_entries(&batch)?
                .into_iter()
                .rev()
                .find(|(k, _)| *k == slot);
            if let Some((_, v)) = found {
                return decode(v).map(Some);
            }
        }
        Ok(None)
    }

    /// Reads every stored batch into the index and marks it filled; returns how many
    /// answers it holds. Runs once, at start, on a blocking thread; new batches are added
    /// by the writer meanwhile.
    pub fn load_answers(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.t.idempotency.iter() {
            let (k, v) = item?;
            let Ok(stamp) = <[u8; 8]>::try_from(&k[..]).map(u64::from_be_bytes) else {
                continue;
            };
            match batch_entries(&v) {
                Ok(entries) => {
                    for (key, _) in entries {
                        self.answers.add(self.answers.hash(key), stamp);
                        n += 1;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a batch of idempotency answers was skipped"),
            }
        }
        self.answers.mark_filled();
        Ok(n)
    }

    /// Calls `f` with every stored answer (for the payloads their bodies point to).
    pub(super) fn each_answer(&self, mut f: impl FnMut(IdempotencyRec)) -> Result<(), StoreError> {
        for item in self.t.idempotency.iter() {
            let (_, v) = item?;
            for (_, answer) in batch_entries(&v)? {
                f(decode(answer)?);
            }
        }
        Ok(())
    }

    /// Stores an answer on its own: for calls that change nothing else.
    pub async fn remember(&self, put: IdemPut) -> Result<(), StoreError> {
        self.writer.write(move |t| put.write(t)).await
    }

    /// Removes up to `max` batches whose answers have all expired at `now`; returns how
    /// many.
    pub(super) async fn prune_idempotency(
        &self,
        now: i64,
        max: usize,
    ) -> Result<usize, StoreError> {
        let until = stamp_at(now.saturating_sub(TTL_MS));
        let expired = self
            .t
            .idempotency
            .range(..until.to_be_bytes())
            .keys()
            .take(max)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = expired.last() else {
            return Ok(0);
        };
        let past = <[u8; 8]>::try_from(&last[..])
            .map(u64::from_be_bytes)
            .map_or(until, |s| s.saturating_add(1).min(until));
        let n = self
            .writer
            .write_waiting(move |t| {
                let n = expired.len();
                for k in expired {
                    t.remove(Table::Idempotency, &k)?;
                }
                Ok(n)
            })
            .await?;
        self.answers.forget_before(past);
        Ok(n)
    }

    /// Moves answers stored by older builds into batches, dropping expired and unreadable
    /// ones, and empties the old expiry index. Runs at open, before the server answers;
    /// returns how many answers were moved.
    pub(super) fn migrate_legacy_idempotency(&self, now: i64) -> Result<usize, StoreError> {
        // Keyed by the slot key itself; then by hour (u32 BE) ‖ slot key.
        let moved =
            self.migrate_answers(&self.t.legacy_idempotency, Table::LegacyIdempotency, 0, now)?
                + self.migrate_answers(
                    &self.t.legacy_idempotency_hourly,
                    Table::LegacyIdempotencyHourly,
                    4,
                    now,
                )?;
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

    /// Moves the answers of `tree` (whose keys are `skip` bytes, then the slot key) into
    /// batches.
    fn migrate_answers(
        &self,
        tree: &sled::Tree,
        table: Table,
        skip: usize,
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut moved = 0;
        loop {
            let mut batch = Vec::new();
            for item in tree.iter().take(MIGRATE_BATCH) {
                let (k, v) = item?;
                let kept = match (decode::<IdempotencyRec>(&v), k.get(skip..)) {
                    (Ok(rec), Some(slot)) if rec.expires_at > now => Some(KeptAnswer {
                        key: slot.to_vec(),
                        created_at: rec.created_at,
                        value: v.to_vec(),
                        hold: None,
                    }),
                    (Ok(_), Some(_)) => None,
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "an old idempotency answer cannot be read; dropped");
                        None
                    }
                    (_, None) => None,
                };
                batch.push((k.to_vec(), kept));
            }
            if batch.is_empty() {
                return Ok(moved);
            }
            moved += batch.iter().filter(|(_, a)| a.is_some()).count();
            self.writer.write_blocking(move |t| {
                for (old, kept) in batch {
                    t.remove(table, &old)?;
                    if let Some(a) = kept {
                        t.keep_answer(a);
                    }
                }
                Ok(())
            })?;
        }
    }
}

#[cfg(test)]
mod tests;
