//! [`Mine`]: what an assignment says to this agent — the shards it gives me, and what a claim
//! of them is fenced by. The full record (every instance, every shard's owner) is decoded,
//! looked at once, and dropped: nothing this agent decides depends on who else owns what, and
//! at 10k jobs × 20 agents the full records were most of an agent's memory.

use shardjob_coordinator::model::AssignmentRecord;

/// My part of one job's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mine {
    /// The assignment key's mod revision: a claim is guarded by it (a stale view never claims).
    pub revision: i64,
    /// The assignment's generation, written into the owner keys a claim creates.
    pub generation: u64,
    /// The shards the assignment gives me, ascending.
    shards: Box<[u32]>,
}

impl Mine {
    /// My part of `record` (read at `revision`); `None` when it gives me no shard.
    pub fn of(record: &AssignmentRecord, revision: i64, me: &str) -> Option<Self> {
        let shards: Box<[u32]> = (0..record.owners.len() as u32)
            .filter(|&s| record.owner(s).is_some_and(|o| o.as_str() == me))
            .collect();
        (!shards.is_empty()).then_some(Self {
            revision,
            generation: record.generation,
            shards,
        })
    }

    /// True when `shard` is mine.
    pub fn has(&self, shard: u32) -> bool {
        self.shards.binary_search(&shard).is_ok()
    }

    /// My shards, ascending.
    pub fn shards(&self) -> &[u32] {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardjob_sharding::InstanceId;

    fn record(instances: &[&str], owners: &[Option<u32>]) -> AssignmentRecord {
        AssignmentRecord {
            generation: 7,
            instances: instances
                .iter()
                .map(|i| InstanceId::new(*i).expect("a valid id"))
                .collect(),
            owners: owners.to_vec(),
        }
    }

    #[test]
    fn keeps_only_my_shards() {
        let r = record(&["a", "b"], &[Some(0), Some(1), None, Some(1), Some(0)]);
        let mine = Mine::of(&r, 42, "b").expect("b has shards");
        assert_eq!(mine.shards(), [1, 3]);
        assert_eq!((mine.revision, mine.generation), (42, 7));
        assert!(mine.has(3) && !mine.has(0) && !mine.has(2) && !mine.has(9));
        assert_eq!(
            Mine::of(&r, 42, "a").map(|m| m.shards().to_vec()),
            Some(vec![0, 4])
        );
    }

    #[test]
    fn nothing_for_an_instance_without_shards() {
        // Listed but given nothing (a hand-written record), or not listed at all.
        let r = record(&["a", "b"], &[Some(0), Some(0)]);
        assert_eq!(Mine::of(&r, 1, "b"), None);
        assert_eq!(Mine::of(&r, 1, "c"), None);
        assert_eq!(Mine::of(&record(&[], &[]), 1, "a"), None);
    }
}
