//! Bulk operations: an admin's cancel or redelivery of every message a filter matches,
//! worked through in the background (`worker::bulk`) in bounded batches, with a progress
//! count the admin follows.
//!
//! Tree `bulk_ops`: operation id (v7) → [`BulkRec`]. The record is the whole state of the
//! operation: its filter, where its scan stands and its counts, so a restart goes on
//! where the last stored batch ended. An operation first counts what its filter matches
//! (`total`), then acts on it, both passes reading the `messages` tree backwards from the
//! operation's start, so messages that arrive later are not part of it. A batch that is
//! applied but not yet recorded is applied again after a crash, which is harmless: a
//! cancelled message stays cancelled, and only failed transmissions are redelivered.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode, encode, env_id, Record};
use super::listing::MessageQuery;
use super::records::MessageRec;
use super::writer::Table;
use super::{Store, StoreError};

/// What a bulk operation does to each matching message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkAction {
    Cancel,
    Redeliver,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Cancel => "cancel",
            BulkAction::Redeliver => "redeliver",
        }
    }

    pub fn parse(raw: &str) -> Option<BulkAction> {
        match raw {
            "cancel" => Some(BulkAction::Cancel),
            "redeliver" => Some(BulkAction::Redeliver),
            _ => None,
        }
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkState {
    /// Counting what the filter matches.
    Counting,
    /// Acting on the matches.
    Running,
    Completed,
    /// Stopped by an error that retrying would not mend (a damaged record).
    Failed,
}

impl BulkState {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkState::Counting => "counting",
            BulkState::Running => "running",
            BulkState::Completed => "completed",
            BulkState::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, BulkState::Completed | BulkState::Failed)
    }
}

/// A bulk operation. Key: its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkRec {
    pub id: Uuid,
    pub action: BulkAction,
    pub query: MessageQuery,
    pub state: BulkState,
    /// Messages with ids below this one are covered: the operation's start, at first.
    pub position: Uuid,
    /// Messages the filter matched (known once counting is done).
    pub total: u64,
    /// Matching messages acted on so far.
    pub processed: u64,
    /// Of those, messages the action changed (a message already cancelled, or one with
    /// no failed transmission to redeliver, is processed but not changed).
    pub changed: u64,
    /// `token` or `user:NAME`.
    pub actor: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

impl Record for BulkRec {}

/// Records looked at per batch, and matches acted on per batch (one writer job).
pub const BATCH_SCAN: usize = 2000;
pub const BATCH_ACT: usize = 200;

/// What one batch of an operation's scan found.
pub struct BulkBatch {
    /// Matching messages (at most [`BATCH_ACT`] while acting; while counting, only
    /// counted).
    pub matches: Vec<MessageRec>,
    pub counted: u64,
    /// The lowest id looked at: where the next batch starts.
    pub position: Uuid,
    /// Nothing is left below `position`.
    pub exhausted: bool,
}

impl Store {
    /// Stores a new or updated operation.
    pub async fn put_bulk(&self, rec: BulkRec) -> Result<(), StoreError> {
        let value = encode(&rec)?;
        self.writer
            .write_waiting(move |t| t.insert(Table::BulkOps, rec.id.as_bytes(), value))
            .await
    }

    /// One operation.
    pub fn bulk(&self, id: Uuid) -> Result<Option<BulkRec>, StoreError> {
        self.t
            .bulk_ops
            .get(id.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Operations newest first, with ids below `before`; at most `limit`.
    pub fn bulk_list(
        &self,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<BulkRec>, StoreError> {
        let high = before.unwrap_or(Uuid::max());
        let mut out = Vec::new();
        for item in self.t.bulk_ops.range(..high.as_bytes().to_vec()).rev() {
            let (_, v) = item?;
            out.push(decode(&v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Operations not yet finished, oldest first (at most 100).
    pub fn bulk_unfinished(&self) -> Result<Vec<BulkRec>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.bulk_ops.iter() {
            let (_, v) = item?;
            let rec: BulkRec = decode(&v)?;
            if !rec.state.is_final() {
                out.push(rec);
                if out.len() >= 100 {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The next batch of an operation's scan. Blocking: call it off the async threads.
    pub fn bulk_scan(&self, rec: &BulkRec) -> Result<BulkBatch, StoreError> {
        let env = rec.query.env;
        let low = env_id(env, Uuid::nil());
        let high = env_id(env, rec.position);
        let counting = rec.state == BulkState::Counting;
        let mut batch = BulkBatch {
            matches: Vec::new(),
            counted: 0,
            position: rec.position,
            exhausted: true,
        };
        let mut scanned = 0usize;
        for item in self.t.messages.range(low..high).rev() {
            let (_, v) = item?;
            let m: MessageRec = decode(&v)?;
            scanned += 1;
            batch.position = m.id;
            if rec.query.matches(&m) {
                batch.counted += 1;
                if !counting {
                    batch.matches.push(m);
                }
            }
            if scanned >= BATCH_SCAN || batch.matches.len() >= BATCH_ACT {
                batch.exhausted = false;
                break;
            }
        }
        Ok(batch)
    }
}
