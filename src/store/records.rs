//! The stored shape of every entity. These are not the wire (JSON) types: the API converts
//! at its edge, so a renamed JSON field never changes what is on disk, and the reverse.
//! Times are unix milliseconds (UTC).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode_body, Record};
use super::payload_log::PayloadRef;
use super::StoreError;
use crate::model::{Env, Status};

mod old;
use old::{MessageRecV1, MessageRecV2};

/// A trading partner. Key: the code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartnerRec {
    pub code: String,
    pub name: String,
    pub active: bool,
    pub push_url: Option<String>,
    /// Where test-environment transmissions are pushed; live and test never share a URL.
    pub test_push_url: Option<String>,
    pub push_headers: Vec<(String, String)>,
    pub push_params: Vec<(String, String)>,
    /// Secrets that sign live pushes.
    pub signing: SigningSecrets,
    /// Secrets that sign test pushes.
    pub test_signing: SigningSecrets,
    /// While true, pushes wait in the queue; nothing is lost.
    pub push_paused: bool,
    /// Push endpoints turned off (a 410 answer, or no success for too long): environment,
    /// when, and why. Their transmissions wait until an admin turns them back on.
    pub disabled_endpoints: Vec<(Env, i64, String)>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Refuse a message whose `externalReference` this sender already used for the same
    /// doctype within the retention window (see `store::schemas`).
    pub unique_references: bool,
    /// Days this partner's finished messages are kept, overriding `retention.days`; a
    /// message is kept for the longest retention among its sender and receivers.
    pub retention_days: Option<u32>,
}

impl PartnerRec {
    /// The push URL for `env`, if pushes go there.
    pub fn push_url_for(&self, env: Env) -> Option<&str> {
        match env {
            Env::Live => self.push_url.as_deref(),
            Env::Test => self.test_push_url.as_deref(),
        }
    }

    /// Why pushes to `env` are held back, if they are.
    pub fn push_held(&self, env: Env) -> Option<String> {
        if !self.active {
            return Some("the partner is inactive".into());
        }
        if self.push_paused {
            return Some("push is paused".into());
        }
        self.disabled_endpoints
            .iter()
            .find(|(e, _, _)| *e == env)
            .map(|(_, _, why)| format!("endpoint disabled: {why}"))
    }

    /// The signing secrets of `env`.
    pub fn signing_for(&self, env: Env) -> &SigningSecrets {
        match env {
            Env::Live => &self.signing,
            Env::Test => &self.test_signing,
        }
    }
}

/// A push endpoint's signing secret and, during a rotation, the one it replaces with the
/// time (unix ms) until which that one still signs too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SigningSecrets {
    pub current: String,
    pub previous: Option<(String, i64)>,
}

impl SigningSecrets {
    /// The secrets that sign at `now`: the current one, and the previous while it overlaps.
    pub fn active(&self, now: i64) -> Vec<&str> {
        let mut out = vec![self.current.as_str()];
        if let Some((old, until)) = &self.previous {
            if *until > now {
                out.push(old.as_str());
            }
        }
        out
    }
}

/// One outbound call waiting for its next attempt: a push of a transmission today, and
/// every later kind of outbound call (job webhooks, subscription callbacks) the same way.
/// Key in `outbox`: `endpoint ‖ 0xFF ‖ due (u64 BE ms) ‖ id`, so each endpoint's queue is
/// one range in due order (see `store::deliveries`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRec {
    /// Stable across retries and redeliveries: the `webhook-id` receivers use to drop
    /// duplicates, and the key of the attempt log. A push's id is its transmission's uuid.
    pub id: Uuid,
    pub env: Env,
    pub target: Target,
    /// Attempts logged so far. Numbering never restarts, so the log only grows.
    pub attempt: u32,
    /// Attempts since it was last queued: the position in the retry schedule.
    pub tries: u32,
}

impl Record for DeliveryRec {
    const VERSION: u8 = 2;
}

/// What a delivery delivers, and so where it goes and whose state its outcome changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Transmission `index` of message `message_id`, pushed to `receiver`'s push URL.
    Transmission {
        message_id: Uuid,
        index: u8,
        receiver: String,
    },
    /// The completion of background job `job_id`, announced to the `url` its partner
    /// gave. Its body is read from the job when the attempt is made.
    Webhook {
        job_id: Uuid,
        partner: String,
        url: String,
    },
    /// One batch of an event subscription: `ids` changed (`event`), the latest at
    /// `occurred_at`. The URL is the subscription's as it is when the attempt is made, with
    /// the ids in place of its placeholder; its body `{event, ids, occurredAt}`.
    Subscription {
        subscription: Uuid,
        event: super::subscriptions::EventKind,
        ids: Vec<Uuid>,
        occurred_at: i64,
    },
}

