//! The admin web UI: the files of `ui/`, embedded in the binary with rust-embed and served
//! under `/ui/`.
//!
//! Caching without a build step: every file but `index.html` is served under
//! `/ui/assets/<bundle hash>/…`, where the bundle hash is computed once at start from the
//! hashes of all embedded files. Those answers may be cached for a year (`immutable`): a
//! new build has a new hash, so a browser never runs old code against a new server.
//! `index.html` itself names the hashed directory and is served `no-cache` with an ETag,
//! so a reload costs one 304. Relative module imports stay inside the hashed directory.
//!
//! Every file is gzip-compressed once at start and sent compressed to clients that accept
//! it. Every answer carries a strict Content-Security-Policy (no inline script or style),
//! `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and `nosniff`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, VARY};
use http::StatusCode;
use sha2::{Digest, Sha256};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

/// The files of `ui/`. Release builds carry them; debug builds read them from the source
/// tree, so a change to the UI needs no rebuild while developing.
#[derive(rust_embed::RustEmbed)]
#[folder = "ui/"]
struct Files;

/// The placeholder in `index.html` that becomes the hashed asset directory.
const ASSETS_MARK: &str = "{{assets}}";

/// The Content-Security-Policy of every UI answer: only this server's own files, no
/// inline script or style, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One file, ready to send.
struct Asset {
    body: bytes::Bytes,
    /// The gzip form, when it is smaller.
    gzip: Option<bytes::Bytes>,
    etag: HeaderValue,
    mime: &'static str,
}

impl Asset {
    fn new(body: Vec<u8>, mime: &'static str) -> Asset {
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", hex(&digest[..12]));
        let gzip = gzip(&body).filter(|z| z.len() + 64 < body.len());
        Asset {
            body: body.into(),
            gzip: gzip.map(Into::into),
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            mime,
        }
    }
}

/// Everything the UI serves, built once at start.
struct Bundle {
    /// The hex bundle hash that names the asset directory.
    hash: String,
    index: Asset,
    assets: HashMap<String, Asset>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

/// The media type of a file, by its extension (the UI has only these kinds).
fn mime_of(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

impl Bundle {
    fn load() -> Bundle {
        let mut names: Vec<String> = Files::iter().map(|n| n.into_owned()).collect();
        names.sort();
        // The bundle hash covers every file's name and content hash, so any change to any
        // file gives a new asset directory.
        let mut all = Sha256::new();
        let mut assets = HashMap::new();
        let mut index = Vec::new();
        for name in &names {
            let Some(file) = Files::get(name) else {
                continue;
            };
            all.update(name.as_bytes());
            all.update(file.metadata.sha256_hash());
            if name == "index.html" {
                index = file.data.into_owned();
            } else {
                assets.insert(
                    name.clone(),
                    Asset::new(file.data.into_owned(), mime_of(name)),
                );
            }
        }
        let hash = hex(&all.finalize()[..8]);
        let dir = format!("/ui/assets/{hash}");
        let index = String::from_utf8_lossy(&index).replace(ASSETS_MARK, &dir);
        Bundle {
            hash,
            index: Asset::new(index.into_bytes(), mime_of("index.html")),
            assets,
        }
    }
}

/// The headers every UI answer carries.
fn protect(res: &mut Response) {
    let h = res.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// Sends `asset`: 304 when the client has it, gzip when the client takes it.
fn send(asset: &Asset, cache: &'static str, if_none_match: Option<&str>, accept: &str) -> Response {
    let etag = asset.etag.to_str().unwrap_or_default();
    let fresh = if_none_match.is_some_and(|tags| {
        tags.split(',')
            .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag)
    });
    let mut res = if fresh {
        let mut r = Response::new(bytes::Bytes::new().into());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let gz = asset.gzip.as_ref().filter(|_| accepts_gzip(accept));
        let mut r = Response::new(gz.unwrap_or(&asset.body).clone().into());
        if gz.is_some() {
            r.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.mime));
        r
    };
    let h = res.headers_mut();
    h.insert(ETAG, asset.etag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    protect(&mut res);
    res
}

/// Whether an `Accept-Encoding` value admits gzip (a `q=0` refuses it).
fn accepts_gzip(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut it = part.split(';');
        let name = it.next().unwrap_or_default().trim();
        let refused = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// A redirect to `to`, with the UI's headers.
fn redirect(to: &'static str) -> Response {
    let mut res = Response::new(bytes::Bytes::new().into());
    *res.status_mut() = StatusCode::MOVED_PERMANENTLY;
    res.headers_mut()
        .insert(http::header::LOCATION, HeaderValue::from_static(to));
    protect(&mut res);
    res
}

/// The UI's routes: `/ui` (redirect), `/ui/` (the page), `/ui/assets/<hash>/<file>`.
pub fn routes() -> BoxedFilter<(Response,)> {
    let bundle = Arc::new(Bundle::load());
    let read = warp::get().or(warp::head()).unify();
    let conditional = warp::header::optional::<String>("if-none-match")
        .and(warp::header::optional::<String>("accept-encoding"));

    // `/ui` and `/ui/` differ only by the trailing slash, which warp's path matching
    // ignores; the raw path tells them apart.
    let b = Arc::clone(&bundle);
    let index = warp::path("ui")
        .and(warp::path::end())
        .and(read)
        .and(warp::path::full())
        .and(conditional)
        .map(
            move |full: warp::path::FullPath, inm: Option<String>, ae: Option<String>| {
                if full.as_str() == "/ui" {
                    return redirect("/ui/");
                }
                send(
                    &b.index,
                    "no-cache",
                    inm.as_deref(),
                    ae.as_deref().unwrap_or(""),
                )
            },
        );
    let b = Arc::clone(&bundle);
    let assets = warp::path!("ui" / "assets" / String / ..)
        .and(warp::path::tail())
        .and(read)
        .and(conditional)
        .and_then(
            move |hash: String, tail: warp::path::Tail, inm: Option<String>, ae: Option<String>| {
                let b = Arc::clone(&b);
                async move {
                    let Some(asset) = b.assets.get(tail.as_str()) else {
                        return Err(warp::reject::not_found());
                    };
                    // A page loaded before an upgrade may still ask for the old directory:
                    // it gets today's file, but not for keeps.
                    let cache = if hash == b.hash {
                        "public, max-age=31536000, immutable"
                    } else {
                        "no-cache"
                    };
                    Ok(send(
                        asset,
                        cache,
                        inm.as_deref(),
                        ae.as_deref().unwrap_or(""),
                    ))
                }
            },
        );
    index.or(assets).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_acceptance() {
        assert!(accepts_gzip("gzip, deflate, br"));
        assert!(accepts_gzip("br;q=1.0, gzip;q=0.8"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br"));
        assert!(!accepts_gzip(""));
    }

    #[test]
    fn bundle_names_its_assets_in_the_page() {
        let b = Bundle::load();
        let page = String::from_utf8_lossy(&b.index.body);
        assert!(page.contains(&format!("/ui/assets/{}/", b.hash)), "{page}");
        assert!(!page.contains(ASSETS_MARK));
        assert!(b.assets.contains_key("js/app.js"));
        assert!(b.assets.contains_key("css/app.css"));
    }
}
