//! Balance across jobs: [`place_moving`] and [`even_out`] move shards of one job's new
//! assignment from instances loaded heavily over all jobs to lightly loaded ones, keeping the
//! job itself balanced.
//!
//! A strategy balances one job at a time. When a job has fewer shards than there are
//! instances (8 shards, 20 replicas), every instance holds 0 or 1 of it, and `sticky` keeps
//! each shard where it is: so an instance that joins late gets no shard of any such job, and
//! stays idle while the others run everything (measured: 20 agents, 10k jobs of 8 shards; the
//! one that registered 20 ms after the first plan held nothing of 80k shards). The planner
//! keeps a [`Load`] (shards per instance over every job) and evens out in two passes over the
//! jobs:
//!
//! 1. **Shards that move anyway go to the lightest** ([`place_moving`], right after the
//!    strategy assigns each job). A shard whose owner in `next` is not its owner in
//!    `previous` (its owner left, or the strategy moved it) costs one move wherever it lands,
//!    so it goes to the least loaded instance that may take it, if that one is lighter than
//!    where the strategy put it.
//! 2. **Then while it helps** ([`even_out`], once every job has had step 1, first with
//!    [`Give::Moving`] for every job, then with [`Give::Any`]). A shard moves from `v` to `u`
//!    only if `v` stays at least as loaded as `u` afterwards, weights counted
//!    (`(L_v − 1) / w_v ≥ (L_u + 1) / w_u`); the receiver is the least loaded candidate, the
//!    giver the most loaded, and the shard given is one that moves anyway if the giver has
//!    one, else (with `Give::Any`) its highest-numbered one (`sticky` keeps the lowest ones).
//!
//! Why two passes: evening each job out right after the strategy placed it let the loads
//! drift apart by two while a departed instance's shards were placed job by job, and evening
//! then moved shards that could have stayed (`bench-plan`: 20 instances, 10k jobs of 8
//! shards, 4446 moves for the 4000 shards a crash orphaned; two passes move exactly 4000).
//!
//! In both steps a shard moves from `v` to `u` only if `v` holds more than its floor of this
//! job and `u` less than its ceiling (the job stays balanced: every instance at its floor or
//! ceiling), and every move lowers Σ L²/w, so passes converge and never swap shards back and
//! forth.
//!
//! Only instances the caller calls live take part: a parked instance (departed, within the
//! rebalance delay) neither gets nor gives shards here.

mod load;
mod members;

pub use load::Load;
pub use members::Members;

use crate::Assignment;
use members::Job;

/// Step 1 (see the module docs): moves each shard of `next` that `previous` had elsewhere to
/// the least loaded member that may take it, if that one is lighter. `next` is one job's
/// assignment over the instances `members` were prepared from, already counted in `load`;
/// `load` follows each move. Returns the number of shards moved.
pub fn place_moving(
    next: &mut Assignment,
    previous: Option<&Assignment>,
    members: &Members,
    load: &mut Load,
) -> usize {
    if members.len() < 2 || !(0..next.total()).any(|s| moving(previous, next, s)) {
        return 0;
    }
    let mut job = Job::new(next, members, load);
    let mut moved = 0;
    for s in 0..next.total() {
        if !moving(previous, next, s) {
            continue;
        }
        let Some(v) = next.owner(s).and_then(|o| job.index(o)) else {
            continue;
        };
        let Some(u) = job.receiver(Some(v)) else {
            continue;
        };
        if job.counts[v] > job.fair[v].floor && job.helps(v, u) {
            job.give(next, load, s, v, u);
            moved += 1;
        }
    }
    moved
}

/// Which shards [`even_out`] may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Give {
    /// Only shards that move anyway (their owner in `previous` is another): free moves.
    Moving,
    /// Any shard, one that moves anyway first.
    Any,
}

/// Step 2 (see the module docs): moves shards of `next` from the most loaded member to the
/// least loaded one while that evens the load out. Arguments as for [`place_moving`]; call it
/// after every job's step 1, so that it evens out against the loads those leave, first with
/// [`Give::Moving`] for every job, then with [`Give::Any`].
pub fn even_out(
    next: &mut Assignment,
    previous: Option<&Assignment>,
    members: &Members,
    load: &mut Load,
    give: Give,
) -> usize {
    if members.len() < 2
        || give == Give::Moving && !(0..next.total()).any(|s| moving(previous, next, s))
    {
        return 0;
    }
    let mut job = Job::new(next, members, load);
    let mut moved = 0;
    loop {
        let receiver = job.receiver(None);
        let (Some(v), Some(u)) = (job.giver(receiver), receiver) else {
            return moved;
        };
        if !job.helps(v, u) {
            return moved;
        }
        let mine = next.shards_of(job.id(v));
        let free = mine.iter().rev().find(|&&s| moving(previous, next, s));
        let Some(&s) = free.or(mine.last().filter(|_| give == Give::Any)) else {
            return moved;
        };
        job.give(next, load, s, v, u);
        moved += 1;
    }
}

