//! The API fuzzed from its own OpenAPI document by schemathesis, with real credentials:
//! whatever it generates, no answer is a 5xx, every status is one the document lists for
//! that operation, and every body matches the documented schema. One run covers the
//! partner API (`/api/v1/`), another the admin API (`/admin/api/`).
//!
//! schemathesis comes from PyPI: `.ci/test` installs it into `target/schemathesis` when
//! it is missing (or set `WAYBILL_SCHEMATHESIS` to an executable). Each run is bounded
//! (a few examples per operation, no stateful phase) and repeatable (deterministic).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::json;

use crate::receiver::Receiver;
use crate::{spawn_app_with, TestApp};

/// The schemathesis executable: `WAYBILL_SCHEMATHESIS`, the one `.ci/test` installs, or
/// one on the PATH.
fn executable() -> PathBuf {
    if let Some(p) = std::env::var_os("WAYBILL_SCHEMATHESIS") {
        return p.into();
    }
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/schemathesis");
    if local.exists() {
        return local;
    }
    "schemathesis".into()
}

/// Runs schemathesis from `scratch` (where it keeps its cache and finds a
/// `schemathesis.toml`, if one was written there) against the document `app` serves,
/// with the checks and bounds every run shares plus `args`. Panics with its report on
/// any failure; prints its summary.
fn fuzz(app: &TestApp, scratch: &Path, args: &[&str]) {
    let exe = executable();
    let started = Instant::now();
    let out = Command::new(&exe)
        .current_dir(scratch)
        .args(["run", &format!("{}/api/v1/openapi.json", app.base)])
        .args(args)
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "5",
            "--request-timeout",
            "30",
            "--generation-deterministic",
        ])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); .ci/test installs schemathesis into target/schemathesis",
                exe.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{summary}");
    println!("({:.1} s)", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Tested:"),
        "schemathesis tested nothing:\n{stdout}"
    );
}

#[test]
fn the_partner_api_answers_generated_requests_as_documented() {
    let app = spawn_app_with(|_| {});
    let acme = app.partner("ACME");
    app.partner("GLOBEX");
    app.route("ACME", "GLOBEX", "*");
    // Something to find, so searches and lookups do not only ever see empty lists.
    app.partner_json(
        &acme,
        "POST",
        "/api/v1/documents/order",
        &json!({"orderNumber": "PO-1"}),
    )
    .data(201);

    // schemathesis keeps a cache in its working directory: not in the checkout.
    let scratch = tempfile::tempdir().expect("scratch dir");
    fuzz(
        &app,
        scratch.path(),
        &[
            "--header",
            &format!("X-Api-Key: {acme}"),
            "--include-path-regex",
            "^/api/v1/",
        ],
    );
}

/// Operations left out of the admin run, each because it would wreck what the rest of
/// the run works with (their rules have tests of their own in `admin.rs` and
/// `admin_users.rs`).
const ADMIN_EXCLUDED: [&str; 5] = [
    // The seeded partners are what the partner, key and redelivery cases look up:
    // deleting one turns every later case of those into a 404.
    "deletePartner",
    // A revoked key takes away the partner traffic the seed stands for.
    "revokeApiKey",
    // Removing users and changing passwords act on the accounts people sign in with, and
    // signing out ends the session a run signed in as a user would speak with; none of
    // them is something to aim generated input at.
    "deleteAdminUser",
    "setAdminPassword",
    "adminLogout",
    // The backup and the export stay in: they stream the whole store, which here is a
    // handful of records, so they cost well under a second.
];

