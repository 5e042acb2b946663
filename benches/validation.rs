//! The cost of validating a 1 KiB order against a 30-property JSON Schema, as intake does
//! it (parse the payload, run the compiled schema), next to the parse alone and the lookup
//! that intake makes when no schema applies.
//!
//! `cargo bench --bench validation`

use std::hint::black_box;
use std::time::Instant;

use waybill::store::records::SchemaRec;
use waybill::validation::{compile, Compiled, Schemas};

/// A schema with 30 properties of the usual kinds: strings with patterns and lengths,
/// numbers with bounds, enums, a date format, a nested object and an array of lines.
fn schema() -> String {
    let mut props = serde_json::Map::new();
    for i in 0..20 {
        props.insert(
            format!("field{i:02}"),
            serde_json::json!({"type": "string", "minLength": 1, "maxLength": 40}),
        );
    }
    for (name, spec) in [
        (
            "orderId",
            serde_json::json!({"type": "string", "pattern": "^PO-[0-9]{4}-[0-9]{6}$"}),
        ),
        (
            "currency",
            serde_json::json!({"enum": ["EUR", "USD", "GBP"]}),
        ),
        (
            "orderDate",
            serde_json::json!({"type": "string", "format": "date"}),
        ),
        ("total", serde_json::json!({"type": "number", "minimum": 0})),
        (
            "priority",
            serde_json::json!({"type": "integer", "minimum": 1, "maximum": 5}),
        ),
        ("express", serde_json::json!({"type": "boolean"})),
        (
            "comment",
            serde_json::json!({"type": "string", "maxLength": 200}),
        ),
        (
            "buyer",
            serde_json::json!({
                "type": "object",
                "required": ["code", "name"],
                "properties": {"code": {"type": "string"}, "name": {"type": "string"}}
            }),
        ),
        (
            "tags",
            serde_json::json!({"type": "array", "items": {"type": "string"}, "maxItems": 10}),
        ),
        (
            "lines",
            serde_json::json!({
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "qty"],
                    "properties": {
                        "sku": {"type": "string", "pattern": "^SKU-"},
                        "qty": {"type": "integer", "minimum": 1},
                        "price": {"type": "number", "minimum": 0}
                    }
                }
            }),
        ),
    ] {
        props.insert(name.to_owned(), spec);
    }
    assert_eq!(props.len(), 30);
    serde_json::json!({
        "type": "object",
        "required": ["orderId", "currency", "buyer", "lines"],
        "properties": props,
        "additionalProperties": false
    })
    .to_string()
}

/// An order of about 1 KiB that passes the schema.
fn document() -> Vec<u8> {
    let mut doc = serde_json::json!({
        "orderId": "PO-2026-000123",
        "currency": "EUR",
        "orderDate": "2026-11-29",
        "total": 1234.5,
        "priority": 2,
        "express": false,
        "comment": "deliver to dock 4, ring twice",
        "buyer": {"code": "ACME", "name": "Acme Corporation"},
        "tags": ["q4", "restock"],
        "lines": (1..8).map(|i| serde_json::json!({
            "sku": format!("SKU-{i:05}"), "qty": i, "price": f64::from(i) * 3.95
        })).collect::<Vec<_>>(),
    });
    for i in 0..8 {
        doc[format!("field{i:02}")] = serde_json::json!(format!("value of field {i}"));
    }
    let mut bytes = serde_json::to_vec(&doc).unwrap();
    while bytes.len() < 1024 {
        bytes.insert(bytes.len() - 1, b' ');
    }
    bytes
}

fn compiled() -> Compiled {
    compile(SchemaRec {
        id: uuid::Uuid::now_v7(),
        doctype: "order".into(),
        version: "*".into(),
        json_schema: Some(schema()),
        xml_root: None,
        max_bytes: None,
        content_types: Vec::new(),
        created_at: 0,
    })
    .expect("the schema compiles")
}

fn time(name: &str, rounds: u32, f: impl Fn() -> bool) {
    for _ in 0..rounds / 10 {
        assert!(f());
    }
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(f());
    }
    let per = started.elapsed().as_nanos() as f64 / f64::from(rounds);
    println!("{name:<44} {:>9.3} µs", per / 1000.0);
}

fn main() {
    let schema = compiled();
    let doc = document();
    let mut bad: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    bad["lines"][2]["qty"] = serde_json::json!(0);
    bad["orderId"] = serde_json::json!("X");
    let bad = serde_json::to_vec(&bad).unwrap();
    let rounds = 50_000;
    println!("schema: 30 properties; document: {} bytes", doc.len());
    time("valid order: parse + validate", rounds, || {
        schema.check("application/json", black_box(&doc)).is_empty()
    });
    time("invalid order (2 errors): parse + validate", rounds, || {
        schema.check("application/json", black_box(&bad)).len() == 2
    });
    time("serde_json::Value parse alone", rounds, || {
        serde_json::from_slice::<serde_json::Value>(black_box(&doc)).is_ok()
    });
    // Intake's whole cost when no schema applies: one lookup in the snapshot.
    let others = Schemas::from_compiled([compiled()]);
    time("no schema for the doctype: lookup", rounds * 10, || {
        others.lookup(black_box("invoice"), Some("1")).is_none()
    });
    time("schema found: lookup", rounds * 10, || {
        others.lookup(black_box("order"), Some("1")).is_some()
    });
}
