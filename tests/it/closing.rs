//! How connections end: an answer is delivered whole even when the server closes the
//! connection without reading all of what the client sent.
//!
//! A socket closed with unread bytes in its receive buffer makes the kernel send a reset,
//! and a reset discards what the client had not read yet. Clients that send a body the
//! handler never reads (a GET with a body, an upload refused by its credentials) must
//! still get the full answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::spawn_app;

/// Reads from `s` until the server closes it; returns the bytes and the error that
/// ended the read, if it was not a clean close.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The body of a complete `Content-Length` answer in `bytes`, if it is complete.
fn whole_body(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    bytes.get(end..end + len)
}

#[test]
fn a_large_answer_arrives_whole_when_the_request_body_was_not_read() {
    let app = spawn_app();
    // About half a megabyte of listing: more than the client reads before the server is
    // done with the connection.
    for i in 0..8 {
        let schema = json!({"doctype": format!("big{i}"), "jsonSchema": {"description": "x".repeat(60_000)}});
        app.admin("POST", "/admin/api/schemas", Some(schema))
            .data(201);
    }
    for round in 0..3 {
        let mut s = TcpStream::connect(app.addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let head = format!(
            "GET /admin/api/schemas HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 4\r\n\r\n",
            app.token
        );
        // The body comes in its own segment, after the handler has begun: it stays in
        // the server's receive buffer, unread.
        s.write_all(head.as_bytes()).expect("head");
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"null").expect("body");
        // A slow client: the server has written what the socket takes, and finished.
        std::thread::sleep(Duration::from_millis(500));
        let (bytes, error) = read_to_close(&mut s);
        let body = whole_body(&bytes);
        assert!(
            error.is_none() && body.is_some(),
            "round {round}: {} bytes read, then {error:?}",
            bytes.len()
        );
        let list: serde_json::Value =
            serde_json::from_slice(body.unwrap_or_default()).expect("json");
        assert_eq!(list["data"].as_array().map(Vec::len), Some(8));
    }
}

#[test]
fn an_upload_refused_before_its_body_is_read_gets_its_answer() {
    let app = spawn_app();
    let mut s = TcpStream::connect(app.addr).expect("connect");
    let head =
        "POST /admin/api/partners HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wba_wrong\r\n\
                Content-Type: application/json\r\nContent-Length: 300000\r\n\r\n";
    s.write_all(head.as_bytes()).expect("head");
    // The client goes on sending the body it announced while the answer is on its way.
    let started = Instant::now();
    let chunk = vec![b' '; 16 * 1024];
    let mut sent = 0;
    while sent < 300_000 && started.elapsed() < Duration::from_secs(5) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (bytes, error) = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 401") && whole_body(&bytes).is_some(),
        "after {sent} bytes sent: {text:?}, then {error:?}"
    );
}
