//! The outbox: every outbound call waiting for an attempt, one queue per endpoint, and the
//! log of every attempt. The delivery engine drives it; see `worker::delivery`.
//!
//! Key of an outbox entry: `endpoint ‖ 0xFF ‖ due (u64 BE ms) ‖ delivery id`. An endpoint's
//! entries are one range in due order, so the engine reads each endpoint's queue on its
//! own and a backlog at one receiver never hides another's work. A parked entry (its
//! endpoint is paused or disabled) has the due time [`PARKED`]: it sorts after every real
//! time, is never due, and costs nothing while it waits.
//!
//! An attempt under way is not written anywhere: its entry stays at its due time until the
//! outcome is recorded. The engine, the only reader, knows which entries it holds; after a
//! crash the entry is simply due again, so a push is retried, never lost.

use std::sync::Arc;

use uuid::Uuid;

use super::codec::{decode, encode, env_id, partner_id, pending_value, SEP};
use super::records::{
    transmission_uuid, AttemptRec, DeliveryRec, EndpointHealthRec, MessageRec, PartnerRec, Target,
    PARKED,
};
use super::subscriptions::AttemptNote;
use super::tracking::MessagePut;
use super::transitions::{Event, Transition};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::Env;

/// `endpoint ‖ 0xFF ‖ due ‖ id`.
pub(super) fn outbox_key(endpoint: &[u8], due: u64, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(endpoint.len() + 25);
    k.extend_from_slice(endpoint);
    k.push(SEP);
    k.extend_from_slice(&due.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// The endpoint, due time and id of an outbox key.
pub(super) fn split_outbox_key(key: &[u8]) -> Option<(&[u8], u64, Uuid)> {
    let split = key.len().checked_sub(25)?;
    let (endpoint, rest) = key.split_at(split);
    if rest[0] != SEP {
        return None;
    }
    let due = u64::from_be_bytes(rest[1..9].try_into().ok()?);
    Some((endpoint, due, Uuid::from_slice(&rest[9..]).ok()?))
}

fn endpoint_prefix(endpoint: &[u8]) -> Vec<u8> {
    let mut p = endpoint.to_vec();
    p.push(SEP);
    p
}

pub(super) fn attempt_key(env: Env, id: Uuid, attempt: u32) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[..17].copy_from_slice(&env_id(env, id));
    k[17..].copy_from_slice(&attempt.to_be_bytes());
    k
}

/// The outbox key of transmission `index`'s queued push, if one is queued.
pub(super) fn queued_push_key(m: &MessageRec, index: usize) -> Option<Vec<u8>> {
    let tx = m.transmissions.get(index)?;
    let due = tx.outbox_due?;
    let endpoint = super::records::push_endpoint(m.env, &tx.receiver);
    Some(outbox_key(&endpoint, due, transmission_uuid(m.id, index)))
}

/// `now` as an outbox due time.
pub fn due_at(ms: i64) -> u64 {
    ms.max(0) as u64
}

/// What happens to a delivery after an attempt, or after a decision not to make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// 2xx: done.
    Delivered,
    /// Try again at this due time.
    RetryAt(u64),
    /// No more attempts: the target fails with this error.
    Failed(String),
    /// The endpoint is paused or disabled: park it until it is released.
    Park,
    /// The receiver has no push URL any more: hand the transmission to its poll queue.
    ToPolling,
    /// What it would deliver is damaged (a payload that fails its checksum): the target
    /// fails with `payload_corrupt`, and nothing more is tried.
    Corrupt(String),
    /// Nothing left to deliver (the target is gone or already final): remove it.
    Drop,
    /// A subscription call whose URL, rendered with its ids, would be too long (the
    /// subscription's URL grew since the batch was cut): replace it with one call per group
    /// of ids, due now.
    Split(Vec<Vec<Uuid>>),
}

/// An outbox entry as read: its key and record.
#[derive(Debug, Clone)]
pub struct Queued {
    pub key: Vec<u8>,
    pub due: u64,
    pub delivery: DeliveryRec,
    /// For a push handed over by intake: the message and its payload as just stored, so
    /// the attempt need not read them back.
    pub prefetched: Option<std::sync::Arc<Prefetched>>,
}

/// A message and its payload as intake stored them.
#[derive(Debug)]
pub struct Prefetched {
    pub message: MessageRec,
    pub payload: bytes::Bytes,
}

