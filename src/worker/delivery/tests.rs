use super::*;

#[test]
fn a_subscription_turned_back_on_counts_its_failures_from_then() {
    let hour = 3_600_000;
    // Failing for 200 h, turned back on 1 h ago: 1 h counts.
    assert_eq!(
        failing_since_on(200 * hour, 500 * hour as i64, Some(499 * hour as i64)),
        hour
    );
    // Turned on long before the failures began: they all count.
    assert_eq!(
        failing_since_on(5 * hour, 500 * hour as i64, Some(0)),
        5 * hour
    );
    // Pushes have no such time.
    assert_eq!(
        failing_since_on(200 * hour, 500 * hour as i64, None),
        200 * hour
    );
    assert_eq!(
        failing_since_on(7, 0, Some(10)),
        0,
        "a clock step back is no failure"
    );
}

#[test]
fn retry_after_is_clamped_and_never_shortens_the_schedule() {
    let now = 1_000_000;
    // The schedule's step alone.
    assert_eq!(retry_due(now, 5, None, 3600, 1.0), 1_005_000);
    // Retry-After may ask for longer...
    assert_eq!(retry_due(now, 5, Some(60), 3600, 1.0), 1_060_000);
    // ...but never shorter than the step...
    assert_eq!(retry_due(now, 5, Some(0), 3600, 1.0), 1_005_000);
    // ...and never longer than the maximum, whatever it says.
    assert_eq!(retry_due(now, 5, Some(u64::MAX), 3600, 1.0), 4_600_000);
    assert_eq!(retry_due(now, 5, Some(u64::MAX), u64::MAX, 1.0), u64::MAX);
    assert_eq!(retry_due(i64::MAX, u64::MAX, None, 0, 1.2), u64::MAX);
}
