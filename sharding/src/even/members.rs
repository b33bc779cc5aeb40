//! [`Members`]: the live instances one or more jobs are evened out over, prepared once (ids,
//! weights, an index by id), and [`Job`]: one job's view of them while it is evened out.

use std::collections::HashMap;

use super::Load;
use crate::fair::{Share, shares_by_weight};
use crate::{Assignment, Instance, InstanceId};

/// The live instances of an eligible set, prepared for evening out. Jobs with the same
/// eligible instances share one (the planner builds it once per handler and selector: at 10k
/// jobs over 20 instances, building it per job was a fifth of a departure's pass).
#[derive(Debug, Clone, Default)]
pub struct Members {
    ids: Vec<InstanceId>,
    weight: Vec<u64>,
    index: HashMap<InstanceId, usize, foldhash::fast::RandomState>,
}

impl Members {
    /// The instances of `eligible` that `live` calls live (a parked instance is not).
    pub fn new(eligible: &[Instance], live: impl Fn(&InstanceId) -> bool) -> Self {
        let live: Vec<&Instance> = eligible.iter().filter(|i| live(&i.id)).collect();
        Self {
            ids: live.iter().map(|i| i.id.clone()).collect(),
            weight: live.iter().map(|i| i.effective_weight()).collect(),
            index: live
                .iter()
                .enumerate()
                .map(|(k, i)| (i.id.clone(), k))
                .collect(),
        }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One job's live members: their fair shares of it, the shards they hold in `next`, and their
/// loads over every job (a copy of theirs in [`Load`], kept in step with it).
pub(super) struct Job<'a> {
    m: &'a Members,
    pub fair: Vec<Share>,
    pub counts: Vec<u32>,
    loads: Vec<u64>,
}

impl<'a> Job<'a> {
    pub fn new(next: &Assignment, m: &'a Members, load: &Load) -> Self {
        let mut counts = vec![0u32; m.len()];
        for o in next.owners().iter().flatten() {
            if let Some(&k) = m.index.get(o) {
                counts[k] += 1;
            }
        }
        Self {
            m,
            fair: shares_by_weight(next.total(), &m.weight),
            counts,
            loads: m.ids.iter().map(|id| load.of(id)).collect(),
        }
    }

    /// The member index of `id`, if it is one.
    pub fn index(&self, id: &InstanceId) -> Option<usize> {
        self.m.index.get(id).copied()
    }

    /// Member `k`'s id.
    pub fn id(&self, k: usize) -> &InstanceId {
        &self.m.ids[k]
    }

    /// `a`'s load after adding `da` against `b`'s after adding `db`, weights counted.
    fn cmp(&self, a: usize, da: i64, b: usize, db: i64) -> std::cmp::Ordering {
        let at = |k: usize, d: i64| u128::from(self.loads[k].saturating_add_signed(d));
        let w = &self.m.weight;
        (at(a, da) * u128::from(w[b])).cmp(&(at(b, db) * u128::from(w[a])))
    }

    /// The least loaded (after taking one more) below its ceiling, other than `not`.
    pub fn receiver(&self, not: Option<usize>) -> Option<usize> {
        (0..self.m.len())
            .filter(|&k| self.counts[k] < self.fair[k].ceil && Some(k) != not)
            .min_by(|&a, &b| self.cmp(a, 1, b, 1))
    }

    /// The most loaded (after giving one) above its floor, other than `not`.
    pub fn giver(&self, not: Option<usize>) -> Option<usize> {
        (0..self.m.len())
            .filter(|&k| self.counts[k] > self.fair[k].floor && Some(k) != not)
            .max_by(|&a, &b| self.cmp(a, -1, b, -1))
    }

    /// True when `v` stays at least as loaded as `u` after giving it one shard.
    pub fn helps(&self, v: usize, u: usize) -> bool {
        self.cmp(v, -1, u, 1).is_ge()
    }

    /// Moves `shard` from member `v` to member `u`, in `next` and in both loads.
    pub fn give(&mut self, next: &mut Assignment, load: &mut Load, shard: u32, v: usize, u: usize) {
        next.set(shard, Some(self.m.ids[u].clone()));
        self.counts[v] -= 1;
        self.counts[u] += 1;
        self.loads[v] = self.loads[v].saturating_sub(1);
        self.loads[u] += 1;
        load.shift(&self.m.ids[v], &self.m.ids[u]);
    }
}
