//! Putting deliveries back on the way: an admin's redelivery of failed transmissions, and
//! the one-time move of pushes queued by an older build into the outbox.

use uuid::Uuid;

use super::codec::{decode, encode, env_id, parse_pending_value, partner_id, pending_value};
use super::deliveries::{due_at, outbox_key, owner_update};
use super::records::{transmission_uuid, DeliveryRec, DeliveryRecV1, MessageRec, Target};
use super::tracking::MessagePut;
use super::transitions::{Event, Transition};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::{Env, Status};

impl Store {
    /// The `(message id, index)` of every failed transmission to `receiver` in `env`.
    /// A scan of the environment's messages: an admin action, not a hot path.
    pub fn failed_transmissions(
        &self,
        env: Env,
        receiver: &str,
    ) -> Result<Vec<(Uuid, usize)>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.messages.scan_prefix([env.byte()]) {
            let (_, value) = item?;
            let m: MessageRec = decode(&value)?;
            for (i, tx) in m.transmissions.iter().enumerate() {
                if tx.receiver == receiver && tx.status == Status::Failed {
                    out.push((m.id, i));
                }
            }
        }
        Ok(out)
    }

    /// Sends failed transmissions again: each goes back to `queued`, as a push when its
    /// receiver has a push URL for `env`, else into its poll queue. The push keeps its
    /// delivery id (so its attempt log goes on where it stopped). Transmissions that are
    /// not failed are left alone. Returns how many were requeued.
    pub async fn redeliver(
        &self,
        env: Env,
        targets: Vec<(Uuid, usize)>,
        now: i64,
    ) -> Result<usize, StoreError> {
        let dir = self.directory();
        let mut logged = Vec::with_capacity(targets.len());
        for (id, index) in targets {
            let uuid = transmission_uuid(id, index);
            logged.push((id, index, self.last_attempt(env, uuid)?));
        }
        let due = due_at(now);
        let count = self
            .writer
            .write(move |t| {
                let mut writes = Vec::new();
                for (id, index, last) in logged {
                    let mkey = env_id(env, id);
                    let Some(raw) = t.get(Table::Messages, mkey)? else {
                        continue;
                    };
                    let mut m: MessageRec = decode(&raw)?;
                    let Some(tx) = m.transmissions.get(index) else {
                        continue;
                    };
                    let receiver = tx.receiver.clone();
                    let attempts = tx.attempts.max(last);
                    let uuid = transmission_uuid(id, index);
                    let pushed = dir
                        .partner(&receiver)
                        .and_then(|p| p.push_url_for(env))
                        .is_some();
                    let event = Event::Redelivered {
                        due: pushed.then_some(due),
                    };
                    let before = m.tracked();
                    if m.apply(index, event, now) != Transition::Changed {
                        continue;
                    }
                    let queue = if pushed {
                        let d = DeliveryRec {
                            id: uuid,
                            env,
                            target: Target::Transmission {
                                message_id: id,
                                index: index as u8,
                                receiver: receiver.clone(),
                            },
                            attempt: attempts,
                            tries: 0,
                        };
                        let key = outbox_key(&d.target.endpoint(env), due, uuid);
                        (Table::Outbox, key, encode(&d)?)
                    } else {
                        let key = partner_id(env, &receiver, uuid);
                        (Table::ReceiverPending, key, pending_value(0, &m.doctype))
                    };
                    writes.push((MessagePut::new(&m, before)?, queue));
                }
                let n = writes.len();
                for (put, (table, key, value)) in writes {
                    put.write(t)?;
                    t.insert(table, key, value)?;
                }
                Ok(n)
            })
            .await?;
        if count > 0 {
            self.outbox.rescan();
        }
        Ok(count)
    }

    /// Moves pushes queued by an older build (the `deliveries` tree, format version 1) into
    /// the outbox, due now. Runs once at open; an entry whose message is gone is dropped,
    /// one that cannot be read is left where it is and logged.
    pub(super) fn migrate_legacy_deliveries(&self) -> Result<usize, StoreError> {
        let mut moved = 0;
        loop {
            let mut batch = Vec::new();
            for item in self.t.deliveries.iter().take(256) {
                let (key, value) = item?;
                let old: DeliveryRecV1 = match decode(&value) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "an old push record cannot be read; left in place");
                        continue;
                    }
                };
                let receiver = self
                    .message(old.env, old.message_id)?
                    .and_then(|m| m.transmissions.get(usize::from(old.index)).cloned())
                    .map(|t| t.receiver);
                batch.push((key.to_vec(), old, receiver));
            }
            if batch.is_empty() {
                return Ok(moved);
            }
            let now = super::now_ms();
            let due = due_at(now);
            moved += batch.len();
            let job = move |t: &Tx<'_>| {
                let mut writes = Vec::with_capacity(batch.len());
                for (key, old, receiver) in batch {
                    let entry = match receiver {
                        Some(receiver) => {
                            let id = transmission_uuid(old.message_id, usize::from(old.index));
                            let d = DeliveryRec {
                                id,
                                env: old.env,
                                target: Target::Transmission {
                                    message_id: old.message_id,
                                    index: old.index,
                                    receiver,
                                },
                                attempt: old.attempt,
                                tries: old.attempt,
                            };
                            let owner = owner_update(t, &d, Event::Requeued { due }, now)?;
                            let k = outbox_key(&d.target.endpoint(d.env), due, id);
                            Some((k, encode(&d)?, owner))
                        }
                        None => None,
                    };
                    writes.push((key, entry));
                }
                for (key, entry) in writes {
                    t.remove(Table::Deliveries, &key)?;
                    if let Some((k, v, owner)) = entry {
                        t.insert(Table::Outbox, k, v)?;
                        owner.write(t)?;
                    }
                }
                Ok(())
            };
            self.writer.write_blocking(job)?;
        }
    }

    /// Moves leased entries that an older build kept in `receiver_pending` (with their
    /// lease expiry in the value) into `receiver_leased`, where a poll does not walk them.
    /// A scan of the poll queues at open; returns how many moved.
    pub(super) fn migrate_leased_entries(&self) -> Result<usize, StoreError> {
        let mut moved = 0;
        let mut batch = Vec::new();
        for item in self.t.receiver_pending.iter() {
            let (key, value) = item?;
            let Some((lease, doctype)) = parse_pending_value(&value) else {
                continue;
            };
            if lease == 0 {
                continue;
            }
            let Some(split) = key.len().checked_sub(16) else {
                continue;
            };
            let Ok(uuid) = Uuid::from_slice(&key[split..]) else {
                continue;
            };
            let mut leased = key[..split].to_vec();
            leased.extend_from_slice(&(lease as u64).to_be_bytes());
            leased.extend_from_slice(uuid.as_bytes());
            batch.push((key.to_vec(), leased, doctype.as_bytes().to_vec()));
            if batch.len() == 1000 {
                moved += batch.len();
                self.move_leased(std::mem::take(&mut batch))?;
            }
        }
        moved += batch.len();
        if !batch.is_empty() {
            self.move_leased(batch)?;
        }
        Ok(moved)
    }

    fn move_leased(&self, batch: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        self.writer.write_blocking(move |t| {
            for (pending, leased, doctype) in batch {
                t.remove(Table::ReceiverPending, pending)?;
                t.insert(Table::ReceiverLeased, leased, doctype)?;
            }
            Ok(())
        })
    }
}
