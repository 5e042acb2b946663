//! The sender's (or an admin's) cancellation of a message: every transmission still
//! queued or being pushed becomes `cancelled` and leaves its queue, in one writer job that
//! also keeps the tracking entry in step.

use uuid::Uuid;

use super::MessagePut;
use crate::model::{Env, Status};
use crate::store::codec::{decode, env_id};
use crate::store::deliveries::queued_push_key;
use crate::store::records::MessageRec;
use crate::store::transitions::{Event, Transition};
use crate::store::writer::{Table, Tx};
use crate::store::{Store, StoreError};

impl Store {
    /// Cancels a message for its sender (`Some`) or an admin (`None`): every transmission
    /// still queued or being pushed becomes `cancelled` and leaves its poll queue and the
    /// outbox, so it is never handed out or pushed. Refused (`Conflict`) once any
    /// transmission was delivered, fetched or finished.
    pub async fn cancel(
        &self,
        env: Env,
        id: Uuid,
        sender: Option<String>,
        now: i64,
        idem: Option<crate::store::idempotency::Remember<CancelOutcome>>,
    ) -> Result<CancelOutcome, StoreError> {
        self.writer
            .write(move |t| {
                let outcome = cancel_in(t, env, id, sender.as_deref(), now)?;
                if let Some(r) = idem {
                    r.write(t, &outcome)?;
                }
                Ok(outcome)
            })
            .await
    }

    /// Cancels many messages for an admin in one writer job (a bulk operation's batch);
    /// returns how many are cancelled now that were not before.
    pub async fn cancel_many(
        &self,
        env: Env,
        ids: Vec<Uuid>,
        now: i64,
    ) -> Result<usize, StoreError> {
        self.writer
            .write_waiting(move |t| {
                let mut n = 0;
                for id in ids {
                    let was = t
                        .get(Table::Messages, env_id(env, id))?
                        .map(|raw| decode::<MessageRec>(&raw).map(|m| m.status))
                        .transpose()?;
                    if was == Some(Status::Cancelled) {
                        continue;
                    }
                    if let CancelOutcome::Done(_) = cancel_in(t, env, id, None, now)? {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await
    }
}

/// The writer job of [`Store::cancel`].
fn cancel_in(
    t: &Tx<'_>,
    env: Env,
    id: Uuid,
    sender: Option<&str>,
    now: i64,
) -> Result<CancelOutcome, StoreError> {
    let Some(raw) = t.get(Table::Messages, env_id(env, id))? else {
        return Ok(CancelOutcome::NotFound);
    };
    let mut m: MessageRec = decode(&raw)?;
    if sender.is_some_and(|s| s != m.sender) {
        return Ok(CancelOutcome::NotFound);
    }
    if m.status == Status::Cancelled {
        return Ok(CancelOutcome::Done(m));
    }
    let open = |s: Status| matches!(s, Status::Queued | Status::Processing);
    if !m
        .transmissions
        .iter()
        .all(|tx| open(tx.status) || tx.status == Status::Cancelled)
    {
        return Ok(CancelOutcome::Conflict(m));
    }
    let before = m.tracked();
    let mut removals = Vec::new();
    for index in 0..m.transmissions.len() {
        let queued = crate::store::messages::poll_queue_keys(env, &m, index);
        let outbox = queued_push_key(&m, index);
        if m.apply(index, Event::Cancelled, now) == Transition::Changed {
            removals.extend(queued);
            removals.extend(outbox.map(|k| (Table::Outbox, k)));
        }
    }
    let put = MessagePut::new(&m, before)?;
    // Writes only from here on.
    put.write(t)?;
    for (table, key) in removals {
        t.remove(table, key)?;
    }
    Ok(CancelOutcome::Done(m))
}

/// What a cancellation did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// Cancelled now, or already cancelled.
    Done(MessageRec),
    /// Already delivered, fetched or finished: left as it is.
    Conflict(MessageRec),
    /// No such message for this sender.
    NotFound,
}
