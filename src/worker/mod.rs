//! Background loops owned by [`crate::run`]: each is spawned here and runs until the server
//! stops (the delivery engine, the background job workers, the subscription flusher, the
//! retention pruner, the free-disk watch). The delivery engine is told to stop and lets its attempts under way finish; the
//! others hold no state an abort could lose, and are aborted.

pub mod background;
pub mod bulk;
pub mod delivery;
pub mod housekeeping;
pub mod push;
pub mod retention;
pub mod subscriptions;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::AppState;

/// The running workers.
pub struct Workers {
    /// The delivery engine; it stops by itself once `AppState::shutdown` turns true.
    pub delivery: JoinHandle<()>,
    /// Loops that are aborted at shutdown.
    pub others: Vec<JoinHandle<()>>,
}

/// Starts every worker, each watched by `state.liveness`.
pub fn spawn_all(state: AppState, disk_low: Arc<AtomicBool>) -> Workers {
    let stop = state.shutdown.clone();
    let live = state.liveness.clone();
    Workers {
        delivery: tokio::spawn(live.watch("delivery", delivery::run(state.clone(), stop.clone()))),
        others: vec![
            tokio::spawn(live.watch("background", background::run(state.clone(), stop.clone()))),
            tokio::spawn(live.watch("bulk", bulk::run(state.clone(), stop.clone()))),
            tokio::spawn(live.watch(
                "housekeeping",
                housekeeping::run(state.clone(), stop.clone()),
            )),
            tokio::spawn(live.watch("retention", retention::run(state.clone(), stop.clone()))),
            tokio::spawn(live.watch(
                "subscriptions",
                subscriptions::run(state.clone(), stop.clone()),
            )),
            tokio::spawn(live.watch("disk-watch", watch_disk(state, disk_low))),
        ],
    }
}

/// Which background loops are still running, for readiness: a loop that ended or
/// panicked shows as stopped, so `/readyz` fails instead of claiming a working appliance.
#[derive(Clone, Default)]
pub struct Liveness {
    loops: Arc<Mutex<Vec<Watched>>>,
}

/// A loop's name and whether it still runs.
type Watched = (&'static str, Arc<AtomicBool>);

impl Liveness {
    /// `task`, marked running until it returns, panics or is dropped.
    pub fn watch<F>(&self, name: &'static str, task: F) -> impl Future<Output = F::Output>
    where
        F: Future,
    {
        let flag = Arc::new(AtomicBool::new(true));
        if let Ok(mut loops) = self.loops.lock() {
            loops.push((name, Arc::clone(&flag)));
        }
        async move {
            let _running = Running(flag);
            task.await
        }
    }

    /// The names of watched loops that are no longer running.
    pub fn stopped(&self) -> Vec<&'static str> {
        self.loops
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, f)| !f.load(Ordering::Relaxed))
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Clears its flag when dropped, which also happens while a panic unwinds the task.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Keeps `disk_low` true while free space in the data directory is under
/// `store.min_free_mb`, so intake refuses (503) before sled runs out of room.
async fn watch_disk(state: AppState, disk_low: Arc<AtomicBool>) {
    let dir = state.config.server.data_dir.clone();
    let min_bytes = state.config.store.min_free_mb.saturating_mul(1024 * 1024);
    loop {
        match free_bytes(&dir) {
            Ok(free) => {
                let low = free < min_bytes;
                if low != disk_low.swap(low, Ordering::Relaxed) {
                    if low {
                        tracing::warn!(
                            free_mb = free / 1024 / 1024,
                            "free disk below store.min_free_mb; intake paused"
                        );
                    } else {
                        tracing::info!(
                            free_mb = free / 1024 / 1024,
                            "free disk recovered; intake resumed"
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read free disk space"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    disk_space(dir).map(|(free, _)| free)
}

/// Bytes available to unprivileged writers, and the size, of the file system holding `dir`.
pub fn disk_space(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(block),
        (st.f_blocks as u64).saturating_mul(block),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_panics_or_ends_shows_as_stopped() {
        let live = Liveness::default();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let steady = tokio::spawn(live.watch("steady", async {
            let _ = wait.await;
        }));
        let crashing = tokio::spawn(live.watch("crashing", async {
            panic!("a bug in a worker");
        }));
        assert!(crashing.await.is_err(), "the task panicked");
        assert_eq!(live.stopped(), vec!["crashing"]);
        go.send(()).unwrap();
        steady.await.unwrap();
        assert_eq!(live.stopped(), vec!["steady", "crashing"]);
    }
}
