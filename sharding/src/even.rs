//! Balance across jobs: [`even_out`] moves shards of one job's new assignment from instances
//! loaded heavily over all jobs to lightly loaded ones, keeping the job itself balanced.
//!
//! A strategy balances one job at a time. When a job has fewer shards than there are
//! instances (8 shards, 20 replicas), every instance holds 0 or 1 of it, and `sticky` keeps
//! each shard where it is: so an instance that joins late gets no shard of any such job, and
//! stays idle while the others run everything (measured: 20 agents, 10k jobs of 8 shards; the
//! one that registered 20 ms after the first plan held nothing of 80k shards). The planner
//! keeps a [`Load`] (shards per instance over every job) and, after a job is assigned, evens
//! it out:
//!
//! - a shard moves from `v` to `u` only if `v` holds more than its floor of this job and `u`
//!   less than its ceiling (the job stays balanced: every instance at its floor or ceiling);
//! - and only if `v` stays at least as loaded as `u` afterwards, weights counted
//!   (`(L_v − 1) / w_v ≥ (L_u + 1) / w_u`). Each move lowers Σ L²/w, so passes converge and
//!   never swap shards back and forth;
//! - the receiver is the least loaded candidate, the giver the most loaded; the shard given is
//!   the giver's highest-numbered one (`sticky` keeps the lowest ones).
//!
//! Only instances the caller calls live take part: a parked instance (departed, within the
//! rebalance delay) neither gets nor gives shards here.

use std::collections::HashMap;

use crate::fair::shares;
use crate::{Assignment, Instance, InstanceId};

/// Shards per instance over every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load(HashMap<InstanceId, u64>);

impl Load {
    /// The shards `id` holds over every job.
    pub fn of(&self, id: &InstanceId) -> u64 {
        self.0.get(id).copied().unwrap_or(0)
    }

    /// Counts `n` more shards for `id`.
    pub fn count(&mut self, id: &InstanceId, n: u64) {
        *self.0.entry(id.clone()).or_default() += n;
    }

    /// Counts every owned shard of `a`.
    pub fn add(&mut self, a: &Assignment) {
        for id in a.owners().iter().flatten() {
            *self.0.entry(id.clone()).or_default() += 1;
        }
    }

