use super::*;
use crate::store::background::StoredBody;

fn answer(n: u8) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![],
        body: StoredBody::Inline(vec![n]),
    }
}

fn body(rec: &IdempotencyRec) -> Vec<u8> {
    match &rec.response.body {
        StoredBody::Inline(b) => b.clone(),
        StoredBody::Logged(_) => panic!("logged"),
    }
}

/// Stores answers in one round, as jobs sharing a round do.
fn write_puts(store: &Store, puts: Vec<IdemPut>) {
    store
        .writer
        .write_blocking(move |t| {
            for p in puts {
                p.write(t)?;
            }
            Ok(())
        })
        .unwrap();
}

fn put_all(store: &Store, slots: Vec<(IdemSlot, u8)>) {
    let puts = slots
        .into_iter()
        .map(|(s, n)| IdemPut::new(s, answer(n)).unwrap())
        .collect();
    write_puts(store, puts);
}

fn put(store: &Store, slot: IdemSlot, n: u8) {
    put_all(store, vec![(slot, n)]);
}

const T0: i64 = 1_795_953_600_000;
const HOUR_MS: i64 = 3600 * 1000;

#[test]
fn an_answer_is_found_for_its_whole_day_and_pruned_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    store.load_answers().unwrap();
    let made = T0 + HOUR_MS - 1_000;
    let slot = IdemSlot::new(Env::Live, "ACME", "k-1", [1; 32], made);
    let key = slot.key.clone();
    put(&store, slot, 7);
    let rec = store.idempotency(&key).unwrap().expect("found");
    assert_eq!(body(&rec), [7]);
    assert_eq!(rec.expires_at, made + TTL_MS);
    let other = IdemSlot::new(Env::Test, "ACME", "k-1", [1; 32], made).key;
    assert!(store.idempotency(&other).unwrap().is_none());
    assert!(store.answers().stamps(&other).is_empty());

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // On the last millisecond of its day it is kept.
    assert_eq!(
        rt.block_on(store.prune_idempotency(made + TTL_MS, 100))
            .unwrap(),
        0
    );
    assert!(store.idempotency(&key).unwrap().is_some());
    // A moment later its batch goes, and the index forgets it.
    let later = made + TTL_MS + 1;
    assert_eq!(rt.block_on(store.prune_idempotency(later, 100)).unwrap(), 1);
    assert!(store.idempotency(&key).unwrap().is_none());
    assert_eq!(store.answers().known_keys(), 0);
    store.close();
}

#[test]
fn the_answers_of_one_round_share_a_record_and_are_found_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = super::super::now_ms();
    // Large enough that a round's answers need two records.
    let big = StoredResponse {
        status: 201,
        headers: vec![],
        body: StoredBody::Inline(vec![9; 20 * 1024]),
    };
    let slots: Vec<IdemSlot> = (0..40)
        .map(|i| IdemSlot::new(Env::Live, "ACME", &format!("key-{i}"), [i; 32], now))
        .collect();
    {
        let store = Store::open(dir.path(), 8).unwrap();
        store.load_answers().unwrap();
        put_all(
            &store,
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i as u8))
                .collect(),
        );
        assert_eq!(store.t.idempotency.len(), 1, "40 small answers, one record");
        let puts = vec![
            IdemPut::new(slots[0].clone(), big.clone()).unwrap(),
            IdemPut::new(IdemSlot::new(Env::Live, "ACME", "big-2", [0; 32], now), big).unwrap(),
        ];
        write_puts(&store, puts);
        assert_eq!(
            store.t.idempotency.len(),
            3,
            "two large answers, two records"
        );
        // The key answered again (as after its first answer expired): the newer wins.
        let rec = store.idempotency(&slots[0].key).unwrap().unwrap();
        assert_eq!(rec.response.status, 201);
        assert!(matches!(&rec.response.body, StoredBody::Inline(b) if b.len() == 20 * 1024));
        store.close();
    }
    let store = Store::open(dir.path(), 8).unwrap();
    // Before the index is filled, the batches are read.
    let rec = store
        .idempotency(&slots[7].key)
        .unwrap()
        .expect("found unfilled");
    assert_eq!(body(&rec), [7]);
    assert_eq!(store.load_answers().unwrap(), 42);
    assert_eq!(store.answers().known_keys(), 41);
    for (i, s) in slots.iter().enumerate().skip(1) {
        let rec = store.idempotency(&s.key).unwrap().expect("found");
        assert_eq!(
            (rec.fingerprint, body(&rec)),
            ([i as u8; 32], vec![i as u8])
        );
    }
    // New batches go on after the newest stored one.
    let last = store.t.idempotency.last().unwrap().unwrap().0;
    put(
        &store,
        IdemSlot::new(Env::Live, "ACME", "after", [1; 32], 0),
        1,
    );
    let newest = store.t.idempotency.last().unwrap().unwrap().0;
    assert!(newest > last);
    store.close();
}

