//! The lease: its proof, a lapse, a self-fence, and the two steps of a graceful shutdown.
//!
//! A **lapse**: the lease can no longer be proven alive, but etcd has not said it is gone. This
//! happens in every etcd raft election (no keep-alive is answered for one to two seconds; the
//! new raft leader then renews every lease) and at the start of every partition. The engine
//! cannot know which, so at the instant its proof runs out it stops executing: running
//! executions are aborted and owed again, and nothing starts (every launch checks the proof).
//! It keeps everything else: its lease, its shards, its claims and releases in flight. When
//! etcd answers a keep-alive again the lease is proven once more: owner keys cannot outlive
//! their lease and nobody can claim a key that exists, so nobody else ran these shards
//! meanwhile, and the engine resumes with the same tokens, re-running what the lapse cut short
//! (a scheduled fire as a misfire if the job allows misfires; a failover re-run or a trigger
//! always). Before, a lapse was a loss: at a 2 s TTL every etcd leader kill self-fenced every
//! agent (fault campaign, seed 77).
//!
//! A **self-fence**: etcd says the lease is gone. Every run is aborted, every shard is `Idle`,
//! claims and releases in flight are forgotten (their answers carry the old lease and are
//! ignored); the keys of the old lease are someone else's until they vanish with it.

use std::time::Instant;

use tracing::{info, warn};

use super::runs::owe;
use super::shard::Local;
use super::{Command, Engine, LeaseId, Now, Proof};

impl Engine {
    pub(super) fn on_session_opened(&mut self, lease: LeaseId, valid_until: Instant, now: Now) {
        self.session = Some(Proof {
            lease,
            valid_until,
            guard: None,
            lapsed: false,
        });
        self.decide_all(now);
        self.publish_all = true;
    }

    /// A keep-alive was acknowledged: resume after a lapse, start what is owed, carry out the
    /// claims deferred for lack of proof now rather than at the next re-check.
    pub(super) fn on_proof(&mut self, valid_until: Instant, now: Now) {
        let Some(p) = self.session.as_mut() else {
            return;
        };
        p.valid_until = p.valid_until.max(valid_until);
        self.resume_if_proven(now);
    }

    /// The liveness stream's guard moved (it can move back: a new stream starts a new guard).
    /// A guard already past lapses at once.
    pub(super) fn on_guard(&mut self, until: Option<Instant>, now: Now) {
        let Some(p) = self.session.as_mut() else {
            return;
        };
        p.guard = until;
        if !p.lapsed && now.mono >= p.ends() {
            self.lapse();
            return;
        }
        self.resume_if_proven(now);
    }

    /// After a renewal of the proof or the guard: resume after a lapse, start what is owed,
    /// carry out the claims deferred for lack of proof now rather than at the next re-check.
    fn resume_if_proven(&mut self, now: Now) {
        let Some(p) = self.session.as_ref() else {
            return;
        };
        let was_lapsed = p.lapsed;
        if !self.proven(now) || (!was_lapsed && self.owed.is_empty() && self.retry.is_empty()) {
            return;
        }
        if was_lapsed {
            info!(
                "the lease is proven (and guarded) again: resuming with the same lease and shards"
            );
            if let Some(p) = self.session.as_mut() {
                p.lapsed = false;
            }
        }
        self.launch_all_owed(now);
        self.recheck(now);
        // Only a resumption changes what the status shows; a renewal that merely starts what
        // was owed (misfires waiting for the proof) publishes through the runs it starts.
        if was_lapsed {
            self.publish_all = true;
        }
    }

    /// The proof (or the liveness guard) ran out: stop every run until it is renewed.
    pub(super) fn lapse(&mut self) {
        warn!(
            "the lease can no longer be proven alive (or its liveness guard ran out): stopping executions until renewed"
        );
        if let Some(p) = self.session.as_mut() {
            p.lapsed = true;
        }
        let mut aborted = Vec::new();
        for (job, js) in self.jobs.iter_mut() {
            let misfire_allowed = js.spec.as_ref().is_some_and(|s| s.config.misfire);
            for (shard, sh) in js.shards.iter_mut() {
                let Local::Held(h) = &mut sh.local else {
                    continue;
                };
                let Some(run) = h.run.take() else {
                    continue;
                };
                // A resident run being stopped is not owed again: its shard is on its way out.
                if !run.stopping {
                    owe(h, run.fire, run.kind, true, misfire_allowed);
                }
                aborted.push((job.clone(), *shard, run.exec));
            }
        }
        for (job, shard, exec) in aborted {
            self.mark_owed(&job);
            self.abort(&job, shard, exec);
        }
        self.out.push(Command::Lapsed);
        self.publish_all = true;
    }

    /// The lease is gone: stop everything done under it.
    pub(super) fn self_fence(&mut self) {
        warn!("self-fencing: cancelling executions and dropping ownership");
        self.cut_everything_short(false);
        self.session = None;
        self.retry.clear();
        self.retry_at = None;
        self.owed.clear();
        self.deleted_while_claiming.clear();
        // The old session's keys block claims until they vanish: waits whose keys were read
        // at no revision this engine knows.
        self.rewait_all();
        if !self.waiting.is_empty() {
            self.read_unknown();
        }
        self.publish_all = true;
    }

    /// Graceful shutdown, step 1: start nothing more, claim nothing more, stop resident runs;
    /// shards are released as the leader reassigns them.
    pub(super) fn on_shutdown(&mut self, now: Now) {
        self.stopping = true;
        self.heap.clear();
        self.at_due.clear();
        // Resident runs are asked to stop now, even on shards still assigned here.
        self.decide_all(now);
        self.publish_all = true;
    }

    /// Graceful shutdown, last step: abort what still runs and release everything still held
    /// (the runtime carries these releases out at once, in order).
    pub(super) fn on_finish(&mut self) {
        self.stopping = true;
        self.cut_everything_short(true);
        self.rewait_all();
        self.publish_all = true;
    }

    /// Every shard to `Idle`: runs aborted, and (with `release`) every held key released.
    fn cut_everything_short(&mut self, release: bool) {
        let lease = self.lease();
        let mut commands = Vec::new();
        for (job, js) in self.jobs.iter_mut() {
            let schedule = js.spec.as_ref().map(|s| &s.schedule);
            for (&shard, sh) in js.shards.iter_mut() {
                let local = std::mem::take(&mut sh.local);
                let Some(h) = local.held() else {
                    continue;
                };
                if let Some(run) = h.run {
                    commands.push(Command::Abort {
                        exec: run.exec,
                        job: job.clone(),
                        shard,
                    });
                }
                if let (true, Some(lease)) = (release, lease) {
                    commands.push(Command::Release {
                        lease,
                        job: job.clone(),
                        shard,
                        token: h.token,
                        last_fire: h.cursor_value(schedule),
                    });
                }
            }
            js.shards.retain(|_, sh| !sh.is_empty());
        }
        self.out.extend(commands);
    }
}
