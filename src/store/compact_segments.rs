//! Compaction of payload segments that a few long-lived messages keep on disk.
//!
//! The sweep ([`super::retention`]) deletes a segment file only once no record points into
//! it, so one message still pending among thousands pruned keeps its whole file. Here
//! those few payloads are moved forward, so that the file can go:
//!
//! 1. The sweep's scan ([`Store::sweep_and_plan`]) picks settled segments whose live
//!    payloads fill less than `retention.compact_below` of the file, each with the messages
//!    that point into it. A segment that a job or a stored answer points into is left
//!    whole: those records go within their own, shorter, lifetimes.
//! 2. [`Store::compact_segments`] reads each payload with its checksum checked and
//!    appends it to the log. A payload that fails its checksum is not copied: its message
//!    keeps pointing at it, and whoever reads it reports it as corrupt.
//! 3. A writer job per batch of at most [`BATCH`] messages points each record at its
//!    copy, but only if the record, as it is inside the job, still points at the old
//!    place: a message pruned or changed since the scan is left as it is.
//! 4. The next sweep, which starts after those jobs were answered, finds the old file
//!    unreferenced and deletes it, unless a pin holds it.
//!
//! Crash safety follows intake's rule: the copies are appended before the job that points
//! at them is queued, and the writer's round syncs every segment written before it flushes
//! the records. A crash before that flush leaves the records pointing at the old copies,
//! still on disk; after it the new copies are durable. Either way nothing is lost; at
//! worst a copy nobody points at stays behind in a segment, for a later pass.

use std::collections::HashMap;
use std::sync::Arc;

use super::codec::{decode, encode};
use super::payload_log::{PayloadLog, PayloadRef};
use super::records::MessageRec;
use super::retention::Holder;
use super::writer::{Table, Tx};
use super::{Store, StoreError};

/// Most messages pointed at their copies by one writer job, so the intake writes that
/// share its round wait for little.
pub const BATCH: usize = 64;

/// Most payload bytes copied for one batch: a handful of large payloads make a batch of
/// their own, so a blocking thread is not held for long.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// A message whose payload is to move, as the scan saw it.
#[derive(Debug, Clone)]
struct Move {
    key: [u8; 17],
    from: PayloadRef,
}

/// A payload copied forward, waiting for its record to be pointed at the copy.
#[derive(Debug, Clone)]
struct Moved {
    key: [u8; 17],
    from: PayloadRef,
    to: PayloadRef,
}

/// A segment picked for compaction.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub segment: u32,
    /// The file's size.
    pub size: u64,
    /// Bytes of the payloads stored records point to.
    pub live_bytes: u64,
    moves: Vec<Move>,
}

/// The segments one scan found worth compacting, oldest first.
#[derive(Debug, Default, Clone)]
pub struct CompactionPlan {
    pub segments: Vec<Candidate>,
}

/// What [`Store::compact_segments`] did.
#[derive(Debug, Default, Clone)]
pub struct Compaction {
    /// Segments no record points into any more (the next sweep deletes them).
    pub emptied: Vec<u32>,
    /// Records pointed at a copy.
    pub moved: usize,
    /// Bytes appended to the log.
    pub copied_bytes: u64,
    /// Payloads that fail their checksum, left in place (their segment stays).
    pub corrupt: usize,
    /// Records pruned or changed after the scan, left as they are.
    pub changed: usize,
}

/// Picks the compactable segments while the sweep walks every stored [`PayloadRef`].
pub(super) struct Planner {
    below: f64,
    /// Settled segments still below the threshold, with the messages met so far.
    open: HashMap<u32, Candidate>,
}

impl Planner {
    /// A planner for the `settled` segments (number, size) and the fraction `below`;
    /// a fraction of 0 or less picks nothing.
    pub(super) fn new(settled: &[(u32, u64)], below: f64) -> Planner {
        let open = if below > 0.0 {
            settled
                .iter()
                .filter(|(_, size)| *size > 0)
                .map(|&(segment, size)| {
                    let c = Candidate {
                        segment,
                        size,
                        live_bytes: 0,
                        moves: Vec::new(),
                    };
                    (segment, c)
                })
                .collect()
        } else {
            HashMap::new()
        };
        Planner { below, open }
    }

    pub(super) fn note(&mut self, holder: Holder<'_>, r: &PayloadRef) {
        let Some(c) = self.open.get_mut(&r.segment) else {
            return;
        };
        c.live_bytes += u64::from(r.len);
        let key = match holder {
            Holder::Message(k) => <[u8; 17]>::try_from(k).ok(),
            Holder::Other => None,
        };
        match key {
            Some(key) if (c.live_bytes as f64) < self.below * c.size as f64 => {
                c.moves.push(Move { key, from: *r });
            }
            // Too full to be worth copying, or kept by a record that is not moved: the
            // segment stays whole, and the memory of its messages is given back at once.
            _ => {
                self.open.remove(&r.segment);
            }
        }
    }

