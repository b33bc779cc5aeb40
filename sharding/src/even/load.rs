//! [`Load`]: shards per instance over every job, the planner's running count.

use std::collections::HashMap;

use crate::{Assignment, InstanceId};

/// Shards per instance over every job. Hashed with foldhash (as the agent's hot maps are):
/// the planner looks an instance up for every shard of every job, and std's SipHash was a
/// tenth of a departure's pass in bench-plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load(HashMap<InstanceId, u64, foldhash::fast::RandomState>);

impl Load {
    /// The shards `id` holds over every job.
    pub fn of(&self, id: &InstanceId) -> u64 {
        self.0.get(id).copied().unwrap_or(0)
    }

    /// Counts `n` more shards for `id`.
    pub fn count(&mut self, id: &InstanceId, n: u64) {
        *self.0.entry(id.clone()).or_default() += n;
    }

    /// Counts every owned shard of `a`.
    pub fn add(&mut self, a: &Assignment) {
        for id in a.owners().iter().flatten() {
            *self.0.entry(id.clone()).or_default() += 1;
        }
    }

    /// Uncounts every owned shard of `a` (never below zero).
    pub fn remove(&mut self, a: &Assignment) {
        for id in a.owners().iter().flatten() {
            if let Some(n) = self.0.get_mut(id) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Moves one shard's count from `from` to `to`.
    pub(super) fn shift(&mut self, from: &InstanceId, to: &InstanceId) {
        if let Some(n) = self.0.get_mut(from) {
            *n = n.saturating_sub(1);
        }
        self.count(to, 1);
    }
}
