//! Property tests of the strategies: the guarantees every caller relies on.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shardjob_sharding::{Assignment, Instance, InstanceId, StrategyKind, fair, min_moves};

fn instance(id: u16, weight: u32) -> Instance {
    Instance::new(InstanceId::new(format!("i{id}")).unwrap()).with_weight(weight)
}

/// 0..=max instances with distinct ids and weight 1.
fn instances(max: usize) -> impl Strategy<Value = Vec<Instance>> {
    prop::collection::btree_set(0u16..500, 0..=max)
        .prop_map(|ids| ids.into_iter().map(|i| instance(i, 1)).collect())
}

/// 1..=max instances with distinct ids and weights 1..=4.
fn weighted(max: usize) -> impl Strategy<Value = Vec<Instance>> {
    prop::collection::btree_map(0u16..500, 1u32..=4, 1..=max)
        .prop_map(|m| m.into_iter().map(|(i, w)| instance(i, w)).collect())
}

fn kind() -> impl Strategy<Value = StrategyKind> {
    prop::sample::select(StrategyKind::ALL.to_vec())
}

/// A previous assignment: any owner from `pool` (or none) per shard.
fn previous_over(pool: Vec<Instance>, total: u32) -> impl Strategy<Value = Assignment> {
    let n = pool.len();
    prop::collection::vec(0..=n, total as usize).prop_map(move |picks| {
        Assignment::from_owners(
            picks
                .into_iter()
                .map(|p| pool.get(p).map(|i| i.id.clone()))
                .collect(),
        )
    })
}

/// Brute force of the most shards a balanced assignment can keep: every way of handing out the
/// leftover ceilings (only for small n). Independent of `min_moves`'s closed form.
fn brute_force_min_moves(total: u32, eligible: &[Instance], previous: &Assignment) -> u32 {
    let mut sorted: Vec<&Instance> = eligible.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let shares = fair::shares(total, &sorted);
    let extras = fair::extras(total, &shares);
    let held: Vec<u32> = sorted
        .iter()
        .map(|i| {
            previous
                .shards_of(&i.id)
                .iter()
                .filter(|s| **s < total)
                .count() as u32
        })
        .collect();
    let n = sorted.len();
    let mut best = 0;
    for mask in 0u32..(1 << n) {
        let ok = mask.count_ones() == extras
            && (0..n).all(|i| mask & (1 << i) == 0 || shares[i].ceil > shares[i].floor);
        if !ok {
            continue;
        }
        let kept: u32 = (0..n)
            .map(|i| held[i].min(shares[i].floor + u32::from(mask & (1 << i) != 0)))
            .sum();
        best = best.max(kept);
    }
    total - best
}

