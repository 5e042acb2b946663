//! The admin API over everything: messages of every partner with filters and paging, one
//! message with its attempts and payload, cancel and redeliver, bulk operations, jobs,
//! deliveries, stats, keys' last use, and the pruning of the audit log.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::receiver::Receiver;
use crate::{acme_to_globex, agent, spawn_app_in, TestApp};

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(app: &TestApp, key: &str, sender: &str, doctype: &str, body: &str) -> Value {
    app.send_doc(key, sender, Some("GLOBEX"), doctype, body.as_bytes())
        .data(202)
}

fn items(app: &TestApp, path: &str) -> (Vec<Value>, Value) {
    let d = app.admin("GET", path, None).data(200);
    (
        d["items"].as_array().unwrap().clone(),
        d["nextCursor"].clone(),
    )
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// ACME and INITECH both send orders to GLOBEX.
fn three_partners() -> (TestApp, String, String, String) {
    let (app, acme, globex) = acme_to_globex();
    let initech = app.partner("INITECH");
    app.route("INITECH", "GLOBEX", "order");
    app.route("ACME", "GLOBEX", "invoice");
    (app, acme, globex, initech)
}

#[test]
fn messages_of_every_partner_are_filtered_paged_and_shown_whole() {
    let (app, acme, globex, initech) = three_partners();
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(send(&app, &acme, "ACME", "order", &format!("{{\"n\":{i}}}"))["id"].clone());
    }
    sent.push(send(&app, &initech, "INITECH", "order", "{\"n\":3}")["id"].clone());
    sent.push(send(&app, &acme, "ACME", "invoice", "{\"n\":4}")["id"].clone());

    let (all, next) = items(&app, "/admin/api/messages");
    assert!(next.is_null());
    let mut newest_first: Vec<String> = sent
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    newest_first.reverse();
    assert_eq!(ids(&all), newest_first, "every partner's, newest first");
    assert_eq!(all[0]["sender"], "ACME");
    assert_eq!(all[0]["transmissions"][0]["receiver"], "GLOBEX");

    for (query, n) in [
        ("sender=ACME", 4),
        ("sender=INITECH&receiver=GLOBEX", 1),
        ("messageType=INVOICE", 1),
        ("messageType=order,invoice&sender=ACME", 4),
        ("receiver=ACME", 0),
        ("messageStatus=queued", 5),
        ("messageStatus=complete", 0),
        ("env=test", 0),
        (&format!("id={}", newest_first[1]), 1),
    ] {
        let (list, _) = items(&app, &format!("/admin/api/messages?{query}"));
        assert_eq!(list.len(), n, "{query}: {list:?}");
    }
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let (list, _) = items(&app, &format!("/admin/api/messages?receivedDate={today}"));
    assert_eq!(list.len(), 5);
    let (list, _) = items(&app, "/admin/api/messages?receivedDate=2001-01-01");
    assert!(list.is_empty());

    // Pages of two, each going on from the cursor of the one before.
    let mut seen = Vec::new();
    let mut path = "/admin/api/messages?limit=2".to_owned();
    loop {
        let (page, next) = items(&app, &path);
        assert!(page.len() <= 2);
        seen.extend(ids(&page));
        match next.as_str() {
            Some(c) => path = format!("/admin/api/messages?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first, "no message twice, none left out");

    // A status filter follows the traffic.
    let polled = app.poll(&globex, "limit=1");
    let uuid = polled[0]["uuid"].as_str().unwrap();
    app.ack(&globex, uuid, "processed").data(200);
    let (done, _) = items(&app, "/admin/api/messages?messageStatus=complete");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["id"], polled[0]["messageId"]);

    // One message, whole.
    let id = newest_first[1].clone();
    let m = app
        .admin("GET", &format!("/admin/api/messages/{id}"), None)
        .data(200);
    assert_eq!(m["sender"], "INITECH");
    assert_eq!(m["env"], "live");
    assert_eq!(m["payload"]["bytes"], 7);
    assert_eq!(m["payload"]["contentType"], "application/json");
    assert_eq!(m["history"][0]["status"], "queued");
    assert!(m["transmissions"][0]["attemptLog"].is_array(), "{m}");
    let raw = app.admin("GET", &format!("/admin/api/messages/{id}/payload"), None);
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"{\"n\":3}");
    assert_eq!(raw.headers["content-type"], "application/json");

    // Mistakes are 4xx and name the parameter.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("messageStatus=lost", "messageStatus"),
        ("env=prod", "env"),
        ("cursor=nope", "cursor"),
        ("receivedDate=yesterday", "receivedDate"),
        ("id=12", "id"),
        ("sender=no%20such", "sender"),
    ] {
        let r = app.admin("GET", &format!("/admin/api/messages?{query}"), None);
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.json()["error"]["field"], field, "{query}");
    }
    let nil = uuid::Uuid::nil();
    app.admin("GET", &format!("/admin/api/messages/{nil}"), None)
        .error(404, "not_found");
    app.admin("GET", &format!("/admin/api/messages/{nil}/payload"), None)
        .error(404, "not_found");
}

