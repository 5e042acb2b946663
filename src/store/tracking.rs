//! Tracking: the indexes behind `POST /api/v1/tracking`, the search over them, and the
//! sender's cancellation of a message.
//!
//! Two index trees, each entry written by the same writer job as the change it indexes:
//!
//! - `tracking`: `env ‖ sender ‖ 0xFF ‖ request id ‖ message id` → `status (1 byte) ‖
//!   processed_at (u64 BE ms, 0 = none) ‖ doctype`. Request ids are v7 UUIDs whose time is
//!   the request's received time ([`request_id_at`]), so a sender's requests are one range in
//!   received order and a request's messages are next to each other inside it. A search
//!   over a day reads that day's entries and nothing else, and sums up each request's
//!   statuses on the way; no record is read until the page is known.
//! - `tracking_refs`: `env ‖ sender ‖ 0xFF ‖ reference ‖ 0xFF ‖ request id ‖ message id` →
//!   nothing. A batch reference has the nil message id. References are UTF-8 text, which
//!   never contains the byte 0xFF, so one reference's entries are one exact prefix.
//!
//! A message's entry changes whenever its status or processed time does: every job that
//! stores a changed message goes through [`MessagePut`], which compares the record with
//! what it was before [`MessageRec::apply`] ran. The same comparison feeds a status change
//! to the `message.status` subscriptions of the message's sender and receivers, in the
//! same job (see `store::subscriptions`).

use std::collections::HashSet;

use uuid::Uuid;

use super::codec::{decode, encode, env_id, partner_id, partner_prefix, SEP};
use super::counters::{message_key, rate_key, CounterKey, Rate};
use super::records::{MessageRec, RequestRec};
use super::subscriptions::EventKind;
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::{Env, Status};

mod cancel;
pub use cancel::CancelOutcome;

/// Most requests one search answers with, whatever the paging asks for.
pub const MAX_ROWS: usize = 1000;
/// Most messages listed in the payloads of one answer; further ones are left out and the
/// request says so (`payloadTruncated`).
pub const MAX_PAYLOAD_MESSAGES: usize = 10_000;

/// A request id whose v7 time is exactly `received_at` (unix ms), so the id orders the
/// `tracking` index by received time.
pub fn request_id_at(received_at: i64) -> Uuid {
    let ms = received_at.max(0) as u64;
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
    Uuid::new_v7(ts)
}

/// The unix-ms time carried by a v7 id (its first 48 bits).
pub fn time_of(id: Uuid) -> i64 {
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    u64::from_be_bytes(ms) as i64
}

/// The smallest id whose time is `ms`: a bound for a range of the `tracking` index.
fn id_floor(ms: i64) -> Uuid {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

fn status_byte(s: Status) -> u8 {
    Status::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// `env ‖ sender ‖ 0xFF ‖ request id ‖ message id`.
pub(super) fn tracking_key(env: Env, sender: &str, request_id: Uuid, message_id: Uuid) -> Vec<u8> {
    let mut k = partner_id(env, sender, request_id);
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// `status ‖ processed_at ‖ doctype`.
fn tracking_value(m: &MessageRec) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + m.doctype.len());
    v.push(status_byte(m.status));
    v.extend_from_slice(&(m.processed_at.unwrap_or(0).max(0) as u64).to_be_bytes());
    v.extend_from_slice(m.doctype.as_bytes());
    v
}

/// One `tracking` entry as read.
pub(super) struct Entry<'a> {
    pub(super) request_id: Uuid,
    pub(super) message_id: Uuid,
    pub(super) status: Status,
    pub(super) processed_at: Option<i64>,
    pub(super) doctype: &'a str,
}

pub(super) fn parse_entry<'a>(key: &[u8], value: &'a [u8]) -> Option<Entry<'a>> {
    let ids = key.get(key.len().checked_sub(32)?..)?;
    let (&status, rest) = value.split_first()?;
    let (at, doctype) = rest.split_at_checked(8)?;
    let at = u64::from_be_bytes(at.try_into().ok()?);
    Some(Entry {
        request_id: Uuid::from_slice(&ids[..16]).ok()?,
        message_id: Uuid::from_slice(&ids[16..]).ok()?,
        status: *Status::ALL.get(usize::from(status))?,
        processed_at: (at > 0).then(|| i64::try_from(at).ok()).flatten(),
        doctype: std::str::from_utf8(doctype).ok()?,
    })
}

