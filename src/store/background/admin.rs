//! The admin's side of background jobs, and their upkeep: listing with filters, retrying
//! a failed job, and pruning finished jobs and expired idempotency answers.

use super::*;
use crate::store::retention::Retention;

/// Which jobs an admin listing shows.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub env: Option<Env>,
    pub state: Option<JobState>,
    pub partner: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Only jobs with an id before this one (paging, newest first).
    pub before: Option<Uuid>,
    pub limit: usize,
}

impl Store {
    /// An admin's retry of a failed job: queued again, its error cleared.
    pub async fn retry_job(&self, env: Env, id: Uuid) -> Result<JobCancel, StoreError> {
        self.writer
            .write_waiting(move |t| {
                let Some(mut job) = get_job(t, env, id)? else {
                    return Ok(JobCancel::NotFound);
                };
                if job.state != JobState::Failed {
                    return Ok(JobCancel::Conflict(job));
                }
                job.state = JobState::Queued;
                job.error = None;
                job.finished_at = None;
                t.insert(Table::Jobs, env_id(env, id), encode(&job)?)?;
                t.insert(Table::JobsQueued, id.as_bytes(), vec![env.byte()])?;
                Ok(JobCancel::Done(job))
            })
            .await
    }

    /// Jobs matching `f`, newest first, and the cursor of the next page (`None` when
    /// nothing is left). Looks at no more than `max_scan` records per environment: a page
    /// of a rare filter may come back short, with a cursor where the look stopped.
    pub fn list_jobs(
        &self,
        f: &JobFilter,
        max_scan: usize,
    ) -> Result<(Vec<JobRec>, Option<Uuid>), StoreError> {
        let mut out = Vec::new();
        let envs = match f.env {
            Some(e) => vec![e],
            None => vec![Env::Live, Env::Test],
        };
        // Below the highest of these, some environment was not looked at.
        let mut cut: Option<Uuid> = None;
        for env in envs {
            let start = [env.byte()];
            let end = match f.before {
                Some(id) => env_id(env, id).to_vec(),
                None => vec![env.byte().saturating_add(1)],
            };
            let mut found = 0;
            for (scanned, entry) in self.t.jobs.range(start.to_vec()..end).rev().enumerate() {
                let (_, v) = entry?;
                let job: JobRec = decode(&v)?;
                let id = job.id;
                let wanted = !(f.state.is_some_and(|s| s != job.state)
                    || f.partner.as_ref().is_some_and(|p| *p != job.partner)
                    || f.from.is_some_and(|from| job.created_at < from)
                    || f.to.is_some_and(|to| job.created_at >= to));
                if wanted {
                    out.push(job);
                    found += 1;
                }
                if found >= f.limit || scanned + 1 >= max_scan {
                    if found < f.limit {
                        cut = cut.max(Some(id));
                    }
                    break;
                }
            }
        }
        if let Some(c) = cut {
            out.retain(|j| j.id >= c);
        }
        out.sort_by_key(|j| std::cmp::Reverse(j.id));
        let next = if out.len() >= f.limit {
            out.truncate(f.limit);
            out.last().map(|j| j.id)
        } else {
            cut
        };
        Ok((out, next))
    }

    /// The keys of at most `max` finished jobs whose owner's retention is over: they
    /// ended longer ago than [`Retention::keep_partner_ms`] of their partner. It reads
    /// sled, so it is for a blocking thread.
    pub fn old_jobs(
        &self,
        now: i64,
        retention: &Retention,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let newest_prunable = now.saturating_sub(retention.shortest_ms());
        let mut old = Vec::new();
        for env in [Env::Live, Env::Test] {
            for entry in self.t.jobs.scan_prefix([env.byte()]) {
                if old.len() >= max {
                    return Ok(old);
                }
                let (k, v) = entry?;
                let Ok(job) = decode::<JobRec>(&v) else {
                    continue;
                };
                // Ids are v7: once a job was created after the shortest retention's
                // cut-off, the rest were too.
                if job.created_at >= newest_prunable {
                    break;
                }
                let before = now.saturating_sub(retention.keep_partner_ms(&job.partner));
                if job.state.is_final() && job.finished_at.is_some_and(|f| f < before) {
                    old.push(k.to_vec());
                }
            }
        }
        Ok(old)
    }

    /// Removes idempotency answers past their expiry (at most `max`), and the jobs of
    /// `old` (from [`Store::old_jobs`]) with their content; returns how many went.
    pub async fn prune_background(
        &self,
        now: i64,
        old: Vec<Vec<u8>>,
        max: usize,
    ) -> Result<usize, StoreError> {
        let keys = self.prune_idempotency(now, max).await?;
        if old.is_empty() {
            return Ok(keys);
        }
        let jobs = self
            .writer
            .write_waiting(move |t| {
                let mut n = 0;
                for k in old {
                    t.remove(Table::Jobs, &k)?;
                    t.remove(Table::JobContent, &k)?;
                    n += 1;
                }
                Ok(n)
            })
            .await?;
        Ok(keys + jobs)
    }
}
