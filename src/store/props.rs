//! Property tests of what the store reads back from disk: records, keys and payloads.
//! Whatever the bytes (a torn write, a flipped bit, a record from a build that wrote
//! something else), decoding answers a value or an error and never panics or asks for
//! more memory than the bytes could describe.

use proptest::prelude::*;

use super::codec::{self, decode, parse_pending_value, pending_value, trailing_id};
use super::payload_log::{PayloadLog, PayloadRef};
use crate::model::Env;

/// Bytes that look like a record: a version byte, then either noise or a bincode length
/// prefix claiming up to 2^64 elements, then noise.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    let noise = proptest::collection::vec(any::<u8>(), 0..256);
    let huge_len = (
        0u8..4,
        prop::sample::select(vec![251u8, 252, 253]),
        any::<[u8; 8]>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(v, marker, len, rest)| {
            let mut b = vec![v, marker];
            b.extend_from_slice(&len);
            b.extend_from_slice(&rest);
            b
        });
    prop_oneof![noise, huge_len]
}

/// Decodes `bytes` as every stored record type; each must answer without panicking.
fn decode_as_every_record(bytes: &[u8]) {
    use super::{admins, background, bulk, records, subscriptions};
    let _ = decode::<records::PartnerRec>(bytes);
    let _ = decode::<records::DeliveryRec>(bytes);
    let _ = decode::<records::EndpointHealthRec>(bytes);
    let _ = decode::<records::AttemptRec>(bytes);
    let _ = decode::<records::ApiKeyRec>(bytes);
    let _ = decode::<records::TokenKeyRec>(bytes);
    let _ = decode::<records::RouteRec>(bytes);
    let _ = decode::<records::RequestRec>(bytes);
    let _ = decode::<records::SchemaRec>(bytes);
    let _ = decode::<records::MessageRec>(bytes);
    let _ = decode::<background::JobRec>(bytes);
    let _ = decode::<background::StoredResponse>(bytes);
    let _ = decode::<super::idempotency::IdempotencyRec>(bytes);
    let _ = decode::<subscriptions::SubscriptionRec>(bytes);
    let _ = decode::<admins::AdminUserRec>(bytes);
    let _ = decode::<admins::SessionRec>(bytes);
    let _ = decode::<admins::AuditRec>(bytes);
    let _ = decode::<bulk::BulkRec>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_decode_to_a_record_or_an_error(bytes in record_bytes()) {
        decode_as_every_record(&bytes);
    }

    #[test]
    fn a_damaged_record_decodes_or_errs(
        cut in 0usize..200,
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
    ) {
        // A real record, torn at `cut` and with a few bytes changed.
        let rec = super::records::RouteRec {
            id: uuid::Uuid::from_u128(7),
            sender: "ACME".into(),
            receiver: "GLOBEX".into(),
            doctype: "order".into(),
            live_only: true,
            created_at: 1_700_000_000_000,
        };
        let mut bytes = codec::encode(&rec).unwrap();
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        bytes.truncate(cut.min(bytes.len()));
        decode_as_every_record(&bytes);
    }

    #[test]
    fn pending_values_round_trip(lease in any::<i64>(), doctype in "\\PC{0,64}") {
        let v = pending_value(lease, &doctype);
        prop_assert_eq!(parse_pending_value(&v), Some((lease.max(0), doctype.as_str())));
    }

    #[test]
    fn any_key_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_pending_value(&bytes);
        prop_assert_eq!(trailing_id(&bytes).is_some(), bytes.len() >= 16);
    }

    #[test]
    fn partner_prefixes_never_overlap(a in "[A-Z0-9_-]{1,16}", b in "[A-Z0-9_-]{1,16}") {
        prop_assume!(a != b);
        let (pa, pb) = (codec::partner_prefix(Env::Live, &a), codec::partner_prefix(Env::Live, &b));
        prop_assert!(!pa.starts_with(&pb) && !pb.starts_with(&pa));
        prop_assert!(!codec::partner_prefix(Env::Test, &a).starts_with(&pa));
    }

    #[test]
    fn payloads_read_back_and_damage_is_caught(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
        at in any::<usize>(),
        x in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = PayloadLog::open(dir.path()).unwrap();
        let refs: Vec<PayloadRef> = payloads.iter().map(|p| log.append(p).unwrap()).collect();
        log.sync().unwrap();
        for (r, p) in refs.iter().zip(&payloads) {
            prop_assert_eq!(&log.read(r).unwrap()[..], &p[..]);
        }
        // One byte of the segment changed behind the log's back.
        let seg = dir.path().join(format!("{:08}.seg", refs[0].segment));
        let mut bytes = std::fs::read(&seg).unwrap();
        prop_assume!(!bytes.is_empty());
        let i = at % bytes.len();
        bytes[i] ^= x;
        std::fs::write(&seg, &bytes).unwrap();
        let log = PayloadLog::open(dir.path()).unwrap();
        for (r, p) in refs.iter().zip(&payloads) {
            let hit = (r.offset..r.offset + u64::from(r.len)).contains(&(i as u64));
            match log.read(r) {
                Ok(b) => prop_assert!(!hit && b[..] == p[..], "damage at {i} not caught in {r:?}"),
                Err(_) => prop_assert!(hit, "{r:?} refused though untouched"),
            }
        }
    }

    #[test]
    fn a_reference_past_the_end_is_an_error(
        offset in any::<u64>(),
        len in any::<u32>(),
        crc in any::<u32>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = PayloadLog::open(dir.path()).unwrap();
        let r = log.append(b"payload").unwrap();
        log.sync().unwrap();
        let wild = PayloadRef { segment: r.segment, offset, len, crc };
        let fits = offset.checked_add(u64::from(len)).is_some_and(|end| end <= 7);
        if !fits {
            prop_assert!(log.read(&wild).is_err());
        }
        let _ = log.read(&PayloadRef { segment: r.segment.wrapping_add(1), ..wild });
    }
}
