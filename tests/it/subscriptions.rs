//! Event subscriptions over real HTTP against the real server, with a real receiver: the
//! contract, batching, splitting, retries, signatures, deletion, isolation, health, the
//! admin side, and ids that survive a kill -9 inside their window.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::receiver::{Answer, Received, Receiver};
use crate::{send, spawn_app_with, TestApp};

/// The batch window of most tests: short, so they run quickly.
const WINDOW_MS: u64 = 300;

/// A server with a short batch window and retries a second apart, and ACME → GLOBEX for
/// every doctype. Returns (app, ACME's key, GLOBEX's key).
fn setup(window_ms: u64) -> (TestApp, String, String) {
    let app = spawn_app_with(|c| {
        c.subscriptions.batch_window_ms = window_ms;
        c.delivery.retry_schedule = vec![1, 1, 1, 1, 1];
    });
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    (app, acme, globex)
}

/// Subscribes `key`'s partner; returns the 201's data.
fn subscribe(app: &TestApp, key: &str, body: Value) -> Value {
    app.partner_json(key, "POST", "/api/v1/subscriptions", &body)
        .data(201)
}

/// A callback URL at `r` with the placeholder in the query.
fn hook(r: &Receiver) -> String {
    format!("{}/cb?ids={{ids}}", r.url)
}

fn body_of(r: &Received) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

