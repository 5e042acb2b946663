//! How records and keys become bytes.
//!
//! Values: one format-version byte, then bincode 2 (standard configuration) of the record.
//! Keys: built by hand, big-endian and fixed-width fields first, so that sled's
//! lexicographic order is the order we want (v7 UUIDs sort by creation time). A key is
//! never bincode-encoded: bincode's varints would break that ordering.

use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use super::StoreError;
use crate::model::Env;

/// A stored record type: what format version this build writes, and how older versions
/// are read. A record that changes shape bumps its `VERSION` and teaches `upgrade` the old
/// layout, so a store written by an older build opens with nothing lost.
pub trait Record: Serialize + DeserializeOwned {
    /// The format version this build writes.
    const VERSION: u8 = 1;

    /// Reads `body` written in an older format `version`.
    fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
        let _ = body;
        Err(StoreError::Codec(format!(
            "unknown record version {version}"
        )))
    }
}

/// The largest encoded record: well under sled 0.34's blob threshold (128 KiB), above which
/// a value is written to a separate file that sled's flush does not sync. Every record is
/// bounded by construction (capped histories, errors and texts); this is the backstop.
pub const MAX_RECORD_BYTES: usize = 100 * 1024;

/// Separates a variable-length partner code from what follows it in a key. `0xFF` never
/// occurs in a code (see [`crate::model::parse_partner_code`]), so prefixes never overlap:
/// `ACME ‖ 0xFF` is not a prefix of `ACMEX ‖ 0xFF`.
pub const SEP: u8 = 0xFF;

/// Encodes a record as version byte + bincode. A record over [`MAX_RECORD_BYTES`] is an
/// error, found before anything is written.
pub fn encode<T: Record>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![T::VERSION];
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard())
        .map_err(|e| StoreError::Codec(e.to_string()))?;
    if out.len() > MAX_RECORD_BYTES {
        return Err(StoreError::Codec(format!(
            "a record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a record written by [`encode`], by this build or an older one.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&v, rest)) if v == T::VERSION => decode_body(rest),
        Some((&v, rest)) => T::upgrade(v, rest),
        None => Err(StoreError::Codec("empty record".into())),
    }
}

/// The most memory one record's decoding may claim for its strings and lists. A damaged
/// length prefix can claim up to 2^64 bytes; without a limit bincode would try to
/// allocate them and abort the process. A record is at most [`MAX_RECORD_BYTES`] encoded,
/// which needs far less than this even as a list of empty strings.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Decodes the bincode body of a record (after its version byte).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, StoreError> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    bincode::serde::decode_from_slice(body, config)
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Codec(e.to_string()))
}

/// `env ‖ id`: the key of every environment-scoped entity (messages, payloads,
/// transmissions, requests). A key from one environment can never name a record of the
/// other, so lookups are isolated by construction.
pub fn env_id(env: Env, id: Uuid) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = env.byte();
    k[1..].copy_from_slice(id.as_bytes());
    k
}

/// `env ‖ partner ‖ 0xFF`: the prefix of one partner's entries in a per-partner index.
pub fn partner_prefix(env: Env, partner: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(partner.len() + 2);
    k.push(env.byte());
    k.extend_from_slice(partner.as_bytes());
    k.push(SEP);
    k
}

/// `env ‖ partner ‖ 0xFF ‖ id`: one entry of a per-partner index, ordered by id (time).
pub fn partner_id(env: Env, partner: &str, id: Uuid) -> Vec<u8> {
    let mut k = partner_prefix(env, partner);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The id at the end of a [`partner_id`] key.
pub fn trailing_id(key: &[u8]) -> Option<Uuid> {
    let start = key.len().checked_sub(16)?;
    Uuid::from_slice(&key[start..]).ok()
}

/// Value of a `receiver_pending` entry: lease expiry (unix ms, 0 = not leased), then the
/// doctype, so a poll can skip leased or filtered entries without reading the record.
pub fn pending_value(lease_until_ms: i64, doctype: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + doctype.len());
    v.extend_from_slice(&(lease_until_ms.max(0) as u64).to_be_bytes());
    v.extend_from_slice(doctype.as_bytes());
    v
}

/// Splits a `receiver_pending` value into lease expiry and doctype.
pub fn parse_pending_value(v: &[u8]) -> Option<(i64, &str)> {
    if v.len() < 8 {
        return None;
    }
    let (lease, doctype) = v.split_at(8);
    let lease = u64::from_be_bytes(lease.try_into().ok()?);
    Some((
        i64::try_from(lease).ok()?,
        std::str::from_utf8(doctype).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: Uuid,
        name: String,
        n: Option<i64>,
        list: Vec<(String, String)>,
    }

    impl Record for Sample {}
    impl Record for u32 {}

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Grown {
        name: String,
        added: u32,
    }

    impl Record for Grown {
        const VERSION: u8 = 2;
        fn upgrade(version: u8, body: &[u8]) -> Result<Self, StoreError> {
            match version {
                1 => Ok(Grown {
                    name: decode_body(body)?,
                    added: 0,
                }),
                v => Err(StoreError::Codec(format!("unknown version {v}"))),
            }
        }
    }

    #[test]
    fn older_versions_are_upgraded_and_oversized_records_refused() {
        let mut old = vec![1u8];
        bincode::serde::encode_into_std_write("x", &mut old, bincode::config::standard()).unwrap();
        let g: Grown = decode(&old).unwrap();
        assert_eq!(
            g,
            Grown {
                name: "x".into(),
                added: 0
            }
        );
        assert_eq!(decode::<Grown>(&encode(&g).unwrap()).unwrap(), g);
        assert!(decode::<Grown>(&[3, 0]).is_err());
        let big = Grown {
            name: "x".repeat(MAX_RECORD_BYTES),
            added: 1,
        };
        assert!(encode(&big).is_err());
    }

    #[test]
    fn records_round_trip_with_a_version_byte() {
        let s = Sample {
            id: Uuid::now_v7(),
            name: "ACME".into(),
            n: Some(-5),
            list: vec![("a".into(), "b".into())],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], Sample::VERSION);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        let mut bytes = encode(&1u32).unwrap();
        bytes[0] = 99;
        assert!(decode::<u32>(&bytes).is_err());
        assert!(decode::<u32>(&[]).is_err());
        assert!(decode::<Sample>(&[Sample::VERSION, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn keys_sort_by_time_within_a_partner_and_never_across_partners() {
        let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| partner_id(Env::Live, "ACME", *id))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "v7 ids keep creation order in the index");
        for (k, id) in keys.iter().zip(&ids) {
            assert_eq!(trailing_id(k), Some(*id));
        }

        let acme = partner_prefix(Env::Live, "ACME");
        let acmex = partner_id(Env::Live, "ACMEX", ids[0]);
        assert!(
            !acmex.starts_with(&acme),
            "ACME's prefix must not cover ACMEX"
        );
        let test = partner_id(Env::Test, "ACME", ids[0]);
        assert!(
            !test.starts_with(&acme),
            "environments never share a prefix"
        );
        assert_ne!(env_id(Env::Live, ids[0]), env_id(Env::Test, ids[0]));
    }

    #[test]
    fn pending_values_round_trip() {
        let v = pending_value(1_700_000_000_123, "order");
        assert_eq!(parse_pending_value(&v), Some((1_700_000_000_123, "order")));
        assert_eq!(parse_pending_value(&pending_value(0, "")), Some((0, "")));
        assert_eq!(parse_pending_value(&[1, 2]), None);
    }
}