/// `env ‖ sender ‖ 0xFF ‖ reference ‖ 0xFF`: every entry of one reference.
fn ref_prefix(env: Env, sender: &str, reference: &str) -> Vec<u8> {
    let mut k = partner_prefix(env, sender);
    k.extend_from_slice(reference.as_bytes());
    k.push(SEP);
    k
}

pub(super) fn ref_key(
    env: Env,
    sender: &str,
    reference: &str,
    request_id: Uuid,
    message_id: Uuid,
) -> Vec<u8> {
    let mut k = ref_prefix(env, sender, reference);
    k.extend_from_slice(request_id.as_bytes());
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// The index entries of a new request and its messages, stored with them at intake.
pub(super) fn intake_entries(
    request: &RequestRec,
    messages: &[MessageRec],
) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    let (env, sender) = (request.env, request.sender.as_str());
    let mut out = Vec::with_capacity(messages.len() * 2 + 1);
    if let Some(r) = &request.batch_reference {
        out.push((
            Table::TrackingRefs,
            ref_key(env, sender, r, request.id, Uuid::nil()),
            Vec::new(),
        ));
    }
    for m in messages {
        out.push((
            Table::Tracking,
            tracking_key(env, sender, request.id, m.id),
            tracking_value(m),
        ));
        if let Some(r) = &m.external_reference {
            out.push((
                Table::TrackingRefs,
                ref_key(env, sender, r, request.id, m.id),
                Vec::new(),
            ));
        }
    }
    out
}

/// What of a message the `tracking` index and the counters hold, taken before a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tracked {
    status: Status,
    processed_at: Option<i64>,
    /// Transmissions handed to their receiver.
    delivered: usize,
}

impl MessageRec {
    /// What the index holds of this message now; compare after [`MessageRec::apply`].
    pub(super) fn tracked(&self) -> Tracked {
        Tracked {
            status: self.status,
            processed_at: self.processed_at,
            delivered: self
                .transmissions
                .iter()
                .filter(|t| t.delivered_at.is_some())
                .count(),
        }
    }
}

/// A changed message ready to store: its encoded record and, when its status or processed
/// time changed, its new `tracking` entry. Built (and so checked) before a job's first
/// write; [`MessagePut::write`] only copies bytes and notes the counters' changes.
pub(super) struct MessagePut {
    key: [u8; 17],
    record: Vec<u8>,
    tracking: Option<(Vec<u8>, Vec<u8>)>,
    /// The message's counter moves from the first to the second key.
    moved: Option<(CounterKey, CounterKey)>,
    /// Transmissions delivered by this change.
    delivered: usize,
    status_change: Option<StatusChange>,
}

/// A message whose status changed: the event its sender's and receivers' subscriptions to
/// `message.status` are fed with, in the job that stores it.
struct StatusChange {
    env: Env,
    id: Uuid,
    at: i64,
    /// The sender and the receivers, each once.
    owners: Vec<String>,
}

impl MessagePut {
    /// Prepares `m`, which was `before` when the job read it.
    pub(super) fn new(m: &MessageRec, before: Tracked) -> Result<MessagePut, StoreError> {
        let now = m.tracked();
        let tracking = (now.status, now.processed_at) != (before.status, before.processed_at);
        let tracking = tracking.then(|| {
            (
                tracking_key(m.env, &m.sender, m.request_id, m.id),
                tracking_value(m),
            )
        });
        let status_change = (m.status != before.status).then(|| {
            let mut owners = Vec::with_capacity(1 + m.transmissions.len());
            owners.push(m.sender.clone());
            for t in &m.transmissions {
                if !owners.contains(&t.receiver) {
                    owners.push(t.receiver.clone());
                }
            }
            StatusChange {
                env: m.env,
                id: m.id,
                at: m.history.last().map_or(m.received_at, |(at, _)| *at),
                owners,
            }
        });
        Ok(MessagePut {
            key: env_id(m.env, m.id),
            record: encode(m)?,
            tracking,
            moved: (now.status != before.status).then(|| {
                (
                    message_key(m.env, before.status),
                    message_key(m.env, now.status),
                )
            }),
            delivered: now.delivered.saturating_sub(before.delivered),
            status_change,
        })
    }

    pub(super) fn write(self, t: &Tx<'_>) -> Result<(), StoreError> {
        t.insert(Table::Messages, self.key, self.record)?;
        if let Some((k, v)) = self.tracking {
            t.insert(Table::Tracking, k, v)?;
        }
        if let Some((from, to)) = self.moved {
            t.count(from, -1);
            t.count(to, 1);
        }
        if self.delivered > 0 {
            t.count(
                rate_key(Rate::Delivered, super::now_ms()),
                self.delivered as i64,
            );
        }
        if let Some(c) = self.status_change {
            for owner in &c.owners {
                t.feed(c.env, owner, EventKind::MessageStatus, c.id, c.at)?;
            }
        }
        Ok(())
    }
}

