//! Where every secret Waybill makes comes from: API keys, the admin token, signing
//! secrets and the key partner tokens are signed with. All of them are drawn from the operating system's random source; nothing else in
//! the crate calls it for secrets, so there is one place to audit.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct NoRandomness(String);

impl From<NoRandomness> for std::io::Error {
    fn from(e: NoRandomness) -> Self {
        std::io::Error::other(e.to_string())
    }
}

fn random_bytes(n: usize) -> Result<Vec<u8>, NoRandomness> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(buf)
}

/// `n` random bytes as unpadded base64url: the secret part of API keys and tokens.
pub fn random_token(n: usize) -> Result<String, NoRandomness> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(n)?))
}

/// A new Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes.
pub fn signing_secret() -> Result<String, NoRandomness> {
    Ok(format!("whsec_{}", STANDARD.encode(random_bytes(32)?)))
}

/// A new key for signing partner tokens (HS256): 256 random bits.
pub fn token_signing_key() -> Result<Vec<u8>, NoRandomness> {
    random_bytes(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_their_shape_and_differ() {
        let (a, b) = (signing_secret().unwrap(), signing_secret().unwrap());
        assert!(a.starts_with("whsec_") && a != b);
        let key = STANDARD.decode(a.trim_start_matches("whsec_")).unwrap();
        assert_eq!(key.len(), 32);
        let t = random_token(24).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 24);
        let (k1, k2) = (token_signing_key().unwrap(), token_signing_key().unwrap());
        assert!(k1.len() == 32 && k1 != k2);
    }
}