/// The ids a call's body names.
fn body_ids(r: &Received) -> Vec<String> {
    body_of(r)["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect()
}

/// The ids a call's URL names (the `ids` query parameter, comma-separated).
fn url_ids(r: &Received) -> Vec<String> {
    let ids = r
        .query()
        .into_iter()
        .find(|(k, _)| k == "ids")
        .map(|(_, v)| v)
        .unwrap_or_default();
    ids.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Sends `n` documents from ACME; returns their message ids and transmission uuids.
fn send_docs(app: &TestApp, acme: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut uuids = Vec::new();
    for i in 0..n {
        let d = app
            .send_doc(
                acme,
                "ACME",
                Some("GLOBEX"),
                "order",
                format!(r#"{{"n":{i}}}"#).as_bytes(),
            )
            .data(202);
        ids.push(d["id"].as_str().unwrap().to_owned());
        uuids.push(d["transmissions"][0]["uuid"].as_str().unwrap().to_owned());
    }
    (ids, uuids)
}

/// Waits `ms` and returns what the receiver has got by then.
fn after(r: &Receiver, ms: u64) -> Vec<Received> {
    std::thread::sleep(Duration::from_millis(ms));
    r.received()
}

/// Standard Webhooks, checked here with our own HMAC: `v1,<base64 HMAC-SHA256 of
/// "id.timestamp.body">` keyed with the base64 part of the `whsec_` secret.
fn signature_ok(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .expect("base64 secret");
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    r.header("webhook-signature")
        .expect("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[test]
fn the_url_needs_the_placeholder_and_an_allowed_address() {
    let (app, acme, _) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let create = |body: Value| app.partner_json(&acme, "POST", "/api/v1/subscriptions", &body);

    let e = create(json!({"systemName": "erp", "url": format!("{}/cb", r.url)}))
        .error(422, "placeholder_required");
    assert_eq!(e["field"], "url");
    for url in [
        "ftp://127.0.0.1/{ids}".to_owned(),
        "http://{ids}.example.com/cb".to_owned(),
        format!("{}/a/{{ids}}/{{ids}}", r.url),
        // Private addresses are refused unless outbound.allow lists them (the tests allow
        // only loopback).
        "http://10.1.2.3/cb?ids={ids}".to_owned(),
        "http://user:pw@127.0.0.1/{ids}".to_owned(),
        format!("{}/{}{{ids}}", r.url, "x".repeat(2000)),
    ] {
        let e = create(json!({"systemName": "erp", "url": url})).error(422, "validation_failed");
        assert_eq!(e["field"], "url", "{url}: {e}");
    }
    let e = create(json!({"url": hook(&r)})).error(422, "validation_failed");
    assert_eq!(e["field"], "systemName");
    let e = create(json!({"systemName": "erp", "url": hook(&r), "events": ["message.deleted"]}))
        .error(422, "validation_failed");
    assert_eq!(e["field"], "events");
    create(json!({"systemName": "erp", "url": hook(&r), "events": "message.status"}))
        .error(400, "bad_request");
    create(json!({"systemName": "erp", "url": hook(&r), "authHeader": "a\u{1}b"}))
        .error(422, "validation_failed");
    // Credentials come first.
    let anon = app.call(
        "POST",
        "/api/v1/subscriptions",
        &[("Content-Type", "application/json")],
        Some(b"{}"),
    );
    anon.error(401, "unauthorized");

    let created = app.partner_json(
        &acme,
        "POST",
        "/api/v1/subscriptions",
        &json!({"systemName": "erp", "url": hook(&r), "customer": "C-1"}),
    );
    let d = created.data(201);
    let id = d["id"].as_str().unwrap();
    assert_eq!(
        created.headers.get("location").unwrap(),
        &format!("/api/v1/subscriptions/{id}")
    );
    assert!(d["message"].is_string());
    assert!(d["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(d["events"], json!(["message.status"]), "the default event");
    assert_eq!(d["active"], true);
    assert_eq!(d["customer"], "C-1");
    let one = app
        .partner_get(&acme, &format!("/api/v1/subscriptions/{id}"))
        .data(200);
    assert!(
        one.get("secret").is_none(),
        "the secret is shown once: {one}"
    );
}

#[test]
fn the_auth_header_is_masked_in_every_listing_and_sent_in_full() {
    let (app, acme, _) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let secret_header = "Bearer s3cr3t-0123456789-abcdef";
    let d = subscribe(
        &app,
        &acme,
        json!({"systemName": "erp", "url": hook(&r), "authHeader": secret_header}),
    );
    let id = d["id"].as_str().unwrap().to_owned();
    let list = app.partner_get(&acme, "/api/v1/subscriptions");
    let listed = list.data(200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = listed[0]["authHeader"].as_str().unwrap();
    assert!(
        shown.starts_with("Bearer ") && shown.contains("****"),
        "{shown}"
    );
    let one = app.partner_get(&acme, &format!("/api/v1/subscriptions/{id}"));
    let admin = app.admin("GET", "/admin/api/subscriptions", None);
    for body in [
        &list.body,
        &d.to_string().into_bytes(),
        &one.body,
        &admin.body,
    ] {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains("s3cr3t-0123456789"), "{text}");
    }
    // The call itself carries it whole.
    app.partner_json(
        &acme,
        "POST",
        &format!("/api/v1/subscriptions/{id}/test"),
        &json!({}),
    )
    .data(200);
    let got = r.wait_for(1, 10);
    assert_eq!(got[0].header("authorization"), Some(secret_header));
}

#[test]
fn five_changes_inside_one_window_make_one_call_naming_all_five() {
    let window = 1500;
    let (app, acme, globex) = setup(window);
    let r = Receiver::start(vec![]);
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let (ids, uuids) = send_docs(&app, &acme, 5);
    assert!(after(&r, 0).is_empty(), "intake is no status change");
    // Ten changes of five messages: each is processed (polled), then complete (acknowledged).
    let polled = app.poll(&globex, "limit=10");
    assert_eq!(polled.len(), 5);
    for u in &uuids {
        app.ack(&globex, u, "processed").data(200);
    }
    let got = r.wait_for(1, 20);
    let later = after(&r, 2 * window);
    assert_eq!(later.len(), 1, "one call for the window: {:?}", later.len());
    let call = &got[0];
    assert_eq!(call.method, "POST");
    let b = body_of(call);
    assert_eq!(b["event"], "message.status");
    assert!(b["occurredAt"].as_str().unwrap().ends_with('Z'));
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(body_ids(call).into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(url_ids(call).into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(body_ids(call).len(), 5, "each id once");
    assert_eq!(
        call.header("waybill-subscription"),
        sub["id"].as_str(),
        "the subscription is named"
    );
    assert!(signature_ok(sub["secret"].as_str().unwrap(), call));
}

#[test]
fn many_ids_are_split_into_calls_whose_urls_stay_within_2000_characters() {
    let (app, acme, globex) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    // A long URL leaves room for a dozen ids per call.
    let url = format!("{}/{}/cb?ids={{ids}}&tail=1", r.url, "p".repeat(1400));
    subscribe(
        &app,
        &globex,
        json!({"systemName": "wms", "url": url, "events": ["transmission.created"]}),
    );
    let messages: Vec<Value> = (0..300)
        .map(|i| json!({"messageType": "order", "receiver": "GLOBEX", "payload": {"n": i}}))
        .collect();
    let batch = app
        .partner_json(
            &acme,
            "POST",
            "/api/v1/requests",
            &json!({"batchReference": "B-300", "messages": messages}),
        )
        .data(202);
    assert_eq!(batch["messages"].as_array().unwrap().len(), 300);
    // Every transmission, as GLOBEX would fetch them.
    let mut want = BTreeSet::new();
    loop {
        let items = app.poll(&globex, "limit=100&lease=600");
        if items.is_empty() {
            break;
        }
        for t in items {
            want.insert(t["uuid"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(want.len(), 300);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<String> = Vec::new();
    let mut calls = 0;
    while Instant::now() < deadline {
        let got = r.received();
        seen = got.iter().flat_map(body_ids).collect();
        calls = got.len();
        if seen.len() >= 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = after(&r, 3 * WINDOW_MS);
    assert!(calls > 1, "{calls} calls");
    assert_eq!(got.len(), calls, "no call beyond those");
    for call in &got {
        let full = format!("{}{}", r.url, call.target);
        assert!(full.len() <= 2000, "a URL of {} characters", full.len());
        assert_eq!(url_ids(call), body_ids(call), "the URL and the body agree");
        assert!(call.target.ends_with("&tail=1"));
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no id twice");
    assert_eq!(unique, want, "none lost");
}

#[test]
fn failed_calls_are_retried_with_the_same_id_until_one_succeeds() {
    let (app, acme, globex) = setup(WINDOW_MS);
    let r = Receiver::start(vec![Answer::status(500), Answer::status(503)]);
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let id = sub["id"].as_str().unwrap();
    let (_, uuids) = send_docs(&app, &acme, 1);
    app.ack(&globex, &uuids[0], "processed").data(200);
    let got = r.wait_for(3, 30);
    let ids: BTreeSet<&str> = got.iter().filter_map(|c| c.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "one delivery, retried");
    assert!(got.windows(2).all(|w| w[0].body == w[1].body));
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(700),
        "backoff"
    );
    // The owner and the admin see how it went.
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let v = app
            .partner_get(&acme, &format!("/api/v1/subscriptions/{id}"))
            .data(200);
        if v["lastSuccessAt"].is_string() {
            break v;
        }
        assert!(Instant::now() < deadline, "no success recorded: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(view["failures"], 0);
    let attempts = view["lastAttempts"].as_array().unwrap();
    let statuses: Vec<u64> = attempts
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 503, 500], "newest first");
    let delivery = attempts[0]["deliveryId"].as_str().unwrap();
    let log = app
        .admin(
            "GET",
            &format!("/admin/api/deliveries/{delivery}/attempts"),
            None,
        )
        .data(200);
    assert_eq!(log.as_array().unwrap().len(), 3, "every attempt is logged");
}

#[test]
fn deleting_a_subscription_stops_its_calls_at_once() {
    let window = 1500;
    let (app, acme, globex) = setup(window);
    let r = Receiver::start(vec![]);
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let id = sub["id"].as_str().unwrap();
    let (_, uuids) = send_docs(&app, &acme, 2);
    // A change inside the window, then the deletion before the window closes.
    app.ack(&globex, &uuids[0], "processed").data(200);
    let gone = app.call(
        "DELETE",
        &format!("/api/v1/subscriptions/{id}"),
        &[("X-Api-Key", &acme)],
        None,
    );
    assert_eq!(gone.data(200)["deleted"], true);
    app.ack(&globex, &uuids[1], "processed").data(200);
    assert!(
        after(&r, 2 * window + 500).is_empty(),
        "no call after the delete"
    );
    app.partner_get(&acme, &format!("/api/v1/subscriptions/{id}"))
        .error(404, "not_found");
    assert!(app
        .partner_get(&acme, "/api/v1/subscriptions")
        .data(200)
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn another_partners_or_environments_subscription_is_404() {
    let (app, acme, globex) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let id = sub["id"].as_str().unwrap();
    let acme_test = app.key("ACME", "test");
    for key in [&globex, &acme_test] {
        let path = format!("/api/v1/subscriptions/{id}");
        app.partner_get(key, &path).error(404, "not_found");
        app.partner_json(key, "PATCH", &path, &json!({"active": false}))
            .error(404, "not_found");
        app.partner_json(key, "POST", &format!("{path}/test"), &json!({}))
            .error(404, "not_found");
        app.call("DELETE", &path, &[("X-Api-Key", key)], None)
            .error(404, "not_found");
        assert!(app
            .partner_get(key, "/api/v1/subscriptions")
            .data(200)
            .as_array()
            .unwrap()
            .is_empty());
    }
    app.partner_get(&acme, "/api/v1/subscriptions/not-a-uuid")
        .error(404, "not_found");
    // Still there, still on, and no call was made by anyone's attempts.
    let v = app
        .partner_get(&acme, &format!("/api/v1/subscriptions/{id}"))
        .data(200);
    assert_eq!(v["active"], true);
    assert!(r.received().is_empty());

    // Test traffic feeds test subscriptions only.
    let rt = Receiver::start(vec![]);
    let globex_test = app.key("GLOBEX", "test");
    subscribe(
        &app,
        &globex_test,
        json!({"systemName": "t", "url": hook(&rt), "events": ["transmission.created"]}),
    );
    send_docs(&app, &acme, 1);
    assert!(
        after(&rt, 3 * WINDOW_MS).is_empty(),
        "live intake is not test work"
    );
}

#[test]
fn transmission_created_tells_a_polling_receiver_of_new_work() {
    let (app, acme, globex) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let sub = subscribe(
        &app,
        &globex,
        json!({"systemName": "wms", "url": hook(&r), "events": ["transmission.created"],
               "authHeader": "Token abc"}),
    );
    let (_, uuids) = send_docs(&app, &acme, 2);
    let got = r.wait_for(1, 20);
    let named: BTreeSet<String> = got.iter().flat_map(body_ids).collect();
    let b = body_of(&got[0]);
    assert_eq!(b["event"], "transmission.created");
    assert!(signature_ok(sub["secret"].as_str().unwrap(), &got[0]));
    assert!(named.contains(&uuids[0]));
    // Told, the receiver polls and finds exactly that work.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = named;
    while all.len() < 2 && Instant::now() < deadline {
        all.extend(r.received().iter().flat_map(body_ids));
        std::thread::sleep(Duration::from_millis(50));
    }
    let items = app.poll(&globex, "limit=10");
    let polled: BTreeSet<String> = items
        .iter()
        .map(|t| t["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(polled, all);
    assert_eq!(polled, uuids.iter().cloned().collect());
}

#[test]
fn background_completed_names_the_job() {
    let (app, acme, _) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    subscribe(
        &app,
        &acme,
        json!({"systemName": "erp", "url": hook(&r), "events": ["background.completed"]}),
    );
    let job = app
        .call(
            "POST",
            "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order",
            &[
                ("X-Api-Key", &acme),
                ("Content-Type", "application/json"),
                ("Waybill-Background", "none"),
            ],
            Some(b"{}"),
        )
        .data(202);
    let got = r.wait_for(1, 30);
    assert_eq!(body_of(&got[0])["event"], "background.completed");
    assert_eq!(
        body_ids(&got[0]),
        vec![job["id"].as_str().unwrap().to_owned()]
    );
}

#[test]
fn the_owner_changes_pauses_and_tests_a_subscription() {
    let (app, acme, globex) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let r2 = Receiver::start(vec![]);
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let id = sub["id"].as_str().unwrap();
    let path = format!("/api/v1/subscriptions/{id}");

    // A test call: one signed call now, its outcome in the answer.
    let t = app
        .partner_json(&acme, "POST", &format!("{path}/test"), &json!({}))
        .data(200);
    assert_eq!(t["delivered"], true);
    assert_eq!(t["status"], 200);
    let got = r.wait_for(1, 10);
    assert_eq!(body_of(&got[0])["event"], "subscription.test");
    assert!(signature_ok(sub["secret"].as_str().unwrap(), &got[0]));

    // Off: changes are not collected.
    let v = app
        .partner_json(&acme, "PATCH", &path, &json!({"active": false}))
        .data(200);
    assert_eq!(v["active"], false);
    assert!(v["disabledReason"].as_str().unwrap().contains("owner"));
    let (_, uuids) = send_docs(&app, &acme, 1);
    app.ack(&globex, &uuids[0], "processed").data(200);
    assert_eq!(after(&r, 3 * WINDOW_MS).len(), 1, "only the test call");

    // New URL and events, on again: the next change goes to the new URL.
    let v = app
        .partner_json(
            &acme,
            "PATCH",
            &path,
            &json!({"active": true, "url": hook(&r2), "events": ["message.status", "background.completed"], "authHeader": null}),
        )
        .data(200);
    assert_eq!(v["active"], true);
    assert!(v["disabledReason"].is_null());
    assert_eq!(
        v["events"],
        json!(["message.status", "background.completed"])
    );
    assert!(v["authHeader"].is_null());
    app.partner_json(
        &acme,
        "PATCH",
        &path,
        &json!({"url": "http://127.0.0.1/none"}),
    )
    .error(422, "placeholder_required");
    let (ids, uuids) = send_docs(&app, &acme, 1);
    app.ack(&globex, &uuids[0], "processed").data(200);
    let got = r2.wait_for(1, 20);
    assert_eq!(body_ids(&got[0]), ids);
    assert_eq!(r.received().len(), 1);
}

#[test]
fn a_subscription_whose_endpoint_is_gone_is_disabled_and_its_owner_turns_it_back_on() {
    let (app, acme, globex) = setup(WINDOW_MS);
    // 410 Gone disables at once, like a push endpoint; then the receiver is back.
    let r = Receiver::start(vec![Answer::status(410)]);
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let id = sub["id"].as_str().unwrap();
    let path = format!("/api/v1/subscriptions/{id}");
    let (ids, uuids) = send_docs(&app, &acme, 1);
    app.ack(&globex, &uuids[0], "processed").data(200);
    r.wait_for(1, 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = app.partner_get(&acme, &path).data(200);
        if v["active"] == false {
            break v;
        }
        assert!(Instant::now() < deadline, "never disabled: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(v["disabledReason"].as_str().unwrap().contains("410"), "{v}");
    // The disabling and the attempt's outcome are two writes: wait for the second too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = loop {
        let admin = app
            .admin("GET", "/admin/api/subscriptions?active=false", None)
            .data(200);
        if admin[0]["health"]["failures"] == 1 {
            break admin;
        }
        assert!(
            Instant::now() < deadline,
            "the failure was never recorded: {admin}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(admin.as_array().unwrap().len(), 1);
    assert_eq!(admin[0]["partner"], "ACME");
    assert_eq!(admin[0]["health"]["failures"], 1);
    assert!(admin[0]["health"]["lastError"].is_string());
    assert_eq!(admin[0]["lastAttempts"][0]["status"], 410);
    assert!(after(&r, 3 * WINDOW_MS).len() == 1, "held while disabled");

    // The owner turns it back on: the parked call goes, with the same ids.
    app.partner_json(&acme, "PATCH", &path, &json!({"active": true}))
        .data(200);
    let got = r.wait_for(2, 20);
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    assert_eq!(body_ids(&got[1]), ids);
}

#[test]
fn the_admin_lists_every_partners_subscriptions_turns_them_off_and_on_and_tests_them() {
    let (app, acme, globex) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let a = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let globex_test = app.key("GLOBEX", "test");
    let g = subscribe(
        &app,
        &globex_test,
        json!({"systemName": "wms", "url": hook(&r), "events": ["transmission.created"],
               "authHeader": "Bearer a-long-secret-value-9999"}),
    );
    let all = app.admin("GET", "/admin/api/subscriptions", None).data(200);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["id"], a["id"]);
    assert_eq!(all[0]["env"], "live");
    assert_eq!(all[1]["partner"], "GLOBEX");
    assert_eq!(all[1]["env"], "test");
    assert_eq!(all[1]["authHeader"], "Bearer ****9999");
    for key in ["health", "lastAttempts", "pendingIds", "active"] {
        assert!(all[0].get(key).is_some(), "{key} in {}", all[0]);
    }
    let only = app
        .admin(
            "GET",
            "/admin/api/subscriptions?env=test&partner=GLOBEX",
            None,
        )
        .data(200);
    assert_eq!(only.as_array().unwrap().len(), 1);
    let _ = globex;

    let id = a["id"].as_str().unwrap();
    let off = app
        .admin(
            "PATCH",
            &format!("/admin/api/subscriptions/{id}"),
            Some(json!({"active": false})),
        )
        .data(200);
    assert_eq!(off["active"], false);
    assert!(off["disabledReason"].as_str().unwrap().contains("admin"));
    let seen = app
        .partner_get(&acme, &format!("/api/v1/subscriptions/{id}"))
        .data(200);
    assert_eq!(seen["active"], false, "the owner sees it off");
    let on = app
        .admin(
            "PATCH",
            &format!("/admin/api/subscriptions/{id}"),
            Some(json!({"active": true})),
        )
        .data(200);
    assert_eq!(on["active"], true);
    // The other environment's id is not found without ?env=test.
    let gid = g["id"].as_str().unwrap();
    app.admin("GET", &format!("/admin/api/subscriptions/{gid}"), None)
        .error(404, "not_found");
    let t = app
        .admin(
            "POST",
            &format!("/admin/api/subscriptions/{gid}/test?env=test"),
            None,
        )
        .data(200);
    assert_eq!(t["delivered"], true);
    let got = r.wait_for(1, 10);
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer a-long-secret-value-9999")
    );
    let detail = app
        .admin(
            "GET",
            &format!("/admin/api/subscriptions/{gid}?env=test"),
            None,
        )
        .data(200);
    assert_eq!(detail["lastAttempts"][0]["test"], true);

    // Changes are audited.
    let log = app
        .admin("GET", "/admin/api/audit?limit=100", None)
        .data(200);
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"PATCH /admin/api/subscriptions/{}"),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"POST /admin/api/subscriptions/{}/test"),
        "{actions:?}"
    );
    // No admin without credentials.
    send(
        &crate::agent(),
        "GET",
        &app.url("/admin/api/subscriptions"),
        &[],
        None,
    )
    .error(401, "unauthorized");
}

#[test]
fn a_repeated_creation_with_the_same_idempotency_key_makes_one_subscription() {
    let (app, acme, _) = setup(WINDOW_MS);
    let r = Receiver::start(vec![]);
    let body = serde_json::to_vec(&json!({"systemName": "erp", "url": hook(&r)})).unwrap();
    let headers = [
        ("X-Api-Key", acme.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "sub-1"),
    ];
    let first = app.call("POST", "/api/v1/subscriptions", &headers, Some(&body));
    let second = app.call("POST", "/api/v1/subscriptions", &headers, Some(&body));
    assert_eq!(first.data(201)["id"], second.data(201)["id"]);
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        app.partner_get(&acme, "/api/v1/subscriptions")
            .data(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The real binary, killed with SIGKILL while ids wait for their window: after the restart
/// they are called all the same.
#[test]
fn ids_waiting_in_their_window_at_kill_9_arrive_after_restart() {
    use crate::process::start_with;
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start(vec![]);
    // A window long enough that the kill lands inside it.
    let settings = [("WAYBILL_SUBSCRIPTIONS__BATCH_WINDOW_MS", "4000")];
    let mut server = start_with(dir.path(), &settings);
    let (acme, globex) = server.acme_to_globex(json!({}));
    let created = send(
        &crate::agent(),
        "POST",
        &format!("{}/api/v1/subscriptions", server.base),
        &[("X-Api-Key", &globex), ("Content-Type", "application/json")],
        Some(
            json!({"systemName": "wms", "url": hook(&r), "events": ["transmission.created"]})
                .to_string()
                .as_bytes(),
        ),
    )
    .data(201);
    let mut want = BTreeSet::new();
    for i in 0..3 {
        let sent = server.send_doc(&acme, format!(r#"{{"kill":{i}}}"#).as_bytes());
        want.insert(
            sent["transmissions"][0]["uuid"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(r.received().is_empty(), "the kill came inside the window");

    let _server = start_with(dir.path(), &settings);
    let got = r.wait_for(1, 30);
    let named: BTreeSet<String> = after(&r, 1000).iter().flat_map(body_ids).collect();
    assert_eq!(named, want, "every id arrives");
    assert!(signature_ok(created["secret"].as_str().unwrap(), &got[0]));
}

/// The most requests that arrived within any `window` of each other.
fn most_at_once(got: &[Received], window: Duration) -> usize {
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort_unstable();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + window).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn test_calls_share_the_endpoints_cap_and_too_many_at_once_get_429() {
    // Two calls at a time to one endpoint, each answered after a second. Six test calls
    // made at once: as many as twice the cap wait their turn and go out two by two, the
    // rest are refused at once rather than piling up calls to the receiver.
    let app = spawn_app_with(|c| c.delivery.endpoint_concurrency = 2);
    let acme = app.partner("ACME");
    let r = Receiver::always(Answer {
        status: 200,
        headers: vec![],
        delay: Duration::from_millis(1000),
    });
    let sub = subscribe(&app, &acme, json!({"systemName": "erp", "url": hook(&r)}));
    let path = format!("/api/v1/subscriptions/{}/test", sub["id"].as_str().unwrap());
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let a = app.partner_json(&acme, "POST", &path, &json!({}));
                    (a.status, a.json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let made: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| &v["data"])
        .collect();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, v)| &v["error"]["code"])
        .collect();
    assert_eq!((made.len(), refused.len()), (4, 2), "{answers:?}");
    assert!(made.iter().all(|d| d["delivered"] == true), "{made:?}");
    assert!(refused.iter().all(|c| *c == "rate_limited"), "{refused:?}");
    let got = r.wait_for(4, 10);
    assert_eq!(got.len(), 4);
    let most = most_at_once(&got, Duration::from_millis(800));
    assert!(most <= 2, "{most} test calls reached the receiver at once");
    // Counted with the engine's other calls.
    let metrics = app.call("GET", "/metrics", &[], None);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l == r#"waybill_deliveries_total{kind="test",outcome="delivered"} 4"#),
        "{text}"
    );
}
