//! Every change of a transmission's state, as one pure method on the message record:
//! [`MessageRec::apply`]. Store jobs get a record, apply an event and put it back; the
//! rules of what may follow what live here alone, with the table test below.
//!
//! The rules that matter most:
//! - a final status (`complete`, `failed`, `cancelled`, `invalid`) is never left, except by
//!   an admin's redelivery of a failed transmission or the release of an invalid one
//!   whose message passes validation again;
//! - a push outcome that arrives after the transmission was acknowledged, or after another
//!   outcome finished it, changes nothing;
//! - repeating an acknowledgement with the same verdict is `Same`, not a change.

use super::records::{clip, MessageRec};
use crate::model::Status;

/// Something that happens to one transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A poll handed it out, leased until then (or not leased).
    Claimed { lease_until: Option<i64> },
    /// The receiver's verdict through the API.
    Acknowledged { ok: bool, note: Option<String> },
    /// Push attempt number `attempt` was answered 2xx.
    PushDelivered { attempt: u32 },
    /// Push attempt number `attempt` failed; the next is queued at `due`.
    PushRetry {
        attempt: u32,
        due: u64,
        error: String,
    },
    /// The last push attempt failed (`attempt` 0: failed without one, e.g. a corrupt payload).
    PushFailed { attempt: u32, error: String },
    /// Its queued push moved to `due` (parked, released or migrated); no status change.
    Requeued { due: u64 },
    /// Its receiver has no push URL any more: it waits to be polled.
    ToPolling,
    /// An admin sends a failed transmission again: as a push queued at `Some(due)`, or to
    /// the poll queue.
    Redelivered { due: Option<u64> },
    /// Its message passed validation after failing it: an `invalid` transmission is queued,
    /// as a push at `Some(due)` or for polling.
    Released { due: Option<u64> },
    /// Cancelled by its sender or an admin.
    Cancelled,
    /// Its payload fails its checksum: it cannot be delivered by push or poll.
    Corrupt { error: String },
}

/// What [`MessageRec::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The record changed; store it.
    Changed,
    /// Already in the state the event asks for (an idempotent repeat): nothing to store.
    Same,
    /// Not allowed from the current status: nothing changed.
    Refused,
}