/// Counts of a request's messages by status, in the order of [`Status::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSummary(pub [u32; 7]);

impl StatusSummary {
    /// Messages in `status`.
    pub fn count(&self, status: Status) -> u32 {
        self.0[usize::from(status_byte(status))]
    }

    /// All messages.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    fn add(&mut self, status: Status) {
        let slot = &mut self.0[usize::from(status_byte(status))];
        *slot = slot.saturating_add(1);
    }
}

/// What a search sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingSort {
    Received,
    /// When the request's last message was processed; requests still in progress last.
    Processed,
    /// Requests without a batch reference last.
    BatchReference,
}

/// A search of one sender's requests in one environment. Empty lists mean "any".
#[derive(Debug, Clone)]
pub struct TrackingQuery {
    pub env: Env,
    pub sender: String,
    /// Doctypes, compared without regard to ASCII case.
    pub types: Vec<String>,
    pub statuses: Vec<Status>,
    /// Received in `[from, to)`, unix ms.
    pub received: Option<(i64, i64)>,
    /// Request or message ids.
    pub ids: Vec<Uuid>,
    /// Batch or message references.
    pub refs: Vec<String>,
    pub sort: TrackingSort,
    pub descending: bool,
    /// Matching requests to pass over (earlier pages).
    pub skip: usize,
    /// Requests to return, at most [`MAX_ROWS`].
    pub take: usize,
}

/// One request of an answer.
#[derive(Debug, Clone)]
pub struct TrackedRequest {
    pub request: RequestRec,
    /// All its messages, matching or not.
    pub summary: StatusSummary,
    /// When its last message was processed; `None` while one is still in progress.
    pub processed_at: Option<i64>,
    /// The messages matching the message criteria.
    pub messages: Vec<MessageRec>,
    /// Some matching messages were left out to keep the answer within
    /// [`MAX_PAYLOAD_MESSAGES`].
    pub payload_truncated: bool,
}

/// A search's answer: how many requests match, and the asked-for page of them.
#[derive(Debug, Clone, Default)]
pub struct TrackingPage {
    pub total: usize,
    pub rows: Vec<TrackedRequest>,
}

/// A matching request found in the index, before its records are read.
struct Hit {
    request_id: Uuid,
    summary: StatusSummary,
    processed_at: Option<i64>,
    matched: Vec<Uuid>,
}

/// Sums up one request's entries as they come out of the index.
struct Group {
    request_id: Uuid,
    summary: StatusSummary,
    unprocessed: bool,
    last_processed: Option<i64>,
    matched: Vec<Uuid>,
}

impl Group {
    fn new(request_id: Uuid) -> Group {
        Group {
            request_id,
            summary: StatusSummary::default(),
            unprocessed: false,
            last_processed: None,
            matched: Vec::new(),
        }
    }

    fn finish(self) -> Option<Hit> {
        if self.matched.is_empty() {
            return None;
        }
        Some(Hit {
            request_id: self.request_id,
            summary: self.summary,
            processed_at: if self.unprocessed {
                None
            } else {
                self.last_processed
            },
            matched: self.matched,
        })
    }
}

/// The per-message criteria of a query, ready to test index entries against.
struct Criteria<'q> {
    q: &'q TrackingQuery,
    ids: HashSet<Uuid>,
    /// `(request, message)` pairs whose references match (nil message: the batch's);
    /// `None` when no reference was asked for.
    ref_hits: Option<HashSet<(Uuid, Uuid)>>,
}

impl Criteria<'_> {
    fn matches(&self, e: &Entry<'_>) -> bool {
        let q = self.q;
        (q.types.is_empty() || q.types.iter().any(|t| t.eq_ignore_ascii_case(e.doctype)))
            && (q.statuses.is_empty() || q.statuses.contains(&e.status))
            && (self.ids.is_empty()
                || self.ids.contains(&e.request_id)
                || self.ids.contains(&e.message_id))
            && self.ref_hits.as_ref().is_none_or(|hits| {
                hits.contains(&(e.request_id, Uuid::nil()))
                    || hits.contains(&(e.request_id, e.message_id))
            })
            && q.received.is_none_or(|(from, to)| {
                let at = time_of(e.request_id);
                from <= at && at < to
            })
    }

    fn add(&self, group: &mut Group, e: &Entry<'_>) {
        group.summary.add(e.status);
        match e.processed_at {
            Some(at) => group.last_processed = group.last_processed.max(Some(at)),
            None => group.unprocessed = true,
        }
        if self.matches(e) {
            group.matched.push(e.message_id);
        }
    }
}

