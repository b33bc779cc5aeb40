//! [`Rebalancer`]: the leader's decisions about *when* to plan, pure. The runner feeds it what
//! the watches show (`on_event`), sleeps until [`Rebalancer::deadline`], and asks
//! [`Rebalancer::poll`] for a pass to write; it reports how the write went. Time is passed in.
//!
//! The rules:
//! - a change plans after `debounce`; a **join** waits `join_settle` for more joins, and each
//!   further join extends the wait to `join_settle` after it, but never past four times
//!   `join_settle` after the first (so a steady stream of joins cannot hold planning back);
//!   instances starting together are planned in one pass. A departure or job change during the
//!   window plans after the debounce (failover never waits for joins);
//! - a cluster with no assignment yet waits `join_settle` before its first plan (a cold start);
//! - owners named in stored assignments but without an instance key at the start count as
//!   departed then (`assumed`), so `rebalance_delay` parks their shards too;
//! - with `rebalance_delay`, a plan returns when a parking ends: everything is planned again
//!   then, and departures older than the delay are forgotten;
//! - a failed write plans the same jobs again after `retry`;
//! - the pass writes the `assigned/` pages its changes touch ([`Stored`]); a page deleted or
//!   changed by hand, and at the start every stored page, is checked at the next pass and
//!   rewritten if it differs (a repair plans after the debounce, even with no job to plan);
//!   puts of pages are mostly the leader's own writes coming back and change nothing.

use std::time::Duration;

use shardjob_sharding::InstanceId;
use tokio::time::Instant;

use super::plan::{Plan, plan};
use super::runner::RebalanceOptions;
use super::stored::{PageWrite, Stored};
use super::world::{Departed, Dirty, World};
use crate::keys::KeyKind;
use crate::model::InstanceInfo;

/// A change the watches showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Every key under `prefix` now (a listing).
    Reset {
        prefix: String,
        entries: Vec<(String, Vec<u8>)>,
    },
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

/// A plan to write, the page writes that store it, and what it plans (restored if the write
/// fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub plan: Plan,
    pub pages: Vec<PageWrite>,
    dirty: Dirty,
}

#[cfg(test)]
impl Pass {
    /// A pass of `plan` and `pages` that plans nothing again if it fails.
    pub(crate) fn for_test(plan: Plan, pages: Vec<PageWrite>) -> Self {
        Self {
            plan,
            pages,
            dirty: Dirty::default(),
        }
    }
}

/// The leader's timing state around a [`World`].
#[derive(Debug, Clone)]
pub struct Rebalancer {
    world: World,
    stored: Stored,
    options: RebalanceOptions,
    /// When the next plan is due.
    due: Option<Instant>,
    /// While every change since the last plan was a join (so the plan may wait for more): when
    /// the first of them came.
    joins_since: Option<Instant>,
    /// When a parking ends and everything must be planned again.
    wake: Option<Instant>,
    /// One-shot jobs with every shard done, and since when this leader knows it.
    finished: std::collections::BTreeMap<String, Instant>,
}

impl Rebalancer {
    /// Starts leading with `world` and the `stored` pages as listed at one revision, at `now`.
    pub fn start(
        mut world: World,
        stored: Stored,
        options: RebalanceOptions,
        now: Instant,
    ) -> Self {
        // Owners in the stored assignments that are not live now count as departing now.
        let absent: Vec<InstanceId> = world
            .assignments
            .values()
            .flat_map(|r| r.instances.iter().cloned())
            .filter(|id| !world.instances.contains_key(id) && !world.departed.contains_key(id))
            .collect();
        for id in absent {
            let info = stub_info(&id);
            world.departed.insert(
                id,
                Departed {
                    info,
                    at: now,
                    assumed: true,
                },
            );
        }
        world.mark_all();
        // A cold start (no assignment yet) waits for the instances starting with this one.
        let fresh = world.assignments.is_empty();
        let settle = if fresh {
            options.join_settle
        } else {
            Duration::ZERO
        };
        Self {
            world,
            stored,
            due: Some(now + settle),
            joins_since: fresh.then_some(now),
            wake: None,
            finished: Default::default(),
            options,
        }
    }

