//! Admin users: sign-in with a session cookie, CSRF on changes, viewers who only read,
//! failed-login limits, and the audit log of who did what.

use serde_json::{json, Value};

use crate::{spawn_app, spawn_app_with, Resp, TestApp};

/// A browser-like session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn login(app: &TestApp, username: &str, password: &str) -> Resp {
    let body = serde_json::to_vec(&json!({"username": username, "password": password})).unwrap();
    app.call(
        "POST",
        "/admin/api/login",
        &[("Content-Type", "application/json")],
        Some(&body),
    )
}

fn session(app: &TestApp, username: &str, password: &str) -> Session {
    let r = login(app, username, password);
    let set = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let d = r.data(200);
    Session {
        cookie: set.split(';').next().unwrap().to_owned(),
        csrf: d["csrfToken"].as_str().unwrap().to_owned(),
    }
}

/// A call with the session's cookie; `csrf` and `origin` as a browser page would add them.
fn as_user(
    app: &TestApp,
    s: &Session,
    method: &str,
    path: &str,
    body: Option<Value>,
    csrf: bool,
    origin: Option<&str>,
) -> Resp {
    let own = format!("http://localhost:{}", app.addr.port());
    let origin = origin.unwrap_or(&own).to_owned();
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    let mut headers = vec![
        ("Cookie", s.cookie.as_str()),
        ("Content-Type", "application/json"),
        ("Origin", origin.as_str()),
    ];
    if csrf {
        headers.push(("X-CSRF-Token", s.csrf.as_str()));
    }
    app.call(method, path, &headers, bytes.as_deref())
}

fn add_user(app: &TestApp, name: &str, role: &str) {
    app.admin(
        "POST",
        "/admin/api/users",
        Some(json!({"username": name, "password": "a long enough secret", "role": role})),
    )
    .data(201);
}

#[test]
fn users_sign_in_change_things_with_csrf_and_sign_out() {
    let app = spawn_app();
    add_user(&app, "alice", "admin");
    // Short passwords, bad names and duplicates are refused.
    app.admin(
        "POST",
        "/admin/api/users",
        Some(json!({"username": "bob", "password": "short"})),
    )
    .error(422, "validation_failed");
    app.admin(
        "POST",
        "/admin/api/users",
        Some(json!({"username": "no spaces", "password": "a long enough secret"})),
    )
    .error(422, "validation_failed");
    app.admin(
        "POST",
        "/admin/api/users",
        Some(json!({"username": "alice", "password": "a long enough secret"})),
    )
    .error(409, "conflict");
    let users = app.admin("GET", "/admin/api/users", None).data(200);
    assert_eq!(users[0]["username"], "alice");
    assert!(users[0].get("passwordHash").is_none() && !users.to_string().contains("argon2"));

    login(&app, "alice", "not the password").error(401, "unauthorized");
    login(&app, "nobody", "a long enough secret").error(401, "unauthorized");
    let s = session(&app, "alice", "a long enough secret");
    let me = as_user(&app, &s, "GET", "/admin/api/me", None, false, None).data(200);
    assert_eq!(
        (me["username"].as_str(), me["role"].as_str()),
        (Some("alice"), Some("admin"))
    );
    // Reads need no CSRF token.
    as_user(&app, &s, "GET", "/admin/api/partners", None, false, None).data(200);

    let create = json!({"code": "ACME", "name": "Acme"});
    let e = as_user(
        &app,
        &s,
        "POST",
        "/admin/api/partners",
        Some(create.clone()),
        false,
        None,
    )
    .error(403, "csrf_failed");
    assert!(e["message"].as_str().unwrap().contains("X-CSRF-Token"));
    as_user(
        &app,
        &s,
        "POST",
        "/admin/api/partners",
        Some(create.clone()),
        true,
        Some("https://evil.example"),
    )
    .error(403, "csrf_failed");
    app.admin("GET", "/admin/api/partners/ACME", None)
        .error(404, "not_found");
    as_user(
        &app,
        &s,
        "POST",
        "/admin/api/partners",
        Some(create),
        true,
        None,
    )
    .data(201);

    // Logout ends the session for good.
    let out = as_user(&app, &s, "POST", "/admin/api/logout", None, true, None);
    assert!(out
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("Max-Age=0")));
    out.data(200);
    as_user(&app, &s, "GET", "/admin/api/me", None, false, None).error(401, "unauthorized");

    // A password change ends the user's sessions; the new password works.
    let s2 = session(&app, "alice", "a long enough secret");
    app.admin(
        "PUT",
        "/admin/api/users/alice/password",
        Some(json!({"password": "another long secret"})),
    )
    .data(200);
    as_user(&app, &s2, "GET", "/admin/api/me", None, false, None).error(401, "unauthorized");
    login(&app, "alice", "a long enough secret").error(401, "unauthorized");
    session(&app, "alice", "another long secret");
    // Deleting the user ends everything.
    app.admin("DELETE", "/admin/api/users/alice", None)
        .data(200);
    login(&app, "alice", "another long secret").error(401, "unauthorized");
}

