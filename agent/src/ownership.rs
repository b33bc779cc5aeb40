//! The ownership engine, pure: given what an agent sees of one job, which shards should it claim
//! and which should it release? No I/O, no clock; the runtime carries out the decisions and
//! feeds the results back.
//!
//! Rules (DESIGN §3):
//! - claim a shard when the assignment gives it to me and **no owner key exists** (a previous
//!   owner's key must be deleted first — by its release or its lease's expiry); claims carry the
//!   assignment's mod revision, so a stale view can never claim;
//! - a shard is *mine* only while its owner key names me **and my current lease**: after a
//!   self-fence with a new lease, keys of the old lease are someone else's until they vanish;
//! - fire a shard only while it is mine and still assigned to me;
//! - release a mine shard that is no longer assigned to me once its execution (if any) ended.

use std::collections::{BTreeMap, BTreeSet};

use shardjob_coordinator::model::AssignmentRecord;

/// An owner key as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenOwner {
    pub instance: String,
    /// The key's create revision: the fencing token.
    pub token: i64,
    pub lease: i64,
}

/// Who "I" am right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me<'a> {
    pub id: &'a str,
    pub lease: i64,
}

/// What the runtime should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Claim these shards, guarded by the assignment's mod revision.
    Claim {
        shards: Vec<u32>,
        assignment_revision: i64,
        generation: u64,
    },
    /// Delete my owner key of `shard` (guarded by `token`) and write its cursor.
    Release { shard: u32, token: i64 },
}

/// What one agent knows about the shards of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardTable {
    /// The assignment and the mod revision it was read at.
    pub assignment: Option<(AssignmentRecord, i64)>,
    pub owners: BTreeMap<u32, SeenOwner>,
    pub claiming: BTreeSet<u32>,
    pub releasing: BTreeSet<u32>,
    pub running: BTreeSet<u32>,
}

impl ShardTable {
    /// True when the assignment gives `shard` to `id`.
    pub fn assigned_to(&self, shard: u32, id: &str) -> bool {
        self.assignment
            .as_ref()
            .and_then(|(r, _)| r.owner(shard))
            .is_some_and(|o| o.as_str() == id)
    }

    /// My token for `shard`, if its owner key is mine (my id and my current lease).
    pub fn mine(&self, shard: u32, me: Me<'_>) -> Option<i64> {
        self.owners
            .get(&shard)
            .filter(|o| o.instance == me.id && o.lease == me.lease)
            .map(|o| o.token)
    }

    /// Shards I may fire now, with their tokens: mine and still assigned to me.
    pub fn fireable(&self, me: Me<'_>) -> Vec<(u32, i64)> {
        self.owners
            .keys()
            .filter_map(|&s| self.mine(s, me).map(|t| (s, t)))
            .filter(|(s, _)| self.assigned_to(*s, me.id))
            .collect()
    }

    /// Shards whose owner key is mine, with tokens (assigned or not).
    pub fn held(&self, me: Me<'_>) -> Vec<(u32, i64)> {
        self.owners
            .keys()
            .filter_map(|&s| self.mine(s, me).map(|t| (s, t)))
            .collect()
    }

    /// True when the assignment gives `id` any shard.
    pub fn assignment_names(&self, id: &str) -> bool {
        self.assignment
            .as_ref()
            .is_some_and(|(r, _)| r.instances.iter().any(|i| i.as_str() == id))
    }

    /// True when a change of `shard`'s owner key can change what `id` decides: the shard is
    /// assigned to it, or its owner as last seen is it. Other changes are only recorded.
    pub fn concerns(&self, shard: u32, id: &str) -> bool {
        self.assigned_to(shard, id) || self.owners.get(&shard).is_some_and(|o| o.instance == id)
    }

    /// True when some owner key is mine (cheaper than `held(me).is_empty()`).
    pub fn holds_any(&self, me: Me<'_>) -> bool {
        self.owners
            .values()
            .any(|o| o.instance == me.id && o.lease == me.lease)
    }

    /// What to do now. `may_claim` is false while shutting down or without a valid session.
    pub fn decide(&self, me: Me<'_>, may_claim: bool) -> Vec<Decision> {
        let mut out = Vec::new();
        if let (true, Some((record, revision))) = (may_claim, &self.assignment) {
            let shards: Vec<u32> = (0..record.owners.len() as u32)
                .filter(|&s| self.assigned_to(s, me.id))
                .filter(|s| !self.owners.contains_key(s) && !self.claiming.contains(s))
                .collect();
            if !shards.is_empty() {
                out.push(Decision::Claim {
                    shards,
                    assignment_revision: *revision,
                    generation: record.generation,
                });
            }
        }
        for (shard, token) in self.held(me) {
            let done_with = !self.assigned_to(shard, me.id)
                && !self.running.contains(&shard)
                && !self.releasing.contains(&shard);
            if done_with {
                out.push(Decision::Release { shard, token });
            }
        }
        out
    }

