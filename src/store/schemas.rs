//! Validation's share of the store: the doctype schemas an admin registers, the release of
//! `invalid` messages that pass again, and the index that keeps a sender's external
//! references unique.
//!
//! - `schemas`: schema id → [`SchemaRec`]. At most one per `(doctype, version)`; putting a
//!   pair again replaces the old record in the same write, so there is no moment without a
//!   schema for it.
//! - `unique_refs`: `env ‖ sender ‖ 0xFF ‖ doctype ‖ 0xFF ‖ reference` → `message id ‖
//!   received at (u64 BE ms)`. Written only for senders with `unique_references` on, by the
//!   intake job that stores the message. An entry older than the window no longer counts
//!   and is overwritten by the next message that uses its reference. Doctypes are ASCII and
//!   references UTF-8, so neither contains 0xFF and every key names one triple.
//!
//! An `invalid` message is in no queue. [`Store::revalidated`] moves those that now pass
//! into their receivers' poll queues or the outbox, exactly as intake does, and stores the
//! fresh errors of those that still fail, in one writer job.

use std::collections::HashSet;

use uuid::Uuid;

use super::codec::{decode, encode, env_id, partner_id, partner_prefix, pending_value, SEP};
use super::deliveries::{due_at, outbox_key};
use super::messages::{AcceptError, NewMessage};
use super::records::{
    transmission_uuid, DeliveryRec, MessageRec, SchemaRec, Target, ValidationErrorRec,
    VALIDATION_ERRORS_KEPT,
};
use super::tracking::{parse_entry, MessagePut};
use super::transitions::{Event, Transition};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::{Env, Status};

/// The reference window until the configuration sets it: 30 days.
pub(super) const DEFAULT_REFERENCE_WINDOW_MS: i64 = 30 * 86_400_000;

/// `env ‖ sender ‖ 0xFF ‖ doctype ‖ 0xFF ‖ reference`.
pub(super) fn unique_ref_key(env: Env, sender: &str, doctype: &str, reference: &str) -> Vec<u8> {
    let mut k = partner_prefix(env, sender);
    k.extend_from_slice(doctype.as_bytes());
    k.push(SEP);
    k.extend_from_slice(reference.as_bytes());
    k
}

/// `message id ‖ received at`: who holds a reference since when.
pub(super) fn reference_value(id: Uuid, at: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(&(at.max(0) as u64).to_be_bytes());
    v
}

/// The message that holds a reference, if it took it at or after `since`.
fn holder(value: &[u8], since: i64) -> Option<Uuid> {
    let id = Uuid::from_slice(value.get(..16)?).ok()?;
    let at = u64::from_be_bytes(value.get(16..24)?.try_into().ok()?);
    (i64::try_from(at).ok()? >= since).then_some(id)
}

/// [`holder`] of the entry at `key`, read inside a writer job.
pub(super) fn reference_holder(
    t: &Tx<'_>,
    key: &[u8],
    since: i64,
) -> Result<Option<Uuid>, StoreError> {
    Ok(t.get(Table::UniqueRefs, key)?
        .and_then(|v| holder(&v, since)))
}

