//! Live and test side by side on one appliance: nothing crosses over in either direction.

use serde_json::json;

use crate::spawn_app;

#[test]
fn live_and_test_traffic_never_cross() {
    let app = spawn_app();
    let acme_live = app.partner("ACME");
    let globex_live = app.partner("GLOBEX");
    let acme_test = app.key("ACME", "test");
    let globex_test = app.key("GLOBEX", "test");
    app.route("ACME", "GLOBEX", "order");

    let live = app
        .send_doc(
            &acme_live,
            "ACME",
            Some("GLOBEX"),
            "order",
            br#"{"env":"live"}"#,
        )
        .data(202);
    let test = app
        .send_doc(
            &acme_test,
            "ACME",
            Some("GLOBEX"),
            "order",
            br#"{"env":"test"}"#,
        )
        .data(202);
    let doc = app
        .partner_json(
            &acme_test,
            "POST",
            "/api/v1/documents/order",
            &json!({"env": "test-doc"}),
        )
        .data(201);

    let live_items = app.poll(&globex_live, "limit=100");
    assert_eq!(live_items.len(), 1, "a live poll sees live messages only");
    assert_eq!(live_items[0]["payload"], json!({"env": "live"}));
    let test_items = app.poll(&globex_test, "limit=100");
    assert_eq!(test_items.len(), 2, "a test poll sees test messages only");
    assert!(test_items.iter().all(|t| t["payload"]["env"] != "live"));

    // Guessing the other environment's ids gets 404, in both directions.
    let live_uuid = live["transmissions"][0]["uuid"].as_str().unwrap();
    let test_uuid = test["transmissions"][0]["uuid"].as_str().unwrap();
    for (key, uuid) in [(&globex_test, live_uuid), (&globex_live, test_uuid)] {
        app.partner_get(key, &format!("/api/v1/transmissions/{uuid}"))
            .error(404, "not_found");
        app.partner_get(key, &format!("/api/v1/transmissions/{uuid}/payload"))
            .error(404, "not_found");
        app.ack(key, uuid, "processed").error(404, "not_found");
    }
    app.partner_get(&acme_test, live["trackingLocation"].as_str().unwrap())
        .error(404, "not_found");
    app.partner_get(&acme_live, test["trackingLocation"].as_str().unwrap())
        .error(404, "not_found");
    let doc_path = format!("/api/v1/documents/order/{}", doc["id"].as_str().unwrap());
    app.partner_get(&acme_live, &doc_path)
        .error(404, "not_found");
    app.partner_get(&acme_test, &doc_path).data(200);

    // Acknowledging in test leaves live untouched, and the reverse.
    app.ack(&globex_test, test_uuid, "processed").data(200);
    assert_eq!(app.poll(&globex_live, "").len(), 1);
    app.ack(&globex_live, live_uuid, "processed").data(200);
    assert!(app.poll(&globex_live, "").is_empty());
    assert_eq!(
        app.poll(&globex_test, "").len(),
        1,
        "only the test document is left in test"
    );
}

#[test]
fn live_only_routes_refuse_test_messages() {
    let app = spawn_app();
    let acme_live = app.partner("ACME");
    app.partner("GLOBEX");
    let acme_test = app.key("ACME", "test");
    let r = app
        .admin("POST", "/admin/api/routes", Some(json!({"sender": "ACME", "receiver": "GLOBEX", "doctype": "invoice", "liveOnly": true})))
        .data(201);
    assert_eq!(r["liveOnly"], true);
    app.send_doc(&acme_live, "ACME", Some("GLOBEX"), "invoice", b"{}")
        .data(202);
    app.send_doc(&acme_test, "ACME", Some("GLOBEX"), "invoice", b"{}")
        .error(403, "no_route");
    app.send_doc(&acme_test, "ACME", None, "invoice", b"{}")
        .error(403, "no_route");
    app.route("ACME", "GLOBEX", "order");
    app.send_doc(&acme_test, "ACME", None, "order", b"{}")
        .data(202);
}

#[test]
fn partners_have_a_separate_test_push_url() {
    let app = spawn_app();
    let p = app
        .admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": "GLOBEX", "name": "Globex", "pushUrl": "https://globex.example/in", "testPushUrl": "https://test.globex.example/in"})),
        )
        .data(201);
    assert_eq!(p["pushUrl"], "https://globex.example/in");
    assert_eq!(p["testPushUrl"], "https://test.globex.example/in");
    let p = app
        .admin(
            "PATCH",
            "/admin/api/partners/GLOBEX",
            Some(json!({"testPushUrl": null})),
        )
        .data(200);
    assert!(p["testPushUrl"].is_null());
    assert_eq!(p["pushUrl"], "https://globex.example/in");
    app.admin(
        "PATCH",
        "/admin/api/partners/GLOBEX",
        Some(json!({"testPushUrl": "mailto:x"})),
    )
    .error(422, "validation_failed");
}
