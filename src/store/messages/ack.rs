//! A receiver's acknowledgement of a transmission: its verdict recorded, and the
//! transmission taken out of its poll queue and the outbox, in one writer job.

use uuid::Uuid;

use super::poll_queue_keys;
use crate::model::Env;
use crate::store::codec::{decode, env_id};
use crate::store::deliveries::queued_push_key;
use crate::store::idempotency::Remember;
use crate::store::records::{clip, split_transmission_uuid, MessageRec, TransmissionRec};
use crate::store::tracking::MessagePut;
use crate::store::transitions::{Event, Transition};
use crate::store::writer::{Table, Tx};
use crate::store::{Store, StoreError};

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

impl Store {
    /// Records a receiver's verdict on a transmission: `ok` makes it `complete`, otherwise
    /// `failed` with `note` as the error. After it the transmission is never handed out
    /// again. Repeating the same verdict returns the same result without writing.
    #[allow(clippy::too_many_arguments)]
    pub async fn acknowledge(
        &self,
        env: Env,
        receiver: &str,
        uuid: Uuid,
        ok: bool,
        note: Option<String>,
        now: i64,
        idem: Option<Remember<AckOutcome>>,
    ) -> Result<AckOutcome, StoreError> {
        let Some((id, index)) = split_transmission_uuid(uuid) else {
            return Ok(AckOutcome::NotFound);
        };
        let mkey = env_id(env, id);
        let receiver = receiver.to_owned();
        let event = Event::Acknowledged {
            ok,
            note: note.map(clip),
        };
        self.writer
            .write(move |t| {
                let outcome = ack_job(t, env, mkey, index, &receiver, event, now)?;
                if let Some(r) = idem {
                    r.write(t, &outcome)?;
                }
                Ok(outcome)
            })
            .await
    }
}

/// The writer job of [`Store::acknowledge`].
fn ack_job(
    t: &Tx<'_>,
    env: Env,
    mkey: [u8; 17],
    index: usize,
    receiver: &str,
    event: Event,
    now: i64,
) -> Result<AckOutcome, StoreError> {
    let Some(raw) = t.get(Table::Messages, mkey)? else {
        return Ok(AckOutcome::NotFound);
    };
    let mut m: MessageRec = decode(&raw)?;
    if m.transmissions.get(index).map(|tx| tx.receiver.as_str()) != Some(receiver) {
        return Ok(AckOutcome::NotFound);
    }
    // A push still queued for it is cancelled with the acknowledgement.
    let outbox = queued_push_key(&m, index);
    let queued = poll_queue_keys(env, &m, index);
    let lost = || StoreError::Codec("lost transmission".into());
    let before = m.tracked();
    let outcome = m.apply(index, event, now);
    let view = m.transmission(index).ok_or_else(lost)?;
    match outcome {
        Transition::Same => Ok(AckOutcome::Done(view)),
        Transition::Refused => Ok(AckOutcome::Conflict(view)),
        Transition::Changed => {
            MessagePut::new(&m, before)?.write(t)?;
            for (table, key) in queued {
                t.remove(table, key)?;
            }
            if let Some(k) = outbox {
                t.remove(Table::Outbox, k)?;
            }
            Ok(AckOutcome::Done(view))
        }
    }
}
