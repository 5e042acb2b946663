//! An admin's day in the browser: sign in (and be refused with a wrong password), add a
//! partner and a key, find a message sent with that key, open it, redeliver it, see the
//! audit entry; cancel a queued job and retry a failed one; test, disable and enable a
//! subscription; then every view, each checked for console errors and failed requests,
//! photographed, and timed (first paint and data drawn, from the Performance API).
//!
//! `WAYBILL_UI_SEED_MESSAGES=1000000` fills the store with that many messages first (the
//! default is a few hundred, to keep the suite quick); the figures are printed.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{json, Value};

use super::Browser;
use crate::receiver::Receiver;
use crate::{spawn_app_with, TestApp};

const PASSWORD: &str = "a long enough password";
/// `background.timeout_seconds` in this test.
const JOB_LIMIT_SECS: u64 = 6;

/// Queues `GET path` as a background job of `key`'s partner; returns its id.
fn background_job(app: &TestApp, key: &str, path: &str) -> String {
    let r = app.call(
        "GET",
        path,
        &[("X-Api-Key", key), ("Waybill-Background", "none")],
        None,
    );
    r.data(202)["id"].as_str().expect("job id").to_owned()
}

/// Waits until the job is in `state` (live jobs, read through the admin API).
fn wait_job(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = app
            .admin("GET", &format!("/admin/api/jobs/{id}"), None)
            .data(200);
        if j["state"] == state {
            return j;
        }
        assert!(Instant::now() < deadline, "the job never got {state}: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fills the store with `n` messages from SEEDA to SEEDB, through batch intake on four
/// connections.
fn seed(app: &TestApp, n: usize) {
    app.partner("SEEDB");
    let key = app.partner("SEEDA");
    app.route("SEEDA", "SEEDB", "*");
    let batches = n.div_ceil(1000);
    let started = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..4 {
            let key = &key;
            s.spawn(move || {
                for b in (worker..batches).step_by(4) {
                    let size = 1000.min(n - b * 1000);
                    let messages: Vec<Value> = (0..size)
                        .map(|i| {
                            let doctype = ["order", "invoice", "despatch"][i % 3];
                            json!({
                                "messageType": doctype,
                                "receiver": "SEEDB",
                                "externalReference": format!("S-{b}-{i}"),
                                "payload": {"line": i, "batch": b, "sku": "ABC-123", "qty": 3},
                            })
                        })
                        .collect();
                    let body = json!({"batchReference": format!("B-{b}"), "messages": messages});
                    app.partner_json(key, "POST", "/api/v1/requests", &body)
                        .data(202);
                }
            });
        }
    });
    println!(
        "seeded {n} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Fails on any console error or failed request since the last check.
async fn assert_clean(b: &Browser, what: &str) {
    let errors = b.errors().await;
    assert!(errors.is_empty(), "{what}: console errors: {errors:#?}");
    let failed = b.failed_requests().await;
    assert!(failed.is_empty(), "{what}: failed requests: {failed:#?}");
}

/// Loads `/ui/#/<hash>` afresh and returns (first contentful paint, data drawn), in ms
/// from the navigation's start.
async fn timed_load(b: &Browser, app: &TestApp, n: usize, hash: &str, view: &str) -> (f64, f64) {
    // A new query string makes it a new document, not a same-page hash change.
    visit(b, &app.url(&format!("/ui/?load={n}#/{hash}")), view).await;
    let t = b
        .js(&format!(
            "const r = performance.getEntriesByName('view-ready:{view}')[0];
             const p = performance.getEntriesByName('first-contentful-paint')[0];
             return [p ? p.startTime : -1, r ? r.startTime : -1];"
        ))
        .await;
    let f = |i: usize| t[i].as_f64().unwrap_or(-1.0);
    assert!(f(1) > 0.0, "{view}: no view-ready mark");
    (f(0), f(1))
}

/// Loads `url` and waits until its view `view` has drawn its data.
async fn visit(b: &Browser, url: &str, view: &str) {
    b.client.goto(url).await.expect("goto");
    b.ready(view).await;
}

async fn click_button(b: &Browser, text: &str) {
    let xpath = format!("//button[normalize-space(.)='{text}']");
    b.client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no button {text:?}: {e}"))
        .click()
        .await
        .expect("click");
}

async fn type_into(b: &Browser, css: &str, text: &str) {
    let el = b.find(css).await;
    el.clear().await.expect("clear");
    el.send_keys(text).await.expect("type");
}

#[test]
fn an_admin_works_through_every_view_in_a_real_browser() {
    let seeded: usize = std::env::var("WAYBILL_UI_SEED_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let started = Instant::now();
    let app = spawn_app_with(|c| {
        c.limits.partner_rps = 0;
        // One job at a time, each cut off after a few seconds: a long poll holds the slot
        // and then fails, so the UI has a queued job to cancel and a failed one to retry.
        c.background.concurrency = 1;
        c.background.timeout_seconds = JOB_LIMIT_SECS;
    });
    app.admin(
        "POST",
        "/admin/api/users",
        Some(json!({"username": "alice", "password": PASSWORD, "role": "admin"})),
    )
    .data(201);
    seed(&app, seeded);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let b = Browser::start().await;
        drive(&b, &app, seeded).await;
        b.client.clone().close().await.expect("close the browser");
    });
    println!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}

async fn drive(b: &Browser, app: &TestApp, seeded: usize) {
    // Signed out, the UI sends the reader to sign in, remembering where they were going.
    visit(b, &app.url("/ui/#/messages"), "login").await;
    assert!(b
        .client
        .current_url()
        .await
        .expect("url")
        .as_str()
        .contains("#/login?next="));
    b.screenshot("login").await;
    // The only expected failure: the check of who is signed in (401).
    let early = b.errors().await;
    assert!(
        early
            .iter()
            .all(|e| e.contains("/admin/api/me") && e.contains("401")),
        "{early:#?}"
    );
    assert!(
        b.failed_requests()
            .await
            .iter()
            .all(|r| r.starts_with("401") && r.ends_with("/admin/api/me")),
        "only the check of who is signed in should fail"
    );

    // A wrong password is refused, in words.
    type_into(b, "#username", "alice").await;
    type_into(b, "#password", "not the password at all").await;
    click_button(b, "Sign in").await;
    b.wait_text("Wrong username or password.").await;
    b.screenshot("login-refused").await;
    let refused = b.errors().await;
    assert!(
        refused.len() == 1 && refused[0].contains("401"),
        "only the refused login should fail: {refused:#?}"
    );
    let refused = b.failed_requests().await;
    assert!(
        refused.len() == 1 && refused[0].ends_with("/admin/api/login"),
        "only the refused login should fail: {refused:#?}"
    );

    // The right one leads back to where the reader was going.
    type_into(b, "#password", PASSWORD).await;
    click_button(b, "Sign in").await;
    b.ready("messages").await;
    b.wait_text("alice · admin").await;
    assert_clean(b, "sign-in").await;

    // A partner and a key, made in the UI.
    visit(b, &app.url("/ui/#/partners"), "partners").await;
    type_into(b, "input[name=code]", "ACME").await;
    type_into(b, "input[name=name]", "Acme Corp").await;
    click_button(b, "Add partner").await;
    b.ready("partner").await;
    b.wait_text("Acme Corp (ACME)").await;
    click_button(b, "Create key").await;
    let key = b.text(".secret code").await;
    assert!(key.starts_with("wb_live_"), "{key}");
    b.screenshot("partner").await;
    assert_clean(b, "partner and key").await;

    // The key works: ACME sends an order to GLOBEX, which reports it failed.
    let globex = app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "order");
    let sent = app.call(
        "POST",
        "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=1&externalReference=UI-1",
        &[("X-Api-Key", &key), ("Content-Type", "application/json")],
        Some(br#"{"order":{"lines":[{"sku":"ABC","qty":2}],"note":"<b>not markup</b>"}}"#),
    );
    let id = sent.data(202)["id"].as_str().expect("id").to_owned();
    let items = app.poll(&globex, "limit=1");
    let uuid = items[0]["uuid"].as_str().expect("uuid").to_owned();
    app.ack(&globex, &uuid, "failed").data(200);

    // Messages: found by its reference.
    visit(b, &app.url("/ui/#/messages"), "messages").await;
    type_into(b, "input[name=externalReference]", "UI-1").await;
    click_button(b, "Search").await;
    let row = format!("a[href='#/messages/{id}']");
    b.find(&row).await.click().await.expect("open the message");
    b.ready("message").await;
    b.wait_text("\"note\": \"<b>not markup</b>\"").await;
    let bold = b
        .js("return document.querySelectorAll('main b').length")
        .await;
    assert_eq!(bold, json!(0), "a payload must never become markup");
    b.wait_text("To GLOBEX").await;
    b.screenshot("message-failed").await;

    // Redeliver it: the failed transmission is queued again.
    click_button(b, "Redeliver").await;
    b.wait_text("Redelivered: the failed transmissions are queued again.")
        .await;
    let after = app
        .admin("GET", &format!("/admin/api/messages/{id}"), None)
        .data(200);
    assert_eq!(after["transmissions"][0]["status"], "queued", "{after}");
    assert_clean(b, "message detail").await;

    // The audit log has it, by alice.
    visit(b, &app.url("/ui/#/audit"), "audit").await;
    b.wait_text("POST /admin/api/messages/{}/redeliver").await;
    let audit = b.text("main table").await;
    assert!(
        audit
            .lines()
            .any(|l| l.contains("user:alice") && l.contains("redeliver")),
        "{audit}"
    );
    assert_clean(b, "audit").await;

    jobs_and_subscriptions(b, app, &key).await;

    // Every view from its navigation entry, each without errors, photographed.
    let views = [
        ("Dashboard", "dashboard"),
        ("Partners", "partners"),
        ("Routes", "routes"),
        ("Messages", "messages"),
        ("Jobs", "jobs"),
        ("Subscriptions", "subscriptions"),
        ("Users", "users"),
        ("Audit log", "audit"),
    ];
    for (entry, view) in views {
        let xpath = format!("//nav//a[normalize-space(.)='{entry}']");
        b.client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no navigation entry {entry}: {e}"))
            .click()
            .await
            .expect("click");
        b.ready(view).await;
        b.screenshot(view).await;
        assert_clean(b, view).await;
    }

    // Dark mode, as a system set to dark shows it.
    b.color_scheme(true).await;
    for (hash, view) in [
        ("dashboard", "dashboard"),
        (&*format!("messages/{id}"), "message"),
    ] {
        visit(b, &app.url(&format!("/ui/?dark#/{hash}")), view).await;
        b.screenshot(&format!("{view}-dark")).await;
    }
    b.color_scheme(false).await;
    assert_clean(b, "dark mode").await;

    // First paint and data drawn of every view, each loaded afresh.
    let pages = [
        ("dashboard".to_owned(), "dashboard"),
        ("partners".to_owned(), "partners"),
        ("partners/ACME".to_owned(), "partner"),
        ("routes".to_owned(), "routes"),
        ("messages".to_owned(), "messages"),
        (format!("messages/{id}"), "message"),
        ("jobs".to_owned(), "jobs"),
        ("subscriptions".to_owned(), "subscriptions"),
        ("users".to_owned(), "users"),
        ("audit".to_owned(), "audit"),
    ];
    println!("first paint with {seeded} messages in the store (ms from navigation start):");
    for (n, (hash, view)) in pages.iter().enumerate() {
        let (fcp, ready) = timed_load(b, app, n, hash, view).await;
        println!("  {view:<14} first contentful paint {fcp:>6.0}   data drawn {ready:>6.0}");
        assert_clean(b, view).await;
    }

    // Signing out ends the session: the next visit asks to sign in again.
    click_button(b, "Sign out").await;
    b.ready("login").await;
    let me = b
        .js("return fetch('/admin/api/me').then(r => r.status)")
        .await;
    assert_eq!(me, json!(401));
}

/// Job and subscription actions, clicked as an admin would, each checked through the API
/// and in the audit log.
async fn jobs_and_subscriptions(b: &Browser, app: &TestApp, acme: &str) {
    // A long poll of a partner with nothing to take holds the only job slot; the next job
    // waits behind it and is cancelled from the jobs list.
    let idle = app.partner("IDLE");
    let hold = background_job(app, &idle, "/api/v1/transmissions?wait=20");
    wait_job(app, &hold, "running");
    let queued = background_job(app, &idle, "/api/v1/transmissions");
    visit(b, &app.url("/ui/#/jobs?state=queued"), "jobs").await;
    click_button(b, "Cancel").await;
    b.wait_text("The job is cancelled.").await;
    wait_job(app, &queued, "cancelled");
    assert_clean(b, "cancel a job").await;

    // The long poll outlasts the job time limit and fails; it is retried from its page.
    let failed = wait_job(app, &hold, "failed");
    assert_eq!(failed["runs"], 1, "{failed}");
    visit(b, &app.url(&format!("/ui/#/jobs/{hold}?env=live")), "job").await;
    b.wait_text("background.timeout_seconds").await;
    click_button(b, "Retry").await;
    b.wait_text("The job is queued again.").await;
    let again = app
        .admin("GET", &format!("/admin/api/jobs/{hold}"), None)
        .data(200);
    assert!(
        again["state"] == "queued" || again["state"] == "running",
        "{again}"
    );
    b.screenshot("job-retried").await;
    assert_clean(b, "retry a job").await;

    // A subscription of ACME's: a test call from the list, then off and on again.
    let hook = Receiver::start(vec![]);
    let url = format!("{}/cb?ids={{ids}}", hook.url);
    let sub = app
        .partner_json(
            acme,
            "POST",
            "/api/v1/subscriptions",
            &json!({"systemName": "erp", "url": url}),
        )
        .data(201);
    let sub_path = format!("/api/v1/subscriptions/{}", sub["id"].as_str().expect("id"));
    visit(b, &app.url("/ui/#/subscriptions"), "subscriptions").await;
    click_button(b, "Test").await;
    b.wait_text(&format!("Test call to {url}: answered 200"))
        .await;
    let got = hook.wait_for(1, 10);
    let body: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    assert_eq!(body["event"], "subscription.test");
    click_button(b, "Disable").await;
    b.wait_text("Subscription disabled: no more calls until it is enabled.")
        .await;
    let off = app.partner_get(acme, &sub_path).data(200);
    assert_eq!(off["active"], false, "{off}");
    b.screenshot("subscription-disabled").await;
    click_button(b, "Enable").await;
    b.wait_text("Subscription enabled.").await;
    let on = app.partner_get(acme, &sub_path).data(200);
    assert_eq!(on["active"], true, "{on}");
    assert_clean(b, "subscription actions").await;

    // Each action is in the audit log, by alice.
    visit(b, &app.url("/ui/#/audit"), "audit").await;
    for action in [
        "POST /admin/api/jobs/{}/cancel",
        "POST /admin/api/jobs/{}/retry",
        "POST /admin/api/subscriptions/{}/test",
        "PATCH /admin/api/subscriptions/{}",
    ] {
        b.wait_text(action).await;
    }
    assert_clean(b, "audit of the actions").await;
}
