//! `/metrics`: the exposition parses, and its figures move with the traffic.

use std::collections::HashMap;

use crate::{acme_to_globex, spawn_app_with, TestApp};

/// The scraped samples, by name and labels (`name{k="v",...}` with labels sorted).
fn scrape(app: &TestApp, headers: &[(&str, &str)]) -> HashMap<String, f64> {
    let res = app.call("GET", "/metrics", headers, None);
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let ct = res.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = String::from_utf8(res.body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => continue,
        };
        let key = if labels.is_empty() {
            s.metric
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        out.insert(key, value);
    }
    out
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing; have {:?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn the_figures_move_as_messages_flow() {
    let (app, acme, globex) = acme_to_globex();
    let before = scrape(&app, &[]);
    assert_eq!(get(&before, "waybill_messages_accepted_total"), 0.0);
    assert!(get(&before, "waybill_free_disk_bytes") > 0.0);
    assert!(get(&before, "waybill_uptime_seconds") >= 0.0);

    for i in 0..3 {
        app.send_doc(
            &acme,
            "ACME",
            Some("GLOBEX"),
            "order",
            format!(r#"{{"n":{i}}}"#).as_bytes(),
        )
        .data(202);
    }
    let items = app.poll(&globex, "");
    assert_eq!(items.len(), 3);
    let uuid = items[0]["uuid"].as_str().unwrap();
    app.ack(&globex, uuid, "processed").data(200);
    // A made-up path is counted under one label, not its own.
    assert_eq!(app.call("GET", "/no/such/path/42", &[], None).status, 404);

    let after = scrape(&app, &[]);
    assert_eq!(get(&after, "waybill_messages_accepted_total"), 3.0);
    assert_eq!(get(&after, "waybill_transmissions_handed_out_total"), 3.0);
    assert_eq!(get(&after, "waybill_transmissions_acknowledged_total"), 1.0);
    assert_eq!(
        get(
            &after,
            r#"waybill_http_requests_total{method="POST",route="/api/v1/inbound",status="202"}"#
        ),
        3.0
    );
    assert_eq!(
        get(
            &after,
            r#"waybill_http_requests_total{method="PUT",route="/api/v1/transmissions/status/:uuid",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            r#"waybill_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        1.0
    );
    assert!(!after.keys().any(|k| k.contains("/no/such/path")));
    // Levels come from the kept counters: three live messages, one of them done.
    let live: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("waybill_messages{") && k.contains(r#"env="live""#))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(live, 3.0, "{after:?}");
    assert_eq!(
        get(
            &after,
            r#"waybill_queue_depth{queue="pending_transmissions"}"#
        ) + get(
            &after,
            r#"waybill_queue_depth{queue="leased_transmissions"}"#
        ),
        2.0
    );
    // Every write went through the writer: rounds were flushed and timed.
    assert!(get(&after, "waybill_writer_group_size_count") >= 1.0);
    assert!(get(&after, "waybill_writer_flush_duration_seconds_count") >= 1.0);
    assert!(get(&after, "waybill_payload_log_size_bytes") >= 3.0 * 7.0);
    assert!(get(&after, "waybill_store_size_bytes") > 0.0);
}

#[test]
fn a_request_id_is_echoed_or_made() {
    let (app, _, _) = acme_to_globex();
    let res = app.call("GET", "/healthz", &[("X-Request-Id", "abc-123")], None);
    assert_eq!(res.headers["x-request-id"], "abc-123");
    let res = app.call(
        "GET",
        "/healthz",
        &[("X-Request-Id", "bad id\twith spaces")],
        None,
    );
    let made = res.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{made}");
    let other = app.call("GET", "/healthz", &[], None);
    assert_ne!(other.headers["x-request-id"].to_str().unwrap(), made);
}

#[test]
fn a_metrics_token_guards_the_endpoint() {
    let app = spawn_app_with(|c| c.metrics.token = "scrape-secret-1".into());
    assert_eq!(app.call("GET", "/metrics", &[], None).status, 401);
    let wrong = app.call("GET", "/metrics", &[("Authorization", "Bearer nope")], None);
    assert_eq!(wrong.status, 401);
    let m = scrape(&app, &[("Authorization", "Bearer scrape-secret-1")]);
    assert!(m.contains_key("waybill_uptime_seconds"));
}

#[test]
fn a_burst_of_bad_keys_from_one_address_is_answered_429() {
    let app = spawn_app_with(|c| c.limits.auth_failures_per_minute = 5);
    let good = app.partner("ACME");
    for i in 0..5 {
        let bad = app.partner_get(&format!("wb_live_wrong{i}"), "/api/v1/transmissions");
        assert_eq!(bad.status, 401, "failure {i}");
    }
    let blocked = app.partner_get("wb_live_wrong-again", "/api/v1/transmissions");
    blocked.error(429, "too_many_failures");
    let wait: u64 = blocked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&wait), "{wait}");
    // The address is held back whatever it presents, so guessing cannot go on in
    // between with a known key; other callers (and probes) are not affected.
    app.partner_get(&good, "/api/v1/transmissions")
        .error(429, "too_many_failures");
    assert_eq!(app.call("GET", "/readyz", &[], None).status, 200);
    assert_eq!(app.call("GET", "/metrics", &[], None).status, 200);
    // The admin token is one more credential to guess: held back the same way.
    app.admin("GET", "/admin/api/partners", None)
        .error(429, "too_many_failures");
}
