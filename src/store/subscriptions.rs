//! Event subscriptions: partners' callback URLs with an `{ids}` placeholder, the ids waiting
//! for their batch, and the in-memory index that lets a change find its watchers cheaply.
//!
//! Trees:
//! - `subscriptions`: `env ‖ subscription id` → [`SubscriptionRec`].
//! - `sub_pending`: `subscription id ‖ event (1 byte) ‖ object id` → when it changed (u64 BE
//!   ms). One entry per id and event however often it changed: a repeated change overwrites
//!   the entry, so a batch names each id once.
//!
//! Durability: a pending entry is written by the same writer job as the change that feeds it
//! ([`Tx::feed`]), so a crash inside the batch window loses no id. The flusher
//! ([`Store::flush_subscription`]) turns a subscription's entries into outbox deliveries in
//! one writer job that also removes them; from there the delivery engine owns the call.
//!
//! The index ([`SubIndex`]) holds every subscription's owner, events and state. The writer
//! consults it for every change (a hash lookup by environment, event and partner, skipped
//! altogether while nothing is subscribed); it is changed only inside writer jobs, so it is
//! in step with the order in which changes are applied.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode, encode, env_id, Record};
use super::deliveries::{due_at, outbox_key, Queued};
use super::records::{DeliveryRec, SigningSecrets, Target};
use super::writer::{Table, Tx};
use super::{Store, StoreError};
use crate::model::Env;

mod index;
pub use index::{Brief, Snapshot, SubIndex};

/// The longest callback URL, placeholder included: a call's URL is this plus its ids.
pub const MAX_URL_TEMPLATE: usize = 1900;
/// The longest URL a call is made to; more ids than fit make more calls.
pub const MAX_CALL_URL: usize = 2000;
/// What the ids replace.
pub const PLACEHOLDER: &str = "{ids}";
/// Subscriptions one partner may hold in one environment.
pub const MAX_PER_PARTNER: usize = 100;
/// Attempts kept on a subscription's record for its health view.
pub const LAST_ATTEMPTS_KEPT: usize = 10;
/// Most pending ids turned into calls by one flush; the rest wait for the next.
pub const FLUSH_MAX_IDS: usize = 20_000;

/// What a subscription can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    /// The status of a message the owner sent or receives changed.
    MessageStatus,
    /// A transmission to the owner was created (a pull receiver has work to fetch).
    TransmissionCreated,
    /// A background job of the owner ended (completed, failed or cancelled).
    BackgroundCompleted,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::MessageStatus,
        EventKind::TransmissionCreated,
        EventKind::BackgroundCompleted,
    ];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessageStatus => "message.status",
            EventKind::TransmissionCreated => "transmission.created",
            EventKind::BackgroundCompleted => "background.completed",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|e| e.as_str() == s)
    }

    fn byte(self) -> u8 {
        match self {
            EventKind::MessageStatus => 0,
            EventKind::TransmissionCreated => 1,
            EventKind::BackgroundCompleted => 2,
        }
    }

    fn from_byte(b: u8) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|e| e.byte() == b)
    }
}

/// One attempt as a subscription's health view shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptNote {
    pub at: i64,
    /// The delivery (its attempt log is under this id), and the attempt's number in it.
    pub delivery: Uuid,
    pub attempt: u32,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// Ids the call named.
    pub ids: u32,
    /// A test call made through the API, which does not count toward health.
    pub test: bool,
}

/// A subscription. Key in `subscriptions`: `env ‖ id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionRec {
    pub id: Uuid,
    pub env: Env,
    /// The partner that owns it.
    pub partner: String,
    pub system_name: String,
    /// The callback URL with one `{ids}` placeholder.
    pub url: String,
    /// Sent as `Authorization`; never shown in full after creation.
    pub auth_header: Option<String>,
    pub customer: Option<String>,
    pub events: Vec<EventKind>,
    pub active: bool,
    /// When and why it was turned off (by its owner, an admin, or for failing too long).
    pub disabled: Option<(i64, String)>,
    /// When it was last turned on: failures before this do not count toward disabling it.
    pub enabled_at: i64,
    /// The Standard Webhooks secret its calls are signed with.
    pub signing: SigningSecrets,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_success_at: Option<i64>,
    /// Failed calls since the last success.
    pub failures: u32,
    /// The most recent attempts, newest last, at most [`LAST_ATTEMPTS_KEPT`].
    pub last_attempts: Vec<AttemptNote>,
}

impl Record for SubscriptionRec {}

