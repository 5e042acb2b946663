//! The isolation matrix: every `/api/v1` operation the OpenAPI document lists is called
//! with another partner's ids, and with the owner's own test-environment key on live ids.
//! Each call gets 404 and changes nothing. The operations come from the served document
//! (which `openapi.rs` holds in step with the routes), so a new endpoint that is not
//! classified here fails this test instead of being forgotten.

use serde_json::{json, Value};

use crate::openapi::{fetch_document, operations};
use crate::{spawn_app, TestApp};

/// Operations that take no id of an existing object: they create the caller's own, or
/// list and search only the caller's (checked below by looking for the owner's ids).
const NO_ID: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/inbound"),
    ("post", "/api/v1/requests"),
    ("post", "/api/v1/documents/{doctype}"),
    ("post", "/api/v1/auth/token"),
    ("post", "/api/v1/subscriptions"),
    ("get", "/api/v1/subscriptions"),
    ("get", "/api/v1/transmissions"),
    ("post", "/api/v1/tracking"),
];

/// What the owners made, in the live environment.
struct Owned {
    message: String,
    request: String,
    transmission: String,
    document: String,
    job: String,
    subscription: String,
}

impl Owned {
    /// The concrete path of `template` with the owners' ids; `None` for a template this
    /// matrix does not know yet.
    fn path(&self, template: &str) -> Option<String> {
        let (prefix, id) = match template {
            t if t.starts_with("/api/v1/background/{id}") => ("/api/v1/background/{id}", &self.job),
            t if t.starts_with("/api/v1/requests/{id}") => ("/api/v1/requests/{id}", &self.request),
            t if t.starts_with("/api/v1/messages/{id}") => ("/api/v1/messages/{id}", &self.message),
            t if t.starts_with("/api/v1/subscriptions/{id}") => {
                ("/api/v1/subscriptions/{id}", &self.subscription)
            }
            t if t.starts_with("/api/v1/documents/{doctype}/{id}") => {
                ("/api/v1/documents/{doctype}/{id}", &self.document)
            }
            t if t.starts_with("/api/v1/transmissions/status/{uuid}") => {
                ("/api/v1/transmissions/status/{uuid}", &self.transmission)
            }
            t if t.starts_with("/api/v1/transmissions/{uuid}") => {
                ("/api/v1/transmissions/{uuid}", &self.transmission)
            }
            _ => return None,
        };
        let rest = &template[prefix.len()..];
        let base = prefix
            .replace("{doctype}", "order")
            .replace("{id}", id)
            .replace("{uuid}", id);
        (!rest.contains('{')).then(|| format!("{base}{rest}"))
    }
}

/// A body each writing operation would accept from its owner, so a refusal can only come
/// from whose object it is.
fn body_for(method: &str, template: &str) -> Option<Value> {
    match (method, template) {
        ("put", t) if t.starts_with("/api/v1/transmissions/status/") => {
            Some(json!({"status": "processed"}))
        }
        // The owner switched it off: switching it on would show in the snapshot.
        ("patch", _) => Some(json!({"active": true})),
        ("post", _) => Some(json!({})),
        _ => None,
    }
}

/// Everything the owners can see of their objects, to compare before and after.
fn snapshot(app: &TestApp, acme: &str, globex: &str, o: &Owned) -> Vec<Value> {
    let get = |key: &str, path: String| {
        let mut v = app.partner_get(key, &path).data(200);
        // Reading a transmission is not a change; only its state is compared.
        if let Some(obj) = v.as_object_mut() {
            obj.remove("lastReadAt");
        }
        v
    };
    vec![
        get(acme, format!("/api/v1/messages/{}", o.message)),
        get(acme, format!("/api/v1/requests/{}", o.request)),
        get(acme, format!("/api/v1/documents/order/{}", o.document)),
        get(acme, format!("/api/v1/background/{}", o.job)),
        get(acme, format!("/api/v1/subscriptions/{}", o.subscription)),
        get(globex, format!("/api/v1/transmissions/{}", o.transmission)),
    ]
}

