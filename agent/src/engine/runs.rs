//! Fires, owed runs and launches. The rules:
//! - a run starts only on a shard that is held and still assigned to me, of a job that is not
//!   disabled, while not shutting down, and while the lease is proven for the margin;
//! - at most one run per shard at a time: a run that cannot start now is **owed** — after the
//!   shard's current run (a coalesced misfire) or once the lease is proven again (a lapse) —
//!   one per shard, the latest fire winning; a scheduled fire is owed only when the job allows
//!   misfires, a failover re-run or a trigger always (each is a run someone is owed);
//! - a fire of the schedule at or before the latest one this owner launched or owes
//!   (`covered`) never starts again: the heap, a catch-up and a failover re-run can all arrive
//!   at one fire.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use super::fires::instant_of;
use super::shard::{Local, Owed, Run};
use super::{Command, Engine, ExecId, Now, RunKind};
use crate::execlog::Outcome;

impl Engine {
    /// Asks for a run of `shard` for `fire`: it starts now, is owed, or is not needed.
    pub(super) fn offer(
        &mut self,
        job: &str,
        shard: u32,
        fire: DateTime<Utc>,
        kind: RunKind,
        now: Now,
    ) {
        self.offer_at(job, shard, fire, kind, now, None);
    }

    /// [`Engine::offer`], for a fire popped ahead of its instant `start_at` (its job has no
    /// run in progress, and the proof reaches past the instant: `fire_due` checked both).
    pub(super) fn offer_at(
        &mut self,
        job: &str,
        shard: u32,
        fire: DateTime<Utc>,
        kind: RunKind,
        now: Now,
        start_at: Option<Instant>,
    ) {
        let stopping = self.stopping;
        let proven = self.proven(now);
        let lapsed = self.session.is_some_and(|p| p.lapsed);
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        let Some(spec) = js.runnable() else {
            return;
        };
        let misfire_allowed = spec.config.misfire;
        if stopping {
            return;
        }
        let Some(Local::Held(h)) = js.shards.get_mut(&shard).map(|s| &mut s.local) else {
            return;
        };
        if kind.is_scheduled() && h.covered.is_some_and(|c| fire <= c) {
            debug!(job, shard, %fire, ?kind, "already covered");
            return;
        }
        if h.run.is_some() || !proven {
            if h.run.is_some() {
                metrics::counter!("shardjob_misfires_total").increment(1);
            } else if lapsed {
                debug!(job, shard, "not starting during a lapse");
            } else {
                warn!(
                    job,
                    shard, "not starting: the lease is not proven long enough"
                );
            }
            if owe(h, fire, kind, false, misfire_allowed) {
                self.mark_owed(job);
            }
            return;
        }
        self.launch(job, shard, fire, kind, false, start_at);
    }

    /// Starts a run of a held shard (the caller checked that it may).
    fn launch(
        &mut self,
        job: &str,
        shard: u32,
        fire: DateTime<Utc>,
        kind: RunKind,
        replay: bool,
        start_at: Option<Instant>,
    ) {
        self.next_exec += 1;
        let exec = ExecId(self.next_exec);
        let Some(h) = self.held_mut(job, shard) else {
            return;
        };
        if kind.is_scheduled() {
            h.cover(fire);
        }
        h.run = Some(Run {
            exec,
            fire,
            kind,
            stopping: false,
        });
        let token = h.token;
        self.out.push(Command::Launch {
            exec,
            job: job.to_owned(),
            shard,
            token,
            fire,
            kind,
            replay,
            start_at,
        });
    }

    /// Starts the run `shard` owes, if it may start now.
    pub(super) fn launch_owed(&mut self, job: &str, shard: u32, now: Now) {
        if self.stopping || !self.proven(now) || !self.fireable_shard(job, shard) {
            return;
        }
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        if js.runnable().is_none() {
            return;
        }
        let Some(Local::Held(h)) = js.shards.get_mut(&shard).map(|s| &mut s.local) else {
            return;
        };
        if h.run.is_some() {
            return;
        }
        if let Some(owed) = h.owed.take() {
            if owed.replay {
                tracing::info!(job, shard, fire = %owed.fire, "replaying a run the lapse cut short");
            }
            self.launch(job, shard, owed.fire, owed.kind, owed.replay, None);
        }
    }

