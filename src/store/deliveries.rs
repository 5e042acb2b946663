//! The push queue: deliveries waiting for an attempt, leases for attempts under way, and
//! the log of every attempt. The delivery worker drives it; see `worker::delivery`.

use sled::IVec;
use uuid::Uuid;

use super::codec::{decode, encode, env_id, partner_id, pending_value};
use super::records::{transmission_uuid, AttemptRec, DeliveryRec, MessageRec};
use super::writer::Table;
use super::{Store, StoreError};
use crate::model::{Env, Status};

/// `due ‖ id`: queue order is due order.
pub(super) fn delivery_key(due: i64, id: Uuid) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&(due.max(0) as u64).to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

fn attempt_key(env: Env, uuid: Uuid, attempt: u32) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[..17].copy_from_slice(&env_id(env, uuid));
    k[17..].copy_from_slice(&attempt.to_be_bytes());
    k
}

/// What happens to a delivery after an attempt (or a decision not to attempt).
#[derive(Debug, Clone)]
pub enum Next {
    /// 2xx: the transmission is `processed`.
    Delivered,
    /// Try again at this time.
    RetryAt(i64),
    /// The last attempt failed: the transmission is `failed` with this error.
    Failed(String),
    /// Not attempted (push paused or endpoint disabled): look again at this time,
    /// without counting an attempt.
    HoldUntil(i64),
    /// The receiver no longer has a push URL: hand the transmission to its poll queue.
    ToPolling,
}

/// A delivery that is due, with its key as read.
pub struct Due {
    key: IVec,
    pub delivery: DeliveryRec,
}

/// A delivery leased for an attempt.
pub struct Leased {
    key: [u8; 24],
    pub delivery: DeliveryRec,
}

impl Store {
    /// Up to `limit` deliveries due at `now`, and when the next later one falls due.
    pub fn due_deliveries(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<(Vec<Due>, Option<i64>), StoreError> {
        let mut due = Vec::new();
        for item in self.t.deliveries.iter() {
            let (key, value) = item?;
            let at = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0) as i64;
            if at > now {
                return Ok((due, Some(at)));
            }
            due.push(Due {
                key,
                delivery: decode(&value)?,
            });
            if due.len() >= limit {
                break;
            }
        }
        Ok((due, None))
    }