    /// What the leader knows.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Applies a change seen at `now`.
    pub fn on_event(&mut self, event: Observed, now: Instant) {
        if self.on_page(&event) {
            if self.stored.needs_repair() {
                let at = now + self.options.debounce;
                self.due = Some(self.due.map_or(at, |d| d.min(at)));
            }
            return;
        }
        let joined = self.is_join(&event);
        match event {
            Observed::Reset { prefix, entries } => self.world.reset_prefix(&prefix, &entries, now),
            Observed::Put { key, value } => self.world.put(&key, &value),
            Observed::Delete { key } => self.world.delete(&key, now),
        }
        if self.world.is_dirty() {
            let (at, since) = next_plan(self.due, self.joins_since, joined, now, &self.options);
            (self.due, self.joins_since) = (Some(at), since);
        }
    }

    /// Routes an event about `assigned/` pages to the stored pages; false for anything else.
    fn on_page(&mut self, event: &Observed) -> bool {
        let keys = self.world.keys();
        let is_page = |key: &str| {
            matches!(
                keys.parse(key),
                Some(KeyKind::Assigned { .. } | KeyKind::Unassigned { .. })
            )
        };
        match event {
            Observed::Reset { prefix, entries }
                if *prefix == keys.assigned_prefix() || *prefix == keys.unassigned_prefix() =>
            {
                self.stored.on_reset(keys, prefix, entries)
            }
            Observed::Put { key, value } if is_page(key) => self.stored.on_put(keys, key, value),
            Observed::Delete { key } if is_page(key) => self.stored.on_delete(keys, key),
            _ => return false,
        }
        true
    }

    /// When [`Self::poll`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.due, self.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The pass to write now, if a deadline passed and the plan is not empty.
    pub fn poll(&mut self, now: Instant) -> Option<Pass> {
        if self.deadline().is_none_or(|d| d > now) {
            return None;
        }
        if self.wake.is_some_and(|w| w <= now) {
            self.world.mark_all();
        }
        self.due = None;
        self.joins_since = None;
        let dirty = self.world.take_dirty();
        let mut p = plan(&self.world, &dirty, now, self.options.rebalance_delay);
        self.wake = p.wake_at;
        self.retire_finished(&mut p, now);
        match now.checked_sub(self.options.rebalance_delay) {
            Some(horizon) if !self.options.rebalance_delay.is_zero() => {
                self.world.forget_departed_before(horizon)
            }
            _ => self.world.departed.clear(),
        }
        let pages = match self.stored.writes(&self.world.assignments, &p) {
            Ok(pages) => pages,
            Err(e) => {
                tracing::error!(error = %e, "encoding assigned pages failed; retrying");
                self.world.restore_dirty(dirty);
                self.due = Some(now + self.options.retry);
                return None;
            }
        };
        if p.is_empty() && pages.is_empty() {
            // Repairs found every page as it should be.
            self.stored.written(&pages);
            self.debounce_leftovers(now);
            return None;
        }
        Some(Pass {
            plan: p,
            pages,
            dirty,
        })
    }

    /// The pass was written: its assignments are the stored ones now.
    pub fn written(&mut self, pass: Pass, now: Instant) {
        self.stored.written(&pass.pages);
        for (job, record) in pass.plan.writes {
            self.world.assignments.insert(job, record);
        }
        self.world.assignments_grew();
        for job in pass.plan.deletes {
            self.world.assignments.remove(&job);
        }
        for job in pass.plan.retire {
            self.world.jobs.remove(&job);
            self.world.assignments.remove(&job);
            self.world.done.remove(&job);
            self.finished.remove(&job);
        }
        self.debounce_leftovers(now);
    }

    /// The pass could not be written (etcd did not answer): plan its jobs again after `retry`.
    pub fn write_failed(&mut self, pass: Pass, now: Instant) {
        self.stored.write_failed(&pass.pages);
        self.world.restore_dirty(pass.dirty);
        self.due = Some(now + self.options.retry);
    }

