//! Backups: a consistent copy of the whole store taken while it serves, and the restore of
//! one into an empty data directory.
//!
//! sled 0.34 has no snapshots, so a backup is a copy made consistent afterwards:
//! 1. the writer's [`Journal`](super::writer::Journal) is switched on: from then on every
//!    round notes the keys it changes;
//! 2. every tree is copied while the writer goes on serving (a fuzzy copy: each key is
//!    read at some moment of the copy, not all at the same one);
//! 3. catch-up passes read the noted keys again, still while serving, until few are left
//!    (each pass takes the keys noted so far and a new set begins);
//! 4. the writer is held between two rounds (after one has committed and flushed, before
//!    the next begins) while the keys noted last are read (present: the value, absent: a
//!    deletion) and the length of every payload segment file. Between rounds matters: a
//!    round writes its counters after its last job, so a read inside a round could see a
//!    message without its count.
//!
//! A key that no round changed after the copy began was read with its value at the pause;
//! every other key is read again in a later step, the last time inside the pause. So the
//! copy with the records of steps 3 and 4 applied in order is the store exactly as it was
//! between those rounds: everything committed before, nothing after. Writes wait only for step 4,
//! which reads only the keys changed during the last pass.
//!
//! Payload bytes are copied after the pause, each segment up to the length it had then: a
//! record committed before the pause points only at bytes written before its job was
//! queued, and segments are append-only.

mod format;
mod restore;

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use format::{FormatError, Header, Trailer, FORMAT_VERSION};
pub use restore::{restore, verify, RestoreError, RestoreSummary};

use format::{Encoder, Kind, Op, CHUNK};

use super::payload_log::SegmentPin;
use super::writer::{Journal, Table, TableKey};
use super::{Store, StoreError};

/// The trees by name, in the order of [`Table`] and [`super::Trees::all`]. A backup names
/// its trees, so a restore does not depend on this order.
const TREE_NAMES: [&str; 32] = [
    "partners",
    "api_keys",
    "api_key_hash",
    "routes",
    "messages",
    "receiver_pending",
    "requests",
    "deliveries",
    "attempts",
    "outbox",
    "endpoint_health",
    "receiver_leased",
    "tracking",
    "tracking_refs",
    "meta",
    "admin_users",
    "admin_sessions",
    "audit",
    "jobs",
    "jobs_queued",
    "jobs_running",
    "job_content",
    "idempotency",
    "idempotency_expiry",
    "counters",
    "bulk_ops",
    "schemas",
    "unique_refs",
    "subscriptions",
    "sub_pending",
    "idempotency_batches",
    "idempotency_hourly",
];

/// Catch-up passes stop once this few keys were changed during the last one: the pause
/// then reads at most about this many.
const PAUSE_KEYS: usize = 20_000;
/// Catch-up passes at most; a store changing faster than they converge pauses after them.
const MAX_PASSES: usize = 8;
/// A backup gives up when more keys than this changed while it copied: the journal lives
/// in memory, and a store changing that much outruns any copy.
const MAX_JOURNAL: usize = 4_000_000;

/// Why a backup stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Whoever took the bytes went away (the client closed the connection).
    #[error("the backup's reader went away: {0}")]
    Gone(std::io::Error),
    #[error("another backup is running")]
    Running,
    #[error("more than {MAX_JOURNAL} keys changed while the backup copied; try at a quieter time")]
    TooBusy,
}

/// What a backup wrote, as its trailer says.
pub type BackupSummary = Trailer;

/// Keeps the payload segment files a backup reads from being deleted while it copies
/// them: the retention pruner deletes no segment file while the pin lives, and waits for
/// its next pass instead.
fn hold_segments(store: &Store) -> SegmentPin {
    store.payload_log.pin_segments()
}

/// Switches the journal off however the backup ends.
struct JournalOn<'a>(&'a Journal);

impl Drop for JournalOn<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Where the bytes of a backup go; an error means the reader went away.
pub type Sink<'a> = dyn FnMut(Vec<u8>) -> std::io::Result<()> + 'a;

