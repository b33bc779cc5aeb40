//! [`ShardMap`]: the shards one job has on this agent, as a vector sorted by shard number.
//!
//! A `BTreeMap` allocates a whole node (11 slots) for its first entry: ~1.6 KB per job for the
//! one shard most jobs have here. The sorted vector allocates what it holds (it grows one
//! entry at a time: a `Vec`'s first push reserves four), and most jobs hold one to a few
//! shards; lookups are a binary search.

use super::shard::Shard;

/// Shards by number, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap(Vec<(u32, Shard)>);

impl ShardMap {
    fn find(&self, shard: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&shard, |(s, _)| *s)
    }

    pub fn get(&self, shard: &u32) -> Option<&Shard> {
        self.find(*shard).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, shard: &u32) -> Option<&mut Shard> {
        self.find(*shard).ok().map(|i| &mut self.0[i].1)
    }

    /// The shard's entry, made empty if it had none.
    pub fn slot(&mut self, shard: u32) -> &mut Shard {
        let i = match self.find(shard) {
            Ok(i) => i,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (shard, Shard::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn remove(&mut self, shard: &u32) -> Option<Shard> {
        let removed = self.find(*shard).ok().map(|i| self.0.remove(i).1);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        removed
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&u32, &mut Shard) -> bool) {
        self.0.retain_mut(|(s, sh)| keep(s, sh));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Shard)> {
        self.0.iter().map(|(s, sh)| (s, sh))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut Shard)> {
        self.0.iter_mut().map(|(s, sh)| (&*s, sh))
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(s, _)| s)
    }

    pub fn values(&self) -> impl Iterator<Item = &Shard> {
        self.0.iter().map(|(_, sh)| sh)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Shard> {
        self.0.iter_mut().map(|(_, sh)| sh)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::shard::Local;

    #[test]
    fn keeps_shards_sorted_and_finds_them() {
        let mut m = ShardMap::default();
        for s in [5, 1, 3] {
            m.slot(s).local = Local::Claiming;
        }
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 3, 5]);
        assert!(m.get(&3).is_some() && m.get(&2).is_none());
        assert_eq!(
            m.slot(3).local,
            Local::Claiming,
            "an existing entry is returned"
        );
        assert!(m.remove(&1).is_some() && m.len() == 2);
        m.retain(|s, _| *s != 5);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [3]);
    }
}
