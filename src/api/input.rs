//! Checks of raw client input that no type can do for us: that a JSON payload is UTF-8,
//! well-formed and not too deep, and that a query string decodes to text.

use http::StatusCode;
use serde::Deserialize as _;

use crate::error::ApiError;

/// The name of the first parameter of a raw query whose name or value does not
/// percent-decode to UTF-8 (`+` is a space), lossily decoded.
pub(super) fn param_not_text(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        // The HTTP layer lets only visible ASCII into the query, and no escapes means no
        // other bytes.
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode(s.replace('+', " ").as_bytes()).collect::<Vec<u8>>()
    };
    raw.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name);
        let text =
            std::str::from_utf8(&name).is_ok() && std::str::from_utf8(&decode(value)).is_ok();
        (!text).then(|| String::from_utf8_lossy(&name).into_owned())
    })
}

/// Deepest nesting of arrays and objects accepted in a JSON payload.
pub const MAX_JSON_DEPTH: usize = 128;

/// Checks a payload whose content type is JSON: UTF-8 (RFC 8259), well-formed, and
/// nested at most [`MAX_JSON_DEPTH`] deep, so that every receiver's parser can read what
/// it is handed. (The parse skips over strings without checking their bytes, hence the
/// separate UTF-8 check.)
pub fn check_json_payload(bytes: &[u8]) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", why);
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(invalid(format!(
            "the JSON payload is not UTF-8: invalid bytes at offset {}",
            e.valid_up_to()
        )));
    }
    if !json_depth_within(bytes, MAX_JSON_DEPTH) {
        return Err(invalid(format!(
            "the JSON payload nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    serde::de::IgnoredAny::deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| invalid(format!("the payload is not valid JSON: {e}")))
}

/// Whether arrays and objects in `bytes` nest at most `max` deep (brackets inside
/// strings do not count). A quick pass that needs no parse; it does not check syntax.
/// Outside strings it looks bytes up in a table; inside them it jumps with `memchr` to
/// the next quote or backslash, since most of a document's bytes are string contents.
pub fn json_depth_within(bytes: &[u8], max: usize) -> bool {
    const OPEN: u8 = 1;
    const CLOSE: u8 = 2;
    const QUOTE: u8 = 3;
    const CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        t[b'[' as usize] = OPEN;
        t[b'{' as usize] = OPEN;
        t[b']' as usize] = CLOSE;
        t[b'}' as usize] = CLOSE;
        t[b'"' as usize] = QUOTE;
        t
    };
    let (mut depth, mut i, n) = (0usize, 0usize, bytes.len());
    while i < n {
        match CLASS[usize::from(bytes[i])] {
            0 => {}
            OPEN => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            CLOSE => depth = depth.saturating_sub(1),
            _ => {
                // A string: to the quote that ends it, skipping escaped characters.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', bytes.get(i..).unwrap_or_default()) {
                        None => return true,
                        Some(k) if bytes[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k;
                            break;
                        }
                    }
                }
            }
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_must_decode_to_text() {
        for ok in [
            "",
            "a=b",
            "a=%20b+c",
            "%C3%A9=%F0%9F%98%80",
            "a",
            "a=%",
            "a=%zz",
        ] {
            assert_eq!(param_not_text(ok), None, "{ok}");
        }
        assert_eq!(
            param_not_text("a=1&version=%ff%fe").as_deref(),
            Some("version")
        );
        assert_eq!(param_not_text("x=1&%ff=1").as_deref(), Some("\u{fffd}"));
        assert_eq!(param_not_text("v=%C3").as_deref(), Some("v"));
        assert_eq!(
            param_not_text("v=%ED%A0%80").as_deref(),
            Some("v"),
            "a surrogate"
        );
    }

    #[test]
    fn json_depth_counts_brackets_outside_strings_only() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(json_depth_within(nest(128).as_bytes(), 128));
        assert!(!json_depth_within(nest(129).as_bytes(), 128));
        assert!(json_depth_within(
            br#"{"a":"[[[[","b":"\"[[[","c":"\\"}"#,
            1
        ));
        assert!(
            !json_depth_within(br#"{"a":"\\",[[]]}"#, 2),
            "an escaped backslash ends no string"
        );
        assert!(json_depth_within(br#"[1,"unterminated [[[["#, 1));
        assert!(json_depth_within(b"", 0));
        for (bytes, ok) in [
            (&b"{\"a\":[1,2,{\"b\":null}]}"[..], true),
            (b"{\"a\":", false),
            (b"[1] [2]", false),
            (b"\"x\"", true),
            (b" 12 ", true),
            (b"", false),
            (b"{\"a\":\"\xff\"}", false),
            (b"{\"\xc3\":1}", false),
            ("{\"\u{e9}\":\"\u{1f600}\"}".as_bytes(), true),
        ] {
            assert_eq!(
                check_json_payload(bytes).is_ok(),
                ok,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let e = check_json_payload(nest(129).as_bytes()).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        let e = check_json_payload(b"[\"\xed\xa0\x80\"]").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
    }
}
