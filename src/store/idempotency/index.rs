//! Where each stored answer is, known without reading the store.
//!
//! Answers are stored in batches, one or a few per writer round, under a stamp that grows
//! with every batch (see the module above). Finding the answer of a key therefore needs
//! this map from the key to the stamps of the batches that hold it. It is exact: a key it
//! does not know has no answer, so a new key, which is nearly every key a client sends,
//! costs one hash lookup and no read. A key it knows costs one point read per batch listed
//! (almost always one).
//!
//! The map holds a 64-bit hash of the key, not the key: about 20 bytes per answer alive
//! (a day's worth). Two keys with the same hash both keep their stamps, and the batch read
//! tells them apart. The hasher is seeded at random per process, so a client cannot choose
//! keys that collide.
//!
//! It is filled at start from the stored batches, while the writer already adds new ones;
//! until the fill is done, [`AnswerIndex::is_filled`] is false and a caller must not take
//! "not found" for an answer.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Passthrough>>;

#[derive(Default)]
struct Maps {
    /// The newest stamp per key hash.
    newest: ByHash<u64>,
    /// Older stamps of the same hash: the key answered again after its day, or another
    /// key with the same hash. Rare.
    older: ByHash<Vec<u64>>,
}

/// See the module documentation.
pub struct AnswerIndex {
    hasher: RandomState,
    maps: Mutex<Maps>,
    filled: AtomicBool,
    loaded: tokio::sync::Notify,
    /// The stamp of the newest batch written (the writer's alone to advance).
    last_stamp: AtomicU64,
}

impl Default for AnswerIndex {
    fn default() -> Self {
        AnswerIndex {
            hasher: RandomState::new(),
            maps: Mutex::default(),
            filled: AtomicBool::new(false),
            loaded: tokio::sync::Notify::new(),
            last_stamp: AtomicU64::new(0),
        }
    }
}

/// How many stamps one millisecond holds: a batch's stamp is its time in ms times this,
/// plus a count, so stamps sort by time and the pruner can drop a range of them.
pub const STAMPS_PER_MS: u64 = 1 << 12;

/// The first stamp of millisecond `ms` (times before the epoch count as 0).
pub fn stamp_at(ms: i64) -> u64 {
    (ms.max(0) as u64).saturating_mul(STAMPS_PER_MS)
}

impl AnswerIndex {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hash the map is keyed by.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Notes that the batch `stamp` holds an answer under the key hashed `hash`.
    pub fn add(&self, hash: u64, stamp: u64) {
        let mut m = self.maps();
        let Maps { newest, older } = &mut *m;
        match newest.insert(hash, stamp) {
            None => {}
            Some(was) if was == stamp => {}
            Some(was) => {
                // Keep the newest in `newest`, whichever came first (the fill at start
                // may find an older batch after the writer added a newer one).
                let other = if was > stamp {
                    newest.insert(hash, was);
                    stamp
                } else {
                    was
                };
                let list = older.entry(hash).or_default();
                if !list.contains(&other) {
                    list.push(other);
                }
            }
        }
    }

    /// The stamps of the batches that may hold an answer under `key`, newest first.
    pub fn stamps(&self, key: &[u8]) -> Vec<u64> {
        let hash = self.hash(key);
        let m = self.maps();
        let mut out: Vec<u64> = m.newest.get(&hash).copied().into_iter().collect();
        if let Some(list) = m.older.get(&hash) {
            out.extend(list);
            out.sort_unstable_by(|a, b| b.cmp(a));
        }
        out
    }

    /// Forgets every stamp before `stamp` (their batches were pruned).
    pub fn forget_before(&self, stamp: u64) {
        let mut m = self.maps();
        m.newest.retain(|_, s| *s >= stamp);
        m.older.retain(|_, list| {
            list.retain(|s| *s >= stamp);
            !list.is_empty()
        });
    }

    /// How many keys it knows.
    pub fn known_keys(&self) -> usize {
        self.maps().newest.len()
    }

    /// Whether every batch stored before this process started has been read in.
    pub fn is_filled(&self) -> bool {
        self.filled.load(Ordering::Acquire)
    }

    /// Marks the fill done and wakes everyone waiting for it.
    pub fn mark_filled(&self) {
        self.filled.store(true, Ordering::Release);
        self.loaded.notify_waiters();
    }

    /// Waits until the fill is done.
    pub async fn filled(&self) {
        loop {
            let notified = self.loaded.notified();
            if self.is_filled() {
                return;
            }
            notified.await;
        }
    }

    /// Sets where stamps go on from: the newest stamp stored.
    pub fn start_after(&self, stamp: u64) {
        self.last_stamp.fetch_max(stamp, Ordering::SeqCst);
    }

    /// A new stamp, after every one given so far and no earlier than `ms`. For the
    /// writer thread only: two threads calling it could be given stamps out of order.
    pub fn next_stamp(&self, ms: i64) -> u64 {
        let s = self
            .last_stamp
            .load(Ordering::SeqCst)
            .saturating_add(1)
            .max(stamp_at(ms));
        self.last_stamp.store(s, Ordering::SeqCst);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_lists_every_batch_it_was_stored_in_newest_first_until_they_are_pruned() {
        let ix = AnswerIndex::default();
        let (a, b) = (ix.hash(b"key-a"), ix.hash(b"key-b"));
        ix.add(a, 10);
        ix.add(b, 11);
        // Found again by the fill at start: no duplicate.
        ix.add(a, 10);
        // A newer batch, then an older one found late by the fill.
        ix.add(a, 30);
        ix.add(a, 20);
        assert_eq!(ix.stamps(b"key-a"), vec![30, 20, 10]);
        assert_eq!(ix.stamps(b"key-b"), vec![11]);
        assert!(ix.stamps(b"key-c").is_empty());
        assert_eq!(ix.known_keys(), 2);
        ix.forget_before(20);
        assert_eq!(ix.stamps(b"key-a"), vec![30, 20]);
        assert!(ix.stamps(b"key-b").is_empty());
        ix.forget_before(31);
        assert!(ix.stamps(b"key-a").is_empty());
        assert_eq!(ix.known_keys(), 0);
    }

    #[test]
    fn stamps_grow_even_when_the_clock_steps_back() {
        let ix = AnswerIndex::default();
        let first = ix.next_stamp(1_000);
        assert_eq!(first, stamp_at(1_000));
        let second = ix.next_stamp(1_000);
        let third = ix.next_stamp(500);
        assert!(first < second && second < third);
        assert_eq!(ix.next_stamp(2_000), stamp_at(2_000));
        ix.start_after(stamp_at(5_000));
        assert!(ix.next_stamp(2_000) > stamp_at(5_000));
    }

    #[test]
    fn waiting_for_the_fill_ends_when_it_is_marked() {
        let ix = std::sync::Arc::new(AnswerIndex::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let marker = std::sync::Arc::clone(&ix);
        rt.block_on(async move {
            let wait = tokio::spawn(async move { marker.filled().await });
            tokio::task::yield_now().await;
            assert!(!ix.is_filled());
            ix.mark_filled();
            tokio::time::timeout(std::time::Duration::from_secs(5), wait)
                .await
                .expect("woken")
                .expect("joined");
        });
    }
}