impl Target {
    /// The kind of call, as the metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Transmission { .. } => "push",
            Target::Webhook { .. } => "webhook",
            Target::Subscription { .. } => "subscription",
        }
    }
}

impl Target {
    /// The endpoint this target is delivered to: what the per-endpoint concurrency cap,
    /// parking and health are counted by. `kind ‖ env ‖ name`, never containing 0xFF.
    pub fn endpoint(&self, env: Env) -> Vec<u8> {
        match self {
            Target::Transmission { receiver, .. } => push_endpoint(env, receiver),
            Target::Webhook { partner, .. } => super::background::webhook_endpoint(env, partner),
            Target::Subscription { subscription, .. } => {
                super::subscriptions::subscription_endpoint(env, *subscription)
            }
        }
    }
}

/// The endpoint key of `receiver`'s push URL in `env`: `p ‖ env ‖ code`.
pub fn push_endpoint(env: Env, receiver: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + receiver.len());
    k.push(b'p');
    k.push(env.byte());
    k.extend_from_slice(receiver.as_bytes());
    k
}

/// The delivery record before kinds existed (format version 1): always a push.
#[derive(Serialize, Deserialize)]
pub struct DeliveryRecV1 {
    pub id: Uuid,
    pub env: Env,
    pub message_id: Uuid,
    pub index: u8,
    pub attempt: u32,
}

impl Record for DeliveryRecV1 {}

/// How one endpoint has been doing, kept across restarts so that
/// `delivery.disable_after_hours` counts from the first failure even after one. Key in
/// `endpoint_health`: the endpoint key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealthRec {
    /// The last successful call (written at most once a minute while all is well).
    pub last_success_at: Option<i64>,
    /// The first failure since the last success; `None` while healthy.
    pub failing_since: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub last_error: Option<String>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

impl Record for EndpointHealthRec {}

/// One attempt of an outbound call. Key: `env ‖ delivery id ‖ attempt number (u32 BE)`
/// (a push's delivery id is its transmission uuid).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRec {
    pub at: i64,
    pub url: String,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The first KiB of the answer.
    pub response: String,
    pub error: Option<String>,
}

impl Record for AttemptRec {}

impl AttemptRec {
    /// What went wrong in this attempt, in a few words (or `HTTP 200` when nothing did).
    pub fn describe(&self) -> String {
        match (&self.error, self.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) => format!("HTTP {s}"),
            (None, None) => "no answer".into(),
        }
    }
}

/// An API key. Key: its id. Only the SHA-256 of the secret is stored; the secret has
/// ≥ 128 random bits, so a fast hash is enough (a slow password hash would add
/// milliseconds to every request without making a random key any harder to guess).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRec {
    pub id: Uuid,
    pub partner: String,
    pub env: Env,
    pub label: Option<String>,
    /// The first characters of the key, shown in listings so people can tell keys apart.
    pub prefix: String,
    pub hash: [u8; 32],
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl Record for ApiKeyRec {}

/// The key that signs partner tokens. Key in `meta`: `token_key`. Made once, at the first
/// start, from the OS random source; it never leaves the store except into memory.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenKeyRec {
    pub id: Uuid,
    /// 256 random bits.
    pub secret: Vec<u8>,
    pub created_at: i64,
}

impl std::fmt::Debug for TokenKeyRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeyRec")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl Record for TokenKeyRec {}
impl Record for PartnerRec {
    const VERSION: u8 = 3;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        match version {
            // Version 2 added `unique_references` at the end and version 3
            // `retention_days`; `false` and `None` each encode as one 0 byte.
            1 => decode_body(&appended_zero(&appended_zero(body))),
            2 => decode_body(&appended_zero(body)),
            v => Err(StoreError::Codec(format!("unknown partner version {v}"))),
        }
    }
}

/// `body` with one 0 byte after it: how bincode writes a trailing `false`, `0` or empty
/// list. A record that grew by one such field at its end reads its older form this way.
fn appended_zero(body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 1);
    b.extend_from_slice(body);
    b.push(0);
    b
}
impl Record for RouteRec {}
impl Record for RequestRec {}

/// The validator of one `(doctype, version)`. Key in `schemas`: its id. At most one per
/// pair: registering the pair again replaces it in the same write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaRec {
    pub id: Uuid,
    pub doctype: String,
    /// A message version, or `*` for messages of every version (and of none).
    pub version: String,
    /// A JSON Schema (draft 2020-12) as the admin sent it, for JSON payloads.
    pub json_schema: Option<String>,
    /// The name the root element of an XML payload must have.
    pub xml_root: Option<String>,
    pub max_bytes: Option<u64>,
    /// Media types (`type/subtype`, lowercase) a payload may have; empty = any.
    pub content_types: Vec<String>,
    pub created_at: i64,
}

