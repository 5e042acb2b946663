//! Messages, their transmissions and the per-receiver queues: intake, polling with leases,
//! acknowledgement. Every multi-tree change here is one sled transaction, and every
//! acknowledged change waits for the group commit before it returns.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use super::codec::{
    decode, encode, env_id, parse_pending_value, partner_id, partner_prefix, pending_value,
    trailing_id,
};
use super::counters;
use super::deliveries::{due_at, outbox_key, queued_push_key, Prefetched, Queued};
use super::idempotency::IdemPut;
use super::records::{
    new_message_id, split_transmission_uuid, transmission_uuid, DeliveryRec, MessageRec,
    RequestRec, Target, TransmissionRec, TransmissionState, ValidationErrorRec,
};
use super::schemas::{reference_holder, reference_value};
use super::subscriptions::EventKind;
use super::tracking::{intake_entries, request_id_at, MessagePut};
use super::transitions::{Event, Transition};
use super::writer::{Table, LARGE_WRITE_BYTES};
use super::{Store, StoreError};
use crate::model::{Env, Status};

mod ack;
pub use ack::AckOutcome;

/// One message of an intake call, validated and routed.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub doctype: String,
    pub version: Option<String>,
    pub external_reference: Option<String>,
    pub content_type: String,
    pub payload: Bytes,
    /// Who gets a transmission; 1 to [`super::records::MAX_RECEIVERS`] partners.
    pub receivers: Vec<String>,
    /// Why the payload failed its doctype's schema; empty when it passed (or none applies).
    /// A message with errors is stored `invalid` and is neither queued nor pushed.
    pub validation_errors: Vec<ValidationErrorRec>,
}

/// Why an intake call stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Message `index` carries an `externalReference` its sender already used for the same
    /// doctype within the window (`first`: the message that holds it), or that an earlier
    /// message of the same call carries (`first` is `None`).
    #[error("external reference {reference} is already used")]
    Duplicate {
        index: usize,
        reference: String,
        first: Option<Uuid>,
    },
}

/// What a poll asks for.
#[derive(Debug, Clone)]
pub struct PollFilter {
    pub limit: usize,
    /// 0 = no lease: the items stay available to the next poll.
    pub lease_ms: i64,
    pub doctype: Option<String>,
}

/// The result of a poll: the handed-out transmissions with their payloads, and when the
/// earliest lease that held something back expires (so a long poll can wake then).
#[derive(Debug, Default)]
pub struct Claimed {
    pub items: Vec<(TransmissionRec, Bytes)>,
    pub next_expiry: Option<i64>,
}

/// A poll-queue entry found by a poll's scan.
enum Candidate {
    /// In `receiver_pending`: its key and the value scanned.
    Pending(Vec<u8>, Vec<u8>),
    /// In `receiver_leased`, with an expired lease: its key.
    Leased(Vec<u8>),
}

/// `env ‖ receiver ‖ 0xFF ‖ lease expiry ‖ transmission uuid`: a leased transmission.
pub(super) fn leased_key(env: Env, receiver: &str, lease_until: i64, uuid: Uuid) -> Vec<u8> {
    let mut k = partner_prefix(env, receiver);
    k.extend_from_slice(&(lease_until.max(0) as u64).to_be_bytes());
    k.extend_from_slice(uuid.as_bytes());
    k
}

/// The lease expiry and uuid of a [`leased_key`] whose prefix is `prefix_len` long;
/// `None` when the key belongs to another receiver (the range has ended).
fn split_leased_key(key: &[u8], prefix_len: usize) -> Option<(i64, Uuid)> {
    let rest = key.get(prefix_len..)?;
    if rest.len() != 24 {
        return None;
    }
    let lease = u64::from_be_bytes(rest[..8].try_into().ok()?);
    Some((
        i64::try_from(lease).ok()?,
        Uuid::from_slice(&rest[8..]).ok()?,
    ))
}

/// Where transmission `index` of `m` may sit in its receiver's poll queue: the pending
/// range, and the leased range when it carries a lease. Read before an event changes the
/// record, so that removing these keys takes it out wherever it is.
pub(super) fn poll_queue_keys(env: Env, m: &MessageRec, index: usize) -> Vec<(Table, Vec<u8>)> {
    let Some(tx) = m.transmissions.get(index) else {
        return Vec::new();
    };
    let uuid = transmission_uuid(m.id, index);
    let mut keys = vec![(Table::ReceiverPending, partner_id(env, &tx.receiver, uuid))];
    if let Some(until) = tx.lease_until {
        keys.push((
            Table::ReceiverLeased,
            leased_key(env, &tx.receiver, until, uuid),
        ));
    }
    keys
}

