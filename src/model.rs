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
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'*' | b','));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid(
            "must be 1-64 visible ASCII characters without '/', '*' or ','".into(),
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
        for bad in ["", "*", "a/b", "a b", "a,b"] {
            assert!(parse_doctype(bad).is_err(), "{bad}");
        }
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