impl Store {
    /// Searches a sender's requests. Reads index ranges in proportion to what matches,
    /// then the records of the returned page only. Blocking: call it off the async threads.
    pub fn track(&self, q: &TrackingQuery) -> Result<TrackingPage, StoreError> {
        let prefix = partner_prefix(q.env, &q.sender);
        let mut criteria = Criteria {
            q,
            ids: q.ids.iter().copied().collect(),
            ref_hits: None,
        };
        // Requests to look at when ids or references narrow the search; `None`: a range.
        let mut candidates: Option<Vec<Uuid>> = None;
        if !q.ids.is_empty() {
            let mut found = Vec::new();
            for id in &q.ids {
                let request = partner_id(q.env, &q.sender, *id);
                if self
                    .t
                    .tracking
                    .scan_prefix(&request)
                    .next()
                    .transpose()?
                    .is_some()
                {
                    found.push(*id);
                    continue;
                }
                if let Some(m) = self.message(q.env, *id)? {
                    if m.sender == q.sender {
                        found.push(m.request_id);
                    }
                }
            }
            candidates = Some(found);
        }
        if !q.refs.is_empty() {
            let mut hits = HashSet::new();
            for r in &q.refs {
                let p = ref_prefix(q.env, &q.sender, r);
                for item in self.t.tracking_refs.scan_prefix(&p) {
                    let (key, _) = item?;
                    let tail = key.get(p.len()..).filter(|t| t.len() == 32);
                    let Some(tail) = tail else {
                        return Err(StoreError::Codec("bad tracking_refs entry".into()));
                    };
                    let request = Uuid::from_slice(&tail[..16]).map_err(codec_err)?;
                    let message = Uuid::from_slice(&tail[16..]).map_err(codec_err)?;
                    hits.insert((request, message));
                }
            }
            let from_refs: HashSet<Uuid> = hits.iter().map(|(r, _)| *r).collect();
            candidates = Some(match candidates {
                Some(c) => c.into_iter().filter(|r| from_refs.contains(r)).collect(),
                None => from_refs.into_iter().collect(),
            });
            criteria.ref_hits = Some(hits);
        }

        let mut hits = Vec::new();
        let mut group: Option<Group> = None;
        let mut take_entry = |key: &[u8], value: &[u8]| -> Result<(), StoreError> {
            let e = parse_entry(key, value)
                .ok_or_else(|| StoreError::Codec("bad tracking entry".into()))?;
            if group.as_ref().is_some_and(|g| g.request_id != e.request_id) {
                hits.extend(group.take().and_then(Group::finish));
            }
            let g = group.get_or_insert_with(|| Group::new(e.request_id));
            criteria.add(g, &e);
            Ok(())
        };
        match candidates {
            Some(mut requests) => {
                requests.sort();
                requests.dedup();
                for r in requests {
                    for item in self.t.tracking.scan_prefix(partner_id(q.env, &q.sender, r)) {
                        let (k, v) = item?;
                        take_entry(&k, &v)?;
                    }
                }
            }
            None => {
                let (from, to) = q.received.unwrap_or((0, i64::MAX));
                let mut start = prefix.clone();
                start.extend_from_slice(id_floor(from).as_bytes());
                let mut end = prefix.clone();
                end.extend_from_slice(id_floor(to).as_bytes());
                for item in self.t.tracking.range(start..end) {
                    let (k, v) = item?;
                    take_entry(&k, &v)?;
                }
            }
        }
        hits.extend(group.take().and_then(Group::finish));

        self.sort_hits(q, &mut hits)?;
        let total = hits.len();
        let mut rows = Vec::new();
        let mut listed = 0usize;
        for hit in hits.into_iter().skip(q.skip).take(q.take.min(MAX_ROWS)) {
            let Some(request) = self.request(q.env, &q.sender, hit.request_id)? else {
                continue;
            };
            let room = MAX_PAYLOAD_MESSAGES.saturating_sub(listed);
            let payload_truncated = hit.matched.len() > room;
            let mut messages = Vec::with_capacity(hit.matched.len().min(room));
            for id in hit.matched.into_iter().take(room) {
                if let Some(m) = self.message(q.env, id)? {
                    messages.push(m);
                }
            }
            listed += messages.len();
            rows.push(TrackedRequest {
                request,
                summary: hit.summary,
                processed_at: hit.processed_at,
                messages,
                payload_truncated,
            });
        }
        Ok(TrackingPage { total, rows })
    }

