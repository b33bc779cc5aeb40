//! Carries out the engine's commands: claims and releases go to their packing tasks, launches
//! become execution tasks, aborts end them, and the status is published.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::claimer::ClaimWork;
use super::exec::{ExecRequest, execute};
use super::job_runs::JobRun;
use super::releaser::ReleaseWork;
use super::ticket::Ticket;
use super::txn::{self, ClaimPart, ReleaseItem};
use super::{Core, Event};
use crate::engine::{Command, ExecId, Input, RunKind, Token};
use crate::execlog::{ExecLog, ExecRecord, Outcome};
use crate::handle::AgentStatus;

/// How long a resident run may take to stop when its job sets no `timeout`.
pub(crate) const RESIDENT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How an execution is stopped at once: its own task, or its place in a crowd's task
/// (`runtime/crowd.rs`).
enum Abort {
    Task(tokio::task::AbortHandle),
    Crowd(futures_util::future::AbortHandle),
}

impl Abort {
    fn abort(&self) {
        match self {
            Self::Task(h) => h.abort(),
            Self::Crowd(h) => h.abort(),
        }
    }
}

/// An execution in progress: how to stop it, and its ticket (what its abort logs).
pub(super) struct RunningExec {
    abort: Abort,
    cancel: CancellationToken,
    ticket: Arc<Ticket>,
}

impl RunningExec {
    /// Cut short by the agent: cancel its token, abort its task, and log it as aborted unless
    /// it logged its own end first.
    pub(super) fn abort(self, instance: &str, log: &Option<Arc<ExecLog>>) {
        self.cancel.cancel();
        self.abort.abort();
        if let Some(log) = log {
            let t = &self.ticket;
            if t.log_first() {
                log.append(&ExecRecord {
                    job: t.job.to_string(),
                    shard: t.shard,
                    fire_time: t.fire,
                    instance: instance.to_owned(),
                    token: t.token.0,
                    start: t.launched,
                    end: Utc::now(),
                    outcome: Outcome::Aborted,
                });
            }
        }
    }

    /// Gone as with the process: aborted first, then cancelled, and nothing logged.
    pub(super) fn vanish(self) {
        self.ticket.log_first();
        self.abort.abort();
        self.cancel.cancel();
    }
}

/// An execution ready to start: what [`start`] makes its request and future from, when it
/// starts (its job's shared part, and what is its own).
pub(super) struct Prepared {
    run: Arc<JobRun>,
    exec: ExecId,
    kind: RunKind,
    cancel: CancellationToken,
    ticket: Arc<Ticket>,
    span: tracing::Span,
}

/// The execution `p` describes; it returns its end, the event for the loop.
fn start(p: Prepared) -> impl std::future::Future<Output = Event> + Send {
    let Prepared {
        run,
        exec,
        kind,
        cancel,
        ticket,
        span,
    } = p;
    let (job, shard) = (run.name.clone(), ticket.shard);
    let req = ExecRequest {
        ctx: run.context(shard, ticket.token, ticket.fire, kind, cancel),
        resident: kind == RunKind::Resident,
        run,
        ticket,
    };
    async move {
        let outcome = execute(req).await;
        Event::Engine(Input::ExecDone {
            job,
            shard,
            exec,
            outcome,
        })
    }
    .instrument(span)
}

/// True when a run of `kind` launched without `start_at` may start in a group: not a resident
/// run (it lasts as long as its shard is held: the segment workers of a task queue would all
/// be polled from one task, on one thread).
fn groupable(kind: RunKind) -> bool {
    kind != RunKind::Resident
}

/// True when the runs `commands` start now are many (a backlog: the fires due while the loop
/// was busy, a cold start's first fires): they start in groups, as a crowd does, at the turn's
/// instant (`crowd::GROUPED_NOW`).
fn starts_in_groups(commands: &[Command]) -> bool {
    let now = commands
        .iter()
        .filter(|c| matches!(c, Command::Launch { start_at: None, kind, .. } if groupable(*kind)))
        .count();
    now >= super::crowd::GROUPED_NOW
}

