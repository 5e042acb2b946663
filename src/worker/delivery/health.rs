//! Endpoint health as the engine keeps it: the last stored record per endpoint, and
//! whether an attempt's outcome is worth writing.

use super::*;
use crate::store::records::EndpointHealthRec;

/// Each endpoint's health as last stored, read from the store the first time it is needed.
/// Updates return the record to store with the attempt, or `None` when nothing worth a
/// write changed (a success while healthy writes at most once a minute).
#[derive(Default)]
pub(super) struct HealthBook {
    known: Mutex<HashMap<Vec<u8>, EndpointHealthRec>>,
}

impl HealthBook {
    fn with<R>(
        &self,
        store: &crate::store::Store,
        endpoint: &[u8],
        f: impl FnOnce(&mut EndpointHealthRec) -> R,
    ) -> R {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let rec = known.entry(endpoint.to_vec()).or_insert_with(|| {
            store
                .endpoint_health(endpoint)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot read an endpoint's health");
                    None
                })
                .unwrap_or_default()
        });
        f(rec)
    }

    pub(super) fn succeeded(
        &self,
        store: &crate::store::Store,
        endpoint: &[u8],
        now: i64,
    ) -> Option<EndpointHealthRec> {
        self.with(store, endpoint, |h| {
            let stale = h
                .last_success_at
                .is_none_or(|t| now - t >= SUCCESS_WRITE_MS);
            if h.failing_since.is_none() && h.consecutive_failures == 0 && !stale {
                return None;
            }
            h.last_success_at = Some(now);
            h.failing_since = None;
            h.consecutive_failures = 0;
            Some(h.clone())
        })
    }

    /// Records a failure; returns the record and how long (ms) the endpoint has been failing.
    pub(super) fn failed(
        &self,
        store: &crate::store::Store,
        endpoint: &[u8],
        now: i64,
        error: &str,
    ) -> (EndpointHealthRec, u64) {
        self.with(store, endpoint, |h| {
            let since = *h.failing_since.get_or_insert(now);
            h.last_failure_at = Some(now);
            h.last_error = Some(crate::store::records::clip(error.to_owned()));
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            (h.clone(), now.saturating_sub(since).max(0) as u64)
        })
    }
}
