//! Which idempotency keys may have a stored answer, known without reading the store.
//!
//! Nearly every `Idempotency-Key` a client sends is new. Looking each one up in sled
//! costs more than the lookup itself: a sled read waits while the writer's transaction
//! is open, and an async worker waiting there stalls every request it serves. So keys
//! pass through a Bloom filter first; only a key the filter may have seen is read from
//! the store. A false positive costs one read; a false negative cannot happen, because
//! every key that can have an answer was either added when its first call began (in
//! this process) or found in the store when the filter was filled at start. Until that
//! fill is done, every key is read from the store.
//!
//! Answers live 24 hours, so the filter has two generations of one day each: keys go
//! into the current one, both are checked, and the older one is dropped when a new day
//! begins. A key added at time t is in a generation that is dropped no sooner than
//! t + 24 h.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

/// Bits per generation: 2 MiB. With four probes, a day of one million new keys gives
/// about 0.2 % false positives, four million about 16 %: still correct, only slower.
const BITS: usize = 1 << 24;
const WORDS: usize = BITS / 64;
const PROBES: u64 = 4;
/// How long a generation takes keys (ms).
const GENERATION_MS: i64 = 24 * 3600 * 1000;

struct Generation {
    started: i64,
    words: Vec<AtomicU64>,
}

impl Generation {
    fn new(started: i64) -> Generation {
        Generation {
            started,
            words: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn positions(hash: u64) -> impl Iterator<Item = usize> {
        // Two halves of one hash make the probes (double hashing); the step is odd so
        // the probes differ.
        let (a, b) = (hash & 0xFFFF_FFFF, (hash >> 32) | 1);
        (0..PROBES).map(move |i| (a.wrapping_add(i.wrapping_mul(b)) as usize) % BITS)
    }

    fn add(&self, hash: u64) {
        for p in Self::positions(hash) {
            self.words[p / 64].fetch_or(1 << (p % 64), Ordering::Relaxed);
        }
    }

    fn may_hold(&self, hash: u64) -> bool {
        Self::positions(hash)
            .all(|p| self.words[p / 64].load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }
}

/// The filter; see the module documentation.
pub struct SeenKeys {
    hasher: RandomState,
    /// Set once every key already in the store has been added.
    filled: AtomicBool,
    /// The current generation and the one before it.
    gens: RwLock<(Generation, Option<Generation>)>,
}

impl Default for SeenKeys {
    fn default() -> Self {
        SeenKeys::new(crate::store::now_ms())
    }
}

impl SeenKeys {
    fn new(now: i64) -> SeenKeys {
        SeenKeys {
            hasher: RandomState::new(),
            filled: AtomicBool::new(false),
            gens: RwLock::new((Generation::new(now), None)),
        }
    }

    fn rotate_if_due(&self, now: i64) {
        let due = {
            let g = self.gens.read().unwrap_or_else(|p| p.into_inner());
            now - g.0.started >= GENERATION_MS
        };
        if due {
            let mut g = self.gens.write().unwrap_or_else(|p| p.into_inner());
            if now - g.0.started >= GENERATION_MS {
                let old = std::mem::replace(&mut g.0, Generation::new(now));
                g.1 = Some(old);
            }
        }
    }

    /// Notes that `key` may have an answer from now on.
    pub fn add(&self, key: &[u8], now: i64) {
        self.rotate_if_due(now);
        let hash = self.hasher.hash_one(key);
        self.gens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .add(hash);
    }

    /// Whether `key` may have an answer; `false` means it certainly has none.
    pub fn may_hold(&self, key: &[u8], now: i64) -> bool {
        if !self.filled.load(Ordering::Acquire) {
            return true;
        }
        self.rotate_if_due(now);
        let hash = self.hasher.hash_one(key);
        let g = self.gens.read().unwrap_or_else(|p| p.into_inner());
        g.0.may_hold(hash) || g.1.as_ref().is_some_and(|o| o.may_hold(hash))
    }

    /// Whether every key in the store has been added.
    pub fn is_filled(&self) -> bool {
        self.filled.load(Ordering::Acquire)
    }

    /// Marks the filter complete: every key in the store has been added.
    pub fn mark_filled(&self) {
        self.filled.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_key_is_held_for_at_least_a_day_and_dropped_after_two() {
        let s = SeenKeys::new(0);
        assert!(s.may_hold(b"k1", 0), "unfilled: everything may be held");
        s.mark_filled();
        assert!(!s.may_hold(b"k1", 0));
        s.add(b"k1", 10);
        assert!(s.may_hold(b"k1", 10));
        // A day later the key's generation is the old one, still checked.
        assert!(s.may_hold(b"k1", GENERATION_MS + 20));
        // After a second day it is gone.
        assert!(!s.may_hold(b"k1", 2 * GENERATION_MS + 30));
    }

    #[test]
    fn false_positives_stay_rare_at_a_busy_day() {
        let s = SeenKeys::new(0);
        s.mark_filled();
        for i in 0..200_000u32 {
            s.add(format!("key-{i}").as_bytes(), 1);
        }
        for i in 0..200_000u32 {
            assert!(s.may_hold(format!("key-{i}").as_bytes(), 1));
        }
        let false_hits = (0..100_000u32)
            .filter(|i| s.may_hold(format!("other-{i}").as_bytes(), 1))
            .count();
        assert!(false_hits < 100, "{false_hits} false positives in 100,000");
    }
}
