//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
//! base64-decoded part of a `whsec_…` secret. During a rotation both secrets sign, and the
//! header lists both signatures separated by a space.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret that is not `whsec_` + base64.
#[derive(Debug, thiserror::Error)]
#[error("a signing secret must be whsec_ followed by base64")]
pub struct BadSecret;

fn key_of(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let encoded = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
    STANDARD.decode(encoded).map_err(|_| BadSecret)
}

/// One `v1,<signature>` entry.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, BadSecret> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(secret)?).map_err(|_| BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header value: one entry per secret, space-separated.
pub fn header(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, BadSecret> {
    let parts = secrets
        .iter()
        .map(|s| signature(s, id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let sig = signature(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let new_secret = crate::secrets::signing_secret;
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert!(a.starts_with("whsec_") && key_of(&a).unwrap().len() == 32);
        let both = header(&[&a, &b], "msg_1", 10, b"{}").unwrap();
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(
            parts,
            vec![
                signature(&a, "msg_1", 10, b"{}").unwrap(),
                signature(&b, "msg_1", 10, b"{}").unwrap()
            ]
        );
        assert!(signature("nope", "m", 1, b"").is_err());
        assert!(signature("whsec_%%%", "m", 1, b"").is_err());
    }
}
