//! Validation: doctype schemas registered by admins, `invalid` messages stored with their
//! errors and never delivered, strict intake, release after a fix, unique references.

use serde_json::{json, Value};

use crate::push::{pushing_to, wait_status};
use crate::receiver::Receiver;
use crate::{acme_to_globex, Resp, TestApp};

/// An order needs an id and lines with a positive whole quantity.
fn order_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "lines"],
        "properties": {
            "id": {"type": "string"},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["qty"],
                    "properties": {"qty": {"type": "integer", "minimum": 1}}
                }
            }
        }
    })
}

fn add_schema(app: &TestApp, body: Value) -> Value {
    app.admin("POST", "/admin/api/schemas", Some(body))
        .data(201)
}

fn inbound(app: &TestApp, key: &str, query: &str, content_type: &str, body: &[u8]) -> Resp {
    app.call(
        "POST",
        &format!("/api/v1/inbound?sender=ACME&receiver=GLOBEX&{query}"),
        &[("X-Api-Key", key), ("Content-Type", content_type)],
        Some(body),
    )
}

fn order(app: &TestApp, key: &str, body: Value) -> Value {
    let bytes = serde_json::to_vec(&body).unwrap();
    inbound(
        app,
        key,
        "doctype=order&version=1",
        "application/json",
        &bytes,
    )
    .data(202)
}

