//! The admin's listings across all partners: messages (newest first, with the tracking
//! criteria plus sender and receiver), failed transmissions, and the outbox's due and held
//! deliveries.
//!
//! Every listing reads a bounded range: the `messages` tree is `env ‖ v7 message id`, so
//! its reverse order is newest first and a first page with no filter reads one page of
//! records. A filter that matches rarely would otherwise scan the whole store for one
//! page; instead a page looks at no more than a given number of records and then answers
//! what it found with a cursor where it stopped, so each call stays short and the caller
//! goes on from there.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode, env_id, partner_id};
use super::deliveries::split_outbox_key;
use super::records::{DeliveryRec, MessageRec, PARKED};
use super::{Store, StoreError};
use crate::model::{Env, Status};

/// How far a message id's time may be from its received time (the id is made just after
/// the time is taken); a received-time range reads this much more on each side.
const ID_SLACK_MS: i64 = 60_000;

/// Which messages a listing or a bulk operation covers. Empty lists mean "any".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageQuery {
    pub env: Env,
    pub sender: Option<String>,
    /// Messages with a transmission to this receiver.
    pub receiver: Option<String>,
    /// Doctypes, compared without regard to ASCII case.
    pub types: Vec<String>,
    pub statuses: Vec<Status>,
    /// Received in `[from, to)`, unix ms.
    pub received: Option<(i64, i64)>,
    /// Message or request ids.
    pub ids: Vec<Uuid>,
    /// Message references, or batch references (resolved to their requests).
    pub refs: Vec<String>,
}

impl MessageQuery {
    /// Whether `m` matches every criterion but the references (see [`Store::list_messages`]).
    pub fn matches(&self, m: &MessageRec) -> bool {
        m.env == self.env
            && self.sender.as_ref().is_none_or(|s| *s == m.sender)
            && self
                .receiver
                .as_ref()
                .is_none_or(|r| m.transmissions.iter().any(|t| t.receiver == *r))
            && (self.types.is_empty()
                || self
                    .types
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&m.doctype)))
            && (self.statuses.is_empty() || self.statuses.contains(&m.status))
            && self
                .received
                .is_none_or(|(from, to)| from <= m.received_at && m.received_at < to)
            && (self.ids.is_empty() || self.ids.contains(&m.id) || self.ids.contains(&m.request_id))
    }
}

/// One page of a listing and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `None` when nothing is left.
    pub next: Option<String>,
}

/// A delivery waiting in the outbox, as the admin lists it.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// The endpoint key as text (`p`/`w`, environment, name).
    pub endpoint: String,
    /// When it is due (unix ms); `None` while it is held.
    pub due: Option<i64>,
    pub delivery: DeliveryRec,
}

