//! Older formats of the message record, read by [`super::MessageRec`]'s upgrade and
//! turned into today's shape.

use serde::Deserialize;
use uuid::Uuid;

use super::*;
use crate::model::{Env, Status};
use crate::store::payload_log::PayloadRef;

/// The message record of format version 1 (unbounded history, no outbox position).
#[derive(Deserialize)]
pub(super) struct MessageRecV1 {
    id: Uuid,
    request_id: Uuid,
    env: Env,
    sender: String,
    doctype: String,
    version: Option<String>,
    external_reference: Option<String>,
    content_type: String,
    payload: PayloadRef,
    received_at: i64,
    status: Status,
    history: Vec<(i64, Status)>,
    errors: Vec<String>,
    processed_at: Option<i64>,
    transmissions: Vec<TransmissionStateV1>,
}

#[derive(Deserialize)]
struct TransmissionStateV1 {
    receiver: String,
    status: Status,
    attempts: u32,
    lease_until: Option<i64>,
    delivered_at: Option<i64>,
    acknowledged_at: Option<i64>,
    last_error: Option<String>,
}

impl From<MessageRecV1> for MessageRec {
    fn from(m: MessageRecV1) -> Self {
        let mut out = MessageRec {
            id: m.id,
            request_id: m.request_id,
            env: m.env,
            sender: m.sender,
            doctype: m.doctype,
            version: m.version,
            external_reference: m.external_reference,
            content_type: m.content_type,
            payload: m.payload,
            received_at: m.received_at,
            status: m.status,
            history: Vec::new(),
            history_dropped: 0,
            errors: Vec::new(),
            errors_dropped: 0,
            processed_at: m.processed_at,
            validation_errors: Vec::new(),
            transmissions: m
                .transmissions
                .into_iter()
                .map(|t| TransmissionState {
                    history: vec![(m.received_at, t.status)],
                    history_dropped: 0,
                    receiver: t.receiver,
                    status: t.status,
                    attempts: t.attempts,
                    lease_until: t.lease_until,
                    delivered_at: t.delivered_at,
                    acknowledged_at: t.acknowledged_at,
                    last_error: t.last_error,
                    outbox_due: None,
                })
                .collect(),
        };
        // Older formats kept no time per error; the last status change is the closest.
        let at = m.history.last().map_or(m.received_at, |(at, _)| *at);
        for (at, status) in m.history {
            out.record_status(at, status);
        }
        for e in m.errors {
            out.record_error(at, e);
        }
        out
    }
}

/// The message record of format version 2 (errors without times, transmissions without
/// their own history).
#[derive(Deserialize)]
pub(super) struct MessageRecV2 {
    id: Uuid,
    request_id: Uuid,
    env: Env,
    sender: String,
    doctype: String,
    version: Option<String>,
    external_reference: Option<String>,
    content_type: String,
    payload: PayloadRef,
    received_at: i64,
    status: Status,
    history: Vec<(i64, Status)>,
    history_dropped: u32,
    errors: Vec<String>,
    errors_dropped: u32,
    processed_at: Option<i64>,
    transmissions: Vec<TransmissionStateV2>,
}

#[derive(Deserialize)]
struct TransmissionStateV2 {
    receiver: String,
    status: Status,
    attempts: u32,
    lease_until: Option<i64>,
    delivered_at: Option<i64>,
    acknowledged_at: Option<i64>,
    last_error: Option<String>,
    outbox_due: Option<u64>,
}

impl From<MessageRecV2> for MessageRec {
    fn from(m: MessageRecV2) -> Self {
        // The transmission's own history starts with its status as it was read: the
        // times of its earlier changes were not kept.
        let since = m.history.last().map_or(m.received_at, |(at, _)| *at);
        MessageRec {
            id: m.id,
            request_id: m.request_id,
            env: m.env,
            sender: m.sender,
            doctype: m.doctype,
            version: m.version,
            external_reference: m.external_reference,
            content_type: m.content_type,
            payload: m.payload,
            received_at: m.received_at,
            status: m.status,
            history: m.history,
            history_dropped: m.history_dropped,
            errors: m.errors.into_iter().map(|e| (since, e)).collect(),
            errors_dropped: m.errors_dropped,
            processed_at: m.processed_at,
            validation_errors: Vec::new(),
            transmissions: m
                .transmissions
                .into_iter()
                .map(|t| TransmissionState {
                    history: vec![(since, t.status)],
                    history_dropped: 0,
                    receiver: t.receiver,
                    status: t.status,
                    attempts: t.attempts,
                    lease_until: t.lease_until,
                    delivered_at: t.delivered_at,
                    acknowledged_at: t.acknowledged_at,
                    last_error: t.last_error,
                    outbox_due: t.outbox_due,
                })
                .collect(),
        }
    }
}
