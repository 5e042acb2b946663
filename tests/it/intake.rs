//! Intake: single documents, batches, REST documents and routing.

use base64::Engine;
use serde_json::json;

use crate::{acme_to_globex, spawn_app};

#[test]
fn routes_fan_out_to_every_receiver_when_none_is_named() {
    let app = spawn_app();
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    let initech = app.partner("INITECH");
    app.route("ACME", "GLOBEX", "*");
    app.route("ACME", "INITECH", "order");

    let sent = app.send_doc(&acme, "ACME", None, "order", b"{}").data(202);
    let receivers: Vec<&str> = sent["transmissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["receiver"].as_str().unwrap())
        .collect();
    assert_eq!(receivers, vec!["GLOBEX", "INITECH"]);
    assert_eq!(app.poll(&globex, "").len(), 1);
    assert_eq!(app.poll(&initech, "").len(), 1);

    // Only GLOBEX takes invoices.
    let sent = app
        .send_doc(&acme, "ACME", None, "invoice", b"{}")
        .data(202);
    assert_eq!(sent["transmissions"].as_array().unwrap().len(), 1);
    // No route at all: refused, nothing stored.
    app.send_doc(&globex, "GLOBEX", None, "order", b"{}")
        .error(403, "no_route");
    app.send_doc(&acme, "ACME", Some("INITECH"), "invoice", b"{}")
        .error(403, "no_route");

    // The message completes only when every receiver has acknowledged.
    let sent = app.send_doc(&acme, "ACME", None, "order", b"{}").data(202);
    let txs = sent["transmissions"].as_array().unwrap().clone();
    let key_of = |r: &str| if r == "GLOBEX" { &globex } else { &initech };
    let t0 = txs[0]["uuid"].as_str().unwrap();
    app.ack(
        key_of(txs[0]["receiver"].as_str().unwrap()),
        t0,
        "processed",
    )
    .data(200);
    let summary = app
        .partner_get(&acme, sent["trackingLocation"].as_str().unwrap())
        .data(200);
    assert_eq!(
        summary["messages"][0]["messageStatus"], "queued",
        "the least advanced transmission decides"
    );
    let t1 = txs[1]["uuid"].as_str().unwrap();
    app.ack(
        key_of(txs[1]["receiver"].as_str().unwrap()),
        t1,
        "processed",
    )
    .data(200);
    let summary = app
        .partner_get(&acme, sent["trackingLocation"].as_str().unwrap())
        .data(200);
    assert_eq!(summary["messages"][0]["messageStatus"], "complete");
}

#[test]
fn api_key_is_accepted_in_every_documented_place() {
    let (app, acme, globex) = acme_to_globex();
    let path = "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order";
    let bearer = format!("Bearer {acme}");
    app.call("POST", path, &[("Authorization", &bearer)], Some(b"a"))
        .data(202);
    app.call("POST", path, &[("X-Api-Key", &acme)], Some(b"b"))
        .data(202);
    app.call("POST", &format!("{path}&apikey={acme}"), &[], Some(b"c"))
        .data(202);
    let form = format!("apikey={acme}&item=d");
    app.call(
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(form.as_bytes()),
    )
    .data(202);
    let items = app.poll(&globex, "limit=10");
    assert_eq!(items.len(), 4);
    // Non-JSON payloads travel base64-encoded, and raw through payloadLocation.
    assert_eq!(items[0]["payloadEncoding"], "base64");
    assert_eq!(
        items[0]["payload"],
        base64::engine::general_purpose::STANDARD.encode("a")
    );
    assert_eq!(items[0]["contentType"], "application/octet-stream");
    // A key sent as a form field is taken out of the stored payload: the receiver never sees it.
    let form_item = &items[3];
    let raw = app.partner_get(&globex, form_item["payloadLocation"].as_str().unwrap());
    assert_eq!(raw.body, b"item=d");
    assert!(!String::from_utf8_lossy(&raw.body).contains(&acme));
}

#[test]
fn batch_is_stored_whole() {
    let (app, acme, globex) = acme_to_globex();
    let csv = base64::engine::general_purpose::STANDARD.encode("a,b\n1,2\n");
    let batch = json!({
        "batchReference": "BATCH-1",
        "messages": [
            {"messageType": "order", "externalReference": "O-1", "payload": {"n": 1}},
            {"messageType": "order", "receiver": "GLOBEX", "externalReference": "O-2", "contentType": "text/csv", "payload": csv},
            {"messageType": "order", "externalReference": "O-3", "payload": null},
        ]
    });
    let d = app
        .partner_json(&acme, "POST", "/api/v1/requests", &batch)
        .data(202);
    assert_eq!(d["batchReference"], "BATCH-1");
    assert_eq!(d["messages"].as_array().unwrap().len(), 3);
    assert_eq!(d["messages"][1]["externalReference"], "O-2");
    let items = app.poll(&globex, "");
    assert_eq!(items.len(), 3);
    assert!(
        items[2]["payload"].is_null(),
        "JSON null is a payload like any other"
    );
    assert_eq!(items[2]["payloadEncoding"], "json");
    assert_eq!(items[0]["payload"], json!({"n": 1}));
    assert_eq!(items[1]["contentType"], "text/csv");
    let raw = app.partner_get(&globex, items[1]["payloadLocation"].as_str().unwrap());
    assert_eq!(raw.body, b"a,b\n1,2\n");
    let summary = app
        .partner_get(&acme, d["trackingLocation"].as_str().unwrap())
        .data(200);
    assert_eq!(summary["batchReference"], "BATCH-1");
    assert_eq!(summary["messages"].as_array().unwrap().len(), 3);
}

#[test]
fn an_invalid_message_in_a_batch_stores_nothing() {
    let (app, acme, globex) = acme_to_globex();
    let cases = [
        (
            json!([{"messageType": "order", "payload": 1}, {"payload": 2}]),
            "messages[1].messageType",
        ),
        (
            json!([{"messageType": "order", "payload": 1}, {"messageType": "invoice", "payload": 2}]),
            "messages[1].receiver",
        ),
        (
            json!([{"messageType": "order", "payload": 1}, {"messageType": "order", "contentType": "text/plain", "payload": "%%%"}]),
            "messages[1].payload",
        ),
        (
            json!([{"messageType": "order", "payload": 1}, {"messageType": "order", "receiver": "nope", "payload": 1}]),
            "messages[1].receiver",
        ),
        (json!([]), "messages"),
    ];
    for (messages, field) in cases {
        let r = app.partner_json(
            &acme,
            "POST",
            "/api/v1/requests",
            &json!({"batchReference": "B", "messages": messages}),
        );
        assert!(r.status == 422 || r.status == 403, "{field}: {}", r.status);
        assert_eq!(r.json()["error"]["field"], field);
    }
    assert!(
        app.poll(&globex, "").is_empty(),
        "no message of a refused batch was stored"
    );
    app.partner_json(
        &acme,
        "POST",
        "/api/v1/requests",
        &json!({"messages": "no"}),
    )
    .error(400, "bad_request");
}

#[test]
fn documents_are_created_with_their_transmissions_and_read_back() {
    let (app, acme, globex) = acme_to_globex();
    let r = app.partner_json(
        &acme,
        "POST",
        "/api/v1/documents/order?externalReference=PO-9",
        &json!({"orderNo": 9, "lines": [1, 2]}),
    );
    let d = r.data(201);
    let id = d["id"].as_str().unwrap();
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/documents/order/{id}"));
    assert_eq!(d["transmissions"][0]["receiver"], "GLOBEX");

    let got = app.partner_get(&acme, &location).data(200);
    assert_eq!(got["document"], json!({"orderNo": 9, "lines": [1, 2]}));
    assert_eq!(got["externalReference"], "PO-9");
    app.partner_get(&acme, &format!("/api/v1/documents/invoice/{id}"))
        .error(404, "not_found");

    let items = app.poll(&globex, "");
    assert_eq!(items[0]["messageId"], id);
    assert_eq!(items[0]["externalReference"], "PO-9");

    app.call(
        "POST",
        "/api/v1/documents/order",
        &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
        Some(b"{not json"),
    )
    .error(400, "bad_request");
    app.call(
        "POST",
        "/api/v1/documents/order",
        &[("X-Api-Key", &acme), ("Content-Type", "text/xml")],
        Some(b"<a/>"),
    )
    .error(415, "unsupported_media_type");
}
