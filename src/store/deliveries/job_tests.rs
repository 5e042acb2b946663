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