#[test]
fn one_message_is_cancelled_and_another_redelivered() {
    let (app, acme, globex) = acme_to_globex();
    let a = send(&app, &acme, "ACME", "order", "{}")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = app
        .admin("POST", &format!("/admin/api/messages/{a}/cancel"), None)
        .data(200);
    assert_eq!(c["messageStatus"], "cancelled");
    assert!(app.poll(&globex, "").is_empty(), "never handed out");

    let b = send(&app, &acme, "ACME", "order", "{}")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.admin("POST", &format!("/admin/api/messages/{b}/redeliver"), None)
        .error(409, "not_redeliverable");
    let item = app.poll(&globex, "").remove(0);
    app.ack(&globex, item["uuid"].as_str().unwrap(), "failed")
        .data(200);
    let r = app
        .admin("POST", &format!("/admin/api/messages/{b}/redeliver"), None)
        .data(200);
    assert_eq!(r["requeued"], 1);
    assert_eq!(r["messageStatus"], "queued");
    let again = app.poll(&globex, "");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["messageId"], b.as_str());
    app.admin(
        "POST",
        &format!("/admin/api/messages/{}/redeliver", uuid::Uuid::nil()),
        None,
    )
    .error(404, "not_found");
}

fn wait_done(app: &TestApp, location: &str) -> Value {
    let mut last = Value::Null;
    wait_until(30, "the bulk operation completes", || {
        last = app.admin("GET", location, None).data(200);
        last["state"] == "completed"
    });
    last
}

#[test]
fn bulk_redelivery_and_cancel_work_through_a_filter_to_its_total() {
    let (app, acme, globex, initech) = three_partners();
    for _ in 0..5 {
        send(&app, &acme, "ACME", "order", "{}");
    }
    send(&app, &initech, "INITECH", "order", "{}");
    let items_polled = app.poll(&globex, "limit=10");
    assert_eq!(items_polled.len(), 6);
    // Four of ACME's and INITECH's one fail; one of ACME's is processed.
    let mut acme_failed = 0;
    for item in &items_polled {
        let uuid = item["uuid"].as_str().unwrap();
        let fail = item["sender"] == "INITECH" || acme_failed < 4;
        if item["sender"] == "ACME" && fail {
            acme_failed += 1;
        }
        app.ack(&globex, uuid, if fail { "failed" } else { "processed" })
            .data(200);
    }

    let r = app.admin(
        "POST",
        "/admin/api/bulk-operations",
        Some(json!({
            "action": "redeliver",
            "filter": {"sender": "ACME", "messageStatus": ["failed"]},
        })),
    );
    let op = r.data(202);
    assert_eq!(op["action"], "redeliver");
    let location = op["location"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["location"], location.as_str());
    let done = wait_done(&app, &location);
    assert_eq!(done["total"], 4, "{done}");
    assert_eq!(done["processed"], 4, "{done}");
    assert_eq!(done["changed"], 4, "{done}");
    assert!(done["finishedAt"].is_string());
    let (left, _) = items(&app, "/admin/api/messages?messageStatus=failed");
    assert_eq!(left.len(), 1, "only INITECH's is still failed");
    assert_eq!(left[0]["sender"], "INITECH");
    assert_eq!(app.poll(&globex, "limit=10").len(), 4, "queued again");

    // Cancel every ACME order still queued: three new ones.
    for _ in 0..3 {
        send(&app, &acme, "ACME", "order", "{}");
    }
    let op = app
        .admin(
            "POST",
            "/admin/api/bulk-operations",
            Some(json!({
                "action": "cancel",
                "filter": {"sender": "ACME", "messageStatus": "queued"},
            })),
        )
        .data(202);
    let done = wait_done(&app, op["location"].as_str().unwrap());
    assert_eq!(
        (done["total"].clone(), done["changed"].clone()),
        (json!(3), json!(3))
    );
    let (cancelled, _) = items(&app, "/admin/api/messages?messageStatus=cancelled");
    assert_eq!(cancelled.len(), 3);

    let (ops, _) = items(&app, "/admin/api/bulk-operations");
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0]["action"], "cancel", "newest first");

    for body in [
        json!({"action": "delete", "filter": {}}),
        json!({"filter": {}}),
        json!({"action": "cancel", "filter": {"externalReference": "R-1"}}),
    ] {
        let r = app.admin("POST", "/admin/api/bulk-operations", Some(body.clone()));
        assert_eq!(r.status, 422, "{body}");
    }
    let r = app.admin(
        "POST",
        "/admin/api/bulk-operations",
        Some(json!({"action": "cancel", "filter": {"messageStatus": "lost"}})),
    );
    assert_eq!(r.status, 400);
    app.admin(
        "GET",
        &format!("/admin/api/bulk-operations/{}", uuid::Uuid::nil()),
        None,
    )
    .error(404, "not_found");
}

