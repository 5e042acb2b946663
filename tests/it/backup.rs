//! Backup, restore and export, end to end: the real server, the real binary for the CLI.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::{acme_to_globex, spawn_app_in, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_waybill");

/// The backup bytes, fetched over HTTP with the admin token.
fn fetch_backup(app: &TestApp) -> Vec<u8> {
    let auth = format!("Bearer {}", app.token);
    let r = app.call(
        "GET",
        "/admin/api/backup",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert!(r.headers.get("content-length").is_none(), "streamed");
    r.body
}

fn restore(file: &std::path::Path, dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// Every message of the admin listing (live), by id.
fn all_messages(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let d = app
            .admin(
                "GET",
                &format!("/admin/api/messages?limit=500{cursor}"),
                None,
            )
            .data(200);
        out.extend(d["items"].as_array().unwrap().iter().cloned());
        match d["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

fn payload(app: &TestApp, id: &str) -> Vec<u8> {
    let auth = format!("Bearer {}", app.token);
    let r = app.call(
        "GET",
        &format!("/admin/api/messages/{id}/payload"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200);
    r.body
}

#[test]
fn a_backup_taken_under_load_restores_to_one_consistent_moment() {
    let (app, acme, globex) = acme_to_globex();
    // Some history before: a processed, an acknowledged and a queued message, a job-free
    // subscription and a schema, so every kind of record travels.
    let mut before = Vec::new();
    for i in 0..30 {
        let r = app.send_doc(
            &acme,
            "ACME",
            Some("GLOBEX"),
            "order",
            format!(r#"{{"n":{i}}}"#).as_bytes(),
        );
        before.push(r.data(202)["id"].as_str().unwrap().to_owned());
    }
    let items = app.poll(&globex, "limit=5");
    for it in &items[..3] {
        app.ack(&globex, it["uuid"].as_str().unwrap(), "processed")
            .data(200);
    }
    let sub = app.partner_json(
        &globex,
        "POST",
        "/api/v1/subscriptions",
        &json!({"systemName": "erp", "url": "http://127.0.0.1:9/hook?ids={ids}", "events": ["message.status"]}),
    );
    assert!(
        sub.status == 201 || sub.status == 200,
        "{}",
        String::from_utf8_lossy(&sub.body)
    );

    // Load while the backup runs: three senders, each keeping what was acknowledged.
    let app = Arc::new(app);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let senders: Vec<_> = (0..3)
        .map(|s| {
            let (app, stop, acked, key) = (
                Arc::clone(&app),
                Arc::clone(&stop),
                Arc::clone(&acked),
                acme.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let body = format!(r#"{{"sender":{s},"n":{n}}}"#);
                    let r = app.send_doc(&key, "ACME", Some("GLOBEX"), "order", body.as_bytes());
                    if r.status == 202 {
                        acked
                            .lock()
                            .unwrap()
                            .push(r.json()["data"]["id"].as_str().unwrap().to_owned());
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // Wait until load is under way, then back up.
    while acked.lock().unwrap().len() < 20 {
        std::thread::yield_now();
    }
    let acked_before_backup: Vec<String> = acked.lock().unwrap().clone();
    let file = fetch_backup(&app);
    let acked_after_backup: Vec<String> = acked.lock().unwrap().clone();
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }
    let app = Arc::into_inner(app).expect("the senders are done");

    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("store.wbk");
    std::fs::write(&path, &file).unwrap();

    // A cut file and a flipped byte are refused, and nothing is written.
    let cut = work.path().join("cut.wbk");
    std::fs::write(&cut, &file[..file.len() / 2]).unwrap();
    let target = work.path().join("cut-target");
    let out = restore(&cut, &target);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{out:?}"
    );
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().count() == 0);
    let flipped = work.path().join("flipped.wbk");
    let mut bad = file.clone();
    let middle = bad.len() / 3;
    bad[middle] ^= 0x40;
    std::fs::write(&flipped, &bad).unwrap();
    let out = restore(&flipped, &target);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{out:?}"
    );
    // Never into a directory in use.
    let out = restore(&path, app.dir.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{out:?}"
    );

    let restored_dir = tempfile::tempdir().unwrap();
    let out = restore(&path, restored_dir.path());
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("messages"), "{report}");

    let original = app.stop();
    let copy = spawn_app_in(restored_dir, "http", crate::agent(), |_| {});
    let messages = all_messages(&copy);
    let ids: std::collections::HashSet<&str> =
        messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    // Every message acknowledged before the backup began is there, with its payload.
    for id in before.iter().chain(&acked_before_backup) {
        assert!(
            ids.contains(id.as_str()),
            "{id} acknowledged before the backup is missing"
        );
    }
    // Nothing that was never acknowledged-or-sent by the end of the backup appears: every
    // message is one of those the load created, acknowledged at the latest when the
    // senders stopped.
    let all_acked: std::collections::HashSet<String> =
        acked.lock().unwrap().iter().cloned().collect();
    for id in &ids {
        let id = (*id).to_owned();
        assert!(
            before.contains(&id) || all_acked.contains(&id),
            "{id} came from nowhere"
        );
    }
    assert!(ids.len() >= before.len() + acked_before_backup.len());
    let _ = acked_after_backup;
    for m in messages.iter().step_by(7) {
        let id = m["id"].as_str().unwrap();
        let body = payload(&copy, id);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["n"].is_number(), "{v}");
    }
    // One moment: the counters kept by the writer agree with the messages themselves.
    let stats = copy.admin("GET", "/admin/api/stats", None).data(200);
    let by_status = |s: &str| messages.iter().filter(|m| m["messageStatus"] == s).count() as u64;
    assert_eq!(
        stats["messages"]["live"]["total"],
        messages.len() as u64,
        "{stats}"
    );
    for s in ["queued", "processing", "processed"] {
        assert_eq!(stats["messages"]["live"][s], by_status(s), "{s}: {stats}");
    }
    // The poll queue holds exactly the transmissions not yet acknowledged (handed out
    // without a lease, they stay in it).
    let waiting = by_status("queued") + by_status("processed");
    assert_eq!(stats["queues"]["pendingTransmissions"], waiting, "{stats}");
    // Keys still authenticate (their hashes travelled), routes and subscriptions are there.
    let polled = copy.poll(&globex, "limit=100");
    assert!(!polled.is_empty());
    let routes = copy.admin("GET", "/admin/api/routes", None).data(200);
    assert_eq!(routes.as_array().unwrap().len(), 1);
    let subs = copy.partner_get(&globex, "/api/v1/subscriptions").data(200);
    assert_eq!(subs.as_array().map_or(0, |a| a.len()), 1, "{subs}");
    drop(copy);
    drop(original);
}

#[test]
fn the_cli_backs_up_a_running_server_and_export_gives_the_range_as_json_lines() {
    let (app, acme, _globex) = acme_to_globex();
    let first = app
        .send_doc(
            &acme,
            "ACME",
            Some("GLOBEX"),
            "order",
            br#"{"n": 1,  "x": "a b"}"#,
        )
        .data(202);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let middle = time::OffsetDateTime::now_utc();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", b"{\"n\":\n2}")
        .data(202);
    let third = app
        .call(
            "POST",
            "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order",
            &[("X-Api-Key", &acme), ("Content-Type", "text/plain")],
            Some(b"plain\ntext"),
        )
        .data(202);

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.wbk");
    let out = Command::new(BIN)
        .arg("backup")
        .arg(&file)
        .arg("--data-dir")
        .arg(app.dir.path())
        .env("WAYBILL_URL", &app.base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(file.exists() && !work.path().join("b.wbk.partial").exists());
    assert!(String::from_utf8_lossy(&out.stdout).contains("writes were held for"));

    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let auth = format!("Bearer {}", app.token);
    let export = |q: &str| {
        app.call(
            "GET",
            &format!("/admin/api/export?{q}"),
            &[("Authorization", &auth)],
            None,
        )
    };
    let r = export(&format!("since={}&payloads=true", fmt(middle)));
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = String::from_utf8(r.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["id"], second["id"]);
    assert_eq!(lines[0]["payload"], json!({"n": 2}));
    assert_eq!(lines[0]["sender"], "ACME");
    assert_eq!(lines[0]["env"], "live");
    assert_eq!(lines[0]["messageType"], "order");
    assert_eq!(lines[0]["messageStatus"], "queued");
    assert_eq!(lines[0]["transmissions"][0]["receiver"], "GLOBEX");
    assert_eq!(lines[0]["transmissions"][0]["status"], "queued");
    assert_eq!(lines[1]["id"], third["id"]);
    assert_eq!(lines[1]["payloadBase64"], "cGxhaW4KdGV4dA==");
    // Up to the middle, without payloads, through the CLI.
    let out = Command::new(BIN)
        .args(["export", "--until", &fmt(middle), "--data-dir"])
        .arg(app.dir.path())
        .env("WAYBILL_URL", &app.base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["id"], first["id"]);
    assert!(lines[0].get("payload").is_none());
    // Bad input is a clear 400.
    export("format=csv").error(400, "bad_request");
    export("since=yesterday").error(400, "invalid_date");
    export("env=prod").error(400, "bad_request");
    // Only admins: no token, no backup.
    assert_eq!(app.call("GET", "/admin/api/backup", &[], None).status, 401);
}
