//! [`Refill`]: rebuilds a growing B-tree with full nodes each time it has doubled.
//!
//! A B-tree filled in key order (a listing, the first pass's assignments, an agent's first
//! claims) splits every full node in two and keeps its nodes half full: ~150 bytes per job of
//! a map whose entries are 80. Rebuilt from its sorted entries its nodes are full. Only growth
//! splits nodes (a value replaced in place changes nothing), so a map is rebuilt when it has
//! doubled since its last rebuild: O(1) per entry over its life, and nothing on the passes
//! that only move shards.

use std::collections::BTreeMap;

/// When a map was last rebuilt; ask [`Refill::check`] after growing it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    built_at: usize,
}

impl Refill {
    /// Smaller maps are left as they are.
    pub const MIN: usize = 1024;

    /// Rebuilds `map` if it has at least [`Self::MIN`] entries and twice as many as at its
    /// last rebuild; true when it did. A map that shrank counts from its new size.
    pub fn check<K: Ord, V>(&mut self, map: &mut BTreeMap<K, V>) -> bool {
        let len = map.len();
        self.built_at = self.built_at.min(len);
        if len < Self::MIN || len < 2 * self.built_at {
            return false;
        }
        *map = std::mem::take(map).into_iter().collect();
        self.built_at = len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_at_the_minimum_then_each_time_the_map_doubled_keeping_every_entry() {
        let mut map = BTreeMap::new();
        let mut refill = Refill::default();
        let mut rebuilt_at = Vec::new();
        for i in 0..5000u32 {
            map.insert(i, i * 2);
            if refill.check(&mut map) {
                rebuilt_at.push(map.len());
            }
        }
        assert_eq!(rebuilt_at, [1024, 2048, 4096]);
        assert!(
            map.iter()
                .enumerate()
                .all(|(i, (k, v))| *k == i as u32 && *v == k * 2)
        );
        // Shrunk to 1500, it is rebuilt again once it is back at 3000, not at 8192.
        map.retain(|k, _| *k < 1500);
        assert!(!refill.check(&mut map));
        for i in 1500..3000 {
            map.insert(i, i * 2);
        }
        assert!(refill.check(&mut map));
    }
}
