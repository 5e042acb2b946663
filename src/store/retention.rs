//! Retention: removing finished messages (with everything that indexes them) once they
//! are older than their retention, and deleting payload segment files that no stored
//! record points into any more.
//!
//! A message goes only when every transmission is final and none is queued, leased or
//! waiting in the outbox; the writer job that removes it checks that again on the record
//! as it is then, so a message that changed after the scan stays. The pruning is done in
//! batches of at most [`BATCH`] messages, each an ordinary writer job, so intake keeps its
//! place in the writer's queue between them.
//!
//! Payload segments: a segment file is deleted when no stored record (message, job
//! request, job content, stored idempotent answer) points into it, found by a scan that
//! starts only after the pruning job's flush, so the removals it relies on are durable.
//! Only settled segments are candidates ([`PayloadLog::settled`]), and a
//! [`SegmentPin`](super::payload_log::SegmentPin) holds every file in place. The same scan
//! finds segments kept by a few live payloads, which [`super::compact_segments`] moves
//! forward so that a later sweep can delete them.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::background::{JobRec, StoredBody, StoredResponse};
use super::codec::{decode, env_id, partner_id};
use super::compact_segments::{CompactionPlan, Planner};
use super::counters::message_key;
use super::deliveries::queued_push_key;
use super::idempotency::IdempotencyRec;
use super::messages::poll_queue_keys;
use super::payload_log::PayloadRef;
use super::records::{split_transmission_uuid, transmission_uuid, MessageRec, RequestRec};
use super::schemas::unique_ref_key;
use super::tracking::{ref_key, tracking_key};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::{Env, Status};

/// Most messages removed by one writer job. A job holds its whole writer round, and the
/// intake writes in that round wait for it: small jobs keep that wait short.
pub const BATCH: usize = 16;

const DAY_MS: i64 = 86_400_000;

/// Most attempt rows of outbound calls removed by one writer job.
pub const CALL_ROWS: usize = 512;

/// How long messages are kept: a default, and the partners that override it.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Days for every partner without an override.
    pub default_days: u32,
    /// Partners with their own number of days.
    pub partners: HashMap<String, u32>,
}

impl Retention {
    fn days_of(&self, partner: &str) -> u32 {
        self.partners
            .get(partner)
            .copied()
            .unwrap_or(self.default_days)
    }

    /// How long `m` is kept (ms): the longest retention of its sender and receivers, so
    /// no party loses sight of it before its own retention is over.
    pub fn keep_ms(&self, m: &MessageRec) -> i64 {
        let days = m
            .transmissions
            .iter()
            .map(|t| self.days_of(&t.receiver))
            .chain(std::iter::once(self.days_of(&m.sender)))
            .max()
            .unwrap_or(self.default_days);
        i64::from(days) * DAY_MS
    }

    /// How long what `partner` alone owns (its finished background jobs) is kept (ms).
    pub fn keep_partner_ms(&self, partner: &str) -> i64 {
        i64::from(self.days_of(partner)) * DAY_MS
    }

    /// The shortest retention of anyone: messages received since `now` minus this are
    /// all kept, so a scan in received order stops there.
    pub(crate) fn shortest_ms(&self) -> i64 {
        let days = self
            .partners
            .values()
            .copied()
            .chain(std::iter::once(self.default_days))
            .min()
            .unwrap_or(self.default_days);
        i64::from(days) * DAY_MS
    }
}

/// When `m` last changed: its most recent status change, else its receipt.
fn last_change(m: &MessageRec) -> i64 {
    m.history
        .last()
        .map(|(at, _)| *at)
        .unwrap_or(m.received_at)
        .max(m.received_at)
}

/// Whether nothing is left for Waybill to do with `m`: every transmission final, or
/// delivered by a push that succeeded (`processed` with nothing queued: only the
/// receiver's optional acknowledgement could still come), and none leased or with a
/// queued push. A polled `processed` transmission is still in its receiver's queue; the
/// removing job finds that entry and keeps the message.
fn finished(m: &MessageRec) -> bool {
    let done = m.transmissions.iter().all(|t| {
        let settled =
            t.status.is_final() || (t.status == Status::Processed && t.delivered_at.is_some());
        settled && t.outbox_due.is_none() && t.lease_until.is_none()
    });
    done && (!m.transmissions.is_empty() || m.status.is_final())
}

/// What one pass over a stretch of `messages` did.
#[derive(Debug, Default, Clone)]
pub struct PrunePass {
    /// Messages removed.
    pub messages: usize,
    /// Other rows removed with them (index entries, requests, attempt logs).
    pub rows: usize,
    /// Where the next pass goes on (exclusive); `None` once the scan reached messages
    /// too young for anyone's retention, so the next pass starts from the oldest again.
    pub next: Option<Vec<u8>>,
}

