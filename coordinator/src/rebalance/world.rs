//! [`World`]: what the leader knows, built from watch events, with no I/O.
//!
//! Values that do not decode are recorded as problems (by key) and skipped; the last good value
//! of that key stays in force, so someone writing garbage with etcdctl cannot make the leader
//! forget a job or an instance. Time is passed in.

use std::collections::{BTreeMap, BTreeSet};

use shardjob_sharding::InstanceId;
use tokio::time::Instant;
use tracing::warn;

use super::planned::PlannedJob;
use crate::keys::{KeyKind, Keys};
use crate::model::{AssignmentRecord, InstanceInfo, decode, decode_job};
use crate::refill::Refill;

/// True for an agent of 0.1, the last version that read one `assignments/<job>` record per job
/// instead of its own `assigned/` pages.
fn reads_per_job_records(version: &str) -> bool {
    version.starts_with("0.1.")
}

/// Tells the operator about an agent of 0.1 joining: it will not follow this leader.
fn warn_if_per_job(info: &InstanceInfo) {
    if reads_per_job_records(&info.version) {
        let (instance, version) = (info.id.as_str(), info.version.as_str());
        warn!(
            instance,
            version,
            "this instance reads the per-job assignments of 0.1 and will not follow this \
             leader's pages until it is upgraded (docs/OPERATIONS.md, Upgrading)"
        );
    }
}

/// An instance whose key disappeared, remembered for `rebalance_delay`.
#[derive(Debug, Clone)]
pub struct Departed {
    pub info: InstanceInfo,
    pub at: Instant,
    /// Known only from a stored assignment (a new leader never saw its instance key): parked
    /// for the jobs it owns without checking handler and labels, which are unknown.
    pub assumed: bool,
}

/// Which jobs need planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Every job (membership, drain or a delay expiring changed eligibility).
    pub all: bool,
    pub jobs: BTreeSet<String>,
}

impl Dirty {
    /// True when nothing needs planning.
    pub fn is_empty(&self) -> bool {
        !self.all && self.jobs.is_empty()
    }

    /// Adds what `other` marks.
    pub fn merge(&mut self, other: Dirty) {
        self.all |= other.all;
        self.jobs.extend(other.jobs);
    }
}

/// The leader's picture of the namespace.
#[derive(Debug, Clone)]
pub struct World {
    keys: Keys,
    pub instances: BTreeMap<InstanceId, InstanceInfo>,
    pub jobs: BTreeMap<String, PlannedJob>,
    pub disabled: BTreeSet<String>,
    pub assignments: BTreeMap<String, AssignmentRecord>,
    pub departed: BTreeMap<InstanceId, Departed>,
    /// Shards of one-shot jobs that ran to their end (`done/<job>/<shard>`).
    pub done: BTreeMap<String, BTreeSet<u32>>,
    /// Keys whose value was rejected, with the reason.
    pub problems: BTreeMap<String, String>,
    dirty: Dirty,
    /// When `jobs` and `assignments` were last rebuilt with full nodes.
    jobs_refill: Refill,
    assignments_refill: Refill,
}