    /// Uncounts every owned shard of `a` (never below zero).
    pub fn remove(&mut self, a: &Assignment) {
        for id in a.owners().iter().flatten() {
            if let Some(n) = self.0.get_mut(id) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Evens out `next` (one job's assignment over `eligible`, already counted in `load`) against
/// the load of every job; `load` follows each move. Returns the number of shards moved.
pub fn even_out(
    next: &mut Assignment,
    eligible: &[Instance],
    live: impl Fn(&InstanceId) -> bool,
    load: &mut Load,
) -> usize {
    let members: Vec<&Instance> = eligible.iter().filter(|i| live(&i.id)).collect();
    if members.len() < 2 {
        return 0;
    }
    let fair = shares(next.total(), &members);
    let weight: Vec<u64> = members.iter().map(|i| i.effective_weight()).collect();
    let index: HashMap<&InstanceId, usize> = members
        .iter()
        .enumerate()
        .map(|(k, i)| (&i.id, k))
        .collect();
    let mut counts = vec![0u32; members.len()];
    for o in next.owners().iter().flatten() {
        if let Some(&k) = index.get(o) {
            counts[k] += 1;
        }
    }
    let mut moved = 0;
    loop {
        let load_of = |k: usize| load.of(&members[k].id);
        // Least loaded (after taking one more) among those below their ceiling.
        let receiver = (0..members.len())
            .filter(|&k| counts[k] < fair[k].ceil)
            .min_by(|&a, &b| {
                let (la, lb) = (u128::from(load_of(a) + 1), u128::from(load_of(b) + 1));
                (la * u128::from(weight[b])).cmp(&(lb * u128::from(weight[a])))
            });
        // Most loaded (after giving one) among those above their floor.
        let giver = (0..members.len())
            .filter(|&k| counts[k] > fair[k].floor && Some(k) != receiver)
            .max_by(|&a, &b| {
                let (la, lb) = (
                    u128::from(load_of(a).saturating_sub(1)),
                    u128::from(load_of(b).saturating_sub(1)),
                );
                (la * u128::from(weight[b])).cmp(&(lb * u128::from(weight[a])))
            });
        let (Some(u), Some(v)) = (receiver, giver) else {
            return moved;
        };
        let (lu, lv) = (
            u128::from(load_of(u) + 1),
            u128::from(load_of(v).saturating_sub(1)),
        );
        if lv * u128::from(weight[u]) < lu * u128::from(weight[v]) {
            return moved;
        }
        let Some(shard) = next.shards_of(&members[v].id).last().copied() else {
            return moved;
        };
        next.set(shard, Some(members[u].id.clone()));
        counts[v] -= 1;
        counts[u] += 1;
        if let Some(n) = load.0.get_mut(&members[v].id) {
            *n = n.saturating_sub(1);
        }
        load.count(&members[u].id, 1);
        moved += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Strategy, strategy::sticky::Sticky};

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).expect("a valid id")
    }

    fn insts(names: &[&str]) -> Vec<Instance> {
        names.iter().map(|n| Instance::new(id(n))).collect()
    }

    fn load_of(jobs: &[Assignment]) -> Load {
        let mut l = Load::default();
        jobs.iter().for_each(|a| l.add(a));
        l
    }

    /// Plans `jobs` jobs of `shards` shards over `names` as the planner does: the strategy,
    /// then evening out against the running load.
    fn plan_all(previous: &[Assignment], names: &[&str], shards: u32) -> (Vec<Assignment>, usize) {
        let eligible = insts(names);
        let mut load = load_of(previous);
        let mut moves = 0;
        let out = previous
            .iter()
            .enumerate()
            .map(|(j, prev)| {
                let prev = Some(prev).filter(|p| p.total() > 0);
                let mut next = Sticky.assign(&format!("j{j}"), shards, &eligible, prev);
                if let Some(p) = prev {
                    load.remove(p);
                }
                load.add(&next);
                even_out(&mut next, &eligible, |_| true, &mut load);
                moves += prev.map_or(0, |p| p.moves_to(&next).len());
                next
            })
            .collect();
        (out, moves)
    }

    fn per_instance(jobs: &[Assignment], names: &[&str]) -> Vec<u64> {
        let l = load_of(jobs);
        names.iter().map(|n| l.of(&id(n))).collect()
    }

    #[test]
    fn a_late_joiner_gets_its_share_of_small_jobs_and_only_it_gains() {
        let old = ["a", "b", "c", "d"];
        let (first, _) = plan_all(&vec![Assignment::unassigned(0); 100], &old, 2);
        assert_eq!(per_instance(&first, &old), [50, 50, 50, 50]);
        let all = ["a", "b", "c", "d", "e"];
        let (after, moves) = plan_all(&first, &all, 2);
        assert_eq!(per_instance(&after, &all), [40, 40, 40, 40, 40]);
        assert_eq!(moves, 40, "exactly the joiner's share moves");
        for (a, b) in first.iter().zip(&after) {
            for m in a.moves_to(b).iter() {
                assert_eq!(m.to.as_ref().map(InstanceId::as_str), Some("e"));
            }
        }
        // Every job is still balanced: nobody holds two shards of one job.
        for a in &after {
            let ids: Vec<_> = a.owners().iter().flatten().collect();
            assert_eq!(ids.len(), 2);
            assert_ne!(ids[0], ids[1]);
        }
        // A second pass over the same instances moves nothing.
        assert_eq!(plan_all(&after, &all, 2).1, 0);
    }

    #[test]
    fn weights_count_and_the_job_stays_balanced() {
        // Two shards per job, b weighs 3: per job a holds 0 or 1 and b 1 or 2; over 40 jobs
        // the load should follow the weights (a 20, b 60).
        let eligible = vec![
            Instance::new(id("a")),
            Instance::new(id("b")).with_weight(3),
        ];
        let mut load = Load::default();
        for j in 0..40 {
            let mut next = Sticky.assign(&format!("j{j}"), 2, &eligible, None);
            load.add(&next);
            even_out(&mut next, &eligible, |_| true, &mut load);
            let on_b = next.shards_of(&id("b")).len();
            assert!(
                (1..=2).contains(&on_b),
                "the job's own balance holds: {on_b}"
            );
        }
        let (a, b) = (load.of(&id("a")), load.of(&id("b")));
        assert_eq!(a + b, 80);
        assert!((19..=21).contains(&a), "a={a} b={b}");
    }

    #[test]
    fn parked_instances_neither_get_nor_give() {
        let eligible = insts(&["a", "b", "c"]);
        // c is parked (not live) and lightly loaded: it must get nothing.
        let mut next = Assignment::from_owners(vec![Some(id("a")), Some(id("b"))]);
        let mut load = load_of(&[
            Assignment::from_owners(vec![Some(id("a")); 5]),
            Assignment::from_owners(vec![Some(id("b")); 5]),
            next.clone(),
        ]);
        let moved = even_out(&mut next, &eligible, |i| i.as_str() != "c", &mut load);
        assert_eq!(moved, 0);
        assert_eq!(load.of(&id("c")), 0);
    }

    #[test]
    fn a_gap_of_one_is_left_alone() {
        let eligible = insts(&["a", "b"]);
        let mut next = Assignment::from_owners(vec![Some(id("a"))]);
        let mut load = load_of(&[next.clone(), Assignment::from_owners(vec![Some(id("a"))])]);
        // a: 2, b: 0 → one shard would make it 1 and 1: moves.
        assert_eq!(even_out(&mut next, &eligible, |_| true, &mut load), 1);
        // a: 1, b: 1 → moving would only swap who has more: stays.
        let mut again = next.clone();
        assert_eq!(even_out(&mut again, &eligible, |_| true, &mut load), 0);
    }
}
