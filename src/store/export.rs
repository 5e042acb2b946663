//! The message export: messages received in a time range, oldest first, read straight
//! from the `messages` tree (keyed `env ‖ v7 id`, so key order is time order) a record at
//! a time, for streaming out. Nothing is gathered in memory.

use std::iter::Peekable;

use bytes::Bytes;

use super::codec::decode;
use super::{MessageRec, Store, StoreError};
use crate::model::Env;

/// Message ids are made a moment after the received time is taken; the key range is
/// widened by this much so no message at the range's edges is missed, then filtered on
/// the exact received time.
const ID_SLACK_MS: i64 = 60_000;

/// The smallest `env ‖ id` key of a v7 id made at `ms`.
fn key_at(env: Env, ms: i64) -> [u8; 17] {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let mut k = [0u8; 17];
    k[0] = env.byte();
    k[1..7].copy_from_slice(&ms.to_be_bytes()[2..]);
    k
}

impl Store {
    /// Hands `each` every message of `envs` received at `since` or later and before
    /// `until`, oldest first across the environments, until it returns `false`. Reads
    /// on the calling thread: run it on a blocking one.
    pub fn export_messages(
        &self,
        envs: &[Env],
        since: i64,
        until: i64,
        mut each: impl FnMut(MessageRec) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut iters: Vec<Peekable<_>> = envs
            .iter()
            .map(|env| {
                self.t
                    .messages
                    .range(key_at(*env, since - ID_SLACK_MS)..key_at(*env, until + ID_SLACK_MS))
                    .peekable()
            })
            .collect();
        loop {
            // The environment whose next message is oldest; ids order by time.
            let mut next: Option<(usize, Vec<u8>)> = None;
            for (i, it) in iters.iter_mut().enumerate() {
                let id = match it.peek() {
                    None => continue,
                    Some(Err(_)) => {
                        // Surface the storage error.
                        if let Some(Err(e)) = it.next() {
                            return Err(e.into());
                        }
                        continue;
                    }
                    Some(Ok((k, _))) => k.get(1..).unwrap_or_default().to_vec(),
                };
                if next.as_ref().is_none_or(|(_, best)| id < *best) {
                    next = Some((i, id));
                }
            }
            let Some((i, _)) = next else {
                return Ok(());
            };
            let Some(Ok((_, v))) = iters[i].next() else {
                continue;
            };
            let m: MessageRec = decode(&v)?;
            if m.received_at < since || m.received_at >= until {
                continue;
            }
            if !each(m)? {
                return Ok(());
            }
        }
    }

    /// A message's payload, for an export: the bytes, or why they cannot be read.
    pub fn export_payload(&self, m: &MessageRec) -> Result<Bytes, StoreError> {
        self.payload_log.read(&m.payload)
    }
}
