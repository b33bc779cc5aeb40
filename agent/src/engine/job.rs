//! What the agent knows of one job: its config (if this agent can run it), my part of the
//! assignment, and the shards it has seen or holds.
//!
//! Kept small on purpose: an agent holds one [`JobState`] per job of the namespace it can run
//! or has a part in, inline in a hash table sized to a power of two. The spec is boxed (most
//! of a job's bytes, and only for jobs this agent can run), and the assignment is reduced to
//! [`Mine`].

use super::mine::Mine;
use super::run_config::RunConfig;
use super::shard::Shard;
use super::shard_map::ShardMap;
use crate::schedule::FireSchedule;

/// True when `mine` gives `shard` to me (a free function, so a caller iterating the job's
/// shards mutably can still ask).
pub fn assigns(mine: &Option<Mine>, shard: u32) -> bool {
    mine.as_ref().is_some_and(|m| m.has(shard))
}

/// A job this agent can run: it has the handler and the config compiles.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What running it takes of its config; shared with the runtime, which keeps what the
    /// job's executions share while this is the same one (a changed config is a new one).
    pub config: std::sync::Arc<RunConfig>,
    pub schedule: FireSchedule,
    /// Bumped when the schedule changes; fires scheduled under an older version are dropped.
    pub version: u64,
    /// A fire of this version is in the heap. A job none of whose shards can fire here has
    /// none: its fire is not put back when it pops, and `Engine::arm` puts the next one in
    /// once a shard of it is held and assigned here.
    pub armed: bool,
}

/// One job, as this agent sees it.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    pub spec: Option<Box<Spec>>,
    /// What the assignment gives me; `None` when it gives me nothing (or there is none).
    pub mine: Option<Mine>,
    /// Shards seen or held; a shard with nothing known is absent.
    pub shards: ShardMap,
}

impl JobState {
    /// True when the assignment gives `shard` to me.
    pub fn assigned_to(&self, shard: u32) -> bool {
        assigns(&self.mine, shard)
    }

    /// True when I may fire `shard` now: I hold it, and the assignment still gives it to me.
    pub fn fireable(&self, shard: u32) -> bool {
        self.assigned_to(shard)
            && self
                .shards
                .get(&shard)
                .is_some_and(|sh| matches!(sh.local, super::shard::Local::Held(_)))
    }

    /// How many shards the assignment gives me.
    pub fn assigned_count(&self) -> usize {
        self.mine.as_ref().map_or(0, |m| m.shards().len())
    }

    /// True when a change of `shard`'s owner key can change what `me` decides: the shard is
    /// assigned to me, its owner as seen is me, or I hold a part in it.
    pub fn concerns(&self, shard: u32, me: &str) -> bool {
        self.assigned_to(shard)
            || self.shards.get(&shard).is_some_and(|s| {
                s.seen.as_ref().is_some_and(|o| &*o.instance == me)
                    || s.local != super::shard::Local::Idle
            })
    }

    /// Runs are allowed for this job now: a config this agent can run, not disabled.
    pub fn runnable(&self) -> Option<&Spec> {
        self.spec.as_deref().filter(|s| !s.config.disabled)
    }

    /// Nothing known of this job any more: its entry can go.
    pub fn is_empty(&self) -> bool {
        self.spec.is_none() && self.mine.is_none() && self.shards.is_empty()
    }

    /// True when a shard of this job waits for its owner key's delete (`engine/waits.rs`).
    pub fn waits(&self) -> bool {
        self.shards.values().any(super::waits::waits)
    }

    /// Forgets the keys seen of shards that are neither assigned to me nor mine in any way
    /// (idle here): nobody here waits for their deletes. A claim that meets one again, should
    /// the shard come back, reads it anew.
    pub fn forget_unassigned_keys(&mut self) {
        let mine = &self.mine;
        self.shards.retain(|&s, sh| {
            if sh.local == super::shard::Local::Idle && !assigns(mine, s) {
                sh.seen = None;
            }
            !sh.is_empty()
        });
    }

    /// Drops the entry of `shard` if nothing is known of it any more.
    pub fn prune(&mut self, shard: u32) {
        if self.shards.get(&shard).is_some_and(Shard::is_empty) {
            self.shards.remove(&shard);
        }
    }
}
