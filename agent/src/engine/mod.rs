//! The agent's engine: every decision of the ownership and execution protocol, pure.
//!
//! ```text
//!   etcd watches ─┐                                        ┌─▶ Claim / Release   (txns)
//!   claim/release │   Input    ┌──────────────────┐ Command│─▶ Launch / Abort    (tasks)
//!   results ──────┼──────────▶ │ Engine::step(    │ ───────┼─▶ PublishOwned/All  (status)
//!   exec ended ───┤            │   input, now)    │        └─▶ Lapsed            (status)
//!   lease proof ──┤            └──────────────────┘
//!   timers, stop ─┘                 ▲  next_wake(): when to call step(Tick) again
//! ```
//!
//! The runtime (`crate::runtime`) owns the etcd client, the timers and the tasks. It turns what
//! happens into an [`Input`], calls [`Engine::step`] with the time it read, and carries out the
//! [`Command`]s that come back. Nothing here reads a clock, touches etcd or spawns; a rule of
//! the protocol lives here and nowhere else, and is tested as a row of `tests/`.
//!
//! Where to start: [`shard`] (one shard's state machine), then the step handlers:
//! [`observe`] (what etcd shows), [`ownership`] (claims and releases), [`runs`] (fires, owed
//! runs, launches), [`lease`] (proof, lapse, self-fence, shutdown) and [`waits`] (which owner
//! deletes are awaited, and the watch they need).

pub mod command;
pub mod fires;
pub mod input;
pub mod job;
mod lease;
mod mine;
mod observe;
mod ownership;
pub mod run_config;
mod runs;
pub mod shard;
pub mod shard_map;
#[cfg(test)]
mod tests;
pub mod types;
mod waits;

use std::collections::BTreeSet;

use crate::hash::{FastMap, FastSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use command::Command;
pub use input::{ClaimResult, Input, Listing, SeenOwner, WriteFailed};
pub use types::{ExecId, LeaseId, Now, RunKind, Token};

use fires::{FireHeap, instant_of};
use job::{JobState, Spec};
use shard::Local;

/// How long a deferred decision waits before it is tried again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// How much sooner than the liveness stream's guard runs out a launch stops (the guard is
/// already short; the leader adds its own slack after it).
pub const GUARD_MARGIN: Duration = Duration::from_millis(5);

/// The lease as this agent last proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proof {
    lease: LeaseId,
    valid_until: Instant,
    /// The liveness stream's guard: after a break the leader may end the lease from this
    /// instant on, so nothing may run at or past it. `None`: only the lease binds.
    guard: Option<Instant>,
    /// The proof (or the guard) ran out and has not been renewed yet.
    lapsed: bool,
}

impl Proof {
    /// When acting under this lease must stop: the end of the proof or of the guard.
    fn ends(&self) -> Instant {
        self.guard
            .map_or(self.valid_until, |g| g.min(self.valid_until))
    }
}

/// What the engine is built with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This instance's id.
    pub id: String,
    /// The handler names this agent registered.
    pub handlers: BTreeSet<String>,
    /// Act on the lease only while it is proven for this much longer (a tenth of the TTL).
    pub margin: Duration,
    /// The fire metrics carry a `job` label.
    pub job_labels: bool,
    /// How far ahead of its instant a scheduled fire may be launched, its execution waiting
    /// for the instant (`Command::Launch::start_at`): a burst of fires due at one instant is
    /// prepared before it and released together. Only while the lease (and the liveness
    /// guard) is proven through the instant, and only for a job with no run in progress.
    pub lead: Duration,
    /// Only a crowd is launched ahead: at least this many fires due in one millisecond (fires
    /// spread over time are started by the loop in time, and a timer per execution would only
    /// add its rounding).
    pub lead_crowd: u32,
}