impl SubscriptionRec {
    /// Adds an attempt to the record's short history, and to its success or failure count
    /// unless it is a test.
    pub fn note(&mut self, note: AttemptNote) {
        if !note.test {
            if note.status.is_some_and(|s| (200..300).contains(&s)) && note.error.is_none() {
                self.last_success_at = Some(note.at);
                self.failures = 0;
            } else {
                self.failures = self.failures.saturating_add(1);
            }
        }
        if self.last_attempts.len() >= LAST_ATTEMPTS_KEPT {
            self.last_attempts.remove(0);
        }
        self.last_attempts.push(note);
    }

    /// Whether it watches `event`.
    pub fn watches(&self, event: EventKind) -> bool {
        self.events.contains(&event)
    }
}

/// The endpoint key of a subscription's calls: `s ‖ env ‖ id as hex` (no 0xFF in it, like
/// every endpoint key). Each subscription is its own endpoint: its own queue, cap and health.
pub fn subscription_endpoint(env: Env, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(34);
    k.push(b's');
    k.push(env.byte());
    k.extend_from_slice(id.simple().to_string().as_bytes());
    k
}

/// The environment and subscription id of an `s` endpoint key.
pub fn parse_subscription_endpoint(endpoint: &[u8]) -> Option<(Env, Uuid)> {
    match endpoint {
        [b's', env, hex @ ..] => Some((Env::from_byte(*env)?, Uuid::try_parse_ascii(hex).ok()?)),
        _ => None,
    }
}

/// `subscription id ‖ event ‖ object id`.
fn pending_key(sub: Uuid, event: EventKind, id: Uuid) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[..16].copy_from_slice(sub.as_bytes());
    k[16] = event.byte();
    k[17..].copy_from_slice(id.as_bytes());
    k
}

/// The characters of an id left as they are in a URL; everything else is percent-encoded.
const ID_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `url` with its placeholder replaced by `ids`, percent-encoded and comma-joined.
pub fn render_url(url: &str, ids: &[Uuid]) -> String {
    let joined = ids
        .iter()
        .map(|id| percent_encoding::utf8_percent_encode(&id.to_string(), ID_KEEP).to_string())
        .collect::<Vec<_>>()
        .join(",");
    url.replacen(PLACEHOLDER, &joined, 1)
}

/// `ids` cut into groups, in order, so that `url` rendered with each group is at most
/// [`MAX_CALL_URL`] characters. Every id lands in exactly one group (a URL template too long
/// for even one id still gets one id per group; templates are limited so that none is).
pub fn split_ids(url: &str, ids: &[Uuid]) -> Vec<Vec<Uuid>> {
    let base = url.len().saturating_sub(PLACEHOLDER.len());
    let mut out: Vec<Vec<Uuid>> = Vec::new();
    let mut len = base;
    for id in ids {
        let one = percent_encoding::utf8_percent_encode(&id.to_string(), ID_KEEP)
            .to_string()
            .len();
        match out.last_mut() {
            Some(group) if len + 1 + one <= MAX_CALL_URL => {
                group.push(*id);
                len += 1 + one;
            }
            _ => {
                out.push(vec![*id]);
                len = base + one;
            }
        }
    }
    out
}

/// A change to a subscription made by its owner or an admin.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    /// `Some(None)` removes it.
    pub auth_header: Option<Option<String>>,
    pub events: Option<Vec<EventKind>>,
    pub active: Option<bool>,
}

/// Who turns a subscription off, for the reason it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangedBy {
    Owner,
    Admin,
}

/// The result of a change or deletion.
#[derive(Debug)]
pub enum SubChange {
    Done(Box<SubscriptionRec>),
    NotFound,
    /// The partner already holds [`MAX_PER_PARTNER`] subscriptions in this environment.
    Full,
}

/// A batch turned into calls by [`Store::flush_subscription`].
#[derive(Debug, Default)]
pub struct Flushed {
    /// Ids taken out of the pending tree.
    pub ids: usize,
    /// Deliveries queued.
    pub calls: usize,
    /// More ids were waiting than one flush takes.
    pub more: bool,
}

fn get_sub(t: &Tx<'_>, env: Env, id: Uuid) -> Result<Option<SubscriptionRec>, StoreError> {
    t.get(Table::Subscriptions, env_id(env, id))?
        .map(|raw| decode(&raw))
        .transpose()
}

