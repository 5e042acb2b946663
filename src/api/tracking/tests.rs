use super::query::Search;
use super::*;

fn parse(body: Value) -> Result<Search, ApiError> {
    // 2026-11-29T12:00:00Z
    parse_search(Env::Live, "ACME", &body, 1_795_953_600_000)
}

#[test]
fn no_criteria_means_today() {
    let s = parse(json!({})).unwrap();
    let (from, to) = s.query.received.unwrap();
    assert_eq!(rfc3339(from), "2026-11-29T00:00:00Z");
    assert_eq!(to - from, DAY_MS);
    assert!(s.query.descending);
    assert_eq!(s.query.sort, TrackingSort::Received);
    assert_eq!(s.query.take, MAX_ROWS);
}

#[test]
fn paging_takes_numbers_and_numeric_strings() {
    let s = parse(json!({"paging": {"number": "3", "size": "10"}})).unwrap();
    assert_eq!((s.query.skip, s.query.take), (20, 10));
    let s = parse(json!({"paging": {"number": 1, "size": 1000}})).unwrap();
    assert_eq!((s.query.skip, s.query.take), (0, 1000));
    for bad in [
        json!({"number": 0}),
        json!({"size": 1001}),
        json!({"size": "x"}),
        json!({"number": -1}),
        json!({"size": 2.5}),
    ] {
        let e = parse(json!({"paging": bad})).err().unwrap();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(e.field.unwrap().starts_with("paging."));
    }
}

#[test]
fn dates_are_days_or_inclusive_ranges() {
    let one = |v: Value| parse(json!({"search": [{"by": "receivedDate", "value": v}]}));
    let (f, t) = one(json!("2018-10-01")).unwrap().query.received.unwrap();
    assert_eq!(
        (rfc3339(f).as_str(), t - f),
        ("2018-10-01T00:00:00Z", DAY_MS)
    );
    let (f, t) = one(json!([
        "2018-10-01T00:00:00+00:00",
        "2018-10-02T00:00:00+00:00"
    ]))
    .unwrap()
    .query
    .received
    .unwrap();
    assert_eq!(t - f, DAY_MS + 1, "the end is included");
    let (f, t) = one(json!(["2018-10-01", "2018-10-03"]))
        .unwrap()
        .query
        .received
        .unwrap();
    assert_eq!(t - f, 3 * DAY_MS, "a date as the end includes its day");
    for bad in [
        json!("yesterday"),
        json!(["2018-10-03", "2018-10-01"]),
        json!([]),
        json!(["a", "b", "c"]),
        json!(5),
    ] {
        let e = one(bad.clone()).err().unwrap();
        assert_eq!(e.field.as_deref(), Some("search[0].value"), "{bad}");
    }
}

#[test]
fn unknown_names_are_refused_with_the_allowed_ones() {
    let e = parse(json!({"search": [{"by": "id", "value": [Uuid::nil().to_string()]}, {"by": "recievedDate", "value": "2018-10-01"}]}))
        .err()
        .unwrap();
    assert_eq!(e.field.as_deref(), Some("search[1].by"));
    assert!(e.message.contains("receivedDate"), "{}", e.message);
    let e = parse(
        json!({"sorts": [{"by": "receivedDate", "order": "78452e72-0fcb-4455-afc3-68fadb22646f"}]}),
    )
    .err()
    .unwrap();
    assert_eq!(e.field.as_deref(), Some("sorts[0].order"));
    assert!(e.message.contains("asc or desc"));
    let e = parse(json!({"sorts": [{"by": "size"}]})).err().unwrap();
    assert!(e.message.contains("batchReference"));
    let e = parse(json!({"search": [{"by": "messageStatus", "value": "done"}]}))
        .err()
        .unwrap();
    assert!(e.message.contains("complete"), "{}", e.message);
    let s = parse(json!({"search": [{"by": "messageStatus", "value": ["Failed", "COMPLETE"]}]}))
        .unwrap();
    assert_eq!(s.query.statuses, vec![Status::Failed, Status::Complete]);
}

#[test]
fn request_status_follows_the_summary() {
    let mut c = [0u32; 7];
    c[0] = 2;
    assert_eq!(request_status(&StatusSummary(c)), "queued");
    c[3] = 1;
    assert_eq!(request_status(&StatusSummary(c)), "processing");
    c[0] = 0;
    c[4] = 1;
    assert_eq!(request_status(&StatusSummary(c)), "complete");
    assert_eq!(
        request_status(&StatusSummary([0, 0, 0, 0, 0, 0, 3])),
        "cancelled"
    );
}
