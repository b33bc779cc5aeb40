//! An assignment: for every shard `0..total`, the instance that should own it (or none, when no
//! instance is eligible).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Instance, InstanceId, Moves};

/// Owner per shard, indexed by shard number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Assignment {
    owners: Vec<Option<InstanceId>>,
}

impl Assignment {
    /// An assignment from an owner per shard.
    pub fn from_owners(owners: Vec<Option<InstanceId>>) -> Self {
        Self { owners }
    }

    /// `total` shards, none assigned.
    pub fn unassigned(total: u32) -> Self {
        Self {
            owners: vec![None; total as usize],
        }
    }

    /// Number of shards.
    pub fn total(&self) -> u32 {
        u32::try_from(self.owners.len()).unwrap_or(u32::MAX)
    }

    /// The owner of `shard`, if assigned (and `None` for a shard beyond `total`).
    pub fn owner(&self, shard: u32) -> Option<&InstanceId> {
        self.owners.get(shard as usize).and_then(Option::as_ref)
    }

    /// Owner per shard, indexed by shard number.
    pub fn owners(&self) -> &[Option<InstanceId>] {
        &self.owners
    }

    /// Sets the owner of `shard` (ignored beyond `total`).
    pub fn set(&mut self, shard: u32, owner: Option<InstanceId>) {
        if let Some(slot) = self.owners.get_mut(shard as usize) {
            *slot = owner;
        }
    }

    /// The shards `id` owns, ascending.
    pub fn shards_of(&self, id: &InstanceId) -> Vec<u32> {
        self.iter()
            .filter(|(_, o)| *o == Some(id))
            .map(|(s, _)| s)
            .collect()
    }

    /// `(shard, owner)` for every shard.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Option<&InstanceId>)> {
        self.owners
            .iter()
            .enumerate()
            .map(|(s, o)| (s as u32, o.as_ref()))
    }

    /// Number of shards that have no owner.
    pub fn unassigned_count(&self) -> usize {
        self.owners.iter().filter(|o| o.is_none()).count()
    }

    /// Shards held per instance, for every instance in `eligible` (zero included) and every
    /// owner that appears.
    pub fn counts(&self, eligible: &[Instance]) -> BTreeMap<InstanceId, u32> {
        let mut counts: BTreeMap<InstanceId, u32> =
            eligible.iter().map(|i| (i.id.clone(), 0)).collect();
        for owner in self.owners.iter().flatten() {
            *counts.entry(owner.clone()).or_default() += 1;
        }
        counts
    }

    /// Largest minus smallest shard count over `eligible` (0 when there is none).
    pub fn spread(&self, eligible: &[Instance]) -> u32 {
        let counts = self.counts(eligible);
        let max = counts.values().max().copied().unwrap_or(0);
        let min = counts.values().min().copied().unwrap_or(0);
        max - min
    }

    /// What changes from `self` to `next`: every shard whose owner differs. A shard that exists
    /// in only one of the two (the total changed) counts as moving from or to nobody.
    pub fn moves_to(&self, next: &Assignment) -> Moves {
        let len = self.owners.len().max(next.owners.len());
        let moves = (0..len)
            .filter_map(|s| {
                let from = self.owners.get(s).cloned().flatten();
                let to = next.owners.get(s).cloned().flatten();
                (from != to).then_some(crate::Move {
                    shard: s as u32,
                    from,
                    to,
                })
            })
            .collect();
        Moves::new(moves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    #[test]
    fn counts_spread_and_shards() {
        let a = Assignment::from_owners(vec![Some(id("a")), Some(id("a")), Some(id("b")), None]);
        let eligible = [
            Instance::new(id("a")),
            Instance::new(id("b")),
            Instance::new(id("c")),
        ];
        assert_eq!(a.counts(&eligible)[&id("c")], 0);
        assert_eq!(a.spread(&eligible), 2);
        assert_eq!(a.shards_of(&id("a")), [0, 1]);
        assert_eq!(a.unassigned_count(), 1);
        assert_eq!(a.owner(9), None);
    }

    #[test]
    fn moves_cover_changed_owners_and_a_changed_total() {
        let before = Assignment::from_owners(vec![Some(id("a")), Some(id("b"))]);
        let after = Assignment::from_owners(vec![Some(id("a")), Some(id("c")), Some(id("c"))]);
        let moves = before.moves_to(&after);
        let got: Vec<_> = moves
            .iter()
            .map(|m| (m.shard, m.from.clone(), m.to.clone()))
            .collect();
        assert_eq!(
            got,
            [(1, Some(id("b")), Some(id("c"))), (2, None, Some(id("c")))]
        );
    }
}
