//! Push delivery to real receivers on 127.0.0.1 (allowed by the tests' `outbound.allow`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::receiver::{Answer, Receiver};
use crate::{spawn_app_with, TestApp};

/// ACME sends to GLOBEX, which has a push URL at `receiver`. Returns the app, ACME's key
/// and GLOBEX's live signing secret.
pub fn pushing_to(
    receiver: &Receiver,
    tweak: impl FnOnce(&mut waybill::config::Config),
) -> (TestApp, String, String) {
    let app = spawn_app_with(tweak);
    app.admin(
        "POST",
        "/admin/api/partners",
        Some(json!({"code": "ACME", "name": "Acme"})),
    )
    .data(201);
    let acme = app.key("ACME", "live");
    let globex = app
        .admin(
            "POST",
            "/admin/api/partners",
            Some(json!({
                "code": "GLOBEX",
                "name": "Globex",
                "pushUrl": format!("{}/hook?token=abc", receiver.url),
                "pushParams": {"site": "7"},
                "pushHeaders": {"X-Auth": "s3cret"},
            })),
        )
        .data(201);
    app.route("ACME", "GLOBEX", "*");
    let secret = globex["signingSecret"]
        .as_str()
        .expect("signing secret")
        .to_owned();
    (app, acme, secret)
}

pub fn send(app: &TestApp, key: &str, content_type: &str, body: &[u8]) -> Value {
    app.call(
        "POST",
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=3",
        &[("X-Api-Key", key), ("Content-Type", content_type)],
        Some(body),
    )
    .data(202)
}

/// Waits until the transmission (seen by its sender) reaches `status`.
pub fn wait_status(app: &TestApp, key: &str, uuid: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = app
            .partner_get(key, &format!("/api/v1/transmissions/{uuid}"))
            .data(200);
        if t["status"] == status {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "transmission stayed {} (wanted {status}): {t}",
            t["status"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn attempts(app: &TestApp, uuid: &str) -> Vec<Value> {
    app.admin(
        "GET",
        &format!("/admin/api/transmissions/{uuid}/attempts"),
        None,
    )
    .data(200)
    .as_array()
    .unwrap()
    .clone()
}

#[test]
fn a_push_arrives_signed_with_params_headers_body_and_content_type_intact() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, secret) = pushing_to(&receiver, |_| {});
    let sent = send(&app, &acme, "text/csv", b"a,b\n1,2\n");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let got = receiver.wait_for(1, 20);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert!(r.target.starts_with("/hook?"), "{}", r.target);
    let q = r.query();
    for (k, v) in [
        ("token", "abc"),
        ("sender", "ACME"),
        ("receiver", "GLOBEX"),
        ("doctype", "order"),
        ("version", "3"),
        ("site", "7"),
    ] {
        assert!(
            q.contains(&(k.to_owned(), v.to_owned())),
            "{k}={v} missing from {q:?}"
        );
    }
    assert_eq!(r.header("x-auth"), Some("s3cret"));
    assert_eq!(r.header("content-type"), Some("text/csv"));
    assert_eq!(r.body, b"a,b\n1,2\n");

    let id = r.header("webhook-id").unwrap();
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(id.starts_with("msg_"));
    let expected = waybill::outbound::sign::signature(&secret, id, ts, &r.body).unwrap();
    assert_eq!(
        r.header("webhook-signature"),
        Some(expected.as_str()),
        "the signature verifies"
    );

    let t = wait_status(&app, &acme, uuid, "processed");
    assert_eq!(t["deliveryCount"], 1);
    let log = attempts(&app, uuid);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["response"], "ok");
}

#[test]
fn failures_are_retried_and_succeed_once_with_the_same_webhook_id() {
    let receiver = Receiver::start(vec![Answer::status(500), Answer::status(503)]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![0, 0, 0]);
    let sent = send(&app, &acme, "application/json", br#"{"n":1}"#);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, uuid, "processed");
    let got = receiver.received();
    assert_eq!(got.len(), 3, "two failures then exactly one success");
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one webhook-id across retries: {ids:?}"
    );
    let statuses: Vec<Value> = attempts(&app, uuid)
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(500), json!(503), json!(200)]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        receiver.received().len(),
        3,
        "nothing more after the success"
    );
}

