//! When each API key was last used. Noted in memory on every authenticated request (a
//! map update, no write), and saved by the housekeeping loop at most once a minute per
//! key, through the writer, in `meta` under `key_used ‖ key id` (i64 BE unix ms). After a
//! crash at most the last minute of use is forgotten.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use super::writer::Table;
use super::{Store, StoreError};

const PREFIX: &[u8] = b"key_used";

/// Last use per key: (noted, saved).
#[derive(Default)]
pub struct KeyUse {
    seen: Mutex<HashMap<Uuid, (i64, i64)>>,
}

fn use_key(id: Uuid) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

impl Store {
    /// Notes that key `id` was used at `now`.
    pub fn note_key_use(&self, id: Uuid, now: i64) {
        let mut seen = self.key_use.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(id).or_insert((now, 0));
        entry.0 = entry.0.max(now);
    }

    /// When key `id` was last used, as far as is known.
    pub fn key_last_used(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
        let noted = {
            let seen = self.key_use.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(&id).map(|(at, _)| *at)
        };
        if noted.is_some() {
            return Ok(noted);
        }
        Ok(self
            .t
            .meta
            .get(use_key(id))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    /// Saves the uses noted since the last save, in one writer job; returns how many.
    pub async fn save_key_uses(&self) -> Result<usize, StoreError> {
        let due: Vec<(Uuid, i64)> = {
            let mut seen = self.key_use.seen.lock().unwrap_or_else(|p| p.into_inner());
            let dir = self.directory();
            // Keys revoked or deleted since are forgotten, so the map stays small.
            seen.retain(|id, _| dir.key_principal(*id).is_some());
            seen.iter_mut()
                .filter(|(_, (noted, saved))| noted > saved)
                .map(|(id, (noted, saved))| {
                    *saved = *noted;
                    (*id, *noted)
                })
                .collect()
        };
        let n = due.len();
        if n > 0 {
            self.writer
                .write_waiting(move |t| {
                    for (id, at) in due {
                        t.insert(Table::Meta, use_key(id), at.to_be_bytes().to_vec())?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(n)
    }
}
