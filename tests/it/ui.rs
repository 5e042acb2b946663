//! The admin UI's files as HTTP serves them: the page, hashed assets with long caching,
//! gzip, ETags and 304s, the security headers; and the dashboard's health and disk figures.

use crate::{spawn_app, Resp, TestApp};

fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Resp {
    app.call("GET", path, headers, None)
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The hashed asset directory the page names.
fn asset_dir(page: &str) -> String {
    let at = page.find("/ui/assets/").expect("the page names its assets");
    let rest = &page[at..];
    let end = rest["/ui/assets/".len()..].find('/').expect("hash") + "/ui/assets/".len();
    rest[..end].to_owned()
}

fn assert_protected(r: &Resp) {
    let csp = header(r, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(r, "x-frame-options"), "DENY");
    assert_eq!(header(r, "referrer-policy"), "no-referrer");
    assert_eq!(header(r, "x-content-type-options"), "nosniff");
}

#[test]
fn the_page_is_served_with_strict_headers_and_revalidated() {
    let app = spawn_app();
    // Redirects are looked at, not followed.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let bare = crate::send(&agent, "GET", &app.url("/ui"), &[], None);
    assert_eq!(bare.status, 301);
    assert_eq!(header(&bare, "location"), "/ui/");

    let page = get(&app, "/ui/", &[]);
    assert_eq!(page.status, 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_protected(&page);
    let html = String::from_utf8(page.body.clone()).expect("utf-8");
    assert!(html.contains("<script type=\"module\""), "{html}");
    // No inline script and no inline style: the policy would block them.
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "{html}"
    );
    assert!(!html.contains("{{assets}}"));
    // Nothing from elsewhere: the UI works offline.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let etag = header(&page, "etag").to_owned();
    assert!(!etag.is_empty());
    let again = get(&app, "/ui/", &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_protected(&again);
    let changed = get(&app, "/ui/", &[("If-None-Match", "\"something-else\"")]);
    assert_eq!(changed.status, 200);
}

#[test]
fn assets_are_hashed_cached_for_a_year_and_gzipped() {
    let app = spawn_app();
    let page = String::from_utf8(get(&app, "/ui/", &[]).body).expect("utf-8");
    let dir = asset_dir(&page);

    let plain = get(&app, &format!("{dir}/js/app.js"), &[]);
    assert_eq!(plain.status, 200);
    assert!(header(&plain, "content-type").starts_with("text/javascript"));
    assert_eq!(
        header(&plain, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&plain, "content-encoding"), "");
    assert_protected(&plain);

    let zipped = get(
        &app,
        &format!("{dir}/js/app.js"),
        &[("Accept-Encoding", "gzip, br")],
    );
    assert_eq!(zipped.status, 200);
    assert_eq!(header(&zipped, "content-encoding"), "gzip");
    assert!(header(&zipped, "vary").contains("accept-encoding"));
    assert!(zipped.body.len() < plain.body.len());
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&zipped.body[..]),
        &mut unzipped,
    )
    .expect("gzip");
    assert_eq!(unzipped, plain.body);

    let etag = header(&plain, "etag").to_owned();
    let cached = get(
        &app,
        &format!("{dir}/js/app.js"),
        &[("If-None-Match", &etag)],
    );
    assert_eq!(cached.status, 304);

    let css = get(&app, &format!("{dir}/css/app.css"), &[]);
    assert!(header(&css, "content-type").starts_with("text/css"));
    // Every view module is there, under the same directory.
    for view in [
        "login",
        "dashboard",
        "partners",
        "partner",
        "routes",
        "messages",
        "message",
        "jobs",
        "job",
        "subscriptions",
        "users",
        "audit",
    ] {
        let r = get(&app, &format!("{dir}/js/views/{view}.js"), &[]);
        assert_eq!(r.status, 200, "{view}");
    }

    // An unknown file is a 404; a stale hash still finds today's file, but not for keeps.
    let missing = get(&app, &format!("{dir}/js/nothing.js"), &[]);
    assert_eq!(missing.status, 404);
    let stale = get(&app, "/ui/assets/0000000000000000/js/app.js", &[]);
    assert_eq!(stale.status, 200);
    assert_eq!(header(&stale, "cache-control"), "no-cache");
    let escape = get(&app, &format!("{dir}/../../../Cargo.toml"), &[]);
    assert_eq!(escape.status, 404);
}

#[test]
fn the_dashboard_figures_include_health_and_disk_space() {
    let app = spawn_app();
    let s = app.admin("GET", "/admin/api/stats", None).data(200);
    assert_eq!(s["health"]["ready"], true, "{s}");
    assert_eq!(s["health"]["problems"], serde_json::json!([]), "{s}");
    assert!(s["health"]["writesQueued"].is_u64(), "{s}");
    let free = s["disk"]["freeBytes"].as_u64().expect("free bytes");
    let total = s["disk"]["totalBytes"].as_u64().expect("total bytes");
    assert!(free > 0 && free <= total, "{s}");
}