/// Applies `patch` to `rec` at `now`.
fn apply_patch(rec: &mut SubscriptionRec, patch: SubscriptionPatch, by: ChangedBy, now: i64) {
    if let Some(url) = patch.url {
        rec.url = url;
    }
    if let Some(h) = patch.auth_header {
        rec.auth_header = h;
    }
    if let Some(e) = patch.events {
        rec.events = e;
    }
    match patch.active {
        Some(true) if !rec.active => {
            rec.active = true;
            rec.disabled = None;
            rec.enabled_at = now;
        }
        Some(false) if rec.active => {
            rec.active = false;
            let why = match by {
                ChangedBy::Owner => "turned off by its owner",
                ChangedBy::Admin => "turned off by an admin",
            };
            rec.disabled = Some((now, why.to_owned()));
        }
        _ => {}
    }
    rec.updated_at = now;
}

impl Store {
    /// The in-memory index of subscriptions.
    pub fn subscription_index(&self) -> &SubIndex {
        &self.subs
    }

    /// Loads the index at open: every subscription, and which have ids waiting from before
    /// (a crash inside a window): those are due one window after the start.
    pub(super) fn load_subscriptions(t: &super::Trees, index: &SubIndex) -> Result<(), StoreError> {
        let mut recs = Vec::new();
        for item in t.subscriptions.iter() {
            let (_, v) = item?;
            match decode::<SubscriptionRec>(&v) {
                Ok(r) => recs.push(r),
                Err(e) => {
                    tracing::error!(error = %e, "a subscription record cannot be read; skipped")
                }
            }
        }
        index.replace(Snapshot::from_records(recs));
        let mut waiting = Vec::new();
        let mut cursor: Vec<u8> = Vec::new();
        // One seek per subscription with pending ids, not a walk over every id.
        while let Some(item) = t.sub_pending.range(cursor.as_slice()..).next() {
            let (k, _) = item?;
            let Some(sub) = k.get(..16).and_then(|b| Uuid::from_slice(b).ok()) else {
                break;
            };
            waiting.push(sub);
            cursor = k[..16].to_vec();
            cursor.extend_from_slice(&[0xFF; 17]);
        }
        if !waiting.is_empty() {
            tracing::info!(
                subscriptions = waiting.len(),
                "event ids from before the restart are waiting for their callbacks"
            );
        }
        index.mark_pending(&waiting, super::now_ms());
        Ok(())
    }