/// True when `shard`'s owner in `next` is not its owner in `previous`: it costs a move anyway.
fn moving(previous: Option<&Assignment>, next: &Assignment, shard: u32) -> bool {
    previous.and_then(|p| p.owner(shard)) != next.owner(shard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Instance, InstanceId, Strategy, strategy::sticky::Sticky};

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

    /// Plans `jobs` jobs of `shards` shards over `names` as the planner does: the strategy
    /// and step 1 for every job, then step 2 for every job against the loads step 1 left.
    fn plan_all(previous: &[Assignment], names: &[&str], shards: u32) -> (Vec<Assignment>, usize) {
        let members = Members::new(&insts(names), |_| true);
        let eligible = insts(names);
        let mut load = load_of(previous);
        let prev = |j: usize| Some(&previous[j]).filter(|p| p.total() > 0);
        let mut out: Vec<Assignment> = (0..previous.len())
            .map(|j| {
                let mut next = Sticky.assign(&format!("j{j}"), shards, &eligible, prev(j));
                if let Some(p) = prev(j) {
                    load.remove(p);
                }
                load.add(&next);
                place_moving(&mut next, prev(j), &members, &mut load);
                next
            })
            .collect();
        for give in [Give::Moving, Give::Any] {
            for (j, next) in out.iter_mut().enumerate() {
                even_out(next, prev(j), &members, &mut load, give);
            }
        }
        let moves = (0..out.len())
            .map(|j| prev(j).map_or(0, |p| p.moves_to(&out[j]).len()))
            .sum();
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
    fn a_crash_moves_only_the_departed_instances_shards_and_the_load_stays_even() {
        // 20 instances, 1000 jobs of 8 shards: each instance holds 0 or 1 shard of a job. When
        // one leaves, its 400 shards go job by job to instances that hold none of that job;
        // placed without the load in view they drift apart, and evening out then moved shards
        // that could have stayed (444 moves for 400 at 10k jobs' scale in bench-plan).
        let names: Vec<String> = (0..20).map(|i| format!("agent-{i:03}")).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let (first, _) = plan_all(&vec![Assignment::unassigned(0); 1000], &all, 8);
        assert_eq!(per_instance(&first, &all), vec![400; 20]);
        let survivors = &all[..19];
        let (after, moves) = plan_all(&first, survivors, 8);
        let gone = id(all[19]);
        let orphans: usize = first.iter().map(|a| a.shards_of(&gone).len()).sum();
        assert_eq!(orphans, 400);
        assert_eq!(moves, orphans, "only the departed instance's shards move");
        let loads = per_instance(&after, survivors);
        let (lo, hi) = (loads.iter().min(), loads.iter().max());
        assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{loads:?}");
        for a in &after {
            let mut ids: Vec<_> = a.owners().iter().flatten().collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 8, "the job stays spread over 8 instances");
        }
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
            even_out(
                &mut next,
                None,
                &Members::new(&eligible, |_| true),
                &mut load,
                Give::Any,
            );
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
        let live = Members::new(&eligible, |i| i.as_str() != "c");
        let moved = even_out(&mut next, None, &live, &mut load, Give::Any);
        assert_eq!(moved, 0);
        assert_eq!(load.of(&id("c")), 0);
    }

    #[test]
    fn a_gap_of_one_is_left_alone() {
        let eligible = insts(&["a", "b"]);
        let mut next = Assignment::from_owners(vec![Some(id("a"))]);
        let mut load = load_of(&[next.clone(), Assignment::from_owners(vec![Some(id("a"))])]);
        // a: 2, b: 0 → one shard would make it 1 and 1: moves.
        assert_eq!(
            even_out(
                &mut next,
                None,
                &Members::new(&eligible, |_| true),
                &mut load,
                Give::Any
            ),
            1
        );
        // a: 1, b: 1 → moving would only swap who has more: stays.
        let mut again = next.clone();
        assert_eq!(
            even_out(
                &mut again,
                None,
                &Members::new(&eligible, |_| true),
                &mut load,
                Give::Any
            ),
            0
        );
    }
}
