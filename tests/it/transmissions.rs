//! Polling, leases, long polls, acknowledgements and partner isolation.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{acme_to_globex, spawn_app};

#[test]
fn round_trip_inbound_poll_ack_then_never_again() {
    let (app, acme, globex) = acme_to_globex();
    let sent = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", br#"{"po":"PO-1"}"#)
        .data(202);
    assert_eq!(sent["status"], "queued");
    let uuid = sent["transmissions"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sent["transmissions"][0]["receiver"], "GLOBEX");

    let items = app.poll(&globex, "");
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["uuid"], uuid.as_str());
    assert_eq!(item["messageId"], sent["id"]);
    assert_eq!(item["sender"], "ACME");
    assert_eq!(item["receiver"], "GLOBEX");
    assert_eq!(item["doctype"], "order");
    assert_eq!(item["version"], "1");
    assert_eq!(item["payload"], json!({"po": "PO-1"}));
    assert_eq!(item["payloadEncoding"], "json");
    assert_eq!(item["deliveryCount"], 1);

    // No lease: an unacknowledged transmission is handed out again, counting deliveries.
    let again = app.poll(&globex, "");
    assert_eq!(again[0]["uuid"], uuid.as_str());
    assert_eq!(again[0]["deliveryCount"], 2);

    let raw = app.partner_get(&globex, &format!("/api/v1/transmissions/{uuid}/payload"));
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, br#"{"po":"PO-1"}"#);
    assert_eq!(raw.headers["content-type"], "application/json");

    let acked = app.ack(&globex, &uuid, "processed").data(200);
    assert_eq!(acked["status"], "complete");
    assert!(
        app.poll(&globex, "").is_empty(),
        "acknowledged transmissions are never handed out again"
    );

    let detail = app
        .partner_get(&acme, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert_eq!(detail["status"], "complete", "the sender sees the outcome");
    let request = app
        .partner_get(&acme, sent["trackingLocation"].as_str().unwrap())
        .data(200);
    assert_eq!(request["messages"][0]["messageStatus"], "complete");
}

#[test]
fn acknowledgement_is_idempotent_and_conflicts_are_refused() {
    let (app, acme, globex) = acme_to_globex();
    let a = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let b = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let ua = a["transmissions"][0]["uuid"].as_str().unwrap();
    let ub = b["transmissions"][0]["uuid"].as_str().unwrap();

    let first = app.ack(&globex, ua, "processed").data(200);
    let second = app.ack(&globex, ua, "processed").data(200);
    assert_eq!(first, second, "the same call again gives the same result");
    app.ack(&globex, ua, "failed").error(409, "conflict");

    let failed = app
        .partner_json(
            &globex,
            "PUT",
            &format!("/api/v1/transmissions/status/{ub}"),
            &json!({"status": "failed", "message": "unknown SKU"}),
        )
        .data(200);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["lastError"], "unknown SKU");
    assert!(
        app.poll(&globex, "").is_empty(),
        "a failed transmission is not handed out again"
    );
    let request = app
        .partner_get(&acme, b["trackingLocation"].as_str().unwrap())
        .data(200);
    assert_eq!(request["messages"][0]["messageStatus"], "failed");
    assert_eq!(
        request["messages"][0]["errors"][0]["errorMessage"],
        "GLOBEX: unknown SKU"
    );

    app.ack(&globex, ua, "done").error(422, "validation_failed");
    app.partner_json(
        &globex,
        "PUT",
        &format!("/api/v1/transmissions/status/{ua}"),
        &json!({"status": 5}),
    )
    .error(400, "bad_request");
}

#[test]
fn leases_hold_items_back_until_they_expire() {
    let (app, acme, globex) = acme_to_globex();
    for i in 0..3 {
        app.send_doc(
            &acme,
            "ACME",
            Some("GLOBEX"),
            "order",
            format!("{{\"n\":{i}}}").as_bytes(),
        )
        .data(202);
    }
    let first = app.poll(&globex, "limit=2&lease=1");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["payload"]["n"], 0, "oldest first");
    assert_eq!(first[1]["payload"]["n"], 1);
    assert!(first[0]["leaseUntil"].is_string());

    let second = app.poll(&globex, "limit=10&lease=1");
    assert_eq!(
        second.len(),
        1,
        "leased items are not handed to another poll"
    );
    assert_eq!(second[0]["payload"]["n"], 2);
    assert!(app.poll(&globex, "lease=1").is_empty());

    std::thread::sleep(Duration::from_millis(2100));
    let after = app.poll(&globex, "limit=10");
    assert_eq!(after.len(), 3, "expired leases return to the queue");
    assert_eq!(after[0]["deliveryCount"], 2);
}