    /// A subscription, if it exists in `env`.
    pub fn subscription(&self, env: Env, id: Uuid) -> Result<Option<SubscriptionRec>, StoreError> {
        self.t
            .subscriptions
            .get(env_id(env, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// `partner`'s subscriptions in `env`, oldest first.
    pub fn partner_subscriptions(
        &self,
        env: Env,
        partner: &str,
    ) -> Result<Vec<SubscriptionRec>, StoreError> {
        let mut out = Vec::new();
        for id in self.subs.snapshot().of_partner(env, partner) {
            if let Some(r) = self.subscription(env, id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every subscription of `env` (both when `None`), oldest first.
    pub fn all_subscriptions(&self, env: Option<Env>) -> Result<Vec<SubscriptionRec>, StoreError> {
        let mut out = Vec::new();
        for e in [Env::Live, Env::Test] {
            if env.is_some_and(|want| want != e) {
                continue;
            }
            for item in self.t.subscriptions.scan_prefix([e.byte()]) {
                let (_, v) = item?;
                out.push(decode::<SubscriptionRec>(&v)?);
            }
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// How many ids wait for a subscription's next batch (an admin view; counts up to
    /// `limit`).
    pub fn pending_ids(&self, id: Uuid, limit: usize) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.t.sub_pending.scan_prefix(id.as_bytes()).keys() {
            item?;
            n += 1;
            if n >= limit {
                break;
            }
        }
        Ok(n)
    }

    /// Stores a new subscription, and the creation's answer under its idempotency key in
    /// the same write. `Full` when the partner already holds [`MAX_PER_PARTNER`].
    pub async fn create_subscription(
        &self,
        rec: SubscriptionRec,
        idem: Option<super::IdemPut>,
    ) -> Result<SubChange, StoreError> {
        let value = encode(&rec)?;
        let subs = Arc::clone(&self.subs);
        self.writer
            .write(move |t| {
                if subs.snapshot().of_partner(rec.env, &rec.partner).len() >= MAX_PER_PARTNER {
                    return Ok(SubChange::Full);
                }
                t.insert(Table::Subscriptions, env_id(rec.env, rec.id), value)?;
                if let Some(put) = idem {
                    put.write(t)?;
                }
                subs.upsert(&rec);
                Ok(SubChange::Done(Box::new(rec)))
            })
            .await
    }

    /// Changes a subscription of `partner` (any partner's for `None`, an admin), with the
    /// answer rendered for its idempotency key in the same write. Turning one on lets its
    /// parked calls go.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_subscription(
        &self,
        env: Env,
        id: Uuid,
        partner: Option<String>,
        patch: SubscriptionPatch,
        by: ChangedBy,
        idem: Option<super::Remember<SubChange>>,
        now: i64,
    ) -> Result<SubChange, StoreError> {
        let subs = Arc::clone(&self.subs);
        let reenabled = patch.active == Some(true);
        let out = self
            .writer
            .write(move |t| {
                let found = get_sub(t, env, id)?
                    .filter(|r| partner.as_ref().is_none_or(|p| *p == r.partner));
                let Some(mut rec) = found else {
                    return Ok(SubChange::NotFound);
                };
                apply_patch(&mut rec, patch, by, now);
                let value = encode(&rec)?;
                t.insert(Table::Subscriptions, env_id(env, id), value)?;
                subs.upsert(&rec);
                let out = SubChange::Done(Box::new(rec));
                if let Some(r) = idem {
                    r.write(t, &out)?;
                }
                Ok(out)
            })
            .await?;
        if reenabled {
            self.outbox.rescan();
        }
        Ok(out)
    }

    /// Turns a subscription off because its calls fail (no success for too long, or a 410).
    pub async fn disable_subscription(
        &self,
        env: Env,
        id: Uuid,
        reason: String,
        now: i64,
    ) -> Result<(), StoreError> {
        if self.subs.snapshot().get(id).is_none_or(|b| !b.active) {
            return Ok(());
        }
        tracing::warn!(subscription = %id, %reason, "subscription disabled");
        let subs = Arc::clone(&self.subs);
        self.writer
            .write_waiting(move |t| {
                let Some(mut rec) = get_sub(t, env, id)?.filter(|r| r.active) else {
                    return Ok(());
                };
                rec.active = false;
                rec.disabled = Some((now, reason));
                rec.updated_at = now;
                t.insert(Table::Subscriptions, env_id(env, id), encode(&rec)?)?;
                subs.upsert(&rec);
                Ok(())
            })
            .await
    }

    /// Deletes a subscription of `partner` with its pending ids, its queued calls and its
    /// endpoint health, so no call is made for it afterwards. Ids fed between the scan here
    /// and the job are removed by the flusher, which finds the subscription gone.
    pub async fn delete_subscription(
        &self,
        env: Env,
        id: Uuid,
        partner: String,
        idem: Option<super::Remember<SubChange>>,
    ) -> Result<SubChange, StoreError> {
        let mut pending = Vec::new();
        for item in self.t.sub_pending.scan_prefix(id.as_bytes()).keys() {
            pending.push(item?.to_vec());
        }
        let endpoint = subscription_endpoint(env, id);
        let mut prefix = endpoint.clone();
        prefix.push(super::codec::SEP);
        let mut queued = Vec::new();
        for item in self.t.outbox.scan_prefix(&prefix).keys() {
            queued.push(item?.to_vec());
        }
        let subs = Arc::clone(&self.subs);
        self.writer
            .write(move |t| {
                let found = get_sub(t, env, id)?.filter(|r| r.partner == partner);
                let Some(rec) = found else {
                    return Ok(SubChange::NotFound);
                };
                t.remove(Table::Subscriptions, env_id(env, id))?;
                for k in pending {
                    t.remove(Table::SubPending, k)?;
                }
                for k in queued {
                    t.remove(Table::Outbox, k)?;
                }
                t.remove(Table::EndpointHealth, &endpoint)?;
                subs.remove(id);
                let out = SubChange::Done(Box::new(rec));
                if let Some(r) = idem {
                    r.write(t, &out)?;
                }
                Ok(out)
            })
            .await
    }

    /// Records a test call's outcome on the subscription and in the attempt log.
    pub async fn note_test_call(
        &self,
        env: Env,
        id: Uuid,
        note: AttemptNote,
        attempt: super::records::AttemptRec,
    ) -> Result<(), StoreError> {
        let attempt = encode(&attempt)?;
        self.writer
            .write_waiting(move |t| {
                let Some(mut rec) = get_sub(t, env, id)? else {
                    return Ok(());
                };
                let delivery = note.delivery;
                rec.note(note);
                t.insert(Table::Subscriptions, env_id(env, id), encode(&rec)?)?;
                t.insert(
                    Table::Attempts,
                    super::deliveries::attempt_key(env, delivery, 1),
                    attempt,
                )
            })
            .await
    }

    /// Turns the ids waiting for subscription `id` into calls: grouped by event, split so
    /// each URL stays within [`MAX_CALL_URL`], queued in the outbox by one writer job that
    /// also removes the pending entries. For a subscription that is gone or turned off, the
    /// entries are only removed.
    pub async fn flush_subscription(&self, id: Uuid, now: i64) -> Result<Flushed, StoreError> {
        let env = self.subs.snapshot().get(id).map(|b| b.env);
        let rec = match env {
            Some(env) => self.subscription(env, id)?,
            None => None,
        };
        let mut keys = Vec::new();
        let mut by_event: Vec<(EventKind, Vec<Uuid>, i64)> = Vec::new();
        let mut more = false;
        for item in self.t.sub_pending.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            if keys.len() >= FLUSH_MAX_IDS {
                more = true;
                break;
            }
            let parsed = (
                k.get(16).copied().and_then(EventKind::from_byte),
                k.get(17..33).and_then(|b| Uuid::from_slice(b).ok()),
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| u64::from_be_bytes(b).min(i64::MAX as u64) as i64),
            );
            keys.push(k.to_vec());
            let (Some(event), Some(object), Some(at)) = parsed else {
                tracing::error!(subscription = %id, "an unreadable pending event entry is dropped");
                continue;
            };
            match by_event.last_mut() {
                Some((e, ids, last)) if *e == event => {
                    ids.push(object);
                    *last = (*last).max(at);
                }
                _ => by_event.push((event, vec![object], at)),
            }
        }
        let ids = keys.len();
        if ids == 0 {
            return Ok(Flushed::default());
        }
        let mut queued = Vec::new();
        if let Some(rec) = rec.as_ref().filter(|r| r.active) {
            let endpoint = subscription_endpoint(rec.env, rec.id);
            let due = due_at(now);
            for (event, objects, occurred_at) in by_event {
                if !rec.watches(event) {
                    continue;
                }
                for group in split_ids(&rec.url, &objects) {
                    let delivery = DeliveryRec {
                        id: Uuid::now_v7(),
                        env: rec.env,
                        target: Target::Subscription {
                            subscription: rec.id,
                            event,
                            ids: group,
                            occurred_at,
                        },
                        attempt: 0,
                        tries: 0,
                    };
                    queued.push(Queued {
                        key: outbox_key(&endpoint, due, delivery.id),
                        due,
                        delivery,
                        prefetched: None,
                    });
                }
            }
        }
        let values = queued
            .iter()
            .map(|q| encode(&q.delivery).map(|v| (q.key.clone(), v)))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env.unwrap_or(Env::Live);
        let sent = self
            .writer
            .write_waiting(move |t| {
                // Deleted or turned off since it was read: its ids are dropped.
                let live = !values.is_empty() && get_sub(t, env, id)?.is_some_and(|r| r.active);
                for k in keys {
                    t.remove(Table::SubPending, k)?;
                }
                if live {
                    for (k, v) in values {
                        t.insert(Table::Outbox, k, v)?;
                    }
                }
                Ok(live)
            })
            .await?;
        let calls = if sent { queued.len() } else { 0 };
        if sent {
            self.outbox.offer(queued);
        }
        Ok(Flushed { ids, calls, more })
    }
}

/// A record to write: its key and encoded value.
pub(super) type RecordWrite = ([u8; 17], Vec<u8>);

/// A subscription delivery's effect on its subscription's record, decided before any write:
/// the attempt noted in its short history. `None` when there was no attempt or the
/// subscription is gone.
pub(super) fn attempt_note_update(
    t: &Tx<'_>,
    env: Env,
    subscription: Uuid,
    note: AttemptNote,
) -> Result<Option<RecordWrite>, StoreError> {
    let Some(mut rec) = get_sub(t, env, subscription)? else {
        return Ok(None);
    };
    rec.note(note);
    Ok(Some((env_id(env, subscription), encode(&rec)?)))
}

/// Whether a subscription's calls are held back (`Some(true)`: turned off), judged inside
/// the writer's transaction; `None` when it is gone.
pub(super) fn held_in_tx(t: &Tx<'_>, env: Env, id: Uuid) -> Result<Option<bool>, StoreError> {
    Ok(get_sub(t, env, id)?.map(|r| !r.active))
}

#[cfg(test)]
mod tests;