impl MessageRec {
    /// Applies `event` to transmission `index` at `now`, and refreshes the message status.
    /// Returns `Refused` for an index that does not exist.
    pub fn apply(&mut self, index: usize, event: Event, now: i64) -> Transition {
        let Some(tx) = self.transmissions.get_mut(index) else {
            return Transition::Refused;
        };
        let status = tx.status;
        let open = matches!(status, Status::Queued | Status::Processing);
        let pending = open || status == Status::Processed;
        let mut error = None;
        let result = match event {
            Event::Claimed { lease_until } if pending => {
                tx.status = Status::Processed;
                tx.attempts = tx.attempts.saturating_add(1);
                tx.lease_until = lease_until;
                tx.delivered_at.get_or_insert(now);
                Transition::Changed
            }
            Event::Acknowledged { ok, note } => {
                let wanted = if ok { Status::Complete } else { Status::Failed };
                if status == wanted {
                    Transition::Same
                } else if status.is_final() {
                    Transition::Refused
                } else {
                    tx.status = wanted;
                    tx.acknowledged_at = Some(now);
                    tx.lease_until = None;
                    tx.outbox_due = None;
                    if !ok {
                        let e = note.unwrap_or_else(|| "reported failed by the receiver".into());
                        tx.last_error = Some(clip(e.clone()));
                        error = Some(e);
                    }
                    Transition::Changed
                }
            }
            Event::PushDelivered { .. } if status == Status::Processed => Transition::Same,
            Event::PushDelivered { attempt } if open => {
                tx.status = Status::Processed;
                tx.attempts = attempt;
                tx.delivered_at = Some(now);
                tx.last_error = None;
                tx.outbox_due = None;
                Transition::Changed
            }
            Event::PushRetry {
                attempt,
                due,
                error: e,
            } if open => {
                tx.status = Status::Processing;
                tx.attempts = attempt;
                tx.last_error = Some(clip(e));
                tx.outbox_due = Some(due);
                Transition::Changed
            }
            Event::PushFailed { attempt, error: e } if open => {
                tx.status = Status::Failed;
                tx.attempts = tx.attempts.max(attempt);
                tx.last_error = Some(clip(e.clone()));
                tx.outbox_due = None;
                error = Some(e);
                Transition::Changed
            }
            Event::Requeued { due } if open => {
                if tx.outbox_due == Some(due) {
                    Transition::Same
                } else {
                    tx.outbox_due = Some(due);
                    Transition::Changed
                }
            }
            Event::ToPolling if open => {
                tx.status = Status::Queued;
                tx.outbox_due = None;
                Transition::Changed
            }
            Event::Redelivered { due } if status == Status::Failed => {
                tx.status = Status::Queued;
                tx.outbox_due = due;
                tx.acknowledged_at = None;
                Transition::Changed
            }
            Event::Released { due } if status == Status::Invalid => {
                tx.status = Status::Queued;
                tx.outbox_due = due;
                Transition::Changed
            }
            Event::Corrupt { error: e } if pending => {
                tx.status = Status::Failed;
                tx.lease_until = None;
                tx.outbox_due = None;
                tx.last_error = Some(clip(format!("payload_corrupt: {e}")));
                error = Some(format!("payload_corrupt: {e}"));
                Transition::Changed
            }
            Event::Cancelled if status == Status::Cancelled => Transition::Same,
            Event::Cancelled if pending => {
                tx.status = Status::Cancelled;
                tx.lease_until = None;
                tx.outbox_due = None;
                Transition::Changed
            }
            _ => Transition::Refused,
        };
        if result == Transition::Changed && tx.status != status {
            tx.record_status(now, tx.status);
        }
        if let Some(e) = error {
            let receiver = tx.receiver.clone();
            self.record_error(now, format!("{receiver}: {e}"));
        }
        if result == Transition::Changed {
            self.refresh_status(now);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload_log::PayloadRef;
    use super::super::records::{TransmissionState, HISTORY_KEPT};
    use super::*;
    use crate::model::Env;
    use Status::*;
    use Transition::*;

    fn message(status: Status) -> MessageRec {
        MessageRec {
            id: uuid::Uuid::nil(),
            request_id: uuid::Uuid::nil(),
            env: Env::Live,
            sender: "ACME".into(),
            doctype: "order".into(),
            version: None,
            external_reference: None,
            content_type: "application/json".into(),
            payload: PayloadRef {
                segment: 0,
                offset: 0,
                len: 0,
                crc: 0,
            },
            received_at: 0,
            status,
            history: vec![(0, status)],
            history_dropped: 0,
            errors: vec![],
            errors_dropped: 0,
            processed_at: None,
            transmissions: vec![TransmissionState {
                receiver: "GLOBEX".into(),
                status,
                attempts: 0,
                lease_until: None,
                delivered_at: None,
                acknowledged_at: None,
                last_error: None,
                outbox_due: Some(5),
                history: vec![(0, status)],
                history_dropped: 0,
            }],
            validation_errors: Vec::new(),
        }
    }

    #[test]
    fn the_transition_table() {
        let ev = |name: &str| match name {
            "claim" => Event::Claimed {
                lease_until: Some(9),
            },
            "ack" => Event::Acknowledged {
                ok: true,
                note: None,
            },
            "nack" => Event::Acknowledged {
                ok: false,
                note: None,
            },
            "delivered" => Event::PushDelivered { attempt: 1 },
            "retry" => Event::PushRetry {
                attempt: 1,
                due: 7,
                error: "HTTP 500".into(),
            },
            "fail" => Event::PushFailed {
                attempt: 1,
                error: "HTTP 500".into(),
            },
            "park" => Event::Requeued { due: 8 },
            "poll" => Event::ToPolling,
            "redeliver" => Event::Redelivered { due: Some(3) },
            "cancel" => Event::Cancelled,
            "corrupt" => Event::Corrupt {
                error: "crc".into(),
            },
            "release" => Event::Released { due: None },
            other => panic!("{other}"),
        };
        // (from, event, outcome, status after)
        let table: &[(Status, &str, Transition, Status)] = &[
            (Queued, "claim", Changed, Processed),
            (Processed, "claim", Changed, Processed),
            (Complete, "claim", Refused, Complete),
            (Failed, "claim", Refused, Failed),
            (Queued, "ack", Changed, Complete),
            (Processing, "ack", Changed, Complete),
            (Processed, "ack", Changed, Complete),
            (Complete, "ack", Same, Complete),
            (Failed, "ack", Refused, Failed),
            (Cancelled, "ack", Refused, Cancelled),
            (Processed, "nack", Changed, Failed),
            (Failed, "nack", Same, Failed),
            (Complete, "nack", Refused, Complete),
            (Queued, "delivered", Changed, Processed),
            (Processing, "delivered", Changed, Processed),
            (Processed, "delivered", Same, Processed),
            (Complete, "delivered", Refused, Complete),
            (Failed, "delivered", Refused, Failed),
            (Cancelled, "delivered", Refused, Cancelled),
            (Queued, "retry", Changed, Processing),
            (Processing, "retry", Changed, Processing),
            (Processed, "retry", Refused, Processed),
            (Complete, "retry", Refused, Complete),
            (Failed, "retry", Refused, Failed),
            (Processing, "fail", Changed, Failed),
            (Complete, "fail", Refused, Complete),
            (Cancelled, "fail", Refused, Cancelled),
            (Queued, "park", Changed, Queued),
            (Complete, "park", Refused, Complete),
            (Processing, "poll", Changed, Queued),
            (Processed, "poll", Refused, Processed),
            (Failed, "redeliver", Changed, Queued),
            (Complete, "redeliver", Refused, Complete),
            (Queued, "redeliver", Refused, Queued),
            (Queued, "cancel", Changed, Cancelled),
            (Processed, "cancel", Changed, Cancelled),
            (Cancelled, "cancel", Same, Cancelled),
            (Complete, "cancel", Refused, Complete),
            (Failed, "cancel", Refused, Failed),
            (Queued, "corrupt", Changed, Failed),
            (Processed, "corrupt", Changed, Failed),
            (Complete, "corrupt", Refused, Complete),
            (Cancelled, "corrupt", Refused, Cancelled),
            (Invalid, "release", Changed, Queued),
            (Queued, "release", Refused, Queued),
            (Failed, "release", Refused, Failed),
            (Invalid, "claim", Refused, Invalid),
            (Invalid, "ack", Refused, Invalid),
            (Invalid, "delivered", Refused, Invalid),
            (Invalid, "cancel", Refused, Invalid),
            (Invalid, "redeliver", Refused, Invalid),
        ];
        for (from, name, outcome, after) in table {
            let mut m = message(*from);
            let before = m.clone();
            let got = m.apply(0, ev(name), 100);
            assert_eq!(got, *outcome, "{from:?} + {name}");
            assert_eq!(m.transmissions[0].status, *after, "{from:?} + {name}");
            assert_eq!(
                m.status, *after,
                "message status follows: {from:?} + {name}"
            );
            if got != Changed {
                assert_eq!(format!("{m:?}"), format!("{before:?}"), "{from:?} + {name}");
            }
        }
    }

    #[test]
    fn the_outbox_position_follows_the_push() {
        let mut m = message(Queued);
        m.apply(
            0,
            Event::PushRetry {
                attempt: 1,
                due: 70,
                error: "x".into(),
            },
            1,
        );
        assert_eq!(m.transmissions[0].outbox_due, Some(70));
        m.apply(
            0,
            Event::Acknowledged {
                ok: true,
                note: None,
            },
            2,
        );
        assert_eq!(m.transmissions[0].outbox_due, None, "an ack ends the push");
        assert_eq!(m.apply(0, Event::PushDelivered { attempt: 2 }, 3), Refused);
        assert_eq!(m.apply(7, Event::Cancelled, 3), Refused, "no such index");
    }

    #[test]
    fn history_and_errors_stay_bounded() {
        let mut m = message(Queued);
        for i in 0..500 {
            m.apply(
                0,
                Event::PushRetry {
                    attempt: i,
                    due: 1,
                    error: "e".repeat(1000),
                },
                i64::from(i),
            );
            m.apply(
                0,
                Event::PushFailed {
                    attempt: i,
                    error: "boom".repeat(100),
                },
                i64::from(i),
            );
            m.apply(0, Event::Redelivered { due: Some(1) }, i64::from(i));
        }
        assert_eq!(m.history.len(), HISTORY_KEPT + 1);
        assert_eq!(m.history[0], (0, Queued), "the first entry stays");
        assert!(m.history_dropped > 1000);
        assert_eq!(m.errors.len(), super::super::records::ERRORS_KEPT);
        assert!(m.errors.iter().all(|(_, e)| e.chars().count() <= 201));
        let tx = &m.transmissions[0];
        assert_eq!(tx.history.len(), super::super::records::TX_HISTORY_KEPT + 1);
        assert_eq!(
            tx.history[0],
            (0, Queued),
            "the transmission's first entry stays"
        );
        assert!(tx.history_dropped > 1000);
        assert!(
            super::super::codec::encode(&m).unwrap().len() < 8192,
            "a long-lived record stays small"
        );
    }
}
