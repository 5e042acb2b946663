//! Domain types shared by the store, the API and the workers: environments, partner codes,
//! statuses and the parsing rules that turn raw input into them.

use serde::{Deserialize, Serialize};

/// Which side of the appliance a key, message or transmission belongs to. The two never
/// mix: the environment is the first byte of every environment-scoped store key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    Live,
    Test,
}

impl Env {
    /// The byte that leads store keys of this environment.
    pub fn byte(self) -> u8 {
        match self {
            Env::Live => 0,
            Env::Test => 1,
        }
    }

    /// The inverse of [`Env::byte`].
    pub fn from_byte(b: u8) -> Option<Env> {
        match b {
            0 => Some(Env::Live),
            1 => Some(Env::Test),
            _ => None,
        }
    }

    /// `live` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Env::Live => "live",
            Env::Test => "test",
        }
    }

    /// Parses `live` or `test`.
    pub fn parse(s: &str) -> Option<Env> {
        match s {
            "live" => Some(Env::Live),
            "test" => Some(Env::Test),
            _ => None,
        }
    }
}

/// Why a piece of input was refused; the API turns it into a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// A partner code such as `ACME`: 1–32 characters of `A-Z`, `0-9`, `_` and `-`.
/// The alphabet matters beyond looks: codes are embedded in store keys followed by a
/// `0xFF` separator, which can never occur inside a code.
pub fn parse_partner_code(raw: &str) -> Result<String, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= 32
        && raw
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid(
            "must be 1-32 characters of A-Z, 0-9, '_' or '-' (for example ACME)".into(),
        ))
    }
}

/// A document type such as `order` or `invoice`: 1–64 printable ASCII characters without
/// spaces, `/`, `*` or `,` (`*` is reserved for routes that allow every doctype).
pub fn parse_doctype(raw: &str) -> Result<String, Invalid> {
    // A doctype is a path segment of `/api/v1/documents/{doctype}/{id}` and of the
    // `Location` answers that name it: nothing a URL resolver would read as a step up, a
    // separator, an escape, a query or a fragment.
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw != "."
        && raw != ".."
        && raw.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'/' | b'\\' | b'*' | b',' | b'%' | b'?' | b'#')
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid(
            "must be 1-64 visible ASCII characters without '/', '\\', '*', ',', '%', '?' or '#', \
             and not '.' or '..'"
                .into(),
        ))
    }
}

/// A short free-text reference or version: at most `max` characters, no control characters.
pub fn parse_short_text(raw: &str, max: usize) -> Result<String, Invalid> {
    if raw.chars().count() > max || raw.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "must be at most {max} characters without control characters"
        )));
    }
    Ok(raw.to_owned())
}

/// Longest content type accepted, in bytes.
pub const MAX_MEDIA_TYPE: usize = 255;

/// A content type such as `text/plain; charset=utf-8`, checked as an RFC 9110 media
/// type: `type/subtype` of token characters, then `; name=value` parameters whose value
/// is a token or a quoted string. At most 255 bytes of printable ASCII, so it can be sent
/// on as a header as it is. Returned trimmed, otherwise as given.
pub fn parse_media_type(raw: &str) -> Result<String, Invalid> {
    let s = raw.trim_matches([' ', '\t']);
    let fail = |why: &str| {
        Err(Invalid(format!(
            "is not a media type such as text/plain: {why}"
        )))
    };
    if s.len() > MAX_MEDIA_TYPE {
        return Err(Invalid(format!(
            "must be at most {MAX_MEDIA_TYPE} bytes long"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return fail(&format!("{c:?} is not printable ASCII"));
    }
    let b = s.as_bytes();
    let mut i = 0;
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        *i > start
    };
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    if !token(&mut i) || b.get(i) != Some(&b'/') {
        return fail("it needs a type and a subtype separated by '/'");
    }
    i += 1;
    if !token(&mut i) {
        return fail("the subtype is missing");
    }
    loop {
        ows(&mut i);
        if i == b.len() {
            return Ok(s.to_owned());
        }
        if b[i] != b';' {
            return fail("parameters must follow ';'");
        }
        i += 1;
        ows(&mut i);
        // An empty parameter (`;;`, or a trailing `;`) is allowed by RFC 9110.
        if i == b.len() || b[i] == b';' {
            continue;
        }
        if !token(&mut i) || b.get(i) != Some(&b'=') {
            return fail("a parameter must be name=value");
        }
        i += 1;
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return fail("a quoted parameter value is not closed"),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => i += 2,
                    Some(_) => i += 1,
                }
            }
        } else if !token(&mut i) {
            return fail("a parameter value must be a token or a quoted string");
        }
    }
}

