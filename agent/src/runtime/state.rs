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
    /// When this agent claimed each shard it holds.
    pub claimed_at: BTreeMap<u32, DateTime<Utc>>,
}

impl JobEntry {
    /// The `last_fire` to record when releasing `shard`: every fire up to it is accounted for.
    /// This owner ran (or coalesced) every fire after its claim; the fire just before its claim
    /// it caught up, or it lies in a documented gap (a crash before). So the value is the latest
    /// of: its last run, the cursor it inherited, and the last fire at or before its claim.
    /// (Recording only runs would leave `null` after a short tenure without a fire, and the next
    /// owner could then not catch up a fire missed during the following hand-off.)
    pub fn cursor_value(&self, shard: u32) -> Option<DateTime<Utc>> {
        let at_claim = self
            .claimed_at
            .get(&shard)
            .and_then(|t| self.schedule.latest_at_or_before(*t));
        [
            self.last_run.get(&shard).copied(),
            self.floor.get(&shard).copied(),
            at_claim,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Forgets per-shard state of the old lease (self-fence).
    pub fn forget_shard_state(&mut self) {
        self.pending_misfire.clear();
        self.last_run.clear();
        self.floor.clear();
        self.claimed_at.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardjob_coordinator::model::{HumanDuration, Schedule};
    use std::time::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-11-21T10:00:{s}Z").parse().unwrap()
    }

    fn entry() -> JobEntry {
        let schedule = Schedule::Every(HumanDuration(Duration::from_secs(1)));
        JobEntry {
            config: JobConfig::new(schedule.clone(), 1),
            schedule: FireSchedule::new(&schedule, "UTC").unwrap(),
            version: 1,
            handler: Arc::new(crate::job_fn(|_| async { Ok(()) })),
            limit: None,
            pending_misfire: BTreeMap::new(),
            last_run: BTreeMap::new(),
            floor: BTreeMap::new(),
            claimed_at: BTreeMap::new(),
        }
    }

    #[test]
    fn the_cursor_accounts_for_fires_up_to_the_claim_even_without_a_run() {
        let mut e = entry();
        assert_eq!(e.cursor_value(0), None, "nothing known");
        // Claimed at :05.4 and released before a fire ran: :05 is accounted for.
        e.claimed_at.insert(0, t("05.4"));
        assert_eq!(e.cursor_value(0), Some(t("05")));
        // An inherited cursor or a run that is later wins.
        e.floor.insert(0, t("03"));
        assert_eq!(e.cursor_value(0), Some(t("05")));
        e.last_run.insert(0, t("08"));
        assert_eq!(e.cursor_value(0), Some(t("08")));
    }
}
