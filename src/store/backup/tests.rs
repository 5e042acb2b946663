//! A backup taken while writers keep changing the store is the store as it was at one
//! moment: for every writer, the state after some prefix of its changes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::super::payload_log::PayloadRef;
use super::*;

fn key(writer: u8, what: &str, n: u64) -> Vec<u8> {
    let mut k = format!("test/{writer}/{what}/").into_bytes();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// One step of writer `w`: its counter to `n`, key `n` in, key `n - 5` out, and a payload
/// written first and pointed at, as intake does.
fn step(store: &Store, w: u8, n: u64) {
    let payload = store
        .payload_log
        .append(format!("payload {w}/{n}").as_bytes())
        .unwrap();
    let r = bincode_free(&payload);
    store
        .writer
        .write_blocking(move |tx| {
            tx.insert(Table::Meta, key(w, "n", 0), n.to_be_bytes().to_vec())?;
            tx.insert(Table::Meta, key(w, "k", n), n.to_be_bytes().to_vec())?;
            if n >= 5 {
                tx.remove(Table::Meta, key(w, "k", n - 5))?;
            }
            tx.insert(Table::Attempts, key(w, "p", n), r)
        })
        .unwrap();
}

fn bincode_free(r: &PayloadRef) -> Vec<u8> {
    let mut v = r.segment.to_be_bytes().to_vec();
    v.extend_from_slice(&r.offset.to_be_bytes());
    v.extend_from_slice(&r.len.to_be_bytes());
    v.extend_from_slice(&r.crc.to_be_bytes());
    v
}

fn u64_of(v: &[u8]) -> u64 {
    u64::from_be_bytes(v.try_into().unwrap())
}

#[test]
fn the_tree_names_are_those_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let all = store.t.all();
    assert_eq!(all.len(), TREE_NAMES.len());
    for (tree, name) in all.iter().zip(TREE_NAMES) {
        assert_eq!(&tree.name()[..], name.as_bytes());
    }
    store.close();
}

#[test]
fn a_backup_under_load_is_one_moment_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 8).unwrap());
    // Enough to copy that the copy takes many pieces.
    for chunk in 0..20u64 {
        store
            .writer
            .write_blocking(move |tx| {
                for i in 0..500u64 {
                    let k = (chunk * 500 + i).to_be_bytes();
                    tx.insert(Table::Audit, k, vec![7u8; 100])?;
                }
                Ok(())
            })
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3u8)
        .map(|w| {
            let (store, stop, progress) =
                (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&progress));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    step(&store, w, n);
                    n += 1;
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                n
            })
        })
        .collect();

    // The reader waits for the writers now and then, so changes land during the copy.
    let mut file = Vec::new();
    let mut pieces = 0u64;
    let summary = store
        .backup(&mut |bytes| {
            pieces += 1;
            if pieces % 3 == 0 {
                let seen = progress.load(Ordering::SeqCst);
                while progress.load(Ordering::SeqCst) < seen + 2 {
                    std::thread::yield_now();
                }
            }
            file.extend_from_slice(&bytes);
            Ok(())
        })
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let written: Vec<u64> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(summary.reread_keys > 0, "nothing changed during the copy");
    assert!(
        store.writer.journal().len() == 0,
        "the journal is off again"
    );

    let path = dir.path().join("b.wbk");
    std::fs::write(&path, &file).unwrap();
    let target = tempfile::tempdir().unwrap();
    let restored = restore(&path, target.path()).unwrap();
    assert!(restored.segments >= 1);
    let copy = Store::open(target.path(), 8).unwrap();
    assert_eq!(copy.t.audit.len(), 10_000);
    for w in 0..3u8 {
        let n = copy
            .t
            .meta
            .get(key(w, "n", 0))
            .unwrap()
            .map_or(0, |v| u64_of(&v));
        assert!(n < written[usize::from(w)]);
        let prefix = format!("test/{w}/k/").into_bytes();
        let present: Vec<u64> = copy
            .t
            .meta
            .scan_prefix(&prefix)
            .map(|kv| u64_of(&kv.unwrap().1))
            .collect();
        let expected: Vec<u64> = (n.saturating_sub(4)..=n).collect();
        assert_eq!(present, expected, "writer {w} at step {n}");
        let prefix = format!("test/{w}/p/").into_bytes();
        let refs: Vec<_> = copy.t.attempts.scan_prefix(&prefix).collect();
        assert_eq!(refs.len() as u64, n + 1, "writer {w}: one payload per step");
        for (i, kv) in refs.into_iter().enumerate() {
            let v = kv.unwrap().1;
            let r = PayloadRef {
                segment: u32::from_be_bytes(v[0..4].try_into().unwrap()),
                offset: u64_of(&v[4..12]),
                len: u32::from_be_bytes(v[12..16].try_into().unwrap()),
                crc: u32::from_be_bytes(v[16..20].try_into().unwrap()),
            };
            let bytes = copy.payload_log.read(&r).unwrap();
            assert_eq!(&bytes[..], format!("payload {w}/{i}").as_bytes());
        }
    }
    copy.close();
    store.close();
}

#[test]
fn one_backup_at_a_time_and_restores_only_into_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    store.writer.start_journal().unwrap();
    let refused = store.backup(&mut |_| Ok(()));
    assert!(matches!(refused, Err(BackupError::Running)), "{refused:?}");
    store.writer.journal().stop();

    let mut file = Vec::new();
    store
        .backup(&mut |b| {
            file.extend(b);
            Ok(())
        })
        .unwrap();
    let path = dir.path().join("b.wbk");
    std::fs::write(&path, &file).unwrap();
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("something"), b"x").unwrap();
    assert!(matches!(
        restore(&path, busy.path()),
        Err(RestoreError::NotEmpty(_))
    ));
    // A cut file is refused before anything is written.
    std::fs::write(&path, &file[..file.len() - 3]).unwrap();
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        restore(&path, empty.path()),
        Err(RestoreError::Format(FormatError::Truncated))
    ));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    // A reader that goes away stops the backup, and the next one may run.
    let gone = store.backup(&mut |_| Err(std::io::Error::other("closed")));
    assert!(matches!(gone, Err(BackupError::Gone(_))));
    store.backup(&mut |_| Ok(())).unwrap();
    store.close();
}
