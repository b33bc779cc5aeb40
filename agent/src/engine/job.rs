//! What the agent knows of one job: its config (if this agent can run it), the assignment, and
//! the shards it has seen or holds.

use shardjob_coordinator::model::{AssignmentRecord, JobConfig};

use super::shard::Shard;
use super::shard_map::ShardMap;
use crate::schedule::FireSchedule;

/// True when `assignment` gives `shard` to `me` (a free function, so a caller iterating the
/// job's shards mutably can still ask).
pub fn assigns(assignment: &Option<(AssignmentRecord, i64)>, shard: u32, me: &str) -> bool {
    assignment
        .as_ref()
        .and_then(|(r, _)| r.owner(shard))
        .is_some_and(|o| o.as_str() == me)
}

/// A job this agent can run: it has the handler and the config compiles.
#[derive(Debug, Clone)]
pub struct Spec {
    pub config: JobConfig,
    pub schedule: FireSchedule,
    /// Bumped when the schedule changes; fires scheduled under an older version are dropped.
    pub version: u64,
}

/// One job, as this agent sees it.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    pub spec: Option<Spec>,
    /// The assignment and the mod revision it was read at.
    pub assignment: Option<(AssignmentRecord, i64)>,
    /// Shards seen or held; a shard with nothing known is absent.
    pub shards: ShardMap,
}

impl JobState {
    /// True when the assignment gives `shard` to `me`.
    pub fn assigned_to(&self, shard: u32, me: &str) -> bool {
        assigns(&self.assignment, shard, me)
    }

    /// True when `me` may fire `shard` now: it holds it, and the assignment still gives it to
    /// `me`.
    pub fn fireable(&self, shard: u32, me: &str) -> bool {
        self.assigned_to(shard, me)
            && self
                .shards
                .get(&shard)
                .is_some_and(|sh| matches!(sh.local, super::shard::Local::Held(_)))
    }

    /// How many shards the assignment gives `me`.
    pub fn assigned_count(&self, me: &str) -> usize {
        self.assignment.as_ref().map_or(0, |(r, _)| {
            (0..r.owners.len() as u32)
                .filter(|s| r.owner(*s).is_some_and(|o| o.as_str() == me))
                .count()
        })
    }

    /// True when the assignment gives `me` any shard.
    pub fn names(&self, me: &str) -> bool {
        self.assignment
            .as_ref()
            .is_some_and(|(r, _)| r.instances.iter().any(|i| i.as_str() == me))
    }

    /// True when a change of `shard`'s owner key can change what `me` decides: the shard is
    /// assigned to me, its owner as seen is me, or I hold a part in it.
    pub fn concerns(&self, shard: u32, me: &str) -> bool {
        self.assigned_to(shard, me)
            || self.shards.get(&shard).is_some_and(|s| {
                s.seen.as_ref().is_some_and(|o| o.instance == me)
                    || s.local != super::shard::Local::Idle
            })
    }

    /// Runs are allowed for this job now: a config this agent can run, not disabled.
    pub fn runnable(&self) -> Option<&Spec> {
        self.spec.as_ref().filter(|s| !s.config.disabled)
    }

    /// Drops the entry of `shard` if nothing is known of it any more.
    pub fn prune(&mut self, shard: u32) {
        if self.shards.get(&shard).is_some_and(Shard::is_empty) {
            self.shards.remove(&shard);
        }
    }
}