#[test]
fn a_lease_is_stored_with_the_transmission_and_released_by_the_ack() {
    let (app, acme, globex) = acme_to_globex();
    let sent = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    assert_eq!(app.poll(&globex, "lease=600").len(), 1);
    let detail = app
        .partner_get(&globex, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert!(
        detail["leaseUntil"].is_string(),
        "the lease is stored with the transmission"
    );
    app.ack(&globex, uuid, "processed").data(200);
    let detail = app
        .partner_get(&globex, &format!("/api/v1/transmissions/{uuid}"))
        .data(200);
    assert!(detail["leaseUntil"].is_null());
}

#[test]
fn long_polls_by_doctype_wake_for_their_doctype() {
    let (app, acme, globex) = acme_to_globex();
    app.route("ACME", "GLOBEX", "invoice");
    let app = std::sync::Arc::new(app);
    let waiter = |query: &'static str| {
        let app = std::sync::Arc::clone(&app);
        let globex = globex.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let items = app.poll(&globex, query);
            (items, start.elapsed())
        })
    };
    let invoices = waiter("wait=15&doctype=invoice&lease=60");
    let anything = waiter("wait=15&lease=60");
    std::thread::sleep(Duration::from_millis(500));
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let (items, waited) = anything.join().unwrap();
    assert_eq!(items[0]["doctype"], "order");
    assert!(waited < Duration::from_secs(14), "woken ({waited:?})");
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "invoice", b"{}")
        .data(202);
    let (items, waited) = invoices.join().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["doctype"], "invoice");
    assert!(waited < Duration::from_secs(14), "woken ({waited:?})");
}

#[test]
fn long_poll_wakes_when_a_message_arrives() {
    let (app, acme, globex) = acme_to_globex();
    let app = std::sync::Arc::new(app);
    let poller = {
        let app = std::sync::Arc::clone(&app);
        let globex = globex.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let items = app.poll(&globex, "wait=15");
            (items, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", br#"{"late":true}"#)
        .data(202);
    let (items, waited) = poller.join().unwrap();
    assert_eq!(items.len(), 1, "the waiting poll got the new message");
    assert_eq!(items[0]["payload"]["late"], true);
    assert!(
        waited < Duration::from_secs(14),
        "it answered on arrival, not at the end of the wait ({waited:?})"
    );

    // With nothing to hand out, a long poll answers empty when the wait ends.
    app.ack(&globex, items[0]["uuid"].as_str().unwrap(), "processed")
        .data(200);
    let start = Instant::now();
    assert!(app.poll(&globex, "wait=1").is_empty());
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[test]
fn doctype_filter_and_limit() {
    let (app, acme, globex) = acme_to_globex();
    app.route("ACME", "GLOBEX", "invoice");
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "invoice", b"{}")
        .data(202);
    let invoices = app.poll(&globex, "doctype=invoice");
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["doctype"], "invoice");
    assert_eq!(app.poll(&globex, "limit=1").len(), 1);
    for bad in [
        "limit=0",
        "limit=101",
        "wait=21",
        "lease=43201",
        "limit=x",
        "lease=-1",
    ] {
        let r = app.partner_get(&globex, &format!("/api/v1/transmissions?{bad}"));
        let e = r.error(400, "bad_request");
        assert!(e["field"].is_string(), "{bad}: {e}");
    }
}

#[test]
fn partners_are_isolated_on_every_endpoint() {
    let (app, acme, globex) = acme_to_globex();
    let evil = app.partner("EVIL");
    let sent = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", br#"{"secret":1}"#)
        .data(202);
    let uuid = sent["transmissions"][0]["uuid"].as_str().unwrap();
    let doc = app
        .partner_json(
            &acme,
            "POST",
            "/api/v1/documents/order?receiver=GLOBEX",
            &json!({"orderNo": 7}),
        )
        .data(201);
    let doc_id = doc["id"].as_str().unwrap();
    let request = sent["trackingLocation"].as_str().unwrap();

    assert!(
        app.poll(&evil, "").is_empty(),
        "another receiver's queue is invisible"
    );
    for path in [
        format!("/api/v1/transmissions/{uuid}"),
        format!("/api/v1/transmissions/{uuid}/payload"),
        format!("/api/v1/documents/order/{doc_id}"),
        request.to_owned(),
    ] {
        app.partner_get(&evil, &path).error(404, "not_found");
    }
    app.ack(&evil, uuid, "processed").error(404, "not_found");
    // Sending as someone else is refused, even with a valid key.
    app.send_doc(&evil, "ACME", Some("GLOBEX"), "order", b"{}")
        .error(403, "forbidden");
    // The receiver sees its transmission and the document; only it may acknowledge.
    app.partner_get(&globex, &format!("/api/v1/documents/order/{doc_id}"))
        .data(200);
    app.ack(&acme, uuid, "processed").error(403, "forbidden");
    // The request summary belongs to the sender alone.
    app.partner_get(&globex, request).error(404, "not_found");
    // Nothing changed for the rightful receiver.
    assert_eq!(app.poll(&globex, "").len(), 2);
}

#[test]
fn key_revocation_takes_effect_at_once() {
    let app = spawn_app();
    let key = app.partner("ACME");
    let keys = app
        .admin("GET", "/admin/api/partners/ACME/keys", None)
        .data(200);
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.partner_get(&key, "/api/v1/transmissions").status, 200);
    app.admin(
        "DELETE",
        &format!("/admin/api/partners/ACME/keys/{id}"),
        None,
    )
    .data(200);
    app.partner_get(&key, "/api/v1/transmissions")
        .error(401, "unauthorized");
    let keys = app
        .admin("GET", "/admin/api/partners/ACME/keys", None)
        .data(200);
    assert_eq!(keys[0]["active"], false);
}