/// RFC 9110 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The `type/subtype` of a checked media type, lowercased.
pub fn media_essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The life of a message (and of each of its transmissions).
///
/// `queued` → `processing` → `processed` (delivered or fetched) → `complete`
/// (acknowledged); or `failed`, `invalid`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Processing,
    Processed,
    Complete,
    Failed,
    Invalid,
    Cancelled,
}

impl Status {
    /// Every status, in the order the tracking summary lists them.
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Processing,
        Status::Processed,
        Status::Complete,
        Status::Failed,
        Status::Invalid,
        Status::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Processing => "processing",
            Status::Processed => "processed",
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Invalid => "invalid",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether nothing more will happen to a transmission in this status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Complete | Status::Failed | Status::Invalid | Status::Cancelled
        )
    }

    /// The status of a message from those of its transmissions: the least advanced one.
    /// A failure anywhere fails the message; cancelled transmissions are left out unless
    /// all of them are cancelled.
    pub fn of_message(transmissions: impl IntoIterator<Item = Status>) -> Status {
        let mut least: Option<Status> = None;
        let mut any = false;
        for s in transmissions {
            any = true;
            match s {
                Status::Failed | Status::Invalid => return s,
                Status::Cancelled => {}
                s => {
                    let rank = |s: Status| Self::ALL.iter().position(|x| *x == s);
                    if least.is_none_or(|l| rank(s) < rank(l)) {
                        least = Some(s);
                    }
                }
            }
        }
        match (least, any) {
            (Some(s), _) => s,
            (None, true) => Status::Cancelled,
            (None, false) => Status::Queued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_codes() {
        for ok in ["ACME", "A", "GLOBEX-2", "X_Y", &"A".repeat(32)] {
            assert!(parse_partner_code(ok).is_ok(), "{ok}");
        }
        for bad in ["", "acme", "AC ME", "A/B", "Ä", &"A".repeat(33), "A\u{ff}"] {
            assert!(parse_partner_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn doctypes() {
        assert!(parse_doctype("order").is_ok());
        assert!(parse_doctype("invoice.v2").is_ok());
        assert!(parse_doctype("..order").is_ok());
        for bad in [
            "", "*", "a/b", "a b", "a,b", ".", "..", "a\\b", "a%2F", "a?b", "a#b",
        ] {
            assert!(parse_doctype(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_types() {
        for ok in [
            "text/plain",
            "application/vnd.acme+json",
            " text/plain ; charset=utf-8 ",
            "multipart/mixed; boundary=\"a \\\" b;c\"",
            "text/plain;;",
            "text/plain; a=1; b=\"\"",
        ] {
            assert!(parse_media_type(ok).is_ok(), "{ok}");
        }
        let long = format!("text/{}", "x".repeat(251));
        for bad in [
            "",
            "text",
            "text/",
            "/plain",
            "text /plain",
            "text/plain\r\nX-Injected: yes",
            "tëxt/plain",
            "text/plain; charset",
            "text/plain; =x",
            "text/plain; charset=\"utf-8",
            "text/plain; charset=a b",
            "text/plain x",
            long.as_str(),
        ] {
            assert!(parse_media_type(bad).is_err(), "{bad:?}");
        }
        assert!(parse_media_type(&long[1..]).is_ok(), "255 bytes fit");
        assert_eq!(media_essence("Text/Plain; x=1"), "text/plain");
    }

    #[test]
    fn message_status_is_the_least_advanced() {
        use Status::*;
        let cases: &[(&[Status], Status)] = &[
            (&[Queued], Queued),
            (&[Complete, Queued], Queued),
            (&[Complete, Processed], Processed),
            (&[Complete, Complete], Complete),
            (&[Complete, Failed], Failed),
            (&[Cancelled, Complete], Complete),
            (&[Cancelled, Cancelled], Cancelled),
            (&[Processing, Processed], Processing),
        ];
        for (txs, want) in cases {
            assert_eq!(Status::of_message(txs.iter().copied()), *want, "{txs:?}");
        }
    }

    #[test]
    fn env_bytes_round_trip() {
        for e in [Env::Live, Env::Test] {
            assert_eq!(Env::from_byte(e.byte()), Some(e));
            assert_eq!(Env::parse(e.as_str()), Some(e));
        }
        assert_eq!(Env::from_byte(9), None);
    }
}
