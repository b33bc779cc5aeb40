//! [`Mine`]: what my page says of one job — the shards it gives me, and what a claim of them
//! is fenced by (the page's mod revision).

use shardjob_coordinator::model::PageEntry;

/// My part of one job's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mine {
    /// The mod revision of the page it was read from: a claim is guarded by it (a stale view
    /// never claims).
    pub revision: i64,
    /// The assignment's generation, written into the owner keys a claim creates.
    pub generation: u64,
    /// The shards the assignment gives me, ascending.
    shards: Box<[u32]>,
}

impl Mine {
    /// My part as `entry` (read at `revision`) says; `None` when it gives me no shard. Takes
    /// the entry: every job of a page comes through here at each of the page's events.
    pub fn of(entry: PageEntry, revision: i64) -> Option<Self> {
        let mut shards = entry.shards;
        shards.sort_unstable();
        shards.dedup();
        (!shards.is_empty()).then(|| Self {
            revision,
            generation: entry.generation,
            shards: shards.into_boxed_slice(),
        })
    }

    /// True when `shard` is mine.
    pub fn has(&self, shard: u32) -> bool {
        self.shards.binary_search(&shard).is_ok()
    }

    /// True when `other` gives me the same shards (whatever its generation and revision: other
    /// instances' shards of the job may have moved).
    pub fn same_shards(&self, other: &Mine) -> bool {
        self.shards == other.shards
    }

    /// My shards, ascending.
    pub fn shards(&self) -> &[u32] {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shards: &[u32]) -> PageEntry {
        PageEntry {
            generation: 7,
            total: 8,
            shards: shards.to_vec(),
        }
    }

    #[test]
    fn keeps_my_shards_sorted_with_the_page_revision() {
        let mine = Mine::of(entry(&[3, 1, 3]), 42).expect("shards");
        assert_eq!(mine.shards(), [1, 3]);
        assert_eq!((mine.revision, mine.generation), (42, 7));
        assert!(mine.has(3) && !mine.has(0) && !mine.has(2) && !mine.has(9));
    }

    #[test]
    fn nothing_for_an_entry_without_shards() {
        assert_eq!(Mine::of(entry(&[]), 1), None);
    }
}