    /// Puts hits in the asked-for order; ties go by received time in the same direction.
    fn sort_hits(&self, q: &TrackingQuery, hits: &mut Vec<Hit>) -> Result<(), StoreError> {
        // Hits come out of the index in request id (received) order.
        hits.sort_by_key(|h| h.request_id);
        match q.sort {
            TrackingSort::Received => {}
            TrackingSort::Processed => {
                // A stable sort keeps received order among equal times.
                hits.sort_by_key(|h| (h.processed_at.is_none(), h.processed_at));
                if q.descending {
                    let done = hits.iter().take_while(|h| h.processed_at.is_some()).count();
                    hits[..done].reverse();
                    hits[done..].reverse();
                }
                return Ok(());
            }
            TrackingSort::BatchReference => {
                let mut keyed = Vec::with_capacity(hits.len());
                for h in hits.drain(..) {
                    let r = self
                        .request(q.env, &q.sender, h.request_id)?
                        .and_then(|r| r.batch_reference);
                    keyed.push((r, h));
                }
                // Named references first, in the asked-for direction; then the unnamed.
                keyed.sort_by(|(a, ha), (b, hb)| match (a, b) {
                    (Some(a), Some(b)) => {
                        let by_ref = a.cmp(b).then(ha.request_id.cmp(&hb.request_id));
                        if q.descending {
                            by_ref.reverse()
                        } else {
                            by_ref
                        }
                    }
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => {
                        let by_time = ha.request_id.cmp(&hb.request_id);
                        if q.descending {
                            by_time.reverse()
                        } else {
                            by_time
                        }
                    }
                });
                hits.extend(keyed.into_iter().map(|(_, h)| h));
                return Ok(());
            }
        }
        if q.descending {
            hits.reverse();
        }
        Ok(())
    }

    /// `(request, message)` of every entry of one reference of a sender; the nil message
    /// stands for a whole batch.
    pub(super) fn reference_hits(
        &self,
        env: Env,
        sender: &str,
        reference: &str,
    ) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let p = ref_prefix(env, sender, reference);
        let mut out = Vec::new();
        for item in self.t.tracking_refs.scan_prefix(&p) {
            let (key, _) = item?;
            let Some(tail) = key.get(p.len()..).filter(|t| t.len() == 32) else {
                return Err(StoreError::Codec("bad tracking_refs entry".into()));
            };
            let request = Uuid::from_slice(&tail[..16]).map_err(codec_err)?;
            let message = Uuid::from_slice(&tail[16..]).map_err(codec_err)?;
            out.push((request, message));
        }
        Ok(out)
    }

    /// Builds the tracking indexes of messages stored by a build that had none. Runs once,
    /// when the store opens; afterwards a marker in `meta` says the indexes are complete.
    pub(super) fn build_tracking_index(&self) -> Result<usize, StoreError> {
        const MARKER: &[u8] = b"tracking_index";
        if self.t.meta.contains_key(MARKER)? {
            return Ok(0);
        }
        let mut built = 0;
        let mut batch: Vec<(Table, Vec<u8>, Vec<u8>)> = Vec::new();
        let flush = |batch: &mut Vec<(Table, Vec<u8>, Vec<u8>)>| {
            let writes = std::mem::take(batch);
            self.writer.write_blocking(move |t| {
                for (table, k, v) in writes {
                    t.insert(table, k, v)?;
                }
                Ok(())
            })
        };
        for item in self.t.requests.iter() {
            let (_, v) = item?;
            let r: RequestRec = decode(&v)?;
            let mut messages = Vec::with_capacity(r.messages.len());
            for id in &r.messages {
                messages.extend(self.message(r.env, *id)?);
            }
            built += messages.len();
            batch.extend(intake_entries(&r, &messages));
            if batch.len() >= 2048 {
                flush(&mut batch)?;
            }
        }
        batch.push((Table::Meta, MARKER.to_vec(), vec![1]));
        flush(&mut batch)?;
        Ok(built)
    }
}

fn codec_err(e: uuid::Error) -> StoreError {
    StoreError::Codec(e.to_string())
}

#[cfg(test)]
mod tests;