/// A message found prunable by the scan, with the keys that go with it.
struct Doomed {
    key: [u8; 17],
    attempts: Vec<Vec<u8>>,
}

/// The messages one scan found to remove, and where the next scan starts.
pub struct Prunable {
    doomed: Vec<Doomed>,
    next: Option<Vec<u8>>,
}

impl Store {
    /// Prunes finished messages of `env` older than their retention at `now`, reading at
    /// most `scan` records starting after `after`, in writer jobs of at most [`BATCH`].
    /// The scan runs on the calling thread: from async code, prefer
    /// [`Store::scan_prunable`] on a blocking thread, then [`Store::remove_prunable`].
    pub async fn prune_messages(
        &self,
        env: Env,
        after: Option<Vec<u8>>,
        now: i64,
        retention: &Retention,
        scan: usize,
    ) -> Result<PrunePass, StoreError> {
        let found = self.scan_prunable(env, after, now, retention, scan)?;
        self.remove_prunable(env, now, retention, found).await
    }

    /// Reads at most `scan` message records of `env` after `after` and picks the finished
    /// ones past their retention at `now`. It reads sled, so it waits whenever the writer's
    /// transaction is open: call it off the async workers.
    pub fn scan_prunable(
        &self,
        env: Env,
        after: Option<Vec<u8>>,
        now: i64,
        retention: &Retention,
        scan: usize,
    ) -> Result<Prunable, StoreError> {
        let young = now - retention.shortest_ms();
        let start = match &after {
            Some(k) => {
                let mut k = k.clone();
                k.push(0);
                k
            }
            None => vec![env.byte()],
        };
        let end = vec![env.byte() + 1];
        let mut doomed = Vec::new();
        let mut last = None;
        let mut reached_young = true;
        for (n, entry) in self.t.messages.range(start..end).enumerate() {
            if n >= scan {
                reached_young = false;
                break;
            }
            let (k, v) = entry?;
            last = Some(k.to_vec());
            // A record that cannot be read stays; it is reported where it is read.
            let Ok(m) = decode::<MessageRec>(&v) else {
                continue;
            };
            if m.received_at >= young {
                break;
            }
            if !finished(&m) || last_change(&m) >= now - retention.keep_ms(&m) {
                continue;
            }
            let Ok(key) = <[u8; 17]>::try_from(&k[..]) else {
                continue;
            };
            let mut attempts = Vec::new();
            for i in 0..m.transmissions.len() {
                let tx = transmission_uuid(m.id, i);
                for a in self.t.attempts.scan_prefix(env_id(env, tx)) {
                    attempts.push(a?.0.to_vec());
                }
            }
            doomed.push(Doomed { key, attempts });
        }
        Ok(Prunable {
            doomed,
            next: if reached_young { None } else { last },
        })
    }

    /// Removes what [`Store::scan_prunable`] found, in writer jobs of at most [`BATCH`]
    /// messages; each message is checked again inside its job.
    pub async fn remove_prunable(
        &self,
        env: Env,
        now: i64,
        retention: &Retention,
        found: Prunable,
    ) -> Result<PrunePass, StoreError> {
        let Prunable { mut doomed, next } = found;
        let mut pass = PrunePass {
            next,
            ..PrunePass::default()
        };
        while !doomed.is_empty() {
            let batch: Vec<Doomed> = doomed.drain(..doomed.len().min(BATCH)).collect();
            let retention = retention.clone();
            let (messages, rows) = self
                .writer
                .write(move |t| remove_batch(t, env, now, &retention, batch))
                .await?;
            pass.messages += messages;
            pass.rows += rows;
            // Let other work have the runtime between batches.
            tokio::task::yield_now().await;
        }
        Ok(pass)
    }
}