impl Record for SchemaRec {}

/// Allows `sender` to send `doctype` (or any, `*`) to `receiver`. Key: its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRec {
    pub id: Uuid,
    pub sender: String,
    pub receiver: String,
    pub doctype: String,
    /// Applies to live traffic only; test messages cannot use it.
    pub live_only: bool,
    pub created_at: i64,
}

/// One received document and its transmissions. Key: `env ‖ id`.
///
/// The message id is a v7 UUID whose last byte is 0; transmission `i` has the same UUID
/// with last byte `i + 1` (see [`transmission_uuid`]). A transmission is always written
/// with its message (intake, poll, acknowledgement all change both), so it lives inside
/// the message record: one read and one write instead of two, and no uuid → message index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRec {
    pub id: Uuid,
    pub request_id: Uuid,
    pub env: Env,
    pub sender: String,
    pub doctype: String,
    pub version: Option<String>,
    pub external_reference: Option<String>,
    pub content_type: String,
    /// Where the payload bytes are (they live outside sled).
    pub payload: PayloadRef,
    pub received_at: i64,
    pub status: Status,
    /// Status changes: (time, status). The first and the most recent
    /// [`HISTORY_KEPT`] are kept; `history_dropped` counts those left out between.
    pub history: Vec<(i64, Status)>,
    pub history_dropped: u32,
    /// The most recent [`ERRORS_KEPT`] errors with their times (receiver-reported
    /// failures, failed pushes, damaged payloads); `errors_dropped` counts older ones.
    pub errors: Vec<(i64, String)>,
    pub errors_dropped: u32,
    /// When the message reached `processed` or a final status.
    pub processed_at: Option<i64>,
    pub transmissions: Vec<TransmissionState>,
    /// Why the payload failed its doctype's schema, while the message is `invalid`: at
    /// most [`VALIDATION_ERRORS_KEPT`], in the order the validator found them.
    pub validation_errors: Vec<ValidationErrorRec>,
}

/// One reason a payload failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrorRec {
    /// JSON pointer to the failing place in the payload (`""` = the whole document).
    pub pointer: String,
    /// The schema keyword that failed (`required`, `type`, …), or the check for non-JSON
    /// rules (`maxBytes`, `contentType`, `wellFormed`, `rootElement`).
    pub keyword: String,
    pub message: String,
}

/// Validation errors kept per message.
pub const VALIDATION_ERRORS_KEPT: usize = 20;

impl Record for MessageRec {
    const VERSION: u8 = 4;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        match version {
            1 => Ok(decode_body::<MessageRecV1>(body)?.into()),
            2 => Ok(decode_body::<MessageRecV2>(body)?.into()),
            // Version 4 added `validation_errors` at the end; an empty list is one 0 byte.
            3 => decode_body(&appended_zero(body)),
            v => Err(StoreError::Codec(format!("unknown message version {v}"))),
        }
    }
}

/// Status changes kept besides the first (received) one.
pub const HISTORY_KEPT: usize = 15;
/// Errors kept per message.
pub const ERRORS_KEPT: usize = 20;
/// Status changes kept per transmission besides its first. Small, because a message may
/// fan out to [`MAX_RECEIVERS`] transmissions and its record must stay under the limit.
pub const TX_HISTORY_KEPT: usize = 7;
/// The longest error text stored (longer ones are cut at a character boundary).
pub const ERROR_CHARS: usize = 200;

/// The delivery state of a message to one receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransmissionState {
    pub receiver: String,
    pub status: Status,
    /// How many times it was handed out (polls) or attempted (pushes).
    pub attempts: u32,
    pub lease_until: Option<i64>,
    pub delivered_at: Option<i64>,
    pub acknowledged_at: Option<i64>,
    pub last_error: Option<String>,
    /// While a push of it is queued: the due time in the key of its outbox entry
    /// ([`PARKED`] while its endpoint is paused or disabled), so an acknowledgement or a
    /// cancellation can remove it.
    pub outbox_due: Option<u64>,
    /// Status changes: (time, status), the first and the [`TX_HISTORY_KEPT`] most recent;
    /// `history_dropped` counts those left out between.
    pub history: Vec<(i64, Status)>,
    pub history_dropped: u32,
}

impl TransmissionState {
    /// A new transmission to `receiver`, queued at `now`.
    pub fn queued(receiver: String, now: i64) -> TransmissionState {
        TransmissionState {
            receiver,
            status: Status::Queued,
            attempts: 0,
            lease_until: None,
            delivered_at: None,
            acknowledged_at: None,
            last_error: None,
            outbox_due: None,
            history: vec![(now, Status::Queued)],
            history_dropped: 0,
        }
    }