/// The agent's decisions; see the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    /// `cfg.id`, shared: every owner key of mine names it.
    me: Arc<str>,
    /// `cfg.handlers`, sorted and shared: a job run by another handler than its own name
    /// points at one of these (`RunConfig`).
    handler_names: Box<[Arc<str>]>,
    /// The sum of every job's `assigned_count` (debug builds recount it after every step).
    assigned_total: usize,
    session: Option<Proof>,
    stopping: bool,
    // A hash map: every fire looks its job up, and a B-tree of 10k names costs a dozen string
    // compares per lookup.
    jobs: FastMap<String, JobState>,
    heap: FireHeap,
    /// Fires popped ahead of their instant for a job that still had a run: they wait for
    /// their instant (a fire offered early to a running shard would be owed, and could then
    /// start before its instant, or be dropped when the job allows no misfires).
    at_due: FireHeap,
    next_version: u64,
    next_exec: u64,
    /// The last trigger id seen per job (a trigger runs once per id).
    triggers_seen: FastMap<String, String>,
    /// Jobs to decide again at `retry_at` (a claim deferred for lack of proof, a failed claim
    /// or release). Never a walk over every job: at 10k jobs that walk was fire lateness's p99.
    retry: BTreeSet<String>,
    retry_at: Option<Instant>,
    /// Jobs that may have a run owed (a hint: what is owed lives in the shards).
    owed: BTreeSet<String>,
    /// A job that still held shards at the last `drained` check.
    drain_hint: Option<String>,
    /// Shards whose owner key was deleted while my claim of them was in flight: a refusal
    /// answering that claim names a key already gone (the delete and the answer travel apart),
    /// so the shard is claimed again rather than left waiting for a delete already seen.
    deleted_while_claiming: FastSet<(String, u32)>,
    /// Jobs whose assignment at this revision a claim found changed: nothing more is claimed
    /// under it (the new one is on its way in the watch; claiming again would only loop).
    stale: FastMap<String, i64>,
    /// Jobs with a shard waiting for an owner key's delete (`waits`).
    waiting: FastSet<String>,
    /// The owner-delete watch as last asked of the runtime.
    owner_watch: waits::OwnerWatch,
    /// The earliest revision a key was read at by the refusals of this step.
    wait_read: Option<i64>,
    /// Waits began this step whose keys were read at no known revision.
    wait_unread: bool,
    /// This step's commands.
    out: Vec<Command>,
    /// Jobs whose fireable shards may have changed in this step.
    publish: BTreeSet<String>,
    publish_all: bool,
}

