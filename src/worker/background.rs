//! The background workers: take queued jobs, oldest first, at most
//! `background.concurrency` at once, and replay each one's stored request through the
//! very route tree the server answers with (`warp::service` over `api::routes`), as the
//! job's partner and environment. The replay carries its identity as a request extension
//! (no stored secret) and, for anything but a GET, the job id as its idempotency key.
//!
//! A job is leased while it runs. At start every running job is queued again: its worker
//! died with the process. A call that changes something stores its answer in the same
//! write, and that write also ends the job (its content, its webhook), so a job that
//! made its change is never run again. Run again for another reason, a job whose call had
//! already changed something finds the answer stored under its key: one effect per job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::api::background::Injected;
use crate::api::idempotency;
use crate::store::background::{JobEnd, JobRec};
use crate::store::IdemSlot;
use crate::store::{now_ms, StoreError};
use crate::AppState;

/// Jobs started per write, at most.
const BATCH: usize = 64;
/// How often expired leases are looked for.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// A job started by its own submission, with the run slot it holds.
type Handed = (JobRec, OwnedSemaphorePermit);

/// The run slots the workers share (`background.concurrency`), and the way a submission
/// reaches them. A job submitted while a slot is free is written as running, with its
/// lease, in the submission's own write and handed over here in memory: it starts without
/// a second write and without waiting for the worker to look at the queue. A crash before
/// it runs is the same as a crash mid-run: its lease sends it round again.
pub struct JobSlots {
    slots: Arc<Semaphore>,
    /// Wakes the workers when a job is queued.
    pub queued: Notify,
    hand: mpsc::UnboundedSender<Handed>,
    handed: Mutex<Option<mpsc::UnboundedReceiver<Handed>>>,
    /// Whether the workers run and take handed jobs.
    taking: AtomicBool,
}

impl JobSlots {
    pub fn new(concurrency: usize) -> JobSlots {
        let (hand, handed) = mpsc::unbounded_channel();
        JobSlots {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            queued: Notify::new(),
            hand,
            handed: Mutex::new(Some(handed)),
            taking: AtomicBool::new(false),
        }
    }