/// The writer job of one batch: each message checked again as it is now, then removed
/// with its index entries, attempt logs and counter; a request goes with its last message.
fn remove_batch(
    t: &Tx<'_>,
    env: Env,
    now: i64,
    retention: &Retention,
    batch: Vec<Doomed>,
) -> Result<(usize, usize), StoreError> {
    let (mut messages, mut rows) = (0, 0);
    let mut requests: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    for d in batch {
        let Some(raw) = t.get(Table::Messages, d.key)? else {
            continue;
        };
        let Ok(m) = decode::<MessageRec>(&raw) else {
            continue;
        };
        if !finished(&m) || last_change(&m) >= now - retention.keep_ms(&m) {
            continue;
        }
        // A final transmission holds no queue entry; should one be there, it is work
        // still to do, and the message stays.
        let mut queued = false;
        for i in 0..m.transmissions.len() {
            for (table, key) in poll_queue_keys(env, &m, i) {
                queued |= t.get(table, key)?.is_some();
            }
            if let Some(key) = queued_push_key(&m, i) {
                queued |= t.get(Table::Outbox, key)?.is_some();
            }
        }
        if queued {
            continue;
        }
        t.remove(Table::Messages, d.key)?;
        t.count(message_key(env, m.status), -1);
        t.remove(
            Table::Tracking,
            tracking_key(env, &m.sender, m.request_id, m.id),
        )?;
        rows += 1;
        if let Some(r) = &m.external_reference {
            t.remove(
                Table::TrackingRefs,
                ref_key(env, &m.sender, r, m.request_id, m.id),
            )?;
            let unique = unique_ref_key(env, &m.sender, &m.doctype, r);
            if t.get(Table::UniqueRefs, &unique)?
                .is_some_and(|v| v.get(..16) == Some(m.id.as_bytes()))
            {
                t.remove(Table::UniqueRefs, unique)?;
                rows += 1;
            }
            rows += 1;
        }
        for a in d.attempts {
            t.remove(Table::Attempts, a)?;
            rows += 1;
        }
        requests.insert(partner_id(env, &m.sender, m.request_id), ());
        messages += 1;
    }
    for (key, ()) in requests {
        let Some(raw) = t.get(Table::Requests, &key)? else {
            continue;
        };
        let Ok(r) = decode::<RequestRec>(&raw) else {
            continue;
        };
        let mut left = false;
        for id in &r.messages {
            left |= t.get(Table::Messages, env_id(env, *id))?.is_some();
        }
        if left {
            continue;
        }
        t.remove(Table::Requests, &key)?;
        rows += 1;
        if let Some(b) = &r.batch_reference {
            t.remove(
                Table::TrackingRefs,
                ref_key(env, &r.sender, b, r.id, Uuid::nil()),
            )?;
            rows += 1;
        }
    }
    Ok((messages, rows))
}

/// Payload bytes still referenced, by segment.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Segment → (payloads, bytes) referenced by a stored record.
    pub live: HashMap<u32, (u64, u64)>,
}

impl Liveness {
    fn note(&mut self, r: &PayloadRef) {
        let e = self.live.entry(r.segment).or_default();
        e.0 += 1;
        e.1 += u64::from(r.len);
    }
}

/// What holds a [`PayloadRef`] met by [`Store::walk_payload_refs`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Holder<'a> {
    /// A message record, by its key in `messages`.
    Message(&'a [u8]),
    /// A job's request, a job's stored answer or an idempotent answer.
    Other,
}

fn logged(r: &StoredResponse) -> Option<&PayloadRef> {
    match &r.body {
        StoredBody::Logged(p) => Some(p),
        _ => None,
    }
}

/// What a segment sweep found and did.
#[derive(Debug, Default, Clone)]
pub struct SegmentSweep {
    /// Segment files deleted, and their bytes.
    pub deleted: Vec<u32>,
    pub freed_bytes: u64,
    /// Dead segments left because a pin held them.
    pub pinned: usize,
    /// Settled segments mostly dead, with the messages that keep them: for
    /// [`Store::compact_segments`].
    pub compactable: CompactionPlan,
}

