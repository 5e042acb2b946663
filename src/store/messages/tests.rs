use super::super::records::{split_transmission_uuid, transmission_uuid};
use super::*;

#[test]
fn transmission_uuids_lead_back_to_their_message() {
    let id = new_message_id();
    assert_eq!(id.as_bytes()[15], 0);
    for i in [0usize, 1, 254] {
        let t = transmission_uuid(id, i);
        assert_eq!(t.get_version_num(), 7, "still a v7 uuid");
        assert_eq!(split_transmission_uuid(t), Some((id, i)));
    }
    assert_eq!(
        split_transmission_uuid(id),
        None,
        "a message id is not a transmission"
    );
    let later = new_message_id();
    assert!(
        transmission_uuid(later, 0) > transmission_uuid(id, 254),
        "uuids keep creation order"
    );
}

fn order(n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|_| NewMessage {
            doctype: "order".into(),
            version: None,
            external_reference: None,
            content_type: "application/json".into(),
            payload: Bytes::from_static(b"{}"),
            receivers: vec!["GLOBEX".into()],
            validation_errors: Vec::new(),
        })
        .collect()
}

fn filter(limit: usize, lease_ms: i64) -> PollFilter {
    PollFilter {
        limit,
        lease_ms,
        doctype: None,
    }
}

#[tokio::test]
async fn leased_items_leave_the_pending_range_and_come_back_when_their_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let (env, now) = (Env::Live, 1_000_000);
    let (_, msgs) = store
        .accept(env, "ACME", None, order(3), now)
        .await
        .unwrap();
    let uuids: Vec<Uuid> = msgs.iter().map(|m| transmission_uuid(m.id, 0)).collect();
    let count = |t: &sled::Tree| t.iter().count();

    let first = store
        .claim(env, "GLOBEX", &filter(2, 1000), now)
        .await
        .unwrap();
    let got: Vec<Uuid> = first.items.iter().map(|(t, _)| t.uuid).collect();
    assert_eq!(got, uuids[..2]);
    assert_eq!(count(&store.t.receiver_pending), 1);
    assert_eq!(count(&store.t.receiver_leased), 2);

    // Only the unleased one is handed out; the poll learns when the leases end.
    let second = store
        .claim(env, "GLOBEX", &filter(10, 0), now)
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].0.uuid, uuids[2]);
    assert_eq!(second.next_expiry, Some(now + 1000));

    // After expiry all three come back, oldest first; a new lease moves them again.
    let later = now + 2000;
    let third = store
        .claim(env, "GLOBEX", &filter(10, 500), later)
        .await
        .unwrap();
    let got: Vec<Uuid> = third.items.iter().map(|(t, _)| t.uuid).collect();
    assert_eq!(got, uuids);
    assert_eq!(count(&store.t.receiver_pending), 0);
    assert_eq!(count(&store.t.receiver_leased), 3);

    // An acknowledgement takes a leased item out for good.
    let ack = store
        .acknowledge(env, "GLOBEX", uuids[0], true, None, later, None)
        .await
        .unwrap();
    assert!(matches!(ack, AckOutcome::Done(_)));
    assert_eq!(count(&store.t.receiver_leased), 2);
    // An expired lease polled without a lease goes back to the pending range.
    let fourth = store
        .claim(env, "GLOBEX", &filter(1, 0), later + 1000)
        .await
        .unwrap();
    assert_eq!(fourth.items[0].0.uuid, uuids[1]);
    assert_eq!(count(&store.t.receiver_pending), 1);
    assert_eq!(count(&store.t.receiver_leased), 1);
}

#[tokio::test]
async fn leases_kept_in_the_pending_range_by_older_builds_are_moved_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (env, now) = (Env::Live, 1_000_000);
    let uuid = {
        let store = Store::open(dir.path(), 8).unwrap();
        let (_, msgs) = store
            .accept(env, "ACME", None, order(1), now)
            .await
            .unwrap();
        let uuid = transmission_uuid(msgs[0].id, 0);
        let key = partner_id(env, "GLOBEX", uuid);
        store
            .writer
            .write(move |t| {
                t.insert(
                    Table::ReceiverPending,
                    key,
                    pending_value(now + 5000, "order"),
                )
            })
            .await
            .unwrap();
        store.close();
        uuid
    };
    let store = Store::open(dir.path(), 8).unwrap();
    assert_eq!(store.t.receiver_pending.iter().count(), 0);
    let leased: Vec<_> = store.t.receiver_leased.iter().keys().collect();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        leased[0].as_ref().unwrap().as_ref(),
        &leased_key(env, "GLOBEX", now + 5000, uuid)[..]
    );
    let polled = store
        .claim(env, "GLOBEX", &filter(10, 0), now + 6000)
        .await
        .unwrap();
    assert_eq!(polled.items.len(), 1, "handed out once its old lease ended");
}