impl Queued {
    /// The endpoint this entry is queued for.
    pub fn endpoint(&self) -> &[u8] {
        split_outbox_key(&self.key).map_or(&[][..], |(e, _, _)| e)
    }
}

/// One endpoint that has entries in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEndpoint {
    pub endpoint: Vec<u8>,
    /// The earliest due time that is not parked.
    pub first_due: Option<u64>,
    pub parked: bool,
}

/// Whether `target`'s endpoint holds its deliveries back, judged on the records inside the
/// writer's transaction (not a directory snapshot that may be a moment old). `None`: the
/// receiver no longer has a push URL.
fn held_in_tx(t: &Tx<'_>, env: Env, target: &Target) -> Result<Option<bool>, StoreError> {
    match target {
        Target::Transmission { receiver, .. } => {
            let Some(raw) = t.get(Table::Partners, receiver.as_bytes())? else {
                return Ok(None);
            };
            let p: PartnerRec = decode(&raw)?;
            if p.push_url_for(env).is_none() {
                return Ok(None);
            }
            Ok(Some(p.push_held(env).is_some()))
        }
        // A job's webhook is never held: it goes to the URL the job named.
        Target::Webhook { .. } => Ok(Some(false)),
        // A subscription's calls wait while it is turned off; `None` once it is deleted.
        Target::Subscription { subscription, .. } => {
            super::subscriptions::held_in_tx(t, env, *subscription)
        }
    }
}

/// The next free attempt number of a delivery: its own count, moved past any number already
/// logged (an attempt that finished after the delivery was queued again), so the log only
/// ever grows.
fn free_attempt_number(t: &Tx<'_>, d: &DeliveryRec) -> Result<u32, StoreError> {
    let mut n = d.attempt.saturating_add(1);
    while t
        .get(Table::Attempts, attempt_key(d.env, d.id, n))?
        .is_some()
    {
        n = n.saturating_add(1);
    }
    Ok(n)
}

impl Store {
    /// Every endpoint that has outbox entries, with its earliest due time and whether some
    /// are parked. One seek per endpoint, not a scan of the queue.
    pub fn outbox_endpoints(&self) -> Result<Vec<OutboxEndpoint>, StoreError> {
        let mut out = Vec::new();
        let mut cursor: Vec<u8> = Vec::new();
        while let Some(item) = self.t.outbox.range(cursor.as_slice()..).next() {
            let (key, _) = item?;
            let Some((endpoint, due, _)) = split_outbox_key(&key) else {
                return Err(StoreError::Codec("bad outbox key".into()));
            };
            let prefix = endpoint_prefix(endpoint);
            let parked = match self.t.outbox.scan_prefix(&prefix).next_back() {
                Some(last) => split_outbox_key(&last?.0).is_some_and(|(_, d, _)| d == PARKED),
                None => false,
            };
            out.push(OutboxEndpoint {
                endpoint: endpoint.to_vec(),
                first_due: (due != PARKED).then_some(due),
                parked,
            });
            // Past every key of this endpoint: codes never contain 0xFF, so nothing of
            // another endpoint lies between.
            cursor = prefix;
            cursor.extend_from_slice(&[0xFF; 25]);
        }
        Ok(out)
    }

    /// Up to `limit` of `endpoint`'s entries due at `now`, oldest first, leaving out those
    /// `skip` names (attempts already under way). Also returns the due time of the first
    /// entry not taken, if there is one that is not parked.
    pub fn outbox_due(
        &self,
        endpoint: &[u8],
        now: u64,
        limit: usize,
        skip: impl Fn(&Uuid) -> bool,
    ) -> Result<(Vec<Queued>, Option<u64>), StoreError> {
        let mut taken = Vec::new();
        for item in self.t.outbox.scan_prefix(endpoint_prefix(endpoint)) {
            let (key, value) = item?;
            let Some((_, due, id)) = split_outbox_key(&key) else {
                return Err(StoreError::Codec("bad outbox key".into()));
            };
            if due > now || taken.len() >= limit {
                return Ok((taken, (due != PARKED).then_some(due)));
            }
            if skip(&id) {
                continue;
            }
            taken.push(Queued {
                key: key.to_vec(),
                due,
                delivery: decode(&value)?,
                prefetched: None,
            });
        }
        Ok((taken, None))
    }