fn is_balanced(a: &Assignment, eligible: &[Instance]) -> bool {
    let mut sorted: Vec<&Instance> = eligible.iter().collect();
    sorted.sort_by(|x, y| x.id.cmp(&y.id));
    let shares = fair::shares(a.total(), &sorted);
    let counts = a.counts(eligible);
    sorted
        .iter()
        .zip(&shares)
        .all(|(i, s)| (s.floor..=s.ceil).contains(&counts[&i.id]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_shard_assigned_iff_someone_is_eligible_and_only_to_eligible(
        k in kind(), eligible in instances(12), total in 1u32..300, job in "[a-z]{1,8}",
    ) {
        let a = k.assign(&job, total, &eligible, None);
        prop_assert_eq!(a.total(), total);
        for (_, owner) in a.iter() {
            match owner {
                None => prop_assert!(eligible.is_empty()),
                Some(o) => prop_assert!(eligible.iter().any(|i| &i.id == o)),
            }
        }
    }

    #[test]
    fn deterministic_and_independent_of_input_order(
        k in kind(), eligible in weighted(10), total in 1u32..200,
        job in "[a-z]{1,8}", seed in any::<u64>(),
    ) {
        let first = k.assign(&job, total, &eligible, None);
        let mut shuffled = eligible.clone();
        // A seeded Fisher-Yates (no rand dependency needed for a permutation).
        let mut x = seed;
        for i in (1..shuffled.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (x >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(&k.assign(&job, total, &shuffled, None), &first);
        let prev = first.clone();
        prop_assert_eq!(
            k.assign(&job, total, &shuffled, Some(&prev)),
            k.assign(&job, total, &eligible, Some(&prev))
        );
    }

    #[test]
    fn average_and_sticky_balance_within_one_with_equal_weights(
        eligible in instances(12), total in 1u32..300, job in "[a-z]{1,8}",
        joiner in 500u16..600,
    ) {
        for k in [StrategyKind::Average, StrategyKind::Odevity, StrategyKind::RoundRobin, StrategyKind::Sticky] {
            let a = k.assign(&job, total, &eligible, None);
            prop_assert!(a.spread(&eligible) <= 1, "{} spread {}", k, a.spread(&eligible));
            // After a join too, starting from the previous assignment.
            let mut more = eligible.clone();
            more.push(instance(joiner, 1));
            let b = k.assign(&job, total, &more, Some(&a));
            prop_assert!(b.spread(&more) <= 1, "{} spread after join {}", k, b.spread(&more));
        }
    }

    #[test]
    fn sticky_is_balanced_and_moves_exactly_the_minimum_from_any_previous(
        (eligible, previous) in weighted(6).prop_flat_map(|e| {
            let mut pool = e.clone();
            pool.push(instance(999, 1)); // an owner that is no longer eligible
            (1u32..60).prop_flat_map(move |t| (Just(e.clone()), previous_over(pool.clone(), t)))
        }),
        total_delta in -5i32..5,
    ) {
        let total = (previous.total() as i32 + total_delta).max(1) as u32;
        let next = StrategyKind::Sticky.assign("job", total, &eligible, Some(&previous));
        prop_assert!(is_balanced(&next, &eligible), "not balanced: {:?}", next);
        let moved = previous.moves_to(&next).len() as u32;
        prop_assert_eq!(moved, min_moves(total, &eligible, Some(&previous)));
        // The closed form agrees with a brute force over every balanced target vector.
        if total == previous.total() {
            prop_assert_eq!(moved, brute_force_min_moves(total, &eligible, &previous));
        }
    }

    #[test]
    fn sticky_minimal_on_single_join_leave_and_weight_change(
        eligible in weighted(10), total in 1u32..400, joiner in 500u16..600,
        leaver_pick in any::<prop::sample::Index>(), new_weight in 1u32..=5,
    ) {
        let sticky = StrategyKind::Sticky;
        let base = sticky.assign("j", total, &eligible, None);

        let mut joined = eligible.clone();
        joined.push(instance(joiner, 1));
        let after_join = sticky.assign("j", total, &joined, Some(&base));
        prop_assert_eq!(base.moves_to(&after_join).len() as u32, min_moves(total, &joined, Some(&base)));
        if eligible.iter().all(|i| i.weight == 1) {
            // With equal weights a join moves shards only to the joiner. (With unequal weights
            // a leftover shard may tie between the joiner and an old instance; either is minimal.)
            prop_assert!(base.moves_to(&after_join).iter().all(|m| m.to == Some(instance(joiner, 1).id)));
        }

        let leaver = leaver_pick.index(eligible.len());
        let mut left = eligible.clone();
        let gone = left.remove(leaver).id;
        let after_leave = sticky.assign("j", total, &left, Some(&base));
        let moves = base.moves_to(&after_leave);
        prop_assert_eq!(moves.len() as u32, min_moves(total, &left, Some(&base)));
        if !left.is_empty() && eligible.iter().all(|i| i.weight == 1) {
            // With equal weights a leave moves exactly the leaver's shards.
            prop_assert!(moves.iter().all(|m| m.from.as_ref() == Some(&gone)));
        }

        let mut reweighted = eligible.clone();
        reweighted[leaver].weight = new_weight;
        let after_weight = sticky.assign("j", total, &reweighted, Some(&base));
        prop_assert_eq!(base.moves_to(&after_weight).len() as u32, min_moves(total, &reweighted, Some(&base)));
    }

    #[test]
    fn consistent_hash_moves_only_the_leavers_shards(
        eligible in weighted(10), total in 1u32..300, job in "[a-z]{1,8}",
        leaver_pick in any::<prop::sample::Index>(),
    ) {
        let ch = StrategyKind::ConsistentHash;
        let before = ch.assign(&job, total, &eligible, None);
        let mut left = eligible.clone();
        let gone = left.remove(leaver_pick.index(eligible.len())).id;
        let after = ch.assign(&job, total, &left, Some(&before));
        for m in before.moves_to(&after).iter() {
            prop_assert_eq!(m.from.as_ref(), Some(&gone));
        }
    }
}

#[test]
fn strategy_trait_objects_report_their_names() {
    let names: Vec<&str> = StrategyKind::ALL
        .iter()
        .map(|k| k.strategy().name())
        .collect();
    assert_eq!(
        names,
        [
            "sticky",
            "average",
            "odevity",
            "round_robin",
            "consistent_hash"
        ]
    );
}