#[test]
fn jobs_are_listed_by_page_and_shown_with_their_request_and_response() {
    let (app, acme, _) = acme_to_globex();
    let mut jobs = Vec::new();
    for i in 0..3 {
        let r = app.call(
            "POST",
            "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order",
            &[
                ("X-Api-Key", &acme),
                ("Content-Type", "application/json"),
                ("Waybill-Background", "none"),
            ],
            Some(format!("{{\"job\":{i}}}").as_bytes()),
        );
        jobs.push(r.data(202)["id"].as_str().unwrap().to_owned());
    }
    let id = jobs[0].clone();
    let mut job = Value::Null;
    wait_until(30, "the job completes", || {
        job = app
            .admin("GET", &format!("/admin/api/jobs/{id}"), None)
            .data(200);
        job["state"] == "completed"
    });
    assert_eq!(job["partner"], "ACME");
    assert_eq!(job["request"]["method"], "POST");
    assert_eq!(job["request"]["body"], "{\"job\":0}");
    assert_eq!(job["response"]["status"], 202);
    assert!(
        job["response"]["body"]
            .as_str()
            .unwrap()
            .contains("\"requestId\""),
        "{job}"
    );
    app.admin("POST", &format!("/admin/api/jobs/{id}/cancel"), None)
        .error(409, "not_cancellable");

    let mut seen = Vec::new();
    let mut path = "/admin/api/jobs?limit=1&partner=ACME".to_owned();
    loop {
        let d = app.admin("GET", &path, None).data(200);
        seen.extend(
            d["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match d["nextCursor"].as_str() {
            Some(c) => path = format!("/admin/api/jobs?limit=1&partner=ACME&cursor={c}"),
            None => break,
        }
    }
    jobs.reverse();
    assert_eq!(seen, jobs, "every job once, newest first");
    app.admin(
        "GET",
        &format!("/admin/api/jobs/{}", uuid::Uuid::nil()),
        None,
    )
    .error(404, "not_found");
}

#[test]
fn deliveries_are_listed_as_due_held_or_failed() {
    let receiver = Receiver::start(vec![]);
    let (app, acme, globex) = acme_to_globex();
    app.partner("HOOKS");
    app.route("ACME", "HOOKS", "order");
    app.admin(
        "PATCH",
        "/admin/api/partners/HOOKS",
        Some(json!({"pushUrl": receiver.url, "pushPaused": true})),
    )
    .data(200);
    app.send_doc(&acme, "ACME", Some("HOOKS"), "order", b"{}")
        .data(202);
    let mut held = Vec::new();
    wait_until(10, "the push is held", || {
        held = items(&app, "/admin/api/deliveries?state=held").0;
        held.len() == 1
    });
    assert_eq!(held[0]["held"], true);
    assert_eq!(held[0]["target"]["receiver"], "HOOKS");
    assert_eq!(held[0]["endpoint"], "p:live:HOOKS");
    assert!(items(&app, "/admin/api/deliveries?state=due").0.is_empty());

    send(&app, &acme, "ACME", "order", "{}");
    let item = app.poll(&globex, "").remove(0);
    app.ack(&globex, item["uuid"].as_str().unwrap(), "failed")
        .data(200);
    let (failed, next) = items(&app, "/admin/api/deliveries?state=failed");
    assert!(next.is_null());
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["receiver"], "GLOBEX");
    assert_eq!(failed[0]["transmission"], item["uuid"]);
    assert!(
        items(&app, "/admin/api/deliveries?state=failed&receiver=HOOKS")
            .0
            .is_empty()
    );
    for query in [
        "state=lost",
        "state=held&cursor=xyz",
        "state=failed&cursor=1",
    ] {
        let r = app.admin("GET", &format!("/admin/api/deliveries?{query}"), None);
        assert_eq!(r.status, 400, "{query}");
    }
}