    /// One-shot jobs whose every shard is done are retired once `one_shot_retention` has passed
    /// since this leader saw them finished: every key goes. Until then the pass wakes for it.
    fn retire_finished(&mut self, p: &mut Plan, now: Instant) {
        let world = &self.world;
        let finished: Vec<String> = world
            .jobs
            .iter()
            .filter(|(job, c)| {
                c.one_shot
                    && world.done.get(job.as_str()).map_or(0, |d| d.len()) >= c.total as usize
            })
            .map(|(job, _)| job.clone())
            .collect();
        self.finished.retain(|job, _| finished.contains(job));
        for job in finished {
            let since = *self.finished.entry(job.clone()).or_insert(now);
            let at = since + self.options.one_shot_retention;
            if at <= now {
                p.writes.retain(|(j, _)| *j != job);
                p.deletes.retain(|j| *j != job);
                p.retire.push(job);
            } else {
                self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
            }
        }
    }

    /// Changes that arrived while planning plan after the debounce.
    fn debounce_leftovers(&mut self, now: Instant) {
        if (self.world.is_dirty() || self.stored.needs_repair()) && self.due.is_none() {
            self.due = Some(now + self.options.debounce);
        }
    }

    /// True when `event` registers an instance the world does not know yet.
    fn is_join(&self, event: &Observed) -> bool {
        let Observed::Put { key, .. } = event else {
            return false;
        };
        match self.world.keys().parse(key) {
            Some(crate::keys::KeyKind::Instance(id)) => {
                InstanceId::new(id).is_ok_and(|id| !self.world.instances.contains_key(&id))
            }
            _ => false,
        }
    }
}

/// An instance known only from an assignment (its key was already gone when we started): its
/// handlers and labels are unknown, so it is parked only for the jobs it owned.
fn stub_info(id: &InstanceId) -> InstanceInfo {
    InstanceInfo {
        id: id.clone(),
        host: String::new(),
        pid: 0,
        version: String::new(),
        labels: Default::default(),
        weight: 1,
        handlers: Default::default(),
        started_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        leaving: false,
        liveness: None,
    }
}

/// When to plan after a change, and since when only joins came (`None`: not only joins). A
/// join waits `join_settle` for more; a later join extends the wait to `join_settle` after it,
/// up to `JOIN_SETTLE_MAX` times `join_settle` after the first. Any other change plans after
/// `debounce`, and never later than a plan already due.
pub(super) fn next_plan(
    due: Option<Instant>,
    joins_since: Option<Instant>,
    joined: bool,
    now: Instant,
    options: &RebalanceOptions,
) -> (Instant, Option<Instant>) {
    match (due, joins_since) {
        (Some(at), Some(first)) if joined => {
            let cap = first + options.join_settle * JOIN_SETTLE_MAX;
            (at.max(now + options.join_settle).min(cap), Some(first))
        }
        (None, _) if joined => (now + options.join_settle, Some(now)),
        _ => {
            let soon = now + options.debounce;
            (due.map_or(soon, |at| at.min(soon)), None)
        }
    }
}

