//! Tracking: the search over a sender's requests, one request or message with its
//! history, cancellation, and partner tokens (JWT) in place of API keys.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

use crate::receiver::{Answer, Receiver};
use crate::{acme_to_globex, agent, spawn_app_in, spawn_app_with, Resp, TestApp};

fn track(app: &TestApp, key: &str, body: &Value) -> Resp {
    app.partner_json(key, "POST", "/api/v1/tracking", body)
}

/// The search's `data`, after checking it succeeded.
fn found(app: &TestApp, key: &str, body: Value) -> Value {
    track(app, key, &body).data(200)
}

/// The ids of the requests an answer lists, in order.
fn ids(data: &Value) -> Vec<String> {
    data["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The ids of the messages a request of an answer lists in its payload.
fn payload_ids(request: &Value) -> Vec<String> {
    request["payload"]
        .as_array()
        .expect("payload")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

fn day(offset_days: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = time::OffsetDateTime::from_unix_timestamp(now + offset_days * 86_400).unwrap();
    t.date().to_string()
}

fn batch(app: &TestApp, key: &str, reference: Option<&str>, messages: Value) -> Value {
    let mut body = json!({"messages": messages});
    if let Some(r) = reference {
        body["batchReference"] = json!(r);
    }
    app.partner_json(key, "POST", "/api/v1/requests", &body)
        .data(202)
}

/// Distinct received and processed times (the store keeps milliseconds).
fn tick() {
    std::thread::sleep(Duration::from_millis(5));
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn the_seed_examples_work_as_written_where_they_are_valid() {
    let (app, acme, globex) = acme_to_globex();
    app.route("ACME", "GLOBEX", "*");
    let sent = batch(
        &app,
        &acme,
        Some("ABC12345"),
        json!([
            {"messageType": "Estimate", "externalReference": "est-1", "payload": {"n": 1}},
            {"messageType": "Estimate", "externalReference": "est-2", "payload": {"n": 2}},
            {"messageType": "Order", "externalReference": "ord-1", "payload": {"n": 3}},
        ]),
    );
    let request_id = sent["id"].as_str().unwrap().to_owned();
    let items = app.poll(&globex, "limit=10");
    assert_eq!(items.len(), 3);
    app.ack(&globex, items[0]["uuid"].as_str().unwrap(), "processed")
        .data(200);
    app.partner_json(
        &globex,
        "PUT",
        &format!(
            "/api/v1/transmissions/status/{}",
            items[1]["uuid"].as_str().unwrap()
        ),
        &json!({"status": "failed", "message": "Unable to process"}),
    )
    .data(200);

    // Search by id, with paging numbers as strings. As written, its sort order is a UUID.
    let mut by_id = json!({
        "search": [{"by": "id", "value": [request_id]}],
        "paging": {"number": "1", "size": "10"},
        "sorts": [{"by": "receivedDate", "order": "78452e72-0fcb-4455-afc3-68fadb22646f"}]
    });
    let e = track(&app, &acme, &by_id).error(400, "invalid_sort");
    assert_eq!(e["field"], "sorts[0].order");
    assert!(
        e["message"].as_str().unwrap().contains("asc or desc"),
        "{e}"
    );
    by_id["sorts"][0]["order"] = json!("asc");
    let d = found(&app, &acme, by_id);
    assert_eq!(ids(&d), vec![request_id.clone()]);
    assert_eq!(
        d["paging"],
        json!({"number": 1, "size": 10, "totalRequests": 1, "totalPages": 1})
    );
    assert_eq!(d["search"], json!([{"by": "id", "value": [request_id]}]));
    let r = &d["requests"][0];
    assert_eq!(r["feedId"], "ACME");
    assert_eq!(r["clientName"], "ACME");
    assert_eq!(r["batchReference"], "ABC12345");
    assert!(r["receivedDate"].as_str().unwrap().starts_with(&day(0)));
    assert_eq!(
        r["messageStatusSummary"],
        json!({"total": 3, "queued": 0, "processing": 0, "processed": 1, "cancelled": 0,
               "failed": 1, "invalid": 0, "complete": 1})
    );
    assert_eq!(r["requestStatus"], "complete");
    assert_eq!(r["payload"].as_array().unwrap().len(), 3);

    // The second example as written: a trailing comma, and `recievedDate`.
    let raw = br#"{"search": [{"by": "messageType", "value": ["Estimate"]},
        {"by": "messageStatus", "value": ["Failed", "Complete"]},
        {"by": "recievedDate", "value": ["2018-10-01T00:00:00+00:00", "2018-10-02T00:00:00+00:00"]},
        ]}"#;
    let resp = app.call(
        "POST",
        "/api/v1/tracking",
        &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
        Some(raw),
    );
    resp.error(400, "bad_request");
    let mut example = json!({"search": [
        {"by": "messageType", "value": ["Estimate"]},
        {"by": "messageStatus", "value": ["Failed", "Complete"]},
        {"by": "recievedDate", "value": [format!("{}T00:00:00+00:00", day(0)), format!("{}T00:00:00+00:00", day(1))]},
    ]});
    let e = track(&app, &acme, &example).error(400, "invalid_search");
    assert_eq!(e["field"], "search[2].by");
    assert!(
        e["message"].as_str().unwrap().contains("receivedDate"),
        "{e}"
    );
    example["search"][2]["by"] = json!("receivedDate");
    let d = found(&app, &acme, example);
    assert_eq!(ids(&d), vec![request_id.clone()]);
    let payload = d["requests"][0]["payload"].as_array().unwrap();
    assert_eq!(payload.len(), 2, "the two estimates, not the order: {d}");
    let failed = payload
        .iter()
        .find(|m| m["messageStatus"] == "failed")
        .expect("the failed estimate");
    assert_eq!(failed["messageType"], "Estimate");
    assert_eq!(failed["externalReference"], "est-2");
    assert!(failed["processedTime"].is_string());
    assert!(failed["errors"][0]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("Unable to process"));
    assert_eq!(
        d["requests"][0]["messageStatusSummary"]["total"], 3,
        "the summary counts every message of the request"
    );

    // The response example's search: single values, in another case, over a range.
    let d = found(
        &app,
        &acme,
        json!({"search": [
            {"by": "messageType", "value": "estimate"},
            {"by": "messageStatus", "value": "Failed"},
            {"by": "receivedDate", "value": [day(-2), day(0)]},
        ]}),
    );
    assert_eq!(
        payload_ids(&d["requests"][0]),
        vec![failed["id"].as_str().unwrap()]
    );
}

#[test]
fn summaries_count_acked_failed_polled_pushed_untouched_and_cancelled_messages() {
    let hook = Receiver::always(Answer::status(200));
    let broken = Receiver::always(Answer::status(500));
    let app = spawn_app_with(|c| c.delivery.retry_schedule = vec![1]);
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    for (code, receiver) in [("HOOK", &hook), ("BROKEN", &broken)] {
        app.admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": code, "name": code, "pushUrl": format!("{}/in", receiver.url)})),
        )
        .data(201);
        app.route("ACME", code, "order");
    }
    app.route("ACME", "GLOBEX", "order");
    let to = |receiver: &str, n: u32| json!({"messageType": "order", "receiver": receiver, "payload": {"n": n}});
    let sent = batch(
        &app,
        &acme,
        Some("MIX"),
        json!([
            to("GLOBEX", 0), // acknowledged
            to("GLOBEX", 1), // reported failed
            to("GLOBEX", 2), // polled only
            to("GLOBEX", 3), // untouched
            to("HOOK", 4),   // pushed
            to("BROKEN", 5), // push fails for good
            to("GLOBEX", 6), // cancelled
        ]),
    );
    let mid = |i: usize| sent["messages"][i]["id"].as_str().unwrap().to_owned();
    app.partner_json(
        &acme,
        "POST",
        &format!("/api/v1/messages/{}/cancel", mid(6)),
        &json!({}),
    )
    .data(200);
    let items = app.poll(&globex, "limit=3");
    assert_eq!(items.len(), 3);
    app.ack(&globex, items[0]["uuid"].as_str().unwrap(), "processed")
        .data(200);
    app.partner_json(
        &globex,
        "PUT",
        &format!(
            "/api/v1/transmissions/status/{}",
            items[1]["uuid"].as_str().unwrap()
        ),
        &json!({"status": "failed", "message": "line 3: unknown SKU"}),
    )
    .data(200);

    let search = json!({"search": [{"by": "externalReference", "value": "MIX"}]});
    wait_until(20, "the pushes to end", || {
        let d = found(&app, &acme, search.clone());
        let s = &d["requests"][0]["messageStatusSummary"];
        s["processing"] == 0 && s["failed"] == 2
    });
    let d = found(&app, &acme, search);
    let r = &d["requests"][0];
    assert_eq!(
        r["messageStatusSummary"],
        json!({"total": 7, "queued": 1, "processing": 0, "processed": 2, "cancelled": 1,
               "failed": 2, "invalid": 0, "complete": 1}),
        "{r}"
    );
    assert_eq!(r["requestStatus"], "processing", "one is still queued");
    let by_id = |id: &str| {
        r["payload"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };
    assert!(by_id(&mid(1))["errors"][0]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("unknown SKU"));
    assert!(by_id(&mid(5))["errors"][0]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("HTTP 500"));
    assert_eq!(by_id(&mid(4))["messageStatus"], "processed");
    assert!(by_id(&mid(3))["processedTime"].is_null());

    // The same request and one message, with their histories.
    let req = app
        .partner_get(
            &acme,
            &format!("/api/v1/requests/{}", sent["id"].as_str().unwrap()),
        )
        .data(200);
    assert_eq!(req["messageStatusSummary"], r["messageStatusSummary"]);
    let m = app
        .partner_get(&acme, &format!("/api/v1/messages/{}", mid(1)))
        .data(200);
    let statuses: Vec<&str> = m["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "processed", "failed"]);
    let tx = &m["transmissions"][0];
    assert_eq!(tx["receiver"], "GLOBEX");
    assert_eq!(tx["history"].as_array().unwrap().len(), 3);
    assert!(tx["lastError"].as_str().unwrap().contains("unknown SKU"));
    assert!(m["errors"][0]["at"].is_string());
    let pushed = app
        .partner_get(&acme, &format!("/api/v1/messages/{}", mid(5)))
        .data(200);
    let tx_statuses: Vec<&str> = pushed["transmissions"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(tx_statuses, ["queued", "processing", "failed"]);
    // Receivers follow their side through transmissions, not the sender's messages.
    app.partner_get(&globex, &format!("/api/v1/messages/{}", mid(1)))
        .error(404, "not_found");
}

/// Four requests with distinct received, processed and batch references:
/// A (B3: order, invoice; polled, invoice failed), B (B1: order; complete),
/// C (B2: invoice; polled), D (no reference: order o-4; untouched).
struct Cast {
    app: TestApp,
    acme: String,
    a: Value,
    b: Value,
    c: Value,
    d: String,
}

fn cast() -> Cast {
    let (app, acme, globex) = acme_to_globex();
    app.route("ACME", "GLOBEX", "invoice");
    let a = batch(
        &app,
        &acme,
        Some("B3"),
        json!([
            {"messageType": "order", "externalReference": "o-1", "payload": {}},
            {"messageType": "invoice", "externalReference": "i-1", "payload": {}},
        ]),
    );
    let first = app.poll(&globex, "limit=10");
    tick();
    let b = batch(
        &app,
        &acme,
        Some("B1"),
        json!([{"messageType": "order", "externalReference": "o-2", "payload": {}}]),
    );
    let second = app.poll(&globex, "limit=10");
    tick();
    let c = batch(
        &app,
        &acme,
        Some("B2"),
        json!([{"messageType": "invoice", "externalReference": "i-3", "payload": {}}]),
    );
    app.poll(&globex, "limit=10");
    tick();
    let d = app.call(
        "POST",
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&externalReference=o-4",
        &[("X-Api-Key", &acme), ("Content-Type", "application/json")],
        Some(b"{}"),
    );
    let d = d.data(202)["requestId"].as_str().unwrap().to_owned();
    let uuid_of = |items: &[Value], mid: &Value| {
        items
            .iter()
            .find(|t| t["messageId"] == *mid)
            .map(|t| t["uuid"].as_str().unwrap().to_owned())
            .unwrap()
    };
    app.ack(&globex, &uuid_of(&first, &a["messages"][1]["id"]), "failed")
        .data(200);
    app.ack(
        &globex,
        &uuid_of(&second, &b["messages"][0]["id"]),
        "processed",
    )
    .data(200);
    Cast {
        app,
        acme,
        a,
        b,
        c,
        d,
    }
}

#[test]
fn each_criterion_alone_and_combined() {
    let Cast {
        app,
        acme,
        a,
        b,
        c,
        d,
    } = cast();
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let (a_id, b_id, c_id) = (id(&a), id(&b), id(&c));
    let a_invoice = a["messages"][1]["id"].as_str().unwrap().to_owned();
    let asc = json!([{"by": "receivedDate", "order": "asc"}]);
    let search = |criteria: Value| {
        ids(&found(
            &app,
            &acme,
            json!({"search": criteria, "sorts": asc.clone()}),
        ))
    };
    let one = |by: &str, value: Value| search(json!([{"by": by, "value": value}]));

    let everything = vec![a_id.clone(), b_id.clone(), c_id.clone(), d.clone()];
    assert_eq!(search(json!([])), everything, "no criteria: today");
    assert_eq!(one("receivedDate", json!(day(0))), everything);
    assert_eq!(one("receivedDate", json!([day(-3), day(0)])), everything);
    assert!(one("receivedDate", json!("2018-10-01")).is_empty());
    assert!(one("receivedDate", json!([day(1), day(2)])).is_empty());

    assert_eq!(
        one("messageType", json!("INVOICE")),
        vec![a_id.clone(), c_id.clone()]
    );
    assert_eq!(
        one("messageType", json!(["order"])),
        vec![a_id.clone(), b_id.clone(), d.clone()]
    );
    assert_eq!(one("messageStatus", json!("Queued")), vec![d.clone()]);
    assert_eq!(
        one("messageStatus", json!(["complete", "failed"])),
        vec![a_id.clone(), b_id.clone()]
    );
    assert_eq!(one("id", json!(b_id)), vec![b_id.clone()]);
    assert_eq!(
        one("id", json!([a_invoice, d])),
        vec![a_id.clone(), d.clone()]
    );
    assert!(one("id", json!(uuid::Uuid::now_v7().to_string())).is_empty());
    assert_eq!(one("externalReference", json!("B2")), vec![c_id.clone()]);
    assert_eq!(one("externalReference", json!("o-4")), vec![d.clone()]);
    assert_eq!(
        one("externalReference", json!(["B1", "i-1"])),
        vec![a_id.clone(), b_id.clone()]
    );
    assert!(one("externalReference", json!("nope")).is_empty());

    // Combined: all must hold, and the payload lists only the messages that match.
    let by_id = found(
        &app,
        &acme,
        json!({"search": [{"by": "id", "value": a_invoice}]}),
    );
    assert_eq!(payload_ids(&by_id["requests"][0]), vec![a_invoice.clone()]);
    assert_eq!(by_id["requests"][0]["messageStatusSummary"]["total"], 2);
    assert_eq!(
        search(
            json!([{"by": "messageType", "value": "order"}, {"by": "messageStatus", "value": "processed"}])
        ),
        vec![a_id.clone()]
    );
    assert_eq!(
        search(
            json!([{"by": "id", "value": [a_id, b_id]}, {"by": "messageStatus", "value": "complete"}])
        ),
        vec![b_id.clone()]
    );
    let d2 = found(
        &app,
        &acme,
        json!({"search": [{"by": "externalReference", "value": "B3"}, {"by": "messageType", "value": "invoice"}]}),
    );
    assert_eq!(payload_ids(&d2["requests"][0]), vec![a_invoice]);
    assert!(search(json!([
        {"by": "externalReference", "value": "B2"},
        {"by": "messageType", "value": "order"}
    ]))
    .is_empty());
    assert!(search(json!([
        {"by": "id", "value": c_id},
        {"by": "receivedDate", "value": "2018-10-01"}
    ]))
    .is_empty());
}

#[test]
fn paging_totals_page_boundaries_and_every_sort_both_ways() {
    let Cast {
        app,
        acme,
        a,
        b,
        c,
        d,
    } = cast();
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let (a, b, c) = (id(&a), id(&b), id(&c));

    let page = |number: Value, size: Value| {
        found(
            &app,
            &acme,
            json!({"paging": {"number": number, "size": size}}),
        )
    };
    let p1 = page(json!(1), json!(3));
    assert_eq!(
        ids(&p1),
        vec![d.clone(), c.clone(), b.clone()],
        "newest first"
    );
    assert_eq!(
        p1["paging"],
        json!({"number": 1, "size": 3, "totalRequests": 4, "totalPages": 2})
    );
    assert_eq!(ids(&page(json!(2), json!(3))), vec![a.clone()]);
    let past = page(json!(3), json!(3));
    assert!(ids(&past).is_empty());
    assert_eq!(past["paging"]["totalRequests"], 4);
    assert_eq!(
        ids(&page(json!("2"), json!("2"))),
        vec![b.clone(), a.clone()]
    );
    assert_eq!(ids(&page(json!(4), json!(1))), vec![a.clone()]);
    let all = found(&app, &acme, json!({}));
    assert_eq!(all["paging"]["totalRequests"], 4);
    assert_eq!(all["paging"]["totalPages"], 1);
    assert_eq!(ids(&all).len(), 4, "no paging: every row");

    let sorted = |by: &str, order: &str| {
        ids(&found(
            &app,
            &acme,
            json!({"sorts": [{"by": by, "order": order}]}),
        ))
    };
    let cases = [
        ("receivedDate", "asc", [&a, &b, &c, &d]),
        ("receivedDate", "desc", [&d, &c, &b, &a]),
        // D is still queued: requests not yet processed come last either way.
        ("processedDate", "asc", [&a, &b, &c, &d]),
        ("processedDate", "DESC", [&c, &b, &a, &d]),
        // D has no batch reference: last either way.
        ("batchReference", "asc", [&b, &c, &a, &d]),
        ("batchReference", "desc", [&a, &c, &b, &d]),
    ];
    for (by, order, want) in cases {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(sorted(by, order), want, "{by} {order}");
    }
}

#[test]
fn bad_searches_are_400s_naming_the_field() {
    let (app, acme, _) = acme_to_globex();
    let cases = [
        (
            json!({"search": [{"by": "sender", "value": "X"}]}),
            "invalid_search",
            "search[0].by",
            Some("externalReference"),
        ),
        (
            json!({"search": [{"value": "X"}]}),
            "invalid_search",
            "search[0].by",
            Some("messageType"),
        ),
        (
            json!({"search": [{"by": "receivedDate", "value": "29/11/2026"}]}),
            "invalid_date",
            "search[0].value",
            None,
        ),
        (
            json!({"search": [{"by": "receivedDate", "value": ["2026-11-29", "2026-11-01"]}]}),
            "invalid_date",
            "search[0].value",
            None,
        ),
        (
            json!({"search": [{"by": "receivedDate", "value": ["2026-11-29T25:00:00Z"]}]}),
            "invalid_date",
            "search[0].value",
            None,
        ),
        (
            json!({"search": [{"by": "messageStatus", "value": "lost"}]}),
            "invalid_search",
            "search[0].value",
            Some("cancelled"),
        ),
        (
            json!({"search": [{"by": "id", "value": "not-a-uuid"}]}),
            "invalid_search",
            "search[0].value",
            None,
        ),
        (
            json!({"search": [{"by": "messageType", "value": 5}]}),
            "invalid_search",
            "search[0].value",
            None,
        ),
        (
            json!({"search": [{"by": "messageType", "value": []}]}),
            "invalid_search",
            "search[0].value",
            None,
        ),
        (
            json!({"search": [{"by": "messageType", "value": "a"}, {"by": "messageType", "value": "b"}]}),
            "invalid_search",
            "search[1].by",
            None,
        ),
        (
            json!({"search": {"by": "id"}}),
            "invalid_search",
            "search",
            None,
        ),
        (
            json!({"sorts": [{"by": "size", "order": "asc"}]}),
            "invalid_sort",
            "sorts[0].by",
            Some("batchReference"),
        ),
        (
            json!({"sorts": [{"by": "receivedDate", "order": "up"}]}),
            "invalid_sort",
            "sorts[0].order",
            Some("asc"),
        ),
        (
            json!({"sorts": [{"by": "receivedDate"}, {"by": "batchReference"}]}),
            "invalid_sort",
            "sorts[1]",
            None,
        ),
        (
            json!({"paging": {"number": 0, "size": 10}}),
            "invalid_paging",
            "paging.number",
            None,
        ),
        (
            json!({"paging": {"number": 1, "size": 1001}}),
            "invalid_paging",
            "paging.size",
            Some("1000"),
        ),
        (
            json!({"paging": {"number": "one", "size": 10}}),
            "invalid_paging",
            "paging.number",
            None,
        ),
        (json!({"paging": [1, 10]}), "invalid_paging", "paging", None),
        (json!([1, 2]), "invalid_search", "body", None),
    ];
    for (body, code, field, mentions) in cases {
        let e = track(&app, &acme, &body).error(400, code);
        assert_eq!(e["field"], field, "{body}: {e}");
        if let Some(word) = mentions {
            assert!(e["message"].as_str().unwrap().contains(word), "{body}: {e}");
        }
    }
    let resp = app.call(
        "POST",
        "/api/v1/tracking",
        &[("X-Api-Key", &acme), ("Content-Type", "text/plain")],
        Some(b"{}"),
    );
    resp.error(415, "unsupported_media_type");
    let refused = app.call("POST", "/api/v1/tracking", &[], Some(b"{}"));
    refused.error(401, "unauthorized");
    assert_eq!(
        refused
            .headers
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close"),
        "an unread body ends the connection"
    );
    // An empty body is the default search.
    let resp = app.call("POST", "/api/v1/tracking", &[("X-Api-Key", &acme)], None);
    assert_eq!(resp.data(200)["paging"]["totalRequests"], 0);
}

#[test]
fn partners_and_environments_are_searched_apart() {
    let (app, acme, _globex) = acme_to_globex();
    let initech = app.partner("INITECH");
    app.route("INITECH", "GLOBEX", "order");
    let acme_test = app.key("ACME", "test");
    let mine = batch(
        &app,
        &acme,
        Some("SHARED"),
        json!([{"messageType": "order", "payload": {}}]),
    );
    let theirs = batch(
        &app,
        &initech,
        Some("SHARED"),
        json!([{"messageType": "order", "payload": {}}]),
    );
    let test = batch(
        &app,
        &acme_test,
        Some("SHARED"),
        json!([{"messageType": "order", "payload": {}}]),
    );
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let everything = json!({"search": [{"by": "externalReference", "value": "SHARED"}]});

    assert_eq!(
        ids(&found(&app, &acme, everything.clone())),
        vec![id(&mine)]
    );
    assert_eq!(
        ids(&found(&app, &initech, everything.clone())),
        vec![id(&theirs)]
    );
    assert_eq!(ids(&found(&app, &acme_test, everything)), vec![id(&test)]);
    assert_eq!(ids(&found(&app, &acme, json!({}))), vec![id(&mine)]);
    assert_eq!(ids(&found(&app, &acme_test, json!({}))), vec![id(&test)]);
    // Another's ids, or the other environment's, are simply not found.
    for (key, other) in [(&acme, &theirs), (&acme, &test), (&acme_test, &mine)] {
        let by_id = json!({"search": [{"by": "id", "value": [id(other), other["messages"][0]["id"].clone()]}]});
        assert!(ids(&found(&app, key, by_id)).is_empty());
        app.partner_get(key, &format!("/api/v1/requests/{}", id(other)))
            .error(404, "not_found");
        let mid = other["messages"][0]["id"].as_str().unwrap();
        app.partner_get(key, &format!("/api/v1/messages/{mid}"))
            .error(404, "not_found");
        app.partner_json(
            key,
            "POST",
            &format!("/api/v1/messages/{mid}/cancel"),
            &json!({}),
        )
        .error(404, "not_found");
    }
}

#[test]
fn a_message_is_cancelled_until_a_receiver_has_it() {
    let (app, acme, globex) = acme_to_globex();
    let sent = batch(
        &app,
        &acme,
        None,
        json!([
            {"messageType": "order", "payload": {"n": 1}},
            {"messageType": "order", "payload": {"n": 2}},
            {"messageType": "order", "payload": {"n": 3}},
        ]),
    );
    let mid = |i: usize| sent["messages"][i]["id"].as_str().unwrap().to_owned();
    let cancel = |key: &str, id: &str| {
        app.partner_json(
            key,
            "POST",
            &format!("/api/v1/messages/{id}/cancel"),
            &json!({}),
        )
    };
    let m = cancel(&acme, &mid(0)).data(200);
    assert_eq!(m["messageStatus"], "cancelled");
    assert_eq!(m["transmissions"][0]["status"], "cancelled");
    assert_eq!(
        cancel(&acme, &mid(0)).data(200)["messageStatus"],
        "cancelled",
        "idempotent"
    );
    // The receiver cannot cancel what it receives; an admin can (the test env is apart).
    cancel(&globex, &mid(1)).error(404, "not_found");
    app.admin(
        "POST",
        &format!("/admin/api/messages/{}/cancel?env=test", mid(1)),
        None,
    )
    .error(404, "not_found");
    let by_admin = app
        .admin(
            "POST",
            &format!("/admin/api/messages/{}/cancel", mid(1)),
            None,
        )
        .data(200);
    assert_eq!(by_admin["messageStatus"], "cancelled");

    let items = app.poll(&globex, "limit=10");
    assert_eq!(items.len(), 1, "cancelled messages are never handed out");
    assert_eq!(items[0]["messageId"], mid(2));
    let e = cancel(&acme, &mid(2)).error(409, "not_cancellable");
    assert!(e["message"].as_str().unwrap().contains("processed"), "{e}");
    cancel(&acme, &uuid::Uuid::now_v7().to_string()).error(404, "not_found");
    cancel(&acme, "nope").error(404, "not_found");

    let d = found(
        &app,
        &acme,
        json!({"search": [{"by": "messageStatus", "value": "cancelled"}]}),
    );
    assert_eq!(d["requests"][0]["messageStatusSummary"]["cancelled"], 2);
    assert_eq!(payload_ids(&d["requests"][0]), vec![mid(0), mid(1)]);
}

// ---------------------------------------------------------------------------------------
// Tokens

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    env: &'a str,
    exp: u64,
    iat: u64,
    jti: &'a str,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn bearer(app: &TestApp, token: &str, method: &str, path: &str) -> Resp {
    let auth = format!("Bearer {token}");
    app.call(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(b"{}"),
    )
}

fn mint(app: &TestApp, key: &str) -> Value {
    app.call("POST", "/api/v1/auth/token", &[("X-Api-Key", key)], None)
        .data(200)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn tokens_stand_in_for_keys_and_only_our_own_valid_ones_are_taken() {
    // Make the store first, so the test can sign tokens with the appliance's own key.
    let dir = tempfile::tempdir().unwrap();
    let secret = {
        let store = waybill::store::Store::open(dir.path(), 8).unwrap();
        let secret = store.token_key().secret.clone();
        store.close();
        secret
    };
    assert!(secret.len() >= 32, "at least 256 bits");
    let app = spawn_app_in(dir, "http", agent(), |_| {});
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "order");
    let acme_test = app.key("ACME", "test");

    // Round trip: the token works wherever the key does, in its own environment.
    let t = mint(&app, &acme);
    let token = t["token"].as_str().unwrap().to_owned();
    assert_eq!(t["tokenType"], "Bearer");
    assert_eq!(t["env"], "live");
    assert!(t["expiresIn"].as_u64().unwrap() <= 3600);
    assert!(t["expiresAt"].is_string());
    let sent = bearer(
        &app,
        &token,
        "POST",
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order",
    )
    .data(202);
    let d = bearer(&app, &token, "POST", "/api/v1/tracking").data(200);
    assert_eq!(ids(&d), vec![sent["requestId"].as_str().unwrap()]);
    let test_token = mint(&app, &acme_test)["token"].as_str().unwrap().to_owned();
    assert_eq!(
        bearer(&app, &test_token, "POST", "/api/v1/tracking").data(200)["paging"]["totalRequests"],
        0,
        "a test token searches test only"
    );

    // What the token says about itself.
    let parts: Vec<&str> = token.split('.').collect();
    let decode = |p: &str| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    let header = decode(parts[0]);
    let claims = decode(parts[1]);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], "ACME");
    assert_eq!(claims["env"], "live");
    assert_eq!(claims["iss"], "waybill");
    assert!(claims["jti"].is_string() && claims["aud"].is_string());
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(exp - iat <= 3600);
    let kid = header["kid"].as_str().unwrap().to_owned();

    // Tokens signed with the right key but wrong in another way, and ones signed otherwise.
    let sign = |header: &Value, claims: &Claims<'_>, key: &[u8]| {
        use hmac::Mac;
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap())
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    };
    let hs = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let n = now();
    let good = Claims {
        iss: "waybill",
        aud: claims["aud"].as_str().unwrap(),
        sub: "ACME",
        env: "live",
        exp: n + 600,
        iat: n,
        jti: "t",
    };
    let ok = sign(&hs, &good, &secret);
    bearer(&app, &ok, "POST", "/api/v1/tracking").data(200);
    let rejected = [
        (
            "expired",
            sign(
                &hs,
                &Claims {
                    exp: n - 120,
                    iat: n - 700,
                    ..good
                },
                &secret,
            ),
        ),
        (
            "wrong signature",
            sign(&hs, &good, b"another key of thirty-two bytes!"),
        ),
        (
            "another partner",
            sign(
                &hs,
                &Claims {
                    sub: "GLOBEX",
                    ..good
                },
                &secret,
            ),
        ),
        (
            "another environment",
            sign(
                &hs,
                &Claims {
                    env: "test",
                    ..good
                },
                &secret,
            ),
        ),
        (
            "another issuer",
            sign(
                &hs,
                &Claims {
                    iss: "elsewhere",
                    ..good
                },
                &secret,
            ),
        ),
        (
            "another audience",
            sign(
                &hs,
                &Claims {
                    aud: "other",
                    ..good
                },
                &secret,
            ),
        ),
        (
            "issued in the future",
            sign(
                &hs,
                &Claims {
                    iat: n + 600,
                    exp: n + 900,
                    ..good
                },
                &secret,
            ),
        ),
        (
            "living too long",
            sign(
                &hs,
                &Claims {
                    exp: n + 7200,
                    ..good
                },
                &secret,
            ),
        ),
        (
            "RS256 header",
            sign(&json!({"alg": "RS256", "kid": kid}), &good, &secret),
        ),
        (
            "HS512 header",
            sign(&json!({"alg": "HS512", "kid": kid}), &good, &secret),
        ),
        ("no kid", sign(&json!({"alg": "HS256"}), &good, &secret)),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(&serde_json::to_vec(&good).unwrap())
            ),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in &rejected {
        let e = bearer(&app, token, "POST", "/api/v1/tracking");
        assert_eq!(
            e.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&e.body)
        );
        e.error(401, "unauthorized");
    }
    // Within the allowed clock skew, an expired token still works.
    let skewed = sign(
        &hs,
        &Claims {
            exp: n - 10,
            iat: n - 600,
            ..good
        },
        &secret,
    );
    bearer(&app, &skewed, "POST", "/api/v1/tracking").data(200);

    // A token cannot mint another.
    bearer(&app, &token, "POST", "/api/v1/auth/token").error(403, "forbidden");
    app.call("POST", "/api/v1/auth/token", &[], None)
        .error(401, "unauthorized");

    // Revoking the minting key ends its tokens at once; another key's tokens go on.
    let second = app.key("ACME", "live");
    let other_token = mint(&app, &second)["token"].as_str().unwrap().to_owned();
    let keys = app
        .admin("GET", "/admin/api/partners/ACME/keys", None)
        .data(200);
    let key_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == kid)
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .expect("the minting key is listed");
    app.admin(
        "DELETE",
        &format!("/admin/api/partners/ACME/keys/{key_id}"),
        None,
    )
    .data(200);
    bearer(&app, &token, "POST", "/api/v1/tracking").error(401, "unauthorized");
    bearer(&app, &ok, "POST", "/api/v1/tracking").error(401, "unauthorized");
    bearer(&app, &other_token, "POST", "/api/v1/tracking").data(200);
    // Deactivating the partner ends every token of it.
    app.admin(
        "PATCH",
        "/admin/api/partners/ACME",
        Some(json!({"active": false})),
    )
    .data(200);
    bearer(&app, &other_token, "POST", "/api/v1/tracking").error(401, "unauthorized");
    // The receiver's token polls like its key.
    let g = mint(&app, &globex)["token"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {g}");
    let polled = app.call(
        "GET",
        "/api/v1/transmissions",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(polled.data(200).as_array().unwrap().len(), 1);
}

#[test]
fn the_search_index_survives_a_restart() {
    let (app, acme, _) = acme_to_globex();
    let sent = batch(
        &app,
        &acme,
        Some("KEEP"),
        json!([{"messageType": "order", "externalReference": "k-1", "payload": {}}]),
    );
    let dir = app.stop();
    let app = spawn_app_in(dir, "http", agent(), |_| {});
    let d = found(
        &app,
        &acme,
        json!({"search": [{"by": "externalReference", "value": "k-1"}]}),
    );
    assert_eq!(ids(&d), vec![sent["id"].as_str().unwrap()]);
}