#[test]
fn no_partner_or_environment_reaches_another_ones_objects() {
    let app = spawn_app();
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    let intruder = app.partner("INITECH");
    let acme_test = app.key("ACME", "test");
    let globex_test = app.key("GLOBEX", "test");
    app.route("ACME", "GLOBEX", "*");
    app.route("INITECH", "GLOBEX", "*");

    let sent = app
        .send_doc(&acme, "ACME", Some("GLOBEX"), "order", br#"{"n":1}"#)
        .data(202);
    let document = app
        .partner_json(&acme, "POST", "/api/v1/documents/order", &json!({"n": 2}))
        .data(201);
    let job = app
        .call(
            "POST",
            "/api/v1/documents/order",
            &[
                ("X-Api-Key", &acme),
                ("Content-Type", "application/json"),
                ("Waybill-Background", "none"),
            ],
            Some(br#"{"n":3}"#),
        )
        .data(202);
    let subscription = app
        .partner_json(
            &acme,
            "POST",
            "/api/v1/subscriptions",
            &json!({"systemName": "erp", "url": "https://93.184.216.34/hook?ids={ids}"}),
        )
        .data(201);
    let text = |v: &Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("not text: {v}"))
            .to_owned()
    };
    // Off, so it makes no calls that would change it while the matrix runs.
    app.partner_json(
        &acme,
        "PATCH",
        &format!("/api/v1/subscriptions/{}", text(&subscription["id"])),
        &json!({"active": false}),
    )
    .data(200);
    // The job ends before the snapshot, so only a stranger's call could change it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app
        .partner_get(&acme, &format!("/api/v1/background/{}", text(&job["id"])))
        .data(200)["state"]
        != "completed"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never completed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let owned = Owned {
        message: text(&sent["id"]),
        request: text(&sent["requestId"]),
        transmission: text(&sent["transmissions"][0]["uuid"]),
        document: text(&document["id"]),
        job: text(&job["id"]),
        subscription: text(&subscription["id"]),
    };
    let before = snapshot(&app, &acme, &globex, &owned);

    let doc = fetch_document(&app);
    let mut called = 0;
    let mut unknown = Vec::new();
    for (method, template, _) in operations(&doc) {
        if !template.starts_with("/api/v1/") || NO_ID.contains(&(&method, &template)) {
            continue;
        }
        let Some(path) = owned.path(&template) else {
            unknown.push(format!("{} {template}", method.to_ascii_uppercase()));
            continue;
        };
        let upper = method.to_ascii_uppercase();
        // The path names a real object: its owner reads it.
        if method == "get" {
            let owner = if template.starts_with("/api/v1/transmissions/") {
                &globex
            } else {
                &acme
            };
            let r = app.partner_get(owner, &path);
            assert!(
                (200..300).contains(&r.status),
                "the owner's GET {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        let body = body_for(&method, &template).map(|b| b.to_string());
        // Another partner, and the owners' own keys of the other environment.
        for (who, key) in [
            ("INITECH (live)", &intruder),
            ("ACME (test)", &acme_test),
            ("GLOBEX (test)", &globex_test),
        ] {
            let mut headers = vec![("X-Api-Key", key.as_str())];
            if body.is_some() {
                headers.push(("Content-Type", "application/json"));
            }
            let r = app.call(&upper, &path, &headers, body.as_deref().map(str::as_bytes));
            assert_eq!(
                r.status,
                404,
                "{who} {upper} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r.error(404, "not_found");
            called += 1;
        }
    }
    assert!(
        unknown.is_empty(),
        "operations this matrix does not cover yet (add their ids to `Owned::path`): {unknown:?}"
    );
    assert!(called >= 3 * 12, "only {called} calls made");

    // Lists and searches show none of the owners' objects to anyone else.
    for key in [&intruder, &acme_test, &globex_test] {
        let subs = app.partner_get(key, "/api/v1/subscriptions").data(200);
        assert!(!subs.to_string().contains(&owned.subscription), "{subs}");
        let found = app
            .partner_json(
                key,
                "POST",
                "/api/v1/tracking",
                &json!({"search": [{"by": "id", "value": owned.request}]}),
            )
            .data(200);
        assert_eq!(found["paging"]["totalRequests"], 0, "{found}");
        let items = app.poll(key, "limit=100");
        assert!(
            !Value::from(items.clone())
                .to_string()
                .contains(&owned.transmission),
            "{items:?}"
        );
    }

    // And nothing changed.
    assert_eq!(snapshot(&app, &acme, &globex, &owned), before);
}