impl Store {
    /// How long a reference stays taken.
    pub(super) fn reference_window_ms(&self) -> i64 {
        self.reference_window_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets how long a reference stays taken (the retention window).
    pub fn set_reference_window_ms(&self, ms: i64) {
        self.reference_window_ms
            .store(ms.max(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// The `unique_refs` keys that the valid messages of one intake call take, by message
    /// index. A reference repeated inside the call, or held by a stored message now, is a
    /// [`AcceptError::Duplicate`]. Invalid messages take no reference: their sender may
    /// send the corrected document under the same one.
    pub(super) fn unique_reference_keys(
        &self,
        env: Env,
        sender: &str,
        new: &[NewMessage],
        now: i64,
    ) -> Result<Vec<(usize, Vec<u8>)>, AcceptError> {
        let since = now - self.reference_window_ms();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (n, m) in new.iter().enumerate() {
            let Some(reference) = &m.external_reference else {
                continue;
            };
            if !m.validation_errors.is_empty() {
                continue;
            }
            let key = unique_ref_key(env, sender, &m.doctype, reference);
            let duplicate = |first| AcceptError::Duplicate {
                index: n,
                reference: reference.clone(),
                first,
            };
            if !seen.insert(key.clone()) {
                return Err(duplicate(None));
            }
            let held = self.t.unique_refs.get(&key).map_err(StoreError::from)?;
            if let Some(first) = held.and_then(|v| holder(&v, since)) {
                return Err(duplicate(Some(first)));
            }
            out.push((n, key));
        }
        Ok(out)
    }

    /// Every registered schema, oldest first.
    pub fn schemas(&self) -> Result<Vec<SchemaRec>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.schemas.iter() {
            let (_, v) = item?;
            out.push(decode::<SchemaRec>(&v)?);
        }
        Ok(out)
    }

    /// Stores a schema, replacing the one of the same doctype and version (returned) in
    /// the same write. Callers serialize schema changes, so the scan for the old one is
    /// still true when the job runs.
    pub async fn put_schema(&self, rec: SchemaRec) -> Result<Option<SchemaRec>, StoreError> {
        let old = self
            .schemas()?
            .into_iter()
            .find(|s| s.doctype == rec.doctype && s.version == rec.version);
        let value = encode(&rec)?;
        let old_id = old.as_ref().map(|s| s.id);
        self.writer
            .write_waiting(move |t| {
                if let Some(id) = old_id {
                    t.remove(Table::Schemas, id.as_bytes())?;
                }
                t.insert(Table::Schemas, rec.id.as_bytes(), value)
            })
            .await?;
        Ok(old)
    }

    /// Deletes a schema; `None` when there is no such schema.
    pub async fn delete_schema(&self, id: Uuid) -> Result<Option<SchemaRec>, StoreError> {
        self.writer
            .write_waiting(move |t| {
                let Some(raw) = t.get(Table::Schemas, id.as_bytes())? else {
                    return Ok(None);
                };
                let rec: SchemaRec = decode(&raw)?;
                t.remove(Table::Schemas, id.as_bytes())?;
                Ok(Some(rec))
            })
            .await
    }

    /// Up to `limit` ids of `env`'s invalid messages of `doctype`, oldest request first,
    /// from the tracking index (small entries; no record is read). A scan: an admin
    /// action, to be run on a blocking thread.
    pub fn invalid_messages(
        &self,
        env: Env,
        doctype: &str,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.tracking.scan_prefix([env.byte()]) {
            let (key, value) = item?;
            let Some(e) = parse_entry(&key, &value) else {
                continue;
            };
            if e.status == Status::Invalid && e.doctype == doctype {
                out.push(e.message_id);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Records the outcome of validating `invalid` messages again, in one writer job:
    /// each of `passed` is queued for its receivers (a push where the receiver has a push
    /// URL for `env`, else its poll queue), and each of `failed` keeps its status with the
    /// fresh errors. Messages that are no longer invalid are left alone. Returns the
    /// released messages.
    pub async fn revalidated(
        &self,
        env: Env,
        passed: Vec<Uuid>,
        failed: Vec<(Uuid, Vec<ValidationErrorRec>)>,
        now: i64,
    ) -> Result<Vec<MessageRec>, StoreError> {
        let dir = self.directory();
        let due = due_at(now);
        let released = self
            .writer
            .write_waiting(move |t| {
                let read = |id: Uuid| -> Result<Option<MessageRec>, StoreError> {
                    let Some(raw) = t.get(Table::Messages, env_id(env, id))? else {
                        return Ok(None);
                    };
                    let m: MessageRec = decode(&raw)?;
                    Ok((m.status == Status::Invalid).then_some(m))
                };
                // Everything is read, changed and encoded before the first write.
                let mut puts = Vec::new();
                let mut queue = Vec::new();
                let mut released = Vec::new();
                for id in passed {
                    let Some(mut m) = read(id)? else {
                        continue;
                    };
                    let before = m.tracked();
                    for index in 0..m.transmissions.len() {
                        let receiver = m.transmissions[index].receiver.clone();
                        let uuid = transmission_uuid(id, index);
                        let pushed = dir
                            .partner(&receiver)
                            .and_then(|p| p.push_url_for(env))
                            .is_some();
                        let event = Event::Released {
                            due: pushed.then_some(due),
                        };
                        if m.apply(index, event, now) != Transition::Changed {
                            continue;
                        }
                        queue.push(if pushed {
                            let d = DeliveryRec {
                                id: uuid,
                                env,
                                target: Target::Transmission {
                                    message_id: id,
                                    index: index as u8,
                                    receiver: receiver.clone(),
                                },
                                attempt: 0,
                                tries: 0,
                            };
                            let key = outbox_key(&d.target.endpoint(env), due, uuid);
                            (Table::Outbox, key, encode(&d)?)
                        } else {
                            let key = partner_id(env, &receiver, uuid);
                            (Table::ReceiverPending, key, pending_value(0, &m.doctype))
                        });
                    }
                    // Back on its way: not processed, and the old errors no longer hold.
                    m.processed_at = None;
                    m.validation_errors.clear();
                    puts.push(MessagePut::new(&m, before)?);
                    released.push(m);
                }
                for (id, mut errors) in failed {
                    let Some(mut m) = read(id)? else {
                        continue;
                    };
                    errors.truncate(VALIDATION_ERRORS_KEPT);
                    if m.validation_errors == errors {
                        continue;
                    }
                    let before = m.tracked();
                    m.validation_errors = errors;
                    puts.push(MessagePut::new(&m, before)?);
                }
                for put in puts {
                    put.write(t)?;
                }
                for (table, key, value) in queue {
                    t.insert(table, key, value)?;
                }
                Ok(released)
            })
            .await?;
        if !released.is_empty() {
            self.outbox.rescan();
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_counts_only_within_its_window() {
        let id = Uuid::now_v7();
        let v = reference_value(id, 5_000);
        assert_eq!(holder(&v, 4_000), Some(id));
        assert_eq!(holder(&v, 5_000), Some(id));
        assert_eq!(holder(&v, 5_001), None, "older than the window");
        assert_eq!(holder(&v[..10], 0), None, "a damaged entry holds nothing");
    }

    #[test]
    fn reference_keys_do_not_run_into_each_other() {
        let a = unique_ref_key(Env::Live, "ACME", "order", "R1");
        let b = unique_ref_key(Env::Live, "ACME", "order.x", "R1");
        let c = unique_ref_key(Env::Test, "ACME", "order", "R1");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(!b.starts_with(&a) && !a.starts_with(&b));
    }
}