#[test]
fn redirects_are_failures_and_are_not_followed() {
    let receiver = Receiver::start(vec![Answer {
        status: 302,
        headers: vec![("location".into(), "/elsewhere".into())],
        delay: Duration::ZERO,
    }]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![]);
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let t = wait_status(&app, &acme, uuid, "failed");
    assert!(
        t["lastError"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{t}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "the redirect was not followed"
    );
}

#[test]
fn a_timeout_counts_as_a_failed_attempt() {
    let slow = Answer {
        status: 200,
        headers: vec![],
        delay: Duration::from_secs(3),
    };
    let receiver = Receiver::start(vec![slow]);
    let (app, acme, _) = pushing_to(&receiver, |c| {
        c.delivery.retry_schedule = vec![0];
        c.delivery.timeout_seconds = 1;
    });
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, uuid, "processed");
    let log = attempts(&app, uuid);
    assert_eq!(log.len(), 2);
    assert!(
        log[0]["error"].as_str().unwrap().contains("timed out"),
        "{:?}",
        log[0]
    );
    assert_eq!(log[1]["status"], 200);
}

#[test]
fn a_410_disables_the_endpoint_until_an_admin_enables_it_and_nothing_is_lost() {
    let receiver = Receiver::start(vec![Answer::status(410)]);
    let (app, acme, _) = pushing_to(&receiver, |_| {});
    let first = send(&app, &acme, "application/json", br#"{"n":1}"#);
    receiver.wait_for(1, 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = app
            .admin("GET", "/admin/api/partners/GLOBEX", None)
            .data(200);
        if p["disabledEndpoints"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
        {
            assert_eq!(p["disabledEndpoints"][0]["env"], "live");
            break;
        }
        assert!(Instant::now() < deadline, "endpoint never disabled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = send(&app, &acme, "application/json", br#"{"n":2}"#);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receiver.received().len(),
        1,
        "a disabled endpoint gets nothing"
    );

    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({"enableEndpoints": ["live"]})),
    )
    .data(200);
    for sent in [&first, &second] {
        wait_status(
            &app,
            &acme,
            sent["transmissions"][0]["uuid"].as_str().unwrap(),
            "processed",
        );
    }
}

#[test]
fn pause_holds_pushes_and_resume_delivers_them() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, _) = pushing_to(&receiver, |_| {});
    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({"pushPaused": true})),
    )
    .data(200);
    let sent = send(&app, &acme, "application/json", b"{}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(receiver.received().is_empty(), "paused: nothing pushed");
    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({"pushPaused": false})),
    )
    .data(200);
    wait_status(
        &app,
        &acme,
        sent["transmissions"][0]["uuid"].as_str().unwrap(),
        "processed",
    );
    assert_eq!(receiver.received().len(), 1);
}

#[test]
fn loopback_targets_are_refused_when_outbound_allow_is_empty() {
    let receiver = Receiver::start(vec![]);
    // Set while outbound.allow included loopback; then the policy was narrowed.
    let (app, _, _) = pushing_to(&receiver, |_| {});
    let narrowed = |c: &mut waybill::config::Config| {
        c.outbound.allow = vec![];
        c.delivery.retry_schedule = vec![];
    };
    let app = crate::spawn_app_in(app.stop(), "http", crate::agent(), narrowed);
    let acme = app.key("ACME", "live");
    // Set now, the same URL is refused at once.
    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({"pushUrl": format!("{}/other", receiver.url)})),
    )
    .error(422, "validation_failed");
    let sent = send(&app, &acme, "application/json", b"{}");
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let t = wait_status(&app, &acme, uuid, "failed");
    let error = t["lastError"].as_str().unwrap();
    assert!(
        error.contains("refused") && error.contains("loopback"),
        "{error}"
    );
    assert!(
        receiver.received().is_empty(),
        "the receiver was never contacted"
    );
    assert!(attempts(&app, uuid)[0]["error"]
        .as_str()
        .unwrap()
        .contains("loopback"));
}

