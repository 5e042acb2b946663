use super::super::Store;
use super::*;

#[tokio::test]
async fn a_dead_writer_is_reported_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8).unwrap();
    assert!(store.healthy() && store.writer_alive());
    store
        .writer
        .write(|t| t.insert(Table::Routes, b"k", b"v".to_vec()))
        .await
        .unwrap();
    // A bug in a job takes the thread down with it.
    let crashed = store
        .writer
        .write(|_| -> Result<(), StoreError> { panic!("a bug in a job") })
        .await;
    assert!(crashed.is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.writer_alive() {
        assert!(std::time::Instant::now() < deadline, "the thread is gone");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!store.healthy());
    let later = store
        .writer
        .write(|t| t.insert(Table::Routes, b"k2", b"v".to_vec()))
        .await;
    assert!(later.is_err(), "no write is acknowledged without a writer");
}

#[tokio::test]
async fn a_full_queue_refuses_requests_but_lets_the_engine_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_with(dir.path(), 8, 2).unwrap());
    // Two jobs that hold the writer until released fill the queue.
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = Arc::new(Mutex::new(hold));
    let mut held = Vec::new();
    for _ in 0..2 {
        let (s, h) = (Arc::clone(&store), Arc::clone(&hold));
        held.push(tokio::spawn(async move {
            s.writer
                .write(move |_| {
                    let _ = h.lock().unwrap().recv();
                    Ok(())
                })
                .await
        }));
    }
    while store.writes_queued() < 2 {
        tokio::task::yield_now().await;
    }
    let refused = store.writer.write(|_| Ok(())).await;
    assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");
    let waiting = {
        let s = Arc::clone(&store);
        tokio::spawn(async move { s.writer.write_waiting(|_| Ok(7)).await })
    };
    release.send(()).unwrap();
    release.send(()).unwrap();
    for h in held {
        h.await.unwrap().unwrap();
    }
    assert_eq!(waiting.await.unwrap().unwrap(), 7);
    assert_eq!(store.writes_queued(), 0);
}
