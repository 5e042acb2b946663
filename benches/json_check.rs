//! The cost of the intake's JSON payload check (syntax and nesting depth), per 1 KiB
//! document, next to the bare depth scan and a full `serde_json::Value` parse for scale.
//!
//! `cargo bench --bench json_check`

use std::hint::black_box;
use std::time::Instant;

fn document() -> Vec<u8> {
    // An order of about 1 KiB, like the intake benchmark's bodies.
    let lines: Vec<String> = (0..9)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{i:05}","qty":{i},"price":{}.95,"note":"line {i}"}}"#,
                i * 3
            )
        })
        .collect();
    let doc = format!(
        r#"{{"orderId":"PO-2026-000123","buyer":{{"code":"ACME","name":"Acme Corporation"}},"currency":"EUR","lines":[{}],"comment":"deliver to dock 4, ring twice"}}"#,
        lines.join(",")
    );
    let mut bytes = doc.into_bytes();
    while bytes.len() < 1024 {
        bytes.insert(bytes.len() - 1, b' ');
    }
    bytes
}

fn time(name: &str, rounds: u32, bytes: &[u8], f: impl Fn(&[u8]) -> bool) {
    for _ in 0..rounds / 10 {
        assert!(f(black_box(bytes)));
    }
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(f(black_box(bytes)));
    }
    let per = started.elapsed().as_nanos() as f64 / f64::from(rounds);
    println!(
        "{name:<28} {:>8.0} ns per {} B document ({:.0} ns per KiB)",
        per,
        bytes.len(),
        per * 1024.0 / bytes.len() as f64
    );
}

fn main() {
    let doc = document();
    let rounds = 200_000;
    time("intake check (depth+syntax)", rounds, &doc, |b| {
        waybill::api::check_json_payload(b).is_ok()
    });
    time("depth scan alone", rounds, &doc, |b| {
        waybill::api::json_depth_within(b, 128)
    });
    time("serde_json::Value parse", rounds, &doc, |b| {
        serde_json::from_slice::<serde_json::Value>(b).is_ok()
    });
}