impl Core {
    pub(super) fn carry_out(&mut self, commands: Vec<Command>) {
        let grouped = starts_in_groups(&commands).then(tokio::time::Instant::now);
        for command in commands {
            match command {
                Command::Claim {
                    lease,
                    job,
                    shards,
                    assignment_revision,
                    generation,
                } => {
                    for chunk in shards.chunks(txn::CLAIM_CHUNK) {
                        let part = ClaimPart {
                            job: job.clone(),
                            assignment_revision,
                            generation,
                            shards: chunk.to_vec(),
                        };
                        // Unbounded: the claimer lives as long as the core (never a lost claim).
                        let _ = self.claims.send(ClaimWork { lease, part });
                    }
                }
                Command::Release {
                    lease,
                    job,
                    shard,
                    token,
                    last_fire,
                } => {
                    let item = ReleaseItem {
                        job,
                        shard,
                        token,
                        last_fire,
                    };
                    // Unbounded: the releaser lives as long as the core (never a lost release).
                    let _ = self.releases.send(ReleaseWork { lease, item });
                }
                Command::Launch {
                    exec,
                    job,
                    shard,
                    token,
                    fire,
                    kind,
                    replay,
                    start_at,
                } => {
                    let start_at = start_at
                        .map(tokio::time::Instant::from_std)
                        .or(grouped.filter(|_| groupable(kind)));
                    self.launch(exec, job, shard, token, fire, kind, replay, start_at);
                }
                Command::Abort { exec, .. } => {
                    if let Some(run) = self.execs.remove(&exec) {
                        run.abort(&self.cfg.id, &self.cfg.exec_log);
                    }
                }
                Command::Stop { exec, .. } => {
                    // Asked, not forced: the run ends by itself (its end is reported as usual)
                    // or is aborted by its own stop grace (`exec::run_attempt`).
                    if let Some(run) = self.execs.get(&exec) {
                        run.cancel.cancel();
                    }
                }
                Command::RecordDone {
                    job,
                    shard,
                    token,
                    fire,
                    outcome,
                } => self.record_done(job, shard, token, fire, outcome),
                Command::PublishOwned(jobs) => self.publish_owned(&jobs),
                Command::PublishAll => self.publish_all(|_| {}),
                Command::WatchOwners { from } => self.watch_owners(Some(from)),
                Command::UnwatchOwners => self.watch_owners(None),
                Command::Lapsed => {
                    metrics::counter!("shardjob_lease_lapses_total").increment(1);
                    metrics::gauge!("shardjob_lease_remaining_seconds").set(0.0);
                    self.publish_all(|s| s.lapses += 1);
                }
            }
        }
        let report = super::crowd::Report {
            tx: self.ends.clone(),
            batch: Event::Batch,
        };
        self.crowds.launch(start, &report);
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        exec: ExecId,
        job: String,
        shard: u32,
        token: Token,
        fire: DateTime<Utc>,
        kind: RunKind,
        replay: bool,
        start_at: Option<tokio::time::Instant>,
    ) {
        if replay {
            tracing::debug!(job, shard, %fire, "replaying a run cut short");
        }
        let Some(config) = self.engine.config(&job) else {
            return;
        };
        let (cfg, writes, common) = (&self.cfg, &self.writes, &self.common);
        let (job_limits, global_limit, exec_metrics) =
            (&mut self.job_limits, &self.global_limit, &self.exec_metrics);
        let engine = &self.engine;
        let exists = |j: &str| engine.config(j).is_some();
        let made = self.job_runs.get(&job, config, exists, |name| {
            let handler = cfg.handlers.get(config.handler_name(&name))?.clone();
            // The job's limit outlives its `JobRun`s: a config change must not hand out a
            // second set of permits while runs under the first still hold theirs.
            let job_limit = cfg.job_limits.get(&*name).map(|n| {
                job_limits
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(*n)))
                    .clone()
            });
            Some(JobRun {
                permits: global_limit.iter().cloned().chain(job_limit).collect(),
                marker: config.failover.then(|| writes.clone()),
                common: common.clone(),
                metrics: exec_metrics.for_job(&name),
                handler,
                config: config.clone(),
                name,
            })
        });
        let Some(run) = made else {
            return;
        };
        let cancel = CancellationToken::new();
        // Launched ahead of its instant, it starts at the instant.
        let launched = Utc::now().max(fire);
        let ticket = Arc::new(Ticket::new(run.name.clone(), shard, token, fire, launched));
        let prepared = Prepared {
            run,
            exec,
            kind,
            cancel: cancel.clone(),
            ticket: ticket.clone(),
            span: tracing::Span::current(),
        };
        let abort = match start_at {
            Some(at) => Abort::Crowd(self.crowds.add(at, prepared)),
            None => {
                let tx = self.ends.clone();
                let run = async move {
                    let _ = tx.send(start(prepared).await).await;
                };
                Abort::Task(tokio::spawn(run).abort_handle())
            }
        };
        let run = RunningExec {
            abort,
            cancel,
            ticket,
        };
        self.execs.insert(exec, run);
    }

    /// Writes a one-shot shard's done record in the background, guarded by its token (a stale
    /// owner writes nothing), trying 5 times 500 ms apart. If every try fails the shard stays
    /// assigned and held, and the job does not finish until its next owner runs it again.
    fn record_done(
        &self,
        job: String,
        shard: u32,
        token: Token,
        fire: DateTime<Utc>,
        outcome: Outcome,
    ) {
        let Ok(instance) = shardjob_sharding::InstanceId::new(self.cfg.id.clone()) else {
            return;
        };
        let record = shardjob_coordinator::model::Done {
            instance,
            fire_time: fire,
            outcome: outcome.as_str().to_owned(),
            token: token.0,
            ended_at: Utc::now(),
        };
        let writes = self.writes.clone();
        tokio::spawn(
            async move {
                let (client, keys, limit) = (&writes.client, &writes.keys, writes.timeout);
                for attempt in 1..=5 {
                    match txn::put_done(client, keys, &job, shard, token, &record, limit).await {
                        Ok(true) => {
                            tracing::info!(job, shard, outcome = %record.outcome, "one-shot done");
                            return;
                        }
                        Ok(false) => {
                            tracing::warn!(job, shard, "not recording done: the shard is no longer owned with this token");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(job, shard, attempt, error = %e, "recording done failed");
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Publishes the whole status, with `change` applied.
    /// Replaces the watch of owner deletes: from revision `from` (or a listing, for `None`)
    /// when `want` is `Some`, none when it is `None`.
    pub(super) fn watch_owners(&mut self, want: Option<Option<i64>>) {
        if let Some(running) = self.owner_watch.take() {
            running.abort();
        }
        if let Some(from) = want {
            let prefix = self.cfg.keys.owners_root();
            let (client, tx) = (self.client.clone(), self.tx.clone());
            let task = super::forward(client, super::Stream::Owners, prefix, from, tx);
            self.owner_watch = Some(tokio::spawn(task));
        }
    }

    pub(super) fn publish_all(&self, change: impl FnOnce(&mut AgentStatus)) {
        let owned: std::collections::BTreeMap<String, Vec<u32>> =
            self.engine.owned().into_iter().collect();
        let count: usize = owned.values().map(Vec::len).sum();
        metrics::gauge!("shardjob_owned_shards").set(count as f64);
        // Assigned here, held or not: assigned minus owned, summed over agents, is what the
        // alert "shards unowned longer than the TTL" watches.
        let total = self.engine.assigned_total();
        metrics::gauge!("shardjob_assigned_shards").set(total as f64);
        self.assigned_published.set(total);
        let lease = self.engine.lease().map_or(0, |l| l.get());
        let stopping = self.engine.stopping();
        self.status.send_modify(|s| {
            s.owned = owned;
            s.lease = lease;
            s.stopping = stopping;
            change(s);
        });
    }

    /// Refreshes the published shards of `jobs` only: an event about one job must not cost a
    /// walk over every shard of every job.
    fn publish_owned(&self, jobs: &[String]) {
        let mut delta: i64 = 0;
        self.status.send_if_modified(|s| {
            let mut changed = false;
            for job in jobs {
                let shards = self.engine.fireable(job);
                let before = s.owned.get(job).map_or(0, Vec::len) as i64;
                if s.owned
                    .get(job)
                    .map_or(shards.is_empty(), |old| *old == shards)
                {
                    continue;
                }
                changed = true;
                delta += shards.len() as i64 - before;
                if shards.is_empty() {
                    s.owned.remove(job);
                } else {
                    s.owned.insert(job.clone(), shards);
                }
            }
            // Filled in key order by the first claims: rebuilt with full nodes as it grows.
            let mut refill = self.owned_refill.get();
            refill.check(&mut s.owned);
            self.owned_refill.set(refill);
            changed
        });
        if delta != 0 {
            metrics::gauge!("shardjob_owned_shards").increment(delta as f64);
        }
        // A change, not a value: agents sharing a process add theirs to the one gauge.
        let total = self.engine.assigned_total();
        let change = total as f64 - self.assigned_published.replace(total) as f64;
        if change != 0.0 {
            metrics::gauge!("shardjob_assigned_shards").increment(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_waiting_for_its_instant_is_small() {
        // A burst launched ahead of its instant holds one of these per fire (10k for 10k cron
        // jobs `* * * * * *`). With the request made at launch it was 376 bytes and five
        // strings; its job's shared part is one pointer now (`job_runs.rs`).
        // Its fire's identity moved into the ticket it shares with the loop's entry: 80.
        let size = std::mem::size_of::<Prepared>();
        assert!(size <= 80, "a prepared execution is {size} bytes");
    }

    #[test]
    fn the_loops_entry_for_a_running_execution_is_small() {
        // The `execs` map keeps one per execution in flight, 10k in a burst of 10k fires, in a
        // table that never shrinks: its fields inline made a 96-byte slot (3.2 MB at 10k
        // aligned jobs, the table doubled by deleted slots).
        let size = std::mem::size_of::<(ExecId, RunningExec)>();
        assert!(size <= 40, "an execs entry is {size} bytes");
    }

    fn launch(i: u64, start_at: Option<std::time::Instant>) -> Command {
        launch_of(i, start_at, RunKind::Scheduled)
    }

    fn launch_of(i: u64, start_at: Option<std::time::Instant>, kind: RunKind) -> Command {
        Command::Launch {
            exec: ExecId(i),
            job: format!("j{i}"),
            shard: 0,
            token: Token(1),
            fire: Utc::now(),
            kind,
            replay: false,
            start_at,
        }
    }

    #[test]
    fn only_many_runs_started_now_start_in_groups() {
        let n = crate::runtime::crowd::GROUPED_NOW as u64;
        let now: Vec<Command> = (0..n - 1).map(|i| launch(i, None)).collect();
        assert!(!starts_in_groups(&now), "a few get a task each");
        let mut more = now;
        // Launched ahead: a crowd's already, not counted.
        more.push(launch(n, Some(std::time::Instant::now())));
        more.push(Command::PublishAll);
        // Resident runs never share a task: not counted, and never grouped.
        more.push(launch_of(n + 1, None, RunKind::Resident));
        assert!(!starts_in_groups(&more));
        assert!(!groupable(RunKind::Resident));
        more.push(launch(n + 2, None));
        assert!(starts_in_groups(&more));
        let kinds = [
            RunKind::Scheduled,
            RunKind::Misfire,
            RunKind::CatchUp,
            RunKind::Failover,
            RunKind::Trigger,
        ];
        assert!(kinds.into_iter().all(groupable));
    }
}
