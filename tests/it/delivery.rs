//! The delivery engine against real receivers: acknowledgements are final (also for a push
//! still waiting for its slot), the attempt log only grows, no push runs twice at once, a
//! slow receiver does not starve the others, nor a busy one when slots are short, held pushes are parked, a corrupt payload fails
//! only its own transmission, and `Retry-After` is clamped.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::push::{attempts, pushing_to, send, wait_status};
use crate::receiver::{Answer, Receiver};
use crate::{spawn_app_with, TestApp};

fn slow(delay_ms: u64) -> Answer {
    Answer {
        status: 200,
        headers: vec![],
        delay: Duration::from_millis(delay_ms),
    }
}

/// Sends `n` JSON messages from ACME to `receiver` in batches; returns their transmission uuids.
fn send_many(app: &TestApp, key: &str, receiver: &str, n: usize) -> Vec<String> {
    let mut uuids = Vec::with_capacity(n);
    let mut sent = 0;
    while sent < n {
        let count = (n - sent).min(500);
        let messages: Vec<Value> = (sent..sent + count)
            .map(|i| json!({"messageType": "order", "receiver": receiver, "payload": {"n": i}}))
            .collect();
        let d = app
            .partner_json(
                key,
                "POST",
                "/api/v1/requests",
                &json!({"batchReference": format!("b{sent}"), "messages": messages}),
            )
            .data(202);
        for m in d["messages"].as_array().unwrap() {
            uuids.push(m["transmissions"][0]["uuid"].as_str().unwrap().to_owned());
        }
        sent += count;
    }
    uuids
}

/// Pauses or resumes GLOBEX's push endpoint.
fn pause(app: &TestApp, paused: bool) {
    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({ "pushPaused": paused })),
    )
    .data(200);
}

/// Waits until `f` holds, or panics with `what` after `secs`.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_acknowledgement_is_final_and_cancels_a_pending_retry() {
    let receiver = Receiver::start(vec![Answer::status(500)]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![1, 1]);
    let globex = app.key("GLOBEX", "live");
    let sent = send(&app, &acme, "application/json", br#"{"n":1}"#);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_until(20, "the first attempt is logged", || {
        attempts(&app, uuid).len() == 1
    });
    // The receiver handled it after all and says so while the retry is pending.
    let acked = app.ack(&globex, uuid, "processed").data(200);
    assert_eq!(acked["status"], "complete");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        receiver.received().len(),
        1,
        "no push after the acknowledgement"
    );
    let t = app
        .partner_get(&acme, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert_eq!(t["status"], "complete", "{t}");
    assert!(t["nextAttemptAt"].is_null(), "{t}");
    assert_eq!(attempts(&app, uuid).len(), 1);
}

