//! The least movement any balanced assignment allows: the yardstick for `sticky` and for the
//! `bench-moves` benchmark.
//!
//! Given the shards each eligible instance held before (`h_i`) and its fair share
//! (`floor_i`, `ceil_i`), a balanced assignment keeps at most `min(h_i, target_i)` shards on
//! instance `i`, where every target is the floor and `extras` of them the ceiling. Raising a
//! target to the ceiling keeps one more shard exactly when `h_i > floor_i`, so the most any
//! balanced assignment keeps is `Σ min(h_i, floor_i) + min(extras, #{i: ceil_i > floor_i, h_i > floor_i})`.
//! Every shard not kept moves (including shards of departed instances, newly created shards,
//! and shards dropped by a smaller total).

use crate::fair::{extras, shares};
use crate::instance::canonical;
use crate::strategy::sticky::held_and_pool;
use crate::{Assignment, Instance};

/// The smallest number of shards whose owner must change to go from `previous` to any balanced
/// assignment of `total` shards over `eligible`.
pub fn min_moves(total: u32, eligible: &[Instance], previous: Option<&Assignment>) -> u32 {
    let dropped = previous.map_or(0, |p| {
        p.iter().filter(|(s, o)| *s >= total && o.is_some()).count() as u32
    });
    let ordered = canonical(eligible);
    if ordered.is_empty() {
        let orphaned = previous.map_or(0, |p| {
            p.iter().filter(|(s, o)| *s < total && o.is_some()).count() as u32
        });
        return orphaned + dropped;
    }
    let (held, _) = held_and_pool(total, &ordered, previous);
    let shares = shares(total, &ordered);
    let base: u32 = held
        .iter()
        .zip(&shares)
        .map(|(h, s)| (h.len() as u32).min(s.floor))
        .sum();
    let gainers = held
        .iter()
        .zip(&shares)
        .filter(|(h, s)| s.ceil > s.floor && h.len() as u32 > s.floor)
        .count() as u32;
    let kept = base + gainers.min(extras(total, &shares));
    total - kept + dropped
}
