//! Property tests of the parsers that read what a client sends: query strings, media
//! types, names, JSON payloads and tracking criteria. Whatever the input, each answers a
//! value or a 4xx error, never panics, and what it accepts keeps its invariants.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{check_json_payload, json_depth_within, param_not_text, MAX_JSON_DEPTH};
use crate::model::{parse_doctype, parse_media_type, parse_partner_code, parse_short_text, Env};

/// Any JSON value, up to a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "id",
            "messageType",
            "messageStatus",
            "receivedDate",
            "externalReference",
            "processedDate",
            "batchReference",
            "asc",
            "desc",
            "2026-11-29",
            "2026-02-30",
            "9999-99-99",
            "-1",
            "",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop::sample::select(vec![
                    "search", "paging", "sorts", "by", "value", "order", "number", "size", "x",
                ])
                .prop_map(String::from),
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The nesting depth of a value: a scalar is 0, `[]` is 1.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `s` percent-encoded byte by byte, as a form would send it.
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_query_is_judged_without_panicking(raw in "[ -~]{0,80}") {
        let _ = param_not_text(&raw);
    }

    #[test]
    fn text_queries_pass_and_bad_bytes_are_named(
        name in "[a-z]{1,8}",
        value in "\\PC{0,16}",
        bad in 0x80u8..=0xff,
    ) {
        let good = format!("{}={}", encode_all(&name), encode_all(&value));
        prop_assert_eq!(param_not_text(&good), None);
        // A lone byte over 0x7f is never UTF-8 on its own.
        let raw = format!("{good}&{name}={}%{bad:02X}", encode_all(&value));
        prop_assert_eq!(param_not_text(&raw), Some(name));
    }

    #[test]
    fn media_types_are_printable_bounded_and_stable(raw in "\\PC{0,40}|[a-z]{1,8}/[a-z+.-]{1,12}(; ?[a-z]{1,6}=(\"[ -~]{0,8}\"|[a-z0-9]{1,6}))*") {
        if let Ok(m) = parse_media_type(&raw) {
            prop_assert!(m.len() <= 255 && m.bytes().all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t'));
            prop_assert!(m.contains('/'));
            prop_assert_eq!(parse_media_type(&m).ok(), Some(m.clone()), "not stable: {:?}", m);
        }
    }

    #[test]
    fn names_accepted_are_safe_in_keys_and_urls(raw in "\\PC{0,70}|[A-Za-z0-9._%/\\\\-]{1,5}") {
        if let Ok(code) = parse_partner_code(&raw) {
            prop_assert!(!code.as_bytes().contains(&0xFF) && (1..=32).contains(&code.len()));
        }
        if let Ok(d) = parse_doctype(&raw) {
            prop_assert!(d != "." && d != ".." && (1..=64).contains(&d.len()));
            prop_assert!(!d.contains(['/', '\\', '%', '?', '#', '*', ',', ' ']));
        }
        if let Ok(t) = parse_short_text(&raw, 64) {
            prop_assert!(t.chars().count() <= 64 && !t.chars().any(char::is_control));
        }
    }

    #[test]
    fn json_payloads_pass_exactly_when_valid_and_shallow(v in json_value(), wrap in 0usize..140) {
        let text = format!("{}{}{}", "[".repeat(wrap), v, "]".repeat(wrap));
        let deep = depth(&v) + wrap;
        prop_assert_eq!(json_depth_within(text.as_bytes(), MAX_JSON_DEPTH), deep <= MAX_JSON_DEPTH);
        prop_assert_eq!(check_json_payload(text.as_bytes()).is_ok(), deep <= MAX_JSON_DEPTH);
    }

    #[test]
    fn any_bytes_as_a_json_payload_pass_only_if_json(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let parsed = serde_json::from_slice::<Value>(&bytes).is_ok();
        prop_assert_eq!(check_json_payload(&bytes).is_ok(), parsed);
    }

    #[test]
    fn tracking_criteria_parse_or_get_a_4xx(body in json_value(), criteria in proptest::collection::vec(json_value(), 0..4)) {
        let now = 1_764_374_400_000;
        for b in [body.clone(), json!({"search": criteria, "paging": body, "sorts": [body]})] {
            if let Err(e) = super::tracking::parse_search(Env::Live, "ACME", &b, now) {
                prop_assert!(e.status.is_client_error(), "{b}: {}", e.status);
            }
        }
    }
}