#[test]
fn a_push_acknowledged_while_it_waits_for_a_slot_is_never_sent() {
    // One call at a time, and the first one takes a while: the second message is handed to
    // the engine with its payload and waits for the slot. Its receiver acknowledges it
    // meanwhile; when the slot frees, the engine must see that and not push it.
    let receiver = Receiver::always(slow(1500));
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.endpoint_concurrency = 1);
    let globex = app.key("GLOBEX", "live");
    let first = send(&app, &acme, "application/json", br#"{"n":1}"#);
    receiver.wait_for(1, 20);
    let second = send(&app, &acme, "application/json", br#"{"n":2}"#);
    let uuid = second["transmissions"][0]["uuid"].as_str().unwrap();
    let acked = app.ack(&globex, uuid, "processed").data(200);
    assert_eq!(acked["status"], "complete");
    let first_uuid = first["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, first_uuid, "processed");
    std::thread::sleep(Duration::from_millis(1000));
    let got = receiver.received();
    assert_eq!(got.len(), 1, "only the first message is pushed");
    assert!(
        attempts(&app, uuid).is_empty(),
        "no attempt of the acknowledged push"
    );
    let t = app
        .partner_get(&acme, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert_eq!(t["status"], "complete", "{t}");
}

#[test]
fn a_late_push_outcome_never_moves_a_final_status() {
    // The push is under way (the receiver takes a second) when the receiver acknowledges it
    // through the API; the push's failure that follows must not reopen it.
    let receiver = Receiver::start(vec![Answer {
        status: 500,
        headers: vec![],
        delay: Duration::from_secs(1),
    }]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![0, 0]);
    let globex = app.key("GLOBEX", "live");
    let sent = send(&app, &acme, "application/json", br#"{"n":1}"#);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    receiver.wait_for(1, 20);
    app.ack(&globex, uuid, "failed").data(200);
    wait_until(20, "the attempt is logged", || {
        attempts(&app, uuid).len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = app
        .partner_get(&acme, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(receiver.received().len(), 1, "{t}");
}

#[test]
fn redelivery_appends_to_the_attempt_log() {
    let receiver = Receiver::start(vec![Answer::status(500), Answer::status(502)]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![]);
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, uuid, "failed");
    app.admin(
        "POST",
        &format!("/admin/api/transmissions/{uuid}/redeliver"),
        None,
    )
    .data(200);
    wait_until(20, "the second attempt is logged", || {
        attempts(&app, uuid).len() == 2
    });
    wait_status(&app, &acme, uuid, "failed");
    let log = attempts(&app, uuid);
    let rows: Vec<(Value, Value)> = log
        .iter()
        .map(|a| (a["attempt"].clone(), a["status"].clone()))
        .collect();
    assert_eq!(
        rows,
        vec![(json!(1), json!(500)), (json!(2), json!(502))],
        "{log:?}"
    );
    // The log is also reachable by delivery id, the same for every kind of delivery.
    let by_delivery = app
        .admin(
            "GET",
            &format!("/admin/api/deliveries/{uuid}/attempts"),
            None,
        )
        .data(200);
    assert_eq!(by_delivery.as_array().unwrap().len(), 2);
}

#[test]
fn no_push_is_attempted_twice_at_once() {
    // Every call takes 2.9 s against an attempt timeout of 3 s: four waves of 64. Pushes
    // that wait for a free slot must not be taken up again while they wait.
    let receiver = Receiver::always(slow(2900));
    let (app, acme, _) = pushing_to(&receiver, |c| {
        c.delivery.timeout_seconds = 3;
        c.delivery.endpoint_concurrency = 64;
    });
    let uuids = send_many(&app, &acme, "GLOBEX", 256);
    wait_until(60, "every push arrives", || {
        receiver.unique_ids().0 >= uuids.len()
    });
    for u in &uuids {
        wait_status(&app, &acme, u, "processed");
    }
    let (unique, total) = receiver.unique_ids();
    assert_eq!(
        (unique, total),
        (256, 256),
        "each push was sent exactly once"
    );
}

/// Partner ACME, and two partners that take pushes at `receivers`, each routed from ACME;
/// returns ACME's key.
fn two_push_receivers(app: &TestApp, receivers: [(&str, &Receiver); 2]) -> String {
    let acme = app.partner("ACME");
    for (code, r) in receivers {
        app.admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": code, "name": code, "pushUrl": format!("{}/hook", r.url)})),
        )
        .data(201);
        app.route("ACME", code, "*");
    }
    acme
}

#[test]
fn a_slow_receiver_does_not_starve_the_others() {
    let slow_receiver = Receiver::always(slow(3000));
    let fast_receiver = Receiver::start(vec![]);
    let app = spawn_app_with(|_| {});
    let acme = two_push_receivers(&app, [("SLOW", &slow_receiver), ("FAST", &fast_receiver)]);
    send_many(&app, &acme, "SLOW", 200);
    std::thread::sleep(Duration::from_millis(300));
    send_many(&app, &acme, "FAST", 5);
    fast_receiver.wait_for(5, 30);
    let slow_done = slow_receiver.received().len();
    assert!(
        slow_done <= 16,
        "the healthy receiver waited behind {slow_done} slow pushes"
    );
}

#[test]
fn a_busy_endpoint_gives_its_slots_back_when_another_waits() {
    // Two slots over all, both taken by BUSY, whose threads would go on with its next
    // entries for as long as it has any.
    let busy = Receiver::always(slow(100));
    let fast = Receiver::start(vec![]);
    let app = spawn_app_with(|c| {
        c.delivery.concurrency = 2;
        c.delivery.endpoint_concurrency = 2;
    });
    let acme = two_push_receivers(&app, [("BUSY", &busy), ("FAST", &fast)]);
    send_many(&app, &acme, "BUSY", 60);
    wait_until(30, "BUSY's pushes begin", || !busy.received().is_empty());
    send_many(&app, &acme, "FAST", 1);
    fast.wait_for(1, 30);
    let busy_done = busy.received().len();
    assert!(
        busy_done < 30,
        "FAST waited behind {busy_done} of BUSY's 60 pushes"
    );
    busy.wait_for(60, 60);
}

#[test]
fn held_pushes_are_parked_without_churn_and_released_on_resume() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, _) = pushing_to(&receiver, |_| {});
    pause(&app, true);
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_until(10, "the push is parked", || {
        app.admin("GET", "/admin/api/stats", None).data(200)["deliveries"]["held"] == 1
    });
    // Longer than the old 5 s re-check: nothing may be written while nothing happens.
    std::thread::sleep(Duration::from_millis(6000));
    let request = sent["requestId"].as_str().unwrap();
    let r = app
        .partner_get(&acme, &format!("/api/v1/requests/{request}"))
        .data(200);
    let history = r["messages"][0]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "the record did not grow: {history:?}");
    assert!(receiver.received().is_empty());
    let stats = app.admin("GET", "/admin/api/stats", None).data(200);
    assert_eq!(stats["deliveries"]["due"], 0, "{stats}");

    pause(&app, false);
    wait_status(&app, &acme, uuid, "processed");
    assert_eq!(receiver.received().len(), 1);
    let stats = app.admin("GET", "/admin/api/stats", None).data(200);
    assert_eq!(stats["deliveries"]["held"], 0, "{stats}");
}

/// Overwrites a byte of the stored payload that contains `marker`.
fn corrupt_payload(app: &TestApp, marker: &[u8]) {
    let dir = app.dir.path().join("payloads");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            bytes[at] ^= 0x20;
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&bytes[at..at + 1], at as u64).unwrap();
            return;
        }
    }
    panic!("payload not found on disk");
}

