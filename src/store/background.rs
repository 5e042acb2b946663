//! Background jobs and stored answers.
//!
//! Both rest on one idea: an answer is stored in the same writer job as the change it
//! answers. An intake with an `Idempotency-Key` writes its messages and the 202 it
//! returns in one transaction, so after a crash either both exist or neither does. A
//! background job replays its request with its own id as that key, which is what makes a
//! job that died after its effect but before it was marked done safe to run again: the
//! second run finds the stored answer instead of making a second effect.
//!
//! Trees:
//! - `jobs`: `env ‖ job id` → [`JobRec`].
//! - `jobs_queued`: `job id` → env byte; v7 ids, so oldest first.
//! - `jobs_running`: `lease expiry (u64 BE ms) ‖ job id` → env byte, in expiry order.
//! - `job_content`: `env ‖ job id` → [`StoredResponse`].
//!
//! The answers under idempotency keys live in [`super::idempotency`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode, encode, env_id, Record};
use super::deliveries::{due_at, outbox_key, Queued};
use super::idempotency::{IdemPut, Remember};
use super::payload_log::PayloadRef;
use super::records::{DeliveryRec, Target};
use super::subscriptions::EventKind;
use super::writer::{Table, Tx, LARGE_WRITE_BYTES};
use super::{now_ms, Store, StoreError};
use crate::model::Env;

mod admin;
pub use admin::JobFilter;

/// Response bodies up to this size live inside their record; larger ones in the payload log.
pub const INLINE_BODY_BYTES: usize = 32 * 1024;

/// Most headers bytes kept of a stored request or response.
pub const MAX_STORED_HEADER_BYTES: usize = 8 * 1024;

/// Where a background job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running,
    /// The call ran; its answer (whatever its status) is the job's content.
    Completed,
    /// The appliance could not run the call (time limit, answer too large).
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A background request: what to replay, as whom, and where it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRec {
    pub id: Uuid,
    pub env: Env,
    pub partner: String,
    /// The API key the submission was authenticated with; the replay runs only while it
    /// is still active.
    pub key_id: Uuid,
    pub method: String,
    pub path: String,
    /// The query string without credentials.
    pub query: String,
    /// The request headers the call needs (content type and the like), never credentials.
    pub headers: Vec<(String, String)>,
    /// The request body; `None` when it was empty.
    pub body: Option<PayloadRef>,
    /// Where the completion is announced; `None` for `none` and `Prefer: respond-async`.
    pub webhook: Option<String>,
    pub state: JobState,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// While running: when the run is considered dead and the job queued again.
    pub lease_until: Option<i64>,
    /// Runs started (more than one after a crash or an admin's retry).
    pub runs: u32,
    pub response_status: Option<u16>,
    /// Why a failed job failed.
    pub error: Option<String>,
}

impl Record for JobRec {}

/// A response body as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoredBody {
    Inline(Vec<u8>),
    Logged(PayloadRef),
}

/// A stored HTTP answer: its status, the headers that matter, and its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: StoredBody,
}

impl Record for StoredResponse {}