#[test]
fn a_damaged_batch_is_an_error_not_a_panic() {
    let ok = encode_batch(&[KeptAnswer {
        key: b"k".to_vec(),
        created_at: 5,
        value: vec![1, 2, 3],
        hold: None,
    }]);
    assert_eq!(
        batch_entries(&ok).unwrap(),
        vec![(&b"k"[..], &[1u8, 2, 3][..])]
    );
    for cut in 0..ok.len() {
        assert!(batch_entries(&ok[..cut]).is_err(), "cut at {cut}");
    }
    let mut huge = ok.clone();
    huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(batch_entries(&huge).is_err());
    let mut version = ok;
    version[0] = 9;
    assert!(batch_entries(&version).is_err());
}

#[test]
fn answers_of_older_builds_move_into_batches_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = super::super::now_ms();
    let live = IdemSlot::new(Env::Live, "ACME", "old-live", [3; 32], now - HOUR_MS);
    let dead = IdemSlot::new(Env::Live, "ACME", "old-dead", [4; 32], now - 2 * TTL_MS);
    let hourly = IdemSlot::new(Env::Test, "ACME", "hourly", [5; 32], now - 2 * HOUR_MS);
    {
        let store = Store::open(dir.path(), 8).unwrap();
        let rows = [(&live, 3u8), (&dead, 4)]
            .map(|(s, n)| (s.key.clone(), s.expires_at, s.encode(answer(n)).unwrap()));
        let mut hour_key = ((hourly.created_at / HOUR_MS) as u32)
            .to_be_bytes()
            .to_vec();
        hour_key.extend_from_slice(&hourly.key);
        let hour_value = hourly.encode(answer(5)).unwrap();
        store
            .writer
            .write_blocking(move |t| {
                for (k, expires, v) in rows {
                    let mut e = (expires as u64).to_be_bytes().to_vec();
                    e.extend_from_slice(&k);
                    t.insert(Table::LegacyIdempotencyExpiry, e, vec![])?;
                    t.insert(Table::LegacyIdempotency, k, v)?;
                }
                t.insert(Table::LegacyIdempotency, b"junk", b"\xff".to_vec())?;
                t.insert(Table::LegacyIdempotencyHourly, hour_key, hour_value)?;
                Ok(())
            })
            .unwrap();
        store.close();
    }
    let store = Store::open(dir.path(), 8).unwrap();
    store.load_answers().unwrap();
    assert!(store.t.legacy_idempotency.is_empty());
    assert!(store.t.legacy_idempotency_expiry.is_empty());
    assert!(store.t.legacy_idempotency_hourly.is_empty());
    let rec = store.idempotency(&live.key).unwrap().expect("moved");
    assert_eq!((rec.fingerprint, body(&rec)), ([3; 32], vec![3]));
    let rec = store.idempotency(&hourly.key).unwrap().expect("moved");
    assert_eq!((rec.fingerprint, body(&rec)), ([5; 32], vec![5]));
    assert!(store.idempotency(&dead.key).unwrap().is_none());
    assert_eq!(store.answers().known_keys(), 2);
    store.close();
}
