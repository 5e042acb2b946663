//! The stored shape of every entity. These are not the wire (JSON) types: the API converts
//! at its edge, so a renamed JSON field never changes what is on disk, and the reverse.
//! Times are unix milliseconds (UTC).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Env, Status};

/// A trading partner. Key: the code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartnerRec {
    pub code: String,
    pub name: String,
    pub active: bool,
    pub push_url: Option<String>,
    pub push_headers: Vec<(String, String)>,
    pub push_params: Vec<(String, String)>,
    pub created_at: i64,
    pub updated_at: i64,
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
    pub created_at: i64,
}

/// One received document. Key: `env ‖ id`. The payload bytes live in `payloads` under
/// the same key, so scans over messages never drag payloads through the cache.
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
    pub payload_len: u64,
    pub received_at: i64,
    pub status: Status,
    /// Every status change: (time, status).
    pub history: Vec<(i64, Status)>,
    pub errors: Vec<String>,
    /// The message's transmissions: (uuid, receiver).
    pub transmissions: Vec<(Uuid, String)>,
    /// When the message reached `processed` or a final status.
    pub processed_at: Option<i64>,
}

/// The delivery of one message to one receiver. Key: `env ‖ uuid`. It repeats the
/// message's routing fields so that a poll reads one record per item, not two.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransmissionRec {
    pub uuid: Uuid,
    pub message_id: Uuid,
    pub env: Env,
    pub sender: String,
    pub receiver: String,
    pub doctype: String,
    pub version: Option<String>,
    pub external_reference: Option<String>,
    pub content_type: String,
    pub received_at: i64,
    pub status: Status,
    /// How many times it was handed out (polls) or attempted (pushes).
    pub attempts: u32,
    pub lease_until: Option<i64>,
    pub delivered_at: Option<i64>,
    pub acknowledged_at: Option<i64>,
    pub last_error: Option<String>,
}

/// One intake call and the messages it carried. Key: `env ‖ id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRec {
    pub id: Uuid,
    pub env: Env,
    pub sender: String,
    pub batch_reference: Option<String>,
    pub received_at: i64,
    pub messages: Vec<Uuid>,
}
