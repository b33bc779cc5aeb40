//! The leader's decision, pure: given the world, which assignments to write now.
//!
//! For each job that needs planning:
//! - eligible = live instances that registered the job's handler, are not disabled and match its
//!   selector;
//! - with `rebalance_delay > 0`, an owner of the current assignment that departed less than the
//!   delay ago stays "parked": it counts as eligible (its shards stay on it, unclaimed, ready for
//!   a restart with the same id) until the delay runs out, when the plan asks to be woken;
//! - `new = strategy.assign(job, total, eligible, current)`; for sticky jobs, evened out across
//!   jobs in two passes (`shardjob_sharding::even`: the shards that move anyway placed on the
//!   lightest instances first, for every job, then evening against the loads that leaves);
//!   written as generation + 1 if it differs from the current one;
//! - an assignment whose job no longer exists is deleted.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use shardjob_sharding::even::{Give, Load, Members, even_out, place_moving};
use shardjob_sharding::{Assignment, Instance, Selector, StrategyKind};
use tokio::time::Instant;

use super::planned::PlannedJob;
use super::world::{Dirty, World};
use crate::model::AssignmentRecord;

/// What to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New assignment records, by job.
    pub writes: Vec<(String, AssignmentRecord)>,
    /// Jobs whose assignment must go (the job was deleted).
    pub deletes: Vec<String>,
    /// Shards that change owner across all writes.
    pub moves: usize,
    /// When a parked instance's delay runs out and everything must be planned again.
    pub wake_at: Option<Instant>,
    /// Finished one-shot jobs to delete with every key they have (retention passed).
    pub retire: Vec<String>,
}

impl Plan {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.deletes.is_empty() && self.retire.is_empty()
    }
}

/// Plans the jobs `dirty` marks. See the module docs.
pub fn plan(world: &World, dirty: &Dirty, now: Instant, rebalance_delay: Duration) -> Plan {
    let jobs: BTreeSet<&String> = if dirty.all {
        world.jobs.keys().chain(world.assignments.keys()).collect()
    } else {
        dirty.jobs.iter().collect()
    };
    let mut out = Plan::default();
    let mut load = Load::default();
    for r in world.assignments.values() {
        for id in r
            .owners
            .iter()
            .flatten()
            .filter_map(|&i| r.instances.get(i as usize))
        {
            load.count(id, 1);
        }
    }
    let mut groups = Groups::default();
    // Pass 1: every job's new assignment, with the shards that move anyway placed on the
    // lightest instances.
    let mut planned = Vec::new();
    for job in jobs {
        let current = world.assignments.get(job.as_str());
        let Some(config) = world.jobs.get(job.as_str()) else {
            if current.is_some() {
                out.deletes.push(job.clone());
            }
            continue;
        };
        let (eligible, wake) = groups.eligible(world, job, config, current, now, rebalance_delay);
        out.wake_at = earliest(out.wake_at, wake);
        let previous = current.and_then(|r| r.to_assignment().ok());
        let next =
            config
                .strategy
                .assign(job, config.total, &eligible.instances, previous.as_ref());
        // A one-shot's done shards are nobody's: their owners release them, and nobody claims.
        let mut next = match world.done.get(job.as_str()) {
            Some(done) if config.one_shot => Assignment::from_owners(
                next.owners()
                    .iter()
                    .enumerate()
                    .map(|(s, o)| o.clone().filter(|_| !done.contains(&(s as u32))))
                    .collect(),
            ),
            _ => next,
        };
        if let Some(p) = &previous {
            load.remove(p);
        }
        load.add(&next);
        // Sticky jobs are evened out across jobs too: a job with fewer shards than instances
        // would otherwise never give a late joiner anything (see `shardjob_sharding::even`).
        let even = config.strategy == StrategyKind::Sticky && !config.one_shot;
        if even {
            place_moving(&mut next, previous.as_ref(), &eligible.members, &mut load);
        }
        planned.push(Planned {
            job,
            generation: current.map_or(1, |r| r.generation + 1),
            previous,
            next,
            eligible: even.then_some(eligible),
        });
    }
    // Pass 2: even out against the loads pass 1 left, by free moves first, then write what
    // changed.
    for give in [Give::Moving, Give::Any] {
        for p in &mut planned {
            if let Some(eligible) = &p.eligible {
                let members = &eligible.members;
                even_out(&mut p.next, p.previous.as_ref(), members, &mut load, give);
            }
        }
    }
    for p in planned {
        if p.previous.as_ref() == Some(&p.next) {
            continue;
        }
        out.moves += p
            .previous
            .as_ref()
            .unwrap_or(&Assignment::unassigned(0))
            .moves_to(&p.next)
            .len();
        out.writes.push((
            p.job.clone(),
            AssignmentRecord::from_assignment(p.generation, &p.next),
        ));
    }
    out
}