#[test]
fn the_admin_api_answers_generated_requests_as_documented() {
    let push = Receiver::start(vec![]);
    let callbacks = Receiver::start(vec![]);
    let app = spawn_app_with(|_| {});
    let acme = app.partner("ACME");
    let globex = app.partner("GLOBEX");
    let initech =
        json!({"code": "INITECH", "name": "Initech", "pushUrl": format!("{}/push", push.url)});
    app.admin("POST", "/admin/api/partners", Some(initech))
        .data(201);
    let route = app
        .admin(
            "POST",
            "/admin/api/routes",
            Some(json!({"sender": "ACME", "receiver": "GLOBEX", "doctype": "*"})),
        )
        .data(201)["id"]
        .clone();
    app.route("ACME", "INITECH", "invoice");

    // Something behind every kind of id the admin API looks up, so that lookups and
    // actions reach their real work and not only ever a 404: a polled message, a pushed
    // one (with its delivery attempts), a background job, a subscription, a schema and a
    // bulk operation.
    let order = app
        .partner_json(
            &acme,
            "POST",
            "/api/v1/documents/order",
            &json!({"orderNumber": "PO-1"}),
        )
        .data(201);
    // Pushed to INITECH: accepted (202) and delivered in the background.
    let invoice = app
        .send_doc(
            &acme,
            "ACME",
            Some("INITECH"),
            "invoice",
            br#"{"invoice": 1}"#,
        )
        .data(202);
    let job = app
        .call(
            "POST",
            "/api/v1/inbound?sender=ACME&receiver=GLOBEX&doctype=order&version=1",
            &[
                ("X-Api-Key", &acme),
                ("Content-Type", "application/json"),
                ("Waybill-Background", "none"),
            ],
            Some(br#"{"orderNumber": "PO-2"}"#),
        )
        .data(202);
    let subscription = app
        .partner_json(
            &globex,
            "POST",
            "/api/v1/subscriptions",
            &json!({"systemName": "erp", "url": format!("{}/changed?ids={{ids}}", callbacks.url)}),
        )
        .data(201);
    let schema = app
        .admin(
            "POST",
            "/admin/api/schemas",
            Some(json!({"doctype": "order", "version": "1", "jsonSchema": {"type": "object"}})),
        )
        .data(201);
    let bulk = app
        .admin(
            "POST",
            "/admin/api/bulk-operations",
            Some(json!({"action": "redeliver", "filter": {"receiver": "INITECH"}})),
        )
        .data(202);

    // The ids reach the generated cases through schemathesis's dictionaries: each path
    // parameter takes the seeded value half the time and a generated one otherwise.
    let id = |v: &serde_json::Value| v.as_str().expect("an id").to_owned();
    let dictionaries = [
        (
            "code",
            vec!["ACME".to_owned(), "GLOBEX".into(), "INITECH".into()],
        ),
        ("message", vec![id(&order["id"]), id(&invoice["id"])]),
        (
            "transmission",
            vec![
                id(&order["transmissions"][0]["uuid"]),
                id(&invoice["transmissions"][0]["uuid"]),
            ],
        ),
        ("job", vec![id(&job["id"])]),
        ("subscription", vec![id(&subscription["id"])]),
        ("schema", vec![id(&schema["id"])]),
        ("bulk", vec![id(&bulk["id"])]),
        ("route", vec![id(&route)]),
    ];
    let bindings = [
        ("partners", "code", "code"),
        ("messages", "id", "message"),
        ("transmissions", "uuid", "transmission"),
        ("deliveries", "id", "transmission"),
        ("jobs", "id", "job"),
        ("subscriptions", "id", "subscription"),
        ("schemas", "id", "schema"),
        ("bulk-operations", "id", "bulk"),
        ("routes", "id", "route"),
    ];
    let mut config = String::new();
    for (name, values) in &dictionaries {
        config.push_str(&format!("[dictionaries.{name}]\nvalues = {values:?}\n\n"));
    }
    for (collection, param, dictionary) in bindings {
        config.push_str(&format!(
            "[[operations]]\ninclude-path-regex = '^/admin/api/{collection}/\\{{{param}\\}}'\n\
             parameters = {{ \"path.{param}\" = {{ dictionary = \"{dictionary}\", probability = 0.5 }} }}\n\n"
        ));
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    std::fs::write(scratch.path().join("schemathesis.toml"), config).expect("config");

    let auth = format!("Authorization: Bearer {}", app.token);
    let mut args = vec!["--header", &auth, "--include-path-regex", "^/admin/api/"];
    for operation in ADMIN_EXCLUDED {
        args.extend(["--exclude-operation-id", operation]);
    }
    fuzz(&app, scratch.path(), &args);
}
