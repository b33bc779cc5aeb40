//! What etcd shows: job configs, assignments, the deletes of owner keys and triggers, one change
//! at a time or a whole prefix at once after a re-list. Each handler records the change, then
//! decides again only for a job whose change concerns this agent.
//!
//! Owner keys: the agent learns of a key from its own claim (won, or refused with the key that
//! holds the shard) and from a re-list, and keeps only those that concern it (mine, or of a
//! shard assigned to me). The watch brings only deletes: the puts of other agents' claims
//! never reach it.

use shardjob_coordinator::model::{JobConfig, PageEntry, Trigger};
use tracing::warn;

use super::fires::instant_of;
use super::input::Listing;
use super::job::{JobState, Spec};
use super::mine::Mine;
use super::run_config::RunConfig;
use super::shard::Local;
use super::{Engine, Now, RunKind};
use crate::schedule::FireSchedule;

impl Engine {
    /// A job config arrived: kept if this agent has its handler; a changed schedule (cron,
    /// interval, time zone or offset) reschedules.
    pub(super) fn on_job_put(&mut self, job: &str, config: JobConfig, now: Now) {
        self.upsert(job, config, now);
        self.decide(job, now);
        self.tidy(job);
    }

    fn upsert(&mut self, job: &str, config: JobConfig, now: Now) {
        let runs_here = self.cfg.handlers.contains(config.handler_name(job));
        if !runs_here {
            // Nothing kept of a job this agent cannot run (its entry goes once nothing else
            // of it is known).
            if let Some(js) = self.jobs.get_mut(job) {
                js.spec = None;
            }
            return;
        }
        let offset = config.offset.map(|o| o.0).unwrap_or_default();
        let schedule = match FireSchedule::new(&config.schedule, &config.time_zone) {
            Ok(s) => s.with_offset(offset),
            Err(e) => {
                warn!(job, error = %e, "schedule does not compile; the last good config stays");
                return;
            }
        };
        let run = RunConfig::of(job, config, &self.handler_names);
        let js = self.jobs.entry(job.to_owned()).or_default();
        // Compiled, so an offset or a time zone that changes nothing (an interval's time
        // zone, an offset of a whole period) reschedules nothing either.
        if let Some(spec) = js.spec.as_mut().filter(|s| s.schedule == schedule) {
            // A new one only when it changed: the runtime keeps what a job's executions share
            // for as long as its config is the same one (`runtime/job_runs.rs`).
            if *spec.config != run {
                spec.config = std::sync::Arc::new(run);
            }
            return;
        }
        self.next_version += 1;
        let version = self.next_version;
        let next = schedule.next_after(now.wall);
        if let Some(next) = next {
            self.heap
                .push(instant_of(next, now.mono, now.wall), job, version, next);
        }
        js.spec = Some(Box::new(Spec {
            config: std::sync::Arc::new(run),
            schedule,
            version,
            armed: next.is_some(),
        }));
    }

    pub(super) fn on_job_deleted(&mut self, job: &str, now: Now) {
        if let Some(js) = self.jobs.get_mut(job) {
            js.spec = None;
        }
        self.decide(job, now);
        self.tidy(job);
    }

    pub(super) fn on_assignment(
        &mut self,
        job: &str,
        assignment: Option<(PageEntry, i64)>,
        now: Now,
    ) {
        let mine = assignment.and_then(|(entry, rev)| Mine::of(entry, rev));
        if mine.is_none() && !self.jobs.contains_key(job) {
            return;
        }
        if let Some(new) = &mine {
            if self.settled(job, new) {
                return;
            }
        }
        self.stale.remove(job);
        let js = self.jobs.entry(job.to_owned()).or_default();
        let before = js.mine.is_some();
        self.assigned_total = self.assigned_total.saturating_sub(js.assigned_count());
        js.mine = mine;
        self.assigned_total += js.assigned_count();
        js.forget_unassigned_keys();
        // Another instance's change cannot change what this one does: skip deciding.
        if before || js.mine.is_some() {
            self.decide(job, now);
            self.publish.insert(job.to_owned());
        }
        self.rewait(job);
        self.tidy(job);
    }

    /// True when `new` gives me the shards I have of `job` already, and every one of them is
    /// held: then deciding again would change nothing (what is held and assigned stays, no
    /// claim is due), and only what a later claim needs is taken: the page's revision it is
    /// guarded by and the generation it writes. A page is written again whenever any of its
    /// jobs changes, so after a crash every survivor gets every page again, with a few of
    /// thousands of entries changed for it; deciding and publishing for every one was most
    /// of an agent's work in the reassignment (bench-scale, session 14).
    fn settled(&mut self, job: &str, new: &Mine) -> bool {
        if self.stale.contains_key(job) {
            return false; // a claim waits for a new revision: decide
        }
        let Some(js) = self.jobs.get_mut(job) else {
            return false;
        };
        let settled = js.mine.as_ref().is_some_and(|old| {
            old.same_shards(new) && old.shards().iter().all(|&s| js.fireable(s))
        });
        if let Some(old) = js.mine.as_mut().filter(|_| settled) {
            old.revision = new.revision;
            old.generation = new.generation;
        }
        settled
    }

