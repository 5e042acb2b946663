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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    use bytes::Bytes;
    use uuid::Uuid;

    use super::*;
    use crate::model::Env;
    use crate::store::codec::env_id;
    use crate::store::NewMessage;

    const ENV: Env = Env::Live;

    fn payload(n: usize) -> Vec<u8> {
        format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(1000)).into_bytes()
    }

    /// Stores `n` messages in the current segment and returns their ids, in order.
    async fn store_messages(store: &Store, n: usize) -> Vec<Uuid> {
        let new = (0..n)
            .map(|i| NewMessage {
                doctype: "order".into(),
                version: None,
                external_reference: None,
                content_type: "application/json".into(),
                payload: Bytes::from(payload(i)),
                receivers: vec!["GLOBEX".into()],
                validation_errors: Vec::new(),
            })
            .collect();
        let (_, msgs) = store.accept(ENV, "ACME", None, new, 1_000).await.unwrap();
        msgs.iter().map(|m| m.id).collect()
    }

    /// Removes the records of `ids`, as the pruner would (their other rows do not matter
    /// to the payload log).
    async fn drop_messages(store: &Store, ids: &[Uuid]) {
        let keys: Vec<[u8; 17]> = ids.iter().map(|id| env_id(ENV, *id)).collect();
        store
            .writer
            .write(move |t| {
                for k in keys {
                    t.remove(Table::Messages, k)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    fn payload_ref(store: &Store, id: Uuid) -> PayloadRef {
        store.message(ENV, id).unwrap().unwrap().payload
    }

    fn read(store: &Store, id: Uuid) -> Vec<u8> {
        let m = store.message(ENV, id).unwrap().unwrap();
        store.payload(&m).unwrap().to_vec()
    }

    fn segment_file(dir: &Path, n: u32) -> std::path::PathBuf {
        dir.join(format!("payloads/{n:08}.seg"))
    }

    /// A store whose segment 1 holds 40 payloads of which only the messages `kept` (by
    /// index) are left, reopened so that segment 1 is settled. Returns the kept ids.
    async fn mostly_dead_segment(dir: &Path, kept: &[usize]) -> (Store, Vec<Uuid>) {
        let store = Store::open(dir, 8).unwrap();
        let ids = store_messages(&store, 40).await;
        let (mut keep, mut gone) = (Vec::new(), Vec::new());
        for (i, id) in ids.into_iter().enumerate() {
            if kept.contains(&i) {
                keep.push(id);
            } else {
                gone.push(id);
            }
        }
        drop_messages(&store, &gone).await;
        store.close();
        drop(store);
        let store = Store::open(dir, 8).unwrap();
        (store, keep)
    }

    #[test]
    fn only_settled_segments_mostly_dead_and_held_by_messages_alone_are_picked() {
        let mut p = Planner::new(&[(1, 1000), (2, 1000), (3, 1000), (4, 0)], 0.25);
        let at = |segment, len| PayloadRef {
            segment,
            offset: 0,
            len,
            crc: 0,
        };
        let key = [1u8; 17];
        p.note(Holder::Message(&key), &at(1, 100));
        p.note(Holder::Message(&key), &at(1, 100));
        p.note(Holder::Message(&key), &at(2, 200));
        p.note(Holder::Message(&key), &at(2, 100));
        p.note(Holder::Message(&key), &at(3, 10));
        p.note(Holder::Other, &at(3, 10));
        p.note(Holder::Message(&key), &at(9, 10));
        let plan = p.finish();
        let picked: Vec<u32> = plan.segments.iter().map(|c| c.segment).collect();
        assert_eq!(picked, [1], "2 is 30% live, 3 holds a job's payload");
        assert_eq!(plan.segments[0].live_bytes, 200);
        assert_eq!(plan.segments[0].moves.len(), 2);

        let mut off = Planner::new(&[(1, 1000)], 0.0);
        off.note(Holder::Message(&key), &at(1, 1));
        assert!(
            off.finish().segments.is_empty(),
            "0 switches compaction off"
        );
    }

    #[tokio::test]
    async fn live_payloads_move_forward_and_the_next_sweep_deletes_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, kept) = mostly_dead_segment(dir.path(), &[3, 17, 38]).await;
        let before: Vec<Vec<u8>> = kept.iter().map(|id| read(&store, *id)).collect();
        assert!(kept.iter().all(|id| payload_ref(&store, *id).segment == 1));
        let old_size = std::fs::metadata(segment_file(dir.path(), 1))
            .unwrap()
            .len();

        let sweep = store.sweep_and_plan(now(), 0.25).unwrap();
        assert!(
            sweep.deleted.is_empty(),
            "segment 1 still holds live payloads"
        );
        assert_eq!(sweep.compactable.segments.len(), 1);
        let c = &sweep.compactable.segments[0];
        assert_eq!((c.segment, c.size), (1, old_size));
        let live: u64 = before.iter().map(|p| p.len() as u64).sum();
        assert_eq!(c.live_bytes, live);

        let done = store.compact_segments(sweep.compactable).await.unwrap();
        assert_eq!(done.emptied, [1]);
        assert_eq!((done.moved, done.changed, done.corrupt), (3, 0, 0));
        assert_eq!(done.copied_bytes, live);
        for (id, bytes) in kept.iter().zip(&before) {
            assert_eq!(payload_ref(&store, *id).segment, 2);
            assert_eq!(&read(&store, *id), bytes);
        }

        // A pin (a backup copying the files) holds the old file; then the sweep takes it.
        let pin = store.payload_log.pin_segments();
        let held = store.sweep_and_plan(now(), 0.25).unwrap();
        assert_eq!(held.pinned, 1);
        assert!(segment_file(dir.path(), 1).exists());
        drop(pin);
        let swept = store.sweep_and_plan(now(), 0.25).unwrap();
        assert_eq!(swept.deleted, [1]);
        assert_eq!(swept.freed_bytes, old_size);
        assert!(swept.compactable.segments.is_empty());
        assert!(!segment_file(dir.path(), 1).exists());

        store.close();
        drop(store);
        let store = Store::open(dir.path(), 8).unwrap();
        for (id, bytes) in kept.iter().zip(&before) {
            assert_eq!(&read(&store, *id), bytes, "served after a restart");
        }
    }

    #[tokio::test]
    async fn a_record_changed_since_the_scan_and_a_damaged_payload_stay_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let (store, kept) = mostly_dead_segment(dir.path(), &[1, 2, 3]).await;
        let plan = store.sweep_and_plan(now(), 0.25).unwrap().compactable;
        assert_eq!(plan.segments[0].moves.len(), 3);

        // After the scan: one message is pruned, another's payload is damaged on disk.
        drop_messages(&store, &kept[..1]).await;
        let damaged = payload_ref(&store, kept[1]);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment_file(dir.path(), 1))
            .unwrap();
        file.write_all_at(b"#", damaged.offset + 5).unwrap();

        let done = store.compact_segments(plan).await.unwrap();
        assert_eq!((done.moved, done.changed, done.corrupt), (1, 1, 1));
        assert!(
            done.emptied.is_empty(),
            "the damaged payload holds segment 1"
        );
        assert!(store.message(ENV, kept[0]).unwrap().is_none());
        assert_eq!(payload_ref(&store, kept[1]), damaged, "left as it was");
        assert!(matches!(
            store.payload(&store.message(ENV, kept[1]).unwrap().unwrap()),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(payload_ref(&store, kept[2]).segment, 2);

        let sweep = store.sweep_and_plan(now(), 0.25).unwrap();
        assert!(sweep.deleted.is_empty());
        assert!(segment_file(dir.path(), 1).exists());
    }

    #[tokio::test]
    async fn a_copy_is_durable_before_any_record_points_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, kept) = mostly_dead_segment(dir.path(), &[7]).await;
        let original = read(&store, kept[0]);
        let mut plan = store.sweep_and_plan(now(), 0.25).unwrap().compactable;
        let moves = std::mem::take(&mut plan.segments[0].moves);

        // Copied, not yet pointed at: the record keeps the old place, which a sweep keeps.
        let copied = copy_forward(&store.payload_log, moves).unwrap();
        let to = copied.moved[0].to;
        assert_eq!(to.segment, 2);
        assert!(store.payload_log.unsynced(2), "the append waits for a sync");
        assert_eq!(payload_ref(&store, kept[0]).segment, 1);
        let sweep = store.sweep_and_plan(now(), 0.25).unwrap();
        assert!(sweep.deleted.is_empty());
        assert!(segment_file(dir.path(), 1).exists());

        // The round that commits the new reference synced the copy before answering.
        let n = store
            .writer
            .write(move |t| rewrite_batch(t, copied.moved))
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(!store.payload_log.unsynced(2));
        assert_eq!(payload_ref(&store, kept[0]), to);

        // Pointing it again at a place it no longer holds changes nothing.
        let stale = vec![Moved {
            key: env_id(ENV, kept[0]),
            from: PayloadRef { segment: 1, ..to },
            to: PayloadRef { segment: 99, ..to },
        }];
        let n = store
            .writer
            .write(move |t| rewrite_batch(t, stale))
            .await
            .unwrap();
        assert_eq!(n, 0);

        store.close();
        drop(store);
        let store = Store::open(dir.path(), 8).unwrap();
        assert_eq!(payload_ref(&store, kept[0]), to);
        assert_eq!(read(&store, kept[0]), original);
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let m = |len| Move {
            key: [0; 17],
            from: PayloadRef {
                segment: 1,
                offset: 0,
                len,
                crc: 0,
            },
        };
        let mut moves: Vec<Move> = (0..100).map(|_| m(10)).collect();
        assert_eq!(next_batch(&mut moves).len(), BATCH);
        assert_eq!(next_batch(&mut moves).len(), 100 - BATCH);
        let big = u32::try_from(BATCH_BYTES).unwrap();
        let mut moves = vec![m(big), m(big / 2), m(big / 2), m(1)];
        assert_eq!(
            next_batch(&mut moves).len(),
            1,
            "a large payload goes alone"
        );
        assert_eq!(next_batch(&mut moves).len(), 2);
        assert_eq!(next_batch(&mut moves).len(), 1);
        assert!(moves.is_empty());
    }

    fn now() -> i64 {
        crate::store::now_ms()
    }
}
