use super::super::codec::MAX_RECORD_BYTES;
use super::super::payload_log::PayloadRef;
use super::super::records::{new_message_id, TransmissionState, MAX_RECEIVERS};
use super::*;
use crate::store::transitions::Event;

fn message(receivers: usize) -> MessageRec {
    MessageRec {
        id: new_message_id(),
        request_id: request_id_at(1_700_000_000_123),
        env: Env::Live,
        sender: "ACME".into(),
        doctype: "invoice".into(),
        version: None,
        external_reference: Some("R-1".into()),
        content_type: "application/json".into(),
        payload: PayloadRef {
            segment: 0,
            offset: 0,
            len: 0,
            crc: 0,
        },
        received_at: 1_700_000_000_123,
        status: Status::Queued,
        history: vec![(1_700_000_000_123, Status::Queued)],
        history_dropped: 0,
        errors: Vec::new(),
        errors_dropped: 0,
        processed_at: None,
        transmissions: (0..receivers)
            .map(|i| TransmissionState::queued(format!("{i:0>32}"), 1_700_000_000_123))
            .collect(),
        validation_errors: Vec::new(),
    }
}

#[test]
fn request_ids_carry_their_received_time_and_order_the_index() {
    for ms in [0, 1, 1_700_000_000_123, 4_102_444_800_000] {
        assert_eq!(time_of(request_id_at(ms)), ms);
        assert_eq!(time_of(id_floor(ms)), ms);
        assert!(id_floor(ms) <= request_id_at(ms));
        assert!(request_id_at(ms) < id_floor(ms + 1));
    }
    assert_eq!(request_id_at(5).get_version_num(), 7);
    let early = tracking_key(Env::Live, "ACME", request_id_at(10), new_message_id());
    let late = tracking_key(Env::Live, "ACME", request_id_at(11), Uuid::nil());
    assert!(early < late, "received order, whatever the message id");
}

#[test]
fn entries_read_back_what_was_written() {
    let mut m = message(1);
    m.status = Status::Failed;
    m.processed_at = Some(1_700_000_000_999);
    let key = tracking_key(m.env, &m.sender, m.request_id, m.id);
    let value = tracking_value(&m);
    let e = parse_entry(&key, &value).unwrap();
    assert_eq!((e.request_id, e.message_id), (m.request_id, m.id));
    assert_eq!(e.status, Status::Failed);
    assert_eq!(e.processed_at, Some(1_700_000_000_999));
    assert_eq!(e.doctype, "invoice");
    assert!(
        parse_entry(&key, &[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_none(),
        "no such status"
    );
    assert!(parse_entry(&key, &[0, 1]).is_none());
    assert!(parse_entry(b"short", &value).is_none());
}

#[test]
fn a_message_put_writes_the_entry_only_when_the_index_changes() {
    let mut m = message(1);
    let before = m.tracked();
    assert!(MessagePut::new(&m, before).unwrap().tracking.is_none());
    m.apply(0, Event::Claimed { lease_until: None }, 1_700_000_001_000);
    let put = MessagePut::new(&m, before).unwrap();
    let (k, v) = put.tracking.expect("status changed");
    let e = parse_entry(&k, &v).unwrap();
    assert_eq!(e.status, Status::Processed);
    assert_eq!(e.processed_at, Some(1_700_000_001_000));
}

#[test]
fn references_never_cover_a_longer_one() {
    let a = ref_prefix(Env::Live, "ACME", "PO-1");
    let b = ref_key(Env::Live, "ACME", "PO-10", Uuid::nil(), Uuid::nil());
    assert!(!b.starts_with(&a));
    let c = ref_key(Env::Live, "ACME", "PO-1", Uuid::nil(), Uuid::nil());
    assert!(c.starts_with(&a));
}

#[test]
fn a_message_with_every_receiver_and_full_histories_stays_under_the_record_limit() {
    let mut m = message(MAX_RECEIVERS);
    for (i, t) in m.transmissions.iter_mut().enumerate() {
        for n in 0..20 {
            t.record_status(1_700_000_000_000 + n, Status::Processing);
        }
        t.last_error = Some(super::super::records::clip("e".repeat(500)));
        t.attempts = i as u32;
        t.delivered_at = Some(1_700_000_000_000);
        t.acknowledged_at = Some(1_700_000_000_000);
        t.outbox_due = Some(u64::MAX);
    }
    for n in 0..40 {
        m.record_status(1_700_000_000_000 + n, Status::Processing);
        m.record_error(1_700_000_000_000 + n, "x".repeat(500));
    }
    let bytes = encode(&m).expect("under the limit");
    assert!(bytes.len() < MAX_RECORD_BYTES, "{} bytes", bytes.len());
}

fn query(sender: &str) -> TrackingQuery {
    TrackingQuery {
        env: Env::Live,
        sender: sender.into(),
        types: Vec::new(),
        statuses: Vec::new(),
        received: None,
        ids: Vec::new(),
        refs: vec!["B-1".into()],
        sort: TrackingSort::Received,
        descending: true,
        skip: 0,
        take: MAX_ROWS,
    }
}

#[tokio::test]
async fn a_store_of_an_older_build_gets_its_index_built_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let new = |r: &str| crate::store::NewMessage {
        doctype: "order".into(),
        version: None,
        external_reference: Some(r.into()),
        content_type: "application/json".into(),
        payload: bytes::Bytes::from_static(b"{}"),
        receivers: vec!["GLOBEX".into()],
        validation_errors: Vec::new(),
    };
    let (request, _) = store
        .accept(
            Env::Live,
            "ACME",
            Some("B-1".into()),
            vec![new("m-1"), new("m-2")],
            5_000,
        )
        .await
        .unwrap();
    // As an older build left it: no index, no marker.
    store.t.tracking.clear().unwrap();
    store.t.tracking_refs.clear().unwrap();
    store.t.meta.remove(b"tracking_index").unwrap();
    assert_eq!(store.track(&query("ACME")).unwrap().total, 0);
    store.close();
    drop(store);

    let store = Store::open(dir.path(), 8).unwrap();
    let page = store.track(&query("ACME")).unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.rows[0].request.id, request.id);
    assert_eq!(page.rows[0].summary.count(Status::Queued), 2);
    assert_eq!(
        page.rows[0].messages.len(),
        2,
        "a batch reference matches every message"
    );
    assert_eq!(store.track(&query("INITECH")).unwrap().total, 0);
    assert_eq!(store.build_tracking_index().unwrap(), 0, "built once");
    store.close();
}