/// One job's pass-1 result, waiting for pass 2.
struct Planned<'w> {
    job: &'w String,
    generation: u64,
    previous: Option<Assignment>,
    next: Assignment,
    /// The instances to even out over, for the jobs that are evened out.
    eligible: Option<Rc<Eligible>>,
}

/// The instances eligible for a job, and those of them that are live, prepared for evening out.
struct Eligible {
    instances: Vec<Instance>,
    members: Members,
}

/// The eligible instances of each handler and selector, computed once per pass: jobs share
/// them (at 10k jobs over 20 instances, a copy per job was 200k instance copies a pass).
#[derive(Default)]
struct Groups<'w> {
    by: HashMap<(&'w str, &'w Selector), Rc<Eligible>>,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<'w> Groups<'w> {
    /// The instances eligible for `job`, parked ones included, and when the first parking ends.
    fn eligible(
        &mut self,
        world: &'w World,
        job: &'w str,
        config: &'w PlannedJob,
        current: Option<&AssignmentRecord>,
        now: Instant,
        delay: Duration,
    ) -> (Rc<Eligible>, Option<Instant>) {
        let handler = config.handler_name(job);
        let admits = |id: &str, handlers: &BTreeSet<String>, labels| {
            handlers.contains(handler)
                && !world.disabled.contains(id)
                && config.selector.matches(labels)
        };
        let group = self
            .by
            .entry((handler, &config.selector))
            .or_insert_with(|| {
                let instances: Vec<Instance> = world
                    .instances
                    .values()
                    .filter(|i| admits(i.id.as_str(), &i.handlers, &i.labels))
                    .map(|i| i.to_instance())
                    .collect();
                // Listed from the live instances: every one is a member.
                let members = Members::new(&instances, |_| true);
                Rc::new(Eligible { instances, members })
            })
            .clone();
        let mut parked = Vec::new();
        let mut wake = None;
        if !delay.is_zero() {
            for id in current.map(|r| r.instances.as_slice()).unwrap_or_default() {
                let Some(d) = world.departed.get(id) else {
                    continue;
                };
                let until = d.at + delay;
                let admitted = d.assumed && !world.disabled.contains(id.as_str())
                    || admits(id.as_str(), &d.info.handlers, &d.info.labels);
                if now < until && admitted {
                    parked.push(d.info.to_instance());
                    wake = earliest(wake, Some(until));
                }
            }
        }
        if parked.is_empty() {
            return (group, wake);
        }
        // Parked instances are eligible (their shards stay on them) but not live: the members
        // stay the group's.
        let mut instances = group.instances.clone();
        instances.extend(parked);
        let members = group.members.clone();
        (Rc::new(Eligible { instances, members }), wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use std::collections::BTreeMap;

    const NS: &str = "/shardjob/ns/";

    fn world() -> World {
        World::new(Keys::new("ns").unwrap())
    }

    fn add_instance(w: &mut World, id: &str, handlers: &[&str], labels: &[(&str, &str)]) {
        let labels: serde_json::Map<_, _> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let v = serde_json::json!({"id": id, "handlers": handlers, "labels": labels,
            "started_at": "2026-01-01T00:00:00Z"});
        w.put(&format!("{NS}instances/{id}"), v.to_string().as_bytes());
    }

    fn add_job(w: &mut World, job: &str, json: &str) {
        w.put(&format!("{NS}jobs/{job}"), json.as_bytes());
    }

    /// Plans what is dirty and applies the plan to the world, as the runner does after a write.
    fn step(w: &mut World, now: Instant, delay: Duration) -> Plan {
        let dirty = w.take_dirty();
        let p = plan(w, &dirty, now, delay);
        for (job, record) in &p.writes {
            w.assignments.insert(job.clone(), record.clone());
        }
        for job in &p.deletes {
            w.assignments.remove(job);
        }
        p
    }

    fn owners(w: &World, job: &str) -> Vec<String> {
        let r = &w.assignments[job];
        (0..r.owners.len() as u32)
            .map(|s| r.owner(s).map_or("-".into(), |i| i.to_string()))
            .collect()
    }

    #[test]
    fn eligibility_handler_selector_and_drain() {
        let t = Instant::now();
        let mut w = world();
        add_instance(&mut w, "a", &["h"], &[("zone", "eu")]);
        add_instance(&mut w, "b", &["h"], &[("zone", "us")]);
        add_instance(&mut w, "c", &["other"], &[("zone", "eu")]);
        add_instance(&mut w, "d", &["h"], &[("zone", "eu")]);
        add_job(
            &mut w,
            "j",
            r#"{"handler":"h","schedule":{"every":"1s"},"total":4,"selector":{"zone":"eu"}}"#,
        );
        let p = step(&mut w, t, Duration::ZERO);
        assert_eq!(p.writes.len(), 1);
        assert_eq!(owners(&w, "j"), ["a", "a", "d", "d"]);
        assert_eq!(w.assignments["j"].generation, 1);

        w.put(&format!("{NS}disabled/d"), b"maintenance");
        let p = step(&mut w, t, Duration::ZERO);
        assert_eq!(p.moves, 2);
        assert_eq!(owners(&w, "j"), ["a", "a", "a", "a"]);
        assert_eq!(w.assignments["j"].generation, 2);

        // Nothing changed: nothing written, generation stays.
        w.mark_all();
        assert!(step(&mut w, t, Duration::ZERO).is_empty());
    }

    #[test]
    fn jobs_of_one_handler_with_other_selectors_or_handlers_get_their_own_instances() {
        // The eligible instances are computed once per handler and selector and shared: a job
        // must never get another group's.
        let t = Instant::now();
        let mut w = world();
        add_instance(&mut w, "a", &["h", "g"], &[("zone", "eu")]);
        add_instance(&mut w, "b", &["h"], &[("zone", "us")]);
        let job = |sel: &str, handler: &str| {
            format!(r#"{{"handler":"{handler}","schedule":{{"every":"1s"}},"total":2{sel}}}"#)
        };
        add_job(&mut w, "any1", &job("", "h"));
        add_job(&mut w, "eu", &job(r#","selector":{"zone":"eu"}"#, "h"));
        add_job(&mut w, "us", &job(r#","selector":{"zone":"us"}"#, "h"));
        add_job(&mut w, "g", &job("", "g"));
        add_job(&mut w, "any2", &job("", "h"));
        step(&mut w, t, Duration::ZERO);
        assert_eq!(owners(&w, "eu"), ["a", "a"]);
        assert_eq!(owners(&w, "us"), ["b", "b"]);
        assert_eq!(owners(&w, "g"), ["a", "a"]);
        for j in ["any1", "any2"] {
            let mut o = owners(&w, j);
            o.sort();
            assert_eq!(o, ["a", "b"], "{j}");
        }
    }

    fn per_instance(w: &World) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for job in w.assignments.keys() {
            for o in owners(w, job) {
                *n.entry(o).or_default() += 1;
            }
        }
        n
    }

    #[test]
    fn a_late_joiner_gets_its_share_of_jobs_smaller_than_the_cluster() {
        // 40 jobs of 2 shards on 4 instances, then a fifth joins: per job, sticky alone would
        // keep every shard where it is (each instance holds 0 or 1 of a job either way).
        let t = Instant::now();
        let mut w = world();
        for id in ["a", "b", "c", "d"] {
            add_instance(&mut w, id, &["h"], &[]);
        }
        for j in 0..40 {
            add_job(
                &mut w,
                &format!("j{j}"),
                r#"{"handler":"h","schedule":{"every":"1s"},"total":2}"#,
            );
        }
        step(&mut w, t, Duration::ZERO);
        assert_eq!(
            per_instance(&w).values().copied().collect::<Vec<_>>(),
            [20, 20, 20, 20]
        );
        add_instance(&mut w, "e", &["h"], &[]);
        let p = step(&mut w, t, Duration::ZERO);
        assert_eq!(
            per_instance(&w).values().copied().collect::<Vec<_>>(),
            [16, 16, 16, 16, 16]
        );
        assert_eq!(p.moves, 16, "only the joiner's share moves");
        for job in w.assignments.keys() {
            let o = owners(&w, job);
            assert_ne!(o[0], o[1], "{job} stays balanced: {o:?}");
        }
        w.mark_all();
        assert!(
            step(&mut w, t, Duration::ZERO).is_empty(),
            "and it is stable"
        );
    }

    #[test]
    fn no_eligible_instance_leaves_shards_unassigned_and_a_job_default_handler_is_its_name() {
        let t = Instant::now();
        let mut w = world();
        add_instance(&mut w, "a", &["other"], &[]);
        add_job(&mut w, "j", r#"{"schedule":{"every":"1s"},"total":2}"#);
        step(&mut w, t, Duration::ZERO);
        assert_eq!(owners(&w, "j"), ["-", "-"]);
        add_instance(&mut w, "b", &["j"], &[]);
        step(&mut w, t, Duration::ZERO);
        assert_eq!(owners(&w, "j"), ["b", "b"]);
    }

    #[test]
    fn total_change_reshards_and_job_delete_deletes_the_assignment() {
        let t = Instant::now();
        let mut w = world();
        add_instance(&mut w, "a", &["j"], &[]);
        add_instance(&mut w, "b", &["j"], &[]);
        add_job(&mut w, "j", r#"{"schedule":{"every":"1s"},"total":4}"#);
        step(&mut w, t, Duration::ZERO);
        add_job(&mut w, "j", r#"{"schedule":{"every":"1s"},"total":6}"#);
        let p = step(&mut w, t, Duration::ZERO);
        assert_eq!(p.writes[0].1.owners.len(), 6);
        assert_eq!(owners(&w, "j"), ["a", "a", "b", "b", "a", "b"]);
        w.delete(&format!("{NS}jobs/j"), t);
        let p = step(&mut w, t, Duration::ZERO);
        assert_eq!(p.deletes, ["j"]);
        assert!(w.assignments.is_empty());
    }

    #[test]
    fn rebalance_delay_parks_a_departed_owner_until_it_returns_or_the_delay_ends() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(30);
        let mut w = world();
        for id in ["a", "b"] {
            add_instance(&mut w, id, &["j"], &[]);
        }
        add_job(&mut w, "j", r#"{"schedule":{"every":"1s"},"total":4}"#);
        step(&mut w, t0, delay);
        assert_eq!(owners(&w, "j"), ["a", "a", "b", "b"]);

        // b leaves at t1: its shards stay parked on it; the plan wakes at t1 + delay.
        let t1 = t0 + Duration::from_secs(5);
        w.delete(&format!("{NS}instances/b"), t1);
        let p = step(&mut w, t1, delay);
        assert!(p.writes.is_empty());
        assert_eq!(p.wake_at, Some(t1 + delay));

        // b returns before the delay ends: nothing moves at all.
        add_instance(&mut w, "b", &["j"], &[]);
        assert!(step(&mut w, t1 + Duration::from_secs(10), delay).is_empty());

        // b leaves again and the delay runs out: a takes over.
        let t2 = t1 + Duration::from_secs(20);
        w.delete(&format!("{NS}instances/b"), t2);
        step(&mut w, t2, delay);
        w.mark_all();
        let p = step(&mut w, t2 + delay, delay);
        assert_eq!(p.moves, 2);
        assert_eq!(owners(&w, "j"), ["a", "a", "a", "a"]);
        assert_eq!(p.wake_at, None);
    }

    #[test]
    fn without_delay_a_departure_moves_shards_at_once() {
        let t = Instant::now();
        let mut w = world();
        for id in ["a", "b", "c"] {
            add_instance(&mut w, id, &["j"], &[]);
        }
        add_job(&mut w, "j", r#"{"schedule":{"every":"1s"},"total":6}"#);
        step(&mut w, t, Duration::ZERO);
        w.delete(&format!("{NS}instances/b"), t);
        let p = step(&mut w, t, Duration::ZERO);
        // Sticky: only b's two shards move.
        assert_eq!(p.moves, 2);
        assert_eq!(owners(&w, "j"), ["a", "a", "a", "c", "c", "c"]);
    }
}