    /// Releases of every held shard that is not running (a forced end of shutdown).
    pub fn release_all(&self, me: Me<'_>) -> Vec<Decision> {
        self.held(me)
            .into_iter()
            .filter(|(s, _)| !self.running.contains(s) && !self.releasing.contains(s))
            .map(|(shard, token)| Decision::Release { shard, token })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardjob_sharding::{Assignment, InstanceId};

    const ME: Me<'static> = Me { id: "me", lease: 7 };

    fn table(owners_by_shard: &[&str], revision: i64) -> ShardTable {
        let a = Assignment::from_owners(
            owners_by_shard
                .iter()
                .map(|o| (*o != "-").then(|| InstanceId::new(*o).unwrap()))
                .collect(),
        );
        ShardTable {
            assignment: Some((AssignmentRecord::from_assignment(3, &a), revision)),
            ..ShardTable::default()
        }
    }

    fn owner(instance: &str, token: i64, lease: i64) -> SeenOwner {
        SeenOwner {
            instance: instance.into(),
            token,
            lease,
        }
    }

    #[test]
    fn claims_free_assigned_shards_in_one_decision_with_the_assignment_revision() {
        let mut t = table(&["me", "other", "me", "me"], 42);
        t.owners.insert(3, owner("other", 10, 99)); // still held by the previous owner
        assert_eq!(
            t.decide(ME, true),
            [Decision::Claim {
                shards: vec![0, 2],
                assignment_revision: 42,
                generation: 3
            }]
        );
        assert!(
            t.decide(ME, false).is_empty(),
            "no claims while shutting down"
        );
        t.claiming.extend([0, 2]);
        assert!(
            t.decide(ME, true).is_empty(),
            "no second claim while one is in flight"
        );
    }

    #[test]
    fn only_changes_involving_me_concern_me() {
        let mut t = table(&["me", "other", "-"], 1);
        t.owners.insert(1, owner("other", 10, 5));
        t.owners.insert(2, owner("me", 11, 6)); // held by me, no longer assigned
        assert!(t.assignment_names("me") && t.assignment_names("other"));
        assert!(!t.assignment_names("third"));
        assert!(t.concerns(0, "me"), "assigned to me");
        assert!(!t.concerns(1, "me"), "another instance's shard");
        assert!(t.concerns(2, "me"), "owned by me");
        assert!(t.concerns(1, "other") && !t.concerns(2, "other"));
    }

    #[test]
    fn keys_of_my_old_lease_are_not_mine_and_block_a_claim() {
        let mut t = table(&["me"], 5);
        t.owners.insert(0, owner("me", 11, 6)); // lease 6: before a self-fence
        assert_eq!(t.mine(0, ME), None);
        assert!(t.fireable(ME).is_empty());
        assert!(
            t.decide(ME, true).is_empty(),
            "wait for the old key to vanish"
        );
        t.owners.remove(&0);
        assert!(matches!(t.decide(ME, true)[..], [Decision::Claim { .. }]));
    }

    #[test]
    fn release_waits_for_the_running_execution() {
        let mut t = table(&["other", "me"], 5);
        t.owners.insert(0, owner("me", 20, 7));
        t.owners.insert(1, owner("me", 21, 7));
        t.running.insert(0);
        assert!(
            t.decide(ME, true).is_empty(),
            "shard 0 still runs; shard 1 stays mine"
        );
        assert_eq!(
            t.fireable(ME),
            [(1, 21)],
            "a shard no longer assigned fires no more"
        );
        t.running.remove(&0);
        assert_eq!(
            t.decide(ME, true),
            [Decision::Release {
                shard: 0,
                token: 20
            }]
        );
        t.releasing.insert(0);
        assert!(t.decide(ME, true).is_empty());
    }

    #[test]
    fn a_deleted_assignment_releases_everything_and_release_all_skips_running() {
        let mut t = table(&["me", "me"], 5);
        t.owners.insert(0, owner("me", 20, 7));
        t.owners.insert(1, owner("me", 21, 7));
        t.running.insert(1);
        assert_eq!(
            t.release_all(ME),
            [Decision::Release {
                shard: 0,
                token: 20
            }]
        );
        t.assignment = None;
        assert_eq!(
            t.decide(ME, true),
            [Decision::Release {
                shard: 0,
                token: 20
            }]
        );
    }

    #[test]
    fn a_shrunk_total_releases_shards_beyond_it() {
        let mut t = table(&["me"], 9);
        t.owners.insert(0, owner("me", 20, 7));
        t.owners.insert(3, owner("me", 23, 7));
        assert_eq!(
            t.decide(ME, true),
            [Decision::Release {
                shard: 3,
                token: 23
            }]
        );
    }
}