    /// A free run slot for a job about to be submitted, when the workers run and one is
    /// free now.
    pub fn free_slot(&self) -> Option<OwnedSemaphorePermit> {
        if !self.taking.load(Ordering::Acquire) || self.hand.is_closed() {
            return None;
        }
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Gives a job written as running to the workers. Should they have stopped meanwhile,
    /// the job's lease queues it again.
    pub fn hand_over(&self, job: JobRec, slot: OwnedSemaphorePermit) {
        if self.hand.send((job, slot)).is_err() {
            tracing::warn!("a started job waits for its lease to end: the workers stopped");
        }
    }

    fn take_handed(&self) -> Option<mpsc::UnboundedReceiver<Handed>> {
        let taken = self.handed.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.taking.store(taken.is_some(), Ordering::Release);
        taken
    }
}

/// The route tree as a service that takes a stored request.
pub trait Routes:
    hyper::service::Service<
        http::Request<Full<Bytes>>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
        Future: Send,
    > + Send
    + Sync
    + 'static
{
}

impl<T> Routes for T where
    T: hyper::service::Service<
            http::Request<Full<Bytes>>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
            Future: Send,
        > + Send
        + Sync
        + 'static
{
}

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(mut handed) = state.jobs.take_handed() else {
        tracing::error!("the background workers are already running");
        return;
    };
    match state.store.requeue_running(None).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            jobs = n,
            "background jobs that were running are queued again"
        ),
        Err(e) => tracing::error!(error = %e, "cannot queue interrupted background jobs again"),
    }
    let routes = Arc::new(TowerToHyperService::new(warp::service(crate::api::routes(
        state.clone(),
    ))));
    let slots = Arc::clone(&state.jobs.slots);
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<()>, (job, permit): Handed| {
        tasks.spawn(run_one(state.clone(), Arc::clone(&routes), job, permit));
    };
    let mut housekeeping = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        if tokio::time::Instant::now() >= housekeeping {
            housekeeping = tokio::time::Instant::now() + HOUSEKEEPING;
            housekeep(&state).await;
        }
        // Wait for a free slot, then take as many more as are free now: one write
        // starts every job they can run, so a burst does not start jobs one flush at a time.
        while let Ok(h) = handed.try_recv() {
            spawn(&mut tasks, h);
        }
        let first = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            Some(h) = handed.recv() => {
                spawn(&mut tasks, h);
                continue;
            }
            _ = stop.changed() => continue,
        };
        let mut permits = vec![first];
        while permits.len() < BATCH {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let queued = match state.store.queued_jobs(permits.len()) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job queue");
                Vec::new()
            }
        };
        if queued.is_empty() {
            drop(permits);
            tokio::select! {
                _ = state.jobs.queued.notified() => {}
                Some(h) = handed.recv() => spawn(&mut tasks, h),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let now = now_ms();
        match state
            .store
            .start_jobs(queued, now + lease_ms(&state), now)
            .await
        {
            Ok(jobs) => {
                for h in jobs.into_iter().zip(permits) {
                    spawn(&mut tasks, h);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start background jobs");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Runs under way stop here; their leases send them round again at the next start.
    state.jobs.taking.store(false, Ordering::Release);
    tasks.shutdown().await;
}

/// How long a run holds its job: its time limit, and a margin to record the outcome.
pub fn lease_ms(state: &AppState) -> i64 {
    (state.config.background.timeout_seconds as i64 + 30) * 1000
}

async fn housekeep(state: &AppState) {
    if let Err(e) = state.store.requeue_running(Some(now_ms())).await {
        tracing::error!(error = %e, "cannot queue jobs with ended leases again");
    }
    // Old jobs and idempotent answers are pruned by the retention worker.
}

#[tracing::instrument(skip_all, fields(job = %job.id, partner = %job.partner))]
async fn run_one<R: Routes>(
    state: AppState,
    routes: Arc<R>,
    job: JobRec,
    _slot: OwnedSemaphorePermit,
) {
    let limit = Duration::from_secs(state.config.background.timeout_seconds);
    let ended = Arc::new(AtomicBool::new(false));
    let run = replay(&state, &routes, &job, Arc::clone(&ended));
    let end = match tokio::time::timeout(limit, run).await {
        Ok(Ok(end)) => end,
        Ok(Err(e)) => JobEnd::Failed(format!("the stored request could not be run: {e}")),
        Err(_) => after_timeout(&state, &job).await,
    };
    crash_point_after_effect();
    // The call's own write stored its answer and ended the job: nothing left to record.
    if ended.load(Ordering::Acquire) {
        return;
    }
    if let Err(e) = state.store.finish_job(job.env, job.id, end, now_ms()).await {
        // The lease sends it round again.
        tracing::error!(error = %e, "cannot record a job's outcome");
    }
}

/// Debug builds only: with `WAYBILL_CRASH_AFTER_JOB_EFFECT` set, the process dies here,
/// right after a job's call returned and before the worker records anything. This is
/// the one moment kill -9 cannot be timed to hit; the test that starts the binary this
/// way proves the job is not run again after the restart (its call's own write ended it).
fn crash_point_after_effect() {
    #[cfg(debug_assertions)]
    if std::env::var_os("WAYBILL_CRASH_AFTER_JOB_EFFECT").is_some() {
        std::process::abort();
    }
}

/// A call cut off by the time limit may already have queued its change: wait for the
/// writer to apply everything queued so far, then look for the answer stored with it.
async fn after_timeout(state: &AppState, job: &JobRec) -> JobEnd {
    let failed = || {
        JobEnd::Failed(format!(
            "the call did not finish within background.timeout_seconds ({} s)",
            state.config.background.timeout_seconds
        ))
    };
    if state.store.write_barrier().await.is_err() {
        return failed();
    }
    let slot = IdemSlot::new(job.env, &job.partner, &job.id.to_string(), [0; 32], 0);
    match state.store.idempotency(&slot.key) {
        Ok(Some(rec)) => JobEnd::Completed(rec.response),
        _ => failed(),
    }
}

/// Runs the job's request through the routes and stores what they answer.
async fn replay<R: Routes>(
    state: &AppState,
    routes: &R,
    job: &JobRec,
    ended: Arc<AtomicBool>,
) -> Result<JobEnd, StoreError> {
    let body = match state.store.job_body(job) {
        Ok(b) => b,
        Err(StoreError::Corrupt(why)) => {
            return Ok(JobEnd::Failed(format!(
                "the stored request body is damaged: {why}"
            )))
        }
        Err(e) => return Err(e),
    };
    let uri = if job.query.is_empty() {
        job.path.clone()
    } else {
        format!("{}?{}", job.path, job.query)
    };
    let mut builder = http::Request::builder()
        .method(job.method.as_str())
        .uri(uri)
        .header(http::header::CONTENT_LENGTH, body.len());
    for (k, v) in &job.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut req = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => {
            return Ok(JobEnd::Failed(format!(
                "the stored request is not valid: {e}"
            )))
        }
    };
    req.extensions_mut().insert(Injected {
        job_id: job.id,
        partner: job.partner.clone(),
        env: job.env,
        key_id: job.key_id,
        ended,
    });
    let res = match routes.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = res.status().as_u16();
    let headers = idempotency::kept_headers(res.headers());
    let max = state.config.background.max_content_bytes;
    let bytes: Bytes = match Limited::new(res.into_body(), max as usize).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let why = if e.is::<http_body_util::LengthLimitError>() {
                format!("the answer is larger than background.max_content_bytes ({max} bytes)")
            } else {
                format!("the answer could not be read: {e}")
            };
            return Ok(JobEnd::Failed(why));
        }
    };
    let stored = state.store.stored_response(status, headers, bytes).await?;
    Ok(JobEnd::Completed(stored))
}