    /// Adds a status change to the history, keeping the first and the most recent.
    pub fn record_status(&mut self, at: i64, status: Status) {
        if self.history.len() > TX_HISTORY_KEPT {
            self.history.remove(1);
            self.history_dropped = self.history_dropped.saturating_add(1);
        }
        self.history.push((at, status));
    }
}

/// The due time of a parked outbox entry: after every real time, so it is never due.
pub const PARKED: u64 = u64::MAX;

/// Most receivers one message may fan out to (the ordinal must fit the uuid's last byte).
pub const MAX_RECEIVERS: usize = 255;

/// A fresh message id: a v7 UUID with its last byte cleared for transmission ordinals.
pub fn new_message_id() -> Uuid {
    let mut b = *Uuid::now_v7().as_bytes();
    b[15] = 0;
    Uuid::from_bytes(b)
}

/// The uuid of transmission `index` of message `id`.
pub fn transmission_uuid(id: Uuid, index: usize) -> Uuid {
    let mut b = *id.as_bytes();
    b[15] = (index + 1) as u8;
    Uuid::from_bytes(b)
}

/// The message and transmission index a transmission uuid belongs to.
pub fn split_transmission_uuid(uuid: Uuid) -> Option<(Uuid, usize)> {
    let mut b = *uuid.as_bytes();
    let ordinal = b[15];
    if ordinal == 0 {
        return None;
    }
    b[15] = 0;
    Some((Uuid::from_bytes(b), usize::from(ordinal - 1)))
}

/// A transmission as the API shows it: its state plus the message fields it carries.
#[derive(Debug, Clone)]
pub struct TransmissionRec {
    pub uuid: Uuid,
    pub message_id: Uuid,
    pub env: Env,
    pub sender: String,
    pub doctype: String,
    pub version: Option<String>,
    pub external_reference: Option<String>,
    pub content_type: String,
    pub received_at: i64,
    pub state: TransmissionState,
}

impl MessageRec {
    /// Transmission `index` as the API shows it.
    pub fn transmission(&self, index: usize) -> Option<TransmissionRec> {
        let state = self.transmissions.get(index)?.clone();
        Some(TransmissionRec {
            uuid: transmission_uuid(self.id, index),
            message_id: self.id,
            env: self.env,
            sender: self.sender.clone(),
            doctype: self.doctype.clone(),
            version: self.version.clone(),
            external_reference: self.external_reference.clone(),
            content_type: self.content_type.clone(),
            received_at: self.received_at,
            state,
        })
    }

    /// (uuid, receiver) of every transmission.
    pub fn transmission_refs(&self) -> impl Iterator<Item = (Uuid, &str)> + '_ {
        self.transmissions
            .iter()
            .enumerate()
            .map(|(i, t)| (transmission_uuid(self.id, i), t.receiver.as_str()))
    }

    /// Adds a status change to the history, keeping the first entry and the most recent
    /// [`HISTORY_KEPT`], so the record stays small however long the message lives.
    pub fn record_status(&mut self, at: i64, status: Status) {
        if self.history.len() > HISTORY_KEPT {
            self.history.remove(1);
            self.history_dropped = self.history_dropped.saturating_add(1);
        }
        self.history.push((at, status));
    }

    /// Adds an error that happened at `at`, keeping the most recent [`ERRORS_KEPT`], each
    /// cut to [`ERROR_CHARS`].
    pub fn record_error(&mut self, at: i64, error: String) {
        if self.errors.len() >= ERRORS_KEPT {
            self.errors.remove(0);
            self.errors_dropped = self.errors_dropped.saturating_add(1);
        }
        self.errors.push((at, clip(error)));
    }

    /// Recomputes the message status from its transmissions; records a change in the history.
    pub fn refresh_status(&mut self, now: i64) {
        let status = Status::of_message(self.transmissions.iter().map(|t| t.status));
        if status != self.status {
            self.status = status;
            self.record_status(now, status);
            if matches!(status, Status::Processed) || status.is_final() {
                self.processed_at.get_or_insert(now);
            }
        }
    }
}

/// One intake call and the messages it carried. Key: `env ‖ sender ‖ 0xFF ‖ id`, so a
/// sender's requests are one time-ordered range (tracking) and only its own are reachable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRec {
    pub id: Uuid,
    pub env: Env,
    pub sender: String,
    pub batch_reference: Option<String>,
    pub received_at: i64,
    pub messages: Vec<Uuid>,
}

/// `text` cut to at most [`ERROR_CHARS`] characters, marked with an ellipsis when cut.
pub fn clip(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(ERROR_CHARS) {
        text.truncate(at);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests;
