use super::*;
use crate::store::codec::Record;
use crate::store::records::new_message_id;

fn attempt() -> AttemptRec {
    AttemptRec {
        at: 1,
        url: "http://x".into(),
        status: Some(200),
        latency_ms: 1,
        response: String::new(),
        error: None,
    }
}

#[tokio::test]
async fn an_unreadable_record_fails_the_job_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let env = Env::Live;
    let id = new_message_id();
    let d = DeliveryRec {
        id: transmission_uuid(id, 0),
        env,
        target: Target::Transmission {
            message_id: id,
            index: 0,
            receiver: "GLOBEX".into(),
        },
        attempt: 0,
        tries: 0,
    };
    let key = outbox_key(&d.target.endpoint(env), 5, d.id);
    store.t.outbox.insert(&key, encode(&d).unwrap()).unwrap();
    // A message record that does not decode.
    store
        .t
        .messages
        .insert(env_id(env, id), vec![MessageRec::VERSION, 0xFF, 0xFF])
        .unwrap();
    let queued = Queued {
        key: key.clone(),
        due: 5,
        delivery: d,
        prefetched: None,
    };
    let r = store
        .finish_delivery(queued, Some(attempt()), Next::Delivered, None, 10)
        .await;
    assert!(r.is_err(), "the job reports the bad record");
    assert!(
        store.t.outbox.get(&key).unwrap().is_some(),
        "the delivery is still queued: nothing is lost"
    );
    assert_eq!(store.t.attempts.len(), 0, "nothing was written");

    // Redelivery checks every target before its first write.
    let r = store.redeliver(env, vec![(id, 0)], 10).await;
    assert!(r.is_err());
    assert_eq!(store.t.outbox.len(), 1);
    store.close();
}

#[tokio::test]
async fn a_handed_over_entry_counts_as_queued_until_a_job_removes_it() {
    use crate::store::directory::NewPartner;
    use crate::store::messages::NewMessage;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let mut handed = store.outbox.take_receiver().unwrap();
    for (code, push_url) in [("ACME", None), ("GLOBEX", Some("http://globex.example/in"))] {
        store
            .create_partner(NewPartner {
                code: code.into(),
                name: code.into(),
                push_url: push_url.map(Into::into),
                test_push_url: None,
                push_headers: vec![],
                push_params: vec![],
            })
            .await
            .unwrap();
    }
    let new = |n: u32| NewMessage {
        doctype: "order".into(),
        version: None,
        external_reference: None,
        content_type: "application/json".into(),
        payload: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        receivers: vec!["GLOBEX".into()],
        validation_errors: vec![],
    };
    let now = crate::store::now_ms();
    let (_, stored) = store
        .accept(Env::Live, "ACME", None, vec![new(1), new(2)], now)
        .await
        .unwrap();
    let first = handed.recv().await.unwrap();
    let second = handed.recv().await.unwrap();
    assert!(first.prefetched.is_some() && second.prefetched.is_some());
    assert!(store.outbox.still_queued(&first.key));
    assert!(store.outbox.still_queued(&second.key));

    // The receiver acknowledges the first before any attempt: the job that removes its
    // entry says so.
    let uuid = transmission_uuid(stored[0].id, 0);
    store
        .acknowledge(Env::Live, "GLOBEX", uuid, true, None, now, None)
        .await
        .unwrap();
    assert!(!store.outbox.still_queued(&first.key));
    assert!(store.outbox.still_queued(&second.key));

    // The engine does not keep the second (its buffer is full): it is no longer tracked,
    // and stays in the outbox for the engine to read when its turn comes.
    store.outbox.forget(&second.key);
    assert!(!store.outbox.still_queued(&second.key));
    assert!(store.t.outbox.get(&second.key).unwrap().is_some());
}