impl StoredResponse {
    /// A response whose body fits inside its record; `None` when it does not.
    pub fn inline(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Option<Self> {
        (body.len() <= INLINE_BODY_BYTES).then(|| StoredResponse {
            status,
            headers,
            body: StoredBody::Inline(body.to_vec()),
        })
    }
}

/// A running job whose replay is storing its answer. The answer's own write also records
/// the job as completed, with that answer as its content and its webhook queued, so a
/// job's change and its end are one write, and the webhook leaves as soon as it is flushed.
#[derive(Debug, Clone)]
pub struct JobEnding {
    pub env: Env,
    pub id: Uuid,
    /// An answer larger than this is left to the worker, which fails the job.
    pub max_bytes: u64,
    /// Turned true inside the write that ended the job; the worker then has nothing to record.
    pub ended: Arc<AtomicBool>,
}

impl JobEnding {
    /// Completes the job with `response` in the current write, if it is still running.
    pub(super) fn complete(&self, t: &Tx<'_>, response: StoredResponse) -> Result<(), StoreError> {
        let size = match &response.body {
            StoredBody::Inline(b) => b.len() as u64,
            StoredBody::Logged(p) => u64::from(p.len),
        };
        if size > self.max_bytes {
            return Ok(());
        }
        let content = encode(&response)?;
        let end = JobEnd::Completed(response);
        if end_job(t, self.env, self.id, end, Some(content), now_ms())?.is_some() {
            self.ended.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum JobEnd {
    Completed(StoredResponse),
    Failed(String),
}

/// The result of a cancellation.
#[derive(Debug)]
pub enum JobCancel {
    Done(JobRec),
    /// Already running or finished.
    Conflict(JobRec),
    NotFound,
}

/// Records how a running job's run ended: its state, its content, its webhook (offered
/// to the delivery engine once the write is durable) and its event. A job that is no
/// longer running is left alone (`None`).
fn end_job(
    t: &Tx<'_>,
    env: Env,
    id: Uuid,
    end: JobEnd,
    content: Option<Vec<u8>>,
    now: i64,
) -> Result<Option<JobRec>, StoreError> {
    let job = get_job(t, env, id)?;
    let Some(mut job) = job.filter(|j| j.state == JobState::Running) else {
        return Ok(None);
    };
    let lease = job.lease_until.take().unwrap_or_default();
    match end {
        JobEnd::Completed(r) => {
            job.state = JobState::Completed;
            job.response_status = Some(r.status);
            job.error = None;
        }
        JobEnd::Failed(why) => {
            job.state = JobState::Failed;
            job.response_status = None;
            job.error = Some(why);
        }
    }
    job.finished_at = Some(now);
    let webhook = webhook_entry(&job, now)?;
    let value = encode(&job)?;
    t.remove(Table::JobsRunning, running_key(lease, id))?;
    if let Some(c) = content {
        t.insert(Table::JobContent, env_id(env, id), c)?;
    }
    put_webhook(t, webhook)?;
    t.insert(Table::Jobs, env_id(env, id), value)?;
    t.feed(env, &job.partner, EventKind::BackgroundCompleted, id, now)?;
    Ok(Some(job))
}

/// The webhook delivery of a job that ended now, encoded ahead of the job's first write.
fn webhook_entry(job: &JobRec, now: i64) -> Result<Option<(Queued, Vec<u8>)>, StoreError> {
    webhook_delivery(job, now)
        .map(|q| encode(&q.delivery).map(|v| (q, v)))
        .transpose()
}

/// Queues the webhook in this write; the engine is told once the write is flushed.
fn put_webhook(t: &Tx<'_>, entry: Option<(Queued, Vec<u8>)>) -> Result<(), StoreError> {
    if let Some((q, v)) = entry {
        t.insert(Table::Outbox, &q.key, v)?;
        t.offer_after_commit(q);
    }
    Ok(())
}

fn running_key(lease_until: i64, id: Uuid) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&due_at(lease_until).to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

/// The endpoint key of a partner's job webhooks in `env`: `w ‖ env ‖ code`.
pub fn webhook_endpoint(env: Env, partner: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + partner.len());
    k.push(b'w');
    k.push(env.byte());
    k.extend_from_slice(partner.as_bytes());
    k
}

/// The webhook delivery of a job that ended, when it has a webhook URL.
fn webhook_delivery(job: &JobRec, now: i64) -> Option<Queued> {
    let url = job.webhook.clone()?;
    let delivery = DeliveryRec {
        id: Uuid::now_v7(),
        env: job.env,
        target: Target::Webhook {
            job_id: job.id,
            partner: job.partner.clone(),
            url,
        },
        attempt: 0,
        tries: 0,
    };
    let due = due_at(now);
    Some(Queued {
        key: outbox_key(&delivery.target.endpoint(job.env), due, delivery.id),
        due,
        delivery,
        prefetched: None,
    })
}

fn get_job(t: &Tx<'_>, env: Env, id: Uuid) -> Result<Option<JobRec>, StoreError> {
    t.get(Table::Jobs, env_id(env, id))?
        .map(|raw| decode(&raw))
        .transpose()
}

impl Store {
    /// A response ready to store: small bodies inline, larger ones appended to the
    /// payload log (synced before the record pointing at them is flushed).
    pub async fn stored_response(
        &self,
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<StoredResponse, StoreError> {
        let body = if body.len() <= INLINE_BODY_BYTES {
            StoredBody::Inline(body.to_vec())
        } else {
            StoredBody::Logged(self.append_payload(body).await?)
        };
        Ok(StoredResponse {
            status,
            headers,
            body,
        })
    }

    /// [`Store::stored_response`] on the calling thread, for answers of modest size.
    pub fn stored_response_now(
        &self,
        status: u16,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Result<StoredResponse, StoreError> {
        let body = if body.len() <= INLINE_BODY_BYTES {
            StoredBody::Inline(body.to_vec())
        } else {
            StoredBody::Logged(self.payload_log.append(body)?)
        };
        Ok(StoredResponse {
            status,
            headers,
            body,
        })
    }

    async fn append_payload(&self, bytes: Bytes) -> Result<PayloadRef, StoreError> {
        if bytes.len() >= LARGE_WRITE_BYTES {
            let log = std::sync::Arc::clone(&self.payload_log);
            tokio::task::spawn_blocking(move || log.append(&bytes))
                .await
                .map_err(|_| StoreError::Closed)?
        } else {
            self.payload_log.append(&bytes)
        }
    }

    /// The body of a stored response.
    pub fn response_body(&self, r: &StoredResponse) -> Result<Bytes, StoreError> {
        match &r.body {
            StoredBody::Inline(b) => Ok(Bytes::copy_from_slice(b)),
            StoredBody::Logged(p) => self.payload_log.read(p),
        }
    }

    /// Persists a new job with its request body, and the submission's own answer when it
    /// carried an idempotency key. The job is queued, or, given a lease, already running
    /// (its first run starts in this same write).
    pub async fn submit_job(
        &self,
        mut job: JobRec,
        body: Bytes,
        idem: Option<IdemPut>,
        lease_until: Option<i64>,
    ) -> Result<JobRec, StoreError> {
        if !body.is_empty() {
            job.body = Some(self.append_payload(body).await?);
        }
        if let Some(until) = lease_until {
            job.state = JobState::Running;
            job.started_at = Some(job.created_at);
            job.lease_until = Some(until);
            job.runs = job.runs.saturating_add(1);
        }
        let key = env_id(job.env, job.id);
        let value = encode(&job)?;
        let (id, env) = (job.id, job.env);
        self.writer
            .write(move |t| {
                t.insert(Table::Jobs, key, value)?;
                match lease_until {
                    Some(until) => {
                        t.insert(Table::JobsRunning, running_key(until, id), vec![env.byte()])?
                    }
                    None => t.insert(Table::JobsQueued, id.as_bytes(), vec![env.byte()])?,
                }
                match idem {
                    Some(put) => put.write(t),
                    None => Ok(()),
                }
            })
            .await?;
        Ok(job)
    }

    /// A job, if it exists in `env`.
    pub fn job(&self, env: Env, id: Uuid) -> Result<Option<JobRec>, StoreError> {
        self.t
            .jobs
            .get(env_id(env, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// A completed job's stored answer.
    pub fn job_content(&self, env: Env, id: Uuid) -> Result<Option<StoredResponse>, StoreError> {
        self.t
            .job_content
            .get(env_id(env, id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// A job's request body.
    pub fn job_body(&self, job: &JobRec) -> Result<Bytes, StoreError> {
        match &job.body {
            Some(p) => self.payload_log.read(p),
            None => Ok(Bytes::new()),
        }
    }

    /// The oldest queued jobs, at most `limit`.
    pub fn queued_jobs(&self, limit: usize) -> Result<Vec<(Env, Uuid)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.t.jobs_queued.iter().take(limit) {
            let (k, v) = entry?;
            let (Ok(id), Some(env)) = (
                Uuid::from_slice(&k),
                v.first().copied().and_then(Env::from_byte),
            ) else {
                continue;
            };
            out.push((env, id));
        }
        Ok(out)
    }

    /// Takes queued jobs for runs leased until `lease_until`, all in one write, and
    /// returns those still queued (a job cancelled meanwhile is left out).
    pub async fn start_jobs(
        &self,
        picks: Vec<(Env, Uuid)>,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<JobRec>, StoreError> {
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        self.writer
            .write_waiting(move |t| {
                let mut started = Vec::with_capacity(picks.len());
                for (env, id) in picks {
                    let job = get_job(t, env, id)?;
                    let Some(mut job) = job.filter(|j| j.state == JobState::Queued) else {
                        t.remove(Table::JobsQueued, id.as_bytes())?;
                        continue;
                    };
                    job.state = JobState::Running;
                    job.started_at = Some(now);
                    job.lease_until = Some(lease_until);
                    job.runs = job.runs.saturating_add(1);
                    let value = encode(&job)?;
                    t.remove(Table::JobsQueued, id.as_bytes())?;
                    t.insert(
                        Table::JobsRunning,
                        running_key(lease_until, id),
                        vec![env.byte()],
                    )?;
                    t.insert(Table::Jobs, env_id(env, id), value)?;
                    started.push(job);
                }
                Ok(started)
            })
            .await
    }

    /// Records how a run ended, with the content and the webhook delivery in the same
    /// write. A job that is no longer running (taken back after its lease ended) is
    /// left alone.
    pub async fn finish_job(
        &self,
        env: Env,
        id: Uuid,
        end: JobEnd,
        now: i64,
    ) -> Result<Option<JobRec>, StoreError> {
        let content = match &end {
            JobEnd::Completed(r) => Some(encode(r)?),
            JobEnd::Failed(_) => None,
        };
        self.writer
            .write_waiting(move |t| end_job(t, env, id, end, content, now))
            .await
    }

    /// Cancels a queued job of `partner` (any partner's for `None`, an admin).
    pub async fn cancel_job(
        &self,
        env: Env,
        partner: Option<String>,
        id: Uuid,
        idem: Option<Remember<JobCancel>>,
        now: i64,
    ) -> Result<JobCancel, StoreError> {
        self.writer
            .write(move |t| {
                let job = get_job(t, env, id)?
                    .filter(|j| partner.as_ref().is_none_or(|p| *p == j.partner));
                let Some(mut job) = job else {
                    return Ok(JobCancel::NotFound);
                };
                if job.state != JobState::Queued {
                    return Ok(JobCancel::Conflict(job));
                }
                job.state = JobState::Cancelled;
                job.finished_at = Some(now);
                let webhook = webhook_entry(&job, now)?;
                let value = encode(&job)?;
                t.remove(Table::JobsQueued, id.as_bytes())?;
                t.insert(Table::Jobs, env_id(env, id), value)?;
                put_webhook(t, webhook)?;
                t.feed(env, &job.partner, EventKind::BackgroundCompleted, id, now)?;
                let outcome = JobCancel::Done(job);
                if let Some(r) = idem {
                    r.write(t, &outcome)?;
                }
                Ok(outcome)
            })
            .await
    }

    /// Puts running jobs back in the queue: every one (`before` = `None`, at start, when
    /// no run can be under way) or those whose lease ended before `before`.
    pub async fn requeue_running(&self, before: Option<i64>) -> Result<usize, StoreError> {
        let mut found = Vec::new();
        for entry in self.t.jobs_running.iter() {
            let (k, v) = entry?;
            if let Some(limit) = before {
                let lease = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if lease >= due_at(limit) {
                    break;
                }
            }
            let (Some(id), Some(env)) = (
                k.get(8..).and_then(|b| Uuid::from_slice(b).ok()),
                v.first().copied().and_then(Env::from_byte),
            ) else {
                continue;
            };
            found.push((k.to_vec(), env, id));
        }
        if found.is_empty() {
            return Ok(0);
        }
        self.writer
            .write_waiting(move |t| {
                let mut n = 0;
                for (key, env, id) in found {
                    t.remove(Table::JobsRunning, key)?;
                    let Some(mut job) = get_job(t, env, id)? else {
                        continue;
                    };
                    if job.state != JobState::Running {
                        continue;
                    }
                    job.state = JobState::Queued;
                    job.lease_until = None;
                    t.insert(Table::Jobs, env_id(env, id), encode(&job)?)?;
                    t.insert(Table::JobsQueued, id.as_bytes(), vec![env.byte()])?;
                    n += 1;
                }
                Ok(n)
            })
            .await
    }

    /// Waits until every write queued before this call has been applied and flushed.
    pub async fn write_barrier(&self) -> Result<(), StoreError> {
        self.writer.write_waiting(|_| Ok(())).await
    }

    /// Jobs queued and running, for stats.
    pub fn job_counts(&self) -> (usize, usize) {
        (self.t.jobs_queued.len(), self.t.jobs_running.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_and_final_ones_are_final() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert!(!JobState::Running.is_final() && JobState::Failed.is_final());
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn running_keys_sort_by_lease_then_id() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(running_key(5, b) < running_key(6, a));
        assert!(running_key(5, a) < running_key(5, b));
    }
}