    /// Leases due deliveries until `lease_until` (a crash during the attempt makes them
    /// due again then) and marks their transmissions `processing`.
    pub async fn lease_deliveries(
        &self,
        due: Vec<Due>,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<Leased>, StoreError> {
        self.writer
            .write(move |t| {
                let mut leased = Vec::with_capacity(due.len());
                for Due { key, delivery } in due {
                    // Taken by an earlier scan or an admin action meanwhile: skip.
                    let Some(current) = t.get(Table::Deliveries, &key)? else {
                        continue;
                    };
                    let value = current.to_vec();
                    let new_key = delivery_key(lease_until, delivery.id);
                    t.remove(Table::Deliveries, &key)?;
                    t.insert(Table::Deliveries, new_key, value)?;
                    let mkey = env_id(delivery.env, delivery.message_id);
                    if let Some(raw) = t.get(Table::Messages, mkey)? {
                        let mut m: MessageRec = decode(&raw)?;
                        if let Some(tx) = m.transmissions.get_mut(usize::from(delivery.index)) {
                            if tx.status == Status::Queued {
                                tx.status = Status::Processing;
                                m.refresh_status(now);
                                t.insert(Table::Messages, mkey, encode(&m)?)?;
                            }
                        }
                    }
                    leased.push(Leased {
                        key: new_key,
                        delivery,
                    });
                }
                Ok(leased)
            })
            .await
    }

    /// Records the end of an attempt (or of a decision not to attempt): the attempt log,
    /// the transmission's new state, and what happens to the delivery next.
    pub async fn finish_delivery(
        &self,
        leased: Leased,
        attempt: Option<AttemptRec>,
        next: Next,
        now: i64,
    ) -> Result<(), StoreError> {
        let requeued = matches!(next, Next::RetryAt(_) | Next::HoldUntil(_));
        let Leased {
            key,
            delivery: mut d,
        } = leased;
        self.writer
            .write(move |t| {
                if t.get(Table::Deliveries, key)?.is_none() {
                    return Ok(()); // redelivered or removed by an admin meanwhile
                }
                t.remove(Table::Deliveries, key)?;
                let uuid = transmission_uuid(d.message_id, usize::from(d.index));
                let mkey = env_id(d.env, d.message_id);
                let Some(raw) = t.get(Table::Messages, mkey)? else {
                    return Ok(());
                };
                let mut m: MessageRec = decode(&raw)?;
                let Some(tx) = m.transmissions.get_mut(usize::from(d.index)) else {
                    return Ok(());
                };
                if let Some(a) = &attempt {
                    d.attempt += 1;
                    tx.attempts = d.attempt;
                    tx.last_error = a.error.clone().or_else(|| {
                        a.status
                            .filter(|s| !(200..300).contains(s))
                            .map(|s| format!("HTTP {s}"))
                    });
                    t.insert(
                        Table::Attempts,
                        attempt_key(d.env, uuid, d.attempt),
                        encode(a)?,
                    )?;
                }
                match &next {
                    Next::Delivered => {
                        tx.status = Status::Processed;
                        tx.delivered_at = Some(now);
                        tx.last_error = None;
                    }
                    Next::RetryAt(at) | Next::HoldUntil(at) => {
                        tx.status = Status::Queued;
                        t.insert(Table::Deliveries, delivery_key(*at, d.id), encode(&d)?)?;
                    }
                    Next::Failed(error) => {
                        tx.status = Status::Failed;
                        tx.last_error = Some(error.clone());
                        let receiver = tx.receiver.clone();
                        m.errors.push(format!("{receiver}: {error}"));
                    }
                    Next::ToPolling => {
                        tx.status = Status::Queued;
                        let pkey = partner_id(d.env, &tx.receiver, uuid);
                        t.insert(Table::ReceiverPending, pkey, pending_value(0, &m.doctype))?;
                    }
                }
                m.refresh_status(now);
                t.insert(Table::Messages, mkey, encode(&m)?)?;
                Ok(())
            })
            .await?;
        if requeued {
            // The worker may be asleep until a later due time; let it see this one.
            self.deliveries_ready.notify_one();
        }
        Ok(())
    }

    /// Every attempt of a transmission, oldest first.
    pub fn attempts(&self, env: Env, uuid: Uuid) -> Result<Vec<(u32, AttemptRec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.attempts.scan_prefix(env_id(env, uuid)) {
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
}

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

    /// Sends failed transmissions again: each goes back to `queued`, as a new push when its
    /// receiver has a push URL for `env`, else into its poll queue. Transmissions that are
    /// not failed are left alone. Returns how many were requeued.
    pub async fn redeliver(
        &self,
        env: Env,
        targets: Vec<(Uuid, usize)>,
        now: i64,
    ) -> Result<usize, StoreError> {
        let dir = self.directory();
        let count = self
            .writer
            .write(move |t| {
                let mut count = 0;
                for (id, index) in targets {
                    let mkey = env_id(env, id);
                    let Some(raw) = t.get(Table::Messages, mkey)? else {
                        continue;
                    };
                    let mut m: MessageRec = decode(&raw)?;
                    let doctype = m.doctype.clone();
                    let Some(tx) = m.transmissions.get_mut(index) else {
                        continue;
                    };
                    if tx.status != Status::Failed {
                        continue;
                    }
                    tx.status = Status::Queued;
                    let uuid = transmission_uuid(id, index);
                    if dir
                        .partner(&tx.receiver)
                        .and_then(|p| p.push_url_for(env))
                        .is_some()
                    {
                        let d = DeliveryRec {
                            id: Uuid::now_v7(),
                            env,
                            message_id: id,
                            index: index as u8,
                            attempt: 0,
                        };
                        t.insert(Table::Deliveries, delivery_key(now, d.id), encode(&d)?)?;
                    } else {
                        let pkey = partner_id(env, &tx.receiver, uuid);
                        t.insert(Table::ReceiverPending, pkey, pending_value(0, &doctype))?;
                    }
                    m.refresh_status(now);
                    t.insert(Table::Messages, mkey, encode(&m)?)?;
                    count += 1;
                }
                Ok(count)
            })
            .await?;
        if count > 0 {
            self.deliveries_ready.notify_one();
        }
        Ok(count)
    }
}