/// A run of joins is planned at most this many `join_settle`s after its first.
const JOIN_SETTLE_MAX: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    const I: &str = "/shardjob/ns/instances/";
    const JOB: &str = "/shardjob/ns/jobs/j";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn put_instance(id: &str) -> Observed {
        let value =
            serde_json::json!({"id": id, "handlers": ["j"], "started_at": "2026-01-01T00:00:00Z"});
        Observed::Put {
            key: format!("{I}{id}"),
            value: value.to_string().into_bytes(),
        }
    }

    fn gone(id: &str) -> Observed {
        Observed::Delete {
            key: format!("{I}{id}"),
        }
    }

    fn world_with(instances: &[&str], assigned_to: Option<&str>) -> World {
        let mut w = World::new(Keys::new("ns").unwrap());
        w.put(JOB, br#"{"schedule":{"every":"1s"},"total":2}"#);
        for id in instances {
            if let Observed::Put { key, value } = put_instance(id) {
                w.put(&key, &value);
            }
        }
        if let Some(owner) = assigned_to {
            let record = format!(r#"{{"generation":1,"instances":["{owner}"],"owners":[0,0]}}"#);
            let record = serde_json::from_str(&record).unwrap();
            w.load_assignments([("j".to_owned(), record)].into(), vec![]);
        }
        w.take_dirty();
        w
    }

    /// The owners of job j's shards in the pass.
    fn owners(pass: &Pass) -> Vec<String> {
        let record = &pass.plan.writes.iter().find(|(j, _)| j == "j").unwrap().1;
        (0..2)
            .map(|s| record.owner(s).map_or("-".into(), |o| o.to_string()))
            .collect()
    }

    #[test]
    fn joins_wait_together_and_anything_else_plans_soon() {
        let o = RebalanceOptions::default();
        let t0 = Instant::now();
        // A first join opens the window; a later join extends it to a settle after itself.
        let (at, since) = next_plan(None, None, true, t0, &o);
        assert_eq!((at, since), (t0 + o.join_settle, Some(t0)));
        let (at2, since) = next_plan(Some(at), since, true, t0 + ms(300), &o);
        assert_eq!((at2, since), (t0 + ms(300) + o.join_settle, Some(t0)));
        // ... but never past four settles after the first join.
        let (at_late, _) = next_plan(Some(at2), since, true, t0 + ms(1900), &o);
        assert_eq!(at_late, t0 + o.join_settle * 4);
        // A departure (or job change) during the window plans after the debounce.
        let (at3, since) = next_plan(Some(at), Some(t0), false, t0 + ms(100), &o);
        assert_eq!((at3, since), (t0 + ms(100) + o.debounce, None));
        // A join after such a change does not push the plan back.
        let (at4, since) = next_plan(Some(at3), since, true, t0 + ms(105), &o);
        assert_eq!((at4, since), (at3, None));
        // Without a join, the debounce as before.
        assert_eq!(
            next_plan(None, None, false, t0, &o),
            (t0 + o.debounce, None)
        );
    }

    #[test]
    fn a_cold_start_waits_for_the_instances_starting_with_it() {
        let o = RebalanceOptions::default();
        let t0 = Instant::now();
        let mut r = Rebalancer::start(world_with(&["a"], None), Stored::default(), o.clone(), t0);
        assert_eq!(r.deadline(), Some(t0 + o.join_settle));
        assert!(r.poll(t0 + ms(100)).is_none(), "not before the window ends");
        r.on_event(put_instance("b"), t0 + ms(200));
        assert_eq!(
            r.deadline(),
            Some(t0 + ms(200) + o.join_settle),
            "a join extends it"
        );
        assert!(r.poll(t0 + o.join_settle).is_none(), "b may have company");
        let pass = r
            .poll(t0 + ms(200) + o.join_settle)
            .expect("one pass for both");
        assert_eq!(owners(&pass), ["a", "b"]);
    }

    #[test]
    fn a_cluster_with_assignments_plans_at_once_and_a_departure_after_the_debounce() {
        let o = RebalanceOptions::default();
        let t0 = Instant::now();
        let mut r = Rebalancer::start(
            world_with(&["a", "b"], Some("a")),
            Stored::default(),
            o.clone(),
            t0,
        );
        assert_eq!(r.deadline(), Some(t0));
        let pass = r.poll(t0).expect("b gets a share");
        assert_eq!(owners(&pass), ["a", "b"]);
        r.written(pass, t0);
        assert_eq!(r.deadline(), None);
        r.on_event(gone("b"), t0 + ms(50));
        assert_eq!(r.deadline(), Some(t0 + ms(50) + o.debounce));
        assert_eq!(owners(&r.poll(t0 + ms(60)).unwrap()), ["a", "a"]);
    }

    #[test]
    fn an_owner_absent_at_the_start_is_parked_for_the_delay_then_its_shards_move() {
        let o = RebalanceOptions {
            rebalance_delay: Duration::from_secs(5),
            ..RebalanceOptions::default()
        };
        let t0 = Instant::now();
        // "a" owns both shards in the stored assignment but has no instance key: assumed gone.
        let mut r = Rebalancer::start(
            world_with(&["b"], Some("a")),
            Stored::default(),
            o.clone(),
            t0,
        );
        assert!(r.world().departed[&InstanceId::new("a").unwrap()].assumed);
        // Parked, "a" keeps its fair share while "b" takes the other.
        let pass = r.poll(t0).expect("b gets a share");
        assert_eq!(owners(&pass), ["a", "b"]);
        r.written(pass, t0);
        assert_eq!(
            r.deadline(),
            Some(t0 + o.rebalance_delay),
            "wakes when the parking ends"
        );
        assert!(r.poll(t0 + ms(100)).is_none());
        let pass = r.poll(t0 + o.rebalance_delay).expect("the delay ended");
        assert_eq!(owners(&pass), ["b", "b"]);
    }

    #[test]
    fn a_page_deleted_by_hand_is_rewritten_and_echoes_of_own_writes_change_nothing() {
        let o = RebalanceOptions::default();
        let t0 = Instant::now();
        let mut r = Rebalancer::start(
            world_with(&["a", "b"], Some("a")),
            Stored::default(),
            o.clone(),
            t0,
        );
        let pass = r.poll(t0).unwrap();
        assert_eq!(owners(&pass), ["a", "b"]);
        let pages = pass.pages.clone();
        assert_eq!(pages.len(), 2, "a's page and b's: {pages:?}");
        r.written(pass, t0);
        let keys = Keys::new("ns").unwrap();
        let key = |w: &PageWrite| w.key(&keys);
        for w in &pages {
            let value = w.value.clone().expect("a put");
            r.on_event(Observed::Put { key: key(w), value }, t0 + ms(1));
        }
        assert_eq!(r.deadline(), None, "an echo planned a pass");
        r.on_event(
            Observed::Delete {
                key: key(&pages[1]),
            },
            t0 + ms(2),
        );
        let again = r.poll(t0 + ms(2) + o.debounce).expect("rewritten");
        assert!(again.plan.is_empty(), "{:?}", again.plan);
        assert_eq!(again.pages, [pages[1].clone()]);
    }

    #[test]
    fn a_one_shots_done_shards_go_to_nobody_and_the_finished_job_retires_after_the_retention() {
        let o = RebalanceOptions {
            one_shot_retention: Duration::from_secs(60),
            ..RebalanceOptions::default()
        };
        let t0 = Instant::now();
        let mut w = World::new(Keys::new("ns").unwrap());
        w.put(
            JOB,
            br#"{"schedule":{"at":"2026-12-01T10:00:00Z"},"total":2}"#,
        );
        if let Observed::Put { key, value } = put_instance("a") {
            w.put(&key, &value);
        }
        w.take_dirty();
        let mut r = Rebalancer::start(w, Stored::default(), o.clone(), t0);
        let pass = r.poll(t0 + o.join_settle).unwrap();
        assert_eq!(owners(&pass), ["a", "a"]);
        r.written(pass, t0 + o.join_settle);
        let done = |shard: u32| {
            Observed::Put {
            key: format!("/shardjob/ns/done/j/{shard}"),
            value: br#"{"instance":"a","fire_time":"2026-12-01T10:00:00Z","outcome":"ok","token":9,"ended_at":"2026-12-01T10:00:01Z"}"#.to_vec(),
        }
        };
        let t1 = t0 + Duration::from_secs(1);
        r.on_event(done(0), t1);
        let pass = r.poll(t1 + o.debounce).expect("shard 0 goes to nobody");
        assert_eq!(owners(&pass), ["-", "a"]);
        r.written(pass, t1 + o.debounce);
        let t2 = t1 + Duration::from_secs(1);
        r.on_event(done(1), t2);
        let pass = r.poll(t2 + o.debounce).expect("shard 1 too");
        assert_eq!(owners(&pass), ["-", "-"]);
        r.written(pass, t2 + o.debounce);
        assert_eq!(
            r.deadline(),
            Some(t2 + o.debounce + o.one_shot_retention),
            "wakes when the retention ends"
        );
        let end = t2 + o.debounce + o.one_shot_retention;
        let pass = r.poll(end).expect("retired");
        assert_eq!(pass.plan.retire, ["j"]);
        r.written(pass, end);
        assert!(r.world().jobs.is_empty());
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_failed_write_plans_the_same_jobs_again_after_the_retry_delay() {
        let o = RebalanceOptions::default();
        let t0 = Instant::now();
        let mut r = Rebalancer::start(
            world_with(&["a"], Some("b")),
            Stored::default(),
            o.clone(),
            t0,
        );
        let pass = r.poll(t0).expect("b is gone: a takes over");
        r.write_failed(pass, t0);
        assert_eq!(r.deadline(), Some(t0 + o.retry));
        assert!(r.poll(t0 + ms(100)).is_none());
        assert_eq!(owners(&r.poll(t0 + o.retry).unwrap()), ["a", "a"]);
    }
}
