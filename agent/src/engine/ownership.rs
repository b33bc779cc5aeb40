//! Claims and releases (DESIGN §3, "Ownership and handoff"):
//! - claim a shard when the assignment gives it to me and **no owner key is known** (a previous
//!   owner's key must be deleted first, by its release or its lease's expiry); a claim carries
//!   the mod revision of my page that lists the job, so a stale view can never claim; claims
//!   wait while the lease is not proven for the margin, and stop at shutdown;
//! - a refused claim tells why: the key that holds the shard (kept; its delete lets me claim
//!   again) or a changed page (nothing more is claimed under the old revision);
//! - release a held shard that is no longer assigned to me once its execution (if any) ended,
//!   with the cursor that accounts for every fire up to it;
//! - a won claim runs what the previous owner left undone: the fire it was cut short in (its
//!   running marker, failover jobs), and the most recent fire the hand-off missed (catch-up,
//!   when its cursor is trusted and the job allows misfires).

use chrono::{DateTime, Utc};
use shardjob_coordinator::model::Cursor;
use tracing::{debug, warn};

use super::input::{ClaimResult, SeenOwner};
use super::shard::{Held, Local};
use super::{Command, Engine, LeaseId, Now, RunKind, Token};
use crate::schedule::FireSchedule;

impl Engine {
    /// Decisions for every job (a re-list, a new session).
    pub(super) fn decide_all(&mut self, now: Now) {
        let jobs: Vec<String> = self.jobs.keys().cloned().collect();
        for job in jobs {
            self.decide(&job, now);
        }
    }

    /// What to claim and release for `job` now.
    pub(super) fn decide(&mut self, job: &str, now: Now) {
        let Some(lease) = self.lease() else {
            return;
        };
        let proven = self.proven(now);
        let may_claim = !self.stopping && self.spec(job).is_some();
        let stale = self.stale.get(job).copied();
        let me = self.me.clone();
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        // A key of mine seen without a claim's answer (the answer was lost): it is held.
        for sh in js.shards.values_mut() {
            if sh.local == Local::Idle && sh.seen_mine(&me, Some(lease)) {
                let token = sh.seen.as_ref().map(|o| o.token);
                if let Some(token) = token {
                    sh.local = Local::Held(Box::new(Held::adopted(token)));
                }
            }
        }
        let mut claim = Vec::new();
        if let (true, Some(mine)) = (
            may_claim,
            js.mine.as_ref().filter(|m| Some(m.revision) != stale),
        ) {
            let (revision, generation) = (mine.revision, mine.generation);
            for &s in mine.shards() {
                if js.shards.get(&s).is_none_or(|sh| sh.is_empty()) {
                    claim.push(s);
                }
            }
            if !claim.is_empty() && proven {
                for &s in &claim {
                    js.shards.slot(s).local = Local::Claiming;
                }
                self.out.push(Command::Claim {
                    lease,
                    job: job.to_owned(),
                    shards: std::mem::take(&mut claim),
                    assignment_revision: revision,
                    generation,
                });
            }
        }
        let mut releases = Vec::new();
        for (&s, sh) in js.shards.iter_mut() {
            let Local::Held(h) = &sh.local else {
                continue;
            };
            if h.run.is_some() || super::job::assigns(&js.mine, s) {
                continue;
            }
            let Local::Held(mut h) = std::mem::take(&mut sh.local) else {
                continue;
            };
            h.owed = None; // not mine to run any more; the cursor lets the next owner catch up
            let last_fire = h.cursor_value(js.spec.as_deref().map(|s| &s.schedule));
            releases.push(Command::Release {
                lease,
                job: job.to_owned(),
                shard: s,
                token: h.token,
                last_fire,
            });
            sh.local = Local::Releasing(h);
        }
        let had_releases = !releases.is_empty();
        self.out.extend(releases);
        if !claim.is_empty() {
            // Not now: the lease is not proven long enough. Try again at the re-check.
            self.defer(job, now);
        }
        if had_releases {
            self.publish.insert(job.to_owned());
        }
        self.steer_residents(job, now);
        self.arm(job, now);
        self.rewait(job);
    }

    /// Resident jobs: a held shard that is wanted (assigned to me, the job runnable, not
    /// shutting down) has its run; one that is not has its run asked to stop, and the release
    /// follows the run's end (`decide` never releases a shard with a run).
    fn steer_residents(&mut self, job: &str, now: Now) {
        let stopping = self.stopping;
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        let resident = js
            .runnable()
            .is_some_and(|s| matches!(s.schedule, FireSchedule::Resident));
        let mut start = Vec::new();
        let mut stop = Vec::new();
        for (&s, sh) in js.shards.iter_mut() {
            let Local::Held(h) = &mut sh.local else {
                continue;
            };
            let wanted = resident && !stopping && super::job::assigns(&js.mine, s);
            match h.run.as_mut() {
                Some(run) if run.kind == RunKind::Resident && !wanted && !run.stopping => {
                    run.stopping = true;
                    stop.push((s, run.exec));
                }
                None if wanted && h.owed.is_none() => start.push(s),
                _ => {}
            }
        }
        for (shard, exec) in stop {
            debug!(job, shard, "stopping the resident run before the release");
            self.out.push(Command::Stop {
                exec,
                job: job.to_owned(),
                shard,
            });
        }
        for shard in start {
            self.offer(job, shard, now.wall, RunKind::Resident, now);
        }
    }