    /// An owner key was deleted at `revision`.
    pub(super) fn on_owner_deleted(&mut self, job: &str, shard: u32, revision: i64, now: Now) {
        let me = self.me.clone();
        let Some(js) = self.jobs.get_mut(job) else {
            return;
        };
        let relevant = js.concerns(shard, &me);
        let Some(sh) = js.shards.get_mut(&shard) else {
            return; // nothing known of this shard: nothing to forget
        };
        if sh.local == Local::Claiming {
            self.deleted_while_claiming.insert((job.to_owned(), shard));
        }
        // A delete older than the key I know (the claim's answer and the watch travel apart):
        // it speaks of a previous key.
        if sh.seen.as_ref().is_some_and(|o| revision < o.token.0) {
            return;
        }
        sh.seen = None;
        self.key_changed(job, shard);
        if let Some(js) = self.jobs.get_mut(job) {
            js.prune(shard);
        }
        if relevant {
            self.decide(job, now);
            self.publish.insert(job.to_owned());
        }
        self.rewait(job);
        self.tidy(job);
    }

    /// After the key seen for a shard changed: a held shard whose key is no longer mine (with
    /// its token) is no longer held. Its run, if any, is cut short: the key is gone, so someone
    /// else may claim the shard.
    pub(super) fn key_changed(&mut self, job: &str, shard: u32) {
        let (me, lease) = (self.cfg.id.clone(), self.lease());
        let Some(sh) = self
            .jobs
            .get_mut(job)
            .and_then(|js| js.shards.get_mut(&shard))
        else {
            return;
        };
        let Some(held) = sh.local.held() else {
            return;
        };
        let still =
            sh.seen_mine(&me, lease) && sh.seen.as_ref().is_some_and(|o| o.token == held.token);
        if still {
            return;
        }
        if matches!(sh.local, Local::Held(_)) {
            warn!(
                job,
                shard, "my owner key is gone: the shard is no longer mine"
            );
        }
        let run = sh.run();
        sh.local = Local::Idle;
        if let Some(run) = run {
            self.abort(job, shard, run.exec);
        }
    }

    /// A new trigger id: run every shard this agent may fire, once.
    pub(super) fn on_trigger(&mut self, job: &str, trigger: Trigger, now: Now) {
        if self.triggers_seen.get(job) == Some(&trigger.id) {
            return;
        }
        self.triggers_seen
            .insert(job.to_owned(), trigger.id.clone());
        let shards = self.fireable(job);
        tracing::info!(job, id = %trigger.id, shards = shards.len(), "triggered");
        for shard in shards {
            self.offer(job, shard, trigger.requested_at, RunKind::Trigger, now);
        }
    }

    /// A whole prefix was replaced: forget what it held, apply the listing, decide every job.
    pub(super) fn on_relisted(&mut self, listing: Listing, now: Now) {
        match listing {
            Listing::Triggers(triggers) => {
                for (job, t) in triggers {
                    self.triggers_seen.insert(job, t.id);
                }
                return;
            }
            Listing::Jobs(jobs) => {
                self.heap.clear();
                self.jobs.values_mut().for_each(|j| j.spec = None);
                for (job, config) in jobs {
                    self.upsert(&job, config, now);
                }
            }
            Listing::Assignments(list) => {
                self.stale.clear();
                self.jobs.values_mut().for_each(|j| j.mine = None);
                self.assigned_total = 0;
                for (job, entry, revision) in list {
                    if let Some(mine) = Mine::of(entry, revision) {
                        self.assigned_total += mine.shards().len();
                        self.jobs.entry(job).or_default().mine = Some(mine);
                    }
                }
                self.jobs
                    .values_mut()
                    .for_each(JobState::forget_unassigned_keys);
            }
            Listing::Owners { revision, owners } => {
                self.owners_listed(revision);
                // A key created after the listing (my claim, answered before the listing
                // arrived) is newer than what the listing can show: it stays.
                for js in self.jobs.values_mut() {
                    for sh in js.shards.values_mut() {
                        if sh.seen.as_ref().is_some_and(|o| o.token.0 <= revision) {
                            sh.seen = None;
                        }
                    }
                }
                // A claim in flight whose key the listing does not show: if its answer is a
                // refusal, the key it names may be gone already (one more claim tells).
                let claiming: Vec<(String, u32)> = self
                    .jobs
                    .iter()
                    .flat_map(|(job, js)| {
                        js.shards
                            .iter()
                            .filter(|(_, sh)| sh.local == Local::Claiming)
                            .map(move |(s, _)| (job.clone(), *s))
                    })
                    .collect();
                if !claiming.is_empty() {
                    let listed: std::collections::HashSet<(&str, u32)> =
                        owners.iter().map(|(j, s, _)| (j.as_str(), *s)).collect();
                    for (job, s) in claiming {
                        if !listed.contains(&(job.as_str(), s)) {
                            self.deleted_while_claiming.insert((job, s));
                        }
                    }
                }
                // Kept: keys of mine (of any lease: an old session's keys block my claims until
                // they vanish) and keys of shards assigned to me. Who holds the rest concerns
                // their assignees; a claim that meets a key reads it anyway.
                for (job, shard, owner) in owners {
                    let assigned = self.jobs.get(&job).is_some_and(|j| j.assigned_to(shard));
                    if !assigned && *owner.instance != *self.me {
                        continue;
                    }
                    let sh = self.jobs.entry(job).or_default().shards.slot(shard);
                    if sh.seen.as_ref().is_none_or(|o| o.token <= owner.token) {
                        sh.seen = Some(owner);
                    }
                }
                let known: Vec<(String, u32)> = self
                    .jobs
                    .iter()
                    .flat_map(|(j, js)| js.shards.keys().map(move |s| (j.clone(), *s)))
                    .collect();
                for (job, shard) in known {
                    self.key_changed(&job, shard);
                    if let Some(js) = self.jobs.get_mut(&job) {
                        js.prune(shard);
                    }
                }
            }
        }
        self.decide_all(now);
        self.jobs.retain(|_, js| !js.is_empty());
        self.rewait_all();
        self.publish_all = true;
    }
}