impl Store {
    /// Stores one intake call: payloads in the payload log, then the request, its messages
    /// (with their transmissions) and the queue entries in one transaction on the writer;
    /// answers once all of it is on disk. Either everything is stored or nothing is visible.
    pub async fn accept(
        &self,
        env: Env,
        sender: &str,
        batch_reference: Option<String>,
        new: Vec<NewMessage>,
        now: i64,
    ) -> Result<(RequestRec, Vec<MessageRec>), AcceptError> {
        self.accept_remembered(env, sender, batch_reference, new, now, |_, _| Ok(None))
            .await
    }

    /// [`Store::accept`], storing the answer that `answer` makes of the stored request
    /// (under its idempotency key) in the same transaction as the messages.
    pub async fn accept_remembered(
        &self,
        env: Env,
        sender: &str,
        batch_reference: Option<String>,
        new: Vec<NewMessage>,
        now: i64,
        answer: impl FnOnce(&RequestRec, &[MessageRec]) -> Result<Option<IdemPut>, StoreError>,
    ) -> Result<(RequestRec, Vec<MessageRec>), AcceptError> {
        let dir = self.directory();
        // References this sender keeps unique: checked here first, so a duplicate costs no
        // payload write, and again inside the writer job, which makes the check race-free.
        let unique = dir.partner(sender).is_some_and(|p| p.unique_references);
        let refs = if unique {
            self.unique_reference_keys(env, sender, &new, now)?
        } else {
            Vec::new()
        };
        let request_id = request_id_at(now);
        let mut messages = Vec::with_capacity(new.len());
        let mut small_payloads = Vec::with_capacity(new.len());
        for m in new {
            // Kept for the delivery engine, which then need not read it back from disk.
            small_payloads.push((m.payload.len() < LARGE_WRITE_BYTES).then(|| m.payload.clone()));
            let payload = if m.payload.len() >= LARGE_WRITE_BYTES {
                // Copying megabytes is not work for an async worker thread.
                let log = Arc::clone(&self.payload_log);
                tokio::task::spawn_blocking(move || log.append(&m.payload))
                    .await
                    .map_err(|_| StoreError::Closed)??
            } else {
                self.payload_log.append(&m.payload)?
            };
            // An invalid message is stored in its final status, out of every queue, until
            // an admin releases it (`Store::release`).
            let status = if m.validation_errors.is_empty() {
                Status::Queued
            } else {
                Status::Invalid
            };
            let transmissions = m
                .receivers
                .into_iter()
                .map(|receiver| {
                    let mut t = TransmissionState::queued(receiver, now);
                    t.status = status;
                    t.history = vec![(now, status)];
                    t
                })
                .collect();
            messages.push(MessageRec {
                id: new_message_id(),
                request_id,
                env,
                sender: sender.to_owned(),
                doctype: m.doctype,
                version: m.version,
                external_reference: m.external_reference,
                content_type: m.content_type,
                payload,
                received_at: now,
                status,
                history: vec![(now, status)],
                history_dropped: 0,
                errors: Vec::new(),
                errors_dropped: 0,
                processed_at: status.is_final().then_some(now),
                transmissions,
                validation_errors: m.validation_errors,
            });
        }
        let request = RequestRec {
            id: request_id,
            env,
            sender: sender.to_owned(),
            batch_reference,
            received_at: now,
            messages: messages.iter().map(|m| m.id).collect(),
        };

        // A receiver with a push URL for this environment gets its transmission pushed (an
        // outbox entry due now, whose id is the transmission's uuid); the others find it in
        // their poll queue.
        let due = due_at(now);
        let mut deliveries = Vec::new();
        for (n, m) in messages.iter_mut().enumerate() {
            if m.status == Status::Invalid {
                continue;
            }
            for (index, tx) in m.transmissions.iter_mut().enumerate() {
                if dir
                    .partner(&tx.receiver)
                    .and_then(|p| p.push_url_for(env))
                    .is_some()
                {
                    tx.outbox_due = Some(due);
                    let d = DeliveryRec {
                        id: transmission_uuid(m.id, index),
                        env,
                        target: Target::Transmission {
                            message_id: m.id,
                            index: index as u8,
                            receiver: tx.receiver.clone(),
                        },
                        attempt: 0,
                        tries: 0,
                    };
                    deliveries.push((n, outbox_key(&d.target.endpoint(env), due, d.id), d));
                }
            }
        }
        let mut prefetched: Vec<Option<Arc<Prefetched>>> = vec![None; messages.len()];
        let deliveries: Vec<Queued> = deliveries
            .into_iter()
            .map(|(n, key, delivery)| {
                let prefetched = match (&mut prefetched[n], small_payloads[n].take()) {
                    (Some(p), _) => Some(Arc::clone(p)),
                    (slot, Some(payload)) => {
                        let p = Arc::new(Prefetched {
                            message: messages[n].clone(),
                            payload,
                        });
                        *slot = Some(Arc::clone(&p));
                        Some(p)
                    }
                    (_, None) => None,
                };
                Queued {
                    key,
                    due,
                    delivery,
                    prefetched,
                }
            })
            .collect();
        // Encode here, off the writer thread, which only copies bytes into sled.
        let mut writes = Vec::with_capacity(messages.len());
        let mut queue = Vec::with_capacity(messages.len());
        for m in &messages {
            writes.push((env_id(env, m.id), encode(m)?));
            for (index, (uuid, receiver)) in m.transmission_refs().enumerate() {
                if m.transmissions[index].status == Status::Queued
                    && m.transmissions[index].outbox_due.is_none()
                {
                    queue.push((
                        partner_id(env, receiver, uuid),
                        pending_value(0, &m.doctype),
                    ));
                }
            }
        }
        let outbox = deliveries
            .iter()
            .map(|q| encode(&q.delivery).map(|v| (q.key.clone(), v, q.prefetched.is_some())))
            .collect::<Result<Vec<_>, _>>()?;
        let request_key = partner_id(env, sender, request_id);
        let request_value = encode(&request)?;
        let index = intake_entries(&request, &messages);
        let remembered = answer(&request, &messages)?;
        let mut counted = vec![(
            counters::rate_key(counters::Rate::Intake, now),
            messages.len() as i64,
        )];
        for m in &messages {
            counted.push((counters::message_key(env, m.status), 1));
        }
        let window = self.reference_window_ms();
        let refs: Vec<_> = refs
            .into_iter()
            .map(|(n, key)| (n, key, reference_value(messages[n].id, now)))
            .collect();
        // New transmissions for receivers whose subscriptions watch for them. Only those
        // watched now are listed; the job checks again (cheap while nothing watches).
        let mut created = Vec::new();
        if self.subs.any_active() {
            let snap = self.subs.snapshot();
            if snap.watched(env, EventKind::TransmissionCreated) {
                for m in &messages {
                    for (uuid, receiver) in m.transmission_refs() {
                        if !snap
                            .watchers(env, EventKind::TransmissionCreated, receiver)
                            .is_empty()
                        {
                            created.push((receiver.to_owned(), uuid));
                        }
                    }
                }
            }
        }

        self.writer
            .write(move |t| {
                // Checked before the first write: a refusal leaves nothing behind.
                for (n, key, _) in &refs {
                    if let Some(first) = reference_holder(t, key, now - window)? {
                        return Ok(Err((*n, first)));
                    }
                }
                for (_, key, value) in refs {
                    t.insert(Table::UniqueRefs, key, value)?;
                }
                for (key, value) in writes {
                    t.insert(Table::Messages, key, value)?;
                }
                for (key, n) in counted {
                    t.count(key, n);
                }
                for (key, value) in queue {
                    t.insert(Table::ReceiverPending, key, value)?;
                }
                for (key, value, handed) in outbox {
                    t.insert(Table::Outbox, &key, value)?;
                    if handed {
                        t.handing(&key);
                    }
                }
                for (table, key, value) in index {
                    t.insert(table, key, value)?;
                }
                if let Some(put) = remembered {
                    put.write(t)?;
                }
                for (receiver, uuid) in created {
                    t.feed(env, &receiver, EventKind::TransmissionCreated, uuid, now)?;
                }
                t.insert(Table::Requests, request_key, request_value)?;
                Ok(Ok(()))
            })
            .await?
            .map_err(|(n, first): (usize, Uuid)| AcceptError::Duplicate {
                index: n,
                reference: messages[n].external_reference.clone().unwrap_or_default(),
                first: Some(first),
            })?;
        if !deliveries.is_empty() {
            self.outbox.offer(deliveries);
        }
        Ok((request, messages))
    }