    /// Starts every owed run that may start now (the lease is proven again).
    pub(super) fn launch_all_owed(&mut self, now: Now) {
        for job in std::mem::take(&mut self.owed) {
            let shards: Vec<u32> = self.jobs.get(&job).map_or_else(Vec::new, |js| {
                js.shards
                    .iter()
                    .filter(|(_, sh)| matches!(&sh.local, Local::Held(h) if h.owed.is_some()))
                    .map(|(s, _)| *s)
                    .collect()
            });
            for shard in shards {
                self.launch_owed(&job, shard, now);
            }
        }
    }

    pub(super) fn on_exec_done(
        &mut self,
        job: &str,
        shard: u32,
        exec: ExecId,
        outcome: Outcome,
        now: Now,
    ) {
        let Some(h) = self.held_mut(job, shard) else {
            return;
        };
        // Only the execution's own report: after a lapse a later execution may already run.
        let Some(run) = h.run.filter(|r| r.exec == exec) else {
            return;
        };
        debug!(job, shard, fire = %run.fire, outcome = outcome.as_str(), "execution ended");
        h.run = None;
        if run.kind == RunKind::Resident {
            // Ended by itself while held and wanted (a handler that returned or failed): start
            // it again at the re-check, never in a tight loop. Stopped: the release follows.
            if !run.stopping {
                h.owed = Some(Owed {
                    fire: now.wall,
                    kind: RunKind::Resident,
                    replay: false,
                });
                self.mark_owed(job);
                self.defer(job, now);
            }
            self.decide(job, now);
            return;
        }
        h.last_run = h.last_run.max(Some(run.fire));
        let token = h.token;
        // A one-shot's only fire ran and ended: it is done, whatever the outcome (retries were
        // the execution's to make). `cancelled` is no end: the handler did not run to a result
        // (its running marker could not be written, or it gave up on its token), so the next
        // owner runs it again.
        let one_shot = self.spec(job).is_some_and(
            |s| matches!(s.schedule, crate::schedule::FireSchedule::At(at) if at == run.fire),
        );
        if one_shot && outcome != Outcome::Cancelled {
            self.out.push(Command::RecordDone {
                job: job.to_owned(),
                shard,
                token,
                fire: run.fire,
                outcome,
            });
        }
        self.launch_owed(job, shard, now);
        self.decide(job, now);
    }

    /// Cuts a run short: the engine no longer counts on it.
    pub(super) fn abort(&mut self, job: &str, shard: u32, exec: ExecId) {
        self.out.push(Command::Abort {
            exec,
            job: job.to_owned(),
            shard,
        });
    }

