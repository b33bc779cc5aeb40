//! The small records: assignments, owners, running markers, cursors, triggers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shardjob_sharding::{Assignment, InstanceId};

/// One job's assignment, as the leader plans it and the CLI shows it. It is stored per
/// instance (`assigned/<instance>/<page>`, [`super::AssignedPage`]), not per job.
///
/// `owners[s]` is an index into `instances` (or `null`: nobody is eligible), which keeps the
/// value small for jobs with many shards: `{"generation":3,"instances":["a","b"],"owners":[0,0,1,1]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Rises by one with every change of this job's assignment.
    pub generation: u64,
    /// Sorted, distinct owners.
    pub instances: Vec<InstanceId>,
    pub owners: Vec<Option<u32>>,
}

impl AssignmentRecord {
    /// The record of `assignment` at `generation`.
    pub fn from_assignment(generation: u64, assignment: &Assignment) -> Self {
        let mut instances: Vec<InstanceId> =
            assignment.owners().iter().flatten().cloned().collect();
        instances.sort();
        instances.dedup();
        // The leader keeps one per job: a collected vector starts at four slots (64 bytes),
        // and most jobs have one or two owners.
        instances.shrink_to_fit();
        let owners = assignment
            .owners()
            .iter()
            .map(|o| {
                o.as_ref()
                    .and_then(|id| instances.binary_search(id).ok())
                    .map(|i| i as u32)
            })
            .collect();
        Self {
            generation,
            instances,
            owners,
        }
    }

    /// The assignment this record describes; an owner index out of range is an error.
    pub fn to_assignment(&self) -> Result<Assignment, String> {
        let owners = self
            .owners
            .iter()
            .enumerate()
            .map(|(shard, o)| {
                match o {
                None => Ok(None),
                Some(i) => self.instances.get(*i as usize).cloned().map(Some).ok_or_else(|| {
                    format!(
                        "shard {shard} names instance index {i}, but only {} instances are listed",
                        self.instances.len()
                    )
                }),
            }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Assignment::from_owners(owners))
    }

    /// A record of `owners` by name, one per shard (`-` for nobody), for tests.
    #[cfg(test)]
    pub(crate) fn of_names(generation: u64, owners: &[&str]) -> Self {
        let owners = owners
            .iter()
            .map(|o| (*o != "-").then(|| InstanceId::new(*o).expect("a valid id")))
            .collect();
        Self::from_assignment(generation, &Assignment::from_owners(owners))
    }

    /// The owner of `shard`, by id.
    pub fn owner(&self, shard: u32) -> Option<&InstanceId> {
        let index = (*self.owners.get(shard as usize)?)?;
        self.instances.get(index as usize)
    }
}

/// `owners/<job>/<shard>`: bound to the owner's lease; its create revision is the fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub instance: InstanceId,
    /// The assignment generation the claim acted on.
    pub generation: u64,
}

/// `running/<job>/<shard>`: an execution of a failover job is in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub instance: InstanceId,
    pub fire_time: DateTime<Utc>,
    pub token: i64,
}

/// `cursors/<job>/<shard>`: what the previous owner ran, for the next owner.
///
/// The claim txn reads the old cursor and writes `{"released": false}` (carrying `last_fire`
/// over); the release txn writes `{"last_fire": .., "released": true}`. A new owner trusts
/// `last_fire` only when `released` is true: after a crash the dead owner may have run fires
/// after its last recorded one, and running them again would be a repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every fire up to this one was run (or coalesced) by an owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    /// Written by a clean release (true) or by a claim (false).
    #[serde(default)]
    pub released: bool,
}

/// `done/<job>/<shard>`: a one-shot job's shard ran to its end (written by its owner, fenced
/// by its token). The leader assigns a done shard to nobody, and retires the job once every
/// shard is done and the retention has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub instance: InstanceId,
    pub fire_time: DateTime<Utc>,
    /// How the execution ended: ok, failed, timeout or cancelled.
    pub outcome: String,
    pub token: i64,
    pub ended_at: DateTime<Utc>,
}

/// `triggers/<job>`: run every shard once now; `id` deduplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub id: String,
    pub requested_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    #[test]
    fn assignment_record_is_compact_and_round_trips() {
        let a = Assignment::from_owners(vec![Some(id("b")), Some(id("a")), None, Some(id("b"))]);
        let r = AssignmentRecord::from_assignment(7, &a);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"generation":7,"instances":["a","b"],"owners":[1,0,null,1]}"#
        );
        assert_eq!(r.to_assignment().unwrap(), a);
        assert_eq!(r.owner(0), Some(&id("b")));
        assert_eq!(r.owner(2), None);
        assert_eq!(r.owner(99), None);
    }

    #[test]
    fn an_index_out_of_range_is_an_error_not_a_panic() {
        let r: AssignmentRecord =
            serde_json::from_str(r#"{"generation":1,"instances":["a"],"owners":[0,5]}"#).unwrap();
        let err = r.to_assignment().unwrap_err();
        assert!(err.contains("shard 1 names instance index 5"), "{err}");
        assert_eq!(r.owner(1), None);
    }
}