impl Store {
    /// Writes a consistent backup of the whole store to `sink` while the store serves,
    /// in pieces of about 256 KiB. Blocks: run it on a blocking thread. One at a time.
    pub fn backup(&self, sink: &mut Sink<'_>) -> Result<BackupSummary, BackupError> {
        let _segments = hold_segments(self);
        let journal = Arc::clone(self.writer.journal());
        match self.writer.start_journal() {
            Err(StoreError::Busy) => return Err(BackupError::Running),
            other => other?,
        }
        let _on = JournalOn(&journal);
        let mut out = Out {
            enc: Encoder::new(),
            sink,
        };
        let pre = out.enc.preamble();
        out.send(pre)?;
        let header = Header {
            format: FORMAT_VERSION,
            waybill_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: rfc3339_now(),
            trees: TREE_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            estimated_bytes: self.size_on_disk().unwrap_or(0),
        };
        let body = serde_json::to_vec(&header).map_err(|e| StoreError::Codec(e.to_string()))?;
        out.frame(Kind::Header, &body)?;

        // 2. The fuzzy copy.
        for (name, tree) in TREE_NAMES.iter().zip(self.t.all()) {
            out.frame(Kind::Tree, name.as_bytes())?;
            for item in tree.iter() {
                let (k, v) = item.map_err(StoreError::from)?;
                out.record(Op::Put(&k, &v))?;
            }
            out.end_records()?;
            if journal.len() > MAX_JOURNAL {
                return Err(BackupError::TooBusy);
            }
        }

        // 3. Catch-up passes while serving.
        let mut reread = 0u64;
        for _ in 0..MAX_PASSES {
            if journal.len() <= PAUSE_KEYS {
                break;
            }
            let keys = sorted(journal.take());
            reread += keys.len() as u64;
            let trees = self.t.all();
            let mut current = None;
            for (table, key) in &keys {
                let value = trees[*table as usize].get(key).map_err(StoreError::from)?;
                out.overlay(&mut current, *table, key, value.as_deref())?;
            }
            out.end_records()?;
            if journal.len() > MAX_JOURNAL {
                return Err(BackupError::TooBusy);
            }
        }

        // 4. The pause: between two writer rounds, the last keys and the segment lengths.
        let noted = Arc::clone(&journal);
        let trees = Arc::clone(&self.t);
        let payloads = self.dir.join("payloads");
        let (last, segments, held) = self.writer.between_rounds(move || {
            let started = Instant::now();
            let keys = noted.take();
            // Rounds after this point need not be noted.
            noted.stop();
            let all = trees.all();
            let mut last = Vec::with_capacity(keys.len());
            for (table, key) in sorted(keys) {
                let value = all[table as usize].get(&key)?;
                last.push((table, key, value));
            }
            let segments = segment_lengths(&payloads)?;
            Ok((last, segments, started.elapsed()))
        })?;
        out.enc.counts.pause_micros = held.as_micros() as u64;
        reread += last.len() as u64;
        out.enc.counts.reread_keys = reread;
        let mut current = None;
        for (table, key, value) in &last {
            out.overlay(&mut current, *table, key, value.as_deref())?;
        }
        out.end_records()?;
        drop(last);

        // Payload bytes up to the lengths at the pause.
        let payloads = self.dir.join("payloads");
        for (segment, len) in segments {
            out.segment(&payloads, segment, len)?;
        }
        let trailer = out.enc.trailer();
        let summary = out.enc.counts.clone();
        out.send(trailer)?;
        Ok(summary)
    }
}

/// The encoder and where its frames go.
struct Out<'s, 'a> {
    enc: Encoder,
    sink: &'s mut Sink<'a>,
}

impl Out<'_, '_> {
    fn send(&mut self, bytes: Vec<u8>) -> Result<(), BackupError> {
        (self.sink)(bytes).map_err(BackupError::Gone)
    }

    fn frame(&mut self, kind: Kind, body: &[u8]) -> Result<(), BackupError> {
        let f = self.enc.frame(kind, body);
        self.send(f)
    }

    fn record(&mut self, op: Op<'_>) -> Result<(), BackupError> {
        match self.enc.record(op) {
            Some(f) => self.send(f),
            None => Ok(()),
        }
    }

    fn end_records(&mut self) -> Result<(), BackupError> {
        match self.enc.finish_records() {
            Some(f) => self.send(f),
            None => Ok(()),
        }
    }

    /// A key read again: its value, or its deletion. Opens a `Tree` frame when the table
    /// changes (`current` is the table of the frames being written).
    fn overlay(
        &mut self,
        current: &mut Option<Table>,
        table: Table,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), BackupError> {
        if *current != Some(table) {
            self.end_records()?;
            self.frame(Kind::Tree, TREE_NAMES[table as usize].as_bytes())?;
            *current = Some(table);
        }
        match value {
            Some(v) => self.record(Op::Put(key, v)),
            None => self.record(Op::Delete(key)),
        }
    }

    /// One segment file's first `len` bytes.
    fn segment(&mut self, dir: &Path, segment: u32, len: u64) -> Result<(), BackupError> {
        let mut head = segment.to_be_bytes().to_vec();
        head.extend_from_slice(&len.to_be_bytes());
        self.frame(Kind::Segment, &head)?;
        let file = std::fs::File::open(segment_path(dir, segment)).map_err(StoreError::from)?;
        let mut file = file.take(len);
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            file.read_exact(&mut buf).map_err(StoreError::from)?;
            left -= buf.len() as u64;
            self.frame(Kind::Chunk, &buf)?;
        }
        self.enc.counts.segments += 1;
        self.enc.counts.segment_bytes += len;
        Ok(())
    }
}

fn sorted(keys: HashSet<TableKey>) -> Vec<TableKey> {
    let mut keys: Vec<_> = keys.into_iter().collect();
    keys.sort_by(|a, b| (a.0 as usize, &a.1).cmp(&(b.0 as usize, &b.1)));
    keys
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.seg"))
}

/// Every payload segment file and its length now, in segment order.
fn segment_lengths(dir: &Path) -> Result<Vec<(u32, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        out.push((n, entry.metadata()?.len()));
    }
    out.sort_unstable();
    Ok(out)
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The index of a tree name, for restores.
fn tree_index(name: &str) -> Option<usize> {
    TREE_NAMES.iter().position(|n| *n == name)
}

#[cfg(test)]
mod tests;