    /// Records the end of an attempt (or of a decision not to make one): the attempt log,
    /// the endpoint's health, the target's new state and what happens to the entry next.
    /// Everything is read and decoded before the first write.
    pub async fn finish_delivery(
        &self,
        queued: Queued,
        attempt: Option<AttemptRec>,
        next: Next,
        health: Option<EndpointHealthRec>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let finish = Finish {
            queued,
            attempt,
            next,
            health,
            now,
        };
        self.finish_delivery_then(finish, move |r| {
            let _ = tx.send(r);
        })?;
        // A dropped answer means the round failed before its flush.
        rx.await.map_err(|_| StoreError::FlushFailed)?
    }

    /// [`Store::finish_delivery`] for a blocking thread that does not wait: `recorded` is
    /// called on the writer thread once the outcome is durable, and dropped uncalled if
    /// its round fails. Waits only while the writer's queue is full.
    pub fn finish_delivery_then(
        &self,
        finish: Finish,
        recorded: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let Finish {
            queued,
            attempt,
            next,
            health,
            now,
        } = finish;
        let endpoint = queued.endpoint().to_vec();
        let health = health.map(|h| encode(&h)).transpose()?;
        let attempt_error = attempt.as_ref().map(AttemptRec::describe);
        let note = match (&queued.delivery.target, &attempt) {
            (Target::Subscription { ids, .. }, Some(a)) => Some(AttemptNote {
                at: a.at,
                delivery: queued.delivery.id,
                attempt: 0,
                status: a.status,
                latency_ms: a.latency_ms,
                error: a.error.clone(),
                ids: ids.len() as u32,
                test: false,
            }),
            _ => None,
        };
        let attempt = attempt.map(|a| encode(&a)).transpose()?;
        let split = matches!(next, Next::Split(_));
        let outbox = Arc::clone(&self.outbox);
        self.writer.write_then(
            move |t| {
                finish_job(
                    t,
                    queued,
                    endpoint,
                    Recorded {
                        attempt,
                        attempt_error,
                        note,
                    },
                    next,
                    health,
                    now,
                )
            },
            move |r| {
                if split && r.is_ok() {
                    outbox.rescan();
                }
                recorded(r);
            },
        )
    }
}

/// What [`Store::finish_delivery`] records.
pub struct Finish {
    pub queued: Queued,
    pub attempt: Option<AttemptRec>,
    pub next: Next,
    pub health: Option<EndpointHealthRec>,
    pub now: i64,
}

impl Store {
    /// Parks entries whose endpoint holds them back. Each is checked again inside the
    /// transaction: one whose endpoint was released meanwhile stays due.
    pub async fn park_deliveries(&self, items: Vec<Queued>, now: i64) -> Result<(), StoreError> {
        self.writer
            .write_waiting(move |t| {
                let mut moves = Vec::with_capacity(items.len());
                for q in items {
                    let d = &q.delivery;
                    if t.get(Table::Outbox, &q.key)?.is_none() {
                        continue;
                    }
                    let due = match held_in_tx(t, d.env, &d.target)? {
                        Some(true) => PARKED,
                        _ => continue,
                    };
                    let owner = owner_update(t, d, Event::Requeued { due }, now)?;
                    moves.push((q, due, owner));
                }
                for (q, due, owner) in moves {
                    let new_key = outbox_key(q.endpoint(), due, q.delivery.id);
                    t.remove(Table::Outbox, &q.key)?;
                    t.insert(Table::Outbox, new_key, encode(&q.delivery)?)?;
                    owner.write(t)?;
                }
                Ok(())
            })
            .await
    }

    /// Makes up to `limit` of an endpoint's parked entries due now, if the endpoint no
    /// longer holds them back. Returns how many were released.
    pub async fn release_parked(
        &self,
        endpoint: &[u8],
        limit: usize,
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut parked = Vec::new();
        let start = outbox_key(endpoint, PARKED, Uuid::nil());
        for item in self.t.outbox.range(start..).take(limit) {
            let (key, value) = item?;
            match split_outbox_key(&key) {
                Some((e, PARKED, _)) if e == endpoint => {}
                _ => break,
            }
            parked.push((key.to_vec(), decode::<DeliveryRec>(&value)?));
        }
        if parked.is_empty() {
            return Ok(0);
        }
        let due = due_at(now);
        self.writer
            .write_waiting(move |t| {
                let mut moves = Vec::with_capacity(parked.len());
                for (key, d) in parked {
                    if t.get(Table::Outbox, &key)?.is_none() {
                        continue;
                    }
                    if held_in_tx(t, d.env, &d.target)? == Some(true) {
                        return Ok(0); // held again meanwhile: leave them all parked
                    }
                    let owner = owner_update(t, &d, Event::Requeued { due }, now)?;
                    moves.push((key, d, owner));
                }
                let n = moves.len();
                for (key, d, owner) in moves {
                    let new_key = outbox_key(&d.target.endpoint(d.env), due, d.id);
                    t.remove(Table::Outbox, &key)?;
                    t.insert(Table::Outbox, new_key, encode(&d)?)?;
                    owner.write(t)?;
                }
                Ok(n)
            })
            .await
    }

