//! The difference between two assignments, shard by shard.

use crate::InstanceId;

/// One shard changing owner (`None` = unassigned, or the shard does not exist on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub shard: u32,
    pub from: Option<InstanceId>,
    pub to: Option<InstanceId>,
}

/// Every shard whose owner differs between two assignments, ascending by shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves(Vec<Move>);

impl Moves {
    pub(crate) fn new(moves: Vec<Move>) -> Self {
        Self(moves)
    }

    /// Number of shards that change owner.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The moves, ascending by shard.
    pub fn iter(&self) -> impl Iterator<Item = &Move> {
        self.0.iter()
    }
}