    /// Fires every due entry of the heap.
    pub(super) fn fire_due(&mut self, now: Now) {
        let mut coalesced = 0u64;
        // Fires up to `horizon` go now: those due, and those due within the lead whose
        // instant the proof reaches.
        let horizon = match self.lead_limit() {
            Some(limit) if !self.cfg.lead.is_zero() => {
                now.mono.max(limit.min(now.mono + self.cfg.lead))
            }
            _ => now.mono,
        };
        // The millisecond of the crowd being launched ahead: once started, all of it goes.
        let mut crowd: Option<i64> = None;
        loop {
            let f = if let Some(f) = self.at_due.pop_due(now.mono) {
                f
            } else if let Some(f) = self.heap.pop_due(now.mono) {
                f
            } else {
                let Some((bucket, n)) = self.heap.crowd_at_top() else {
                    break;
                };
                if crowd != Some(bucket) && n < self.cfg.lead_crowd {
                    break;
                }
                match self.heap.pop_due(horizon) {
                    Some(f) => {
                        crowd = Some(bucket);
                        f
                    }
                    None => break,
                }
            };
            let early = f.at > now.mono;
            if early && self.job_running(&f.job) {
                self.at_due.push_fire(f);
                continue;
            }
            let Some(spec) = self.spec(&f.job).filter(|s| s.version == f.version) else {
                continue; // the job was removed or rescheduled
            };
            let shards = self.fireable(&f.job);
            if shards.is_empty() {
                // Nothing of it fires here: its schedule rests until a shard of it does
                // (`arm`). With 4 agents each popped every job's fire, 3 of 4 for nothing.
                if let Some(spec) = self.spec_mut(&f.job) {
                    spec.armed = false;
                }
                continue;
            }
            let lateness = (now.wall - f.fire_time).to_std().unwrap_or_default();
            if self.cfg.job_labels {
                metrics::histogram!("shardjob_fire_lateness_seconds", "job" => f.job.clone())
                    .record(lateness.as_secs_f64());
                metrics::counter!("shardjob_fires_total", "job" => f.job.clone()).increment(1);
            } else {
                metrics::histogram!("shardjob_fire_lateness_seconds")
                    .record(lateness.as_secs_f64());
                metrics::counter!("shardjob_fires_total").increment(1);
            }
            let (next, skipped) = spec.schedule.following(f.fire_time, now.wall);
            coalesced += u64::from(skipped);
            let start_at = early.then_some(f.at);
            for shard in shards {
                self.offer_at(
                    &f.job,
                    shard,
                    f.fire_time,
                    RunKind::Scheduled,
                    now,
                    start_at,
                );
            }
            // After the offers, which cannot touch the heap's order: the next fire takes this
            // one's name (an allocation and a free less per fire; 10k at once in a burst).
            if let Some(next) = next {
                self.heap
                    .push(instant_of(next, now.mono, now.wall), f.job, f.version, next);
            }
        }
        if coalesced > 0 {
            metrics::counter!("shardjob_fires_coalesced_total").increment(coalesced);
            warn!(
                jobs = coalesced,
                "the scheduler fell a whole interval behind; fires older than now were coalesced into the late run"
            );
        }
    }

    /// True when a shard of `job` has a run in progress.
    fn job_running(&self, job: &str) -> bool {
        self.jobs
            .get(job)
            .is_some_and(|js| js.shards.values().any(|s| s.run().is_some()))
    }

    /// Timers: the proof's end, fires due, the re-check of deferred decisions.
    pub(super) fn on_tick(&mut self, now: Now) {
        if self
            .session
            .is_some_and(|p| !p.lapsed && now.mono >= p.ends())
        {
            self.lapse();
        }
        self.fire_due(now);
        if self.retry_at.is_some_and(|t| t <= now.mono) {
            self.retry_at = None;
            self.recheck(now);
        }
    }

    /// Decides again the jobs whose last decision could not be carried out, and starts what
    /// they owe (a resident run waiting to start again).
    pub(super) fn recheck(&mut self, now: Now) {
        for job in std::mem::take(&mut self.retry) {
            self.decide(&job, now);
            for shard in self.fireable(&job) {
                self.launch_owed(&job, shard, now);
            }
        }
    }
}

/// Records a run `h` owes for `fire`; true when it was kept. A scheduled fire is owed (as a
/// misfire) only when the job allows misfires; a failover re-run, a trigger or a resident run
/// always.
pub(super) fn owe(
    h: &mut super::shard::Held,
    fire: DateTime<Utc>,
    kind: RunKind,
    replay: bool,
    misfire_allowed: bool,
) -> bool {
    let kind = match kind {
        RunKind::Scheduled | RunKind::Misfire | RunKind::CatchUp if !misfire_allowed => {
            return false;
        }
        RunKind::Scheduled | RunKind::Misfire | RunKind::CatchUp => RunKind::Misfire,
        RunKind::Failover | RunKind::Trigger | RunKind::Resident => kind,
    };
    if kind.is_scheduled() {
        h.cover(fire);
    }
    if h.owed.is_none_or(|o| fire >= o.fire) {
        h.owed = Some(Owed { fire, kind, replay });
    }
    true
}