#[test]
fn viewers_read_but_every_change_is_403() {
    let app = spawn_app();
    app.partner("ACME");
    add_user(&app, "vera", "viewer");
    let s = session(&app, "vera", "a long enough secret");
    as_user(&app, &s, "GET", "/admin/api/partners", None, false, None).data(200);
    as_user(&app, &s, "GET", "/admin/api/audit", None, false, None).data(200);
    // Every state-changing admin route in the OpenAPI document.
    let doc: Value = serde_json::from_str(waybill::api::OPENAPI).unwrap();
    let mut tried = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/api/") || path.ends_with("/login") || path.ends_with("/logout")
        {
            continue;
        }
        for method in ["post", "put", "patch", "delete"] {
            if ops.get(method).is_none() {
                continue;
            }
            let concrete = path
                .replace("{code}", "ACME")
                .replace("{username}", "vera")
                .replace("{name}", "vera")
                .replace(['{', '}'], "");
            let r = as_user(
                &app,
                &s,
                &method.to_uppercase(),
                &concrete,
                Some(json!({})),
                true,
                None,
            );
            if path.ends_with("/users/{username}/password") {
                // Their own password is theirs to change; a too-short one is refused.
                assert_eq!(r.status, 422, "{method} {path}");
            } else {
                let e = r.error(403, "forbidden");
                assert!(
                    e["message"].as_str().unwrap().contains("viewer"),
                    "{method} {path}"
                );
            }
            tried += 1;
        }
    }
    assert!(tried >= 10, "the route table was read ({tried})");
    // Nothing changed.
    assert_eq!(
        app.admin("GET", "/admin/api/partners", None)
            .data(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn partner_keys_and_tokens_never_open_the_admin_api() {
    // Every attempt here is a failed authentication from one address, far more than the
    // brute-force guard allows in a minute; it would answer 429 before the point is made.
    let app = spawn_app_with(|c| c.limits.auth_failures_per_minute = 0);
    let key = app.partner("ACME");
    let token = app
        .call("POST", "/api/v1/auth/token", &[("X-Api-Key", &key)], None)
        .data(200)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc: Value = serde_json::from_str(waybill::api::OPENAPI).unwrap();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/api/") || path.ends_with("/login") {
            continue;
        }
        let concrete = path.replace(['{', '}'], "");
        for method in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            for auth in [format!("Bearer {key}"), format!("Bearer {token}")] {
                let r = app.call(
                    &method.to_uppercase(),
                    &concrete,
                    &[("Authorization", &auth), ("X-Api-Key", &key)],
                    Some(b"{}"),
                );
                assert_eq!(r.status, 401, "{method} {path}");
            }
        }
    }
}

#[test]
fn failed_logins_are_limited_per_user_and_audited() {
    let app = spawn_app_with(|_| {});
    add_user(&app, "alice", "admin");
    for _ in 0..5 {
        login(&app, "alice", "wrong password!").error(401, "unauthorized");
    }
    let e = login(&app, "alice", "a long enough secret");
    assert!(e.headers.get("retry-after").is_some());
    e.error(429, "rate_limited");

    let s = {
        // Another user from the same address is limited too (per source address).
        add_user(&app, "bob", "admin");
        let r = login(&app, "bob", "a long enough secret");
        assert_eq!(r.status, 429, "the address is limited");
        app.admin("GET", "/admin/api/me", None).data(200)
    };
    assert_eq!(s["actor"], "token");

    // The audit log has the token's actions and the login attempts, newest first.
    app.partner("GLOBEX");
    let log = app
        .admin("GET", "/admin/api/audit?limit=1000", None)
        .data(200);
    let items = log["items"].as_array().unwrap();
    let has = |actor: &str, action: &str, target: &str, status: u64| {
        items.iter().any(|i| {
            i["actor"] == actor
                && i["action"] == action
                && i["target"].as_str().unwrap().contains(target)
                && i["status"] == status
        })
    };
    assert!(
        has("token", "POST /admin/api/partners", "partners", 201),
        "{log}"
    );
    assert!(
        has("token", "POST /admin/api/partners/{}/keys", "GLOBEX", 201),
        "{log}"
    );
    assert!(
        has("anonymous", "POST /admin/api/login", "alice", 401),
        "{log}"
    );
    assert!(has("token", "POST /admin/api/users", "users", 201), "{log}");
    assert!(
        !items.iter().any(|i| i["status"] == 429),
        "attempts turned away unchecked are not written"
    );
    assert!(items.iter().all(|i| i["source"] == "127.0.0.1"), "{log}");
    let times: Vec<&str> = items.iter().map(|i| i["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Filters and paging.
    let logins = app
        .admin(
            "GET",
            "/admin/api/audit?action=POST%20/admin/api/login",
            None,
        )
        .data(200);
    assert!(logins["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["action"] == "POST /admin/api/login"));
    let page1 = app.admin("GET", "/admin/api/audit?limit=2", None).data(200);
    let cursor = page1["nextCursor"].as_str().unwrap();
    let page2 = app
        .admin(
            "GET",
            &format!("/admin/api/audit?limit=2&cursor={cursor}"),
            None,
        )
        .data(200);
    assert_ne!(page1["items"][1]["id"], page2["items"][0]["id"]);
    assert_eq!(page2["items"][0]["id"], items[2]["id"]);
    app.admin("GET", "/admin/api/audit?cursor=nope", None)
        .error(400, "bad_request");
}