    /// The candidates with something to move; dead segments are the sweep's.
    pub(super) fn finish(self) -> CompactionPlan {
        let mut segments: Vec<Candidate> = self
            .open
            .into_values()
            .filter(|c| !c.moves.is_empty())
            .collect();
        segments.sort_unstable_by_key(|c| c.segment);
        CompactionPlan { segments }
    }
}

impl Store {
    /// Moves the live payloads of the planned segments forward and points their messages
    /// at the copies, in writer jobs of at most [`BATCH`]. The copying runs on blocking
    /// threads. The old files stay: the next sweep deletes them.
    pub async fn compact_segments(&self, plan: CompactionPlan) -> Result<Compaction, StoreError> {
        let mut done = Compaction::default();
        for c in plan.segments {
            let mut moves = c.moves;
            let mut whole = true;
            while !moves.is_empty() {
                let batch = next_batch(&mut moves);
                let log = Arc::clone(&self.payload_log);
                let copied = tokio::task::spawn_blocking(move || copy_forward(&log, batch))
                    .await
                    .map_err(|_| StoreError::Closed)??;
                done.copied_bytes += copied.bytes;
                done.corrupt += copied.corrupt;
                whole &= copied.corrupt == 0;
                let n = copied.moved.len();
                // Queued only now that the copies are appended: the round that commits
                // the job syncs them before its flush.
                let rewritten = self
                    .writer
                    .write(move |t| rewrite_batch(t, copied.moved))
                    .await?;
                done.moved += rewritten;
                done.changed += n - rewritten;
                // Let other work have the runtime between batches.
                tokio::task::yield_now().await;
            }
            // A record not rewritten was pruned or points elsewhere now; only a damaged
            // payload still holds the segment.
            if whole {
                done.emptied.push(c.segment);
            }
        }
        Ok(done)
    }
}

/// Takes the next batch off `moves`: at most [`BATCH`] payloads and, past the first,
/// at most [`BATCH_BYTES`].
fn next_batch(moves: &mut Vec<Move>) -> Vec<Move> {
    let (mut n, mut bytes) = (0, 0u64);
    for m in moves.iter() {
        let len = u64::from(m.from.len);
        if n == BATCH || (n > 0 && bytes + len > BATCH_BYTES) {
            break;
        }
        bytes += len;
        n += 1;
    }
    moves.drain(..n).collect()
}

/// What one batch's copying did.
struct Copied {
    moved: Vec<Moved>,
    bytes: u64,
    corrupt: usize,
}

/// Reads each payload of `batch`, checksum checked, and appends it to the log. Not yet
/// durable: the writer's round that commits the records pointing at the copies syncs them.
fn copy_forward(log: &PayloadLog, batch: Vec<Move>) -> Result<Copied, StoreError> {
    let mut out = Copied {
        moved: Vec::with_capacity(batch.len()),
        bytes: 0,
        corrupt: 0,
    };
    for m in batch {
        let bytes = match log.read(&m.from) {
            Ok(b) => b,
            Err(e) if damaged(&e) => {
                tracing::warn!(
                    segment = m.from.segment,
                    offset = m.from.offset,
                    error = %e,
                    "a payload to compact is damaged; it stays where it is"
                );
                out.corrupt += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let to = log.append(&bytes)?;
        out.bytes += u64::from(to.len);
        out.moved.push(Moved {
            key: m.key,
            from: m.from,
            to,
        });
    }
    Ok(out)
}

/// Whether a read failed on the stored bytes themselves (checksum, or a file cut short),
/// not on the disk.
fn damaged(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt(_) => true,
        StoreError::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}

/// The writer job of one batch: each record that, as it is now, still points at the old
/// place is pointed at the copy. Returns how many were.
fn rewrite_batch(t: &Tx<'_>, moved: Vec<Moved>) -> Result<usize, StoreError> {
    let mut rewritten = 0;
    for m in moved {
        let Some(raw) = t.get(Table::Messages, m.key)? else {
            continue;
        };
        // A record that cannot be read stays; it is reported where it is read.
        let Ok(mut rec) = decode::<MessageRec>(&raw) else {
            continue;
        };
        if rec.payload != m.from {
            continue;
        }
        rec.payload = m.to;
        let Ok(value) = encode(&rec) else {
            continue;
        };
        t.insert(Table::Messages, m.key, value)?;
        rewritten += 1;
    }
    Ok(rewritten)
}