    pub(super) fn on_claimed(
        &mut self,
        job: &str,
        lease: LeaseId,
        revision: i64,
        read_at: i64,
        results: Vec<(u32, ClaimResult)>,
        now: Now,
    ) {
        if self.lease() != Some(lease) {
            return; // a claim of a fenced session: its keys count as someone else's anyway
        }
        let mut refused = false;
        let me = self.me.clone();
        let mut runs: Vec<(u32, DateTime<Utc>, RunKind)> = Vec::new();
        let mut failed = false;
        let js = self.jobs.entry(job.to_owned()).or_default();
        for (shard, result) in results {
            let gone = self.deleted_while_claiming.remove(&(job.to_owned(), shard));
            let sh = js.shards.slot(shard);
            match result {
                ClaimResult::Won {
                    token,
                    cursor,
                    running,
                } => {
                    sh.seen = Some(SeenOwner {
                        instance: me.clone(),
                        token,
                        lease: lease.get(),
                    });
                    let floor = cursor
                        .filter(|c| c.released)
                        .and_then(|c: Cursor| c.last_fire);
                    sh.local = Local::Held(Box::new(Held::claimed(token, now.wall, floor)));
                    debug!(job, shard, %token, "claimed");
                    let Some(spec) = &js.spec else {
                        continue;
                    };
                    // A marker left behind: the previous execution was cut short (its owner
                    // died, lost its lease, or timed out shutting down).
                    if let Some(r) = running.filter(|_| spec.config.failover) {
                        runs.push((shard, r.fire_time, RunKind::Failover));
                    }
                    // Never repeat the previous owner's last fire; run the most recent one it
                    // missed, once (the fire the failover run re-runs counts as covered).
                    let latest = spec.schedule.latest_at_or_before(now.wall);
                    if let (Some(last), Some(latest), true) = (floor, latest, spec.config.misfire) {
                        if latest > last {
                            runs.push((shard, latest, RunKind::CatchUp));
                        }
                    }
                    // A one-shot whose instant passed before anyone held this shard (created
                    // just before it, a cold cluster, no eligible instance at T) or whose last
                    // owner died without a clean release: it runs now, once — at least once is
                    // its promise. Only a clean release at or after T says it ran.
                    if let (FireSchedule::At(at), true) = (&spec.schedule, floor.is_none()) {
                        if *at <= now.wall {
                            runs.push((shard, *at, RunKind::CatchUp));
                        }
                    }
                }
                ClaimResult::Held(holder) => {
                    if sh.local == Local::Claiming {
                        sh.local = Local::Idle;
                    }
                    // Unless its delete came while the claim was in flight: then it is gone,
                    // and `decide` below claims again.
                    if !gone && sh.seen.as_ref().is_none_or(|o| o.token <= holder.token) {
                        debug!(job, shard, holder = %holder.instance, token = %holder.token, "held: waiting for its delete");
                        sh.seen = Some(holder);
                        refused = true;
                    }
                }
                ClaimResult::Stale => {
                    if sh.local == Local::Claiming {
                        sh.local = Local::Idle;
                    }
                    if js.mine.as_ref().is_some_and(|m| m.revision == revision) {
                        self.stale.insert(job.to_owned(), revision);
                    }
                }
                ClaimResult::Failed(e) => {
                    warn!(job, shard, error = %e, "claim failed; retrying");
                    if sh.local == Local::Claiming {
                        sh.local = Local::Idle;
                    }
                    failed = true;
                }
            }
            js.prune(shard);
        }
        if failed {
            self.defer(job, now);
        }
        for (shard, fire, kind) in runs {
            if self.fireable_shard(job, shard) {
                self.offer(job, shard, fire, kind, now);
            }
        }
        if refused {
            self.read_at(read_at);
        }
        metrics::counter!("shardjob_shard_claims_total").increment(1);
        self.decide(job, now); // and its waits (the end of `decide`)
        self.publish.insert(job.to_owned());
    }

    pub(super) fn on_released(
        &mut self,
        job: &str,
        shard: u32,
        lease: LeaseId,
        token: Token,
        result: Result<(), super::WriteFailed>,
        now: Now,
    ) {
        if self.lease() != Some(lease) {
            return;
        }
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        let Some(sh) = js.shards.get_mut(&shard) else {
            return;
        };
        // Only the answer to this tenure's release: the key's delete may have been seen first,
        // and the shard may be held again with a newer token since.
        if !matches!(&sh.local, Local::Releasing(h) if h.token == token) {
            return;
        }
        let Local::Releasing(h) = std::mem::take(&mut sh.local) else {
            return;
        };
        match result {
            Ok(()) => {
                // The key is gone; its DELETE event may still be on its way.
                if sh.seen.as_ref().is_some_and(|o| o.token == h.token) {
                    sh.seen = None;
                }
                js.prune(shard);
                self.decide(job, now);
            }
            Err(e) => {
                warn!(job, shard, error = %e, "release failed; retrying");
                sh.local = Local::Held(h);
                self.defer(job, now);
            }
        }
    }

    /// True when `shard` of `job` is held and still assigned to me.
    pub(super) fn fireable_shard(&self, job: &str, shard: u32) -> bool {
        self.jobs.get(job).is_some_and(|js| js.fireable(shard))
    }
}