    /// A message, if it exists in `env`.
    pub fn message(&self, env: Env, id: Uuid) -> Result<Option<MessageRec>, StoreError> {
        self.t
            .messages
            .get(env_id(env, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// A message's payload bytes.
    pub fn payload(&self, message: &MessageRec) -> Result<Bytes, StoreError> {
        self.payload_log.read(&message.payload)
    }

    /// A transmission, if it exists in `env`.
    pub fn transmission(
        &self,
        env: Env,
        uuid: Uuid,
    ) -> Result<Option<TransmissionRec>, StoreError> {
        let Some((id, index)) = split_transmission_uuid(uuid) else {
            return Ok(None);
        };
        Ok(self.message(env, id)?.and_then(|m| m.transmission(index)))
    }

    /// One of `sender`'s intake requests.
    pub fn request(
        &self,
        env: Env,
        sender: &str,
        id: Uuid,
    ) -> Result<Option<RequestRec>, StoreError> {
        self.t
            .requests
            .get(partner_id(env, sender, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Hands out up to `filter.limit` of the receiver's pending transmissions, oldest
    /// first, skipping those under an unexpired lease. Each handed-out item counts a
    /// delivery; with a lease it is held back from other polls until the lease expires or
    /// it is acknowledged. The scan runs here; the claim re-checks every entry inside the
    /// writer's transaction, so two concurrent polls never lease the same item.
    ///
    /// Leased items live in `receiver_leased`, ordered by expiry, not in the pending range:
    /// a poll reads only the expired leases and the first unleased items, so its cost does
    /// not grow with the number of items under lease.
    pub async fn claim(
        &self,
        env: Env,
        receiver: &str,
        filter: &PollFilter,
        now: i64,
    ) -> Result<Claimed, StoreError> {
        let prefix = partner_prefix(env, receiver);
        let wanted = |doctype: &str| filter.doctype.as_deref().is_none_or(|d| d == doctype);
        let mut candidates: Vec<(Uuid, Candidate)> = Vec::new();
        let mut next_expiry: Option<i64> = None;
        // Leases that have run out, in expiry order, up to the first one still running.
        for item in self.t.receiver_leased.range(prefix.clone()..) {
            let (key, value) = item?;
            let Some((lease, uuid)) = split_leased_key(&key, prefix.len()) else {
                break;
            };
            if lease > now {
                next_expiry = Some(lease);
                break;
            }
            if !wanted(std::str::from_utf8(&value).unwrap_or_default()) {
                continue;
            }
            candidates.push((uuid, Candidate::Leased(key.to_vec())));
            if candidates.len() >= filter.limit {
                break;
            }
        }
        let mut unleased = 0;
        for item in self.t.receiver_pending.scan_prefix(&prefix) {
            if unleased >= filter.limit {
                break;
            }
            let (key, value) = item?;
            let Some((lease, doctype)) = parse_pending_value(&value) else {
                return Err(StoreError::Codec("bad receiver_pending entry".into()));
            };
            if !wanted(doctype) {
                continue;
            }
            if lease > now {
                // An entry written by an older build; moved at open, so none is expected.
                next_expiry = Some(next_expiry.map_or(lease, |e| e.min(lease)));
                continue;
            }
            let Some(uuid) = trailing_id(&key) else {
                continue;
            };
            candidates.push((uuid, Candidate::Pending(key.to_vec(), value.to_vec())));
            unleased += 1;
        }
        // Oldest first across both: uuids are v7, so their order is intake order.
        candidates.sort_by_key(|(uuid, _)| *uuid);
        candidates.truncate(filter.limit);
        if candidates.is_empty() {
            return Ok(Claimed {
                items: Vec::new(),
                next_expiry,
            });
        }

        let lease_until = (filter.lease_ms > 0).then(|| now + filter.lease_ms);
        let claimed = self
            .writer
            .write(move |t| {
                let mut out = Vec::with_capacity(candidates.len());
                for (uuid, candidate) in candidates {
                    // Acknowledged, leased or released by a concurrent poll since the scan: skip.
                    let still = match &candidate {
                        Candidate::Pending(key, scanned) => {
                            t.get(Table::ReceiverPending, key)?.as_deref() == Some(&scanned[..])
                        }
                        Candidate::Leased(key) => t.get(Table::ReceiverLeased, key)?.is_some(),
                    };
                    if !still {
                        continue;
                    }
                    let Some((id, index)) = split_transmission_uuid(uuid) else {
                        continue;
                    };
                    let mkey = env_id(env, id);
                    let Some(raw) = t.get(Table::Messages, mkey)? else {
                        continue;
                    };
                    let mut m: MessageRec = match decode(&raw) {
                        Ok(m) => m,
                        Err(e) => {
                            // Left in the queue, where it does not block the items behind it.
                            tracing::error!(error = %e, message = %id, "unreadable message record");
                            continue;
                        }
                    };
                    let before = m.tracked();
                    if m.apply(index, Event::Claimed { lease_until }, now) != Transition::Changed {
                        continue;
                    }
                    MessagePut::new(&m, before)?.write(t)?;
                    let receiver = &m.transmissions[index].receiver;
                    let pkey = partner_id(env, receiver, uuid);
                    match (&candidate, lease_until) {
                        (Candidate::Pending(..), None) => {}
                        (Candidate::Pending(..), Some(until)) => {
                            t.remove(Table::ReceiverPending, &pkey)?;
                            let lkey = leased_key(env, receiver, until, uuid);
                            t.insert(Table::ReceiverLeased, lkey, m.doctype.as_bytes())?;
                        }
                        (Candidate::Leased(old), None) => {
                            t.remove(Table::ReceiverLeased, old)?;
                            t.insert(Table::ReceiverPending, pkey, pending_value(0, &m.doctype))?;
                        }
                        (Candidate::Leased(old), Some(until)) => {
                            t.remove(Table::ReceiverLeased, old)?;
                            let lkey = leased_key(env, receiver, until, uuid);
                            t.insert(Table::ReceiverLeased, lkey, m.doctype.as_bytes())?;
                        }
                    }
                    out.push((m, index));
                }
                Ok(out)
            })
            .await?;

        let mut items = Vec::with_capacity(claimed.len());
        let mut corrupt = Vec::new();
        for (m, index) in claimed {
            match self.payload(&m) {
                Ok(payload) => {
                    if let Some(t) = m.transmission(index) {
                        items.push((t, payload));
                    }
                }
                // A damaged payload fails its own transmission; the queue moves on.
                Err(StoreError::Corrupt(why)) => corrupt.push((m, index, why)),
                Err(e) => return Err(e),
            }
        }
        for (m, index, why) in corrupt {
            tracing::error!(message = %m.id, %why, "a payload fails its checksum; its transmission is failed");
            self.fail_corrupt(env, m.id, index, why, now).await?;
        }
        Ok(Claimed { items, next_expiry })
    }

    /// Fails transmission `index` of message `id` because its payload is damaged, and takes it
    /// out of its receiver's queues, so it blocks nothing behind it.
    pub async fn fail_corrupt(
        &self,
        env: Env,
        id: Uuid,
        index: usize,
        why: String,
        now: i64,
    ) -> Result<(), StoreError> {
        let mkey = env_id(env, id);
        self.writer
            .write(move |t| {
                let Some(raw) = t.get(Table::Messages, mkey)? else {
                    return Ok(());
                };
                let mut m: MessageRec = decode(&raw)?;
                if m.transmissions.get(index).is_none() {
                    return Ok(());
                }
                let queued = poll_queue_keys(env, &m, index);
                let outbox = queued_push_key(&m, index);
                let event = Event::Corrupt { error: why };
                let before = m.tracked();
                if m.apply(index, event, now) != Transition::Changed {
                    return Ok(());
                }
                MessagePut::new(&m, before)?.write(t)?;
                for (table, key) in queued {
                    t.remove(table, key)?;
                }
                if let Some(k) = outbox {
                    t.remove(Table::Outbox, k)?;
                }
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests;
