use super::*;

#[test]
fn outbox_keys_split_back_and_order_by_endpoint_then_due() {
    let id = Uuid::now_v7();
    let e = b"p\x00ACME".to_vec();
    let k = outbox_key(&e, 42, id);
    assert_eq!(split_outbox_key(&k), Some((&e[..], 42, id)));
    assert!(outbox_key(&e, 41, id) < k);
    assert!(k < outbox_key(&e, PARKED, Uuid::nil()), "parked sorts last");
    let other = outbox_key(b"p\x00ACMEX", 0, id);
    assert!(!other.starts_with(&endpoint_prefix(&e)));
    assert_eq!(split_outbox_key(b"short"), None);
}