impl Store {
    /// Messages matching `q`, newest first: at most `limit`, with ids below `before`,
    /// looking at no more than `max_scan` records. Blocking: call it off the async threads.
    pub fn list_messages(
        &self,
        q: &MessageQuery,
        before: Option<Uuid>,
        limit: usize,
        max_scan: usize,
    ) -> Result<Page<MessageRec>, StoreError> {
        if !q.ids.is_empty() || !q.refs.is_empty() {
            return self.list_named(q, before, limit);
        }
        let env = q.env;
        let (from, to) = q.received.unwrap_or((0, i64::MAX));
        let low = env_id(env, id_floor(from.saturating_sub(ID_SLACK_MS)));
        let mut high = env_id(env, id_floor(to.saturating_add(ID_SLACK_MS)));
        if let Some(b) = before {
            high = high.min(env_id(env, b));
        }
        let mut items = Vec::new();
        let mut scanned = 0usize;
        for item in self.t.messages.range(low..high).rev() {
            let (_, v) = item?;
            let m: MessageRec = decode(&v)?;
            scanned += 1;
            let id = m.id;
            if q.matches(&m) {
                items.push(m);
                if items.len() >= limit {
                    return Ok(Page {
                        items,
                        next: Some(id.to_string()),
                    });
                }
            }
            if scanned >= max_scan {
                return Ok(Page {
                    items,
                    next: Some(id.to_string()),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    /// The messages named by ids or references, newest first: few, so all are read.
    fn list_named(
        &self,
        q: &MessageQuery,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<MessageRec>, StoreError> {
        let dir = self.directory();
        let senders: Vec<String> = match &q.sender {
            Some(s) => vec![s.clone()],
            None => dir.partners().iter().map(|p| p.code.clone()).collect(),
        };
        let mut ids: HashSet<Uuid> = HashSet::new();
        let mut by_ref: Option<HashSet<Uuid>> = None;
        for id in &q.ids {
            if self.message(q.env, *id)?.is_some() {
                ids.insert(*id);
                continue;
            }
            for s in &senders {
                for item in self.t.tracking.scan_prefix(partner_id(q.env, s, *id)) {
                    let (k, _) = item?;
                    if let Some(m) = tail_id(&k) {
                        ids.insert(m);
                    }
                }
            }
        }
        if !q.refs.is_empty() {
            let mut found = HashSet::new();
            for s in &senders {
                for r in &q.refs {
                    for (request, message) in self.reference_hits(q.env, s, r)? {
                        if message.is_nil() {
                            if let Some(req) = self.request(q.env, s, request)? {
                                found.extend(req.messages);
                            }
                        } else {
                            found.insert(message);
                        }
                    }
                }
            }
            by_ref = Some(found);
        }
        let named: Vec<Uuid> = match (q.ids.is_empty(), by_ref) {
            (false, Some(r)) => ids.intersection(&r).copied().collect(),
            (true, Some(r)) => r.into_iter().collect(),
            (_, None) => ids.into_iter().collect(),
        };
        // Ids are checked by the lookups above; the rest of the criteria by `matches`.
        let rest = MessageQuery {
            ids: Vec::new(),
            ..q.clone()
        };
        let mut items = Vec::new();
        for id in named {
            if before.is_some_and(|b| id >= b) {
                continue;
            }
            if let Some(m) = self.message(q.env, id)? {
                if rest.matches(&m) {
                    items.push(m);
                }
            }
        }
        items.sort_by_key(|m| std::cmp::Reverse(m.id));
        let next = (items.len() > limit).then(|| items[limit - 1].id.to_string());
        items.truncate(limit);
        Ok(Page { items, next })
    }

    /// Failed transmissions as `(message, index)`, newest message first, with the same
    /// paging and bound as [`Store::list_messages`].
    pub fn list_failed(
        &self,
        env: Env,
        receiver: Option<&str>,
        before: Option<Uuid>,
        limit: usize,
        max_scan: usize,
    ) -> Result<Page<(MessageRec, usize)>, StoreError> {
        let low = env_id(env, Uuid::nil());
        let high = match before {
            Some(b) => env_id(env, b),
            None => env_id(env, Uuid::max()),
        };
        let mut items = Vec::new();
        let mut scanned = 0usize;
        for item in self.t.messages.range(low..high).rev() {
            let (_, v) = item?;
            let m: MessageRec = decode(&v)?;
            scanned += 1;
            let id = m.id;
            let failed: Vec<usize> = m
                .transmissions
                .iter()
                .enumerate()
                .filter(|(_, t)| t.status == Status::Failed)
                .filter(|(_, t)| receiver.is_none_or(|r| r == t.receiver))
                .map(|(i, _)| i)
                .collect();
            for i in failed {
                items.push((m.clone(), i));
            }
            if items.len() >= limit || scanned >= max_scan {
                return Ok(Page {
                    items,
                    next: Some(id.to_string()),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    /// Outbox entries that are due (`held` false: due now or at a scheduled retry) or
    /// held, in endpoint and due order, after the key `after` (a cursor from an earlier
    /// page), looking at no more than `max_scan` keys.
    pub fn list_outbox(
        &self,
        held: bool,
        after: Option<Vec<u8>>,
        limit: usize,
        max_scan: usize,
    ) -> Result<Page<OutboxEntry>, StoreError> {
        let range = match &after {
            Some(k) => self.t.outbox.range((
                std::ops::Bound::Excluded(k.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => self.t.outbox.iter(),
        };
        let mut items = Vec::new();
        let mut scanned = 0usize;
        for item in range {
            let (k, v) = item?;
            scanned += 1;
            let Some((endpoint, due, _)) = split_outbox_key(&k) else {
                continue;
            };
            if (due == PARKED) == held {
                items.push(OutboxEntry {
                    endpoint: endpoint_text(endpoint),
                    due: (due != PARKED).then_some(due.min(i64::MAX as u64) as i64),
                    delivery: decode(&v)?,
                });
            }
            if items.len() >= limit || scanned >= max_scan {
                return Ok(Page {
                    items,
                    next: Some(hex(&k)),
                });
            }
        }
        Ok(Page { items, next: None })
    }
}

/// The smallest v7 id whose time is `ms`.
fn id_floor(ms: i64) -> Uuid {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

/// The last 16 bytes of a key as an id.
fn tail_id(key: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(key.get(key.len().checked_sub(16)?..)?).ok()
}

/// `p:live:ACME` for a push endpoint key, `w:test:ACME` for a webhook one.
fn endpoint_text(key: &[u8]) -> String {
    let kind = key.first().map_or('?', |k| char::from(*k));
    let env = key.get(1).copied().and_then(Env::from_byte);
    let name = key.get(2..).unwrap_or_default();
    format!(
        "{kind}:{}:{}",
        env.map_or("?", Env::as_str),
        String::from_utf8_lossy(name)
    )
}

/// A key as lowercase hex: the outbox cursor.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hex cursor back to its key; `None` when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 1024 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let k = vec![0u8, 0xff, 0x10, 7];
        assert_eq!(unhex(&hex(&k)), Some(k));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn endpoints_read_as_text() {
        assert_eq!(endpoint_text(b"p\x00ACME"), "p:live:ACME");
        assert_eq!(endpoint_text(b"w\x01GLOBEX"), "w:test:GLOBEX");
        assert_eq!(endpoint_text(b""), "?:?:");
    }
}
