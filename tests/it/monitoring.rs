//! The Grafana dashboard and the Prometheus alert rules under `packaging/` name only
//! metrics a live server's `/metrics` exposes, and the rules pass promtool's checks and
//! their unit tests.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::spawn_app;

/// The sample names a live exposition can hold: every family it declares, with the
/// suffixes its type gives samples.
fn exposed_names() -> HashSet<String> {
    let app = spawn_app();
    // A family shows once it has a sample: one push attempt (to a closed port) gives the
    // delivery metrics theirs.
    let acme = app.partner("ACME");
    app.admin(
        "POST",
        "/admin/api/partners",
        Some(json!({"code": "GLOBEX", "name": "Globex", "pushUrl": "http://127.0.0.1:9/in"})),
    )
    .data(201);
    app.route("ACME", "GLOBEX", "order");
    app.send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{}")
        .data(202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let res = app.call("GET", "/metrics", &[], None);
        assert_eq!(res.status, 200);
        let text = String::from_utf8(res.body).unwrap();
        if text.contains("waybill_delivery_duration_seconds_count") {
            break text;
        }
        assert!(Instant::now() < deadline, "no push was attempted");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut names = HashSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        }
    }
    assert!(names.contains("waybill_uptime_seconds"), "{text}");
    names
}

/// Every `waybill_…` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("waybill_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_exposed_metrics() {
    let exposed = exposed_names();

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("packaging/grafana/waybill-dashboard.json")).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10);

    let docs = yaml_rust2::YamlLoader::load_from_str(&repo_file(
        "packaging/prometheus/waybill-alerts.yml",
    ))
    .unwrap();
    let rules = docs[0]["groups"][0]["rules"].as_vec().unwrap();
    let mut alerts = HashSet::new();
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        assert!(rule["for"].as_str().is_some(), "{name}");
        assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
        exprs.push(rule["expr"].as_str().unwrap().to_owned());
        alerts.insert(name.to_owned());
    }
    for wanted in [
        "WaybillDiskLow",
        "WaybillQueueGrowing",
        "WaybillEndpointDisabled",
        "WaybillWriterStalled",
        "WaybillDown",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing");
    }

    let mut used = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "{name} (in `{expr}`) is not in /metrics; exposed: {exposed:?}"
            );
            used += 1;
        }
    }
    assert!(used >= exprs.len(), "every expression names a metric");
}

/// Prometheus's own tool checks the rules and runs their unit tests
/// (`packaging/prometheus/waybill-alerts.test.yml`): each alert fires on the series that
/// should raise it and stays quiet on a healthy appliance's. `.ci/test` installs promtool
/// (Debian's `prometheus`); without it this test fails rather than skips.
#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    for args in [
        ["check", "rules", "waybill-alerts.yml"],
        ["test", "rules", "waybill-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("promtool (Debian's prometheus package) is needed: {e}"));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
