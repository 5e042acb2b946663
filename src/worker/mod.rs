//! Background loops owned by [`crate::run`]: each is spawned here and runs until the server
//! stops. The delivery engine is told to stop and lets its attempts under way finish; the
//! others hold no state an abort could lose, and are aborted.

pub mod delivery;
pub mod push;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Starts every worker.
pub fn spawn_all(state: AppState, disk_low: Arc<AtomicBool>) -> Workers {
    let stop = state.shutdown.clone();
    Workers {
        delivery: tokio::spawn(delivery::run(state.clone(), stop)),
        others: vec![tokio::spawn(watch_disk(state, disk_low))],
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
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
