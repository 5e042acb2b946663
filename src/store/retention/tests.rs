use super::*;
use crate::store::deliveries::attempt_key;
use crate::store::records::TransmissionState;

fn message(sender: &str, receivers: &[&str], status: Status, at: i64) -> MessageRec {
    MessageRec {
        id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        env: Env::Test,
        sender: sender.into(),
        doctype: "order".into(),
        version: None,
        external_reference: None,
        content_type: "application/json".into(),
        payload: PayloadRef {
            segment: 1,
            offset: 0,
            len: 2,
            crc: 0,
        },
        received_at: at,
        status,
        history: vec![(at, status)],
        history_dropped: 0,
        errors: Vec::new(),
        errors_dropped: 0,
        processed_at: None,
        transmissions: receivers
            .iter()
            .map(|r| {
                let mut t = TransmissionState::queued((*r).into(), at);
                t.status = status;
                t
            })
            .collect(),
        validation_errors: Vec::new(),
    }
}

#[test]
fn the_longest_retention_of_sender_and_receivers_wins() {
    let r = Retention {
        default_days: 30,
        partners: HashMap::from([("KEEP".to_owned(), 90), ("BRIEF".to_owned(), 1)]),
    };
    let m = message("BRIEF", &["OTHER", "KEEP"], Status::Complete, 0);
    assert_eq!(r.keep_ms(&m), 90 * DAY_MS);
    let m = message("BRIEF", &["OTHER"], Status::Complete, 0);
    assert_eq!(r.keep_ms(&m), 30 * DAY_MS);
    assert_eq!(r.shortest_ms(), DAY_MS);
}

#[test]
fn only_messages_with_nothing_left_to_do_are_finished() {
    assert!(finished(&message("A", &["B"], Status::Complete, 0)));
    assert!(finished(&message("A", &["B"], Status::Cancelled, 0)));
    assert!(!finished(&message("A", &["B"], Status::Queued, 0)));
    let mut leased = message("A", &["B"], Status::Complete, 0);
    leased.transmissions[0].lease_until = Some(5);
    assert!(!finished(&leased));
    let mut pushing = message("A", &["B"], Status::Failed, 0);
    pushing.transmissions[0].outbox_due = Some(5);
    assert!(!finished(&pushing));
    let mut pushed = message("A", &["B"], Status::Processed, 0);
    assert!(!finished(&pushed), "processed but never delivered");
    pushed.transmissions[0].delivered_at = Some(3);
    assert!(finished(&pushed));
}

/// A delivery id created at `ms` (a v7 id's time), its last byte `tail`.
fn delivery_at(ms: u64, tail: u8) -> Uuid {
    let mut b = [0x42u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[15] = tail;
    Uuid::from_bytes(b)
}

async fn log(store: &Store, env: Env, id: Uuid, attempts: u32) {
    store
        .writer
        .write_waiting(move |t| {
            for n in 1..=attempts {
                t.insert(Table::Attempts, attempt_key(env, id, n), b"row".to_vec())?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn old_call_rows_are_found_per_environment_and_each_scan_goes_on_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let (early, late) = (delivery_at(1_000, 7), delivery_at(2_000, 9));
    log(&store, Env::Live, early, 2).await;
    log(&store, Env::Test, early, 1).await;
    log(&store, Env::Live, late, 1).await;

    // Scans of at most 1 row: the cut-off at 1,500 finds the early rows only.
    let first = store
        .scan_old_call_attempts(Env::Live, None, 1_500, 1)
        .unwrap();
    assert_eq!(first.keys, vec![attempt_key(Env::Live, early, 1).to_vec()]);
    assert!(!first.done);
    let second = store
        .scan_old_call_attempts(Env::Live, first.last, 1_500, 1)
        .unwrap();
    assert_eq!(second.keys, vec![attempt_key(Env::Live, early, 2).to_vec()]);
    let rest = store
        .scan_old_call_attempts(Env::Live, second.last.clone(), 1_500, 1)
        .unwrap();
    assert!(rest.keys.is_empty() && rest.done && rest.last.is_none());
    assert_eq!(store.remove_attempt_rows(first.keys).await.unwrap(), 1);
    assert_eq!(store.remove_attempt_rows(second.keys).await.unwrap(), 1);

    // Later, with a later cut-off, the scan goes on from where it stopped.
    let later = store
        .scan_old_call_attempts(Env::Live, second.last, 2_500, 10)
        .unwrap();
    assert_eq!(later.keys, vec![attempt_key(Env::Live, late, 1).to_vec()]);
    assert!(later.done);

    // The other environment has its own scan, untouched by the first one's cursor.
    let test = store
        .scan_old_call_attempts(Env::Test, None, 2_500, 10)
        .unwrap();
    assert_eq!(test.keys, vec![attempt_key(Env::Test, early, 1).to_vec()]);
}

#[tokio::test]
async fn a_stored_messages_push_rows_stay_and_a_gone_messages_rows_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let mut stored = message("ACME", &["GLOBEX"], Status::Queued, 0);
    stored.id = crate::store::records::new_message_id();
    let stored_id = stored.id;
    let value = crate::store::codec::encode(&stored).unwrap();
    store
        .writer
        .write_waiting(move |t| t.insert(Table::Messages, env_id(Env::Test, stored_id), value))
        .await
        .unwrap();
    let kept = transmission_uuid(stored_id, 0);
    let mut gone = *stored_id.as_bytes();
    gone[..6].copy_from_slice(&[0; 6]);
    let left_behind = transmission_uuid(Uuid::from_bytes(gone), 0);
    log(&store, Env::Test, kept, 1).await;
    log(&store, Env::Test, left_behind, 1).await;
    let found = store
        .scan_old_call_attempts(Env::Test, None, i64::MAX, 10)
        .unwrap();
    assert_eq!(
        found.keys,
        vec![attempt_key(Env::Test, left_behind, 1).to_vec()]
    );
}
