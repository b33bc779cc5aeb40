//! [`ClusterView`]: a read-only snapshot of one namespace, for the CLI, tests and operators.
//!
//! One consistent (single-revision, paginated) read of the whole root, decoded. Values that do
//! not decode are listed in `problems` with their key instead of failing the read.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, KeyValue};
use serde::Serialize;

use crate::keys::{KeyKind, Keys};
use crate::kv::list_prefix;
use crate::model::{
    AssignedPage, AssignmentRecord, Cursor, Done, InstanceInfo, JobConfig, Owner, Running, Trigger,
    decode, decode_job, decode_page, records_of,
};
use shardjob_sharding::InstanceId;

/// Reading the namespace failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ViewError {
    #[error("reading {root}: {cause}")]
    Read {
        root: String,
        cause: crate::etcd_error::EtcdError,
    },
}

/// An owner key with its fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerView {
    pub owner: Owner,
    /// The owner key's create revision: the fencing token of its executions.
    pub token: i64,
    pub lease: i64,
    /// The key is bound to the lease its instance is registered with now (false: a key left by
    /// an earlier session of that instance, which it no longer acts on).
    pub current: bool,
}

/// Everything stored for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobView {
    pub config: Option<JobConfig>,
    pub assignment: Option<AssignmentRecord>,
    pub owners: BTreeMap<u32, OwnerView>,
    pub running: BTreeMap<u32, Running>,
    pub cursors: BTreeMap<u32, Cursor>,
    /// Shards of a one-shot that ran to their end.
    pub done: BTreeMap<u32, Done>,
    pub trigger: Option<Trigger>,
}

impl JobView {
    /// Shards that have an assignee in the assignment.
    pub fn assigned(&self) -> usize {
        self.assignment
            .as_ref()
            .map_or(0, |a| a.owners.iter().filter(|o| o.is_some()).count())
    }

    /// Assigned shards whose owner key names their assignee and is bound to the lease that
    /// instance is registered with now (a key of an earlier session is one the instance no
    /// longer acts on: it waits for that key to vanish before claiming again).
    pub fn owned_by_assignee(&self) -> usize {
        let Some(a) = &self.assignment else { return 0 };
        (0..a.owners.len() as u32)
            .filter(|s| {
                a.owner(*s).is_some_and(|assignee| {
                    self.owners
                        .get(s)
                        .is_some_and(|o| &o.owner.instance == assignee && o.current)
                })
            })
            .count()
    }

    /// Converged: an assignment exists, covers the config's total, and every assigned shard is
    /// owned by its assignee on its current lease.
    pub fn converged(&self) -> bool {
        match (&self.config, &self.assignment) {
            (Some(c), Some(a)) => {
                a.owners.len() == c.total as usize && self.owned_by_assignee() == self.assigned()
            }
            _ => false,
        }
    }
}

/// The current leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderView {
    pub instance: String,
    pub key: String,
    pub lease: i64,
    pub create_revision: i64,
}

/// A key whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub key: String,
    pub error: String,
}

/// A snapshot of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub revision: i64,
    pub instances: BTreeMap<String, InstanceInfo>,
    pub leader: Option<LeaderView>,
    pub jobs: BTreeMap<String, JobView>,
    pub disabled: BTreeSet<String>,
    pub problems: Vec<Problem>,
}

impl ClusterView {
    /// Reads the namespace of `keys`.
    pub async fn load(client: &Client, keys: &Keys) -> Result<Self, ViewError> {
        let listing = list_prefix(client, keys.root(), None)
            .await
            .map_err(|cause| ViewError::Read {
                root: keys.root().to_owned(),
                cause,
            })?;
        Ok(Self::from_kvs(keys, listing.revision, &listing.kvs))
    }

