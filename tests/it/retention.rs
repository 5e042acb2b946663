//! Retention: the pruner removes finished work past its retention with everything that
//! indexes it, keeps whatever is still pending, honours a partner's own retention, and
//! deletes payload files once nothing points into them, or once the few payloads still
//! live in one are copied forward. Time is moved with the clock the pruner reads
//! (`TestApp::clock`), the only thing the tests change.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::receiver::{Answer, Receiver};
use crate::{agent, spawn_app_in, spawn_app_with, TestApp};

const DAY_MS: i64 = 86_400_000;

/// Waits (up to 60 s) until `done` holds; `what` names it when it never does.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn message_status(app: &TestApp, key: &str, id: &str) -> u16 {
    app.partner_get(key, &format!("/api/v1/messages/{id}"))
        .status
}

fn create(app: &TestApp, key: &str, doctype: &str, body: &[u8], extra: &[(&str, &str)]) -> Value {
    let mut headers = vec![("X-Api-Key", key), ("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    app.call(
        "POST",
        &format!("/api/v1/documents/{doctype}"),
        &headers,
        Some(body),
    )
    .data(201)
}

fn attempts(app: &TestApp, delivery: &str) -> usize {
    app.admin(
        "GET",
        &format!("/admin/api/deliveries/{delivery}/attempts"),
        None,
    )
    .data(200)
    .as_array()
    .expect("attempt list")
    .len()
}

fn stats(app: &TestApp) -> Value {
    app.admin("GET", "/admin/api/stats", None).data(200)
}

/// Acknowledges every transmission a poll of `key` hands out.
fn ack_all(app: &TestApp, key: &str) -> usize {
    let items = app.poll(key, "limit=100");
    for item in &items {
        app.ack(key, item["uuid"].as_str().unwrap(), "processed")
            .data(200);
    }
    items.len()
}

#[test]
fn old_finished_work_goes_with_its_rows_and_pending_work_stays() {
    let ok = Receiver::start(vec![]);
    let down = Receiver::always(Answer::status(503));
    let app = spawn_app_with(|c| c.delivery.retry_schedule = vec![3600]);
    let acme = app.partner("ACME");
    let initech = app.partner("INITECH");
    for (code, url) in [("GLOBEX", &ok.url), ("HOOLI", &down.url)] {
        app.admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": code, "name": code, "pushUrl": format!("{url}/in")})),
        )
        .data(201);
    }
    app.route("ACME", "GLOBEX", "order");
    app.route("ACME", "INITECH", "invoice");
    app.route("ACME", "HOOLI", "alert");

    // Finished: a pushed order, an acknowledged invoice, an order stored under an
    // idempotency key, and a background job.
    let pushed = create(&app, &acme, "order", br#"{"n":1}"#, &[]);
    let pushed_id = pushed["id"].as_str().unwrap().to_owned();
    let pushed_uuid = pushed["transmissions"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let keyed = create(
        &app,
        &acme,
        "order",
        br#"{"n":2}"#,
        &[("Idempotency-Key", "k-1")],
    );
    let keyed_id = keyed["id"].as_str().unwrap().to_owned();
    let acked = create(&app, &acme, "invoice", br#"{"n":3}"#, &[]);
    let acked_id = acked["id"].as_str().unwrap().to_owned();
    assert_eq!(ack_all(&app, &initech), 1);
    let job = app
        .call(
            "GET",
            &format!("/api/v1/messages/{pushed_id}"),
            &[("X-Api-Key", &acme), ("Waybill-Background", "none")],
            None,
        )
        .data(202);
    let job_path = format!("/api/v1/background/{}", job["id"].as_str().unwrap());
    wait_until("the job ends", || {
        app.partner_get(&acme, &job_path).data(200)["state"] == "completed"
    });
    for id in [&pushed_id, &keyed_id] {
        let mut seen = Value::Null;
        wait_until("the push is done", || {
            seen = app
                .partner_get(&acme, &format!("/api/v1/messages/{id}"))
                .data(200);
            seen["messageStatus"] == "processed"
        });
    }
    assert_eq!(attempts(&app, &pushed_uuid), 1);
    let tracking = pushed["trackingLocation"].as_str().unwrap().to_owned();
    app.partner_get(&acme, &tracking).data(200);

    // Pending: an invoice never acknowledged, an alert whose push waits for its retry.
    let waiting = create(&app, &acme, "invoice", br#"{"n":4}"#, &[]);
    let waiting_id = waiting["id"].as_str().unwrap().to_owned();
    let retrying = create(&app, &acme, "alert", br#"{"n":5}"#, &[]);
    let retrying_id = retrying["id"].as_str().unwrap().to_owned();
    let retrying_uuid = retrying["transmissions"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until("the failed push is logged", || {
        attempts(&app, &retrying_uuid) == 1
    });
    let before = stats(&app);
    assert_eq!(before["messages"]["live"]["total"], 5, "{before}");

    // The key still holds its answer: another body under it is refused.
    app.call(
        "POST",
        "/api/v1/documents/order",
        &[
            ("X-Api-Key", &acme),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "k-1"),
        ],
        Some(br#"{"n":6}"#),
    )
    .error(409, "idempotency_key_reused");

    app.clock.advance(31 * DAY_MS);
    wait_until("the finished messages are pruned", || {
        [&pushed_id, &keyed_id, &acked_id]
            .iter()
            .all(|id| message_status(&app, &acme, id) == 404)
    });
    wait_until("the job is pruned", || {
        app.partner_get(&acme, &job_path).status == 404
    });
    // Their request, tracking entries and attempt log went with them.
    app.partner_get(&acme, &tracking).error(404, "not_found");
    assert_eq!(attempts(&app, &pushed_uuid), 0);

    // The pending ones stay, whole, with their queue entries and attempt logs.
    assert_eq!(message_status(&app, &acme, &waiting_id), 200);
    assert_eq!(message_status(&app, &acme, &retrying_id), 200);
    assert_eq!(attempts(&app, &retrying_uuid), 1);
    let items = app.poll(&initech, "limit=10");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["messageId"], waiting_id.as_str());
    assert_eq!(items[0]["payload"], json!({"n": 4}));

    // The counts follow: pruned messages leave them.
    let after = stats(&app);
    assert_eq!(after["messages"]["live"]["total"], 2, "{after}");
    assert_eq!(after["messages"]["live"]["complete"], 0, "{after}");
    // The invoice just polled, and the alert between its push attempts.
    assert_eq!(after["messages"]["live"]["processed"], 1, "{after}");
    assert_eq!(after["messages"]["live"]["processing"], 1, "{after}");

    // The key's answer is gone with its retention: the key is free again.
    create(
        &app,
        &acme,
        "order",
        br#"{"n":6}"#,
        &[("Idempotency-Key", "k-1")],
    );

    let metrics = String::from_utf8(app.call("GET", "/metrics", &[], None).body).unwrap();
    assert!(
        metrics.contains("waybill_pruned_rows_total{kind=\"message\"} 3"),
        "{metrics}"
    );
}

#[test]
fn a_partner_keeps_its_messages_longer_and_dead_payload_files_are_deleted() {
    let app = spawn_app_with(|_| {});
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    let initech = app.partner("INITECH");
    app.route("ACME", "GLOBEX", "order");
    app.route("ACME", "INITECH", "invoice");
    let patch = |body: Value| app.admin("PATCH", "/admin/api/partners/INITECH", Some(body));
    for bad in [json!(0), json!(3651), json!("90"), json!(1.5)] {
        patch(json!({ "retentionDays": bad })).error(400, "bad_request");
    }
    assert_eq!(
        patch(json!({"retentionDays": 90})).data(200)["retentionDays"],
        90
    );
    let order = create(&app, &acme, "order", br#"{"o":1}"#, &[]);
    let invoice = create(&app, &acme, "invoice", br#"{"i":1}"#, &[]);
    assert_eq!(ack_all(&app, &globex), 1);
    assert_eq!(ack_all(&app, &initech), 1);
    let dir = app.stop();
    let first_segment = dir.path().join("payloads/00000001.seg");
    assert!(first_segment.exists());

    // A new process writes its payloads to a new segment.
    let app = spawn_app_in(dir, "http", agent(), |_| {});
    let later = create(&app, &acme, "order", br#"{"o":2}"#, &[]);
    assert_eq!(ack_all(&app, &globex), 1);
    let detail = app
        .admin("GET", "/admin/api/partners/INITECH", None)
        .data(200);
    assert_eq!(detail["retentionDays"], 90);

    app.clock.advance(31 * DAY_MS);
    let (order_id, invoice_id, later_id) = (
        order["id"].as_str().unwrap(),
        invoice["id"].as_str().unwrap(),
        later["id"].as_str().unwrap(),
    );
    wait_until("the orders are pruned", || {
        message_status(&app, &acme, order_id) == 404 && message_status(&app, &acme, later_id) == 404
    });
    // INITECH's invoice is kept for its 90 days, and so is the file holding its payload.
    assert_eq!(message_status(&app, &acme, invoice_id), 200);
    let raw = app.admin(
        "GET",
        &format!("/admin/api/messages/{invoice_id}/payload"),
        None,
    );
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, br#"{"i":1}"#);
    assert!(app.dir.path().join("payloads/00000001.seg").exists());

    app.clock.advance(60 * DAY_MS);
    wait_until("the invoice is pruned", || {
        message_status(&app, &acme, invoice_id) == 404
    });
    wait_until("the dead payload file is deleted", || {
        !app.dir.path().join("payloads/00000001.seg").exists()
    });
    // The file being written to stays, and so does what arrives now.
    assert!(app.dir.path().join("payloads/00000002.seg").exists());
    let fresh = create(&app, &acme, "order", br#"{"o":3}"#, &[]);
    let items = app.poll(&globex, "limit=10");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["messageId"], fresh["id"]);
    assert_eq!(items[0]["payload"], json!({"o": 3}));
    let s = stats(&app);
    assert_eq!(s["messages"]["live"]["total"], 1, "{s}");
    assert_eq!(s["messages"]["live"]["processed"], 1, "{s}");
}

/// The bytes of every payload file under `dir`.
fn payload_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("payloads"))
        .expect("payloads dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

/// Polls `key`'s pending transmissions (no lease, so they stay pending) and reads each
/// raw payload as the receiver: (message id, bytes), in message order.
fn served(app: &TestApp, key: &str) -> Vec<(String, Vec<u8>)> {
    let mut items: Vec<(String, Vec<u8>)> = app
        .poll(key, "limit=100")
        .iter()
        .map(|item| {
            let raw = app.partner_get(key, item["payloadLocation"].as_str().unwrap());
            assert_eq!(raw.status, 200);
            (item["messageId"].as_str().unwrap().to_owned(), raw.body)
        })
        .collect();
    items.sort();
    items
}

#[test]
fn a_payload_file_kept_by_a_few_pending_messages_is_compacted_and_deleted() {
    let app = spawn_app_with(|_| {});
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    let initech = app.partner("INITECH");
    app.route("ACME", "GLOBEX", "order");
    app.route("ACME", "INITECH", "invoice");
    let pad = "x".repeat(2000);
    let mut orders = Vec::new();
    let mut pending = Vec::new();
    for n in 0..150 {
        let body = format!(r#"{{"o":{n},"pad":"{pad}"}}"#);
        let m = create(&app, &acme, "order", body.as_bytes(), &[]);
        orders.push(m["id"].as_str().unwrap().to_owned());
        if n % 50 == 25 {
            // A few invoices among them, which INITECH never acknowledges.
            let body = format!(r#"{{"i":{n},"pad":"{pad}"}}"#);
            let m = create(&app, &acme, "invoice", body.as_bytes(), &[]);
            pending.push((m["id"].as_str().unwrap().to_owned(), body.into_bytes()));
        }
    }
    pending.sort();
    while ack_all(&app, &globex) > 0 {}
    assert_eq!(served(&app, &initech), pending);
    let dir = app.stop();
    let old = dir.path().join("payloads/00000001.seg");
    let old_size = std::fs::metadata(&old).unwrap().len();
    let before = payload_bytes(dir.path());

    // Restarted, the server writes to a new file; the old one is settled.
    let app = spawn_app_in(dir, "http", agent(), |_| {});
    app.clock.advance(31 * DAY_MS);
    wait_until("the orders are pruned", || {
        orders
            .iter()
            .all(|id| message_status(&app, &acme, id) == 404)
    });
    // One pass copies the invoices forward, a later one deletes the file.
    wait_until("the old payload file is deleted", || {
        app.clock.advance(60_000);
        !old.exists()
    });
    let after = payload_bytes(app.dir.path());
    assert!(
        after * 20 < before,
        "payload files: {before} bytes before, {after} after (old file {old_size})"
    );
    println!("payload files: {before} bytes before, {after} after compaction");
    assert_eq!(served(&app, &initech), pending, "served byte for byte");
    let metrics = String::from_utf8(app.call("GET", "/metrics", &[], None).body).unwrap();
    assert!(
        metrics.contains("waybill_compacted_segments_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("waybill_reclaimed_bytes_total {old_size}")),
        "{metrics}"
    );

    // And after a restart, from the file they were copied to.
    let dir = app.stop();
    let app = spawn_app_in(dir, "http", agent(), |_| {});
    assert_eq!(served(&app, &initech), pending);
    assert!(!app.dir.path().join("payloads/00000001.seg").exists());
}

/// The delivery id in a call's `webhook-id` (`job_…` or `sub_…`, the id's 32 hex digits).
fn delivery_of(call: &crate::receiver::Received) -> String {
    let id = call.header("webhook-id").expect("webhook-id");
    let hex = id.split_once('_').map_or(id, |(_, h)| h);
    uuid::Uuid::parse_str(hex).expect("a uuid").to_string()
}

/// Subscribes `key`'s partner to its new transmissions, called at `hooks`.
fn subscribe_to_new_work(app: &TestApp, key: &str, hooks: &Receiver) {
    app.partner_json(
        key,
        "POST",
        "/api/v1/subscriptions",
        &json!({"systemName": "wms", "url": format!("{}/cb?ids={{ids}}", hooks.url),
                "events": ["transmission.created"]}),
    )
    .data(201);
}

#[test]
fn the_attempt_logs_of_job_webhooks_and_subscription_calls_go_after_retention() {
    let app = spawn_app_with(|c| c.subscriptions.batch_window_ms = 200);
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let hooks = Receiver::start(vec![]);
    subscribe_to_new_work(&app, &globex, &hooks);
    // A job whose completion webhook goes to the same receiver, and the message it stores,
    // whose new transmission makes the subscription call.
    app.call(
        "POST",
        "/api/v1/documents/order",
        &[
            ("X-Api-Key", &acme),
            ("Content-Type", "application/json"),
            ("Waybill-Background", &hooks.url),
        ],
        Some(br#"{"n":1}"#),
    )
    .data(202);
    let calls = hooks.wait_for(2, 30);
    let deliveries: Vec<String> = calls.iter().map(delivery_of).collect();
    assert!(
        calls.iter().any(|c| c.target.starts_with("/cb?ids="))
            && calls.iter().any(|c| !c.target.starts_with("/cb")),
        "one subscription call and one job webhook: {:?}",
        calls.iter().map(|c| &c.target).collect::<Vec<_>>()
    );
    for d in &deliveries {
        wait_until("the call is logged", || attempts(&app, d) == 1);
    }

    // Still there within the retention window.
    app.clock.advance(29 * DAY_MS);
    std::thread::sleep(Duration::from_millis(500));
    for d in &deliveries {
        assert_eq!(attempts(&app, d), 1, "{d} kept inside the window");
    }
    app.clock.advance(2 * DAY_MS);
    for d in &deliveries {
        wait_until("the call's log is pruned", || attempts(&app, d) == 0);
    }
}

#[test]
fn a_partners_finished_jobs_follow_its_own_retention() {
    // GLOBEX keeps its finished work 7 days, INITECH 90, ACME the setting's 30. Each has a
    // finished background job; each job goes when its owner's retention is over.
    let app = spawn_app_with(|_| {});
    let keys: Vec<(&str, String)> = ["ACME", "GLOBEX", "INITECH"]
        .into_iter()
        .map(|p| (p, app.partner(p)))
        .collect();
    for (partner, days) in [("GLOBEX", 7), ("INITECH", 90)] {
        app.admin(
            "PATCH",
            &format!("/admin/api/partners/{partner}"),
            Some(json!({ "retentionDays": days })),
        )
        .data(200);
    }
    let jobs: Vec<(&str, &str, String)> = keys
        .iter()
        .map(|(partner, key)| {
            let job = app
                .call(
                    "GET",
                    "/api/v1/transmissions",
                    &[("X-Api-Key", key), ("Waybill-Background", "none")],
                    None,
                )
                .data(202);
            let path = format!("/api/v1/background/{}", job["id"].as_str().unwrap());
            wait_until("the job ends", || {
                app.partner_get(key, &path).data(200)["state"] == "completed"
            });
            (*partner, key.as_str(), path)
        })
        .collect();
    let kept = |partner: &str| {
        let (_, key, path) = jobs.iter().find(|(p, _, _)| *p == partner).unwrap();
        app.partner_get(key, path).status == 200
    };

    app.clock.advance(8 * DAY_MS);
    wait_until("GLOBEX's job is pruned after its 7 days", || {
        !kept("GLOBEX")
    });
    assert!(kept("ACME") && kept("INITECH"));

    app.clock.advance(23 * DAY_MS);
    wait_until("ACME's job is pruned after 30 days", || !kept("ACME"));
    assert!(kept("INITECH"), "INITECH keeps its job for 90 days");

    app.clock.advance(60 * DAY_MS);
    wait_until("INITECH's job is pruned after its 90 days", || {
        !kept("INITECH")
    });
}

#[test]
fn a_calls_attempt_made_after_its_earlier_rows_were_pruned_goes_too() {
    // A subscription call fails, and is retried a few seconds later. In between, the clock
    // moves 31 days on and the pruner removes the call's first row and a later call's row.
    // The retry's row, written after that pass, has the first call's (older) delivery id:
    // a later pass must still find it.
    let app = spawn_app_with(|c| {
        c.subscriptions.batch_window_ms = 100;
        c.delivery.retry_schedule = vec![4];
    });
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let hooks = Receiver::start(vec![Answer::status(500)]);
    subscribe_to_new_work(&app, &globex, &hooks);
    create(&app, &acme, "order", br#"{"n":1}"#, &[]);
    let failed = delivery_of(&hooks.wait_for(1, 30)[0]);
    // A later delivery: a job's completion webhook, answered at once.
    app.call(
        "GET",
        "/api/v1/transmissions",
        &[("X-Api-Key", &acme), ("Waybill-Background", &hooks.url)],
        None,
    )
    .data(202);
    let later = delivery_of(&hooks.wait_for(2, 30)[1]);
    assert!(failed < later);
    wait_until("the later call is logged", || attempts(&app, &later) == 1);

    app.clock.advance(31 * DAY_MS);
    wait_until("both logs are pruned", || {
        attempts(&app, &failed) == 0 && attempts(&app, &later) == 0
    });
    // The retry, after that pass.
    let retried = hooks.wait_for(3, 30);
    assert_eq!(delivery_of(&retried[2]), failed);
    wait_until("the retry is logged", || attempts(&app, &failed) == 1);

    app.clock.advance(DAY_MS);
    wait_until("the retry's row is pruned too", || {
        attempts(&app, &failed) == 0
    });
}