impl Store {
    /// Calls `f` with every payload a stored record points to and what holds it. A long
    /// read (every message, job and stored answer); run it on a blocking thread. Records
    /// that cannot be read make it fail, so that no segment is judged on a partial view.
    pub(super) fn walk_payload_refs(
        &self,
        mut f: impl FnMut(Holder<'_>, &PayloadRef),
    ) -> Result<(), StoreError> {
        for entry in self.t.messages.iter() {
            let (k, v) = entry?;
            f(Holder::Message(&k), &decode::<MessageRec>(&v)?.payload);
        }
        for entry in self.t.jobs.iter() {
            let (_, v) = entry?;
            if let Some(p) = decode::<JobRec>(&v)?.body {
                f(Holder::Other, &p);
            }
        }
        for entry in self.t.job_content.iter() {
            let (_, v) = entry?;
            if let Some(p) = logged(&decode::<StoredResponse>(&v)?) {
                f(Holder::Other, p);
            }
        }
        self.each_answer(|rec: IdempotencyRec| {
            if let Some(p) = logged(&rec.response) {
                f(Holder::Other, p);
            }
        })
    }

    /// Every payload a stored record points to, by segment. A long read: run it on a
    /// blocking thread.
    pub fn payload_liveness(&self) -> Result<Liveness, StoreError> {
        let mut l = Liveness::default();
        self.walk_payload_refs(|_, r| l.note(r))?;
        Ok(l)
    }

    /// Deletes every settled segment file that no stored record points into. Call it
    /// only after the writes that released those payloads were answered (flushed); runs
    /// the scan, so call it on a blocking thread.
    pub fn sweep_segments(&self, now: i64) -> Result<SegmentSweep, StoreError> {
        self.sweep_and_plan(now, 0.0)
    }

    /// [`Store::sweep_segments`], and from the same scan the settled segments whose live
    /// payloads fill less than `compact_below` of their file (0 picks none), for
    /// [`Store::compact_segments`].
    pub fn sweep_and_plan(&self, now: i64, compact_below: f64) -> Result<SegmentSweep, StoreError> {
        let settled: Vec<(u32, u64)> = self
            .payload_log
            .segments()?
            .into_iter()
            .filter(|(n, _)| self.payload_log.settled(*n, now))
            .collect();
        let mut sweep = SegmentSweep::default();
        if settled.is_empty() {
            return Ok(sweep);
        }
        let mut live = Liveness::default();
        let mut planner = Planner::new(&settled, compact_below);
        self.walk_payload_refs(|holder, r| {
            live.note(r);
            planner.note(holder, r);
        })?;
        sweep.compactable = planner.finish();
        let candidates: HashSet<u32> = settled.iter().map(|(n, _)| *n).collect();
        let mut dead: Vec<u32> = candidates
            .into_iter()
            .filter(|n| !live.live.contains_key(n))
            .collect();
        dead.sort_unstable();
        match self.payload_log.delete_segments(&dead)? {
            Some(freed) => {
                sweep.freed_bytes = freed;
                sweep.deleted = dead;
            }
            None => sweep.pinned = dead.len(),
        }
        Ok(sweep)
    }
}

/// Old attempt rows of outbound calls that no message takes along: found by
/// [`Store::scan_old_call_attempts`], removed by [`Store::remove_attempt_rows`].
pub struct OldCallAttempts {
    pub keys: Vec<Vec<u8>>,
    /// The last key looked at, where the next scan goes on (`None`: none was).
    pub last: Option<Vec<u8>>,
    /// Every row made before the cut-off was looked at. Later scans with a later cut-off
    /// go on from `last` (or from where they started): a row skipped because its message
    /// is stored goes with it.
    pub done: bool,
}

impl Store {
    /// Attempt rows in `env` of deliveries created before `before` (unix ms; delivery ids
    /// are v7) that are not a transmission of a stored message: job webhooks, subscription
    /// calls, and rows a message left behind. A stored message's rows go with it (see
    /// [`Store::scan_prunable`]). Looks at up to `scan` rows after `after`. A long read:
    /// run it on a blocking thread.
    pub fn scan_old_call_attempts(
        &self,
        env: Env,
        after: Option<Vec<u8>>,
        before: i64,
        scan: usize,
    ) -> Result<OldCallAttempts, StoreError> {
        // Keys are env ‖ delivery id ‖ attempt number, and a v7 id starts with its 48-bit
        // time: the rows made before the cut-off come first.
        let cut = u64::try_from(before).unwrap_or(0).min((1 << 48) - 1);
        let mut end = vec![env.byte()];
        end.extend_from_slice(&cut.to_be_bytes()[2..]);
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Included(vec![env.byte()]),
        };
        let mut found = OldCallAttempts {
            keys: Vec::new(),
            last: None,
            done: true,
        };
        for (seen, row) in self
            .t
            .attempts
            .range::<Vec<u8>, _>((start, std::ops::Bound::Excluded(end)))
            .enumerate()
        {
            if seen >= scan {
                found.done = false;
                break;
            }
            let (k, _) = row?;
            let id = k.get(1..17).and_then(|b| Uuid::from_slice(b).ok());
            let kept = match id.and_then(split_transmission_uuid) {
                Some((message, _)) => self.t.messages.contains_key(env_id(env, message))?,
                None => false,
            };
            if !kept {
                found.keys.push(k.to_vec());
            }
            found.last = Some(k.to_vec());
        }
        Ok(found)
    }

    /// Removes attempt rows, [`CALL_ROWS`] per writer job; returns how many were there.
    pub async fn remove_attempt_rows(&self, keys: Vec<Vec<u8>>) -> Result<usize, StoreError> {
        let mut removed = 0;
        for chunk in keys.chunks(CALL_ROWS) {
            let chunk = chunk.to_vec();
            removed += self
                .writer
                .write_waiting(move |t| {
                    let mut n = 0;
                    for k in chunk {
                        if t.get(Table::Attempts, &k)?.is_some() {
                            t.remove(Table::Attempts, &k)?;
                            n += 1;
                        }
                    }
                    Ok(n)
                })
                .await?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