    /// Builds a view from raw key-values (pure; `load` reads them).
    pub fn from_kvs(keys: &Keys, revision: i64, kvs: &[KeyValue]) -> Self {
        let mut view = ClusterView {
            revision,
            ..Default::default()
        };
        let mut candidates: Vec<LeaderView> = Vec::new();
        let mut instance_leases: BTreeMap<String, i64> = BTreeMap::new();
        let mut pages: Vec<(Option<InstanceId>, AssignedPage)> = Vec::new();
        // Per (instance, page): the page's mod revision, and its stamp's.
        let mut page_revisions: BTreeMap<(String, u16), i64> = BTreeMap::new();
        let mut stamp_revisions: BTreeMap<(String, u16), i64> = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = kv.value();
            let Some(kind) = keys.parse(&key) else {
                view.problems.push(Problem {
                    key,
                    error: "unknown key under the namespace".into(),
                });
                continue;
            };
            let result: Result<(), String> = match kind {
                KeyKind::Instance(id) => decode::<InstanceInfo>(&key, "instance", value)
                    .map_err(|e| e.to_string())
                    .and_then(|info| {
                        info.validate(&id).map_err(|e| format!("{key}: {e}"))?;
                        instance_leases.insert(id.clone(), kv.lease());
                        view.instances.insert(id, info);
                        Ok(())
                    }),
                KeyKind::Leader(_) => {
                    candidates.push(LeaderView {
                        instance: String::from_utf8_lossy(value).into_owned(),
                        key: key.clone(),
                        lease: kv.lease(),
                        create_revision: kv.create_revision(),
                    });
                    Ok(())
                }
                KeyKind::Job(job) => decode_job(&key, &job, value)
                    .map(|c| view.jobs.entry(job).or_default().config = Some(c))
                    .map_err(|e| e.to_string()),
                KeyKind::Assigned { instance, page } => {
                    page_revisions.insert((instance.clone(), page), kv.mod_revision());
                    decode_page(&key, value)
                        .map_err(|e| e.to_string())
                        .and_then(|page| {
                            let id =
                                InstanceId::new(instance).map_err(|e| format!("{key}: {e}"))?;
                            pages.push((Some(id), page));
                            Ok(())
                        })
                }
                KeyKind::Stamp { instance, page } => {
                    stamp_revisions.insert((instance, page), kv.mod_revision());
                    Ok(())
                }
                KeyKind::Unassigned { .. } => decode_page(&key, value)
                    .map(|page| pages.push((None, page)))
                    .map_err(|e| e.to_string()),
                KeyKind::Owner { job, shard } => decode::<Owner>(&key, "owner", value)
                    .map(|owner| {
                        let o = OwnerView {
                            owner,
                            token: kv.create_revision(),
                            lease: kv.lease(),
                            current: false, // settled below, once every instance is read
                        };
                        view.jobs.entry(job).or_default().owners.insert(shard, o);
                    })
                    .map_err(|e| e.to_string()),
                KeyKind::Running { job, shard } => decode::<Running>(&key, "running marker", value)
                    .map(|r| {
                        view.jobs.entry(job).or_default().running.insert(shard, r);
                    })
                    .map_err(|e| e.to_string()),
                KeyKind::Cursor { job, shard } => decode::<Cursor>(&key, "cursor", value)
                    .map(|c| {
                        view.jobs.entry(job).or_default().cursors.insert(shard, c);
                    })
                    .map_err(|e| e.to_string()),
                KeyKind::Done { job, shard } => decode::<Done>(&key, "done record", value)
                    .map(|d| {
                        view.jobs.entry(job).or_default().done.insert(shard, d);
                    })
                    .map_err(|e| e.to_string()),
                KeyKind::Trigger(job) => decode::<Trigger>(&key, "trigger", value)
                    .map(|t| view.jobs.entry(job).or_default().trigger = Some(t))
                    .map_err(|e| e.to_string()),
                KeyKind::Disabled(id) => {
                    view.disabled.insert(id);
                    Ok(())
                }
            };
            if let Err(error) = result {
                view.problems.push(Problem { key, error });
            }
        }
        for ((instance, page), revision) in &page_revisions {
            if stamp_revisions.remove(&(instance.clone(), *page)) != Some(*revision) {
                let key = keys.stamp(instance, *page);
                let error = format!(
                    "{key}: missing, or not written with its page (a page put by hand?): \
                     claims compare the page until the leader rewrites it"
                );
                view.problems.push(Problem { key, error });
            }
        }
        for (instance, page) in stamp_revisions.into_keys() {
            let key = keys.stamp(&instance, page);
            let error = format!("{key}: a stamp with no page");
            view.problems.push(Problem { key, error });
        }
        for (job, record) in records_of(pages.iter().map(|(i, p)| (i.as_ref(), p))) {
            view.jobs.entry(job).or_default().assignment = Some(record);
        }
        for job in view.jobs.values_mut() {
            for o in job.owners.values_mut() {
                o.current = instance_leases.get(o.owner.instance.as_str()) == Some(&o.lease);
            }
        }
        // The candidate created first leads (etcd's election rule).
        view.leader = candidates.into_iter().min_by_key(|c| c.create_revision);
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HumanDuration, Schedule};
    use shardjob_sharding::{Assignment, InstanceId};

    fn job(current: bool) -> JobView {
        let a = InstanceId::new("a").unwrap();
        let assignment = Assignment::from_owners(vec![Some(a.clone())]);
        let owner = OwnerView {
            owner: Owner {
                instance: a,
                generation: 1,
            },
            token: 10,
            lease: 7,
            current,
        };
        JobView {
            config: Some(JobConfig::new(
                Schedule::Every(HumanDuration(std::time::Duration::from_secs(1))),
                1,
            )),
            assignment: Some(AssignmentRecord::from_assignment(1, &assignment)),
            owners: BTreeMap::from([(0, owner)]),
            ..JobView::default()
        }
    }

    #[test]
    fn converged_only_when_each_owner_key_is_on_its_instances_current_lease() {
        assert!(job(true).converged());
        let stale = job(false);
        assert_eq!(stale.owned_by_assignee(), 0);
        assert!(
            !stale.converged(),
            "a key of an earlier session does not count"
        );
    }
}
