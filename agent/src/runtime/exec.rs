//! One execution of one shard: concurrency permits, attempts with timeout, retries with
//! exponential backoff and jitter, the execution log and metrics.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info_span, warn};

use super::job_runs::JobRun;
use super::ticket::Ticket;
use super::txn::Writes;
use crate::execlog::{ExecRecord, Outcome};
use crate::job::{JobError, ShardContext};

/// Everything an execution needs: what its job's executions share, and its own context.
pub(crate) struct ExecRequest {
    pub run: Arc<JobRun>,
    pub ctx: ShardContext,
    /// A resident run: no deadline, no permits, and a stop grace (`JobRun::stop_grace`).
    pub resident: bool,
    /// Which fire this is, and whether its log line is written: by itself at its end, or by
    /// the agent when it aborts it (one line per execution, whichever comes first).
    pub ticket: Arc<Ticket>,
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Runs the request to its end and returns how it ended (the last attempt hands the context's
/// strings to the handler; the end's metrics and log line name the job from `req.run`).
///
/// Not an `async fn`: the request would then be stored twice in the future (as the argument,
/// and again in the instrumented body it is moved into).
pub(crate) fn execute(mut req: ExecRequest) -> impl std::future::Future<Output = Outcome> {
    let span = info_span!("execution", job = %req.ctx.job, shard = req.ctx.shard,
        fire_time = %req.ctx.fire_time, token = req.ctx.token,
        max_attempts = req.run.config.max_retries + 1,
        failover = req.ctx.is_failover, misfire = req.ctx.is_misfire);
    async move {
        let (timeout, stop_grace) = (req.run.timeout(req.resident), req.run.stop_grace(req.resident));
        let retries = req.run.config.max_retries;
        // The rare paths' futures (the marker, a retry's backoff, a timeout's grace) are
        // boxed: an execution is as big as its largest await, and ten thousand fires at one
        // instant are ten thousand of them. (One launched ahead of its instant waits in its
        // crowd's task, `runtime/crowd.rs`.)
        // The execution's token is watched through the request's context (its last attempt's
        // hollow keeps a handle): a token's clone and drop each take a lock.
        let Some(first) = permits_for(req.run.permits(req.resident), &req.ctx.cancel).await else {
            return finish(&req, Utc::now(), Outcome::Cancelled);
        };
        // Held for one attempt at a time: a backoff between attempts gives them back, so a
        // failing shard waiting to retry does not keep others of the job from running.
        let mut permits = Some(first);
        let marker = match &req.run.marker {
            Some(sink) => match Box::pin(mark(sink, &req)).await {
                Ok(Some(rev)) => Some(rev),
                Ok(None) => {
                    warn!("not running: the shard is no longer owned with this token");
                    return finish(&req, Utc::now(), Outcome::Cancelled);
                }
                Err(e) => {
                    warn!(error = %e, "not running: the running marker could not be written");
                    return finish(&req, Utc::now(), Outcome::Cancelled);
                }
            },
            None => None,
        };
        let start = Utc::now();
        let mut outcome = Outcome::Cancelled;
        for attempt in 1..=retries.saturating_add(1) {
            let last = attempt > retries;
            if permits.is_none() {
                permits = permits_for(req.run.permits(req.resident), &req.ctx.cancel).await;
                if permits.is_none() {
                    outcome = Outcome::Cancelled;
                    break;
                }
            }
            // The last attempt takes the context (no copy of its strings per fire); the
            // request keeps what its end is reported with.
            let mut ctx = if last {
                let hollow = hollow(&req.ctx);
                std::mem::replace(&mut req.ctx, hollow)
            } else {
                req.ctx.clone()
            };
            ctx.attempt = attempt;
            // An attempt that may be cancelled alone (by its timeout), or whose cancel must not
            // reach the execution's token (a retry follows; a failover run's marker depends on
            // whether the execution was cut short), has its own token. The common last attempt
            // without a timeout shares the execution's (a child token is an allocation and two
            // locks).
            let own = (timeout.is_some() || req.run.marker.is_some() || !last).then(|| {
                ctx.cancel = req.ctx.cancel.child_token();
                ctx.cancel.clone()
            });
            let watched = own.as_ref().unwrap_or(&req.ctx.cancel);
            let retryable;
            (outcome, retryable) = run_attempt(
                req.run.handler.run_boxed(ctx),
                watched,
                timeout,
                stop_grace,
            )
            .instrument(info_span!("attempt", attempt))
            .await;
            let retryable =
                retryable || (req.run.config.retry_timeouts && outcome == Outcome::Timeout);
            if !retryable || last {
                break;
            }
            permits = None;
            let delay = backoff(attempt, &req.ctx);
            if !Box::pin(wait_unless_cancelled(&req.ctx.cancel, delay)).await {
                outcome = Outcome::Cancelled;
                break;
            }
        }
        // Cut short by the agent (lease lost, lapse, crash, shutdown timeout): the fire did not
        // finish, so its marker stays for whoever runs the shard next to re-run it. Deleting it
        // here raced the abort that follows the cancel and silently dropped the fire.
        let cut_short = req.ctx.cancel.is_cancelled();
        if let (Some(sink), Some(rev), false) = (&req.run.marker, marker, cut_short) {
            // In the background: a delete stuck on a broken connection must not keep the shard
            // "running" (and its next fires waiting). It is guarded by the marker's revision, so
            // it can never remove a later execution's marker.
            let (sink, job, shard) = (sink.clone(), req.run.name.clone(), req.ctx.shard);
            tokio::spawn(async move {
                let (client, keys, limit) = (&sink.client, &sink.keys, sink.timeout);
                if let Err(e) = super::txn::delete_marker(client, keys, &job, shard, rev, limit).await {
                    warn!(job = &*job, shard, error = %e, "the running marker stays; the next owner will re-run this fire");
                }
            });
        }
        finish(&req, start, outcome)
    }
    .instrument(span)
}

/// `ctx` without its strings: what a request keeps once its last attempt took the context.
fn hollow(ctx: &ShardContext) -> ShardContext {
    ShardContext {
        job: String::new(),
        shard_param: String::new(),
        job_param: String::new(),
        instance: String::new(),
        owner_key: String::new(),
        cancel: ctx.cancel.clone(),
        ..*ctx
    }
}

async fn mark(sink: &Writes, req: &ExecRequest) -> Result<Option<i64>, super::txn::TxnError> {
    let ctx = &req.ctx;
    let instance = shardjob_sharding::InstanceId::new(req.run.common.instance.to_string())
        .map_err(|e| super::txn::TxnError::Encode {
            what: "the instance id",
            cause: e.to_string(),
        })?;
    let marker = shardjob_coordinator::model::Running {
        instance,
        fire_time: ctx.fire_time,
        token: ctx.token,
    };
    // A transient failure (etcd electing a raft leader takes one to two seconds) is tried
    // again, 100 ms doubling, for up to one write timeout and while the run is not cancelled
    // (a lapse cancels it): giving up at the first error dropped the fire (found by the fault
    // campaign: an etcd leader kill, then a crash of the owner, left a shard 10 s without a
    // run).
    let deadline = tokio::time::Instant::now() + sink.timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        // Boxed: the txn future is large, and an execution of a job without failover must
        // not carry its size.
        let put = Box::pin(super::txn::put_marker(
            &sink.client,
            &sink.keys,
            &ctx.job,
            ctx.shard,
            &marker,
            sink.timeout,
        ));
        match put.await {
            Err(super::txn::TxnError::Etcd(e))
                if e.is_transient()
                    && !ctx.cancel.is_cancelled()
                    && tokio::time::Instant::now() + delay < deadline =>
            {
                warn!(error = %e, retry_in = ?delay, "the running marker could not be written; trying again");
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Err(super::txn::TxnError::Etcd(e)),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Waits `delay`; false when `cancel` fires first.
async fn wait_unless_cancelled(
    cancel: &tokio_util::sync::CancellationToken,
    delay: Duration,
) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The permits of `semaphores`, `None` if `cancel` fires first. Without limits (the common
/// case) there is nothing to wait for and nothing to allocate; the wait itself is boxed, so it
/// does not grow every execution's future.
async fn permits_for(
    semaphores: &[Arc<Semaphore>],
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    if semaphores.is_empty() {
        return Some(Vec::new());
    }
    Box::pin(acquire(semaphores, cancel)).await
}

async fn acquire(
    semaphores: &[Arc<Semaphore>],
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let mut permits = Vec::with_capacity(semaphores.len());
    for s in semaphores {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            p = s.clone().acquire_owned() => permits.push(p.ok()?),
        }
    }
    Some(permits)
}

/// Runs one attempt: the handler's future (the context goes straight into it; as an argument
/// here it would keep its own slot in the future) against the token it watches and the
/// timeout. The flag says whether a retry may help (a failure that is not permanent).
async fn run_attempt(
    mut run: crate::job::RunFuture<'_>,
    cancel: &tokio_util::sync::CancellationToken,
    timeout: Option<Duration>,
    stop_grace: Option<Duration>,
) -> (Outcome, bool) {
    let limit = timeout.unwrap_or(Duration::MAX);
    let result = tokio::select! {
        r = &mut run => r,
        _ = cancel.cancelled() => {
            let Some(grace) = stop_grace else {
                // Lost lease or shutdown: stop now (dropping the future aborts it at its next
                // await).
                return (Outcome::Cancelled, false);
            };
            // A resident run asked to stop: it may finish what it is doing, up to its grace.
            if Box::pin(tokio::time::timeout(grace, &mut run)).await.is_err() {
                warn!(?grace, "the resident run did not stop within its grace; dropped");
            }
            return (Outcome::Cancelled, false);
        }
        // Made only when polled: without a timeout there is no timer (not even a clock read).
        _ = async { tokio::time::sleep(limit).await }, if timeout.is_some() => {
            // Timeout: ask the handler to stop, give it a moment, then abort.
            cancel.cancel();
            let grace = (limit / 4).min(Duration::from_secs(1));
            let _ = Box::pin(tokio::time::timeout(grace, &mut run)).await;
            return (Outcome::Timeout, false);
        }
    };
    match result {
        Ok(()) => (Outcome::Ok, false),
        Err(JobError::Cancelled) => (Outcome::Cancelled, false),
        Err(JobError::Failed(cause)) => {
            warn!(%cause, "execution failed");
            (Outcome::Failed, true)
        }
        Err(JobError::Permanent(cause)) => {
            warn!(%cause, "execution failed for good: not retried");
            (Outcome::Failed, false)
        }
    }
}

/// 100 ms doubling per attempt, capped at 30 s, times a jitter in [0.5, 1).
fn backoff(attempt: u32, ctx: &ShardContext) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(BACKOFF_CAP);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let h = shardjob_sharding::hash::fnv1a64(&[
        ctx.job.as_bytes(),
        &ctx.shard.to_le_bytes(),
        &attempt.to_le_bytes(),
        &nanos.to_le_bytes(),
    ]);
    let jitter = 0.5 + (h % 1000) as f64 / 2000.0;
    exp.mul_f64(jitter)
}

fn finish(req: &ExecRequest, start: chrono::DateTime<Utc>, outcome: Outcome) -> Outcome {
    let end = Utc::now();
    let seconds = (end - start).to_std().unwrap_or_default().as_secs_f64();
    let job = &*req.run.name;
    req.run.metrics.record(job, outcome, seconds);
    if let Some(log) = req
        .run
        .common
        .log
        .as_ref()
        .filter(|_| req.ticket.log_first())
    {
        log.append(&ExecRecord {
            job: job.to_owned(),
            shard: req.ctx.shard,
            fire_time: req.ctx.fire_time,
            instance: req.run.common.instance.to_string(),
            token: req.ctx.token,
            start,
            end,
            outcome,
        });
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use tokio_util::sync::CancellationToken;

    use crate::engine::{RunKind, Token};
    use crate::runtime::job_runs::tests::{config, job_run};
    use shardjob_coordinator::model::{HumanDuration, JobConfig};

    /// A request of job `j`, shard 0, token 1, that runs `handler` under the config `edit`
    /// makes, with `run` applied to the job's shared part.
    fn request_with(
        handler: impl crate::Job,
        edit: impl FnOnce(&mut JobConfig),
        run: impl FnOnce(&mut JobRun),
    ) -> ExecRequest {
        let mut shared = job_run("j", config(edit), Arc::new(handler));
        run(&mut shared);
        let ctx = shared.context(
            0,
            Token(1),
            Utc::now(),
            RunKind::Scheduled,
            CancellationToken::new(),
        );
        ExecRequest {
            run: Arc::new(shared),
            ctx,
            resident: false,
            ticket: Arc::new(Ticket::new("j".into(), 0, Token(1), Utc::now(), Utc::now())),
        }
    }

    fn request(handler: impl crate::Job, timeout: Option<Duration>, retries: u32) -> ExecRequest {
        request_with(
            handler,
            |c| {
                c.timeout = timeout.map(HumanDuration);
                c.max_retries = retries;
            },
            |_| {},
        )
    }

    #[test]
    fn an_execution_is_small_enough_to_spawn_cheaply() {
        // Every fire moves this future into a new task; it was 18 KB when it held an etcd
        // client and the marker txn inline, and 2 KB before the rare paths were boxed; the
        // timeout's timer made only when polled added 16 bytes (1040) and saves a clock read
        // and a runtime-handle clone per fire; the job's shared part behind one pointer
        // (`job_runs.rs`) took it to 952.
        let size = std::mem::size_of_val(&execute(request(
            crate::job_fn(|_| async { Ok(()) }),
            None,
            0,
        )));
        assert!(size <= 960, "the execution future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resident_run_asked_to_stop_may_finish_within_its_grace_and_is_dropped_after() {
        // Finishes its work 2 s after the cancel: inside a 5 s grace, dropped by a 1 s one.
        for (grace, finished) in [(5, true), (1, false)] {
            let done = Arc::new(AtomicBool::new(false));
            let seen = done.clone();
            let job = crate::job_fn(move |ctx: ShardContext| {
                let seen = seen.clone();
                async move {
                    ctx.cancel.cancelled().await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    seen.store(true, Ordering::SeqCst);
                    Ok(())
                }
            });
            // A resident run's timeout is its stop grace.
            let mut req = request(job, Some(Duration::from_secs(grace)), 0);
            req.resident = true;
            let cancel = req.ctx.cancel.clone();
            let run = tokio::spawn(execute(req));
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!run.is_finished(), "a resident run has no deadline");
            cancel.cancel();
            assert_eq!(run.await.unwrap(), Outcome::Cancelled);
            assert_eq!(done.load(Ordering::SeqCst), finished, "grace {grace} s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_then_succeed() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let job = crate::job_fn(move |ctx: ShardContext| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt < 3 {
                    Err(JobError::failed("not yet"))
                } else {
                    Ok(())
                }
            }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(execute(request(job, None, 5)).await, Outcome::Ok);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Two backoffs: at least 50 ms + 100 ms (jitter >= 0.5), less than 100 + 200 ms.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_millis(300),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_sees_the_whole_context_and_the_last_one_takes_it() {
        // Fails twice, then succeeds: the third attempt is the last (2 retries) and is handed
        // the request's own context instead of a copy; each must see the same strings.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let job = crate::job_fn(move |ctx: ShardContext| {
            let record = record.clone();
            async move {
                let attempt = ctx.attempt;
                record.lock().unwrap().push((
                    attempt,
                    ctx.job,
                    ctx.shard_param,
                    ctx.instance,
                    ctx.owner_key,
                    ctx.token,
                ));
                if attempt < 3 {
                    Err(JobError::failed("not yet"))
                } else {
                    Ok(())
                }
            }
        });
        let req = request_with(
            job,
            |c| {
                c.max_retries = 2;
                c.shard_params.insert(0, "p".into());
            },
            |_| {},
        );
        let owner_key = req.ctx.owner_key.clone();
        assert!(owner_key.ends_with("owners/j/0"), "{owner_key}");
        assert_eq!(execute(req).await, Outcome::Ok);
        let seen = seen.lock().unwrap().clone();
        let want = |attempt| {
            (
                attempt,
                "j".to_owned(),
                "p".to_owned(),
                "me".to_owned(),
                owner_key.clone(),
                1,
            )
        };
        assert_eq!(seen, vec![want(1), want(2), want(3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried_and_any_error_converts_with_a_question_mark() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let job = crate::job_fn(move |_| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Err(JobError::permanent("bad input"))
            }
        });
        assert_eq!(execute(request(job, None, 5)).await, Outcome::Failed);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no retry of a permanent failure"
        );
        let parse = crate::job_fn(|_| async {
            let _n: u32 = "x".parse()?;
            Ok(())
        });
        assert_eq!(execute(request(parse, None, 1)).await, Outcome::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_gives_the_concurrency_permits_back() {
        let limit = Arc::new(Semaphore::new(1));
        let job = crate::job_fn(|ctx: ShardContext| async move {
            if ctx.attempt == 1 {
                Err(JobError::failed("once"))
            } else {
                Ok(())
            }
        });
        let req = request_with(
            job,
            |c| c.max_retries = 1,
            |r| r.permits = vec![limit.clone()].into_boxed_slice(),
        );
        let run = tokio::spawn(execute(req));
        // The first attempt fails at once; during the backoff (50..100 ms) the permit is free.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(limit.available_permits(), 1, "held during the backoff");
        assert_eq!(run.await.unwrap(), Outcome::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_retried_only_when_the_job_says_so() {
        let calls = Arc::new(AtomicU32::new(0));
        let job = |calls: Arc<AtomicU32>| {
            crate::job_fn(move |ctx: ShardContext| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if ctx.attempt == 1 {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                }
            })
        };
        let timeout = Some(Duration::from_secs(1));
        let req = request(job(calls.clone()), timeout, 2);
        assert_eq!(execute(req).await, Outcome::Timeout);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried by default");
        calls.store(0, Ordering::SeqCst);
        let req = request_with(
            job(calls.clone()),
            |c| {
                c.timeout = timeout.map(HumanDuration);
                c.max_retries = 2;
                c.retry_timeouts = true;
            },
            |_| {},
        );
        assert_eq!(execute(req).await, Outcome::Ok);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_retries_is_failed() {
        let job = crate::job_fn(|_| async { Err(JobError::failed("always")) });
        assert_eq!(execute(request(job, None, 2)).await, Outcome::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_cancels_the_token_then_aborts() {
        let saw_cancel = Arc::new(AtomicU32::new(0));
        let flag = saw_cancel.clone();
        let job = crate::job_fn(move |ctx: ShardContext| {
            let flag = flag.clone();
            async move {
                ctx.cancel.cancelled().await;
                flag.store(1, Ordering::SeqCst);
                // Ignores the request to stop: must be aborted after the grace period.
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(
            execute(request(job, Some(Duration::from_secs(2)), 0)).await,
            Outcome::Timeout
        );
        assert_eq!(saw_cancel.load(Ordering::SeqCst), 1);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(2500),
            "2 s timeout + 0.5 s grace"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_execution_stops_at_once() {
        let job = crate::job_fn(|_| std::future::pending::<Result<(), JobError>>());
        let req = request(job, None, 0);
        let fence = req.ctx.cancel.clone();
        let run = tokio::spawn(execute(req));
        tokio::time::sleep(Duration::from_secs(1)).await;
        fence.cancel();
        assert_eq!(run.await.unwrap(), Outcome::Cancelled);
    }
}