/// (pointer, keyword) of each error.
fn places(errors: &Value) -> Vec<(String, String)> {
    errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["keyword"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(pointer: &str, keyword: &str) -> (String, String) {
    (pointer.to_owned(), keyword.to_owned())
}

fn message(app: &TestApp, key: &str, id: &str) -> Value {
    app.partner_get(key, &format!("/api/v1/messages/{id}"))
        .data(200)
}

/// Today's requests of the caller, from the tracking search.
fn tracked(app: &TestApp, key: &str) -> Vec<Value> {
    let d = app
        .partner_json(key, "POST", "/api/v1/tracking", &json!({}))
        .data(200);
    d["requests"].as_array().unwrap().clone()
}

fn revalidate(app: &TestApp, id: &str) -> Value {
    app.admin(
        "POST",
        &format!("/admin/api/messages/{id}/revalidate"),
        None,
    )
    .data(200)
}

#[test]
fn json_payloads_are_validated_and_invalid_ones_kept_with_their_errors() {
    let (app, acme, globex) = acme_to_globex();
    let s = add_schema(
        &app,
        json!({"doctype": "order", "version": "*", "jsonSchema": order_schema()}),
    );
    assert_eq!(s["version"], "*");
    assert_eq!(s["jsonSchema"], order_schema());
    assert_eq!(s["contentTypes"], json!([]));

    let good = order(&app, &acme, json!({"id": "A-1", "lines": [{"qty": 2}]}));
    assert_eq!(good["status"], "queued");
    assert_eq!(good["errors"], json!([]));

    let bad = order(&app, &acme, json!({"lines": [{"qty": 1}, {"qty": 0}, {}]}));
    assert_eq!(bad["status"], "invalid");
    let found = places(&bad["errors"]);
    for want in [
        pair("", "required"),
        pair("/lines/1/qty", "minimum"),
        pair("/lines/2", "required"),
    ] {
        assert!(found.contains(&want), "{want:?} missing from {found:?}");
    }
    // JSON that is not an object at all, and a type the schema does not allow.
    let list = order(&app, &acme, json!([1, 2]));
    assert_eq!(places(&list["errors"]), [pair("", "type")]);
    let text = inbound(&app, &acme, "doctype=order", "text/plain", b"id=A-2").data(202);
    assert_eq!(text["status"], "invalid");
    assert_eq!(places(&text["errors"]), [pair("", "contentType")]);

    // Only the valid order reaches the receiver.
    let polled = app.poll(&globex, "limit=100");
    let ids: Vec<&str> = polled
        .iter()
        .map(|t| t["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [good["id"].as_str().unwrap()]);

    // The sender sees each invalid message with its errors, and counts of them.
    let m = message(&app, &acme, bad["id"].as_str().unwrap());
    assert_eq!(m["messageStatus"], "invalid");
    assert_eq!(m["transmissions"][0]["status"], "invalid");
    let errors = m["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["pointer"] == "/lines/1/qty" && e["keyword"] == "minimum"),
        "{m}"
    );
    assert!(errors.iter().all(|e| e["errorMessage"].is_string()), "{m}");
    let requests = tracked(&app, &acme);
    let invalid: u64 = requests
        .iter()
        .map(|r| r["messageStatusSummary"]["invalid"].as_u64().unwrap())
        .sum();
    assert_eq!(invalid, 3);
    let row = requests
        .iter()
        .find(|r| r["payload"][0]["id"] == bad["id"])
        .expect("the invalid message's request");
    assert_eq!(row["payload"][0]["messageStatus"], "invalid");
    assert_eq!(row["payload"][0]["errors"].as_array().unwrap().len(), 3);

    // A doctype with no schema is not validated.
    app.route("ACME", "GLOBEX", "invoice");
    let free = inbound(&app, &acme, "doctype=invoice", "text/plain", b"anything").data(202);
    assert_eq!(free["status"], "queued");
}

#[test]
fn xml_payloads_are_checked_for_form_and_root_and_documents_too() {
    let (app, acme, globex) = acme_to_globex();
    app.route("ACME", "GLOBEX", "invoice");
    add_schema(
        &app,
        json!({"doctype": "invoice", "xmlRoot": "Invoice", "maxBytes": 200}),
    );
    let send =
        |body: &[u8]| inbound(&app, &acme, "doctype=invoice", "application/xml", body).data(202);
    let good = send(b"<?xml version=\"1.0\"?><Invoice><Total>3</Total></Invoice>");
    assert_eq!(good["status"], "queued", "{good}");
    let wrong = send(b"<Order><Total>3</Total></Order>");
    assert_eq!(places(&wrong["errors"]), [pair("/Order", "rootElement")]);
    let broken = send(b"<Invoice><Total>3</Invoice>");
    assert_eq!(places(&broken["errors"]), [pair("", "wellFormed")]);
    let big = format!("<Invoice>{}</Invoice>", "x".repeat(300));
    assert_eq!(
        places(&send(big.as_bytes())["errors"]),
        [pair("", "maxBytes")]
    );
    let json_one = inbound(&app, &acme, "doctype=invoice", "application/json", b"{}").data(202);
    assert_eq!(places(&json_one["errors"]), [pair("", "contentType")]);
    assert_eq!(app.poll(&globex, "limit=100").len(), 1);

    // REST documents go through the same check, answered 201 with the errors.
    add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": order_schema()}),
    );
    let doc = app
        .partner_json(&acme, "POST", "/api/v1/documents/order", &json!({"id": 7}))
        .data(201);
    assert_eq!(doc["status"], "invalid");
    let found = places(&doc["errors"]);
    assert!(found.contains(&pair("/id", "type")), "{found:?}");
    assert!(found.contains(&pair("", "required")), "{found:?}");
    let strict = app.partner_json(
        &acme,
        "POST",
        "/api/v1/documents/order?strict=true",
        &json!({"id": 7}),
    );
    let e = strict.error(422, "validation_failed");
    assert_eq!(e["details"]["invalid"][0]["message"], "document");
    assert_eq!(app.poll(&globex, "limit=100&doctype=order").len(), 0);
}

fn batch(app: &TestApp, key: &str, strict: bool, messages: Value) -> Resp {
    let path = if strict {
        "/api/v1/requests?strict=true"
    } else {
        "/api/v1/requests"
    };
    app.partner_json(
        key,
        "POST",
        path,
        &json!({"batchReference": "B-1", "messages": messages}),
    )
}

fn three_orders() -> Value {
    json!([
        {"messageType": "order", "externalReference": "R1", "payload": {"id": "1", "lines": []}},
        {"messageType": "order", "externalReference": "R2", "payload": {"id": 2, "lines": []}},
        {"messageType": "order", "externalReference": "R3", "payload": {"id": "3", "lines": [{"qty": 1}]}},
    ])
}

#[test]
fn strict_intake_refuses_the_call_and_stores_nothing() {
    let (app, acme, globex) = acme_to_globex();
    add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": order_schema()}),
    );

    let r = batch(&app, &acme, true, three_orders());
    let e = r.error(422, "validation_failed");
    assert_eq!(e["field"], "messages");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("messages[1]"), "{message}");
    assert!(!message.contains("messages[0]") && !message.contains("messages[2]"));
    let invalid = e["details"]["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0]["message"], "messages[1]");
    assert_eq!(invalid[0]["externalReference"], "R2");
    assert_eq!(places(&invalid[0]["errors"]), [pair("/id", "type")]);

    let single = inbound(
        &app,
        &acme,
        "doctype=order&strict=true",
        "application/json",
        b"{\"id\": \"1\"}",
    );
    let e = single.error(422, "validation_failed");
    assert_eq!(e["details"]["invalid"][0]["message"], "payload");
    let bad_flag = inbound(
        &app,
        &acme,
        "doctype=order&strict=yes",
        "application/json",
        b"{}",
    );
    bad_flag.error(400, "bad_request");

    assert!(tracked(&app, &acme).is_empty(), "nothing was stored");
    assert!(app.poll(&globex, "limit=100").is_empty());

    // Strict and valid: stored as usual.
    let ok = batch(&app, &acme, true, json!([three_orders()[0].clone()])).data(202);
    assert_eq!(ok["messages"][0]["status"], "queued");
}

#[test]
fn a_mixed_batch_stores_its_valid_messages_normally() {
    let (app, acme, globex) = acme_to_globex();
    add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": order_schema()}),
    );
    let d = batch(&app, &acme, false, three_orders()).data(202);
    let statuses: Vec<&str> = d["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "invalid", "queued"]);
    assert_eq!(places(&d["messages"][1]["errors"]), [pair("/id", "type")]);
    assert_eq!(d["messages"][0]["errors"], json!([]));

    let polled = app.poll(&globex, "limit=100");
    let refs: Vec<&str> = polled
        .iter()
        .map(|t| t["externalReference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["R1", "R3"]);

    let requests = tracked(&app, &acme);
    assert_eq!(requests.len(), 1);
    let summary = &requests[0]["messageStatusSummary"];
    assert_eq!(summary["total"], 3);
    assert_eq!(summary["invalid"], 1);
    assert_eq!(summary["processed"], 2, "{summary}");
}

#[test]
fn invalid_messages_are_never_pushed_until_released_after_a_fix() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, _) = pushing_to(&receiver, |_| {});
    let strict_id = json!({
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string", "pattern": "^A-"}}
    });
    let first = add_schema(&app, json!({"doctype": "order", "jsonSchema": strict_id}));

    let bad = crate::push::send(&app, &acme, "application/json", br#"{"id": "B-7"}"#);
    assert_eq!(bad["status"], "invalid");
    assert_eq!(places(&bad["errors"]), [pair("/id", "pattern")]);
    let good = crate::push::send(&app, &acme, "application/json", br#"{"id": "A-1"}"#);
    let got = receiver.wait_for(1, 20);
    assert_eq!(got[0].body, br#"{"id": "A-1"}"#);
    wait_status(
        &app,
        &acme,
        good["transmissions"][0]["uuid"].as_str().unwrap(),
        "processed",
    );
    let stats = app.admin("GET", "/admin/api/stats", None).data(200);
    assert_eq!(
        stats["deliveries"],
        json!({"due": 0, "held": 0}),
        "the invalid message has no outbox entry"
    );
    assert_eq!(receiver.received().len(), 1);

    // Checked again against the same schema: still invalid, nothing sent.
    let id = bad["id"].as_str().unwrap();
    let again = revalidate(&app, id);
    assert_eq!(again["status"], "invalid");
    assert_eq!(places(&again["errors"]), [pair("/id", "pattern")]);

    // The admin fixes the schema (the same doctype and version: a replacement) and
    // releases the message, which is pushed like any other.
    let fixed = add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": {"type": "object", "required": ["id"]}}),
    );
    assert_eq!(fixed["replaced"], first["id"]);
    let list = app.admin("GET", "/admin/api/schemas", None).data(200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], fixed["id"]);
    let released = revalidate(&app, id);
    assert_eq!(released["status"], "queued");
    assert_eq!(released["errors"], json!([]));
    let got = receiver.wait_for(2, 20);
    assert_eq!(got[1].body, br#"{"id": "B-7"}"#);
    let uuid = released["transmissions"][0]["uuid"].as_str().unwrap();
    wait_status(&app, &acme, uuid, "processed");

    let m = message(&app, &acme, id);
    let history: Vec<&str> = m["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["invalid", "queued", "processed"]);
    assert_eq!(m["errors"], json!([]));

    // Only invalid messages are checked again; other ids and environments are unknown.
    app.admin(
        "POST",
        &format!("/admin/api/messages/{id}/revalidate"),
        None,
    )
    .error(409, "conflict");
    app.admin(
        "POST",
        &format!("/admin/api/messages/{id}/revalidate?env=test"),
        None,
    )
    .error(404, "not_found");
}

#[test]
fn the_bulk_form_releases_every_invalid_message_of_a_doctype() {
    let (app, acme, globex) = acme_to_globex();
    add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": {"type": "object", "required": ["id", "date"]}}),
    );
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let m = order(&app, &acme, json!({"id": format!("{i}")}));
            assert_eq!(m["status"], "invalid");
            m["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let body = json!({"doctype": "order"});
    let still = app
        .admin("POST", "/admin/api/messages/revalidate", Some(body.clone()))
        .data(200);
    assert_eq!(
        (
            &still["checked"],
            &still["released"],
            &still["stillInvalid"]
        ),
        (&json!(5), &json!(0), &json!(5))
    );
    add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": {"type": "object", "required": ["id"]}}),
    );
    // Another version is not touched.
    let other = app
        .admin(
            "POST",
            "/admin/api/messages/revalidate",
            Some(json!({"doctype": "order", "version": "9"})),
        )
        .data(200);
    assert_eq!(other["checked"], 0);
    let done = app
        .admin("POST", "/admin/api/messages/revalidate", Some(body))
        .data(200);
    assert_eq!(
        (&done["checked"], &done["released"], &done["more"]),
        (&json!(5), &json!(5), &json!(false))
    );
    let polled: Vec<String> = app
        .poll(&globex, "limit=100")
        .iter()
        .map(|t| t["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(polled, ids, "all five, oldest first");
    app.admin(
        "POST",
        "/admin/api/messages/revalidate",
        Some(json!({"version": "1"})),
    )
    .error(422, "validation_failed");
}

#[test]
fn unique_references_refuse_a_duplicate_naming_the_first_message() {
    let (app, acme, _) = acme_to_globex();
    app.route("ACME", "GLOBEX", "invoice");
    let send = |doctype: &str, reference: &str| {
        inbound(
            &app,
            &acme,
            &format!("doctype={doctype}&externalReference={reference}"),
            "application/json",
            b"{\"id\": \"1\"}",
        )
    };
    // Off by default: the same reference twice is fine.
    send("order", "R0").data(202);
    send("order", "R0").data(202);

    let p = app
        .admin(
            "PATCH",
            "/admin/api/partners/ACME",
            Some(json!({"uniqueReferences": true})),
        )
        .data(200);
    assert_eq!(p["uniqueReferences"], true);
    let first = send("order", "R1").data(202);
    let e = send("order", "R1").error(409, "duplicate_reference");
    let first_id = first["id"].as_str().unwrap();
    assert!(e["message"].as_str().unwrap().contains(first_id), "{e}");
    assert_eq!(e["details"]["firstMessageId"], first_id);
    assert_eq!(e["field"], "externalReference");
    // Per doctype: another doctype may use it.
    send("invoice", "R1").data(202);

    // In a batch: against stored messages and inside the batch; nothing is stored then.
    let r = batch(
        &app,
        &acme,
        false,
        json!([
            {"messageType": "order", "externalReference": "R5", "payload": {}},
            {"messageType": "order", "externalReference": "R1", "payload": {}},
        ]),
    );
    let e = r.error(409, "duplicate_reference");
    assert_eq!(e["field"], "messages[1].externalReference");
    assert_eq!(e["details"]["firstMessageId"], first_id);
    let r = batch(
        &app,
        &acme,
        false,
        json!([
            {"messageType": "order", "externalReference": "R6", "payload": {}},
            {"messageType": "order", "externalReference": "R6", "payload": {}},
        ]),
    );
    assert_eq!(
        r.error(409, "duplicate_reference")["details"]["firstMessageId"],
        Value::Null
    );
    send("order", "R5").data(202);

    // An invalid message holds no reference: the corrected one may use it.
    add_schema(
        &app,
        json!({"doctype": "order", "jsonSchema": {"required": ["total"]}}),
    );
    let invalid = send("order", "R7").data(202);
    assert_eq!(invalid["status"], "invalid");
    let fixed = inbound(
        &app,
        &acme,
        "doctype=order&externalReference=R7",
        "application/json",
        b"{\"total\": 1}",
    )
    .data(202);
    assert_eq!(fixed["status"], "queued");

    // Test traffic has references of its own.
    let test_key = app.key("ACME", "test");
    app.key("GLOBEX", "test");
    let r = app.call(
        "POST",
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=invoice&externalReference=R1",
        &[
            ("X-Api-Key", &test_key),
            ("Content-Type", "application/json"),
        ],
        Some(b"{}"),
    );
    r.data(202);
}

#[test]
fn schemas_are_for_admins_only_and_bad_ones_are_refused_with_the_reason() {
    let (app, acme, _) = acme_to_globex();
    let body = serde_json::to_vec(&json!({"doctype": "order", "jsonSchema": {}})).unwrap();
    for (method, path) in [
        ("POST", "/admin/api/schemas"),
        ("GET", "/admin/api/schemas"),
        (
            "DELETE",
            "/admin/api/schemas/0192f7a0-0000-7000-8000-000000000000",
        ),
        ("POST", "/admin/api/messages/revalidate"),
    ] {
        for headers in [
            vec![("X-Api-Key", acme.as_str())],
            vec![("Authorization", "Bearer wrong")],
            vec![],
        ] {
            let mut h = headers.clone();
            h.push(("Content-Type", "application/json"));
            let r = app.call(method, path, &h, Some(&body));
            r.error(401, "unauthorized");
        }
        let bearer = format!("Bearer {acme}");
        let r = app.call(method, path, &[("Authorization", &bearer)], Some(&body));
        r.error(401, "unauthorized");
    }
    assert_eq!(
        app.admin("GET", "/admin/api/schemas", None).data(200),
        json!([]),
        "nothing was created"
    );

    let refused = app
        .admin(
            "POST",
            "/admin/api/schemas",
            Some(json!({"doctype": "order", "jsonSchema": {"type": "strnig"}})),
        )
        .error(400, "schema_invalid");
    assert_eq!(refused["field"], "jsonSchema");
    assert!(
        refused["message"].as_str().unwrap().contains("strnig"),
        "the compiler's message: {refused}"
    );
    let remote = app
        .admin(
            "POST",
            "/admin/api/schemas",
            Some(json!({"doctype": "order", "jsonSchema": {"$ref": "https://example.com/s.json"}})),
        )
        .error(400, "schema_invalid");
    assert!(remote["message"].is_string());
    for (bad, code, status) in [
        (json!({"jsonSchema": {}}), "validation_failed", 422),
        (json!({"doctype": "a/b"}), "validation_failed", 422),
        (
            json!({"doctype": "order", "jsonSchema": "text"}),
            "bad_request",
            400,
        ),
        (
            json!({"doctype": "order", "xmlRoot": "<x>"}),
            "validation_failed",
            422,
        ),
        (
            json!({"doctype": "order", "maxBytes": 0}),
            "validation_failed",
            422,
        ),
        (
            json!({"doctype": "order", "contentTypes": ["json"]}),
            "validation_failed",
            422,
        ),
    ] {
        app.admin("POST", "/admin/api/schemas", Some(bad))
            .error(status, code);
    }
    let huge = json!({"doctype": "order", "jsonSchema": {"description": "x".repeat(70_000)}});
    app.admin("POST", "/admin/api/schemas", Some(huge))
        .error(422, "validation_failed");
    assert_eq!(
        app.admin("GET", "/admin/api/schemas", None).data(200),
        json!([])
    );

    // Created and deleted, both in the audit log; the doctype is free again.
    let s = add_schema(&app, json!({"doctype": "order", "xmlRoot": "Order"}));
    let id = s["id"].as_str().unwrap();
    let xml = |app: &TestApp| {
        inbound(
            app,
            &acme,
            "doctype=order",
            "application/xml",
            b"<Invoice/>",
        )
        .data(202)
    };
    assert_eq!(xml(&app)["status"], "invalid");
    let path = format!("/admin/api/schemas/{id}");
    app.admin("DELETE", &path, None).data(200);
    app.admin("DELETE", &path, None).error(404, "not_found");
    assert_eq!(xml(&app)["status"], "queued");
    let audit = app
        .admin("GET", "/admin/api/audit?limit=1000", None)
        .data(200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"POST /admin/api/schemas"), "{actions:?}");
    assert!(
        actions.contains(&"DELETE /admin/api/schemas/{}"),
        "{actions:?}"
    );
}

#[test]
fn concurrent_intakes_of_one_reference_store_it_once() {
    let (app, acme, globex) = acme_to_globex();
    app.admin(
        "PATCH",
        "/admin/api/partners/ACME",
        Some(json!({"uniqueReferences": true})),
    )
    .data(200);
    for round in 0..5 {
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        inbound(
                            &app,
                            &acme,
                            &format!("doctype=order&externalReference=RACE-{round}"),
                            "application/json",
                            b"{}",
                        )
                        .status
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|s| **s == 202).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 202 || *s == 409),
            "{statuses:?}"
        );
    }
    assert_eq!(app.poll(&globex, "limit=100").len(), 5);
}