    /// Every attempt of a delivery (for a push: of its transmission), oldest first.
    pub fn attempts(&self, env: Env, id: Uuid) -> Result<Vec<(u32, AttemptRec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.attempts.scan_prefix(env_id(env, id)) {
            let (key, value) = item?;
            let n = key
                .get(17..21)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            out.push((n, decode(&value)?));
        }
        Ok(out)
    }

    /// The highest attempt number logged for a delivery (0 if none).
    pub(super) fn last_attempt(&self, env: Env, id: Uuid) -> Result<u32, StoreError> {
        Ok(
            match self.t.attempts.scan_prefix(env_id(env, id)).next_back() {
                Some(item) => item?
                    .0
                    .get(17..21)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0),
                None => 0,
            },
        )
    }

    /// How an endpoint has been doing, as last recorded.
    pub fn endpoint_health(
        &self,
        endpoint: &[u8],
    ) -> Result<Option<EndpointHealthRec>, StoreError> {
        self.t
            .endpoint_health
            .get(endpoint)?
            .map(|v| decode(&v))
            .transpose()
    }
}

/// A change to a delivery's owner, decided before any write and written after.
pub(super) enum OwnerUpdate {
    /// Nothing to write (the owner is gone, or the event changes nothing).
    None,
    /// The message to store (with its tracking entry), and a poll queue entry to add.
    Message {
        put: Box<MessagePut>,
        pending: Option<(Vec<u8>, Vec<u8>)>,
    },
}

impl OwnerUpdate {
    pub(super) fn write(self, t: &Tx<'_>) -> Result<(), StoreError> {
        if let OwnerUpdate::Message { put, pending } = self {
            put.write(t)?;
            if let Some((k, v)) = pending {
                t.insert(Table::ReceiverPending, k, v)?;
            }
        }
        Ok(())
    }
}

/// Applies `event` to the delivery's owner, without writing. Returns the update and
/// whether the owner accepted the event (`Refused`: the delivery has nothing left to do).
fn owner_event(
    t: &Tx<'_>,
    d: &DeliveryRec,
    event: Event,
    now: i64,
) -> Result<(OwnerUpdate, Transition), StoreError> {
    match &d.target {
        Target::Transmission {
            message_id, index, ..
        } => {
            let key = env_id(d.env, *message_id);
            let Some(raw) = t.get(Table::Messages, key)? else {
                return Ok((OwnerUpdate::None, Transition::Refused));
            };
            let mut m: MessageRec = decode(&raw)?;
            let index = usize::from(*index);
            let to_polling = event == Event::ToPolling;
            let before = m.tracked();
            let outcome = m.apply(index, event, now);
            if outcome != Transition::Changed {
                return Ok((OwnerUpdate::None, outcome));
            }
            let pending = match (to_polling, m.transmissions.get(index)) {
                (true, Some(tx)) => Some((
                    partner_id(d.env, &tx.receiver, transmission_uuid(m.id, index)),
                    pending_value(0, &m.doctype),
                )),
                _ => None,
            };
            Ok((
                OwnerUpdate::Message {
                    put: Box::new(MessagePut::new(&m, before)?),
                    pending,
                },
                outcome,
            ))
        }
        // A webhook has no owner whose state its outcome changes; the attempt log is
        // its record. A subscription's record notes the attempt (see `finish_job`).
        Target::Webhook { .. } | Target::Subscription { .. } => {
            Ok((OwnerUpdate::None, Transition::Changed))
        }
    }
}

pub(super) fn owner_update(
    t: &Tx<'_>,
    d: &DeliveryRec,
    event: Event,
    now: i64,
) -> Result<OwnerUpdate, StoreError> {
    owner_event(t, d, event, now).map(|(u, _)| u)
}

