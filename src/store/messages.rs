//! Messages, their transmissions and the per-receiver queues: intake, polling with leases,
//! acknowledgement. Every multi-tree change here is one sled transaction, and every
//! acknowledged change waits for the group commit before it returns.

use std::collections::HashMap;

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError as Abort, TransactionalTree};
use sled::Transactional;
use uuid::Uuid;

use super::codec::{
    decode, encode, env_id, parse_pending_value, partner_id, partner_prefix, pending_value,
};
use super::flusher::LARGE_WRITE_BYTES;
use super::records::{MessageRec, RequestRec, TransmissionRec};
use super::{Store, StoreError};
use crate::model::{Env, Status};

/// One message of an intake call, validated and routed.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub doctype: String,
    pub version: Option<String>,
    pub external_reference: Option<String>,
    pub content_type: String,
    pub payload: Bytes,
    /// Who gets a transmission; never empty.
    pub receivers: Vec<String>,
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

/// The result of an acknowledgement.
#[derive(Debug)]
pub enum AckOutcome {
    /// Recorded now, or recorded earlier with the same status (idempotent repeat).
    Done(TransmissionRec),
    /// Already final with a different status.
    Conflict(TransmissionRec),
    /// No such transmission for this receiver.
    NotFound,
}

type TxResult<T> = Result<T, Abort<StoreError>>;

fn abort(e: StoreError) -> Abort<StoreError> {
    Abort::Abort(e)
}

impl Store {
    /// Stores one intake call: the request, its messages, payloads, one transmission per
    /// receiver and the queue entries, all in one transaction, then waits until it is on
    /// disk. Either everything is stored or nothing.
    pub async fn accept(
        &self,
        env: Env,
        sender: &str,
        batch_reference: Option<String>,
        new: Vec<NewMessage>,
        now: i64,
    ) -> Result<(RequestRec, Vec<MessageRec>), StoreError> {
        let request_id = Uuid::now_v7();
        let mut messages = Vec::with_capacity(new.len());
        let mut rows: Vec<(MessageRec, Bytes, Vec<TransmissionRec>)> =
            Vec::with_capacity(new.len());
        let mut large = false;
        for m in new {
            let id = Uuid::now_v7();
            let txs: Vec<TransmissionRec> = m
                .receivers
                .iter()
                .map(|r| TransmissionRec {
                    uuid: Uuid::now_v7(),
                    message_id: id,
                    env,
                    sender: sender.to_owned(),
                    receiver: r.clone(),
                    doctype: m.doctype.clone(),
                    version: m.version.clone(),
                    external_reference: m.external_reference.clone(),
                    content_type: m.content_type.clone(),
                    received_at: now,
                    status: Status::Queued,
                    attempts: 0,
                    lease_until: None,
                    delivered_at: None,
                    acknowledged_at: None,
                    last_error: None,
                })
                .collect();
            large |= m.payload.len() >= LARGE_WRITE_BYTES;
            let msg = MessageRec {
                id,
                request_id,
                env,
                sender: sender.to_owned(),
                doctype: m.doctype,
                version: m.version,
                external_reference: m.external_reference,
                content_type: m.content_type,
                payload_len: m.payload.len() as u64,
                received_at: now,
                status: Status::Queued,
                history: vec![(now, Status::Queued)],
                errors: Vec::new(),
                transmissions: txs.iter().map(|t| (t.uuid, t.receiver.clone())).collect(),
                processed_at: None,
            };
            messages.push(msg.clone());
            rows.push((msg, m.payload, txs));
        }
        let request = RequestRec {
            id: request_id,
            env,
            sender: sender.to_owned(),
            batch_reference,
            received_at: now,
            messages: messages.iter().map(|m| m.id).collect(),
        };

        // Encode before the transaction: its closure runs under sled's global write lock
        // and may run more than once.
        let mut writes_msg = Vec::new();
        let mut writes_tx = Vec::new();
        for (msg, payload, txs) in &rows {
            writes_msg.push((env_id(env, msg.id), encode(msg)?, payload));
            for t in txs {
                writes_tx.push((
                    env_id(env, t.uuid),
                    encode(t)?,
                    partner_id(env, &t.receiver, t.uuid),
                    pending_value(0, &t.doctype),
                ));
            }
        }
        let request_value = encode(&request)?;
        let request_key = env_id(env, request_id);
        let sender_key = partner_id(env, sender, request_id);

        (
            &self.messages,
            &self.payloads,
            &self.transmissions,
            &self.receiver_pending,
            &self.requests,
            &self.sender_requests,
        )
            .transaction(
                |(messages, payloads, transmissions, pending, requests, by_sender)| {
                    for (key, value, payload) in &writes_msg {
                        messages.insert(key, value.as_slice())?;
                        payloads.insert(key, payload.as_ref())?;
                    }
                    for (key, value, pkey, pvalue) in &writes_tx {
                        transmissions.insert(key, value.as_slice())?;
                        pending.insert(pkey.as_slice(), pvalue.as_slice())?;
                    }
                    requests.insert(&request_key, request_value.as_slice())?;
                    by_sender.insert(sender_key.as_slice(), &[] as &[u8])?;
                    TxResult::Ok(())
                },
            )?;
        self.durable_large(large).await?;
        Ok((request, messages))
    }

