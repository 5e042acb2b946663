use super::super::codec::decode;
use super::*;

/// A transmission as format version 2 wrote it: receiver, status, attempts, lease
/// until, delivered at, acknowledged at, last error, outbox due.
type TransmissionV2 = (
    String,
    Status,
    u32,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<u64>,
);

/// The layout format version 2 wrote, field for field.
#[derive(Serialize)]
struct V2 {
    id: Uuid,
    request_id: Uuid,
    env: Env,
    sender: String,
    doctype: String,
    version: Option<String>,
    external_reference: Option<String>,
    content_type: String,
    payload: PayloadRef,
    received_at: i64,
    status: Status,
    history: Vec<(i64, Status)>,
    history_dropped: u32,
    errors: Vec<String>,
    errors_dropped: u32,
    processed_at: Option<i64>,
    transmissions: Vec<TransmissionV2>,
}

/// A message as format version 2 wrote it, version byte first.
fn v2_bytes() -> Vec<u8> {
    let v2 = V2 {
        id: new_message_id(),
        request_id: Uuid::now_v7(),
        env: Env::Test,
        sender: "ACME".into(),
        doctype: "order".into(),
        version: Some("1".into()),
        external_reference: Some("R".into()),
        content_type: "application/json".into(),
        payload: PayloadRef {
            segment: 1,
            offset: 2,
            len: 3,
            crc: 4,
        },
        received_at: 100,
        status: Status::Failed,
        history: vec![(100, Status::Queued), (200, Status::Failed)],
        history_dropped: 0,
        errors: vec!["GLOBEX: boom".into()],
        errors_dropped: 0,
        processed_at: Some(200),
        transmissions: vec![(
            "GLOBEX".into(),
            Status::Failed,
            2,
            None,
            Some(150),
            Some(200),
            Some("boom".into()),
            None,
        )],
    };
    let mut bytes = vec![2u8];
    bincode::serde::encode_into_std_write(&v2, &mut bytes, bincode::config::standard()).unwrap();
    bytes
}

#[test]
fn a_version_2_message_reads_with_times_on_its_errors_and_transmission_histories() {
    let bytes = v2_bytes();
    let m: MessageRec = decode(&bytes).unwrap();
    assert_eq!(m.env, Env::Test);
    assert_eq!(m.errors, vec![(200, "GLOBEX: boom".to_owned())]);
    assert_eq!(m.history.len(), 2);
    let t = &m.transmissions[0];
    assert_eq!(
        (t.receiver.as_str(), t.status, t.attempts),
        ("GLOBEX", Status::Failed, 2)
    );
    assert_eq!(t.history, vec![(200, Status::Failed)]);
    assert_eq!(t.last_error.as_deref(), Some("boom"));
}

#[test]
fn records_of_the_previous_version_read_with_the_added_field_empty() {
    use super::super::codec::encode;
    // Version 3 of a message and version 1 of a partner were the current layouts
    // without their last field: the encoding of today's record minus its last byte.
    let older = |mut bytes: Vec<u8>, version: u8| {
        assert_eq!(bytes.pop(), Some(0));
        bytes[0] = version;
        bytes
    };
    let v2 = decode::<MessageRec>(&v2_bytes()).unwrap();
    let m: MessageRec = decode(&older(encode(&v2).unwrap(), 3)).unwrap();
    assert_eq!(m.id, v2.id);
    assert_eq!(m.transmissions.len(), 1);
    assert!(m.validation_errors.is_empty());

    let p = PartnerRec {
        code: "ACME".into(),
        name: "Acme".into(),
        active: true,
        push_url: Some("https://acme.example/in".into()),
        test_push_url: None,
        push_headers: vec![("x".into(), "y".into())],
        push_params: Vec::new(),
        signing: SigningSecrets {
            current: "s".into(),
            previous: None,
        },
        test_signing: SigningSecrets {
            current: "t".into(),
            previous: Some(("u".into(), 9)),
        },
        push_paused: true,
        disabled_endpoints: Vec::new(),
        created_at: 1,
        updated_at: 2,
        unique_references: false,
        retention_days: None,
    };
    let read: PartnerRec = decode(&older(encode(&p).unwrap(), 2)).unwrap();
    assert_eq!(read.push_url, p.push_url);
    assert_eq!(read.test_signing.previous, p.test_signing.previous);
    assert!(read.push_paused && !read.unique_references && read.retention_days.is_none());
    // Version 1 also lacked `unique_references`, one more byte before the end.
    let mut v1 = older(encode(&p).unwrap(), 1);
    assert_eq!(v1.pop(), Some(0));
    let read: PartnerRec = decode(&v1).unwrap();
    assert_eq!(read.test_signing.previous, p.test_signing.previous);
    assert!(!read.unique_references && read.retention_days.is_none());
}