#[test]
fn test_traffic_goes_to_the_test_url_only() {
    let live = Receiver::start(vec![]);
    let test = Receiver::start(vec![]);
    let (app, _acme, _) = pushing_to(&live, |_| {});
    let acme_test = app.key("ACME", "test");
    let globex_test = app.key("GLOBEX", "test");
    // Only a live push URL: a test message is not pushed there, it waits to be polled.
    let sent = app
        .send_doc(&acme_test, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        live.received().is_empty(),
        "test traffic never reaches the live URL"
    );
    let polled = app.poll(&globex_test, "");
    assert_eq!(polled[0]["uuid"], sent["transmissions"][0]["uuid"]);

    // With a test URL, test messages are pushed there, signed with the test secret.
    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({"testPushUrl": format!("{}/t", test.url)})),
    )
    .data(200);
    app.send_doc(&acme_test, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let got = test.wait_for(1, 20);
    assert!(got[0].target.starts_with("/t?"));
    assert!(live.received().is_empty());
}

#[test]
fn admins_redeliver_failed_transmissions_one_or_all() {
    let receiver = Receiver::start(vec![
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
    ]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![]);
    let uuids: Vec<String> = (0..3)
        .map(|i| {
            let sent = send(
                &app,
                &acme,
                "application/json",
                format!("{{\"n\":{i}}}").as_bytes(),
            );
            sent["transmissions"][0]["uuid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for u in &uuids {
        wait_status(&app, &acme, u, "failed");
    }
    // The receiver now answers 200 (its script is used up).
    let one = app
        .admin(
            "POST",
            &format!("/admin/api/transmissions/{}/redeliver", uuids[0]),
            None,
        )
        .data(200);
    assert_eq!(one["requeued"], 1);
    wait_status(&app, &acme, &uuids[0], "processed");
    app.admin(
        "POST",
        &format!("/admin/api/transmissions/{}/redeliver", uuids[0]),
        None,
    )
    .error(409, "conflict");

    let all = app
        .admin("POST", "/admin/api/partners/GLOBEX/redeliver-failed", None)
        .data(200);
    assert_eq!(all["requeued"], 2);
    for u in &uuids[1..] {
        wait_status(&app, &acme, u, "processed");
    }
    assert_eq!(
        receiver.received().len(),
        6,
        "3 failures, then 3 deliveries"
    );
    app.admin(
        "POST",
        &format!(
            "/admin/api/transmissions/{}/redeliver",
            uuid::Uuid::now_v7()
        ),
        None,
    )
    .error(404, "not_found");
}

#[test]
fn during_a_secret_rotation_both_secrets_sign() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, old) = pushing_to(&receiver, |_| {});
    let rotated = app
        .admin(
            "POST",
            "/admin/api/partners/GLOBEX/signing-secret",
            Some(json!({"overlapHours": 1})),
        )
        .data(200);
    let new = rotated["signingSecret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated["previousValidUntil"].is_string());
    send(&app, &acme, "application/json", b"{}");
    let r = &receiver.wait_for(1, 20)[0];
    let (id, ts) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap().parse().unwrap(),
    );
    let sign = |secret: &str| waybill::outbound::sign::signature(secret, id, ts, &r.body).unwrap();
    assert_eq!(
        r.header("webhook-signature").unwrap(),
        format!("{} {}", sign(&new), sign(&old))
    );

    // Without an overlap the old secret stops signing at once.
    let newer = app
        .admin(
            "POST",
            "/admin/api/partners/GLOBEX/signing-secret",
            Some(json!({"overlapHours": 0})),
        )
        .data(200)["signingSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    send(&app, &acme, "application/json", b"{}");
    let r = &receiver.wait_for(2, 20)[1];
    let (id, ts) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap().parse().unwrap(),
    );
    let expected = waybill::outbound::sign::signature(&newer, id, ts, &r.body).unwrap();
    assert_eq!(r.header("webhook-signature"), Some(expected.as_str()));
}

#[test]
fn retry_after_is_honoured_on_429() {
    let busy = Answer {
        status: 429,
        headers: vec![("retry-after".into(), "2".into())],
        delay: Duration::ZERO,
    };
    let receiver = Receiver::start(vec![busy]);
    let (app, acme, _) = pushing_to(&receiver, |c| c.delivery.retry_schedule = vec![0]);
    let sent = send(&app, &acme, "application/json", b"{}");
    wait_status(
        &app,
        &acme,
        sent["transmissions"][0]["uuid"].as_str().unwrap(),
        "processed",
    );
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, before Retry-After"
    );
}
