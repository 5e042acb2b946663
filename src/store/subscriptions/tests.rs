use super::*;

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

#[test]
fn ids_are_split_so_every_url_stays_within_the_limit_and_none_is_lost() {
    let url = format!(
        "https://example.com/hook?x={}&ids={PLACEHOLDER}",
        "a".repeat(300)
    );
    let all = ids(300);
    let groups = split_ids(&url, &all);
    assert!(groups.len() > 1);
    let flat: Vec<Uuid> = groups.iter().flatten().copied().collect();
    assert_eq!(flat, all, "every id once, in order");
    for g in &groups {
        let rendered = render_url(&url, g);
        assert!(rendered.len() <= MAX_CALL_URL, "{}", rendered.len());
        assert!(!rendered.contains(PLACEHOLDER));
    }
    // Each group but the last is full: one more id would not have fitted.
    for w in groups.windows(2) {
        let mut more = w[0].clone();
        more.push(w[1][0]);
        assert!(render_url(&url, &more).len() > MAX_CALL_URL);
    }
    let one = split_ids("http://h/{ids}", &all[..1]);
    assert_eq!(one, vec![vec![all[0]]]);
    assert!(split_ids("http://h/{ids}", &[]).is_empty());
}

#[test]
fn ids_are_comma_joined_in_place_of_the_placeholder() {
    let a = Uuid::nil();
    let b = Uuid::max();
    assert_eq!(
        render_url("http://h/cb?ids={ids}&x=1", &[a, b]),
        format!("http://h/cb?ids={a},{b}&x=1")
    );
}

#[test]
fn endpoint_keys_name_their_subscription_and_hold_no_separator() {
    let id = Uuid::now_v7();
    for env in [Env::Live, Env::Test] {
        let k = subscription_endpoint(env, id);
        assert!(!k.contains(&0xFF));
        assert_eq!(parse_subscription_endpoint(&k), Some((env, id)));
    }
    assert_eq!(parse_subscription_endpoint(b"p\x00ACME"), None);
}

fn subscription(partner: &str, events: Vec<EventKind>) -> SubscriptionRec {
    SubscriptionRec {
        id: Uuid::now_v7(),
        env: Env::Live,
        partner: partner.into(),
        system_name: "erp".into(),
        url: "http://127.0.0.1/cb?ids={ids}".into(),
        auth_header: None,
        customer: None,
        events,
        active: true,
        disabled: None,
        enabled_at: 0,
        signing: SigningSecrets {
            current: "whsec_AAAA".into(),
            previous: None,
        },
        created_at: 0,
        updated_at: 0,
        last_success_at: None,
        failures: 0,
        last_attempts: Vec::new(),
    }
}

fn to(receiver: &str) -> super::super::NewMessage {
    super::super::NewMessage {
        doctype: "order".into(),
        version: None,
        external_reference: None,
        content_type: "application/json".into(),
        payload: bytes::Bytes::from_static(b"{}"),
        receivers: vec![receiver.into()],
        validation_errors: Vec::new(),
    }
}

#[tokio::test]
async fn changes_feed_only_their_watchers_and_a_flush_turns_the_ids_into_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let sub = subscription("GLOBEX", vec![EventKind::TransmissionCreated]);
    let id = sub.id;
    assert!(matches!(
        store.create_subscription(sub, None).await.unwrap(),
        SubChange::Done(_)
    ));
    let now = 1_000_000;
    let (_, live) = store
        .accept(
            Env::Live,
            "ACME",
            None,
            vec![to("GLOBEX"), to("OTHER")],
            now,
        )
        .await
        .unwrap();
    // The other environment and other receivers feed nothing.
    store
        .accept(Env::Test, "ACME", None, vec![to("GLOBEX")], now)
        .await
        .unwrap();
    assert_eq!(store.pending_ids(id, 100).unwrap(), 1);
    assert_eq!(store.subs.pending_count(), 1, "the flusher was told");
    let (due, next) = store.subs.take_due(i64::MAX, 1000);
    assert_eq!((due, next), (vec![id], None));

    let f = store.flush_subscription(id, now).await.unwrap();
    assert_eq!((f.ids, f.calls, f.more), (1, 1, false));
    assert_eq!(
        store.pending_ids(id, 100).unwrap(),
        0,
        "removed in the same job"
    );
    let endpoint = subscription_endpoint(Env::Live, id);
    let (queued, _) = store
        .outbox_due(&endpoint, u64::MAX - 1, 10, |_| false)
        .unwrap();
    assert_eq!(queued.len(), 1);
    match &queued[0].delivery.target {
        Target::Subscription { ids, event, .. } => {
            assert_eq!(*event, EventKind::TransmissionCreated);
            assert_eq!(ids, &vec![super::super::transmission_uuid(live[0].id, 0)]);
        }
        other => panic!("{other:?}"),
    }

    // Deleting drops what waits and what is queued; ids fed afterwards find no watcher.
    store
        .accept(Env::Live, "ACME", None, vec![to("GLOBEX")], now)
        .await
        .unwrap();
    assert_eq!(store.pending_ids(id, 100).unwrap(), 1);
    let gone = store
        .delete_subscription(Env::Live, id, "GLOBEX".into(), None)
        .await
        .unwrap();
    assert!(matches!(gone, SubChange::Done(_)));
    assert_eq!(store.pending_ids(id, 100).unwrap(), 0);
    assert!(store
        .outbox_due(&endpoint, u64::MAX - 1, 10, |_| false)
        .unwrap()
        .0
        .is_empty());
    store
        .accept(Env::Live, "ACME", None, vec![to("GLOBEX")], now)
        .await
        .unwrap();
    assert_eq!(store.pending_ids(id, 100).unwrap(), 0);
    store.close();
}

#[tokio::test]
async fn ids_fed_after_the_scan_of_a_deletion_are_dropped_by_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    let sub = subscription("GLOBEX", vec![EventKind::TransmissionCreated]);
    let id = sub.id;
    store.create_subscription(sub, None).await.unwrap();
    // A straggler: an entry the deletion's scan did not see.
    let key = pending_key(id, EventKind::TransmissionCreated, Uuid::now_v7());
    store.t.sub_pending.insert(key, vec![0; 8]).unwrap();
    store.subs.remove(id);
    let f = store.flush_subscription(id, 5).await.unwrap();
    assert_eq!((f.ids, f.calls), (1, 0));
    assert_eq!(store.pending_ids(id, 10).unwrap(), 0);
    store.close();
}

#[test]
fn events_read_back() {
    for e in EventKind::ALL {
        assert_eq!(EventKind::parse(e.as_str()), Some(e));
        assert_eq!(EventKind::from_byte(e.byte()), Some(e));
    }
    assert_eq!(EventKind::parse("message.created"), None);
}