    /// A message, if it exists in `env`.
    pub fn message(&self, env: Env, id: Uuid) -> Result<Option<MessageRec>, StoreError> {
        self.messages
            .get(env_id(env, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// A message's payload bytes.
    pub fn payload(&self, env: Env, message_id: Uuid) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .payloads
            .get(env_id(env, message_id))?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    /// A transmission, if it exists in `env`.
    pub fn transmission(
        &self,
        env: Env,
        uuid: Uuid,
    ) -> Result<Option<TransmissionRec>, StoreError> {
        self.transmissions
            .get(env_id(env, uuid))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// An intake request, if it exists in `env`.
    pub fn request(&self, env: Env, id: Uuid) -> Result<Option<RequestRec>, StoreError> {
        self.requests
            .get(env_id(env, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Hands out up to `filter.limit` of the receiver's pending transmissions, oldest
    /// first, skipping those under an unexpired lease. Each handed-out item counts a
    /// delivery; with a lease it is held back from other polls until the lease expires or
    /// it is acknowledged. The claim is checked and written in one transaction, so two
    /// concurrent polls never lease the same item.
    pub async fn claim(
        &self,
        env: Env,
        receiver: &str,
        filter: &PollFilter,
        now: i64,
    ) -> Result<Claimed, StoreError> {
        let mut candidates = Vec::new();
        let mut next_expiry: Option<i64> = None;
        for item in self
            .receiver_pending
            .scan_prefix(partner_prefix(env, receiver))
        {
            let (key, value) = item?;
            let Some((lease, doctype)) = parse_pending_value(&value) else {
                return Err(StoreError::Codec("bad receiver_pending entry".into()));
            };
            if filter.doctype.as_deref().is_some_and(|d| d != doctype) {
                continue;
            }
            if lease > now {
                next_expiry = Some(next_expiry.map_or(lease, |e| e.min(lease)));
                continue;
            }
            candidates.push((key, value));
            if candidates.len() >= filter.limit {
                break;
            }
        }
        if candidates.is_empty() {
            return Ok(Claimed {
                items: Vec::new(),
                next_expiry,
            });
        }

        let lease_until = (filter.lease_ms > 0).then(|| now + filter.lease_ms);
        let claimed = (&self.transmissions, &self.receiver_pending, &self.messages).transaction(
            |(transmissions, pending, messages)| {
                let mut out = Vec::with_capacity(candidates.len());
                for (key, scanned) in &candidates {
                    // Acknowledged or leased by a concurrent poll since the scan: skip.
                    if pending.get(key)?.as_ref() != Some(scanned) {
                        continue;
                    }
                    let Some(uuid) = super::codec::trailing_id(key) else {
                        continue;
                    };
                    let tkey = env_id(env, uuid);
                    let Some(raw) = transmissions.get(tkey)? else {
                        continue;
                    };
                    let mut t: TransmissionRec = decode(&raw).map_err(abort)?;
                    t.attempts = t.attempts.saturating_add(1);
                    t.lease_until = lease_until;
                    t.delivered_at.get_or_insert(now);
                    if matches!(t.status, Status::Queued | Status::Processing) {
                        t.status = Status::Processed;
                    }
                    transmissions.insert(&tkey, encode(&t).map_err(abort)?)?;
                    if let Some(until) = lease_until {
                        pending.insert(key, pending_value(until, &t.doctype))?;
                    }
                    refresh_message_status(transmissions, messages, env, t.message_id, now, None)?;
                    out.push(t);
                }
                TxResult::Ok(out)
            },
        )?;
        self.durable().await?;

        let mut items = Vec::with_capacity(claimed.len());
        for t in claimed {
            let payload = self.payload(env, t.message_id)?.unwrap_or_default();
            items.push((t, payload));
        }
        Ok(Claimed { items, next_expiry })
    }

    /// Records a receiver's verdict on a transmission: `ok` makes it `complete`, otherwise
    /// `failed` with `note` as the error. After it the transmission is never handed out
    /// again. Repeating the same verdict returns the same result without writing.
    pub async fn acknowledge(
        &self,
        env: Env,
        receiver: &str,
        uuid: Uuid,
        ok: bool,
        note: Option<String>,
        now: i64,
    ) -> Result<AckOutcome, StoreError> {
        let tkey = env_id(env, uuid);
        let pkey = partner_id(env, receiver, uuid);
        let wanted = if ok { Status::Complete } else { Status::Failed };
        let outcome = (&self.transmissions, &self.receiver_pending, &self.messages).transaction(
            |(transmissions, pending, messages)| {
                let Some(raw) = transmissions.get(tkey)? else {
                    return Ok((AckOutcome::NotFound, false));
                };
                let mut t: TransmissionRec = decode(&raw).map_err(abort)?;
                if t.receiver != receiver {
                    return Ok((AckOutcome::NotFound, false));
                }
                if t.status.is_final() {
                    let same = t.status == wanted;
                    return Ok((
                        if same {
                            AckOutcome::Done(t)
                        } else {
                            AckOutcome::Conflict(t)
                        },
                        false,
                    ));
                }
                t.status = wanted;
                t.acknowledged_at = Some(now);
                t.lease_until = None;
                if !ok {
                    t.last_error = Some(
                        note.clone()
                            .unwrap_or_else(|| "reported failed by the receiver".into()),
                    );
                }
                transmissions.insert(&tkey, encode(&t).map_err(abort)?)?;
                pending.remove(pkey.as_slice())?;
                let error = (!ok).then(|| {
                    format!(
                        "{}: {}",
                        t.receiver,
                        t.last_error.as_deref().unwrap_or_default()
                    )
                });
                refresh_message_status(transmissions, messages, env, t.message_id, now, error)?;
                Ok((AckOutcome::Done(t), true))
            },
        )?;
        let (outcome, wrote) = outcome;
        if wrote {
            self.durable().await?;
        }
        Ok(outcome)
    }
}

/// Recomputes a message's status from its transmissions (read inside the transaction, so
/// changes made earlier in it count) and records a change in its history.
fn refresh_message_status(
    transmissions: &TransactionalTree,
    messages: &TransactionalTree,
    env: Env,
    message_id: Uuid,
    now: i64,
    error: Option<String>,
) -> TxResult<()> {
    let mkey = env_id(env, message_id);
    let Some(raw) = messages.get(mkey)? else {
        return Ok(());
    };
    let mut m: MessageRec = decode(&raw).map_err(abort)?;
    let mut statuses: HashMap<Uuid, Status> = HashMap::with_capacity(m.transmissions.len());
    for (uuid, _) in &m.transmissions {
        if let Some(raw) = transmissions.get(env_id(env, *uuid))? {
            let t: TransmissionRec = decode(&raw).map_err(abort)?;
            statuses.insert(*uuid, t.status);
        }
    }
    let status = Status::of_message(statuses.values().copied());
    let changed = status != m.status;
    if !changed && error.is_none() {
        return Ok(());
    }
    if changed {
        m.status = status;
        m.history.push((now, status));
        if matches!(status, Status::Processed) || status.is_final() {
            m.processed_at.get_or_insert(now);
        }
    }
    if let Some(e) = error {
        m.errors.push(e);
    }
    messages.insert(&mkey, encode(&m).map_err(abort)?)?;
    Ok(())
}