impl Engine {
    /// An engine with no session, no jobs, nothing held.
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            me: Arc::from(cfg.id.as_str()),
            handler_names: cfg.handlers.iter().map(|h| Arc::from(h.as_str())).collect(),
            assigned_total: 0,
            cfg,
            session: None,
            stopping: false,
            jobs: FastMap::default(),
            heap: FireHeap::default(),
            at_due: FireHeap::default(),
            next_version: 0,
            next_exec: 0,
            triggers_seen: FastMap::default(),
            retry: BTreeSet::new(),
            retry_at: None,
            owed: BTreeSet::new(),
            drain_hint: None,
            deleted_while_claiming: FastSet::default(),
            stale: FastMap::default(),
            waiting: FastSet::default(),
            owner_watch: waits::OwnerWatch::Off,
            wait_read: None,
            wait_unread: false,
            out: Vec::new(),
            publish: BTreeSet::new(),
            publish_all: false,
        }
    }

    /// Applies one input at `now` and returns what the runtime must do.
    ///
    /// A claim's answer first handles the deadlines that passed before `now`, as if the
    /// runtime's timer had come before it (its loop takes channel events first, so a tick can
    /// arrive late): the claim's catch-up of the latest fire may then assume the heap holds no
    /// fire at or before `now`. Without it the catch-up and the heap's late pop could both run
    /// one fire (the property test found it: caught up, key vanished, claimed again, popped).
    pub fn step(&mut self, input: Input, now: Now) -> Vec<Command> {
        self.apply(input, now);
        self.flush()
    }

    /// [`Engine::step`] without collecting the commands: several inputs in a row, then
    /// [`Engine::take_commands`] once (the runtime drains a burst of events this way: one
    /// status publication for ten thousand finished executions, not ten thousand).
    pub fn apply(&mut self, input: Input, now: Now) {
        if matches!(input, Input::Claimed { .. }) && self.next_wake().is_some_and(|w| w <= now.mono)
        {
            self.on_tick(now);
        }
        match input {
            Input::JobPut { job, config } => self.on_job_put(&job, *config, now),
            Input::JobDeleted { job } => self.on_job_deleted(&job, now),
            Input::AssignmentPut {
                job,
                entry,
                revision,
            } => self.on_assignment(&job, Some((entry, revision)), now),
            Input::AssignmentDeleted { job } => self.on_assignment(&job, None, now),
            Input::OwnerDeleted {
                job,
                shard,
                revision,
            } => self.on_owner_deleted(&job, shard, revision, now),
            Input::TriggerPut { job, trigger } => self.on_trigger(&job, trigger, now),
            Input::Relisted(listing) => self.on_relisted(listing, now),
            Input::Claimed {
                job,
                lease,
                revision,
                read_at,
                results,
            } => self.on_claimed(&job, lease, revision, read_at, results, now),
            Input::Released {
                job,
                shard,
                lease,
                token,
                result,
            } => self.on_released(&job, shard, lease, token, result, now),
            Input::ExecDone {
                job,
                shard,
                exec,
                outcome,
            } => self.on_exec_done(&job, shard, exec, outcome, now),
            Input::Proof { valid_until } => self.on_proof(valid_until, now),
            Input::Guard { until } => self.on_guard(until, now),
            Input::SessionOpened { lease, valid_until } => {
                self.on_session_opened(lease, valid_until, now)
            }
            Input::SessionLost => self.self_fence(),
            Input::Tick => self.on_tick(now),
            Input::ShutdownBegun => self.on_shutdown(now),
            Input::Finish => self.on_finish(),
        }
    }

    /// Drops `job`'s entry once nothing is known of it (no spec, no shard of mine assigned,
    /// no shard seen): an agent keeps nothing of the jobs it has no part in.
    fn tidy(&mut self, job: &str) {
        if self.jobs.get(job).is_some_and(JobState::is_empty) {
            self.jobs.remove(job);
            self.waiting.remove(job);
        }
    }

    /// What the inputs applied since the last call ask the runtime to do.
    pub fn take_commands(&mut self) -> Vec<Command> {
        self.flush()
    }

    /// When to call `step(Tick)` next: the earliest of the next fire, the end of the lease's
    /// proof, and the re-check of deferred decisions.
    pub fn next_wake(&self) -> Option<Instant> {
        let proof = self.session.filter(|p| !p.lapsed).map(|p| p.ends());
        let crowd = self.heap.crowd_at_top().map_or(0, |(_, n)| n);
        let next_fire = self.heap.next_due().map(|d| match self.lead_limit() {
            Some(limit) if d <= limit && crowd >= self.cfg.lead_crowd => {
                d.checked_sub(self.cfg.lead).unwrap_or(d)
            }
            _ => d,
        });
        [next_fire, self.at_due.next_due(), proof, self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The lease of the current session.
    pub fn lease(&self) -> Option<LeaseId> {
        self.session.map(|p| p.lease)
    }

    /// True once shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The config of a job this agent can run.
    pub fn config(&self, job: &str) -> Option<&std::sync::Arc<run_config::RunConfig>> {
        self.jobs.get(job)?.spec.as_deref().map(|s| &s.config)
    }

    /// The shards of `job` this agent may fire now: held and still assigned to it.
    pub fn fireable(&self, job: &str) -> Vec<u32> {
        let Some(js) = self.jobs.get(job) else {
            return Vec::new();
        };
        js.shards
            .keys()
            .copied()
            .filter(|s| js.fireable(*s))
            .collect()
    }

    /// How many shards of `job` the assignment gives this agent (held or not).
    pub fn assigned(&self, job: &str) -> usize {
        self.jobs.get(job).map_or(0, JobState::assigned_count)
    }

    /// How many shards the assignments give this agent, over all jobs (held or not).
    pub fn assigned_total(&self) -> usize {
        self.assigned_total
    }

    /// Every job with shards this agent may fire now.
    pub fn owned(&self) -> Vec<(String, Vec<u32>)> {
        self.jobs
            .keys()
            .filter_map(|job| {
                let shards = self.fireable(job);
                (!shards.is_empty()).then(|| (job.clone(), shards))
            })
            .collect()
    }

    /// True once no shard is held or being released (shutdown may end). It remembers which job
    /// still held something: with 10k jobs a walk per event would make a shutdown quadratic.
    pub fn drained(&mut self) -> bool {
        let busy = |js: &JobState| js.shards.values().any(|s| s.local.held().is_some());
        if let Some(js) = self.drain_hint.as_ref().and_then(|j| self.jobs.get(j)) {
            if busy(js) {
                return false;
            }
        }
        self.drain_hint = self
            .jobs
            .iter()
            .find(|(_, js)| busy(js))
            .map(|(j, _)| j.clone());
        self.drain_hint.is_none()
    }

    /// The latest instant a fire may start at, as far as the proof goes: the lease proven for
    /// the margin past it, the liveness guard for its margin. `None` while not proven at all.
    fn lead_limit(&self) -> Option<Instant> {
        let p = self.session.filter(|p| !p.lapsed)?;
        let lease = p.valid_until.checked_sub(self.cfg.margin)?;
        Some(match p.guard {
            Some(g) => lease.min(g.checked_sub(GUARD_MARGIN)?),
            None => lease,
        })
    }

    /// True when the lease is proven for the margin past `now`.
    fn proven(&self, now: Now) -> bool {
        self.session.is_some_and(|p| {
            now.mono + self.cfg.margin < p.valid_until
                && p.guard.is_none_or(|g| now.mono + GUARD_MARGIN < g)
        })
    }

    fn defer(&mut self, job: &str, now: Now) {
        self.retry.insert(job.to_owned());
        self.retry_at.get_or_insert(now.mono + RECHECK);
    }

    fn flush(&mut self) -> Vec<Command> {
        self.steer_owner_watch();
        if cfg!(debug_assertions) {
            self.check();
            self.check_waits();
        }
        // First: the status shows what this step decided (it reads the engine's state, final
        // by now) before any run it launches starts. Carried out last, a run spawned at once
        // could end, and its handler be seen, while the status still lacked its shard.
        let publish = if self.publish_all {
            Some(Command::PublishAll)
        } else if !self.publish.is_empty() {
            Some(Command::PublishOwned(
                self.publish.iter().cloned().collect(),
            ))
        } else {
            None
        };
        if let Some(publish) = publish {
            self.out.insert(0, publish);
        }
        self.publish.clear();
        self.publish_all = false;
        std::mem::take(&mut self.out)
    }

    /// The invariants, checked after every step in debug builds (tests, the fault campaign):
    /// every shard's state machine is consistent with the key seen and the session, and no run
    /// goes on while the lease is lapsed.
    fn check(&self) {
        let lease = self.lease();
        let lapsed = self.session.is_some_and(|p| p.lapsed);
        for (job, js) in &self.jobs {
            for (shard, sh) in js.shards.iter() {
                if let Err(e) = sh.check(&self.cfg.id, lease) {
                    panic!("engine invariant broken at {job}/{shard}: {e}");
                }
                assert!(
                    !(lapsed && sh.run().is_some()),
                    "engine invariant broken at {job}/{shard}: a run during a lapse"
                );
            }
        }
        let recount: usize = self.jobs.values().map(JobState::assigned_count).sum();
        assert_eq!(
            self.assigned_total, recount,
            "engine invariant broken: the shards assigned here are not counted right"
        );
    }

    /// Shards of `job` with a run owed go on the hint list.
    fn mark_owed(&mut self, job: &str) {
        self.owed.insert(job.to_owned());
    }

    /// The held state of a shard, if it is held (not releasing).
    fn held_mut(&mut self, job: &str, shard: u32) -> Option<&mut shard::Held> {
        match &mut self.jobs.get_mut(job)?.shards.get_mut(&shard)?.local {
            Local::Held(h) => Some(h),
            _ => None,
        }
    }

    fn spec(&self, job: &str) -> Option<&Spec> {
        self.jobs.get(job).and_then(|j| j.spec.as_deref())
    }

    fn spec_mut(&mut self, job: &str) -> Option<&mut Spec> {
        self.jobs.get_mut(job).and_then(|j| j.spec.as_deref_mut())
    }

    /// Puts `job`'s next fire in the heap when it has none and a shard of it can fire here
    /// (held and assigned to me): after a claim, an adoption, an assignment that gives a held
    /// shard back. A job whose shards are all elsewhere keeps nothing in the heap.
    fn arm(&mut self, job: &str, now: Now) {
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        let can_fire = || {
            js.mine
                .as_ref()
                .is_some_and(|m| m.shards().iter().any(|&s| js.fireable(s)))
        };
        if js.spec.as_ref().is_none_or(|s| s.armed) || !can_fire() {
            return;
        }
        let Some(spec) = js.spec.as_deref_mut() else {
            return;
        };
        if let Some(next) = spec.schedule.next_after(now.wall) {
            self.heap.push(
                instant_of(next, now.mono, now.wall),
                job,
                spec.version,
                next,
            );
            spec.armed = true;
        }
    }
}