#[test]
fn a_corrupt_payload_fails_its_transmission_and_the_poll_queue_moves_on() {
    let (app, acme, globex) = crate::acme_to_globex();
    let bad = app
        .send_doc(
            &acme,
            "ACME",
            Some("GLOBEX"),
            "order",
            br#"{"marker":"BROKEN"}"#,
        )
        .data(202);
    let good = app
        .send_doc(
            &acme,
            "ACME",
            Some("GLOBEX"),
            "order",
            br#"{"marker":"fine"}"#,
        )
        .data(202);
    corrupt_payload(&app, b"BROKEN");
    let items = app.poll(&globex, "limit=10");
    let got: Vec<&Value> = items.iter().map(|i| &i["uuid"]).collect();
    assert_eq!(got, vec![&good["transmissions"][0]["uuid"]]);
    let bad_uuid = bad["transmissions"][0]["uuid"].as_str().unwrap();
    let t = app
        .partner_get(&acme, &format!("/api/v1/transmissions/{bad_uuid}"))
        .data(200);
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["lastError"].as_str().unwrap().contains("payload_corrupt"),
        "{t}"
    );
    // It is not handed out again.
    let again = app.poll(&globex, "limit=10");
    assert_eq!(again.len(), 1);
}

#[test]
fn a_corrupt_payload_fails_its_push_once() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, _) = pushing_to(&receiver, |_| {});
    pause(&app, true);
    let bad = send(&app, &acme, "application/json", br#"{"marker":"BROKEN"}"#);
    let good = send(&app, &acme, "application/json", br#"{"marker":"fine"}"#);
    corrupt_payload(&app, b"BROKEN");
    pause(&app, false);
    let bad_uuid = bad["transmissions"][0]["uuid"].as_str().unwrap();
    let t = wait_status(&app, &acme, bad_uuid, "failed");
    assert!(
        t["lastError"].as_str().unwrap().contains("payload_corrupt"),
        "{t}"
    );
    wait_status(
        &app,
        &acme,
        good["transmissions"][0]["uuid"].as_str().unwrap(),
        "processed",
    );
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, br#"{"marker":"fine"}"#);
}

#[test]
fn retry_after_is_clamped_and_never_overflows() {
    let huge = Answer {
        status: 503,
        headers: vec![("retry-after".into(), "9223372036854775".into())],
        delay: Duration::ZERO,
    };
    let receiver = Receiver::start(vec![huge]);
    let (app, acme, _) = pushing_to(&receiver, |c| {
        c.delivery.retry_schedule = vec![1];
        c.delivery.max_retry_after_seconds = 2;
    });
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, uuid, "processed");
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "retried after {waited:?}: the clamp is 2 s"
    );
}

#[test]
fn retry_after_never_shortens_the_schedule() {
    let now = Answer {
        status: 429,
        headers: vec![("retry-after".into(), "0".into())],
        delay: Duration::ZERO,
    };
    let receiver = Receiver::start(vec![now]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![2]);
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, uuid, "processed");
    let got = receiver.received();
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(1500),
        "retried after {waited:?}, sooner than the schedule's 2 s (less jitter)"
    );
}
