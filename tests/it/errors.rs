//! Every error class of the contract answers with the JSON envelope and changes nothing.

use std::io::Cursor;

use serde_json::json;

use crate::{acme_to_globex, spawn_app, spawn_app_with, Resp};

#[test]
fn every_error_class_answers_with_the_envelope() {
    let (app, acme, globex) = acme_to_globex();
    let inbound = "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order";

    // 400: malformed JSON, and wrong types.
    app.call(
        "POST",
        "/admin/api/partners",
        &[
            ("Authorization", &format!("Bearer {}", app.token)),
            ("Content-Type", "application/json"),
        ],
        Some(b"{"),
    )
    .error(400, "bad_request");
    app.admin("POST", "/admin/api/partners", Some(json!({"code": 5})))
        .error(400, "bad_request");
    // 401: no key, a wrong key, a wrong admin token.
    app.call("POST", inbound, &[], Some(b"x"))
        .error(401, "unauthorized");
    app.call(
        "POST",
        inbound,
        &[("X-Api-Key", "wb_live_nope")],
        Some(b"x"),
    )
    .error(401, "unauthorized");
    app.call(
        "GET",
        "/admin/api/partners",
        &[("Authorization", "Bearer wba_wrong")],
        None,
    )
    .error(401, "unauthorized");
    app.call("GET", "/admin/api/partners", &[("X-Api-Key", &acme)], None)
        .error(401, "unauthorized");
    // 403: a valid key for someone else.
    app.call("POST", inbound, &[("X-Api-Key", &globex)], Some(b"x"))
        .error(403, "forbidden");
    // 404: unknown endpoint, unknown id, malformed id.
    app.call("GET", "/api/v1/nothing-here", &[], None)
        .error(404, "not_found");
    app.partner_get(
        &globex,
        &format!("/api/v1/transmissions/{}", uuid::Uuid::now_v7()),
    )
    .error(404, "not_found");
    app.partner_get(&globex, "/api/v1/transmissions/not-a-uuid")
        .error(404, "not_found");
    // 405: known path, wrong method.
    app.call("DELETE", "/api/v1/inbound", &[], None)
        .error(405, "method_not_allowed");
    app.call("PUT", "/api/v1/transmissions", &[], None)
        .error(405, "method_not_allowed");
    // 409: a partner that exists.
    app.admin(
        "POST",
        "/admin/api/partners",
        Some(json!({"code": "ACME", "name": "again"})),
    )
    .error(409, "conflict");
    // 415: a JSON endpoint given XML.
    app.call(
        "POST",
        "/api/v1/requests",
        &[("X-Api-Key", &acme), ("Content-Type", "application/xml")],
        Some(b"<a/>"),
    )
    .error(415, "unsupported_media_type");
    // 422: well-formed but invalid, naming the field.
    let e = app
        .call(
            "POST",
            "/api/v1/inbound?sender=ACME&receiver=GLOBEX",
            &[("X-Api-Key", &acme)],
            Some(b"x"),
        )
        .error(422, "validation_failed");
    assert_eq!(e["field"], "doctype");
    let e = app
        .admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": "lower case"})),
        )
        .error(422, "validation_failed");
    assert_eq!(e["field"], "code");

    assert!(app.poll(&globex, "").is_empty(), "no error stored anything");
}

fn chunked_post(app: &crate::TestApp, path: &str, key: &str, body: Vec<u8>) -> Resp {
    let agent = crate::agent();
    let mut reader = Cursor::new(body);
    let mut res = agent
        .post(&app.url(path))
        .header("X-Api-Key", key)
        .send(ureq::SendBody::from_reader(&mut reader))
        .expect("send");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.body_mut().read_to_vec().expect("body");
    Resp {
        status,
        headers,
        body,
    }
}

#[test]
fn bodies_over_the_limit_get_413_with_or_without_a_length() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = 1024);
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    let path = "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order";

    app.call("POST", path, &[("X-Api-Key", &acme)], Some(&[b'x'; 1024]))
        .data(202);
    app.call("POST", path, &[("X-Api-Key", &acme)], Some(&[b'x'; 1025]))
        .error(413, "payload_too_large");
    chunked_post(&app, path, &acme, vec![b'y'; 4096]).error(413, "payload_too_large");
    chunked_post(&app, path, &acme, vec![b'z'; 100]).data(202);

    let items = app.poll(&globex, "limit=10");
    assert_eq!(
        items.len(),
        2,
        "only the bodies within the limit were stored"
    );
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(|c| c.limits.partner_rps = 1);
    let key = app.partner("ACME");
    let statuses: Vec<u16> = (0..5)
        .map(|_| app.partner_get(&key, "/api/v1/transmissions").status)
        .collect();
    assert_eq!(
        &statuses[..2],
        &[200, 200],
        "a burst of twice the rate is allowed"
    );
    let r = app.partner_get(&key, "/api/v1/transmissions");
    r.error(429, "rate_limited");
    assert_eq!(r.headers["retry-after"], "1");
}

#[test]
fn intake_answers_503_when_the_disk_is_low_and_stores_nothing() {
    let app = spawn_app_with(|c| c.store.min_free_mb = u64::MAX / (1024 * 1024));
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    // The disk watcher runs at start; wait for its first verdict.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}");
        if r.status != 202 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "intake never paused");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    r.error(503, "insufficient_storage");
    assert!(r.headers.contains_key("retry-after"));
    let before = app.poll(&globex, "limit=100").len();
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .error(503, "insufficient_storage");
    assert_eq!(app.poll(&globex, "limit=100").len(), before);
}

#[test]
fn health_and_readiness() {
    let app = spawn_app();
    assert_eq!(
        app.call("GET", "/healthz", &[], None).data(200)["status"],
        "up"
    );
    assert_eq!(
        app.call("GET", "/readyz", &[], None).data(200)["status"],
        "ready"
    );
}