impl World {
    /// An empty world for the namespace of `keys`.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            instances: BTreeMap::new(),
            jobs: BTreeMap::new(),
            disabled: BTreeSet::new(),
            assignments: BTreeMap::new(),
            departed: BTreeMap::new(),
            done: BTreeMap::new(),
            problems: BTreeMap::new(),
            dirty: Dirty::default(),
            jobs_refill: Refill::default(),
            assignments_refill: Refill::default(),
        }
    }

    /// The key layout of the namespace.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Applies a put of `value` under `key`.
    pub fn put(&mut self, key: &str, value: &[u8]) {
        let Some(kind) = self.keys.parse(key) else {
            return;
        };
        let result = match kind {
            KeyKind::Instance(id) => decode::<InstanceInfo>(key, "instance", value)
                .and_then(|info| {
                    info.validate(&id)
                        .map_err(|cause| crate::model::DecodeError::Invalid {
                            key: key.to_owned(),
                            what: "instance",
                            cause,
                        })?;
                    Ok(info)
                })
                .map(|info| {
                    self.departed.remove(&info.id);
                    if info.leaving {
                        // A graceful leave: gone now, and not parked (the delete that follows
                        // finds nothing to record).
                        if self.instances.remove(&info.id).is_some() {
                            self.dirty.all = true;
                        }
                    } else if self.instances.get(&info.id) != Some(&info) {
                        if !self.instances.contains_key(&info.id) {
                            warn_if_per_job(&info);
                        }
                        self.instances.insert(info.id.clone(), info);
                        self.dirty.all = true;
                    }
                }),
            KeyKind::Job(job) => decode_job(key, &job, value).map(|config| {
                let planned = PlannedJob::of(&config);
                if self.jobs.get(&job) != Some(&planned) {
                    self.jobs.insert(job.clone(), planned);
                    self.jobs_refill.check(&mut self.jobs);
                    self.dirty.jobs.insert(job);
                }
            }),
            KeyKind::Disabled(id) => {
                // Presence drains; the value is free-form (a reason, or nothing).
                if self.disabled.insert(id) {
                    self.dirty.all = true;
                }
                Ok(())
            }
            KeyKind::Done { job, shard } => decode::<crate::model::Done>(key, "done record", value)
                .map(|_| {
                    if self.done.entry(job.clone()).or_default().insert(shard) {
                        self.dirty.jobs.insert(job);
                    }
                }),
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                self.problems.remove(key);
            }
            Err(e) => {
                warn!(key, error = %e, "skipping a value that does not decode; the last good value stays");
                self.problems.insert(key.to_owned(), e.to_string());
            }
        }
    }

    /// Takes the assignments stored when this leader started (decoded from the `assigned/`
    /// pages, `super::Stored::load`), with the keys that did not decode as problems.
    pub fn load_assignments(
        &mut self,
        records: BTreeMap<String, AssignmentRecord>,
        problems: Vec<(String, String)>,
    ) {
        for (job, mut record) in records {
            self.share_ids(&mut record);
            self.assignments.insert(job, record);
        }
        self.assignments_grew();
        self.problems.extend(problems);
    }

    /// Makes `record` name the instances by the ids this world already holds: one allocation
    /// per instance, not one per job that names it.
    fn share_ids(&self, record: &mut AssignmentRecord) {
        for id in &mut record.instances {
            let known = self
                .instances
                .get_key_value(id)
                .map(|(k, _)| k)
                .or_else(|| self.departed.get_key_value(id).map(|(k, _)| k));
            if let Some(k) = known {
                *id = k.clone();
            }
        }
    }

    /// Applies a delete of `key`.
    pub fn delete(&mut self, key: &str, now: Instant) {
        self.problems.remove(key);
        match self.keys.parse(key) {
            Some(KeyKind::Instance(id)) => {
                let Ok(id) = InstanceId::new(id) else { return };
                if let Some(info) = self.instances.remove(&id) {
                    self.departed.insert(
                        id,
                        Departed {
                            info,
                            at: now,
                            assumed: false,
                        },
                    );
                    self.dirty.all = true;
                }
            }
            Some(KeyKind::Job(job)) if self.jobs.remove(&job).is_some() => {
                self.dirty.jobs.insert(job);
            }
            Some(KeyKind::Disabled(id)) if self.disabled.remove(&id) => {
                self.dirty.all = true;
            }
            Some(KeyKind::Done { job, shard }) => {
                if let Some(done) = self.done.get_mut(&job) {
                    if done.remove(&shard) {
                        self.dirty.jobs.insert(job.clone());
                    }
                    if done.is_empty() {
                        self.done.remove(&job);
                    }
                }
            }
            _ => {}
        }
    }

    /// Replaces everything under `prefix` with `entries` (a fresh listing): keys not listed are
    /// deleted, listed ones put, so departures and last-good values behave as with events.
    pub fn reset_prefix(&mut self, prefix: &str, entries: &[(String, Vec<u8>)], now: Instant) {
        let listed: BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let known: Vec<String> = self.known_keys(prefix);
        for key in known.iter().filter(|k| !listed.contains(k.as_str())) {
            self.delete(key, now);
        }
        for (key, value) in entries {
            self.put(key, value);
        }
    }

    /// To call after inserting assignments: rebuilds their map as it grows (`refill`).
    pub fn assignments_grew(&mut self) {
        self.assignments_refill.check(&mut self.assignments);
    }

    fn known_keys(&self, prefix: &str) -> Vec<String> {
        let k = &self.keys;
        let mut keys: Vec<String> = self
            .instances
            .keys()
            .map(|i| k.instance(i.as_str()))
            .collect();
        keys.extend(self.jobs.keys().map(|j| k.job(j)));
        keys.extend(self.disabled.iter().map(|d| k.disabled(d)));
        keys.extend(
            self.done
                .iter()
                .flat_map(|(j, shards)| shards.iter().map(|s| k.done(j, *s))),
        );
        keys.extend(self.problems.keys().cloned());
        keys.retain(|key| key.starts_with(prefix));
        keys
    }

    /// Marks every job for planning.
    pub fn mark_all(&mut self) {
        self.dirty.all = true;
    }

    /// Takes what needs planning, leaving nothing marked.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks again what a failed write did not get done.
    pub fn restore_dirty(&mut self, dirty: Dirty) {
        self.dirty.merge(dirty);
    }

    /// True when something needs planning.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Forgets departures older than `horizon` (they can no longer be parked).
    pub fn forget_departed_before(&mut self, horizon: Instant) {
        self.departed.retain(|_, d| d.at >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::new(Keys::new("ns").unwrap())
    }

    fn instance_json(id: &str, handlers: &[&str]) -> Vec<u8> {
        serde_json::json!({"id": id, "handlers": handlers, "started_at": "2026-01-01T00:00:00Z"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn garbage_is_a_problem_and_the_last_good_value_stays() {
        let mut w = world();
        let key = "/shardjob/ns/jobs/j";
        w.put(key, br#"{"schedule":{"every":"1s"},"total":4}"#);
        assert_eq!(w.jobs["j"].total, 4);
        assert!(w.take_dirty().jobs.contains("j"));
        w.put(key, b"{garbage");
        assert_eq!(w.jobs["j"].total, 4, "last good value replaced by garbage");
        assert!(
            w.problems[key].contains("not a valid job config"),
            "{:?}",
            w.problems
        );
        assert!(!w.is_dirty());
        w.put(key, br#"{"schedule":{"every":"1s"},"total":6}"#);
        assert_eq!(w.jobs["j"].total, 6);
        assert!(w.problems.is_empty());
    }

    #[test]
    fn a_big_listing_leaves_the_jobs_as_listed_after_their_map_is_rebuilt() {
        let mut w = world();
        let entries: Vec<(String, Vec<u8>)> = (0..Refill::MIN + 5)
            .map(|i| {
                let total = i % 7 + 1;
                let value = format!(r#"{{"schedule":{{"every":"1s"}},"total":{total}}}"#);
                (format!("/shardjob/ns/jobs/j{i:05}"), value.into_bytes())
            })
            .collect();
        w.reset_prefix("/shardjob/ns/jobs/", &entries, Instant::now());
        assert_eq!(w.jobs.len(), Refill::MIN + 5);
        for (i, (name, job)) in w.jobs.iter().enumerate() {
            assert_eq!(
                (name.as_str(), job.total),
                (format!("j{i:05}").as_str(), i as u32 % 7 + 1)
            );
        }
    }

    #[test]
    fn an_instance_whose_id_differs_from_its_key_is_rejected() {
        let mut w = world();
        w.put("/shardjob/ns/instances/a", &instance_json("b", &["h"]));
        assert!(w.instances.is_empty());
        assert!(w.problems["/shardjob/ns/instances/a"].contains("differs from the key"));
    }

    #[test]
    fn deletes_record_departures_and_reset_applies_missed_deletes() {
        let mut w = world();
        let t0 = Instant::now();
        w.put("/shardjob/ns/instances/a", &instance_json("a", &["h"]));
        w.put("/shardjob/ns/instances/b", &instance_json("b", &["h"]));
        w.take_dirty();
        let t1 = t0 + std::time::Duration::from_secs(1);
        // A re-list that no longer has "a": it departs at t1.
        let listing = vec![(
            "/shardjob/ns/instances/b".to_owned(),
            instance_json("b", &["h"]),
        )];
        w.reset_prefix("/shardjob/ns/instances/", &listing, t1);
        assert_eq!(w.instances.len(), 1);
        assert_eq!(w.departed[&InstanceId::new("a").unwrap()].at, t1);
        assert!(w.take_dirty().all);
        // It comes back: no longer departed.
        w.put("/shardjob/ns/instances/a", &instance_json("a", &["h"]));
        assert!(w.departed.is_empty());
    }

    #[test]
    fn a_graceful_leave_is_no_departure_to_park() {
        let mut w = world();
        let key = "/shardjob/ns/instances/a";
        w.put(key, &instance_json("a", &["h"]));
        w.take_dirty();
        let mut leaving: serde_json::Value =
            serde_json::from_slice(&instance_json("a", &["h"])).unwrap();
        leaving["leaving"] = true.into();
        w.put(key, leaving.to_string().as_bytes());
        assert!(w.instances.is_empty() && w.take_dirty().all);
        w.delete(key, Instant::now());
        assert!(w.departed.is_empty(), "parked after a graceful leave");
        // A plain delete (lease expiry) is a departure, as before.
        w.put(key, &instance_json("a", &["h"]));
        w.delete(key, Instant::now());
        assert!(w.departed.contains_key(&InstanceId::new("a").unwrap()));
    }

    #[test]
    fn only_agents_of_0_1_read_per_job_records() {
        for (version, old) in [
            ("0.1.0", true),
            ("0.1.7", true),
            ("0.2.0", false),
            ("0.10.0", false),
            ("", false),
        ] {
            assert_eq!(reads_per_job_records(version), old, "{version}");
        }
    }

    #[test]
    fn disabled_presence_drains_whatever_the_value() {
        let mut w = world();
        w.put("/shardjob/ns/disabled/a", b"");
        assert!(w.disabled.contains("a"));
        assert!(w.take_dirty().all);
        w.delete("/shardjob/ns/disabled/a", Instant::now());
        assert!(w.disabled.is_empty());
    }
}
