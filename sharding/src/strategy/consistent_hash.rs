//! Consistent hashing over a ring of virtual nodes (the `hashring` crate).
//!
//! Each instance puts `VNODES_PER_WEIGHT × weight` virtual nodes on the ring (weight capped at
//! [`MAX_VNODE_WEIGHT`]); shard `s` of job `j` goes to the first virtual node clockwise from
//! `hash(j, s)`. When an instance leaves, only its own shards move; when one joins, it takes
//! shards only from others. The price: counts are only roughly balanced (a few shards of
//! difference with tens of shards per instance), and `previous` is not consulted.
//!
//! Every hash is fed through explicit little-endian bytes of [`crate::hash::fnv1a64`], and the
//! ring's SipHasher has fixed keys, so every process and platform computes the same ring.
//!
//! Worked example: with instances `a` and `b` the ring decides each shard; add `c` and only some
//! shards change owner, every one of them to `c`; remove `c` again and exactly those return.

use std::hash::{Hash, Hasher};

use hashring::HashRing;

use crate::hash::fnv1a64;
use crate::instance::canonical;
use crate::{Assignment, Instance, Strategy};

/// Virtual nodes per unit of weight.
pub const VNODES_PER_WEIGHT: u32 = 160;
/// Weights above this count as this many units on the ring (bounds the ring's size).
pub const MAX_VNODE_WEIGHT: u32 = 32;

/// Consistent hashing with virtual nodes. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsistentHash;

/// A point on the ring: which instance (index into the sorted list) and its stable position.
#[derive(Clone, Copy)]
struct VNode {
    index: usize,
    token: u64,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.token.to_le_bytes());
    }
}

/// A key on the ring, hashed from its stable bytes only.
struct Point(u64);

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0.to_le_bytes());
    }
}

impl Strategy for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn assign(
        &self,
        job: &str,
        total: u32,
        eligible: &[Instance],
        _: Option<&Assignment>,
    ) -> Assignment {
        let ordered = canonical(eligible);
        let mut out = Assignment::unassigned(total);
        if ordered.is_empty() {
            return out;
        }
        let mut ring = HashRing::new();
        for (index, inst) in ordered.iter().enumerate() {
            let vnodes = VNODES_PER_WEIGHT * inst.weight.clamp(1, MAX_VNODE_WEIGHT);
            ring.batch_add(
                (0..vnodes)
                    .map(|r| VNode {
                        index,
                        token: fnv1a64(&[inst.id.as_str().as_bytes(), &r.to_le_bytes()]),
                    })
                    .collect(),
            );
        }
        for s in 0..total {
            let point = Point(fnv1a64(&[job.as_bytes(), &s.to_le_bytes()]));
            if let Some(v) = ring.get(&point) {
                out.set(s, Some(ordered[v.index].id.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::average::tests::insts;

    #[test]
    fn a_join_only_takes_and_the_leave_gives_back() {
        let two = insts(&["a", "b"]);
        let three = insts(&["a", "b", "c"]);
        let before = ConsistentHash.assign("orders", 64, &two, None);
        let after = ConsistentHash.assign("orders", 64, &three, None);
        let moves = before.moves_to(&after);
        assert!(!moves.is_empty(), "c should take something of 64 shards");
        assert!(
            moves
                .iter()
                .all(|m| m.to.as_ref().map(|i| i.as_str()) == Some("c"))
        );
        let back = ConsistentHash.assign("orders", 64, &two, Some(&after));
        assert_eq!(back, before);
    }

    #[test]
    fn weight_scales_the_share() {
        let mut eligible = insts(&["a", "b"]);
        eligible[0].weight = 4;
        let a = ConsistentHash.assign("orders", 1000, &eligible, None);
        let counts = a.counts(&eligible);
        let (ca, cb) = (
            counts.values().next().unwrap(),
            counts.values().nth(1).unwrap(),
        );
        assert!(*ca > 2 * cb, "weight 4 vs 1 gave {ca} vs {cb}");
    }
}
