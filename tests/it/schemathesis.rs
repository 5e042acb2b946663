//! The partner API fuzzed from its own OpenAPI document by schemathesis, with real
//! credentials: whatever it generates, no answer is a 5xx, every status is one the
//! document lists for that operation, and every body matches the documented schema.
//!
//! schemathesis comes from PyPI: `.ci/test` installs it into `target/schemathesis` when
//! it is missing (or set `WAYBILL_SCHEMATHESIS` to an executable). The run is bounded
//! (a few examples per operation, no stateful phase) and repeatable (deterministic).

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::spawn_app_with;

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

    let exe = executable();
    // schemathesis keeps a cache in its working directory: not in the checkout.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let out = Command::new(&exe)
        .current_dir(scratch.path())
        .args([
            "run",
            &format!("{}/api/v1/openapi.json", app.base),
            "--header",
            &format!("X-Api-Key: {acme}"),
            "--include-path-regex",
            "^/api/v1/",
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