fn stats(app: &TestApp) -> Value {
    app.admin("GET", "/admin/api/stats", None).data(200)
}

#[test]
fn stats_move_as_traffic_flows() {
    let (app, acme, globex) = acme_to_globex();
    let s = stats(&app);
    assert_eq!(s["messages"]["live"]["total"], 0);
    assert!(s["storeBytes"].as_u64().unwrap() > 0);
    assert!(s["uptimeSeconds"].is_u64());
    assert_eq!(s["perMinute"].as_array().unwrap().len(), 60);

    for _ in 0..3 {
        send(&app, &acme, "ACME", "order", "{}");
    }
    let test_key = app.key("ACME", "test");
    app.key("GLOBEX", "test");
    app.send_doc(&test_key, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let s = stats(&app);
    assert_eq!(s["messages"]["live"]["queued"], 3, "{s}");
    assert_eq!(s["messages"]["test"]["queued"], 1, "{s}");
    assert_eq!(s["queues"]["pendingTransmissions"], 4, "{s}");
    assert_eq!(s["lastHour"]["intake"], 4, "{s}");

    let polled = app.poll(&globex, "limit=10&lease=60");
    assert_eq!(polled.len(), 3);
    let s = stats(&app);
    assert_eq!(s["messages"]["live"]["queued"], 0, "{s}");
    assert_eq!(s["messages"]["live"]["processed"], 3, "{s}");
    assert_eq!(s["queues"]["leasedTransmissions"], 3, "{s}");
    assert_eq!(s["lastHour"]["delivered"], 3, "{s}");

    for item in &polled[..2] {
        app.ack(&globex, item["uuid"].as_str().unwrap(), "processed")
            .data(200);
    }
    let s = stats(&app);
    assert_eq!(s["messages"]["live"]["complete"], 2, "{s}");
    assert_eq!(s["messages"]["live"]["processed"], 1, "{s}");
    assert_eq!(s["messages"]["live"]["total"], 3, "{s}");
    assert_eq!(s["queues"]["leasedTransmissions"], 1, "{s}");
    assert_eq!(s["queues"]["pendingTransmissions"], 2, "{s}");
}

#[test]
fn keys_show_when_they_were_last_used() {
    let (app, acme, _) = acme_to_globex();
    let keys = app
        .admin("GET", "/admin/api/partners/GLOBEX/keys", None)
        .data(200);
    assert!(keys[0]["lastUsedAt"].is_null(), "{keys}");
    send(&app, &acme, "ACME", "order", "{}");
    let p = app.admin("GET", "/admin/api/partners/ACME", None).data(200);
    assert!(p["keys"][0]["lastUsedAt"].is_string(), "{p}");
    assert!(p["endpointHealth"].is_object());
    assert!(p["keys"][0].get("key").is_none(), "no secret in a listing");
}

#[test]
fn audit_entries_past_retention_are_pruned() {
    let app = crate::spawn_app();
    app.partner("ACME");
    let (audit, _) = items(&app, "/admin/api/audit");
    assert!(!audit.is_empty());
    let dir = app.stop();
    std::thread::sleep(Duration::from_millis(20));
    let app = spawn_app_in(dir, "http", agent(), |c| c.retention.days = 0);
    wait_until(30, "the audit log is pruned", || {
        items(&app, "/admin/api/audit").0.is_empty()
    });
}
