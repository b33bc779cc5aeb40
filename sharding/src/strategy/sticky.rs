//! `sticky`, the default: balanced like `average`, but moving as few shards as possible.
//!
//! 1. Each eligible instance's *target* is the floor of its weighted fair share
//!    (`total × weight / Σweights`); the shards left over raise some targets to the ceiling,
//!    first for instances that already hold more than their floor (so they keep one more), then
//!    in id order *rotated by a hash of the job name*. Without the rotation every job would give
//!    its leftover shards to the same first instances: 10k jobs of 8 shards on 20 instances
//!    would load 8 instances and leave 12 idle.
//! 2. Every instance keeps its previous shards up to its target (the lowest-numbered ones);
//!    what is above target, and every shard whose owner is gone, goes to a pool.
//! 3. Instances below target take from the pool, lowest shard first, in id order.
//!
//! With equal weights a join moves shards only to the joiner and a leave only the leaver's
//! shards. With unequal weights a leftover shard can tie between a joiner and an old instance;
//! the tie goes by id, and the count of moves is still the minimum.
//!
//! No balanced assignment keeps more shards (see [`crate::min_moves`] and its property tests).
//!
//! Worked example: 100 shards on `a, b, c` (34, 33, 33, the 34 where the job's rotation
//! starts). `d` joins: targets 25 each, so the instance with 34 gives up 9 and the others 8
//! each; `d` gets those 25 and nothing else moves. Then `b` leaves: targets 34, 33, 33 for
//! `a, c, d`; `b`'s 25 shards are shared 9/8/8, nothing else moves.

use crate::fair::{extras, shares};
use crate::instance::canonical;
use crate::{Assignment, Instance, Strategy};

/// Minimal-movement balanced assignment. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sticky;

impl Strategy for Sticky {
    fn name(&self) -> &'static str {
        "sticky"
    }

    fn assign(
        &self,
        job: &str,
        total: u32,
        eligible: &[Instance],
        previous: Option<&Assignment>,
    ) -> Assignment {
        let ordered = canonical(eligible);
        let mut out = Assignment::unassigned(total);
        if ordered.is_empty() {
            return out;
        }
        let (mut held, mut pool) = held_and_pool(total, &ordered, previous);
        let first = (crate::hash::fnv1a64(&[job.as_bytes()]) % ordered.len() as u64) as usize;
        let targets = targets(total, &ordered, &held, first);

        for (shards, &target) in held.iter_mut().zip(&targets) {
            if shards.len() > target as usize {
                pool.extend(shards.drain(target as usize..));
            }
        }
        pool.sort_unstable();
        let mut pool = pool.into_iter();
        for (shards, &target) in held.iter_mut().zip(&targets) {
            while shards.len() < target as usize {
                match pool.next() {
                    Some(s) => shards.push(s),
                    None => break,
                }
            }
        }
        for (inst, shards) in ordered.iter().zip(&held) {
            for &s in shards {
                out.set(s, Some(inst.id.clone()));
            }
        }
        out
    }
}

/// The previous shards (`< total`) of each instance in `ordered`, ascending, and the rest.
pub(crate) fn held_and_pool(
    total: u32,
    ordered: &[&Instance],
    previous: Option<&Assignment>,
) -> (Vec<Vec<u32>>, Vec<u32>) {
    let mut held = vec![Vec::new(); ordered.len()];
    let mut pool = Vec::new();
    for s in 0..total {
        let owner = previous.and_then(|p| p.owner(s));
        match owner.and_then(|o| ordered.binary_search_by(|i| i.id.cmp(o)).ok()) {
            Some(i) => held[i].push(s),
            None => pool.push(s),
        }
    }
    (held, pool)
}

/// Floor of the fair share, plus one for the instances that get the leftover shards; ties go
/// in id order starting at index `first`.
fn targets(total: u32, ordered: &[&Instance], held: &[Vec<u32>], first: usize) -> Vec<u32> {
    let shares = shares(total, ordered);
    let mut targets: Vec<u32> = shares.iter().map(|s| s.floor).collect();
    let mut candidates: Vec<usize> = (0..ordered.len())
        .filter(|&i| shares[i].ceil > shares[i].floor)
        .collect();
    // Instances holding more than their floor first; then id order rotated to start at `first`.
    let n = ordered.len();
    candidates.sort_by_key(|&i| {
        (
            held[i].len() <= shares[i].floor as usize,
            (i + n - first) % n,
        )
    });
    for i in candidates.into_iter().take(extras(total, &shares) as usize) {
        targets[i] += 1;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::average::tests::{insts, table};

    #[test]
    fn worked_example_from_the_docs() {
        let abc = insts(&["a", "b", "c"]);
        let first = Sticky.assign("j", 100, &abc, None);
        let mut counts: Vec<_> = table(&first, &["a", "b", "c"])
            .iter()
            .map(Vec::len)
            .collect();
        counts.sort_unstable();
        assert_eq!(counts, [33, 33, 34]);

        let abcd = insts(&["a", "b", "c", "d"]);
        let joined = Sticky.assign("j", 100, &abcd, Some(&first));
        assert_eq!(first.moves_to(&joined).len(), 25);
        assert!(
            first
                .moves_to(&joined)
                .iter()
                .all(|m| m.to.as_ref().unwrap().as_str() == "d")
        );

        let acd = insts(&["a", "c", "d"]);
        let left = Sticky.assign("j", 100, &acd, Some(&joined));
        let moves = joined.moves_to(&left);
        assert_eq!(moves.len(), 25);
        assert!(
            moves
                .iter()
                .all(|m| m.from.as_ref().unwrap().as_str() == "b")
        );
    }

    #[test]
    fn without_previous_it_is_contiguous_and_balanced() {
        let got = Sticky.assign("j", 10, &insts(&["x", "y", "z"]), None);
        let t = table(&got, &["x", "y", "z"]);
        let mut counts: Vec<usize> = t.iter().map(Vec::len).collect();
        counts.sort_unstable();
        assert_eq!(counts, [3, 3, 4]);
        let flat: Vec<u32> = t.into_iter().flatten().collect();
        assert_eq!(
            flat,
            (0..10).collect::<Vec<_>>(),
            "contiguous ranges in id order"
        );
    }

    #[test]
    fn leftover_shards_of_many_jobs_spread_over_every_instance() {
        // 8 shards on 20 instances: one shard each for 8 of them per job. Over 1000 jobs every
        // instance must get its share (400), not the first 8 by id everything.
        let names: Vec<String> = (0..20).map(|i| format!("i{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let all = insts(&refs);
        let mut per = vec![0usize; 20];
        for j in 0..1000 {
            let a = Sticky.assign(&format!("job-{j}"), 8, &all, None);
            for (i, shards) in table(&a, &refs).iter().enumerate() {
                per[i] += shards.len();
            }
        }
        let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
        assert!(*min >= 300 && *max <= 500, "per instance: {per:?}");
    }

    #[test]
    fn a_total_change_keeps_what_still_exists() {
        let ab = insts(&["a", "b"]);
        let eight = Sticky.assign("j", 8, &ab, None);
        let four = Sticky.assign("j", 4, &ab, Some(&eight));
        // a held 0..4, b 4..8; with 4 shards a keeps 0,1 and gives 2,3 to b.
        assert_eq!(table(&four, &["a", "b"]), [vec![0, 1], vec![2, 3]]);
    }
}
