//! The admin API: partners, keys, routes.

use serde_json::json;

use crate::spawn_app;

#[test]
fn partners_can_be_created_read_changed_and_deleted() {
    let app = spawn_app();
    let p = app
        .admin(
            "POST",
            "/admin/api/partners",
            Some(json!({"code": "ACME", "name": "Acme Corp", "pushUrl": "https://acme.example/in", "pushHeaders": {"X-Token": "t"}, "pushParams": {"site": "1"}})),
        )
        .data(201);
    assert_eq!(p["code"], "ACME");
    assert_eq!(p["active"], true);
    assert_eq!(p["pushUrl"], "https://acme.example/in");
    assert_eq!(p["pushHeaders"]["X-Token"], "t");
    assert_eq!(p["pushParams"]["site"], "1");

    let key = app.key("ACME", "live");
    app.admin(
        "POST",
        "/admin/api/partners",
        Some(json!({"code": "GLOBEX", "name": "Globex"})),
    )
    .data(201);
    app.route("ACME", "GLOBEX", "order");

    let list = app.admin("GET", "/admin/api/partners", None).data(200);
    let codes: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["ACME", "GLOBEX"]);

    let one = app.admin("GET", "/admin/api/partners/ACME", None).data(200);
    assert_eq!(one["keys"].as_array().unwrap().len(), 1);
    assert_eq!(one["routes"].as_array().unwrap().len(), 1);
    assert!(
        one["keys"][0].get("key").is_none(),
        "the secret is never shown again"
    );

    let changed = app
        .admin(
            "PATCH",
            "/admin/api/partners/ACME",
            Some(json!({"name": "Acme Inc", "pushUrl": null})),
        )
        .data(200);
    assert_eq!(changed["name"], "Acme Inc");
    assert!(changed["pushUrl"].is_null());
    app.admin(
        "PATCH",
        "/admin/api/partners/ACME",
        Some(json!({"pushUrl": "ftp://x"})),
    )
    .error(422, "validation_failed");
    app.admin(
        "PATCH",
        "/admin/api/partners/ACME",
        Some(json!({"active": "yes"})),
    )
    .error(400, "bad_request");

    // Deactivating a partner stops its keys; reactivating restores them.
    app.admin(
        "PATCH",
        "/admin/api/partners/ACME",
        Some(json!({"active": false})),
    )
    .data(200);
    app.partner_get(&key, "/api/v1/transmissions")
        .error(401, "unauthorized");
    app.admin(
        "PATCH",
        "/admin/api/partners/ACME",
        Some(json!({"active": true})),
    )
    .data(200);
    assert_eq!(app.partner_get(&key, "/api/v1/transmissions").status, 200);

    // Deleting revokes its keys and removes its routes.
    app.admin("DELETE", "/admin/api/partners/ACME", None)
        .data(200);
    app.partner_get(&key, "/api/v1/transmissions")
        .error(401, "unauthorized");
    assert!(app
        .admin("GET", "/admin/api/routes", None)
        .data(200)
        .as_array()
        .unwrap()
        .is_empty());
    app.admin("GET", "/admin/api/partners/ACME", None)
        .error(404, "not_found");
    app.admin("DELETE", "/admin/api/partners/ACME", None)
        .error(404, "not_found");
}

#[test]
fn keys_carry_their_environment_and_are_stored_only_as_hashes() {
    let app = spawn_app();
    app.admin(
        "POST",
        "/admin/api/partners",
        Some(json!({"code": "ACME", "name": "Acme"})),
    )
    .data(201);
    let live = app
        .admin(
            "POST",
            "/admin/api/partners/ACME/keys",
            Some(json!({"label": "erp"})),
        )
        .data(201);
    assert!(live["key"].as_str().unwrap().starts_with("wb_live_"));
    assert_eq!(live["env"], "live");
    assert_eq!(live["label"], "erp");
    assert!(live["key"]
        .as_str()
        .unwrap()
        .starts_with(live["prefix"].as_str().unwrap()));
    let test = app
        .admin(
            "POST",
            "/admin/api/partners/ACME/keys",
            Some(json!({"env": "test"})),
        )
        .data(201);
    assert!(test["key"].as_str().unwrap().starts_with("wb_test_"));
    // ≥ 128 random bits after the prefix (24 bytes, base64url).
    assert!(test["key"].as_str().unwrap().len() >= "wb_test_".len() + 32);
    app.admin(
        "POST",
        "/admin/api/partners/ACME/keys",
        Some(json!({"env": "prod"})),
    )
    .error(422, "validation_failed");
    let only_test = app
        .admin("GET", "/admin/api/partners/ACME/keys?env=test", None)
        .data(200);
    assert_eq!(only_test.as_array().unwrap().len(), 1);
    assert_eq!(only_test[0]["env"], "test");
    let all = app
        .admin("GET", "/admin/api/partners/ACME/keys", None)
        .data(200);
    assert_eq!(all.as_array().unwrap().len(), 2);
    app.admin("GET", "/admin/api/partners/ACME/keys?env=prod", None)
        .error(400, "bad_request");
    app.admin("POST", "/admin/api/partners/NOPE/keys", Some(json!({})))
        .error(404, "not_found");
    app.admin(
        "DELETE",
        &format!("/admin/api/partners/ACME/keys/{}", uuid::Uuid::now_v7()),
        None,
    )
    .error(404, "not_found");

    // The secret is nowhere in the store files.
    drop_server_and_check_secret_absent(app, live["key"].as_str().unwrap().to_owned());
}

fn drop_server_and_check_secret_absent(app: crate::TestApp, secret: String) {
    let dir = app.stop();
    let mut found = false;
    visit(dir.path(), &mut |bytes| {
        found |= bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
    });
    assert!(!found, "the API key secret must not be stored");
}

fn visit(dir: &std::path::Path, f: &mut impl FnMut(&[u8])) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            visit(&e.path(), f);
        } else {
            f(&std::fs::read(e.path()).unwrap());
        }
    }
}

#[test]
fn routes_are_validated() {
    let app = spawn_app();
    app.partner("ACME");
    app.partner("GLOBEX");
    let r = app
        .admin(
            "POST",
            "/admin/api/routes",
            Some(json!({"sender": "ACME", "receiver": "GLOBEX", "doctype": "*"})),
        )
        .data(201);
    assert_eq!(r["doctype"], "*");
    app.admin(
        "POST",
        "/admin/api/routes",
        Some(json!({"sender": "ACME", "receiver": "GLOBEX", "doctype": "*"})),
    )
    .error(409, "conflict");
    let e = app
        .admin(
            "POST",
            "/admin/api/routes",
            Some(json!({"sender": "ACME", "receiver": "NOPE", "doctype": "x"})),
        )
        .error(422, "validation_failed");
    assert_eq!(e["field"], "receiver");
    app.admin(
        "POST",
        "/admin/api/routes",
        Some(json!({"sender": "ACME", "receiver": "ACME", "doctype": "x"})),
    )
    .error(422, "validation_failed");
    app.admin(
        "POST",
        "/admin/api/routes",
        Some(json!({"sender": "ACME", "receiver": "GLOBEX"})),
    )
    .error(422, "validation_failed");
    let id = r["id"].as_str().unwrap();
    app.admin("DELETE", &format!("/admin/api/routes/{id}"), None)
        .data(200);
    app.admin("DELETE", &format!("/admin/api/routes/{id}"), None)
        .error(404, "not_found");
}
