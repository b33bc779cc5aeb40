//! What the agent keeps per job it can run (it has the handler and a valid config).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use shardjob_coordinator::model::JobConfig;
use tokio::sync::Semaphore;

use crate::job::DynJob;
use crate::schedule::FireSchedule;

pub(crate) struct JobEntry {
    pub config: JobConfig,
    pub schedule: FireSchedule,
    /// Bumped when the schedule changes; fires scheduled under an older version are dropped.
    pub version: u64,
    pub handler: Arc<dyn DynJob>,
    pub limit: Option<Arc<Semaphore>>,
    /// A fire that arrived while the shard's previous run was going (coalesced: the latest).
    pub pending_misfire: BTreeMap<u32, DateTime<Utc>>,
    /// The latest fire each shard ran here.
    pub last_run: BTreeMap<u32, DateTime<Utc>>,
    /// The previous owner's `last_fire`, when it released cleanly.
    pub floor: BTreeMap<u32, DateTime<Utc>>,
}

impl JobEntry {
    /// The `last_fire` to record when releasing `shard`: everything up to it was run.
    pub fn cursor_value(&self, shard: u32) -> Option<DateTime<Utc>> {
        match (self.last_run.get(&shard), self.floor.get(&shard)) {
            (Some(a), Some(b)) => Some(*a.max(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    /// Forgets per-shard state of the old lease (self-fence).
    pub fn forget_shard_state(&mut self) {
        self.pending_misfire.clear();
        self.last_run.clear();
        self.floor.clear();
    }
}
