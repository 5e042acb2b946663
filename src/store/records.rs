//! The stored shape of every entity. These are not the wire (JSON) types: the API converts
//! at its edge, so a renamed JSON field never changes what is on disk, and the reverse.
//! Times are unix milliseconds (UTC).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::payload_log::PayloadRef;
use crate::model::{Env, Status};

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

/// One push waiting for its next attempt. Key: `due (u64 BE ms) ‖ id`, so the queue is
/// read in due order. An attempt under way has its entry moved to a lease expiry, so a
/// crash mid-attempt makes it due again instead of losing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRec {
    /// Stable across retries: the `webhook-id` receivers use to drop duplicates.
    pub id: Uuid,
    pub env: Env,
    pub message_id: Uuid,
    pub index: u8,
    /// Attempts made so far.
    pub attempt: u32,
}

/// One attempt of a push. Key: `env ‖ transmission uuid ‖ attempt number (u32 BE)`.
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
    /// Every status change: (time, status).
    pub history: Vec<(i64, Status)>,
    pub errors: Vec<String>,
    /// When the message reached `processed` or a final status.
    pub processed_at: Option<i64>,
    pub transmissions: Vec<TransmissionState>,
}

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
}

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

    /// Recomputes the message status from its transmissions; records a change in the history.
    pub fn refresh_status(&mut self, now: i64) {
        let status = Status::of_message(self.transmissions.iter().map(|t| t.status));
        if status != self.status {
            self.status = status;
            self.history.push((now, status));
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