/// What an attempt left to record: its log row (encoded), its error in words, and for a
/// subscription call the note its subscription's record keeps.
struct Recorded {
    attempt: Option<Vec<u8>>,
    attempt_error: Option<String>,
    note: Option<AttemptNote>,
}

/// The writer job of [`Store::finish_delivery`]: reads and decides everything, then writes.
fn finish_job(
    t: &Tx<'_>,
    queued: Queued,
    endpoint: Vec<u8>,
    recorded: Recorded,
    next: Next,
    health: Option<Vec<u8>>,
    now: i64,
) -> Result<(), StoreError> {
    let Recorded {
        attempt,
        attempt_error,
        note,
    } = recorded;
    let mut d = queued.delivery;
    let present = t.get(Table::Outbox, &queued.key)?.is_some();
    let number = match &attempt {
        Some(_) => Some(free_attempt_number(t, &d)?),
        None => None,
    };
    let attempts_made = number.unwrap_or(d.attempt);
    // A parked entry whose endpoint was released meanwhile stays due instead.
    let next = match next {
        Next::Park => match held_in_tx(t, d.env, &d.target)? {
            Some(true) => Next::Park,
            Some(false) => Next::RetryAt(due_at(now)),
            None if matches!(d.target, Target::Transmission { .. }) => Next::ToPolling,
            None => Next::Drop,
        },
        other => other,
    };
    let event = match (&next, attempt_error) {
        (Next::Delivered, _) => Some(Event::PushDelivered {
            attempt: attempts_made,
        }),
        (Next::RetryAt(due), Some(error)) => Some(Event::PushRetry {
            attempt: attempts_made,
            due: *due,
            error,
        }),
        (Next::RetryAt(due), None) => Some(Event::Requeued { due: *due }),
        (Next::Failed(e), _) => Some(Event::PushFailed {
            attempt: attempts_made,
            error: e.clone(),
        }),
        (Next::Corrupt(why), _) => Some(Event::Corrupt { error: why.clone() }),
        (Next::Park, _) => Some(Event::Requeued { due: PARKED }),
        (Next::ToPolling, _) => Some(Event::ToPolling),
        (Next::Drop, _) | (Next::Split(_), _) => None,
    };
    let (owner, accepted) = match event {
        Some(e) if present => owner_event(t, &d, e, now)?,
        _ => (OwnerUpdate::None, Transition::Refused),
    };
    let requeue = match next {
        Next::RetryAt(due) if accepted != Transition::Refused => Some(due),
        Next::Park if accepted != Transition::Refused => Some(PARKED),
        _ => None,
    };
    if let Some(n) = number {
        d.attempt = n;
        d.tries = d.tries.saturating_add(1);
    }
    let requeued = requeue
        .map(|due| encode(&d).map(|v| (due, v)))
        .transpose()?;
    let replacements = match (&next, &d.target) {
        (
            Next::Split(groups),
            Target::Subscription {
                subscription,
                event,
                occurred_at,
                ..
            },
        ) if present => groups
            .iter()
            .map(|ids| {
                let r = DeliveryRec {
                    id: Uuid::now_v7(),
                    env: d.env,
                    target: Target::Subscription {
                        subscription: *subscription,
                        event: *event,
                        ids: ids.clone(),
                        occurred_at: *occurred_at,
                    },
                    attempt: 0,
                    tries: 0,
                };
                encode(&r).map(|v| (outbox_key(&endpoint, due_at(now), r.id), v))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let sub_note = match (&d.target, note, number) {
        (Target::Subscription { subscription, .. }, Some(mut n), Some(number)) => {
            n.attempt = number;
            super::subscriptions::attempt_note_update(t, d.env, *subscription, n)?
        }
        _ => None,
    };

    // Writes only from here on.
    if let (Some(n), Some(a)) = (number, attempt) {
        t.insert(Table::Attempts, attempt_key(d.env, d.id, n), a)?;
    }
    if let Some(h) = health {
        t.insert(Table::EndpointHealth, &endpoint, h)?;
    }
    if present {
        t.remove(Table::Outbox, &queued.key)?;
        if let Some((due, value)) = requeued {
            t.insert(Table::Outbox, outbox_key(&endpoint, due, d.id), value)?;
        }
    }
    for (k, v) in replacements {
        t.insert(Table::Outbox, k, v)?;
    }
    if let Some((k, v)) = sub_note {
        t.insert(Table::Subscriptions, k, v)?;
    }
    owner.write(t)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod job_tests;
