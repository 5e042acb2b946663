//! The Background API and Idempotency-Key, over real HTTP against the real server.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::receiver::{Answer, Receiver};
use crate::{spawn_app, TestApp};

/// ACME → GLOBEX for every doctype; returns (ACME's key, GLOBEX's key).
fn setup(app: &TestApp) -> (String, String) {
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    (acme, globex)
}

/// Submits `method path` in the background with `extra` headers; returns the 202's data.
fn submit(
    app: &TestApp,
    key: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Value {
    let mut headers = vec![("X-Api-Key", key), ("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    let r = app.call(method, path, &headers, body);
    let data = r.data(202);
    let id = data["id"].as_str().unwrap();
    assert_eq!(data["state"], "queued");
    assert_eq!(
        r.headers.get("location").unwrap(),
        &format!("/api/v1/background/{id}")
    );
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(data["stateLocation"], format!("/api/v1/background/{id}"));
    assert_eq!(
        data["contentLocation"],
        format!("/api/v1/background/{id}/content")
    );
    data
}

/// Waits until the job is final; returns its state view.
fn wait_done(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = app
            .partner_get(key, &format!("/api/v1/background/{id}"))
            .data(200);
        if ["completed", "failed", "cancelled"].contains(&v["state"].as_str().unwrap()) {
            return v;
        }
        assert!(Instant::now() < deadline, "job never finished: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const NONE: (&str, &str) = ("Waybill-Background", "none");

#[test]
fn a_background_creation_stores_the_201_and_the_transmission_exists() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    let job = submit(
        &app,
        &acme,
        "POST",
        "/api/v1/documents/order",
        &[NONE],
        Some(br#"{"n":1}"#),
    );
    let id = job["id"].as_str().unwrap();
    let done = wait_done(&app, &acme, id);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["responseStatus"], 201);
    assert_eq!(done["method"], "POST");
    assert!(done["finishedAt"].is_string());
    let content = app.partner_get(&acme, &format!("/api/v1/background/{id}/content"));
    let created = content.data(201);
    assert!(content
        .headers
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("/api/v1/documents/order/"));
    let uuid = created["transmissions"][0]["uuid"].as_str().unwrap();
    let t = app
        .partner_get(&globex, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert_eq!(t["sender"], "ACME");
}

#[test]
fn a_background_poll_and_ack_run_as_the_receiver() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    app.send_doc(&acme, "ACME", None, "order", br#"{"a":1}"#)
        .data(202);
    let poll = submit(
        &app,
        &globex,
        "GET",
        "/api/v1/transmissions?limit=5",
        &[("Prefer", "respond-async")],
        None,
    );
    let id = poll["id"].as_str().unwrap();
    assert_eq!(wait_done(&app, &globex, id)["responseStatus"], 200);
    let items = app
        .partner_get(&globex, &format!("/api/v1/background/{id}/content"))
        .data(200);
    let uuid = items[0]["uuid"].as_str().unwrap().to_owned();

    let ack = submit(
        &app,
        &globex,
        "PUT",
        &format!("/api/v1/transmissions/status/{uuid}"),
        &[NONE],
        Some(br#"{"status":"processed"}"#),
    );
    let id = ack["id"].as_str().unwrap();
    assert_eq!(wait_done(&app, &globex, id)["responseStatus"], 200);
    let t = app
        .partner_get(&globex, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert_eq!(t["status"], "complete");
}

#[test]
fn prefer_respond_async_is_applied_and_said_so() {
    let app = spawn_app();
    let (acme, _) = setup(&app);
    let r = app.call(
        "GET",
        "/api/v1/transmissions",
        &[("X-Api-Key", &acme), ("Prefer", "respond-async, wait=5")],
        None,
    );
    r.data(202);
    assert_eq!(
        r.headers.get("preference-applied").unwrap(),
        "respond-async"
    );
}

#[test]
fn a_failing_call_is_completed_and_its_4xx_comes_back() {
    let app = spawn_app();
    let (acme, _) = setup(&app);
    // No route lets ACME send to NOBODY: a 403 no_route, as it would be in the foreground.
    let job = submit(
        &app,
        &acme,
        "POST",
        "/api/v1/documents/order?receiver=NOBODY",
        &[NONE],
        Some(b"{}"),
    );
    let id = job["id"].as_str().unwrap();
    let done = wait_done(&app, &acme, id);
    assert_eq!(done["state"], "completed");
    assert_eq!(done["responseStatus"], 403);
    app.partner_get(&acme, &format!("/api/v1/background/{id}/content"))
        .error(403, "no_route");
    // A bad body is a 400 in the job too.
    let job = submit(
        &app,
        &acme,
        "POST",
        "/api/v1/documents/order",
        &[NONE],
        Some(b"{not json"),
    );
    let id = job["id"].as_str().unwrap();
    assert_eq!(wait_done(&app, &acme, id)["responseStatus"], 400);
}

#[test]
fn the_webhook_is_signed_and_none_sends_nothing() {
    let receiver = Receiver::always(Answer::status(200));
    let app = spawn_app();
    let created = app
        .admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": "ACME", "name": "Acme"})),
        )
        .data(201);
    let secret = created["signingSecret"].as_str().unwrap().to_owned();
    let acme = app.key("ACME", "live");
    app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let job = submit(
        &app,
        &acme,
        "POST",
        "/api/v1/documents/order",
        &[("Waybill-Background", &receiver.url)],
        Some(b"{}"),
    );
    let id = job["id"].as_str().unwrap();
    let got = receiver.wait_for(1, 30);
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["state"], "completed");
    assert_eq!(body["responseStatus"], 201);
    assert_eq!(body["stateLocation"], format!("/api/v1/background/{id}"));
    assert_eq!(
        body["contentLocation"],
        format!("/api/v1/background/{id}/content")
    );
    // Standard Webhooks, signed with the partner's secret.
    let msg_id = got[0].header("webhook-id").unwrap();
    let ts: i64 = got[0].header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(msg_id.starts_with("job_"), "{msg_id}");
    let expected = waybill::outbound::sign::signature(&secret, msg_id, ts, &got[0].body).unwrap();
    assert_eq!(got[0].header("webhook-signature"), Some(expected.as_str()));

    // `none` and Prefer send nothing.
    for header in [NONE, ("Prefer", "respond-async")] {
        let job = submit(
            &app,
            &acme,
            "POST",
            "/api/v1/documents/order",
            &[header],
            Some(b"{}"),
        );
        wait_done(&app, &acme, job["id"].as_str().unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received().len(), 1);
}

#[test]
fn bad_credentials_and_bad_webhooks_are_refused_at_once() {
    let app = spawn_app();
    let (acme, _) = setup(&app);
    app.call(
        "POST",
        "/api/v1/documents/order",
        &[("X-Api-Key", "wb_live_nope"), NONE],
        Some(b"{}"),
    )
    .error(401, "unauthorized");
    for url in [
        "ftp://example.com/x",
        "not a url",
        "http://169.254.169.254/latest",
        "http://10.1.2.3/hook",
    ] {
        app.call(
            "POST",
            "/api/v1/documents/order",
            &[("X-Api-Key", &acme), ("Waybill-Background", url)],
            Some(b"{}"),
        )
        .error(400, "invalid_webhook");
    }
    let jobs = app.admin("GET", "/admin/api/jobs", None).data(200);
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        0,
        "nothing was queued"
    );
}

#[test]
fn jobs_are_private_to_their_partner_and_environment() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    let acme_test = app.key("ACME", "test");
    let job = submit(&app, &acme, "GET", "/api/v1/transmissions", &[NONE], None);
    let id = job["id"].as_str().unwrap();
    for key in [&globex, &acme_test] {
        app.partner_get(key, &format!("/api/v1/background/{id}"))
            .error(404, "not_found");
        app.partner_get(key, &format!("/api/v1/background/{id}/content"))
            .error(404, "not_found");
        app.call(
            "DELETE",
            &format!("/api/v1/background/{id}"),
            &[("X-Api-Key", key)],
            None,
        )
        .error(404, "not_found");
    }
}

#[test]
fn a_job_submitted_while_a_slot_is_free_starts_in_its_submission_write() {
    let app = crate::spawn_app_with(|c| c.background.concurrency = 1);
    let (acme, globex) = setup(&app);
    let state = |key: &str, id: &Value| {
        app.partner_get(key, &format!("/api/v1/background/{}", id.as_str().unwrap()))
            .data(200)
    };
    // The only slot is free: the 202 comes after the job was written as running.
    let hold = submit(
        &app,
        &globex,
        "GET",
        "/api/v1/transmissions?wait=2",
        &[NONE],
        None,
    );
    let first = state(&globex, &hold["id"]);
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(first["runs"], 1);
    assert_eq!(first["startedAt"], first["createdAt"]);
    // The slot is taken: the next job waits in the queue, then runs once it is free.
    let next = submit(
        &app,
        &acme,
        "POST",
        "/api/v1/documents/order",
        &[NONE],
        Some(b"{}"),
    );
    assert_eq!(state(&acme, &next["id"])["state"], "queued");
    let done = wait_done(&app, &acme, next["id"].as_str().unwrap());
    assert_eq!(done["state"], "completed");
    assert_eq!(done["runs"], 1);
    let held = wait_done(&app, &globex, hold["id"].as_str().unwrap());
    assert_eq!(
        (held["state"].as_str(), held["runs"].as_i64()),
        (Some("completed"), Some(1))
    );
}

#[test]
fn a_queued_job_can_be_cancelled_and_a_finished_one_cannot() {
    let app = crate::spawn_app_with(|c| c.background.concurrency = 1);
    let (acme, globex) = setup(&app);
    // A long poll holds the only slot, so the next job waits in the queue.
    let hold = submit(
        &app,
        &globex,
        "GET",
        "/api/v1/transmissions?wait=3",
        &[NONE],
        None,
    );
    let queued = submit(
        &app,
        &acme,
        "POST",
        "/api/v1/documents/order",
        &[NONE],
        Some(b"{}"),
    );
    let id = queued["id"].as_str().unwrap();
    let r = app.call(
        "DELETE",
        &format!("/api/v1/background/{id}"),
        &[("X-Api-Key", &acme)],
        None,
    );
    assert_eq!(r.data(200)["state"], "cancelled");
    app.partner_get(&acme, &format!("/api/v1/background/{id}/content"))
        .error(409, "job_cancelled");
    let done = wait_done(&app, &globex, hold["id"].as_str().unwrap());
    assert_eq!(done["state"], "completed");
    app.call(
        "DELETE",
        &format!("/api/v1/background/{}", hold["id"].as_str().unwrap()),
        &[("X-Api-Key", &globex)],
        None,
    )
    .error(409, "not_cancellable");
    // The cancelled job never ran: no document was created.
    assert_eq!(app.poll(&globex, "").len(), 0);
}

fn keyed(app: &TestApp, key: &str, idem: &str, body: &[u8]) -> crate::Resp {
    app.call(
        "POST",
        "/api/v1/documents/order",
        &[
            ("X-Api-Key", key),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", idem),
        ],
        Some(body),
    )
}

#[test]
fn an_idempotency_key_replays_refuses_mismatches_and_long_keys() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    let first = keyed(&app, &acme, "order-1", br#"{"n":1}"#);
    let created = first.data(201);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = keyed(&app, &acme, "order-1", br#"{"n":1}"#);
    assert_eq!(again.data(201)["id"], created["id"]);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.headers.get("location"), first.headers.get("location"));
    keyed(&app, &acme, "order-1", br#"{"n":2}"#).error(409, "idempotency_key_reused");
    keyed(&app, &acme, &"k".repeat(256), b"{}").error(400, "invalid_idempotency_key");
    keyed(&app, &acme, &"k".repeat(255), b"{}").data(201);
    // Keys are per partner: GLOBEX's "order-1" is its own.
    app.route("GLOBEX", "ACME", "*");
    keyed(&app, &globex, "order-1", br#"{"n":1}"#).data(201);
    // ACME's two distinct calls reached GLOBEX; GLOBEX's went to ACME.
    assert_eq!(app.poll(&globex, "limit=100").len(), 2);
}

#[test]
fn an_answer_stored_before_a_restart_is_replayed_after_it() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    let first = keyed(&app, &acme, "before-restart", br#"{"n":1}"#).data(201);
    let dir = app.stop();
    let app = crate::spawn_app_in(dir, "http", crate::agent(), |_| {});
    // Once the keys already stored are indexed in memory, a repeat is told apart from
    // a new key without reading the store; it must still be replayed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.call("GET", "/readyz", &[], None).json()["data"]["idempotencyKeysLoaded"] != true {
        assert!(
            Instant::now() < deadline,
            "the stored keys were never loaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = keyed(&app, &acme, "before-restart", br#"{"n":1}"#);
    assert_eq!(again.data(201)["id"], first["id"]);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    keyed(&app, &acme, "before-restart", br#"{"n":2}"#).error(409, "idempotency_key_reused");
    keyed(&app, &acme, "after-restart", br#"{"n":1}"#).data(201);
    assert_eq!(app.poll(&globex, "limit=100").len(), 2);
}

#[test]
fn twenty_concurrent_duplicates_store_one_message() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    let r = keyed(&app, &acme, "dup", br#"{"same":true}"#);
                    (r.status, r.json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| &v["data"]["id"])
        .collect();
    assert!(!ok.is_empty());
    assert!(
        ok.iter().all(|id| *id == ok[0]),
        "every 201 names one document"
    );
    for (status, v) in &results {
        assert!(
            *status == 201 || (*status == 409 && v["error"]["code"] == "idempotency_key_in_use"),
            "{status} {v}"
        );
    }
    assert_eq!(app.poll(&globex, "limit=100").len(), 1);
}

#[test]
fn a_background_submission_with_a_key_makes_one_job() {
    let app = spawn_app();
    let (acme, _) = setup(&app);
    let headers = [
        ("X-Api-Key", acme.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "bg-1"),
        NONE,
    ];
    let a = app.call("POST", "/api/v1/documents/order", &headers, Some(b"{}"));
    let b = app.call("POST", "/api/v1/documents/order", &headers, Some(b"{}"));
    assert_eq!(a.data(202)["id"], b.data(202)["id"]);
    assert_eq!(b.headers.get("idempotent-replayed").unwrap(), "true");
}

#[test]
fn a_revoked_key_makes_its_queued_job_a_stored_401() {
    let app = crate::spawn_app_with(|c| c.background.concurrency = 1);
    let (acme, globex) = setup(&app);
    let key = app
        .admin("POST", "/admin/api/partners/ACME/keys", Some(json!({})))
        .data(201);
    let hold = submit(
        &app,
        &globex,
        "GET",
        "/api/v1/transmissions?wait=2",
        &[NONE],
        None,
    );
    let job = submit(
        &app,
        key["key"].as_str().unwrap(),
        "POST",
        "/api/v1/documents/order",
        &[NONE],
        Some(b"{}"),
    );
    app.admin(
        "DELETE",
        &format!(
            "/admin/api/partners/ACME/keys/{}",
            key["id"].as_str().unwrap()
        ),
        None,
    )
    .data(200);
    wait_done(&app, &globex, hold["id"].as_str().unwrap());
    // The job is ACME's; its state is read with another of ACME's keys.
    let done = wait_done(&app, &acme, job["id"].as_str().unwrap());
    assert_eq!(done["responseStatus"], 401);
}

#[test]
fn the_admin_lists_jobs_with_filters() {
    let app = spawn_app();
    let (acme, globex) = setup(&app);
    let a = submit(&app, &acme, "GET", "/api/v1/transmissions", &[NONE], None);
    let b = submit(&app, &globex, "GET", "/api/v1/transmissions", &[NONE], None);
    wait_done(&app, &acme, a["id"].as_str().unwrap());
    wait_done(&app, &globex, b["id"].as_str().unwrap());
    let all = app.admin("GET", "/admin/api/jobs", None).data(200);
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2);
    let acme_only = app
        .admin("GET", "/admin/api/jobs?partner=ACME&state=completed", None)
        .data(200);
    assert_eq!(acme_only["jobs"][0]["id"], a["id"]);
    assert_eq!(acme_only["jobs"].as_array().unwrap().len(), 1);
    app.admin("GET", "/admin/api/jobs?state=done", None)
        .error(400, "bad_request");
    app.admin(
        "POST",
        &format!("/admin/api/jobs/{}/retry", a["id"].as_str().unwrap()),
        None,
    )
    .error(409, "not_retryable");
}
